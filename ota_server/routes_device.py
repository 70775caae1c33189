"""Board endpoints: check-in, root metadata, blobs, packs, status reports (docs/protocol.md).

Every handler here is `@device`: the auth middleware has already verified the board's signed
request and its counter, and put the board and the exact body bytes on the request.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from aiohttp import web

from ota_server import rollout, state
from ota_server.errors import ApiError, BadRequest, Conflict, NotFound
from ota_server.metrics import Metrics
from ota_server.middleware import device, device_records_behind
from ota_server.ranges import RangeNotSatisfiable, byte_range
from ota_server.storage import (
    DEPLOYMENT_STATUSES,
    BlobStore,
    BoardIdentity,
    Deployment,
    MetadataStore,
)
from ota_server.storage.blobs import check_blob_id
from ota_server.storage.errors import StoreNotFound
from ota_server.storage.records import FINAL_STATUSES
from ota_server.validation import blob_id, name, optional, parse_json_object, required

ENVELOPE_TYPE = "application/vnd.dsse+json"
BLOB_CACHE = "public, max-age=31536000, immutable"
# A report's reason: at most this many bytes of UTF-8, no control characters (docs/protocol.md,
# "Report reasons"). The board sends printable ASCII of at most 200 bytes for an app's
# exception; its other reasons are its own short messages.
MAX_REASON_BYTES = 256
# Blobs one pack request may name: a 64-id query line stays near 4 KiB.
MAX_PACK_BLOBS = 64


async def _envelope(app: web.Application, release_id: int) -> bytes:
    cache = app[state.ENVELOPES]
    envelope = cache.get(release_id)
    if envelope is None:  # releases are immutable, so the cache never goes stale
        envelope = cache[release_id] = await app[state.STORE].envelope(release_id)
    return envelope


def _counter(doc: dict[str, Any], field: str, what: str) -> int | None:
    value = optional(doc, field, int, what)
    if value is not None and value < 0:
        raise BadRequest(f"{what}: field {field!r} must not be negative", code="bad_field")
    return value


@device_records_behind
async def checkin(request: web.Request) -> web.Response:
    """204: nothing new; 200: the envelope of the manifest to install. Records inventory."""
    found: BoardIdentity = request[state.DEVICE]
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
    headers = {}
    latest = request.app[state.TRUST].latest.version
    if root_version is not None and latest > root_version:
        headers["X-Ota-Root"] = str(latest)
    metrics = request.app[state.METRICS]
    offer = await rollout.release_for(store, found, app_name, sequence or 0, board or found.board,
                                      epoch=request.get(state.FLEET_EPOCH))
    # Written behind (ota_server.counters): in the database before any later request is
    # handled. The whole inventory: `found` is the board's identity only (what never
    # changes), not its stored inventory.
    # Replicas (PostgreSQL) share the database: the board's next request (its report) may
    # reach another one, which must find the offer there, so the offer is written now (one
    # statement shared with the offers of the same turn of the loop) and only the inventory
    # behind (ota_server.counters, "Replicas").
    writes = request.app[state.BOARD_WRITES]
    offer_now = offer is not None and writes.shared
    writes.record_checkin(found.device_id, inventory,
                          None if offer is None or offer_now else offer.id, found.channel)
    if offer is None:
        metrics.inc("mpota_checkins_total", outcome="nothing_new")
        return web.Response(status=204, headers=headers)
    if offer_now:
        await writes.write_offer(found.device_id, offer.id, found.channel)
    metrics.inc("mpota_checkins_total", outcome="offered")
    return web.Response(body=await _envelope(request.app, offer.id), content_type=ENVELOPE_TYPE,
                        headers=headers)


@device
async def root_metadata(request: web.Request) -> web.Response:
    """The root metadata envelope of one version, for a board walking a rotation."""
    raw = request.match_info["version"]
    if not re.fullmatch(r"[0-9]{1,9}", raw):
        raise BadRequest(f"root version must be a positive integer, got {raw[:20]!r}",
                         code="bad_version")
    envelope = await request.app[state.TRUST].envelope(int(raw))
    if envelope is None:
        raise NotFound(f"no root metadata version {int(raw)}", code="unknown_root")
    return web.Response(body=envelope, content_type=ENVELOPE_TYPE)


@dataclass(frozen=True)
class FileSpan:
    """`count` bytes of an open blob file, from `offset`."""

    fobj: BinaryIO
    offset: int
    count: int


class BlobResponse(web.StreamResponse):
    """Spans of already open blob files, sent back to back with sendfile: one blob, a range of
    it, or a pack (several blobs, or a range of their concatenation).

    Not aiohttp's FileResponse: that opens and closes the file through the thread pool (two
    thread hops per request, the largest cost of a small download here) and tags files by
    mtime; blobs are immutable, local and named by their hash, so the tag is the hash.

    The response owns `files` from construction on and closes every one of them once it was
    prepared, whatever the outcome (sent, HEAD, client gone mid-body). `spans` say what is sent
    and refer to some of `files`. Once the whole body is out it counts the request under
    `requests_metric` by status, and the bytes in `mpota_blob_bytes_served_total`.
    """

    def __init__(self, files: Sequence[BinaryIO], spans: Sequence[FileSpan], *, status: int,
                 headers: dict[str, str], metrics: Metrics, requests_metric: str):
        super().__init__(status=status, headers=headers)
        self._files = files
        self._spans = spans
        self._count = sum(span.count for span in spans)
        self.content_length = self._count
        self._metrics = metrics
        self._requests_metric = requests_metric

    async def prepare(self, request: web.BaseRequest) -> Any:
        try:
            writer = await super().prepare(request)
            if request.method != "HEAD" and self._count:
                for span in self._spans:
                    await _send_span(request, writer, span)
                await super().write_eof()
            self._metrics.inc(self._requests_metric, code=str(self.status))
            if request.method != "HEAD":
                self._metrics.inc("mpota_blob_bytes_served_total", self._count)
            return writer
        finally:
            _close_all(self._files)


async def _send_span(request: web.BaseRequest, writer: Any, span: FileSpan) -> None:
    """Send one span after whatever went before it; raises ConnectionResetError when the
    connection is gone or the file is shorter than the span."""
    if not span.count:  # nothing to send (and asyncio's copying sendfile reads 0 as "to EOF")
        return
    transport = request.transport
    # loop.sendfile raises RuntimeError on a closing transport; aiohttp takes a ConnectionError
    # as the client having gone (a board cut off between two blobs of a pack), anything else
    # as a server bug.
    if transport is None or transport.is_closing():
        raise ConnectionResetError("connection lost")
    sent = _sendfile_now(transport, span.fobj, span.offset, span.count)
    if sent == span.count:
        return
    try:
        # loop.sendfile waits for the transport's queue to drain first, so bytes of an
        # earlier span still queued go out before these.
        sent += await asyncio.get_running_loop().sendfile(transport, span.fobj,
                                                          span.offset + sent, span.count - sent)
        if sent < span.count:  # it stops quietly at the end of the file
            # Content-Length promised more: cut the connection rather than let the board wait
            raise ConnectionResetError("blob shorter than its size")
    except NotImplementedError:  # a transport without sendfile (TLS): copy in chunks
        span.fobj.seek(span.offset + sent)
        left = span.count - sent
        while left:
            chunk = span.fobj.read(min(left, 256 * 1024))
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


def _close_all(files: Iterable[BinaryIO]) -> None:
    for fobj in files:
        fobj.close()


def _strong_tag(sha256: str) -> str:
    return f'"{sha256}"'


def _byte_range(request: web.Request, size: int) -> tuple[int, int] | None:
    """(offset, count) of the requested Range over `size` bytes, None for all of them.

    Raises HTTPRequestRangeNotSatisfiable for a malformed or unsatisfiable range
    (ota_server.ranges.byte_range says which).
    """
    try:
        return byte_range(request.headers.getall("Range", []), size)
    except RangeNotSatisfiable as err:
        raise web.HTTPRequestRangeNotSatisfiable(
            headers={"Content-Range": f"bytes */{size}"}, text=str(err)) from None


def _wanted_range(request: web.Request, size: int, tag: str | None) -> tuple[int, int] | None:
    """(offset, count) to send of content of `size` bytes whose strong tag is `tag` (None: the
    content has no tag), or None for all of it.

    A range of some other version (an `If-Range` that is not `tag`, and any `If-Range` when
    there is no tag): RFC 9110 says send the whole current content. Raises
    HTTPRequestRangeNotSatisfiable as _byte_range does.
    """
    if_range = request.headers.get("If-Range")
    if if_range is not None and (tag is None or if_range.strip() != tag):
        return None
    return _byte_range(request, size)


def _content_range(offset: int, count: int, size: int) -> str:
    return f"bytes {offset}-{offset + count - 1}/{size}"


# With --blob-accel the server still answers these itself: nginx's static module would judge
# a range or a condition by its own validators (the file's time and size), not by the blob's
# hash (docs/operations.md, "Blobs sent by nginx").
_SELF_ANSWERED = ("Range", "If-Range", "If-None-Match", "If-Match", "If-Modified-Since",
                  "If-Unmodified-Since")


@device
async def blob(request: web.Request) -> web.StreamResponse:
    """A blob by content address: Range, strong ETag, immutable caching, sendfile; or, with
    --blob-accel, a plain GET of the whole blob handed to nginx (X-Accel-Redirect)."""
    sha256 = blob_id(request.match_info["sha256"])
    metrics = request.app[state.METRICS]
    tag = _strong_tag(sha256)
    headers = {"ETag": tag, "Cache-Control": BLOB_CACHE,
               "Content-Type": "application/octet-stream"}
    accel = request.app[state.SETTINGS].blob_accel
    if accel is not None and request.method == "GET" \
            and not any(name in request.headers for name in _SELF_ANSWERED):
        handed = await _handed_to_nginx(request, sha256, accel, headers, metrics)
        if handed is not None:
            return handed
    try:
        fobj = await request.app[state.BLOBS].open_blob(sha256)
    except StoreNotFound:
        raise _unknown_blob(sha256, metrics) from None
    try:
        size = os.fstat(fobj.fileno()).st_size
        if_none_match = request.headers.get("If-None-Match", "")
        if tag in if_none_match or if_none_match.strip() == "*":
            metrics.inc("mpota_blob_requests_total", code="304")
            fobj.close()
            return web.Response(status=304, headers=headers)
        wanted = _wanted_range(request, size, tag)
    except BaseException:
        fobj.close()
        raise
    status, offset, count = (200, 0, size) if wanted is None else (206, *wanted)
    if status == 206:
        headers["Content-Range"] = _content_range(offset, count, size)
    return BlobResponse([fobj], [FileSpan(fobj, offset, count)], status=status,
                        headers=headers, metrics=metrics,
                        requests_metric="mpota_blob_requests_total")


def _unknown_blob(sha256: str, metrics: Metrics) -> NotFound:
    """The 404 for a blob that is not stored, counted."""
    metrics.inc("mpota_blob_requests_total", code="404")
    return NotFound(f"no blob {sha256}", code="unknown_blob")


async def _handed_to_nginx(request: web.Request, sha256: str, prefix: str,
                           headers: dict[str, str], metrics: Metrics) -> web.Response | None:
    """The answer that has nginx send the whole blob from the verified local file: the blob's
    headers and `X-Accel-Redirect: <prefix>/<aa>/<sha256>`, no body (nginx sets the length).
    None when the file went away at once (a cache smaller than its recent use): the caller
    sends the blob itself then. Raises NotFound (`unknown_blob`) when the blob is not stored."""
    try:
        # Verified, and kept at least ota_server.app.ACCEL_KEEP_SECONDS for nginx to open.
        path = await request.app[state.BLOBS].local_path(sha256)
    except StoreNotFound:
        raise _unknown_blob(sha256, metrics) from None
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return None
    headers["X-Accel-Redirect"] = f"{prefix}/{sha256[:2]}/{sha256}"
    metrics.inc("mpota_blob_requests_total", code="200")
    metrics.inc("mpota_blob_accel_total", code="200")
    metrics.inc("mpota_blob_accel_bytes_total", size)
    return web.Response(status=200, headers=headers)


def pack_blob_ids(raw_query: str) -> list[str]:
    """The blob ids of a pack request's query string, exactly as sent (not percent-decoded).

    The query is `blobs=<sha256>,<sha256>,...` and nothing else: 1..MAX_PACK_BLOBS ids, each
    64 lowercase hex digits, none repeated. Raises BadRequest naming what is wrong and where:
    `bad_blob_id` for a malformed id, `bad_field` for anything else.
    """
    value: str | None = None
    for part in raw_query.split("&") if raw_query else ():
        param, _, given = part.partition("=")
        if param != "blobs":
            raise BadRequest(f"pack: unknown query parameter {param[:40]!r}; the query is "
                             f"blobs=<sha256>,<sha256>,...", code="bad_field")
        if value is not None:
            raise BadRequest("pack: query parameter 'blobs' is given more than once",
                             code="bad_field")
        value = given
    if value is None:
        raise BadRequest("pack: query parameter 'blobs' is required "
                         "(?blobs=<sha256>,<sha256>,...)", code="bad_field")
    if not value:
        raise BadRequest(f"pack: 'blobs' is empty; give 1 to {MAX_PACK_BLOBS} blob ids",
                         code="bad_field")
    ids = value.split(",")
    if len(ids) > MAX_PACK_BLOBS:
        raise BadRequest(f"pack: 'blobs' has {len(ids)} ids, at most {MAX_PACK_BLOBS} are "
                         f"allowed", code="bad_field")
    seen: dict[str, int] = {}
    for position, sha256 in enumerate(ids):
        try:
            check_blob_id(sha256)
        except ValueError as err:
            raise BadRequest(f"pack: blobs[{position}]: {err}", code="bad_blob_id") from None
        if sha256 in seen:
            raise BadRequest(f"pack: blobs[{position}] repeats blobs[{seen[sha256]}] "
                             f"({sha256})", code="bad_field")
        seen[sha256] = position
    return ids


async def _open_blobs(blobs: BlobStore, ids: Sequence[str]) -> list[BinaryIO]:
    """Every blob of `ids` opened for reading, in order.

    Raises NotFound (`unknown_blob`) naming the first id that is not stored; nothing is left
    open then.
    """
    files: list[BinaryIO] = []
    try:
        for position, sha256 in enumerate(ids):
            try:
                files.append(await blobs.open_blob(sha256))
            except StoreNotFound:
                raise NotFound(f"pack: blobs[{position}]: no blob {sha256}",
                               code="unknown_blob") from None
    except BaseException:
        _close_all(files)
        raise
    return files


def pack_spans(files: Sequence[BinaryIO], sizes: Sequence[int], offset: int,
               count: int) -> list[FileSpan]:
    """The parts of `files` (of `sizes` bytes) that lie within bytes `offset` ..
    `offset + count - 1` of their concatenation, in order; files outside that get no span."""
    spans: list[FileSpan] = []
    stop = offset + count
    begins = 0  # where the current file begins in the concatenation
    for fobj, size in zip(files, sizes, strict=True):
        first, last = max(offset, begins), min(stop, begins + size)
        if first < last:
            spans.append(FileSpan(fobj, first - begins, last - first))
        begins += size
    return spans


async def _pack_response(request: web.Request, metrics: Metrics) -> BlobResponse:
    """The pack answer, files open; raises BadRequest, NotFound or
    HTTPRequestRangeNotSatisfiable, with no file left open."""
    ids = pack_blob_ids(request.rel_url.raw_query_string)
    files = await _open_blobs(request.app[state.BLOBS], ids)
    try:
        sizes = [os.fstat(fobj.fileno()).st_size for fobj in files]
        total = sum(sizes)
        wanted = _wanted_range(request, total, None)
    except BaseException:
        _close_all(files)
        raise
    # No ETag and no Cache-Control: a pack is one board's transfer of one update, not a
    # resource worth caching (docs/protocol.md); the per-blob GET is the cacheable one.
    headers = {"Content-Type": "application/octet-stream"}
    status, offset, count = (200, 0, total) if wanted is None else (206, *wanted)
    if status == 206:
        headers["Content-Range"] = _content_range(offset, count, total)
    return BlobResponse(files, pack_spans(files, sizes, offset, count), status=status,
                        headers=headers, metrics=metrics,
                        requests_metric="mpota_pack_requests_total")


@device
async def pack(request: web.Request) -> web.StreamResponse:
    """Several blobs back to back in one answer (`?blobs=<sha256>,...`): Range over their
    concatenation, sendfile file by file. Refusals are counted here, answers once sent."""
    metrics = request.app[state.METRICS]
    try:
        return await _pack_response(request, metrics)
    except (ApiError, web.HTTPException) as err:
        metrics.inc("mpota_pack_requests_total", code=str(err.status))
        raise


# Reports that may name the release the board runs rather than the one that failed.
_REDIRECTED = ("failed", "rolled_back")


# Once confirmed, a deployment only changes again by a rollback.
def _may_replace(old: str | None, new: str) -> bool:
    return old != "confirmed" or new == "rolled_back"


@device
async def report(request: web.Request) -> web.Response:
    """Move the board's deployment of a release to `status`; may pause or advance the rollout
    of the channel that opened the deployment.

    Only a deployment the server opened for this board (a check-in offered it the release)
    moves: a report about anything else is refused (404 `unknown_release`, 409 `not_offered`),
    counted in `mpota_reports_refused_total` and changes nothing but the board's counter.
    """
    found: BoardIdentity = request[state.DEVICE]
    what = "report"
    doc = parse_json_object(request[state.BODY], what)
    app_name = required(doc, "app", str, what)
    sequence = _counter(doc, "sequence", what)
    if sequence is None:
        raise BadRequest("report: field 'sequence' is required", code="bad_field")
    status = required(doc, "status", str, what)
    if status not in DEPLOYMENT_STATUSES:
        raise BadRequest(f"report: status must be one of {list(DEPLOYMENT_STATUSES)}, "
                         f"got {status[:40]!r}", code="bad_status")
    # A board that runs no app yet reports a failed first install with app "" (it names
    # what it runs); anything else must name an app.
    if app_name or status not in _REDIRECTED:
        name(app_name, "report app")
    version = optional(doc, "version", str, what)
    reason = report_reason(doc.get("reason"))
    store = request.app[state.STORE]
    metrics = request.app[state.METRICS]
    offline = doc.get("offline") in (1, True)
    try:
        try:
            deployment = await _deployment_for(store, found.device_id, app_name, sequence, status)
        except (NotFound, Conflict):
            if not offline:
                raise
            deployment = await _offline_deployment(store, found, app_name, sequence)
    except ApiError as err:
        metrics.inc("mpota_reports_refused_total", code=err.code)
        raise
    inventory: dict[str, Any] = {"last_status": status}
    if status in ("failed", "rolled_back"):
        inventory["last_error"] = reason or status
    if status == "confirmed":
        release = await store.release_by_id(deployment.release_id)
        assert release is not None
        inventory.update(app=release.app, version=release.version, sequence=release.sequence,
                         last_error=None)
    elif status == "rolled_back" and version is not None:
        inventory["version"] = version
    # The move, its history row and the inventory: one transaction, one commit.
    if not (_may_replace(deployment.status, status) and await store.set_deployment(
            found.device_id, deployment.release_id, status, reason, inventory=inventory)):
        await store.record_checkin(found.device_id, inventory)
    metrics.inc("mpota_reports_total", status=status)
    if status in FINAL_STATUSES:
        await rollout.after_report(store, deployment.channel, deployment.release_id,
                                   epoch=request.get(state.FLEET_EPOCH))
    return web.Response(status=204)


def report_reason(value: Any) -> str | None:
    """A report's `reason`: None (absent or null) or a string of at most MAX_REASON_BYTES
    bytes of UTF-8 without control characters (C0, DEL, C1: what could forge lines or
    escape sequences on an operator's terminal). Raises BadRequest (`bad_field`) saying
    which rule it broke; nothing is stored then."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"report: field 'reason' must be a string or null, got "
                         f"{type(value).__name__}", code="bad_field")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate (a \ud800 escape): not text
        raise BadRequest("report: field 'reason' is not valid UTF-8 (a lone surrogate)",
                         code="bad_field") from None
    if size > MAX_REASON_BYTES:
        raise BadRequest(f"report: field 'reason' is {size} bytes of UTF-8, at most "
                         f"{MAX_REASON_BYTES} are allowed", code="bad_field")
    for at, char in enumerate(value):
        if char < " " or "\x7f" <= char <= "\x9f":
            raise BadRequest(f"report: field 'reason' has control character U+{ord(char):04X} "
                             f"at {at}", code="bad_field")
    return value


# The channel of a deployment a board opened itself, by installing a release over USB: no
# channel is named so, so no rollout ever counts it (docs/protocol.md, Reports).
OFFLINE_CHANNEL = ""


async def _offline_deployment(store: MetadataStore, device: BoardIdentity, app: str,
                              sequence: int) -> Deployment:
    """The deployment of a release the board says it installed over USB (`offline`: ota
    install, docs/board.md), opened now if the server had none: its history and inventory
    record it, and no rollout counts it. Raises NotFound (`unknown_release`) for a release
    the server does not have, Conflict (`wrong_board`) for one not built for this board."""
    named = await store.release(app, sequence) if app else None
    if named is None:
        raise NotFound(f"no release {app!r} sequence {sequence} for this board",
                       code="unknown_release")
    if device.board not in named.boards:
        raise Conflict(f"{app} sequence {sequence} is not a release for board "
                       f"{device.board!r}", code="wrong_board")
    await store.open_deployment_for(device.device_id, named.id, OFFLINE_CHANNEL)
    opened = await store.deployment(device.device_id, named.id)
    assert opened is not None
    return opened


async def _deployment_for(store: MetadataStore, device_id: str, app: str, sequence: int,
                          status: str) -> Deployment:
    """The deployment a report is about: one the server opened for this board.

    The report names a release by (`app`, `sequence`). `failed` and `rolled_back` may name the
    release the board runs (the old one, e.g. when the new manifest failed to verify): when
    the board has no deployment of the named release, or has confirmed it, they go to its
    newest unfinished deployment of a newer release of the app (of any app for a board that
    runs none: `app` "", `sequence` 0).
    Raises NotFound (`unknown_release`) when neither the release nor such a deployment exists,
    Conflict (`not_offered`) when the release exists but was never offered to this board.
    """
    named = await store.release(app, sequence) if app else None
    opened = None if named is None else await store.deployment(device_id, named.id)
    if status in _REDIRECTED and (opened is None or opened.status == "confirmed"):
        newer_id = await store.open_deployment(device_id, app or None)
        newer = None if newer_id is None else await store.release_by_id(newer_id)
        if newer is not None and newer.sequence > sequence:
            deployment = await store.deployment(device_id, newer.id)
            if deployment is not None:
                return deployment
    if opened is not None:
        return opened
    if named is None:
        raise NotFound(f"no release {app!r} sequence {sequence} for this board",
                       code="unknown_release")
    raise Conflict(f"{app} sequence {sequence} was never offered to this board: a report "
                   f"counts only for a release the server offered it", code="not_offered")
