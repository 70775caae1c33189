"""`make demo` keeps showing the whole chain: it ends with every board confirmed on 1.1.0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tools.micropython import PROJECT_ROOT


def test_demo_updates_every_board_and_prints_the_fleet(tmp_path: Path) -> None:
    wifi_password = "demo-wifi-" + "s3cret-xq"
    env = dict(os.environ, MPOTA_DEMO_DIR=str(tmp_path / "demo"), COLUMNS="200",
               MPOTA_DEMO_WIFI=wifi_password)
    for name in ("MPOTA_TOKEN", "MPOTA_SERVER"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "tools.demo"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fleet = [line for line in done.stdout.splitlines() if line.startswith("unix-")]
    assert len(fleet) == 3
    for line in fleet:
        assert "demo 1.1.0" in line and "confirmed" in line, line
    assert "confirmed 3, failed 0, rolled_back 0" in done.stdout
    assert wifi_password not in done.stdout + done.stderr
    log = (tmp_path / "demo" / "station-log.jsonl").read_text()
    assert wifi_password not in log
