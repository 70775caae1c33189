"""The virtual board's flash as boards have it: littlefs v2 and FAT (MicroPython's own
vfs.VfsLfs2 and vfs.VfsFat) on a file-backed flash block device (standins/_vb_blockdev.py), the
host directory a mirror of the image; and one image for two uses: what the station writes into
an ESP32's `vfs` partition is what the virtual board boots, and it updates end to end against a
real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fake_esp_serial
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_station_esptool import esp_job

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from bench.reference_app import build_release, make_keys, small_app
from tools.board_files import app_hashes, read_state, slot_files
from tools.local_server import LocalServer
from tools.station.image import BLOCK_SIZE
from tools.station.log import StationLog
from tools.station.station import Station
from tools.station.targets import Target
from tools.virtual_board import Torn, VirtualBoard, flash_image_path, harness_heap_bytes
from tools.virtual_board.compiled import compiled_standins
from tools.virtual_board.flash import ESP32_VFS, FlashImageError, default_flash_kind
from tools.virtual_board.power import FLASH_UMASK

BLOCK_KINDS = ("lfs2", "fat")


def _flash(tmp_path: Path, files: dict[str, str], name: str = "flash") -> Path:
    flash = tmp_path / name
    flash.mkdir()
    for path, text in files.items():
        (flash / path).parent.mkdir(parents=True, exist_ok=True)
        (flash / path).write_text(text)
    return flash


# -- the block device itself, on MicroPython ---------------------------------------------------

# Runs on the unix port with the stand-ins importable: a device over a 4-block image, power cut
# (an exception here, so the script can look) at operation CUT, torn after TORN bytes.
_DEVICE_SCRIPT = """
import sys, _vb_blockdev
class Cut(Exception):
    pass
def cut():
    raise Cut()
f = open(sys.argv[1], 'r+b')
dev = _vb_blockdev.FlashBlockDevice(f, 4096, 4, int(sys.argv[2]), int(sys.argv[3]),
                                    sys.argv[4], cut)
print(dev.ioctl(4, 0), dev.ioctl(5, 0), dev.ioctl(1, 0), dev.ioctl(3, 0))
try:
    dev.ioctl(6, 1)                        # operation 1: erase block 1
    dev.writeblocks(1, b'A' * 64, 32)      # operation 2: program 64 bytes at 4096 + 32
    dev.writeblocks(2, b'B' * 4096)        # operations 3 and 4: erase, program block 2
except Cut:
    print('cut', dev.ops)
else:
    print('done', dev.ops)
buf = bytearray(16)
dev.readblocks(1, buf, 32)
print(bytes(buf))
f.close()
"""


def _device(tmp_path: Path, micropython: str, cut_at: int, torn: int = 0,
            rest: str = "ff") -> tuple[list[str], bytes]:
    image = tmp_path / "dev.img"
    image.write_bytes(b"\x00" * 4 * BLOCK_SIZE)  # "as before": bytes that are not erased flash
    done = subprocess.run(
        [micropython, "-c", _DEVICE_SCRIPT, str(image), str(cut_at), str(torn), rest],
        capture_output=True, text=True, timeout=60, check=False,
        env={"MICROPYPATH": str(compiled_standins()), "PATH": os.environ.get("PATH", "")})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines(), image.read_bytes()


def test_block_device_speaks_the_block_protocol_and_counts_every_program_and_erase(
        tmp_path: Path, micropython: str) -> None:
    lines, image = _device(tmp_path, micropython, cut_at=0)
    assert lines[0] == "4 4096 0 0"  # block count, block size, init, sync
    assert lines[1] == "done 4"
    block1 = image[BLOCK_SIZE:2 * BLOCK_SIZE]
    assert block1 == b"\xff" * 32 + b"A" * 64 + b"\xff" * (BLOCK_SIZE - 96)
    assert image[2 * BLOCK_SIZE:3 * BLOCK_SIZE] == b"B" * BLOCK_SIZE
    assert image[:BLOCK_SIZE] == image[3 * BLOCK_SIZE:] == b"\x00" * BLOCK_SIZE


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_a_cut_leaves_exactly_the_operations_before_it(tmp_path: Path, micropython: str,
                                                       cut: int) -> None:
    lines, image = _device(tmp_path, micropython, cut_at=cut)
    assert lines[1] == f"cut {cut - 1}"
    erased, programmed = b"\xff" * BLOCK_SIZE, b"\xff" * 32 + b"A" * 64 + b"\xff" * 4000
    zero = b"\x00" * BLOCK_SIZE
    expected_1 = {1: zero, 2: erased}.get(cut, programmed)
    expected_2 = {1: zero, 2: zero, 3: zero, 4: erased}[cut]
    assert image[BLOCK_SIZE:2 * BLOCK_SIZE] == expected_1
    assert image[2 * BLOCK_SIZE:3 * BLOCK_SIZE] == expected_2


def test_a_torn_program_writes_its_first_bytes_and_leaves_the_rest_erased_or_as_before(
        tmp_path: Path, micropython: str) -> None:
    # Cut 4 is the program of block 2 (after its erase): 100 bytes of B, then the rest.
    _, image = _device(tmp_path, micropython, cut_at=4, torn=100, rest="ff")
    assert image[2 * BLOCK_SIZE:3 * BLOCK_SIZE] == b"B" * 100 + b"\xff" * (BLOCK_SIZE - 100)
    # Cut 2, torn: the program of 64 bytes of A into the erased block 1 stops after 10.
    _, image = _device(tmp_path, micropython, cut_at=2, torn=10, rest="old")
    assert image[BLOCK_SIZE:2 * BLOCK_SIZE] == b"\xff" * 32 + b"A" * 10 + b"\xff" * 4054
    # A torn erase (cut 1) erases only its first bytes.
    _, image = _device(tmp_path, micropython, cut_at=1, torn=300)
    assert image[BLOCK_SIZE:2 * BLOCK_SIZE] == b"\xff" * 300 + b"\x00" * (BLOCK_SIZE - 300)


# -- the board on block flash ------------------------------------------------------------------

_WRITER = (
    "import os\n"
    "print(sorted(os.listdir('/')))\n"
    "print(open('/data/in.txt').read())\n"
    "with open('/data/out.txt', 'w') as f:\n"
    "    f.write('from the board')\n"
    "os.remove('/gone.txt')\n"
    "os.mkdir('/made')\n"
    "st = os.statvfs('/')\n"
    "print(st[0], st[2])\n"
)


@pytest.mark.parametrize("kind", BLOCK_KINDS)
def test_board_boots_from_its_filesystem_image_and_the_host_sees_what_it_wrote(
        tmp_path: Path, micropython: str, kind: str) -> None:
    flash = _flash(tmp_path, {"main.py": _WRITER, "data/in.txt": "from the host",
                              "gone.txt": "x"})
    board = VirtualBoard(flash, micropython=micropython, flash=kind)
    result = board.run(max_boots=1)
    assert result.ended == "exit", result.output
    # Exactly the board's files at "/" (nothing of the harness), on a filesystem of the
    # ESP32 `vfs` partition's geometry.
    listing, read, statvfs = result.output.splitlines()
    assert (listing, read) == ("['data', 'gone.txt', 'main.py']", "from the host")
    block_size, blocks = map(int, statvfs.split())
    assert block_size == BLOCK_SIZE
    if kind == "lfs2":
        assert blocks == ESP32_VFS.block_count
    else:  # clusters: the boot sector, the FAT and the root directory take a few blocks
        assert ESP32_VFS.block_count - 8 <= blocks < ESP32_VFS.block_count
    assert result.fs_ops > 0  # block programs and erases
    assert flash_image_path(flash).stat().st_size == ESP32_VFS.size
    assert (flash / "data" / "out.txt").read_text() == "from the board"
    assert not (flash / "gone.txt").exists() and (flash / "made").is_dir()
    assert (flash / "data" / "out.txt").stat().st_mode & 0o777 == 0o777 & ~FLASH_UMASK & 0o666
    # A host change between runs reaches the image; the board's file is still there.
    (flash / "data" / "in.txt").write_text("changed by the host")
    (flash / "made").rmdir()
    (flash / "main.py").write_text(
        "import os\nprint(open('/data/in.txt').read(), sorted(os.listdir('/')))\n")
    again = board.run(max_boots=1)
    assert again.output.strip() == "changed by the host ['data', 'main.py']", again.output


@pytest.mark.parametrize("kind", BLOCK_KINDS)
def test_a_cut_on_block_flash_ends_the_boot_at_that_operation(
        tmp_path: Path, micropython: str, kind: str) -> None:
    script = "with open('/f.txt', 'w') as f:\n    f.write('x' * 9000)\nprint('done')\n"
    flash = _flash(tmp_path, {"main.py": script})
    whole = VirtualBoard(flash, micropython=micropython, flash=kind).run()
    assert whole.ended == "exit" and whole.fs_ops >= 3
    for cut in (1, whole.fs_ops):
        other = _flash(tmp_path, {"main.py": script}, f"cut{cut}")
        board = VirtualBoard(other, micropython=micropython, flash=kind)
        result = board.run(cut_at=cut, torn=Torn(7, "old"))
        assert result.ended == "power_cut" and result.fs_ops == cut - 1, result.output
        assert "done" not in result.output
        after = board.run()  # power back: mounted again as the port does
        if kind == "lfs2":  # littlefs' own recovery: the old file set, whole; the run again
            assert after.ended == "exit" and after.output == "done\n", after.output
        # FAT as it is: a cut in a directory or FAT sector loses what it held, main.py
        # included (docs/board.md, Flash and power cuts); the board still powers up.
        assert after.ended in ("exit", "crash"), after.output
    beyond = VirtualBoard(_flash(tmp_path, {"main.py": script}, "beyond"),
                          micropython=micropython, flash=kind).run(
        cut_at=whole.fs_ops + 1)
    assert beyond.ended == "exit"


def test_flash_that_does_not_mount_is_formatted_as_the_port_does(
        tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {"main.py": "print('never')"})
    flash_image_path(flash).write_bytes(b"\x00" * ESP32_VFS.size)  # no filesystem at all
    result = VirtualBoard(flash, micropython=micropython, flash="lfs2").run(max_boots=1)
    assert result.ended == "exit"
    assert "flash did not mount" in result.output and "never" not in result.output
    assert list(flash.iterdir()) == []  # the mirror shows the empty, formatted filesystem


def test_a_torn_write_needs_block_flash_and_a_cut(tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {"main.py": ""})
    with pytest.raises(ValueError, match="block flash"):
        VirtualBoard(flash, micropython=micropython, flash="dir").run(cut_at=1, torn=Torn(5))
    with pytest.raises(ValueError, match="block flash"):
        VirtualBoard(flash, micropython=micropython, flash="lfs2").run(torn=Torn(5))
    with pytest.raises(ValueError, match="at least 1 byte"):
        Torn(0)
    with pytest.raises(ValueError, match="not one of"):
        VirtualBoard(flash, micropython=micropython, flash="ntfs")  # type: ignore[arg-type]  # refused


def test_an_image_of_another_size_is_refused_naming_both_sizes(
        tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {"main.py": ""})
    flash_image_path(flash).write_bytes(b"\xff" * BLOCK_SIZE * 8)
    with pytest.raises(FlashImageError, match=f"{BLOCK_SIZE * 8} bytes.*{ESP32_VFS.size}"):
        VirtualBoard(flash, micropython=micropython, flash="lfs2").run()


def test_littlefs_is_the_default_flash_and_the_environment_can_choose(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPOTA_VB_FLASH", raising=False)
    assert default_flash_kind() == "lfs2"
    monkeypatch.setenv("MPOTA_VB_FLASH", "fat")
    assert default_flash_kind() == "fat"
    monkeypatch.setenv("MPOTA_VB_FLASH", "ext4")
    with pytest.raises(ValueError, match="MPOTA_VB_FLASH"):
        default_flash_kind()


@pytest.mark.parametrize("kind", BLOCK_KINDS)
def test_board_code_gets_its_heap_less_only_the_filesystems_own_buffers(
        tmp_path: Path, micropython: str, kind: str) -> None:
    flash = _flash(tmp_path, {"main.py": "import gc\ngc.collect()\nprint(gc.mem_free())\n"})
    on_dir = VirtualBoard(flash, micropython=micropython, flash="dir", heapsize="32k").run()
    on_block = VirtualBoard(flash, micropython=micropython, flash=kind,
                            heapsize="32k").run()
    assert harness_heap_bytes(micropython, kind) > harness_heap_bytes(micropython)
    # A port mounts its filesystem in the GC heap: VfsFat's sector buffer, VfsLfs2's caches.
    spent = int(on_dir.output) - int(on_block.output)
    assert 0 <= spent <= (4096 if kind == "fat" else 1024), spent


# -- one image, two uses: the station's image boots in the virtual board -----------------------

@pytest.fixture(autouse=True)
def _fake_serial_handler() -> None:
    fake_esp_serial.register()


def _station_image(tmp_path: Path, server: LocalServer) -> tuple[str, bytes]:
    """An ESP32 provisioned by the station over esptool (method image, client files): its
    device id and the bytes of its `vfs` partition."""
    flash = fake_esp_serial.new_flash_file(tmp_path / "esp32.bin")
    records = Station(esp_job(server, tmp_path), StationLog(tmp_path / "station.db"),
                      timeout_s=120).run(
        [Target("serial", fake_esp_serial.url_for(flash, "24:0a:c4:bb:00:01"))])
    assert [r.outcome for r in records] == ["provisioned"], [r.error for r in records]
    data = flash.read_bytes()
    return str(records[0].device_id), data[ESP32_VFS.offset:ESP32_VFS.offset + ESP32_VFS.size]


def _read_littlefs(image: bytes) -> dict[str, bytes]:
    from littlefs import LittleFS

    fs = LittleFS(block_size=BLOCK_SIZE, block_count=ESP32_VFS.block_count,
                  read_size=ESP32_VFS.prog_size, prog_size=ESP32_VFS.prog_size, mount=False)
    fs.context.buffer[:] = image
    fs.mount()
    files = {}
    for root, _dirs, names in fs.walk("/"):
        for name in names:
            path = f"{root.rstrip('/')}/{name}"
            with fs.open(path, "rb") as handle:
                files[path.lstrip("/")] = handle.read()
    return files


@pytest.mark.parametrize("kind", BLOCK_KINDS)
def test_a_station_built_image_boots_in_the_virtual_board_and_updates_end_to_end(
        tmp_path: Path, micropython: str, kind: str) -> None:
    """littlefs: the station's partition bytes ARE the virtual board's flash image. FAT (the
    station builds littlefs images only): the same files, on a FAT filesystem MicroPython's
    own VfsFat formats, as a FAT board holds them."""
    keys = make_keys()
    (tmp_path / "root.json").write_bytes(keys.root_envelope)
    with LocalServer(tmp_path / "data", tmp_path / "root.json") as server:
        device_id, image = _station_image(tmp_path, server)
        release = small_app("2.0.0")
        bundle = build_release(tmp_path, release, "2.0.0", 1, keys, app="fleetapp",
                               boards=("esp32",))
        server.client().publish(bundle, channel="stable", percent=100)
        board_dir = tmp_path / "board"
        board_dir.mkdir()
        if kind == "lfs2":
            flash_image_path(board_dir).write_bytes(image)
        else:
            for path, data in _read_littlefs(image).items():
                (board_dir / path).parent.mkdir(parents=True, exist_ok=True)
                (board_dir / path).write_bytes(data)
        board = VirtualBoard(board_dir, micropython=micropython, flash=kind)
        if kind == "lfs2":  # the very bytes the station wrote into the partition
            assert flash_image_path(board_dir).read_bytes() == image
        result = board.run(max_boots=4, timeout=90)
        assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
        assert "APP 2.0.0" in result.boots[-1].output, result.output
        assert json.loads((board_dir / "ota_id" / "config.json").read_text())["device_id"] \
            == device_id
        state = read_state(board_dir)
        assert state is not None and state["ok"] == 1, state
        assert slot_files(board_dir, state["active"]) == app_hashes(release)
        device = server.client().device(device_id)
        assert device["version"] == "2.0.0", device


# -- the host's mirror: whatever tree the host writes, the image holds exactly that --------------

_NAMES = st.text(alphabet="abcdefgh_0123456789", min_size=1, max_size=10)
_TREES = st.dictionaries(st.lists(_NAMES, min_size=1, max_size=3).map("/".join),
                         st.binary(max_size=6000), max_size=8)


def _write_tree(root: Path, tree: dict[str, bytes]) -> dict[str, bytes]:
    """Write `tree` under `root`, skipping paths that clash with a file already a directory
    (or the reverse); returns what was written."""
    written: dict[str, bytes] = {}
    for path, data in sorted(tree.items()):
        target = root / path
        parts = path.split("/")
        if any((root / "/".join(parts[:i])).is_file() for i in range(1, len(parts))) or \
                target.is_dir():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written[path] = data
    return written


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", BLOCK_KINDS)
@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=_TREES, second=_TREES, removed=st.integers(min_value=0, max_value=3))
def test_the_image_holds_exactly_the_tree_the_host_wrote_through_any_change(
        tmp_path_factory: pytest.TempPathFactory, micropython: str, kind: str,
        first: dict[str, bytes], second: dict[str, bytes], removed: int) -> None:
    flash = tmp_path_factory.mktemp("mirror") / "flash"
    flash.mkdir()
    written = _write_tree(flash, first)
    block = VirtualBoard(flash, micropython=micropython, flash=kind).block_flash
    assert block is not None
    block.sync_into_image()
    for path in sorted(written)[:removed]:  # the host removes some, changes and adds others
        (flash / path).unlink()
        del written[path]
    written.update(_write_tree(flash, second))
    block.sync_into_image()
    # Read back from the image alone: a fresh directory filled from it.
    readback = flash.with_name("readback")
    readback.mkdir()
    flash_image_path(flash).rename(flash_image_path(readback))
    again = VirtualBoard(readback, micropython=micropython, flash=kind).block_flash
    assert again is not None
    again.sync_from_image()
    assert _tree(readback) == _tree(flash) == {p: d for p, d in written.items()
                                               if (flash / p).is_file()}
