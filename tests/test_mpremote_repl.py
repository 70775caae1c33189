"""The real mpremote CLI works against a virtual board's raw-REPL endpoint."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tools.virtual_board import VirtualBoard
from tools.virtual_board.repl import PASTE_WINDOW, RAW_BANNER, ReplAgent

BANNER = b"raw REPL; CTRL-B to exit\r\n>"
MPREMOTE = str(Path(sys.executable).with_name("mpremote"))


def _processes_in(directory: Path) -> list[int]:
    """Processes whose working directory is `directory` (board interpreters run in their flash)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == str(directory.resolve()):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _mpremote(port: int, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MPREMOTE, "connect", f"socket://127.0.0.1:{port}", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )


@pytest.fixture
def flash(tmp_path: Path) -> Path:
    root = tmp_path / "flash"
    root.mkdir()
    (root / "lib").mkdir()
    (root / "lib" / "greeting.py").write_text("WORDS = 'hello from flash'\n")
    return root


@pytest.fixture
def port(flash: Path, micropython: str) -> Iterator[int]:
    with VirtualBoard(flash, micropython=micropython).serve_repl() as served:
        yield served


def test_exec_prints_on_the_board(port: int) -> None:
    done = _mpremote(port, "exec", "print(1+1)")
    assert (done.returncode, done.stdout, done.stderr) == (0, "2\n", "")


def test_exec_runs_on_the_flash_with_board_imports(port: int) -> None:
    done = _mpremote(port, "exec", "import os, greeting; print(os.listdir('/'), greeting.WORDS)")
    assert done.stdout == "['lib'] hello from flash\n", done.stderr


def test_binary_file_copied_onto_the_board_lists_and_reads_back_identical(
    port: int, flash: Path, tmp_path: Path
) -> None:
    payload = bytes(range(256)) * 12 + b"\x00\x04\r\n\x03tail"
    local = tmp_path / "local.bin"
    local.write_bytes(payload)

    copied = _mpremote(port, "cp", str(local), ":remote.bin")
    assert copied.returncode == 0, copied.stderr
    assert (flash / "remote.bin").read_bytes() == payload

    listing = _mpremote(port, "ls")
    assert listing.returncode == 0, listing.stderr
    assert f"{len(payload)} remote.bin" in listing.stdout
    assert "lib/" in listing.stdout

    back = tmp_path / "back.bin"
    fetched = _mpremote(port, "cp", ":remote.bin", str(back))
    assert fetched.returncode == 0, fetched.stderr
    assert back.read_bytes() == payload

    # A second copy of the same file is skipped by mpremote after hashing it on the board.
    again = _mpremote(port, "cp", str(local), ":remote.bin")
    assert again.returncode == 0, again.stderr
    assert "Up to date" in again.stdout
    hashed = _mpremote(port, "exec", (
        "import hashlib, binascii\n"
        "h = hashlib.sha256()\n"
        "f = open('remote.bin', 'rb')\n"
        "h.update(f.read())\n"
        "print(binascii.hexlify(h.digest()).decode())\n"
    ))
    assert hashed.stdout.strip() == hashlib.sha256(payload).hexdigest()


def test_fs_cat_mkdir_rm_and_run(port: int, flash: Path, tmp_path: Path) -> None:
    (flash / "note.txt").write_text("line one\nline two\n")
    cat = _mpremote(port, "fs", "cat", ":note.txt")
    assert cat.stdout == "line one\nline two\n", cat.stderr

    assert _mpremote(port, "mkdir", ":app").returncode == 0
    assert (flash / "app").is_dir()
    assert _mpremote(port, "rm", ":note.txt").returncode == 0
    assert not (flash / "note.txt").exists()

    script = tmp_path / "script.py"
    script.write_text("import os\nprint(sorted(os.listdir('/')))\n")
    ran = _mpremote(port, "run", str(script))
    assert ran.stdout == "['app', 'lib']\n", ran.stderr


def test_board_errors_reach_mpremote(port: int) -> None:
    missing = _mpremote(port, "fs", "cat", ":absent.txt")
    assert missing.returncode != 0
    assert "absent.txt" in missing.stderr + missing.stdout

    raised = _mpremote(port, "exec", "raise ValueError('board says no')")
    assert raised.returncode == 1
    assert "ValueError: board says no" in raised.stdout + raised.stderr
    assert "_vb_repl" not in raised.stdout + raised.stderr


def test_globals_persist_between_execs_of_one_session(port: int) -> None:
    done = _mpremote(port, "exec", "x = 41", "exec", "print(x + 1)")
    assert done.stdout == "42\n", done.stderr


def _reader(conn: socket.socket) -> tuple[Any, Any]:
    reader = conn.makefile("rb")

    def read_until(ending: bytes) -> bytes:
        data = b""
        while not data.endswith(ending):
            byte = reader.read(1)
            assert byte, f"connection closed; got {data!r}"
            data += byte
        return data

    return reader, read_until


def test_raw_repl_protocol_bytes(port: int) -> None:
    """The exact exchange mpremote relies on, an unknown raw-paste command declined."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        reader, read_until = _reader(conn)
        conn.sendall(b"\r\x03\r\x01")
        assert read_until(BANNER).endswith(BANNER)
        conn.sendall(b"\x04")
        assert read_until(b">") == b"OK\r\nMPY: soft reboot\r\nraw REPL; CTRL-B to exit\r\n>"
        conn.sendall(b"\x05B\x01")  # pyexec.c: a command other than 'A' is unsupported
        assert reader.read(2) == b"R\x00"
        conn.sendall(b"print('out')\nimport sys\nsys.stdout.write('x')\nundefined_name\x04")
        reply = read_until(b"\x04>")
        out, err, prompt = reply.split(b"\x04")
        assert out == b"OKout\nx"
        assert err.startswith(b"Traceback (most recent call last):")
        assert b"NameError: name 'undefined_name' isn't defined" in err
        assert prompt == b">"


def test_raw_paste_takes_code_in_flow_controlled_windows_as_firmware_does(port: int) -> None:
    """pyexec.c's raw paste: R\\x01, the window (LE16) and \\x01; one \\x01 per window taken in;
    Ctrl-D acknowledged with \\x04, then output and error as in raw mode."""
    code = b"x = 0\n" + b"x += 1\n" * 100 + b"print('sum', x)\nundefined_name\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        reader, read_until = _reader(conn)
        conn.sendall(b"\x01")
        assert read_until(BANNER).endswith(BANNER)
        conn.sendall(b"\x05A\x01")
        assert reader.read(2) == b"R\x01"
        window = struct.unpack("<H", reader.read(2))[0]
        assert window == PASTE_WINDOW
        assert reader.read(1) == b"\x01"  # a second window is free
        credit = 2 * window
        sent = freed = 0
        while sent < len(code):  # never more than the board has said it can take
            if credit == 0:
                assert reader.read(1) == b"\x01"
                credit += window
                freed += 1
            piece = code[sent: sent + credit]
            conn.sendall(piece)
            sent += len(piece)
            credit -= len(piece)
        conn.sendall(b"\x04")
        reply = read_until(b"\x04>")
        acks, rest = reply.split(b"\x04", 1)
        # one \x01 for every whole window taken in, the rest of them before the end's \x04
        assert acks == b"\x01" * (len(code) // window - freed)
        out, err, prompt = rest.split(b"\x04")
        assert out == b"sum 100\n"
        assert b"NameError: name 'undefined_name' isn't defined" in err
        assert prompt == b">"
        # the session is back in raw mode: a plain exec works
        conn.sendall(b"print(x)\x04")
        assert read_until(b"\x04>") == b"OK100\n\x04\x04>"


def test_ctrl_c_ends_a_raw_paste_with_keyboard_interrupt(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        reader, read_until = _reader(conn)
        conn.sendall(b"\x01")
        read_until(BANNER)
        conn.sendall(b"\x05A\x01")
        assert reader.read(5)[:2] == b"R\x01"
        conn.sendall(b"print('never run')\n\x03")
        reply = read_until(b"\x04>")
        assert reply.startswith(b"\x04\x04")  # transfer ended, then no output
        assert b"KeyboardInterrupt" in reply and b"never run" not in reply


def test_mpremote_keeps_raw_paste_and_writes_intact(port: int, flash: Path, tmp_path: Path) -> None:
    """mpremote's transport stays on raw paste (it turns it off for good at a decline), and
    a file copied by the CLI arrives intact."""
    from mpremote.transport_serial import SerialTransport

    transport = SerialTransport(f"socket://127.0.0.1:{port}", baudrate=115200)
    try:
        transport.enter_raw_repl(soft_reset=False)
        assert transport.exec("print(6 * 7)") == b"42\n"
        assert transport.use_raw_paste
        transport.exit_raw_repl()
    finally:
        transport.close()
    data = bytes(range(256)) * 40
    (tmp_path / "blob.bin").write_bytes(data)
    done = _mpremote(port, "cp", str(tmp_path / "blob.bin"), ":blob.bin")
    assert done.returncode == 0, done.stderr
    assert (flash / "blob.bin").read_bytes() == data


def test_ctrl_c_interrupts_running_code(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        reader = conn.makefile("rb")
        conn.sendall(b"\x01")
        assert reader.read(len(BANNER)) == BANNER
        conn.sendall(b"import time\nprint('spinning')\nwhile True: time.sleep_ms(5)\x04")
        assert reader.read(2) == b"OK"
        assert reader.readline() == b"spinning\n"
        conn.sendall(b"\x03")
        reply = b""
        while not reply.endswith(b"\x04>"):
            reply += reader.read(1)
        assert b"KeyboardInterrupt" in reply


def test_several_boards_serve_their_own_flash_at_once(tmp_path: Path, micropython: str) -> None:
    boards = []
    for n in range(3):
        root = tmp_path / f"board{n}"
        root.mkdir()
        (root / "id.txt").write_text(f"board {n}")
        boards.append(VirtualBoard(root, micropython=micropython))
    with boards[0].serve_repl() as p0, boards[1].serve_repl() as p1, boards[2].serve_repl() as p2:
        assert len({p0, p1, p2}) == 3
        for n, port in enumerate((p0, p1, p2)):
            assert _mpremote(port, "fs", "cat", ":id.txt").stdout == f"board {n}"


def test_closing_the_endpoint_stops_the_interpreter(flash: Path, micropython: str) -> None:
    board = VirtualBoard(flash, micropython=micropython)
    with board.serve_repl() as port:
        assert _mpremote(port, "exec", "print('up')").stdout == "up\n"
        assert len(_processes_in(flash)) == 1  # the board's interpreter
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert _processes_in(flash) == []


def test_power_cut_through_the_repl_stops_a_copy_midway_and_the_board_stays_off(
    flash: Path, micropython: str, tmp_path: Path
) -> None:
    payload = bytes(range(256)) * 3  # mpremote writes it in three 256-byte chunks
    local = tmp_path / "big.bin"
    local.write_bytes(payload)
    board = VirtualBoard(flash, micropython=micropython)
    with board.repl_server(cut_at=3) as server:  # 1: open for writing, 2: first chunk, 3: cut
        copied = _mpremote(server.port, "cp", str(local), ":big.bin")
        assert copied.returncode != 0
        assert server.powered_off
        assert server.fs_ops == 2
        assert (flash / "big.bin").read_bytes() == payload[:256]
        after = _mpremote(server.port, "exec", "print('alive')")
        assert after.returncode != 0
        assert "alive" not in after.stdout


def test_repl_counts_mutations_over_soft_reboots(flash: Path, micropython: str) -> None:
    board = VirtualBoard(flash, micropython=micropython)
    with board.repl_server() as server:
        made = _mpremote(server.port, "exec", "import os; os.mkdir('a'); open('a/f', 'w').close()")
        assert made.returncode == 0, made.stderr
        again = _mpremote(server.port, "exec", "import os; os.rename('a/f', 'a/g')")
        assert again.returncode == 0, again.stderr
        assert server.fs_ops == 3
        assert not server.powered_off


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=60))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_reply_parser_finds_the_end_of_output_however_the_stream_is_split(
    tmp_path: Path, sizes: list[int]
) -> None:
    agent = ReplAgent(VirtualBoard(tmp_path, micropython="unused"))
    try:
        output = b"printed \x00 text\x00\n" * 3
        stream = output + agent._sentinel + b"7 5\nerror" + b"next command's output"
        got, errors, at = b"", [], 0
        for size in itertools.cycle(sizes):
            if at >= len(stream):
                break
            out, error = agent.feed(stream[at : at + size])
            at += size
            got += out
            if error is not None:
                errors.append(error)
        got += agent.feed(b"")[0]  # what arrived behind the reply waits for the next read
        assert got == output + b"next command's output"
        assert errors == [b"error"]
        assert agent.fs_ops == 7
    finally:
        agent.close()


def test_raw_paste_takes_the_same_code_however_the_stream_is_split(
    flash: Path, micropython: str
) -> None:
    """The raw-paste code runs whole and one \\x01 comes back per window taken in, whatever
    the pieces the client's bytes arrive in (a window boundary inside a piece, an end-of-code
    Ctrl-D in the same piece as code): the real interpreter, the session fed piece by piece."""
    from tools.virtual_board.repl import ReplSession

    agent = ReplAgent(VirtualBoard(flash, micropython=micropython))
    agent.start()
    try:

        @given(terms=st.integers(0, 400), pad=st.integers(0, 1),
               cuts=st.lists(st.integers(0, 1000), max_size=8))
        @settings(max_examples=30, deadline=None)
        @example(terms=59, pad=1, cuts=[])  # the code ends exactly on a window's last byte
        def check(terms: int, pad: int, cuts: list[int]) -> None:
            sent: list[bytes] = []
            session = ReplSession(sent.append, agent)
            session.on_client(b"\x01\x05A\x01")
            code = b"print(" + b"1+" * terms + b"0)" + b" " * pad + b"\n\x04"
            at = 0
            for cut in sorted({c % len(code) for c in cuts} | {len(code)}):
                session.on_client(code[at:cut])
                at = cut
            while session.busy:
                select.select([agent.fileno()], [], [], 10)
                session.on_agent_output()
            reply = b"".join(sent)
            header = RAW_BANNER + b">R\x01" + struct.pack("<H", PASTE_WINDOW) + b"\x01"
            assert reply.startswith(header)
            acks, _, rest = reply[len(header):].partition(b"\x04")
            assert acks == b"\x01" * ((len(code) - 1) // PASTE_WINDOW)
            assert rest == str(terms).encode() + b"\n\x04\x04>"

        check()
    finally:
        agent.close()


def test_ota_board_repl_serves_until_interrupted(flash: Path, micropython: str) -> None:
    env = {**os.environ, "MICROPYTHON": micropython}
    ota = str(Path(sys.executable).with_name("ota"))
    served = subprocess.Popen([ota, "board", "repl", str(flash)], stderr=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert served.stderr is not None
        banner = served.stderr.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+);", banner).group(1))  # type: ignore[union-attr]
        done = _mpremote(port, "exec", "print('via ota board repl')")
        assert done.stdout == "via ota board repl\n"
        assert len(_processes_in(flash)) == 1
    finally:
        served.send_signal(signal.SIGINT)
        assert served.wait(timeout=10) == 0
    assert _processes_in(flash) == []


def _read_until(reader: Any, ending: bytes) -> bytes:
    data = b""
    while not data.endswith(ending):
        byte = reader.read(1)
        assert byte, f"connection closed; got {data!r}"
        data += byte
    return data


def test_friendly_repl_echoes_values_and_takes_typed_ahead_lines(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        reader = conn.makefile("rb")
        conn.sendall(b"\x02")
        assert _read_until(reader, b">>> ").startswith(b"\r\nMicroPython virtual board")
        conn.sendall(b"x = [1, 2]\rx\rundefined\r")
        assert _read_until(reader, b">>> ") == b"x = [1, 2]\r\n>>> "
        assert _read_until(reader, b">>> ") == b"x\r\n[1, 2]\r\n>>> "
        failed = _read_until(reader, b">>> ")
        assert b"NameError: name 'undefined' isn't defined\r\n>>> " in failed


def test_machine_reset_from_the_repl_restarts_the_interpreter(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        reader = conn.makefile("rb")
        conn.sendall(b"\x01")
        _read_until(reader, BANNER)
        conn.sendall(b"kept = 1\nimport machine\nmachine.reset()\x04")
        reply = _read_until(reader, b"\x04>")
        said = b"the virtual board reset (machine.reset) while running this code\n"
        assert reply == b"OK\x04" + said + b"\x04>"
        conn.sendall(b"print('kept' in globals())\x04")
        assert _read_until(reader, b"\x04>") == b"OKFalse\n\x04\x04>"
