"""An expired release is offered to no board, and `ota rollout status` and /metrics say so
(docs/operations.md, "Expired releases"). Releases here expire a few seconds after they are
signed, and the tests wait for it on the real clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from server_support import Backend, ServerEnv, SimBoard

from signing.bundle import build_bundle, sign_bundle
from tools.cli import main

LIFETIME = 3  # seconds between signing and expiry: enough to register and be offered once


def _short_lived(env: ServerEnv, version: str, sequence: int) -> tuple[Path, int]:
    """A signed bundle of demo `version` that expires LIFETIME seconds from now."""
    app = env.workdir / f"short-{sequence}"
    app.mkdir()
    (app / "app_main.py").write_text(f"print({version!r})\n")
    out = env.workdir / f"short-bundle-{sequence}"
    now = int(time.time())
    build_bundle(app, out, version=version, sequence=sequence, boards=("unix",),
                 entry="app_main", min_micropython="1.20.0", mpy=False, deflate=False,
                 created=now, expires=now + LIFETIME, app="demo")
    sign_bundle(out, env.keys.release_key)
    return out, now + LIFETIME


def _wait_past(moment: int) -> None:
    while time.time() < moment + 0.05:
        time.sleep(max(0.0, moment + 0.05 - time.time()))


async def test_an_expired_rollout_release_is_offered_to_no_board(env: ServerEnv) -> None:
    boards = [await env.add_board(SimBoard(f"e-{i}")) for i in range(3)]
    bundle, expires = _short_lived(env, "1.0.0", 1)
    await env.upload_bundle(bundle)
    await env.start_rollout("stable", "demo", 1, percent=100)
    assert (await env.checkin(boards[0])).status == 200
    assert (await env.report(boards[0], "downloading", 1)).status == 204
    _wait_past(expires)
    for board in boards:  # a board that started it too: it would refuse the manifest now
        assert (await env.checkin(board)).status == 204
    status = await (await env.client.get("/v1/channels/stable/rollout",
                                         headers=env.bearer)).json()
    assert status["rollout"]["release"]["expired"] is True
    assert status["rollout"]["release"]["expires"] == expires
    text = await (await env.client.get("/metrics")).text()
    assert 'mpota_release_expired{channel="stable",release="rollout"} 1' in text
    assert f'mpota_release_expires_seconds{{channel="stable",release="rollout"}} {expires}' \
        in text


async def test_an_expired_base_is_not_offered_but_a_live_rollout_is(env: ServerEnv) -> None:
    outside = await env.add_board(SimBoard("outside"))
    canary = await env.add_board(SimBoard("canary", tags=("canary",)))
    bundle, expires = _short_lived(env, "1.0.0", 1)
    await env.upload_bundle(bundle)
    await env.start_rollout("stable", "demo", 1, percent=100)
    await env.publish({"app_main.py": b"v2\n"}, version="2.0.0", sequence=2)
    await env.start_rollout("stable", "demo", 2, policy={"stages": [{"tag": "canary"},
                                                                    {"percent": 100}]})
    assert (await env.checkin(outside)).status == 200  # the base, still valid
    _wait_past(expires)
    assert (await env.checkin(outside)).status == 204
    assert (await env.checkin(canary)).status == 200
    text = await (await env.client.get("/metrics")).text()
    assert 'mpota_release_expired{channel="stable",release="base"} 1' in text
    assert 'mpota_release_expired{channel="stable",release="rollout"} 0' in text


async def test_a_rollout_of_an_expired_release_is_refused(env: ServerEnv) -> None:
    bundle, expires = _short_lived(env, "1.0.0", 1)
    await env.upload_bundle(bundle)
    _wait_past(expires)
    resp = await env.client.post("/v1/channels/stable/rollout", headers=env.bearer,
                                 json={"app": "demo", "sequence": 1, "percent": 100})
    assert resp.status == 409
    assert (await resp.json())["code"] == "release_expired"


def test_rollout_status_shows_an_expired_release(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], backend: Backend) -> None:
    from server_support import FleetKeys

    from tools.local_server import LocalServer

    keys = FleetKeys.create(tmp_path)
    with LocalServer(tmp_path / "data", keys.root_path, **backend.urls) as srv:
        env = ServerEnv(None, None, srv.token, keys, tmp_path)  # type: ignore[arg-type]
        bundle, expires = _short_lived(env, "1.0.0", 1)
        srv.client().publish(bundle, channel="stable", percent=100)
        monkeypatch.setenv("MPOTA_TOKEN", srv.token)
        monkeypatch.setenv("MPOTA_SERVER", srv.url)
        assert main(["rollout", "status", "stable"]) == 0
        assert "EXPIRED" not in capsys.readouterr().out
        _wait_past(expires)
        assert main(["rollout", "status", "stable"]) == 0
        out = capsys.readouterr().out
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        assert f"EXPIRED {stamp}" in out
        assert "no board is offered it" in out
