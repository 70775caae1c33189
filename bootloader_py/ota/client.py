# One conversation with the server: reports, check-in, root rotation, verify, update.
import json
import sys

from micropython import const

from ota import http, reports
from ota.fail import UpdateFailed

TRUST_PATH = "/ota/trust.json"
_MAX_ROOT = const(8192)
_MAX_ROOT_STEPS = const(8)
_BUF = const(1024)


class Session:
    """The server URL, the request signer and the one transfer buffer of this conversation."""

    def __init__(self, cfg):
        from ota import auth
        self.url = cfg["server"]
        self.prefix = http.split_url(self.url)[3]
        self.timeout = cfg["timeout_s"]
        self.signer = auth.signer(cfg["device_id"])
        self.buf = memoryview(bytearray(_BUF))

    def request(self, method, path, body=b"", extra=""):
        """Signed request; raises http.HttpError on transport failures."""
        path = self.prefix + path
        headers = "Authorization: " + self.signer.authorization(method, path, body) + "\r\n"
        if body:
            headers += "Content-Type: application/json\r\n"
        return http.request(self.url, method, path, headers + extra, body, self.timeout)


def _root_version(root):
    return root["version"] if isinstance(root, dict) else root.version


def load_root():
    """The trusted root metadata; falls back to the copy a rotation left half-renamed."""
    from ota import trust
    # No comb tables yet: most check-ins find nothing new, and verify_manifest builds them.
    try:
        return trust.load_root(TRUST_PATH, precompute=False)
    except OSError:
        import os
        os.rename(TRUST_PATH + ".new", TRUST_PATH)
        return trust.load_root(TRUST_PATH, precompute=False)


def _get_small(sess, path, cap, what):
    resp = sess.request("GET", path)
    try:
        if resp.status != 200:
            raise UpdateFailed("%s: http %d" % (what, resp.status))
        return resp.read_small(cap)
    except http.HttpError as e:
        raise UpdateFailed("%s: %s" % (what, e))
    finally:
        resp.close()


def rotate_root(sess, root, newest, now):
    """Walk root versions up to `newest`, each verified by its predecessor, then persist it.

    Only the last verified envelope is written (a new file, then a rename).
    """
    from ota import trust
    import os
    version = _root_version(root)
    if newest - version > _MAX_ROOT_STEPS:
        newest = version + _MAX_ROOT_STEPS
    envelope = None
    while version < newest:
        envelope = _get_small(sess, "/v1/device/root/%d" % (version + 1), _MAX_ROOT, "root")
        try:
            root = trust.verify_rotation(root, envelope, now=now)
        except trust.TrustError as e:
            raise UpdateFailed("root %d refused: %s" % (version + 1, _why(e)))
        version = _root_version(root)
    if envelope is not None:
        with open(TRUST_PATH + ".new", "wb") as f:
            f.write(envelope)
        os.remove(TRUST_PATH)  # FAT cannot rename over a file; load_root covers the gap
        os.rename(TRUST_PATH + ".new", TRUST_PATH)
    return root


def _forget(name):
    """Unload a module this check no longer needs, so its code and tables can be collected."""
    import gc
    import ota
    sys.modules.pop("ota." + name, None)
    try:
        delattr(ota, name)
    except AttributeError:
        pass
    gc.collect()


def _why(err):
    return err.__class__.__name__ + (": " + str(err) if str(err) else "")


def checkin_body(st, cfg, root):
    import gc
    info = st.info() or {}
    v = sys.implementation.version
    return json.dumps({
        "app": info.get("app", ""), "version": info.get("version", ""),
        "sequence": info.get("sequence", 0), "root_version": _root_version(root),
        "micropython": "%d.%d.%d" % (v[0], v[1], v[2]), "board": cfg["board"],
        "mem_free": gc.mem_free(), "slot": st.active}).encode()


def checkin(sess, st, cfg, root):
    """POST the check-in; returns (envelope bytes or None, X-Ota-Root or None)."""
    # A transport error here (server unreachable) propagates as HttpError: no report for it.
    resp = sess.request("POST", "/v1/device/checkin", checkin_body(st, cfg, root))
    try:
        if resp.status == 204:
            return None, resp.root
        if resp.status != 200:
            raise UpdateFailed("checkin: http %d" % resp.status)
        from ota import trust
        cap = trust.MAX_ENVELOPE_BYTES
        if resp.length is not None and resp.length > cap:  # refused before a byte is read
            raise UpdateFailed("manifest too large: %d bytes" % resp.length)
        import gc
        gc.collect()  # the envelope needs one contiguous block
        return resp.read_small(cap), resp.root
    except http.HttpError as e:
        raise UpdateFailed("checkin: " + str(e))
    finally:
        resp.close()


def _version_tuple(text):
    out = []
    for part in str(text).split("."):
        out.append(int(part) if part.isdigit() else 0)
    return tuple(out)


def verify(st, cfg, root, envelope, now):
    """The verified manifest dict, or None when there is nothing new. Raises UpdateFailed."""
    from ota import trust
    info = st.info() or {}
    installed = max(info.get("sequence", 0), st.rec["reject"])
    import gc
    gc.collect()  # the verifier decodes the payload into one more contiguous block
    try:
        m = trust.verify_manifest(envelope, root, board=cfg["board"],
                                  installed_sequence=installed, now=now)
    except trust.SameSequenceError:
        return None
    except trust.TrustError as e:
        raise UpdateFailed("manifest refused: " + _why(e))
    if _version_tuple(m.get("min_micropython", "0")) > tuple(sys.implementation.version[:3]):
        raise UpdateFailed("needs MicroPython " + m["min_micropython"])
    return m


def _report(m, status, reason=""):
    reports.enqueue({"app": m.get("app", ""), "sequence": m.get("sequence", 0),
                     "version": m.get("version", ""), "status": status, "reason": reason})


def check(st, cfg, now=None):
    """Talk to the server once. Returns True when it answered an authenticated check-in.

    On a staged and verified update the state flips to the new slot on trial and the board
    resets. Any failure leaves the active slot as it was and queues a `failed` report.
    """
    sess = Session(cfg)
    reports.flush(sess)
    root = load_root()
    target = None
    answered = False
    try:
        envelope, newest = checkin(sess, st, cfg, root)
        answered = True
        if newest is not None and newest > _root_version(root):
            root = rotate_root(sess, root, newest, now)
        if envelope is None or st.on_trial:
            return True  # never replace the rollback target while on trial
        m = verify(st, cfg, root, envelope, now)
        envelope = root = None  # the heap is needed for the transfer now
        _forget("trust")
        if m is None:
            return True
        target = m
        _report(m, "downloading")
        reports.flush(sess)
        from ota import update
        slot = update.stage(sess, st, m, sess.buf)
    except http.HttpError as e:
        if not answered:
            return False  # unreachable: nothing was offered, so nothing to report
        reason = "http: " + str(e)
    except UpdateFailed as e:
        reason = str(e)
    except OSError as e:  # the flash refused a write (full, worn): the old slot still runs
        reason = "flash: " + str(e)
    else:
        st.flip(slot, {"app": m["app"], "version": m["version"], "sequence": m["sequence"],
                       "entry": m["entry"]}, cfg["trial_boots"])
        import machine
        machine.reset()
    _report(target or st.info() or {}, "failed", reason)
    reports.flush(sess)
    return answered
