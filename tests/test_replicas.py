"""Several server replicas on one PostgreSQL database and one S3 bucket (issue #14, item 4: no
process-local truth): what one replica changes, the other acts on at once. The property test
also runs on a SQLite file shared by several stores (the worker processes of one `ota serve`).

Each test runs two (or more) `create_app` servers in this process under pytest-aiohttp, each
with its own data directory (its lock, its blob cache), on one database and one bucket
(tests/cluster_support.py), as replicas behind a load balancer are.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cluster_support import open_store
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from server_support import DAY, FleetKeys, ServerEnv, SimBoard, bundle_blobs, make_bundle

from ota_server import state
from ota_server.app import create_app
from ota_server.settings import Settings
from ota_server.tokens import create_token
from ota_server.ui.sessions import COOKIE
from signing import keys as keymod
from signing.root import new_root, sign_root

# How long a replica may take to hear of a root stored through another (a NOTIFY delivered
# on commit, then one read of the roots); far more than it takes.
NOTICE_DEADLINE_S = 10.0


async def _replicas(aiohttp_client: Any, tmp_path: Path, pg_dsn: str, s3_url: str,
                    count: int = 2) -> list[ServerEnv]:
    """`count` servers on one migrated database and one bucket, one admin token for all."""
    store = await open_store("postgres", pg_dsn)  # migrated, as `ota db migrate` does
    try:
        token = await create_token(store, "ops", "admin")
    finally:
        await store.close()
    keys = FleetKeys.create(tmp_path)
    envs = []
    for n in range(count):
        settings = Settings(data_dir=tmp_path / f"replica-{n}", root_path=keys.root_path,
                            db_url=pg_dsn, blobs_url=s3_url)
        client = await aiohttp_client(create_app(settings))
        envs.append(ServerEnv(client, settings, token, keys, tmp_path))
    return envs


async def _checkin_status(env: ServerEnv, board: SimBoard) -> int:
    resp = await env.checkin(board)
    await resp.read()
    return int(resp.status)


def _rotated_with_new_release_key(keys: FleetKeys) -> tuple[bytes, keymod.PrivateKey]:
    """Root metadata 2: a new root key and a new release key (the old release key is no longer
    trusted), signed by the old root key and the new one."""
    root_key, release_key = keymod.generate_private_key(), keymod.generate_private_key()
    root = new_root(version=2, expires=int(time.time()) + 365 * DAY, root_keys=[root_key],
                    release_keys=[release_key])
    return sign_root(root, [keys.root_key, root_key]), release_key


async def _wait_for_root(env: ServerEnv, version: int) -> None:
    """Until the replica's check-in hint names root `version` (bounded)."""
    deadline = time.monotonic() + NOTICE_DEADLINE_S
    while env.app[state.TRUST].latest.version < version:
        assert time.monotonic() < deadline, \
            f"the replica still hints root {env.app[state.TRUST].latest.version}"
        await asyncio.sleep(0.02)


async def test_a_pause_and_a_root_rotation_through_one_replica_hold_on_the_other(
        aiohttp_client: Any, tmp_path: Path, pg_dsn: str, s3_url: str) -> None:
    a, b = await _replicas(aiohttp_client, tmp_path, pg_dsn, s3_url)
    boards = [SimBoard(f"board-{n:03d}") for n in range(100)]
    for board in boards:
        await a.add_board(board)
    await a.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await a.start_rollout("stable", "demo", 1, policy={"stages": [{"percent": 100}],
                                                       "auto_advance": False})
    # Every board is eligible: B offers the release while the rollout is active.
    assert await _checkin_status(b, boards[0]) == 200

    paused = await a.client.post("/v1/channels/stable/rollout/pause", headers=a.bearer)
    assert paused.status == 200, await paused.text()
    statuses = [await _checkin_status(b, board) for board in boards]
    assert statuses == [204] * 100  # none offered the paused release through B

    resumed = await b.client.post("/v1/channels/stable/rollout/resume", headers=b.bearer)
    assert resumed.status == 200, await resumed.text()
    assert await _checkin_status(a, boards[1]) == 200  # offered again, through A

    # Rotate the root through A: B hints it to boards and checks uploads against it.
    envelope, new_release_key = _rotated_with_new_release_key(a.keys)
    rotated = await a.client.post("/v1/roots", data=envelope, headers=a.bearer)
    assert rotated.status == 201, await rotated.text()
    await _wait_for_root(b, 2)  # told by the database, before any upload through B read it
    hinted = await b.checkin(boards[2], root_version=1)
    assert hinted.headers.get("X-Ota-Root") == "2"
    old_signed = make_bundle(tmp_path / "old", {"app_main.py": b"v2\n"}, version="2.0.0",
                             sequence=2, key=a.keys.release_key)
    for sha, data in bundle_blobs(old_signed).items():
        put = await b.client.put(f"/v1/blobs/{sha}", data=data, headers=b.bearer)
        assert put.status in (200, 201)
    refused = await b.client.post("/v1/releases", headers=b.bearer,
                                  data=(old_signed / "manifest.dsse.json").read_bytes())
    assert refused.status == 422, await refused.text()  # the old root's release key only
    new_signed = make_bundle(tmp_path / "new", {"app_main.py": b"v2\n"}, version="2.0.0",
                             sequence=2, key=new_release_key)
    accepted = await b.upload_bundle(new_signed)
    assert accepted["sequence"] == 2


async def test_the_hint_catches_up_with_a_root_stored_while_the_watch_was_cut(
        aiohttp_client: Any, tmp_path: Path, pg_dsn: str, s3_url: str) -> None:
    a, b = await _replicas(aiohttp_client, tmp_path, pg_dsn, s3_url)
    store = await open_store("postgres", pg_dsn)
    try:
        # Every replica's listening connection cut by the database (as a restart or a network
        # cut does); the rotation goes in before the watch has listened again, so its notice
        # reaches nobody.
        cut = await store._pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE query ILIKE 'LISTEN%'")
        assert cut == 2
        envelope, _ = a.keys.rotated_root(2)
        await store.add_root(2, envelope)
    finally:
        await store.close()
    assert b.app[state.TRUST].latest.version == 1
    await _wait_for_root(b, 2)  # read again when the watch listened again
    board = await b.add_board(SimBoard("late"))
    assert (await b.checkin(board, root_version=1)).headers.get("X-Ota-Root") == "2"


async def test_a_release_yanked_through_one_replica_is_not_offered_by_the_other(
        aiohttp_client: Any, tmp_path: Path, pg_dsn: str, s3_url: str) -> None:
    a, b = await _replicas(aiohttp_client, tmp_path, pg_dsn, s3_url)
    board = await a.add_board(SimBoard("plain", channel="beta"))
    await a.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await a.start_rollout("beta", "demo", 1, percent=100)
    await a.publish({"app_main.py": b"v2\n"}, version="2.0.0", sequence=2)
    # 1.0.0 reached every board, so it becomes the channel's base; 2.0.0 is for canaries only.
    await a.start_rollout("beta", "demo", 2, policy={"stages": [{"tag": "canary"}]})
    assert await _checkin_status(b, board) == 200  # B offers the base (and has read it)
    yanked = await a.client.post("/v1/releases/demo/1.0.0/yank", headers=a.bearer)
    assert yanked.status == 200, await yanked.text()
    assert await _checkin_status(b, board) == 204


async def test_a_dashboard_login_through_one_replica_works_on_the_other(
        aiohttp_client: Any, tmp_path: Path, pg_dsn: str, s3_url: str) -> None:
    a, b = await _replicas(aiohttp_client, tmp_path, pg_dsn, s3_url)
    await a.add_board(SimBoard("board-1"))
    await a.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await a.start_rollout("stable", "demo", 1, percent=50)
    cookie = await _dashboard_login(a, a.token)
    fleet = await b.client.get("/ui/rollouts", headers=cookie, allow_redirects=False)
    assert fleet.status == 200  # the session opened through A is known to B
    csrf = re.search(r'name="csrf" value="([^"]+)"', await fleet.text())
    assert csrf is not None
    # An action through B with the CSRF token A's session holds; its message shows on A.
    pause = await b.client.post("/ui/rollouts/stable/pause", data={"csrf": csrf.group(1)},
                                headers=cookie, allow_redirects=False)
    assert pause.status == 303
    assert (await a.rollout())["state"] == "paused"
    shown = await (await a.client.get("/ui/rollouts", headers=cookie,
                                      allow_redirects=False)).text()
    assert "stable: pause done" in shown
    forged = await b.client.post("/ui/rollouts/stable/resume", data={"csrf": "forged"},
                                 headers=cookie, allow_redirects=False)
    assert forged.status == 403
    # Logging out through B ends the session on A.
    out = await b.client.post("/ui/logout", data={"csrf": csrf.group(1)}, headers=cookie,
                              allow_redirects=False)
    assert out.status == 303
    after = await a.client.get("/ui/fleet", headers=cookie, allow_redirects=False)
    assert after.status == 303 and after.headers["Location"].startswith("/ui/login")
    # Revoking a token through A ends its session opened through B.
    viewer = await _dashboard_login(b, await _new_token(a, "viewer"))
    assert (await a.client.get("/ui/fleet", headers=viewer, allow_redirects=False)).status == 200
    revoked = await a.client.post("/v1/tokens/viewer/revoke", headers=a.bearer)
    assert revoked.status == 200
    ended = await b.client.get("/ui/fleet", headers=viewer, allow_redirects=False)
    assert ended.status == 303


async def _dashboard_login(env: ServerEnv, token: str) -> dict[str, str]:
    """Log in to the dashboard through `env`'s replica; the session cookie as a header."""
    page = await env.client.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', await page.text())
    assert nonce is not None
    login = await env.client.post("/ui/login", data={"nonce": nonce.group(1), "token": token},
                                  allow_redirects=False)
    assert login.status == 303
    # From here on the cookie goes only where a test sends it (a client's jar would add its own).
    env.client.session.cookie_jar.clear()
    return {"Cookie": f"{COOKIE}={login.cookies[COOKIE].value}"}


async def _new_token(env: ServerEnv, name: str) -> str:
    made = await env.client.post("/v1/tokens", json={"name": name, "scope": "read"},
                                 headers=env.bearer)
    assert made.status == 201, await made.text()
    token: str = (await made.json())["token"]
    return token


async def test_replicas_started_at_once_all_start_and_store_each_root_once(
        tmp_path: Path, pg_dsn: str, s3_url: str) -> None:
    store = await open_store("postgres", pg_dsn)  # migrated, no root stored yet
    keys = FleetKeys.create(tmp_path)

    async def start_all(tag: str) -> list[web.AppRunner]:
        runners = [web.AppRunner(create_app(Settings(
            data_dir=tmp_path / f"{tag}-{n}", root_path=keys.root_path, db_url=pg_dsn,
            blobs_url=s3_url))) for n in range(4)]
        results = await asyncio.gather(*(r.setup() for r in runners), return_exceptions=True)
        assert [r for r in results if r is not None] == []
        return runners

    try:
        first = await start_all("empty")  # all four seed root 1 at once
        assert [v for v, _ in await store.roots()] == [1]
        assert {r.app[state.TRUST].latest.version for r in first} == {1}
        # `ota keys rotate` rewrote root.json: all four restart with root 2 at once.
        envelope, _ = keys.rotated_root(2)
        keys.root_path.write_bytes(envelope)
        second = await start_all("rotated")
        assert [v for v, _ in await store.roots()] == [1, 2]
        assert {r.app[state.TRUST].latest.version for r in second} == {2}
        await _wait_for_root_of(first, 2)  # and the four started before hint it too
        for runner in first + second:
            await runner.cleanup()
    finally:
        await store.close()


async def _wait_for_root_of(runners: list[web.AppRunner], version: int) -> None:
    deadline = time.monotonic() + NOTICE_DEADLINE_S
    while any(r.app[state.TRUST].latest.version < version for r in runners):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_the_newest_root_never_moves_back(tmp_path: Path) -> None:
    """A read of the chain that finishes after a newer one (a notice's refresh overtaken by a
    rotation) leaves the higher version."""
    from ota_server.trust import TrustAnchor

    store = await open_store("sqlite", str(tmp_path / "meta.db"))
    try:
        keys = FleetKeys.create(tmp_path)
        anchor = await TrustAnchor.load(store, keys.root_path)
        v1 = anchor.latest
        v2 = await anchor.rotate(keys.rotated_root(2)[0])
        assert anchor._newer(v1) is v2
        assert anchor.latest.version == 2
    finally:
        await store.close()


async def test_a_report_through_one_replica_finds_the_offer_made_through_the_other(
        aiohttp_client: Any, tmp_path: Path, pg_dsn: str, s3_url: str) -> None:
    """A check-in's records are written behind (ota_server/counters.py), but an offer is in the
    database before the board hears of it: its next request may reach another replica."""
    a, b = await _replicas(aiohttp_client, tmp_path, pg_dsn, s3_url)
    boards = [await a.add_board(SimBoard(f"board-{n}")) for n in range(3)]
    await a.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await a.start_rollout("stable", "demo", 1, percent=100)
    for board in boards:
        assert await _checkin_status(a, board) == 200
        reported = await b.report(board, "downloading", 1)
        assert reported.status == 204, await reported.text()
    counts = (await b.rollout())["counts"]
    assert counts["downloading"] == 3


# -- property: whatever moves through one replica, every replica offers what the database says --

class Database:
    """One database the property test's stores share: a PostgreSQL URL (which a failing
    example's report does not print: it holds the password), or a SQLite file that several
    worker processes of one `ota serve` share (each store its own connection, as a process)."""

    def __init__(self, kind: str, location: str):
        self.kind = kind
        self.location = location

    def __repr__(self) -> str:
        return f"Database({self.kind!r})"


@pytest.fixture(params=["postgres", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "postgres":
        return Database("postgres", request.getfixturevalue("pg_dsn"))
    return Database("sqlite", str(tmp_path / "mpota.sqlite3"))


_OPS = st.one_of(
    st.tuples(st.just("start"), st.integers(0, 2), st.sampled_from(["all", "canary"])),
    st.tuples(st.sampled_from(["pause", "resume", "abort", "advance", "look"])),
    st.tuples(st.just("yank"), st.integers(0, 2)),
)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.integers(0, 1), _OPS), min_size=1, max_size=8))
@example(steps=[(0, ("start", 0, "all")), (1, ("look",)), (0, ("start", 1, "canary")),
                (0, ("yank", 0))])  # the base yanked behind B's back
@example(steps=[(1, ("start", 0, "all")), (1, ("look",)), (0, ("pause",))])  # paused through A
def test_every_replica_offers_what_a_store_without_a_cache_offers(
        database: Database, steps: list[tuple[int, tuple[Any, ...]]]) -> None:
    from ota_server.errors import ApiError
    from ota_server.rollout import release_for, start
    from ota_server.routes_publisher import act_on_rollout, yank

    async def run() -> None:
        tag = secrets.token_hex(4)
        app, channel = f"app-{tag}", f"ch-{tag}"
        replicas = [await open_store(database.kind, database.location) for _ in range(2)]
        uncached = await open_store(database.kind, database.location)

        async def truth(device: Any) -> Any:
            """What a store that has kept nothing offers: on SQLite a store opened now (a
            process just started), on PostgreSQL one whose kept releases are forgotten (it
            reads channels afresh without an epoch)."""
            if database.kind == "sqlite":
                fresh = await open_store(database.kind, database.location)
                try:
                    return await release_for(fresh, device, app, 0, "esp32")
                finally:
                    await fresh.close()
            uncached._releases.clear()
            return await release_for(uncached, device, app, 0, "esp32")

        try:
            releases = [await replicas[0].add_release(
                app, f"1.0.{n}", n + 1, ["esp32"], b"envelope", [], 2_000_000_000)
                for n in range(3)]
            for device_id, tags, bucket in ((f"in-{tag}", ["canary"], 5),
                                            (f"out-{tag}", [], 9_999)):
                await replicas[0].add_device(device_id, KEY_POINT, "esp32", tags, channel,
                                             bucket)
            counters = {f"in-{tag}": 0, f"out-{tag}": 0}
            for via, op in steps:
                store = replicas[via]
                try:
                    if op[0] == "start":
                        policy = {"stages": [{"percent": 100}] if op[2] == "all"
                                  else [{"tag": "canary"}], "auto_advance": False,
                                  "failure_threshold": 0.5, "min_results": None}
                        await start(store, channel, releases[op[1]], policy)
                    elif op[0] == "yank":
                        await yank(store, app, releases[op[1]].version, force=True)
                    elif op[0] != "look":
                        await act_on_rollout(store, channel, op[0])
                except ApiError:
                    pass  # refused by the rules: nothing moved
                for device_id in (f"in-{tag}", f"out-{tag}"):
                    device = await uncached.device(device_id)
                    assert device is not None
                    expected = await truth(device)
                    for replica in replicas:
                        # As a board request does: its counter statement's fleet epoch lets
                        # the replica answer from the channel it keeps, when that is as new.
                        counters[device_id] += 1
                        advanced = await replica.advance_counters(
                            [(device_id, counters[device_id])])
                        assert advanced == [True]
                        offered = await release_for(replica, device, app, 0, "esp32",
                                                    epoch=advanced.epoch)
                        assert offered == expected, (steps, device_id)
                        assert await release_for(replica, device, app, 0, "esp32") == expected
        finally:
            for store in [*replicas, uncached]:
                await store.close()

    asyncio.run(run())


KEY_POINT = b"\x04" + bytes(64)
