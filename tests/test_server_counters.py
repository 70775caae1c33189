"""Group commit of board counters (ota_server.counters): batched advances behave exactly like
one commit each, are durable before anyone is answered, and fail together."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from server_support import FleetKeys, ServerEnv, SimBoard, new_data_dir

from ota_server.app import create_app
from ota_server.counters import CounterCommits
from ota_server.device_auth import sign_request
from ota_server.storage.sqlite import SqliteStore

POINT = b"\x04" + b"\x00" * 64


def _store(tmp_path: Path, *boards: str) -> SqliteStore:
    store = SqliteStore(tmp_path / "db.sqlite3")
    for board in boards:
        store.add_device(board, POINT, "unix", [], "stable", 1)
    return store


def _counters(path: Path) -> dict[str, int]:
    """The counters as another connection sees them: what survives a restart."""
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT device_id, counter FROM devices").fetchall())
    finally:
        db.close()


def test_advance_counters_is_advance_counter_in_order(tmp_path: Path) -> None:
    store = _store(tmp_path, "b1", "b2")
    try:
        got = store.advance_counters([("b1", 5), ("b1", 5), ("b2", 3), ("b1", 4), ("b1", 6),
                                      ("nobody", 9)])
        assert got == [True, False, True, False, True, False]
        assert _counters(tmp_path / "db.sqlite3") == {"b1": 6, "b2": 3}
    finally:
        store.close()


async def test_one_turn_of_the_loop_is_one_batch_with_sequential_outcomes(
        tmp_path: Path) -> None:
    store = _store(tmp_path, "b1", "b2")
    commits: list[int] = []
    batch_of = store.advance_counters

    def counting(advances):  # the real store, counted: how many transactions ran
        commits.append(len(advances))
        return batch_of(advances)

    store.advance_counters = counting  # type: ignore[method-assign]
    try:
        counters = CounterCommits(store)
        got = await asyncio.gather(counters.advance("b1", 7), counters.advance("b1", 7),
                                   counters.advance("b2", 1), counters.advance("b1", 2))
        assert got == [True, False, True, False]
        assert commits == [4]
        # committed before the awaits returned
        assert _counters(tmp_path / "db.sqlite3") == {"b1": 7, "b2": 1}
        # alone: one autocommit statement, no batch transaction
        assert await counters.advance("b2", 2) is True
        assert commits == [4]
        assert _counters(tmp_path / "db.sqlite3") == {"b1": 7, "b2": 2}
    finally:
        store.close()


async def test_a_failed_batch_moves_no_counter_and_fails_every_request(tmp_path: Path) -> None:
    store = _store(tmp_path, "b1", "b2")
    db = sqlite3.connect(tmp_path / "db.sqlite3")
    db.execute("CREATE TRIGGER refuse BEFORE UPDATE OF counter ON devices "
               "WHEN NEW.counter = 666 BEGIN SELECT RAISE(ABORT, 'refused'); END")
    db.commit()
    db.close()
    before = _counters(tmp_path / "db.sqlite3")
    try:
        counters = CounterCommits(store)
        got = await asyncio.gather(counters.advance("b1", 10), counters.advance("b2", 666),
                                   return_exceptions=True)
        assert all(isinstance(g, sqlite3.IntegrityError) for g in got), got
        assert _counters(tmp_path / "db.sqlite3") == before
        assert before["b1"] < 10
        # the store is usable afterwards
        assert await counters.advance("b1", 10) is True
    finally:
        store.close()


@pytest.mark.parametrize("method,path", [("GET", "/v1/blobs/{sha}"),
                                         ("POST", "/v1/device/checkin")])
async def test_concurrent_replays_over_http_pass_once(aiohttp_client, tmp_path: Path,
                                                      method: str, path: str) -> None:
    keys = FleetKeys.create(tmp_path)
    settings, token = new_data_dir(tmp_path)
    settings = replace(settings, root_path=keys.root_path)
    env = ServerEnv(await aiohttp_client(create_app(settings)), settings, token, keys, tmp_path)
    board = await env.add_board(SimBoard("board-a"))
    await env.publish({"app_main.py": b"print(1)\n"}, version="1.0.0", sequence=1)
    sha = next(p.name for p in settings.blob_dir.rglob("*") if len(p.name) == 64)
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
    assert _counters(settings.db_path)["board-a"] == 5
    fresh = {"Authorization": sign_request(board.key, board.device_id, 6, method, path, body)}
    again = await env.client.request(method, path, data=body or None, headers=fresh)
    assert again.status in (200, 204)
