"""Each board's deployment history: what the board reported about each release, why, when
(migration 0004); and the strict rule for a report's reason (docs/protocol.md, "Report
reasons")."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_support import Backend, ServerEnv, SimBoard, open_metadata, store_fingerprint

from ota_server.errors import BadRequest
from ota_server.routes_device import MAX_REASON_BYTES, report_reason
from ota_server.storage.records import HISTORY_PER_DEVICE
from ota_server.storage.sqlite import SqliteStore, _migrations


async def _show(env: ServerEnv, device_id: str) -> dict:
    resp = await env.client.get(f"/v1/devices/{device_id}", headers=env.bearer)
    assert resp.status == 200
    doc: dict = await resp.json()
    return doc


async def test_a_board_s_reports_are_its_deployment_history_with_reasons_and_times(
        env: ServerEnv) -> None:
    board = await env.add_board(SimBoard("hist-1"))
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.publish({"app_main.py": b"v2\n"}, version="1.1.0", sequence=2)
    await env.start_rollout("stable", "demo", 2, percent=100)
    board.sequence = 1
    before = int(time.time())
    assert (await env.checkin(board)).status == 200
    for status, reason in [("downloading", ""), ("installed", ""),
                           ("rolled_back", "ValueError: boom")]:
        assert (await env.report(board, status, 2, reason=reason)).status == 204
    # delivery is at least once: the same report again is no new event
    assert (await env.report(board, "rolled_back", 2, reason="ValueError: boom")).status == 204
    history = (await _show(env, "hist-1"))["history"]
    assert [(h["version"], h["sequence"], h["status"], h["reason"]) for h in history] == [
        ("1.1.0", 2, "downloading", ""), ("1.1.0", 2, "installed", ""),
        ("1.1.0", 2, "rolled_back", "ValueError: boom")]
    assert all(before <= h["at"] <= time.time() + 1 for h in history)
    assert (await _show(env, "hist-1"))["last_error"] == "ValueError: boom"


async def test_a_refused_report_leaves_no_history(env: ServerEnv) -> None:
    board = await env.add_board(SimBoard("hist-2"))
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    # never offered: 409, nothing recorded
    assert (await env.report(board, "failed", 1, reason="x")).status == 409
    assert (await _show(env, "hist-2"))["history"] == []


@pytest.mark.parametrize("reason", [
    "x" * (MAX_REASON_BYTES + 1),       # too long
    "é" * (MAX_REASON_BYTES // 2 + 1),  # short in characters, too long in UTF-8 bytes
    "line\nforged line",                # a control character: C0
    "\x1b[31mred",                      # an escape sequence for the operator's terminal
    "del\x7f", "c1\x85",                # DEL, C1
    "\ud800",                           # a lone surrogate: not UTF-8
])
async def test_a_report_with_a_bad_reason_is_refused_and_changes_nothing(
        env: ServerEnv, reason: str) -> None:
    board = await env.add_board(SimBoard("hist-3"))
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, percent=100)
    assert (await env.checkin(board)).status == 200
    assert (await env.report(board, "downloading", 1)).status == 204  # the check-in is written
    before = await store_fingerprint(env.settings)
    resp = await env.report(board, "failed", 1, reason=reason)
    assert resp.status == 400, await resp.text()
    doc = await resp.json()
    assert doc["code"] == "bad_field" and "'reason'" in doc["message"]
    after = await store_fingerprint(env.settings)
    assert {k: v for k, v in after.items() if k != "counters"} == \
        {k: v for k, v in before.items() if k != "counters"}
    assert [h["status"] for h in (await _show(env, "hist-3"))["history"]] == ["downloading"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_a_reason_is_accepted_exactly_when_it_is_short_printable_utf8(text: str) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        size = None
    ok = (size is not None and size <= MAX_REASON_BYTES
          and not any(c < " " or "\x7f" <= c <= "\x9f" for c in text))
    if ok:
        assert report_reason(text) == text
    else:
        with pytest.raises(BadRequest):
            report_reason(text)


async def test_a_board_s_history_keeps_its_newest_rows_only(tmp_path: Path,
                                                           backend: Backend) -> None:
    store = await open_metadata(backend.settings(tmp_path / "data"))
    try:
        await store.add_device("b1", b"\x04" + b"\x01" * 64, "unix", [], "stable", 1)
        await store.add_device("b2", b"\x04" + b"\x02" * 64, "unix", [], "stable", 2)
        release = await store.add_release("demo", "1.0.0", 1, ["unix"], b"{}", [], 2**40)
        for board in ("b1", "b2"):
            await store.open_deployment_for(board, release.id, "stable")
        for i in range(HISTORY_PER_DEVICE + 5):
            assert await store.set_deployment("b1", release.id, "failed", f"try {i}")
        assert await store.set_deployment("b2", release.id, "confirmed", "")
        history = await store.device_history("b1")
        assert len(history) == HISTORY_PER_DEVICE
        assert history[0].reason == "try 5" and history[-1].reason == \
            f"try {HISTORY_PER_DEVICE + 4}"
        assert [h.status for h in await store.device_history("b2")] == ["confirmed"]
        assert not await store.set_deployment("b1", release.id + 1, "failed", "never offered")
    finally:
        await store.close()


@pytest.mark.sqlite_only(reason="migrates a SQLite file written by schema version 2")
async def test_a_version_2_database_migrates_to_the_history_table(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    db = sqlite3.connect(path)
    for version, sql in _migrations():
        if version <= 2:
            db.executescript(sql)
    db.execute("PRAGMA user_version=2")
    db.execute("INSERT INTO devices (device_id, public_key, board, channel, bucket, created) "
               "VALUES ('old', x'04', 'unix', 'stable', 1, 1)")
    db.commit()
    db.close()
    store = SqliteStore(path)
    try:
        assert await store.schema_version() == max(v for v, _ in _migrations())
        assert await store.device_history("old") == []
    finally:
        await store.close()
    assert json.dumps([v for v, _ in _migrations()])  # the scripts are numbered
