"""Shared pieces of the server tests: a fleet's keys, signed releases, simulated boards.

Simulated boards sign their requests exactly as docs/protocol.md says (through
ota_server.device_auth.sign_request, which the protocol test pins against an independent
implementation).

Every server runs on a `Backend` (the `backend` fixture of tests/conftest.py runs each test that
asks for it twice): the embedded SQLite file and blob directory, or a fresh PostgreSQL database
and S3 bucket (tests/cluster_support.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ota_server.device_auth import sign_request
from ota_server.settings import Settings
from ota_server.tokens import create_token
from signing import keys as keymod
from signing.bundle import build_bundle, sign_bundle
from signing.root import new_root, sign_root

DAY = 86400


@dataclass
class FleetKeys:
    """A root key, a release key, and root metadata v1 written to `root_path`."""

    root_key: keymod.PrivateKey
    release_key: keymod.PrivateKey
    root_path: Path

    @classmethod
    def create(cls, directory: Path, *, expires_in: int = 365 * DAY) -> FleetKeys:
        root_key = keymod.generate_private_key()
        release_key = keymod.generate_private_key()
        root = new_root(version=1, expires=int(time.time()) + expires_in,
                        root_keys=[root_key], release_keys=[release_key])
        path = directory / "root.json"
        path.write_bytes(sign_root(root, [root_key]))
        return cls(root_key, release_key, path)

    def rotated_root(self, version: int = 2) -> tuple[bytes, keymod.PrivateKey]:
        """Root metadata `version` with a new root key, signed by the old and the new one."""
        new_key = keymod.generate_private_key()
        root = new_root(version=version, expires=int(time.time()) + 365 * DAY,
                        root_keys=[new_key], release_keys=[self.release_key])
        return sign_root(root, [self.root_key, new_key]), new_key


def make_bundle(directory: Path, files: dict[str, bytes], *, version: str, sequence: int,
                key: keymod.PrivateKey, app: str = "demo", boards: tuple[str, ...] = ("unix",),
                deflate: bool = False) -> Path:
    """Build and sign a bundle of `files` into `directory`/bundle-<sequence>; return its path."""
    app_dir = directory / f"app-{app}-{sequence}"
    for rel, data in files.items():
        target = app_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    out = directory / f"bundle-{app}-{sequence}"
    now = int(time.time())
    build_bundle(app_dir, out, version=version, sequence=sequence, boards=boards,
                 entry="app_main", min_micropython="1.20.0", mpy=False, deflate=deflate,
                 created=now, expires=now + 30 * DAY, app=app)
    sign_bundle(out, key)
    return out


def bundle_blobs(bundle: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (bundle / "blobs").iterdir()}


@dataclass(frozen=True)
class Backend:
    """Where a test server keeps metadata and blobs: `kind` "sqlite" (the data directory's
    SQLite file and blobs/, the embedded default) or "postgres" (`db_url`, a database already
    migrated, and `blobs_url`, an empty S3 bucket whose keys are in os.environ)."""

    kind: str
    db_url: str | None = None
    blobs_url: str | None = None

    @property
    def urls(self) -> dict[str, str | None]:
        """The keyword arguments Settings and tools.local_server.LocalServer take."""
        return {"db_url": self.db_url, "blobs_url": self.blobs_url}

    def settings(self, data_dir: Path, **fields: Any) -> Settings:
        return Settings(data_dir=data_dir, **self.urls, **fields)


SQLITE = Backend("sqlite")


async def new_data_dir(directory: Path, backend: Backend) -> tuple[Settings, str]:
    """Settings for a fresh data dir under `directory` on `backend`, and a publisher token
    created in its metadata store."""
    from ota_server.app import open_metadata_store

    settings = backend.settings(directory / "data")
    store = await open_metadata_store(settings)
    try:
        token = await create_token(store, "tests")
    finally:
        await store.close()
    return settings, token


async def open_metadata(settings: Settings) -> Any:
    """The metadata store `settings` name, opened beside the server's own (PostgreSQL: a
    second pool; SQLite: a second connection to the file, for reads and for writes the
    server is not running through)."""
    from ota_server.app import open_metadata_store

    return await open_metadata_store(settings)


async def stored_blobs(settings: Settings) -> list[str]:
    """Every blob object the blob store holds (file names under blobs/, or S3 object keys),
    sorted; upload temporaries included, so a refused upload that leaves one shows."""
    if settings.blobs_url is None:
        blob_dir = settings.blob_dir
        return sorted(p.name for p in blob_dir.rglob("*") if p.is_file()) \
            if blob_dir.exists() else []
    return await bucket_keys(settings.blobs_url)


def served_blob_dir(settings: Settings) -> Path:
    """The directory the server opens blob files in to send them: blobs/, or the S3 store's
    local cache."""
    return settings.blob_dir if settings.blobs_url is None else settings.blob_cache_dir


async def blob_ids(settings: Settings) -> list[str]:
    """The ids (hex SHA-256) of the complete blobs the blob store holds, sorted."""
    names = (name.rsplit("/", 1)[-1] for name in await stored_blobs(settings)
             if not name.startswith("upload:"))
    return sorted(name for name in names if re.fullmatch(r"[0-9a-f]{64}", name))


@asynccontextmanager
async def bucket_client(blobs_url: str) -> AsyncIterator[tuple[Any, str]]:
    """(an S3 client with the keys in os.environ, the bucket's name) for `blobs_url`."""
    import os

    from botocore.config import Config

    from ota_server.storage.s3 import credentials_from_env, parse_s3_url, shared_session

    where = parse_s3_url(blobs_url)
    access_key, secret_key = credentials_from_env(os.environ)
    async with shared_session().create_client(
            "s3", endpoint_url=where.endpoint, region_name=where.region,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(s3={"addressing_style": "path"})) as client:
        yield client, where.bucket


async def bucket_keys(blobs_url: str) -> list[str]:
    """The keys of every object in the bucket, plus `upload:KEY` for each multipart upload
    started and neither completed nor aborted."""
    keys: list[str] = []
    async with bucket_client(blobs_url) as (client, bucket):
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket):
            keys += [item["Key"] for item in page.get("Contents", [])]
        uploads = await client.list_multipart_uploads(Bucket=bucket)
        keys += [f"upload:{item['Key']}" for item in uploads.get("Uploads", [])]
    return sorted(keys)


async def stored_blob(settings: Settings, sha256: str) -> bytes:
    """The bytes stored for a blob where the backend keeps it: `blobs/<aa>/<sha256>` in the
    directory, object `blobs/<sha256>` in the bucket."""
    if settings.blobs_url is None:
        return (settings.blob_dir / sha256[:2] / sha256).read_bytes()
    async with bucket_client(settings.blobs_url) as (client, bucket):
        answer = await client.get_object(Bucket=bucket, Key=f"blobs/{sha256}")
        async with answer["Body"] as body:
            data: bytes = await body.read()
    return data


def upload_temporaries(settings: Settings) -> list[Path]:
    """The local temporary files of uploads (blobs/tmp/, or the S3 store's cache tmp/)."""
    tmp = served_blob_dir(settings) / "tmp"
    return sorted(tmp.iterdir()) if tmp.exists() else []


@dataclass
class SimBoard:
    """A board on the host: its key, its counter, what it runs."""

    device_id: str
    board: str = "unix"
    channel: str = "stable"
    tags: tuple[str, ...] = ()
    key: keymod.PrivateKey = field(default_factory=keymod.generate_private_key)
    counter: int = 0
    app: str = "demo"
    sequence: int = 0

    @property
    def point(self) -> bytes:
        return keymod.public_point(self.key)

    def registration(self) -> dict[str, Any]:
        import base64

        return {"device_id": self.device_id, "board": self.board, "channel": self.channel,
                "tags": list(self.tags),
                "public_key": base64.b64encode(self.point).decode("ascii")}

    def auth(self, method: str, path_qs: str, body: bytes = b"") -> dict[str, str]:
        """Headers for one request; every call uses a new, larger counter."""
        self.counter += 1
        return {"Authorization": sign_request(self.key, self.device_id, self.counter, method,
                                              path_qs, body)}

    def checkin_body(self, **extra: Any) -> bytes:
        doc = {"app": self.app, "version": "0.0.0", "sequence": self.sequence,
               "root_version": 1, "micropython": "1.25.0", "board": self.board,
               "mem_free": 50000, "slot": "a"}
        doc.update(extra)
        return json.dumps(doc).encode()

    def report_body(self, status: str, sequence: int, reason: str | None = None) -> bytes:
        return json.dumps({"app": self.app, "sequence": sequence, "version": "x",
                           "status": status, "reason": reason}).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def query_rows(settings: Settings, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """The rows of one read-only SQL statement (`?` placeholders) on the settings' metadata
    database, SQLite or PostgreSQL: what the tests check directly in the database, outside
    the store's own methods. The schema's table and column names are the same on both."""
    if settings.db_url is None:
        import sqlite3

        db = sqlite3.connect(settings.db_path)
        try:
            return [tuple(row) for row in db.execute(sql, args).fetchall()]
        finally:
            db.close()
    import asyncpg

    parts = sql.split("?")
    numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
    conn = await asyncpg.connect(settings.db_url)
    try:
        return [tuple(_plain(value) for value in row)
                for row in await conn.fetch(numbered, *args)]
    finally:
        await conn.close()


async def execute_sql(settings: Settings, sqlite_sql: str, postgres_sql: str) -> None:
    """Run a statement (script) on the settings' metadata database: `sqlite_sql` on SQLite,
    `postgres_sql` on PostgreSQL (a test's own set-up, e.g. a trigger that refuses a write)."""
    if settings.db_url is None:
        import sqlite3

        db = sqlite3.connect(settings.db_path)
        try:
            db.executescript(sqlite_sql)
            db.commit()
        finally:
            db.close()
        return
    import asyncpg

    conn = await asyncpg.connect(settings.db_url)
    try:
        await conn.execute(postgres_sql)
    finally:
        await conn.close()


def _plain(value: Any) -> Any:
    """A PostgreSQL value as SQLite gives it (booleans are 0/1 there)."""
    return int(value) if isinstance(value, bool) else value


async def store_fingerprint(settings: Settings) -> dict[str, Any]:
    """Everything a refused request must not change: row counts, counters, states, blobs."""
    out: dict[str, Any] = {}
    for table in ("tokens", "roots", "releases", "release_blobs", "devices", "channels",
                  "rollouts", "deployments"):
        out[table] = (await query_rows(settings, f"SELECT COUNT(*) FROM {table}"))[0][0]
    out["counters"] = await query_rows(settings, "SELECT device_id, counter, revoked "
                                                 "FROM devices ORDER BY device_id")
    out["rollout_states"] = await query_rows(settings, "SELECT id, state, stage FROM rollouts "
                                                       "ORDER BY id")
    out["deployment_states"] = await query_rows(
        settings, "SELECT device_id, release_id, status FROM deployments ORDER BY 1, 2")
    out["inventory"] = await query_rows(settings, "SELECT device_id, version, sequence, "
                                                  "last_status FROM devices ORDER BY 1")
    out["blobs"] = await stored_blobs(settings)
    return out


class ServerEnv:
    """A `create_app` server under pytest-aiohttp with a token, keys and helpers."""

    def __init__(self, client: Any, settings: Settings, token: str, keys: FleetKeys,
                 workdir: Path):
        self.client = client
        self.settings = settings
        self.token = token
        self.keys = keys
        self.workdir = workdir

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def app(self) -> Any:
        return self.client.server.app

    async def upload_bundle(self, bundle: Path) -> dict[str, Any]:
        for sha, data in bundle_blobs(bundle).items():
            resp = await self.client.put(f"/v1/blobs/{sha}", data=data, headers=self.bearer)
            assert resp.status in (200, 201), await resp.text()
        resp = await self.client.post("/v1/releases",
                                      data=(bundle / "manifest.dsse.json").read_bytes(),
                                      headers=self.bearer)
        assert resp.status in (200, 201), await resp.text()
        result: dict[str, Any] = await resp.json()
        return result

    async def publish(self, files: dict[str, bytes], *, version: str, sequence: int,
                      app: str = "demo", boards: tuple[str, ...] = ("unix",)) -> dict[str, Any]:
        bundle = make_bundle(self.workdir, files, version=version, sequence=sequence,
                             key=self.keys.release_key, app=app, boards=boards)
        return await self.upload_bundle(bundle)

    async def add_board(self, board: SimBoard) -> SimBoard:
        resp = await self.client.post("/v1/devices", json=board.registration(),
                                      headers=self.bearer)
        assert resp.status == 201, await resp.text()
        return board

    async def start_rollout(self, channel: str, app: str, sequence: int,
                            **spec: Any) -> dict[str, Any]:
        resp = await self.client.post(f"/v1/channels/{channel}/rollout",
                                      json={"app": app, "sequence": sequence, **spec},
                                      headers=self.bearer)
        assert resp.status == 201, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result

    async def rollout(self, channel: str = "stable") -> dict[str, Any]:
        resp = await self.client.get(f"/v1/channels/{channel}/rollout", headers=self.bearer)
        assert resp.status == 200
        result: dict[str, Any] = (await resp.json())["rollout"]
        return result

    async def checkin(self, sim: SimBoard, **extra: Any) -> Any:
        body = sim.checkin_body(**extra)
        return await self.client.post("/v1/device/checkin", data=body,
                                      headers=sim.auth("POST", "/v1/device/checkin", body))

    async def report(self, board: SimBoard, status: str, sequence: int,
                     reason: str | None = None) -> Any:
        body = board.report_body(status, sequence, reason)
        return await self.client.post("/v1/device/report", data=body,
                                      headers=board.auth("POST", "/v1/device/report", body))

    async def get_blob(self, board: SimBoard, sha: str, **headers: str) -> Any:
        path = f"/v1/blobs/{sha}"
        return await self.client.get(path, headers={**board.auth("GET", path), **headers})

    async def get_pack(self, board: SimBoard, query: str | None, **headers: str) -> Any:
        """`GET /v1/device/pack?<query>` (no `?` for None), the query sent and signed exactly
        as given."""
        from yarl import URL

        path = "/v1/device/pack" if query is None else f"/v1/device/pack?{query}"
        # encoded=True: yarl would otherwise re-encode the query (`%2C` -> `,`) after signing
        return await self.client.get(URL(path, encoded=True),
                                     headers={**board.auth("GET", path), **headers})

    async def put_blobs(self, *blobs: bytes) -> list[str]:
        """Store `blobs` through the publisher API; their ids, in order."""
        ids = []
        for data in blobs:
            sha = sha256_hex(data)
            resp = await self.client.put(f"/v1/blobs/{sha}", data=data, headers=self.bearer)
            assert resp.status in (200, 201), await resp.text()
            ids.append(sha)
        return ids


async def start_env(aiohttp_client: Any, tmp_path: Path, backend: Backend) -> ServerEnv:
    """A fresh fleet on `backend`: keys, a data directory, a publisher token, the app under
    pytest-aiohttp."""
    from dataclasses import replace

    from ota_server.app import create_app

    keys = FleetKeys.create(tmp_path)
    settings, token = await new_data_dir(tmp_path, backend)
    settings = replace(settings, root_path=keys.root_path)
    client = await aiohttp_client(create_app(settings))
    return ServerEnv(client, settings, token, keys, tmp_path)


def get_status(url: str, authorization: str) -> int:
    """The status of a GET of `url` with this Authorization (the body read and dropped)."""
    request = urllib.request.Request(url, headers={"Authorization": authorization})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as err:
        err.read()
        return int(err.code)
