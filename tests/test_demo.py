"""`make demo` keeps showing the whole chain: every board confirms 1.1.0, then a crashing 1.2.0
is rolled back by the first two boards on their own and the rollout pauses before the third."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tools.micropython import PROJECT_ROOT


def test_demo_updates_every_board_rolls_back_a_bad_release_and_prints_the_fleet(
        tmp_path: Path) -> None:
    wifi_password = "demo-wifi-" + "s3cret-xq"
    env = dict(os.environ, MPOTA_DEMO_DIR=str(tmp_path / "demo"), COLUMNS="200",
               MPOTA_DEMO_WIFI=wifi_password)
    for name in ("MPOTA_TOKEN", "MPOTA_SERVER", "MPOTA_CA"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "tools.demo"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # over https, every board verifying the server against the CA it was provisioned with
    assert "serving at https://127.0.0.1:" in done.stdout
    assert "certificate refused" not in done.stdout
    # 1.1.0 reached every board ...
    assert "confirmed 3, failed 0, rolled_back 0" in done.stdout
    # ... 1.2.0 was rolled back by two, which paused its rollout before the third.
    assert "rollout of demo 1.2.0 (sequence 3): paused" in done.stdout
    assert "confirmed 0, failed 0, rolled_back 2" in done.stdout
    fleet = [line.split("\t") for line in done.stdout.splitlines() if line.startswith("unix-")]
    assert [row[3] for row in fleet] == ["demo 1.1.0"] * 3
    assert sorted(row[4] for row in fleet) == ["confirmed", "rolled_back", "rolled_back"]
    assert wifi_password not in done.stdout + done.stderr
    log = (tmp_path / "demo" / "station-log.jsonl").read_text()
    assert wifi_password not in log
    # the third board runs its client from a ROM partition image, the others from files, and
    # boots on the 32-bit port in a 40 KB heap (https): it took 1.1.0, was never offered 1.2.0
    assert done.stdout.count("board3 (32-bit port, 40k heap): ") == 3
    boards = tmp_path / "demo" / "boards"
    assert (boards / "board3.romfs").is_file() and not (boards / "board1.romfs").exists()
    assert not list((boards / "board3" / "ota").glob("*.*py"))
    assert list((boards / "board1" / "ota").glob("*.mpy"))
    ca_der = (boards / "board1" / "ota" / "ca.der").read_bytes()
    assert all((boards / f"board{n}" / "ota" / "ca.der").read_bytes() == ca_der
               for n in (2, 3))
