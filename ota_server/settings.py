"""Server settings: one frozen value built from fleet values, then the environment, then flags.

Later sources win. Limits are data here, not literals in the handlers. Reading fleet.yaml
itself is tools.fleet's job; `ota serve` passes what it found (root path, port, rollout policy,
declared channels).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# An X-Accel-Redirect prefix (--blob-accel): an absolute URI path of plain segments.
_ACCEL_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)+/?")
MAX_ACCEL_PREFIX = 200
# Download grants (ota_server.grants): how long one is valid by default, and at most. Long
# enough for a pack on a slow link and its resumptions; short, as a grant outlives a
# revocation by that much (docs/threat-model.md).
DEFAULT_GRANT_LIFETIME_S = 900
MAX_GRANT_LIFETIME_S = 86_400


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names which one and where."""


@dataclass(frozen=True)
class Limits:
    """Request size caps (bytes), time bounds (seconds) and the connection cap.

    The time bounds and the cap are enforced by ota_server.connections (headers, idle
    connections, open connections) and ota_server.validation.read_body (bodies);
    docs/operations.md gives the reasons for the defaults.
    """

    max_blob_bytes: int = 16 * 1024 * 1024
    max_json_bytes: int = 64 * 1024
    # Read cap for envelope uploads; signing.limits then enforces the board's smaller cap.
    max_envelope_bytes: int = 64 * 1024
    max_query_bytes: int = 1024 * 1024
    max_device_body_bytes: int = 4 * 1024
    # A request's line and headers must arrive whole within this, from the connection's start
    # or from the first byte of a later request on it.
    header_timeout: float = 10.0
    # A body read whole (JSON, envelopes, board requests) must arrive within this.
    body_timeout: float = 30.0
    # A blob upload (`PUT /v1/blobs/…`, up to max_blob_bytes) must arrive within this.
    upload_timeout: float = 600.0
    # An idle keep-alive connection is closed after this (longer than a proxy's usual 60 s).
    keepalive_timeout: float = 75.0
    # An answer must be taken by the client within send_timeout plus one second per
    # send_rate_floor bytes of its body (the board's own rule for what it reads:
    # bootloader_py/ota/update.py), or the connection is cut.
    send_timeout: float = 60.0
    send_rate_floor: float = 1024.0
    max_connections: int = 1000


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    root_path: Path | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    json_logs: bool = False
    limits: Limits = field(default_factory=Limits)
    # The policy of rollouts started without one (from fleet.yaml's `rollout:`); None means
    # ota_server.rollout.DEFAULT_STAGES and friends.
    default_policy: dict[str, Any] | None = None
    # https served directly (docs/operations.md, TLS): a PEM certificate chain and its key.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # The channels fleet.yaml declares (`ota serve --fleet`): any other is refused. None (no
    # fleet): any valid channel name is taken.
    channels: tuple[str, ...] | None = None
    # The metadata store: None for the embedded SQLite file in the data directory, else a
    # postgresql:// URL (docs/operations.md, "Scale-out"). Never logged: it may hold a password.
    db_url: str | None = field(default=None, repr=False)
    # The blob store: None for the data directory's blobs/, else s3://BUCKET?endpoint=...
    # (keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    blobs_url: str | None = None
    # Whole-blob answers handed to nginx (docs/operations.md, "Blobs sent by nginx"): the
    # replica answers `X-Accel-Redirect: PREFIX/<aa>/<sha256>`, an `internal` location of nginx
    # maps PREFIX to the blob directory. None: the server sends every blob itself (sendfile).
    blob_accel: str | None = None
    # The bound of the S3 store's local blob cache in bytes; None: the store's default (2 GiB,
    # ota_server.storage.s3.DEFAULT_CACHE_MAX_BYTES).
    blob_cache_bytes: int | None = None
    # Download grants (docs/protocol.md, "Download grants"): the HMAC key's file, shared by
    # every replica and nginx. None: DIR/grant.key on the embedded store (created at the first
    # start), and no grants at all on a shared database unless one file is named for all.
    grant_key: Path | None = None
    grant_lifetime: int = DEFAULT_GRANT_LIFETIME_S
    # The event loop serving connections: "uvloop" (default) or "asyncio" (Python's own;
    # ota_server.connections.event_loop_factory).
    event_loop: str = "uvloop"
    # Processes serving connections on the embedded store (`--workers`, ota_server.workers):
    # 1 is the server itself; more share its listening socket and its SQLite file.
    workers: int = 1

    @property
    def grant_key_path(self) -> Path | None:
        """The grant key file this server uses, None when it issues and takes no grants."""
        if self.grant_key is not None:
            return self.grant_key
        return self.data_dir / "grant.key" if self.db_url is None else None

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mpota.sqlite3"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def blob_cache_dir(self) -> Path:
        """The local read-through cache of an S3 blob store (blobs sent with sendfile)."""
        return self.data_dir / "blob-cache"


# Environment variable -> (settings field, parser).
_ENV: dict[str, tuple[str, Any]] = {
    "MPOTA_DATA": ("data_dir", Path),
    "MPOTA_ROOT": ("root_path", Path),
    "MPOTA_HOST": ("host", str),
    "MPOTA_PORT": ("port", int),
    "MPOTA_TLS_CERT": ("tls_cert", Path),
    "MPOTA_TLS_KEY": ("tls_key", Path),
    "MPOTA_JSON_LOGS": ("json_logs", lambda v: v.strip().lower() in ("1", "true", "yes")),
    "MPOTA_DB": ("db_url", str),
    "MPOTA_BLOBS": ("blobs_url", str),
    "MPOTA_BLOB_ACCEL": ("blob_accel", str),
    "MPOTA_GRANT_KEY": ("grant_key", Path),
    "MPOTA_GRANT_LIFETIME": ("grant_lifetime", str),
    "MPOTA_EVENT_LOOP": ("event_loop", str),
    "MPOTA_WORKERS": ("workers", str),
}

# Environment variable -> Limits field; flags use the field name. Each must be > 0.
_LIMIT_ENV: dict[str, str] = {
    "MPOTA_HEADER_TIMEOUT": "header_timeout",
    "MPOTA_BODY_TIMEOUT": "body_timeout",
    "MPOTA_UPLOAD_TIMEOUT": "upload_timeout",
    "MPOTA_KEEPALIVE_TIMEOUT": "keepalive_timeout",
    "MPOTA_SEND_TIMEOUT": "send_timeout",
    "MPOTA_SEND_RATE_FLOOR": "send_rate_floor",
    "MPOTA_MAX_CONNECTIONS": "max_connections",
}


def load_settings(
    flags: Mapping[str, Any],
    *,
    fleet_values: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge `fleet_values`, then MPOTA_* environment variables, then non-None `flags`.

    Raises SettingsError naming the setting when a value is missing or malformed.
    """
    values: dict[str, Any] = dict(fleet_values or {})
    env = os.environ if environ is None else environ
    for var, (name, parse) in _ENV.items():
        if var in env and env[var] != "":
            try:
                values[name] = parse(env[var])
            except ValueError as err:
                raise SettingsError(f"environment variable {var}: {err}") from err
    values.update({k: v for k, v in flags.items() if v is not None})
    if "data_dir" not in values:
        raise SettingsError("no data directory: give --data DIR or set MPOTA_DATA")
    try:
        port = int(values.get("port", DEFAULT_PORT))
    except (TypeError, ValueError) as err:
        raise SettingsError(f"port: not an integer: {values.get('port')!r}") from err
    if not 0 <= port <= 65535:
        raise SettingsError(f"port: {port} is out of range")
    settings = Settings(data_dir=Path(values["data_dir"]),
                        limits=_limits(values, env))
    blobs_url = check_blobs_url(values.get("blobs_url"), env)
    root = values.get("root_path")
    tls_cert, tls_key = values.get("tls_cert"), values.get("tls_key")
    if (tls_cert is None) != (tls_key is None):
        raise SettingsError("TLS needs both --tls-cert and --tls-key (or MPOTA_TLS_CERT and "
                            "MPOTA_TLS_KEY), not one of them")
    return replace(
        settings,
        root_path=Path(root) if root is not None else None,
        host=str(values.get("host", DEFAULT_HOST)),
        port=port,
        json_logs=bool(values.get("json_logs", False)),
        default_policy=values.get("default_policy"),
        tls_cert=Path(tls_cert) if tls_cert is not None else None,
        tls_key=Path(tls_key) if tls_key is not None else None,
        channels=tuple(values["channels"]) if values.get("channels") is not None else None,
        db_url=check_db_url(values.get("db_url")),
        blobs_url=blobs_url,
        blob_accel=check_blob_accel(values.get("blob_accel")),
        blob_cache_bytes=_blob_cache_bytes(values, env, blobs_url, settings.limits),
        grant_key=Path(values["grant_key"]) if values.get("grant_key") is not None else None,
        grant_lifetime=check_grant_lifetime(values.get("grant_lifetime")),
        event_loop=_one_of("event loop", EVENT_LOOPS, values.get("event_loop")),
        workers=check_workers(values.get("workers"), values.get("db_url"), blobs_url),
    )


EVENT_LOOPS = ("uvloop", "asyncio")


def _one_of(what: str, choices: tuple[str, ...], given: Any) -> str:
    """A setting with a fixed set of values: `given`, the first of `choices` when not given."""
    if given is None:
        return choices[0]
    if given not in choices:
        raise SettingsError(f"{what}: must be one of {', '.join(choices)}, "
                            f"got {str(given)[:40]!r}")
    return str(given)


def check_grant_lifetime(given: Any) -> int:
    """A download grant's lifetime in whole seconds, 60..MAX_GRANT_LIFETIME_S (the default when
    `given` is None); SettingsError naming the setting otherwise."""
    if given is None:
        return DEFAULT_GRANT_LIFETIME_S
    return _whole_number(given, "--grant-lifetime / MPOTA_GRANT_LIFETIME", "seconds",
                         60, MAX_GRANT_LIFETIME_S)


def _whole_number(given: Any, what: str, unit: str, low: int, high: int) -> int:
    """`given` as a whole number of `unit` in low..high; SettingsError naming the setting
    `what` otherwise (a sign, a fraction or a string of digits no setting is near is not
    one)."""
    text = str(given).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise SettingsError(f"{what}: not a whole number of {unit}: {str(given)[:40]!r}")
    value = int(text)
    if not low <= value <= high:
        suffix = " s" if unit == "seconds" else ""
        raise SettingsError(f"{what}: {value}{suffix} is outside {low}..{high}{suffix}")
    return value


# Worker processes at most: more than a machine's cores only adds SQLite lock waits.
MAX_WORKERS = 64


def check_workers(given: Any, db_url: str | None, blobs_url: str | None) -> int:
    """The number of worker processes, 1..MAX_WORKERS (1 when `given` is None); more than one
    only on the embedded store (SQLite and blobs/ in the data directory), whose file they
    share. SettingsError naming the setting otherwise."""
    if given is None:
        return 1
    what = "--workers / MPOTA_WORKERS"
    value = _whole_number(given, what, "processes", 1, MAX_WORKERS)
    if value > 1 and (db_url or blobs_url):
        raise SettingsError(f"{what}: several workers share the embedded store (the data "
                            "directory's SQLite file and blobs/); with --db or --blobs run "
                            "replicas instead (docs/operations.md, Scale-out components)")
    return value


def check_db_url(url: str | None) -> str | None:
    """`url` if it names a PostgreSQL database (postgresql://USER[:PASSWORD]@HOST[:PORT]/DB),
    None for the embedded SQLite store; SettingsError saying what is wrong otherwise (never
    echoing the URL, which may hold a password)."""
    if url is None or url == "":
        return None
    from ota_server.storage.postgres import check_dsn

    try:
        return check_dsn(url)
    except ValueError as err:
        raise SettingsError(f"--db / MPOTA_DB: {err}") from None


def check_blobs_url(url: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """`url` if it names an S3 bucket (s3://BUCKET?endpoint=http(s)://HOST:PORT) and `env`
    (default: os.environ) has its keys, None for the data directory's blobs/; SettingsError
    saying what is wrong otherwise (never showing a key)."""
    if url is None or url == "":
        return None
    from ota_server.storage.s3 import credentials_from_env, parse_s3_url

    try:
        parse_s3_url(url)
        credentials_from_env(os.environ if env is None else env)
    except ValueError as err:
        raise SettingsError(f"--blobs / MPOTA_BLOBS: {err}") from None
    return url


def check_blob_accel(prefix: str | None) -> str | None:
    """The X-Accel-Redirect prefix without a trailing slash (`/internal/blobs`), None when off;
    SettingsError unless it is an absolute URI path of plain segments (letters, digits,
    `.`, `_`, `~`, `-`; no `.` or `..` segment, no empty segment, no query)."""
    if prefix is None or prefix == "":
        return None
    what = "--blob-accel / MPOTA_BLOB_ACCEL"
    if len(prefix) > MAX_ACCEL_PREFIX:
        raise SettingsError(f"{what}: the prefix is {len(prefix)} characters, at most "
                            f"{MAX_ACCEL_PREFIX} are allowed")
    if not _ACCEL_PREFIX.fullmatch(prefix):
        raise SettingsError(f"{what}: {prefix[:60]!r} is not an absolute URI path prefix such "
                            "as /internal/blobs (segments of letters, digits, '.', '_', '~', "
                            "'-', starting with '/')")
    trimmed = prefix.rstrip("/")
    if any(segment in (".", "..") for segment in trimmed.split("/")):
        raise SettingsError(f"{what}: {prefix[:60]!r} has a '.' or '..' segment")
    return trimmed


def _blob_cache_bytes(values: Mapping[str, Any], env: Mapping[str, str], blobs_url: str | None,
                      limits: Limits) -> int | None:
    """The blob cache bound of the flags (`values`) or MPOTA_BLOB_CACHE_BYTES, None when
    neither gives one. SettingsError naming the setting when it is not a whole number of
    bytes, is smaller than the largest blob (limits.max_blob_bytes: such a blob could never
    stay cached), or is given without an S3 blob store (the only store with a cache)."""
    given, source = values.get("blob_cache_bytes"), "--blob-cache-bytes"
    if given is None and env.get("MPOTA_BLOB_CACHE_BYTES", "") != "":
        given = env["MPOTA_BLOB_CACHE_BYTES"]
        source = "environment variable MPOTA_BLOB_CACHE_BYTES"
    if given is None:
        return None
    text = str(given).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise SettingsError(f"{source}: not a whole number of bytes: {str(given)[:40]!r}")
    value = int(text)
    if value < limits.max_blob_bytes:
        raise SettingsError(f"{source}: {value} bytes is smaller than the largest blob "
                            f"({limits.max_blob_bytes} bytes); the cache must hold at least one")
    if blobs_url is None:
        raise SettingsError(f"{source}: only the S3 blob store has a cache (--blobs s3://...); "
                            "the data directory's blobs/ has no bound")
    return value


def _limits(values: Mapping[str, Any], env: Mapping[str, str]) -> Limits:
    """Limits with the time bounds and connection cap of `values` (flags) or `env`.

    Raises SettingsError naming the setting when one is not a positive number.
    """
    defaults = Limits()
    changes: dict[str, Any] = {}
    for var, name in _LIMIT_ENV.items():
        given, source = values.get(name), f"--{name.replace('_', '-')}"
        if given is None and env.get(var, "") != "":
            given, source = env[var], f"environment variable {var}"
        if given is None:
            continue
        kind = type(getattr(defaults, name))
        try:
            value = kind(given)
        except (TypeError, ValueError):
            raise SettingsError(f"{source}: not a number: {given!r}") from None
        if not 0 < value < float("inf"):  # NaN fails this too
            raise SettingsError(f"{source}: must be a positive number, got {given!r}")
        changes[name] = value
    return replace(defaults, **changes)
