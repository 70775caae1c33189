"""Every route of the app x every kind of bad credential is refused with the right status,
and a refused request changes nothing. The routes come from the app itself, so a new route
fails here until it is declared public or given a path parameter value (or query) below."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from server_support import (
    Backend,
    FleetKeys,
    ServerEnv,
    SimBoard,
    blob_ids,
    new_data_dir,
    open_metadata,
    store_fingerprint,
)

from ota_server import state
from ota_server.app import create_app
from ota_server.grants import GrantKey
from ota_server.middleware import auth_kind, required_scope
from ota_server.settings import Settings
from ota_server.tokens import SCOPES, create_token

# Routes anyone may call: health, metrics and the API description. Nothing else.
PUBLIC_ROUTES = {("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/openapi.json"),
                 ("HEAD", "/healthz"), ("HEAD", "/metrics"), ("HEAD", "/openapi.json")}


def _routes() -> list[tuple[str, str, str | None]]:
    app = create_app(Settings(data_dir=Path("/nonexistent")))
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        out.append((route.method, path, auth_kind(route.handler)))
        SCOPE_OF[(route.method, path)] = required_scope(route.handler)
    return sorted(out, key=lambda r: (r[1], r[0]))


SCOPE_OF: dict[tuple[str, str | None], str | None] = {}
ROUTES = _routes()


def test_every_route_declares_its_auth_and_only_the_listed_ones_are_public() -> None:
    assert all(kind in ("public", "publisher", "device", "download")
               for _, _, kind in ROUTES), ROUTES
    # A download grant opens the blob and pack downloads, and nothing else.
    downloads = {(m, p) for m, p, kind in ROUTES if kind == "download"}
    assert downloads == {("GET", "/v1/blobs/{sha256}"), ("HEAD", "/v1/blobs/{sha256}"),
                         ("GET", "/v1/device/pack")}
    # The dashboard's routes are public to the bearer check and check their own session
    # (ota_server/ui/routes.py; tests/test_ui_server.py holds each of them to it).
    public = {(m, p) for m, p, kind in ROUTES if kind == "public" and not p.startswith("/ui")}
    assert public == PUBLIC_ROUTES


@dataclass
class Matrix:
    env: ServerEnv
    board: SimBoard        # a registered board
    other: SimBoard        # another registered board
    revoked: SimBoard      # a revoked board
    revoked_token: str
    blob: str
    scoped: dict[str, str]  # scope -> a valid token of that scope
    grant: str              # the download grant board A's offer carried

    @property
    def grant_key(self) -> GrantKey:
        return self.env.app[state.GRANTS]


@pytest.fixture
async def matrix(aiohttp_client, tmp_path: Path, backend: Backend) -> Matrix:
    keys = FleetKeys.create(tmp_path)
    settings, token = await new_data_dir(tmp_path, backend)
    store = await open_metadata(settings)
    revoked_token = await create_token(store, "gone")
    await store.revoke_token("gone")
    scoped = {scope: await create_token(store, f"{scope}-token", scope) for scope in SCOPES}
    await store.close()
    # a grant key on both backends (PostgreSQL gives grants only with one named)
    settings = replace(settings, root_path=keys.root_path, grant_key=tmp_path / "grant.key")
    client = await aiohttp_client(create_app(settings))
    env = ServerEnv(client, settings, token, keys, tmp_path)
    board = await env.add_board(SimBoard("board-a", tags=("canary",)))
    other = await env.add_board(SimBoard("board-b"))
    revoked = await env.add_board(SimBoard("board-r"))
    assert (await client.post("/v1/devices/board-r/revoke", headers=env.bearer)).status == 200
    release = await env.publish({"app_main.py": b"print(1)\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, percent=100)
    # offered the release, so its reports about it count (docs/protocol.md)
    offered = await env.checkin(board)
    assert offered.status == 200
    grant = offered.headers["X-Ota-Grant"]
    blob = (await (await client.get("/v1/releases", headers=env.bearer)).json())
    assert blob["releases"][0]["id"] == release["id"]
    sha = (await blob_ids(settings))[0]
    return Matrix(env, board, other, revoked, revoked_token, sha, scoped, grant)


# Routes that take a query: the one a valid request carries (it is signed with the path).
QUERIES: dict[str, Callable[[Matrix], str]] = {
    "/v1/device/pack": lambda m: f"?blobs={m.blob}",
}


def _concrete(path: str, m: Matrix) -> str:
    values = {"sha256": m.blob, "version": "1", "device_id": m.board.device_id,
              "channel": "stable", "app": "demo", "name": "gone"}
    if path.startswith("/v1/releases/"):
        values["version"] = "1.0.0"
    query = QUERIES[path](m) if path in QUERIES else ""
    return re.sub(r"\{(\w+)\}", lambda g: values[g.group(1)], path) + query


def _body(method: str, path: str, m: Matrix) -> bytes:
    if method not in ("POST", "PUT"):
        return b""
    if path == "/v1/device/checkin":
        return m.board.checkin_body()
    if path == "/v1/device/report":
        return m.board.report_body("downloading", 1)
    return json.dumps({"app": "demo", "sequence": 1}).encode()


Credential = Callable[[Matrix, str, str, str, bytes], dict[str, str]]


def _none(m: Matrix, kind: str, method: str, path: str, body: bytes) -> dict[str, str]:
    return {}


def _wrong(m: Matrix, kind: str, method: str, path: str, body: bytes) -> dict[str, str]:
    """A credential of the right form that proves nothing."""
    if kind == "publisher":
        return {"Authorization": "Bearer mpota_not-a-real-token"}
    stranger = SimBoard(m.board.device_id, counter=10**9)  # same id, a key nobody registered
    return stranger.auth(method, path, body)


def _other_board(m: Matrix, kind: str, method: str, path: str, body: bytes) -> dict[str, str]:
    """Board B's key signing as board A; on publisher routes, a board's valid signature."""
    if kind == "publisher":
        return m.other.auth(method, path, body)
    impostor = SimBoard(m.board.device_id, key=m.other.key, counter=10**9)
    return impostor.auth(method, path, body)


def _revoked(m: Matrix, kind: str, method: str, path: str, body: bytes) -> dict[str, str]:
    if kind == "publisher":
        return {"Authorization": f"Bearer {m.revoked_token}"}
    return m.revoked.auth(method, path, body)


def _grant(device_id: str, expires: int, mac: str) -> dict[str, str]:
    return {"Authorization": f"Mpota-Grant id={device_id},exp={expires},mac={mac}"}


def _malformed_grant(m: Matrix, kind: str, method: str, path: str,
                     body: bytes) -> dict[str, str]:
    """The grant board A was given, its MAC cut short by one character."""
    return {"Authorization": m.grant[:-1]}


def _expired_grant(m: Matrix, kind: str, method: str, path: str,
                   body: bytes) -> dict[str, str]:
    """A grant the server's own key made, whose expiry has passed."""
    expires = int(time.time()) - 1
    return _grant(m.board.device_id, expires, m.grant_key.mac(m.board.device_id, expires))


def _wrong_mac_grant(m: Matrix, kind: str, method: str, path: str,
                     body: bytes) -> dict[str, str]:
    """Board A's grant with another board's MAC (the right form, this server's key)."""
    fields = dict(part.split("=", 1) for part in m.grant.split(" ", 1)[1].split(","))
    expires = int(fields["exp"])
    return _grant(m.board.device_id, expires, m.grant_key.mac(m.other.device_id, expires))


def _foreign_grant(m: Matrix, kind: str, method: str, path: str,
                   body: bytes) -> dict[str, str]:
    """A grant in every way valid, but made with a key that is not this server's."""
    return {"Authorization": GrantKey(os.urandom(32)).mint(m.board.device_id, time.time(), 900)}


# A grant on a route that takes none: refused as any credential of an unknown scheme.
_NOT_A_DOWNLOAD = {"publisher": (401, "bad_credentials"), "device": (401, "bad_credentials")}

CASES: dict[str, tuple[Credential, dict[str, tuple[int, str]]]] = {
    # case: (credential, {route kind: (status, code)})
    "no credential": (_none, {"publisher": (401, "missing_credentials"),
                              "device": (401, "missing_credentials"),
                              "download": (401, "missing_credentials")}),
    "wrong credential": (_wrong, {"publisher": (401, "bad_token"),
                                  "device": (401, "bad_signature"),
                                  "download": (401, "bad_signature")}),
    "another board's credential": (_other_board, {"publisher": (401, "bad_credentials"),
                                                  "device": (401, "bad_signature"),
                                                  "download": (401, "bad_signature")}),
    "revoked": (_revoked, {"publisher": (401, "bad_token"), "device": (403, "revoked"),
                           "download": (403, "revoked")}),
    "malformed grant": (_malformed_grant, {**_NOT_A_DOWNLOAD,
                                           "download": (401, "bad_credentials")}),
    "expired grant": (_expired_grant, {**_NOT_A_DOWNLOAD, "download": (401, "grant_expired")}),
    "grant with a wrong mac": (_wrong_mac_grant, {**_NOT_A_DOWNLOAD,
                                                  "download": (401, "bad_grant")}),
    "grant of another key": (_foreign_grant, {**_NOT_A_DOWNLOAD,
                                              "download": (401, "bad_grant")}),
}


KINDS = {(m, p): kind for m, p, kind in ROUTES}


PROTECTED = [(m, p) for m, p, kind in ROUTES if kind != "public"]


@pytest.mark.parametrize(("method", "template"), PROTECTED,
                         ids=[f"{m} {p}" for m, p in PROTECTED])
@pytest.mark.parametrize("case", list(CASES))
async def test_bad_credentials_are_refused_and_change_nothing(
        matrix: Matrix, method: str, template: str, case: str) -> None:
    path = _concrete(template, matrix)
    body = _body(method, template, matrix)
    credential, expected = CASES[case]
    kind = KINDS[(method, template)]
    status, code = expected[kind]
    headers = credential(matrix, kind, method, path, body)
    before = await store_fingerprint(matrix.env.settings)
    resp = await matrix.env.client.request(method, path, data=body or None, headers=headers)
    assert resp.status == status
    if method != "HEAD":
        doc = await resp.json()
        assert doc["code"] == code
    assert (await store_fingerprint(matrix.env.settings)) == before


# A signed request spends its counter on the download routes too (a grant spends none:
# tests/test_server_grants.py).
DEVICE_ROUTES = [(m, p) for m, p, kind in ROUTES if kind in ("device", "download")]


@pytest.mark.parametrize(("method", "template"), DEVICE_ROUTES,
                         ids=[f"{m} {p}" for m, p in DEVICE_ROUTES])
async def test_replayed_board_request_is_refused(matrix: Matrix, method: str,
                                                 template: str) -> None:
    path = _concrete(template, matrix)
    body = _body(method, template, matrix)
    headers = matrix.board.auth(method, path, body)
    first = await matrix.env.client.request(method, path, data=body or None, headers=headers)
    assert first.status < 400, await first.text()
    # A check-in's records are written behind (ota_server.counters): the replay below must not
    # be what writes them, nor change anything else.
    await matrix.env.client.app[state.BOARD_WRITES].flush()
    before = await store_fingerprint(matrix.env.settings)
    again = await matrix.env.client.request(method, path, data=body or None, headers=headers)
    assert again.status == 401
    if method != "HEAD":
        assert (await again.json())["code"] == "replay"
    assert (await store_fingerprint(matrix.env.settings)) == before
    # an older counter is a replay too
    older = replace(matrix.board, counter=matrix.board.counter - 5)
    stale = await matrix.env.client.request(method, path, data=body or None,
                                            headers=older.auth(method, path, body))
    assert stale.status == 401


NOT_DOWNLOADS = [(m, p) for m, p, kind in ROUTES if kind in ("device", "publisher")]


@pytest.mark.parametrize(("method", "template"), NOT_DOWNLOADS,
                         ids=[f"{m} {p}" for m, p in NOT_DOWNLOADS])
async def test_a_valid_grant_opens_no_route_but_the_downloads(
        matrix: Matrix, method: str, template: str) -> None:
    """Board A's own, valid grant on its check-in, report, root or any publisher route: 401
    bad_credentials, nothing changed (the same grant downloads: test_server_grants.py)."""
    path = _concrete(template, matrix)
    body = _body(method, template, matrix)
    before = await store_fingerprint(matrix.env.settings)
    resp = await matrix.env.client.request(method, path, data=body or None,
                                           headers={"Authorization": matrix.grant})
    assert resp.status == 401
    if method != "HEAD":
        assert (await resp.json())["code"] == "bad_credentials"
    assert (await store_fingerprint(matrix.env.settings)) == before
    # the same grant does download (so the refusal above is the route's, not the grant's)
    blob = await matrix.env.client.get(f"/v1/blobs/{matrix.blob}",
                                       headers={"Authorization": matrix.grant})
    assert blob.status == 200


PUBLISHER_ROUTES = [(m, p) for m, p, kind in ROUTES if kind == "publisher"]


@pytest.mark.parametrize(("method", "template"), PUBLISHER_ROUTES,
                         ids=[f"{m} {p}" for m, p in PUBLISHER_ROUTES])
async def test_a_boards_valid_signature_does_not_open_publisher_routes(
        matrix: Matrix, method: str, template: str) -> None:
    """The publisher side of "replayed request": a board's fresh, valid request."""
    path = _concrete(template, matrix)
    body = _body(method, template, matrix)
    before = await store_fingerprint(matrix.env.settings)
    resp = await matrix.env.client.request(method, path, data=body or None,
                                           headers=matrix.board.auth(method, path, body))
    assert resp.status == 401
    assert (await store_fingerprint(matrix.env.settings)) == before


async def test_changing_body_or_path_after_signing_breaks_the_signature(
        matrix: Matrix) -> None:
    path = "/v1/device/checkin"
    body = matrix.board.checkin_body()
    headers = matrix.board.auth("POST", path, body)
    tampered = body.replace(b'"sequence": 0', b'"sequence": 9')
    assert tampered != body
    resp = await matrix.env.client.post(path, data=tampered, headers=headers)
    assert resp.status == 401
    assert (await resp.json())["code"] == "bad_signature"
    headers = matrix.board.auth("POST", path, body)
    moved = await matrix.env.client.post("/v1/device/report", data=body, headers=headers)
    assert moved.status == 401
    assert (await moved.json())["code"] == "bad_signature"


@pytest.mark.parametrize(("method", "template"), PUBLISHER_ROUTES,
                         ids=[f"{m} {p}" for m, p in PUBLISHER_ROUTES])
async def test_every_publisher_route_needs_its_scope_and_lower_scopes_change_nothing(
        matrix: Matrix, method: str, template: str) -> None:
    """A token below the route's scope gets 403 `insufficient_scope` and changes nothing but
    the audit log (for publish and admin routes, the refusal is recorded there); a token of
    the route's scope, or above it, gets past authentication, and its call to a publish or
    admin route is recorded with its status and outcome."""
    needed = SCOPE_OF[(method, template)]
    assert needed in SCOPES
    path = _concrete(template, matrix)
    body = _body(method, template, matrix)
    store = matrix.env.app[state.STORE]
    for scope in SCOPES[: SCOPES.index(needed)]:
        before = await store_fingerprint(matrix.env.settings)
        audit_before = len(await store.list_audit(1000))
        resp = await matrix.env.client.request(
            method, path, data=body or None,
            headers={"Authorization": f"Bearer {matrix.scoped[scope]}"})
        assert resp.status == 403, (scope, await resp.text())
        if method != "HEAD":
            doc = await resp.json()
            assert doc["code"] == "insufficient_scope"
            assert repr(needed) in doc["message"] and f"{scope}-token" in doc["message"]
        assert (await store_fingerprint(matrix.env.settings)) == before
        refused = (await store.list_audit(1000))[audit_before:]
        if needed == "read":
            assert refused == []
        else:
            [entry] = refused
            assert (entry.actor, entry.scope, entry.status, entry.outcome) == \
                (f"{scope}-token", scope, 403, "insufficient_scope")
    for scope in SCOPES[SCOPES.index(needed):]:
        audit_before = len(await store.list_audit(1000))
        resp = await matrix.env.client.request(
            method, path, data=body or None,
            headers={"Authorization": f"Bearer {matrix.scoped[scope]}"})
        assert resp.status not in (401, 403), (scope, await resp.text())
        recorded = (await store.list_audit(1000))[audit_before:]
        if needed == "read":
            assert recorded == []
        else:  # every call that may change state is in the audit log, whatever its outcome
            [entry] = recorded
            assert (entry.actor, entry.action, entry.status) == \
                (f"{scope}-token", f"{method} {template}", resp.status)
            assert entry.outcome == ("ok" if resp.status < 400 else (await resp.json())["code"])


def test_scopes_follow_the_documented_rule() -> None:
    """GET routes and the blob question read; revoking boards, uploading roots and tokens
    are admin; the rest changes state and needs publish."""
    admin = {("POST", "/v1/devices/{device_id}/revoke"), ("POST", "/v1/roots"),
             ("GET", "/v1/tokens"), ("HEAD", "/v1/tokens"), ("POST", "/v1/tokens"),
             ("POST", "/v1/tokens/{name}/revoke")}
    for method, path, kind in ROUTES:
        if kind != "publisher":
            continue
        if (method, path) in admin:
            expected = "admin"
        elif method in ("GET", "HEAD") or (method, path) == ("POST", "/v1/blobs/missing"):
            expected = "read"
        else:
            expected = "publish"
        assert SCOPE_OF[(method, path)] == expected, (method, path)
