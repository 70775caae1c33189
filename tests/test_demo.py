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
    out = done.stdout
    # every command the demo prints names releases by version, never by sequence
    commands = [line for line in out.splitlines() if line.startswith("$ ota ")]
    assert any("--version 1.2.0" in c for c in commands)
    assert not [c for c in commands if "--sequence" in c], commands
    after_update = _segment(out, "$ ota rollout status stable", "8. A bad release")
    after_bad = _segment(out.split("9. The fleet", 1)[1], "$ ota rollout status stable",
                         "$ ota devices list")
    # 1.1.0 reached every board ...
    assert _row(after_update, "confirmed") == ["confirmed", "3"]
    assert _row(after_update, "rolled_back") == ["rolled_back", "0"]
    # ... 1.2.0 was rolled back by two, which paused its rollout before the third.
    assert _row(after_bad, "rollout")[:3] == ["rollout", "demo", "1.2.0"]
    assert _row(after_bad, "rollout")[4] == "paused"
    assert _row(after_bad, "confirmed") == ["confirmed", "0"]
    assert _row(after_bad, "rolled_back") == ["rolled_back", "2"]
    listed = _segment(out, "$ ota devices list", "$ ota devices show")
    fleet = [line.split() for line in listed.splitlines() if line.startswith("unix-")]
    assert [row[3:5] for row in fleet] == [["demo", "1.1.0"]] * 3
    assert sorted(row[5] for row in fleet) == ["confirmed", "rolled_back", "rolled_back"]
    # the deployment history of a board that rolled back, with the app's own exception
    shown = out.split("$ ota devices show ", 1)[1]
    assert shown.split()[0] in {row[0] for row in fleet if row[5] == "rolled_back"}
    history = shown.split("deployment history", 1)[1]
    rolled = [line.split(None, 5) for line in history.splitlines() if " rolled_back " in line]
    assert [(r[2], r[5]) for r in rolled] == [("1.2.0", "OSError: sensor bus not found")]
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


def _segment(text: str, start: str, end: str) -> str:
    """The part of `text` from the first `start` to the next `end` after it."""
    return text.split(start, 1)[1].split(end, 1)[0]


def _row(table: str, first: str) -> list[str]:
    """The cells of the one line of `table` whose first cell is `first`."""
    (row,) = [line.split() for line in table.splitlines() if line.split()[:1] == [first]]
    return row
