"""The ESP8266 board of fleet.yaml, as far as the virtual board can be one (docs/board.md,
Platforms): its filesystem geometry (littlefs, or FAT on a board formatted so), its heap
(38 KB, ports/esp8266/main.c, less the port's FlashBdev object: 37 KB with the filesystem
inside, as the board has it), the 32-bit word size, the client in ROMFS (the only layout that
fits) and http.

- The station's littlefs image for the `esp8266` board is what the board mounts: built with
  `tools.station.image` from fleet.yaml's geometry, written as the board's flash image,
  booted, and updated end to end against a real server.
- The reference update (20 files, D1's) fits that heap on littlefs and on FAT images.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from bench.reference_app import (
    Keys,
    build_release,
    bundle_files,
    make_keys,
    provision_board,
    reference_files,
)
from signing.bundle import load_bundle
from tools.board_files import read_state, slot_files
from tools.fleet import Board, load_fleet
from tools.local_server import LocalServer
from tools.station.image import PartitionGeometry, build_littlefs_image
from tools.virtual_board import VirtualBoard, flash_image_path
from tools.virtual_board.flash import FlashKind

ESP8266_HEAP = "37k"  # 38 KB (ports/esp8266/main.c) less the port's FlashBdev object


def esp8266() -> Board:
    return load_fleet(PROJECT_ROOT / "fleet.yaml").boards["esp8266"]


def geometry() -> PartitionGeometry:
    board = esp8266()
    return PartitionGeometry(board.fs_offset, board.fs_size, board.prog_size)


@dataclass
class Rig:
    keys: Keys
    server: LocalServer
    old_files: dict[str, bytes]
    new_hashes: dict[str, str]
    work: Path


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("board-esp8266")
    keys = make_keys()
    (work / "root.json").write_bytes(keys.root_envelope)
    old = build_release(work, reference_files("1.0.0"), "1.0.0", 1, keys, mpy=True)
    new = build_release(work, reference_files("1.1.0"), "1.1.0", 2, keys, mpy=True)
    with LocalServer(work / "data", work / "root.json") as server:
        server.client().publish(new, channel="esp8266", percent=100)
        manifest = load_bundle(new).manifest
        yield Rig(keys, server, bundle_files(old), {e.path: e.sha256 for e in manifest.files},
                  work)


def _provision(rig: Rig, name: str) -> Path:
    flash = rig.work / name
    assert rig.server.url.startswith("http://")  # an ESP8266 speaks http only
    provision_board(flash, rig.server.client(), name, rig.server.url, rig.keys, rig.old_files,
                    mpy=True, channel="esp8266", client="romfs")
    return flash


def _updates(rig: Rig, flash: Path, kind: FlashKind, micropython32: str) -> None:
    board = VirtualBoard(flash, micropython=micropython32, heapsize=ESP8266_HEAP, flash=kind,
                         geometry=geometry())
    result = board.run(max_boots=3, timeout=120)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.1.0" in result.boots[-1].output
    assert slot_files(flash, "b") == rig.new_hashes
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"]) == ("b", 1)
    assert rig.server.client().device(flash.name)["version"] == "1.1.0"


def test_the_station_image_for_the_esp8266_boots_and_updates_in_its_heap(
        rig: Rig, micropython32: str) -> None:
    provisioned = _provision(rig, "esp8266-image")
    files = {str(p.relative_to(provisioned)): p.read_bytes()
             for p in sorted(provisioned.rglob("*")) if p.is_file()}
    image = build_littlefs_image(files, geometry())
    assert len(image) == 763 * 4096  # flashbdev.py's block count on a 4 MiB module
    # The board's flash is now only the station's image: the host directory is emptied and
    # filled back from the image by the virtual board (an image without a sync record).
    for path in sorted(provisioned.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    flash_image_path(provisioned).write_bytes(image)
    _updates(rig, provisioned, "lfs2", micropython32)


@pytest.mark.parametrize("kind", ["lfs2", "fat"])
def test_the_reference_update_fits_the_esp8266_heap_with_the_client_in_romfs(
        rig: Rig, micropython32: str, kind: FlashKind) -> None:
    flash = _provision(rig, f"esp8266-{kind}")
    _updates(rig, flash, kind, micropython32)
