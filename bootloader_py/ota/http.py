# Streaming HTTP/1.1 client over socket (+ tls for https), micropython-lib style.
#
# One request per connection (Connection: close). The body is never read whole: the caller
# pulls it with readinto() through its own buffer, and reading stops at Content-Length. Every
# request has an overall deadline, so a server that drips bytes cannot hold the board forever.
import socket
import time

from micropython import const

from ota.fail import HttpError  # ota.http.HttpError; defined where the client shares it

_MAX_HEADER_LINES = const(48)
_LINE = const(200)


class Response:
    """Status, the few headers the client needs, and the body via readinto()."""

    def __init__(self, sock, deadline):
        import select
        self.sock = sock
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)
        self.deadline = deadline
        self.status = 0
        self.length = None
        self.root = None
        self.range_start = None
        self.left = 0
        self.pend = b""  # bytes received past the header lines: the body's first ones

    def _some(self, mv):
        """Read what has arrived into mv: at least one byte, 0 at the end of the stream.

        The socket is non-blocking once the request is sent (request()): each read takes only
        what is there, and the wait for more (poll) ends at the request's deadline. Blocking
        readinto() or readline() would loop in C until the buffer or the line is full,
        restarting the socket's timeout at every byte: a server dripping bytes could hold one
        call, and the board's boot, for minutes.
        """
        while True:
            try:
                n = self.sock.readinto(mv)
            except OSError as e:
                raise HttpError("read failed: " + str(e))
            if n is not None:
                return n
            left = time.ticks_diff(self.deadline, time.ticks_ms())
            if left <= 0 or not self.poller.poll(left):
                raise HttpError("timeout")

    def readinto(self, mv):
        """Fill up to len(mv) body bytes; 0 only at the end of the declared body."""
        n = min(len(mv), self.left)
        if n == 0:
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
        return got

    def fill(self, mv):
        """Fill all of mv from the body (or what is left of it); returns the bytes read.

        A whole buffer per call makes the writes that follow a fixed sequence, whatever the
        network's segment sizes (the power-cut tests count them)."""
        got = 0
        while got < len(mv):
            try:
                n = self.readinto(mv[got:])
            except HttpError:
                if got:
                    return got  # keep what arrived; the fault comes back at the next read
                raise
            if not n:
                break
            got += n
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
        parts = self._readline().split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError("bad status line")
        try:
            self.status = int(parts[1])
        except ValueError:
            raise HttpError("bad status line")
        for _ in range(_MAX_HEADER_LINES):
            line = self._readline()
            if line[-1:] != b"\n":
                while line[-1:] != b"\n":  # longer than any header we read: skip it
                    line = self._readline()
                continue
            if line == b"\r\n" or line == b"\n":
                self.left = self.length or 0
                return
            self._header(line)
        raise HttpError("too many headers")

    def _header(self, line):
        colon = line.find(b":")
        if colon < 0:
            raise HttpError("bad header")
        name = line[:colon].strip().lower()
        value = line[colon + 1:].strip()
        try:
            if name == b"content-length":
                self.length = int(value)
            elif name == b"x-ota-root":
                self.root = int(value)
            elif name == b"content-range":
                # "bytes START-END/TOTAL"
                self.range_start = int(value.split(b" ")[1].split(b"-")[0])
            elif name == b"transfer-encoding" and value.lower() != b"identity":
                raise HttpError("transfer-encoding not supported")
        except (ValueError, IndexError):
            raise HttpError("bad header value")


def split_url(url):
    """'http://host:port/prefix' -> (scheme, host, port, prefix without trailing slash)."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest:
        raise HttpError("bad server url")
    hostport, slash, prefix = rest.partition("/")
    host, colon, port = hostport.partition(":")
    port = int(port) if colon else (443 if scheme == "https" else 80)
    prefix = (slash + prefix).rstrip("/")
    return scheme, host, port, prefix


def _connect(scheme, host, port, timeout_s):
    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    sock = socket.socket(ai[0], socket.SOCK_STREAM, ai[2])
    try:
        sock.settimeout(timeout_s)
        sock.connect(ai[-1])
        if scheme == "https":
            import tls
            ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
            # No CA store on boards: TLS is privacy only; every byte is verified by signature
            # or hash (docs/board.md).
            ctx.verify_mode = tls.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    return sock


def request(url, method, path, headers, body, timeout_s):
    """Send one request; returns a Response whose body is still on the socket.

    `path` is the full path with the server's prefix; `headers` is a str of "Name: v\\r\\n" lines.
    Raises HttpError on any transport failure. The caller must close() the response.
    """
    scheme, host, port, _ = split_url(url)
    default_port = 443 if scheme == "https" else 80
    host_header = host if port == default_port else "%s:%d" % (host, port)
    deadline = time.ticks_add(time.ticks_ms(), int(timeout_s * 1000))
    try:
        sock = _connect(scheme, host, port, timeout_s)
    except OSError as e:
        raise HttpError("connect failed: " + str(e))
    resp = Response(sock, deadline)
    try:
        head = "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n%sContent-Length: %d\r\n\r\n" % (
            method, path, host_header, headers, len(body))
        sock.write(head.encode())
        if body:
            sock.write(body)
        sock.setblocking(False)  # the answer is read against the deadline (Response._some)
        resp._read_head()
    except OSError as e:
        resp.close()
        raise HttpError("request failed: " + str(e))
    except BaseException:
        resp.close()
        raise
    return resp
