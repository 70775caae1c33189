# The trial-boot decision boot.py makes before the app runs: count one more trial boot, roll
# back, or end a trial that has nothing to roll back to; and the trial watchdog main.py arms on
# a trial boot. The module unloads itself when done, so its code is not in the heap while the
# client updates.
from ota import state


def boot(st):
    """Decide the slot for this boot from BootState `st`, counting a trial boot or rolling
    back; returns the slot. Writes the state at most once (OSError when the flash refuses).
    """
    try:
        rec = st.rec
        if rec["ok"]:
            return rec["active"]
        if rec["trial"] < rec["tries"]:
            if not rec["trial"]:  # a new release's first trial: no earlier app's error
                _crash().clear()
            rec["trial"] += 1
        elif st.info(state.other(rec["active"])):
            _roll_back(st)
        else:
            _keep(st)
        st.save()
        return rec["active"]
    finally:
        import ota
        ota.forget("crash")
        ota.forget("trial")


def _crash():
    from ota import crash
    return crash


def _why(rec):
    """Why the trial failed: the app's own exception when it raised (ota/crash.py: at most
    200 bytes), else that it was never confirmed."""
    return _crash().take() or "not confirmed after %d boots" % rec["tries"]


def _roll_back(st):
    rec = st.rec
    bad = st.info()
    good = state.other(rec["active"])
    rec["active"] = good
    rec["ok"] = 1
    rec["trial"] = 0
    rec["reject"] = max(rec["reject"], bad["sequence"])
    rec["note"] = state.note(bad, "rolled_back", st.info(good)["version"], _why(rec))


def _keep(st):
    """End the trial of an app that has nothing to roll back to (the board's first app).

    Counting on would block every later update (none starts while on trial), so the app
    stays active with its trial ended and the failure is reported: the next release can
    install, with this one as its rollback target. Nothing is rejected: it is installed.
    """
    rec = st.rec
    rec["ok"] = 1
    rec["trial"] = 0
    bad = st.info()
    rec["note"] = state.note(bad, "failed", bad["version"],
                        _why(rec) + "; no previous app to roll back to, kept")


def watchdog(cfg):
    """Arm the trial watchdog when config trial_watchdog_s > 0: a machine.WDT kept as ota.wdt,
    fed before every request and in ota.poll() and ota.confirm(). run.py calls this on trial
    boots only, before the boot's check: a hung trial app is reset, and the reset is a trial
    boot that boot.py counts. A period the firmware refuses (the RP2040 counts 8.4 s at most)
    leaves the boot without one, said on the console.
    """
    import ota
    try:
        seconds = cfg.get("trial_watchdog_s")
        if seconds:
            import machine
            ota.wdt = machine.WDT(timeout=int(seconds * 1000))
    except Exception as e:
        print("ota: no trial watchdog:", e)
    finally:
        ota.forget("trial")
