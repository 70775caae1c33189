"""The PostgreSQL metadata store against a real PostgreSQL server (tests/cluster_support.py).

The operation tests run one body on both backends (`store` is parametrised over the embedded
SqliteStore and PostgresStore) so the two cannot drift apart; the concurrency, migration and
fault tests are PostgreSQL's own (several pools on one database stand for several replicas).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ota_server.storage.errors import StoreConflict, StoreError, StoreNotFound, StoreUnavailable
from ota_server.storage.postgres import PostgresStore, check_dsn, pg_migrations
from ota_server.storage.records import (
    HISTORY_PER_DEVICE,
    RECORDS_COUNTER,
    AuditEntry,
    BoardIdentity,
    DeploymentCounts,
    Token,
)
from ota_server.storage.sqlite import SqliteStore, _migrations
from tools.cluster.postgres import PostgresServer
from tools.local_server import free_port

KEY = b"\x04" + bytes(64)
BLOB_A = "a" * 64
BLOB_B = "b" * 64


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(kind, location) of an empty store of each kind."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "meta.db")
    return "postgres", request.getfixturevalue("pg_dsn")


@pytest.fixture
async def store(backend: tuple[str, str]) -> AsyncIterator[Any]:
    kind, location = backend
    if kind == "sqlite":
        sqlite_store = SqliteStore(Path(location))
        yield sqlite_store
        await sqlite_store.close()
        return
    pg = await PostgresStore.open(location)
    await pg.migrate()
    yield pg
    await pg.close()


async def _migrated(dsn: str) -> PostgresStore:
    pg = await PostgresStore.open(dsn)
    await pg.migrate()
    return pg


async def _release(store: Any, app: str = "app", version: str = "1.0.0",
                   sequence: int | None = None, blobs: tuple[tuple[str, int], ...] = ()) -> Any:
    if sequence is None:
        sequence, _ = await store.reserve_sequence(app, version)
    return await store.add_release(app, version, sequence, ["esp32"], b"env-" + version.encode(),
                                   list(blobs), 2_000_000_000)


# -- every operation, on both backends ----------------------------------------------------------

async def test_tokens(store: Any) -> None:
    first = await store.create_token("ci", "h1", "publish")
    second = await store.create_token("laptop", "h2", "admin")
    assert second > first
    assert await store.token("h1") == Token("ci", "publish")
    assert await store.token("h2") == Token("laptop", "admin")
    assert await store.token("nope") is None
    assert [(t["name"], t["scope"]) for t in await store.list_tokens()] == [
        ("ci", "publish"), ("laptop", "admin")]
    assert await store.revoke_token("ci") == 1
    assert await store.revoke_token("ci") == 0
    assert await store.token("h1") is None
    assert (await store.list_tokens())[0]["revoked"] is not None
    with pytest.raises(StoreConflict):
        await store.create_token("again", "h2", "read")


async def test_the_audit_log_keeps_the_newest_entries_in_order(store: Any) -> None:
    for i in range(5):
        await store.add_audit(AuditEntry(at=100 + i, actor="ci" if i % 2 else "laptop",
                                         scope="publish", action="POST /v1/releases",
                                         target=f"app {i}", status=201, outcome="ok"))
    newest = await store.list_audit(3)
    assert [e.target for e in newest] == ["app 2", "app 3", "app 4"]
    assert [e.target for e in await store.list_audit(10, actor="ci")] == ["app 1", "app 3"]
    assert newest[0].id < newest[1].id < newest[2].id


async def test_a_yank_keeps_its_first_time_and_signers_are_kept(store: Any) -> None:
    await store.reserve_sequence("app", "1.0.0")
    release = await store.add_release("app", "1.0.0", 1, ["esp32"], b"env", [(BLOB_A, 3)],
                                      expires=2_000_000_000, signers=["k1", "k2"])
    assert release.signers == ("k1", "k2") and release.yanked is None
    yanked = await store.yank_release(release.id)
    assert yanked.yanked is not None
    again = await store.yank_release(release.id)
    assert again.yanked == yanked.yanked
    assert (await store.release_by_version("app", "1.0.0")).yanked == yanked.yanked
    with pytest.raises(StoreNotFound):
        await store.yank_release(release.id + 1000)


async def test_deployment_history_records_each_move_once_and_stays_bounded(
        store: Any) -> None:
    await store.reserve_sequence("app", "1.0.0")
    release = await store.add_release("app", "1.0.0", 1, ["esp32"], b"env", [(BLOB_A, 3)],
                                      expires=2_000_000_000)
    await store.add_device("b1", b"\x04" + bytes(64), "esp32", [], "stable", 1)
    assert not await store.set_deployment("b1", release.id, "installed")  # never offered
    await store.open_deployment_for("b1", release.id, "stable")
    assert await store.set_deployment("b1", release.id, "downloading")
    assert await store.set_deployment("b1", release.id, "downloading")  # again: no new row
    assert await store.set_deployment("b1", release.id, "failed", "OSError: bus")
    history = await store.device_history("b1")
    assert [(h.status, h.reason) for h in history] == [("downloading", None),
                                                         ("failed", "OSError: bus")]
    for i in range(HISTORY_PER_DEVICE + 5):
        await store.set_deployment("b1", release.id, "failed", f"attempt {i}")
    history = await store.device_history("b1")
    assert len(history) == HISTORY_PER_DEVICE
    assert history[-1].reason == f"attempt {HISTORY_PER_DEVICE + 4}"


async def test_roots_are_ordered_and_a_version_is_stored_once(store: Any) -> None:
    await store.add_root(2, b"two")
    await store.add_root(1, b"one")
    with pytest.raises(StoreConflict):
        await store.add_root(2, b"other two")
    assert await store.roots() == [(1, b"one"), (2, b"two")]


async def test_sequences_and_releases(store: Any) -> None:
    assert await store.max_sequence("app") is None
    assert await store.reserve_sequence("app", "1.0.0") == (1, False)
    assert await store.reserve_sequence("app", "1.0.0") == (1, False)  # a retried publish
    assert await store.reserve_sequence("app", "1.1.0", floor=5) == (5, False)
    assert await store.reserved_version("app", 5) == "1.1.0"
    assert await store.reserved_version("app", 2) is None
    first = await _release(store, version="1.0.0", sequence=1,
                           blobs=((BLOB_B, 20), (BLOB_A, 10)))
    assert (first.app, first.version, first.sequence, first.boards, first.blobs,
            first.expires) == ("app", "1.0.0", 1, ("esp32",), (BLOB_A, BLOB_B), 2_000_000_000)
    assert await store.reserve_sequence("app", "1.0.0") == (1, True)
    assert await store.reserved_version("app", 1) is None  # spent by the registration
    assert await store.reserve_sequence("app", "2.0.0") == (6, False)
    assert await store.reserve_sequence("other", "2.0.0") == (1, False)
    assert await store.max_sequence("app") == 1
    assert await store.release("app", 1) == first
    assert await store.release_by_version("app", "1.0.0") == first
    assert await store.release_by_id(first.id) == first
    assert await store.release("app", 2) is None
    assert await store.release_by_id(first.id + 100) is None
    assert await store.envelope(first.id) == b"env-1.0.0"
    assert sorted(await store.release_blob_refs()) == [BLOB_A, BLOB_B]


async def test_a_taken_sequence_or_version_is_a_conflict_and_writes_nothing(store: Any) -> None:
    first = await _release(store, version="1.0.0", sequence=1)
    with pytest.raises(StoreConflict):
        await _release(store, version="1.0.1", sequence=1, blobs=((BLOB_A, 1),))
    with pytest.raises(StoreConflict):
        await _release(store, version="1.0.0", sequence=2, blobs=((BLOB_A, 1),))
    assert await store.list_releases() == [first]
    assert await store.release_blob_refs() == []


async def test_releases_list_by_app_then_sequence_bytewise(store: Any) -> None:
    for app, version, sequence in (("b", "1", 2), ("B", "1", 1), ("b", "0", 1), ("a", "1", 1)):
        await _release(store, app=app, version=version, sequence=sequence)
    listed = [(r.app, r.sequence) for r in await store.list_releases()]
    assert listed == [("B", 1), ("a", 1), ("b", 1), ("b", 2)]
    assert [r.sequence for r in await store.list_releases("b")] == [1, 2]


async def test_devices(store: Any) -> None:
    added = await store.add_device("b-1", KEY, "esp32", ["lab", "lab", "eu"], "stable", 10)
    assert (added.device_id, added.public_key, added.tags, added.channel, added.bucket,
            added.counter, added.revoked) == ("b-1", KEY, ("eu", "lab"), "stable", 10, -1, None)
    assert added.inventory == {k: None for k in added.inventory} and len(added.inventory) == 10
    await store.add_device("B-2", KEY, "rp2", [], "stable", 9000)
    await store.add_device("a-3", KEY, "rp2", ["lab"], "beta", 5)
    with pytest.raises(StoreConflict):
        await store.add_device("b-1", KEY, "rp2", [], "beta", 1)
    assert await store.device("b-1") == added
    assert await store.device("zz") is None
    assert await store.board_identity("b-1") == added.identity()
    assert type(await store.board_identity("b-1")) is BoardIdentity
    assert await store.board_identity("zz") is None
    assert [d.device_id for d in await store.list_devices()] == ["B-2", "a-3", "b-1"]
    assert await store.count_eligible("stable", [], 100) == 1
    assert await store.count_eligible("stable", [], 9000.5) == 2
    assert await store.count_eligible("stable", ["lab"], 0) == 1
    assert await store.count_eligible("stable", ["nope"], 0) == 0
    assert await store.revoke_device("b-1")
    assert not await store.revoke_device("b-1")
    # revoked or not: revocation is the counter statement's to check (ota_server.device_auth)
    assert await store.board_identity("b-1") == added.identity()
    assert await store.count_eligible("stable", ["lab"], 10_000) == 1
    assert await store.list_channels() == ["beta", "stable"]


async def test_counters_advance_only_upwards_in_order(store: Any) -> None:
    await store.add_device("d", KEY, "esp32", [], "stable", 1)
    assert await store.advance_counter("d", 5)
    assert not await store.advance_counter("d", 5)
    assert not await store.advance_counter("d", 4)
    assert await store.advance_counters([("d", 7), ("d", 6), ("d", 8), ("x", 1)]) == [
        True, False, True, False]
    device = await store.device("d")
    assert device.counter == 8 and device.inventory["last_seen"] is not None


async def test_check_ins_write_inventory_offers_and_counters_together(store: Any) -> None:
    release = await _release(store)
    await store.add_device("d", KEY, "esp32", [], "stable", 1)
    await store.add_device("e", KEY, "esp32", [], "beta", 1)
    await store.set_deployment("e", release.id, "confirmed")  # none open: nothing written
    outcomes = await store.write_checkins(
        [("d", {"app": "app", "version": "0.9", "sequence": 0, "mem_free": 1234,
                "not_a_field": "ignored"}), ("e", {})],
        [("d", release.id, "stable"), ("e", release.id, "beta")],
        [("d", 3), ("e", 1), ("d", 3)])
    assert outcomes == [True, True, False]
    device = await store.device("d")
    assert device.counter == 3
    assert (device.inventory["version"], device.inventory["sequence"],
            device.inventory["mem_free"]) == ("0.9", 0, 1234)
    assert await store.deployment_status("d", release.id) == "offered"
    # A second offer does not reopen what moved on.
    assert await store.set_deployment("d", release.id, "downloading")
    await store.write_checkins([], [("d", release.id, "stable")])
    assert await store.deployment_status("d", release.id) == "downloading"
    await store.record_checkin("d", {"slot": "b", "last_status": "ok"})
    assert (await store.device("d")).inventory["slot"] == "b"


async def test_records_written_behind_never_overwrite_a_later_request(store: Any) -> None:
    """A check-in's inventory is written behind; a later request of the board (its report,
    through another worker or replica) may be written first. Each write carries its request's
    counter (RECORDS_COUNTER) and lands only over an older request's records, whichever path
    writes it: record_checkin, write_checkins (one board or a batch) or set_deployment."""
    release = await _release(store)
    for device_id in ("d", "e"):
        await store.add_device(device_id, KEY, "esp32", [], "stable", 1)
    await store.write_checkins([], [("d", release.id, "stable")])
    # The report (counter 6) lands first and sets the version it confirmed.
    assert await store.set_deployment("d", release.id, "confirmed", inventory={
        "version": "1.0.0", "last_status": "confirmed", RECORDS_COUNTER: 6})
    # The check-in before it (counter 5), written behind, changes nothing of the row.
    await store.write_checkins([("d", {"version": "0.9", "mem_free": 5, RECORDS_COUNTER: 5}),
                                ("e", {"version": "0.9", RECORDS_COUNTER: 5})], [])
    await store.record_checkin("d", {"version": "0.8", RECORDS_COUNTER: 4})
    device = await store.device("d")
    assert (device.inventory["version"], device.inventory["mem_free"]) == ("1.0.0", None)
    assert (await store.device("e")).inventory["version"] == "0.9"  # nothing newer for e
    # A later check-in (counter 7) does land; an inventory without a counter always does.
    await store.write_checkins([("d", {"version": "1.0.0", "mem_free": 7,
                                       RECORDS_COUNTER: 7})], [])
    assert (await store.device("d")).inventory["mem_free"] == 7
    await store.record_checkin("d", {"slot": "b"})
    assert (await store.device("d")).inventory["slot"] == "b"


async def test_rollouts_and_base_releases(store: Any) -> None:
    one = await _release(store, version="1", sequence=1)
    two = await _release(store, version="2", sequence=2)
    three = await _release(store, version="3", sequence=3)
    assert await store.base_release("stable") is None
    await store.set_base_release("stable", one.id)
    assert await store.base_release("stable") == one
    assert await store.current_rollout("stable") is None
    first = await store.start_rollout("stable", one.id, {"stages": [10, 100]})
    assert (first.stage, first.state, first.release, first.policy) == (
        0, "active", one, {"stages": [10, 100]})
    assert await store.update_rollout(first.id, stage=1, reason="healthy")
    moved = await store.current_rollout("stable")
    assert (moved.stage, moved.state, moved.reason) == (1, "active", "healthy")
    assert await store.rollout(first.id) == moved
    assert await store.update_rollout(first.id, state="paused")
    assert (await store.current_rollout("stable")).state == "paused"
    # A start names the rollout it replaces: one that is not the channel's current one (a
    # start through another replica came first) is a conflict, and nothing changes.
    for stale in (None, first.id + 100):
        with pytest.raises(StoreConflict):
            await store.start_rollout("stable", two.id, {}, base_release_id=two.id,
                                      replaces=stale)
    assert (await store.current_rollout("stable")).id == first.id
    assert await store.base_release("stable") == one
    second = await store.start_rollout("stable", two.id, {}, base_release_id=one.id,
                                       replaces=first.id)
    current = await store.current_rollout("stable")
    assert current.id == second.id and current.release == two and current.stage == 0
    assert await store.base_release("stable") == one
    with pytest.raises(StoreConflict):  # `first` is superseded now
        await store.start_rollout("stable", three.id, {}, replaces=first.id)
    assert await store.current_rollout("beta") is None
    assert await store.list_channels() == ["stable"]


async def test_a_rollout_moves_only_from_the_stage_and_state_the_caller_saw(store: Any) -> None:
    """Two replicas advancing (or pausing) the same rollout together: one changes it, the
    other's conditional update changes nothing and says so."""
    release = await _release(store)
    rollout = await store.start_rollout("stable", release.id, {"stages": [10, 50, 100]})
    assert await store.update_rollout(rollout.id, stage=1, expect_stage=0,
                                      expect_state="active")
    assert not await store.update_rollout(rollout.id, stage=1, expect_stage=0,
                                          expect_state="active")
    assert not await store.update_rollout(rollout.id, state="paused", reason="x",
                                          expect_stage=1, expect_state="paused")
    assert (await store.rollout(rollout.id)).stage == 1
    assert await store.update_rollout(rollout.id, state="paused", reason="auto",
                                      expect_stage=1, expect_state="active")
    assert not await store.update_rollout(rollout.id, stage=2, expect_stage=1,
                                          expect_state="active")
    found = await store.rollout(rollout.id)
    assert (found.stage, found.state, found.reason) == (1, "paused", "auto")
    assert await store.rollout(rollout.id + 1000) is None


async def test_deployments(store: Any) -> None:
    old = await _release(store, version="1", sequence=1)
    new = await _release(store, version="2", sequence=2)
    await store.add_device("d", KEY, "esp32", [], "stable", 1)
    await store.add_device("e", KEY, "esp32", [], "beta", 1)
    assert await store.deployment("d", old.id) is None
    assert not await store.set_deployment("d", old.id, "installed")
    await store.open_deployment_for("d", old.id, "stable")
    await store.open_deployment_for("d", new.id, "stable")
    await store.open_deployment_for("e", new.id, "beta")
    await store.open_deployment_for("d", new.id, "beta")  # already open: stays as it is
    found = await store.deployment("d", new.id)
    assert (found.status, found.channel) == ("offered", "stable")
    assert await store.open_deployment("d", "app") == new.id
    assert await store.set_deployment("d", new.id, "failed", "hash mismatch")
    assert await store.open_deployment("d", "app") == old.id
    assert await store.open_deployment("d", None) == old.id
    assert await store.open_deployment("d", "other") is None
    assert await store.deployment_counts(new.id, "stable") == DeploymentCounts(failed=1)
    assert await store.deployment_counts(new.id, "beta") == DeploymentCounts(offered=1)


# -- deployment tallies (migrations/0008): deployment_counts reads them, triggers keep them ------

_STATUSES = ("offered", "downloading", "installed", "confirmed", "failed", "rolled_back")
_TALLY_BOARDS, _TALLY_RELEASES, _TALLY_CHANNELS = 4, 2, ("stable", "beta")


class _Raw:
    """A connection of the test's own to a store's database, beside the store: the counts as
    deployment_counts made them before tallies (a GROUP BY over `deployments`), and the
    writes no store method makes (`?` placeholders on both backends)."""

    def __init__(self, kind: str, conn: Any):
        self._kind = kind
        self._conn = conn

    @classmethod
    async def open(cls, kind: str, location: str) -> _Raw:
        if kind == "sqlite":
            return cls(kind, sqlite3.connect(location, isolation_level=None))
        return cls(kind, await asyncpg.connect(location))

    async def execute(self, sql: str, *args: Any) -> None:
        if self._kind == "sqlite":
            self._conn.execute(sql, args)
            return
        parts = sql.split("?")
        await self._conn.execute(
            "".join(f"{p}${n}" for n, p in enumerate(parts[:-1], start=1)) + parts[-1], *args)

    async def script(self, sql: str) -> None:
        """Several statements, no parameters."""
        if self._kind == "sqlite":
            self._conn.executescript(sql)
        else:
            await self._conn.execute(sql)

    async def counted(self, release_id: int, channel: str) -> DeploymentCounts:
        sql = ("SELECT status, COUNT(*) FROM deployments WHERE release_id = ? AND channel = ? "
               "GROUP BY status")
        if self._kind == "sqlite":
            rows = self._conn.execute(sql, (release_id, channel)).fetchall()
        else:
            rows = await self._conn.fetch(sql.replace("?", "$1", 1).replace("?", "$2", 1),
                                          release_id, channel)
        return DeploymentCounts(**{str(r[0]): int(r[1]) for r in rows})

    async def close(self) -> None:
        if self._kind == "sqlite":
            self._conn.close()
        else:
            await self._conn.close()


_TALLY_OFFER = st.tuples(st.integers(0, _TALLY_BOARDS - 1), st.integers(0, _TALLY_RELEASES - 1),
                         st.sampled_from(_TALLY_CHANNELS))
_TALLY_STEP = st.one_of(
    st.tuples(st.just("offer"), _TALLY_OFFER),
    st.tuples(st.just("offers"), st.lists(_TALLY_OFFER, max_size=5)),
    st.tuples(st.just("checkins"), st.lists(_TALLY_OFFER, max_size=5)),
    st.tuples(st.just("move"), st.tuples(st.integers(0, _TALLY_BOARDS - 1),
                                         st.integers(0, _TALLY_RELEASES - 1),
                                         st.sampled_from(_STATUSES),
                                         st.sampled_from([None, "flash full"]))),
    st.tuples(st.just("yank"), st.integers(0, _TALLY_RELEASES - 1)),
    st.tuples(st.just("delete"), st.tuples(st.integers(0, _TALLY_BOARDS - 1),
                                           st.integers(0, _TALLY_RELEASES - 1))),
    st.tuples(st.just("reassign"), st.tuples(_TALLY_OFFER, st.integers(0, _TALLY_RELEASES - 1))),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_TALLY_STEP, min_size=1, max_size=14))
def test_deployment_counts_are_the_deployments_counted_after_every_write(
        backend: tuple[str, str], steps: list[tuple[str, Any]]) -> None:
    """Whatever writes `deployments` (offers one by one, in batches and with check-ins,
    report moves with or without a new reason, re-offers, yanks; and the deletes and moves
    to another channel or release that no store method makes, only an operator's SQL), the
    tallies deployment_counts reads equal a fresh count of the deployments, for every
    (release, channel), after every step."""
    kind, location = backend
    tag = secrets.token_hex(4)  # one database for every example: names of this one's own
    boards = [f"t{n}-{tag}" for n in range(_TALLY_BOARDS)]
    channels = {name: f"{name}-{tag}" for name in _TALLY_CHANNELS}

    async def run() -> None:
        store: Any = SqliteStore(Path(location)) if kind == "sqlite" \
            else await _migrated(location)
        raw = await _Raw.open(kind, location)
        try:
            for board in boards:
                await store.add_device(board, KEY, "esp32", [], channels["stable"], 1)
            releases = [(await _release(store, app=f"app-{tag}", version=f"{n}.0")).id
                        for n in range(_TALLY_RELEASES)]

            def offer(o: tuple[int, int, str]) -> tuple[str, int, str]:
                return boards[o[0]], releases[o[1]], channels[o[2]]

            for step, arg in steps:
                if step == "offer":
                    await store.open_deployment_for(*offer(arg))
                elif step == "offers":
                    await store.open_deployments_for([offer(o) for o in arg])
                elif step == "checkins":
                    await store.write_checkins([], [offer(o) for o in arg])
                elif step == "move":
                    await store.set_deployment(boards[arg[0]], releases[arg[1]], arg[2], arg[3])
                elif step == "yank":
                    await store.yank_release(releases[arg])
                elif step == "delete":
                    await raw.execute("DELETE FROM deployments WHERE device_id = ? "
                                      "AND release_id = ?", boards[arg[0]], releases[arg[1]])
                else:  # reassign: another channel, and perhaps another release
                    (board, release, channel), target = offer(arg[0]), releases[arg[1]]
                    await raw.execute(
                        "UPDATE deployments SET channel = ?, release_id = ? WHERE device_id = ? "
                        "AND release_id = ? AND NOT EXISTS (SELECT 1 FROM deployments o "
                        "WHERE o.device_id = ? AND o.release_id = ? AND o.release_id != ?)",
                        channel, target, board, release, board, target, release)
                for release_id in releases:
                    for channel in channels.values():
                        assert await store.deployment_counts(release_id, channel) \
                            == await raw.counted(release_id, channel), (step, arg)
        finally:
            await raw.close()
            await store.close()

    asyncio.run(run())


async def test_replicas_moving_boards_in_opposite_directions_never_deadlock(
        pg_dsn: str) -> None:
    """Two replicas take reports together, one moving boards from offered to downloading,
    the other from downloading to offered (and back, round after round): each move needs the
    same two tally rows, locked in key order by every transaction, so each waits for the
    other and none fails; the tallies stay exact."""
    a, b = await _migrated(pg_dsn), await PostgresStore.open(pg_dsn)
    raw = await _Raw.open("postgres", pg_dsn)
    boards = [f"d{n:02d}" for n in range(40)]
    ours, theirs = boards[:20], boards[20:]
    try:
        release = await _release(a)
        for board in boards:
            await a.add_device(board, KEY, "esp32", [], "stable", 1)
        await a.open_deployments_for([(d, release.id, "stable") for d in boards])
        for board in theirs:
            assert await a.set_deployment(board, release.id, "downloading")
        for round_ in range(8):
            ours_to, theirs_to = ("downloading", "offered") if round_ % 2 == 0 \
                else ("offered", "downloading")
            outcomes = await asyncio.gather(
                *(a.set_deployment(d, release.id, ours_to) for d in ours),
                *(b.set_deployment(d, release.id, theirs_to) for d in theirs),
                return_exceptions=True)
            assert outcomes == [True] * len(boards), outcomes
            counts = await b.deployment_counts(release.id, "stable")
            assert counts == DeploymentCounts(offered=20, downloading=20)
            assert counts == await raw.counted(release.id, "stable")
    finally:
        await raw.close()
        await a.close()
        await b.close()


# -- schema --------------------------------------------------------------------------------------

async def test_both_backends_reach_the_same_schema_version(pg_dsn: str, tmp_path: Path) -> None:
    """Every SQLite migration has its PostgreSQL twin (ota_server/storage/pg_migrations)."""
    pg = await _migrated(pg_dsn)
    try:
        sqlite_store = SqliteStore(tmp_path / "meta.db")
        assert await pg.schema_version() == await sqlite_store.schema_version() \
            == _migrations()[-1][0]
        assert [v for v, _ in pg_migrations()] == [v for v, _ in _migrations()]
        await sqlite_store.close()
    finally:
        await pg.close()


async def test_migration_8_back_fills_the_tallies_from_the_deployments_stored(
        backend: tuple[str, str]) -> None:
    """A database at schema version 7 holding deployments migrates to 8 with each
    (release, channel, status) tallied, and the tallies move from there."""
    kind, location = backend
    raw = await _Raw.open(kind, location)
    try:
        scripts = (_migrations() if kind == "sqlite" else pg_migrations())[:7]
        assert scripts[-1][0] == 7
        if kind == "sqlite":
            for version, sql in scripts:  # no data step has a row to read in an empty file
                await raw.script(f"BEGIN;\n{sql}\n;PRAGMA user_version={version};COMMIT;")
        else:
            await raw.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                              "applied BIGINT NOT NULL)")
            for version, sql in scripts:
                await raw.script(sql)
                await raw.execute("INSERT INTO schema_migrations VALUES (?, 0)", version)
        for release_id in (1, 2):
            await raw.execute(
                "INSERT INTO releases (id, app, version, sequence, boards, envelope, created, "
                "expires) VALUES (?, 'app', ?, ?, '[\"esp32\"]', ?, 0, 2000000000)",
                release_id, f"{release_id}.0", release_id, b"env")
        moves = [("offered", "stable"), ("offered", "stable"), ("failed", "stable"),
                 ("confirmed", "beta"), ("offered", "beta")]
        for n, (status, channel) in enumerate(moves):
            await raw.execute("INSERT INTO devices (device_id, public_key, board, tags, channel, "
                              "bucket, created) VALUES (?, ?, 'esp32', '[]', ?, 1, 0)",
                              f"d{n}", KEY, channel)
            for release_id in (1, 2):
                await raw.execute("INSERT INTO deployments (device_id, release_id, status, "
                                  "updated, channel) VALUES (?, ?, ?, 0, ?)",
                                  f"d{n}", release_id, status, channel)
        store: Any = SqliteStore(Path(location)) if kind == "sqlite" \
            else await _migrated(location)
        try:
            assert await store.schema_version() == _migrations()[-1][0]
            for release_id in (1, 2):
                assert await store.deployment_counts(release_id, "stable") \
                    == DeploymentCounts(offered=2, failed=1)
                assert await store.deployment_counts(release_id, "beta") \
                    == DeploymentCounts(offered=1, confirmed=1)
            assert await store.set_deployment("d0", 2, "downloading")
            assert await store.deployment_counts(2, "stable") \
                == DeploymentCounts(offered=1, downloading=1, failed=1)
            assert await store.deployment_counts(1, "stable") \
                == DeploymentCounts(offered=2, failed=1)
        finally:
            await store.close()
    finally:
        await raw.close()

async def test_opening_never_migrates_and_an_unmigrated_database_is_refused(pg_dsn: str) -> None:
    pg = await PostgresStore.open(pg_dsn)
    try:
        assert await pg.schema_version() == 0
        with pytest.raises(StoreError, match="ota db migrate"):
            await pg.require_schema()
        with pytest.raises(StoreError):  # no tables yet
            await pg.roots()
        assert await pg.migrate() == pg_migrations()[-1][0]
        await pg.require_schema()
    finally:
        await pg.close()


async def test_migrating_twice_changes_nothing(pg_dsn: str) -> None:
    pg = await _migrated(pg_dsn)
    try:
        await pg.add_root(1, b"root")
        assert await pg.migrate() == pg_migrations()[-1][0]
        assert await pg.roots() == [(1, b"root")]
    finally:
        await pg.close()


async def test_replicas_migrating_together_apply_each_migration_once(pg_dsn: str) -> None:
    replicas = [await PostgresStore.open(pg_dsn) for _ in range(4)]
    try:
        reached = await asyncio.gather(*(r.migrate() for r in replicas))
        assert reached == [pg_migrations()[-1][0]] * 4
        async with replicas[0]._connection() as conn:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in rows] == [v for v, _ in pg_migrations()]
    finally:
        for replica in replicas:
            await replica.close()


# -- several replicas on one database -------------------------------------------------------------

async def test_two_replicas_racing_one_counter_exactly_one_wins(pg_dsn: str) -> None:
    a, b = await _migrated(pg_dsn), await PostgresStore.open(pg_dsn)
    try:
        await a.add_device("d", KEY, "esp32", [], "stable", 1)
        for counter in range(1, 41):
            wins = await asyncio.gather(a.advance_counter("d", counter),
                                        b.advance_counter("d", counter),
                                        a.advance_counters([("d", counter)]),
                                        b.write_checkins([], [], [("d", counter)]))
            assert [w if isinstance(w, bool) else w[0] for w in wins].count(True) == 1
        assert (await b.device("d")).counter == 40
    finally:
        await a.close()
        await b.close()


async def test_replicas_writing_batches_of_shared_boards_never_deadlock(pg_dsn: str) -> None:
    """Two replicas commit check-in batches for the same boards in opposite orders (nginx
    sends a board's requests to either): each waits for the other, none fails. Taking the
    row locks in arrival order, PostgreSQL found a deadlock and failed one batch (S4,
    docs/benchmarks.md)."""
    a, b = await _migrated(pg_dsn), await PostgresStore.open(pg_dsn)
    boards = [f"d{n}" for n in range(6)]
    try:
        for board in boards:
            await a.add_device(board, KEY, "esp32", [], "stable", 1)
        inventory = {"app": "app", "version": "1.0", "mem_free": 1}
        for counter in range(1, 31):
            forward, backward = boards[:3], boards[3:][::-1]
            outcomes = await asyncio.gather(
                a.write_checkins([(d, inventory) for d in forward], [],
                                 [(d, counter) for d in backward]),
                b.write_checkins([(d, inventory) for d in backward], [],
                                 [(d, counter) for d in forward]),
                a.advance_counters([(d, counter + 100) for d in boards]),
                b.advance_counters([(d, counter + 100) for d in boards[::-1]]),
                return_exceptions=True)
            assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
            counters = [await a.device(d) for d in boards]
            assert {c.counter for c in counters} == {counter + 100}
    finally:
        await a.close()
        await b.close()


async def test_check_in_records_of_a_batch_are_merged_per_board_in_order(store: Any) -> None:
    await store.add_device("d", KEY, "esp32", [], "stable", 1)
    await store.add_device("e", KEY, "esp32", [], "stable", 1)
    await store.write_checkins([("d", {"version": "1", "slot": "a"}), ("e", {"slot": "b"}),
                                ("d", {"slot": "b"}), ("d", {"version": "2", "slot": "c"}),
                                ("e", {"version": "9"})], [])
    d, e = await store.device("d"), await store.device("e")
    assert (d.inventory["version"], d.inventory["slot"]) == ("2", "c")
    assert (e.inventory["version"], e.inventory["slot"]) == ("9", "b")


@asynccontextmanager
async def _statements(store: Any) -> AsyncIterator[list[str]]:
    """What `store` sends its database while the block runs: SQLite's statements (its trace),
    PostgreSQL's calls on the connections it borrows (`transaction` for a BEGIN ... COMMIT),
    each one round trip."""
    seen: list[str] = []
    if isinstance(store, SqliteStore):
        store._db.set_trace_callback(seen.append)
        try:
            yield seen
        finally:
            store._db.set_trace_callback(None)
        return
    borrow = store._connection

    class Counted:
        def __init__(self, conn: Any) -> None:
            self._conn = conn

        def __getattr__(self, name: str) -> Any:
            attr = getattr(self._conn, name)
            if name == "transaction":
                seen.append("transaction")
            elif name in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
                async def call(*args: Any, **kwargs: Any) -> Any:
                    seen.append(args[0])
                    return await attr(*args, **kwargs)
                return call
            return attr

    @asynccontextmanager
    async def counted() -> AsyncIterator[Any]:
        async with borrow() as conn:
            yield Counted(conn)

    store._connection = counted
    try:
        yield seen
    finally:
        store._connection = borrow


async def test_a_batch_of_one_board_is_one_statement(store: Any) -> None:
    await store.add_device("d", KEY, "esp32", [], "stable", 1)
    async with _statements(store) as seen:
        assert await store.advance_counters([("d", 3)]) == [True]
    assert len(seen) == 1 and seen[0].lstrip().startswith("UPDATE devices"), seen


async def test_a_batch_of_distinct_boards_is_one_statement(pg_dsn: str) -> None:
    """A counter batch of distinct boards costs PostgreSQL one round trip, no BEGIN / COMMIT;
    a board named twice keeps the transaction of one statement per advance, in order."""
    store = await _migrated(pg_dsn)
    try:
        for board in ("d", "e", "f"):
            await store.add_device(board, KEY, "esp32", [], "stable", 1)
        await store.advance_counter("e", 9)
        async with _statements(store) as seen:
            assert await store.advance_counters([("f", 2), ("e", 5), ("d", 1), ("x", 1)]) == [
                True, False, True, False]
        assert len(seen) == 1, seen
        async with _statements(store) as seen:
            assert await store.advance_counters([("d", 3), ("d", 2), ("e", 10)]) == [
                True, False, True]
        assert seen[0] == "transaction" and len(seen) == 5, seen  # lock, then one per advance
        assert {d: (await store.device(d)).counter for d in "def"} == {"d": 3, "e": 10, "f": 2}
    finally:
        await store.close()


async def test_a_revoked_board_s_counter_never_moves(store: Any) -> None:
    """The counter statement itself refuses a revoked board, on every path that writes one:
    a server that keeps the board's identity in memory relies on it (ota_server.device_auth)."""
    for board in ("d", "e", "f"):
        await store.add_device(board, KEY, "esp32", [], "stable", 1)
    assert await store.advance_counters([("d", 1), ("e", 1), ("f", 1)]) == [True] * 3
    assert await store.revoke_device("d")
    assert not await store.advance_counter("d", 2)
    assert await store.advance_counters([("d", 3)]) == [False]
    assert await store.advance_counters([("e", 3), ("d", 3), ("f", 3)]) == [True, False, True]
    assert await store.advance_counters([("d", 4), ("e", 4), ("d", 5)]) == [False, True, False]
    assert await store.write_checkins([("d", {"slot": "b"})], [], [("d", 6), ("f", 6)]) == [
        False, True]
    assert (await store.device("d")).counter == 1
    assert {(await store.device(b)).counter for b in ("e", "f")} == {4, 6}


async def test_offers_are_one_statement_in_key_order_and_never_deadlock(pg_dsn: str) -> None:
    """Two replicas write offer batches naming the same boards' deployments in opposite
    orders (each board offered through both at once): each waits for the other, none fails,
    each batch costs one round trip."""
    a, b = await _migrated(pg_dsn), await PostgresStore.open(pg_dsn)
    boards = [f"d{n:03d}" for n in range(300)]  # long enough for the two to overlap
    try:
        async with a._connection() as conn:
            await conn.executemany(
                "INSERT INTO devices (device_id, public_key, board, tags, channel, bucket, "
                "created) VALUES ($1, $2, 'esp32', '[]', 'stable', 1, 1)",
                [(board, KEY) for board in boards])
        releases = [await _release(a, version=f"1.0.{n}", sequence=n + 1) for n in range(10)]
        async with _statements(a) as seen:
            await a.open_deployments_for([(d, releases[0].id, "stable") for d in boards])
        assert len(seen) == 1, seen
        for release in releases[1:]:
            outcomes = await asyncio.gather(
                a.open_deployments_for([(d, release.id, "stable") for d in boards]),
                b.open_deployments_for([(d, release.id, "beta") for d in boards[::-1]]),
                return_exceptions=True)
            assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
            assert {await a.deployment_status(d, release.id) for d in boards} == {"offered"}
    finally:
        await a.close()
        await b.close()


async def test_a_report_s_move_history_and_inventory_are_one_transaction(store: Any) -> None:
    release = await _release(store)
    await store.add_device("d", KEY, "esp32", [], "stable", 1)
    assert not await store.set_deployment("d", release.id, "confirmed",
                                          inventory={"last_status": "confirmed"})
    assert (await store.device("d")).inventory["last_status"] is None  # none opened: nothing
    await store.open_deployment_for("d", release.id, "stable")
    async with _statements(store) as seen:
        assert await store.set_deployment("d", release.id, "confirmed", inventory={
            "last_status": "confirmed", "app": "app", "version": "1.0.0", "sequence": 1})
    transactions = [s for s in seen if s == "transaction" or s.upper().startswith("BEGIN")]
    assert len(transactions) == 1, seen
    device = await store.device("d")
    assert (device.inventory["last_status"], device.inventory["version"]) == (
        "confirmed", "1.0.0")
    assert [h.status for h in await store.device_history("d")] == ["confirmed"]
    # the same report again: no new event, the inventory still written
    assert await store.set_deployment("d", release.id, "confirmed",
                                      inventory={"last_status": "again"})
    assert (await store.device("d")).inventory["last_status"] == "again"
    assert [h.status for h in await store.device_history("d")] == ["confirmed"]


async def _epoch_seen(store: PostgresStore, device_id: str) -> int:
    """The fleet epoch a board request's counter statement sees now."""
    async with store._connection() as conn:
        counter = await conn.fetchval("SELECT counter FROM devices WHERE device_id = $1",
                                      device_id)
    advanced = await store.advance_counters([(device_id, counter + 1)])
    assert advanced == [True] and advanced.epoch is not None
    return advanced.epoch


async def _pause(store: Any, rollout: Any, _: Any) -> None:
    assert await store.update_rollout(rollout.id, state="paused")


async def _restart(store: Any, rollout: Any, other: Any) -> None:
    await store.start_rollout("stable", other.id, {"stages": [100]}, replaces=rollout.id)


async def _rebase(store: Any, rollout: Any, other: Any) -> None:
    await store.set_base_release("stable", other.id)


async def _yank(store: Any, rollout: Any, _: Any) -> None:
    await store.yank_release(rollout.release.id)


@pytest.mark.parametrize("change", [_pause, _restart, _rebase, _yank])
async def test_a_kept_channel_is_read_again_once_a_change_moved_the_fleet_epoch(
        pg_dsn: str,
        change: Callable[[Any, Any, Any], Awaitable[None]]) -> None:
    """Replica B keeps the channel it read; each change through replica A that can change an
    offer (pause, a new rollout, a new base, a yank) moves the epoch B's next counter
    statement sees, and B then reads the channel again instead of using its copy."""
    a, b = await _migrated(pg_dsn), await PostgresStore.open(pg_dsn)
    try:
        one = await _release(a, version="1", sequence=1)
        two = await _release(a, version="2", sequence=2)
        await a.add_device("d", KEY, "esp32", [], "stable", 1)
        rollout = await a.start_rollout("stable", one.id, {"stages": [100]})
        before = await _epoch_seen(b, "d")
        kept = (await b.current_rollout("stable", epoch=before),
                await b.base_release("stable", epoch=before))
        assert kept[0].state == "active" and kept[1] is None
        async with _statements(b) as seen:  # the copy serves its epoch: no query
            assert await b.current_rollout("stable", epoch=before) == kept[0]
            assert await b.base_release("stable", epoch=before) == kept[1]
        assert seen == []
        await change(a, rollout, two)
        after = await _epoch_seen(b, "d")
        assert after > before
        now = (await a.current_rollout("stable"), await a.base_release("stable"))
        assert now != kept
        assert (await b.current_rollout("stable", epoch=after),
                await b.base_release("stable", epoch=after)) == now
    finally:
        await a.close()
        await b.close()


async def _advance(store: PostgresStore, rollout_id: int, from_stage: int) -> bool:
    """Advance an active rollout from `from_stage`, as ota_server.rollout does: conditionally."""
    return await store.update_rollout(rollout_id, stage=from_stage + 1,
                                      expect_stage=from_stage, expect_state="active")


async def test_two_replicas_advancing_one_stage_exactly_one_wins(pg_dsn: str) -> None:
    a, b = await _migrated(pg_dsn), await PostgresStore.open(pg_dsn)
    try:
        release = await _release(a)
        rollout = await a.start_rollout("stable", release.id, {})
        for stage in range(5):
            wins = await asyncio.gather(_advance(a, rollout.id, stage),
                                        _advance(b, rollout.id, stage))
            assert sorted(wins) == [False, True]
        assert (await b.current_rollout("stable")).stage == 5
        # Paused through one replica: the other cannot advance it any more.
        assert await a.update_rollout(rollout.id, state="paused", expect_state="active")
        assert not await _advance(b, rollout.id, 5)
        assert not await b.update_rollout(rollout.id, state="paused", expect_state="active")
        current = await b.current_rollout("stable")
        assert (current.stage, current.state) == (5, "paused")
        assert not await b.update_rollout(rollout.id + 99, state="aborted")
    finally:
        await a.close()
        await b.close()


async def test_replicas_reserving_sequences_together_get_different_ones(pg_dsn: str) -> None:
    a, b = await _migrated(pg_dsn), await PostgresStore.open(pg_dsn)
    try:
        got = await asyncio.gather(*((a, b)[n % 2].reserve_sequence("app", f"1.{n}")
                                     for n in range(20)))
        assert sorted(seq for seq, _ in got) == list(range(1, 21))
    finally:
        await a.close()
        await b.close()


async def test_what_one_replica_writes_the_next_call_on_another_sees(pg_dsn: str) -> None:
    """No process-local truth: rollouts, bases, roots and tokens are read from the database."""
    a, b = await _migrated(pg_dsn), await PostgresStore.open(pg_dsn)
    try:
        one = await _release(a, version="1", sequence=1)
        two = await _release(a, version="2", sequence=2)
        rollout = await a.start_rollout("stable", one.id, {})
        await a.set_base_release("stable", one.id)
        assert (await b.current_rollout("stable")).state == "active"
        assert await b.base_release("stable") == one
        await a.update_rollout(rollout.id, state="paused")
        await a.set_base_release("stable", two.id)
        await a.add_root(2, b"rotated")
        await a.create_token("t", "hash", "publish")
        assert (await b.current_rollout("stable")).state == "paused"
        assert await b.base_release("stable") == two
        assert await b.roots() == [(2, b"rotated")]
        assert await b.token("hash") == Token("t", "publish")
        await b.revoke_token("t")
        assert await a.token("hash") is None
    finally:
        await a.close()
        await b.close()


# -- errors ---------------------------------------------------------------------------------------

async def test_references_to_missing_records_are_not_found(pg_dsn: str) -> None:
    pg = await _migrated(pg_dsn)
    try:
        release = await _release(pg)
        with pytest.raises(StoreNotFound):
            await pg.open_deployment_for("nobody", release.id, "stable")
        with pytest.raises(StoreNotFound):
            await pg.set_base_release("stable", release.id + 1)
        with pytest.raises(StoreNotFound):
            await pg.start_rollout("stable", release.id + 1, {})
        with pytest.raises(StoreNotFound, match="no release"):
            await pg.envelope(release.id + 1)
        assert await pg.current_rollout("stable") is None
    finally:
        await pg.close()


@pytest.mark.parametrize("dsn, message", [
    ("mysql://u@h/db", "must start with postgresql://"),
    ("postgresql:///db", "names no host"),
    ("postgresql://u:p@127.0.0.1:5432", "names no database"),
    ("postgresql://u:p@127.0.0.1:5432/", "names no database"),
    ("postgresql://u:p@127.0.0.1:port/db", "does not parse"),
    ("postgresql://u:p@127.0.0.1/db#x", "fragment"),
])
def test_malformed_database_urls_are_refused(dsn: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        check_dsn(dsn)
    assert ":p@" not in str(caught.value)


async def test_a_bad_url_parameter_is_a_store_error_not_an_outage(pg_dsn: str) -> None:
    with pytest.raises(StoreError, match="sslmode") as caught:
        await PostgresStore.open(pg_dsn + "?sslmode=sometimes")
    assert not isinstance(caught.value, StoreUnavailable)


async def test_a_database_that_is_not_there_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        await PostgresStore.open(f"postgresql://u:p@127.0.0.1:{free_port()}/db")


async def test_a_wrong_password_is_a_store_error_that_hides_it(
        postgres_server: PostgresServer, pg_dsn: str) -> None:
    wrong = pg_dsn.replace(postgres_server.password, "not-the-password-123")
    with pytest.raises(StoreError) as caught:
        await PostgresStore.open(wrong)
    assert not isinstance(caught.value, StoreUnavailable)
    assert "not-the-password-123" not in str(caught.value)


async def test_a_database_restart_is_unavailable_then_recovers_without_reopening(
        postgres_server: PostgresServer, pg_dsn: str) -> None:
    pg = await _migrated(pg_dsn)
    try:
        await pg.add_device("d", KEY, "esp32", [], "stable", 1)
        assert await pg.advance_counter("d", 1)
        postgres_server.stop()
        try:
            with pytest.raises(StoreUnavailable):
                await pg.advance_counter("d", 2)
            with pytest.raises(StoreUnavailable):
                await pg.device("d")
        finally:
            postgres_server.start()
        # The pool replaces its dead connections: the next call works, nothing was lost.
        assert await pg.advance_counter("d", 2)
        assert (await pg.device("d")).counter == 2
        # Every pooled connection works again (several borrowed at once).
        devices = await asyncio.gather(*(pg.device("d") for _ in range(5)))
        assert [d.counter for d in devices] == [2] * 5
    finally:
        await pg.close()


async def test_a_restart_between_calls_costs_no_failed_call(
        postgres_server: PostgresServer, pg_dsn: str) -> None:
    """Idle pooled connections that the restart cut are replaced when borrowed."""
    pg = await _migrated(pg_dsn)
    try:
        await pg.add_device("d", KEY, "esp32", [], "stable", 1)
        postgres_server.stop()
        postgres_server.start()
        await asyncio.sleep(0.1)  # the loop sees the closed sockets
        assert await pg.advance_counter("d", 1)
    finally:
        await pg.close()


# -- property: the accepted counters are the running maxima, on both backends -------------------

@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(counters=st.lists(st.integers(min_value=0, max_value=2**40), min_size=1, max_size=12),
       batch=st.booleans())
def test_accepted_counters_are_exactly_the_running_maxima(
        backend: tuple[str, str], counters: list[int], batch: bool) -> None:
    expected, top = [], -1
    for counter in counters:
        expected.append(counter > top)
        top = max(top, counter)

    async def run() -> list[bool]:
        kind, location = backend
        device_id = "p-" + secrets.token_hex(6)
        store: Any = SqliteStore(Path(location)) if kind == "sqlite" \
            else await _migrated(location)
        try:
            await store.add_device(device_id, KEY, "esp32", [], "stable", 1)
            if batch:
                return list(await store.advance_counters([(device_id, c) for c in counters]))
            return [await store.advance_counter(device_id, c) for c in counters]
        finally:
            await store.close()

    assert asyncio.run(run()) == expected


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50)),
                                 min_size=1, max_size=6), min_size=1, max_size=5),
       revoked=st.sets(st.integers(0, 3), max_size=2))
def test_counter_batches_over_several_boards_are_the_sequential_outcome(
        backend: tuple[str, str], batches: list[list[tuple[int, int]]],
        revoked: set[int]) -> None:
    """Whichever path a batch takes (one statement for distinct boards, a transaction for a
    board named twice), each advance has the outcome it would have alone, in order: accepted
    exactly when the board is not revoked and the counter is above every one before."""
    tag = secrets.token_hex(4)
    names = [f"p{n}-{tag}" for n in range(4)]
    top = dict.fromkeys(range(4), -1)
    expected = []
    for batch in batches:
        outcomes = []
        for board, counter in batch:
            outcomes.append(board not in revoked and counter > top[board])
            if board not in revoked:
                top[board] = max(top[board], counter)
        expected.append(outcomes)

    async def run() -> list[list[bool]]:
        kind, location = backend
        store: Any = SqliteStore(Path(location)) if kind == "sqlite" \
            else await _migrated(location)
        try:
            for n, name in enumerate(names):  # a new board's counter is -1
                await store.add_device(name, KEY, "esp32", [], "stable", 1)
                if n in revoked:
                    await store.revoke_device(name)
            return [list(await store.advance_counters([(names[b], c) for b, c in batch]))
                    for batch in batches]
        finally:
            await store.close()

    assert asyncio.run(run()) == expected
