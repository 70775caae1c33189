"""`ota serve` and `ota tokens`: the commands that work on a server's own data directory.

The publisher's commands against a running server live in tools/cmd_publisher.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from tools.errors import UserError
from tools.output import Column, emit, json_option, when

TOKEN_ENV = "MPOTA_TOKEN"  # noqa: S105 -- the variable's name, not a secret
SERVER_ENV = "MPOTA_SERVER"
DEFAULT_SERVER = "http://127.0.0.1:8080"
DAY = 86400
T = TypeVar("T")


# -- serve and tokens (local: they work on the data directory) --------------------------------

def _fleet_values(path: Path) -> dict[str, Any]:
    """What `ota serve` takes from fleet.yaml: the root, the port of server.url, the policy,
    the declared channels."""
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
    values["channels"] = tuple(fleet.channels)
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
              help="fleet.yaml: server root, port, the default rollout policy and the "
                   "declared channels (any other channel is refused)")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path),
              help="serve https with this PEM certificate (chain); reloaded on SIGHUP "
                   "[env MPOTA_TLS_CERT]")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path),
              help="the certificate's PEM private key [env MPOTA_TLS_KEY]")
@click.option("--db", "db_url", default=None, metavar="URL",
              help="metadata in PostgreSQL (postgresql://USER:PASSWORD@HOST/DB, migrated by "
                   "`ota db migrate`) [default: SQLite in the data directory; env MPOTA_DB]")
@click.option("--blobs", "blobs_url", default=None, metavar="URL",
              help="blobs in an S3 bucket (s3://BUCKET?endpoint=http://HOST:PORT; keys from "
                   "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) [default: the data directory; "
                   "env MPOTA_BLOBS]")
@click.option("--blob-accel", default=None, metavar="PREFIX",
              help="hand whole-blob answers to nginx: X-Accel-Redirect PREFIX/<aa>/<sha256>, "
                   "an internal nginx location aliased to the blob directory (docs/"
                   "operations.md, Blobs sent by nginx) [default: off; env MPOTA_BLOB_ACCEL]")
@click.option("--blob-cache-bytes", default=None, metavar="BYTES",
              help="bound of the S3 blob store's local cache, at least the largest blob "
                   "(16 MiB) [default: 2 GiB; env MPOTA_BLOB_CACHE_BYTES]")
@click.option("--grant-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the download grants' key file, created (0600) when missing; the same file "
                   "for every replica and nginx (docs/protocol.md, Download grants) [default: "
                   "DIR/grant.key on SQLite, no grants with --db; env MPOTA_GRANT_KEY]")
@click.option("--grant-lifetime", default=None, metavar="SECONDS",
              help="how long a download grant is valid, 60..86400 [default: 900; env "
                   "MPOTA_GRANT_LIFETIME]")
@click.option("--event-loop", type=click.Choice(["uvloop", "asyncio"]), default=None,
              help="the event loop serving connections [default: uvloop; env "
                   "MPOTA_EVENT_LOOP]")
@click.option("--workers", default=None, metavar="N",
              help="processes serving connections on the embedded store, 1..64; more than "
                   "one share its SQLite file (docs/operations.md, Workers) [default: 1; env "
                   "MPOTA_WORKERS]")
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
              db_url: str | None, blobs_url: str | None, blob_accel: str | None,
              blob_cache_bytes: str | None, grant_key: Path | None,
              grant_lifetime: str | None, event_loop: str | None, workers: str | None,
              json_logs: bool | None,
              quiet: bool,
              **limits: float | None) -> None:
    """Run the update server until interrupted."""
    import logging

    from ota_server import connections
    from ota_server.app import create_app
    from ota_server.datadir import DataDirInUse
    from ota_server.grants import GrantKeyError
    from ota_server.logs import configure_logging
    from ota_server.settings import SettingsError, load_settings
    from ota_server.storage.errors import StoreError
    from ota_server.tls import TlsSetupError
    from ota_server.trust import TrustSetupError
    from ota_server.workers import WorkerFailed, serve_workers

    fleet_values = _fleet_values(fleet_path) if fleet_path is not None else None
    try:
        settings = load_settings({"data_dir": data_dir, "root_path": root_path, "host": host,
                                  "port": port, "json_logs": json_logs,
                                  "tls_cert": tls_cert, "tls_key": tls_key,
                                  "db_url": db_url, "blobs_url": blobs_url,
                                  "blob_accel": blob_accel, "blob_cache_bytes": blob_cache_bytes,
                                  "grant_key": grant_key, "grant_lifetime": grant_lifetime,
                                  "event_loop": event_loop, "workers": workers,
                                  **limits},
                                 fleet_values=fleet_values)
    except SettingsError as err:
        raise UserError(str(err)) from err
    level = logging.WARNING if quiet else logging.INFO
    configure_logging(settings.json_logs, level)
    log = logging.getLogger("ota_server")

    def announce(text: str) -> None:  # aiohttp's "Running on ..." banner, as one log line
        log.info(" ".join(text.replace("=", " ").split()))

    try:
        # Built here with a single process, and by each worker with several; either way a bad
        # certificate is refused before any port is bound.
        app = create_app(settings)
    except TlsSetupError as err:
        raise UserError(f"TLS: {err}") from err
    try:
        if settings.workers > 1:
            serve_workers(settings, log_level=level, announce=announce)
        else:
            connections.run(app, settings, announce=announce)
    except (TrustSetupError, DataDirInUse, StoreError, GrantKeyError,
            WorkerFailed) as err:
        raise UserError(str(err)) from err
    except OSError as err:
        raise UserError(f"cannot listen on {settings.host}:{settings.port}: {err}") from err


def _on_store(data_dir: Path, db_url: str | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(store)` on the data directory's SQLite store, or on PostgreSQL when `db_url`
    is given; the store's errors as UserError."""
    import asyncio

    from ota_server.app import open_metadata_store
    from ota_server.settings import Settings, SettingsError, check_db_url
    from ota_server.storage.errors import StoreError

    async def run() -> T:
        store = await open_metadata_store(Settings(data_dir=data_dir,
                                                   db_url=check_db_url(db_url)))
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (StoreError, SettingsError) as err:
        raise UserError(str(err)) from err


def _where(func: Callable[..., Any]) -> Callable[..., Any]:
    """Where `ota tokens` works: on the data directory (--data, $MPOTA_DATA), or else on the
    server (--server, $MPOTA_SERVER) with an admin token."""
    from tools.cmd_publisher import client_options

    func = click.option(
        "--data", "data_dir", envvar="MPOTA_DATA", default=None,
        type=click.Path(file_okay=False, path_type=Path),
        help="work on this data directory [env MPOTA_DATA; default: ask the server, with an "
             "admin token]")(func)
    func = click.option(
        "--db", "db_url", envvar="MPOTA_DB", default=None, metavar="URL",
        help="with --data: the server's PostgreSQL database instead of the data directory's "
             "SQLite file [env MPOTA_DB]")(func)
    return client_options(func)


@contextmanager
def _remote(server: str, token_file: Path | None) -> Iterator[Any]:
    """An ApiClient of `server`; its refusals as UserError."""
    from tools.cmd_publisher import api_errors, client_for

    with api_errors():
        yield client_for(server, token_file)


@click.group("tokens")
def tokens_group() -> None:
    """Publisher tokens with scopes: read, publish, admin.

    Stored hashed in the server's data directory; managed there (--data) or through the
    server with an admin token."""


async def _audit_local(store: Any, action: str, target: str, outcome: str) -> None:
    """Token management on the data directory goes to the audit log as the actor
    `local:<login name>`: whoever can write the data directory (no token name has a colon)."""
    import getpass
    import time

    from ota_server.storage import AuditEntry

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's uid without a passwd entry)
        user = "?"
    await store.add_audit(AuditEntry(at=int(time.time()), actor=f"local:{user}", scope="admin",
                                     action=action, target=target, status=0, outcome=outcome))


@tokens_group.command("create")
@click.argument("name")
@click.option("--scope", type=click.Choice(["read", "publish", "admin"]), default="publish",
              show_default=True,
              help="read: list; publish: also upload, register and roll out; admin: also "
                   "revoke boards, upload roots and manage tokens")
@_where
def tokens_create(name: str, scope: str, data_dir: Path | None, db_url: str | None,
                  server: str, token_file: Path | None) -> None:
    """Create a token NAME, printed once and stored only hashed.

    The token goes to stdout, once; the server keeps its SHA-256 and never shows it again."""
    from ota_server.tokens import create_token

    if data_dir is None:
        with _remote(server, token_file) as client:
            token = client.create_token(name, scope)
    else:
        async def create(store: Any) -> str:
            try:
                made = await create_token(store, name, scope)
            except ValueError as err:
                raise UserError(str(err)) from err
            await _audit_local(store, "ota tokens create", f"{name} scope={scope}", "ok")
            return made

        token = _on_store(data_dir, db_url, create)
    click.echo(token)


@tokens_group.command("revoke")
@click.argument("name")
@_where
def tokens_revoke(name: str, data_dir: Path | None, db_url: str | None, server: str,
                  token_file: Path | None) -> None:
    """Revoke every valid token named NAME."""
    if data_dir is None:
        with _remote(server, token_file) as client:
            count = client.revoke_token(name)
    else:
        async def revoke(store: Any) -> int:
            revoked = int(await store.revoke_token(name))
            await _audit_local(store, "ota tokens revoke", name,
                               "ok" if revoked else "unknown_token")
            return revoked

        count = _on_store(data_dir, db_url, revoke)
        if count == 0:
            raise UserError(f"no valid token named {name!r}")
    click.echo(f"revoked {count} token(s) named {name!r}")


_TOKEN_COLUMNS = (Column("NAME", "name"), Column("SCOPE", "scope"),
                  Column("CREATED", "created", when), Column("REVOKED", "revoked", when))


@tokens_group.command("list")
@json_option
@_where
def tokens_list(as_json: bool, data_dir: Path | None, db_url: str | None, server: str,
                token_file: Path | None) -> None:
    """List tokens: names, scopes and times (never the tokens)."""
    if data_dir is None:
        with _remote(server, token_file) as client:
            docs = client.tokens()
    else:
        rows = _on_store(data_dir, db_url, lambda store: store.list_tokens())
        docs = [{k: row[k] for k in ("name", "scope", "created", "revoked")} for row in rows]
    emit(docs, _TOKEN_COLUMNS, docs, as_json=as_json, empty="no tokens")


def register(cli: click.Group) -> None:
    for command in (serve_cmd, tokens_group):
        cli.add_command(command)
