"""Board endpoints: check-in, root metadata, blobs, status reports (docs/protocol.md).

Every handler here is `@device`: the auth middleware has already verified the board's signed
request and its counter, and put the board and the exact body bytes on the request.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from aiohttp import web

from ota_server import rollout, state
from ota_server.errors import BadRequest, NotFound
from ota_server.metrics import Metrics
from ota_server.middleware import device
from ota_server.storage import DEPLOYMENT_STATUSES, Device
from ota_server.storage.records import FINAL_STATUSES
from ota_server.validation import blob_id, name, optional, parse_json_object, required

ENVELOPE_TYPE = "application/vnd.dsse+json"
BLOB_CACHE = "public, max-age=31536000, immutable"
_MAX_REASON = 256


def _envelope(app: web.Application, release_id: int) -> bytes:
    cache = app[state.ENVELOPES]
    envelope = cache.get(release_id)
    if envelope is None:  # releases are immutable, so the cache never goes stale
        envelope = cache[release_id] = app[state.STORE].envelope(release_id)
    return envelope


def _counter(doc: dict[str, Any], field: str, what: str) -> int | None:
    value = optional(doc, field, int, what)
    if value is not None and value < 0:
        raise BadRequest(f"{what}: field {field!r} must not be negative", code="bad_field")
    return value


@device
async def checkin(request: web.Request) -> web.Response:
    """204: nothing new; 200: the envelope of the manifest to install. Records inventory."""
    found: Device = request[state.DEVICE]
    doc = parse_json_object(request[state.BODY], "check-in")
    what = "check-in"
    app_name = optional(doc, "app", str, what)
    if app_name:
        name(app_name, "check-in app")
    sequence = _counter(doc, "sequence", what)
    root_version = _counter(doc, "root_version", what)
    board = optional(doc, "board", str, what)
    slot = optional(doc, "slot", (str, int), what)
    inventory = {
        "app": app_name, "version": optional(doc, "version", str, what),
        "sequence": sequence, "root_version": root_version,
        "micropython": optional(doc, "micropython", str, what),
        "mem_free": _counter(doc, "mem_free", what),
        "slot": None if slot is None else str(slot),
    }
    store = request.app[state.STORE]
    # `found` was read just before the counter moved; write only what changed (last_seen
    # moved with the counter).
    changed = {k: v for k, v in inventory.items() if found.inventory.get(k) != v}
    store.record_checkin(found.device_id, changed)
    headers = {}
    latest = request.app[state.TRUST].latest.version
    if root_version is not None and latest > root_version:
        headers["X-Ota-Root"] = str(latest)
    metrics = request.app[state.METRICS]
    offer = rollout.release_for(store, found, app_name, sequence or 0, board or found.board)
    if offer is None:
        metrics.inc("mpota_checkins_total", outcome="nothing_new")
        return web.Response(status=204, headers=headers)
    if store.deployment_status(found.device_id, offer.id) is None:
        store.set_deployment(found.device_id, offer.id, "offered")
    metrics.inc("mpota_checkins_total", outcome="offered")
    return web.Response(body=_envelope(request.app, offer.id), content_type=ENVELOPE_TYPE,
                        headers=headers)


@device
async def root_metadata(request: web.Request) -> web.Response:
    """The root metadata envelope of one version, for a board walking a rotation."""
    raw = request.match_info["version"]
    if not re.fullmatch(r"[0-9]{1,9}", raw):
        raise BadRequest(f"root version must be a positive integer, got {raw[:20]!r}",
                         code="bad_version")
    envelope = request.app[state.TRUST].envelope(int(raw))
    if envelope is None:
        raise NotFound(f"no root metadata version {int(raw)}", code="unknown_root")
    return web.Response(body=envelope, content_type=ENVELOPE_TYPE)


class BlobResponse(web.StreamResponse):
    """One blob (or a range of it) sent with sendfile from an already open file.

    Not aiohttp's FileResponse: that opens and closes the file through the thread pool (two
    thread hops per request, the largest cost of a small download here) and tags files by
    mtime; blobs are immutable, local and named by their hash, so the tag is the hash.
    """

    def __init__(self, fobj: Any, offset: int, count: int, *, status: int,
                 headers: dict[str, str], metrics: Metrics):
        super().__init__(status=status, headers=headers)
        self.content_length = count
        self._fobj = fobj
        self._offset = offset
        self._count = count
        self._metrics = metrics

    async def prepare(self, request: web.BaseRequest) -> Any:
        try:
            writer = await super().prepare(request)
            if request.method != "HEAD" and self._count:
                await self._send(request, writer)
                await super().write_eof()
            self._metrics.inc("mpota_blob_requests_total", code=str(self.status))
            if request.method != "HEAD":
                self._metrics.inc("mpota_blob_bytes_served_total", self._count)
            return writer
        finally:
            self._fobj.close()

    async def _send(self, request: web.BaseRequest, writer: Any) -> None:
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        sent = _sendfile_now(transport, self._fobj, self._offset, self._count)
        if sent == self._count:
            return
        try:
            await asyncio.get_running_loop().sendfile(transport, self._fobj, self._offset + sent,
                                                      self._count - sent)
        except NotImplementedError:  # a transport without sendfile (TLS): copy in chunks
            self._fobj.seek(self._offset + sent)
            left = self._count - sent
            while left:
                chunk = self._fobj.read(min(left, 256 * 1024))
                if not chunk:
                    raise ConnectionResetError("blob shorter than its size") from None
                left -= len(chunk)
                await writer.write(chunk)


def _sendfile_now(transport: asyncio.BaseTransport, fobj: Any, offset: int, count: int) -> int:
    """Send what the socket takes right now, straight from the file; the bytes sent.

    One os.sendfile call on the plain TCP socket when nothing is queued ahead of it (the headers
    went out whole): a blob that fits the socket's send buffer then costs one system call and
    no event-loop round trips (loop.sendfile takes the transport apart and puts it back around
    each call). Anything else (a partly sent blob, a backlog, TLS) is left to loop.sendfile.
    """
    # Duck-typed: uvloop's transports are not registered as asyncio.WriteTransport.
    queued = getattr(transport, "get_write_buffer_size", None)
    if queued is None or transport.is_closing():
        return 0
    sock = transport.get_extra_info("socket")
    # Under TLS the raw socket carries ciphertext: never write plain bytes to it.
    if sock is None or transport.get_extra_info("sslcontext") is not None or queued():
        return 0
    try:
        return os.sendfile(sock.fileno(), fobj.fileno(), offset, count)
    except (BlockingIOError, InterruptedError):
        return 0


def _strong_tag(sha256: str) -> str:
    return f'"{sha256}"'


def _byte_range(request: web.Request, size: int) -> tuple[int, int] | None:
    """(offset, count) of the requested Range, None for the whole blob.

    Raises HTTPRequestRangeNotSatisfiable for a malformed or unsatisfiable range.
    """
    if "Range" not in request.headers:
        return None
    unsatisfiable = web.HTTPRequestRangeNotSatisfiable(
        headers={"Content-Range": f"bytes */{size}"})
    try:
        rng = request.http_range
    except ValueError:
        raise unsatisfiable from None
    start, stop = rng.start, rng.stop
    if start is not None and start < 0:  # suffix `bytes=-N`: the last N bytes
        start, stop = max(0, size + start), size
    start = start or 0
    stop = size if stop is None else min(stop, size)
    if start >= size or stop <= start:
        raise unsatisfiable
    return start, stop - start


@device
async def blob(request: web.Request) -> web.StreamResponse:
    """A blob by content address: Range, strong ETag, immutable caching, sendfile."""
    sha256 = blob_id(request.match_info["sha256"])
    metrics = request.app[state.METRICS]
    tag = _strong_tag(sha256)
    headers = {"ETag": tag, "Cache-Control": BLOB_CACHE,
               "Content-Type": "application/octet-stream"}
    try:
        # open/fstat of a local file take microseconds: cheaper inline than a thread hop
        fobj = request.app[state.BLOBS].open_blob(sha256)
    except FileNotFoundError:
        metrics.inc("mpota_blob_requests_total", code="404")
        raise NotFound(f"no blob {sha256}", code="unknown_blob") from None
    try:
        size = os.fstat(fobj.fileno()).st_size
        if_none_match = request.headers.get("If-None-Match", "")
        if tag in if_none_match or if_none_match.strip() == "*":
            metrics.inc("mpota_blob_requests_total", code="304")
            fobj.close()
            return web.Response(status=304, headers=headers)
        if_range = request.headers.get("If-Range")
        # A range of some other version: RFC 9110 says send the whole (current) content.
        wanted = None if if_range is not None and if_range.strip() != tag else \
            _byte_range(request, size)
    except BaseException:
        fobj.close()
        raise
    if wanted is None:
        return BlobResponse(fobj, 0, size, status=200, headers=headers, metrics=metrics)
    offset, count = wanted
    headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{size}"
    return BlobResponse(fobj, offset, count, status=206, headers=headers, metrics=metrics)


# Once confirmed, a deployment only changes again by a rollback.
def _may_replace(old: str | None, new: str) -> bool:
    return old != "confirmed" or new == "rolled_back"


@device
async def report(request: web.Request) -> web.Response:
    """Move the board's deployment of a release to `status`; may pause or advance the rollout."""
    found: Device = request[state.DEVICE]
    what = "report"
    doc = parse_json_object(request[state.BODY], what)
    app_name = name(required(doc, "app", str, what), "report app")
    sequence = _counter(doc, "sequence", what)
    if sequence is None:
        raise BadRequest("report: field 'sequence' is required", code="bad_field")
    status = required(doc, "status", str, what)
    if status not in DEPLOYMENT_STATUSES:
        raise BadRequest(f"report: status must be one of {list(DEPLOYMENT_STATUSES)}, "
                         f"got {status[:40]!r}", code="bad_status")
    version = optional(doc, "version", str, what)
    reason = optional(doc, "reason", str, what, max_len=_MAX_REASON)
    store = request.app[state.STORE]
    release_id = _deployment_for(store, found.device_id, app_name, sequence, status)
    if release_id is None:
        raise NotFound(f"no release {app_name!r} sequence {sequence} for this board",
                       code="unknown_release")
    if _may_replace(store.deployment_status(found.device_id, release_id), status):
        store.set_deployment(found.device_id, release_id, status, reason)
    inventory: dict[str, Any] = {"last_status": status}
    if status in ("failed", "rolled_back"):
        inventory["last_error"] = reason or status
    if status == "confirmed":
        release = store.release_by_id(release_id)
        assert release is not None
        inventory.update(app=release.app, version=release.version, sequence=release.sequence,
                         last_error=None)
    elif status == "rolled_back" and version is not None:
        inventory["version"] = version
    store.record_checkin(found.device_id, inventory)
    request.app[state.METRICS].inc("mpota_reports_total", status=status)
    if status in FINAL_STATUSES:
        rollout.after_report(store, found.channel, release_id)
    return web.Response(status=204)


def _deployment_for(store: Any, device_id: str, app: str, sequence: int,
                    status: str) -> int | None:
    """Which release a report is about.

    `failed` and `rolled_back` may name the version the board really runs (the old one), so
    they go to the board's unfinished deployment of a newer release first.
    """
    if status in ("failed", "rolled_back"):
        open_id = store.open_deployment(device_id, app)
        if open_id is not None:
            opened = store.release_by_id(open_id)
            if opened is not None and opened.sequence >= sequence:
                return int(open_id)
    release = store.release(app, sequence)
    return None if release is None else release.id
