"""P1: the station's host-side time per board, excluding the flash write.

Host-side steps: check (ask the server about an existing identity), key (generate the P-256
pair), files (config, trust, client as .mpy; the image too for the image method) and register
(the server call). Identify and write are the board's and the link's time, so they are left out.

Runs the real station (one process per board) on virtual boards through real mpremote against
a real `ota serve` on 127.0.0.1: 1 board alone, then 8 at once. Prints a table, then one JSON
line: P1_ms = median host-side ms per board with 8 in parallel; P1_parallel_ratio = that median
divided by the median with 1 board. Goals: P1_ms <= 300, ratio <= 2.0.

P2: `ota install` of the reference update (bench/reference_app.py 1.0.0 -> 1.1.0, 3 changed
files) onto a virtual board through mpremote, as one would type it: the command's wall time,
its own start-up included, from the staging over the board's REPL (raw-paste mode) to the
board's boots that verify, install and run the new app. Median of 5 fresh boards. Goal:
P2_install_s <= 2.0.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from signing.keys import generate_private_key
from signing.root import new_root, sign_root
from tools.fleet import parse_fleet
from tools.local_server import LocalServer
from tools.station.log import BoardRecord, StationLog
from tools.station.secrets import Secret
from tools.station.station import Station, StationJob
from tools.station.targets import Target

HOST_STEPS = ("check", "key", "files", "register")
SINGLE_RUNS = 3
PARALLEL = 8
INSTALL_RUNS = 5
OTA = str(Path(sys.executable).with_name("ota"))

FLEET = """\
version: 1
server: {{url: "{url}", publisher_token_env: UNUSED}}
channels: {{stable: {{}}}}
rollout: {{stages: [100]}}
wifi: {{bench: {{ssid: bench, password_env: UNUSED_TOO}}}}
boards: {{unix: {{chip: unix}}}}
provisioning: {{bench: {{board: unix, wifi: bench, channel: stable, mpy: true}}}}
"""


def host_ms(record: BoardRecord) -> float:
    return 1000 * sum(record.steps[s][1] - record.steps[s][0] for s in HOST_STEPS)


def run(job: StationJob, work: Path, name: str, count: int) -> list[float]:
    targets = []
    for index in range(count):
        flash = work / f"{name}-{index}"
        flash.mkdir()
        targets.append(Target("virtual", str(flash)))
    records = Station(job, StationLog(work / "station.jsonl"), timeout_s=300).run(targets)
    failed = [r for r in records if r.outcome != "provisioned"]
    if failed:
        raise SystemExit(f"bench: {len(failed)} board(s) failed: {failed[0].error}")
    return [host_ms(r) for r in records]


def install_seconds(work: Path) -> list[float]:
    """P2: wall time of `ota install BUNDLE --virtual DIR` of the reference update, per board."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.reference_app import build_release, make_keys, provision_board, reference_files

    class NoServer:  # the boards are provisioned for a server nobody runs: nothing is needed
        def register_device(self, *args: object, **kwargs: object) -> None:
            return None

    keys = make_keys()
    bundle = build_release(work, reference_files("1.1.0"), "1.1.0", 2, keys)
    times = []
    for index in range(INSTALL_RUNS):
        flash = work / f"install-{index}"
        provision_board(flash, NoServer(), f"install-{index}", "http://127.0.0.1:9", keys,
                        reference_files("1.0.0"), timeout_s=1)
        started = time.perf_counter()
        done = subprocess.run([OTA, "install", str(bundle), "--virtual", str(flash), "--json"],
                              capture_output=True, text=True, timeout=120, check=False)
        times.append(time.perf_counter() - started)
        if done.returncode != 0 or not json.loads(done.stdout)["outcome"]["installed"]:
            raise SystemExit(f"bench: ota install failed: {done.stderr or done.stdout}")
        copied = json.loads(done.stdout)["plan"]["bytes"]
    print(f"ota install of the reference update (x{INSTALL_RUNS}): {copied} bytes copied; "
          f"all {[round(t, 2) for t in times]} s")
    return times


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-station-"))
    try:
        root_key = generate_private_key()
        root = new_root(version=1, expires=int(time.time()) + 86400, root_keys=[root_key],
                        release_keys=[root_key])
        (work / "root.json").write_bytes(sign_root(root, [root_key]))
        with LocalServer(work / "server", work / "root.json") as server:
            fleet = parse_fleet(FLEET.format(url=server.url), work / "fleet.yaml")
            job = StationJob(
                station="bench", operator="bench", profile=fleet.profile("bench"),
                server_url=server.url, publisher_token=Secret(server.token, "token"),
                wifi_password=Secret("bench-password", "wifi"),
                trust_json=(work / "root.json").read_bytes())
            single = [ms for i in range(SINGLE_RUNS) for ms in run(job, work, f"one{i}", 1)]
            parallel = run(job, work, "eight", PARALLEL)
        installs = install_seconds(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one = statistics.median(single)
    eight = statistics.median(parallel)
    print(f"cpus: {os.cpu_count()}; host-side steps: {', '.join(HOST_STEPS)}")
    print(f"1 board  (x{SINGLE_RUNS}): median {one:7.1f} ms  all {[round(v) for v in single]}")
    print(f"{PARALLEL} boards at once : median {eight:7.1f} ms  all "
          f"{[round(v) for v in sorted(parallel)]}")
    print(json.dumps({"P1_ms": round(eight, 1), "P1_parallel_ratio": round(eight / one, 2),
                      "P2_install_s": round(statistics.median(installs), 2)}))


if __name__ == "__main__":
    main()
