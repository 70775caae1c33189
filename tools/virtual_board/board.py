"""A virtual board: the MicroPython unix port booting from its flash.

Each boot is a new MicroPython process running standins/_vb_boot.py, which mounts the flash as
"/" (and the ROM partition, a ROMFS image, at /rom when the board has one) and runs /boot.py
then /main.py, as a board's firmware does. The flash is a littlefs or FAT filesystem on a flash
block device in an image file, mirrored to a host directory (tools/virtual_board/flash.py), or
the host directory itself ("dir": a user VFS that counts file operations).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import select
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tools.micropython import find_micropython, word_bits
from tools.station.image import PartitionGeometry
from tools.virtual_board import power
from tools.virtual_board.compiled import compiled_standins
from tools.virtual_board.flash import (
    ESP32_VFS,
    FLASH_KINDS,
    BlockFlash,
    FlashKind,
    Torn,
    default_flash_kind,
)
from tools.virtual_board.power import Ended

if TYPE_CHECKING:
    from tools.virtual_board.repl import ReplServer

_DEFAULT_UNIQUE_ID = b"\x00\x01\x02\x03\x04\x05"
# Heap the harness itself takes, added on top of the requested heapsize so board code gets about
# what it asked for, as on a real board: the flash VFS and launcher and the stand-ins for firmware
# modules, machine, network and ntptime (loaded before boot.py: on a board they are firmware and
# take no heap). By word size, since every object is smaller on a 32-bit build: measured on 1.25
# as gc.mem_alloc() at the start of an empty board's main.py, 16.5 KB on x86-64 (~10 KB of it
# the VFS and launcher) and 10.7 KB on i386, rounded up.
HARNESS_HEAP_BYTES = {64: 17 * 1024, 32: 11 * 1024}
# On block flash the harness also holds the block device (a Python object and its modules here,
# with their qstrs; a few bytes of C on a board) and the image file: measured on 1.25 as the
# growth of gc.mem_alloc() at the start of main.py over the directory flash, less the
# filesystem's own object and caches (VfsLfs2: 832 / 624 bytes, VfsFat: 3392 / 3552 on x86-64 /
# i386), which stay the board's: a port mounts its filesystem in the GC heap too. Rounded up.
BLOCK_FLASH_HARNESS_EXTRA = {(64, "lfs2"): 6 * 1024, (64, "fat"): 7 * 1024,
                             (32, "lfs2"): 4 * 1024, (32, "fat"): 5 * 1024}
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}
ROM_IMAGE_SUFFIX = ".romfs"
_READ_CHUNK = 65536

OutputSink = Callable[[str], None]


@dataclass(frozen=True)
class BootRecord:
    """One boot: what the board printed and how the boot ended."""

    output: str  # stdout and stderr, in order
    ended: Ended
    traceback: str | None  # text of the unhandled exception, for a crash
    # Flash mutations this boot made (a power-cut boot: those before the cut): file operations
    # on "dir" flash, block programs and erases on block flash.
    fs_ops: int
    reset_cause: int  # what machine.reset_cause() returned during this boot
    exit_code: int | None  # the process's exit status (None when killed at timeout)
    seconds: float


@dataclass
class RunResult:
    """The boots of one run, from power-on until a boot ended without a reset."""

    boots: list[BootRecord] = field(default_factory=list)
    fs_ops: int = 0  # mutations over all boots: cut points 1..fs_ops each hit one of them

    @property
    def output(self) -> str:
        return "".join(boot.output for boot in self.boots)

    @property
    def ended(self) -> Ended:
        """How the last boot ended ('reset' here means max_boots stopped a reset loop)."""
        return self.boots[-1].ended


def rom_image_path(flash_dir: Path | str) -> Path:
    """Where the ROM partition image of the board with flash directory `flash_dir` lives:
    `<flash_dir>.romfs`, a sibling file (another partition, so not inside the filesystem)."""
    resolved = Path(flash_dir).resolve()
    return resolved.with_name(resolved.name + ROM_IMAGE_SUFFIX)


class VirtualBoard:
    """A MicroPython board whose flash is `flash_dir` (or a filesystem image mirrored to it),
    with stand-ins for machine and network, and optionally a ROM partition (a ROMFS image,
    memory-mapped and mounted at /rom)."""

    def __init__(
        self,
        flash_dir: Path | str,
        *,
        micropython: str | None = None,
        unique_id: bytes = _DEFAULT_UNIQUE_ID,
        wifi_ok: bool = True,
        heapsize: str | None = None,
        env: dict[str, str] | None = None,
        rom: Path | str | None = None,
        flash: FlashKind | None = None,
        geometry: PartitionGeometry | None = None,
    ) -> None:
        """`rom`: the ROM partition's image; None means `rom_image_path(flash_dir)` whenever that
        file exists at boot, and no ROM partition otherwise.
        `flash`: "lfs2" or "fat" (a filesystem on a flash block device of `geometry`, default
        the ESP32's `vfs` partition, in `flash_image_path(flash_dir)`), or "dir" (the directory
        itself); None: `default_flash_kind()`.

        Raises NotADirectoryError for a missing flash directory, FileNotFoundError for an
        explicit `rom` that is not a file, ValueError for a bad unique_id, heapsize or flash.
        """
        self.flash_dir = Path(flash_dir).resolve()
        if not self.flash_dir.is_dir():
            raise NotADirectoryError(f"board flash directory {self.flash_dir} does not exist")
        self._rom = Path(rom).resolve() if rom is not None else None
        if self._rom is not None and not self._rom.is_file():
            raise FileNotFoundError(f"ROM image {self._rom} does not exist (or is not a file)")
        if not unique_id:
            raise ValueError("unique_id must not be empty")
        self.micropython = micropython or find_micropython()
        self.unique_id = unique_id
        self.wifi_ok = wifi_ok
        self.flash = flash or default_flash_kind()
        if self.flash not in FLASH_KINDS:
            raise ValueError(f"flash {self.flash!r} is not one of {', '.join(FLASH_KINDS)}")
        self.heapsize = heapsize
        self._heap_bytes = (_heap_bytes(heapsize, self.micropython, self.flash)
                            if heapsize is not None else None)
        self.extra_env = dict(env or {})
        self._standins = compiled_standins()
        self.block_flash = None if self.flash == "dir" else BlockFlash(
            self.flash_dir, self.flash, geometry or ESP32_VFS, self.micropython, self._standins)

    @property
    def rom(self) -> Path | None:
        """The ROM image the next boot maps: the explicit one, else the sibling image if it
        exists now (provisioning may write it after the board was made), else None."""
        if self._rom is not None:
            return self._rom
        sibling = rom_image_path(self.flash_dir)
        return sibling if sibling.is_file() else None

    def command(self, module: str) -> list[str]:
        """The command line that runs a (compiled) stand-in module on this board's interpreter."""
        heap = ["-X", f"heapsize={self._heap_bytes}"] if self._heap_bytes else []
        return [self.micropython, *heap, "-c", f"import {module}"]

    def environment(self, **board_vars: str) -> dict[str, str]:
        """The process environment of a board: only what the interpreter and stand-ins need."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for inherited in ("LD_LIBRARY_PATH", "LANG", "TMPDIR"):
            if inherited in os.environ:
                env[inherited] = os.environ[inherited]
        env.update(self.extra_env)
        rom = self.rom
        env.update(
            VB_FLASH=str(self.flash_dir),
            VB_ROM=str(rom) if rom is not None else "",
            VB_STANDINS=str(self._standins),
            MICROPYPATH=str(self._standins),
            VB_UNIQUE_ID=self.unique_id.hex(),
            VB_WIFI_OK="1" if self.wifi_ok else "0",
        )
        env.update(board_vars)
        return env

    def run(
        self,
        max_boots: int = 5,
        timeout: float = 30.0,
        cut_at: int | None = None,
        on_output: OutputSink | None = None,
        torn: Torn | None = None,
    ) -> RunResult:
        """Power the board on and boot it until a boot ends without a reset, or `max_boots`.

        `timeout` bounds the whole run; a boot still running then is killed ('timeout').
        `cut_at=N` cuts power just BEFORE the Nth flash mutation of the run (counted over all
        boots; file operations on "dir" flash, block programs and erases on block flash): the
        flash holds exactly the effects of mutations 1..N-1. `torn` (block flash only) leaves
        mutation N half done instead. `on_output` receives the board's output as it is printed.
        On block flash the host directory mirrors the image before and after the run.
        """
        if max_boots < 1:
            raise ValueError(f"max_boots must be at least 1, not {max_boots}")
        if cut_at is not None and cut_at < 1:
            raise ValueError(f"cut_at counts mutations from 1, not {cut_at}")
        if torn is not None and (self.block_flash is None or cut_at is None):
            raise ValueError("a torn write needs block flash (lfs2 or fat) and a cut_at")
        deadline = time.monotonic() + timeout
        result = RunResult()
        reset_cause = power.PWRON_RESET
        if self.block_flash is not None:
            self.block_flash.sync_into_image()
        try:
            for _ in range(max_boots):
                cut_in = cut_at - result.fs_ops if cut_at is not None else 0
                boot = self._boot(reset_cause, cut_in, deadline, on_output, torn)
                result.boots.append(boot)
                result.fs_ops += boot.fs_ops
                if boot.ended not in power.REBOOTS:
                    break
                reset_cause = power.REBOOTS[boot.ended]
        finally:
            if self.block_flash is not None:
                self.block_flash.sync_from_image()
        return result

    @contextlib.contextmanager
    def serve_repl(self, port: int = 0, cut_at: int | None = None) -> Iterator[int]:
        """Serve this board's raw REPL on 127.0.0.1 (port 0: any free one); yields the port.

        `mpremote connect socket://127.0.0.1:PORT ...` then works on the board's flash.
        `cut_at=N` cuts power just before the Nth filesystem mutation made through the REPL:
        the client's connection drops and every later one is dropped at once.
        Everything started is stopped when the context exits.
        """
        with self.repl_server(port, cut_at) as server:
            yield server.port

    def repl_server(self, port: int = 0, cut_at: int | None = None) -> ReplServer:
        """The REPL endpoint itself (a context manager), for callers that want fs_ops or
        powered_off as well as the port."""
        from tools.virtual_board.repl import ReplServer  # repl.py imports this module

        if cut_at is not None and cut_at < 1:
            raise ValueError(f"cut_at counts mutations from 1, not {cut_at}")
        return ReplServer(self, port, cut_at)

    def _boot(
        self, reset_cause: int, cut_in: int, deadline: float, on_output: OutputSink | None,
        torn: Torn | None = None,
    ) -> BootRecord:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="vboard-") as scratch:
            report = Path(scratch) / "report"
            env = self.environment(
                VB_RESET_CAUSE=str(reset_cause), VB_CUT_AT=str(cut_in), VB_REPORT=str(report)
            )
            if self.block_flash is not None:
                env.update(self.block_flash.environment())
                if torn is not None:
                    env.update(VB_TORN=str(torn.written), VB_TORN_REST=torn.rest)
            output, exit_code = _run_process(
                self.command("_vb_boot" if self.block_flash is None else "_vb_blkboot"), env,
                self.flash_dir, deadline, on_output
            )
            report_text = report.read_text() if report.exists() else ""
        ended, fs_ops, traceback = _read_report(report_text, exit_code, output)
        if ended == "power_cut":
            fs_ops = cut_in - 1
        return BootRecord(
            output=output,
            ended=ended,
            traceback=traceback,
            fs_ops=fs_ops,
            reset_cause=reset_cause,
            exit_code=exit_code,
            seconds=time.monotonic() - started,
        )


def _heap_bytes(heapsize: str, micropython: str, flash: FlashKind) -> int:
    """The -X heapsize value for a board heap of `heapsize` ("65536", "64k", "1M")."""
    match = re.fullmatch(r"(\d+)([kKmM]?)", heapsize.strip())
    if match is None or int(match[1]) == 0:
        raise ValueError(f"heapsize {heapsize!r} is not a size such as 65536, 64k or 1M")
    return (int(match[1]) * _SIZE_UNITS[match[2].lower()]
            + harness_heap_bytes(micropython, flash))


@functools.cache
def harness_heap_bytes(micropython: str, flash: FlashKind = "dir") -> int:
    """The harness's own heap on this interpreter (HARNESS_HEAP_BYTES by its word size, plus
    BLOCK_FLASH_HARNESS_EXTRA on block flash)."""
    bits = word_bits(micropython)
    if bits not in HARNESS_HEAP_BYTES:
        raise ValueError(f"{micropython} is a {bits}-bit MicroPython: the virtual board knows "
                         f"the harness heap of {sorted(HARNESS_HEAP_BYTES)}-bit builds only")
    return HARNESS_HEAP_BYTES[bits] + BLOCK_FLASH_HARNESS_EXTRA.get((bits, flash), 0)


def _run_process(
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    deadline: float,
    on_output: OutputSink | None,
) -> tuple[str, int | None]:
    """Run one boot, relaying output; returns (output, exit status or None if killed)."""
    chunks: list[bytes] = []
    with subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=env, cwd=cwd, umask=power.FLASH_UMASK,
    ) as proc:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        killed = False
        try:
            while True:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([fd], [], [], max(left, 0))
                if not ready:
                    proc.kill()
                    killed = True
                    break
                chunk = os.read(fd, _READ_CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
                if on_output is not None:
                    on_output(chunk.decode("utf-8", "replace"))
        except BaseException:  # Ctrl-C or a failing on_output: leave no board running
            proc.kill()
            raise
        exit_code = proc.wait()
    return b"".join(chunks).decode("utf-8", "replace"), None if killed else exit_code


def _read_report(report: str, exit_code: int | None, output: str) -> tuple[Ended, int, str | None]:
    """How the boot ended, its mutation count and traceback, from the stand-ins' report."""
    if exit_code is None:
        return "timeout", _reported_ops(report), None
    first, _, traceback = report.partition("\n")
    kind, _, ops = first.partition(" ")
    ended = power.ENDED_BY_EXIT_CODE.get(exit_code)
    if ended is None or kind != ended:
        # The interpreter itself died (a fault, or an error in the harness): report a crash with
        # whatever it printed, so the failure is visible rather than mistaken for a clean exit.
        return "crash", _reported_ops(report), _traceback_in(output) or output[-2000:]
    return ended, int(ops or 0), traceback or None


def _reported_ops(report: str) -> int:
    with contextlib.suppress(ValueError, IndexError):
        return int(report.split("\n", 1)[0].split(" ")[1])
    return 0


def _traceback_in(output: str) -> str | None:
    start = output.rfind("Traceback (most recent call last):")
    return output[start:] if start >= 0 else None

