"""The connection layer under the app: time bounds, the connection cap, JSON parser errors.

aiohttp parses requests in its RequestHandler (one per connection) before any route or
middleware runs. Three things are decided there, so they are decided here:

- how long a client may take to send a request's line and headers (`header_timeout`), and
  how long an idle keep-alive connection stays open (`keepalive_timeout`);
- how long a client may take to take an answer (`send_timeout` + a second per
  `send_rate_floor` bytes of the body), so a client that stops reading frees its connection;
- how many connections are open at once (`max_connections`);
- the answer to a request the parser refuses (an oversized line, a malformed header or
  framing): JSON `{"code", "message"}` as everywhere else, never the client's bytes echoed.

Bodies get their own deadline where they are read (ota_server.validation.read_body). The
limits and their defaults are in docs/operations.md; the errors in docs/protocol.md.

Memory: a closed connection leaves no reference cycle, so its objects are freed the moment it
closes, not by Python's cycle collector. Boards open a connection per request; with a cycle
each (the protocol and its request body, asyncio's transport and its own read callback), the
collector's passes grew with the connections of the last moments and, at ~1,700 connections a
second, came in storms that held every board up (figure S3, docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)

# _ErrInfo: what the parser queues in place of a request it could not parse
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from ota_server import state
from ota_server.settings import Limits, Settings

log = logging.getLogger("ota_server")

# What the parser refused -> (code, message). The parser's own message quotes the request's
# bytes (and a pointer into them), so it is never sent; the first class that matches wins.
_PARSE_ERRORS: list[tuple[type[Exception], str, str]] = [
    (LineTooLong, "too_long", "the request line or a header is longer than the server takes"),
    (BadHttpMethod, "bad_method", "the request line does not start with an HTTP method "
                                  "(TLS sent to a plain HTTP port?)"),
    (BadStatusLine, "bad_request_line", "the request line is not `METHOD target HTTP/1.x`"),
    (InvalidURLError, "bad_target", "the request target is not a valid URL path"),
    (InvalidHeader, "bad_header", "a header is malformed"),
    (PayloadEncodingError, "bad_body", "the body's framing is broken (Content-Length or "
                                       "chunked encoding)"),
]


def _parse_error(exc: BaseException | None) -> tuple[str, str]:
    for kind, code, message in _PARSE_ERRORS:
        if isinstance(exc, kind):
            return code, message
    return "bad_http", "the request is not well-formed HTTP/1.1 (request line, headers or " \
                       "framing)"


def raw_json_answer(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer with a JSON error body that closes the connection, for the
    places where no request object exists to answer through."""
    body = json.dumps({"code": code, "message": message}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


class GuardedRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol with a header deadline, a place under the connection
    cap and JSON answers to requests the parser refuses."""

    def __init__(self, manager: GuardedServer, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False
        # loop time since which this connection waits for a request's head (None: handling a
        # request); the connection waiting longest is shed first when the cap is reached
        self.waiting_since: float | None = None
        self._head_started = False
        # the body of the last request when its handler left some of it unread: aiohttp reads
        # and drops the rest (lingering) before the next head, and those bytes are no head
        self._unread_body: Any = None
        # the body of the newest request: a parse error while it arrives is its framing
        # breaking, which its reader must learn at once (not at its deadline)
        self._newest_body: Any = None
        self._framing_broken = False
        # the socket transport under this connection (under TLS's own), untied when it closes
        self._carrier: asyncio.BaseTransport | None = None

    # -- connection lifetime ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(self):
            self._refused = True
            writer = cast(asyncio.Transport, transport)  # duck-typed: uvloop's too
            writer.write(raw_json_answer(
                503, "Service Unavailable", "too_many_connections",
                f"the server holds {self._guard.limits.max_connections} connections busy "
                f"with requests; try again later"))
            writer.close()
            _untie_reader(writer)  # closed: it reads nothing more
            return
        super().connection_made(transport)
        self._carrier = _socket_transport(transport)
        # the first request's head is due `header_timeout` after the connection opens: a
        # client that connects and says nothing is closed then too
        self._start_waiting()
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.release(self)
        self._cancel_header_timer()
        # The request bodies refer back to this handler (their protocol): dropped, so the
        # connection's objects go when their last reference does, not at the cycle collector's
        # next pass (module docstring, "Memory").
        self._newest_body = self._unread_body = None
        _untie_reader(self._carrier)
        self._carrier = None
        if self._refused:
            return  # never set up (connection_made refused it)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        lingering = self._unread_body is not None and not self._unread_body.is_eof()
        starts_head = self.waiting_since is not None and bool(data) and not lingering
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:  # the parser completed a request's head (or failed)
            self._cancel_header_timer()
            self._stop_waiting()
            self._head_started = False
            self._note_new_messages(list(self._messages)[heads - self._request_count:])
        elif starts_head:
            # The head is still incomplete: its deadline runs from this first byte. Armed only
            # now, so a head that arrives whole (nearly every one) costs no timer (figure S1).
            self._head_started = True
            if self._header_timer is None:  # the first byte of a later request's head
                self._arm_header_timer()

    def _note_new_messages(self, new: list[tuple[Any, Any]]) -> None:
        for message, body in new:
            if not isinstance(message, _ErrInfo):
                self._newest_body = body
            elif self._newest_body is not None and not self._newest_body.is_eof():
                # aiohttp queues the error as a next request and leaves this body waiting
                self._newest_body.set_exception(PayloadEncodingError("broken body framing"))
                self._framing_broken = True

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        # Sending the answer (a blob's sendfile, a large JSON's drain) waits for the client to
        # take it; one that stops reading is cut at the send deadline. A timer, not wait_for:
        # it costs no task per request (figure S1).
        task = asyncio.current_task()
        cut = False

        def send_timed_out() -> None:
            nonlocal cut
            cut = True
            log.info("cut a connection: the client did not take its answer within the send "
                     "deadline")
            if task is not None:
                task.cancel()

        deadline = self._loop.call_later(self._send_deadline(resp), send_timed_out)
        try:
            answered = await super().finish_response(request, resp, start_time)
        except asyncio.CancelledError:
            if not cut or task is None:
                raise
            # Cancelled, not aborted: the cancel unwinds loop.sendfile (which gives the socket
            # back to its transport) and the response's clean-up (which closes its files);
            # an abort alone would leave the sendfile waiting for ever.
            task.uncancel()
            if self.transport is not None:
                # abort, and before force_close (which closes): a close waits to flush exactly
                # the bytes nobody takes, and a copied answer (TLS, uvloop: no sendfile) has
                # them queued in the transport, so the connection stayed open
                self.transport.abort()
            self.force_close()
            return resp, True
        finally:
            deadline.cancel()
        if self._framing_broken or resp.status == 408:
            # nothing more on this connection can be trusted or is worth waiting for
            self.force_close()
            return answered
        self._unread_body = None if request.content.is_eof() else request.content
        if not self._messages:
            # idle from now on (keepalive_timeout); the next head's deadline starts with its
            # first byte
            self._start_waiting()
        return answered

    def _start_waiting(self) -> None:
        self.waiting_since = self._loop.time()
        self._guard.waits(self)

    def _stop_waiting(self) -> None:
        self.waiting_since = None
        self._guard.busy(self)

    # -- the send deadline --------------------------------------------------------------------

    def _send_deadline(self, resp: web.StreamResponse) -> float:
        """send_timeout, plus a second per send_rate_floor bytes of the body: the board's own
        rule for how long a body of that size may take (docs/operations.md, Limits)."""
        size = resp.content_length
        if size is None and isinstance(resp, web.Response) and isinstance(resp.body, bytes):
            size = len(resp.body)
        limits = self._guard.limits
        return limits.send_timeout + (size or 0) / limits.send_rate_floor

    # -- the header deadline ------------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self._loop.call_later(self._guard.limits.header_timeout,
                                                   self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or self.waiting_since is None:
            return
        if self._head_started:  # a client that said something gets told why
            transport.write(raw_json_answer(
                408, "Request Timeout", "header_timeout",
                f"the request line and headers did not arrive within "
                f"{self._guard.limits.header_timeout:g} s"))
        self.force_close()

    def shed(self) -> None:
        """Close this connection (it waits for a request) to make room for a new one."""
        self.force_close()

    # -- JSON for what the parser refuses -----------------------------------------------------

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """The answer to a request aiohttp could not parse or handle: JSON, no input echoed,
        the connection closed after it. Raises ConnectionError when an answer has already
        begun (as aiohttp's own does)."""
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already sent; cannot send the error")
        if status >= 500:
            self.log_exception("error handling a request", exc_info=exc)
            code, text = "internal", "internal server error"
        else:
            code, text = _parse_error(exc)
            # the client's fault: one line, no traceback, none of its bytes
            log.info("refused a malformed request: %d %s (%s)", status, code,
                     type(exc).__name__)
        response = _ParserErrorResponse(text=json.dumps({"code": code, "message": text}),
                                        status=status, content_type="application/json",
                                        headers={"Connection": "close"})
        response.force_close()
        return response


def _socket_transport(transport: asyncio.BaseTransport) -> asyncio.BaseTransport | None:
    """The asyncio socket transport carrying `transport`: itself for plain TCP, the one under
    asyncio's TLS transport (whose protocol lets go of it before this connection's
    connection_lost runs, hence taken now); None for others (uvloop's)."""
    if hasattr(transport, "_read_ready_cb"):
        return transport
    under = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    return under if hasattr(under, "_read_ready_cb") else None


def _untie_reader(transport: asyncio.BaseTransport | None) -> None:
    """Break the cycle an asyncio socket transport makes with itself: on Python 3.11 it keeps
    its read callback as its own bound method (`_read_ready_cb`), so a closed transport, its
    socket and buffers wait for the cycle collector. Called once the transport is closed and
    reads nothing more; the no-op stands in should a read event still be queued. Transports
    without that attribute (uvloop's) are left alone."""
    if transport is not None and hasattr(transport, "_read_ready_cb"):
        transport._read_ready_cb = _read_nothing  # type: ignore[attr-defined]


def _read_nothing() -> None:
    """A closed transport's read callback (_untie_reader)."""


class _ParserErrorResponse(web.Response):
    """An answer without `Server`, as every answer (docs/protocol.md): with no route matched,
    the app's on_response_prepare (middleware.trim_headers) does not run for it."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall("Server", None)


class GuardedServer(web.Server):
    """aiohttp's low-level server making GuardedRequestHandler connections under a cap."""

    def __init__(self, handler: Any, *, limits: Limits, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.limits = limits
        self._open: set[GuardedRequestHandler] = set()
        # The open connections waiting for a request, longest-waiting first (a dict keeps its
        # insertion order, and a connection re-enters at the end each time it starts to wait):
        # at the cap the one to shed is the first, found without looking at the others. A
        # scan of every open connection per new one made an overloaded server slower still
        # (figure S3, docs/benchmarks.md).
        self._waiting: dict[GuardedRequestHandler, None] = {}

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)

    def admit(self, newcomer: GuardedRequestHandler) -> bool:
        """Take `newcomer` under the cap, shedding the connection that has waited longest for
        a request (idle or with a head still arriving) when the cap is reached; False when
        every open connection is busy with a request."""
        if len(self._open) >= self.limits.max_connections:
            if not self._waiting:
                return False
            oldest = next(iter(self._waiting))
            self.release(oldest)
            oldest.shed()
        self._open.add(newcomer)
        return True

    def waits(self, handler: GuardedRequestHandler) -> None:
        """`handler` waits for a request from now on (its waiting_since is now)."""
        self._waiting.pop(handler, None)
        self._waiting[handler] = None

    def busy(self, handler: GuardedRequestHandler) -> None:
        """`handler` has a request's head and no longer waits."""
        self._waiting.pop(handler, None)

    def release(self, handler: GuardedRequestHandler) -> None:
        self._open.discard(handler)
        self._waiting.pop(handler, None)


class GuardedAppRunner(web.AppRunner):
    """web.AppRunner serving the app through GuardedServer with `limits`."""

    __slots__ = ("_limits",)

    def __init__(self, app: web.Application, limits: Limits, **kwargs: Any):
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout, **kwargs)
        self._limits = limits

    # aiohttp has no public way to choose the protocol class: AppRunner builds a plain Server
    # (after starting the app), and the same arguments build a GuardedServer instead.
    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(plain.request_handler, limits=self._limits,
                             request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation,
                             loop=asyncio.get_running_loop(), **plain._kwargs)


# Connections the kernel holds for `ota serve` until it accepts them (aiohttp's default is
# 128). Boards open a new connection per request: at ~1,700 a second (figure S3) 128 is
# 75 ms of a busy server, after which the kernel drops SYNs and boards retry a second later.
# The kernel caps it at net.core.somaxconn (4096 on current Linux).
LISTEN_BACKLOG = 2048


def run(app: web.Application, settings: Settings, *, announce: Callable[[str], None],
        listening: Sequence[socket.socket] = ()) -> None:
    """Serve `app` until SIGINT or SIGTERM: on settings.host:settings.port, or on the
    `listening` sockets a worker's supervisor bound for it (ota_server.workers).

    Raises what the app's start-up raises (ota_server.trust.TrustSetupError) and OSError when
    the address cannot be bound.
    """
    with contextlib.suppress(web.GracefulExit), \
            asyncio.Runner(loop_factory=event_loop_factory(settings.event_loop)) as runner:
        runner.run(_serve(app, settings, announce, listening))


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory of an `event_loop` setting: uvloop's (the default: libuv's accept,
    socket and timer handling in C, ~8 % less CPU per new-connection check-in than asyncio's
    own, figure S3 in docs/benchmarks.md) or None for asyncio's, also where uvloop is not
    installed (it has no Windows build), which is logged."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed: serving on asyncio's event loop")
            return None
        return uvloop.new_event_loop
    return None


async def _serve(app: web.Application, settings: Settings, announce: Callable[[str], None],
                 listening: Sequence[socket.socket]) -> None:
    # No TCP keepalive probes: every phase of a connection is bounded by a deadline of its own
    # (header, body, send, keep-alive; docs/operations.md), all of which fire long before the
    # kernel's first probe (2 hours), and turning them on costs a system call per connection.
    runner = GuardedAppRunner(app, settings.limits, handle_signals=True, access_log=None,
                              shutdown_timeout=5, tcp_keepalive=False)
    try:
        await runner.setup()
        tls = app.get(state.TLS)
        context = tls.context if tls is not None else None
        sites: list[web.BaseSite] = [web.SockSite(runner, sock, ssl_context=context)
                                     for sock in listening]
        if not sites:
            sites.append(web.TCPSite(runner, settings.host, settings.port, ssl_context=context,
                                     backlog=LISTEN_BACKLOG))
        for site in sites:
            await site.start()
        # What start-up made (modules, classes, the app, the store's connections) lives as
        # long as the process: out of the cycle collector's way, so its full passes scan only
        # what serving allocates (figure S3: they grew to 100-300 ms under 100,000 boards).
        gc.collect()
        gc.freeze()
        announce(f"Running on {', '.join(site.name for site in sites)}")
        await asyncio.Event().wait()  # until a signal raises GracefulExit
    finally:
        await runner.cleanup()
