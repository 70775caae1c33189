# Building the inactive slot for a verified manifest, file by file.
#
# Nothing under the active slot is ever written here. Each file of the new slot comes from
# (1) the target slot itself when a previous attempt already put it there, (2) a copy of the
# active slot's file with the same SHA-256, or (3) a download. Downloads land in
# /ota/part/<blob> first (so an interrupted one resumes with Range), stream through the one
# buffer into SHA-256 and flash, and are cut off at the declared transfer size.
import binascii
import hashlib
import json
import os

from micropython import const

from ota.fail import UpdateFailed

PART_DIR = "/ota/part"
_MAX_PATH = const(128)
_DIR = const(0x4000)


def meta_path(slot):
    """Where the file list of a slot is kept (outside the slot, so the slot holds only the app)."""
    return "/ota/slot_" + slot + ".json"


def safe_path(path):
    """True for a relative '/'-separated path that stays inside the slot."""
    if not isinstance(path, str) or not path or len(path) > _MAX_PATH:
        return False
    if path[0] == "/" or "\\" in path or ":" in path:
        return False
    for seg in path.split("/"):
        if seg == "" or seg == "." or seg == "..":
            return False
    return True


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
    """Remove a file if it is there."""
    try:
        os.remove(path)
    except OSError:
        pass


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


def hash_file(path, buf):
    """(hex sha256, size) of a file streamed through `buf`, or (None, -1) when it is missing."""
    h = hashlib.sha256()
    size = hash_into(path, buf, h)
    if size < 0:
        return None, -1
    return binascii.hexlify(h.digest()).decode(), size


def _walk(top, out):
    for entry in os.ilistdir(top):
        path = top + "/" + entry[0]
        if entry[1] == _DIR:
            _walk(path, out)
            out.append((path, True))
        else:
            out.append((path, False))


def clear_strays(root, wanted):
    """Remove every file and directory under `root` that the new file set does not need."""
    makedirs(root + "/")
    dirs = set()
    for path in wanted:
        at = path.rfind("/")
        while at > 0:
            dirs.add(path[:at])
            at = path.rfind("/", 0, at)
    found = []
    _walk(root, found)
    cut = len(root) + 1
    for path, is_dir in found:  # children come before their directory
        rel = path[cut:]
        if is_dir and rel not in dirs:
            os.rmdir(path)
        elif not is_dir and rel not in wanted:
            os.remove(path)


def clear_parts(keep):
    """Drop partial downloads that no file of the current manifest needs."""
    makedirs(PART_DIR + "/")
    for entry in os.ilistdir(PART_DIR):
        if entry[0] not in keep:
            os.remove(PART_DIR + "/" + entry[0])


def active_files(slot, wanted):
    """{sha256: path} of the files the given (active) slot holds, per its recorded file list,
    for the hashes in `wanted` ({sha256: sha256}) only.

    The keys are wanted's own strings, so the map costs no second copy of the hashes.
    """
    try:
        with open(meta_path(slot)) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError):
        return {}
    out = {}
    for path, sha in files:
        key = wanted.get(sha)
        if key is not None:
            out[key] = path
    return out


def write_meta(slot, files):
    """Record the slot's [(path, sha256), ...] (one write)."""
    with open(meta_path(slot), "w") as f:
        f.write(json.dumps({"files": files}))


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
    return n_total == size and binascii.hexlify(h.digest()).decode() == sha


def inflate_verified(part, dest, sha, size, buf):
    """Inflate a zlib part file into dest through buf; True when the result is exactly right."""
    import deflate
    h = hashlib.sha256()
    n_total = 0
    with open(part, "rb") as fi:
        z = deflate.DeflateIO(fi, deflate.ZLIB)
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
    return n_total == size and binascii.hexlify(h.digest()).decode() == sha
