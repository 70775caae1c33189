# Staging a verified manifest into the inactive slot and flipping to it.
import os

from micropython import const

from ota import slots, state
from ota.fail import HttpError, UpdateFailed

# A manifest file entry as the client hands it over (client.trusted_update): a tuple
# (path, sha256, size, encoding, blob, transfer_size), a third of a dict's heap.
PATH = const(0)
SHA = const(1)
SIZE = const(2)
ENCODING = const(3)
BLOB = const(4)
TRANSFER = const(5)


def _fetch(sess, entry, part, buf):
    """Complete /ota/part/<blob> from the server, resuming with Range; verify its SHA-256."""
    import binascii
    import hashlib
    have = slots.size(part)
    if have > entry[TRANSFER]:
        slots.remove(part)
        have = 0
    h = hashlib.sha256()
    if have > 0:
        have = slots.hash_into(part, buf, h)  # resume: the hash must cover what is there
    else:
        have = 0
    if have < entry[TRANSFER]:
        h = _download(sess, entry, part, buf, h, have)
    if binascii.hexlify(h.digest()).decode() != entry[BLOB]:
        slots.remove(part)
        raise UpdateFailed("hash mismatch: " + entry[PATH])


def _download(sess, entry, part, buf, h, have):
    """Append the rest of the blob to `part`, hashing it into `h`; returns the hash."""
    extra = "Range: bytes=%d-\r\n" % have if have else ""
    try:
        resp = sess.request("GET", "/v1/blobs/" + entry[BLOB], b"", extra)
    except HttpError as e:
        raise UpdateFailed("blob %s: %s" % (entry[PATH], e))
    try:
        if resp.status == 200 and have:
            import hashlib
            have = 0  # the server ignored Range: start over
            h = hashlib.sha256()
            slots.remove(part)
        elif resp.status != 200 and not (resp.status == 206 and resp.range_start == have):
            raise UpdateFailed("blob %s: http %d" % (entry[PATH], resp.status))
        left = entry[TRANSFER] - have
        if resp.length != left:
            raise UpdateFailed("blob %s: length %s, expected %d" % (
                entry[PATH], resp.length, left))
        with open(part, "ab") as f:
            while left:
                n = resp.readinto(buf[:min(len(buf), left)])
                h.update(buf[:n])
                f.write(buf[:n])
                left -= n
    except HttpError as e:
        raise UpdateFailed("blob %s: %s" % (entry[PATH], e))
    finally:
        resp.close()
    return h


def _place(sess, entry, dest, olds, active_root, buf):
    sha = entry[SHA]
    size = entry[SIZE]
    if slots.hash_file(dest, buf) == (sha, size):
        return  # an earlier attempt already put it here
    slots.makedirs(dest)
    src = olds.get(sha)
    if src is not None:
        try:
            if slots.copy_verified(active_root + "/" + src, dest, sha, size, buf):
                return
        except OSError:
            pass  # the active copy is unreadable: download instead
    part = slots.PART_DIR + "/" + entry[BLOB]
    _fetch(sess, entry, part, buf)
    if entry[ENCODING] == "plain":
        slots.remove(dest)
        os.rename(part, dest)
    elif not slots.inflate_verified(part, dest, sha, size, buf):
        slots.remove(part)
        raise UpdateFailed("inflated file does not match: " + entry[PATH])
    else:
        slots.remove(part)


def stage(sess, st, files, buf):
    """Build the inactive slot for the verified entries `files`; returns the slot name.

    Raises UpdateFailed (OSError when the flash refuses a write).
    """
    target = state.other(st.active)
    root = state.slot_path(target)
    wanted = set()
    blobs = set()
    for e in files:
        if not slots.safe_path(e[PATH]) or e[ENCODING] not in ("plain", "deflate"):
            raise UpdateFailed("bad file entry: " + str(e[PATH]))
        wanted.add(e[PATH])
        blobs.add(e[BLOB])
    slots.clear_strays(root, wanted)
    slots.clear_parts(blobs)
    shas = {}
    for e in files:
        shas[e[SHA]] = e[SHA]
    olds = slots.active_files(st.active, shas)
    shas = None
    active_root = state.slot_path(st.active)
    for e in files:
        _place(sess, e, root + "/" + e[PATH], olds, active_root, buf)
    for e in files:  # read back every file from flash before trusting the slot
        if slots.hash_file(root + "/" + e[PATH], buf) != (e[SHA], e[SIZE]):
            raise UpdateFailed("verify failed: " + e[PATH])
    slots.write_meta(target, [(e[PATH], e[SHA]) for e in files])
    return target
