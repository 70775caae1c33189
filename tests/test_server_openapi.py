"""/openapi.json against the real route table, /metrics, /healthz, JSON logs."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from server_support import ServerEnv, SimBoard

from ota_server.app import create_app
from ota_server.logs import JsonFormatter
from ota_server.middleware import auth_kind, required_scope
from ota_server.settings import Settings


def _real_routes() -> dict[tuple[str, str], tuple[str | None, str | None]]:
    """(method, path) -> (auth kind, token scope) of every route but HEAD."""
    app = create_app(Settings(data_dir=Path("/nonexistent")))
    out = {}
    for route in app.router.routes():
        if route.method == "HEAD":
            continue  # implied by GET in OpenAPI
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path.startswith("/ui"):
            continue  # the dashboard's HTML pages, not the API: docs/dashboard.md lists them
        out[(route.method.lower(), path)] = (auth_kind(route.handler),
                                             required_scope(route.handler))
    return out


async def test_openapi_documents_every_real_route_and_no_other(env: ServerEnv) -> None:
    resp = await env.client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    real = _real_routes()
    assert documented == set(real)
    # and each documents the auth the route really requires, publisher routes their scope
    for (method, path), (kind, scope) in real.items():
        # a download takes either credential: each is its own requirement object (OR)
        expected = {"public": [], "device": [{"deviceSignature": []}],
                    "download": [{"deviceSignature": []}, {"downloadGrant": []}],
                    "publisher": [{"publisherToken": [scope]}]}[str(kind)]
        assert doc["paths"][path][method]["security"] == expected, (method, path)
        for requirement in expected:
            assert set(requirement) <= set(doc["components"]["securitySchemes"]), (method, path)
        if kind == "publisher":
            assert scope in ("read", "publish", "admin"), (method, path)
            assert "403" in doc["paths"][path][method]["responses"], (method, path)


def test_protocol_doc_names_every_route() -> None:
    text = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    for method, path in _real_routes():
        pattern = re.escape(f"{method.upper()} {path}")
        assert re.search(pattern, text), f"docs/protocol.md does not document {method} {path}"


async def test_healthz(env: ServerEnv) -> None:
    resp = await env.client.get("/healthz")
    assert (resp.status, await resp.json()) == (200, {"status": "ok"})


async def test_metrics_count_checkins_reports_and_show_rollout_state(env: ServerEnv) -> None:
    board = await env.add_board(SimBoard("m-1"))
    await env.checkin(board)
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, percent=100)
    await env.checkin(board)
    await env.report(board, "confirmed", 1)
    await env.client.get("/v1/releases")  # refused: no token
    text = await (await env.client.get("/metrics")).text()
    assert 'mpota_checkins_total{outcome="nothing_new"} 1' in text
    assert 'mpota_checkins_total{outcome="offered"} 1' in text
    assert 'mpota_reports_total{status="confirmed"} 1' in text
    assert 'mpota_rollout_state{channel="stable",state="active"} 1' in text
    assert 'mpota_rollout_state{channel="stable",state="paused"} 0' in text
    assert 'mpota_auth_failures_total{code="missing_credentials"} 1' in text
    assert env.token not in text


def test_json_log_lines_carry_request_fields_and_no_credentials() -> None:
    record = logging.LogRecord("ota_server", logging.INFO, __file__, 1, "%s %s %d",
                               ("POST", "/v1/device/checkin", 204), None)
    record.device_id = "b-1"
    record.status = 204
    line = JsonFormatter().format(record)
    doc = json.loads(line)
    assert doc["message"] == "POST /v1/device/checkin 204"
    assert (doc["device_id"], doc["status"], doc["level"]) == ("b-1", 204, "info")
