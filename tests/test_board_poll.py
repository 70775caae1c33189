"""Poll scheduling stays within what time.ticks_add and ticks_diff can count on every port
(docs/board.md, Ticks): deltas below 2**29 ms, since TICKS_PERIOD is 2**30 on 32-bit ports.
Real MicroPython (both ports under `make test`), a real server for the board run, and
fleet.yaml / BoardConfig refusing intervals past the bound."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from board_rig import Rig, board_rig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools.board_files import MAX_POLL_EVERY_MIN, MAX_SPAN_S, BoardConfig, BoardFilesError
from tools.fleet import FleetError, parse_fleet
from tools.micropython import PROJECT_ROOT

_CLIENT_DIR = str(PROJECT_ROOT / "bootloader_py")
_MAX_DELAY_MS = MAX_POLL_EVERY_MIN * 60_000  # bootloader_py/ota/run.py _MAX_DELAY_MS
_names = itertools.count(1)

# The board's poll scheduling under a clock the script sets: run.time is swapped for an object
# whose ticks_ms() is CLOCK[0] and whose ticks_add/ticks_diff are the port's own. The check
# itself is a stand-in that counts (this is about when it runs, not what it does).
_HARNESS = """
import sys, time
sys.path.insert(0, {client!r})
from ota import run

class Clock:
    pass

clock = Clock()
clock.now = 0
clock.ticks_ms = lambda: clock.now
clock.ticks_add = time.ticks_add
clock.ticks_diff = time.ticks_diff
run.time = clock
checks = []
run._check = lambda st, cfg: checks.append(clock.now) or True
run._state = lambda: None
TICKS_MAX = time.ticks_add(0, -1)
"""


def _run(micropython: str, body: str) -> list[str]:
    script = _HARNESS.format(client=_CLIENT_DIR) + body
    done = subprocess.run([micropython, "-c", script], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()


def _schedule_then_poll(micropython: str, every_min: int, back: int, late: int) -> list[str]:
    """Schedule at `back` ms before the tick counter wraps, then poll() 1 ms before the
    expected due time, at it, and `late` ms after that (a fresh schedule each time)."""
    return _run(micropython, f"""
cfg = {{"poll": {{"every_min": {every_min}}}}}
run._config = lambda: cfg
due = min({every_min}, {MAX_POLL_EVERY_MIN}) * 60000
start = time.ticks_add(0, -{back})
for offset in (due - 1, due, due + {late}):
    clock.now = start
    run._schedule(cfg, True)
    print(time.ticks_diff(run._next_poll, start))
    half = offset // 2
    clock.now = time.ticks_add(time.ticks_add(start, half), offset - half)
    print(run.poll(), len(checks))
    checks.clear()
""")


@pytest.mark.parametrize("every_min", [MAX_POLL_EVERY_MIN, 8948, 10_000, 10**7])
def test_poll_interval_past_the_tick_limit_is_scheduled_at_most_six_days_ahead(
        micropython, every_min):
    out = _schedule_then_poll(micropython, every_min, back=1000, late=0)
    assert out == [str(_MAX_DELAY_MS), "False", "0",  # 1 ms early: not due, nothing ran
                   str(_MAX_DELAY_MS), "True", "1",   # due: one check
                   str(_MAX_DELAY_MS), "True", "1"]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(every_min=st.integers(1, 2 * MAX_POLL_EVERY_MIN),
       back=st.one_of(st.integers(1, 5000), st.integers(1, 2**29 - 1)),
       late=st.integers(0, 2**28))
def test_polls_run_exactly_when_due_across_the_tick_counter_wrap(micropython, every_min, back,
                                                                  late):
    due = min(every_min, MAX_POLL_EVERY_MIN) * 60_000
    out = _schedule_then_poll(micropython, every_min, back, late)
    assert out == [str(due), "False", "0", str(due), "True", "1", str(due), "True", "1"]


def test_a_poll_whose_config_cannot_be_scheduled_never_raises_into_the_app(micropython):
    out = _run(micropython, """
cfg = {"poll": {"every_min": "often"}}
run._config = lambda: cfg
print("OUT", run.poll())
print("OUT", time.ticks_diff(run._next_poll, clock.now), len(checks))
clock.now = time.ticks_add(clock.now, 1000)
print("OUT", run.poll(), len(checks))
""")
    assert "TypeError:" in out  # printed, not raised
    ours = [word for i, word in enumerate(out) if i and out[i - 1] in ("OUT",)]
    # no check, the longest wait, and the next call a cheap "not due"
    assert ours == ["False", str(_MAX_DELAY_MS), "False"]
    assert out[-1] == "0"


def test_every_min_zero_never_checks_from_the_app_loop_even_after_a_boot_check(micropython):
    out = _run(micropython, """
cfg = {"poll": {"every_min": 0}}
run._config = lambda: cfg
run._schedule(cfg, True)  # what the boot's check does
print(time.ticks_diff(run._next_poll, clock.now))
clock.now = time.ticks_add(clock.now, 1000)
print(run.poll(), len(checks))
print(run.poll(force=True), len(checks))
""")
    assert out == [str(_MAX_DELAY_MS), "False", "0", "True", "1"]


def test_config_spans_are_held_to_six_days_when_read(micropython, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"device_id": "b", "confirm_after_s": 10**9, "timeout_s": 10**7,
                                "wifi_timeout_s": 30}))
    out = _run(micropython, f"""
from ota import config
cfg = config.load({str(path)!r})
print(cfg["confirm_after_s"], cfg["timeout_s"], cfg["wifi_timeout_s"])
print(time.ticks_add(0, cfg["confirm_after_s"] * 1000) >= 0)
""")
    assert out == [str(MAX_SPAN_S), str(MAX_SPAN_S), "30", "True"]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Rig]:
    with board_rig(tmp_path_factory.mktemp("poll"), micropython) as started:
        yield started


def test_looping_app_with_a_week_long_poll_interval_checks_in_once(rig):
    name = f"p{next(_names)}"
    rig.proxy.clear()
    flash = rig.board(name, app=name)
    (flash / "app" / "a" / "app_main.py").write_bytes(
        b"import ota\nprint('APP 1.0.0')\nfor _ in range(5):\n    print('POLL', ota.poll())\n")
    config = flash / "ota_id" / "config.json"
    doc = json.loads(config.read_bytes())
    doc["poll"]["every_min"] = 7 * 24 * 60  # a config written by hand: past the bound
    config.write_text(json.dumps(doc))
    result = rig.boot(flash, max_boots=1)
    assert result.ended == "exit", result.output
    assert "Traceback" not in result.output and "check failed" not in result.output
    assert result.output.count("POLL False") == 5
    assert len(rig.checkins()) == 1  # at boot only: the app's polls are six days away


# -- provisioning: the bound, named with its field -------------------------------------------

_FLEET = """\
version: 1
server:
  url: http://127.0.0.1:8080
  publisher_token_env: TOKEN
channels:
  stable: {{}}
rollout:
  stages: [100]
boards:
  unix:
    chip: unix
provisioning:
  p:
    board: unix
    channel: stable
    poll_interval_s: {poll}
"""


def test_fleet_refuses_a_poll_interval_past_six_days_naming_field_limit_and_line():
    assert parse_fleet(_FLEET.format(poll=MAX_SPAN_S), Path("f.yaml")).profile(
        "p").poll_interval_s == MAX_SPAN_S
    with pytest.raises(FleetError) as refused:
        parse_fleet(_FLEET.format(poll=MAX_SPAN_S + 1), Path("f.yaml"))
    assert str(refused.value) == (
        "f.yaml:16: provisioning profile 'p': poll_interval_s must be 10 to 518400 (6 days: "
        "the board's tick counter, docs/board.md), not 518401")


@pytest.mark.parametrize(("field", "value"), [("poll_every_min", MAX_POLL_EVERY_MIN + 1),
                                              ("poll_every_min", -1),
                                              ("confirm_after_s", MAX_SPAN_S + 1),
                                              ("timeout_s", MAX_SPAN_S + 1),
                                              ("wifi_timeout_s", MAX_SPAN_S + 1)])
def test_board_config_refuses_spans_the_board_cannot_count(field, value):
    with pytest.raises(BoardFilesError, match=f"^{field} must be"):
        BoardConfig(device_id="b", server="http://127.0.0.1:1", **{field: value}).to_json()
