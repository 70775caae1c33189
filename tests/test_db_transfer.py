"""Moving a server's storage (issue #14, item 8): `ota db export` from an embedded data
directory filled by a real server, `ota db import` into PostgreSQL + S3 (and back), and a
server on the new storage that knows everything the old one knew: releases, boards, rollout,
history, audit, tokens, replay counters, blobs. Bad dumps and non-empty targets are refused
with nothing imported."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import SQLITE, ServerEnv, SimBoard, sha256_hex, start_env

from ota_server.app import create_app
from ota_server.device_auth import sign_request
from ota_server.settings import Settings
from ota_server.storage.dump import MANIFEST, TABLES, DumpWriter
from ota_server.storage.transfer import SCHEMA_VERSION, StoreLocation, export_store, import_dump
from tools.cli import cli

# The backends are named by arguments only, never by a variable of the test's environment.
_NO_ENV = {"MPOTA_DB": None, "MPOTA_BLOBS": None, "MPOTA_DATA": None}


async def ota_db(*args: str) -> Result:
    """`ota db ARGS` as from a shell (off the test's event loop: the CLI runs its own)."""
    return await asyncio.to_thread(CliRunner().invoke, cli, ["db", *args], env=_NO_ENV)


async def get_json(env: ServerEnv, path: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token or env.token}"}
    resp = await env.client.get(path, headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


AUDIT = "/v1/audit?limit=1000"


async def fleet_view(env: ServerEnv) -> dict[str, Any]:
    """Everything the publisher API shows about the fleet. The audit log is read first: the
    admin's GET /v1/tokens below is one of its entries."""
    view = {path: await get_json(env, path) for path in (
        AUDIT, "/v1/releases", "/v1/devices", "/v1/channels", "/v1/channels/stable/rollout",
        "/v1/tokens", "/v1/roots")}
    for device in view["/v1/devices"]["devices"]:
        path = f"/v1/devices/{device['device_id']}"
        view[path] = await get_json(env, path)
    return view


class Fleet:
    """A fleet a real embedded server has worked with: two releases (the second yanked), a
    rollout, two boards (one confirmed, one failed), a read token, the audit log."""

    def __init__(self, env: ServerEnv):
        self.env = env
        self.files = {"app_main.py": b"print('moved')\n", "lib/big.bin": os.urandom(300_000)}
        self.later = {"app_main.py": b"print('later')\n"}
        self.ok = SimBoard("board-ok")
        self.bad = SimBoard("board-bad", tags=("canary",))
        self.reader_token = ""

    async def fill(self) -> None:
        env = self.env
        await env.publish(self.files, version="1.0.0", sequence=1)
        await env.publish(self.later, version="1.1.0", sequence=2)
        made = await env.client.post("/v1/tokens", json={"name": "viewer", "scope": "read"},
                                     headers=env.bearer)
        assert made.status == 201
        self.reader_token = (await made.json())["token"]
        for board in (self.ok, self.bad):
            await env.add_board(board)
        await env.start_rollout("stable", "demo", 1, percent=100)
        for board in (self.ok, self.bad):
            assert (await env.checkin(board)).status == 200
        for sha, data in self.blobs().items():
            got = await env.get_blob(self.ok, sha)
            assert await got.read() == data
        for status in ("downloading", "installed", "confirmed"):
            assert (await env.report(self.ok, status, 1)).status == 204
        assert (await env.report(self.bad, "downloading", 1)).status == 204
        assert (await env.report(self.bad, "failed", 1, reason="OSError: flash full")).status \
            == 204
        yank = await env.client.post("/v1/releases/demo/1.1.0/yank", headers=env.bearer)
        assert yank.status == 200, await yank.text()
        # The confirmed board says what it runs now (its inventory, written behind).
        assert (await env.checkin(self.ok, version="1.0.0", sequence=1)).status == 204

    def blobs(self) -> dict[str, bytes]:
        return {sha256_hex(d): d for d in (*self.files.values(), *self.later.values())}


async def _embedded_fleet(aiohttp_client: Any, tmp_path: Path) -> Fleet:
    fleet = Fleet(await start_env(aiohttp_client, tmp_path, SQLITE))
    await fleet.fill()
    return fleet


async def _last_view(env: ServerEnv) -> dict[str, Any]:
    """The fleet as a server shows it just before it stops: its audit log read last, as a
    server on the moved storage shows it first."""
    view = await fleet_view(env)
    view[AUDIT] = await get_json(env, AUDIT)
    return view


async def _server_on(aiohttp_client: Any, fleet: Fleet, settings: Settings) -> ServerEnv:
    client = await aiohttp_client(create_app(settings))
    env = fleet.env
    return ServerEnv(client, settings, env.token, env.keys, env.workdir)


def _table_files(dump: Path) -> dict[str, bytes]:
    return {t.name: (dump / t.file).read_bytes() for t in TABLES}


async def test_an_embedded_server_moves_to_postgresql_and_s3_with_everything_it_knew(
        aiohttp_client: Any, tmp_path: Path, pg_dsn: str, s3_url: str) -> None:
    fleet = await _embedded_fleet(aiohttp_client, tmp_path)
    old = fleet.env
    data = str(old.settings.data_dir)
    before = await _last_view(old)
    dump = tmp_path / "dump"

    # While the server runs, its data directory is not exported (its lock).
    refused = await ota_db("export", str(dump), "--data", data)
    assert refused.exit_code == 1 and "in use by another ota serve" in refused.output
    assert not dump.exists()

    await old.client.close()  # the server stops: its queued check-in records are written
    exported = await ota_db("export", str(dump), "--data", data)
    assert exported.exit_code == 0, exported.output
    assert "2 release(s), 2 board(s), 1 rollout(s)" in exported.output
    assert (await ota_db("migrate", "--db", pg_dsn, "--blobs", s3_url)).exit_code == 0
    imported = await ota_db("import", str(dump), "--db", pg_dsn, "--blobs", s3_url)
    assert imported.exit_code == 0, imported.output
    assert "PostgreSQL" in imported.output and pg_dsn not in imported.output

    new = await _server_on(aiohttp_client, fleet, Settings(
        data_dir=tmp_path / "replica", root_path=old.keys.root_path, db_url=pg_dsn,
        blobs_url=s3_url))
    # Releases (the yank too), boards with their inventory and history, the rollout and its
    # counts, channels, tokens, roots and the audit log: all as the old server showed them.
    assert await fleet_view(new) == before
    assert before["/v1/devices/board-bad"]["history"][-1]["reason"] == "OSError: flash full"
    assert before["/v1/channels/stable/rollout"]["rollout"]["counts"]["confirmed"] == 1
    # The old tokens work, each with its scope.
    assert (await get_json(new, "/v1/releases", fleet.reader_token))["releases"]
    denied = await new.client.post("/v1/tokens", json={"name": "x", "scope": "read"},
                                   headers={"Authorization": f"Bearer {fleet.reader_token}"})
    assert denied.status == 403

    # A board's counter is exactly where it was: its last one is a replay, the next one works.
    board = fleet.ok
    body = board.checkin_body(version="1.0.0", sequence=1)
    replayed = await new.client.post("/v1/device/checkin", data=body, headers={
        "Authorization": sign_request(board.key, board.device_id, board.counter, "POST",
                                      "/v1/device/checkin", body)})
    assert replayed.status == 401 and (await replayed.json())["code"] == "replay"
    assert (await new.checkin(board, version="1.0.0", sequence=1)).status == 204
    # The blobs come out of the bucket byte for byte.
    for sha, data_bytes in fleet.blobs().items():
        got = await new.get_blob(fleet.bad, sha)
        assert got.status == 200 and await got.read() == data_bytes

    # New ids continue above the imported ones (PostgreSQL's identity sequences moved on).
    registered = await new.publish({"app_main.py": b"print('on pg')\n"}, version="1.2.0",
                                   sequence=3)
    started = await new.start_rollout("stable", "demo", 3, percent=100)
    assert registered["id"] == max(r["id"] for r in before["/v1/releases"]["releases"]) + 1
    assert started["rollout"]["id"] == before["/v1/channels/stable/rollout"]["rollout"]["id"] + 1
    assert (await new.checkin(board, version="1.0.0", sequence=1)).status == 200  # offered 1.2.0
    assert (await new.report(board, "downloading", 3)).status == 204  # a history row
    made = await new.client.post("/v1/tokens", json={"name": "ci", "scope": "publish"},
                                 headers=new.bearer)
    assert made.status == 201, await made.text()
    entries = (await get_json(new, AUDIT))["entries"]
    assert entries[-1]["id"] > before[AUDIT]["entries"][-1]["id"]
    history = (await get_json(new, "/v1/devices/board-ok"))["history"]
    assert history[:-1] == before["/v1/devices/board-ok"]["history"]
    assert (history[-1]["version"], history[-1]["status"]) == ("1.2.0", "downloading")


async def test_postgresql_and_s3_move_back_to_an_embedded_data_directory(
        aiohttp_client: Any, tmp_path: Path, pg_dsn: str, s3_url: str) -> None:
    fleet = await _embedded_fleet(aiohttp_client, tmp_path)
    old = fleet.env
    before = await _last_view(old)
    await old.client.close()
    first, second = tmp_path / "dump-sqlite", tmp_path / "dump-pg"
    assert (await ota_db("export", str(first), "--data", str(old.settings.data_dir))).exit_code \
        == 0
    assert (await ota_db("migrate", "--db", pg_dsn, "--blobs", s3_url)).exit_code == 0
    assert (await ota_db("import", str(first), "--db", pg_dsn, "--blobs", s3_url)).exit_code \
        == 0
    result = await ota_db("export", str(second), "--db", pg_dsn, "--blobs", s3_url)
    assert result.exit_code == 0, result.output
    # The same rows, in the same order, whichever backend they were read from.
    assert _table_files(second) == _table_files(first)
    assert json.loads((second / MANIFEST).read_text())["source"] == "postgresql+s3"

    back = tmp_path / "back"
    result = await ota_db("import", str(second), "--data", str(back))
    assert result.exit_code == 0, result.output
    new = await _server_on(aiohttp_client, fleet, Settings(data_dir=back,
                                                           root_path=old.keys.root_path))
    assert await fleet_view(new) == before
    assert (await new.checkin(fleet.ok, version="1.0.0", sequence=1)).status == 204
    for sha, data_bytes in fleet.blobs().items():
        assert await (await new.get_blob(fleet.ok, sha)).read() == data_bytes


# -- refusals ----------------------------------------------------------------------------------

@pytest.fixture
async def exported(aiohttp_client: Any, tmp_path: Path) -> Path:
    """A dump of a filled embedded data directory."""
    fleet = await _embedded_fleet(aiohttp_client, tmp_path)
    await fleet.env.client.close()
    dump = tmp_path / "dump"
    result = await ota_db("export", str(dump), "--data", str(fleet.env.settings.data_dir))
    assert result.exit_code == 0, result.output
    return dump


def _rewrite(dump: Path, table: str, edit: Any, *, fix_manifest: bool) -> None:
    """Change the lines of a table file; with `fix_manifest`, as a forger would, its row count
    and SHA-256 in the manifest too."""
    path = dump / f"{table}.jsonl"
    lines = edit(path.read_bytes().splitlines(keepends=True))
    path.write_bytes(b"".join(lines))
    if fix_manifest:
        manifest = json.loads((dump / MANIFEST).read_text())
        manifest["tables"][table].update(rows=len(lines),
                                         sha256=hashlib.sha256(b"".join(lines)).hexdigest())
        (dump / MANIFEST).write_text(json.dumps(manifest))


def _replace_line(number: int, line: bytes) -> Any:
    def edit(lines: list[bytes]) -> list[bytes]:
        lines[number - 1] = line
        return lines
    return edit


def _set_field(number: int, **fields: Any) -> Any:
    def edit(lines: list[bytes]) -> list[bytes]:
        doc = json.loads(lines[number - 1])
        doc.update(fields)
        lines[number - 1] = json.dumps(doc).encode() + b"\n"
        return lines
    return edit


async def _pg_counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {t.name: int(await conn.fetchval(f"SELECT COUNT(*) FROM {t.name}"))
                for t in TABLES}
    finally:
        await conn.close()


def _sqlite_counts(path: Path) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        return {t.name: int(db.execute(f"SELECT COUNT(*) FROM {t.name}").fetchone()[0])
                for t in TABLES}
    finally:
        db.close()


_BAD_DUMPS = [
    ("devices", _replace_line(2, b'{"device_id": "board-ok", \n'), False,
     "devices.jsonl line 2: not JSON"),
    ("devices", _set_field(1, counter="7"), False,
     "devices.jsonl line 1: counter must be a 64-bit integer"),
    ("releases", _set_field(1, envelope="not base64!"), False,
     "releases.jsonl line 1: envelope is not base64"),
    # Values one backend would take and the other not are refused by both, before writing.
    ("devices", _set_field(1, bucket=2**31), False,
     "devices.jsonl line 1: bucket must be a 32-bit integer"),
    ("devices", _set_field(2, board="esp\u000032"), False,
     "devices.jsonl line 2: board must be a string without NUL"),
    ("devices", _set_field(1, counter=999), False,
     "devices.jsonl: does not match its SHA-256"),
    ("audit", lambda lines: lines[:-1], False,
     "audit.jsonl: {fewer} row(s), the manifest says {rows}"),
    # A consistent-looking dump whose last rows refer to a release that is not there: the
    # database refuses them, and the rows of the tables before them go too.
    ("deployment_history", _set_field(1, release_id=99), True, "nothing was imported"),
]


# Every bad dump on the embedded target; on PostgreSQL + S3 one refused while the dump is
# read (the same code, before any target is opened) and the one the database refuses.
@pytest.mark.parametrize(("target", "table", "edit", "fix_manifest", "message"),
                         [("sqlite", *case) for case in _BAD_DUMPS]
                         + [("postgres", *_BAD_DUMPS[0]), ("postgres", *_BAD_DUMPS[-1])])
async def test_a_bad_dump_is_refused_naming_the_file_and_line_and_nothing_is_imported(
        exported: Path, tmp_path: Path, request: pytest.FixtureRequest, target: str,
        table: str, edit: Any, fix_manifest: bool, message: str) -> None:
    rows = json.loads((exported / MANIFEST).read_text())["tables"][table]["rows"]
    message = message.format(rows=rows, fewer=rows - 1)
    _rewrite(exported, table, edit, fix_manifest=fix_manifest)
    if target == "sqlite":
        where = ["--data", str(tmp_path / "new")]
    else:
        pg_dsn, s3_url = request.getfixturevalue("pg_dsn"), request.getfixturevalue("s3_url")
        assert (await ota_db("migrate", "--db", pg_dsn, "--blobs", s3_url)).exit_code == 0
        where = ["--db", pg_dsn, "--blobs", s3_url]
    result = await ota_db("import", str(exported), *where)
    assert result.exit_code == 1
    assert message in result.output
    if target == "postgres":
        assert not any((await _pg_counts(where[1])).values())
    else:
        db_file = tmp_path / "new" / "mpota.sqlite3"
        assert not db_file.exists() or not any(_sqlite_counts(db_file).values())
    if message.startswith(table):  # a bad dump is refused before anything is written
        assert str(exported / f"{table}.jsonl") in result.output
        if target == "postgres":
            assert not any([await _bucket_holds(where[3], sha, tmp_path / "cache")
                            for sha in _dump_blobs(exported)])
        else:
            assert not (tmp_path / "new").exists()


def _dump_blobs(dump: Path) -> list[str]:
    return [p.name for p in (dump / "blobs").rglob("*") if p.is_file()]


async def _bucket_holds(s3_url: str, sha256: str, cache: Path) -> bool:
    from ota_server.storage.s3 import S3BlobStore

    store = await S3BlobStore.open(s3_url, cache)
    try:
        return await store.exists(sha256)
    finally:
        await store.close()


async def test_a_missing_blob_is_refused_naming_it(exported: Path, tmp_path: Path) -> None:
    victim = next(p for p in (exported / "blobs").rglob("*") if p.is_file())
    victim.write_bytes(victim.read_bytes()[:-1])
    result = await ota_db("import", str(exported), "--data", str(tmp_path / "new"))
    assert result.exit_code == 1
    assert f"{victim}: does not match its hash or its size" in result.output
    assert not (tmp_path / "new").exists()


async def test_a_target_that_holds_anything_is_refused_and_kept(
        exported: Path, tmp_path: Path, pg_dsn: str, s3_url: str) -> None:
    assert (await ota_db("migrate", "--db", pg_dsn, "--blobs", s3_url)).exit_code == 0
    made = await asyncio.to_thread(CliRunner().invoke, cli, [
        "tokens", "create", "ops", "--data", str(tmp_path / "replica"), "--db", pg_dsn])
    assert made.exit_code == 0, made.output
    result = await ota_db("import", str(exported), "--db", pg_dsn, "--blobs", s3_url)
    assert result.exit_code == 1
    # `ota tokens create` made a token and wrote it in the audit log: both are kept.
    assert "the database is not empty (rows in tokens: 1, audit: 1)" in result.output
    assert await _pg_counts(pg_dsn) == {**dict.fromkeys((t.name for t in TABLES), 0),
                                        "tokens": 1, "audit": 1}
    # The data directory the dump came from is not empty either.
    source = tmp_path / "data"
    before = _sqlite_counts(source / "mpota.sqlite3")
    again = await ota_db("import", str(exported), "--data", str(source))
    assert again.exit_code == 1 and "the database is not empty" in again.output
    assert _sqlite_counts(source / "mpota.sqlite3") == before


async def test_export_refuses_an_existing_destination_and_an_unmigrated_database(
        exported: Path, tmp_path: Path, pg_dsn: str) -> None:
    again = await ota_db("export", str(exported), "--data", str(tmp_path / "data"))
    assert again.exit_code == 1 and "already exists" in again.output
    fresh = await ota_db("export", str(tmp_path / "d2"), "--db", pg_dsn, "--data",
                         str(tmp_path / "data"))
    assert fresh.exit_code == 1 and "run `ota db migrate" in fresh.output
    assert not (tmp_path / "d2").exists() and not (tmp_path / ".d2.partial").exists()



async def test_export_refuses_a_value_the_other_backend_cannot_hold(
        exported: Path, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "data" / "mpota.sqlite3")
    with db:  # SQLite holds any integer; PostgreSQL's INTEGER column does not
        db.execute("UPDATE devices SET bucket = ? WHERE device_id = 'board-ok'", (2**40,))
    db.close()
    result = await ota_db("export", str(tmp_path / "d2"), "--data", str(tmp_path / "data"))
    assert result.exit_code == 1
    assert "table devices, row device_id='board-ok': bucket must be a 32-bit integer" \
        in result.output
    assert not (tmp_path / "d2").exists() and not (tmp_path / ".d2.partial").exists()

# -- round trip, property-tested ---------------------------------------------------------------

_CHAR = st.characters(codec="utf-8", exclude_characters="\x00")  # what both backends store
_TEXT = st.text(_CHAR, max_size=8)
_KEY = st.text(_CHAR, min_size=1, max_size=6)
_INT = st.integers(-(2**63), 2**63 - 1)
_INT32 = st.integers(-(2**31), 2**31 - 1)
_TIME = st.none() | _INT
_POLICY = st.dictionaries(_KEY, st.none() | st.booleans() | _INT32 | _TEXT
                          | st.floats(0, 100) | st.lists(st.dictionaries(_KEY, _INT32,
                                                                         max_size=2),
                                                         max_size=2), max_size=4)


def _ids(draw: Any, count: int) -> list[int]:
    return sorted(draw(st.lists(st.integers(1, 2**40), min_size=count, max_size=count,
                                unique=True)))


@st.composite
def store_contents(draw: Any) -> tuple[dict[str, list[dict[str, Any]]], dict[str, bytes]]:
    """Every table of a store, filled with rows that satisfy the schema's keys and references
    (and little else: any value each column may hold), and the blobs the releases name."""
    rows: dict[str, list[dict[str, Any]]] = {t.name: [] for t in TABLES}
    for n, token_id in enumerate(_ids(draw, draw(st.integers(0, 3)))):
        rows["tokens"].append({"id": token_id, "name": draw(_TEXT),
                               "token_hash": f"{n:064x}", "created": draw(_INT),
                               "revoked": draw(_TIME), "scope": draw(_TEXT)})
    for version in _ids(draw, draw(st.integers(0, 2))):
        rows["roots"].append({"version": version, "envelope": draw(st.binary(max_size=40)),
                              "created": draw(_INT)})
    release_ids = _ids(draw, draw(st.integers(0, 4)))
    named: list[dict[str, Any]] = []  # releases a version names (no duplicate_of)
    for n, release_id in enumerate(release_ids):
        release = {"id": release_id, "app": draw(st.sampled_from(["a", "b"])),
                   "version": f"{n}.0.0", "sequence": n + 1,
                   "boards": draw(st.lists(_TEXT, max_size=3)),
                   "envelope": draw(st.binary(max_size=60)), "created": draw(_INT),
                   "expires": draw(_INT), "duplicate_of": None, "yanked": draw(_TIME),
                   "signers": draw(st.lists(_TEXT, max_size=2))}
        if named and draw(st.booleans()):  # a pre-v2 second release of one version
            first = draw(st.sampled_from(named))
            release.update(app=first["app"], version=first["version"],
                           duplicate_of=first["id"])
        else:
            named.append(release)
        rows["releases"].append(release)
    blobs = {hashlib.sha256(data).hexdigest(): data
             for data in draw(st.lists(st.binary(max_size=50), max_size=3, unique=True))}
    for release_id in release_ids:
        for sha in draw(st.lists(st.sampled_from(sorted(blobs)), max_size=2, unique=True)
                        if blobs else st.just([])):
            rows["release_blobs"].append({"release_id": release_id, "blob": sha,
                                          "size": len(blobs[sha])})
    for n in range(draw(st.integers(0, 2))):
        rows["sequence_reservations"].append({"app": draw(_TEXT), "version": f"r{n}",
                                              "sequence": 1000 + n, "created": draw(_INT)})
    device_ids = draw(st.lists(_KEY, max_size=3, unique=True))
    for device_id in device_ids:
        device = {"device_id": device_id, "public_key": draw(st.binary(max_size=65)),
                  "board": draw(_TEXT), "tags": draw(st.lists(_TEXT, max_size=2)),
                  "channel": draw(_TEXT), "bucket": draw(_INT32), "counter": draw(_INT),
                  "created": draw(_INT), "revoked": draw(_TIME),
                  "records_counter": draw(_INT)}
        for field in ("app", "version", "micropython", "slot", "last_status", "last_error"):
            device[field] = draw(st.none() | _TEXT)
        for field in ("sequence", "root_version", "mem_free", "last_seen"):
            device[field] = draw(_TIME)
        rows["devices"].append(device)
    maybe_release = st.sampled_from(release_ids) if release_ids else st.nothing()
    for channel in draw(st.lists(_KEY, max_size=2, unique=True)):
        rows["channels"].append({"name": channel,
                                 "base_release_id": draw(st.none() | maybe_release)})
    if release_ids:
        for rollout_id in _ids(draw, draw(st.integers(0, 2))):
            rows["rollouts"].append({
                "id": rollout_id, "channel": draw(_TEXT), "release_id": draw(maybe_release),
                "policy": draw(_POLICY), "stage": draw(_INT32), "state": draw(_TEXT),
                "reason": draw(st.none() | _TEXT), "created": draw(_INT),
                "updated": draw(_INT)})
    if release_ids and device_ids:
        pairs = draw(st.lists(st.tuples(st.sampled_from(device_ids), maybe_release),
                              max_size=3, unique=True))
        for device_id, release_id in pairs:
            rows["deployments"].append({
                "device_id": device_id, "release_id": release_id, "status": draw(_TEXT),
                "reason": draw(st.none() | _TEXT), "updated": draw(_INT),
                "channel": draw(_TEXT)})
        for history_id in _ids(draw, draw(st.integers(0, 3))):
            rows["deployment_history"].append({
                "id": history_id, "device_id": draw(st.sampled_from(device_ids)),
                "release_id": draw(maybe_release), "status": draw(_TEXT),
                "reason": draw(st.none() | _TEXT), "at": draw(_INT)})
    for audit_id in _ids(draw, draw(st.integers(0, 3))):
        rows["audit"].append({"id": audit_id, "at": draw(_INT), "actor": draw(_TEXT),
                              "scope": draw(_TEXT), "action": draw(_TEXT),
                              "target": draw(_TEXT), "status": draw(_INT32),
                              "outcome": draw(_TEXT)})
    return rows, blobs


def _write_dump(dest: Path, rows: dict[str, list[dict[str, Any]]],
                blobs: dict[str, bytes]) -> None:
    """A dump of `rows` as an export writes one: rows in primary-key order (text bytewise)."""
    writer = DumpWriter(dest)
    for table in TABLES:
        out = writer.table(table)
        for row in sorted(rows[table.name],
                          key=lambda r, t=table: tuple(r[k] for k in t.order_by)):  # type: ignore[misc]
            out.write(row)
        out.close()
    for sha, data in blobs.items():
        with writer.blob_writer(sha) as blob:
            blob.write(data)
        writer.added_blob(len(data))
    writer.finish(SCHEMA_VERSION, "tests")


_TALLIES = ("SELECT release_id, channel, status, boards FROM deployment_tallies "
            "WHERE boards != 0")
_COUNTED = ("SELECT release_id, channel, status, COUNT(*) FROM deployments "
            "GROUP BY release_id, channel, status")


async def _tallies_and_counts(
        target: StoreLocation) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """The target's deployment tallies (migration 8, not in a dump: its triggers count the
    imported rows) and its deployments counted afresh."""
    if target.db_url is None:
        db = sqlite3.connect(target.db_path)
        try:
            return ({tuple(r) for r in db.execute(_TALLIES)},
                    {tuple(r) for r in db.execute(_COUNTED)})
        finally:
            db.close()
    conn = await asyncpg.connect(target.db_url)
    try:
        return ({tuple(r) for r in await conn.fetch(_TALLIES)},
                {tuple(r) for r in await conn.fetch(_COUNTED)})
    finally:
        await conn.close()


def _round_trip(contents: Any, workdir: Path, target: StoreLocation) -> None:
    rows, blobs = contents
    original, again = workdir / "original", workdir / "again"
    _write_dump(original, rows, blobs)
    asyncio.run(import_dump(original, target))
    tallies, counted = asyncio.run(_tallies_and_counts(target))
    assert tallies == counted
    assert len(counted) == len({(r["release_id"], r["channel"], r["status"])
                                for r in rows["deployments"]})
    asyncio.run(export_store(target, again))
    assert _table_files(again) == _table_files(original)
    # The blobs a release names; a blob no release names is garbage and stays behind.
    assert sorted(_dump_blobs(again)) == sorted({r["blob"] for r in rows["release_blobs"]})


_PROPERTY = {"deadline": None, "derandomize": True,
             "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}


@settings(max_examples=40, **_PROPERTY)  # type: ignore[arg-type]
@given(contents=store_contents())
def test_every_value_survives_a_round_trip_through_sqlite(contents: Any, tmp_path: Path) -> None:
    workdir = Path(tempfile.mkdtemp(dir=tmp_path))
    _round_trip(contents, workdir, StoreLocation(workdir / "data"))


@settings(max_examples=12, **_PROPERTY)  # type: ignore[arg-type]
@given(contents=store_contents())
def test_every_value_survives_a_round_trip_through_postgresql(contents: Any, tmp_path: Path,
                                                              pg_dsn: str) -> None:
    async def migrate_and_empty() -> None:
        from ota_server.storage.postgres import PostgresStore

        store = await PostgresStore.open(pg_dsn)
        try:
            await store.migrate()
        finally:
            await store.close()
        conn = await asyncpg.connect(pg_dsn)
        try:  # each example starts on an empty database, identity sequences at 1
            await conn.execute(f"TRUNCATE {', '.join(t.name for t in TABLES)} RESTART IDENTITY")
        finally:
            await conn.close()

    asyncio.run(migrate_and_empty())
    workdir = Path(tempfile.mkdtemp(dir=tmp_path))
    _round_trip(contents, workdir, StoreLocation(workdir / "data", db_url=pg_dsn))
