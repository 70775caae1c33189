"""S3's open-loop load generator: one process, one epoll loop, pre-built requests.

    python bench/checkin_load.py --port PORT --requests FILE --seconds S

FILE holds the requests, each a 4-byte big-endian length then the exact bytes a board sends
(headers, `Connection: close`, body), built and signed before this process starts. Request
*i* starts at start + *i* * S / N whatever happened before it (open loop: a slow answer does
not delay the next board), each on a new TCP connection to 127.0.0.1:PORT. Latency runs from
the start of the connect to the last byte of the answer (its Content-Length); every request
is bounded by REQUEST_TIMEOUT and the whole run by S + REQUEST_TIMEOUT + 5 s.

It prints one JSON object: the latencies' percentiles, the errors by kind, how late the
generator itself started requests, its own CPU time, the slow (> 100 ms) answers by second
of the run, and which requests (by index) were answered with an OK status (`--ok`, 200 by
default). It imports nothing but the standard library, so it starts fast and stays small; the
bench runs it in its own process so its CPU is its own core's, not the bench's.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import os
import select
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REQUEST_TIMEOUT = 10.0
SLOW = 0.100
_LENGTH = struct.Struct(">I")


def read_requests(path: Path) -> list[bytes]:
    """The requests of a file written by write_requests; ValueError when it is truncated."""
    data = path.read_bytes()
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + _LENGTH.size > len(data):
            raise ValueError(f"{path}: truncated length at byte {pos}")
        (size,) = _LENGTH.unpack_from(data, pos)
        pos += _LENGTH.size
        if pos + size > len(data):
            raise ValueError(f"{path}: request {len(out)} is cut short")
        out.append(data[pos:pos + size])
        pos += size
    return out


def write_requests(path: Path, requests: list[bytes]) -> None:
    with path.open("wb") as out:
        for request in requests:
            out.write(_LENGTH.pack(len(request)))
            out.write(request)


_CONNECTING, _ANSWERING = 0, 1


@dataclass
class _Board:
    """One board's request in flight on its own non-blocking socket."""

    sock: socket.socket
    index: int
    begun: float
    phase: int = _CONNECTING
    received: bytearray = field(default_factory=bytearray)
    status: int = 0
    body_at: int = -1  # where the body starts once the head is in
    expected: int = -1  # head + Content-Length

    def take(self, data: bytes) -> bool:
        """Add received bytes; True once the whole answer is in. Raises ConnectionError on
        an answer that is not HTTP."""
        self.received += data
        if self.expected < 0:
            end = self.received.find(b"\r\n\r\n")
            if end < 0:
                return False
            lines = bytes(self.received[:end]).split(b"\r\n")
            try:
                self.status = int(lines[0].split(b" ", 2)[1])
            except (IndexError, ValueError):
                raise ConnectionError(f"bad status line {lines[0][:60]!r}") from None
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.body_at = end + 4
            self.expected = self.body_at + length
        return len(self.received) >= self.expected


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run(port: int, requests: list[bytes], seconds: float,
        ok: frozenset[int] = frozenset({200})) -> dict[str, object]:
    """Send every request at its time; the figures as a dict (times in ms).

    One thread, one epoll set, non-blocking sockets: per board a connect, one send, reads
    until the answer is whole, a close. No asyncio: its per-connection machinery would cost
    this process more CPU than the server it measures, on a machine where both share two
    cores."""
    count = len(requests)
    step = seconds / count
    address = ("127.0.0.1", port)
    latencies: list[float] = []
    late: list[float] = []
    slow_by_second: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    answered_ok: list[int] = []
    body_bytes = 0
    poller = select.epoll()
    flight: dict[int, _Board] = {}

    def fail(board: _Board, kind: str) -> None:
        errors[kind[:80]] += 1
        poller.unregister(board.sock.fileno())
        del flight[board.sock.fileno()]
        board.sock.close()

    def finish(board: _Board, now: float) -> None:
        nonlocal body_bytes
        took = now - board.begun
        latencies.append(took)
        statuses[board.status] += 1
        body_bytes += len(board.received) - board.body_at
        if board.status not in ok:
            errors[f"status {board.status}"] += 1
        else:
            answered_ok.append(board.index)
        if took > SLOW:
            slow_by_second[int(board.begun - start)] += 1
        poller.unregister(board.sock.fileno())
        del flight[board.sock.fileno()]
        board.sock.close()

    cpu = time.process_time()
    start = time.perf_counter() + 0.2
    stop_at = start + seconds + REQUEST_TIMEOUT + 5
    next_sweep = start + 0.5
    index = 0
    while (index < count or flight) and time.perf_counter() < stop_at:
        now = time.perf_counter()
        while index < count and start + index * step <= now:
            begun = time.perf_counter()
            late.append(begun - (start + index * step))
            index += 1
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as err:  # out of descriptors: the server is far behind
                errors[f"socket: {err.strerror or err}"] += 1
                continue
            sock.setblocking(False)
            board = _Board(sock, index - 1, begun)
            code = sock.connect_ex(address)
            if code not in (0, errno.EINPROGRESS):
                errors[f"connect: {os.strerror(code)}"] += 1
                sock.close()
                continue
            flight[sock.fileno()] = board
            poller.register(sock.fileno(), select.EPOLLOUT)
        wait = (start + index * step - time.perf_counter()) if index < count else 0.05
        for fd, _ in poller.poll(max(0.0, min(wait, 0.05))):
            board = flight[fd]
            if board.phase == _CONNECTING:
                code = board.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    fail(board, f"connect: {os.strerror(code)}")
                    continue
                try:
                    sent = board.sock.send(requests[board.index])
                except OSError as err:
                    fail(board, f"send: {err.strerror or err}")
                    continue
                if sent != len(requests[board.index]):  # ~500 bytes into an empty buffer
                    fail(board, "send: short write")
                    continue
                board.phase = _ANSWERING
                poller.modify(fd, select.EPOLLIN)
                continue
            try:
                data = board.sock.recv(65536)
                done = board.take(data) if data else None
            except OSError as err:
                fail(board, f"recv: {err.strerror or err}")
                continue
            if done is None:
                fail(board, "closed before the whole answer")
            elif done:
                finish(board, time.perf_counter())
        now = time.perf_counter()
        if now >= next_sweep:  # every request is bounded by REQUEST_TIMEOUT
            next_sweep = now + 0.5
            for board in [b for b in flight.values() if now - b.begun > REQUEST_TIMEOUT]:
                fail(board, "timeout")
    for board in list(flight.values()):  # past the run's own deadline: count, never wait
        fail(board, "unfinished")
    poller.close()
    cpu = time.process_time() - cpu
    latencies.sort()
    late.sort()
    ms = 1000.0
    return {
        "requests": count, "answered": len(latencies), "seconds": seconds,
        "errors": sum(errors.values()), "error_kinds": dict(errors),
        "statuses": {str(k): v for k, v in sorted(statuses.items())}, "body_bytes": body_bytes,
        "p50_ms": _percentile(latencies, 0.50) * ms, "p99_ms": _percentile(latencies, 0.99) * ms,
        "max_ms": (latencies[-1] if latencies else 0.0) * ms,
        "late_p99_ms": _percentile(late, 0.99) * ms, "late_max_ms": (late[-1] if late else 0) * ms,
        "generator_cpu_s": cpu,
        "slow_by_second": sorted(slow_by_second.items()),
        "answered_ok": sorted(answered_ok),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--ok", default="200",
                        help="the answer statuses that are no error, comma-separated")
    args = parser.parse_args(argv)
    requests = read_requests(args.requests)
    if not requests:
        raise SystemExit("no requests to send")
    gc.collect()
    gc.freeze()  # the request list is permanent: no collection walks it during the run
    ok = frozenset(int(status) for status in args.ok.split(","))
    figures = run(args.port, requests, args.seconds, ok)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
