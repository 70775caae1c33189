"""The server on the scale-out backends (issue #14, item 1): PostgreSQL for metadata and an S3
bucket for blobs, chosen by settings, behind the same async storage boundary as the embedded
SQLite file and directory; `ota db migrate`; a store that is down answers 503."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from server_support import SQLITE, FleetKeys, ServerEnv, SimBoard, new_data_dir, sha256_hex

from ota_server import state
from ota_server.app import create_app
from ota_server.device_auth import sign_request
from ota_server.settings import Settings, SettingsError, load_settings
from ota_server.storage.errors import StoreError
from ota_server.storage.postgres import PostgresStore
from ota_server.storage.s3 import S3BlobStore
from ota_server.storage.sqlite import SqliteStore
from tools.cli import cli
from tools.cluster.postgres import PostgresServer


def pg_password(env: ServerEnv) -> str:
    from urllib.parse import urlsplit

    password = urlsplit(env.settings.db_url or "").password
    assert password
    return password


def _migrate(*args: str) -> Any:
    return CliRunner().invoke(cli, ["db", "migrate", *args], catch_exceptions=False)


@pytest.fixture
async def scaled(aiohttp_client: Any, tmp_path: Path, pg_dsn: str, s3_url: str) -> ServerEnv:
    """The server under pytest-aiohttp on PostgreSQL (migrated by `ota db migrate`, which
    also creates the bucket) and S3, with a publisher token made in PostgreSQL."""
    # The CLI runs its own event loop: off this one, as from a shell.
    result = await asyncio.to_thread(_migrate, "--db", pg_dsn, "--blobs", s3_url)
    assert result.exit_code == 0, result.output
    keys = FleetKeys.create(tmp_path)
    # The data directory holds the replica's lock and blob cache only.
    settings = Settings(data_dir=tmp_path / "replica", root_path=keys.root_path, db_url=pg_dsn,
                        blobs_url=s3_url)
    made = await asyncio.to_thread(
        CliRunner().invoke, cli, ["tokens", "create", "ops", "--scope", "admin",
                                  "--data", str(settings.data_dir), "--db", pg_dsn])
    assert made.exit_code == 0, made.output
    client = await aiohttp_client(create_app(settings))
    return ServerEnv(client, settings, made.output.strip(), keys, tmp_path)


async def test_the_whole_story_runs_on_postgresql_and_s3(scaled: ServerEnv) -> None:
    env = scaled
    assert isinstance(env.app[state.STORE], PostgresStore)
    assert isinstance(env.app[state.BLOBS], S3BlobStore)
    assert (await env.client.get("/healthz")).status == 200
    board = await env.add_board(SimBoard("pg-board"))
    files = {"app_main.py": b"print('on postgres')\n", "lib/util.py": os.urandom(3000)}
    await env.publish(files, version="1.0.0", sequence=1)
    # Nothing of it is in the data directory: metadata in PostgreSQL, blobs in the bucket.
    assert not env.settings.db_path.exists()
    assert not env.settings.blob_dir.exists()
    assert "PASSWORD" not in repr(env.settings) and pg_password(env) not in repr(env.settings)
    await env.start_rollout("stable", "demo", 1, percent=100)
    offer = await env.checkin(board)
    assert offer.status == 200
    ids = [sha256_hex(data) for data in files.values()]
    for sha, data in zip(ids, files.values(), strict=True):
        got = await env.get_blob(board, sha)
        assert got.status == 200 and await got.read() == data
        part = await env.get_blob(board, sha, Range="bytes=1-4")
        assert part.status == 206 and await part.read() == data[1:5]
    pack = await env.get_pack(board, "blobs=" + ",".join(ids))
    assert pack.status == 200 and await pack.read() == b"".join(files.values())
    for status in ("downloading", "installed", "confirmed"):
        assert (await env.report(board, status, 1)).status == 204
    assert (await env.rollout())["counts"]["confirmed"] == 1
    shown = await env.client.get("/v1/devices/pg-board", headers=env.bearer)
    assert (await shown.json())["version"] == "1.0.0"
    # The same rules as on SQLite: a replayed counter is refused.
    body = board.checkin_body()
    replayed = await env.client.post("/v1/device/checkin", data=body, headers={
        "Authorization": sign_request(board.key, board.device_id, 1, "POST",
                                      "/v1/device/checkin", body)})
    assert replayed.status == 401 and (await replayed.json())["code"] == "replay"
    audit = await env.client.get("/v1/audit", headers=env.bearer)
    assert [e["action"] for e in (await audit.json())["entries"]][-1] == \
        "POST /v1/channels/{channel}/rollout"


async def test_a_database_that_goes_down_answers_503_and_the_server_recovers_alone(
        scaled: ServerEnv, postgres_server: PostgresServer) -> None:
    env = scaled
    board = await env.add_board(SimBoard("pg-board"))
    assert (await env.checkin(board)).status == 204
    postgres_server.stop()
    try:
        down = await env.checkin(board)
        assert down.status == 503
        assert down.headers["Retry-After"] == "5"
        assert (await down.json())["code"] == "unavailable"
        listed = await env.client.get("/v1/releases", headers=env.bearer)
        assert listed.status == 503
    finally:
        postgres_server.start()
    # No restart of the server: the pool replaces its connections and the next call works.
    assert (await env.checkin(board)).status == 204
    metrics = await (await env.client.get("/metrics")).text()
    assert "mpota_store_unavailable_total 2" in metrics


async def test_the_server_refuses_an_unmigrated_database_and_names_the_fix(
        tmp_path: Path, pg_dsn: str) -> None:
    keys = FleetKeys.create(tmp_path)
    settings, _ = await new_data_dir(tmp_path, SQLITE)
    settings = replace(settings, root_path=keys.root_path, db_url=pg_dsn)
    runner = web.AppRunner(create_app(settings))
    with pytest.raises(StoreError, match="ota db migrate"):
        await runner.setup()
    await runner.cleanup()


def test_db_migrate_is_idempotent_and_reports_the_version(pg_dsn: str, tmp_path: Path) -> None:
    first = _migrate("--db", pg_dsn)
    again = _migrate("--db", pg_dsn)
    assert first.exit_code == again.exit_code == 0
    assert first.output == again.output
    assert "schema at version" in first.output
    local = _migrate("--data", str(tmp_path / "data"))
    assert local.exit_code == 0 and "mpota.sqlite3: schema at version" in local.output
    assert first.output.split()[-1] == local.output.split()[-1]  # the same schema version


@pytest.mark.parametrize(("args", "message"), [
    (["--db", "mysql://u:s3cret-pw@h/db"], "must start with postgresql://"),
    (["--db", "postgresql://u:s3cret-pw@/db"], "names no host"),
    (["--db", "postgresql://u:s3cret-pw@h:notaport/db"], "does not parse"),
    ([], "give --db"),
])
def test_db_migrate_refuses_a_bad_url_without_showing_the_password(
        args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["db", "migrate", *args], env={"MPOTA_DB": "",
                                                                    "MPOTA_DATA": ""})
    assert result.exit_code != 0
    assert message in result.output
    assert "s3cret-pw" not in result.output


@pytest.mark.parametrize(("env", "message"), [
    ({"MPOTA_DB": "postgresql:///db", "MPOTA_BLOBS": ""}, "names no host"),
    ({"MPOTA_DB": "postgresql://u:pw-x1@h/", "MPOTA_BLOBS": ""}, "names no database"),
    ({"MPOTA_BLOBS": "s3://bkt?endpoint=http://h:1", "AWS_ACCESS_KEY_ID": "k"},
     "AWS_SECRET_ACCESS_KEY"),
    ({"MPOTA_BLOBS": "s3://B?endpoint=http://h:1"}, "is not a bucket name"),
])
def test_storage_settings_are_checked_at_start(env: dict[str, str], message: str,
                                               tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        load_settings({"data_dir": tmp_path}, environ=env)
    assert "pw-x1" not in str(caught.value)


@pytest.mark.sqlite_only(reason="checks that the default settings pick SQLite and the "
                                "directory")
async def test_the_embedded_default_is_still_sqlite_and_the_directory(env: ServerEnv) -> None:
    assert env.settings.db_url is None and env.settings.blobs_url is None
    assert isinstance(env.app[state.STORE], SqliteStore)
    assert env.settings.db_path.exists()
