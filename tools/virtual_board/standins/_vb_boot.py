# Virtual-board harness, MicroPython side: one boot, like a board's firmware does it.
# mypy: ignore-errors
import gc
import io
import os
import sys

import _vb_flash

_crash = None  # traceback text of the first unhandled exception of this boot


def _run(path, board_globals):
    global _crash
    try:
        os.stat(path)
    except OSError:
        return
    try:
        execfile(path, board_globals)
    except SystemExit:
        _vb_flash.end_boot("crash" if _crash else "exit", _crash)
    except BaseException as exc:  # a board prints any unhandled exception
        text = io.StringIO()
        sys.print_exception(exc, text)
        # Drop this harness's own frame: the traceback reads as a board's would.
        text = "\n".join(line for line in text.getvalue().split("\n") if "_vb_boot" not in line)
        sys.stdout.write(text)
        _crash = _crash or text


def _boot():
    _vb_flash.start()
    board_globals = {"__name__": "__main__"}
    gc.collect()
    # As on a board: main.py runs even when boot.py raised.
    _run("/boot.py", board_globals)
    _run("/main.py", board_globals)
    _vb_flash.end_boot("crash" if _crash else "exit", _crash)


_boot()
