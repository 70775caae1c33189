"""The romfs client layout (tools/board_files.py): the OTA client in a ROM partition image that
real MicroPython mounts with vfs.VfsRom, the data files on the filesystem, and boards that boot
from it (virtual boards: the image memory-mapped and mounted at /rom)."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
from pathlib import Path

import pytest

from tools.board_files import (
    BOOTLOADER_DIR,
    BoardConfig,
    BoardFilesError,
    InitialApp,
    board_files,
    client_files,
    client_romfs,
    code_size,
    install_board,
    read_state,
)
from tools.mpy_cache import cached_mpy
from tools.virtual_board import VirtualBoard, rom_image_path

CONFIG = BoardConfig(device_id="b-1", server="http://127.0.0.1:9", wifi_ssid="lab",
                     wifi_password="s3cret-pass", poll_at_boot=False)
# The first app reports where the client came from: ota is a package of the ROM partition,
# unless something else on sys.path comes first.
WHERE = (
    "import sys, ota, ota.state\n"
    "print('APP', ota.__path__, ota.state.__file__)\n"
)
APP = InitialApp("demo", "1.0.0", 1, "app_main", {"app_main.py": WHERE.encode()})

# Runs on the unix port: the image read into a buffer, mounted as VfsRom, every file hashed.
_LIST_ROMFS = """
import sys, vfs, os, hashlib, binascii, json
with open(sys.argv[1], 'rb') as f:
    image = f.read()
vfs.mount(vfs.VfsRom(memoryview(image)), '/rom')
out = {}
for name in os.listdir('/rom'):
    for inner in os.listdir('/rom/' + name):
        with open('/rom/%s/%s' % (name, inner), 'rb') as f:
            out[name + '/' + inner] = binascii.hexlify(hashlib.sha256(f.read()).digest()).decode()
print(json.dumps(out))
"""


def _client_code_in(flash: Path) -> list[str]:
    return sorted(p.relative_to(flash).as_posix() for p in flash.rglob("*")
                  if p.suffix in (".py", ".mpy") and "app" not in p.relative_to(flash).parts)


def list_romfs(micropython: str, image: Path) -> dict[str, str]:
    """{path: sha256 hex} of every file in the ROMFS image, as real MicroPython's VfsRom reads it
    (a ROM partition read from flash may be followed by erased bytes: VfsRom ignores those)."""
    done = subprocess.run([micropython, "-c", _LIST_ROMFS, str(image)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    listed: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return listed


def test_client_romfs_is_an_image_vfsrom_mounts_with_every_client_module_as_mpy(
        tmp_path: Path, micropython: str) -> None:
    image = tmp_path / "client.romfs"
    image.write_bytes(client_romfs())
    listed = list_romfs(micropython, image)
    # The modules the files layout puts on the filesystem, each compiled with the path the
    # board imports it from, /rom/ota/<module>.mpy, as its file name (docs/board.md, Memory
    # budget: the importer interns that path, so the name costs no second qstr).
    files = [path for path in client_files(mpy=True) if path.startswith("/ota/")]
    expected = {path.lstrip("/"): hashlib.sha256(cached_mpy(
        BOOTLOADER_DIR / path.lstrip("/").replace(".mpy", ".py"), "/rom" + path)).hexdigest()
        for path in files}
    assert listed == expected
    assert "ota/__init__.mpy" in listed and "ota/client.mpy" in listed
    assert code_size(True)["romfs"] == image.stat().st_size


def test_romfs_board_boots_its_app_with_ota_imported_from_rom(
        tmp_path: Path, micropython: str) -> None:
    flash = tmp_path / "flash"
    files = install_board(flash, CONFIG, b"\x05" * 32, b"{}", app=APP, client="romfs")
    assert rom_image_path(flash).read_bytes() == client_romfs()
    # No client code on the filesystem: only boot.py and main.py, as source.
    assert _client_code_in(flash) == ["boot.py", "main.py"]
    assert not [p for p in files if p.endswith((".py", ".mpy")) and p.startswith("/ota/")]
    # The data files stay on the filesystem, in /ota/ as in the files layout.
    assert {"ota_id/config.json", "ota_id/device.key", "ota_id/trust.json", "ota/state0"} <= {
        p.relative_to(flash).as_posix() for p in flash.rglob("*")}

    result = VirtualBoard(flash, micropython=micropython).run(max_boots=1, timeout=30)
    assert result.ended == "exit", result.output
    # /ota/ on the filesystem is a directory too (MicroPython imports a plain directory as a
    # package): /rom before "" on sys.path is what makes `import ota` find the client.
    assert "APP /rom/ota /rom/ota/state.mpy" in result.output, result.output
    assert read_state(flash) is not None


def test_without_rom_first_on_sys_path_the_data_directory_would_shadow_the_client(
        tmp_path: Path, micropython: str) -> None:
    # Why the order matters: with "" ahead of /rom, `ota` is the filesystem's /ota/ (data only).
    flash = tmp_path / "flash"
    install_board(flash, CONFIG, b"\x05" * 32, b"{}", app=APP, client="romfs")
    (flash / "boot.py").unlink()
    (flash / "main.py").write_text(
        "import sys\n"
        "sys.path.remove('/rom')\n"
        "sys.path.insert(sys.path.index('') + 1, '/rom')\n"
        "import ota\n"
        "print(ota.__path__)\n"
        "try:\n"
        "    import ota.state\n"
        "except ImportError as err:\n"
        "    print('ImportError', err)\n")
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=1, timeout=30)
    assert result.output.splitlines() == ["ota", "ImportError no module named 'ota.state'"]


def test_romfs_board_main_py_gets_the_heap_it_asked_for(tmp_path: Path, micropython: str) -> None:
    probe = "import gc\ngc.collect()\nprint(gc.mem_free())\n"

    def free_at_main(client: str, keep_boot_py: bool) -> int:
        flash = tmp_path / f"{client}-{keep_boot_py}"
        install_board(flash, CONFIG, b"\x05" * 32, b"{}", mpy=True, app=APP, client=client)
        (flash / "main.py").write_text(probe)
        if not keep_boot_py:
            (flash / "boot.py").unlink()
        result = VirtualBoard(flash, micropython=micropython, heapsize="64k").run(max_boots=1)
        assert result.ended == "exit", result.output
        return int(result.output.splitlines()[-1])

    # The harness's allowance holds with the ROM mounted: main.py sees what the board asked for.
    assert 0.95 * 64 * 1024 < free_at_main("romfs", keep_boot_py=False) <= 64 * 1024
    # boot.py's modules (state, records) run from the ROM: less of the heap is taken by them.
    assert free_at_main("romfs", keep_boot_py=True) > free_at_main("files", keep_boot_py=True)


def test_romfs_install_writes_the_image_beside_the_flash_and_the_files_layout_erases_it(
        tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    install_board(flash, CONFIG, b"\x05" * 32, b"{}", app=APP, client="romfs")
    image = rom_image_path(flash)
    assert image.parent == tmp_path and not (flash / image.name).exists()
    assert stat.S_IMODE(image.stat().st_mode) == 0o644  # client code only, no secret in it
    assert b"s3cret-pass" not in image.read_bytes() and b"\x05" * 32 not in image.read_bytes()
    assert stat.S_IMODE((flash / "ota_id" / "device.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((flash / "ota_id" / "config.json").stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.partial"))

    # Re-provisioned with the files layout: an old ROM image would shadow the new client.
    install_board(flash, CONFIG, b"\x05" * 32, b"{}", app=APP, mpy=True)
    assert not image.exists()
    assert (flash / "ota" / "client.mpy").exists()


def test_board_files_of_the_romfs_layout_hold_no_client_code_and_mpy_does_not_matter() -> None:
    sources = board_files(CONFIG, b"\x05" * 32, b"{}", app=APP, client="romfs")
    compiled = board_files(CONFIG, b"\x05" * 32, b"{}", app=APP, client="romfs", mpy=True)
    assert sources == compiled
    assert "/boot.py" in sources and "/main.py" in sources
    assert not any(p.startswith("/ota/") and p.endswith((".py", ".mpy")) for p in sources)


def test_unknown_client_layout_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    with pytest.raises(BoardFilesError, match="client layout 'rom'"):
        install_board(flash, CONFIG, b"\x05" * 32, b"{}", client="rom")  # type: ignore[arg-type]
    assert not flash.exists() and not rom_image_path(flash).exists()
