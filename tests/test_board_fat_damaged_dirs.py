"""A damaged FAT directory in the client's scratch space (docs/board.md, Flash and power cuts): a
power cut in a FAT directory update leaves its sector erased (0xff) or torn, and its entries read
as garbage. The slot being staged and /ota/part are set aside (renamed to .bad<N>, their entries
untouched) and made again, and the board updates end to end against a real server; whatever
bytes the sector holds, a check never raises and the old app keeps running until the new one
is installed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from board_rig import EVERYONE_NO_PAUSE, Rig, board_rig
from fat_support import SECTOR as _SECTOR
from fat_support import dir_sector, overwrite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.reference_app import build_release, provision_board, small_app
from tools.board_files import app_hashes, read_state, slot_files
from tools.virtual_board import VirtualBoard, flash_image_path

_CHANNEL = "fat-damage"
_OLD = small_app("1.0.0")
_NEW = small_app("1.1.0")
_PART = "ab" * 32  # a partial download, named by its blob as the client names them


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("fat-damage")
    with board_rig(work, micropython) as rig:
        bundle = build_release(work, _NEW, "1.1.0", 2, rig.keys, app=_CHANNEL)
        rig.server.client().publish(bundle, channel=_CHANNEL, policy=EVERYONE_NO_PAUSE)
        yield rig


def _board_with_scratch(rig: Rig, name: str) -> tuple[Path, VirtualBoard]:
    """A FAT board running 1.0.0 whose slot b and /ota/part hold what an update cut short
    leaves there (a stale file, a subdirectory, a partial download), on the flash image."""
    flash = rig.work / name
    provision_board(flash, rig.server.client(), name, rig.proxy.url, rig.keys, _OLD,
                    app=_CHANNEL, channel=_CHANNEL, timeout_s=3)
    (flash / "app" / "b" / "lib").mkdir(parents=True)
    (flash / "app" / "b" / "lib" / "util.py").write_bytes(b"stale = 1\n")
    (flash / "app" / "b" / "old.py").write_bytes(b"from before\n")
    (flash / "ota" / "part").mkdir(parents=True, exist_ok=True)
    (flash / "ota" / "part" / _PART).write_bytes(b"x" * 100)
    board = VirtualBoard(flash, micropython=rig.micropython, flash="fat")
    assert board.block_flash is not None
    board.block_flash.sync_into_image()
    return flash, board


def _updated(flash: Path) -> bool:
    state = read_state(flash)
    return (state is not None and state["active"] == "b" and state["ok"] == 1
            and slot_files(flash, "b") == app_hashes(_NEW))


def test_a_damaged_staging_slot_and_part_directory_are_set_aside_and_the_board_updates(
        rig: Rig) -> None:
    flash, board = _board_with_scratch(rig, "erased-dirs")
    image = flash_image_path(flash)
    for path in ("/app/b", "/ota/part"):  # both sectors erased, as a cut after the erase leaves
        overwrite(image, dir_sector(image, path), b"")
    failed = len(rig.sent("failed"))
    result = board.run(max_boots=3, timeout=60)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "Traceback" not in result.output, result.output
    assert "APP 1.1.0" in result.boots[-1].output, result.output
    assert "set aside as /app/.bad0" in result.output, result.output
    assert "set aside as /ota/.bad0" in result.output, result.output
    assert _updated(flash), (read_state(flash), slot_files(flash, "b"))
    assert slot_files(flash, "a") == app_hashes(_OLD)  # the rollback target, untouched
    # Set aside, not removed: the renamed directories are there, the fresh ones hold only
    # what the update put there.
    assert (flash / "app" / ".bad0").is_dir() and (flash / "ota" / ".bad0").is_dir()
    assert not list((flash / "ota" / "part").iterdir())
    assert len(rig.sent("failed")) == failed  # recovered within the check: nothing refused


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(garbage=st.one_of(st.binary(max_size=_SECTOR), st.binary(min_size=_SECTOR,
                                                               max_size=_SECTOR)),
       where=st.sampled_from(["/app/b", "/app/b/lib", "/ota/part"]))
def test_whatever_a_scratch_directory_sector_holds_a_check_never_raises_and_the_old_app_runs(
        rig: Rig, garbage: bytes, where: str) -> None:
    """Random bytes over the sector (the rest erased): each check ends as a check ends (no
    exception escapes it), the board runs 1.0.0 whole until it runs 1.1.0 whole, and within two
    checks it has updated."""
    name = f"garbage-{len(list(rig.work.glob('garbage-*')))}"
    flash, board = _board_with_scratch(rig, name)
    image = flash_image_path(flash)
    overwrite(image, dir_sector(image, where), garbage)
    for _ in range(2):
        result = board.run(max_boots=3, timeout=60)
        assert result.ended == "exit", result.output
        assert "Traceback" not in result.output and "check failed" not in result.output, \
            result.output
        last = result.boots[-1].output
        if _updated(flash):
            assert "APP 1.1.0" in last, result.output
            break
        assert "APP 1.0.0" in last and slot_files(flash, "a") == app_hashes(_OLD), result.output
        assert read_state(flash) is None or read_state(flash)["active"] == "a"
    assert _updated(flash), result.output
