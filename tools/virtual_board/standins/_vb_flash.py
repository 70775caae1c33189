# Virtual-board harness, MicroPython side: the flash VFS, fs-mutation counting, the power cut and
# the ROM partition (a ROMFS image mapped at /rom).
# Runs only on the unix port (it uses ffi and env vars); it never goes onto a real board.
# mypy: ignore-errors
import os
import sys

import ffi
import io
import vfs

# Exit codes the host harness reads; keep in step with tools/virtual_board/power.py.
EXIT_RESET = 86
EXIT_POWER_CUT = 87
EXIT_CRASH = 88
EXIT_WATCHDOG = 89
_EXIT_CODES = {
    "reset": EXIT_RESET,
    "power_cut": EXIT_POWER_CUT,
    "crash": EXIT_CRASH,
    "watchdog": EXIT_WATCHDOG,
    "exit": 0,
}
STANDINS = "/.standins"  # virtual prefix mapped to the stand-ins directory, never listed in "/"
_STANDINS_LEN = len(STANDINS)
_WRITE_MODES = "wax+"

_exit = ffi.open("libc.so.6").func("v", "_exit", "i")
flash = None  # the mounted FlashVfs
_report = None  # host file the harness reads after the boot (outside the flash)
unique_id = b"\x00\x01\x02\x03\x04\x05"
wifi_ok = True
reset_cause = 1


def _normalize(path):
    # Resolve "." and ".." the way a board does: ".." at the root stays at the root, so a path
    # can never leave the flash directory.
    parts = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part and part != ".":
            parts.append(part)
    return "/" + "/".join(parts)


class FlashVfs:
    """A user VFS over a host directory; counts mutations and cuts power before the Nth one."""

    def __init__(self, root, standins, cut_at):
        self._posix = vfs.VfsPosix()
        self._root = root.rstrip("/")
        self._standins = standins.rstrip("/")
        self._cwd = "/"
        self.ops = 0
        self._cut_at = cut_at  # 0: never

    def mutation(self):
        # Called BEFORE the operation: a cut at N leaves exactly the effects of operations 1..N-1.
        self.ops += 1
        if self.ops == self._cut_at:
            self.ops -= 1
            end_boot("power_cut")

    def _host(self, path):
        if path[:1] != "/":
            path = self._cwd + "/" + path
        if "/." in path or "//" in path:
            path = _normalize(path)
        if path[:_STANDINS_LEN] == STANDINS and path[_STANDINS_LEN:_STANDINS_LEN + 1] in ("", "/"):
            return self._standins + path[_STANDINS_LEN:]
        return self._root + path

    def __repr__(self):
        return "<VirtualFlash>"

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def open(self, path, mode):
        for c in mode:
            if c in _WRITE_MODES:
                self.mutation()
                return WriteFile(self._posix.open(self._host(path), mode), self)
        return self._posix.open(self._host(path), mode)

    def ilistdir(self, path):
        # Board filesystems give (name, type, inode, size); VfsPosix omits the size.
        host = self._host(path)
        stat = self._posix.stat
        for entry in self._posix.ilistdir(host):
            kind = entry[1]
            if kind == 0x4000:
                yield (entry[0], kind, 0, 0)
            else:
                st = stat(host + "/" + entry[0])
                yield (entry[0], st[0] & 0xF000, 0, st[6])

    def stat(self, path):
        return self._posix.stat(self._host(path))

    def statvfs(self, path):
        return self._posix.statvfs(self._root)

    def mkdir(self, path):
        self.mutation()
        self._posix.mkdir(self._host(path))

    def rmdir(self, path):
        self.mutation()
        self._posix.rmdir(self._host(path))

    def remove(self, path):
        self.mutation()
        self._posix.remove(self._host(path))

    def rename(self, old, new):
        self.mutation()
        self._posix.rename(self._host(old), self._host(new))

    def chdir(self, path):
        if path[:1] != "/":
            path = self._cwd + "/" + path
        path = _normalize(path)
        if not self._posix.stat(self._host(path))[0] & 0x4000:
            raise OSError(20)  # ENOTDIR
        self._cwd = path

    def getcwd(self):
        return self._cwd


class WriteFile(io.IOBase):
    """A file opened for writing: every write() is one counted mutation; reads pass through."""

    def __init__(self, f, fs):
        self._f = f
        self._fs = fs

    def write(self, buf):
        self._fs.mutation()
        return self._f.write(buf)

    def readinto(self, buf, *args):  # looked up by native stream code, so not via __getattr__
        return self._f.readinto(buf, *args)

    def close(self):
        return self._f.close()

    def __getattr__(self, name):  # read, readline, seek, tell, flush: straight to the file
        return getattr(self._f, name)

    def ioctl(self, request, arg):
        if request == 4:  # MP_STREAM_CLOSE, from native code such as `with` on a raw stream
            self._f.close()
        return 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __iter__(self):
        return iter(self._f)


def _env_int(name, default):
    value = os.getenv(name)
    return int(value) if value else default


def start():
    """Mount the flash directory as "/" and make sys.path look like a board's."""
    global flash, _report, unique_id, wifi_ok, reset_cause
    import binascii

    unique_id = binascii.unhexlify(os.getenv("VB_UNIQUE_ID") or "000102030405")
    wifi_ok = os.getenv("VB_WIFI_OK") != "0"
    reset_cause = _env_int("VB_RESET_CAUSE", 1)
    report_path = os.getenv("VB_REPORT")
    if report_path:
        _report = open(report_path, "w")  # opened before the host root goes away
    if flash is None:
        flash = FlashVfs(os.getenv("VB_FLASH"), os.getenv("VB_STANDINS"),
                         _env_int("VB_CUT_AT", 0))
        vfs.umount("/")
        vfs.mount(flash, "/")
    else:  # block flash, set by standins/_vb_blkboot.py: the port's own filesystem on it
        flash.mount(0, 0)
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib", STANDINS]
    rom = os.getenv("VB_ROM")
    if rom:
        _mount_rom(rom)
    # The stand-ins for firmware modules are loaded now, as the harness's own heap
    # (HARNESS_HEAP_BYTES): on a board these modules live in the firmware and cost its heap
    # nothing, so board code must not pay for their bytecode when it first imports one.
    import machine  # noqa: F401
    import network  # noqa: F401
    import ntptime  # noqa: F401


# Linux values of the libc constants the ROM mapping needs (const: no globals at run time).
_O_RDONLY = const(0)
_SEEK_END = const(2)
_PROT_READ = const(1)
_MAP_PRIVATE = const(2)
_MAP_FAILED = const(-1)
_ENODEV = const(19)  # what VfsRom raises for a buffer that is not a ROMFS


def _mount_rom(path):
    # The ROM partition as the ESP32 and RP2 ports' _boot.py mount it from vfs.rom_ioctl: at /rom
    # and first on sys.path. Like their try/except, a bad image leaves the board booting without
    # it; unlike them (they pass silently), say so in one line.
    try:
        vfs.mount(vfs.VfsRom(memoryview(_map_readonly(path))), "/rom")
    except Exception as err:  # as _boot.py's bare except: whatever went wrong, boot on
        print("vboard: no /rom: ROM image %s not mounted (%s)" % (path, err))
        return
    sys.path.insert(0, "/rom")


def _map_readonly(path):
    # The image at a fixed address outside the GC heap, read-only, as memory-mapped flash is on a
    # board: VfsRom then gives the importer .mpy bytecode in place instead of a copy in the heap.
    import uctypes

    libc = ffi.open("libc.so.6")
    errno_at = libc.func("p", "__errno_location", "")
    fd = libc.func("i", "open", "si")(path, _O_RDONLY)
    if fd < 0:
        raise OSError(_errno(errno_at))
    try:
        size = libc.func("l", "lseek", "ili")(fd, 0, _SEEK_END)
        if size <= 0:
            raise OSError(_errno(errno_at) if size < 0 else _ENODEV)  # empty: no ROMFS in it
        addr = libc.func("p", "mmap", "pliiil")(None, size, _PROT_READ, _MAP_PRIVATE, fd, 0)
        if addr == _MAP_FAILED:
            raise OSError(_errno(errno_at))
    finally:
        libc.func("i", "close", "i")(fd)  # the mapping outlives its descriptor
    # Never unmapped: imported code points into it for the life of the interpreter.
    return uctypes.bytearray_at(addr, size)


def _errno(errno_at):
    import uctypes

    return int.from_bytes(uctypes.bytes_at(errno_at(), 4), sys.byteorder)


def end_boot(ended, traceback=None):
    """End this boot at once (no finally, no atexit: a reset or power loss); tell the host."""
    if _report is not None:
        _report.write("%s %d\n" % (ended, flash.ops if flash else 0))
        if traceback:
            _report.write(traceback)
        _report.close()
    _exit(_EXIT_CODES[ended])
