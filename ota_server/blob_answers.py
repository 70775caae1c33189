"""Blob answers to boards: one blob by content address (`GET /v1/blobs/{sha256}`) and a pack of
several blobs back to back (`GET /v1/device/pack`), with Range, strong ETag, immutable caching
and sendfile (docs/protocol.md); with --blob-accel, a plain GET of a whole blob is handed to
nginx (X-Accel-Redirect, docs/operations.md, "Blobs sent by nginx").

Not aiohttp's FileResponse: that opens and closes the file through the thread pool (two thread
hops per request, the largest cost of a small download here) and tags files by mtime; blobs are
immutable, local and named by their hash, so the tag is the hash.

Both handlers are `@device`: the auth middleware has already verified the board's signed request
and its counter.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from aiohttp import web

from ota_server import state
from ota_server.errors import ApiError, BadRequest, NotFound
from ota_server.metrics import Metrics
from ota_server.middleware import download
from ota_server.ranges import RangeNotSatisfiable, byte_range
from ota_server.storage import BlobStore
from ota_server.storage.blobs import check_blob_id
from ota_server.storage.errors import StoreNotFound
from ota_server.validation import blob_id

BLOB_CACHE = "public, max-age=31536000, immutable"
# Blobs one pack request may name: a 64-id query line stays near 4 KiB.
MAX_PACK_BLOBS = 64


@dataclass(frozen=True)
class FileSpan:
    """`count` bytes of an open blob file, from `offset`."""

    fobj: BinaryIO
    offset: int
    count: int


class BlobResponse(web.StreamResponse):
    """Spans of already open blob files, sent back to back with sendfile: one blob, a range of
    it, or a pack (several blobs, or a range of their concatenation).

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
    except NotImplementedError:  # no sendfile for this transport (TLS) or loop (uvloop): copy
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


@download
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


@download
async def pack(request: web.Request) -> web.StreamResponse:
    """Several blobs back to back in one answer (`?blobs=<sha256>,...`): Range over their
    concatenation, sendfile file by file. Refusals are counted here, answers once sent."""
    metrics = request.app[state.METRICS]
    try:
        return await _pack_response(request, metrics)
    except (ApiError, web.HTTPException) as err:
        metrics.inc("mpota_pack_requests_total", code=str(err.status))
        raise
