"""`ota install RELEASE`: a signed release onto a board over USB, without a server.

The release is staged on the board (tools/install.py) and the board reset: at that boot it
verifies the release with the network update's own code and installs it on trial
(docs/board.md, "Offline install"). `--virtual DIR` does the same to a virtual board through its
REPL endpoint and then boots it, so the outcome can be shown.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from tools.cmd_publisher import _client_options
from tools.errors import UserError
from tools.output import Column, echo_json, emit

_PLAN_COLUMNS = (
    Column("BLOB", "blob", lambda b: b[:16]),
    Column("BYTES", "bytes", align="right"),
    Column("FROM", "from", align="right"),
    Column("FILES", "files"),
)
_VIRTUAL_BOOTS = 4  # the install's boot, the trial boot, and room for a reset the app asks for
_VIRTUAL_TIMEOUT_S = 120.0


@contextlib.contextmanager
def _connect(port: str | None, virtual: Path | None) -> Iterator[Any]:
    """The board's raw REPL through mpremote: a serial port, or a virtual board's endpoint."""
    from tools.station.writer_mpremote import MpremoteBoard, WriteError

    with contextlib.ExitStack() as stack:
        if virtual is not None:
            if not virtual.is_dir():
                raise UserError(f"--virtual {virtual}: no such board flash directory")
            from tools.virtual_board import VirtualBoard

            served = stack.enter_context(VirtualBoard(virtual).serve_repl())
            port = f"socket://127.0.0.1:{served}"
        assert port is not None
        try:
            board = stack.enter_context(MpremoteBoard(port))
        except WriteError as err:
            raise UserError(str(err)) from err
        yield board


def _files_by_blob(release: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in release.manifest.files:
        out.setdefault(entry.blob, []).append(entry.path)
    return out


def _release(text: str, scratch: Path, server: str, token_file: Path | None) -> Any:
    """RELEASE: a bundle directory, or APP@VERSION fetched from the server into `scratch`."""
    from tools.api_client import ApiClientError
    from tools.cmd_publisher import _client
    from tools.install import InstallError, fetch_release, load_release

    try:
        if Path(text).is_dir():
            return load_release(Path(text))
        app, at, version = text.rpartition("@")
        if not at or not app or not version:
            raise UserError(f"RELEASE {text!r} is neither a bundle directory nor APP@VERSION")
        try:
            return load_release(fetch_release(_client(server, token_file), app, version,
                                              scratch))
        except ApiClientError as err:
            raise UserError(f"fetching {app} {version} from {server}: {err}") from err
    except InstallError as err:
        raise UserError(str(err)) from err


@click.command("install")
@click.argument("release_text", metavar="RELEASE")
@click.option("--port", default=None,
              help="the board's serial port (or socket://HOST:PORT), as mpremote takes it")
@click.option("--virtual", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="a virtual board's flash directory: staged through its REPL, then booted")
@click.option("--dry-run", is_flag=True, help="say what would be copied; change nothing")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@_client_options
def install_cmd(release_text: str, port: str | None, virtual: Path | None, dry_run: bool,
                as_json: bool, server: str, token_file: Path | None) -> None:
    """Install RELEASE on a board over USB: a signed bundle directory (what `ota build` and
    `ota sign`, or `ota publish --out`, wrote), or APP@VERSION, fetched from the server with
    the publisher token. Only the blobs the board lacks are copied; the board verifies and
    installs the release as it resets, exactly as it would one from the server."""
    if (port is None) == (virtual is None):
        raise UserError("give the board as --port PORT or --virtual DIR (one of them)")
    with tempfile.TemporaryDirectory(prefix="ota-install-") as scratch:
        release = _release(release_text, Path(scratch), server, token_file)
        _install(release, port, virtual, dry_run, as_json)


def _install(release: Any, port: str | None, virtual: Path | None, dry_run: bool,
             as_json: bool) -> None:
    from tools.install import InstallError, plan_install, read_board, stage
    from tools.station.writer_mpremote import WriteError

    result: dict[str, Any] = {"release": release.describe(), "dry_run": dry_run}
    try:
        with _connect(port, virtual) as link:
            board = read_board(link)
            plan = plan_install(release, board)
            info = board.state["slots"].get(board.state["active"]) or {}
            result["board"] = {"active": board.state["active"], "on_trial": not board.state["ok"],
                               "app": info.get("app"), "version": info.get("version"),
                               "sequence": info.get("sequence")}
            result["plan"] = plan.describe()
            if dry_run:
                _show_plan(result, release, as_json)
                return
            with _progress(plan.bytes_to_copy, enabled=not as_json) as progress:
                stage(link, plan, release, now=int(time.time()), progress=progress)
            if virtual is None:
                link.soft_reset()
    except (InstallError, WriteError) as err:
        raise UserError(str(err)) from err
    result["staged"] = True
    if virtual is not None:
        result["outcome"] = _boot_virtual(virtual, release)
    _show_result(result, as_json)
    if not result.get("outcome", {"installed": True})["installed"]:
        click.get_current_context().exit(1)  # the board refused it: a script must notice


@contextlib.contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Any]:
    """A byte progress bar on a terminal; elsewhere (a pipe, --json) nothing."""
    if not enabled or not sys.stdout.isatty() or total == 0:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    with Progress(TextColumn("copying"), BarColumn(), DownloadColumn(),
                  transient=True) as bar:
        task = bar.add_task("copy", total=total)

        def progress(done: int, _total: int) -> None:
            bar.update(task, completed=done)

        yield progress


def _boot_virtual(flash: Path, release: Any) -> dict[str, Any]:
    """Boot the virtual board (its reset) and say what it runs afterwards."""
    from tools.board_files import read_state
    from tools.virtual_board import VirtualBoard

    run = VirtualBoard(flash).run(max_boots=_VIRTUAL_BOOTS, timeout=_VIRTUAL_TIMEOUT_S)
    state = read_state(flash) or {}
    info = (state.get("slots") or {}).get(state.get("active")) or {}
    installed = info.get("sequence") == release.manifest.sequence and \
        info.get("app") == release.manifest.app
    refused = [line for line in run.output.splitlines()
               if line.startswith("ota: staged release refused:")]
    return {"installed": installed, "version": info.get("version"),
            "on_trial": not state.get("ok", 1), "boots": [b.ended for b in run.boots],
            "reason": refused[-1].split(":", 2)[2].strip() if refused else None}


def _show_plan(result: dict[str, Any], release: Any, as_json: bool) -> None:
    files = _files_by_blob(release)
    rows = [{**row, "files": ", ".join(files.get(row["blob"], []))}
            for row in result["plan"]["copy"]]
    plan = result["plan"]
    title = (f"{release.manifest.app} {release.manifest.version} (sequence "
             f"{release.manifest.sequence}) onto a board running "
             f"{result['board']['app']} {result['board']['version']}: would copy "
             f"{plan['bytes']} bytes in {len(rows)} blob(s); {len(plan['from_slot'])} file(s) "
             f"come from the board's own slot, {len(plan['kept'])} blob(s) are staged already")
    emit(result, _PLAN_COLUMNS, rows, as_json=as_json, title=title, empty="nothing to copy")


def _show_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(result)
        return
    rel = result["release"]
    plan = result["plan"]
    click.echo(f"staged {rel['app']} {rel['version']} (sequence {rel['sequence']}): "
               f"{plan['bytes']} bytes copied, {len(plan['kept'])} blob(s) were staged already, "
               f"{len(plan['from_slot'])} file(s) come from the board's own slot")
    outcome = result.get("outcome")
    if outcome is None:
        click.echo("the board was reset: it verifies and installs the release as it boots")
    elif outcome["installed"]:
        click.echo(f"installed: the board runs {rel['version']}"
                   + (" on trial" if outcome["on_trial"] else ""))
    else:
        click.echo(f"refused by the board: {outcome['reason'] or 'see its output'}; it runs "
                   f"{outcome['version']}")


def register(cli: click.Group) -> None:
    cli.add_command(install_cmd)
