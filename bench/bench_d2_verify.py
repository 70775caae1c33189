"""D2: time for the board's OTA client to check a release manifest's signature, as an update
runs it.

    python bench/bench_d2_verify.py        # both ports; `make bench-board` runs it too

On a virtual board provisioned as D1's (the client as `.mpy` files in a ROMFS partition, the
root as provisioned in /ota_id/trust.json, the reference app 1.0.0), the bench's main.py runs the
client's verify phase (`client.trusted_update`, docs/board.md) the way `client.check` runs it
after a check-in that saved an offer in /ota/offer.dsse, with ota/run.py's GC threshold of a
check in force, and times:

- D2, `signature_us`: `trust.signed_manifest(ENVELOPE, root, scratch=PAYLOAD)`, the call with
  which trusted_update checks the manifest's DSSE signature: the envelope read from flash
  (strict base64, the payload decoded to /ota/offer.json), the PAE digest, and ECDSA P-256 by
  the release key, with p256 set up by the client's own `client.verifier_tables` (each key's
  comb table from flash, authenticated with the device key; nothing is precomputed by this
  bench). The root's own signature is checked first, untimed here: it is `root_check_us`.
- the other steps of the same phase, timed the same way: `root_load_us` (client.load_root),
  `root_check_us` (Root.check: the root's self-signature, a separate trust decision the client
  makes at the root's first use in a check), `payload_walk_us` (client._accept: every manifest
  rule, the file list to flash), and `trusted_update_us`, the whole phase in one call (module
  loads, collections and file removals included).
- `first_signature_us` / `first_root_check_us`: the first check after provisioning, which builds
  and stores the two keys' tables (once per key: after provisioning or a root rotation).

Between runs the client's modules are shed (as after every check) and the envelope put back,
untimed. The heap is HEAP (128 KB: a small board's; an ESP32 without PSRAM or an RP2040 has
more): the verify lets the collector run when the heap is full rather than every few KB, so a
smaller heap means more collections. `main()` also prints the 32-bit figure with the 32 KB of
D1's budget as the whole heap, the worst case.

The manifest is the reference update's (bench/reference_app.py: 20 files, release 1.1.0 with
deflate transfer copies), built and signed with signing/ under a 1-of-1 root. Each figure is
the median of RUNS runs, in µs on the board, printed per port; D2 is the 32-bit port's (Debian's
i386 build: the ESP32's and RP2's word size, so MicroPython's bignums have 16-bit digits as
there), the 64-bit port's is printed beside it.

Last line: {"D2_verify_ms": <32-bit median>, "D2_verify_ms_64bit": <64-bit median>}.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 21
HEAP = "128k"
BUDGET_HEAP = "32k"  # D1's goal
if str(ROOT) not in sys.path:  # bench/ and tools/ from a plain `python bench/...` run
    sys.path.insert(0, str(ROOT))

# The board's main.py for the bench: the client's verify phase, RUNS times. Every name it
# calls is the client's own; what it adds is the clock, the reset between calls, and checks
# that the verify did accept the reference release.
BOARD_MAIN = """
import gc, json, sys, time
import ota
from ota import auth, config, net, state

_GC_EVERY = const(@GC_EVERY@)  # ota/run.py's threshold while a check runs
RUNS = @RUNS@
cfg = config.load()
st = state.BootState()
now = net.trusted_now()


class Sess:  # what trusted_update reads of a client.Session (no root rotation here)
    key = auth.load_key()
    floor = 0


net = config = auth = None
for name in ("auth", "net", "config"):
    ota.forget(name)
buf = memoryview(bytearray(1024))  # the client's one transfer buffer


def offer():
    # The envelope as a check-in saves it (client._save); trusted_update deletes it.
    with open("/bench/offer.dsse", "rb") as src, open("/ota/offer.dsse", "wb") as dst:
        while True:
            n = src.readinto(buf)
            if not n:
                break
            dst.write(buf[:n])


def clocked(fn, *args):
    t = time.ticks_us()
    out = fn(*args)
    return time.ticks_diff(time.ticks_us(), t), out


def phase():
    # client.trusted_update, whole: the verifier's modules loaded and unloaded, root loaded
    # and checked, envelope read, signature checked, payload walked into /ota/offer.lst.
    from ota import client
    us, target = clocked(client.trusted_update, Sess, st, cfg, True, None, now, buf)
    assert target == {"app": "refapp", "version": "1.1.0", "sequence": 2,
                      "entry": "app_main"}, target
    return [us]


def steps():
    # The same phase step by step, each timed: the root loaded (its own signatures not yet
    # checked), its check, the manifest's signature (trust.signed_manifest as trusted_update
    # calls it: envelope read, PAE digest, release threshold: D2), the payload walk.
    from ota import client, trust
    client._forget("http")
    client.verifier_tables(Sess)
    gc.collect()
    t_load, root = clocked(client.load_root)
    client._forget("rootmeta")
    t_check = clocked(root.check)[0]
    t_sig = clocked(trust.signed_manifest, client.ENVELOPE, root, client.PAYLOAD)[0]
    root = None
    client._forget("dsse")
    client._forget("p256")
    t_walk, m = clocked(client._accept, st, cfg, now, Sess.floor)
    assert m["version"] == "1.1.0" and m["sequence"] == 2, m
    client._unload_verifier()
    return [t_load, t_check, t_sig, t_walk]


def run(fn):
    offer()
    ota.shed()  # as after every check: the next one loads the client's modules again
    gc.collect()
    old = gc.threshold()
    gc.threshold(_GC_EVERY)
    try:
        return fn()
    finally:
        gc.threshold(old)


first = run(steps)  # the first verify with these keys: their tables are built and stored
whole = [run(phase)[0] for i in range(RUNS)]
split = [run(steps) for i in range(RUNS)]
ota.shed()


def median(values):
    return sorted(values)[len(values) // 2]


print(json.dumps({
    "signature_us": median([s[2] for s in split]),
    "signature_min_us": min(s[2] for s in split),
    "root_load_us": median([s[0] for s in split]), "root_check_us": median([s[1] for s in split]),
    "payload_walk_us": median([s[3] for s in split]), "trusted_update_us": median(whole),
    "first_root_check_us": first[1], "first_signature_us": first[2]}))
"""


def _gc_every() -> int:
    """ota/run.py's GC threshold while a check runs (`_GC_EVERY = const(N)`)."""
    match = re.search(r"^_GC_EVERY = const\((\d+)\)",
                      (ROOT / "bootloader_py" / "ota" / "run.py").read_text(), re.M)
    if match is None:
        raise RuntimeError("ota/run.py sets no _GC_EVERY: update bench_d2_verify.BOARD_MAIN")
    return int(match[1])


def _board(folder: Path) -> Path:
    """A provisioned board (ROMFS .mpy client, reference app 1.0.0) with the signed 1.1.0
    envelope in /bench/offer.dsse and the bench's main.py."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from bench.reference_app import APP, ENTRY, build_release, make_keys, reference_files
    from tools.board_files import BoardConfig, InitialApp, install_board

    keys = make_keys()
    bundle = build_release(folder, reference_files("1.1.0"), "1.1.0", 2, keys, mpy=True)
    flash = folder / "flash"
    flash.mkdir()
    cfg = BoardConfig(device_id="bench-d2", server="http://127.0.0.1:9", board="unix")
    install_board(flash, cfg, ec.generate_private_key(ec.SECP256R1()), keys.root_envelope,
                  mpy=True, app=InitialApp(APP, "1.0.0", 1, ENTRY, reference_files("1.0.0")),
                  client="romfs")
    (flash / "bench").mkdir()
    (flash / "bench" / "offer.dsse").write_bytes((bundle / "manifest.dsse.json").read_bytes())
    (flash / "main.py").write_text(
        BOARD_MAIN.replace("@RUNS@", str(RUNS)).replace("@GC_EVERY@", str(_gc_every())))
    return flash


def run_board(micropython: str, heap: str = HEAP) -> dict[str, int]:
    """One virtual board run of BOARD_MAIN on `micropython` with a `heap` board heap; the
    board's figures (µs). RuntimeError when the board fails."""
    from tools.virtual_board import VirtualBoard

    with tempfile.TemporaryDirectory(prefix="bench-d2-") as tmp:
        flash = _board(Path(tmp))
        run = VirtualBoard(flash, micropython=micropython, heapsize=heap).run(
            max_boots=1, timeout=300)
    if run.ended != "exit":
        raise RuntimeError(f"D2 board run ended {run.ended}: " + run.output[-800:])
    result: dict[str, int] = json.loads(run.output.strip().splitlines()[-1])
    return result


def main() -> None:
    from tools.micropython import find_micropython, find_micropython_32bit

    figures = {}
    for port, micropython in (("32-bit", find_micropython_32bit()),
                              ("64-bit", find_micropython())):
        result = run_board(micropython)
        print(f"D2 ({port} port), µs:", json.dumps(result), flush=True)
        figures[port] = round(result["signature_us"] / 1000, 3)
        if port == "32-bit":
            budget = run_board(micropython, BUDGET_HEAP)
            print(f"D2 ({port} port, {BUDGET_HEAP} heap), µs:", json.dumps(budget), flush=True)
    print(json.dumps({"D2_verify_ms": figures["32-bit"],
                      "D2_verify_ms_64bit": figures["64-bit"]}))


if __name__ == "__main__":
    main()
