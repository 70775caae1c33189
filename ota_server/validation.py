"""Request input: bodies read whole, and small checks that each raise BadRequest naming the
field."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ota_server import state
from ota_server.errors import ApiError, BadRequest, PayloadTooLarge
from ota_server.storage.blobs import check_blob_id

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_json_object(body: bytes, what: str) -> dict[str, Any]:
    """Parse a JSON object; raises BadRequest (`bad_json`) with the reason."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BadRequest(f"{what}: body is not JSON ({err})", code="bad_json") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"{what}: body must be a JSON object", code="bad_json")
    return doc


class BodyTimeout(ApiError):
    """The body did not arrive whole in time (408); the connection is closed after the answer."""

    status = 408
    code = "body_timeout"


async def read_body(request: web.Request, limit: int, what: str) -> bytes:
    """The whole body of `request`, however many TCP segments or chunks it arrives in: up to
    its declared Content-Length, or to the end of a chunked body. Empty when there is none.

    The one way a handler or middleware reads a body whole (docs/protocol.md, "Bodies").
    Raises PayloadTooLarge when the declared or the received length is over `limit` (nothing
    past `limit + 1` bytes is read), BodyTimeout when the body is not whole within the
    settings' `body_timeout`, BadRequest `bad_body` when its framing breaks (a malformed chunk,
    fewer bytes than declared before the connection ends).
    """
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"{what}: body is larger than {limit} bytes")
    if not request.body_exists:
        return b""
    timeout = request.app[state.SETTINGS].limits.body_timeout
    try:
        if request.content.is_eof():  # all of it came with the head (the usual case)
            # read_nowait: the whole body is buffered already, no await needed (figure S1)
            body = request.content.read_nowait()
            if len(body) > limit:
                raise PayloadTooLarge(f"{what}: body is larger than {limit} bytes")
            return body
        async with asyncio.timeout(timeout):
            return await _read_to_end(request.content, limit, what)
    except TimeoutError:
        raise BodyTimeout(f"{what}: the body did not arrive whole within {timeout:g} s") \
            from None
    except HttpProcessingError:
        # aiohttp's payload errors (broken chunked framing, a short body); their text may
        # quote the client's bytes, so it is not echoed
        raise BadRequest(f"{what}: the body's framing is broken (Content-Length or "
                         f"chunked encoding)", code="bad_body") from None


async def _read_to_end(reader: StreamReader, limit: int, what: str) -> bytes:
    body = bytearray()
    # read(n) answers what has arrived so far (b"" only at the end): loop to the end
    while chunk := await reader.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"{what}: body is larger than {limit} bytes")
    return bytes(body)


async def read_json(request: web.Request, what: str, limit: int) -> dict[str, Any]:
    """The body read whole (read_body) and parsed as a JSON object (parse_json_object)."""
    return parse_json_object(await read_body(request, limit, what), what)


def optional(doc: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str,
             *, max_len: int = 64) -> Any:
    """`doc[name]` if present and of `kind` (bool is never an int here), else None."""
    value = doc.get(name)
    if value is None:
        return None
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BadRequest(f"{what}: field {name!r} must be {names}, got "
                         f"{type(value).__name__}", code="bad_field")
    if isinstance(value, str) and len(value) > max_len:
        raise BadRequest(f"{what}: field {name!r} is longer than {max_len} characters",
                         code="bad_field")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise BadRequest(f"{what}: field {name!r} is out of range", code="bad_field")
    return value


def required(doc: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str,
             *, max_len: int = 64) -> Any:
    value = optional(doc, name, kind, what, max_len=max_len)
    if value is None:
        raise BadRequest(f"{what}: field {name!r} is required", code="bad_field")
    return value


def name(value: str, what: str) -> str:
    """An app, channel or tag name: [A-Za-z0-9._-], 1..64, not starting with punctuation."""
    if not NAME.fullmatch(value):
        raise BadRequest(f"{what} {value[:80]!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}",
                         code="bad_name")
    return value


def blob_id(value: str) -> str:
    try:
        return check_blob_id(value)
    except ValueError as err:
        raise BadRequest(str(err), code="bad_blob_id") from None
