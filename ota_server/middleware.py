"""Middlewares: domain errors -> JSON bodies, per-route authentication, request logging.

Every handler declares who may call it with one of the decorators `@public`, `@reader`,
`@publisher`, `@admin` or `@device` (`@device_records_behind`: a board request that
needs none of the board's check-in records in the database first); a handler without a
declaration is refused (deny by default). The three publisher decorators differ in the token
scope they need (read, publish, admin: ota_server.tokens); every call to a publish or admin
route is written to the audit log with its outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiohttp import web

from ota_server import state
from ota_server.errors import ApiError, Forbidden, Unauthorized
from ota_server.grants import is_grant
from ota_server.storage import AuditEntry, Token
from ota_server.storage.errors import StoreUnavailable
from ota_server.tokens import allows, token_hash
from ota_server.validation import read_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AuthKind = Literal["public", "publisher", "device", "download"]
_AUTH_ATTR = "mpota_auth"
_SCOPE_ATTR = "mpota_scope"
_RECORDS_ATTR = "mpota_records_first"
log = logging.getLogger("ota_server")


def _declare(kind: AuthKind, scope: str | None = None, *,
             records_first: bool = True) -> Callable[[Handler], Handler]:
    def mark(handler: Handler) -> Handler:
        setattr(handler, _AUTH_ATTR, kind)
        setattr(handler, _SCOPE_ATTR, scope)
        setattr(handler, _RECORDS_ATTR, records_first)
        return handler
    return mark


public = _declare("public")
reader = _declare("publisher", "read")
publisher = _declare("publisher", "publish")
admin = _declare("publisher", "admin")
device = _declare("device")
# A board's download (blobs, packs): a signed request as `device`, or the download grant its
# offer carried (ota_server.grants): one HMAC, no counter.
download = _declare("download")
_BOARD_KINDS = ("device", "download")
# A board request whose handler reads and writes none of the board's check-in records queued
# behind (ota_server.counters: its inventory, offers on one server): its counter is committed
# without them, and they go in with the timer's write or the board's next other request.
device_records_behind = _declare("device", records_first=False)


def auth_kind(handler: Any) -> AuthKind | None:
    """The declared auth of a route handler (None: undeclared, so refused)."""
    return getattr(handler, _AUTH_ATTR, None)


def required_scope(handler: Any) -> str | None:
    """The token scope a publisher route needs (None for other routes)."""
    return getattr(handler, _SCOPE_ATTR, None)


def error_body(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


# What a 503 for an unavailable store tells clients to wait (a PostgreSQL restart takes a few
# seconds; boards retry at their own check-in interval anyway).
RETRY_AFTER_SECONDS = 5
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large",
               416: "range_not_satisfiable"}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map ApiError and aiohttp's own HTTP errors to `{"code", "message"}` JSON."""
    try:
        return await handler(request)
    except ApiError as err:
        if err.status == 401:
            request.app[state.METRICS].inc("mpota_auth_failures_total", code=err.code)
        response = error_body(err.status, err.code, err.message)
        if err.status == 408:
            # the rest of a late body may still trickle in: close rather than wait for it
            response.force_close()
        return response
    except web.HTTPException as err:
        if err.status < 400:
            raise
        code = _HTTP_CODES.get(err.status, "http_error")
        response = error_body(err.status, code, err.reason if err.text is None else
                              _http_message(err))
        for name in ("Allow", "Content-Range"):
            if name in err.headers:
                response.headers[name] = err.headers[name]
        return response
    except StoreUnavailable as err:
        # The database or object store is down or restarting: worth retrying soon, and
        # nothing the request would have written is half-done (ota_server.storage.errors).
        log.warning("%s %s: %s", request.method, request.path, err)
        request.app[state.METRICS].inc("mpota_store_unavailable_total")
        response = error_body(503, "unavailable", "storage is unavailable; retry later")
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    except Exception:
        # A bug, not the client's fault: log it, answer without leaking internals.
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_body(500, "internal", "internal server error")


def _http_message(err: web.HTTPException) -> str:
    text = (err.text or "").strip()
    if err.status == 413:
        return f"request body too large ({text})"
    return text or err.reason


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate by the route's declared kind before the handler runs."""
    if request.match_info.http_exception is not None:
        return await handler(request)  # no such route: 404/405 without asking who
    kind = auth_kind(request.match_info.handler)
    if kind == "public":
        return await handler(request)
    if kind == "publisher":
        token = await _require_publisher(request)
        needed = required_scope(request.match_info.handler) or "admin"
        if needed == "read":
            if not allows(token.scope, needed):
                raise _scope_refusal(token, needed)
            await request.app[state.BOARD_WRITES].flush()
            return await handler(request)
        return await _audited(request, handler, token, needed)
    if kind in _BOARD_KINDS:
        header = request.headers.get("Authorization")
        if kind == "download" and is_grant(header):
            _check_grant(request, header)
        else:
            await _authenticate_device(request)
        return await handler(request)
    log.error("route %s %s declares no auth; refused", request.method, request.path)
    raise Unauthorized("this route is not open to anyone", code="no_auth_declared")


def _scope_refusal(token: Token, needed: str) -> Forbidden:
    return Forbidden(f"this call needs a token of scope {needed!r}; token {token.name!r} has "
                     f"scope {token.scope!r} (an admin creates one with `ota tokens create NAME "
                     f"--scope {needed}`)", code="insufficient_scope")


async def _audited(request: web.Request, handler: Handler, token: Token,
                   needed: str) -> web.StreamResponse:
    """Run a state-changing publisher call and write who, what, when and its outcome to the
    audit log, whatever the outcome (a refusal for scope included)."""
    status, outcome = 500, "internal"
    try:
        if not allows(token.scope, needed):
            raise _scope_refusal(token, needed)
        # Publishers see every check-in answered so far (ota_server.counters writes behind).
        await request.app[state.BOARD_WRITES].flush()
        response = await handler(request)
        status, outcome = response.status, "ok"
        return response
    except ApiError as err:
        status, outcome = err.status, err.code
        raise
    except web.HTTPException as err:
        status, outcome = err.status, "http_error"
        raise
    finally:
        await record_audit(request, token, status, outcome)


async def record_audit(request: web.Request, token: Token, status: int,
                       outcome: str) -> None:
    """Write one audit entry for this request: `token`'s name and scope as who, the method and
    route as what (the handler's AUDIT_TARGET, else the route's values, as its target), and
    how it ended. The API's publisher routes and the dashboard's actions both write here."""
    target = request.get(state.AUDIT_TARGET) or " ".join(
        f"{k}={v}" for k, v in request.match_info.items())
    await request.app[state.STORE].add_audit(AuditEntry(
        at=int(time.time()), actor=token.name, scope=token.scope,
        action=f"{request.method} {request.match_info.route.resource.canonical}"
        if request.match_info.route.resource else f"{request.method} {request.path}",
        target=target[:200], status=status, outcome=outcome))


async def _require_publisher(request: web.Request) -> Token:
    header = request.headers.get("Authorization", "")
    if not header:
        raise Unauthorized("this endpoint needs `Authorization: Bearer <publisher token>`",
                           code="missing_credentials")
    scheme, _, token = header.partition(" ")
    if scheme != "Bearer" or not token.strip():
        raise Unauthorized("publisher endpoints take `Authorization: Bearer <token>`",
                           code="bad_credentials")
    digest = token_hash(token.strip())
    found = await request.app[state.STORE].token(digest)
    if found is None:
        raise Unauthorized("unknown or revoked publisher token", code="bad_token")
    return found


async def _authenticate_device(request: web.Request) -> None:
    limit = request.app[state.SETTINGS].limits.max_device_body_bytes
    # the signature covers the whole body: read it whole first (however it was split)
    body = await read_body(request, limit, "device request")
    verified = await request.app[state.DEVICE_AUTH].authenticate(
        request.headers.get("Authorization"), request.method, request.raw_path, body,
        records_first=getattr(request.match_info.handler, _RECORDS_ATTR, True))
    request[state.DEVICE] = verified.board
    request[state.COUNTER] = verified.counter
    if verified.fleet_epoch is not None:
        request[state.FLEET_EPOCH] = verified.fleet_epoch
    request[state.BODY] = body


def _check_grant(request: web.Request, header: str) -> None:
    """Accept a download grant (ota_server.grants) or raise Unauthorized. A grant names its
    board but carries no counter: nothing is written, the body (a GET has none) is not read."""
    key = request.app.get(state.GRANTS)
    if key is None:
        raise Unauthorized("this server gives no download grants; sign the request",
                           code="bad_credentials")
    request[state.GRANTED] = key.check(header, time.time())
    request.app[state.METRICS].inc("mpota_grant_requests_total")


# Headers aiohttp adds that no client of ours reads. Boards pay for every header byte (figure
# D3); `Server` also names our software and versions to anyone who asks.
_UNREAD_HEADERS = ("Server",)
_UNREAD_BY_BOARDS = ("Server", "Date")


async def trim_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: drop headers nobody reads, before they are written.

    Board answers also go without `Date`: boards have no use for it (they are told whether
    something is new, blobs are immutable), and RFC 9111 has a cache that stores an answer
    without `Date` add its own.
    """
    board = auth_kind(request.match_info.handler) in _BOARD_KINDS
    for name in _UNREAD_BY_BOARDS if board else _UNREAD_HEADERS:
        response.headers.popall(name, None)


@web.middleware
async def log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One log line per request: method, path, status, duration, board (never credentials)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        if log.isEnabledFor(logging.INFO):
            _log_request(request, status, started)


def _log_request(request: web.Request, status: int, started: float) -> None:
    found = request.get(state.DEVICE)
    device_id = found.device_id if found else request.get(state.GRANTED)
    log.info("%s %s %d %.1fms", request.method, request.path, status,
             (time.perf_counter() - started) * 1000,
             extra={"method": request.method, "path": request.path, "status": status,
                    "device_id": device_id})
