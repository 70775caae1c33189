"""`ota serve` and `ota tokens`: the commands that work on a server's own data directory.

The publisher's commands against a running server live in tools/cmd_publisher.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from tools.errors import UserError
from tools.timefmt import iso_utc

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
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path),
              help="serve https with this PEM certificate (chain); reloaded on SIGHUP "
                   "[env MPOTA_TLS_CERT]")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path),
              help="the certificate's PEM private key [env MPOTA_TLS_KEY]")
@click.option("--json-logs", is_flag=True, default=None, help="one JSON object per log line")
@click.option("--quiet", is_flag=True, help="log warnings and errors only (benchmarks)")
@click.option("--header-timeout", type=float, default=None,
              help="seconds for a request's line and headers [default: 10; env "
                   "MPOTA_HEADER_TIMEOUT]")
@click.option("--body-timeout", type=float, default=None,
              help="seconds for a JSON or envelope body [default: 30; env MPOTA_BODY_TIMEOUT]")
@click.option("--upload-timeout", type=float, default=None,
              help="seconds for a blob upload [default: 600; env MPOTA_UPLOAD_TIMEOUT]")
@click.option("--keepalive-timeout", type=float, default=None,
              help="seconds an idle connection stays open [default: 75; env "
                   "MPOTA_KEEPALIVE_TIMEOUT]")
@click.option("--send-timeout", type=float, default=None,
              help="seconds a client has to take an answer, plus one per --send-rate-floor "
                   "bytes of its body [default: 60; env MPOTA_SEND_TIMEOUT]")
@click.option("--send-rate-floor", type=float, default=None,
              help="bytes per second the slowest client must take an answer at [default: "
                   "1024; env MPOTA_SEND_RATE_FLOOR]")
@click.option("--max-connections", type=int, default=None,
              help="open connections at most [default: 1000; env MPOTA_MAX_CONNECTIONS]")
def serve_cmd(data_dir: Path | None, root_path: Path | None, host: str | None, port: int | None,
              fleet_path: Path | None, tls_cert: Path | None, tls_key: Path | None,
              json_logs: bool | None, quiet: bool, **limits: float | None) -> None:
    """Run the update server until interrupted."""
    import logging

    from ota_server import connections
    from ota_server.app import create_app
    from ota_server.datadir import DataDirInUse
    from ota_server.logs import configure_logging
    from ota_server.settings import SettingsError, load_settings
    from ota_server.tls import TlsSetupError
    from ota_server.trust import TrustSetupError

    fleet_values = _fleet_values(fleet_path) if fleet_path is not None else None
    try:
        settings = load_settings({"data_dir": data_dir, "root_path": root_path, "host": host,
                                  "port": port, "json_logs": json_logs,
                                  "tls_cert": tls_cert, "tls_key": tls_key, **limits},
                                 fleet_values=fleet_values)
    except SettingsError as err:
        raise UserError(str(err)) from err
    configure_logging(settings.json_logs, logging.WARNING if quiet else logging.INFO)
    log = logging.getLogger("ota_server")

    def announce(text: str) -> None:  # aiohttp's "Running on ..." banner, as one log line
        log.info(" ".join(text.replace("=", " ").split()))

    try:
        app = create_app(settings)
    except TlsSetupError as err:
        raise UserError(f"TLS: {err}") from err
    try:
        connections.run(app, settings, announce=announce)
    except (TrustSetupError, DataDirInUse) as err:
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
            state = f"revoked {iso_utc(row['revoked'])}" if row["revoked"] else "valid"
            click.echo(f"{row['name']}\tcreated {iso_utc(row['created'])}\t{state}")


def register(cli: click.Group) -> None:
    for command in (serve_cmd, tokens_group):
        cli.add_command(command)
