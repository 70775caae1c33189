"""The dashboard's routes: login, the pages, the rollout actions, the live JSON, static files.

Every route is `@public` to the API's bearer-token middleware and checks its own session
here (`_guard`): a page without a session redirects to the login, anything else without one
is refused (401); a POST needs the session's CSRF token (403 without it); each route names the
scope it needs (`require_scope`). The pages read the store through the same functions as the
API (ota_server.rollout.status, the store's methods); the buttons go through the API
handlers' own functions in ota_server.routes_publisher: act_on_rollout (Pause, Resume, Advance,
Abort), yank (Yank) and revoke_board (Revoke), so the rules and refusals are the API's.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp_jinja2
import jinja2
from aiohttp import web

from ota_server import rollout, state
from ota_server.errors import ApiError, BadRequest, NotFound, Unauthorized
from ota_server.middleware import public, record_audit
from ota_server.routes_publisher import (
    ROLLOUT_ACTIONS,
    act_on_rollout,
    audit_entries,
    revoke_board,
    yank,
)
from ota_server.storage.fleet_view import BOARD_STATUSES, MAX_PAGE, BoardFilter
from ota_server.storage.records import Token
from ota_server.tokens import token_hash
from ota_server.ui.sessions import (
    COOKIE,
    COOKIE_PATH,
    IDLE_S,
    LOGIN_COOKIE,
    Session,
    SessionTable,
    require_scope,
)
from ota_server.validation import name

SESSIONS = web.AppKey("ui_sessions", SessionTable)
SCOPE_ATTR = "mpota_ui_scope"
# (status, code) of an action whose handler shows a refusal on the page instead of raising it
ACTION_OUTCOME = web.RequestKey("ui_action_outcome", tuple[int, str])
# The routes open without a session; every other /ui/ route needs one (session_scope).
OPEN_ROUTES = frozenset({("GET", "/ui"), ("GET", "/ui/"), ("GET", "/ui/login"),
                         ("POST", "/ui/login"), ("GET", "/ui/static/{name}")})
SILENT_AFTER = web.AppKey("ui_silent_after_s", int)
# A board is silent when its last check-in is older than this: twice fleet.yaml's default
# poll interval (3600 s). The server is not told a board's own interval (docs/dashboard.md,
# Silent boards).
SILENT_AFTER_S = 2 * 3600
PAGE_SIZE = 50
AUDIT_ROWS = "100"  # the audit page's default bound, as GET /v1/audit's
_SEEN_WITHIN = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}
_STATIC = ("dashboard.css", "live.js")
_STATIC_TYPES = {"css": "text/css", "js": "text/javascript"}
_MAX_LIVE_BOARDS = MAX_PAGE
# Pages are only ever shown by this server's own origin: no inline script, no framing.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
log = logging.getLogger("ota_server.ui")

Page = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


def setup(app: web.Application, silent_after_s: int = SILENT_AFTER_S) -> None:
    """Add the dashboard's routes, templates and session table to `app` (the table on the
    store, once the store is open)."""
    app.on_startup.append(_open_sessions)  # runs after create_app's cleanup_ctx opened it
    app[SILENT_AFTER] = silent_after_s
    env = aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("ota_server.ui", "templates"),
                               autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    for method, path, handler in _ROUTES:
        if method == "GET":
            app.router.add_get(path, handler)
        else:
            app.router.add_post(path, handler)


async def _open_sessions(app: web.Application) -> None:
    app[SESSIONS] = SessionTable(app[state.STORE])


# -- the guard --------------------------------------------------------------------------------

async def _session_of(request: web.Request) -> Session | None:
    found = await request.app[SESSIONS].get(request.cookies.get(COOKIE))
    if found is not None and await request.app[state.STORE].token(found.token_hash) is None:
        await request.app[SESSIONS].end(found.id)  # the token was revoked: so is the session
        return None
    return found


def _guard(scope: str, *, page: bool = True) -> Callable[[Page], Any]:
    """A handler of `scope` with its session: a page without one redirects to the login,
    anything else is refused; a POST without the session's CSRF token is refused (403)."""
    def wrap(handler: Page) -> Any:
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            session = await _session_of(request)
            if session is None:
                if page and request.method == "GET":
                    return _see_other("/ui/login?" + urlencode({"next": request.path_qs}))
                raise Unauthorized("log in to the dashboard first", code="no_session")
            if request.method == "POST" and scope != "read":
                return await _audited(request, session, scope, handler)
            return await _checked(request, session, scope, handler)
        setattr(run, SCOPE_ATTR, scope)
        return public(run)
    return wrap


async def _checked(request: web.Request, session: Session, scope: str,
                   handler: Page) -> web.StreamResponse:
    """Run `handler` once the session holds `scope` and, for a POST, sent its CSRF token."""
    require_scope(session, scope)
    if request.method == "POST":
        form = await request.post() if request.can_read_body else {}
        given = request.headers.get("X-CSRF-Token") or form.get("csrf")
        if not session.csrf_ok(given if isinstance(given, str) else None):
            raise ApiError("this action needs the page's CSRF token", code="bad_csrf",
                           status=403)
    # Like the API's publisher routes: every check-in answered so far is visible.
    await request.app[state.BOARD_WRITES].flush()
    response = await handler(request, session)
    await request.app[SESSIONS].save(session)  # a message told, or the messages shown
    response.headers.update(_SECURITY_HEADERS)
    return response


async def _audited(request: web.Request, session: Session, scope: str,
                   handler: Page) -> web.StreamResponse:
    """An action (a POST above `read`), written to the audit log as the API's publisher
    calls are (ota_server.middleware.record_audit): who, what, when and how it ended, a
    refusal for scope or CSRF included. A handler that shows a refusal as a message on the
    page names it in request[ACTION_OUTCOME]."""
    status, outcome = 500, "internal"
    try:
        response = await _checked(request, session, scope, handler)
        status, outcome = request.get(ACTION_OUTCOME, (response.status, "ok"))
        return response
    except ApiError as err:
        status, outcome = err.status, err.code
        raise
    finally:
        await record_audit(request, Token(name=session.actor, scope=session.scope), status, outcome)


def session_scope(handler: Any) -> str | None:
    """The scope a dashboard handler needs with its session; None for the open ones (the
    login, the static files, the redirect to the fleet page)."""
    return getattr(handler, SCOPE_ATTR, None)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **_SECURITY_HEADERS})


def _render(request: web.Request, session: Session | None, template: str,
            context: dict[str, Any], status: int = 200) -> web.Response:
    flash = list(session.flash) if session is not None else []
    if session is not None:
        session.flash.clear()
    response = aiohttp_jinja2.render_template(
        template, request, {**context, "session": session, "flash": flash,
                            "path": request.path}, status=status)
    response.headers.update(_SECURITY_HEADERS)
    return response


def _silent_before(request: web.Request) -> int:
    return int(time.time()) - request.app[SILENT_AFTER]


# -- login and logout -------------------------------------------------------------------------

def _safe_next(target: str | None) -> str:
    """Where to go after the login: a path of the dashboard, never another site."""
    if target and target.startswith("/ui/") and not target.startswith("//") \
            and "\\" not in target:
        return target
    return "/ui/fleet"


@public
async def login_page(request: web.Request) -> web.Response:
    """The login form, with a fresh double-submit token against login CSRF."""
    import secrets

    nonce = secrets.token_urlsafe(24)
    response = _render(request, None, "login.html",
                       {"nonce": nonce, "next": _safe_next(request.query.get("next")),
                        "error": None})
    _set_cookie(request, response, LOGIN_COOKIE, nonce, max_age=IDLE_S)
    return response


@public
async def login(request: web.Request) -> web.Response:
    """Check the token (the store's `token`, as for the API) and open a session with its
    name and scope."""
    import hmac

    form = await request.post()
    nonce, cookie = form.get("nonce"), request.cookies.get(LOGIN_COOKIE)
    if not isinstance(nonce, str) or cookie is None or \
            not hmac.compare_digest(nonce.encode(), cookie.encode()):
        raise ApiError("the login form has expired or was not sent by this site; reload it",
                       code="bad_csrf", status=403)
    token, raw_next = form.get("token"), form.get("next")
    target = _safe_next(raw_next if isinstance(raw_next, str) else None)
    store = request.app[state.STORE]
    known = await store.token(token_hash(token.strip())) if isinstance(token, str) and \
        token.strip() else None
    if known is None:
        request.app[state.METRICS].inc("mpota_auth_failures_total", code="ui_bad_token")
        log.warning("dashboard login refused: unknown or revoked token")  # never the token
        return _render(request, None, "login.html",
                       {"nonce": nonce, "next": target,
                        "error": "Unknown or revoked token."}, status=401)
    previous = request.cookies.get(COOKIE)
    if previous:  # a new login never keeps an old session id (no session fixation)
        await request.app[SESSIONS].end(previous)
    assert isinstance(token, str)
    session = await request.app[SESSIONS].create(token_hash(token.strip()), known)
    response = _see_other(target)
    _set_cookie(request, response, COOKIE, session.id, max_age=None)
    response.del_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    return response


def _set_cookie(request: web.Request, response: web.StreamResponse, key: str, value: str,
                max_age: int | None) -> None:
    """HttpOnly, SameSite=Strict, Path=/ui/; Secure when the server itself runs TLS or a
    proxy in front of it says the browser came over https (deploy/nginx-mpota.conf sets
    X-Forwarded-Proto). Trusting that header can only add Secure: a client that sends it over
    plain http keeps its own cookie from coming back, and nothing else."""
    secure = request.app[state.SETTINGS].tls_cert is not None or \
        request.headers.get("X-Forwarded-Proto", "").strip().lower() == "https"
    response.set_cookie(key, value, path=COOKIE_PATH, httponly=True, samesite="Strict",
                        secure=secure, max_age=max_age)


@_guard("read")
async def logout(request: web.Request, session: Session) -> web.Response:
    await request.app[SESSIONS].end(session.id)
    response = _see_other("/ui/login")
    response.del_cookie(COOKIE, path=COOKIE_PATH)
    return response


@public
async def home(request: web.Request) -> web.Response:
    return _see_other("/ui/fleet")


# -- pages ------------------------------------------------------------------------------------

@_guard("read")
async def fleet(request: web.Request, session: Session) -> web.Response:
    counts = await request.app[state.STORE].fleet_counts(_silent_before(request))

    def link(**query: str | None) -> str | None:
        kept = {k: v for k, v in query.items() if v}
        return "/ui/boards?" + urlencode(kept) if kept else None

    charts = {
        "version": [(f"{app} {version}" if version else "no app yet", n, link(version=version))
                    for app, version, n in counts.by_version],
        "channel": [(channel, n, link(channel=channel)) for channel, n in counts.by_channel],
        "status": [(s.replace("_", " "), counts.by_status[s], link(status=s))
                   for s in BOARD_STATUSES],
    }
    return _render(request, session, "fleet.html",
                   {"counts": counts, "statuses": BOARD_STATUSES, "charts": charts,
                    "silent_after_s": request.app[SILENT_AFTER]})


async def _rollout_rows(request: web.Request) -> list[dict[str, Any]]:
    """Each channel's rollout as the API shows it, with its eligible boards and failure
    rate."""
    store = request.app[state.STORE]
    rows = []
    for channel in await store.list_channels():
        status = await rollout.status(store, channel)
        current = await store.current_rollout(channel)
        row: dict[str, Any] = {"channel": channel, "status": status, "eligible": None,
                               "failure_rate": None}
        if current is not None:
            row["eligible"] = await rollout.eligible_count(store, current.channel, current.policy,
                                                    current.stage)
            counts = status["rollout"]["counts"]
            results = counts["confirmed"] + counts["failed"] + counts["rolled_back"]
            if results:
                row["failure_rate"] = (counts["failed"] + counts["rolled_back"]) / results
            row["results"] = results
            row["progress_total"] = max(sum(counts.values()), row["eligible"])
        rows.append(row)
    return rows


@_guard("read")
async def rollouts(request: web.Request, session: Session) -> web.Response:
    return _render(request, session, "rollouts.html", {"rows": await _rollout_rows(request)})


@_guard("publish")
async def rollout_action(request: web.Request, session: Session) -> web.Response:
    """A rollout button: the API's own path (act_on_rollout); the outcome is shown as a
    message on the rollouts page."""
    channel = name(request.match_info["channel"], "channel")
    action = request.match_info["action"]
    if action not in ROLLOUT_ACTIONS:
        raise NotFound(f"no rollout action {action[:40]!r}", code="unknown_action")
    request[state.AUDIT_TARGET] = f"{channel}: {action}"
    try:
        result = await act_on_rollout(request.app[state.STORE], channel, action)
    except ApiError as err:
        request[ACTION_OUTCOME] = (err.status, err.code)
        session.tell(f"{channel}: {err.message}")
    else:
        now = result["rollout"]
        session.tell(f"{channel}: {action} done; the rollout is {now['state']} at "
                             f"stage {now['stage'] + 1} of {len(now['stages'])}.")
    return _see_other(f"/ui/rollouts#channel-{quote(channel)}")


def _board_filter(request: web.Request) -> tuple[BoardFilter, dict[str, str]]:
    """The board table's filter from the query, checked; and the query values kept."""
    query = request.query
    kept = {k: query.get(k, "").strip()[:100] for k in
            ("q", "tag", "channel", "version", "status", "seen")}
    if kept["status"] and kept["status"] not in BOARD_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(BOARD_STATUSES)}",
                         code="bad_field")
    if kept["seen"] and kept["seen"] not in _SEEN_WITHIN:
        raise BadRequest(f"seen must be one of {', '.join(_SEEN_WITHIN)}", code="bad_field")
    seen = _SEEN_WITHIN.get(kept["seen"])
    found = BoardFilter(silent_before=_silent_before(request),
                        search=kept["q"] or None, tag=kept["tag"] or None,
                        channel=kept["channel"] or None, version=kept["version"] or None,
                        status=kept["status"] or None,
                        seen_since=None if seen is None else int(time.time()) - seen)
    return found, kept


@_guard("read")
async def boards(request: web.Request, session: Session) -> web.Response:
    store = request.app[state.STORE]
    board_filter, kept = _board_filter(request)
    after, before = request.query.get("after"), request.query.get("before")
    # One row more than shown tells whether there is a next page.
    rows = await store.board_page(board_filter, after=after, before=None if after else before,
                                  limit=PAGE_SIZE + 1)
    more = len(rows) > PAGE_SIZE
    if before and not after:
        rows = rows[1:] if more else rows
        has_next, has_prev = True, more
    else:
        rows = rows[:PAGE_SIZE]
        has_next, has_prev = more, after is not None
    query = {k: v for k, v in kept.items() if v}
    links = {
        "next": "/ui/boards?" + urlencode({**query, "after": rows[-1][0].device_id})
        if has_next and rows else None,
        "prev": "/ui/boards?" + urlencode({**query, "before": rows[0][0].device_id})
        if has_prev and rows else None,
        "first": "/ui/boards?" + urlencode(query),
    }
    return _render(request, session, "boards.html",
                   {"rows": rows, "kept": kept, "links": links,
                    "matching": await store.count_boards(board_filter),
                    "channels": await store.list_channels(),
                    "versions": await store.board_versions(),
                    "statuses": BOARD_STATUSES, "seen_choices": list(_SEEN_WITHIN)})


@_guard("read")
async def board(request: web.Request, session: Session) -> web.Response:
    store = request.app[state.STORE]
    device_id = request.match_info["device_id"]
    found = await store.device(device_id)
    if found is None:
        raise NotFound(f"no device {device_id[:80]!r}", code="unknown_device")
    status = (await store.board_statuses([device_id], _silent_before(request)))[device_id]
    return _render(request, session, "board.html",
                   {"device": found, "status": status,
                    # newest first; the same history GET /v1/devices/{id} answers
                    "history": list(reversed(await store.device_history(device_id))),
                    "deployments": await store.board_deployments(device_id)})


@_guard("admin")
async def board_revoke(request: web.Request, session: Session) -> web.Response:
    """The Revoke button: the API's own path (revoke_board); the board's page says so."""
    device_id = request.match_info["device_id"]
    request[state.AUDIT_TARGET] = device_id[:80]
    revoked = await revoke_board(request.app[state.STORE], device_id)
    session.tell(f"{device_id}: revoked; its requests are refused from now on "
                 f"(since {_when(revoked['revoked'])}).")
    return _see_other(f"/ui/boards/{quote(device_id, safe='')}")


async def _release_files(request: web.Request, release_id: int) -> list[dict[str, Any]]:
    """The files of a release from its stored manifest (verified when it was registered)."""
    from signing.dsse import parse_envelope
    from signing.manifest import MANIFEST_PAYLOAD_TYPE, Manifest

    envelope = await request.app[state.STORE].envelope(release_id)
    manifest = Manifest.from_payload(parse_envelope(envelope, MANIFEST_PAYLOAD_TYPE).payload)
    return [{"path": f.path, "size": f.size, "sha256": f.sha256, "encoding": f.encoding,
             "transfer_size": f.transfer_size} for f in manifest.files]


@_guard("read")
async def releases(request: web.Request, session: Session) -> web.Response:
    store = request.app[state.STORE]
    pointing: dict[int, list[str]] = {}
    for channel in await store.list_channels():
        current, base = await store.current_rollout(channel), await store.base_release(channel)
        if current is not None and current.state not in ("aborted", "superseded"):
            pointing.setdefault(current.release.id, []).append(
                f"{channel} (rollout, {current.state})")
        if base is not None:
            pointing.setdefault(base.id, []).append(f"{channel} (base)")
    now = int(time.time())
    rows = [{"release": r, "expired": r.expired(now), "channels": pointing.get(r.id, []),
             "rolling": [f"{x.channel} ({x.state})" for x in await store.rollouts_of(r.id)]
             if r.yanked is None else [],
             "files": await _release_files(request, r.id)}
            for r in reversed(await store.list_releases())]
    return _render(request, session, "releases.html", {"rows": rows})


@_guard("publish")
async def release_yank(request: web.Request, session: Session) -> web.Response:
    """The Yank button (and, as its own button, Yank with force): the API's own path (yank);
    a refusal such as `rollout_active` is shown as a message on the releases page."""
    app_name = name(request.match_info["app"], "app")
    version = request.match_info["version"]
    form = await request.post()
    force = form.get("force") == "yes"
    request[state.AUDIT_TARGET] = f"{app_name} {version[:40]}" + (" (force)" if force else "")
    try:
        result = await yank(request.app[state.STORE], app_name, version, force=force)
    except ApiError as err:
        request[ACTION_OUTCOME] = (err.status, err.code)
        hint = "; use “Abort its rollouts and yank” to do both here" \
            if err.code == "rollout_active" else ""
        session.tell(f"{app_name} {version[:40]}: not yanked: {err.message}{hint}.")
    else:
        aborted = result["aborted"]
        session.tell(f"{app_name} {version}: yanked; no board is offered it from now on"
                     + (f" (rollouts aborted on {', '.join(aborted)})." if aborted else "."))
    return _see_other(f"/ui/releases#release-{quote(app_name)}-{quote(version[:40])}")


@_guard("read")
async def audit(request: web.Request, session: Session) -> web.Response:
    """The audit log, newest first: ?limit= (default 100, at most 1000) and ?actor=, checked
    as GET /v1/audit checks them (audit_entries)."""
    limit = request.query.get("limit", AUDIT_ROWS)
    actor = request.query.get("actor", "").strip()[:100] or None
    entries = await audit_entries(request.app[state.STORE], limit, actor)
    return _render(request, session, "audit.html",
                   {"entries": list(reversed(entries)), "limit": int(limit),
                    "actor": actor or "", "bounded": len(entries) == int(limit)})


# -- live -------------------------------------------------------------------------------------

@_guard("read", page=False)
async def live(request: web.Request, session: Session) -> web.Response:
    """The little JSON the pages poll: rollout progress, fleet status counts (with
    ?fleet=1), and the status of the boards named in ?boards=a,b (at most 200). Each poll
    is a few short queries on the server's one store connection; nothing stays open."""
    store = request.app[state.STORE]
    silent_before = _silent_before(request)
    out: dict[str, Any] = {"rollouts": {}}
    for row in await _rollout_rows(request):
        current = row["status"]["rollout"]
        if current is None:
            continue
        out["rollouts"][row["channel"]] = {
            "state": current["state"], "stage": current["stage"] + 1,
            "stages": len(current["stages"]), "counts": current["counts"],
            "reason": current["reason"], "eligible": row["eligible"],
            "failure_rate": row["failure_rate"]}
    if request.query.get("fleet") == "1":
        out["fleet"] = (await store.fleet_counts(silent_before)).by_status
    wanted = [b for b in request.query.get("boards", "").split(",") if b]
    if len(wanted) > _MAX_LIVE_BOARDS:
        raise BadRequest(f"live: at most {_MAX_LIVE_BOARDS} boards", code="bad_field")
    if wanted:
        out["boards"] = await store.board_statuses(wanted, silent_before)
    return web.json_response(out)


# -- static files -----------------------------------------------------------------------------

def _load_static() -> dict[str, bytes]:
    folder = resources.files("ota_server.ui") / "static"
    return {n: (folder / n).read_bytes() for n in _STATIC}


_STATIC_FILES = _load_static()


@public
async def static(request: web.Request) -> web.Response:
    """The dashboard's CSS and script, from the package (no CDN: works offline)."""
    file_name = request.match_info["name"]
    body = _STATIC_FILES.get(file_name)
    if body is None:
        raise NotFound("no such file", code="not_found")
    kind = _STATIC_TYPES[file_name.rsplit(".", 1)[1]]
    return web.Response(body=body, content_type=kind, charset="utf-8",
                        headers={"Cache-Control": "max-age=300",
                                 "X-Content-Type-Options": "nosniff"})


# -- formatting -------------------------------------------------------------------------------

def _when(value: int | None) -> str:
    if value is None:
        return "never"
    return rollout.iso_utc(int(value)).replace("T", " ").replace("Z", " UTC")


def _ago(value: int | None) -> str:
    if value is None:
        return "never"
    seconds = max(0, int(time.time()) - int(value))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/ui", home),
    ("GET", "/ui/", home),
    ("GET", "/ui/login", login_page),
    ("POST", "/ui/login", login),
    ("POST", "/ui/logout", logout),
    ("GET", "/ui/fleet", fleet),
    ("GET", "/ui/rollouts", rollouts),
    ("POST", "/ui/rollouts/{channel}/{action}", rollout_action),
    ("GET", "/ui/boards", boards),
    ("GET", "/ui/boards/{device_id}", board),
    ("POST", "/ui/boards/{device_id}/revoke", board_revoke),
    ("GET", "/ui/releases", releases),
    ("POST", "/ui/releases/{app}/{version}/yank", release_yank),
    ("GET", "/ui/audit", audit),
    ("GET", "/ui/live.json", live),
    ("GET", "/ui/static/{name}", static),
]
