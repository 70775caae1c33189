"""A FAT power cut that erases the sector of /ota's directory (rewritten whenever a file in /ota
is created or written) or of /ota_rec's (the second copy of each A/B record) on a board with
its client in ROMFS (docs/board.md, Flash and power cuts): the board keeps its identity, config
and trust root (/ota_id, which no update writes), checks in as itself and updates; its boot
state survives in the other directory's record, so it boots the slot that state names, never
a slot that was being staged. A board provisioned before /ota_id (every file in /ota) keeps
working with this client."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from board_rig import EVERYONE_NO_PAUSE, Rig, board_rig
from fat_support import SECTOR, dir_sector, overwrite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.reference_app import build_release, provision_board, small_app
from tools.board_files import app_hashes, read_state, slot_files
from tools.virtual_board import VirtualBoard, flash_image_path

_CHANNEL = "fat-ota-sector"
_OLD = small_app("1.0.0")
_NEW = small_app("1.1.0", {"lib/util.py": b"X = 2\n"})


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("fat-ota-sector")
    with board_rig(work, micropython) as rig:
        bundle = build_release(work, _NEW, "1.1.0", 2, rig.keys, app=_CHANNEL)
        rig.server.client().publish(bundle, channel=_CHANNEL, policy=EVERYONE_NO_PAUSE)
        yield rig


def _fat_board(rig: Rig, name: str) -> tuple[Path, VirtualBoard]:
    """A FAT board running 1.0.0, its client in ROMFS (as the power-cut enumeration's)."""
    flash = rig.work / name
    provision_board(flash, rig.server.client(), name, rig.proxy.url, rig.keys, _OLD,
                    app=_CHANNEL, channel=_CHANNEL, timeout_s=3, mpy=True, client="romfs")
    board = VirtualBoard(flash, micropython=rig.micropython, flash="fat")
    assert board.block_flash is not None
    board.block_flash.sync_into_image()
    return flash, board


def _erase(board: VirtualBoard, directory: str) -> None:
    """What a cut after the erase of `directory`'s sector leaves: the sector erased."""
    image = flash_image_path(board.flash_dir)
    overwrite(image, dir_sector(image, directory), b"")


def test_a_fat_board_that_loses_the_ota_directory_sector_checks_in_as_itself_and_updates(
        rig: Rig) -> None:
    flash, board = _fat_board(rig, "lost-ota")
    _erase(board, "/ota")  # the old layout's identity, trust and both state records with it
    before = len(rig.proxy.exchanges)
    result = board.run(max_boots=3, timeout=60)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "Traceback" not in result.output, result.output
    assert "APP 1.1.0" in result.boots[-1].output, result.output
    # Signed with its own key and counted: the server offered it the release.
    checkins = [e.status for e in rig.proxy.exchanges[before:] if e.path.endswith("/checkin")]
    assert checkins[:1] == [200], result.output
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"]) == ("b", 1), state
    assert slot_files(flash, "b") == app_hashes(_NEW)
    assert rig.server.client().device("lost-ota")["last_status"] == "confirmed"


@pytest.mark.parametrize("lost", ["/ota", "/ota_rec"])
def test_the_boot_state_outlives_either_record_directory_and_a_half_staged_slot_never_boots(
        rig: Rig, lost: str) -> None:
    """An updated board (slot b active, confirmed) whose slot a is half restaged, as a next
    update leaves it, loses one record directory's sector: it boots b, 1.1.0, whole. With
    both records in /ota it would fall back to the factory state and boot the torn slot a."""
    name = "restaging" + lost.replace("/", "-")
    flash, board = _fat_board(rig, name)
    updated = board.run(max_boots=3, timeout=60)
    assert "APP 1.1.0" in updated.boots[-1].output, updated.output
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"]) == ("b", 1), state
    shutil.rmtree(flash / "app" / "a")  # slot a as the next update's staging leaves it
    (flash / "app" / "a").mkdir()
    (flash / "app" / "a" / "app_main.py").write_bytes(b"raise SystemExit('half staged')\n")
    board.block_flash.sync_into_image()  # type: ignore[union-attr]
    _erase(board, lost)
    alone = VirtualBoard(flash, micropython=rig.micropython, flash="fat",
                         wifi_ok=False).run(max_boots=2, timeout=60)
    assert alone.ended == "exit", alone.output
    assert "APP 1.1.0" in alone.boots[-1].output, alone.output
    assert "half staged" not in alone.output, alone.output
    state = read_state(flash)
    assert state is not None and state["active"] == "b", state
    assert slot_files(flash, "b") == app_hashes(_NEW)


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(garbage=st.one_of(st.binary(max_size=SECTOR), st.binary(min_size=SECTOR,
                                                               max_size=SECTOR)),
       where=st.sampled_from(["/ota", "/ota_rec"]))
def test_whatever_a_record_directory_sector_holds_the_board_keeps_its_identity_and_updates(
        rig: Rig, garbage: bytes, where: str) -> None:
    """Random bytes over /ota's or /ota_rec's sector (the rest erased), as a torn program
    leaves it: every boot runs 1.0.0 or 1.1.0 whole, and within two checks the board, still
    itself, has updated."""
    name = f"garbage-{len(list(rig.work.glob('garbage-*')))}"
    flash, board = _fat_board(rig, name)
    image = flash_image_path(flash)
    overwrite(image, dir_sector(image, where), garbage)
    for _ in range(2):
        result = board.run(max_boots=3, timeout=60)
        assert result.ended == "exit", result.output
        for boot in result.boots:  # each resets into an update or runs an app whole
            assert boot.ended == "reset" or "APP 1.0.0" in boot.output \
                or "APP 1.1.0" in boot.output, result.output
        assert "Traceback" not in result.output, result.output
        state = read_state(flash)
        if state is not None and (state["active"], state["ok"]) == ("b", 1):
            break
    assert "APP 1.1.0" in result.boots[-1].output, result.output
    assert slot_files(flash, "b") == app_hashes(_NEW)
    assert rig.server.client().device(name)["last_status"] == "confirmed"


def test_a_board_provisioned_before_ota_id_keeps_its_files_in_ota_and_updates(
        rig: Rig) -> None:
    """The legacy layout (every file in /ota): the client reads it there and writes nothing
    of the new layout (no migration: docs/board.md, Files)."""
    name = "legacy"
    flash = rig.work / name
    provision_board(flash, rig.server.client(), name, rig.proxy.url, rig.keys, _OLD,
                    app=_CHANNEL, channel=_CHANNEL, timeout_s=3)
    for moved in ("ota_id/config.json", "ota_id/device.key", "ota_id/trust.json",
                  "ota_rec/state1"):
        (flash / moved).rename(flash / "ota" / moved.split("/")[1])
    (flash / "ota_id").rmdir()
    (flash / "ota_rec").rmdir()
    result = VirtualBoard(flash, micropython=rig.micropython).run(max_boots=3, timeout=60)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.1.0" in result.boots[-1].output, result.output
    assert not (flash / "ota_id").exists() and not (flash / "ota_rec").exists()
    assert {p.name for p in (flash / "ota").glob("state[01]")} == {"state0", "state1"}
    assert {p.name for p in (flash / "ota").glob("ctr[01]")} == {"ctr0", "ctr1"}
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"]) == ("b", 1), state
    assert rig.server.client().device(name)["last_status"] == "confirmed"
