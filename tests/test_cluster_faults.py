"""Faults on the scale-out components, with nothing lost (issue #14, item 7).

Real processes on 127.0.0.1: PostgreSQL, SeaweedFS's S3 gateway (reached through a link the
test can cut: tests/cluster_faults_support.py, S3Link), two `ota serve` replicas on them, and
nginx balancing over the replicas (tools/cluster/nginx.py). Simulated boards talk to nginx as
boards do and keep a ledger of every answer; afterwards the database must hold every report
and counter the server acknowledged.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from click.testing import CliRunner
from cluster_faults_support import (
    FieldBoard,
    Ledger,
    S3Link,
    boards_running,
    bucket_keys,
    check_nothing_acknowledged_is_lost,
    fetch,
    manifest_blobs,
    metric,
    query,
    run_boards,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import FleetKeys, SimBoard, make_bundle

from ota_server.storage import postgres as postgres_storage
from ota_server.storage.errors import StoreError, StoreUnavailable
from signing.bundle import load_bundle
from tools.api_client import ApiClient, ApiClientError
from tools.cli import cli
from tools.cluster.nginx import Nginx
from tools.cluster.postgres import PostgresServer
from tools.cluster.seaweed import SeaweedS3
from tools.local_server import LocalServer

BOARDS = 8
# A failed download counts as a failure in the rollout's pause rule (docs/operations.md, "When
# a rollout pauses on its own"); these tests are about the cluster, not that rule.
POLICY = {"stages": [{"percent": 100}], "failure_threshold": 1}


@dataclass
class Cluster:
    pg: PostgresServer
    database: str
    seaweed: SeaweedS3
    bucket: str
    link: S3Link
    replicas: list[LocalServer]
    nginx: Nginx
    keys: FleetKeys
    api: ApiClient
    workdir: Path

    def sql(self, text: str) -> list[list[str]]:
        return query(self.pg, self.database, text)

    def boards(self, count: int, ledger: Ledger) -> list[FieldBoard]:
        return self.boards_from(0, count, ledger)

    def boards_from(self, first: int, count: int, ledger: Ledger) -> list[FieldBoard]:
        """`count` new boards, registered, numbered from `first`."""
        made = []
        for i in range(first, first + count):
            sim = SimBoard(f"field-{i:02d}")
            self.api.register_device(sim.device_id, sim.point, board="unix")
            made.append(FieldBoard(sim, self.nginx.url, ledger))
        return made

    def bundle(self, sequence: int, sizes: tuple[int, ...] = (40_000, 25_000, 9_000)) -> Path:
        files = {"app_main.py": f"print('release {sequence}')\n".encode()}
        files.update({f"data/part{i}.bin": os.urandom(size) for i, size in enumerate(sizes)})
        return make_bundle(self.workdir, files, version=f"1.{sequence}.0", sequence=sequence,
                           key=self.keys.release_key)

    def publish(self, sequence: int) -> dict[str, Any]:
        result = self.api.publish(self.bundle(sequence), "stable", policy=POLICY)
        assert result.rollout is not None
        return result.release


@pytest.fixture
def cluster(tmp_path: Path, postgres_server: PostgresServer, pg_dsn: str,
            seaweed: SeaweedS3, s3_url: str) -> Iterator[Cluster]:
    """PostgreSQL (a new database, migrated by `ota db migrate`), a new bucket reached through
    an S3Link, two replicas and nginx in front of them."""
    bucket = urlsplit(s3_url).netloc
    with S3Link(seaweed.s3_port) as link, tempfile.TemporaryDirectory() as nginx_dir:
        blobs_url = f"s3://{bucket}?endpoint={link.endpoint}"
        migrated = CliRunner().invoke(cli, ["db", "migrate", "--db", pg_dsn, "--blobs",
                                            blobs_url], catch_exceptions=False)
        assert migrated.exit_code == 0, migrated.output
        keys = FleetKeys.create(tmp_path)
        replicas = [LocalServer(tmp_path / f"replica-{i}", keys.root_path, db_url=pg_dsn,
                                blobs_url=blobs_url, env=dict(os.environ)) for i in (1, 2)]
        try:
            for replica in replicas:
                replica.start()
            os.chmod(nginx_dir, 0o755)  # nginx's worker runs as nobody when we are root
            with Nginx(None, Path(nginx_dir), upstreams=[r.url for r in replicas]) as nginx:
                yield Cluster(postgres_server, urlsplit(pg_dsn).path.lstrip("/"), seaweed,
                              bucket, link, replicas, nginx, keys,
                              ApiClient(nginx.url, replicas[0].token), tmp_path)
        finally:
            for replica in replicas:
                replica.stop()


def served(replica: LocalServer) -> float:
    """Board requests a replica answered so far (its /metrics)."""
    status, text = fetch(replica.url + "/metrics")
    assert status == 200
    return metric(text.decode(), "mpota_checkins_total") + \
        metric(text.decode(), "mpota_reports_total")


def test_a_replica_killed_mid_rollout_leaves_the_rollout_to_the_other(cluster: Cluster) -> None:
    ledger = Ledger()
    boards = cluster.boards(BOARDS, ledger)
    release = cluster.publish(1)
    victim, survivor = cluster.replicas
    kill_sent = killed_at = 0.0
    # The boards come one by one (a quarter of a second apart), as a fleet polling does.
    with boards_running(boards, lambda b: b.installed == 1 and not b.queue, deadline_s=25,
                        pause_s=0.2, stagger_s=0.25):
        # Mid-rollout: some boards have confirmed, the others are still on their way.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sum(b.installed for b in boards) < BOARDS // 2:
            time.sleep(0.01)
        done_before = sum(b.installed for b in boards)
        assert served(victim) > 0 and served(survivor) > 0  # both replicas were serving
        victim_pid = victim.pid
        kill_sent = time.monotonic()
        victim.kill()  # SIGKILL: no clean-up, its write-behind records are lost
        killed_at = time.monotonic()  # the process is gone (reaped)
    assert victim_pid is not None and BOARDS // 2 <= done_before < BOARDS
    assert all(b.installed == 1 and not b.queue for b in boards), \
        [(b.sim.device_id, b.installed, b.queue) for b in boards]
    status = cluster.api.rollout_status("stable")["rollout"]
    assert status["state"] == "active" and status["counts"]["confirmed"] == BOARDS
    assert release["sequence"] == 1
    # Only requests in flight on the killed replica may fail: every failure began before the
    # process was gone and ended after the signal was sent (nginx skips the dead replica from
    # then on).
    failures = ledger.failed()
    assert all(a.started <= killed_at and a.ended >= kill_sent for a in failures), \
        [(a.path, a.status, a.error, a.started - killed_at, a.ended - kill_sent)
         for a in failures]
    assert all(a.status in (0, 502) for a in failures), failures
    after = [a for a in ledger.answers if a.started > killed_at]
    assert after and all(a.acknowledged for a in after), \
        [(a.path, a.status, a.error, a.started - killed_at, a.ended - killed_at)
         for a in after if not a.acknowledged]
    checked = check_nothing_acknowledged_is_lost(ledger, cluster.pg, cluster.database)
    assert checked["reports"] >= 3 * BOARDS


def test_postgresql_restarted_during_check_ins_answers_503_and_recovers_alone(
        cluster: Cluster) -> None:
    ledger = Ledger()
    boards = cluster.boards(BOARDS, ledger)
    cluster.publish(1)
    pids = [r.pid for r in cluster.replicas]
    stop = {"now": False}
    with boards_running(boards, lambda b: stop["now"], deadline_s=25, pause_s=0.2,
                        stagger_s=0.25):
        # Mid-rollout: half the boards have the release, the others meet the outage.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(b.installed for b in boards) < BOARDS // 2:
            time.sleep(0.01)
        assert sum(b.installed for b in boards) < BOARDS
        down_at = time.monotonic()
        cluster.pg.stop()
        time.sleep(3)
        cluster.pg.start()
        up_at = time.monotonic()
        # Left alone (no replica restarted), every board gets answers again.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(
                b.installed == 1 and not b.queue for b in boards):
            time.sleep(0.05)
        # A second more of check-ins, all of which must be answered.
        time.sleep(max(0.0, up_at + 3 - time.monotonic()))
        stop["now"] = True
    assert [r.pid for r in cluster.replicas] == pids
    assert all(b.installed == 1 and not b.queue for b in boards), \
        [(b.sim.device_id, b.installed, b.queue) for b in boards]
    # A board that got a 503 for its check-in reports `failed` naming what it runs; one that
    # runs nothing yet names no release, and the server refuses that report for good (404
    # `unknown_release`): the protocol's answer, not the outage's.
    refused = [a for a in ledger.failed() if a.status == 404]
    assert all(a.report and a.report["sequence"] == 0 and a.report["status"] == "failed"
               and a.report["reason"].startswith("checkin: http 503") for a in refused), refused
    failures = [a for a in ledger.failed() if a not in refused]
    during = [a for a in failures if a.started >= down_at]
    assert during, "no request met the outage"
    for answer in failures:
        # 503 with Retry-After, passed through nginx as the replica sent it; nothing else.
        assert answer.status == 503, (answer.status, answer.error, answer.body[:200])
        assert answer.headers.get("Retry-After") == "5"
        assert b'"unavailable"' in answer.body
        assert answer.ended >= down_at and answer.started <= up_at + 2, \
            (answer.started - down_at, answer.ended - up_at)
    after = [a for a in ledger.answers if a.started > up_at + 2]
    assert after and all(a.acknowledged for a in after)
    checked = check_nothing_acknowledged_is_lost(ledger, cluster.pg, cluster.database)
    assert checked["reports"] >= 3 * BOARDS
    status = cluster.api.rollout_status("stable")["rollout"]
    assert status["counts"]["confirmed"] == BOARDS


def test_s3_down_during_a_publish_fails_cleanly_and_the_retry_registers_it(
        cluster: Cluster) -> None:
    bundle = cluster.bundle(1)
    blobs = sorted({entry.blob for entry in load_bundle(bundle).manifest.files})
    uploaded: list[int] = []

    def cut_after_the_first_blob(done: int, total: int) -> None:
        uploaded.append(done)
        if len(uploaded) == 1:
            cluster.link.cut()

    with pytest.raises(ApiClientError) as refused:
        cluster.api.publish(bundle, "stable", policy=POLICY, progress=cut_after_the_first_blob)
    assert (refused.value.status, refused.value.code) == (503, "unavailable")
    assert len(uploaded) == 1
    # Nothing half-registered: no release, no rollout, one blob in the bucket of three.
    assert cluster.sql("SELECT count(*) FROM releases") == [["0"]]
    assert cluster.sql("SELECT count(*) FROM rollouts") == [["0"]]
    client = cluster.seaweed.client()
    try:
        assert len(bucket_keys(client, cluster.bucket)) == 1
        # While the store is down, a publish is refused at once with the same clear answer.
        with pytest.raises(ApiClientError) as again:
            cluster.api.publish(bundle, "stable", policy=POLICY)
        assert (again.value.status, again.value.code) == (503, "unavailable")
        assert "retry later" in again.value.message
        cluster.link.restore()
        result = cluster.api.publish(bundle, "stable", policy=POLICY)
        assert result.new and len(result.uploaded) == len(blobs) - 1
        assert bucket_keys(client, cluster.bucket) == {f"blobs/{b}" for b in blobs}
        # Every blob a registered release names is in the bucket.
        named = {f"blobs/{row[0]}" for row in cluster.sql("SELECT blob FROM release_blobs")}
        assert named == {f"blobs/{b}" for b in blobs}
    finally:
        client.close()
    rows = cluster.sql("SELECT app, sequence FROM releases")
    assert rows == [["demo", "1"]]
    envelope = cluster.api.release_envelope("demo", "1.1.0")
    assert sorted(manifest_blobs(envelope)) == blobs


def test_s3_down_during_downloads_answers_503_and_the_boards_retry(cluster: Cluster) -> None:
    ledger = Ledger()
    boards = cluster.boards(4, ledger)
    bundle = cluster.bundle(1)
    cluster.api.publish(bundle, "stable", policy=POLICY)
    cluster.link.cut()
    for board in boards:
        board.check()
    # Each board was offered the release (PostgreSQL is up) and its pack answered 503 at once:
    # no replica has the blobs in its cache, and the store cannot be reached.
    packs = [a for a in ledger.answers if a.path.startswith("/v1/device/pack")]
    assert len(packs) == len(boards)
    for answer in packs:
        assert answer.status == 503, (answer.status, answer.error, answer.body[:200])
        assert answer.headers.get("Retry-After") == "5"
    # Not a hang: the S3 client's two attempts on a refused connection (with its backoff
    # between them) take about two seconds.
    assert all(a.ended - a.started < 5 for a in packs), [a.ended - a.started for a in packs]
    assert not any(b.installed for b in boards)
    sha = load_bundle(bundle).manifest.files[0].blob
    one = boards[0].request("GET", f"/v1/blobs/{sha}")
    assert one.status == 503 and one.headers.get("Retry-After") == "5"
    cluster.link.restore()
    run_boards(boards, lambda b: b.installed == 1 and not b.queue, deadline_s=15)
    assert all(b.installed == 1 and not b.queue for b in boards)
    checked = check_nothing_acknowledged_is_lost(ledger, cluster.pg, cluster.database)
    assert checked["reports"] >= 4 * len(boards)  # downloading, failed, ..., confirmed
    failed = cluster.sql("SELECT count(*) FROM deployment_history WHERE status = 'failed' "
                         "AND reason LIKE 'blob %: http 503%'")
    assert failed == [[str(len(boards))]]
    unavailable = 0.0
    for replica in cluster.replicas:
        _, text = fetch(replica.url + "/metrics")
        unavailable += metric(text.decode(), "mpota_store_unavailable_total")
    assert unavailable >= len(boards) + 1


def test_a_report_reaching_another_replica_finds_the_offer(cluster: Cluster) -> None:
    # The check-in's records were written behind (ota_server.counters): the report, handled
    # by the other replica a few milliseconds later, was refused as `not_offered` and the
    # board dropped it (a 4xx is final).
    ledger = Ledger()
    (board,) = cluster.boards(1, ledger)
    cluster.publish(1)
    first, second = cluster.replicas
    board.url = first.url
    offer = board.request("POST", "/v1/device/checkin", board.sim.checkin_body())
    assert offer.status == 200
    board.url = second.url
    report = board.report("downloading", 1)
    answer = board.request("POST", "/v1/device/report", json.dumps(report).encode(), report)
    assert answer.status == 204, answer.body
    assert cluster.sql("SELECT status FROM deployments") == [["downloading"]]


def test_a_connection_the_database_ended_while_idle_is_unavailable_not_a_bug() -> None:
    # What asyncpg raised for a pooled connection PostgreSQL had ended during a restart (met
    # by test_postgresql_restarted_during_check_ins_...): it was a 500 `internal`.
    err = asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in "
                                      "progress")
    translated = postgres_storage._translate(err)
    assert isinstance(translated, StoreUnavailable)
    assert "database unavailable" in str(translated)


def _asyncpg_errors() -> list[type[Exception]]:
    """Every exception class asyncpg raises (its warnings are emitted, never raised)."""
    found: set[type[Exception]] = set()
    for module in (asyncpg, asyncpg.exceptions, asyncpg.exceptions._base):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Exception) \
                    and not issubclass(value, Warning) and value.__module__.startswith("asyncpg"):
                found.add(value)
    return sorted(found, key=lambda kind: kind.__name__)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(_asyncpg_errors()), message=st.text(max_size=40))
def test_no_asyncpg_exception_leaves_the_store(kind: type[Exception], message: str) -> None:
    # The store's promise (ota_server/storage/postgres.py): handlers see its own errors only,
    # so an outage is a 503 and never an unhandled driver exception (a 500).
    assert isinstance(postgres_storage._translate(kind(message)), StoreError)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.lists(st.sampled_from((0, 1)), min_size=5, max_size=5))
def test_a_board_s_requests_may_reach_any_replica(cluster: Cluster, route: list[int]) -> None:
    # Whichever replica each request of an update reaches (`route`: check-in, downloading,
    # installed, confirmed, the next check-in), the answers are those of one server.
    if not cluster.sql("SELECT 1 FROM releases"):
        cluster.publish(1)
    count = int(cluster.sql("SELECT count(*) FROM devices")[0][0])
    (board,) = cluster.boards_from(count, 1, Ledger())
    steps = [("POST", "/v1/device/checkin", board.sim.checkin_body(), 200)]
    for status in ("downloading", "installed", "confirmed"):
        steps.append(("POST", "/v1/device/report",
                      json.dumps(board.report(status, 1)).encode(), 204))
    steps.append(("POST", "/v1/device/checkin", board.sim.checkin_body(sequence=1), 204))
    for (method, path, body, expected), replica in zip(steps, route, strict=True):
        board.url = cluster.replicas[replica].url
        answer = board.request(method, path, body)
        assert answer.status == expected, (route, path, answer.body)
    assert cluster.sql(f"SELECT status FROM deployments WHERE device_id = "
                       f"'{board.sim.device_id}'") == [["confirmed"]]
