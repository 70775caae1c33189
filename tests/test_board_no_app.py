"""A board provisioned without an app boots, checks in and waits for its first release, quietly
(docs/fleet.md): real MicroPython (virtual board) against a real server behind the proxy."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from board_rig import Rig, board_rig

from tools.board_files import read_state, slot_files

_names = itertools.count(1)
_WAITING = "ota: no app installed yet: waiting for the first release"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Rig]:
    with board_rig(tmp_path_factory.mktemp("no-app"), micropython) as started:
        yield started


@pytest.fixture
def case(rig: Rig) -> tuple[Rig, str]:
    rig.proxy.clear()
    return rig, f"n{next(_names)}"


def _quiet(output: str) -> None:
    assert "Traceback" not in output and "Error" not in output, output


def test_board_without_an_app_checks_in_says_so_and_returns_when_it_never_polls(case):
    rig, name = case
    flash = rig.bare_board(name, poll_every_min=0)
    result = rig.boot(flash)
    assert [b.ended for b in result.boots] == ["exit"], result.output
    assert result.boots[0].traceback is None
    assert result.output.count(_WAITING) == 1
    _quiet(result.output)
    assert [e.status for e in rig.proxy.exchanges if e.path.endswith("/checkin")] == [204]
    assert rig.sent("failed") == []


def test_board_without_an_app_keeps_waiting_until_its_next_poll(case):
    rig, name = case
    flash = rig.bare_board(name, poll_every_min=1)
    result = rig.boot(flash, max_boots=1, timeout=8)
    assert result.ended == "timeout", result.output  # still waiting, not crashed or returned
    assert result.output.count(_WAITING) == 1
    _quiet(result.output)
    assert len(rig.checkins()) == 1  # the next one is a minute away


def test_waiting_board_installs_its_first_release_from_its_poll_loop(case):
    rig, name = case
    rig.publish(name, "1.0.0", 1, channel=name)
    flash = rig.bare_board(name, poll_at_boot=False, poll_every_min=1)  # no check at boot
    result = rig.boot(flash)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert _WAITING in result.boots[0].output and "APP" not in result.boots[0].output
    assert "APP 1.0.0" in result.boots[1].output
    _quiet(result.output)
    state = read_state(flash)
    assert state is not None and state["slots"][state["active"]]["app"] == name
    assert slot_files(flash, state["active"])
