# Staging a verified manifest into the inactive slot and flipping to it.
import os

from ota import slots, state
from ota.fail import UpdateFailed
from ota.http import HttpError


def _fetch(sess, entry, part, buf):
    """Complete /ota/part/<blob> from the server, resuming with Range; verify its SHA-256."""
    import binascii
    import hashlib
    have = slots.size(part)
    if have > entry["transfer_size"]:
        slots.remove(part)
        have = 0
    h = hashlib.sha256()
    if have > 0:
        have = slots.hash_into(part, buf, h)  # resume: the hash must cover what is there
    else:
        have = 0
    if have < entry["transfer_size"]:
        h = _download(sess, entry, part, buf, h, have)
    if binascii.hexlify(h.digest()).decode() != entry["blob"]:
        slots.remove(part)
        raise UpdateFailed("hash mismatch: " + entry["path"])


def _download(sess, entry, part, buf, h, have):
    """Append the rest of the blob to `part`, hashing it into `h`; returns the hash."""
    extra = "Range: bytes=%d-\r\n" % have if have else ""
    try:
        resp = sess.request("GET", "/v1/blobs/" + entry["blob"], b"", extra)
    except HttpError as e:
        raise UpdateFailed("blob %s: %s" % (entry["path"], e))
    try:
        if resp.status == 200 and have:
            import hashlib
            have = 0  # the server ignored Range: start over
            h = hashlib.sha256()
            slots.remove(part)
        elif resp.status != 200 and not (resp.status == 206 and resp.range_start == have):
            raise UpdateFailed("blob %s: http %d" % (entry["path"], resp.status))
        left = entry["transfer_size"] - have
        if resp.length != left:
            raise UpdateFailed("blob %s: length %s, expected %d" % (
                entry["path"], resp.length, left))
        with open(part, "ab") as f:
            while left:
                n = resp.readinto(buf[:min(len(buf), left)])
                h.update(buf[:n])
                f.write(buf[:n])
                left -= n
    except HttpError as e:
        raise UpdateFailed("blob %s: %s" % (entry["path"], e))
    finally:
        resp.close()
    return h


def _place(sess, entry, dest, olds, active_root, buf):
    sha = entry["sha256"]
    size = entry["size"]
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
    part = slots.PART_DIR + "/" + entry["blob"]
    _fetch(sess, entry, part, buf)
    if entry["encoding"] == "plain":
        slots.remove(dest)
        os.rename(part, dest)
    elif not slots.inflate_verified(part, dest, sha, size, buf):
        slots.remove(part)
        raise UpdateFailed("inflated file does not match: " + entry["path"])
    else:
        slots.remove(part)


def stage(sess, st, manifest, buf):
    """Build the inactive slot for `manifest`; returns the slot name. Raises UpdateFailed."""
    target = state.other(st.active)
    root = state.slot_path(target)
    files = manifest["files"]
    wanted = set()
    blobs = set()
    for e in files:
        if not slots.safe_path(e["path"]) or e["encoding"] not in ("plain", "deflate"):
            raise UpdateFailed("bad file entry: " + str(e.get("path")))
        wanted.add(e["path"])
        blobs.add(e["blob"])
    slots.clear_strays(root, wanted)
    slots.clear_parts(blobs)
    olds = slots.active_files(st.active)
    active_root = state.slot_path(st.active)
    for e in files:
        _place(sess, e, root + "/" + e["path"], olds, active_root, buf)
    for e in files:  # read back every file from flash before trusting the slot
        if slots.hash_file(root + "/" + e["path"], buf) != (e["sha256"], e["size"]):
            raise UpdateFailed("verify failed: " + e["path"])
    slots.write_meta(target, files)
    return target
