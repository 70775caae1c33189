"""Group commit of board counters (ota_server.counters): batched advances behave exactly like
one commit each, are durable before anyone is answered, and fail together."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from server_support import (
    Backend,
    FleetKeys,
    ServerEnv,
    SimBoard,
    blob_ids,
    execute_sql,
    new_data_dir,
    open_metadata,
    query_rows,
)

from ota_server import counters as counters_module
from ota_server import state
from ota_server.app import create_app
from ota_server.counters import CounterCommits
from ota_server.device_auth import sign_request
from ota_server.settings import Settings
from ota_server.storage.errors import StoreError

POINT = b"\x04" + b"\x00" * 64


async def _store(tmp_path: Path, backend: Backend, *boards: str) -> tuple[Any, Settings]:
    """A metadata store on `backend` with `boards` registered, and the settings naming it."""
    settings = backend.settings(tmp_path / "data")
    store = await open_metadata(settings)
    for board in boards:
        await store.add_device(board, POINT, "unix", [], "stable", 1)
    return store, settings


async def _counters(settings: Settings) -> dict[str, int]:
    """The counters as another connection sees them: what survives a restart."""
    return dict(await query_rows(settings, "SELECT device_id, counter FROM devices"))


async def _refuse(settings: Settings, column: str, value: int) -> None:
    """A trigger that makes the database refuse to set `column` of a device to `value`."""
    await execute_sql(
        settings,
        f"CREATE TRIGGER refuse BEFORE UPDATE OF {column} ON devices "
        f"WHEN NEW.{column} = {value} BEGIN SELECT RAISE(ABORT, 'refused'); END",
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused'; END $$; "
        f"CREATE TRIGGER refuse BEFORE UPDATE OF {column} ON devices FOR EACH ROW "
        f"WHEN (NEW.{column} = {value}) EXECUTE FUNCTION refuse()")


async def test_advance_counters_is_advance_counter_in_order(
        tmp_path: Path, backend: Backend) -> None:
    store, settings = await _store(tmp_path, backend, "b1", "b2")
    try:
        got = await store.advance_counters([("b1", 5), ("b1", 5), ("b2", 3), ("b1", 4),
                                            ("b1", 6), ("nobody", 9)])
        assert got == [True, False, True, False, True, False]
        assert (await _counters(settings)) == {"b1": 6, "b2": 3}
    finally:
        await store.close()


async def test_one_turn_of_the_loop_is_one_batch_with_sequential_outcomes(
        tmp_path: Path, backend: Backend) -> None:
    store, settings = await _store(tmp_path, backend, "b1", "b2")
    commits: list[int] = []
    batch_of = store.advance_counters

    async def counting(advances):  # the real store, counted: how many transactions ran
        commits.append(len(advances))
        return await batch_of(advances)

    store.advance_counters = counting  # type: ignore[method-assign]
    try:
        counters = CounterCommits(store)
        got = await asyncio.gather(counters.advance("b1", 7), counters.advance("b1", 7),
                                   counters.advance("b2", 1), counters.advance("b1", 2))
        assert got == [True, False, True, False]
        assert commits == [4]
        # committed before the awaits returned
        assert (await _counters(settings)) == {"b1": 7, "b2": 1}
        # alone: a batch of one, which each store writes as one autocommit statement, no
        # transaction (test_storage_postgres.py, test_a_batch_of_one_board_is_one_statement)
        assert await counters.advance("b2", 2) is True
        assert commits == [4, 1]
        assert (await _counters(settings)) == {"b1": 7, "b2": 2}
    finally:
        await store.close()


async def test_a_failed_batch_moves_no_counter_and_fails_every_request(
        tmp_path: Path, backend: Backend) -> None:
    store, settings = await _store(tmp_path, backend, "b1", "b2")
    await _refuse(settings, "counter", 666)
    before = (await _counters(settings))
    try:
        counters = CounterCommits(store)
        got = await asyncio.gather(counters.advance("b1", 10), counters.advance("b2", 666),
                                   return_exceptions=True)
        assert all(isinstance(g, StoreError) for g in got), got
        assert (await _counters(settings)) == before
        assert before["b1"] < 10
        # the store is usable afterwards
        assert await counters.advance("b1", 10) is True
    finally:
        await store.close()


async def test_requests_during_a_slow_commit_form_the_next_batch_committed_after_it(
        tmp_path: Path, backend: Backend) -> None:
    """A commit that waits (PostgreSQL over the network) holds no request back but its own
    batch: requests arriving meanwhile form the next batch, committed once it is done, never
    two at once, so one board's counters are committed in the order they came."""
    store, settings = await _store(tmp_path, backend, "b1", "b2")
    gate = asyncio.Event()
    batches: list[list[tuple[str, int]]] = []
    running, overlapped = 0, False
    real = store.advance_counters

    async def slow(advances):
        nonlocal running, overlapped
        running += 1
        overlapped |= running > 1
        batches.append(list(advances))
        try:
            await gate.wait()
            return await real(advances)
        finally:
            running -= 1

    async def slow_one(device_id, counter):
        return (await slow([(device_id, counter)]))[0]

    store.advance_counters = slow  # type: ignore[method-assign]
    store.advance_counter = slow_one  # type: ignore[method-assign]
    try:
        counters = CounterCommits(store)
        first = [asyncio.create_task(counters.advance("b1", 5)),
                 asyncio.create_task(counters.advance("b2", 1))]
        for _ in range(5):
            await asyncio.sleep(0)
        second = [asyncio.create_task(counters.advance("b1", 6)),
                  asyncio.create_task(counters.advance("b1", 5))]
        for _ in range(5):
            await asyncio.sleep(0)
        assert batches == [[("b1", 5), ("b2", 1)]]  # the second batch waits for the first
        assert not any(t.done() for t in first + second)
        gate.set()
        assert await asyncio.gather(*first) == [True, True]
        assert await asyncio.gather(*second) == [True, False]
        assert batches == [[("b1", 5), ("b2", 1)], [("b1", 6), ("b1", 5)]]
        assert not overlapped
        assert (await _counters(settings)) == {"b1": 6, "b2": 1}
    finally:
        await store.close()


@pytest.mark.parametrize("method,path", [("GET", "/v1/blobs/{sha}"),
                                         ("POST", "/v1/device/checkin")])
async def test_concurrent_replays_over_http_pass_once(aiohttp_client, tmp_path: Path,
                                                      backend: Backend, method: str,
                                                      path: str) -> None:
    keys = FleetKeys.create(tmp_path)
    settings, token = await new_data_dir(tmp_path, backend)
    settings = replace(settings, root_path=keys.root_path)
    env = ServerEnv(await aiohttp_client(create_app(settings)), settings, token, keys, tmp_path)
    board = await env.add_board(SimBoard("board-a"))
    await env.publish({"app_main.py": b"print(1)\n"}, version="1.0.0", sequence=1)
    sha = (await blob_ids(settings))[0]
    path = path.format(sha=sha)
    body = board.checkin_body() if method == "POST" else b""
    # the same signed request six times at once, then a fresh counter
    header = {"Authorization": sign_request(board.key, board.device_id, 5, method, path, body)}
    answers = await asyncio.gather(*(env.client.request(method, path, data=body or None,
                                                        headers=header) for _ in range(6)))
    statuses = sorted(a.status for a in answers)
    assert statuses[0] in (200, 204) and statuses[1:] == [401] * 5, statuses
    replayed = [await a.json() for a in answers if a.status == 401]
    assert {r["code"] for r in replayed} == {"replay"}
    assert (await _counters(settings))["board-a"] == 5
    fresh = {"Authorization": sign_request(board.key, board.device_id, 6, method, path, body)}
    again = await env.client.request(method, path, data=body or None, headers=fresh)
    assert again.status in (200, 204)


# -- check-in records written behind ---------------------------------------------------------

INVENTORY = {"app": "demo", "version": "1.0.0", "sequence": 1, "root_version": 1,
             "micropython": "1.25.0", "mem_free": 4321, "slot": "b"}


async def _records(settings: Settings) -> dict[str, object]:
    """Inventory and deployments as another connection sees them: what survives a restart."""
    return {
        "inventory": await query_rows(settings, "SELECT device_id, version, mem_free, slot "
                                                "FROM devices WHERE version IS NOT NULL "
                                                "ORDER BY 1"),
        "deployments": await query_rows(settings, "SELECT device_id, release_id, status "
                                                  "FROM deployments ORDER BY 1, 2"),
    }


async def _release(store: Any) -> int:
    return (await store.add_release("demo", "1.0.0", 1, ["unix"], b"{}", [], 2**31)).id


async def test_queued_records_go_into_the_boards_next_counter_commit(
        tmp_path: Path, backend: Backend) -> None:
    store, settings = await _store(tmp_path, backend, "b1", "b2")
    release = await _release(store)
    transactions: list[tuple[int, int, int]] = []
    write = store.write_checkins

    async def counting(inventories, offers, advances=()):  # the real store, counted
        transactions.append((len(inventories), len(offers), len(advances)))
        return await write(inventories, offers, advances)

    store.write_checkins = counting  # type: ignore[method-assign]
    try:
        counters = CounterCommits(store, write_behind=3600)  # no timer in this test
        counters.record_checkin("b1", INVENTORY, release)
        counters.record_checkin("b1", {"mem_free": 999}, release)  # later fields win
        # queued, not written
        assert (await _records(settings)) == {"inventory": [], "deployments": []}
        # another board's request: its counter alone, b1's records wait (for the timer)
        assert await counters.advance("b2", 1) is True
        assert transactions == []
        assert (await _records(settings)) == {"inventory": [], "deployments": []}
        assert (await _counters(settings))["b2"] == 1
        # b1's next request: its counter and its records in one transaction, before it goes on
        assert await counters.advance("b1", 1) is True
        assert transactions == [(1, 1, 1)]
        assert (await _records(settings)) == {"inventory": [("b1", "1.0.0", 999, "b")],
                                "deployments": [("b1", release, "offered")]}
        assert (await _counters(settings))["b1"] == 1
        assert counters.queued == 0
    finally:
        await store.close()


async def test_a_request_that_needs_no_records_leaves_them_queued(
        tmp_path: Path, backend: Backend) -> None:
    """A check-in (records_first=False) commits its counter alone, whatever its board has
    queued; the board's next request that wants them (a report) carries them."""
    store, settings = await _store(tmp_path, backend, "b1")
    release = await _release(store)
    transactions: list[tuple[int, int, int]] = []
    write = store.write_checkins

    async def counting(inventories, offers, advances=()):  # the real store, counted
        transactions.append((len(inventories), len(offers), len(advances)))
        return await write(inventories, offers, advances)

    store.write_checkins = counting  # type: ignore[method-assign]
    try:
        counters = CounterCommits(store, write_behind=3600)  # no timer in this test
        counters.record_checkin("b1", INVENTORY, release)
        assert await counters.advance_with_epoch("b1", 1, records_first=False) == (
            True, await _epoch(settings))
        assert transactions == [] and counters.queued == 2
        assert (await _records(settings)) == {"inventory": [], "deployments": []}
        assert await counters.advance("b1", 2) is True
        assert transactions == [(1, 1, 1)] and counters.queued == 0
        assert (await _records(settings))["deployments"] == [("b1", release, "offered")]
    finally:
        await store.close()


async def _epoch(settings: Settings) -> int:
    return int((await query_rows(settings, "SELECT epoch FROM fleet_epoch"))[0][0])


async def test_an_offer_never_overwrites_a_later_deployment_status(
        tmp_path: Path, backend: Backend) -> None:
    store, settings = await _store(tmp_path, backend, "b1")
    release = await _release(store)
    try:
        counters = CounterCommits(store, write_behind=3600)
        counters.record_checkin("b1", INVENTORY, release)
        # the board's report is written at once (after its own counter commit, which writes
        # the offer first); an offer queued again afterwards must not undo it
        assert await counters.advance("b1", 1) is True
        await store.set_deployment("b1", release, "downloading")
        counters.record_checkin("b1", INVENTORY, release)
        await counters.flush()
        assert (await _records(settings))["deployments"] == [("b1", release, "downloading")]
    finally:
        await store.close()


async def test_queued_records_are_written_within_the_window_without_other_requests(
        tmp_path: Path, backend: Backend) -> None:
    store, settings = await _store(tmp_path, backend, "b1")
    release = await _release(store)
    try:
        counters = CounterCommits(store, write_behind=0.2)
        counters.record_checkin("b1", INVENTORY, release)
        assert (await _records(settings))["inventory"] == []
        deadline = asyncio.get_running_loop().time() + 5.0  # the window plus a busy machine
        while ((await _records(settings))["inventory"] == []
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.05)
        assert (await _records(settings)) == {"inventory": [("b1", "1.0.0", 4321, "b")],
                                "deployments": [("b1", release, "offered")]}
    finally:
        await store.close()


async def test_records_queued_while_a_slow_write_runs_are_written_after_it(
        tmp_path: Path, backend: Backend) -> None:
    """A write-behind timer that fires while the last write still waits for the database
    (PostgreSQL over the network) is armed again: nothing queued meanwhile waits for a later
    check-in to be written."""
    store, settings = await _store(tmp_path, backend, "b1", "b2")
    release = await _release(store)
    gate = asyncio.Event()
    real = store.write_checkins
    writes: list[list[str]] = []

    async def slow(inventories, offers, advances=()):
        writes.append([device_id for device_id, _ in inventories])
        await gate.wait()
        return await real(inventories, offers, advances)

    store.write_checkins = slow  # type: ignore[method-assign]
    try:
        counters = CounterCommits(store, write_behind=0.05)
        counters.record_checkin("b1", INVENTORY, release)
        while not writes:  # the first timer's write has started and waits
            await asyncio.sleep(0.01)
        counters.record_checkin("b2", INVENTORY, release)
        await asyncio.sleep(0.2)  # b2's timer fires while b1's write still waits
        gate.set()
        deadline = asyncio.get_running_loop().time() + 5.0
        while len((await _records(settings))["inventory"]) < 2 \
                and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert [row[0] for row in (await _records(settings))["inventory"]] == ["b1", "b2"]
        assert writes == [["b1"], ["b2"]]
    finally:
        await store.close()


async def test_records_survive_a_failed_counter_batch_and_counters_go_on_alone(
        tmp_path: Path, backend: Backend) -> None:
    store, settings = await _store(tmp_path, backend, "b1", "b2")
    release = await _release(store)
    await _refuse(settings, "mem_free", 666)
    try:
        counters = CounterCommits(store, write_behind=3600)
        counters.record_checkin("b1", {**INVENTORY, "mem_free": 666}, release)
        # the records cannot be written: the counter still moves, the records stay queued
        assert await counters.advance("b1", 5) is True
        assert (await _counters(settings))["b1"] == 5
        assert counters.queued == 2
        assert (await _records(settings)) == {"inventory": [], "deployments": []}
        counters.record_checkin("b1", {"mem_free": 7}, None)  # newer fields over the old
        await counters.flush()
        assert (await _records(settings)) == {
            "inventory": [("b1", "1.0.0", 7, "b")], "deployments": [("b1", release, "offered")]}
    finally:
        await store.close()


async def test_shutdown_writes_every_answered_checkin(aiohttp_client, tmp_path: Path,
                                                      backend: Backend,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing acknowledged is lost at a clean stop: the app's clean-up writes what is queued
    (the window is an hour here, so only the clean-up can have written it)."""
    monkeypatch.setattr("ota_server.counters.WRITE_BEHIND_SECONDS", 3600.0)
    keys = FleetKeys.create(tmp_path)
    settings, token = await new_data_dir(tmp_path, backend)
    settings = replace(settings, root_path=keys.root_path)
    client = await aiohttp_client(create_app(settings))
    env = ServerEnv(client, settings, token, keys, tmp_path)
    boards = [await env.add_board(SimBoard(f"board-{i}")) for i in range(3)]
    await env.publish({"app_main.py": b"print(1)\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, percent=100)
    for board in boards:
        assert (await env.checkin(board, version="0.9.0", mem_free=1000)).status == 200
    queued = env.app[state.BOARD_WRITES].queued
    assert queued >= 2  # the last check-ins are still queued: written behind
    await client.close()  # the app's clean-up runs
    got = await _records(settings)
    assert got["inventory"] == [(b.device_id, "0.9.0", 1000, "a") for b in boards]
    assert got["deployments"] == [(b.device_id, 1, "offered") for b in boards]


async def test_publishers_see_every_answered_checkin(env) -> None:
    """A publisher request writes the queued records first: no window for API readers."""
    board = await env.add_board(SimBoard("seen-1"))
    await env.publish({"app_main.py": b"print(1)\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, percent=100)
    assert (await env.checkin(board, mem_free=2222)).status == 200
    assert env.app[state.BOARD_WRITES].queued > 0
    shown = await (await env.client.get("/v1/devices/seen-1", headers=env.bearer)).json()
    assert shown["mem_free"] == 2222
    assert (await env.rollout())["counts"]["offered"] == 1


# -- offers written before the answer (replicas) -------------------------------------------

async def test_offers_of_one_turn_share_one_write_done_before_anyone_goes_on(
        tmp_path: Path, backend: Backend) -> None:
    """With replicas an offered check-in is answered only once its offer is in the database;
    the offers of one turn of the loop share one write, the next turn's waits for it, and a
    failed write fails exactly the check-ins whose offers it held."""
    store, settings = await _store(tmp_path, backend, "b1", "b2", "b3")
    release = await _release(store)
    gate = asyncio.Event()
    batches: list[list[tuple[str, int, str]]] = []
    real = store.open_deployments_for

    async def slow(offers):
        batches.append(list(offers))
        await gate.wait()
        return await real(offers)

    store.open_deployments_for = slow  # type: ignore[method-assign]
    try:
        counters = CounterCommits(store, shared=True)
        first = [asyncio.create_task(counters.write_offer(b, release, "stable"))
                 for b in ("b1", "b2", "b1")]
        for _ in range(5):
            await asyncio.sleep(0)
        second = asyncio.create_task(counters.write_offer("b3", release, "stable"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert batches == [[("b1", release, "stable"), ("b2", release, "stable")]]
        assert not any(t.done() for t in [*first, second])
        assert (await _records(settings))["deployments"] == []
        gate.set()
        await asyncio.gather(*first)
        assert {row[0] for row in (await _records(settings))["deployments"]} >= {"b1", "b2"}
        await second
        assert batches[1:] == [[("b3", release, "stable")]]
        assert (await _records(settings))["deployments"] == [
            (b, release, "offered") for b in ("b1", "b2", "b3")]
        # a write that fails fails its check-ins, and the next one works
        got = await asyncio.gather(counters.write_offer("b1", release + 99, "stable"),
                                   return_exceptions=True)
        assert isinstance(got[0], StoreError), got
        # an offer this process wrote is not written again (deployments are never deleted)
        written = len(batches)
        await counters.write_offer("b2", release, "stable")
        assert len(batches) == written
        # another process's offer of it goes to the database and leaves the deployment as it is
        await store.set_deployment("b2", release, "downloading")
        other = CounterCommits(store, shared=True)
        await other.write_offer("b2", release, "beta")
        assert batches[written:] == [[("b2", release, "beta")]]
        assert (await _records(settings))["deployments"] == [
            ("b1", release, "offered"), ("b2", release, "downloading"), ("b3", release, "offered")]
        await counters.close()
        await other.close()
    finally:
        await store.close()


async def test_the_offers_remembered_as_written_are_bounded_oldest_first(
        tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(counters_module, "OFFERS_KEPT", 2)
    store, _ = await _store(tmp_path, backend, "b1", "b2", "b3")
    release = await _release(store)
    written: list[str] = []
    real = store.open_deployments_for

    async def counting(offers):
        written.extend(device_id for device_id, _, _ in offers)
        return await real(offers)

    store.open_deployments_for = counting  # type: ignore[method-assign]
    try:
        counters = CounterCommits(store, shared=True)
        for board in ("b1", "b2", "b3", "b3", "b2", "b1"):
            await counters.write_offer(board, release, "stable")
        assert written == ["b1", "b2", "b3", "b1"]  # b1 was forgotten first
        await counters.close()
    finally:
        await store.close()


async def test_a_commit_waiting_for_another_process_lock_leaves_the_event_loop_running(
        tmp_path: Path) -> None:
    """With several workers on one SQLite file, a group commit may find the write lock held by
    another worker. SQLite's own wait (busy_timeout) sleeps with the event loop stopped, and
    every request of the worker with it; CounterCommits tries again on the loop instead."""
    import sqlite3

    from ota_server.storage.sqlite import SqliteStore

    path = tmp_path / "mpota.sqlite3"
    store = SqliteStore(path)
    other = sqlite3.connect(path, isolation_level=None)  # another worker's connection
    try:
        await store.add_device("b1", b"\x04" + bytes(64), "esp32", [], "stable", 1)
        commits = CounterCommits(store)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticker = asyncio.get_running_loop().create_task(tick())
        other.execute("BEGIN IMMEDIATE")  # the other worker holds the write lock 0.3 s
        asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
        started = asyncio.get_running_loop().time()
        assert await commits.advance("b1", 1)
        waited = asyncio.get_running_loop().time() - started
        ticker.cancel()
        assert waited >= 0.29  # it did wait for the lock ...
        assert ticks >= 20, ticks  # ... while the loop went on (a stopped loop: ~1 tick)
        device = await store.device("b1")
        assert device is not None and device.counter == 1
        await commits.close()
    finally:
        other.close()
        await store.close()
