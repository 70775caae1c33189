"""`ota serve`, `ota tokens`, and the publisher's commands against a running server:
`ota publish`, `ota rollout`, `ota releases`, `ota devices`.

Client commands find the server in --server / $MPOTA_SERVER and the publisher token in
$MPOTA_TOKEN or --token-file (never on the command line, where `ps` would show it).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from tools.errors import UserError

TOKEN_ENV = "MPOTA_TOKEN"  # noqa: S105 -- the variable's name, not a secret
SERVER_ENV = "MPOTA_SERVER"
DEFAULT_SERVER = "http://127.0.0.1:8080"
DAY = 86400


# -- serve and tokens (local: they work on the data directory) --------------------------------

def _fleet_values(path: Path) -> dict[str, Any]:
    """What `ota serve` takes from fleet.yaml: the root, the port of server.url, the policy."""
    from urllib.parse import urlsplit

    from tools.fleet import FleetError, load_fleet

    try:
        fleet = load_fleet(path)
    except FleetError as err:
        raise UserError(str(err)) from err
    values: dict[str, Any] = {}
    if fleet.server.root is not None:
        root = Path(fleet.server.root)
        values["root_path"] = root if root.is_absolute() else path.parent / root
    port = urlsplit(fleet.server.url).port
    if port is not None:
        values["port"] = port
    stages: list[dict[str, Any]] = []
    group = fleet.groups.get(fleet.rollout.canary_group or "")
    if group is not None:
        stages.extend({"tag": tag} for tag in group.tags)
    stages.extend({"percent": p} for p in fleet.rollout.stages)
    values["default_policy"] = {"stages": stages,
                                "failure_threshold": fleet.rollout.failure_threshold,
                                "min_results": fleet.rollout.min_results}
    return values


@click.command("serve")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help="data directory (SQLite + blobs) [env MPOTA_DATA]")
@click.option("--root", "root_path", type=click.Path(dir_okay=False, path_type=Path),
              help="root metadata (root.json), the trust anchor at the first start "
                   "[env MPOTA_ROOT]")
@click.option("--host", default=None, help="listen address [default: 127.0.0.1; env MPOTA_HOST]")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="listen port [default: 8080; env MPOTA_PORT]")
@click.option("--fleet", "fleet_path", type=click.Path(dir_okay=False, exists=True,
                                                       path_type=Path),
              help="fleet.yaml: server root, port and the default rollout policy")
@click.option("--json-logs", is_flag=True, default=None, help="one JSON object per log line")
@click.option("--quiet", is_flag=True, help="log warnings and errors only (benchmarks)")
def serve_cmd(data_dir: Path | None, root_path: Path | None, host: str | None, port: int | None,
              fleet_path: Path | None, json_logs: bool | None, quiet: bool) -> None:
    """Run the update server until interrupted."""
    import logging

    from aiohttp import web

    from ota_server.app import create_app
    from ota_server.logs import configure_logging
    from ota_server.settings import SettingsError, load_settings
    from ota_server.trust import TrustSetupError

    fleet_values = _fleet_values(fleet_path) if fleet_path is not None else None
    try:
        settings = load_settings({"data_dir": data_dir, "root_path": root_path, "host": host,
                                  "port": port, "json_logs": json_logs},
                                 fleet_values=fleet_values)
    except SettingsError as err:
        raise UserError(str(err)) from err
    configure_logging(settings.json_logs, logging.WARNING if quiet else logging.INFO)
    log = logging.getLogger("ota_server")

    def announce(text: str) -> None:  # aiohttp's "Running on ..." banner, as one log line
        log.info(" ".join(text.replace("=", " ").split()))

    try:
        web.run_app(create_app(settings), host=settings.host, port=settings.port,
                    access_log=None, print=announce, shutdown_timeout=5)
    except TrustSetupError as err:
        raise UserError(str(err)) from err
    except OSError as err:
        raise UserError(f"cannot listen on {settings.host}:{settings.port}: {err}") from err


@contextmanager
def _open_store(data_dir: Path) -> Iterator[Any]:
    from ota_server.settings import Settings
    from ota_server.storage.sqlite import SqliteStore

    store = SqliteStore(Settings(data_dir=data_dir).db_path)
    try:
        yield store
    finally:
        store.close()


_data_option = click.option(
    "--data", "data_dir", required=True, envvar="MPOTA_DATA",
    type=click.Path(file_okay=False, path_type=Path), help="the server's data directory")


@click.group("tokens")
def tokens_group() -> None:
    """Publisher tokens (stored hashed in the server's data directory)."""


@tokens_group.command("create")
@click.argument("name")
@_data_option
def tokens_create(name: str, data_dir: Path) -> None:
    """Create a token NAME; it is printed once, on stdout, and never stored in clear."""
    from ota_server.tokens import create_token

    with _open_store(data_dir) as store:
        token = create_token(store, name)
    click.echo(token)


@tokens_group.command("revoke")
@click.argument("name")
@_data_option
def tokens_revoke(name: str, data_dir: Path) -> None:
    """Revoke every valid token named NAME."""
    with _open_store(data_dir) as store:
        count = store.revoke_token(name)
    if count == 0:
        raise UserError(f"no valid token named {name!r}")
    click.echo(f"revoked {count} token(s) named {name!r}")


@tokens_group.command("list")
@_data_option
def tokens_list(data_dir: Path) -> None:
    """Token names, creation and revocation times (never the tokens)."""
    with _open_store(data_dir) as store:
        for row in store.list_tokens():
            state = f"revoked {_iso(row['revoked'])}" if row["revoked"] else "valid"
            click.echo(f"{row['name']}\tcreated {_iso(row['created'])}\t{state}")


# -- client commands --------------------------------------------------------------------------

def _iso(when: int | None) -> str:
    if when is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


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
    return ApiClient(server, token)


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
@click.option("--key", "key_paths", multiple=True, required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="a release private key (repeat for a threshold) [passphrase: "
                   "$MPOTA_KEY_PASSPHRASE]")
@click.option("--board", "boards", multiple=True, required=True,
              help="a compatible board (repeat)")
@click.option("--sequence", type=click.IntRange(min=0), default=None,
              help="anti-rollback sequence [default: as `ota build`]")
@click.option("--entry", default="app_main", show_default=True, help="the app's entry module")
@click.option("--app", "app", default=None, help="app name [default: APP_DIR's name]")
@click.option("--min-micropython", default="1.20.0", show_default=True)
@click.option("--expires-days", type=click.IntRange(min=1), default=365, show_default=True)
@click.option("--mpy", is_flag=True, help="compile .py to .mpy with mpy-cross")
@click.option("--deflate", is_flag=True, help="send files deflated when that is smaller")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="keep the bundle here [default: a temporary directory]")
@_client_options
def publish_cmd(app_dir: Path, version: str, channel: str | None, percent: float | None,
                key_paths: tuple[Path, ...], boards: tuple[str, ...], sequence: int | None,
                entry: str, app: str | None, min_micropython: str, expires_days: int,
                mpy: bool, deflate: bool, out_dir: Path | None, server: str,
                token_file: Path | None) -> None:
    """Build APP_DIR, sign it locally, upload the missing blobs, register, roll out."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from signing.bundle import build_bundle, sign_bundle
    from signing.errors import BundleError, KeyFileError, TrustError
    from tools.cmd_keys import load_signing_key

    client = _client(server, token_file)
    with tempfile.TemporaryDirectory(prefix="ota-publish-") as scratch:
        target = out_dir or Path(scratch) / "bundle"
        created = int(time.time())
        try:
            signers = [load_signing_key(path) for path in key_paths]
            bundle = build_bundle(app_dir, target, version=version, sequence=sequence,
                                  boards=boards, entry=entry, min_micropython=min_micropython,
                                  mpy=mpy, deflate=deflate, created=created,
                                  expires=created + expires_days * DAY, app=app)
            sign_bundle(target, signers)
        except (BundleError, KeyFileError) as err:
            raise UserError(str(err)) from err
        except TrustError as err:
            raise UserError(f"{type(err).__name__}: {err}") from err
        manifest = bundle.manifest
        with Progress(TextColumn("uploading"), BarColumn(), DownloadColumn(),
                      transient=True) as bar, _api_errors():
            task = bar.add_task("upload", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = client.publish(target, channel, percent=percent, progress=progress)
    click.echo(f"published {manifest.app} {manifest.version} sequence {manifest.sequence}: "
               f"{len(result.uploaded)} blob(s) uploaded, {len(result.skipped)} already there")
    if result.rollout is not None:
        _print_rollout(result.rollout)


# -- releases ---------------------------------------------------------------------------------

@click.group("releases")
def releases_group() -> None:
    """Releases registered on the server."""


@releases_group.command("list")
@click.option("--app", default=None, help="only this app")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@_client_options
def releases_list(app: str | None, as_json: bool, server: str, token_file: Path | None) -> None:
    with _api_errors():
        releases = _client(server, token_file).list_releases(app)
    if as_json:
        _echo_json(releases)
        return
    for rel in releases:
        click.echo(f"{rel['app']}\t{rel['version']}\tsequence {rel['sequence']}\t"
                   f"boards {','.join(rel['boards'])}\t{_iso(rel['created'])}")


# -- rollouts ---------------------------------------------------------------------------------

def _print_rollout(status: dict[str, Any]) -> None:
    base = status.get("base")
    click.echo(f"channel {status['channel']}: base "
               + (f"{base['app']} {base['version']} (sequence {base['sequence']})"
                  if base else "none"))
    rollout = status.get("rollout")
    if rollout is None:
        click.echo("  no rollout")
        return
    rel = rollout["release"]
    stage = rollout["current_stage"]
    where = f"tag {stage['tag']}" if "tag" in stage else f"{stage['percent']}%"
    click.echo(f"  rollout of {rel['app']} {rel['version']} (sequence {rel['sequence']}): "
               f"{rollout['state']}, stage {rollout['stage'] + 1}/{len(rollout['stages'])} "
               f"({where})")
    if rollout.get("reason"):
        click.echo(f"  reason: {rollout['reason']}")
    counts = rollout["counts"]
    click.echo("  " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@click.group("rollout")
def rollout_group() -> None:
    """Staged rollouts per channel."""


@rollout_group.command("status")
@click.argument("channel")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@_client_options
def rollout_status(channel: str, as_json: bool, server: str, token_file: Path | None) -> None:
    """Show the channel's base release and rollout with deployment counts."""
    with _api_errors():
        status = _client(server, token_file).rollout_status(channel)
    _echo_json(status) if as_json else _print_rollout(status)


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
@_client_options
def roots_list(server: str, token_file: Path | None) -> None:
    with _api_errors():
        result = _client(server, token_file).list_roots()
    click.echo(f"versions {result['versions']}, latest {result['latest']}")


# -- devices ----------------------------------------------------------------------------------

@click.group("devices")
def devices_group() -> None:
    """The board registry and inventory."""


@devices_group.command("list")
@click.option("--channel", default=None, help="only boards of this channel")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@_client_options
def devices_list(channel: str | None, as_json: bool, server: str,
                 token_file: Path | None) -> None:
    with _api_errors():
        devices = _client(server, token_file).list_devices(channel)
    if as_json:
        _echo_json(devices)
        return
    for dev in devices:
        state = "revoked" if dev["revoked"] else (dev.get("last_status") or "-")
        click.echo(f"{dev['device_id']}\t{dev['board']}\t{dev['channel']}\t"
                   f"{dev.get('app') or '-'} {dev.get('version') or '-'}\t{state}\t"
                   f"last seen {_iso(dev.get('last_seen'))}")


@devices_group.command("show")
@click.argument("device_id")
@_client_options
def devices_show(device_id: str, server: str, token_file: Path | None) -> None:
    with _api_errors():
        _echo_json(_client(server, token_file).device(device_id))


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
@click.option("--channel", default="stable", show_default=True)
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
    for command in (serve_cmd, tokens_group, publish_cmd, releases_group, rollout_group,
                    roots_group, devices_group):
        cli.add_command(command)
