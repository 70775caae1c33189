"""Power cut at EVERY filesystem mutation the board makes as it verifies a release staged over
USB, builds the other slot, flips and confirms: after each cut its active slot holds exactly
the old or the new version's file set, never a mix, and the next boots end on the new one,
confirmed. (The cuts during the staging itself: tests/test_install.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from offline_rig import NEW, OLD, Offline, offline_rig, queued, running

from tools.board_files import app_hashes, read_state, slot_files

VERSIONS = {"1.0.0": OLD, "1.1.0": NEW}


@pytest.fixture
def rig(tmp_path: Path, micropython: str) -> Any:
    with offline_rig(tmp_path, micropython) as r:
        yield r


def _active_version(flash: Path, cut: int) -> str:
    """The version whose exact file set the active slot holds (the one the board would run)."""
    state = read_state(flash)
    assert state is not None, cut
    files = slot_files(flash, state["active"])
    found = [v for v, app in VERSIONS.items() if files == app_hashes(app)]
    assert found, (cut, state, sorted(files))
    return found[0]


def test_the_swap_survives_a_power_cut_at_every_file_operation(rig: Offline):
    bundle = rig.release(NEW, "1.1.0", 2)
    probe = rig.board("probe")
    rig.stage(probe, bundle)
    whole = rig.boot(probe)
    assert [b.ended for b in whole.boots] == ["reset", "exit"], whole.output
    total = whole.fs_ops
    assert total > 10
    staged = rig.board("staged")
    rig.stage(staged, bundle)
    seen = set()
    for cut in range(1, total + 1):
        flash = rig.work / f"cut{cut}"
        shutil.copytree(staged, flash)  # the same staged board, a fresh copy for each cut
        cut_run = rig.boot(flash, cut_at=cut)
        assert cut_run.ended == "power_cut", (cut, cut_run.output)
        seen.add(_active_version(flash, cut))
        after = rig.boot(flash)  # and on from there: the new one, confirmed, nothing staged
        assert after.ended == "exit", (cut, after.output)
        assert running(flash, after.output, VERSIONS) == "1.1.0", (cut, after.output)
        state = read_state(flash)
        assert state is not None and state["ok"] == 1, (cut, state)
        # A cut between the flip and the staging area's removal leaves the release staged:
        # the first boot off trial finds it installed already and removes it, reporting
        # nothing. A cut during the removal may leave blobs there, inert without the envelope;
        # the next `ota install` removes them (tools/install.py plan_install).
        rig.boot(flash, max_boots=1)
        assert not (flash / "ota" / "staged" / "manifest.dsse").exists(), cut
        assert not [r for r in queued(flash) if r["status"] == "failed"], cut
    assert seen == {"1.0.0", "1.1.0"}  # the cuts fell on both sides of the flip
