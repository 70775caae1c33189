# One conversation with the server: reports, check-in, root rotation, verify, update.
import json
import sys

from micropython import const

from ota.fail import HttpError, UpdateFailed

# ota.http and ota.reports are imported where used, never held here: the client unloads
# them while the manifest is verified (_forget) and they load again for the transfer.

TRUST_PATH = "/ota/trust.json"
_MAX_ROOT = const(8192)
# trust.MAX_ENVELOPE_BYTES, kept here so a check-in needs no verifier loaded
# (tests/test_board_trust.py checks they are equal).
MAX_ENVELOPE = const(12288)
_MAX_ROOT_STEPS = const(8)
_BUF = const(1024)


class Session:
    """The server URL and the request signer of this conversation."""

    def __init__(self, cfg):
        import gc
        from ota import auth, p256  # noqa: F401  loaded now, packed low in a clean heap
        gc.collect()
        self.url = cfg["server"]
        from ota import http
        self.prefix = http.split_url(self.url)[3]
        self.timeout = cfg["timeout_s"]
        self.signer = auth.signer(cfg["device_id"])

    def request(self, method, path, body=b"", extra=""):
        """Signed request; raises HttpError on transport failures."""
        from ota import http
        path = self.prefix + path
        headers = "Authorization: " + self.signer.authorization(method, path, body) + "\r\n"
        if body:
            headers += "Content-Type: application/json\r\n"
        return http.request(self.url, method, path, headers + extra, body, self.timeout)


def load_root():
    """The trusted root metadata; falls back to the copy a rotation left half-renamed.

    Its own signatures are checked at its first use (Root.check in verify_manifest and
    verify_rotation), so loading it costs no ECDSA.
    """
    from ota import trust
    try:
        return trust.load_root(TRUST_PATH, defer_check=True)
    except OSError:
        import os
        os.rename(TRUST_PATH + ".new", TRUST_PATH)
        return trust.load_root(TRUST_PATH, defer_check=True)


def root_version():
    """The version of the root the board holds, for the check-in body.

    Read without the verifier (most check-ins find nothing new and never load it): the
    number only tells the server which root to offer; every trust decision loads and
    checks the root itself (load_root).  A file the plain read cannot make sense of goes
    through load_root, which raises its exact error.
    """
    import binascii
    import os
    try:
        size = os.stat(TRUST_PATH)[6]
        with open(TRUST_PATH, "rb") as f:
            env = json.loads(f.read(min(size, MAX_ENVELOPE)))
        version = json.loads(binascii.a2b_base64(env["payload"]))["version"]
        if type(version) is int:
            return version
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing (a rotation's rename cut short) or odd: load_root sorts it out
    version = load_root().version
    _unload_verifier()
    return version


def _get_small(sess, path, cap, what):
    resp = sess.request("GET", path)
    try:
        if resp.status != 200:
            raise UpdateFailed("%s: http %d" % (what, resp.status))
        return resp.read_small(cap)
    except HttpError as e:
        raise UpdateFailed("%s: %s" % (what, e))
    finally:
        resp.close()


def rotate_root(sess, root, newest, now):
    """Walk root versions up to `newest`, each verified by its predecessor, then persist it.

    Only the server's newest root must be unexpired (as the host's verify_root_chain): an
    intermediate one may have expired while the board was offline, and checking it would
    block the chain for good. Only the last verified envelope is written (a new file, then
    a rename).
    """
    from ota import trust
    import os
    final = newest
    version = root.version
    if newest - version > _MAX_ROOT_STEPS:
        newest = version + _MAX_ROOT_STEPS
    envelope = None
    while version < newest:
        envelope = _get_small(sess, "/v1/device/root/%d" % (version + 1), _MAX_ROOT, "root")
        try:
            root = trust.verify_rotation(root, envelope,
                                         now=now if version + 1 == final else None)
        except trust.TrustError as e:
            raise UpdateFailed("root %d refused: %s" % (version + 1, _why(e)))
        version = root.version
    if envelope is not None:
        with open(TRUST_PATH + ".new", "wb") as f:
            f.write(envelope)
        os.remove(TRUST_PATH)  # FAT cannot rename over a file; load_root covers the gap
        os.rename(TRUST_PATH + ".new", TRUST_PATH)
    return root


def _forget(name):
    import ota
    ota.forget(name)


def _unload_verifier():
    for name in ("rootmeta", "dsse", "rules", "trust"):
        _forget(name)


def _why(err):
    return err.__class__.__name__ + (": " + str(err) if str(err) else "")


def checkin_body(st, cfg, root_v):
    import gc
    info = st.info() or {}
    v = sys.implementation.version
    return json.dumps({
        "app": info.get("app", ""), "version": info.get("version", ""),
        "sequence": info.get("sequence", 0), "root_version": root_v,
        "micropython": "%d.%d.%d" % (v[0], v[1], v[2]), "board": cfg["board"],
        "mem_free": gc.mem_free(), "slot": st.active}).encode()


def checkin(sess, st, cfg, root_v):
    """POST the check-in; returns (envelope bytearray or None, X-Ota-Root or None)."""
    # A transport error here (server unreachable) propagates as HttpError: no report for it.
    resp = sess.request("POST", "/v1/device/checkin", checkin_body(st, cfg, root_v))
    try:
        if resp.status == 204:
            return None, resp.root
        if resp.status != 200:
            raise UpdateFailed("checkin: http %d" % resp.status)
        if resp.length is not None and resp.length > MAX_ENVELOPE:  # refused before reading
            raise UpdateFailed("manifest too large: %d bytes" % resp.length)
        import gc
        gc.collect()  # the envelope needs one contiguous block
        return resp.read_small(MAX_ENVELOPE), resp.root
    except HttpError as e:
        raise UpdateFailed("checkin: " + str(e))
    finally:
        resp.close()


def _version_tuple(text):
    out = []
    for part in str(text).split("."):
        out.append(int(part) if part.isdigit() else 0)
    return tuple(out)


def _accept(st, cfg, payload, now, floor):
    """The signed payload's manifest dict, or None when there is nothing new (UpdateFailed).

    `floor`: the counter record's copy of the anti-rollback floor (Signer.floor), which
    survives both state records being lost (factory state: sequence 0, reject 0).
    """
    from ota import trust
    installed = max(sequence_floor(st), floor)
    try:
        m = trust.accept_manifest(payload, board=cfg["board"], installed_sequence=installed,
                                  now=now)
    except trust.SameSequenceError:
        return None
    except trust.TrustError as e:
        raise UpdateFailed("manifest refused: " + _why(e))
    if _version_tuple(m.get("min_micropython", "0")) > tuple(sys.implementation.version[:3]):
        raise UpdateFailed("needs MicroPython " + m["min_micropython"])
    return m


def sequence_floor(st):
    """The highest release sequence the boot state says was installed or rolled back."""
    info = st.info() or {}
    return max(info.get("sequence", 0), st.rec["reject"])


def trusted_update(sess, st, cfg, envelope, newest, now):
    """Rotate the root if the server has a newer one, then verify the offered manifest.

    Returns the release to install as (info dict, files as update.py's entry tuples), or
    None. trust.verify_manifest in two halves, so that the root and ota.p256 are let go once
    the signatures are checked, before the payload's JSON is parsed (the heap's peak). The
    verifier is loaded only here and unloaded before returning, so the transfer that follows
    has its heap; running out of heap while verifying is a `failed` update, not a crash (the
    old app keeps running).
    """
    import gc
    from ota import p256
    _forget("http")  # loaded again for the transfer; verifying needs the heap more
    # One verify per check: a throw-away comb (~8 ms, garbage at once) costs no more time
    # than building the 2 KB release key table (~7 ms) and then using it once (~2 ms).
    p256.KEY_TEETH = 0
    p256 = None
    gc.collect()
    try:
        from ota import trust
        root = load_root()
        if newest is not None and newest > root.version:
            root = rotate_root(sess, root, newest, now)
            _forget("http")
        _forget("rootmeta")  # root parsing is done: its code is not needed for the verify
        if envelope is None or st.on_trial:
            return None  # never replace the rollback target while on trial
        try:
            # consume: the payload is decoded over the envelope's own buffer
            payload = trust.signed_manifest(envelope, root, consume=True)
        except trust.TrustError as e:
            raise UpdateFailed("manifest refused: " + _why(e))
        envelope = root = None
        _forget("dsse")  # signatures checked: their code goes, the next signed request
        _forget("p256")  # loads p256 again
        m = _accept(st, cfg, payload, now, sess.signer.floor)
        payload = None
        if m is None:
            return None
        files = []
        for e in m["files"]:  # compact tuples: a third of the dicts' heap
            files.append((e["path"], e["sha256"], e["size"], e["encoding"], e["blob"],
                          e["transfer_size"]))
        return {"app": m["app"], "version": m["version"], "sequence": m["sequence"],
                "entry": m["entry"]}, files
    except MemoryError:
        envelope = root = payload = None
        raise UpdateFailed("out of memory verifying the manifest")
    finally:
        _unload_verifier()


def _flush(sess):
    from ota import reports
    reports.flush(sess)
    reports = None
    _forget("reports")  # used at the start and the end of a check only


def _report(m, status, reason=""):
    from ota import reports
    reports.enqueue({"app": m.get("app", ""), "sequence": m.get("sequence", 0),
                     "version": m.get("version", ""), "status": status, "reason": reason})


def check(st, cfg, now=None):
    """Talk to the server once. Returns True when it answered an authenticated check-in.

    On a staged and verified update the state flips to the new slot on trial and the board
    resets. Any failure leaves the active slot as it was and queues a `failed` report.
    Phases, each loading only what it needs: check-in (no verifier), verify (verifier loaded,
    then dropped), staging (update + slots).
    """
    sess = Session(cfg)
    # kept in the counter record at its next write, merged there with the record's own
    sess.signer.floor = max(sess.signer.floor, sequence_floor(st))
    _flush(sess)
    version = root_version()
    target = None
    answered = False
    try:
        envelope, newest = checkin(sess, st, cfg, version)
        answered = True
        if newest is not None and newest <= version:
            newest = None
        if newest is None and (envelope is None or st.on_trial):
            return True
        release = trusted_update(sess, st, cfg, envelope, newest, now)
        envelope = None
        if release is None:
            return True
        target, files = release
        release = None
        _report(target, "downloading")
        _flush(sess)
        from ota import update
        # the one transfer buffer, allocated only now: a check finding nothing never needs it
        slot = update.stage(sess, st, files, memoryview(bytearray(_BUF)))
    except HttpError as e:
        if not answered:
            return False  # unreachable: nothing was offered, so nothing to report
        reason = "http: " + str(e)
    except UpdateFailed as e:
        reason = str(e)
    except OSError as e:  # the flash refused a write (full, worn): the old slot still runs
        reason = "flash: " + str(e)
    except MemoryError:  # the heap is freed as the stack unwinds: there is room to report
        reason = "out of memory"
    else:
        st.flip(slot, target, cfg["trial_boots"])
        import machine
        machine.reset()
    _report(target or st.info() or {}, "failed", reason)
    _flush(sess)
    return answered
