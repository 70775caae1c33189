# What main.py runs: the OTA check when due, then the active slot's app.
import sys
import time

from micropython import const

from ota import state

_BACKOFF_MIN_S = 30
_BACKOFF_MAX_S = 3600
# The furthest ahead a poll is ever scheduled: 6 days. time.ticks_add refuses a delta of
# 2**29 ms (~6.2 days) or more on 32-bit ports, and ticks_diff cannot tell a deadline further
# away from one in the past (docs/board.md, Ticks). poll.every_min 0 ("never") waits this
# long between two cheap looks at the config.
_MAX_DELAY_MS = const(518400000)
_GC_EVERY = const(4096)  # bytes allocated between collections while the client runs

_next_poll = None
_failures = 0
_st = None  # this process's BootState: all its state writes go through this one object
_answered = False  # the server answered an authenticated check-in during this boot


def _state():
    global _st
    if _st is None:
        _st = state.BootState()
    return _st


def _queue_note(st):
    """Move the report boot.py or the last install left in the state into the queue."""
    if st.rec["note"] is not None:
        from ota import reports
        reports.enqueue(st.rec["note"])
        st.take_note()


def _check(st, cfg):
    """Wi-Fi, time, then one conversation with the server; True when it answered."""
    import gc
    # Frequent collections keep the heap packed low. Without them allocation sweeps up the
    # whole heap before the first collection, long-lived objects (module code) end up
    # sprinkled everywhere, and the update's few large blocks no longer fit anywhere.
    gc.collect()
    old = gc.threshold()  # on every port that enables MICROPY_GC_ALLOC_THRESHOLD (the default)
    gc.threshold(_GC_EVERY)
    try:
        from ota import net
        up = net.wifi_up(cfg)
        now = net.trusted_now() if up else None
        net = None
        _unload("net")  # not needed again during this check: its heap goes to the update
        if not up:
            print("ota: wifi not connected")
            return False
        from ota import client
        return client.check(st, cfg, now=now)
    finally:
        client = None
        gc.threshold(old)
        _shed()


def _schedule(cfg, ok):
    """Next poll: every_min after success; exponential backoff with jitter after failures.

    Never further than _MAX_DELAY_MS ahead (every_min 0 or no config: that far), and never
    raises: a poll() left unscheduled would run a full check at every later call.
    """
    global _next_poll, _failures
    delay_ms = _MAX_DELAY_MS
    try:
        _failures = 0 if ok else _failures + 1
        every = cfg["poll"].get("every_min", 60) if cfg is not None else 0
        if every > 0 and not ok:
            import os
            delay_s = min(_BACKOFF_MAX_S, _BACKOFF_MIN_S << min(_failures, 8))
            delay_ms = (delay_s // 2 + (os.urandom(1)[0] * delay_s) // 512) * 1000  # [d/2, d)
        elif 0 < every < _MAX_DELAY_MS // 60000:
            delay_ms = int(every * 60000)
    except Exception as e:  # poll.every_min not a number: the longest wait, and say why
        sys.print_exception(e)
    _next_poll = time.ticks_add(time.ticks_ms(), delay_ms)


def poll(force=False):
    """For the app's main loop: run the OTA check when it is due. Returns True if one ran.

    Never raises: what goes wrong is printed and the next check scheduled. Also where
    auto-confirm happens for an app whose main() does not return: at the first call once
    main() has run confirm_after_s seconds and the server has answered.
    """
    global _answered
    _app_healthy()
    if not force and _next_poll is not None and time.ticks_diff(_next_poll, time.ticks_ms()) > 0:
        return False
    ran = ok = False
    cfg = None
    try:
        cfg = _config()
        ran = force or cfg["poll"].get("every_min", 60) > 0  # 0: the app's loop never checks
        if ran:
            ok = _check(_state(), cfg)
    except Exception as e:
        sys.print_exception(e)
    _schedule(cfg, ok or not ran)  # not a failure when no check was due
    if ok:
        _answered = True
        _app_healthy()
    return ran


def _app_healthy():
    app = sys.modules.get("ota.app")  # loaded once the app runs (ota/app.py)
    if app is not None and _answered:
        app.confirm_if_healthy()


def confirm(st=None, cfg=None, send=True):
    """Confirm the running slot; queues a `confirmed` report and tries to send it now."""
    app = sys.modules.get("ota.app")
    if app is not None:
        app.armed = None
        if app.astray:
            print("ota: not confirmed: booted slot is not the active one")
            return False
    st = st or _state()
    _queue_note(st)
    if not st.confirm():
        return False
    print("ota: confirmed", st.info()["version"])
    _queue_note(st)
    if send:
        try:
            from ota import client, reports
            reports.flush(client.Session(cfg or _config()))
        except Exception as e:  # MemoryError too: the report waits on flash for the next check
            print("ota: report not sent:", e)
        client = reports = None
        _shed()
    return True


def _config():
    """The config dict; the module that reads it is unloaded again (the heap is tight)."""
    from ota import config
    cfg = config.load()
    config = None
    _unload("config")
    return cfg


def _unload(name):
    import ota
    ota.forget(name)


def _shed():
    import ota
    ota.shed()


def _boot_check(st):
    """The OTA part of a boot; returns (config or None, True when the server answered)."""
    cfg = _config()
    if st.on_trial:  # only trial boots arm the watchdog: a confirmed board never does
        from ota import trial
        trial.watchdog(cfg)  # before the check: a check that hangs is as bad as an app that does
        trial = None  # it unloaded itself: its code goes before the check runs
    _queue_note(st)
    if not cfg["poll"].get("at_boot", True):
        return cfg, False
    ok = _check(st, cfg)
    _schedule(cfg, ok)
    return cfg, ok


def main():
    """Boot: OTA check when due (errors never stop the app), then the app's entry module."""
    global _answered
    st = _state()
    cfg = None
    try:
        cfg, _answered = _boot_check(st)
    except Exception as e:
        print("ota: check failed")
        sys.print_exception(e)
    import ota
    ota.feed()  # the app's start-up gets a whole period before its first ota.poll()
    from ota import app
    app.start(st, cfg)
