"""Device API against create_app: check-in, root metadata, blobs, reports, inventory."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from server_support import ServerEnv, SimBoard, query_rows, store_fingerprint

from ota_server import state
from ota_server.device_auth import sign_request
from signing.root import RootMetadata
from signing.verify import verify_manifest

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _without_counters(fingerprint: dict) -> dict:
    # An authentic request spends its counter even when its body is then refused.
    return {k: v for k, v in fingerprint.items() if k != "counters"}


async def test_board_signing_exactly_as_the_protocol_doc_says_is_accepted(
        env: ServerEnv) -> None:
    """Independent of ota_server's helpers: the string and signature built from the doc."""
    board = await env.add_board(SimBoard("doc-board"))
    body = board.checkin_body()
    path = "/v1/device/checkin"
    counter = 1700000000
    text = "\n".join(["mpota-req-v1", "POST", path, board.device_id, str(counter),
                      hashlib.sha256(body).hexdigest()]).encode()
    r, s = decode_dss_signature(board.key.sign(text, ec.ECDSA(hashes.SHA256())))
    s = min(s, P256_N - s)
    import base64
    sig = base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode()
    header = f"Mpota-P256 id={board.device_id},ctr={counter},sig={sig}"
    resp = await env.client.post(path, data=body, headers={"Authorization": header})
    assert resp.status == 204, await resp.text()
    again = await env.client.post(path, data=body, headers={"Authorization": header})
    assert again.status == 401
    assert (await again.json())["code"] == "replay"


async def _counter(env: ServerEnv, device_id: str) -> int:
    rows = await query_rows(env.settings, "SELECT counter FROM devices WHERE device_id = ?",
                            device_id)
    return int(rows[0][0])


async def _code(resp: Any) -> tuple[int, str | None]:
    return resp.status, (await resp.json())["code"] if resp.status >= 400 else None


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "never-seen"])
async def test_a_revoked_board_gets_the_answers_of_the_doc_kept_or_not(
        env: ServerEnv, kept: bool) -> None:
    """The server keeps a board's identity once a request of it passed, and reads only the
    identity of a board it does not keep (ota_server.device_auth): either way a revocation
    holds from the next request on, in the order of checks docs/protocol.md gives (revoked
    before bad signature and replay), and the board's counter does not move."""
    board = await env.add_board(SimBoard("gone"))
    if kept:
        assert (await env.checkin(board)).status == 204
    assert ("gone" in env.app[state.DEVICE_AUTH]._boards) is kept  # what this test is about
    revoked = await env.client.post("/v1/devices/gone/revoke", headers=env.bearer)
    assert revoked.status == 200
    spent = await _counter(env, "gone")
    assert await _code(await env.checkin(board)) == (403, "revoked")
    body = board.checkin_body()
    forged = sign_request(SimBoard("someone-else").key, "gone", spent + 10, "POST",
                          "/v1/device/checkin", body)
    assert await _code(await env.client.post(
        "/v1/device/checkin", data=body, headers={"Authorization": forged})) == (403, "revoked")
    replayed = sign_request(board.key, "gone", max(spent, 0), "POST", "/v1/device/checkin",
                            body)
    assert await _code(await env.client.post(
        "/v1/device/checkin", data=body, headers={"Authorization": replayed})) == (403, "revoked")
    assert await _counter(env, "gone") == spent


async def test_a_kept_board_gets_the_answers_of_an_unkept_one(env: ServerEnv) -> None:
    """Bad signature and replay of a board whose identity is kept: the same codes as before."""
    board = await env.add_board(SimBoard("kept"))
    assert (await env.checkin(board)).status == 204
    body = board.checkin_body()
    forged = sign_request(SimBoard("someone-else").key, "kept", board.counter + 5, "POST",
                          "/v1/device/checkin", body)
    assert await _code(await env.client.post(
        "/v1/device/checkin", data=body, headers={"Authorization": forged})) == (
            401, "bad_signature")
    replayed = sign_request(board.key, "kept", board.counter, "POST", "/v1/device/checkin",
                            body)
    assert await _code(await env.client.post(
        "/v1/device/checkin", data=body, headers={"Authorization": replayed})) == (401, "replay")
    assert (await env.checkin(board)).status == 204


async def test_an_unknown_board_is_not_kept_and_is_served_once_registered(
        env: ServerEnv) -> None:
    board = SimBoard("late")
    assert await _code(await env.checkin(board)) == (401, "unknown_device")
    assert "late" not in env.app[state.DEVICE_AUTH]._boards
    await env.add_board(board)
    assert (await env.checkin(board)).status == 204


async def test_checkin_says_nothing_new_then_offers_the_release(env: ServerEnv) -> None:
    board = await env.add_board(SimBoard("b1"))
    assert (await env.checkin(board)).status == 204
    await env.publish({"app_main.py": b"print('v1')\n"}, version="1.0.0", sequence=1)
    assert (await env.checkin(board)).status == 204  # registered but not rolled out
    await env.start_rollout("stable", "demo", 1, percent=100)
    resp = await env.checkin(board)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/vnd.dsse+json"
    envelope = await resp.read()
    root = RootMetadata.from_payload(_root_payload(env.keys.root_path))
    manifest = verify_manifest(envelope, root, now=int(time.time()), board="unix",
                               installed_sequence=0)
    assert (manifest.app, manifest.sequence) == ("demo", 1)
    # the board runs it now: nothing new
    board.sequence = 1
    assert (await env.checkin(board)).status == 204


def _root_payload(path: Path) -> bytes:
    import base64
    return base64.b64decode(json.loads(path.read_bytes())["payload"])


async def test_release_for_another_board_type_is_not_offered(env: ServerEnv) -> None:
    esp = await env.add_board(SimBoard("esp-1", board="esp32"))
    unix = await env.add_board(SimBoard("unix-1"))
    await env.publish({"app_main.py": b"x\n"}, version="1.0.0", sequence=1, boards=("esp32",))
    await env.start_rollout("stable", "demo", 1, percent=100)
    assert (await env.checkin(esp)).status == 200
    assert (await env.checkin(unix)).status == 204


async def test_checkin_records_inventory(env: ServerEnv) -> None:
    board = await env.add_board(SimBoard("inv-1"))
    resp = await env.checkin(board, version="0.9.0", micropython="1.25.0", mem_free=12345,
                             slot="b")
    assert resp.status == 204
    shown = await (await env.client.get("/v1/devices/inv-1", headers=env.bearer)).json()
    assert (shown["version"], shown["micropython"], shown["mem_free"], shown["slot"]) == \
        ("0.9.0", "1.25.0", 12345, "b")
    assert abs(shown["last_seen"] - time.time()) < 60


async def test_newer_root_is_announced_and_served(env: ServerEnv) -> None:
    board = await env.add_board(SimBoard("r-1"))
    resp = await env.checkin(board, root_version=1)
    assert "X-Ota-Root" not in resp.headers
    rotated, _ = env.keys.rotated_root(version=2)
    assert (await env.client.post("/v1/roots", data=rotated, headers=env.bearer)).status == 201
    resp = await env.checkin(board, root_version=1)
    assert resp.headers["X-Ota-Root"] == "2"
    path = "/v1/device/root/2"
    served = await env.client.get(path, headers=board.auth("GET", path))
    assert served.status == 200
    assert await served.read() == rotated
    path = "/v1/device/root/7"
    missing = await env.client.get(path, headers=board.auth("GET", path))
    assert missing.status == 404
    assert (await missing.json())["code"] == "unknown_root"


async def test_blobs_support_range_strong_etag_and_immutable_caching(env: ServerEnv) -> None:
    board = await env.add_board(SimBoard("blob-1"))
    data = bytes(range(256)) * 40
    sha = hashlib.sha256(data).hexdigest()
    assert (await env.client.put(f"/v1/blobs/{sha}", data=data, headers=env.bearer)).status \
        == 201
    full = await env.get_blob(board, sha)
    assert full.status == 200
    assert await full.read() == data
    assert full.headers["ETag"] == f'"{sha}"'
    assert full.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    part = await env.get_blob(board, sha, Range="bytes=100-199")
    assert part.status == 206
    assert await part.read() == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    tail = await env.get_blob(board, sha, Range="bytes=10000-", **{"If-Range": f'"{sha}"'})
    assert tail.status == 206
    assert await tail.read() == data[10000:]
    stale = await env.get_blob(board, sha, Range="bytes=0-9", **{"If-Range": '"other"'})
    assert stale.status == 200
    assert await stale.read() == data
    suffix = await env.get_blob(board, sha, Range="bytes=-16")
    assert suffix.status == 206
    assert await suffix.read() == data[-16:]
    beyond = await env.get_blob(board, sha, Range=f"bytes={len(data)}-")
    assert beyond.status == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(data)}"
    junk = await env.get_blob(board, sha, Range="bytes=zz")
    assert junk.status == 416
    cached = await env.get_blob(board, sha, **{"If-None-Match": f'"{sha}"'})
    assert cached.status == 304
    assert cached.headers["ETag"] == f'"{sha}"'
    path = f"/v1/blobs/{sha}"
    head = await env.client.head(path, headers=board.auth("HEAD", path))
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == len(data)
    absent = await env.get_blob(board, "e" * 64)
    assert absent.status == 404
    assert (await absent.json())["code"] == "unknown_blob"
    metrics = await (await env.client.get("/metrics")).text()
    line = next(x for x in metrics.splitlines() if x.startswith("mpota_blob_bytes_served_total"))
    assert float(line.split()[-1]) == len(data) * 2 + 100 + (len(data) - 10000) + 16


async def test_reports_move_the_deployment_and_the_inventory(env: ServerEnv) -> None:
    board = await env.add_board(SimBoard("rep-1"))
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, percent=100)
    assert (await env.checkin(board)).status == 200
    for status in ("downloading", "installed", "confirmed"):
        resp = await env.report(board, status, 1)
        assert resp.status == 204, await resp.text()
    shown = await (await env.client.get("/v1/devices/rep-1", headers=env.bearer)).json()
    assert (shown["version"], shown["sequence"], shown["last_status"]) == \
        ("1.0.0", 1, "confirmed")
    # a late, reordered report does not undo a confirmation
    assert (await env.report(board, "downloading", 1)).status == 204
    rollout = await env.rollout()
    assert rollout["counts"]["confirmed"] == 1
    assert rollout["counts"]["downloading"] == 0


async def test_rolled_back_report_naming_the_running_version_counts_for_the_new_release(
        env: ServerEnv) -> None:
    board = await env.add_board(SimBoard("rb-1"))
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.publish({"app_main.py": b"v2\n"}, version="2.0.0", sequence=2)
    await env.start_rollout("stable", "demo", 2, percent=100)
    board.sequence = 1
    assert (await env.checkin(board)).status == 200
    assert (await env.report(board, "installed", 2)).status == 204
    resp = await env.report(board, "rolled_back", 1, reason="no health check")
    assert resp.status == 204
    rollout = await env.rollout()
    assert rollout["counts"]["rolled_back"] == 1
    shown = await (await env.client.get("/v1/devices/rb-1", headers=env.bearer)).json()
    assert shown["last_error"] == "no health check"


@pytest.mark.parametrize(("body", "code"), [
    (b"{not json", "bad_json"),
    (b"[1, 2]", "bad_json"),
    (json.dumps({"app": "demo", "sequence": "1", "status": "confirmed"}).encode(), "bad_field"),
    (json.dumps({"app": "demo", "sequence": 1, "status": "exploded"}).encode(), "bad_status"),
    (json.dumps({"app": "demo", "sequence": -1, "status": "failed"}).encode(), "bad_field"),
    (json.dumps({"app": "../x", "sequence": 1, "status": "failed"}).encode(), "bad_name"),
    (json.dumps({"app": "demo", "status": "failed"}).encode(), "bad_field"),
    (json.dumps({"app": "demo", "sequence": 1, "status": "failed",
                 "reason": "x" * 1000}).encode(), "bad_field"),
])
async def test_bad_reports_get_400_and_change_nothing(env: ServerEnv, body: bytes,
                                                     code: str) -> None:
    board = await env.add_board(SimBoard("bad-1"))
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    before = await store_fingerprint(env.settings)
    resp = await env.client.post("/v1/device/report", data=body,
                                 headers=board.auth("POST", "/v1/device/report", body))
    assert resp.status == 400, await resp.text()
    doc = await resp.json()
    assert doc["code"] == code
    assert doc["message"]
    assert _without_counters(await store_fingerprint(env.settings)) == _without_counters(before)


async def test_report_for_an_unknown_app_is_404_and_changes_nothing(env: ServerEnv) -> None:
    board = await env.add_board(SimBoard("unk-1"))
    before = await store_fingerprint(env.settings)
    resp = await env.report(board, "confirmed", 3)
    assert resp.status == 404
    assert (await resp.json())["code"] == "unknown_release"
    assert _without_counters(await store_fingerprint(env.settings)) == _without_counters(before)


@pytest.mark.parametrize(("extra", "field"), [
    ({"sequence": "5"}, "sequence"),
    ({"sequence": True}, "sequence"),
    ({"mem_free": 1.5}, "mem_free"),
    ({"root_version": -2}, "root_version"),
    ({"app": ["demo"]}, "app"),
    ({"board": "x" * 100}, "board"),
])
async def test_checkin_with_wrong_types_gets_400_naming_the_field(
        env: ServerEnv, extra: dict, field: str) -> None:
    board = await env.add_board(SimBoard("types-1"))
    before = await store_fingerprint(env.settings)
    resp = await env.checkin(board, **extra)
    assert resp.status == 400
    doc = await resp.json()
    assert field in doc["message"]
    assert _without_counters(await store_fingerprint(env.settings)) == _without_counters(before)


async def test_device_body_over_the_cap_is_413(env: ServerEnv) -> None:
    board = await env.add_board(SimBoard("big-1"))
    before = await store_fingerprint(env.settings)
    body = board.checkin_body(padding="x" * 10_000)
    resp = await env.client.post("/v1/device/checkin", data=body,
                                 headers=board.auth("POST", "/v1/device/checkin", body))
    assert resp.status == 413
    assert (await resp.json())["code"] == "too_large"
    assert (await store_fingerprint(env.settings)) == before
