"""boot.py and the boot state on the real MicroPython port (virtual board), no server involved:
slot choice, trial boots counted before the app runs, rollback after N, confirm, torn records,
and a power cut at every file operation of a rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.board_files import (
    BoardConfig,
    InitialApp,
    app_hashes,
    install_board,
    read_state,
    record_bytes,
    slot_files,
)
from tools.virtual_board import VirtualBoard

OLD = InitialApp("demo", "1.0.0", 1, "app_main", {
    "app_main.py": b"import util\nprint('APP', util.VERSION)\n",
    "util.py": b"VERSION = '1.0.0'\n",
})
CRASHING = {
    "app_main.py": b"import util\nprint('APP', util.VERSION)\nraise RuntimeError('broken')\n",
    "util.py": b"VERSION = '1.1.0'\n",
    "extra/data.txt": b"new data\n",
}
CONFIRMING = {
    "app_main.py": b"import ota, util\nprint('APP', util.VERSION)\nota.confirm()\n",
    "util.py": b"VERSION = '1.1.0'\n",
}


def _config(trial_boots: int = 3) -> BoardConfig:
    # No server check at boot: these tests are about boot.py and the state alone.
    return BoardConfig(device_id="board-1", server="http://127.0.0.1:9", poll_at_boot=False,
                       poll_every_min=0, trial_boots=trial_boots)


def _board(tmp_path: Path, trial_boots: int = 3) -> Path:
    flash = tmp_path / "flash"
    flash.mkdir()
    install_board(flash, _config(trial_boots), b"\x01" * 32, b"{}", app=OLD)
    return flash


def _stage_trial(flash: Path, files: dict[str, bytes], tries: int = 3) -> None:
    """Put version 1.1.0 into slot b and flip to it on trial, as the OTA client does."""
    for path, data in files.items():
        target = flash / "app" / "b" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    state = read_state(flash)
    assert state is not None
    state.update(seq=state["seq"] + 1, active="b", ok=0, trial=0, tries=tries)
    state["slots"]["b"] = {"app": "demo", "version": "1.1.0", "sequence": 2,
                           "entry": "app_main"}
    (flash / "ota_rec" / "state1").write_bytes(record_bytes(state))


def _queued_reports(flash: Path) -> list[dict[str, object]]:
    queue = flash / "ota" / "reports"
    if not queue.exists():
        return []
    return [json.loads(line) for line in queue.read_text().splitlines() if line.strip()]


def test_fresh_board_boots_its_factory_app_without_writing_flash(tmp_path, micropython):
    flash = _board(tmp_path)
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=2, timeout=30)
    assert result.ended == "exit", result.output
    assert "APP 1.0.0" in result.output
    assert result.fs_ops == 0


def test_board_counts_trial_boots_then_rolls_back_a_crashing_app(tmp_path, micropython):
    flash = _board(tmp_path)
    _stage_trial(flash, CRASHING, tries=3)
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=8, timeout=60)
    assert [b.ended for b in result.boots] == ["reset", "reset", "reset", "exit"], result.output
    assert result.output.count("APP 1.1.0") == 3
    assert result.boots[-1].output.count("APP 1.0.0") == 1
    state = read_state(flash)
    assert state is not None
    assert (state["active"], state["ok"], state["reject"]) == ("a", 1, 2)
    reports = _queued_reports(flash)
    assert [(r["status"], r["sequence"], r["version"]) for r in reports] == [
        ("rolled_back", 2, "1.0.0")]


def test_board_keeps_a_trial_app_that_confirms(tmp_path, micropython):
    flash = _board(tmp_path)
    _stage_trial(flash, CONFIRMING, tries=2)
    board = VirtualBoard(flash, micropython=micropython)
    for _ in range(4):  # well past the two trial boots
        result = board.run(max_boots=1, timeout=30)
        assert result.ended == "exit", result.output
        assert "APP 1.1.0" in result.output
    state = read_state(flash)
    assert state is not None
    assert (state["active"], state["ok"]) == ("b", 1)
    assert [r["status"] for r in _queued_reports(flash)] == ["confirmed"]


def test_board_ignores_a_torn_newest_state_record(tmp_path, micropython):
    flash = _board(tmp_path)
    _stage_trial(flash, CONFIRMING)
    newest = flash / "ota_rec" / "state1"
    newest.write_bytes(newest.read_bytes()[:-20])  # power lost mid-write
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=1, timeout=30)
    assert "APP 1.0.0" in result.output, result.output


def test_board_boots_factory_slot_when_the_client_package_is_broken(tmp_path, micropython):
    flash = _board(tmp_path)
    (flash / "ota" / "state.py").write_text("raise ImportError('flash corrupted')\n")
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=1, timeout=30)
    assert "APP 1.0.0" in result.output, result.output


def _full_rollback_ops(tmp_path: Path, micropython: str) -> int:
    flash = _board(tmp_path / "probe", trial_boots=1)
    _stage_trial(flash, CRASHING, tries=1)
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=5, timeout=30)
    assert result.ended == "exit", result.output
    return result.fs_ops


def test_rollback_survives_a_power_cut_at_every_file_operation(tmp_path, micropython):
    (tmp_path / "probe").mkdir()
    total = _full_rollback_ops(tmp_path, micropython)
    assert total >= 4  # trial count, rollback, report queued, note cleared
    old = app_hashes(OLD.files)
    new = app_hashes(CRASHING)
    for cut in range(1, total + 1):
        case = tmp_path / f"cut{cut}"
        case.mkdir()
        flash = _board(case, trial_boots=1)
        _stage_trial(flash, CRASHING, tries=1)
        board = VirtualBoard(flash, micropython=micropython)
        first = board.run(max_boots=5, timeout=30, cut_at=cut)
        assert first.ended == "power_cut", (cut, first.output)
        after = board.run(max_boots=5, timeout=30)
        assert after.ended == "exit", (cut, after.output)
        assert after.boots[-1].output.count("APP 1.0.0") == 1, (cut, after.output)
        assert slot_files(flash, "a") == old
        assert slot_files(flash, "b") == new
        state = read_state(flash)
        assert state is not None and state["active"] == "a" and state["ok"] == 1
        statuses = [r["status"] for r in _queued_reports(flash)]
        assert statuses and set(statuses) == {"rolled_back"}, (cut, statuses)


@pytest.mark.parametrize("tries", [1, 2])
def test_trial_boot_count_follows_the_configured_number(tmp_path, micropython, tries):
    flash = _board(tmp_path, trial_boots=tries)
    _stage_trial(flash, CRASHING, tries=tries)
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=8, timeout=60)
    assert result.output.count("APP 1.1.0") == tries
    assert result.boots[-1].output.count("APP 1.0.0") == 1


def test_poll_backs_off_exponentially_with_jitter_after_failures(micropython):
    import subprocess
    client_dir = str(Path(__file__).resolve().parent.parent / "bootloader_py")
    script = "\n".join([
        "import sys, time",
        f"sys.path.insert(0, {client_dir!r})",
        "from ota import run",
        "cfg = {'poll': {'every_min': 60}}",
        "for _ in range(7):",
        "    run._schedule(cfg, False)",
        "    print(time.ticks_diff(run._next_poll, time.ticks_ms()) // 1000)",
        "run._schedule(cfg, True)",
        "print(time.ticks_diff(run._next_poll, time.ticks_ms()) // 1000)",
    ])
    out = subprocess.run([micropython, "-c", script], capture_output=True, text=True,
                         timeout=30, check=True).stdout.split()
    delays = [int(x) for x in out]
    for failures, delay in enumerate(delays[:-1], start=1):
        nominal = min(3600, 30 << failures)
        assert nominal // 2 - 1 <= delay < nominal, (failures, delay)
    assert delays[-1] in (3599, 3600)  # success: back to every_min


def test_board_boots_the_recorded_slot_when_the_trial_count_cannot_be_written(tmp_path,
                                                                              micropython):
    flash = _board(tmp_path)
    plain = {"app_main.py": b"import util\nprint('APP', util.VERSION)\n",
             "util.py": b"VERSION = '1.1.0'\n"}
    _stage_trial(flash, plain)  # state1 names b on trial; the next write goes to state0
    state0 = flash / "ota" / "state0"
    state0.unlink()
    state0.mkdir()  # the flash refuses that write (as a full one would)
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=2, timeout=30)
    assert result.ended == "exit", result.output
    assert "OSError" in result.output  # boot.py's guard printed why
    assert "APP 1.1.0" in result.output and "APP 1.0.0" not in result.output
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"], state["trial"]) == ("b", 0, 0)


def test_board_with_no_readable_state_and_a_broken_client_boots_slot_a(tmp_path, micropython):
    flash = _board(tmp_path)
    _stage_trial(flash, CONFIRMING)
    (flash / "ota" / "records.py").write_text("raise ImportError('flash corrupted')\n")
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=1, timeout=30)
    assert "APP 1.0.0" in result.output, result.output


def test_app_of_a_slot_the_state_does_not_name_is_never_confirmed(tmp_path, micropython):
    flash = _board(tmp_path)
    _stage_trial(flash, CRASHING)  # the state names b, on trial
    # A boot.py that put slot a on sys.path anyway (its state write landed, then it failed).
    (flash / "boot.py").write_text("import sys\nsys.path.insert(1, '/app/a')\n")
    (flash / "app" / "a" / "app_main.py").write_bytes(
        b"import ota\nprint('APP A', ota.confirm())\nraise RuntimeError('late')\n")
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=3, timeout=30)
    assert [b.ended for b in result.boots] == ["crash"], result.output  # no trial reset
    assert "APP A False" in result.output and "state names b" in result.output
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"]) == ("b", 0)


def test_trial_boot_arms_the_provisioned_watchdog_without_a_check_and_confirmed_boots_do_not(
        tmp_path, micropython):
    flash = tmp_path / "flash"
    flash.mkdir()
    config = BoardConfig(device_id="board-1", server="http://127.0.0.1:9", poll_at_boot=False,
                         poll_every_min=0, timeout_s=1, wifi_timeout_s=1, trial_watchdog_s=11)
    install_board(flash, config, b"\x01" * 32, b"{}", app=OLD)
    assert json.loads((flash / "ota_id" / "config.json").read_bytes())["trial_watchdog_s"] == 11
    _stage_trial(flash, {"app_main.py": b"import ota\nprint('ARMED', getattr(ota, 'wdt', None) "
                                        b"is not None)\nota.confirm()\n"})
    board = VirtualBoard(flash, micropython=micropython)
    outputs = [board.run(max_boots=1, timeout=30) for _ in range(3)]
    assert [r.ended for r in outputs] == ["exit"] * 3, outputs[-1].output
    assert [r.output.count("ARMED True") for r in outputs] == [1, 0, 0]
    assert all("ARMED False" in r.output for r in outputs[1:])  # confirmed at the first boot
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"]) == ("b", 1)
