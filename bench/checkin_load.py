"""S3's open-loop load generator: one process, raw asyncio, pre-built requests.

    python bench/checkin_load.py --port PORT --requests FILE --seconds S

FILE holds the requests, each a 4-byte big-endian length then the exact bytes a board sends
(headers, `Connection: close`, body), built and signed before this process starts. Request
*i* starts at start + *i* * S / N whatever happened before it (open loop: a slow answer does
not delay the next board), each on a new TCP connection to 127.0.0.1:PORT. Latency runs from
the start of the connect to the last byte of the answer (its Content-Length); every request
is bounded by REQUEST_TIMEOUT and the whole run by S + REQUEST_TIMEOUT + 5 s.

It prints one JSON object: the latencies' percentiles, the errors by kind, how late the
generator itself started requests, its own CPU time, and the slow (> 100 ms) answers by second
of the run. It imports nothing but the standard library, so it starts fast and stays small;
the bench runs it in its own process so its CPU is its own core's, not the bench's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import struct
import sys
import time
from collections import Counter
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


class _Checkin(asyncio.Protocol):
    """One request on its own connection; `done` gets (status, body bytes), or an exception."""

    def __init__(self, request: bytes, done: asyncio.Future[tuple[int, int]]):
        self._request = request
        self._done = done
        self._received = bytearray()
        self._status = 0
        self._expected = -1  # bytes of head + body once the head is in
        self._body_at = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._received += data
        if self._expected < 0:
            end = self._received.find(b"\r\n\r\n")
            if end < 0:
                return
            self._parse_head(bytes(self._received[:end]), end + 4)
        if self._expected >= 0 and len(self._received) >= self._expected:
            self._finish()

    def _parse_head(self, head: bytes, body_at: int) -> None:
        lines = head.split(b"\r\n")
        try:
            self._status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            self._fail(ConnectionError(f"bad status line {lines[0][:60]!r}"))
            return
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        self._body_at = body_at
        self._expected = body_at + length

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result((self._status, len(self._received) - self._body_at))
        if self._transport is not None:
            self._transport.close()

    def _fail(self, err: BaseException) -> None:
        if not self._done.done():
            self._done.set_exception(err)
        if self._transport is not None:
            self._transport.abort()

    def eof_received(self) -> bool | None:
        if self._expected < 0 or len(self._received) < self._expected:
            self._fail(ConnectionError("connection closed before the whole answer"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._fail(exc or ConnectionError("connection lost before the whole answer"))


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def run(port: int, requests: list[bytes], seconds: float) -> dict[str, object]:
    """Send every request at its time; the figures as a dict (times in ms)."""
    loop = asyncio.get_running_loop()
    count = len(requests)
    step = seconds / count
    latencies: list[float] = []
    late: list[float] = []
    slow_by_second: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    body_bytes = 0
    start = time.perf_counter() + 0.2

    async def board(index: int) -> None:
        nonlocal body_bytes
        begun = time.perf_counter()
        late.append(begun - (start + index * step))
        done: asyncio.Future[tuple[int, int]] = loop.create_future()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await loop.create_connection(lambda: _Checkin(requests[index], done),
                                             "127.0.0.1", port)
                status, size = await done
        except TimeoutError:
            errors["timeout"] += 1
            return
        except OSError as err:
            errors[type(err).__name__] += 1
            return
        took = time.perf_counter() - begun
        latencies.append(took)
        statuses[status] += 1
        body_bytes += size
        if status != 200:
            errors[f"status {status}"] += 1
        if took > SLOW:
            slow_by_second[int(begun - start)] += 1

    tasks: set[asyncio.Task[None]] = set()
    cpu = time.process_time()
    index = 0
    while index < count:
        now = time.perf_counter()
        due = start + index * step
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while index < count and start + index * step <= now:
            task = loop.create_task(board(index))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
    if tasks:
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)
    for task in tasks:  # past every request's own deadline: count, never wait for ever
        task.cancel()
        errors["unfinished"] += 1
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
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    requests = read_requests(args.requests)
    if not requests:
        raise SystemExit("no requests to send")
    gc.collect()
    gc.freeze()  # the request list is permanent: no collection walks it during the run
    figures = asyncio.run(run(args.port, requests, args.seconds))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
