"""The dashboard's routes against the real app under pytest-aiohttp: sessions, CSRF, the
rollout buttons through the API's own path, the board table paged on the server.

The browser end to end is tests/test_ui_browser.py; these pin the rules one request at a time.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import replace
from typing import Any

import pytest
from cluster_support import open_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import ServerEnv, SimBoard

from ota_server.state import BOARD_WRITES, STORE
from ota_server.storage.fleet_view import BOARD_STATUSES, BoardFilter
from ota_server.storage.records import Token
from ota_server.tokens import create_token
from ota_server.ui import sessions as ui_sessions
from ota_server.ui.routes import OPEN_ROUTES, session_scope
from ota_server.ui.sessions import COOKIE, LOGIN_COOKIE, Session, SessionTable, require_scope

ADMIN = Token("tests", "admin")


def _dashboard_routes() -> dict[tuple[str, str], Any]:
    """Every /ui route of the real app (HEAD aside), with its handler."""
    from pathlib import Path

    from ota_server.app import create_app
    from ota_server.settings import Settings

    app = create_app(Settings(data_dir=Path("/nonexistent")))
    out = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        if path.startswith("/ui") and route.method != "HEAD":
            out[(route.method, path)] = route.handler
    return out


ROUTES = _dashboard_routes()
# Every route but the open ones (the login, static files), a path parameter filled in.
GUARDED = sorted((m, p.replace("{device_id}", "board-0").replace("{channel}", "stable")
                  .replace("{action}", "pause").replace("{app}", "demo")
                  .replace("{version}", "1.0.0"))
                 for (m, p) in ROUTES if (m, p) not in OPEN_ROUTES)


def test_every_dashboard_route_is_open_by_name_or_needs_a_session_with_a_scope() -> None:
    assert len(GUARDED) >= 9
    for (method, path), handler in ROUTES.items():
        if (method, path) in OPEN_ROUTES:
            assert session_scope(handler) is None, (method, path)
        else:
            assert session_scope(handler) in ui_sessions.SCOPES, (method, path)
    # acting on a rollout needs more than seeing
    assert session_scope(ROUTES[("POST", "/ui/rollouts/{channel}/{action}")]) == "publish"
    # the scopes the API's own routes need for the same actions (ota_server.tokens)
    assert session_scope(ROUTES[("POST", "/ui/releases/{app}/{version}/yank")]) == "publish"
    assert session_scope(ROUTES[("POST", "/ui/boards/{device_id}/revoke")]) == "admin"
    assert session_scope(ROUTES[("GET", "/ui/audit")]) == "read"


async def _login(env: ServerEnv, token: str | None = None) -> str:
    """Log in through the form as a browser does; the session's CSRF token."""
    page = await env.client.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', await page.text())
    assert nonce is not None
    resp = await env.client.post("/ui/login", data={"nonce": nonce.group(1),
                                                     "token": token or env.token,
                                                     "next": "/ui/rollouts"},
                                 allow_redirects=False)
    assert resp.status == 303, await resp.text()
    assert resp.headers["Location"] == "/ui/rollouts"
    fleet = await env.client.get("/ui/fleet")
    assert fleet.status == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', await fleet.text())
    assert csrf is not None
    return csrf.group(1)


async def _rollout_fleet(env: ServerEnv) -> list[SimBoard]:
    boards = [await env.add_board(SimBoard(f"board-{i}")) for i in range(3)]
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, policy={
        "stages": [{"percent": 100}], "auto_advance": False})
    for board in boards:
        resp = await env.checkin(board)
        assert resp.status in (200, 204)
    return boards


@pytest.mark.parametrize(("method", "path"), GUARDED)
async def test_without_a_session_pages_redirect_to_the_login_and_the_rest_is_refused(
        env: ServerEnv, method: str, path: str) -> None:
    await _rollout_fleet(env)
    before = await env.rollout()
    resp = await env.client.request(method, path, allow_redirects=False)
    if method == "GET" and not path.endswith(".json"):
        assert resp.status == 303
        assert resp.headers["Location"].startswith("/ui/login?next=")
    else:
        assert resp.status == 401
        assert (await resp.json())["code"] == "no_session"
    assert (await env.rollout())["state"] == before["state"] == "active"


async def test_the_api_token_as_a_bearer_header_opens_no_page(env: ServerEnv) -> None:
    resp = await env.client.get("/ui/fleet", headers=env.bearer, allow_redirects=False)
    assert resp.status == 303


async def test_a_wrong_token_cannot_log_in(env: ServerEnv) -> None:
    page = await env.client.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', await page.text())
    assert nonce is not None
    resp = await env.client.post("/ui/login", data={"nonce": nonce.group(1),
                                                    "token": env.token + "x"},
                                 allow_redirects=False)
    assert resp.status == 401
    assert "Unknown or revoked token" in await resp.text()
    assert COOKIE not in resp.cookies
    after = await env.client.get("/ui/fleet", allow_redirects=False)
    assert after.status == 303


async def test_a_login_without_the_forms_nonce_is_refused(env: ServerEnv) -> None:
    resp = await env.client.post("/ui/login", data={"nonce": "made-up", "token": env.token},
                                 allow_redirects=False)
    assert resp.status == 403
    assert (await resp.json())["code"] == "bad_csrf"
    assert (await env.client.get("/ui/fleet", allow_redirects=False)).status == 303


async def test_the_session_cookie_is_httponly_strict_and_scoped_to_the_dashboard(
        env: ServerEnv) -> None:
    page = await env.client.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', await page.text())
    assert nonce is not None
    resp = await env.client.post("/ui/login", data={"nonce": nonce.group(1),
                                                    "token": env.token},
                                 allow_redirects=False)
    header = [h for h in resp.headers.getall("Set-Cookie") if h.startswith(COOKIE + "=")]
    assert len(header) == 1
    assert "HttpOnly" in header[0] and "SameSite=Strict" in header[0]
    assert "Path=/ui/" in header[0]
    assert "Secure" not in header[0]  # plain http here; https below
    assert env.token not in header[0]


async def test_the_pause_button_goes_through_the_api_path_and_the_api_sees_it(
        env: ServerEnv) -> None:
    await _rollout_fleet(env)
    csrf = await _login(env)
    resp = await env.client.post("/ui/rollouts/stable/pause", data={"csrf": csrf},
                                 allow_redirects=False)
    assert resp.status == 303
    assert (await env.rollout())["state"] == "paused"
    assert (await env.rollout())["reason"] == "paused by hand"  # rollout.pause's own reason
    page = await (await env.client.get("/ui/rollouts")).text()
    assert "stable: pause done; the rollout is paused" in page
    # the same rules as the API: a paused rollout cannot be paused again
    again = await env.client.post("/ui/rollouts/stable/pause", data={"csrf": csrf},
                                  allow_redirects=False)
    assert again.status == 303
    page = await (await env.client.get("/ui/rollouts")).text()
    assert "cannot pause a rollout that is paused" in page
    api = await env.client.post("/v1/channels/stable/rollout/resume", headers=env.bearer)
    assert api.status == 200
    assert (await env.rollout())["state"] == "active"


@pytest.mark.parametrize("csrf", [None, "", "forged"])
async def test_an_action_without_the_csrf_token_is_refused(env: ServerEnv,
                                                           csrf: str | None) -> None:
    await _rollout_fleet(env)
    await _login(env)
    data = {} if csrf is None else {"csrf": csrf}
    resp = await env.client.post("/ui/rollouts/stable/pause", data=data,
                                 allow_redirects=False)
    assert resp.status == 403
    assert (await resp.json())["code"] == "bad_csrf"
    assert (await env.rollout())["state"] == "active"
    logout = await env.client.post("/ui/logout", data=data, allow_redirects=False)
    assert logout.status == 403
    assert (await env.client.get("/ui/fleet", allow_redirects=False)).status == 200


async def test_logout_ends_the_session_on_the_server(env: ServerEnv) -> None:
    csrf = await _login(env)
    old_cookie = env.client.session.cookie_jar.filter_cookies(env.client.make_url("/ui/"))
    session_id = old_cookie[COOKIE].value
    resp = await env.client.post("/ui/logout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    # the old cookie, sent again by hand, opens nothing
    env.client.session.cookie_jar.clear()
    replay = await env.client.get("/ui/fleet", headers={"Cookie": f"{COOKIE}={session_id}"},
                                  allow_redirects=False)
    assert replay.status == 303


async def test_a_new_login_ends_the_session_the_browser_had(env: ServerEnv) -> None:
    await _login(env)
    first = env.client.session.cookie_jar.filter_cookies(env.client.make_url("/ui/"))[COOKIE]
    await _login(env)
    second = env.client.session.cookie_jar.filter_cookies(env.client.make_url("/ui/"))[COOKIE]
    assert first.value != second.value
    env.client.session.cookie_jar.clear()
    for value, status in ((first.value, 303), (second.value, 200)):
        replay = await env.client.get("/ui/fleet", headers={"Cookie": f"{COOKIE}={value}"},
                                      allow_redirects=False)
        assert replay.status == status


async def test_a_revoked_token_ends_its_sessions(env: ServerEnv) -> None:
    await _login(env)
    assert await env.app[STORE].revoke_token("tests") == 1
    assert (await env.client.get("/ui/fleet", allow_redirects=False)).status == 303


async def test_pages_show_the_fleet_and_the_board_table_filters_on_the_server(
        env: ServerEnv) -> None:
    await _rollout_fleet(env)
    await env.add_board(SimBoard("lab-7", channel="beta", tags=("lab",)))
    await _login(env)
    for path in ("/ui/fleet", "/ui/rollouts", "/ui/releases", "/ui/audit", "/ui/boards",
                 "/ui/boards/board-1"):
        resp = await env.client.get(path)
        assert resp.status == 200, path
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    table = await (await env.client.get("/ui/boards?channel=beta")).text()
    assert "lab-7" in table and "board-0" not in table and "1 board match" in table
    table = await (await env.client.get("/ui/boards?tag=lab&status=never_seen")).text()
    assert "lab-7" in table and "board-1" not in table
    table = await (await env.client.get("/ui/boards?status=ok")).text()
    assert "3 boards match" in table and "lab-7" not in table
    bad = await env.client.get("/ui/boards?status=exploded")
    assert bad.status == 400
    live = await (await env.client.get("/ui/live.json?fleet=1&boards=board-0,lab-7")).json()
    assert live["boards"] == {"board-0": "ok", "lab-7": "never_seen"}
    assert live["fleet"]["ok"] == 3 and live["fleet"]["never_seen"] == 1
    assert live["rollouts"]["stable"]["state"] == "active"
    missing = await env.client.get("/ui/boards/nobody")
    assert missing.status == 404


async def test_the_board_page_shows_a_deployments_failure_reason(env: ServerEnv) -> None:
    boards = await _rollout_fleet(env)
    store = env.app[STORE]
    await env.app[BOARD_WRITES].flush()  # the check-ins' offers are written behind
    offered = [b for b in boards if await store.deployment_status(b.device_id, 1) == "offered"]
    target = offered[0]
    for status in ("downloading", "installed"):
        assert (await env.report(target, status, 1)).status == 204
    reason = "app crashed: <script>alert(1)</script>"
    assert (await env.report(target, "rolled_back", 1, reason=reason)).status == 204
    await _login(env)
    page = await (await env.client.get(f"/ui/boards/{target.device_id}")).text()
    # the board's own words, escaped: a board cannot put markup into an operator's page
    escaped = "app crashed: &lt;script&gt;alert(1)&lt;/script&gt;"
    assert "<script>alert" not in page
    assert "rolled back" in page
    # in the history, newest first, as GET /v1/devices/{id} has it, and in the release's row
    history = page[page.index('id="history"'):page.index('id="deployments"')]
    api = await (await env.client.get(f"/v1/devices/{target.device_id}",
                                      headers=env.bearer)).json()
    assert [h["status"] for h in api["history"]] == ["downloading", "installed", "rolled_back"]
    shown = re.findall(r'class="pill dep-(\w+)"', history)
    assert shown == ["rolled_back", "installed", "downloading"]
    assert escaped in history
    assert escaped in page[page.index('id="deployments"'):]


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/ui/",
                                    "/\\evil.example", "/v1/devices", ""])
async def test_the_login_sends_only_to_a_dashboard_page(env: ServerEnv, target: str) -> None:
    page = await env.client.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', await page.text())
    assert nonce is not None
    resp = await env.client.post("/ui/login", data={"nonce": nonce.group(1),
                                                    "token": env.token, "next": target},
                                 allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/ui/fleet"


# -- the store's paging and statuses ----------------------------------------------------------

async def _fill(store: Any, count: int, now: int) -> None:
    """`count` boards with every status, straight into the store (the fixture of the paging
    rules; the server paths are tested above)."""
    for i in range(count):
        device_id = f"dev-{i:05d}"
        await store.add_device(device_id, b"\x04" + bytes(64), "unix", [f"t{i % 3}"],
                               "stable" if i % 2 else "beta", i % 10_000)
        kind = i % 5
        if kind == 1:
            await store.record_checkin(device_id, {"last_seen": now - 10, "version": "1.0.0"})
        elif kind == 2:
            await store.record_checkin(device_id, {"last_seen": now - 100_000})
        elif kind == 3:
            await store.record_checkin(device_id, {"last_seen": now - 10,
                                                   "last_status": "failed"})
        elif kind == 4:
            await store.revoke_device(device_id)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def filled_store(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, int]:
    """(backend, location, now) of a store filled once per module and backend: the dashboard's
    views must read the same on SQLite and PostgreSQL."""
    now = int(time.time())
    if request.param == "sqlite":
        location = str(tmp_path_factory.mktemp("ui") / "db.sqlite3")
    else:
        location = request.getfixturevalue("postgres_server").create_database(
            f"ui_{secrets.token_hex(6)}")

    async def fill() -> None:
        store = await open_store(request.param, location)
        try:
            await _fill(store, 400, now)
        finally:
            await store.close()

    asyncio.run(fill())
    return request.param, location, now


@pytest.fixture
async def filled(filled_store: tuple[str, str, int]) -> Any:
    kind, location, now = filled_store
    store = await open_store(kind, location)
    yield store, now
    await store.close()


def _python_status(device: Any, cutoff: int) -> str:
    """The status rule of docs/dashboard.md, written again in Python to check the SQL."""
    inv = device.inventory
    if device.revoked is not None:
        return "revoked"
    if inv["last_seen"] is None:
        return "never_seen"
    if inv["last_seen"] < cutoff:
        return "silent"
    return "failing" if inv["last_status"] in ("failed", "rolled_back") else "ok"


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(status=st.sampled_from((None, *BOARD_STATUSES)),
       channel=st.sampled_from((None, "stable", "beta")),
       tag=st.sampled_from((None, "t0", "t2")),
       search=st.sampled_from((None, "", "dev-001", "9")),
       limit=st.integers(1, 60))
async def test_keyset_pages_walk_every_matching_board_once_in_order(
        filled: Any, status: str | None, channel: str | None, tag: str | None,
        search: str | None, limit: int) -> None:
    store, now = filled
    cutoff = now - 7200
    board_filter = BoardFilter(silent_before=cutoff, status=status, channel=channel, tag=tag,
                               search=search)
    expected = [d.device_id for d in await store.list_devices()
                if (status is None or _python_status(d, cutoff) == status)
                and (channel is None or d.channel == channel)
                and (tag is None or tag in d.tags)
                and (not search or search in d.device_id)]
    walked: list[str] = []
    after = None
    for _ in range(500):
        page = await store.board_page(board_filter, after=after, limit=limit)
        for device, found in page:
            assert found == _python_status(device, cutoff)
        walked += [d.device_id for d, _ in page]
        if len(page) < limit:
            break
        after = page[-1][0].device_id
    assert walked == expected
    assert await store.count_boards(board_filter) == len(expected)
    # and backwards from the end, page by page, the same boards
    back: list[str] = []
    before = "\uffff"
    for _ in range(500):
        page = await store.board_page(board_filter, before=before, limit=limit)
        back = [d.device_id for d, _ in page] + back
        if len(page) < limit:
            break
        before = page[0][0].device_id
    assert back == expected


async def test_fleet_counts_add_up_to_the_boards_by_every_grouping(filled: Any) -> None:
    store, now = filled
    cutoff = now - 7200
    counts = await store.fleet_counts(cutoff)
    devices = await store.list_devices()
    assert counts.total == len(devices) == 400
    assert sum(n for _, _, n in counts.by_version) == 400
    assert dict(counts.by_channel) == {"beta": 200, "stable": 200}
    by_rule: dict[str, int] = dict.fromkeys(BOARD_STATUSES, 0)
    for device in devices:
        by_rule[_python_status(device, cutoff)] += 1
    assert counts.by_status == by_rule
    assert all(by_rule[s] > 0 for s in BOARD_STATUSES)


async def test_a_page_limit_outside_the_bounds_is_refused(filled: Any) -> None:
    store, now = filled
    for limit in (0, -1, 201):
        with pytest.raises(ValueError, match="limit must be 1 to 200"):
            await store.board_page(BoardFilter(silent_before=now), limit=limit)


# -- sessions ---------------------------------------------------------------------------------

@pytest.fixture
async def session_store(tmp_path: Any) -> Any:
    """The metadata store the sessions live in (SQLite here; PostgreSQL in
    tests/test_replicas.py)."""
    store = await open_store("sqlite", str(tmp_path / "sessions.db"))
    yield store
    await store.close()


async def test_sessions_expire_when_idle_and_after_their_lifetime(session_store: Any) -> None:
    clock = [1000.0]
    table = SessionTable(session_store, clock=lambda: clock[0])
    session = await table.create("h" * 64, ADMIN)
    clock[0] += ui_sessions.IDLE_S - 1
    assert (await table.get(session.id)) == replace(session, seen=clock[0])
    clock[0] += ui_sessions.IDLE_S - 1
    # each request restarts the idle clock
    assert (await table.get(session.id)) == replace(session, seen=clock[0])
    clock[0] += ui_sessions.IDLE_S
    assert await table.get(session.id) is None
    kept = await table.create("h" * 64, ADMIN)
    for _ in range(ui_sessions.LIFETIME_S // (ui_sessions.IDLE_S // 2) + 1):
        clock[0] += ui_sessions.IDLE_S // 2
        await table.get(kept.id)
    assert await table.get(kept.id) is None
    # the idle clock is stored at most once a SEEN_RESOLUTION_S, and never later than that
    quiet = await table.create("h" * 64, ADMIN)
    clock[0] += ui_sessions.SEEN_RESOLUTION_S - 1
    await table.get(quiet.id)
    clock[0] += ui_sessions.IDLE_S - ui_sessions.SEEN_RESOLUTION_S + 1
    assert await table.get(quiet.id) is None


async def test_the_store_keeps_a_hash_of_the_session_id_and_a_bounded_table(
        session_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    table = SessionTable(session_store, clock=lambda: clock[0])
    session = await table.create("h" * 64, ADMIN)
    assert await session_store.ui_session(session.id) is None  # the id itself opens nothing
    stored = await session_store.ui_session(ui_sessions.session_id_hash(session.id))
    assert stored is not None and stored.token_hash == "h" * 64 and stored.csrf == session.csrf
    monkeypatch.setattr(ui_sessions, "MAX_SESSIONS", 3)
    made = [session]
    for _ in range(4):
        clock[0] += 1
        made.append(await table.create("h" * 64, ADMIN))
    live = [s for s in made if await table.get(s.id) is not None]
    assert live == made[-3:]  # past the bound the oldest went first


async def test_a_session_holds_its_tokens_scope_and_those_below_it(session_store: Any) -> None:
    table = SessionTable(session_store)
    for scope, held in (("read", {"read"}), ("publish", {"read", "publish"}),
                        ("admin", {"read", "publish", "admin"})):
        session = await table.create("h" * 64, Token("t", scope))
        assert session.scopes == held and (session.actor, session.scope) == ("t", scope)
        for wanted in ui_sessions.SCOPES:
            if wanted in held:
                require_scope(session, wanted)
            else:
                with pytest.raises(ui_sessions.ScopeError):
                    require_scope(session, wanted)
    assert (await table.create("h" * 64, Token("t", "root"))).scopes == frozenset()
    narrowed = Session(id="x", token_hash="h", csrf="c", scopes=frozenset({"read"}),
                       created=0, seen=0)
    with pytest.raises(ValueError, match="unknown scope"):
        require_scope(narrowed, "root")


async def test_a_read_token_sees_the_pages_but_cannot_pause_and_the_refusal_is_audited(
        env: ServerEnv) -> None:
    await _rollout_fleet(env)
    reader = await create_token(env.app[STORE], "viewer", "read")
    csrf = await _login(env, reader)
    for page in ("/ui/fleet", "/ui/rollouts", "/ui/boards", "/ui/releases", "/ui/audit"):
        assert (await env.client.get(page, allow_redirects=False)).status == 200, page
    resp = await env.client.post("/ui/rollouts/stable/pause", data={"csrf": csrf},
                                 allow_redirects=False)
    assert resp.status == 403
    assert (await resp.json())["code"] == "missing_scope"
    assert (await env.rollout())["state"] == "active"
    (entry,) = [e for e in await env.app[STORE].list_audit(100) if e.actor == "viewer"]
    assert (entry.action, entry.status, entry.outcome, entry.scope) == (
        "POST /ui/rollouts/{channel}/{action}", 403, "missing_scope", "read")


async def test_dashboard_actions_are_in_the_audit_log_as_the_apis_are(env: ServerEnv) -> None:
    await _rollout_fleet(env)
    publisher = await create_token(env.app[STORE], "operator", "publish")
    csrf = await _login(env, publisher)
    for _ in range(2):  # the second pause is refused by the rollout's own rules
        resp = await env.client.post("/ui/rollouts/stable/pause", data={"csrf": csrf},
                                     allow_redirects=False)
        assert resp.status == 303
    forged = await env.client.post("/ui/rollouts/stable/resume", data={"csrf": "forged"},
                                   allow_redirects=False)
    assert forged.status == 403
    entries = [e for e in await env.app[STORE].list_audit(100) if e.actor == "operator"]
    assert [(e.target, e.status, e.outcome) for e in entries] == [
        ("stable: pause", 303, "ok"), ("stable: pause", 409, "bad_rollout_state"),
        ("channel=stable action=resume", 403, "bad_csrf")]
    assert {e.scope for e in entries} == {"publish"}


async def test_the_session_cookie_is_secure_when_the_server_runs_tls(
        aiohttp_client: Any, tmp_path: Any, backend: Any) -> None:
    from dataclasses import replace

    from server_support import FleetKeys, new_data_dir
    from tls_support import server_tls

    from ota_server.app import create_app

    server_tls(tmp_path / "tls")
    keys = FleetKeys.create(tmp_path)
    settings, token = await new_data_dir(tmp_path, backend)
    settings = replace(settings, root_path=keys.root_path,
                       tls_cert=tmp_path / "tls" / "server.pem",
                       tls_key=tmp_path / "tls" / "server.key")
    client = await aiohttp_client(create_app(settings))
    page = await client.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', await page.text())
    assert nonce is not None
    assert all("Secure" in h for h in page.headers.getall("Set-Cookie"))
    # the client keeps a Secure cookie for https only: sent by hand over the test's http
    resp = await client.post("/ui/login", data={"nonce": nonce.group(1), "token": token},
                             headers={"Cookie": f"{LOGIN_COOKIE}={nonce.group(1)}"},
                             allow_redirects=False)
    assert resp.status == 303
    header = [h for h in resp.headers.getall("Set-Cookie") if h.startswith(COOKIE + "=")]
    assert len(header) == 1 and "Secure" in header[0] and "HttpOnly" in header[0]


async def test_a_session_keeps_only_the_last_few_messages(session_store: Any) -> None:
    table = SessionTable(session_store)
    session = await table.create("h" * 64, ADMIN)
    for n in range(100):
        session.tell(f"message {n}")
    assert session.flash == [f"message {n}" for n in range(95, 100)]
    await table.save(session)
    again = await table.get(session.id)
    assert again is not None and again.flash == [f"message {n}" for n in range(95, 100)]


async def test_the_session_cookie_is_secure_behind_an_https_proxy(env: ServerEnv) -> None:
    proxy = {"X-Forwarded-Proto": "https"}  # as deploy/nginx-mpota.conf sets it
    page = await env.client.get("/ui/login", headers=proxy)
    nonce = re.search(r'name="nonce" value="([^"]+)"', await page.text())
    assert nonce is not None
    resp = await env.client.post("/ui/login", data={"nonce": nonce.group(1),
                                                    "token": env.token},
                                 headers={**proxy, "Cookie": f"{LOGIN_COOKIE}={nonce.group(1)}"},
                                 allow_redirects=False)
    assert resp.status == 303
    header = [h for h in resp.headers.getall("Set-Cookie") if h.startswith(COOKIE + "=")]
    assert len(header) == 1 and "Secure" in header[0]


# -- yank, revoke and the audit page -----------------------------------------------------------

def _page_text(html: str) -> str:
    """The page's text as a reader sees it: entities decoded (quotes come escaped)."""
    import html as html_module

    return html_module.unescape(html)


async def _api_release(env: ServerEnv, version: str) -> dict[str, Any]:
    resp = await env.client.get("/v1/releases?app=demo", headers=env.bearer)
    assert resp.status == 200
    (found,) = [r for r in (await resp.json())["releases"] if r["version"] == version]
    result: dict[str, Any] = found
    return result


async def test_the_yank_button_takes_the_apis_path_its_refusal_and_its_force(
        env: ServerEnv) -> None:
    await _rollout_fleet(env)
    csrf = await _login(env, await create_token(env.app[STORE], "operator", "publish"))
    page = _page_text(await (await env.client.get("/ui/releases")).text())
    assert 'value="force" class="danger"' in page
    assert "aborts the rollout on stable (active)" in page
    # refused while the rollout is active, with the API's own message, and nothing changes
    resp = await env.client.post("/ui/releases/demo/1.0.0/yank", data={"csrf": csrf},
                                 allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/ui/releases#release-demo-1.0.0"
    api = await env.client.post("/v1/releases/demo/1.0.0/yank", headers=env.bearer)
    assert api.status == 409 and (await api.json())["code"] == "rollout_active"
    page = _page_text(await (await env.client.get("/ui/releases")).text())
    assert f"demo 1.0.0: not yanked: {(await api.json())['message']}" in page
    assert (await _api_release(env, "1.0.0"))["yanked"] is None
    assert (await env.rollout())["state"] == "active"
    # the separate force button aborts the rollout and yanks, as {"force": true} does
    resp = await env.client.post("/ui/releases/demo/1.0.0/yank",
                                 data={"csrf": csrf, "force": "yes"}, allow_redirects=False)
    assert resp.status == 303
    assert (await _api_release(env, "1.0.0"))["yanked"] is not None
    rollout_now = await env.rollout()
    assert (rollout_now["state"], rollout_now["reason"]) == (
        "aborted", "aborted: demo 1.0.0 was yanked")
    page = _page_text(await (await env.client.get("/ui/releases")).text())
    assert "demo 1.0.0: yanked; no board is offered it from now on (rollouts aborted on " \
        "stable)." in page
    assert 'data-field="yanked"' in page and 'value="force"' not in page
    # an unknown release and a version that is not one: the API's refusals, as messages
    for version, shown in (("9.9.9", "no release 'demo' 9.9.9"),
                           ("latest", "is not a semantic version")):
        resp = await env.client.post(f"/ui/releases/demo/{version}/yank", data={"csrf": csrf},
                                     allow_redirects=False)
        assert resp.status == 303
        assert shown in _page_text(await (await env.client.get("/ui/releases")).text())
    entries = [e for e in await env.app[STORE].list_audit(100) if e.actor == "operator"]
    assert [(e.action, e.target, e.status, e.outcome) for e in entries] == [
        ("POST /ui/releases/{app}/{version}/yank", "demo 1.0.0", 409, "rollout_active"),
        ("POST /ui/releases/{app}/{version}/yank", "demo 1.0.0 (force)", 303, "ok"),
        ("POST /ui/releases/{app}/{version}/yank", "demo 9.9.9", 404, "unknown_release"),
        ("POST /ui/releases/{app}/{version}/yank", "demo latest", 400, "bad_field")]


async def test_a_release_without_a_rollout_is_yanked_at_once_and_shows_its_signers(
        env: ServerEnv) -> None:
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    csrf = await _login(env)
    signers = (await _api_release(env, "1.0.0"))["signers"]
    assert signers
    page = await (await env.client.get("/ui/releases")).text()
    assert all(f'<code class="hash">{k}</code>' in page for k in signers)
    assert 'value="force"' not in page  # nothing rolls it out: no force button
    resp = await env.client.post("/ui/releases/demo/1.0.0/yank", data={"csrf": csrf},
                                 allow_redirects=False)
    assert resp.status == 303
    assert (await _api_release(env, "1.0.0"))["yanked"] is not None


@pytest.mark.parametrize(("path", "scope"), [("/ui/releases/demo/1.0.0/yank", "read"),
                                              ("/ui/boards/board-0/revoke", "publish")])
async def test_yank_and_revoke_are_refused_below_their_scope_and_without_csrf(
        env: ServerEnv, path: str, scope: str) -> None:
    await _rollout_fleet(env)
    csrf = await _login(env, await create_token(env.app[STORE], "short", scope))
    refused = await env.client.post(path, data={"csrf": csrf, "force": "yes"},
                                    allow_redirects=False)
    assert refused.status == 403
    assert (await refused.json())["code"] == "missing_scope"
    await _login(env)  # an admin session: holds every scope, but sends no CSRF token
    for data in ({}, {"csrf": "forged", "force": "yes"}):
        forged = await env.client.post(path, data=data, allow_redirects=False)
        assert forged.status == 403
        assert (await forged.json())["code"] == "bad_csrf"
    assert (await _api_release(env, "1.0.0"))["yanked"] is None
    device = await env.client.get("/v1/devices/board-0", headers=env.bearer)
    assert (await device.json())["revoked"] is None
    assert (await env.rollout())["state"] == "active"
    outcomes = [(e.actor, e.scope, e.status, e.outcome)
                for e in await env.app[STORE].list_audit(100)
                if e.action.startswith("POST /ui/")]
    assert outcomes == [("short", scope, 403, "missing_scope"),
                        ("tests", "admin", 403, "bad_csrf"), ("tests", "admin", 403, "bad_csrf")]


async def test_the_revoke_button_revokes_the_board_as_the_api_does(env: ServerEnv) -> None:
    boards = await _rollout_fleet(env)
    reader = await create_token(env.app[STORE], "viewer", "read")
    await _login(env, reader)
    page = await (await env.client.get("/ui/boards/board-0")).text()
    assert re.search(r'value="revoke" class="danger" data-confirm="[^"]*" disabled>', page)
    csrf = await _login(env)
    page = await (await env.client.get("/ui/boards/board-0")).text()
    assert re.search(r'value="revoke" class="danger" data-confirm="[^"]*">Revoke board-0<', page)
    resp = await env.client.post("/ui/boards/board-0/revoke", data={"csrf": csrf},
                                 allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/ui/boards/board-0"
    device = await (await env.client.get("/v1/devices/board-0", headers=env.bearer)).json()
    assert device["revoked"] is not None
    checkin = await env.checkin(boards[0])
    assert checkin.status == 403 and (await checkin.json())["code"] == "revoked"
    assert (await env.checkin(boards[1])).status in (200, 204)  # the others are untouched
    page = await (await env.client.get("/ui/boards/board-0")).text()
    assert "board-0: revoked; its requests are refused from now on" in page
    assert 'value="revoke"' not in page and "This board was revoked" in page
    # an unknown board: the API's refusal
    unknown = await env.client.post("/ui/boards/board-9/revoke", data={"csrf": csrf},
                                    allow_redirects=False)
    api = await env.client.post("/v1/devices/board-9/revoke", headers=env.bearer)
    assert unknown.status == api.status == 404
    assert (await unknown.json())["code"] == (await api.json())["code"] == "unknown_device"
    entries = [(e.action, e.target, e.status, e.outcome)
               for e in await env.app[STORE].list_audit(100) if e.action.startswith("POST /ui/")]
    assert entries == [("POST /ui/boards/{device_id}/revoke", "board-0", 303, "ok"),
                       ("POST /ui/boards/{device_id}/revoke", "board-9", 404, "unknown_device")]


async def test_the_audit_page_shows_the_log_newest_first_bounded_as_the_api(
        env: ServerEnv) -> None:
    await _rollout_fleet(env)
    csrf = await _login(env, await create_token(env.app[STORE], "viewer", "read"))
    await env.client.post("/ui/rollouts/stable/pause", data={"csrf": csrf},
                          allow_redirects=False)  # refused, and recorded
    api = (await (await env.client.get("/v1/audit?limit=1000", headers=env.bearer))
           .json())["entries"]
    assert len(api) >= 4
    page = await (await env.client.get("/ui/audit")).text()
    shown = [int(i) for i in re.findall(r'data-audit-id="(\d+)"', page)]
    assert shown == [e["id"] for e in reversed(api)]
    newest = api[-1]
    assert (newest["actor"], newest["outcome"]) == ("viewer", "missing_scope")
    row = page[page.index(f'data-audit-id="{newest["id"]}"'):]
    row = row[:row.index("</tr>")]
    for text in ("viewer", "(read)", "POST /ui/rollouts/{channel}/{action}",
                 "403 missing_scope"):
        assert text in _page_text(row), text
    two = await (await env.client.get("/ui/audit?limit=2")).text()
    assert [int(i) for i in re.findall(r'data-audit-id="(\d+)"', two)] == \
        [api[-1]["id"], api[-2]["id"]]
    assert "Older entries, if any, are not shown" in two
    mine = await (await env.client.get("/ui/audit?actor=viewer")).text()
    assert [int(i) for i in re.findall(r'data-audit-id="(\d+)"', mine)] == [newest["id"]]
    for bad in ("0", "1001", "x", "-1", "%205", "5.0", ""):
        ui = await env.client.get(f"/ui/audit?limit={bad}")
        via_api = await env.client.get(f"/v1/audit?limit={bad}", headers=env.bearer)
        assert ui.status == via_api.status == 400, bad
        assert (await ui.json()) == (await via_api.json())
