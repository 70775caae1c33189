"""D2: time for the board to verify a release manifest, on the MicroPython unix port.

The manifest is the reference update's (bench/reference_app.py: 20 files, release 1.1.0 with
deflate transfer copies), built and signed with signing/ under a 1-of-1 root.  The board loads
the root with precompute=True (building the release key's comb table, which otherwise happens
in the first verify), then times
`trust.verify_manifest` 20 times: envelope bytes in, verified manifest dict out (JSON, base64,
PAE hash, ECDSA P-256, every field and path check).  The figure is the median in ms.

Also printed (not figures): the first verify, the one-off table builds and their heap cost, the
same run with the small-heap setting (4-teeth tables), and with the OTA client's setting
(KEY_TEETH = 0: the client verifies one manifest per check, so it builds no 2 KB key table).

Last line: {"D2_verify_ms": <median>}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOARD_DIR = ROOT / "bootloader_py"
RUNS = 20
if str(ROOT) not in sys.path:  # bench/ and tools/ from a plain `python bench/...` run
    sys.path.insert(0, str(ROOT))

BOARD_SCRIPT = """
import sys, json, gc, time
sys.path.insert(0, @BOARD_DIR@)
from ota import p256, trust
G_TEETH, KEY_TEETH = @TEETH@
p256.G_TEETH = G_TEETH
p256.KEY_TEETH = KEY_TEETH
def read(path):
    with open(path, "rb") as f:
        return f.read()
manifest = read(@MANIFEST@)
gc.collect()
free0 = gc.mem_free()
t = time.ticks_us()
p256.g_comb()
g_build = time.ticks_diff(time.ticks_us(), t)
gc.collect()
free1 = gc.mem_free()
t = time.ticks_us()
root = trust.load_root(@ROOT_FILE@, precompute=True)
load = time.ticks_diff(time.ticks_us(), t)
gc.collect()
free2 = gc.mem_free()
times = []
for i in range(@RUNS@):
    gc.collect()
    t = time.ticks_us()
    m = trust.verify_manifest(manifest, root, board="unix", installed_sequence=1,
                              now=@NOW@)
    times.append(time.ticks_diff(time.ticks_us(), t))
assert len(m["files"]) == 20 and m["version"] == "1.1.0"
first = times[0]
times.sort()
print(json.dumps({"median_us": times[len(times) // 2], "first_us": first, "min_us": times[0],
                  "g_table_build_us": g_build, "g_table_bytes": free0 - free1,
                  "load_root_us": load, "root_and_key_table_bytes": free1 - free2,
                  "envelope_bytes": len(manifest)}))
"""


def _write_inputs(folder: Path) -> tuple[Path, Path]:
    """The reference release 1.1.0 (bench/reference_app.py), signed; its root as trust.json."""
    from bench.reference_app import build_release, make_keys, reference_files

    keys = make_keys()
    bundle = build_release(folder, reference_files("1.1.0"), "1.1.0", 2, keys)
    root_file = folder / "trust.json"
    root_file.write_bytes(keys.root_envelope)
    return root_file, bundle / "manifest.dsse.json"


def run_board(micropython: str, g_teeth: int | None = None, key_teeth: int | None = None,
              ) -> dict[str, int]:
    """One MicroPython run; teeth None keeps p256's defaults. Returns the board's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        root_file, manifest_file = _write_inputs(Path(tmp))
        teeth = "p256.G_TEETH, p256.KEY_TEETH" if g_teeth is None else f"{g_teeth}, {key_teeth}"
        script = (BOARD_SCRIPT.replace("@BOARD_DIR@", repr(str(BOARD_DIR)))
                  .replace("@ROOT_FILE@", repr(str(root_file)))
                  .replace("@MANIFEST@", repr(str(manifest_file)))
                  .replace("@TEETH@", teeth).replace("@RUNS@", str(RUNS))
                  .replace("@NOW@", str(int(time.time()))))
        done = subprocess.run([micropython, "-c", script], capture_output=True, text=True,
                              timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError("board run failed: " + done.stderr.strip()[-500:])
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure_d2(micropython: str) -> float:
    """D2 in ms: median of 20 manifest verifies with the default comb tables."""
    return run_board(micropython)["median_us"] / 1000


def main() -> None:
    from tools.micropython import find_micropython

    micropython = find_micropython()
    default = run_board(micropython)
    print("default tables:", json.dumps(default))
    small = run_board(micropython, 4, 4)
    print("small-heap tables (G_TEETH=4, KEY_TEETH=4):", json.dumps(small))
    client = run_board(micropython, 6, 0)
    print("as the OTA client verifies (G_TEETH=6, KEY_TEETH=0: no key table, a throw-away "
          "comb per verify):", json.dumps(client))
    print(json.dumps({"D2_verify_ms": round(default["median_us"] / 1000, 3)}))


if __name__ == "__main__":
    main()
