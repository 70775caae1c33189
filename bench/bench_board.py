"""Board benchmarks D1-D4 on the reference update (bench/reference_app.py).

    python bench/bench_board.py        # `make bench-board`

- D1_heap_kb: smallest `-X heapsize` (bisection, 4 KB steps; the virtual board adds its own
  harness heap on top) with which the reference update completes end to end with the .mpy
  client: check-in, verify, download, swap, reboot into 1.1.0 and confirm. The figure is the
  client as .mpy files in a ROMFS partition (the layout for boards whose firmware has one:
  bytecode runs in place); the same with the .mpy files on the filesystem is printed too.
- D2_verify_ms: manifest verify time on the unix port, median of 20 (bench_d2_verify.py).
- D3_wire_ratio: bytes the board downloads for the update (check-in answer and blob answers,
  status lines and headers included) / (deflated changed files + signed manifest).
  Reports the board uploads are not counted (they are status, not the update).
- D4_boot_ms: CPU time (user + system) of a boot that checks in and finds nothing new,
  client as .mpy, server on loopback: the whole MicroPython process, interpreter start-up
  included, minus the CPU time of the same board booting with its OTA check turned off
  (so what remains is the check itself: Wi-Fi stand-in, key load, signing, request).
  Median of 15.

Also printed (not a figure): the live heap after each phase of the update as the client
runs it (`phase_heap`: the client's .mpy modules loaded phase by phase, the reference
envelope verified, on the unix port), for docs/board.md's memory budget.

The last line printed is one JSON object with the four figure ids.
"""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
from tools.board_files import ClientLayout, client_files, code_size, read_state  # noqa: E402
from tools.local_server import LocalServer  # noqa: E402
from tools.micropython import find_micropython  # noqa: E402
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
              **config: object) -> Path:
        self.boards += 1
        name = f"bench-{self.boards}"
        flash = self.work / name
        provision_board(flash, self.api, name, url, self.keys, self.old_files, mpy=True,
                        channel=channel, client=client, **config)
        return flash

    def updates(self, heap_kb: int, client: ClientLayout) -> bool:
        flash = self.board(self.server.url, "update", client)
        run = VirtualBoard(flash, micropython=self.micropython,
                           heapsize=f"{heap_kb}k").run(max_boots=3, timeout=60)
        state = read_state(flash)
        ok = ([b.ended for b in run.boots] == ["reset", "exit"]
              and "APP 1.1.0" in run.boots[-1].output
              and state is not None and (state["active"], state["ok"]) == ("b", 1))
        shutil.rmtree(flash)
        rom_image_path(flash).unlink(missing_ok=True)
        return ok


# The client's phases (bootloader_py/ota/client.py), as a script for the unix port: live heap
# after gc.collect() at each step, in bytes. Transient peaks inside a step (the ECDSA's
# garbage, the JSON parser's scratch) do not show here; D1 measures them end to end.
PHASE_SCRIPT = """
import gc, sys, json
def used():
    gc.collect()
    return gc.mem_alloc()
def forget(name):
    sys.modules.pop("ota." + name, None)
    import ota
    try:
        delattr(ota, name)
    except (AttributeError, KeyError):
        pass
out = [["interpreter", used()]]
from ota import state, records
st = state.BootState()
out.append(["boot.py: state, records", used()])
from ota import run, config, net, client, fail
config = net = None
forget("config")
forget("net")
out.append(["main.py: run, client (config, net loaded, unloaded)", used()])
from ota import auth, p256, http, reports
reports = None
forget("reports")
out.append(["check-in: auth, p256, http (reports flushed, unloaded)", used()])
with open(@ENVELOPE@, "rb") as f:
    envelope = bytearray(f.read())
out.append(["check-in answer: the envelope", used()])
http = None
forget("http")
out.append(["verify: http unloaded", used()])
from ota import trust
root = trust.load_root(@ROOT@, defer_check=True)
forget("rootmeta")
out.append(["verify: trust loaded, root parsed (rootmeta unloaded)", used()])
p256.KEY_TEETH = 0
payload = trust.signed_manifest(envelope, root, consume=True)
out.append(["verify: signatures checked (dsse, p256, root)", used()])
envelope = root = p256 = None
forget("dsse")
forget("p256")
out.append(["verify: root, dsse, p256 let go", used()])
m = trust.accept_manifest(payload, board="unix", installed_sequence=1)
out.append(["verify: manifest dict (rules loaded)", used()])
files = [(e["path"], e["sha256"], e["size"], e["encoding"], e["blob"], e["transfer_size"])
         for e in m["files"]]
m = payload = trust = None
for name in ("rules", "trust"):
    forget(name)
out.append(["verified: verifier unloaded, file list as tuples", used()])
from ota import p256, http, update, slots
buf = memoryview(bytearray(1024))
olds = {}  # as slots.active_files builds it from /ota/slot_<active>.json
shas = {}
for e in files:
    shas[e[1]] = e[1]
for path, sha in json.loads(json.dumps([[e[0], e[1]] for e in files])):
    if sha in shas:
        olds[shas[sha]] = path  # keyed by the manifest's own hash strings
shas = None
out.append(["staging: p256, http, update, slots, buffer, active slot's file map", used()])
print(json.dumps(out))
"""


def phase_heap(bench: Bench) -> list[tuple[str, int]]:
    """Live heap (bytes) after each phase of the update, .mpy client on the unix port."""
    client = bench.work / "phase-client"
    for name, data in client_files(True).items():
        target = client / name.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    script = (PHASE_SCRIPT.replace("@ENVELOPE@", repr(str(bench.new_bundle / "manifest.dsse.json")))
              .replace("@ROOT@", repr(str(bench.work / "root.json"))))
    done = subprocess.run([bench.micropython, "-X", "heapsize=512k", "-c", script],
                          cwd=client, env={"MICROPYPATH": str(client)}, capture_output=True,
                          text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError("phase script failed: " + done.stderr.strip()[-500:])
    steps: list[list[Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    base = steps[0][1]
    return [(name, used - base) for name, used in steps[1:]]


def measure_d1(bench: Bench, client: ClientLayout) -> int:
    """Bisection on the heap size (KB) in _HEAP_STEP_KB steps."""
    low, high = _HEAP_LOW_KB, _HEAP_HIGH_KB
    if not bench.updates(high, client):
        raise RuntimeError(f"the reference update fails even with a {high} KB heap")
    while high - low > _HEAP_STEP_KB:
        mid = (low + high) // 2 // _HEAP_STEP_KB * _HEAP_STEP_KB
        if bench.updates(mid, client):
            high = mid
        else:
            low = mid
        print(f"D1 ({client}) bisect: {low}..{high} KB", flush=True)
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


def measure_d4(bench: Bench) -> dict[str, float]:
    with_check = VirtualBoard(bench.board(bench.server.url, "quiet"),
                              micropython=bench.micropython)
    without = VirtualBoard(bench.board(bench.server.url, "quiet", poll_at_boot=False),
                           micropython=bench.micropython)
    checked, plain, walls = [], [], []
    for _ in range(_BOOT_SAMPLES):
        started = time.perf_counter()
        ms, out = _cpu_of(with_check)
        walls.append((time.perf_counter() - started) * 1000)
        assert "APP 1.0.0" in out, out
        checked.append(ms)
        ms, out = _cpu_of(without)
        assert "APP 1.0.0" in out, out
        plain.append(ms)
    return {"boot_cpu_ms": statistics.median(checked),
            "boot_cpu_ms_no_check": statistics.median(plain),
            "boot_wall_ms": statistics.median(walls),
            "check_cpu_ms": statistics.median(checked) - statistics.median(plain)}


def main() -> int:
    from bench.bench_d2_verify import measure_d2

    micropython = find_micropython()
    with tempfile.TemporaryDirectory(prefix="bench-board-") as tmp:
        bench = Bench(Path(tmp), micropython)
        with LocalServer(Path(tmp) / "data", Path(tmp) / "root.json") as server:
            bench.setup(server)
            print("code size (bytes):", json.dumps(code_size(True)), flush=True)
            try:
                for step, used in phase_heap(bench):
                    print(f"heap after {step}: {used} bytes", flush=True)
            except RuntimeError as e:
                print("phase heap:", e)
            d3 = measure_d3(bench)
            print("D3:", json.dumps(d3), flush=True)
            d4 = measure_d4(bench)
            print("D4:", json.dumps(d4), flush=True)
            d1_files = measure_d1(bench, "files")
            print("D1 heap KB, .mpy client on the filesystem:", d1_files, flush=True)
            d1 = measure_d1(bench, "romfs")
            print("D1 heap KB, .mpy client in ROMFS:", d1, flush=True)
        d2 = measure_d2(micropython)
        print("D2 verify ms:", d2, flush=True)
    print(json.dumps({"D1_heap_kb": d1, "D2_verify_ms": round(d2, 3),
                      "D3_wire_ratio": round(d3["ratio"], 4),
                      "D4_boot_ms": round(d4["check_cpu_ms"], 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
