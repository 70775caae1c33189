# One conversation with the server: reports, check-in, root rotation, verify, update.
import json
import sys

from micropython import const

from ota.fail import HttpError, UpdateFailed

# ota.http and ota.reports are imported where used, never held here: the client unloads
# them while the manifest is verified (_forget) and they load again for the transfer.

TRUST_PATH = "/ota_id/trust.json"  # ota.path: /ota/trust.json on boards provisioned before
# The check-in's envelope as it arrived, and its payload as the signature check decodes it:
# both stay on flash, walked through a small window (ota/jscan.py), never whole in the heap.
ENVELOPE = "/ota/offer.dsse"
PAYLOAD = "/ota/offer.json"
# Where each trusted key's comb table is kept between updates (ota/p256.py, use_tables).
TABLES = "/ota"
# trust.MAX_ENVELOPE_BYTES, kept here so a check-in needs no verifier loaded
# (tests/test_board_trust.py checks they are equal).
MAX_ENVELOPE = const(12288)
_ROOT_HEAD = const(192)  # trust.json's bytes root_version reads: "payloadType", 64 of "payload"
_MAX_ROOT_STEPS = const(8)
_BUF = const(1024)


class Session:
    """The server URL, the board's key and the counters of this conversation (ota/auth.py)."""

    def __init__(self, cfg):
        from ota import auth, http
        self.url = cfg["server"]
        self.prefix = http.split_url(self.url)[3]
        self.timeout = cfg["timeout_s"]
        self.device_id = cfg["device_id"]
        self.key = auth.load_key()
        self.ctr = self.ctr_end = 0  # the counter block reserved in RAM (none yet)
        # Anti-rollback floor: set by the client, merged with the counter record's at each
        # reservation (auth._counter), where it survives the boot state's loss.
        self.floor = 0
        # The download grant this conversation's offer carried (X-Ota-Grant), in RAM only:
        # never written, printed or parsed (docs/board.md, Download grants).
        self.auth = None

    def request(self, method, path, body=b"", extra="", more_s=0, auth=None):
        """Signed request, ended by timeout_s (+ more_s: a pack's time on the slowest link);
        raises HttpError on transport failures.

        `auth`: a download grant (Session.auth) to send as the Authorization instead of a
        signature, which uses no counter. A grant answered 401 (expired, the server's key
        changed, a server without grants) is dropped for the rest of the conversation and the
        request goes again at once, signed: a refused grant never fails an update.
        Feeds the trial watchdog first: a request, bounded by timeout_s, is the longest the
        client works unfed (config trial_watchdog_s, docs/board.md); a pack (more_s) is only
        fetched on a confirmed boot, when no watchdog runs."""
        import ota
        from ota import http
        path = self.prefix + path
        while True:
            ota.feed()
            if auth:
                head = auth
            else:
                from ota import auth as signer
                head = signer.authorization(self, method, path, body)
                signer = None
                _forget("auth")  # the verifier's heap matters more than reloading it next time
            headers = "Authorization: " + head + "\r\n"
            if body:
                headers += "Content-Type: application/json\r\n"
            resp = http.request(self.url, method, path, headers + extra, body,
                                self.timeout + more_s)
            if resp.status != 401 or not auth:
                return resp
            resp.close()
            auth = self.auth = None


def load_root():
    """The trusted root metadata; falls back to the copy a rotation left half-renamed.

    Its own signatures are checked at its first use (Root.check in verify_manifest and
    verify_rotation), so loading it costs no ECDSA.
    """
    import ota
    from ota import trust
    path = ota.path(TRUST_PATH)
    try:
        return trust.load_root(path, defer_check=True)
    except OSError:
        import os
        os.rename(path + ".new", path)
        return trust.load_root(path, defer_check=True)


def root_version():
    """The version of the root the board holds, for the check-in body.

    Read without the verifier (most check-ins find nothing new and never load it) and from
    the file's first bytes only: the number only tells the server which root to offer; every
    trust decision loads and checks the root itself (load_root). Our envelopes put
    "payload" after "payloadType" and the root's "version" after "_type", so the first
    48 bytes of payload hold it; a file laid out otherwise, or one the plain read cannot make
    sense of, goes through load_root, which raises its exact error.
    """
    import binascii
    import ota
    try:
        with open(ota.path(TRUST_PATH), "rb") as f:
            head = f.read(_ROOT_HEAD)
        at = head.find(b'"payload":"') + 11
        text = binascii.a2b_base64(head[at:at + 64]) if at > 10 else b""
        i = text.find(b'"version":')
        if i > 0 and text.find(b"{", 1, i) < 0:  # a top-level key: no object opened before it
            i += 10
            j = i
            while j < len(text) and 48 <= text[j] <= 57:
                j += 1
            if i < j < len(text) and text[j] in b",}":
                return int(text[i:j])
    except (OSError, ValueError):
        pass  # missing (a rotation's rename cut short) or odd: load_root sorts it out
    version = load_root().version
    _unload_verifier()
    return version


def _save(resp, dest, buf, what):
    """Stream a 200 answer's body (at most MAX_ENVELOPE bytes) to the file dest."""
    if resp.status != 200:
        raise UpdateFailed("%s: http %d" % (what, resp.status))
    left = resp.length  # None or digits (ota/http.py parses it strictly)
    if left is None:
        raise UpdateFailed(what + ": no Content-Length")
    if left > MAX_ENVELOPE:  # refused before a byte of it is read
        raise UpdateFailed("%s too large: %d bytes" % (what, left))
    with open(dest, "wb") as f:
        while left > 0:  # each fill() reads at least one byte or raises (deadline, end)
            n = resp.fill(buf[:min(len(buf), left)])
            f.write(buf[:n])
            left -= n


def _fetch(sess, path, dest, buf, what):
    try:
        resp = sess.request("GET", path)
    except HttpError as e:
        raise UpdateFailed("%s: %s" % (what, e))
    try:
        _save(resp, dest, buf, what)
    except HttpError as e:
        raise UpdateFailed("%s: %s" % (what, e))
    finally:
        resp.close()


def rotate_root(sess, root, newest, now, buf):
    """Walk root versions up to `newest`, each verified by its predecessor, then persist it.

    Only the server's newest root must be unexpired (as the host's verify_root_chain): an
    intermediate one may have expired while the board was offline, and checking it would
    block the chain for good. Each version is downloaded to trust.json.new and verified
    there; only the last verified one is renamed over trust.json.
    """
    from ota import trust
    import os
    import ota
    path = ota.path(TRUST_PATH)
    final = newest
    version = root.version
    if newest - version > _MAX_ROOT_STEPS:
        newest = version + _MAX_ROOT_STEPS
    new = path + ".new"
    cas = None  # the newest server CAs a root of the chain names (a root without keeps them)
    while version < newest:
        _fetch(sess, "/v1/device/root/%d" % (version + 1), new, buf, "root")
        try:
            root = trust.verify_rotation(root, new, now=now if version + 1 == final else None)
        except trust.TrustError as e:
            raise UpdateFailed("root %d refused: %s" % (version + 1, _why(e)))
        version = root.version
        cas = root.server_ca or cas
    if cas:
        # Before the root moves: a power cut in between finds the old root, rotates again
        # and writes the same CAs; the other order could leave the new root with old CAs.
        from ota import tlsca
        tlsca.install(cas)
    os.remove(path)  # FAT cannot rename over a file; load_root covers the gap
    os.rename(new, path)
    return root



def _forget(name):
    import ota
    ota.forget(name)


def _unload_verifier():
    # errors with trust: its classes subclass this trust's TrustError (trust.fail)
    for name in ("rootmeta", "dsse", "rules", "jscan", "trust", "errors"):
        _forget(name)


def _why(err):
    return err.__class__.__name__ + (": " + str(err) if str(err) else "")


def bound_app(st, cfg):
    """The app whose releases this board takes, or None on a board that has none yet.

    The one its config names (written at provisioning: re-provisioning is the only way to
    change it), else the one its active slot holds, else the one recorded at the first
    verified offer (BootState.bind). A board with None takes the first release offered and
    is bound to its app from then on (docs/threat-model.md, App binding).
    """
    info = st.info()
    return cfg.get("app") or (info and info["app"]) or st.rec.get("app")


def checkin_body(st, cfg, root_v):
    import gc
    info = st.info() or {}
    v = sys.implementation.version
    # The bound app, not only the installed one: an honest server then never offers a fresh
    # board another app's release (ota_server/rollout.py, _fits).
    return json.dumps({
        "app": bound_app(st, cfg) or "", "version": info.get("version", ""),
        "sequence": info.get("sequence", 0), "root_version": root_v,
        "micropython": "%d.%d.%d" % (v[0], v[1], v[2]), "board": cfg["board"],
        "mem_free": gc.mem_free(), "slot": st.active}).encode()


def checkin(sess, st, cfg, root_v, buf):
    """POST the check-in; returns (True when an envelope was saved to ENVELOPE, X-Ota-Root)."""
    # A transport error here (server unreachable) propagates as HttpError: no report for it.
    resp = sess.request("POST", "/v1/device/checkin", checkin_body(st, cfg, root_v))
    try:
        if resp.status == 403:  # revoked: nothing to install, nothing the server would take
            raise HttpError("this board is revoked (403)")
        if resp.status >= 500:  # the server failed (its database down: 503), not an update:
            # as no answer, nothing to report (a `failed` would count against a rollout)
            raise HttpError("%s: http %d" % ("checkin", resp.status))
        if resp.status == 204 or (resp.status == 200 and st.on_trial):
            return False, resp.root  # on trial nothing is installed: the offer is not read
        if resp.status == 200:  # its download grant, if any, for this offer's pack (ota/http.py)
            sess.auth = getattr(resp, "auth", None)
        try:
            _save(resp, ENVELOPE, buf, "manifest" if resp.status == 200 else "checkin")
        except HttpError as e:
            raise UpdateFailed("checkin: " + str(e))
        return True, resp.root
    finally:
        resp.close()


def _version_tuple(text):
    out = []
    for part in str(text).split("."):
        out.append(int(part) if part.isdigit() else 0)
    return tuple(out)


def _accept(st, cfg, now, floor):
    """The verified manifest's fields (its files written to slots.OFFER), or None when there
    is nothing new; UpdateFailed when it is refused.

    `floor`: the counter record's copy of the anti-rollback floor (Session.floor), which
    survives both state records being lost (factory state: sequence 0, reject 0).
    """
    from ota import slots, trust
    installed = max(sequence_floor(st), floor)
    app = bound_app(st, cfg)
    lst = open(slots.OFFER, "w")
    try:
        m = trust.accept_manifest(PAYLOAD, board=cfg["board"], installed_sequence=installed,
                                  now=now, files=lambda e: lst.write(slots.line(e)), app=app)
    except trust.TrustError as e:
        if e.__class__.__name__ == "SameSequenceError":  # the normal "nothing new"
            return None
        raise UpdateFailed("manifest refused: " + _why(e))
    finally:
        lst.close()
    if _version_tuple(m.get("min_micropython", "0")) > tuple(sys.implementation.version[:3]):
        raise UpdateFailed("needs MicroPython " + m["min_micropython"])
    if app is None:  # provisioned without an app: the first one offered is its app for good
        st.bind(m["app"])
    return m


def sequence_floor(st):
    """The highest release sequence the boot state says was installed or rolled back."""
    info = st.info() or {}
    return max(info.get("sequence", 0), st.rec["reject"])


def verifier_tables(sess):
    """Set ota.p256 up as the client verifies: no key table held in the heap, each trusted
    key's comb table read from flash (TABLES), authenticated with the device key, and built
    and stored there at the key's first verify (docs/board-trust.md, ECDSA P-256)."""
    from ota import p256
    p256.KEY_TEETH = 0
    p256.use_tables(TABLES, sess.key)


def trusted_update(sess, st, cfg, offered, newest, now, buf):
    """Rotate the root if the server has a newer one, then verify the saved envelope.

    Returns the release to install ({"app", "version", "sequence", "entry"}; its files are
    the lines of slots.OFFER), or None. trust.verify_manifest in two halves, so that the root
    and ota.p256 are let go once the signatures are checked, before the payload is walked.
    The verifier is loaded only here and unloaded before returning, so the transfer that
    follows has its heap; running out of heap while verifying is a `failed` update, not a
    crash (the old app keeps running).
    """
    import gc
    _forget("http")  # loaded again for the transfer; verifying needs the heap more
    verifier_tables(sess)
    gc.collect()
    release = None
    try:
        from ota import trust
        root = load_root()
        if newest is not None and newest > root.version:
            root = rotate_root(sess, root, newest, now, buf)
            _forget("http")
        _forget("rootmeta")  # root parsing is done: its code is not needed for the verify
        if not offered or st.on_trial:
            return None  # never replace the rollback target while on trial
        try:
            trust.signed_manifest(ENVELOPE, root, scratch=PAYLOAD)
        except trust.TrustError as e:
            raise UpdateFailed("manifest refused: " + _why(e))
        root = None
        _forget("dsse")  # signatures checked: their code goes, the next signed request
        _forget("p256")  # loads p256 again
        m = _accept(st, cfg, now, sess.floor)
        if m is None:
            return None
        release = {"app": m["app"], "version": m["version"], "sequence": m["sequence"],
                   "entry": m["entry"]}
        return release
    except MemoryError:
        root = None
        raise UpdateFailed("out of memory verifying the manifest")
    finally:
        _unload_verifier()
        from ota import slots
        slots.remove(ENVELOPE)
        if release is None:  # an accepted manifest stays: update.stage checks the slot by it
            slots.remove(PAYLOAD)


def _flush(sess):
    from ota import reports
    reports.flush(sess)
    reports = None
    _forget("reports")  # used at the start and the end of a check only


def _report(m, status, reason=""):
    from ota import reports
    r = {"app": m.get("app", ""), "sequence": m.get("sequence", 0),
         "version": m.get("version", ""), "status": status, "reason": reason}
    if m.get("offline"):  # a verified release staged over USB (ota/offline.py)
        r["offline"] = 1
    reports.enqueue(r)


def check(st, cfg, now=None):
    """Talk to the server once. Returns True when it answered an authenticated check-in.

    On a staged and verified update the state flips to the new slot on trial and the board
    resets. Any failure leaves the active slot as it was and queues a `failed` report.
    Phases, each loading only what it needs: check-in (no verifier), verify (verifier loaded,
    then dropped), staging (update + slots).

    A module the firmware lacks (`tls`, `deflate`, `socket`: firmware below the floor or
    built without them, docs/board.md "Firmware floor") never escapes as ImportError: once
    the server answered it is a `failed` report, before that a check that reached no one.
    """
    try:
        return _check(st, cfg, now)
    except ImportError as e:
        print("ota: firmware lacks a module the client needs:", e)
        return False


def _check(st, cfg, now):
    print("ota: checking", cfg["server"])
    sess = Session(cfg)
    # kept in the counter record at its next write, merged there with the record's own
    sess.floor = max(sess.floor, sequence_floor(st))
    _flush(sess)
    version = root_version()
    target = None
    answered = False
    # the one transfer buffer: the envelope and any new root to flash, then every file
    buf = memoryview(bytearray(_BUF))
    try:
        offered, newest = checkin(sess, st, cfg, version, buf)
        answered = True
        if newest is not None and newest <= version:
            newest = None
        if newest is None and (not offered or st.on_trial):
            print("ota: nothing new")
            return True
        target = trusted_update(sess, st, cfg, offered, newest, now, buf)
        if target is None:
            print("ota: nothing new")
            return True
        _report(target, "downloading")
        _flush(sess)
        from ota import update
        slot = update.stage(sess, st, buf, PAYLOAD)
    except HttpError as e:
        if not answered:
            print("ota: no answer:", e)
            return False  # unreachable: nothing was offered, so nothing to report
        reason = "http: " + str(e)
    except UpdateFailed as e:
        reason = str(e)
    except OSError as e:  # the flash refused a write (full, worn): the old slot still runs
        reason = "flash: " + str(e)
    except ImportError as e:  # e.g. no `deflate` for a deflated file: the old slot runs
        if not answered:
            raise  # nobody to report to (no `tls`, no `socket`): check() says so
        reason = "firmware: " + str(e)
    except MemoryError:  # the heap is freed as the stack unwinds: there is room to report
        reason = "out of memory"
    else:
        st.flip(slot, target, cfg["trial_boots"])
        print("ota: installed", target["version"], "- restarting into it on trial")
        import machine
        machine.reset()
    if target is not None:  # failed before update.stage took the verified manifest over
        from ota import slots
        slots.remove(PAYLOAD)
    print("ota: update refused:", reason)
    _report(target or st.info() or {}, "failed", reason)
    _flush(sess)
    return answered
