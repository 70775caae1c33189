# A release `ota install` staged over USB, verified and installed at boot with the network
# update's own code (docs/board.md, "Offline install"). Imported only when a release is staged
# (run.py): its names cost the network update no qstr.
#
# The staging area, written by the host:
#     /ota/staged/<blob>          the blobs the board lacked, each named by its SHA-256
#     /ota/staged/now             the host's Unix time when it staged (digits)
#     /ota/staged/manifest.dsse   the signed envelope, renamed into place last: the commit
# The envelope goes through client.trusted_update exactly as a check-in's offer does (the
# signature against the board's root, app binding, board, sequence, expiry, every file entry);
# update.stage then builds the other slot, its blobs read from the staging area by _Pack in
# place of the server's pack answer (the same length and SHA-256 checks, the same resume).
import os

from micropython import const

from ota import client
from ota.fail import HttpError, UpdateFailed

# ota.slots is not imported here: loaded while the signatures are checked, its code would sit
# in the heap at the verify's peak, which the network update reaches without it.

STAGED = "/ota/staged"
ENVELOPE = STAGED + "/manifest.dsse"
NOW = STAGED + "/now"
_BUF = const(1024)  # the one transfer buffer, as client._check's
_NOW_DIGITS = const(12)  # Unix seconds fit in 11 digits until the year 5138
_GC_EVERY = const(4096)  # as run.py's: the heap stays packed while the update runs


class _Pack:
    """The staged blobs of one pack request, back to back, as the server would answer it
    (ota/http.py Response: status, length, range_start, fill, close)."""

    def __init__(self, ids, skip):
        self.ids = ids
        self.at = 0
        self.f = None
        self.skip = skip  # bytes of the first blob already on flash (a resumed pack)
        self.status = 206 if skip else 200
        self.range_start = skip
        total = -skip
        for blob in ids:
            try:
                total += os.stat(STAGED + "/" + blob)[6]
            except OSError:
                raise HttpError("blob " + blob[:16] + " is not in the staged release")
        self.length = total

    def fill(self, mv):
        """Fill all of mv from the staged blobs; HttpError past their end (as Response.fill)."""
        got = 0
        while got < len(mv):
            if self.f is None:
                if self.at == len(self.ids):
                    raise HttpError("read past the end of the staged blobs")
                self.f = open(STAGED + "/" + self.ids[self.at], "rb")
                self.at += 1
                if self.skip:
                    self.f.seek(self.skip)
                    self.skip = 0
            n = self.f.readinto(mv[got:])
            if n:
                got += n
            else:
                self.f.close()
                self.f = None
        return got

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None


class _Usb(client.Session):
    """A session with no server: the device key (the verifier's comb tables are authenticated
    with it) and a pack endpoint served from the staging area. Nothing goes on the network."""

    def request(self, method, path, body=b"", extra="", more_s=0, auth=None):
        at = path.find("?blobs=")
        if method != "GET" or at < 0:
            raise HttpError("no server during an offline install")
        skip = 0
        if extra:  # "Range: bytes=N-\r\n", as update._fetch writes it
            skip = int(extra[extra.find("=") + 1:extra.find("-")])
        return _Pack(path[at + 7:].split(","), skip)


def staged_time(buf):
    """The host's time from the staging area, for the expiry check; UpdateFailed when it is
    missing or not plain digits (a board without a trusted clock has no other time)."""
    try:
        with open(NOW, "rb") as f:
            n = f.readinto(buf[:_NOW_DIGITS + 1])
    except OSError:
        raise UpdateFailed("the staged release has no time (" + NOW + ")")
    text = bytes(buf[:n])
    if not 0 < n <= _NOW_DIGITS or not text.isdigit():
        raise UpdateFailed(NOW + ": not Unix seconds")
    return int(text)


def discard():
    """Remove the staging area: the envelope first, so a cut part-way leaves no release. A
    staging area that does not list whole and sound (slots.listdir) is set aside instead."""
    try:
        os.remove(ENVELOPE)
    except OSError:
        pass  # gone already (a removal cut short, or a release that never had one)
    from ota import slots
    try:
        for e in slots.listdir(STAGED):
            os.remove(STAGED + "/" + e[0])
        os.rmdir(STAGED)
    except OSError:
        if slots.exists(STAGED):  # damaged (a FAT directory sector a cut left erased or torn)
            from ota import recovery
            recovery.set_aside(STAGED)  # its entries untouched (ota/recovery.py)


def check(st, cfg):
    """Verify the staged release and install it: the other slot built, the state flipped to it
    on trial, the staging area removed, the board reset (this function then never returns).

    A release that fails any check (or whose install fails) is removed with its staging area,
    a `failed` report is queued for the next check-in, and the function returns: the old app
    runs. The board already holding this release (same sequence): removed, nothing reported.
    Never called on a trial boot (run.py): the rollback target is never replaced.
    """
    import gc
    gc.collect()
    old = gc.threshold()
    gc.threshold(_GC_EVERY)
    target = None
    try:
        buf = memoryview(bytearray(_BUF))
        now = staged_time(buf)
        sess = _Usb(cfg)
        sess.floor = max(sess.floor, client.sequence_floor(st))
        # What a check's first request does (auth.authorization): reserve a counter block,
        # which merges the counter record's copy of the anti-rollback floor into sess.floor
        # and stores the state's there. Without it a board whose state records were lost
        # would take an older release over USB that it refuses from the server.
        from ota import auth
        auth._counter(sess)
        auth = None
        import ota
        ota.forget("auth")  # no request will sign anything: its code goes before the verify
        _copy(ENVELOPE, client.ENVELOPE, buf)  # trusted_update removes its input
        target = client.trusted_update(sess, st, cfg, True, None, now, buf)
        if target is None:  # nothing new: this release is installed already
            discard()
            return
        from ota import update
        slot = update.stage(sess, st, buf, client.PAYLOAD)
    except UpdateFailed as e:
        reason = str(e)
    except OSError as e:
        reason = "flash: " + str(e)
    except ImportError as e:  # e.g. no `deflate` for a deflated file
        reason = "firmware: " + str(e)
    except MemoryError:
        reason = "out of memory"
    else:
        target["offline"] = 1  # its trial needs no server's answer to confirm (ota/app.py)
        st.flip(slot, target, cfg["trial_boots"])
        discard()  # after the flip: a cut before it is done leaves the release staged again
        import machine
        machine.reset()
    finally:
        gc.threshold(old)
    from ota import slots
    slots.remove(client.PAYLOAD)
    print("ota: staged release refused:", reason)
    discard()
    if target is not None:  # verified, then its install failed: a release the server knows
        target["offline"] = 1
    client._report(target or st.info() or {}, "failed", "offline install: " + reason)


def _copy(src, dest, buf):
    n = os.stat(src)[6]
    if n > client.MAX_ENVELOPE:  # refused before a byte of it is read, as a check-in's
        raise UpdateFailed("staged manifest too large: %d bytes" % n)
    with open(src, "rb") as fi:
        with open(dest, "wb") as fo:
            while True:
                n = fi.readinto(buf)
                if not n:
                    break
                fo.write(buf[:n])
