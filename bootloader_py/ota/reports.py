# Status reports, queued on flash and sent when the server can be reached.
#
# The queue is a file of JSON lines. A line torn by a power cut fails to parse and is dropped.
# Delivery is at least once: a report may arrive twice after a badly timed power cut.
import json
import os

from micropython import const

QUEUE = "/ota/reports"
_MAX_QUEUED = const(16)
_MAX_LINE = const(400)


def _lines():
    try:
        os.stat(QUEUE)
    except OSError:
        try:
            os.stat(QUEUE + ".t")
        except OSError:
            return []
        os.rename(QUEUE + ".t", QUEUE)  # a rewrite cut short after the remove
    out = []
    with open(QUEUE) as f:
        while True:
            line = f.readline(_MAX_LINE)
            if not line:
                break
            if line[-1:] == "\n":
                out.append(line)
                if len(out) > _MAX_QUEUED:
                    out.pop(0)  # oldest first out: the newest news matters most
    return out


def _rewrite(lines):
    if not lines:
        try:
            os.remove(QUEUE)
        except OSError:
            pass
        return
    with open(QUEUE + ".t", "w") as f:
        for line in lines:
            f.write(line)
    try:
        os.remove(QUEUE)
    except OSError:
        pass
    os.rename(QUEUE + ".t", QUEUE)


def enqueue(report):
    """Queue one report dict {"app", "sequence", "version", "status", "reason"}."""
    line = json.dumps(report) + "\n"
    if len(line) > _MAX_LINE:
        report["reason"] = report.get("reason", "")[:120]
        line = json.dumps(report) + "\n"
    with open(QUEUE, "a") as f:
        f.write(line)


def pending():
    return len(_lines())


def flush(sess):
    """Send queued reports in order; stops at the first that cannot be delivered.

    Returns True when the queue is empty afterwards. A report the server refuses with 4xx is
    dropped (it would never succeed); a transport error or 5xx keeps it for the next try.
    """
    lines = _lines()
    if not lines:
        return True
    sent = 0
    from ota.fail import HttpError
    for line in lines:
        try:
            body = line[:-1].encode()
            json.loads(body)
        except ValueError:
            sent += 1  # torn line
            continue
        try:
            resp = sess.request("POST", "/v1/device/report", body)
            resp.close()
        except HttpError:
            break
        if resp.status >= 500:
            break
        sent += 1
    if sent:
        _rewrite(lines[sent:])  # nothing delivered: leave the flash alone
    return sent == len(lines)
