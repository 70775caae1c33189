"""Download grants (docs/protocol.md, "Download grants"; ota_server/grants.py): an offer
carries one, it downloads exactly what a signed request downloads and nothing else, it spends
no counter, any change to it is refused, and its key file is created and checked safely.

The servers run on both backends (the `backend` fixture); on PostgreSQL a grant key is named,
as replicas must (without one a server there gives and takes no grants, tested below).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from server_support import (
    Backend,
    FleetKeys,
    ServerEnv,
    SimBoard,
    blob_ids,
    get_status,
    make_bundle,
    new_data_dir,
    query_rows,
    store_fingerprint,
)
from yarl import URL

from ota_server import state
from ota_server.app import create_app
from ota_server.errors import Unauthorized
from ota_server.grants import MAX_LIFETIME_S, GrantKey, GrantKeyError
from ota_server.settings import (
    DEFAULT_GRANT_LIFETIME_S,
    Settings,
    SettingsError,
    load_settings,
)
from ota_server.tokens import create_token
from tools.local_server import LocalServer, free_port

# The one form of a grant (docs/protocol.md), written here independently of ota_server.grants.
GRANT_FORM = re.compile(r"Mpota-Grant id=([A-Za-z0-9][A-Za-z0-9._:-]{0,63}),"
                        r"exp=([1-9][0-9]{0,11}),mac=([A-Za-z0-9_-]{43})")
BLOB_A = os.urandom(3000)
BLOB_B = b"b" * 700


def _mac(secret: bytes, device_id: str, expires: int) -> str:
    """The protocol's MAC, computed from docs/protocol.md rather than by ota_server."""
    digest = hmac.new(secret, f"mpota-grant-v1\n{device_id}\n{expires}".encode(),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _grant_settings(settings: Settings, backend: Backend, directory: Path) -> Settings:
    """The embedded store's default (DIR/grant.key), or a named key on PostgreSQL."""
    return settings if backend.kind == "sqlite" else replace(
        settings, grant_key=directory / "grant.key")


@dataclass
class Offered:
    env: ServerEnv
    board: SimBoard
    grant: str
    blobs: list[str]  # the ids of BLOB_A and BLOB_B, in that order


async def _start(aiohttp_client: Any, directory: Path, backend: Backend) -> ServerEnv:
    keys = FleetKeys.create(directory)
    settings, token = await new_data_dir(directory, backend)
    settings = replace(_grant_settings(settings, backend, directory), root_path=keys.root_path)
    client = await aiohttp_client(create_app(settings))
    return ServerEnv(client, settings, token, keys, directory)


async def _offer(env: ServerEnv, board: SimBoard) -> Offered:
    """Publish a release of two files, start a rollout to every board, check `board` in."""
    await env.add_board(board)
    await env.publish({"app_main.py": BLOB_A, "lib/b.py": BLOB_B}, version="1.0.0",
                      sequence=1)
    await env.start_rollout("stable", "demo", 1, percent=100)
    resp = await env.checkin(board)
    assert resp.status == 200, await resp.text()
    blobs = [hashlib.sha256(data).hexdigest() for data in (BLOB_A, BLOB_B)]
    assert set(blobs) <= set(await blob_ids(env.settings))
    return Offered(env, board, resp.headers["X-Ota-Grant"], blobs)


@pytest.fixture
async def offered(aiohttp_client: Any, tmp_path: Path, backend: Backend) -> Offered:
    env = await _start(aiohttp_client, tmp_path, backend)
    return await _offer(env, SimBoard("grant-1"))


def _by_grant(grant: str, **headers: str) -> dict[str, str]:
    return {"Authorization": grant, **headers}


async def _answer(resp: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    return resp.status, list(resp.headers.items()), await resp.read()


# -- issued with an offer --------------------------------------------------------------------

async def test_an_offer_carries_a_grant_and_nothing_new_carries_none(
        aiohttp_client: Any, tmp_path: Path, backend: Backend) -> None:
    env = await _start(aiohttp_client, tmp_path, backend)
    board = await env.add_board(SimBoard("grant-0"))
    nothing = await env.checkin(board)
    assert nothing.status == 204
    assert "X-Ota-Grant" not in nothing.headers
    before = time.time()
    got = await _offer(env, SimBoard("grant-1"))
    match = GRANT_FORM.fullmatch(got.grant)
    assert match is not None, got.grant
    device_id, exp, mac = match.groups()
    assert device_id == "grant-1"
    assert int(before) + DEFAULT_GRANT_LIFETIME_S <= int(exp) <= time.time() + \
        DEFAULT_GRANT_LIFETIME_S
    key_file = env.settings.grant_key_path
    assert key_file is not None and key_file.stat().st_mode & 0o777 == 0o600
    secret = bytes.fromhex(key_file.read_text())
    assert mac == _mac(secret, device_id, int(exp))
    # a 204 after the board has the release gives none either
    await env.report(got.board, "confirmed", 1)
    again = await env.checkin(got.board, sequence=1, version="1.0.0")
    assert again.status == 204
    assert "X-Ota-Grant" not in again.headers


async def test_a_grant_downloads_exactly_what_a_signed_request_downloads(
        offered: Offered) -> None:
    env, board, grant, (a, b) = offered.env, offered.board, offered.grant, offered.blobs
    client = env.client
    for extra in ({}, {"Range": "bytes=100-199"}, {"Range": "bytes=-16"},
                  {"Range": "bytes=5-", "If-Range": f'"{a}"'}):
        path = f"/v1/blobs/{a}"
        for method in ("GET", "HEAD"):
            signed = await _answer(await client.request(
                method, path, headers={**board.auth(method, path), **extra}))
            granted = await _answer(await client.request(method, path,
                                                         headers=_by_grant(grant, **extra)))
            assert signed[0] in (200, 206), signed
            assert granted == signed, (method, extra)
    for extra in ({}, {"Range": "bytes=2990-3009"}):
        query = f"blobs={b},{a}"
        signed = await _answer(await env.get_pack(board, query, **extra))
        granted = await _answer(await client.get(URL(f"/v1/device/pack?{query}", encoded=True),
                                                 headers=_by_grant(grant, **extra)))
        assert signed[0] in (200, 206), signed
        assert granted == signed, extra
    whole = await client.get(URL(f"/v1/device/pack?blobs={b},{a}", encoded=True),
                             headers=_by_grant(grant))
    assert await whole.read() == BLOB_B + BLOB_A


async def test_a_grant_spends_no_counter_writes_nothing_and_is_counted(
        offered: Offered) -> None:
    env, board, grant, (a, b) = offered.env, offered.board, offered.grant, offered.blobs
    await env.app[state.BOARD_WRITES].flush()  # the check-in's records, written behind
    before = await store_fingerprint(env.settings)
    counter = await query_rows(env.settings, "SELECT counter FROM devices WHERE device_id = ?",
                               board.device_id)
    assert counter == [(board.counter,)]
    for _ in range(3):
        assert (await env.client.get(f"/v1/blobs/{a}", headers=_by_grant(grant))).status == 200
        assert (await env.client.head(f"/v1/blobs/{b}", headers=_by_grant(grant))).status == 200
    pack = await env.client.get(URL(f"/v1/device/pack?blobs={a},{b}", encoded=True),
                                headers=_by_grant(grant))
    assert pack.status == 200
    await env.app[state.BOARD_WRITES].flush()
    assert await store_fingerprint(env.settings) == before
    # the board's next signed request (counter + 1, nothing skipped) still passes
    signed = await env.get_blob(board, a)
    assert signed.status == 200
    # refused grants are not counted as grant requests, but as auth failures
    refused = await env.client.get(f"/v1/blobs/{a}", headers=_by_grant(grant[:-1] + "A"
                                   if not grant.endswith("A") else grant[:-1] + "B"))
    assert refused.status == 401
    metrics = await (await env.client.get("/metrics")).text()
    assert re.search(r"^mpota_grant_requests_total 7$", metrics, re.M), metrics
    assert 'mpota_auth_failures_total{code="bad_grant"} 1' in metrics


async def test_an_expired_grant_is_refused_and_says_so(offered: Offered) -> None:
    env, board = offered.env, offered.board
    key: GrantKey = env.app[state.GRANTS]
    expired = key.mint(board.device_id, time.time() - DEFAULT_GRANT_LIFETIME_S - 1,
                       DEFAULT_GRANT_LIFETIME_S)
    for method in ("GET", "HEAD"):
        resp = await env.client.request(method, f"/v1/blobs/{offered.blobs[0]}",
                                        headers=_by_grant(expired))
        assert resp.status == 401
        if method == "GET":
            assert (await resp.json())["code"] == "grant_expired"
    pack = await env.client.get(URL(f"/v1/device/pack?blobs={offered.blobs[0]}", encoded=True),
                                headers=_by_grant(expired))
    assert (pack.status, (await pack.json())["code"]) == (401, "grant_expired")


# -- any change to a grant is refused ------------------------------------------------------

_GRANT_CHARS = st.sampled_from("ABCXYZabcxyz0123456789-_.:=, ")


@st.composite
def _altered(draw: st.DrawFn, grant: str) -> str:
    """`grant` with one character replaced, removed, inserted, or cut or extended at the end."""
    how = draw(st.sampled_from(["replace", "delete", "insert", "truncate", "extend"]))
    at = draw(st.integers(0, len(grant) - 1))
    char = draw(_GRANT_CHARS.filter(lambda c: c != grant[at]) if how == "replace"
                else _GRANT_CHARS)
    if how == "replace":
        return grant[:at] + char + grant[at + 1:]
    if how == "delete":
        return grant[:at] + grant[at + 1:]
    if how == "insert":
        return grant[:at] + char + grant[at:]
    if how == "truncate":
        return grant[:at]
    return grant + draw(st.text(_GRANT_CHARS, min_size=1, max_size=4))


_NOW = 1_800_000_000.0
_KEY = GrantKey(bytes(range(32)))
_VALID = _KEY.mint("board-7", _NOW, 900)


@settings(max_examples=400, deadline=None)
@given(altered=_altered(_VALID))
@example(altered=_VALID.replace("exp=", "exp=0"))
@example(altered=_VALID.replace("board-7", "board-8"))
@example(altered=_VALID[:-1] + ("B" if _VALID.endswith("A") else "A"))
def test_any_altered_grant_fails_the_check(altered: str) -> None:
    assert altered != _VALID
    with pytest.raises(Unauthorized) as refused:
        _KEY.check(altered, _NOW)
    assert refused.value.status == 401
    assert refused.value.code in ("bad_credentials", "bad_grant", "grant_expired")


@settings(max_examples=200, deadline=None)
@given(device_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", fullmatch=True),
       now=st.floats(1.0, 10.0**11), lifetime=st.integers(1, MAX_LIFETIME_S),
       elapsed=st.floats(0.0, 1.0))
def test_a_grant_is_valid_from_its_minting_until_just_before_its_expiry(
        device_id: str, now: float, lifetime: int, elapsed: float) -> None:
    grant = _KEY.mint(device_id, now, lifetime)
    match = GRANT_FORM.fullmatch(grant)
    assert match is not None
    expires = int(match.group(2))
    assert expires == int(now) + lifetime
    assert match.group(3) == _mac(_KEY.secret, device_id, expires)  # the documented MAC
    # any moment before exp is fine; exp itself and after are not
    at = now + elapsed * (expires - now)
    if at < expires:
        assert _KEY.check(grant, at) == device_id
    with pytest.raises(Unauthorized) as late:
        _KEY.check(grant, expires)
    assert late.value.code == "grant_expired"


def test_the_expiry_bounds_hold_for_grants_with_a_valid_mac() -> None:
    """A grant of this key whose exp is more than a day away was not made by a server of this
    protocol (the longest lifetime is a day): refused, though its MAC is right."""
    def grant(expires: int) -> str:
        return f"Mpota-Grant id=b,exp={expires},mac={_mac(_KEY.secret, 'b', expires)}"

    now = int(_NOW)
    assert _KEY.check(grant(now + MAX_LIFETIME_S), now) == "b"
    assert _KEY.check(grant(now + 1), now) == "b"
    for expires, code in ((now, "grant_expired"), (now - 1, "grant_expired"),
                          (now + MAX_LIFETIME_S + 1, "bad_grant"), (10**12 - 1, "bad_grant")):
        with pytest.raises(Unauthorized) as refused:
            _KEY.check(grant(expires), now)
        assert refused.value.code == code, expires
    with pytest.raises(Unauthorized) as bad:  # 13 digits: not the form
        _KEY.check(grant(10**12), now)
    assert bad.value.code == "bad_credentials"
    with pytest.raises(ValueError):
        _KEY.mint("b", now, MAX_LIFETIME_S + 1)


def test_another_keys_grant_fails_the_check() -> None:
    other = GrantKey(bytes(32))
    with pytest.raises(Unauthorized) as refused:
        other.check(_VALID, _NOW)
    assert refused.value.code == "bad_grant"


@pytest.fixture
def served(tmp_path: Path, backend: Backend) -> Iterator[tuple[LocalServer, str, str]]:
    """`ota serve` with a release offered to a board: (server, its grant, a blob id)."""
    keys = FleetKeys.create(tmp_path)
    extra = [] if backend.kind == "sqlite" else ["--grant-key", str(tmp_path / "grant.key")]
    board = SimBoard("prop-1")
    with LocalServer(tmp_path / "data", keys.root_path, extra_args=extra, **backend.urls) as srv:
        client = srv.client()
        client.register_device(board.device_id, board.point, board="unix")
        bundle = make_bundle(tmp_path, {"app_main.py": BLOB_A}, version="1.0.0", sequence=1,
                             key=keys.release_key)
        client.publish(bundle, channel="stable", percent=100)
        body = board.checkin_body()
        request = urllib.request.Request(srv.url + "/v1/device/checkin", data=body,
                                         method="POST",
                                         headers=board.auth("POST", "/v1/device/checkin", body))
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
            grant = answer.headers["X-Ota-Grant"]
        yield srv, grant, hashlib.sha256(BLOB_A).hexdigest()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_altered_grant_is_refused_by_the_server(
        served: tuple[LocalServer, str, str], data: st.DataObject) -> None:
    srv, grant, blob = served
    altered = data.draw(_altered(grant).filter(lambda g: g.isascii() and g.strip() == g))
    for path in (f"/v1/blobs/{blob}", f"/v1/device/pack?blobs={blob}"):
        assert get_status(srv.url + path, altered) == 401, altered
    assert get_status(f"{srv.url}/v1/blobs/{blob}", grant) == 200  # the grant itself works


# -- which servers give and take grants --------------------------------------------------

async def test_postgres_without_a_grant_key_gives_and_takes_no_grant(
        aiohttp_client: Any, tmp_path: Path, pg_migrated: str, s3_url: str) -> None:
    backend = Backend("postgres", db_url=pg_migrated, blobs_url=s3_url)
    keys = FleetKeys.create(tmp_path)
    settings, token = await new_data_dir(tmp_path, backend)
    settings = replace(settings, root_path=keys.root_path)
    assert settings.grant_key_path is None
    env = ServerEnv(await aiohttp_client(create_app(settings)), settings, token, keys, tmp_path)
    board = await env.add_board(SimBoard("no-grant"))
    await env.publish({"app_main.py": BLOB_A}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, percent=100)
    resp = await env.checkin(board)
    assert resp.status == 200
    assert "X-Ota-Grant" not in resp.headers
    assert state.GRANTS not in env.app
    sha = hashlib.sha256(BLOB_A).hexdigest()
    some_grant = GrantKey(os.urandom(32)).mint(board.device_id, time.time(), 900)
    refused = await env.client.get(f"/v1/blobs/{sha}", headers=_by_grant(some_grant))
    assert (refused.status, (await refused.json())["code"]) == (401, "bad_credentials")
    assert not list(tmp_path.rglob("grant.key"))  # none made on the side either
    assert (await env.get_blob(board, sha)).status == 200  # signed, as before


async def test_a_grant_from_one_replica_downloads_through_another(
        aiohttp_client: Any, tmp_path: Path, pg_migrated: str, s3_url: str) -> None:
    store_settings = Settings(data_dir=tmp_path / "setup", db_url=pg_migrated, blobs_url=s3_url)
    from ota_server.app import open_metadata_store

    store = await open_metadata_store(store_settings)
    try:
        token = await create_token(store, "ops", "admin")
    finally:
        await store.close()
    keys = FleetKeys.create(tmp_path)
    shared_key = tmp_path / "grant.key"
    replicas = []
    for n in range(2):
        settings = Settings(data_dir=tmp_path / f"replica-{n}", root_path=keys.root_path,
                            db_url=pg_migrated, blobs_url=s3_url, grant_key=shared_key)
        client = await aiohttp_client(create_app(settings))
        replicas.append(ServerEnv(client, settings, token, keys, tmp_path))
    a, b = replicas
    got = await _offer(a, SimBoard("roaming"))
    for sha in got.blobs:
        resp = await b.client.get(f"/v1/blobs/{sha}", headers=_by_grant(got.grant))
        assert resp.status == 200, await resp.text()
        assert hashlib.sha256(await resp.read()).hexdigest() == sha
    pack = await b.client.get(URL(f"/v1/device/pack?blobs={','.join(got.blobs)}",
                                  encoded=True), headers=_by_grant(got.grant))
    assert pack.status == 200
    # and B's own grants go through A
    other = await b.add_board(SimBoard("roaming-2"))
    offer_b = await b.checkin(other)
    assert offer_b.status == 200
    resp = await a.client.head(f"/v1/blobs/{got.blobs[0]}",
                               headers=_by_grant(offer_b.headers["X-Ota-Grant"]))
    assert resp.status == 200


# -- the key file ----------------------------------------------------------------------------

def test_the_key_file_is_created_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "grant.key"
    old = os.umask(0)  # the mode is the code's, not the umask's
    try:
        key = GrantKey.load_or_create(path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", text)
    assert key.secret == bytes.fromhex(text)
    assert GrantKey.load_or_create(path) == key  # the second start reads the same key
    assert text[:64] not in repr(key)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700 | 0o010])
def test_a_key_file_others_may_read_is_refused_naming_it(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "grant.key"
    path.write_text(os.urandom(32).hex() + "\n")
    path.chmod(mode)
    with pytest.raises(GrantKeyError, match=re.escape(str(path))) as refused:
        GrantKey.load_or_create(path)
    assert "chmod 600" in str(refused.value)
    assert path.read_text() != ""  # left as it was


@pytest.mark.parametrize("content", [
    b"", b"\n", b"00" * 31 + b"\n", b"00" * 33 + b"\n", b"AB" * 32 + b"\n",
    b"zz" * 32 + b"\n", b"00" * 32 + b"\n\n", b" " + b"00" * 32, os.urandom(32),
    b"00" * 32 + b"\nextra", b"00" * 200,
])
def test_a_key_file_not_in_the_format_is_refused_naming_it(tmp_path: Path,
                                                           content: bytes) -> None:
    path = tmp_path / "grant.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(GrantKeyError, match=re.escape(str(path))):
        GrantKey.load_or_create(path)
    assert path.read_bytes() == content  # never overwritten


def test_a_missing_directory_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "grant.key"
    with pytest.raises(GrantKeyError, match=re.escape(str(path))):
        GrantKey.load_or_create(path)


def _load_in_process(path: str, start: Any, out: Any) -> None:
    start.wait()
    try:
        out.put(GrantKey.load_or_create(Path(path)).secret.hex())
    except GrantKeyError as err:
        out.put(f"error: {err}")


def test_processes_and_threads_creating_the_key_at_once_all_get_the_one_key(
        tmp_path: Path) -> None:
    """Replicas starting together on one host: every one of them gets the key that ends up in
    the file, none an error (a reader must never see the file half-written)."""
    context = multiprocessing.get_context("fork")
    for attempt in range(25):
        path = tmp_path / f"grant-{attempt}.key"
        start = context.Event()
        out = context.Queue()
        processes = [context.Process(target=_load_in_process, args=(str(path), start, out))
                     for _ in range(3)]
        thread_results: list[str] = []
        gate = threading.Event()

        def in_thread(path: Path = path, gate: threading.Event = gate,
                      results: list[str] = thread_results) -> None:
            gate.wait()
            try:
                results.append(GrantKey.load_or_create(path).secret.hex())
            except GrantKeyError as err:
                results.append(f"error: {err}")

        threads = [threading.Thread(target=in_thread) for _ in range(3)]
        for worker in [*processes, *threads]:
            worker.start()
        start.set()
        gate.set()
        for thread in threads:
            thread.join(30)
        results = thread_results + [out.get(timeout=30) for _ in processes]
        for process in processes:
            process.join(30)
        written = path.read_text()
        assert results == [written[:64]] * 6, (attempt, results)
    # nothing but the keys in the directory: no temporary left beside them
    assert sorted(os.listdir(tmp_path)) == sorted(f"grant-{n}.key" for n in range(25))


# -- settings and `ota serve` ----------------------------------------------------------------

@pytest.mark.parametrize("value", ["59", "0", "86401", "-60", "1e3", "abc", "", "900.5"])
def test_a_grant_lifetime_outside_its_bounds_is_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(SettingsError, match="--grant-lifetime"):
        load_settings({"data_dir": Path("/d"), "grant_lifetime": value}, environ={})
    if value:  # an empty variable is an unset one, as for every MPOTA_* variable
        with pytest.raises(SettingsError, match="MPOTA_GRANT_LIFETIME"):
            load_settings({}, environ={"MPOTA_DATA": "/d", "MPOTA_GRANT_LIFETIME": value})


def test_the_grant_settings_come_from_flags_or_the_environment(tmp_path: Path) -> None:
    assert load_settings({"data_dir": tmp_path}, environ={}).grant_lifetime == 900
    assert load_settings({"data_dir": tmp_path}, environ={}).grant_key_path == \
        tmp_path / "grant.key"
    env = {"MPOTA_DATA": str(tmp_path), "MPOTA_GRANT_LIFETIME": "60",
           "MPOTA_GRANT_KEY": str(tmp_path / "k")}
    from_env = load_settings({}, environ=env)
    assert (from_env.grant_lifetime, from_env.grant_key_path) == (60, tmp_path / "k")
    flags = load_settings({"grant_lifetime": "86400", "grant_key": tmp_path / "f"}, environ=env)
    assert (flags.grant_lifetime, flags.grant_key_path) == (86400, tmp_path / "f")


def _serve(tmp_path: Path, root: Path, *args: str,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "serve", "--data", str(tmp_path / "data"),
         "--root", str(root), "--port", str(free_port()), *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("problem", ["group-readable", "not a key", "a directory"])
def test_serve_with_a_bad_key_file_exits_naming_it(tmp_path: Path, problem: str) -> None:
    keys = FleetKeys.create(tmp_path)
    key_file = tmp_path / "grant.key"
    if problem == "a directory":  # named in the environment (click checks the flag's itself)
        key_file.mkdir()
        proc = _serve(tmp_path, keys.root_path, env={"MPOTA_GRANT_KEY": str(key_file)})
    else:
        key_file.write_text(os.urandom(32).hex() + "\n" if problem == "group-readable"
                            else "not a key\n")
        key_file.chmod(0o640 if problem == "group-readable" else 0o600)
        proc = _serve(tmp_path, keys.root_path, "--grant-key", str(key_file))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("ota: "), proc.stderr
    assert str(key_file) in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("value", ["59", "86401", "soon"])
def test_serve_refuses_a_grant_lifetime_outside_its_bounds(tmp_path: Path, value: str) -> None:
    keys = FleetKeys.create(tmp_path)
    proc = _serve(tmp_path, keys.root_path, "--grant-lifetime", value)
    assert proc.returncode != 0
    assert "--grant-lifetime" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "data" / "grant.key").exists()
