# STAND-IN for MicroPython's `ntptime` on the virtual board: time comes from the host clock.
# mypy: ignore-errors
import time as _time

host = "pool.ntp.org"
timeout = 1


def time():
    return _time.time()


def settime():
    pass
