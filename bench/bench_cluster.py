"""Cluster benchmarks S4-S6: two `ota serve` replicas on PostgreSQL + SeaweedFS behind nginx.

S4  signed check-ins/s through nginx to the two replicas ÷ signed check-ins/s of one embedded
    `ota serve` (SQLite + blob directory), the same generator and boards in the same run
    (median of rounds, each embedded then cluster back to back)
S5  10,000 boards over 60 s through the cluster, one request each on a new connection (open
    loop, bench/checkin_load.py): half check-ins, half `confirmed` reports of a release they
    were offered; one replica is killed (SIGKILL) at 20 s and started again at 40 s. p99,
    errors, and `lost`: acknowledged requests whose counter, last-seen time or report status
    PostgreSQL does not hold after the run
S6  1 MB blob MB/s through the cluster ÷ nginx serving the same file statically. The blob is
    in SeaweedFS; each board downloads it with the download grant its check-in's offer gave
    (X-Ota-Grant, a real signed check-in answered 200 before the rounds), which nginx checks
    itself (njs) and answers from a replica's verified cache without asking a replica: the
    production layout, docs/operations.md "Blobs sent by nginx". `--s6-signed`: signed
    requests instead (a counter each), which the replica authenticates and answers with
    X-Accel-Redirect into its cache, nginx sending the file. `--s6-accel off` (with
    --s6-signed): the replica sends the blob with sendfile and nginx relays it (the layout
    before --blob-accel). `--s6-compare`: after each
    round, one of the same downloads with `If-None-Match: "x"` (which the replica answers
    itself, nginx relaying), and the median CPU per download of both ways, measured in one
    cluster (separate runs differ more by the machine's other load than by the change)

Everything runs on this machine's two cores: the generator, nginx, both replicas, PostgreSQL
and SeaweedFS share them, so the cluster's two replicas do not get a core each. PostgreSQL
runs with production's durability by default (`fsync=on`, `full_page_writes=on`,
`synchronous_commit=on`); `--fsync off` uses the test settings of tools/cluster/postgres.py.
All on 127.0.0.1, bounded in count and time.

    python bench/bench_cluster.py [--quick] [--fsync on|off] [--s6-accel on|off]
                                  [--s6-signed] [--s6-downloads N] [--s6-compare]

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
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_server import (  # noqa: E402
    CHECKIN_MEM_FREE,
    PHASE_TIMEOUT,
    Board,
    Req,
    checkin_body,
    cpu_seconds,
    nginx_cpu,
    obtain_grants,
)
from bench_server import _closed_loop as closed_loop  # noqa: E402
from checkin_load import write_requests  # noqa: E402
from server_support import FleetKeys, make_bundle  # noqa: E402

from ota_server.device_auth import sign_request  # noqa: E402
from ota_server.rollout import bucket_of  # noqa: E402
from ota_server.settings import Settings  # noqa: E402
from ota_server.storage.postgres import PostgresStore  # noqa: E402
from signing import keys as keymod  # noqa: E402
from tools.cluster.nginx import Nginx  # noqa: E402
from tools.cluster.stack import Cluster  # noqa: E402
from tools.local_server import LocalServer  # noqa: E402

PRODUCTION_PG = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}
TEST_PG: dict[str, str] = {}  # tools/cluster/postgres.py's own: fsync and full_page_writes off
REPORT_BODY = {"app": "demo", "sequence": 1, "status": "confirmed", "version": "1.0.0"}


@dataclass(frozen=True)
class Scale:
    s4_checkins: int       # per server and round
    s4_rounds: int
    s5_boards: int
    s5_seconds: float
    s6_downloads: int      # per server and round
    s4_boards: int = 64
    s4_concurrency: int = 32
    s6_concurrency: int = 8
    s6_rounds: int = 3


FULL = Scale(s4_checkins=6000, s4_rounds=3, s5_boards=10_000, s5_seconds=60.0,
             s6_downloads=600)
QUICK = Scale(s4_checkins=600, s4_rounds=1, s5_boards=1000, s5_seconds=6.0, s6_downloads=30,
              s6_rounds=1)


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def cluster_cpu(cluster: Cluster) -> dict[str, float]:
    """CPU seconds so far of each part of the cluster, by name."""
    assert cluster.postgres is not None and cluster.s3 is not None
    assert cluster.nginx is not None
    parts = {f"replica{n}": cpu_seconds(r.pid) for n, r in enumerate(cluster.replicas, 1)}
    # The postmaster and `weed server`: the components keep their process to themselves.
    pg, s3 = cluster.postgres._process, cluster.s3._process
    parts["postgres"] = cpu_seconds(None if pg is None else pg.pid)
    parts["seaweedfs"] = cpu_seconds(None if s3 is None else s3.pid)
    parts["nginx"] = nginx_cpu(cluster.nginx)
    parts["generator"] = time.process_time()
    return parts


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> str:
    return ", ".join(f"{name} {after[name] - before[name]:.2f}s" for name in after)


# -- set-up -------------------------------------------------------------------------------------

def new_boards(prefix: str, count: int) -> list[Board]:
    return [Board(f"{prefix}-{i:06d}", keymod.generate_private_key()) for i in range(count)]


async def _register_pg(dsn: str, boards: list[Board], offered: list[Board]) -> None:
    """Add `boards` to PostgreSQL, and open an `offered` deployment of release demo 1 for
    each of `offered` (the boards that report in S5), a few at a time."""
    store = await PostgresStore.open(dsn)
    try:
        gate = asyncio.Semaphore(8)

        async def add(board: Board) -> None:
            async with gate:
                await store.add_device(board.device_id, keymod.public_point(board.key), "unix",
                                       [], "stable", bucket_of(board.device_id))

        await asyncio.gather(*(add(b) for b in boards))
        if offered:
            release = await store.release("demo", 1)
            assert release is not None

            async def offer(board: Board) -> None:
                async with gate:
                    await store.open_deployment_for(board.device_id, release.id, "stable")

            await asyncio.gather(*(offer(b) for b in offered))
    finally:
        await store.close()


def register_pg(dsn: str, boards: list[Board], offered: list[Board]) -> None:
    asyncio.run(_register_pg(dsn, boards, offered))


def copy_boards(settings: Settings, boards: list[Board]) -> None:
    """Register the same boards (ids and keys) in the embedded server's SQLite."""
    from ota_server.storage.sqlite import SqliteStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)

    async def add() -> None:
        store = SqliteStore(settings.db_path)
        try:
            for board in boards:
                await store.add_device(board.device_id, keymod.public_point(board.key), "unix",
                                       [], "stable", bucket_of(board.device_id))
        finally:
            await store.close()

    asyncio.run(add())


# -- S4 -----------------------------------------------------------------------------------------

def checkin_lanes(base: str, boards: list[Board], scale: Scale) -> tuple[list[list[Req]], int]:
    per_board = scale.s4_checkins // len(boards) + 1
    lanes: list[list[Req]] = [[] for _ in range(scale.s4_concurrency)]
    for index, board in enumerate(boards):  # one board, one lane: its counters stay in order
        body = checkin_body(board.device_id)
        lanes[index % scale.s4_concurrency].extend(
            board.signed(base, "POST", "/v1/device/checkin", body) for _ in range(per_board))
    return lanes, per_board * len(boards)


async def s4_round(embedded: LocalServer, cluster: Cluster, boards: list[Board],
                   envelope_size: int, scale: Scale, round_no: int) -> float:
    results = []
    for name, base in (("embedded", embedded.url), ("cluster", cluster.url)):
        lanes, count = checkin_lanes(base, boards, scale)
        load = loadavg()
        before = (cluster_cpu(cluster) if name == "cluster"
                  else {"server": cpu_seconds(embedded.pid), "generator": time.process_time()})
        secs, body_bytes, errors = await closed_loop(lanes, scale.s4_concurrency)
        after = (cluster_cpu(cluster) if name == "cluster"
                 else {"server": cpu_seconds(embedded.pid), "generator": time.process_time()})
        rate = count / secs
        print(f"S4 round {round_no} {name}: {count} signed check-ins in {secs:.2f}s = "
              f"{rate:.0f}/s, errors {errors} (load {load}; CPU {cpu_delta(before, after)})",
              flush=True)
        if errors or body_bytes != count * envelope_size:
            raise RuntimeError(f"S4 {name} had {errors} errors, {body_bytes} body bytes for "
                               f"{count} answers of {envelope_size} B")
        results.append(rate)
    return results[1] / results[0]


# -- S5 -----------------------------------------------------------------------------------------

def raw_request(port: int, board: Board, path: str, body: bytes) -> bytes:
    """The exact bytes a board sends (bootloader_py/ota/http.py: `Connection: close`)."""
    board.counter += 1
    auth = sign_request(board.key, board.device_id, board.counter, "POST", path, body)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
            f"Authorization: {auth}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


def s5(cluster: Cluster, checkers: list[Board], reporters: list[Board], work: Path,
       scale: Scale) -> dict[str, Any]:
    """Open loop through nginx; replica 1 SIGKILLed at a third of the run, started again at
    two thirds. The generator's figures, with `lost` from PostgreSQL after the run."""
    assert cluster.nginx is not None
    port = cluster.nginx.port
    report = json.dumps(REPORT_BODY).encode()
    order: list[tuple[Board, bool]] = []  # (board, is a report), interleaved
    for checker, reporter in zip(checkers, reporters, strict=True):
        order += [(checker, False), (reporter, True)]
    requests = [raw_request(port, b, "/v1/device/report", report) if is_report
                else raw_request(port, b, "/v1/device/checkin", checkin_body(b.device_id))
                for b, is_report in order]
    path = work / "s5-requests.bin"
    write_requests(path, requests)
    del requests
    victim = cluster.replicas[0]
    load = loadavg()
    before = cluster_cpu(cluster)
    generator = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "checkin_load.py"), "--port", str(port),
         "--requests", str(path), "--seconds", str(scale.s5_seconds), "--ok", "200,204"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic() + 0.2  # the generator's own start offset
    time.sleep(max(0.0, started + scale.s5_seconds / 3 - time.monotonic()))
    victim_cpu = cpu_seconds(victim.pid)  # its CPU until the kill; the new process starts at 0
    victim.kill()
    killed_at = time.monotonic() - started
    time.sleep(max(0.0, started + 2 * scale.s5_seconds / 3 - time.monotonic()))
    restart = time.monotonic()
    victim.start()
    restarted_at, restart_took = time.monotonic() - started, time.monotonic() - restart
    out, err = generator.communicate(timeout=scale.s5_seconds + PHASE_TIMEOUT)
    if generator.returncode != 0:
        raise RuntimeError(f"S5 load generator failed ({generator.returncode}):\n{err}")
    figures: dict[str, Any] = json.loads(out.splitlines()[-1])
    after = cluster_cpu(cluster)
    after["replica1"] += victim_cpu
    print(f"S5: {figures['requests']} boards over {scale.s5_seconds:.0f}s through nginx (half "
          f"check-ins, half reports), replica 1 killed at {killed_at:.1f}s, started again at "
          f"{restarted_at:.1f}s (healthy {restart_took:.1f}s later): p50 "
          f"{figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, max "
          f"{figures['max_ms']:.1f} ms, errors {figures['errors']} "
          f"{figures['error_kinds'] or ''}; answers {figures['statuses']}")
    busy = sum(after[name] - before[name] for name in after if name != "generator")
    print(f"S5 CPU: {cpu_delta(before, after)}; the cluster's {busy:.1f}s is "
          f"{busy / figures['requests'] * 1e3:.2f} ms per request, {busy / scale.s5_seconds:.2f} "
          f"cores on average; load generator {figures['generator_cpu_s']:.1f}s; load at the "
          f"start {load}")
    if figures["slow_by_second"]:
        print(f"S5 slow (> 100 ms) by second of the run: {figures['slow_by_second']}")
    answered = [order[i] for i in figures["answered_ok"]]
    for replica in cluster.replicas:  # SIGTERM: the written-behind check-in records flush
        replica.stop()
    missing, records = asyncio.run(_not_recorded(cluster.db_url, answered))
    print(f"S5 recorded: {len(answered) - len(missing)} of the {len(answered)} acknowledged "
          f"requests have their counter, last-seen time (and report status) in PostgreSQL"
          + (f"; missing: {missing[:5]}" if missing else "")
          + f"; check-in inventories and offers missing (written behind, may be lost with a "
            f"SIGKILL: docs/operations.md): {records}")
    for replica in cluster.replicas:
        replica.start()
    figures["lost"] = len(missing)
    return figures


async def _not_recorded(dsn: str, answered: list[tuple[Board, bool]]) -> tuple[list[str], int]:
    """The acknowledged requests PostgreSQL does not hold (counter, last-seen, a report's
    status), and the count of check-ins whose written-behind records it does not hold."""
    store = await PostgresStore.open(dsn)
    try:
        release = await store.release("demo", 1)
        assert release is not None
        missing: list[str] = []
        records = 0
        for board, is_report in answered:
            found = await store.device(board.device_id)
            status = await store.deployment_status(board.device_id, release.id)
            if found is None or found.counter != board.counter \
                    or found.inventory["last_seen"] is None \
                    or (is_report and status != "confirmed"):
                missing.append(board.device_id)
            elif not is_report and (found.inventory["mem_free"] != CHECKIN_MEM_FREE
                                    or status != "offered"):
                records += 1
        return missing, records
    finally:
        await store.close()


# -- S6 -----------------------------------------------------------------------------------------

async def checkin_grants(cluster: Cluster, boards: list[Board]) -> dict[str, str]:
    """Each board's download grant, from a real signed check-in through nginx answered 200
    (the release is published to every board): the X-Ota-Grant value, by device id."""
    await obtain_grants(cluster.url, boards, "S6")
    return {board.device_id: board.grant for board in boards if board.grant is not None}


def s6_lanes(cluster: Cluster, boards: list[Board], sha: str, scale: Scale,
             grants: dict[str, str] | None, headers: dict[str, str] | None = None
             ) -> list[list[Req]]:
    """S6's downloads, a board's always in one lane (its counters in order): each with the
    board's grant, or signed when `grants` is None. A board will send its grant on a pack
    (`GET /v1/device/pack`) too; S6 measures the one-blob route, which nginx answers itself."""
    conc = scale.s6_concurrency
    lanes: list[list[Req]] = [[] for _ in range(conc)]
    path = f"/v1/blobs/{sha}"
    for i in range(scale.s6_downloads):
        board = boards[i % len(boards)]
        req = (board.signed(cluster.url, "GET", path) if grants is None
               else Req("GET", cluster.url + path, {"Authorization": grants[board.device_id]}))
        req.headers.update(headers or {})
        lanes[(i % len(boards)) % conc].append(req)
    return lanes


def replicas_asked(cluster: Cluster) -> int:
    """Blob requests the replicas have answered so far, together (their metrics)."""
    total = 0
    for replica in cluster.replicas:
        text = urllib.request.urlopen(replica.url + "/metrics", timeout=10).read().decode()
        total += sum(int(float(line.split()[-1])) for line in text.splitlines()
                     if line.startswith("mpota_blob_requests_total{"))
    return total


async def s6_cluster_cpu(cluster: Cluster, lanes: list[list[Req]], size: int,
                         scale: Scale) -> tuple[float, dict[str, float], dict[str, float], int]:
    """(seconds, CPU ms per download by process, CPU seconds by process, downloads a replica
    answered) of S6's downloads through the cluster; RuntimeError unless every one came back
    whole."""
    asked = replicas_asked(cluster)
    before = cluster_cpu(cluster)
    secs, got, errors = await closed_loop(lanes, scale.s6_concurrency)
    after = cluster_cpu(cluster)
    asked = replicas_asked(cluster) - asked
    if errors or got != scale.s6_downloads * size:
        raise RuntimeError(f"S6 errors: cluster {errors}, {got} bytes, expected "
                           f"{scale.s6_downloads * size}")
    spent = {name: after[name] - before[name] for name in after}
    return (secs, {name: cpu * 1000 / scale.s6_downloads for name, cpu in spent.items()},
            spent, asked)


async def s6_replica_sent(cluster: Cluster, boards: list[Board], sha: str, size: int,
                          scale: Scale, round_no: int, grants: dict[str, str] | None
                          ) -> dict[str, float]:
    """The same downloads with `If-None-Match: "x"`: the replica sends the blob itself and
    nginx relays it (with --blob-accel off, the plain GET goes that way too)."""
    lanes = s6_lanes(cluster, boards, sha, scale, grants, {"If-None-Match": '"x"'})
    secs, per, _spent, _asked = await s6_cluster_cpu(cluster, lanes, size, scale)
    print(f"S6 round {round_no} replica-sent: {scale.s6_downloads} x 1 MB in {secs:.2f}s = "
          f"{scale.s6_downloads * size / secs / 1e6:.0f} MB/s; CPU ms per download: "
          + ", ".join(f"{name} {ms:.2f}" for name, ms in per.items()), flush=True)
    return per


async def s6_round(cluster: Cluster, static: Nginx, boards: list[Board], sha: str, size: int,
                   scale: Scale, round_no: int, grants: dict[str, str] | None
                   ) -> tuple[float, dict[str, float]]:
    """(S6's ratio, the cluster's CPU ms per download by process) of one round."""
    conc = scale.s6_concurrency
    lanes = s6_lanes(cluster, boards, sha, scale, grants)
    ota_secs, per, spent, asked = await s6_cluster_cpu(cluster, lanes, size, scale)
    ota_bytes = scale.s6_downloads * size
    plain = [Req("GET", static.url + "/blob.bin", {}) for _ in range(scale.s6_downloads)]
    cpu = nginx_cpu(static), time.process_time()
    ngx_secs, ngx_bytes, ngx_errors = await closed_loop([plain[i::conc] for i in range(conc)],
                                                        conc)
    ngx_cpu = nginx_cpu(static) - cpu[0], time.process_time() - cpu[1]
    expected = scale.s6_downloads * size
    if ngx_errors or ngx_bytes != expected:
        raise RuntimeError(f"S6 errors: nginx {ngx_errors}/{ngx_bytes}, expected {expected} "
                           "bytes")
    ota_mbs, ngx_mbs = ota_bytes / ota_secs / 1e6, ngx_bytes / ngx_secs / 1e6
    print(f"S6 round {round_no} cluster: {scale.s6_downloads} x 1 MB blob in {ota_secs:.2f}s = "
          f"{ota_mbs:.0f} MB/s, {asked} of them answered by a replica (CPU "
          + ", ".join(f"{name} {used:.2f}s" for name, used in spent.items()) + ")", flush=True)
    print(f"S6 round {round_no} nginx:   {scale.s6_downloads} x 1 MB file in {ngx_secs:.2f}s = "
          f"{ngx_mbs:.0f} MB/s (CPU: nginx {ngx_cpu[0]:.2f}s, generator {ngx_cpu[1]:.2f}s)",
          flush=True)
    print(f"S6 round {round_no} CPU ms per download: cluster "
          + ", ".join(f"{name} {ms:.2f}" for name, ms in per.items())
          + f"; static nginx {ngx_cpu[0] * 1000 / scale.s6_downloads:.2f}", flush=True)
    return ota_mbs / ngx_mbs, per


async def warm_caches(cluster: Cluster, boards: list[Board], sha: str, size: int) -> None:
    """One download from each replica directly: each fills its verified cache from S3 once
    (S6 measures the steady state, as a fleet downloading a release sees it). A board each:
    one board's two requests in parallel could commit its counters out of order (a replay).
    With a Range of the whole blob: a replica answers that itself (a plain GET is handed to
    nginx, which is not in this path)."""
    lanes = [[board.signed(replica.url, "GET", f"/v1/blobs/{sha}")]
             for board, replica in zip(boards, cluster.replicas, strict=False)]
    for [req] in lanes:
        req.headers["Range"] = "bytes=0-"
    _secs, got, errors = await closed_loop(lanes, len(lanes))
    if errors or got != size * len(lanes):
        raise RuntimeError(f"warming the blob caches: {errors} errors, {got} bytes")


# -- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--fsync", choices=("on", "off"), default="on",
                        help="PostgreSQL durability: on (production, default) or off (tests)")
    parser.add_argument("--s5-boards", type=int, default=None, help="override S5's board count")
    parser.add_argument("--s5-seconds", type=float, default=None, help="override S5's span")
    parser.add_argument("--s6-accel", choices=("on", "off"), default="on",
                        help="whole blobs sent by nginx from the replicas' caches (on, "
                             "production) or by the replicas through nginx (off)")
    parser.add_argument("--s6-signed", action="store_true",
                        help="S6's downloads signed (a counter each, the replica checks) "
                             "instead of with the check-ins' download grants (nginx checks)")
    parser.add_argument("--s6-downloads", type=int, default=None,
                        help="override S6's downloads per server and round")
    parser.add_argument("--s6-compare", action="store_true",
                        help="after each S6 round, the same downloads sent by the replica "
                             "itself (If-None-Match), and both ways' median CPU per download")
    parser.add_argument("--s6-rounds", type=int, default=None, help="override S6's rounds")
    parser.add_argument("--s4-checkins", type=int, default=None,
                        help="override S4's check-ins per server and round")
    parser.add_argument("--s4-only", action="store_true",
                        help="run S4 alone (no S5, S6 figures): for profiling")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    if args.s4_checkins:
        scale = replace(scale, s4_checkins=args.s4_checkins)
    if args.s6_downloads or args.s6_rounds:
        scale = replace(scale, s6_downloads=args.s6_downloads or scale.s6_downloads,
                        s6_rounds=args.s6_rounds or scale.s6_rounds)
    if args.s5_boards or args.s5_seconds:
        scale = replace(scale, s5_boards=args.s5_boards or scale.s5_boards,
                        s5_seconds=args.s5_seconds or scale.s5_seconds)
    pg_settings = PRODUCTION_PG if args.fsync == "on" else TEST_PG
    print(f"machine: {os.cpu_count()} cores shared by the generator, nginx, both replicas, "
          f"PostgreSQL (fsync={args.fsync}) and SeaweedFS; load average {loadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as scratch:
        work = Path(scratch)
        keys = FleetKeys.create(work)
        blob = os.urandom(1 << 20)
        bundle = make_bundle(work, {"app_main.py": b"print('bench')\n", "lib/data.bin": blob},
                             version="1.0.0", sequence=1, key=keys.release_key)
        envelope = (bundle / "manifest.dsse.json").read_bytes()
        sha = hashlib.sha256(blob).hexdigest()
        static_dir = work / "static"
        static_dir.mkdir()
        (static_dir / "blob.bin").write_bytes(blob)
        s4_boards = new_boards("s4", scale.s4_boards)
        half = scale.s5_boards // 2
        checkers, reporters = new_boards("s5c", half), new_boards("s5r", half)
        embedded_settings = Settings(data_dir=work / "embedded")
        copy_boards(embedded_settings, s4_boards)
        figures: dict[str, Any] = {}
        t0 = time.perf_counter()
        with Cluster(work / "cluster", keys.root_path, pg_settings=pg_settings,
                     extra_args=["--quiet"], blob_accel=args.s6_accel == "on") as cluster, \
                LocalServer(embedded_settings.data_dir, keys.root_path,
                            extra_args=["--quiet"]) as embedded, \
                Nginx(static_dir, work) as static:
            print(f"set-up: PostgreSQL, SeaweedFS, ota db migrate, 2 replicas, nginx and the "
                  f"embedded server up in {time.perf_counter() - t0:.1f}s", flush=True)
            cluster.client().publish(bundle, "stable", percent=100)
            embedded.client().publish(bundle, "stable", percent=100)
            t0 = time.perf_counter()
            register_pg(cluster.db_url, s4_boards + checkers + reporters, reporters)
            print(f"set-up: {len(s4_boards) + 2 * half} boards registered in PostgreSQL, {half} "
                  f"of them offered demo 1.0.0, in {time.perf_counter() - t0:.1f}s", flush=True)

            ratios = [asyncio.run(s4_round(embedded, cluster, s4_boards, len(envelope), scale,
                                           n + 1)) for n in range(scale.s4_rounds)]
            print(f"S4 ratio per round: {', '.join(f'{r:.3f}' for r in ratios)}; median "
                  f"{statistics.median(ratios):.3f}", flush=True)
            figures["S4_ratio"] = round(statistics.median(ratios), 3)

            if args.s4_only:
                print(f"load average at the end {loadavg()}")
                print(json.dumps(figures))
                return 0
            asyncio.run(warm_caches(cluster, s4_boards, sha, len(blob)))
            grants = None if args.s6_signed else asyncio.run(checkin_grants(cluster, s4_boards))
            if grants is not None:
                print(f"S6: {len(grants)} boards checked in through nginx, each offer with a "
                      f"download grant", flush=True)
            ratios, cpu = [], []
            for n in range(scale.s6_rounds):
                ratio, per = asyncio.run(s6_round(cluster, static, s4_boards, sha, len(blob),
                                                  scale, n + 1, grants))
                ratios.append(ratio)
                cpu.append(per)
                if args.s6_compare:
                    cpu.append(asyncio.run(s6_replica_sent(cluster, s4_boards, sha, len(blob),
                                                           scale, n + 1, grants)))
            print(f"S6 ratio per round: {', '.join(f'{r:.3f}' for r in ratios)}; median "
                  f"{statistics.median(ratios):.3f}", flush=True)
            s6_ratio = statistics.median(ratios)
            if args.s6_compare:
                for name, rounds in (("as measured", cpu[0::2]), ("replica-sent", cpu[1::2])):
                    print(f"S6 median CPU ms per download, {name}: " + ", ".join(
                        f"{part} {statistics.median(r[part] for r in rounds):.2f}"
                        for part in rounds[0]), flush=True)

            fifth = s5(cluster, checkers, reporters, work, scale)
        figures.update(S5_p99_ms=round(fifth["p99_ms"], 1), S5_errors=fifth["errors"],
                       S5_lost=fifth["lost"], S6_ratio=round(s6_ratio, 3),
                       S5_boards=fifth["requests"], pg_fsync=args.fsync,
                       s6_accel=args.s6_accel,
                       s6_auth="signed" if args.s6_signed else "grant")
    print(f"load average at the end {loadavg()}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
