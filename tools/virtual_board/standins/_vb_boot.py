# Virtual-board harness, MicroPython side: one boot, like a board's firmware does it.
# mypy: ignore-errors
import gc
import io
import os
import sys

import _vb_flash


def _run(path, board_globals):
    # Returns the traceback text of an unhandled exception, or None.
    try:
        os.stat(path)
    except OSError:
        return None
    try:
        execfile(path, board_globals)
    except SystemExit:
        _vb_flash.end_boot("exit")
    except BaseException as exc:  # a board prints any unhandled exception
        text = io.StringIO()
        sys.print_exception(exc, text)
        # Drop this harness's own frame: the traceback reads as a board's would.
        text = "\n".join(line for line in text.getvalue().split("\n") if "_vb_boot" not in line)
        sys.stdout.write(text)
        return text
    return None


def _boot():
    _vb_flash.start()
    board_globals = {"__name__": "__main__"}
    gc.collect()
    # As on a board: main.py runs even when boot.py raised.
    crash = _run("/boot.py", board_globals)
    crash = _run("/main.py", board_globals) or crash
    _vb_flash.end_boot("crash" if crash else "exit", crash)


_boot()
