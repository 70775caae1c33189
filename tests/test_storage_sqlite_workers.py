"""Several worker processes of one `ota serve` on one SQLite file: each SqliteStore has its own
connection (a process, as far as SQLite is concerned), keeps its own copies of channels and
releases, and must act on what another one wrote (docs/operations.md, "Process-local state").
Real files, real processes where a race is the point (multiprocessing, spawn); the property
test over rollout moves is tests/test_replicas.py's, run on SQLite as well.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ota_server.storage.errors import StoreConflict
from ota_server.storage.records import RECORDS_COUNTER
from ota_server.storage.sqlite import SqliteStore, _migrations

KEY = b"\x04" + bytes(64)
POLICY = {"stages": [{"percent": 100}], "auto_advance": False, "failure_threshold": 0.5,
          "min_results": None}
WORKERS = 4
# How long watch_roots may take to call back after another store added a root: its poll runs
# once a second; far more than that on a loaded machine.
ROOT_DEADLINE_S = 5.0


async def _release(store: SqliteStore, app: str = "app", sequence: int = 1) -> int:
    found = await store.add_release(app, f"1.0.{sequence}", sequence, ["esp32"], b"env", [],
                                    2_000_000_000)
    return found.id


def _epoch(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT epoch FROM fleet_epoch").fetchone()[0])
    finally:
        db.close()


# -- the fleet epoch ---------------------------------------------------------------------------

async def test_every_change_an_offer_depends_on_moves_the_epoch_and_nothing_else_does(
        tmp_path: Path) -> None:
    path = tmp_path / "mpota.sqlite3"
    store = SqliteStore(path)
    try:
        moves: list[tuple[str, int]] = []

        async def did(what: str, action: Callable[[], Any]) -> None:
            before = _epoch(path)
            await action()
            moves.append((what, _epoch(path) - before))

        release = await _release(store)
        await did("device", lambda: store.add_device("b1", KEY, "esp32", [], "stable", 1))
        await did("counter", lambda: store.advance_counter("b1", 1))
        await did("offer", lambda: store.open_deployment_for("b1", release, "stable"))
        await did("base", lambda: store.set_base_release("stable", release))
        await did("start", lambda: store.start_rollout("beta", release, POLICY))
        rollout = await store.current_rollout("beta")
        assert rollout is not None
        await did("pause", lambda: store.update_rollout(rollout.id, state="paused"))
        await did("yank", lambda: store.yank_release(release))
        await did("yank again", lambda: store.yank_release(release))
        # start: the channel's row (1), the new rollout (1); no rollout to supersede yet
        assert moves == [("device", 0), ("counter", 0), ("offer", 0), ("base", 1),
                         ("start", 2), ("pause", 1), ("yank", 1), ("yank again", 0)]
    finally:
        await store.close()


async def test_counter_statements_return_the_newest_epoch_they_saw(tmp_path: Path) -> None:
    path = tmp_path / "mpota.sqlite3"
    a, b = SqliteStore(path), SqliteStore(path)
    try:
        release = await _release(a)
        for device_id in ("b1", "b2"):
            await a.add_device(device_id, KEY, "esp32", [], "stable", 1)
        lone = await b.advance_counters([("b1", 1)])
        assert lone == [True] and lone.epoch == _epoch(path) == 1
        await a.set_base_release("stable", release)  # through the other store
        assert await b.advance_counter("b1", 2) is True
        batch = await b.advance_counters([("b1", 3), ("b2", 1), ("b1", 3)])
        assert batch == [True, True, False] and batch.epoch == _epoch(path) == 2
        refused = await b.advance_counters([("b1", 3)])
        assert refused == [False] and refused.epoch is None
        written = await b.write_checkins([("b1", {"version": "1.0.1"})],
                                         [("b2", release, "stable")], [("b2", 2)])
        assert written == [True] and written.epoch == 2
        assert (await b.write_checkins([], [], [])).epoch is None
    finally:
        await a.close()
        await b.close()


async def test_a_kept_channel_is_read_again_once_another_process_moved_the_epoch(
        tmp_path: Path) -> None:
    path = tmp_path / "mpota.sqlite3"
    a, b = SqliteStore(path), SqliteStore(path)
    try:
        release = await _release(a)
        await a.add_device("b1", KEY, "esp32", [], "stable", 1)
        started = await a.start_rollout("stable", release, POLICY)
        seen = await b.advance_counters([("b1", 1)])
        kept = await b.current_rollout("stable", epoch=seen.epoch)
        assert kept is not None and kept.state == "active"
        assert await a.update_rollout(started.id, state="paused", expect_state="active")
        # a request whose counter was committed before the pause may be answered from the copy
        assert await b.current_rollout("stable", epoch=seen.epoch) is kept
        later = await b.advance_counters([("b1", 2)])
        assert later.epoch is not None and seen.epoch is not None and later.epoch > seen.epoch
        now = await b.current_rollout("stable", epoch=later.epoch)
        assert now is not None and now.state == "paused"
        assert await b.current_rollout("stable", epoch=later.epoch) is now  # kept again
        await a.set_base_release("stable", release)
        base = await b.base_release("stable")  # without an epoch: as new as the epoch now
        assert base is not None and base.id == release
    finally:
        await a.close()
        await b.close()


async def test_a_release_yanked_through_one_store_is_yanked_through_the_other(
        tmp_path: Path) -> None:
    path = tmp_path / "mpota.sqlite3"
    a, b = SqliteStore(path), SqliteStore(path)
    try:
        release = await _release(a)
        await a.set_base_release("stable", release)
        kept = await b.release_by_id(release)
        assert kept is not None and kept.yanked is None
        base = await b.base_release("stable")
        assert base is not None and base.yanked is None
        await a.yank_release(release)
        found = await b.release_by_id(release)
        assert found is not None and found.yanked is not None
        base = await b.base_release("stable")
        assert base is not None and base.yanked == found.yanked
    finally:
        await a.close()
        await b.close()


# -- roots ---------------------------------------------------------------------------------

async def test_watch_roots_calls_back_when_another_store_adds_a_root(tmp_path: Path) -> None:
    path = tmp_path / "mpota.sqlite3"
    a, b = SqliteStore(path), SqliteStore(path)
    calls: list[float] = []
    called = asyncio.Event()

    def changed() -> None:
        calls.append(time.monotonic())
        called.set()
        if len(calls) == 1:
            raise RuntimeError("a callback that fails once")  # the poll goes on

    try:
        await a.add_root(1, b"root-1")
        await b.watch_roots(changed)
        await asyncio.sleep(1.5)
        # once at the start (a root stored just before the watch), not again: no new root
        assert len(calls) == 1
        for version in (2, 3):
            called.clear()
            await a.add_root(version, f"root-{version}".encode())
            await asyncio.wait_for(called.wait(), ROOT_DEADLINE_S)
            assert len(calls) == version
    finally:
        await a.close()
        await b.close()
    await asyncio.sleep(1.5)
    assert len(calls) == 3  # close() stopped the poll


# -- migration -----------------------------------------------------------------------------

def _database_at(path: Path, version: int) -> None:
    """A database file as this code's migrations up to `version` leave it (empty tables)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for number, sql in _migrations():
            if number <= version:  # no data step has a row to read in an empty file
                db.executescript(f"BEGIN;\n{sql}\n;PRAGMA user_version={number};COMMIT;")
    finally:
        db.close()


async def test_a_version_8_database_migrates_to_the_newest_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "mpota.sqlite3"
    _database_at(path, 8)
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        "INSERT INTO releases (id, app, version, sequence, boards, envelope, created, expires) "
        "VALUES (7, 'app', '1.0.0', 1, '[\"esp32\"]', x'00', 0, 2000000000);"
        "INSERT INTO devices (device_id, public_key, board, tags, channel, bucket, created, "
        "counter) VALUES ('b1', x'04', 'esp32', '[]', 'stable', 1, 0, 41);"
        "INSERT INTO channels (name, base_release_id) VALUES ('stable', 7);"
        "INSERT INTO rollouts (channel, release_id, policy, stage, state, created, updated) "
        "VALUES ('stable', 7, '{\"stages\": [{\"percent\": 100}]}', 0, 'active', 0, 0);"
        "INSERT INTO deployments (device_id, release_id, status, updated, channel) "
        "VALUES ('b1', 7, 'offered', 0, 'stable');")
    db.close()
    store = SqliteStore(path)
    try:
        assert await store.schema_version() == _migrations()[-1][0] >= 10
        assert _epoch(path) == 1
        rollout = await store.current_rollout("stable")
        assert rollout is not None and rollout.release.id == 7 and rollout.state == "active"
        base = await store.base_release("stable")
        assert base is not None and base.version == "1.0.0"
        assert (await store.deployment_counts(7, "stable")).offered == 1
        advanced = await store.advance_counters([("b1", 42)])
        assert advanced == [True] and advanced.epoch == 1
        assert await store.update_rollout(rollout.id, state="paused")
        assert (await store.advance_counters([("b1", 43)])).epoch == 2
        # Migration 10: the board's records start at counter 0, so any request's land.
        await store.record_checkin("b1", {"version": "1.0.0", RECORDS_COUNTER: 43})
        device = await store.device("b1")
        assert device is not None and device.inventory["version"] == "1.0.0"
    finally:
        await store.close()


# -- races between processes ---------------------------------------------------------------

def _in_workers(task: Callable[..., Any], path: Path, *args: Any) -> list[Any]:
    """`task(path, start_at, worker, *args)` in WORKERS fresh processes at once: each opens its
    own store, then waits for one common moment before racing the others."""
    start_at = time.time() + 3.0  # every process started and imported by then
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(task, str(path), start_at, worker, *args)
                   for worker in range(WORKERS)]
        return [future.result(timeout=60) for future in futures]


def _run_at(start_at: float, path: str, race: Callable[[SqliteStore], Any]) -> Any:
    """Open a store on `path`, wait for `start_at`, run `race(store)` (a coroutine)."""
    async def run() -> Any:
        store = SqliteStore(Path(path))
        try:
            time.sleep(max(0.0, start_at - time.time()))
            return await race(store)
        finally:
            await store.close()
    return asyncio.run(run())


def _open_at_once(path: str, start_at: float, worker: int) -> int:
    time.sleep(max(0.0, start_at - time.time()))

    async def run() -> int:
        store = SqliteStore(Path(path))
        try:
            return await store.schema_version()
        finally:
            await store.close()
    return asyncio.run(run())


@pytest.mark.parametrize("from_version", [0, 8])
def test_workers_opening_one_file_at_once_all_migrate_it_once(
        tmp_path: Path, from_version: int) -> None:
    path = tmp_path / "mpota.sqlite3"
    if from_version:
        _database_at(path, from_version)
    assert _in_workers(_open_at_once, path) == [_migrations()[-1][0]] * WORKERS
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT COUNT(*), MIN(epoch) FROM fleet_epoch").fetchone() == (1, 1)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def _reserve(path: str, start_at: float, worker: int) -> list[int]:
    async def race(store: SqliteStore) -> list[int]:
        return [(await store.reserve_sequence("app", f"{worker}.{n}"))[0] for n in range(25)]
    return list(_run_at(start_at, path, race))


def test_workers_reserving_sequences_together_get_distinct_ones(tmp_path: Path) -> None:
    path = tmp_path / "mpota.sqlite3"
    SqliteStore(path)  # created before the race
    reserved = [s for worker in _in_workers(_reserve, path) for s in worker]
    assert sorted(reserved) == list(range(1, 25 * WORKERS + 1))


def _start(path: str, start_at: float, worker: int, release: int) -> str:
    async def race(store: SqliteStore) -> str:
        try:
            await store.start_rollout("stable", release, POLICY, replaces=None)
        except StoreConflict:
            return "conflict"
        return "started"
    return str(_run_at(start_at, path, race))


def _advance_stage(path: str, start_at: float, worker: int, rollout: int) -> bool:
    async def race(store: SqliteStore) -> bool:
        return await store.update_rollout(rollout, stage=1, expect_stage=0,
                                          expect_state="active")
    return bool(_run_at(start_at, path, race))


def _advance_counter(path: str, start_at: float, worker: int) -> tuple[bool, int | None]:
    async def race(store: SqliteStore) -> tuple[bool, int | None]:
        advanced = await store.advance_counters([("b1", 5)])
        return advanced[0], advanced.epoch
    result: tuple[bool, int | None] = _run_at(start_at, path, race)
    return result


def test_workers_racing_on_one_rollout_or_counter_have_one_winner(tmp_path: Path) -> None:
    path = tmp_path / "mpota.sqlite3"

    async def setup() -> int:
        store = SqliteStore(path)
        try:
            await store.add_device("b1", KEY, "esp32", [], "stable", 1)
            return await _release(store)
        finally:
            await store.close()
    release = asyncio.run(setup())
    assert sorted(_in_workers(_start, path, release)) == ["conflict"] * (WORKERS - 1) + ["started"]
    rollout = asyncio.run(_current_rollout_id(path))
    assert sorted(_in_workers(_advance_stage, path, rollout)) == [False] * (WORKERS - 1) + [True]
    counters = _in_workers(_advance_counter, path)
    assert sorted(counters, key=str) == [(False, None)] * (WORKERS - 1) + [(True, _epoch(path))]


async def _current_rollout_id(path: Path) -> int:
    store = SqliteStore(path)
    try:
        found = await store.current_rollout("stable")
        assert found is not None and found.stage == 0
        return found.id
    finally:
        await store.close()
