# The board's OTA client. Apps use ota.confirm() and, in a long-running loop, ota.poll().
#
# ota.wdt: the trial watchdog (machine.WDT), set by ota/trial.py on a trial boot that arms one
# and absent otherwise (no slot in this module's dict on other boots: read it with a default).
# Here, in the one module never unloaded, every request, poll() and confirm() can feed it. It
# cannot be stopped (ESP32, RP2): it stays for the life of the process (docs/board.md).


def feed():
    """Feed the trial watchdog if this boot armed one (ota/trial.py); else do nothing."""
    w = globals().get("wdt")
    if w:
        w.feed()


def path(p):
    """Where this board keeps `p`, a file of the layout provisioned since 2026-12-06 (`/ota_id`:
    identity, config, trust; `/ota_rec`: each A/B record's second copy; docs/board.md, Three
    directories): `p` itself; on a board provisioned before (no /ota_id/device.key: every
    file in /ota) the same name in /ota. A path outside /ota* comes back as it is."""
    if p[:4] == "/ota":
        import os
        try:
            os.stat("/ota_id/device.key")
        except OSError:
            return "/ota" + p[p.find("/", 1):]
    return p


def tls_refused():
    """How many times since boot the server's certificate was refused (ota/http.py)."""
    return globals().get("refusals", 0)


def confirm():
    """Confirm the running (trial) app so boot.py keeps it; True if it was on trial."""
    feed()
    from ota import run
    return run.confirm()


def _drop(name):
    import sys
    sys.modules.pop("ota." + name, None)
    try:
        delattr(sys.modules["ota"], name)
    except (AttributeError, KeyError):  # MicroPython raises KeyError for a missing one
        pass


def forget(name):
    """Unload ota.<name> so its code can be collected; the next import loads it again.

    The client keeps only the modules of the phase it is in (docs/board.md, Memory budget).
    """
    import gc
    _drop(name)
    gc.collect()


def shed():
    """Unload every client module but those a running app needs (run, app, state, records,
    fail): what a check or a report loaded goes, so the app gets its heap back."""
    import gc
    import sys
    for name in list(sys.modules):
        if name[:4] == "ota." and name[4:] not in ("run", "app", "state", "records", "fail"):
            _drop(name[4:])
    gc.collect()


def poll(force=False):
    """Check for an update if the poll policy says it is due; True if a check ran. Feeds the
    trial watchdog, due or not: an app's main loop calling it keeps a trial boot alive."""
    feed()
    from ota import run
    return run.poll(force)
