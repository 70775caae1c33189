# STAND-IN for MicroPython's `machine` module on the virtual board (unix port); not the real one.
# Only what mpota's board code uses: reset, unique_id, reset_cause, freq, WDT, RTC.
# mypy: ignore-errors
import time

import _vb_flash

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_freq = 240000000


def reset():
    """Ends this boot at once; the harness boots the board again (reset_cause() == SOFT_RESET)."""
    _vb_flash.end_boot("reset")


def soft_reset():
    _vb_flash.end_boot("reset")


def reset_cause():
    return _vb_flash.reset_cause


def unique_id():
    return _vb_flash.unique_id


def freq(hz=None):
    global _freq
    if hz is None:
        return _freq
    _freq = hz
    return None


def idle():
    pass


class WDT:
    """Watchdog: if feed() is not called within `timeout` ms the board resets (WDT_RESET)."""

    def __init__(self, id=0, timeout=5000):
        import _thread

        self._timeout = timeout
        self._fed = time.ticks_ms()
        _thread.start_new_thread(self._watch, ())

    def feed(self):
        self._fed = time.ticks_ms()

    def _watch(self):
        while True:
            time.sleep_ms(50)
            if time.ticks_diff(time.ticks_ms(), self._fed) > self._timeout:
                _vb_flash.end_boot("watchdog")


class RTC:
    """Reads the host clock; setting it is accepted and ignored (time comes from the host)."""

    def __init__(self, id=0):
        pass

    def init(self, datetime=None):
        pass

    def datetime(self, datetime=None):
        if datetime is not None:
            return None
        t = time.localtime()
        # (year, month, day, weekday, hours, minutes, seconds, subseconds), as on a board
        return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
