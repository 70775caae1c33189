# The app slots' files, and the file lists that say what a slot holds or should hold.
#
# A file list is a text file, one line per app file:
#     <sha256> <size> <encoding> <blob> <transfer_size> <path>\n
# (the path last: it is the only field that may hold a space; no path holds a control
# character, trust.check_path). The client writes the verified manifest's entries as one
# (slots.OFFER) and, once the inactive slot holds them, renames it to that slot's list
# (/ota/slot_<x>.lst), which the next update reads to find files it can copy instead of
# download. Lists are read a line at a time: no list is ever held in the heap.
#
# Nothing under the active slot is ever written here.
import binascii
import hashlib
import os

from micropython import const

from ota.fail import UpdateFailed

PART_DIR = "/ota/part"
OFFER = "/ota/offer.lst"
_LINE = const(256)
_DIR = const(0x4000)

# A file entry as read from a list: a tuple (path, sha256, size, encoding, blob, transfer_size).
PATH = const(0)
SHA = const(1)
SIZE = const(2)
ENCODING = const(3)
BLOB = const(4)
TRANSFER = const(5)


def list_path(slot):
    """Where the file list of a slot is kept (outside the slot, so the slot holds only the app)."""
    return "/ota/slot_" + slot + ".lst"


def line(e):
    """The list line of a manifest file entry (a dict)."""
    return "%s %d %s %s %d %s\n" % (e["sha256"], e["size"], e["encoding"], e["blob"],
                                    e["transfer_size"], e["path"])


def entries(path):
    """(offset, entry tuple) for each line of the list at `path`; nothing when it is missing.

    A line cut short by a power cut (no newline) ends the list.
    """
    try:
        f = open(path)
    except OSError:
        return
    try:
        while True:
            at = f.tell()
            text = f.readline(_LINE)
            if text[-1:] != "\n":
                return
            yield at, _parse(text)
    finally:
        f.close()


def entry_at(path, at):
    """The entry on the line starting at byte `at` of the list at `path`."""
    with open(path) as f:
        f.seek(at)
        return _parse(f.readline(_LINE))


def _parse(text):
    try:
        sha, size, encoding, blob, transfer, path = text[:-1].split(" ", 5)
        return path, sha, int(size), encoding, blob, int(transfer)
    except ValueError:
        raise UpdateFailed("bad file list line")


def exists(path):
    """True when the path exists (file or directory)."""
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def size(path):
    """Size in bytes, -1 when missing."""
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def remove(path):
    """Remove a file if it is there. A missing one is not even attempted: the virtual board
    counts every remove as a flash operation, and power-cut tests enumerate those."""
    if exists(path):
        os.remove(path)


def makedirs(path):
    """Create the missing parent directories of `path` (only those: mkdir is a flash write)."""
    at = 0
    while True:
        at = path.find("/", at + 1)
        if at < 0:
            return
        if not exists(path[:at]):
            os.mkdir(path[:at])


def hash_into(path, buf, h):
    """Feed a file through `buf` into the hash `h`; returns its size, -1 when it is missing."""
    size = 0
    try:
        with open(path, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(buf[:n])
                size += n
    except OSError:
        return -1
    return size


def hex_of(h):
    return binascii.hexlify(h.digest()).decode()


def hash_file(path, buf):
    """(hex sha256, size) of a file streamed through `buf`, or (None, -1) when it is missing."""
    h = hashlib.sha256()
    size = hash_into(path, buf, h)
    if size < 0:
        return None, -1
    return hex_of(h), size


def listed(path):
    """True when the offer list names `path` (a scan: lists are never held in the heap)."""
    for _, e in entries(OFFER):
        if e[PATH] == path:
            return True
    return False


def _listed_dir(rel):
    prefix = rel + "/"
    for _, e in entries(OFFER):
        if e[PATH].startswith(prefix):
            return True
    return False


def clear_strays(root):
    """Remove every file and directory under `root` that the offer list does not name."""
    makedirs(root + "/")
    _clear(root, len(root) + 1)


def _clear(top, cut):
    for entry in list(os.ilistdir(top)):  # listed first: entries are removed while walking
        path = top + "/" + entry[0]
        if entry[1] == _DIR:
            _clear(path, cut)
            if not _listed_dir(path[cut:]):
                os.rmdir(path)
        elif not listed(path[cut:]):
            os.remove(path)


def clear_parts():
    """Drop partial downloads that no file of the offer list needs."""
    makedirs(PART_DIR + "/")
    for entry in list(os.ilistdir(PART_DIR)):
        if not _needs_blob(entry[0]):
            os.remove(PART_DIR + "/" + entry[0])


def _needs_blob(blob):
    for _, e in entries(OFFER):
        if e[BLOB] == blob:
            return True
    return False


def find_sha(path, sha):
    """The path, in the list at `path`, of a file with this sha256, or None."""
    for _, e in entries(path):
        if e[SHA] == sha:
            return e[PATH]
    return None


def adopt(slot):
    """The offer list becomes the list of `slot`, which now holds its files."""
    dest = list_path(slot)
    remove(dest)  # FAT cannot rename over a file; a missing list only costs copies later
    os.rename(OFFER, dest)


def copy_verified(src, dest, sha, size, buf):
    """Copy src to dest through buf; True when the copy has the expected hash and size."""
    h = hashlib.sha256()
    n_total = 0
    with open(src, "rb") as fi:
        with open(dest, "wb") as fo:
            while True:
                n = fi.readinto(buf)
                if not n:
                    break
                h.update(buf[:n])
                fo.write(buf[:n])
                n_total += n
    return n_total == size and hex_of(h) == sha


def inflate_verified(part, dest, sha, size, buf):
    """Inflate a zlib part file into dest through buf; True when the result is exactly right."""
    import deflate
    h = hashlib.sha256()
    n_total = 0
    with open(part, "rb") as fi:
        # wbits 10: the 1 KB window every mpota deflate blob is made with (docs/manifest.md)
        z = deflate.DeflateIO(fi, deflate.ZLIB, 10)
        with open(dest, "wb") as fo:
            while n_total <= size:
                try:
                    n = z.readinto(buf)
                except (OSError, ValueError) as e:
                    raise UpdateFailed("bad deflate stream: " + str(e))
                if not n:
                    break
                h.update(buf[:n])
                fo.write(buf[:n])
                n_total += n
    return n_total == size and hex_of(h) == sha
