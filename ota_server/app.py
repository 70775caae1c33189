"""The application factory: one route table, typed state, storage opened in cleanup_ctx."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from aiohttp import web

from ota_server import blob_answers, openapi, routes_device, routes_publisher, state, ui
from ota_server.counters import CounterCommits
from ota_server.datadir import WORKERS_DIR, DataDirLock
from ota_server.device_auth import DeviceAuthenticator
from ota_server.grants import GrantKey
from ota_server.metrics import SAVE_INTERVAL_S, Metrics
from ota_server.middleware import (
    auth_middleware,
    errors_middleware,
    log_middleware,
    public,
    trim_headers,
)
from ota_server.settings import Settings
from ota_server.storage import BlobStore, MetadataStore
from ota_server.storage.blobs import FileBlobStore
from ota_server.storage.sqlite import SqliteStore
from ota_server.tls import ServerTls
from ota_server.trust import TrustAnchor

log = logging.getLogger("ota_server")


@public
async def healthz(request: web.Request) -> web.Response:
    """Liveness and readiness: the store answers."""
    await request.app[state.STORE].schema_version()
    return web.json_response({"status": "ok"})


@public
async def metrics(request: web.Request) -> web.Response:
    text = await request.app[state.METRICS].render(request.app[state.STORE])
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


@public
async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


# With --blob-accel, cache files used this recently are never evicted: nginx opens the file an
# answer names moments after it left (seconds at most, even on a loaded host).
ACCEL_KEEP_SECONDS = 30.0

P = routes_publisher
D = routes_device
B = blob_answers

# The one route table: (method, path, handler). Auth is declared on each handler.
ROUTES: list[tuple[str, str, object]] = [
    ("GET", "/healthz", healthz),
    ("GET", "/metrics", metrics),
    ("GET", "/openapi.json", openapi_document),
    # boards
    ("POST", "/v1/device/checkin", D.checkin),
    ("GET", "/v1/device/root/{version}", D.root_metadata),
    ("GET", "/v1/blobs/{sha256}", B.blob),
    ("GET", "/v1/device/pack", B.pack),
    ("POST", "/v1/device/report", D.report),
    # publishers
    ("PUT", "/v1/blobs/{sha256}", P.put_blob),
    ("POST", "/v1/blobs/missing", P.missing_blobs),
    ("POST", "/v1/releases", P.register_release),
    ("POST", "/v1/releases/sequence", P.reserve_sequence),
    ("GET", "/v1/releases", P.list_releases),
    ("GET", "/v1/releases/{app}/{version}", P.release_envelope),
    ("GET", "/v1/releases/{app}/{version}/blobs/{sha256}", P.release_blob),
    ("POST", "/v1/releases/{app}/{version}/yank", P.yank_release),
    ("POST", "/v1/roots", P.upload_root),
    ("GET", "/v1/roots", P.list_roots),
    ("POST", "/v1/devices", P.register_device),
    ("GET", "/v1/devices", P.list_devices),
    ("GET", "/v1/devices/{device_id}", P.show_device),
    ("POST", "/v1/devices/{device_id}/revoke", P.revoke_device),
    ("GET", "/v1/channels", P.list_channels),
    ("GET", "/v1/channels/{channel}/rollout", P.rollout_status),
    ("POST", "/v1/channels/{channel}/rollout", P.rollout_start),
    ("POST", "/v1/channels/{channel}/rollout/pause", P.rollout_pause),
    ("POST", "/v1/channels/{channel}/rollout/resume", P.rollout_resume),
    ("POST", "/v1/channels/{channel}/rollout/abort", P.rollout_abort),
    ("POST", "/v1/channels/{channel}/rollout/advance", P.rollout_advance),
    ("GET", "/v1/audit", P.list_audit),
    ("GET", "/v1/tokens", P.list_tokens),
    ("POST", "/v1/tokens", P.create_token),
    ("POST", "/v1/tokens/{name}/revoke", P.revoke_token),
]

# GET routes without HEAD: a board knows a pack's length from its manifest, so a HEAD would
# spend a signed request (and a counter) to learn nothing; it gets 405.
GET_WITHOUT_HEAD = frozenset({"/v1/device/pack"})


def create_app(settings: Settings, *, worker: int | None = None) -> web.Application:
    """The server as an aiohttp application; storage opens on startup, closes on cleanup.

    `worker`: this application serves as worker number `worker` of `ota serve --workers N`,
    whose supervisor holds the data directory's lock, prepared the store and clears `blobs/tmp`
    (ota_server.workers); None: it is the server's only process and does all of that itself.
    Startup raises ota_server.trust.TrustSetupError when no trust anchor can be set up.
    """
    app = web.Application(
        middlewares=[log_middleware, errors_middleware, auth_middleware],
        # Bodies read whole (JSON, envelopes) stay under this; blobs stream with their own cap.
        client_max_size=max(settings.limits.max_json_bytes, settings.limits.max_envelope_bytes),
    )
    app[state.SETTINGS] = settings
    if worker is None:
        app[state.METRICS] = Metrics()
    else:
        app[state.WORKER] = worker
        app[state.METRICS] = Metrics(settings.data_dir / WORKERS_DIR, worker)
        app.cleanup_ctx.append(_save_metrics)
    app[state.ENVELOPES] = {}
    if settings.tls_cert is not None and settings.tls_key is not None:
        # Raises ota_server.tls.TlsSetupError now, before the server binds its port.
        app[state.TLS] = ServerTls(settings.tls_cert, settings.tls_key)
        app.cleanup_ctx.append(_reload_tls_on_sighup)
    app.cleanup_ctx.append(_storage)
    app.on_response_prepare.append(trim_headers)
    for method, path, handler in ROUTES:
        # GET routes answer HEAD too, as HTTP expects (but GET_WITHOUT_HEAD); the auth is the
        # same.
        if method == "GET":
            app.router.add_get(path, handler,  # type: ignore[arg-type]
                               allow_head=path not in GET_WITHOUT_HEAD)
        else:
            app.router.add_route(method, path, handler)  # type: ignore[arg-type]
    ui.setup(app)  # the fleet dashboard under /ui/ (docs/dashboard.md)
    return app


async def _storage(app: web.Application) -> AsyncIterator[None]:
    settings = app[state.SETTINGS]
    worker = state.WORKER in app
    lock = DataDirLock(settings.data_dir)
    if not worker:  # a worker's supervisor holds it (and the worker a copy of it)
        lock.acquire()  # one server per data directory (its SQLite file, blobs/, blob-cache/)
    try:
        grant_key = settings.grant_key_path
        if grant_key is not None:  # GrantKeyError now, before the store opens
            app[state.GRANTS] = GrantKey.load_or_create(grant_key)
        async with AsyncExitStack() as stack:
            store = await open_metadata_store(settings, worker=worker)
            stack.push_async_callback(store.close)
            blobs = await open_blob_store(settings, worker=worker)
            stack.push_async_callback(blobs.close)
            app[state.STORE] = store
            app[state.BLOBS] = blobs
            trust = app[state.TRUST] = await TrustAnchor.load(store, settings.root_path)
            stack.push_async_callback(trust.close)  # before the store closes
            await trust.follow()  # roots stored through other replicas (PostgreSQL)
            # On PostgreSQL other replicas serve the same boards (ota_server.counters,
            # "Replicas"). The workers of one server on SQLite write offers behind, as a lone
            # server does: a report through another worker waits for them (PEER_OFFER_WAIT_S,
            # ota_server.routes_device), which costs check-ins nothing (figure S3).
            writes = app[state.BOARD_WRITES] = CounterCommits(
                store, shared=settings.db_url is not None)
            app[state.DEVICE_AUTH] = DeviceAuthenticator(store, writes)
            yield
            await writes.close()  # the check-in records written behind, before the store closes
    finally:
        lock.release()


async def open_metadata_store(settings: Settings, *, worker: bool = False) -> MetadataStore:
    """The metadata store the settings name: the data directory's SQLite file (migrated as it
    opens; a `worker`'s supervisor migrated it and checkpoints its WAL: ota_server.workers), or
    PostgreSQL, which must already be at this code's schema (`ota db migrate`: replicas never
    migrate on their own). Raises StoreError (StoreUnavailable when the database cannot be
    reached)."""
    if settings.db_url is None:
        return SqliteStore(settings.db_path,
                           checkpoints="elsewhere" if worker else "thread")
    from ota_server.storage.postgres import PostgresStore

    store = await PostgresStore.open(settings.db_url)
    try:
        await store.require_schema()
    except BaseException:
        await store.close()
        raise
    return store


async def open_blob_store(settings: Settings, *, worker: bool = False) -> BlobStore:
    """The blob store the settings name: the data directory's blobs/ (whose `tmp/` a `worker`
    leaves to its supervisor), or an S3 bucket with a local read-through cache in the data
    directory, bounded by settings.blob_cache_bytes (ValueError for missing S3 keys)."""
    if settings.blobs_url is None:
        return FileBlobStore(settings.blob_dir, clear_tmp=not worker)
    from ota_server.storage.s3 import DEFAULT_CACHE_MAX_BYTES, S3BlobStore

    bound = settings.blob_cache_bytes
    # nginx opens a file after the answer naming it left (X-Accel-Redirect): one used that
    # recently must still be there (docs/operations.md, "Blobs sent by nginx").
    keep = ACCEL_KEEP_SECONDS if settings.blob_accel is not None else 0.0
    return await S3BlobStore.open(settings.blobs_url, settings.blob_cache_dir,
                                  cache_max_bytes=DEFAULT_CACHE_MAX_BYTES if bound is None
                                  else bound, keep_recent=keep)


async def _save_metrics(app: web.Application) -> AsyncIterator[None]:
    """A worker's counters saved for the other workers' scrapes (ota_server.metrics), about
    once a second and once more when it stops."""
    import asyncio

    metrics = app[state.METRICS]
    (app[state.SETTINGS].data_dir / WORKERS_DIR).mkdir(exist_ok=True)

    async def every_second() -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL_S)
            try:
                metrics.save()
            except OSError as err:  # a full disk: the next pass tries again
                log.warning("cannot save this worker's metrics: %s", err)

    task = asyncio.get_running_loop().create_task(every_second())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(OSError):
            metrics.save()


async def _reload_tls_on_sighup(app: web.Application) -> AsyncIterator[None]:
    """SIGHUP loads the certificate and key again (a renewal without a restart)."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, app[state.TLS].reload)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread: no signals
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
