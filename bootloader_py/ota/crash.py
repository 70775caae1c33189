# Why a trial app failed: its exception, kept on flash from the crash that resets the board
# until boot.py's trial decision reports it with `rolled_back` (or `failed`). Loaded only on
# those rare paths, never by a check or an update (docs/board.md, Failure reasons).
#
# What is kept is the exception's type and message, never its traceback or any local
# variable: at most _MAX bytes, printable ASCII, every other byte replaced by "?".
import os

from micropython import const

_MAX = const(200)
_FILE = "/ota/app_error"


def record(e):
    """Keep `Type: message` of exception `e` for the trial decision (the newest one wins)."""
    raw = (e.__class__.__name__ + ": " + str(e)).encode()
    out = bytearray(raw[:_MAX])
    for i in range(len(out)):
        if not 32 <= out[i] < 127:
            out[i] = 63  # "?": no control character, no half of a UTF-8 sequence
    with open(_FILE, "wb") as f:
        f.write(out)


def take():
    """The kept reason (str), removed from flash; None when there is none."""
    try:
        with open(_FILE, "rb") as f:
            text = f.read(_MAX).decode()
    except OSError:
        return None
    clear()
    return text or None


def clear():
    try:
        os.remove(_FILE)
    except OSError:
        pass
