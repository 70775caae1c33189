"""One version names one release; the server assigns sequences so concurrent publishes never
collide (docs/protocol.md, "Releases: versions and sequences"). Against create_app, the CLI
against a real `ota serve`, and the schema migration on a version-1 data directory."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from server_support import Backend, FleetKeys, ServerEnv, make_bundle, query_rows

from ota_server.storage.errors import StoreConflict
from ota_server.storage.sqlite import SqliteStore, _migrations
from signing.keys import save_private_key
from tools.cli import main
from tools.local_server import LocalServer


async def _register(env: ServerEnv, bundle: Path) -> tuple[int, dict[str, object]]:
    from server_support import bundle_blobs

    for sha, data in bundle_blobs(bundle).items():
        await env.client.put(f"/v1/blobs/{sha}", data=data, headers=env.bearer)
    resp = await env.client.post("/v1/releases", data=(bundle / "manifest.dsse.json").read_bytes(),
                                 headers=env.bearer)
    return resp.status, await resp.json()


async def _reserve(env: ServerEnv, version: str, app: str = "demo") -> dict[str, object]:
    resp = await env.client.post("/v1/releases/sequence", json={"app": app, "version": version},
                                 headers=env.bearer)
    assert resp.status == 200, await resp.text()
    doc: dict[str, object] = await resp.json()
    return doc


async def test_a_version_published_again_with_other_content_is_refused(env: ServerEnv) -> None:
    await env.publish({"app_main.py": b"first\n"}, version="7.0.0", sequence=100)
    other = make_bundle(env.workdir, {"app_main.py": b"second\n"}, version="7.0.0",
                        sequence=101, key=env.keys.release_key)
    status, doc = await _register(env, other)
    assert (status, doc["code"]) == (409, "version_exists")
    assert "sequence 100" in str(doc["message"])
    listed = await (await env.client.get("/v1/releases", headers=env.bearer)).json()
    assert [(r["version"], r["sequence"]) for r in listed["releases"]] == [("7.0.0", 100)]


async def test_a_version_published_again_with_the_same_content_is_idempotent(
        env: ServerEnv) -> None:
    first = await env.publish({"app_main.py": b"same\n"}, version="7.0.0", sequence=100)
    # signed again a second later: another sequence, time and signature, the same content
    again = make_bundle(env.workdir, {"app_main.py": b"same\n"}, version="7.0.0",
                        sequence=101, key=env.keys.release_key)
    status, doc = await _register(env, again)
    assert status == 200
    assert (doc["id"], doc["sequence"]) == (first["id"], 100)
    listed = await (await env.client.get("/v1/releases", headers=env.bearer)).json()
    assert len(listed["releases"]) == 1


async def test_the_server_reserves_one_sequence_per_version_and_never_two_alike(
        env: ServerEnv) -> None:
    ahead = int(time.time()) + 3600  # a release signed with a sequence above the clock
    await env.publish({"app_main.py": b"old\n"}, version="1.0.0", sequence=ahead)
    answers = await asyncio.gather(*(_reserve(env, f"2.0.{i}") for i in range(8)))
    sequences = [int(str(a["sequence"])) for a in answers]
    assert sorted(sequences) == list(range(ahead + 1, ahead + 9))
    # asking again for a version gives the same sequence; a registered one gives its own
    assert (await _reserve(env, "2.0.3"))["sequence"] == sequences[3]
    assert await _reserve(env, "1.0.0") == {"app": "demo", "version": "1.0.0",
                                            "sequence": ahead, "registered": True}
    # a new app starts at the clock: above a first app installed at the factory
    before = int(time.time())
    first = int(str((await _reserve(env, "1.0.0", app="other"))["sequence"]))
    assert before <= first <= int(time.time())
    # registered in any order, every reserved sequence registers: no collision
    for i in reversed(range(8)):
        bundle = make_bundle(env.workdir, {"app_main.py": b"v%d\n" % i}, version=f"2.0.{i}",
                             sequence=sequences[i], key=env.keys.release_key)
        status, doc = await _register(env, bundle)
        assert status == 201, doc
    # a sequence held for another version, or below the latest without a reservation: 409
    held = (await _reserve(env, "3.0.0"))["sequence"]
    for version, sequence, code in (("3.0.1", held, "sequence_reserved"),
                                    ("3.0.2", sequences[4], "sequence_not_greater"),
                                    ("3.0.3", ahead - 1, "sequence_not_greater")):
        bundle = make_bundle(env.workdir, {"app_main.py": version.encode()}, version=version,
                             sequence=int(str(sequence)), key=env.keys.release_key)
        status, doc = await _register(env, bundle)
        assert (status, doc["code"]) == (409, code), (version, doc)


@pytest.mark.parametrize(("body", "code"), [
    ({"app": "demo"}, "bad_field"),
    ({"app": "demo", "version": "seven"}, "bad_field"),
    ({"app": "../x", "version": "1.0.0"}, "bad_name"),
    ({"version": "1.0.0"}, "bad_field"),
])
async def test_a_bad_sequence_request_is_refused_and_reserves_nothing(
        env: ServerEnv, body: dict[str, str], code: str) -> None:
    resp = await env.client.post("/v1/releases/sequence", json=body, headers=env.bearer)
    assert resp.status == 400
    assert (await resp.json())["code"] == code
    rows = await query_rows(env.settings, "SELECT COUNT(*) FROM sequence_reservations")
    assert rows == [(0,)]


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_publishes_of_two_versions_in_one_second_both_succeed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], backend: Backend) -> None:
    keys = FleetKeys.create(tmp_path)
    key_file = tmp_path / "release.key"
    save_private_key(key_file, keys.release_key, None)
    apps = {}
    for label in ("a", "b", "c"):
        app = tmp_path / label / "demo"
        app.mkdir(parents=True)
        (app / "app_main.py").write_text(f"print({label!r})\n")
        apps[label] = app
    frozen = int(time.time())
    monkeypatch.setattr("tools.cmd_publisher.time.time", lambda: frozen)  # one second
    with LocalServer(tmp_path / "data", keys.root_path, **backend.urls) as srv:
        monkeypatch.setenv("MPOTA_TOKEN", srv.token)
        monkeypatch.setenv("MPOTA_SERVER", srv.url)
        common = ["--board", "unix", "--key", str(key_file)]
        code, out, err = _cli(["publish", str(apps["a"]), "--version", "7.0.0", *common], capsys)
        assert code == 0, err
        first = _published(out, "7.0.0")
        code, out, err = _cli(["publish", str(apps["b"]), "--version", "7.0.1", *common], capsys)
        assert code == 0, err
        assert _published(out, "7.0.1") > first
        # the same version again: same content is a no-op, other content is refused
        code, out, err = _cli(["publish", str(apps["a"]), "--version", "7.0.0", *common], capsys)
        assert code == 0, err
        assert f"already registered as sequence {first}" in out
        code, out, err = _cli(["publish", str(apps["c"]), "--version", "7.0.0", *common], capsys)
        assert code == 1
        assert "version_exists" in err and f"sequence {first}" in err
        # an explicit --sequence is still honoured
        top = frozen + 100
        code, out, err = _cli(["publish", str(apps["c"]), "--version", "8.0.0", "--sequence",
                               str(top), *common], capsys)
        assert code == 0, err
        assert f"published demo 8.0.0 sequence {top}" in out
        # publishers racing for the next sequences get different ones
        client = srv.client()
        with ThreadPoolExecutor(max_workers=4) as pool:
            raced = list(pool.map(lambda i: client.reserve_sequence("demo", f"9.0.{i}"),
                                  range(8)))
        assert sorted(raced) == list(range(top + 1, top + 9))


def _published(out: str, version: str) -> int:
    """The sequence `ota publish` printed for `version`."""
    match = re.search(rf"published demo {re.escape(version)} sequence (\d+)", out)
    assert match is not None, out
    return int(match.group(1))


@pytest.mark.sqlite_only(reason="migrates a SQLite file written by schema version 1")
async def test_migration_keeps_a_version_1_data_directory_and_its_duplicate_versions(
        tmp_path: Path) -> None:
    """A data directory written by schema version 1 (with two releases of one version, which
    version 1 allowed) opens, migrates, and keeps every row."""
    keys = FleetKeys.create(tmp_path)
    bundles = [make_bundle(tmp_path, {"app_main.py": content}, version="7.0.0", sequence=seq,
                           key=keys.release_key)
               for seq, content in ((1, b"one\n"), (2, b"two\n"))]
    path = tmp_path / "mpota.sqlite3"
    db = sqlite3.connect(path)
    version_1 = dict(_migrations())[1]
    db.executescript(f"BEGIN;\n{version_1}\n;PRAGMA user_version=1;\nCOMMIT;")
    for seq, bundle in enumerate(bundles, start=1):
        db.execute("INSERT INTO releases (app, version, sequence, boards, envelope, created) "
                   "VALUES ('demo', '7.0.0', ?, '[\"unix\"]', ?, 0)",
                   (seq, (bundle / "manifest.dsse.json").read_bytes()))
    db.execute("INSERT INTO devices (device_id, public_key, board, channel, bucket, created) "
               "VALUES ('b-1', x'04', 'unix', 'beta', 7, 0)")
    db.execute("INSERT INTO deployments (device_id, release_id, status, updated) "
               "VALUES ('b-1', 2, 'confirmed', 0)")
    db.commit()
    db.close()
    store = SqliteStore(path)
    try:
        assert await store.schema_version() == max(v for v, _ in _migrations())
        releases = await store.list_releases("demo")
        assert [(r.sequence, r.version) for r in releases] == [(1, "7.0.0"), (2, "7.0.0")]
        assert [r.expires for r in releases] == \
            [json.loads(_payload(bundle))["expires"] for bundle in bundles]
        named = await store.release_by_version("demo", "7.0.0")
        assert named is not None and named.sequence == 1  # the first registered keeps the name
        assert (await store.deployment_counts(2, "beta")).confirmed == 1
        assert await store.reserve_sequence("demo", "7.0.0") == (1, True)
        assert await store.reserve_sequence("demo", "7.1.0") == (3, False)
        assert await store.reserve_sequence("demo", "7.2.0", floor=1000) == (1000, False)
        with pytest.raises(StoreConflict):  # and no new duplicate gets in
            await store.add_release("demo", "7.0.0", 9, ["unix"], b"{}", [], 2**40)
    finally:
        await store.close()


def _payload(bundle: Path) -> bytes:
    import base64

    return base64.b64decode(json.loads((bundle / "manifest.dsse.json").read_bytes())["payload"])
