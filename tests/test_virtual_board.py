"""The virtual board boots, resets, crashes and loses power like a board (real MicroPython)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tools.cli import main
from tools.micropython import word_bits
from tools.virtual_board import (
    HARNESS_HEAP_BYTES,
    VirtualBoard,
    harness_heap_bytes,
    random_cut,
    rom_image_path,
)


def _flash(tmp_path: Path, files: dict[str, str]) -> Path:
    flash = tmp_path / "flash"
    flash.mkdir(parents=True)
    for name, text in files.items():
        target = flash / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return flash


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root: file contents, or None for a directory."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def test_board_reboots_after_machine_reset_and_sees_the_file_it_wrote(
    tmp_path: Path, micropython: str
) -> None:
    flash = _flash(tmp_path, {"main.py": (
        "import machine, os\n"
        "if 'note.txt' in os.listdir('/'):\n"
        "    print('second boot read', open('/note.txt').read(), machine.reset_cause())\n"
        "else:\n"
        "    with open('/note.txt', 'w') as f:\n"
        "        f.write('written before reset')\n"
        "    machine.reset()\n"
        "    print('never printed')\n"
    )})
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=5)

    assert [boot.ended for boot in result.boots] == ["reset", "exit"]
    assert "never printed" not in result.output
    assert "second boot read written before reset 5" in result.boots[1].output
    assert result.boots[0].reset_cause == 1  # PWRON_RESET, then SOFT_RESET after machine.reset()
    assert result.fs_ops == 2  # the open for writing and the one write


def test_boot_py_runs_before_main_py_with_shared_globals(tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {
        "boot.py": "print('boot'); slot = 'a'\n",
        "main.py": "print('main', slot, __name__)\n",
    })
    result = VirtualBoard(flash, micropython=micropython).run()
    assert result.output == "boot\nmain a __main__\n"
    assert result.ended == "exit"


def test_flash_directory_is_the_board_root_and_imports_come_from_it(
    tmp_path: Path, micropython: str
) -> None:
    flash = _flash(tmp_path, {
        "lib/helper.py": "WHERE = 'lib'\n",
        "ota/config.json": '{"device_id": "b1"}',
        "app/a/x.py": "X = 1\n",
        "main.py": (
            "import os, json, helper\n"
            "print(sorted(os.listdir('/')))\n"
            "print(json.load(open('/ota/config.json'))['device_id'], helper.WHERE)\n"
            "os.chdir('/app/a'); print(os.getcwd(), os.listdir())\n"
            "print(open('../../ota/config.json').read() == open('/ota/config.json').read())\n"
            "print(os.listdir('/../..') == os.listdir('/'))\n"
        ),
    })
    result = VirtualBoard(flash, micropython=micropython).run()
    assert result.output.splitlines() == [
        "['app', 'lib', 'main.py', 'ota']",
        "b1 lib",
        "/app/a ['x.py']",
        "True",
        "True",
    ]


def test_unhandled_exception_is_a_crash_with_its_traceback(
    tmp_path: Path, micropython: str
) -> None:
    flash = _flash(tmp_path, {"main.py": "print('starting')\nx = {}\nx['missing']\n"})
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=3)

    assert len(result.boots) == 1
    crash = result.boots[0]
    assert crash.ended == "crash"
    assert crash.traceback is not None
    assert 'File "/main.py", line 3' in crash.traceback
    assert "KeyError: missing" in crash.traceback
    assert "_vb_boot" not in crash.traceback  # the harness's own frame is not the board's
    assert crash.output.startswith("starting\n")


def test_max_boots_bounds_a_reset_loop(tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {"main.py": "import machine\nprint('up')\nmachine.reset()\n"})
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=4)
    assert [boot.ended for boot in result.boots] == ["reset"] * 4
    assert result.output == "up\n" * 4


def test_board_that_never_ends_is_stopped_at_the_timeout(tmp_path: Path, micropython: str) -> None:
    forever = "import time\nprint('looping')\nwhile True: time.sleep_ms(5)\n"
    flash = _flash(tmp_path, {"main.py": forever})
    result = VirtualBoard(flash, micropython=micropython).run(timeout=1.0)
    assert [boot.ended for boot in result.boots] == ["timeout"]
    assert result.boots[0].exit_code is None
    assert "looping" in result.output
    # Nothing of the board is left running (board processes run in their flash directory).
    leftovers = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == flash.resolve():
                    leftovers.append(entry.name)
            except OSError:
                continue
    assert leftovers == []


_FIVE_OPS = (
    "import os\n"
    "f = open('/one.txt', 'w')\n"     # op 1: create
    "f.write('first')\n"              # op 2: write
    "f.close()\n"
    "os.mkdir('/dir')\n"              # op 3
    "os.rename('/one.txt', '/dir/one.txt')\n"  # op 4
    "os.remove('/dir/one.txt')\n"     # op 5
    "print('all done')\n"
)


def test_power_cut_at_third_operation_leaves_effects_of_the_first_two(
    tmp_path: Path, micropython: str
) -> None:
    flash = _flash(tmp_path, {"main.py": _FIVE_OPS, "keep.txt": "untouched"})
    board = VirtualBoard(flash, micropython=micropython)

    result = board.run(cut_at=3)

    assert [boot.ended for boot in result.boots] == ["power_cut"]
    assert result.fs_ops == 2
    assert "all done" not in result.output
    assert _tree(flash) == {
        "keep.txt": b"untouched",
        "main.py": _FIVE_OPS.encode(),
        "one.txt": b"first",  # ops 1 and 2 happened; the mkdir (op 3) did not
    }


def test_every_cut_point_of_a_script_leaves_exactly_the_prefix_of_its_operations(
    tmp_path: Path, micropython: str
) -> None:
    script = (
        "import os, machine\n"
        "if 'state' not in os.listdir('/'):\n"
        "    os.mkdir('/state')\n"                              # 1
        "    with open('/state/a.bin', 'wb') as f:\n"           # 2
        "        f.write(b'A' * 10)\n"                          # 3
        "        f.write(b'B' * 10)\n"                          # 4
        "    machine.reset()\n"
        "with open('/state/b.tmp', 'w') as f:\n"                # 5
        "    f.write('new')\n"                                  # 6
        "os.rename('/state/b.tmp', '/state/b')\n"               # 7
        "os.remove('/state/a.bin')\n"                           # 8
    )
    expected_after = [  # the flash after mutation k (index k), besides main.py
        {},
        {"state": None},
        {"state": None, "state/a.bin": b""},
        {"state": None, "state/a.bin": b"A" * 10},
        {"state": None, "state/a.bin": b"A" * 10 + b"B" * 10},
        {"state": None, "state/a.bin": b"A" * 10 + b"B" * 10, "state/b.tmp": b""},
        {"state": None, "state/a.bin": b"A" * 10 + b"B" * 10, "state/b.tmp": b"new"},
        {"state": None, "state/a.bin": b"A" * 10 + b"B" * 10, "state/b": b"new"},
        {"state": None, "state/b": b"new"},
    ]
    # File-operation cuts: the directory flash (block flash counts programs and erases).
    full = VirtualBoard(_flash(tmp_path / "full", {"main.py": script}), micropython=micropython,
                        flash="dir")
    assert full.run().fs_ops == 8

    for cut in range(1, 9):
        flash = _flash(tmp_path / f"cut{cut}", {"main.py": script})
        result = VirtualBoard(flash, micropython=micropython, flash="dir").run(cut_at=cut)
        assert result.ended == "power_cut", cut
        assert result.fs_ops == cut - 1
        tree = _tree(flash)
        del tree["main.py"]
        assert tree == expected_after[cut - 1], f"cut before mutation {cut}"

    beyond = VirtualBoard(_flash(tmp_path / "beyond", {"main.py": script}),
                          micropython=micropython, flash="dir")
    assert beyond.run(cut_at=9).ended == "exit"


def test_power_cut_cannot_be_caught_by_board_code(tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {"main.py": (
        "try:\n"
        "    open('/x', 'w')\n"
        "except BaseException:\n"
        "    print('caught')\n"
        "finally:\n"
        "    print('finally')\n"
    )})
    result = VirtualBoard(flash, micropython=micropython).run(cut_at=1)
    assert result.ended == "power_cut"
    assert result.output == ""
    assert not (flash / "x").exists()


def test_random_cut_picks_a_point_inside_the_run() -> None:
    rng = random.Random(7)
    picks = {random_cut(5, rng) for _ in range(200)}
    assert picks == {1, 2, 3, 4, 5}
    with pytest.raises(ValueError, match="no filesystem mutation"):
        random_cut(0)


def test_wifi_connects_or_fails_as_configured(tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {"main.py": (
        "import network\n"
        "wlan = network.WLAN(network.STA_IF)\n"
        "wlan.active(True)\n"
        "wlan.connect('factory-ssid', 'secret-pass')\n"
        "print(wlan.isconnected(), wlan.status() == network.STAT_GOT_IP, wlan.ifconfig()[0])\n"
        "print(network.WLAN(network.STA_IF).isconnected())\n"
    )})
    up = VirtualBoard(flash, micropython=micropython, wifi_ok=True).run()
    down = VirtualBoard(flash, micropython=micropython, wifi_ok=False).run()
    assert up.output.splitlines() == ["True True 127.0.0.1", "True"]
    assert down.output.splitlines() == ["False False 0.0.0.0", "False"]
    assert "secret-pass" not in up.output + down.output


def test_machine_stand_in_gives_unique_id_rtc_freq_and_a_feedable_watchdog(
    tmp_path: Path, micropython: str
) -> None:
    flash = _flash(tmp_path, {"main.py": (
        "import machine, ntptime, binascii, time\n"
        "print(binascii.hexlify(machine.unique_id()).decode())\n"
        "wdt = machine.WDT(timeout=300)\n"
        "for _ in range(6):\n"
        "    time.sleep_ms(100)\n"
        "    wdt.feed()\n"
        "ntptime.settime()\n"
        "print(machine.RTC().datetime()[0] >= 2024, machine.freq() > 0)\n"
    )})
    board_id = bytes.fromhex("a1b2c3d4e5f6")
    result = VirtualBoard(flash, micropython=micropython, unique_id=board_id).run()
    assert result.output.splitlines() == ["a1b2c3d4e5f6", "True True"]
    assert result.ended == "exit"


def test_watchdog_resets_a_board_that_stops_feeding_it(tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {"main.py": (
        "import machine, time\n"
        "print('cause', machine.reset_cause())\n"
        "if machine.reset_cause() != machine.WDT_RESET:\n"
        "    wdt = machine.WDT(timeout=200)\n"
        "    while True:\n"
        "        time.sleep_ms(10)\n"
    )})
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=3, timeout=10)
    assert [boot.ended for boot in result.boots] == ["watchdog", "exit"]
    assert result.output == "cause 1\ncause 3\n"


def test_ticks_sleep_and_mem_free_work_on_the_board(tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {"main.py": (
        "import time, gc\n"
        "t0 = time.ticks_ms()\n"
        "time.sleep_ms(30)\n"
        "spent = time.ticks_diff(time.ticks_ms(), t0)\n"
        "gc.collect()\n"
        "print(30 <= spent < 1000, gc.mem_free())\n"
    )})
    result = VirtualBoard(flash, micropython=micropython, flash="dir", heapsize="64k").run()
    in_time, mem_free = result.output.split()
    assert in_time == "True"
    # Board code gets about the heap it asked for: the harness's own share is added on top.
    assert 0.95 * 64 * 1024 < int(mem_free) <= 64 * 1024


def test_board_code_gets_the_heap_it_asked_for_on_either_word_size(
    tmp_path: Path, micropython64: str, micropython32: str,
) -> None:
    flash = _flash(tmp_path, {"main.py": "import gc\ngc.collect()\nprint(gc.mem_free())\n"})
    for interpreter, bits in ((micropython64, 64), (micropython32, 32)):
        assert word_bits(interpreter) == bits
        assert harness_heap_bytes(interpreter) == HARNESS_HEAP_BYTES[bits]
        result = VirtualBoard(flash, micropython=interpreter, flash="dir", heapsize="32k").run()
        assert result.ended == "exit", result.output
        # The harness's share, which differs with the word size, is added on top.
        assert 0.95 * 32 * 1024 < int(result.output) <= 32 * 1024, (bits, result.output)


def test_a_small_heap_board_boots(tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {"main.py": "import machine, network\nprint('up in 16k')\n"})
    result = VirtualBoard(flash, micropython=micropython, heapsize="16k").run()
    assert result.output == "up in 16k\n"


def test_bad_board_arguments_are_refused(tmp_path: Path, micropython: str) -> None:
    with pytest.raises(NotADirectoryError, match="missing"):
        VirtualBoard(tmp_path / "missing", micropython=micropython)
    board = VirtualBoard(tmp_path, micropython=micropython)
    with pytest.raises(ValueError, match="max_boots"):
        board.run(max_boots=0)
    with pytest.raises(ValueError, match="cut_at"):
        board.run(cut_at=0)
    with pytest.raises(ValueError, match="heapsize 'lots'"):
        VirtualBoard(tmp_path, micropython=micropython, heapsize="lots")


def test_ota_board_run_shows_what_the_board_prints(
    tmp_path: Path, micropython: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MICROPYTHON", micropython)
    flash = _flash(tmp_path, {"main.py": (
        "import machine, os, binascii\n"
        "print('id', binascii.hexlify(machine.unique_id()).decode())\n"
        "if 'once' not in os.listdir('/'):\n"
        "    open('/once', 'w').close()\n"
        "    machine.reset()\n"
    )})
    status = main(["board", "run", str(flash), "--unique-id", "cafe01", "--max-boots", "3"])
    out, err = capsys.readouterr()
    assert status == 0
    assert out == "id cafe01\nid cafe01\n"
    assert "[boot 1: reset" in err and "[boot 2: exit" in err


def test_ota_board_run_fails_on_a_crash_and_refuses_bad_input(
    tmp_path: Path, micropython: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MICROPYTHON", micropython)
    flash = _flash(tmp_path, {"main.py": "raise RuntimeError('boom')\n"})
    assert main(["board", "run", str(flash)]) == 1
    out, err = capsys.readouterr()
    assert "RuntimeError: boom" in out
    assert "ota: the board ended in a crash on boot 1" in err

    assert main(["board", "run", str(tmp_path / "absent")]) == 1
    assert "absent does not exist" in capsys.readouterr().err
    assert main(["board", "run", str(flash), "--unique-id", "xyz"]) == 1
    assert "not hexadecimal" in capsys.readouterr().err


def test_wifi_connect_needs_an_active_interface_and_env_reaches_the_board(
    tmp_path: Path, micropython: str
) -> None:
    flash = _flash(tmp_path, {"main.py": (
        "import network, os\n"
        "try:\n"
        "    network.WLAN(network.STA_IF).connect('ssid', 'key')\n"
        "except OSError as err:\n"
        "    print('refused:', err)\n"
        "print(os.getenv('FLEET_LABEL'))\n"
    )})
    result = VirtualBoard(flash, micropython=micropython, env={"FLEET_LABEL": "lab-3"}).run()
    assert result.output == "refused: Wifi Not Started\nlab-3\n"


def test_main_py_still_runs_after_boot_py_raised_and_the_boot_counts_as_a_crash(
    tmp_path: Path, micropython: str
) -> None:
    flash = _flash(tmp_path, {"boot.py": "raise OSError(5)\n"})
    for main_py in ("import sys\nprint('main ran')\nsys.exit()\nprint('not reached')\n",
                    "print('main ran')\n"):
        (flash / "main.py").write_text(main_py)
        (boot,) = VirtualBoard(flash, micropython=micropython).run().boots
        assert boot.ended == "crash"
        assert boot.traceback is not None and 'File "/boot.py", line 1' in boot.traceback
        assert boot.output.endswith("main ran\n")


def test_what_a_board_writes_to_its_flash_is_readable_by_this_user_only(
        tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {"main.py": (
        "import os\n"
        "os.mkdir('/ota')\n"
        "with open('/ota/device.key', 'wb') as f:\n"
        "    f.write(b'k' * 32)\n")})
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=1, timeout=30)
    assert result.ended == "exit", result.output
    assert (flash / "ota" / "device.key").stat().st_mode & 0o077 == 0
    assert (flash / "ota").stat().st_mode & 0o077 == 0


# -- the ROM partition: a ROMFS image, memory-mapped and mounted at /rom ----------------------


def _romfs(files: dict[str, bytes]) -> bytes:
    """A ROMFS image of `files` ({"dir/name": bytes}, one directory level), made by mpremote's
    own writer (what `mpremote romfs build` uses)."""
    from mpremote.romfs import VfsRomWriter

    writer = VfsRomWriter()
    by_dir: dict[str, dict[str, bytes]] = {}
    for path, data in files.items():
        directory, _, name = path.rpartition("/")
        by_dir.setdefault(directory, {})[name] = data
    for name, data in sorted(by_dir.pop("", {}).items()):
        writer.mkfile(name, data)
    for directory, entries in sorted(by_dir.items()):
        writer.opendir(directory)
        for name, data in sorted(entries.items()):
            writer.mkfile(name, data)
        writer.closedir()
    return bytes(writer.finalise())


_WHERE_FROM = (
    "import sys, os, shadowed\n"
    "print(sys.path[0], os.listdir('/rom'), shadowed.__file__, shadowed.WHERE)\n"
)


def test_rom_partition_is_mounted_at_rom_and_searched_before_the_flash(
        tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {"main.py": _WHERE_FROM, "shadowed.py": "WHERE = 'flash'\n"})
    image = rom_image_path(flash)
    assert image == tmp_path / "flash.romfs"  # beside the flash directory, not inside it
    assert VirtualBoard(flash, micropython=micropython).rom is None
    image.write_bytes(_romfs({"shadowed.py": b"WHERE = 'rom'\n"}))

    board = VirtualBoard(flash, micropython=micropython)
    assert board.rom == image
    result = board.run(max_boots=1)
    assert result.ended == "exit", result.output
    assert result.output == "/rom ['shadowed.py'] /rom/shadowed.py rom\n"
    assert sorted(p.name for p in flash.iterdir()) == ["main.py", "shadowed.py"]


def test_an_explicit_rom_image_is_used_and_a_missing_one_is_refused(
        tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {"main.py": _WHERE_FROM, "shadowed.py": "WHERE = 'flash'\n"})
    other = tmp_path / "elsewhere.img"
    other.write_bytes(_romfs({"shadowed.py": b"WHERE = 'other rom'\n"}))
    result = VirtualBoard(flash, micropython=micropython, rom=other).run(max_boots=1)
    assert result.output.endswith("other rom\n"), result.output
    with pytest.raises(FileNotFoundError, match=r"absent\.romfs"):
        VirtualBoard(flash, micropython=micropython, rom=tmp_path / "absent.romfs")


def test_writes_under_rom_fail_as_on_a_board_and_power_cuts_count_only_the_flash(
        tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {"main.py": (
        "import os\n"
        "try:\n"
        "    open('/rom/new.txt', 'w')\n"
        "except OSError as err:\n"
        "    print('open for writing:', err.errno)\n"
        "for name, call in (('mkdir', lambda: os.mkdir('/rom/d')),\n"
        "                   ('remove', lambda: os.remove('/rom/keep.txt'))):\n"
        "    try:\n"
        "        call()\n"
        "    except Exception as err:\n"  # VfsRom has no mkdir/remove: AttributeError
        "        print(name + ':', type(err).__name__)\n"
        "print(open('/rom/keep.txt').read())\n"
        "with open('/flash.txt', 'w') as f:\n"
        "    f.write('x')\n"
    )})
    rom_image_path(flash).write_bytes(_romfs({"keep.txt": b"kept"}))
    board = VirtualBoard(flash, micropython=micropython, flash="dir")

    result = board.run(max_boots=1)
    assert result.output.splitlines() == [
        "open for writing: 30",  # EROFS
        "mkdir: AttributeError",
        "remove: AttributeError",
        "kept",
    ]
    assert result.fs_ops == 2  # the flash's open and write; nothing under /rom counted
    cut = board.run(cut_at=2)
    assert cut.ended == "power_cut" and (flash / "flash.txt").read_bytes() == b""


@pytest.mark.parametrize("content", [b"not a ROMFS image", b""], ids=["junk", "empty"])
def test_board_with_an_invalid_rom_image_boots_without_rom_and_says_so_once(
        tmp_path: Path, micropython: str, content: bytes) -> None:
    flash = _flash(tmp_path, {"main.py": "import sys, os\nprint('/rom' in sys.path, "
                                         "'rom' in os.listdir('/'))\n"})
    rom_image_path(flash).write_bytes(content)
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=1)
    assert result.ended == "exit"
    lines = result.output.splitlines()
    assert len(lines) == 2 and lines[1] == "False False", result.output
    assert lines[0].startswith("vboard: no /rom: ROM image ") and "ENODEV" in lines[0]


def test_mapping_the_rom_costs_the_board_no_heap(tmp_path: Path, micropython: str) -> None:
    probe = "import gc\ngc.collect()\nprint(gc.mem_free())\n"
    flash = _flash(tmp_path, {"main.py": probe})
    # An image larger than the whole heap: it is mapped, never read into the heap.
    big = _romfs({"blob.bin": bytes(range(256)) * 160, "lib/x.py": b"X = 1\n"})
    assert len(big) > 32 * 1024
    other = tmp_path / "big.romfs"
    other.write_bytes(big)

    def free(heapsize: str, rom: Path | None) -> int:
        result = VirtualBoard(flash, micropython=micropython, flash="dir", heapsize=heapsize,
                              rom=rom).run()
        assert result.ended == "exit", result.output
        return int(result.output)

    for heapsize, size in (("32k", 32 * 1024), ("64k", 64 * 1024)):
        without, with_rom = free(heapsize, None), free(heapsize, other)
        assert 0 <= without - with_rom <= 256  # the VfsRom object and its mount entry
        # HARNESS_HEAP_BYTES still covers the harness: board code gets what it asked for.
        assert 0.95 * size < with_rom <= size


def test_raw_repl_serves_the_same_rom(tmp_path: Path, micropython: str) -> None:
    flash = _flash(tmp_path, {})
    rom_image_path(flash).write_bytes(_romfs({"lib/inrom.py": b"WHERE = 'rom'\n"}))
    mpremote = str(Path(sys.executable).with_name("mpremote"))
    with VirtualBoard(flash, micropython=micropython).serve_repl() as port:
        connect = [mpremote, "connect", f"socket://127.0.0.1:{port}"]
        done = subprocess.run([*connect, "exec", "import sys, os; print(sys.path[0], "
                               "os.listdir('/rom/lib'))"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.stdout == "/rom ['inrom.py']\n", done.stderr
        refused = subprocess.run([*connect, "fs", "touch", ":/rom/new.txt"],
                                 capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode != 0


def test_ota_board_run_picks_up_the_sibling_rom_image_or_the_one_given(
    tmp_path: Path, micropython: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MICROPYTHON", micropython)
    flash = _flash(tmp_path, {"main.py": _WHERE_FROM, "shadowed.py": "WHERE = 'flash'\n"})
    rom_image_path(flash).write_bytes(_romfs({"shadowed.py": b"WHERE = 'rom'\n"}))
    given = tmp_path / "given.img"
    given.write_bytes(_romfs({"shadowed.py": b"WHERE = 'given'\n"}))

    assert main(["board", "run", str(flash)]) == 0
    out, err = capsys.readouterr()
    assert out.endswith(" rom\n") and f"ROM partition: {rom_image_path(flash)}" in err
    assert main(["board", "run", str(flash), "--rom", str(given)]) == 0
    out, err = capsys.readouterr()
    assert out.endswith(" given\n") and f"ROM partition: {given}" in err
    assert main(["board", "run", str(flash), "--rom", str(tmp_path / "absent.img")]) == 1
    assert "--rom" in capsys.readouterr().err
