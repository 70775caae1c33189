# Running the active slot's app, and deciding when a trial version is healthy (auto-confirm).
# Loaded by main.py only once the boot's OTA check is over, so its code is not in the heap
# while an update at boot runs.
import sys
import time

from micropython import const

from ota import run, state

_DEFAULT_ENTRY = "app_main"
_WAIT_STEP_MS = const(1000)  # how often a board with no app looks whether a poll is due

armed = None  # config while auto-confirm waits for the app's main() to prove healthy
since = 0  # ticks_ms when the app's main() started
astray = False  # the booted slot is not the state's active one: never confirm it


def confirm_if_healthy():
    """Auto-confirm once main() has run confirm_after_s seconds (the server answered)."""
    cfg = armed
    if cfg is not None and time.ticks_diff(time.ticks_ms(), since) >= cfg["confirm_after_s"] * 1000:
        run.confirm(run._state(), cfg)


def _booted(st):
    """The slot boot.py put on sys.path (the state's active one when run without boot.py)."""
    for path in sys.path:
        if path.startswith(state.SLOT_DIR):
            return path[len(state.SLOT_DIR):]
    return st.active


def start(st, cfg):
    """Import the entry module and call its main() if it has one.

    On trial, a crash resets the board so that boot.py's trial counter decides. Auto-confirm
    (config auto_confirm) needs the server to have answered during this boot and the app to
    have come up: an entry without main() once it imported; one with main() once main()
    returned, or (an app that loops) at its first ota.poll() after confirm_after_s seconds
    of main(). ota.confirm() confirms at once. A board with no app at all (an empty slot the
    state knows nothing of) waits for its first release instead (_wait).
    """
    global armed, since, astray
    slot = _booted(st)
    trial = st.on_trial
    if slot != st.active:
        # boot.py could not follow the state (a write that landed, then raised): run what it
        # booted, and neither confirm nor reset it, since the state speaks of the other slot.
        print("ota: booted slot", slot, "but the state names", st.active)
        astray = True
        trial = False
        cfg = None
    info = st.info(slot)
    if info is None and _empty(slot):
        _wait(cfg)
        return
    entry = info["entry"] if info else _DEFAULT_ENTRY
    auto = trial and cfg and cfg["auto_confirm"]
    if auto and info.get("offline"):
        # Installed over USB (ota/offline.py): there may be no server to hear from, so the app
        # coming up is the whole health check (docs/board.md, "Offline install").
        run._answered = True
    try:
        mod = __import__(entry)
        fn = getattr(mod, "main", None)
        if fn is not None:
            if auto:
                armed = cfg
                since = time.ticks_ms()
            fn()
        if auto and run._answered and st.on_trial:
            run.confirm(st, cfg)
    except Exception as e:
        if not (trial and st.on_trial):
            raise
        sys.print_exception(e)
        try:  # the reason the rollback reports (ota/crash.py): type and message only
            from ota import crash
            crash.record(e)
        except Exception as e2:  # a full flash: the rollback still happens, with less said
            print("ota: app error not kept:", e2)
        print("ota: app failed on trial, resetting")
        import machine
        machine.reset()
    finally:
        armed = None


def _empty(slot):
    """True when the slot holds no file: a board provisioned without an app."""
    import os
    try:  # listed by bytes: names a damaged FAT directory holds are not UTF-8
        return not os.listdir(state.slot_path(slot).encode())
    except OSError:  # no such directory
        return True


def _wait(cfg):
    """A board with no app yet: say so, then poll for its first release, which installs and
    resets the board. Returns at once (to the REPL) when polling is off (poll.every_min 0)
    or the config could not be read."""
    print("ota: no app installed yet: waiting for the first release")
    if not cfg or not cfg["poll"].get("every_min"):
        return
    while True:
        run.poll()
        time.sleep_ms(_WAIT_STEP_MS)
