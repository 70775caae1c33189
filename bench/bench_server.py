"""Server benchmarks S1-S3: `ota serve` next to nginx, measured by load generators.

S1  signed check-ins per second / nginx static responses per second of the same size
S2  blob download MB/s / nginx MB/s, 1 MB file (median of 3 rounds, each ota serve then nginx);
    each board downloads with the download grant its offer carried, as boards do
    (docs/protocol.md, "Download grants"); --s2-signed: with signed requests instead
S3  100,000 registered boards, one signed check-in each on a new connection, spread evenly
    over 60 s (open loop): p50, p99, errors (non-200, timeouts, wrong bodies, and answered
    check-ins missing from the database after the server stopped)

S1 and S2 compare one process with one: `ota serve` (one process) and nginx (one worker),
both on 127.0.0.1. S3 measures the machine: `ota serve --workers N`, one worker per core
(--s3-workers; docs/operations.md, "Workers"). The S1/S2 load generator is this process
(asyncio + aiohttp client), S3's is bench/checkin_load.py in a process of its own; every
request is signed before the clock starts. nginx is the Debian package: `nginx` on PATH,
else the .deb fetched with `apt-get download` and unpacked under .cache/nginx (nothing is
installed system-wide, no service is started). Everything is bounded in count and time.

    python bench/bench_server.py [--quick] [--s3-only] [--s2-signed] [--s3-workers N]

The last line printed is one JSON object with the figure ids.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from checkin_load import write_requests  # noqa: E402
from server_support import FleetKeys, make_bundle  # noqa: E402

from ota_server.device_auth import sign_request  # noqa: E402
from ota_server.rollout import bucket_of  # noqa: E402
from ota_server.settings import Settings  # noqa: E402
from ota_server.storage.sqlite import SqliteStore  # noqa: E402
from signing import keys as keymod  # noqa: E402
from tools.cluster.nginx import Nginx  # noqa: E402
from tools.local_server import LocalServer  # noqa: E402

PHASE_TIMEOUT = 120.0


@dataclass(frozen=True)
class Scale:
    checkins: int          # S1 requests per server
    concurrency: int       # S1/S2 connections
    downloads: int         # S2 downloads of 1 MB per server
    s3_boards: int
    s3_seconds: float
    s1_boards: int = 64
    s2_concurrency: int = 8
    s2_rounds: int = 3


FULL = Scale(checkins=8000, concurrency=32, downloads=1000, s3_boards=100_000, s3_seconds=60.0)
QUICK = Scale(checkins=600, concurrency=16, downloads=30, s3_boards=3000, s3_seconds=3.0)


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (all
    sockets of the machine: TcpExt ListenOverflows)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()
             if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1], strict=True)).get("ListenOverflows", 0))


def cpu_split(pid: int | None) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its children alive now (Linux /proc):
    `ota serve --workers N`'s workers, nginx's worker, PostgreSQL's backends."""
    if pid is None:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for each in [pid, *map(int, children)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            if each == pid:
                raise
            continue  # a child that just exited
        user += int(fields[11]) / tick
        system += int(fields[12]) / tick
    return user, system


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process and its children, to show who was busy in a
    phase."""
    return sum(cpu_split(pid))


def nginx_cpu(nginx: Nginx) -> float:
    """CPU of nginx's master and its worker (the worker is the master's only child)."""
    assert nginx.process is not None
    return cpu_seconds(nginx.process.pid)


# -- load generator -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Req:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None


async def _closed_loop(lanes: list[list[Req]], concurrency: int) -> tuple[float, int, int]:
    """Send every lane's requests in order, lanes in parallel; (seconds, bytes, errors)."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    received = errors = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        async def run(lane: list[Req]) -> None:
            nonlocal received, errors
            for req in lane:
                try:
                    async with session.request(req.method, req.url, data=req.body,
                                               headers=req.headers) as resp:
                        body = await resp.read()  # await first: += would race
                        received += len(body)
                        if resp.status >= 400:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(run(lane) for lane in lanes)), PHASE_TIMEOUT)
        return time.perf_counter() - started, received, errors


def _lanes(requests: list[Req], count: int) -> list[list[Req]]:
    return [requests[i::count] for i in range(count)]


# -- set-up -------------------------------------------------------------------------------------

@dataclass
class Board:
    device_id: str
    key: keymod.PrivateKey
    counter: int = 0
    grant: str | None = None  # the X-Ota-Grant of its last offer (obtain_grants)

    def signed(self, base: str, method: str, path: str, body: bytes = b"") -> Req:
        self.counter += 1
        header = sign_request(self.key, self.device_id, self.counter, method, path, body)
        return Req(method, base + path, {"Authorization": header,
                                         "Content-Type": "application/json"}, body or None)

    def granted(self, base: str, path: str) -> Req:
        """A GET with the board's download grant as its Authorization (no counter spent)."""
        if self.grant is None:
            raise RuntimeError(f"{self.device_id} has no download grant; obtain_grants first")
        return Req("GET", base + path, {"Authorization": self.grant})


def register_boards(settings: Settings, prefix: str, count: int) -> list[Board]:
    async def register() -> list[Board]:
        store = SqliteStore(settings.db_path)
        boards = []
        try:
            for i in range(count):
                board = Board(f"{prefix}-{i:06d}", keymod.generate_private_key())
                await store.add_device(board.device_id, keymod.public_point(board.key), "unix",
                                       [], "stable", bucket_of(board.device_id))
                boards.append(board)
        finally:
            await store.close()
        return boards

    return asyncio.run(register())


CHECKIN_MEM_FREE = 60000


def checkin_body(device_id: str) -> bytes:
    return json.dumps({"app": "demo", "version": "0.0.0", "sequence": 0, "root_version": 1,
                       "micropython": "1.25.0", "board": "unix", "mem_free": CHECKIN_MEM_FREE,
                       "slot": "a"}).encode()


# -- the phases ---------------------------------------------------------------------------------

async def s1(srv: LocalServer, nginx: Nginx, boards: list[Board], envelope_size: int,
             scale: Scale) -> float:
    per_board = scale.checkins // len(boards) + 1
    lanes: list[list[Req]] = [[] for _ in range(scale.concurrency)]
    for index, board in enumerate(boards):  # one board, one lane: its counters stay in order
        body = checkin_body(board.device_id)
        lanes[index % scale.concurrency].extend(
            board.signed(srv.url, "POST", "/v1/device/checkin", body) for _ in range(per_board))
    ota_secs, ota_bytes, ota_errors = await _closed_loop(lanes, scale.concurrency)
    ota_count = sum(len(lane) for lane in lanes)
    static = [Req("GET", nginx.url + "/envelope.json", {}) for _ in range(ota_count)]
    ngx_secs, _ngx_bytes, ngx_errors = await _closed_loop(_lanes(static, scale.concurrency),
                                                         scale.concurrency)
    ota_rps, ngx_rps = ota_count / ota_secs, ota_count / ngx_secs
    print(f"S1 ota serve: {ota_count} signed check-ins (200, {envelope_size} B envelope) in "
          f"{ota_secs:.2f}s = {ota_rps:.0f}/s, errors {ota_errors}, body bytes {ota_bytes}")
    print(f"S1 nginx:     {ota_count} static {envelope_size} B responses in {ngx_secs:.2f}s = "
          f"{ngx_rps:.0f}/s, errors {ngx_errors}")
    if ota_errors or ngx_errors or ota_bytes != ota_count * envelope_size:
        raise RuntimeError("S1 had errors; the figure would mean nothing")
    return ota_rps / ngx_rps


async def obtain_grants(base_url: str, boards: list[Board], figure: str = "S2") -> None:
    """Each board checks in at `base_url` (signed, as it would) and keeps the download grant of
    the offer it is answered: a real 200 from a rollout the bench started, not a grant minted
    here. RuntimeError naming `figure` when a check-in gets no offer or no grant."""
    async with aiohttp.ClientSession() as session:
        for board in boards:
            req = board.signed(base_url, "POST", "/v1/device/checkin",
                               checkin_body(board.device_id))
            async with session.post(req.url, data=req.body, headers=req.headers) as resp:
                await resp.read()
                board.grant = resp.headers.get("X-Ota-Grant")
                if resp.status != 200 or board.grant is None:
                    raise RuntimeError(f"{figure} set-up: {board.device_id}'s check-in got "
                                       f"{resp.status} without a grant; no offer to download")


async def s2(srv: LocalServer, nginx: Nginx, boards: list[Board], sha: str, size: int,
             scale: Scale, signed: bool) -> float:
    """Median over `scale.s2_rounds` rounds, each `ota serve` then nginx back to back, so a
    burst of unrelated load on the machine spoils one round rather than the figure. The boards
    download with the grants of their offers (obtained before the clock starts; one lasts 900 s,
    far longer than the rounds), or with signed requests if `signed`."""
    if not signed:
        await obtain_grants(srv.url, boards)
    print(f"S2 downloads authorised by {'signed requests' if signed else 'download grants'}")
    ratios = [await _s2_round(srv, nginx, boards, sha, size, scale, n + 1, signed)
              for n in range(scale.s2_rounds)]
    print(f"S2 ratio per round: {', '.join(f'{r:.3f}' for r in ratios)}; median "
          f"{statistics.median(ratios):.3f}")
    return statistics.median(ratios)


async def _s2_round(srv: LocalServer, nginx: Nginx, boards: list[Board], sha: str, size: int,
                    scale: Scale, round_no: int, signed: bool) -> float:
    conc = scale.s2_concurrency
    lanes: list[list[Req]] = [[] for _ in range(conc)]
    path = f"/v1/blobs/{sha}"
    for i in range(scale.downloads):
        board = boards[i % len(boards)]  # one board, one lane: its counters stay in order
        lanes[(i % len(boards)) % conc].append(
            board.signed(srv.url, "GET", path) if signed else board.granted(srv.url, path))
    cpu = cpu_seconds(srv.pid), time.process_time()
    ota_secs, ota_bytes, ota_errors = await _closed_loop(lanes, conc)
    ota_cpu = cpu_seconds(srv.pid) - cpu[0], time.process_time() - cpu[1]
    static = [Req("GET", nginx.url + "/blob.bin", {}) for _ in range(scale.downloads)]
    cpu = nginx_cpu(nginx), time.process_time()
    ngx_secs, ngx_bytes, ngx_errors = await _closed_loop(_lanes(static, conc), conc)
    ngx_cpu = nginx_cpu(nginx) - cpu[0], time.process_time() - cpu[1]
    expected = scale.downloads * size
    if ota_errors or ngx_errors or ota_bytes != expected or ngx_bytes != expected:
        raise RuntimeError(f"S2 errors: ota {ota_errors}/{ota_bytes}, nginx {ngx_errors}/"
                           f"{ngx_bytes}, expected {expected} bytes each")
    ota_mbs, ngx_mbs = ota_bytes / ota_secs / 1e6, ngx_bytes / ngx_secs / 1e6
    print(f"S2 round {round_no} ota serve: {scale.downloads} x 1 MB blob in {ota_secs:.2f}s = "
          f"{ota_mbs:.0f} MB/s (CPU: server {ota_cpu[0]:.2f}s, generator {ota_cpu[1]:.2f}s)")
    print(f"S2 round {round_no} nginx:     {scale.downloads} x 1 MB file in {ngx_secs:.2f}s = "
          f"{ngx_mbs:.0f} MB/s (CPU: nginx {ngx_cpu[0]:.2f}s, generator {ngx_cpu[1]:.2f}s)")
    return ota_mbs / ngx_mbs


def board_request(port: int, board: Board, body: bytes) -> bytes:
    """The exact bytes a board sends for one signed check-in (bootloader_py/ota/http.py and
    client.py: one request per connection, `Connection: close`)."""
    path = "/v1/device/checkin"
    board.counter += 1
    auth = sign_request(board.key, board.device_id, board.counter, "POST", path, body)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
            f"Authorization: {auth}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


def s3(srv: LocalServer, boards: list[Board], envelope_size: int, work: Path,
       scale: Scale) -> dict[str, Any]:
    """Open loop: board i checks in at i * T / N on its own connection, sent by
    bench/checkin_load.py in its own process; its figures, and the server's CPU in the run."""
    requests = [board_request(srv.port, b, checkin_body(b.device_id)) for b in boards]
    path = work / "s3-requests.bin"
    write_requests(path, requests)
    del requests
    server_cpu = cpu_split(srv.pid)
    loadavg = os.getloadavg()[0]
    overflows = listen_overflows()
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "checkin_load.py"),
                          "--port", str(srv.port), "--requests", str(path),
                          "--seconds", str(scale.s3_seconds)],
                         capture_output=True, text=True, check=False,
                         timeout=scale.s3_seconds + PHASE_TIMEOUT)
    if run.returncode != 0:
        raise RuntimeError(f"S3 load generator failed ({run.returncode}):\n{run.stderr}")
    figures: dict[str, Any] = json.loads(run.stdout.splitlines()[-1])
    overflows = listen_overflows() - overflows
    user, system = (after - before for after, before in zip(cpu_split(srv.pid), server_cpu,
                                                             strict=True))
    answered = figures["statuses"].get("200", 0)
    if figures["body_bytes"] != answered * envelope_size:
        figures["errors"] += 1
        print(f"S3: {figures['body_bytes']} body bytes for {answered} answers of "
              f"{envelope_size} B")
    print(f"S3 ota serve: {figures['requests']} boards over {scale.s3_seconds:.0f}s, one new "
          f"connection each: p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, "
          f"max {figures['max_ms']:.1f} ms, errors {figures['errors']} "
          f"{figures['error_kinds'] or ''}; answers {figures['statuses']}")
    print(f"S3 CPU: server {user + system:.1f}s (user {user:.1f}s, system {system:.1f}s: "
          f"{(user + system) / len(boards) * 1e6:.0f} us per check-in), generator "
          f"{figures['generator_cpu_s']:.1f}s; generator lateness p99 "
          f"{figures['late_p99_ms']:.1f} ms, max {figures['late_max_ms']:.1f} ms; load average "
          f"at the start {loadavg:.2f}; listen queue overflows (whole machine) {overflows}")
    if figures["slow_by_second"]:
        print(f"S3 slow (> 100 ms) check-ins by second of the run: {figures['slow_by_second']}")
    return figures


def not_recorded(db_path: Path, boards: list[Board]) -> list[str]:
    """The boards of `boards` whose check-in the database does not hold (counter, last-seen,
    the inventory they sent, the offer), read after the server stopped."""
    async def check() -> list[str]:
        store = SqliteStore(db_path)
        try:
            release = await store.release("demo", 1)
            assert release is not None
            missing = []
            for board in boards:
                found = await store.device(board.device_id)
                if found is None or found.counter != board.counter \
                        or found.inventory["last_seen"] is None \
                        or found.inventory["mem_free"] != CHECKIN_MEM_FREE \
                        or await store.deployment_status(board.device_id, release.id) \
                        != "offered":
                    missing.append(board.device_id)
            return missing
        finally:
            await store.close()

    return asyncio.run(check())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--s3-boards", type=int, default=None, help="override S3's board count")
    parser.add_argument("--s3-seconds", type=float, default=None, help="override S3's span")
    parser.add_argument("--s2-concurrency", type=int, default=None,
                        help="override S2's number of connections")
    parser.add_argument("--s2-downloads", type=int, default=None, help="override S2's count")
    parser.add_argument("--s2-signed", action="store_true",
                        help="S2 with signed requests instead of download grants (comparison)")
    parser.add_argument("--s3-only", action="store_true",
                        help="run S3 alone (no nginx, no S1/S2 figures): for profiling")
    parser.add_argument("--s3-workers", type=int, default=os.cpu_count() or 1,
                        help="`ota serve --workers` for S3 [default: the machine's cores]")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    if args.s2_concurrency:
        scale = replace(scale, s2_concurrency=args.s2_concurrency)
    if args.s2_downloads:
        scale = replace(scale, downloads=args.s2_downloads)
    if args.s3_boards or args.s3_seconds:
        scale = replace(scale, s3_boards=args.s3_boards or scale.s3_boards,
                        s3_seconds=args.s3_seconds or scale.s3_seconds)
    with tempfile.TemporaryDirectory(prefix="bench-server-") as scratch:
        work = Path(scratch)
        keys = FleetKeys.create(work)
        blob = os.urandom(1 << 20)
        bundle = make_bundle(work, {"app_main.py": b"print('bench')\n", "lib/data.bin": blob},
                             version="1.0.0", sequence=1, key=keys.release_key)
        envelope = (bundle / "manifest.dsse.json").read_bytes()
        settings = Settings(data_dir=work / "data")
        t0 = time.perf_counter()
        s1_boards = register_boards(settings, "s1", scale.s1_boards)
        s3_boards = register_boards(settings, "s3", scale.s3_boards)
        print(f"set-up: {scale.s1_boards + scale.s3_boards} boards registered in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
        static = work / "static"
        static.mkdir()
        (static / "envelope.json").write_bytes(envelope)
        (static / "blob.bin").write_bytes(blob)
        sha = hashlib.sha256(blob).hexdigest()
        figures: dict[str, Any] = {}
        srv = LocalServer(settings.data_dir, keys.root_path, extra_args=["--quiet"])
        with srv:
            srv.client().publish(bundle, "stable", percent=100)
            if not args.s3_only:
                with Nginx(static, work) as nginx:
                    ratio1 = asyncio.run(s1(srv, nginx, s1_boards, len(envelope), scale))
                    ratio2 = asyncio.run(s2(srv, nginx, s1_boards, sha, len(blob), scale,
                                            args.s2_signed))
                figures.update(S1_ratio=round(ratio1, 3), S2_ratio=round(ratio2, 3),
                               S2_auth="signed" if args.s2_signed else "grant")
        # S3 on the server as a fleet that size runs it: one worker per core.
        srv.extra_args = ["--quiet", "--workers", str(args.s3_workers)]
        with srv:
            third = s3(srv, s3_boards, len(envelope), work, scale)
        answered = [s3_boards[i] for i in third["answered_ok"]]
        lost = not_recorded(settings.db_path, answered)
        print(f"S3 recorded: {len(answered) - len(lost)} of the {len(answered)} check-ins answered "
              f"200 are in the database after the server stopped"
              + (f"; missing: {lost[:5]}" if lost else ""))
    errors = third["errors"] + len(lost)
    figures.update(S3_p99_ms=round(third["p99_ms"], 1), S3_errors=errors,
                   S3_boards=len(s3_boards), S3_workers=args.s3_workers)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
