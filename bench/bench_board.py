"""Board benchmarks D1-D4 on the reference update (bench/reference_app.py).

    python bench/bench_board.py        # `make bench-board`

- D1_heap_kb: smallest `-X heapsize` (bisection, 4 KB steps; the virtual board adds its own
  harness heap on top) with which the reference update completes end to end with the .mpy
  client: check-in, verify, download, swap, reboot into 1.1.0 and confirm. The figure is the
  32-bit unix port (Debian's i386 build: the word size of the ESP32 and the RP2, so 4-byte
  pointers and 16-byte GC blocks as on them) with the client as .mpy files in a ROMFS
  partition (the layout for boards whose firmware has one: bytecode runs in place). Printed
  too: the same with the .mpy files on the filesystem, and both on the 64-bit port (x86-64,
  where every object is larger), which the other figures use.
- D2_verify_ms: the client's own check of the manifest's signature as an update runs it
  (`trust.signed_manifest` called as `client.trusted_update` calls it: .mpy client in ROMFS,
  the keys' comb tables as the board keeps them on flash, the check's GC threshold), median
  of 21 on the 32-bit port (bench_d2_verify.py: the ESP32's and RP2's word size, so 16-bit
  bignum digits as there); the 64-bit port's median is printed beside it and is
  D2_verify_ms_64bit in the last line.
- D3_wire_ratio: bytes the board downloads for the update (check-in answer and blob answers,
  status lines and headers included) / (deflated changed files + signed manifest).
  Reports the board uploads are not counted (they are status, not the update).
- D4_boot_ms: CPU time (user + system) of a boot that checks in and finds nothing new,
  client as .mpy, server on loopback: the whole MicroPython process, interpreter start-up
  included, minus the CPU time of the same board booting with its OTA check turned off
  (so what remains is the check itself: Wi-Fi stand-in, key load, signing, request).
  Median of 15.
- D5_tls_boot_ms: as D4, with the check over https against `ota serve --tls-cert/--tls-key`
  (certificate from a fleet CA made by tools/tls_ca.py, as `ota tls init` makes it; the board
  verifies the chain and the host name against /ota_id/ca.der): the TLS handshake (ECDHE-ECDSA,
  P-256, in the port's mbedtls) is what it adds to D4. 64-bit port, median of 15.

- R1_block_cuts: power-cut points tried on flash as boards have it (bench/block_cuts.py):
  the reference update on littlefs and on FAT on the virtual board's flash block device, power
  cut before a block program or erase (every R1_STRIDE-th one, and torn in the middle of every
  R1_TORN_EVERY-th point tried), then the board powered up without network. R1_bricked: the
  cut points after which the board booted neither the old nor the new app (goal 0).
  D1-D5 are measured on the directory flash, as before R1 existed.

Also printed (not a figure): the live heap after each phase of the update as the client
runs it (`phase_heap`: the client's .mpy modules loaded phase by phase, the reference
envelope verified), on both ports, for docs/board.md's memory budget.

The last line printed is one JSON object with the figure ids (and D2_verify_ms_64bit).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))
if str(PROJECT_ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))

from faultproxy import FaultProxy  # noqa: E402

from bench.reference_app import (  # noqa: E402
    build_release,
    bundle_files,
    changed_paths,
    make_keys,
    provision_board,
    reference_files,
)
from signing.bundle import load_bundle  # noqa: E402
from tools.board_files import ClientLayout, code_size, read_state  # noqa: E402
from tools.local_server import LocalServer  # noqa: E402
from tools.micropython import find_micropython, find_micropython_32bit  # noqa: E402
from tools.tls_ca import issue_server, new_ca  # noqa: E402
from tools.virtual_board import VirtualBoard, rom_image_path  # noqa: E402

_HEAP_LOW_KB = 16
_HEAP_HIGH_KB = 1024
_HEAP_STEP_KB = 4
_BOOT_SAMPLES = 15


class Bench:
    def __init__(self, work: Path, micropython: str) -> None:
        self.work = work
        self.micropython = micropython
        self.keys = make_keys()
        (work / "root.json").write_bytes(self.keys.root_envelope)
        self.boards = 0

    def setup(self, server: LocalServer) -> None:
        self.server = server
        self.api = server.client()
        old_bundle = build_release(self.work, reference_files("1.0.0"), "1.0.0", 1, self.keys,
                                   mpy=True)
        self.old_files = bundle_files(old_bundle)
        self.new_bundle = build_release(self.work, reference_files("1.1.0"), "1.1.0", 2,
                                        self.keys, mpy=True)
        self.api.publish(self.new_bundle, channel="update", percent=100)

    def board(self, url: str, channel: str, client: ClientLayout = "romfs",
              server: LocalServer | None = None, **config: object) -> Path:
        """A board provisioned with 1.0.0, registered with `server` (default: the bench's)."""
        self.boards += 1
        name = f"bench-{self.boards}"
        flash = self.work / name
        api = self.api if server is None else server.client()
        provision_board(flash, api, name, url, self.keys, self.old_files, mpy=True,
                        channel=channel, client=client, **config)
        return flash

    def updates(self, heap_kb: int, client: ClientLayout, micropython: str) -> bool:
        flash = self.board(self.server.url, "update", client)
        run = VirtualBoard(flash, micropython=micropython,
                           heapsize=f"{heap_kb}k").run(max_boots=3, timeout=60)
        state = read_state(flash)
        ok = ([b.ended for b in run.boots] == ["reset", "exit"]
              and "APP 1.1.0" in run.boots[-1].output
              and state is not None and (state["active"], state["ok"]) == ("b", 1))
        shutil.rmtree(flash)
        rom_image_path(flash).unlink(missing_ok=True)
        return ok


# Where the heap goes: the real client with a heap mark inserted after each of these lines
# (file, the line's text, the phase it ends), in a copy of bootloader_py/. A mark collects and
# prints the live heap above the virtual board's harness share and the qstr pool's size. An
# anchor that no longer matches the code fails the bench, so the table never describes code
# that is gone. The marks add a few qstrs and collections of their own: they describe, D1
# measures.
PHASE_MARKS = (
    ("ota/run.py", "    st = _state()", "boot.py done, main.py starts the client"),
    ("ota/client.py", "    sess = Session(cfg)", "session: config, net, client, auth, http"),
    ("ota/client.py", "        answered = True", "checked in (p256 signed; envelope on flash)"),
    ("ota/client.py", "        root = load_root()", "root loaded (trust, rootmeta, dsse, jscan)"),
    ("ota/client.py", '        _forget("p256")  # loads p256 again',
     "signatures checked; dsse, p256 and the root let go"),
    ("ota/client.py", "        m = _accept(st, cfg, now, sess.floor)",
     "manifest accepted (rules, jscan; files to /ota/offer.lst)"),
    ("ota/client.py", "        from ota import update", "staging starts (verifier unloaded)"),
    ("ota/update.py", "    slots.adopt(target)", "staged: every file placed and read back"),
    ("ota/run.py", "    from ota import app", "trial boot: check-in over, client modules shed"),
    ("ota/app.py", "        mod = __import__(entry)", "trial boot: the app imported"),
)
_MARK = ("import gc, micropython; gc.collect(); "
         "print('HEAP', {name!r}, gc.mem_alloc() - {base}); micropython.qstr_info()")


def _instrumented_client(target: Path, micropython: str) -> Path:
    """A copy of bootloader_py/ with a heap mark after each PHASE_MARKS line."""
    shutil.copytree(PROJECT_ROOT / "bootloader_py", target)
    base = _harness_alloc(micropython)
    for rel, anchor, name in PHASE_MARKS:
        path = target / rel
        text = path.read_text()
        at = text.find(anchor + "\n")
        if at < 0:
            raise RuntimeError(f"phase mark anchor not found in {rel}: {anchor!r}")
        indent = anchor[:len(anchor) - len(anchor.lstrip())]
        at += len(anchor) + 1
        path.write_text(text[:at] + indent + _MARK.format(name=name, base=base) + "\n"
                        + text[at:])
    return target


def _harness_alloc(micropython: str) -> int:
    """gc.mem_alloc() at the start of an empty board's main.py: the harness's own share."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "main.py").write_text("import gc\ngc.collect()\nprint(gc.mem_alloc())\n")
        out = VirtualBoard(Path(tmp), micropython=micropython).run(max_boots=1).output
    return int(out.split()[0])


def phase_heap(bench: Bench, micropython: str) -> list[tuple[str, int, int]]:
    """(phase, live heap bytes above the harness, qstr pool bytes) at each PHASE_MARKS line of
    the reference update and the trial boot after it (ROMFS client, 256 KB heap)."""
    import tools.board_files as board_files

    source = _instrumented_client(bench.work / f"instrumented-{bench.boards}", micropython)
    real = board_files.BOOTLOADER_DIR
    board_files.BOOTLOADER_DIR = source
    try:
        flash = bench.board(bench.server.url, "update", "romfs")
    finally:
        board_files.BOOTLOADER_DIR = real
    run = VirtualBoard(flash, micropython=micropython, heapsize="256k").run(
        max_boots=3, timeout=60)
    if [b.ended for b in run.boots] != ["reset", "exit"]:
        raise RuntimeError("instrumented update failed: " + run.output[-800:])
    steps: list[tuple[str, int, int]] = []
    lines = run.output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("HEAP "):
            name, _, used = line[5:].rpartition(" ")
            qstr = int(lines[i + 1].rsplit("n_total_bytes=", 1)[1])
            steps.append((name.strip("'"), int(used), qstr))
    return steps


def measure_d1(bench: Bench, client: ClientLayout, micropython: str, port: str) -> int:
    """Bisection on the heap size (KB) in _HEAP_STEP_KB steps."""
    low, high = _HEAP_LOW_KB, _HEAP_HIGH_KB
    if not bench.updates(high, client, micropython):
        raise RuntimeError(f"the reference update fails even with a {high} KB heap ({port})")
    while high - low > _HEAP_STEP_KB:
        mid = (low + high) // 2 // _HEAP_STEP_KB * _HEAP_STEP_KB
        if bench.updates(mid, client, micropython):
            high = mid
        else:
            low = mid
        print(f"D1 ({port}, {client}) bisect: {low}..{high} KB", flush=True)
    return high


def measure_d3(bench: Bench) -> dict[str, float]:
    with FaultProxy(bench.server.url) as proxy:
        flash = bench.board(proxy.url, "update")
        run = VirtualBoard(flash, micropython=bench.micropython).run(max_boots=3, timeout=60)
        assert "APP 1.1.0" in run.boots[-1].output, run.output
        update = [e for e in proxy.exchanges if (e.path.endswith("/checkin") and e.status == 200)
                  or "/v1/device/pack" in e.path or "/v1/blobs/" in e.path]
        wire = sum(e.head_bytes + e.body_bytes for e in update)
        bodies = sum(e.body_bytes for e in update)
    bundle = load_bundle(bench.new_bundle)
    changed = [e for e in bundle.manifest.files
               if e.path.replace(".mpy", ".py") in changed_paths()]
    envelope = bundle.envelope_path.stat().st_size
    useful = sum(e.transfer_size for e in changed) + envelope
    return {"wire": wire, "bodies": bodies, "useful": useful, "ratio": wire / useful,
            "changed_files": len(changed)}


def _cpu_of(board: VirtualBoard) -> tuple[float, str]:
    """CPU ms of one boot: rusage of waited-for children (the board's process) in µs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = board.run(max_boots=1, timeout=30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu * 1000, run.output


def measure_d4(bench: Bench, tls: tuple[LocalServer, bytes] | None = None
               ) -> dict[str, float]:
    """D4; with `tls` (an https server and the DER of its CA) D5: the same over https."""
    server, ca = (bench.server, {}) if tls is None else (tls[0], {"server_ca": tls[1]})
    with_check = VirtualBoard(bench.board(server.url, "quiet", server=server, **ca),
                              micropython=bench.micropython)
    without = VirtualBoard(bench.board(server.url, "quiet", server=server, poll_at_boot=False,
                                       **ca), micropython=bench.micropython)
    checked, plain, walls = [], [], []
    for _ in range(_BOOT_SAMPLES):
        started = time.perf_counter()
        ms, out = _cpu_of(with_check)
        walls.append((time.perf_counter() - started) * 1000)
        assert "APP 1.0.0" in out and "refused" not in out, out
        checked.append(ms)
        ms, out = _cpu_of(without)
        assert "APP 1.0.0" in out, out
        plain.append(ms)
    return {"boot_cpu_ms": statistics.median(checked),
            "boot_cpu_ms_no_check": statistics.median(plain),
            "boot_wall_ms": statistics.median(walls),
            "check_cpu_ms": statistics.median(checked) - statistics.median(plain)}


# R1 in `make bench-board`: a cut every R1_STRIDE block operations of each filesystem, and a
# torn one at every R1_TORN_EVERY-th point tried (the full enumeration, stride 1, is
# `python bench/block_cuts.py`, the table in docs/board.md).
R1_STRIDE = 7
R1_TORN_EVERY = 5


def main() -> int:
    from bench.bench_d2_verify import run_board as run_d2
    from bench.block_cuts import enumerate_cuts

    # D1-D5 keep the directory flash they were first measured on; R1 chooses its own flash.
    os.environ["MPOTA_VB_FLASH"] = "dir"
    micropython = find_micropython()
    ports = {"32-bit": find_micropython_32bit(), "64-bit": micropython}
    d1: dict[tuple[str, ClientLayout], int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-board-") as tmp:
        bench = Bench(Path(tmp), micropython)
        with LocalServer(Path(tmp) / "data", Path(tmp) / "root.json") as server:
            bench.setup(server)
            print("code size (bytes):", json.dumps(code_size(True)), flush=True)
            for port, interpreter in ports.items():
                for step, used, qstr in phase_heap(bench, interpreter):
                    print(f"heap ({port}) at {step}: {used} bytes (qstr pools {qstr})",
                          flush=True)
            d3 = measure_d3(bench)
            print("D3:", json.dumps(d3), flush=True)
            d4 = measure_d4(bench)
            print("D4:", json.dumps(d4), flush=True)
            ca = new_ca("bench fleet CA")
            tls_dir = Path(tmp) / "tls"
            tls_dir.mkdir()
            server_cert = issue_server(ca, [server.host])
            for name, data in (("ca.pem", ca.cert_pem), ("server.pem", server_cert.cert_pem),
                               ("server.key", server_cert.key_pem)):
                (tls_dir / name).write_bytes(data)
            with LocalServer(Path(tmp) / "data-tls", Path(tmp) / "root.json",
                             tls_dir=tls_dir) as secure:
                d5 = measure_d4(bench, (secure, ca.cert.public_bytes(Encoding.DER)))
            print("D5 (https):", json.dumps(d5), flush=True)
            r1 = [enumerate_cuts(bench, kind, R1_STRIDE, R1_TORN_EVERY)
                  for kind in ("lfs2", "fat")]
            for tally in r1:
                print("R1:", json.dumps(tally.summary()), flush=True)
            for port, interpreter in ports.items():
                for client in ("files", "romfs"):
                    d1[port, client] = measure_d1(bench, client, interpreter, port)
                    print(f"D1 heap KB, {port} port, .mpy client "
                          f"{'in ROMFS' if client == 'romfs' else 'on the filesystem'}:",
                          d1[port, client], flush=True)
        d2 = {}
        for port, interpreter in ports.items():
            d2[port] = run_d2(interpreter)
            print(f"D2 ({port} port), µs:", json.dumps(d2[port]), flush=True)
        print(f"D2 verify ms, 32-bit port: {d2['32-bit']['signature_us'] / 1000} "
              f"(64-bit port: {d2['64-bit']['signature_us'] / 1000})", flush=True)
    print(json.dumps({"D1_heap_kb": d1["32-bit", "romfs"],
                      "D2_verify_ms": round(d2["32-bit"]["signature_us"] / 1000, 3),
                      "D3_wire_ratio": round(d3["ratio"], 4),
                      "D4_boot_ms": round(d4["check_cpu_ms"], 2),
                      "D5_tls_boot_ms": round(d5["check_cpu_ms"], 2),
                      "R1_block_cuts": sum(t.tried for t in r1),
                      "R1_bricked": sum(t.neither for t in r1),
                      "D2_verify_ms_64bit": round(d2["64-bit"]["signature_us"] / 1000, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
