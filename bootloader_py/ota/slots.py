# The app slots' files, and the file lists that say what a slot holds or should hold.
#
# A file list is a text file, one line per app file:
#     <sha256> <size> <encoding> <blob> <transfer_size> <path>\n
# (the path last: it is the only field that may hold a space; no path holds a control
# character, trust.check_path). The client writes the verified manifest's entries as one
# (slots.OFFER) and, once the inactive slot holds them, renames it to that slot's list
# (/ota/slot_<x>.lst), which the next update reads to find files it can copy instead of
# download. Lists are read a line at a time: no list is ever held in the heap. A line holds
# any entry the verifier accepts (a path of up to trust.MAX_PATH_LENGTH bytes, sizes of up to
# 20 digits); a longer entry is refused when the list is written, and a line that does not
# read whole (no newline within _LINE bytes, or not UTF-8) fails the update: a list is never
# taken for shorter than it is. The staged slot is checked against the manifest itself
# anyway (update.check_slot), not against a list.
#
# Nothing under the active slot is ever written here.
import binascii
import hashlib
import os

from micropython import const

from ota.fail import UpdateFailed

PART_DIR = "/ota/part"
OFFER = "/ota/offer.lst"
# The longest line: 64 (sha256) + 20 (size) + 7 (encoding) + 64 (blob) + 20 (transfer size)
# + 128 (path: trust.MAX_PATH_LENGTH, bytes of UTF-8) + 5 spaces + newline = 309.
_LINE = const(309)
_DIR = const(0x4000)
_MAX_PATH = const(128)  # trust.MAX_PATH_LENGTH: no slot path is longer
# ota/recovery.py is loaded only when a directory is damaged, by __import__ of a string of over
# 10 characters: MicroPython interns shorter strings, and names (an `import`'s too), as qstrs when
# this module loads, and the update ends a qstr below the pool's next step (docs/board.md,
# Memory budget).
_EIO = const(5)  # a damaged directory: what listdir raises, and the walks' way to recovery

# A file entry as read from a list: a tuple (path, sha256, size, encoding, blob, transfer_size).
# Private consts, repeated in update.py (tests/test_board_files.py checks they agree): a public
# name would be a qstr for good, and an update sits a few qstrs below the pool's next doubling
# (docs/board.md, Memory budget).
_PATH = const(0)
_SHA = const(1)
_SIZE = const(2)
_ENCODING = const(3)
_BLOB = const(4)
_TRANSFER = const(5)


def list_path(slot):
    """Where the file list of a slot is kept (outside the slot, so the slot holds only the app)."""
    return "/ota/slot_" + slot + ".lst"


def line(e):
    """The list line of a manifest file entry (a dict); UpdateFailed when it is over _LINE
    bytes (sizes of more than 20 digits: no board holds such a file)."""
    text = "%s %d %s %s %d %s\n" % (e["sha256"], e["size"], e["encoding"], e["blob"],
                                    e["transfer_size"], e["path"])
    if len(text.encode()) > _LINE:
        raise UpdateFailed("file list: entry '" + e["path"] + "' is over "
                           + str(_LINE) + " bytes")
    return text


def entries(path):
    """(offset, entry tuple) for each line of the list at `path`; nothing when it is missing.

    UpdateFailed when a line does not read whole (cut short, over _LINE bytes, not UTF-8) or
    does not parse: the caller must not act on part of a list.
    """
    try:
        f = open(path, "rb")
    except OSError:
        return
    try:
        while True:
            at = f.tell()
            raw = f.readline(_LINE + 1)
            if not raw:
                return
            yield at, _parse(raw, path, at)
    finally:
        f.close()


def entry_at(path, at):
    """The entry on the line starting at byte `at` of the list at `path`."""
    with open(path, "rb") as f:
        f.seek(at)
        return _parse(f.readline(_LINE + 1), path, at)


def _parse(raw, path, at):
    if raw[-1:] != b"\n" or len(raw) > _LINE:
        raise UpdateFailed("file list " + path + ": line at byte " + str(at)
                           + " is cut short or over " + str(_LINE) + " bytes")
    try:
        sha, size, encoding, blob, transfer, name = raw[:-1].decode().split(" ", 5)
        return name, sha, int(size), encoding, blob, int(transfer)
    except (ValueError, UnicodeError):
        raise UpdateFailed("file list " + path + ": bad line at byte " + str(at))


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
        if e[_PATH] == path:
            return True
    return False


def _listed_dir(rel):
    prefix = rel + "/"
    for _, e in entries(OFFER):
        if e[_PATH].startswith(prefix):
            return True
    return False


def clear_strays(root):
    """Remove every file and directory under `root` that the offer list does not name.

    A walk without recursion (a path of 128 bytes can be 64 directories deep): the directories
    in the order met, parents before children, then the unlisted ones removed deepest first.
    A directory that does not list whole and sound (listdir), or whose stray will not go,
    is damaged: the whole slot is set aside, none of its entries touched, and a fresh empty
    one made (ota/recovery.py; UpdateFailed when no more can be set aside).
    """
    makedirs(root + "/")
    cut = len(root) + 1
    dirs = [root]
    i = 0
    try:
        while i < len(dirs):
            top = dirs[i]
            i += 1
            for entry in listdir(top):  # listed first: entries are removed while walking
                path = top + "/" + entry[0]
                if entry[1] == _DIR:
                    if len(path) - cut > _MAX_PATH:  # deeper than any path: garbage in a loop
                        raise OSError(_EIO)
                    dirs.append(path)
                elif not listed(path[cut:]):
                    os.remove(path)
        while len(dirs) > 1:
            top = dirs.pop()
            if not _listed_dir(top[cut:]):
                os.rmdir(top)
    except OSError:  # the flash's errors too: the slot is rebuilt from nothing
        __import__("ota.recovery", None, None, ("replace",)).replace(root)


def listdir(top):
    """The entries of the directory `top`, listed whole; OSError (EIO) when it is damaged.

    A FAT directory sector that a power cut left erased or torn lists names that are not
    UTF-8 (MicroPython raises UnicodeError building them), names with control characters, or
    sizes larger than the filesystem. Such entries are never acted on: removing one would free
    whatever clusters it points to (docs/board.md, Flash and power cuts).
    """
    try:
        found = list(os.ilistdir(top))
        limit = os.statvfs(top)
        limit = limit[0] * limit[2]
    except UnicodeError:
        raise OSError(_EIO)
    for entry in found:
        raw = entry[0].encode()
        if not raw or min(raw) < 32 or 127 in raw or (len(entry) > 3 and entry[3] > limit):
            raise OSError(_EIO)
    return found


def path_key(path):
    """A 30-bit key of a path (a small int on every port: a set of them costs no object each)."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "big") >> 2


def count_files(root, keys):
    """The number of files under `root`, each of whose paths (relative to root) has its
    path_key in `keys`; UpdateFailed at the first other file, at an empty directory, or at a
    damaged one (listdir: the next update's clear_strays sets the slot aside)."""
    cut = len(root) + 1
    n = 0
    todo = [root]
    while todo:
        top = todo.pop()
        empty = True
        try:
            found = listdir(top)
        except OSError:
            raise UpdateFailed("damaged directory: " + top)
        for entry in found:
            empty = False
            path = top + "/" + entry[0]
            if entry[1] == _DIR:
                todo.append(path)
            elif path_key(path[cut:]) in keys:
                n += 1
            else:
                raise UpdateFailed("not in the manifest: " + path[cut:])
        if empty and top != root:
            raise UpdateFailed("not in the manifest: directory " + top[cut:])
    return n


def clear_parts():
    """Drop partial downloads that no file of the offer list needs. A damaged /ota/part (a
    listing that is not whole and sound, an entry that is not a part file or will not go) is
    set aside and made again empty, as a damaged slot is (clear_strays)."""
    makedirs(PART_DIR + "/")
    try:
        for entry in listdir(PART_DIR):
            if entry[1] == _DIR or len(entry[0]) != 64:  # a part file is named by its blob
                raise OSError(_EIO)
            if not _needs_blob(entry[0]):
                os.remove(PART_DIR + "/" + entry[0])
    except OSError:
        __import__("ota.recovery", None, None, ("replace",)).replace(PART_DIR)


def _needs_blob(blob):
    for _, e in entries(OFFER):
        if e[_BLOB] == blob:
            return True
    return False


def find_sha(path, sha):
    """The path, in the list at `path`, of a file with this sha256, or None.

    A list that does not read whole is removed before UpdateFailed propagates: the update
    fails, and the next attempt downloads what it would have copied.
    """
    try:
        for _, e in entries(path):
            if e[_SHA] == sha:
                return e[_PATH]
    except UpdateFailed:
        remove(path)
        raise
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
