"""The pieces of tests/test_cluster_faults.py: a cluster of real processes (PostgreSQL,
SeaweedFS, two `ota serve` replicas, nginx balancing over them), a link to the S3 gateway that
a test can cut, and simulated boards that keep a ledger of every answer they got.

The boards sign their requests as boards do (ota_server.device_auth.sign_request, through
SimBoard) and follow the board client's rules (bootloader_py/ota/client.py, reports.py,
update.py):

- a round is one check: queued reports first (in order, stopping at the first that gets no
  answer or a 5xx; a 4xx drops the report), then the check-in;
- a check-in that gets no answer, or a 5xx (the server failed), ends the round with nothing
  queued; one answered with another error status queues a `failed` report naming what the
  board runs (`checkin: http N`);
- an offer: `downloading` is queued and sent, then one pack of every blob; a download that
  fails queues `failed` for the offered release (`blob PATH: ...`); one that arrives whole and
  hashes right installs the release and queues `installed` and `confirmed`;
- whatever failed is tried again at the next round (the board's next check-in).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from server_support import SimBoard

from signing.dsse import parse_envelope
from signing.manifest import MANIFEST_PAYLOAD_TYPE
from tools.cluster.postgres import PostgresServer
from tools.local_server import free_port

REQUEST_TIMEOUT = 10.0


class S3Link:
    """A TCP relay on 127.0.0.1:`port` in front of the S3 gateway: the replicas' endpoint.

    `cut()` makes the endpoint dead, as a stopped or unreachable object store is: the port
    refuses connections and every open one is reset. `restore()` listens on the same port
    again. The relay runs its own event loop in a thread.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> S3Link:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def restore(self) -> None:
        self._run(self._listen())

    def cut(self) -> None:
        self._run(self._cut())

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port,
                                                      reuse_address=True)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        self._open.difference_update((writer, up_writer))


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


@dataclass
class Answer:
    """One request a board sent and what came back (`status` 0: no answer: `error` says why)."""

    device_id: str
    counter: int
    method: str
    path: str
    started: float
    ended: float
    status: int
    headers: dict[str, str]
    body: bytes
    error: str = ""
    report: dict[str, Any] | None = None

    @property
    def acknowledged(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Ledger:
    """Every answer every board got, in the order they came (thread-safe)."""

    answers: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)

    def acknowledged(self) -> list[Answer]:
        return [a for a in self.answers if a.acknowledged]

    def failed(self) -> list[Answer]:
        return [a for a in self.answers if not a.acknowledged]


@dataclass
class FieldBoard:
    """A simulated board in the field talking to `url` (nginx), following the board client's
    rules (module docstring)."""

    sim: SimBoard
    url: str
    ledger: Ledger
    queue: list[dict[str, Any]] = field(default_factory=list)
    installed: int = 0  # the sequence it runs (0: nothing yet)
    rounds: int = 0

    def request(self, method: str, path: str, body: bytes = b"",
                report: dict[str, Any] | None = None) -> Answer:
        """One signed request on its own connection (boards close after each)."""
        headers = self.sim.auth(method, path, body)
        headers["Connection"] = "close"
        if body:
            headers["Content-Type"] = "application/json"
        host, port = self.url.removeprefix("http://").split(":")
        started = time.monotonic()
        connection = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT)
        status, answer_headers, data, error = 0, {}, b"", ""
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            # A body shorter than Content-Length is an incomplete answer: no answer at all.
            status, answer_headers = response.status, dict(response.getheaders())
        except (OSError, http.client.HTTPException) as err:
            status, error = 0, f"{type(err).__name__}: {err}"
        finally:
            connection.close()
        answer = Answer(self.sim.device_id, self.sim.counter, method, path, started,
                        time.monotonic(), status, answer_headers, data, error, report)
        self.ledger.add(answer)
        return answer

    def flush(self) -> bool:
        """Send queued reports in order; True when the queue is empty afterwards."""
        while self.queue:
            report = self.queue[0]
            answer = self.request("POST", "/v1/device/report",
                                  json.dumps(report).encode(), report)
            if answer.status == 0 or answer.status >= 500:
                return False  # kept for the next round
            self.queue.pop(0)  # delivered, or refused for good (4xx)
        return True

    def check(self) -> None:
        """One round: reports, check-in, and an update when one is offered."""
        self.rounds += 1
        self.flush()
        body = self.sim.checkin_body(sequence=self.installed)
        offer = self.request("POST", "/v1/device/checkin", body)
        if offer.status == 0 or offer.status >= 500:
            return  # no answer, or the server failed: nothing to report
        if offer.status == 204:
            return
        if offer.status != 200:
            self.queue.append(self.report("failed", self.installed,
                                           f"checkin: http {offer.status}"))
            self.flush()
            return
        manifest = json.loads(parse_envelope(offer.body, MANIFEST_PAYLOAD_TYPE).payload)
        sequence = int(manifest["sequence"])
        if sequence <= self.installed:
            return
        self.queue.append(self.report("downloading", sequence))
        self.flush()
        blobs = list(dict.fromkeys(f["blob"] for f in manifest["files"]))
        pack = self.request("GET", "/v1/device/pack?blobs=" + ",".join(blobs))
        reason = self._pack_fault(pack, manifest["files"], blobs)
        if reason:
            self.queue.append(self.report("failed", sequence, reason))
            self.flush()
            return
        self.installed = sequence
        self.queue.append(self.report("installed", sequence))
        self.queue.append(self.report("confirmed", sequence))
        self.flush()

    @staticmethod
    def _pack_fault(pack: Answer, files: list[dict[str, Any]], blobs: list[str]) -> str:
        """Why the pack cannot be installed ("" when it can): the board's own words."""
        first = files[0]["path"]
        if pack.status == 0:
            return f"blob {first}: {pack.error}"
        if pack.status != 200:
            return f"blob {first}: http {pack.status}"
        sizes = {f["blob"]: f["transfer_size"] for f in files}
        at = 0
        for blob in blobs:
            data = pack.body[at:at + sizes[blob]]
            at += sizes[blob]
            if hashlib.sha256(data).hexdigest() != blob:
                return "hash mismatch"
        return "" if at == len(pack.body) else "length"

    def report(self, status: str, sequence: int, reason: str | None = None) -> dict[str, Any]:
        """A report as the board queues it; the round makes each reason this board's own, so
        the ledger can find it again."""
        text = None if reason is None else f"{reason} (round {self.rounds})"
        return {"app": self.sim.app, "sequence": sequence, "version": "x", "status": status,
                "reason": text}


def run_boards(boards: list[FieldBoard], until: Callable[[FieldBoard], bool],
               deadline_s: float, pause_s: float = 0.05, stagger_s: float = 0.0) -> None:
    """Each board in its own thread checks round after round (`pause_s` between rounds, the
    i-th board's first round `i * stagger_s` late) until `until(board)` is true or
    `deadline_s` passes."""
    deadline = time.monotonic() + deadline_s

    def loop(board: FieldBoard) -> None:
        time.sleep(boards.index(board) * stagger_s)
        while time.monotonic() < deadline and not until(board):
            board.check()
            time.sleep(pause_s)

    threads = [threading.Thread(target=loop, args=(board,), daemon=True) for board in boards]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline_s + 2 * REQUEST_TIMEOUT)


@contextlib.contextmanager
def boards_running(boards: list[FieldBoard], until: Callable[[FieldBoard], bool],
                   deadline_s: float, pause_s: float = 0.05,
                   stagger_s: float = 0.0) -> Iterator[None]:
    """run_boards in the background while the block runs (faults are made inside it); waits
    for them on leaving."""
    runner = threading.Thread(target=run_boards,
                              args=(boards, until, deadline_s, pause_s, stagger_s), daemon=True)
    runner.start()
    try:
        yield
    finally:
        runner.join(deadline_s + 3 * REQUEST_TIMEOUT)


def query(pg: PostgresServer, database: str, sql: str) -> list[list[str]]:
    """Rows of `sql` as psql prints them unaligned (columns split on `|`)."""
    return [line.split("|") for line in pg.psql(database, sql).splitlines() if line]


def check_nothing_acknowledged_is_lost(ledger: Ledger, pg: PostgresServer,
                                       database: str) -> dict[str, int]:
    """Every counter the server acknowledged is at most the board's stored counter, and every
    report it acknowledged is in the board's deployment history with its status and reason
    (or is a `failed` about a confirmed deployment, which by the protocol changes nothing:
    a confirmed deployment moves only by a rollback). Returns what was checked."""
    stored = {row[0]: int(row[1]) for row in query(pg, database,
                                                   "SELECT device_id, counter FROM devices")}
    history: dict[tuple[str, str, str], int] = {}
    for device_id, status, reason in query(
            pg, database, "SELECT device_id, status, coalesce(reason, '') "
                          "FROM deployment_history"):
        key = (device_id, status, reason)
        history[key] = history.get(key, 0) + 1
    confirmed = {(row[0], int(row[1])) for row in query(
        pg, database, "SELECT d.device_id, r.sequence FROM deployments d "
                      "JOIN releases r ON r.id = d.release_id WHERE d.status = 'confirmed'")}
    acknowledged = ledger.acknowledged()
    for answer in acknowledged:
        assert answer.counter <= stored[answer.device_id], answer
    reports: dict[tuple[str, str, str], int] = {}
    for answer in acknowledged:
        if answer.report is None:
            continue
        report = answer.report
        key = (answer.device_id, report["status"], report["reason"] or "")
        reports[key] = reports.get(key, 0) + 1
    unchanged = 0
    for key, count in reports.items():
        if history.get(key, 0) >= count:
            continue
        device_id, status, reason = key
        sent = [a.report for a in acknowledged if a.report is not None
                and a.device_id == device_id and a.report["status"] == status
                and (a.report["reason"] or "") == reason]
        assert status == "failed" and all((device_id, r["sequence"]) in confirmed
                                          for r in sent), (key, count, history.get(key))
        unchanged += 1
    return {"counters": len(acknowledged), "reports": sum(reports.values()),
            "reports_about_confirmed": unchanged}


def manifest_blobs(envelope: bytes) -> list[str]:
    doc = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
    return [f["blob"] for f in doc["files"]]


def bucket_keys(client: Any, bucket: str) -> set[str]:
    """The object keys in `bucket` (a SeaweedS3 client)."""
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(obj["Key"] for obj in page.get("Contents", []))
    return keys


def metric(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples in `text` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def fetch(url: str) -> tuple[int, bytes]:
    """GET without credentials (metrics, health), 0 when nothing answers."""
    host, _, rest = url.removeprefix("http://").partition("/")
    name, port = host.split(":")
    connection = http.client.HTTPConnection(name, int(port), timeout=REQUEST_TIMEOUT)
    try:
        connection.request("GET", "/" + rest)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        connection.close()

