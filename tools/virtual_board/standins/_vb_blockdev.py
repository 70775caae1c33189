# Virtual-board harness, MicroPython side: a flash block device backed by a host image file, as
# the ports' flash devices are (ports/esp32/esp32_partition.c, ports/rp2/rp2_flash.c): erase
# blocks of 4096 bytes, the block protocol vfs.VfsLfs2 and vfs.VfsFat mount (readblocks,
# writeblocks with and without an offset, ioctl 1-6, extmod/vfs_blockdev.c). Every block program
# and every block erase is one counted operation; power is cut just BEFORE the Nth, or, torn,
# in the middle of it. Runs only on the unix port; it never goes onto a real board.
# mypy: ignore-errors

_IOCTL_INIT = const(1)
_IOCTL_DEINIT = const(2)
_IOCTL_SYNC = const(3)
_IOCTL_BLOCK_COUNT = const(4)
_IOCTL_BLOCK_SIZE = const(5)
_IOCTL_BLOCK_ERASE = const(6)


class FlashBlockDevice:
    """`count` erase blocks of `size` bytes in the open image file `f`.

    writeblocks(n, buf, off): a program of erased flash (littlefs erases first, with ioctl 6).
    writeblocks(n, buf): each block of buf erased then programmed, as the ports' devices do for
    FAT (two operations per block). `cut_at` N (0: never) ends the boot at operation N through
    `power_cut`; with `torn` > 0 that operation is left half done: a program writes its first
    `torn` bytes and the rest reads as erased flash (`torn_rest` "ff") or as before ("old"); an
    erase erases its first `torn` bytes.
    """

    def __init__(self, f, size, count, cut_at, torn, torn_rest, power_cut, kind="lfs2",
                 prog_size=32):
        self._kind = kind
        self._prog = prog_size
        self._f = f
        self._size = size
        self._count = count
        self._cut_at = cut_at
        self._torn = torn
        self._torn_rest = torn_rest
        self._power_cut = power_cut
        # Erased flash is written from this one run of 0xff: a bytes object of a whole block per
        # erase would be the harness's 4 KB in the board's heap at every erase (a port's erase
        # allocates nothing), and it would fail where the board's own code would not.
        self._ff = b"\xff" * 256
        self.ops = 0

    def _operation(self, at, data, erase):
        # Called BEFORE the operation: a clean cut at N leaves operations 1..N-1 done.
        self.ops += 1
        if self.ops == self._cut_at:
            self.ops -= 1
            if self._torn:
                self._tear(at, data, erase)
            self._power_cut()
        self._f.seek(at)
        if erase:
            self._fill(self._size)
        else:
            self._f.write(data)

    def _fill(self, n):
        ff = self._ff
        while n >= len(ff):
            self._f.write(ff)
            n -= len(ff)
        if n:
            self._f.write(memoryview(ff)[:n])

    def _tear(self, at, data, erase):
        torn = min(self._torn, self._size if erase else len(data))
        self._f.seek(at)
        if erase:
            self._fill(torn)
        else:
            self._f.write(memoryview(data)[:torn])
            if self._torn_rest == "ff":
                self._fill(len(data) - torn)
        self._f.flush()

    def _erase(self, block):
        self._operation(block * self._size, None, True)

    def readblocks(self, block, buf, off=0):
        self._f.seek(block * self._size + off)
        self._f.readinto(buf)

    def writeblocks(self, block, buf, off=None):
        if off is not None:
            self._operation(block * self._size + off, buf, False)
            return
        view = memoryview(buf)
        for i in range(len(buf) // self._size):
            self._erase(block + i)
            self._operation((block + i) * self._size, view[i * self._size:(i + 1) * self._size],
                            False)

    def mount(self, readonly, mkfs_):
        """Mount "/" from the filesystem on this device, as the ports' _boot.py do
        (ports/esp32/modules/_boot.py, ports/rp2/modules/_boot.py). (Named as a user VFS's
        mount so that the harness calls it with no name of its own: docs/virtual-board.md.)"""
        import vfs

        vfs.umount("/")
        try:
            vfs.mount(filesystem(self._kind, self, self._prog), "/")
        except OSError as err:
            # What a port does with flash it cannot mount (ports/esp32/modules/inisetup.py):
            # format it and boot on an empty filesystem. The host sees a board with no app.
            print("vboard: flash did not mount (%s): formatted, as the port's _boot.py does"
                  % err)
            mkfs(self._kind, self, self._prog)
            vfs.mount(filesystem(self._kind, self, self._prog), "/")

    def ioctl(self, op, arg):
        if op == _IOCTL_BLOCK_COUNT:
            return self._count
        if op == _IOCTL_BLOCK_SIZE:
            return self._size
        if op == _IOCTL_BLOCK_ERASE:
            self._erase(arg)
            return 0
        if op == _IOCTL_SYNC:
            self._f.flush()
            return 0
        if op in (_IOCTL_INIT, _IOCTL_DEINIT):
            return 0
        return None


def filesystem(kind, bdev, prog_size):
    """The VFS a port mounts on `bdev`: littlefs v2 with the port's prog size, or FAT."""
    import vfs

    if kind == "fat":
        return vfs.VfsFat(bdev)
    return vfs.VfsLfs2(bdev, readsize=prog_size, progsize=prog_size, lookahead=32)


def mkfs(kind, bdev, prog_size):
    import vfs

    if kind == "fat":
        vfs.VfsFat.mkfs(bdev)
    else:
        vfs.VfsLfs2.mkfs(bdev, readsize=prog_size, progsize=prog_size, lookahead=32)

