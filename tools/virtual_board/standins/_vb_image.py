# Virtual-board harness, MicroPython side: the host's access to a board's flash image, through
# MicroPython's own filesystem code (vfs.VfsLfs2 or vfs.VfsFat on the flash block device), the
# way a tool such as mpremote reaches a board's files. Nothing here is counted or cut.
#   VB_IMAGE_JOB=format: a new filesystem on the image (as a port does at first boot)
#   VB_IMAGE_JOB=push:   apply the plan file VB_IMAGE_PLAN, lines "<op> <path>" (op W: copy the
#                        host file in, M: make the directory, R: remove the file, X: remove the
#                        directory), paths relative to the host directory VB_FLASH
#   VB_IMAGE_JOB=pull:   make the host directory VB_FLASH hold exactly the image's files
# mypy: ignore-errors
import os

import _vb_blockdev
import vfs

_DIR = const(0x4000)
_CHUNK = const(4096)
# Longer paths than any board file's (a slot's 128-byte paths under /app/<slot>) are garbage
# directories pointing at their own ancestors: the mirror stops there.
_DEEPEST = const(256)


def _env_int(name, default):
    value = os.getenv(name)
    return int(value) if value else default


def _copy(src, dst, buf):
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while True:
            n = fin.readinto(buf)
            if not n:
                break
            fout.write(buf[:n] if n < len(buf) else buf)


def _same(a, b, buf, other):
    try:
        if os.stat(a)[6] != os.stat(b)[6]:
            return False
    except OSError:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            n = fa.readinto(buf)
            m = fb.readinto(other)
            if n != m or buf[:n] != other[:m]:
                return False
            if not n:
                return True


def _push(plan, buf):
    with open(plan) as lines:
        for line in lines:
            op, path = line.rstrip("\n").split(" ", 1)
            if op == "W":
                _copy("/host/" + path, "/img/" + path, buf)
            elif op == "M":
                os.mkdir("/img/" + path)
            elif op == "R":
                os.remove("/img/" + path)
            elif op == "X":
                os.rmdir("/img/" + path)
            else:
                raise ValueError("bad plan line %r" % line)


def _kinds(root):
    # Listed by bytes: a cut in a FAT directory update can leave names that are not UTF-8 (an
    # erased directory sector reads as 0xff names); the board cannot open those either, so the
    # mirror leaves them out.
    kinds = {}
    for entry in os.ilistdir(root.encode()):
        try:
            kinds[entry[0].decode()] = entry[1]
        except UnicodeError:
            print("vboard: %s: an entry with a name that is not UTF-8 left out" % root)
    return kinds


def _remove_tree(path):
    for name, kind in _kinds(path).items():
        if kind == _DIR:
            _remove_tree(path + "/" + name)
        else:
            os.remove(path + "/" + name)
    os.rmdir(path)


def _pull(rel, buf, other):
    try:
        if len(rel) > _DEEPEST:
            raise OSError("deeper than any board path")
        image = _kinds("/img" + rel)
    except OSError as err:  # a directory whose sector a cut left as garbage: the board
        # cannot list it either (ota/recovery.py sets such a directory aside, its garbage kept)
        print("vboard: /img%s does not list (%s): left out" % (rel, err))
        image = {}
    host = _kinds("/host" + rel)
    for name, kind in host.items():
        if image.get(name) != kind:
            if kind == _DIR:
                _remove_tree("/host" + rel + "/" + name)
            else:
                os.remove("/host" + rel + "/" + name)
            host.pop(name)
    for name, kind in image.items():
        src = "/img" + rel + "/" + name
        dst = "/host" + rel + "/" + name
        if kind == _DIR:
            try:
                if name not in host:
                    os.mkdir(dst)
            except OSError as err:  # a garbage name the host refuses
                print("vboard: %s cannot be mirrored (%s): left out" % (src, err))
                continue
            _pull(rel + "/" + name, buf, other)
        else:
            try:
                if not _same(src, dst, buf, other):
                    _copy(src, dst, buf)
            except OSError as err:  # a file a cut left unreadable: the board cannot read it
                print("vboard: %s unreadable on the flash (%s): left out" % (src, err))
                try:
                    os.remove(dst)
                except OSError:
                    pass


def main():
    kind = os.getenv("VB_FS") or "lfs2"
    prog = _env_int("VB_PROG_SIZE", 32)
    bdev = _vb_blockdev.FlashBlockDevice(
        open(os.getenv("VB_IMAGE"), "r+b"), _env_int("VB_BLOCK_SIZE", 4096),
        _env_int("VB_BLOCK_COUNT", 0), 0, 0, "ff", None)
    job = os.getenv("VB_IMAGE_JOB")
    if job == "format":
        _vb_blockdev.mkfs(kind, bdev, prog)
        return
    vfs.mount(vfs.VfsPosix(os.getenv("VB_FLASH")), "/host")
    try:
        vfs.mount(_vb_blockdev.filesystem(kind, bdev, prog), "/img")
    except OSError as err:
        if job != "pull":
            raise
        # Flash that does not mount: the board formats it at its next boot (see _vb_flash);
        # until then the mirror holds no file.
        print("vboard: flash image does not mount (%s): mirror emptied" % err)
        for name in _kinds("/host"):
            _remove_tree("/host/" + name) if os.stat("/host/" + name)[0] & _DIR else \
                os.remove("/host/" + name)
        return
    buf = bytearray(_CHUNK)
    if job == "push":
        _push(os.getenv("VB_IMAGE_PLAN"), buf)
    elif job == "pull":
        _pull("", buf, bytearray(_CHUNK))
    else:
        raise ValueError("VB_IMAGE_JOB %r is not format, push or pull" % job)
    vfs.umount("/img")


main()
