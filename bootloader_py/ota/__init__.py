# The board's OTA client. Apps use ota.confirm() and, in a long-running loop, ota.poll().


def confirm():
    """Confirm the running (trial) app so boot.py keeps it; True if it was on trial."""
    from ota import run
    return run.confirm()


def poll(force=False):
    """Check for an update if the poll policy says it is due; True if a check ran."""
    from ota import run
    return run.poll(force)
