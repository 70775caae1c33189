# Staging a verified release into the inactive slot (docs/board.md, Update).
#
# The release's files are the lines of slots.OFFER. Each file of the new slot comes from
# (1) the target slot itself when an earlier attempt already put it there, (2) a copy of an
# active-slot file with the same SHA-256, or (3) the server: every file that needs it in one
# request (GET /v1/device/pack, with the offer's download grant, else signed), its blobs back
# to back. Each blob lands in /ota/part/<blob> first, through the one buffer into SHA-256 and
# flash, cut off at its declared size; an attempt cut short resumes the blob it was in with
# Range.
import hashlib

from micropython import const

from ota import slots, state
from ota.fail import HttpError, UpdateFailed
from ota.slots import OFFER

_PACK_MAX = const(32)  # blobs per request: keeps the request line under 2.2 KB
# The slowest link a pack is given time for, bytes a second: its request's deadline is
# timeout_s plus its bytes at this rate (docs/board.md, Deadlines).
_SLOWEST = const(1024)
# The fields of slots' entry tuples: slots.py's own consts, repeated (private names cost no qstr)
_PATH = const(0)
_SHA = const(1)
_SIZE = const(2)
_ENCODING = const(3)
_BLOB = const(4)
_TRANSFER = const(5)


def stage(sess, st, buf, manifest):
    """Build the inactive slot for the offer list; returns the slot name.

    `manifest`: the file holding the verified manifest payload (client.PAYLOAD); the slot is
    adopted only once check_slot() found in it exactly that manifest's files. The file is
    removed on the way out, whatever happens.
    Raises UpdateFailed (OSError when the flash refuses a write).
    """
    try:
        target = state.other(st.active)
        root = state.slot_path(target)
        slots.clear_strays(root)
        slots.clear_parts()
        active = state.slot_path(st.active) + "/"
        olds = slots.list_path(st.active)
        todo = []
        size = 0
        for at, e in slots.entries(OFFER):
            if not _placed(e, root + "/" + e[_PATH], active, olds, buf):
                todo.append(at)
                size += e[_TRANSFER]
        print("ota: downloading %d bytes in %d files" % (size, len(todo)))
        while todo:
            _fetch(sess, todo[:_PACK_MAX], root, buf)
            todo = todo[_PACK_MAX:]
        # The transfer is over: its code goes before the check loads the manifest reader
        # (a `failed` report loads them again). The peak of an update was here (docs/board.md).
        import ota
        ota.forget("http")
        ota.forget("p256")
        check_slot(manifest, root, buf)
    finally:
        slots.remove(manifest)
        import ota
        ota.forget("jscan")  # check_slot's reader: a `failed` report loads http and p256 again
        ota.forget("trust")
    slots.adopt(target)
    return target


def check_slot(manifest, root, buf):
    """UpdateFailed unless the slot at `root` holds exactly the files of the manifest payload
    in the file `manifest`: each read back from flash with its size and SHA-256 (a file that
    shares its blob with one placed before is copied from it first), and nothing else.

    The manifest is walked one entry at a time (ota.jscan), not the offer list: a list that
    lost lines could only shorten what is checked.
    """
    from ota import jscan, trust
    keys = set()
    count = 0
    try:
        doc = jscan.open_doc(manifest, "manifest")
    except (OSError, trust.TrustError):
        raise UpdateFailed("the verified manifest is gone")
    try:
        files = None
        for key, a, _ in doc.top():
            if key == "files":
                files = a
        if files is None:
            raise UpdateFailed("manifest: no files")
        for a, b in doc.elements(files):
            m = doc.load(a, b)
            e = (m["path"], m["sha256"], m["size"], m["encoding"], m["blob"],
                 m["transfer_size"])
            m = None
            dest = root + "/" + e[_PATH]
            if slots.hash_file(dest, buf) != (e[_SHA], e[_SIZE]) and not _twin(e, dest, root, buf):
                raise UpdateFailed("verify failed: " + e[_PATH])
            keys.add(slots.path_key(e[_PATH]))
            count += 1
    except trust.TrustError as err:
        raise UpdateFailed("manifest: " + str(err))
    finally:
        doc.f.close()
    doc = None
    # Every listed file is there, so a count that matches leaves no room for another (two
    # paths can name one file on FAT: then the count falls short).
    if slots.count_files(root, keys) != count:
        raise UpdateFailed("the new slot does not hold the manifest's %d files" % count)


def _placed(e, dest, active, olds, buf):
    """True when dest now holds the file: already there, or copied from the active slot."""
    if slots.hash_file(dest, buf) == (e[_SHA], e[_SIZE]):
        return True  # an earlier attempt already put it here
    slots.makedirs(dest)
    src = slots.find_sha(olds, e[_SHA])
    if src is not None:
        try:
            if slots.copy_verified(active + src, dest, e[_SHA], e[_SIZE], buf):
                return True
        except OSError:
            pass  # the active copy is unreadable: download instead
    return False


def _twin(e, dest, root, buf):
    """Copy dest from another file of the new slot with the same content (a shared blob)."""
    for _, other in slots.entries(OFFER):
        if other[_SHA] == e[_SHA] and other[_PATH] != e[_PATH]:
            src = root + "/" + other[_PATH]
            if slots.hash_file(src, buf) == (e[_SHA], e[_SIZE]):
                return slots.copy_verified(src, dest, e[_SHA], e[_SIZE], buf)
    return False


def _part(e):
    return slots.PART_DIR + "/" + e[_BLOB]


def _fetch(sess, todo, root, buf):
    """Download the blobs of the entries at list offsets `todo` in one pack and place them."""
    have = 0  # bytes of the first blob already on flash: a pack resumes only its first blob
    first = None
    pending = []
    for at in todo:
        e = slots.entry_at(OFFER, at)
        n = slots.size(_part(e))
        if n == e[_TRANSFER] and slots.hash_file(_part(e), buf)[0] == e[_BLOB]:
            _unpack(e, root + "/" + e[_PATH], buf)  # downloaded before a reset cut in
        elif 0 < n < e[_TRANSFER] and first is None:
            first, have = at, n
        else:
            slots.remove(_part(e))
            pending.append(at)
    if first is not None:
        pending.insert(0, first)
    todo = []
    ids = []
    size = -have
    for at in pending:  # a blob two files share travels once; stage() copies the second
        e = slots.entry_at(OFFER, at)
        if e[_BLOB] not in ids:
            ids.append(e[_BLOB])
            todo.append(at)
            size += e[_TRANSFER]
    e = None
    pending = None
    if not todo:
        return
    extra = "Range: bytes=%d-\r\n" % have if have else ""
    name = slots.entry_at(OFFER, todo[0])[_PATH]
    try:
        # with the offer's download grant when it came with one (Session.request)
        resp = sess.request("GET", "/v1/device/pack?blobs=" + ",".join(ids), b"", extra,
                            size // _SLOWEST, sess.auth)
    except HttpError as e:
        raise UpdateFailed("blob %s: %s" % (name, e))
    ids = None
    try:
        if resp.status == 200 and have:
            have = 0  # the server ignored Range: the first blob starts over
            slots.remove(_part(slots.entry_at(OFFER, todo[0])))
        elif resp.status != 200 and not (resp.status == 206 and resp.range_start == have):
            raise UpdateFailed("blob %s: http %d" % (name, resp.status))
        total = -have
        for at in todo:
            total += slots.entry_at(OFFER, at)[_TRANSFER]
        if resp.length != total:
            raise UpdateFailed("blob %s: length %s, expected %d" % (name, resp.length, total))
        for at in todo:
            e = slots.entry_at(OFFER, at)
            name = e[_PATH]
            _receive(resp, e, have, buf)
            have = 0
            _unpack(e, root + "/" + e[_PATH], buf)
    except HttpError as err:
        raise UpdateFailed("blob %s: %s" % (name, err))
    finally:
        resp.close()


def _receive(resp, e, have, buf):
    """Append the rest of e's blob from the pack to its part file; check its SHA-256."""
    part = _part(e)
    h = hashlib.sha256()
    if have:
        slots.hash_into(part, buf, h)  # resume: the hash must cover what is there
    left = e[_TRANSFER] - have
    with open(part, "ab") as f:
        while left > 0:  # each fill() reads at least one byte or raises (deadline, end)
            n = resp.fill(buf[:min(len(buf), left)])
            h.update(buf[:n])
            f.write(buf[:n])
            left -= n
    if slots.hex_of(h) != e[_BLOB]:
        slots.remove(part)
        raise UpdateFailed("hash mismatch: " + e[_PATH])


def _unpack(e, dest, buf):
    """Move a complete, verified part file into the slot (inflating a deflate blob)."""
    part = _part(e)
    if e[_ENCODING] == "plain":
        slots.remove(dest)
        import os
        os.rename(part, dest)
    elif not slots.inflate_verified(part, dest, e[_SHA], e[_SIZE], buf):
        slots.remove(part)
        raise UpdateFailed("inflated file does not match: " + e[_PATH])
    else:
        slots.remove(part)
