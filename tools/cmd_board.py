"""`ota board ...`: boot a virtual board from a terminal, or serve its raw REPL to mpremote."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import click

from tools.errors import UserError
from tools.micropython import MicroPythonNotFound
from tools.virtual_board import VirtualBoard

# Ends that mean the board did not come up as it should: the command then exits with status 1.
_FAILED_ENDS = ("crash", "timeout")


def _unique_id(value: str) -> bytes:
    try:
        unique_id = bytes.fromhex(value)
    except ValueError:
        raise UserError(f"--unique-id {value!r} is not hexadecimal (e.g. 0a1b2c3d4e5f)") from None
    if not unique_id:
        raise UserError("--unique-id must not be empty")
    return unique_id


def _board(flash_dir: Path, unique_id: str, wifi: bool, heapsize: str | None,
           rom: Path | None) -> VirtualBoard:
    if not flash_dir.is_dir():
        raise UserError(f"board flash directory {flash_dir} does not exist")
    if rom is not None and not rom.is_file():
        raise UserError(f"--rom {rom}: no such ROM image file")
    try:
        board = VirtualBoard(flash_dir, unique_id=_unique_id(unique_id), wifi_ok=wifi,
                             heapsize=heapsize, rom=rom)
    except (MicroPythonNotFound, ValueError, OSError) as err:
        raise UserError(str(err)) from None
    if board.rom is not None:
        click.echo(f"ROM partition: {board.rom} (mounted at /rom)", err=True)
    return board


_DIR = click.argument("flash_dir", metavar="DIR", type=click.Path(path_type=Path))
_UNIQUE_ID = click.option("--unique-id", default="000102030405", show_default=True,
                          help="What machine.unique_id() returns, in hex.")
_WIFI = click.option("--wifi/--no-wifi", default=True, show_default=True,
                     help="Whether network.WLAN().connect() succeeds.")
_HEAPSIZE = click.option("--heapsize", default=None, help="MicroPython heap size, e.g. 96k.")
_ROM = click.option("--rom", default=None, type=click.Path(dir_okay=False, path_type=Path),
                    help="ROMFS image of the board's ROM partition, mounted at /rom "
                         "(default: DIR.romfs beside DIR, if it exists).")


@click.group("board")
def board_group() -> None:
    """Virtual boards: MicroPython's unix port on a directory as its flash."""


@board_group.command("run")
@_DIR
@click.option("--max-boots", default=5, show_default=True, type=click.IntRange(min=1),
              help="Stop after this many boots (bounds a reset loop).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds the whole run may take.")
@click.option("--cut-at", default=None, type=click.IntRange(min=1),
              help="Cut power just before the Nth filesystem change.")
@_UNIQUE_ID
@_WIFI
@_HEAPSIZE
@_ROM
def run_command(flash_dir: Path, max_boots: int, timeout: float, cut_at: int | None,
                unique_id: str, wifi: bool, heapsize: str | None, rom: Path | None) -> None:
    """Boot the board in DIR (boot.py, then main.py) and show what it prints."""
    board = _board(flash_dir, unique_id, wifi, heapsize, rom)

    def show(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    result = board.run(max_boots=max_boots, timeout=timeout, cut_at=cut_at, on_output=show)
    for number, boot in enumerate(result.boots, start=1):
        click.echo(f"[boot {number}: {boot.ended} after {boot.seconds:.2f} s, "
                   f"{boot.fs_ops} filesystem changes]", err=True)
    if result.ended in _FAILED_ENDS:
        raise UserError(f"the board ended in a {result.ended} on boot {len(result.boots)}")


@board_group.command("repl")
@_DIR
@click.option("--port", default=0, type=click.IntRange(min=0, max=65535),
              help="TCP port on 127.0.0.1 (default: any free port).")
@_UNIQUE_ID
@_WIFI
@_HEAPSIZE
@_ROM
def repl_command(flash_dir: Path, port: int, unique_id: str, wifi: bool,
                 heapsize: str | None, rom: Path | None) -> None:
    """Serve the raw REPL of the board in DIR to mpremote until Ctrl-C."""
    board = _board(flash_dir, unique_id, wifi, heapsize, rom)
    try:
        served = board.serve_repl(port)
        with served as tcp_port:
            click.echo(f"raw REPL of {flash_dir} on 127.0.0.1:{tcp_port}; "
                       f"mpremote connect socket://127.0.0.1:{tcp_port}  (Ctrl-C stops)",
                       err=True)
            threading.Event().wait()
    except OSError as err:
        raise UserError(f"cannot serve on 127.0.0.1:{port}: {err.strerror or err}") from None
    except KeyboardInterrupt:
        click.echo("stopped", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(board_group)
