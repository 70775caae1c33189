# Streaming HTTP/1.1 client over socket (+ tls for https), micropython-lib style.
#
# One request per connection (Connection: close). The body is never read whole: the caller
# pulls it with fill() through its own buffer, and reading stops at Content-Length. Every
# request has one deadline, timeout_s from its start: the connect, the TLS handshake, the
# request's writes and every read wait on select.poll no later than it, so a server that
# drips or stalls cannot hold the board (docs/board.md, Deadlines). Every number taken from an
# answer is parsed strictly (_number).
import socket
import time

from micropython import const

from ota.fail import HttpError  # ota.http.HttpError; defined where the client shares it

_MAX_HEADER_LINES = const(48)
_LINE = const(200)
_DIGITS = const(9)  # the longest number read from an answer: below 2**30, a small int on boards
# select.POLLIN, POLLOUT, POLLERR | POLLHUP: the same on every port (py/stream.h MP_STREAM_POLL_*,
# and Linux's poll.h on the unix port)
_POLLIN = const(1)
_POLLOUT = const(4)
_POLLFAIL = const(0x18)


def _wait(poller, sock, mask, deadline):
    """Wait until sock is ready for mask (_POLLIN/_POLLOUT); returns the poll's events.

    Raises HttpError("timeout") at the deadline: the only place a request waits."""
    poller.modify(sock, mask)
    left = time.ticks_diff(deadline, time.ticks_ms())
    ready = poller.poll(left) if left > 0 else None
    if not ready:
        raise HttpError("timeout")
    return ready[0][1]


def _number(value, what):
    """value as a decimal number: 1 to _DIGITS ASCII digits and nothing else (no sign, no
    space, no '0x'); HttpError naming `what` otherwise."""
    if not 0 < len(value) <= _DIGITS:
        raise HttpError("bad " + what)
    for c in value:
        if not 48 <= c <= 57:
            raise HttpError("bad " + what)
    return int(value)


class Response:
    """Status, the few headers the client needs, and the body via fill()."""

    def __init__(self, sock, poller, deadline):
        self.sock = sock
        self.poller = poller
        self.deadline = deadline
        self.status = 0
        self.length = None
        self.root = None
        self.range_start = None
        self.range_end = None
        self.left = 0
        self.pend = b""  # bytes received past the header lines: the body's first ones

    def _some(self, mv):
        """Read what has arrived into mv: at least one byte, 0 at the end of the stream.

        The socket is non-blocking (request()): each read takes only what is there, and the
        wait for more (poll) ends at the request's deadline. Blocking readinto() or
        readline() would loop in C until the buffer or the line is full, restarting the
        socket's timeout at every byte: a server dripping bytes could hold one call, and the
        board's boot, for minutes. The deadline is looked at before every read too: a server
        that never lets the reads wait (an endless header line) is cut off as well.
        """
        while True:
            if time.ticks_diff(self.deadline, time.ticks_ms()) <= 0:
                raise HttpError("timeout")
            try:
                n = self.sock.readinto(mv)
            except OSError as e:
                raise HttpError("read failed: " + str(e))
            if n is not None:
                return n
            _wait(self.poller, self.sock, _POLLIN, self.deadline)

    def readinto(self, mv):
        """Fill up to len(mv) body bytes; 0 only at the end of the declared body.

        Raises HttpError when the stream ends before the declared body does, and at the body's
        last byte when more has arrived than Content-Length declared."""
        n = min(len(mv), self.left)
        if n <= 0:
            return 0
        if self.pend:  # the body's first bytes came with the header lines
            got = min(n, len(self.pend))
            mv[:got] = self.pend[:got]
            self.pend = self.pend[got:]
        else:
            got = self._some(mv[:n])
        if not got:
            raise HttpError("truncated body")
        self.left -= got
        if not self.left and self._over():
            raise HttpError("body longer than its Content-Length")
        return got

    def _over(self):
        """True when bytes past the declared body have arrived (those there by now)."""
        if self.pend:
            return True
        try:
            return bool(self.sock.readinto(bytearray(1)))  # None: nothing there; 0: closed
        except OSError:
            return False  # a reset after the last byte: the body is whole

    def fill(self, mv):
        """Fill all of mv from the body; returns the bytes read, at least one.

        Fewer than len(mv) only when the stream failed after some arrived: they are kept and
        the fault comes back at the next call. Raises HttpError when no byte can be had (the
        deadline, a closed stream, or mv reaching past the declared body), so a caller's loop
        either advances or ends. A whole buffer per call makes the writes that follow a fixed
        sequence, whatever the network's segment sizes (the power-cut tests count them)."""
        got = 0
        while got < len(mv):
            try:
                n = self.readinto(mv[got:])
            except HttpError:
                if got and self.left:
                    return got  # keep what arrived; the fault comes back at the next read
                raise
            if not n:
                break
            got += n
        if not got or got < len(mv):
            raise HttpError("read past the end of the body")
        return got

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _readline(self):
        """The next header line (at most _LINE bytes; a longer one comes in pieces)."""
        while True:
            at = self.pend.find(b"\n")
            if at >= 0 or len(self.pend) >= _LINE:
                cut = at + 1 if 0 <= at < _LINE else _LINE
                line = self.pend[:cut]
                self.pend = self.pend[cut:]
                return line
            scratch = bytearray(_LINE)
            n = self._some(scratch)
            if not n:
                raise HttpError("connection closed in headers")
            self.pend += scratch[:n]

    def _read_head(self):
        line = self._readline()
        parts = line.split(None, 2)
        # a status line longer than a line read would leave its tail to be read as a header
        if (line[-1:] != b"\n" or len(parts) < 2 or not parts[0].startswith(b"HTTP/1.")
                or len(parts[1]) != 3):
            raise HttpError("bad status line")
        self.status = _number(parts[1], "status line")
        for _ in range(_MAX_HEADER_LINES):
            line = self._readline()
            if line[-1:] != b"\n":
                while line[-1:] != b"\n":  # longer than any header we read: skip it
                    line = self._readline()
                continue
            if line == b"\r\n" or line == b"\n":
                self._check_range()
                self.left = self.length or 0
                # more than the whole body came with the head (readinto checks the rest)
                if self.length is not None and (
                        len(self.pend) > self.length or not self.length and self._over()):
                    raise HttpError("body longer than its Content-Length")
                return
            self._header(line)
        raise HttpError("too many headers")

    def _header(self, line):
        colon = line.find(b":")
        if colon < 0:
            raise HttpError("bad header")
        name = line[:colon].strip().lower()
        value = line[colon + 1:].strip()
        if name == b"content-length":
            if self.length is not None:  # two framings of one body: which is meant?
                raise HttpError("repeated content-length")
            self.length = _number(value, "content-length")
        elif name == b"x-ota-root":
            if self.root is not None:
                raise HttpError("repeated x-ota-root")
            self.root = _number(value, "x-ota-root")
        elif name == b"x-ota-grant":
            # A download grant (docs/board.md, Download grants): `auth`, a str, echoed as the
            # pack's Authorization, never parsed. Its line is at most _LINE bytes (a longer one
            # was skipped), and only printable ASCII is kept: no CR, LF or control byte can
            # reach the request it goes into. Anything else, or a repeat, leaves "": no grant,
            # the board signs. The member exists only on an answer that carried the header:
            # one more in every Response grew each one's dict, and that alone moved the 64-bit
            # port's heap edge (docs/board.md).
            for c in value:
                if not 32 <= c <= 126:
                    value = b""
                    break
            self.auth = "" if hasattr(self, "auth") else value.decode()
        elif name == b"content-range":
            self._range(value)
        elif name == b"transfer-encoding":
            raise HttpError("transfer-encoding not supported")

    def _range(self, value):
        """Content-Range "bytes START-END/TOTAL" (or "bytes */TOTAL" of a 416), strictly."""
        span, slash, total = value[6:].partition(b"/")
        if self.range_end is not None or value[:6] != b"bytes " or not slash:
            raise HttpError("bad content-range")
        size = -1 if total == b"*" else _number(total, "content-range")
        if span == b"*":
            self.range_end = -1  # a 416's: no part follows
            return
        start, _, end = span.partition(b"-")
        self.range_start = _number(start, "content-range")
        self.range_end = _number(end, "content-range")
        if self.range_end < self.range_start or 0 <= size <= self.range_end:
            raise HttpError("bad content-range")

    def _check_range(self):
        # A part whose Content-Range and Content-Length disagree: either could be the lie.
        if self.range_start is not None and self.length != self.range_end - self.range_start + 1:
            raise HttpError("content-range disagrees with content-length")


def split_url(url):
    """'http://host:port/prefix' -> (scheme, host, port, prefix without trailing slash)."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest:
        raise HttpError("bad server url")
    hostport, slash, prefix = rest.partition("/")
    host, colon, port = hostport.partition(":")
    port = _number(port.encode(), "server url port") if colon else (
        443 if scheme == "https" else 80)
    prefix = (slash + prefix).rstrip("/")
    return scheme, host, port, prefix


def _connect(scheme, host, port, poller, deadline):
    """A connected socket (TLS-wrapped for https), non-blocking, registered in poller.

    getaddrinfo is the one step no deadline reaches: on lwIP ports it blocks inside the
    stack's own DNS retries (docs/board.md, Deadlines); a lookup that used up the request's
    time ends the request right after it. The connect is non-blocking, then polled for
    POLLOUT against the deadline."""
    import errno
    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
        raise HttpError("timeout")
    if not ai:
        raise HttpError("no address for " + host)
    ai = ai[0]
    sock = socket.socket(ai[0], socket.SOCK_STREAM, ai[2])
    try:
        sock.setblocking(False)
        poller.register(sock, _POLLOUT)
        try:
            sock.connect(ai[-1])
        except OSError as e:
            if e.errno != errno.EINPROGRESS:
                raise
        if _wait(poller, sock, _POLLOUT, deadline) & _POLLFAIL:
            raise HttpError("connect failed")
        if scheme == "https":
            poller.unregister(sock)
            from ota import tlsca
            sock = tlsca.wrap(sock, host)
            poller.register(sock, _POLLOUT)
    except BaseException:
        sock.close()
        raise
    return sock


def _send(sock, poller, data, deadline):
    """Write all of data on the non-blocking sock, waiting for room no later than deadline
    (over TLS the first write also drives the handshake)."""
    view = memoryview(data)
    at = 0
    while at < len(view):
        n = sock.write(view[at:])
        if n:
            at += n
        else:  # None: no room yet (or, over TLS, the handshake waits for the server)
            _wait(poller, sock, _POLLOUT, deadline)


def request(url, method, path, headers, body, timeout_s):
    """Send one request; returns a Response whose body is still on the socket.

    `path` is the full path with the server's prefix; `headers` is a str of "Name: v\\r\\n" lines.
    Everything from the connect to the last byte the caller reads ends by timeout_s from now
    (the DNS lookup excepted, see _connect). Raises HttpError on any transport failure or
    malformed answer. The caller must close() the response.
    """
    import select
    scheme, host, port, _ = split_url(url)
    default_port = 443 if scheme == "https" else 80
    host_header = host if port == default_port else "%s:%d" % (host, port)
    deadline = time.ticks_add(time.ticks_ms(), int(timeout_s * 1000))
    poller = select.poll()
    try:
        sock = _connect(scheme, host, port, poller, deadline)
    except OSError as e:
        raise HttpError("connect failed: " + str(e))
    resp = Response(sock, poller, deadline)
    try:
        head = "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n%sContent-Length: %d\r\n\r\n" % (
            method, path, host_header, headers, len(body))
        _send(sock, poller, head.encode(), deadline)
        if body:
            _send(sock, poller, body, deadline)
        resp._read_head()
    except OSError as e:
        resp.close()
        raise HttpError("request failed: " + str(e))
    except ValueError as e:
        resp.close()
        if scheme != "https":
            raise
        from ota import tlsca
        raise tlsca.refused(e)
    except BaseException:
        resp.close()
        raise
    return resp
