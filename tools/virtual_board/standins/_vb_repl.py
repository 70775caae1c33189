# Virtual-board harness, MicroPython side: the persistent interpreter behind the raw-REPL endpoint.
# The host sends "<mode> <length>\n<code>" on stdin (mode "exec", or "single" to echo values as the
# friendly REPL does); code output goes to stdout as it is printed, then
# <sentinel><fs mutations so far> <length of error text>\n<error text>.
# mypy: ignore-errors
import io
import os
import sys

import _vb_flash

_SENTINEL = b"\x00" + (os.getenv("VB_SENTINEL") or "").encode() + b"\x00"


def _read_exactly(stream, size):
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _error_text(exc):
    text = io.StringIO()
    sys.print_exception(exc, text)
    # Drop this agent's own frame so the traceback reads like a board's "<stdin>" one.
    lines = [line for line in text.getvalue().split("\n") if "_vb_repl" not in line]
    return "\n".join(lines)


def _execute(code, mode, board_globals):
    try:
        exec(compile(code, "<stdin>", mode), board_globals)
    except SystemExit:
        pass
    except BaseException as exc:  # the REPL reports every exception, KeyboardInterrupt included
        return _error_text(exc)
    return ""


def _reply(out, error):
    error = error.encode()
    out.write(_SENTINEL + b"%d %d\n" % (_vb_flash.flash.ops, len(error)) + error)


def _serve():
    _vb_flash.start()
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    board_globals = {"__name__": "__main__"}
    _reply(out, "")  # ready
    while True:
        try:
            header = inp.readline()
            if not header:
                return
            mode, size = header.decode().split()
            code = _read_exactly(inp, int(size)).decode()
        except KeyboardInterrupt:  # a stray Ctrl-C while idle: nothing to interrupt
            continue
        except EOFError:
            return
        _reply(out, _execute(code, mode, board_globals))


_serve()
