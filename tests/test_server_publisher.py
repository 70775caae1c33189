"""Publisher API against create_app: blobs, releases, roots, boards, and bad input."""

from __future__ import annotations

import base64
import json

import pytest
from server_support import (
    ServerEnv,
    SimBoard,
    bundle_blobs,
    make_bundle,
    sha256_hex,
    store_fingerprint,
    stored_blob,
    upload_temporaries,
)

from signing import keys as keymod
from signing.manifest import MANIFEST_PAYLOAD_TYPE


async def test_blob_upload_is_content_addressed_and_idempotent(env: ServerEnv) -> None:
    data = b"hello blob" * 100
    sha = sha256_hex(data)
    first = await env.client.put(f"/v1/blobs/{sha}", data=data, headers=env.bearer)
    assert first.status == 201
    again = await env.client.put(f"/v1/blobs/{sha}", data=data, headers=env.bearer)
    assert again.status == 200
    assert (await again.json())["created"] is False
    assert await stored_blob(env.settings, sha) == data
    missing = await env.client.post("/v1/blobs/missing", json={"blobs": [sha, "a" * 64]},
                                    headers=env.bearer)
    assert (await missing.json()) == {"missing": ["a" * 64]}


async def test_blob_whose_bytes_do_not_hash_to_its_id_is_refused_and_not_stored(
        env: ServerEnv) -> None:
    before = await store_fingerprint(env.settings)
    resp = await env.client.put(f"/v1/blobs/{'0' * 64}", data=b"other bytes", headers=env.bearer)
    assert resp.status == 400
    assert (await resp.json())["code"] == "hash_mismatch"
    assert (await store_fingerprint(env.settings)) == before
    assert upload_temporaries(env.settings) == []


async def test_huge_blob_is_refused_with_413_and_leaves_nothing(env: ServerEnv) -> None:
    limit = env.settings.limits.max_blob_bytes
    before = await store_fingerprint(env.settings)

    async def stream():  # no Content-Length: the cap must hold while streaming
        chunk = b"x" * (1 << 20)
        for _ in range(limit // len(chunk) + 2):
            yield chunk

    resp = await env.client.put(f"/v1/blobs/{'1' * 64}", data=stream(), headers=env.bearer)
    assert resp.status == 413
    assert (await resp.json())["code"] == "too_large"
    assert (await store_fingerprint(env.settings)) == before
    assert upload_temporaries(env.settings) == []


@pytest.mark.parametrize("blob_id", [
    "../../etc/passwd", "..%2F..%2Fmpota.sqlite3", "A" * 64, "0" * 63, "0" * 65,
    "g" * 64, "0" * 62 + "/x",
])
async def test_path_tricks_in_blob_ids_are_refused(env: ServerEnv, blob_id: str) -> None:
    before = await store_fingerprint(env.settings)
    resp = await env.client.put(f"/v1/blobs/{blob_id}", data=b"x", headers=env.bearer)
    assert resp.status in (400, 404)
    body = await resp.json()
    assert body["code"] in ("bad_blob_id", "not_found")
    assert body["message"]
    assert (await store_fingerprint(env.settings)) == before


async def test_release_registers_after_its_blobs_and_is_listed(env: ServerEnv) -> None:
    release = await env.publish({"app_main.py": b"print(1)\n"}, version="1.0.0", sequence=1)
    assert (release["app"], release["version"], release["sequence"]) == ("demo", "1.0.0", 1)
    listed = await (await env.client.get("/v1/releases?app=demo", headers=env.bearer)).json()
    assert [r["sequence"] for r in listed["releases"]] == [1]


async def test_same_envelope_registers_idempotently_for_retries(env: ServerEnv) -> None:
    bundle = make_bundle(env.workdir, {"app_main.py": b"x=1\n"}, version="1.0.0", sequence=1,
                         key=env.keys.release_key)
    first = await env.upload_bundle(bundle)
    resp = await env.client.post("/v1/releases",
                                 data=(bundle / "manifest.dsse.json").read_bytes(),
                                 headers=env.bearer)
    assert resp.status == 200
    assert (await resp.json())["id"] == first["id"]


async def test_release_with_missing_blob_is_refused_and_nothing_registered(
        env: ServerEnv) -> None:
    bundle = make_bundle(env.workdir, {"app_main.py": b"x=1\n", "lib/a.py": b"a=2\n"},
                         version="1.0.0", sequence=1, key=env.keys.release_key)
    one_sha, one_data = next(iter(bundle_blobs(bundle).items()))
    await env.client.put(f"/v1/blobs/{one_sha}", data=one_data, headers=env.bearer)
    before = await store_fingerprint(env.settings)
    resp = await env.client.post("/v1/releases",
                                 data=(bundle / "manifest.dsse.json").read_bytes(),
                                 headers=env.bearer)
    assert resp.status == 409
    assert (await resp.json())["code"] == "missing_blobs"
    assert (await store_fingerprint(env.settings)) == before


async def test_release_signed_by_an_unknown_key_is_refused(env: ServerEnv) -> None:
    bundle = make_bundle(env.workdir, {"app_main.py": b"x=1\n"}, version="1.0.0", sequence=1,
                         key=keymod.generate_private_key())
    for sha, data in bundle_blobs(bundle).items():
        await env.client.put(f"/v1/blobs/{sha}", data=data, headers=env.bearer)
    before = await store_fingerprint(env.settings)
    resp = await env.client.post("/v1/releases",
                                 data=(bundle / "manifest.dsse.json").read_bytes(),
                                 headers=env.bearer)
    assert resp.status == 422
    body = await resp.json()
    assert body["code"] == "signature_threshold"
    assert "ThresholdError" in body["message"]
    assert (await store_fingerprint(env.settings)) == before


async def test_sequence_must_grow_per_app(env: ServerEnv) -> None:
    await env.publish({"app_main.py": b"v=2\n"}, version="1.0.1", sequence=2)
    bundle = make_bundle(env.workdir, {"app_main.py": b"v=1\n"}, version="1.0.0", sequence=1,
                         key=env.keys.release_key)
    for sha, data in bundle_blobs(bundle).items():
        await env.client.put(f"/v1/blobs/{sha}", data=data, headers=env.bearer)
    before = await store_fingerprint(env.settings)
    resp = await env.client.post("/v1/releases",
                                 data=(bundle / "manifest.dsse.json").read_bytes(),
                                 headers=env.bearer)
    assert resp.status == 409
    assert (await resp.json())["code"] == "sequence_not_greater"
    assert (await store_fingerprint(env.settings)) == before
    # another app has its own sequence
    await env.publish({"app_main.py": b"other\n"}, version="0.1.0", sequence=1, app="other")


def _tampered(envelope: bytes) -> bytes:
    doc = json.loads(envelope)
    payload = json.loads(base64.b64decode(doc["payload"]))
    payload["version"] = "9.9.9"
    doc["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"not json at all", 422, "malformed"),
    (b"[]", 422, "malformed"),
    (b'{"payloadType": 5, "payload": "", "signatures": []}', 422, "malformed"),
    (json.dumps({"payloadType": "application/other", "payload": "",
                 "signatures": []}).encode(), 422, "wrong_payload_type"),
    (json.dumps({"payloadType": MANIFEST_PAYLOAD_TYPE, "payload": "!!notbase64",
                 "signatures": []}).encode(), 422, "malformed"),
    (b"{" + b" " * 300_000 + b"}", 413, "too_large"),       # over the server's read cap
    (b'{"x": "' + b"a" * 20_000 + b'"}', 413, "too_large"),  # over the board's envelope cap
])
async def test_bad_envelopes_get_4xx_and_change_nothing(env: ServerEnv, body: bytes,
                                                         status: int, code: str) -> None:
    before = await store_fingerprint(env.settings)
    resp = await env.client.post("/v1/releases", data=body, headers=env.bearer)
    assert resp.status == status, await resp.text()
    doc = await resp.json()
    assert doc["code"] == code
    assert doc["message"]
    assert (await store_fingerprint(env.settings)) == before


async def test_tampered_payload_is_refused(env: ServerEnv) -> None:
    bundle = make_bundle(env.workdir, {"app_main.py": b"x=1\n"}, version="1.0.0", sequence=1,
                         key=env.keys.release_key)
    for sha, data in bundle_blobs(bundle).items():
        await env.client.put(f"/v1/blobs/{sha}", data=data, headers=env.bearer)
    resp = await env.client.post(
        "/v1/releases", data=_tampered((bundle / "manifest.dsse.json").read_bytes()),
        headers=env.bearer)
    assert resp.status == 422
    assert (await resp.json())["code"] == "signature_threshold"


async def test_root_rotation_is_verified(env: ServerEnv) -> None:
    rotated, _ = env.keys.rotated_root(version=2)
    skipping, _ = env.keys.rotated_root(version=3)
    bad = await env.client.post("/v1/roots", data=skipping, headers=env.bearer)
    assert bad.status == 422
    assert (await bad.json())["code"] == "bad_rotation"
    ok = await env.client.post("/v1/roots", data=rotated, headers=env.bearer)
    assert ok.status == 201
    roots = await (await env.client.get("/v1/roots", headers=env.bearer)).json()
    assert roots == {"versions": [1, 2], "latest": 2}
    # a root signed only by a stranger cannot follow
    stranger = keymod.generate_private_key()
    from signing.root import new_root, sign_root
    forged = sign_root(new_root(version=3, expires=2**40, root_keys=[stranger],
                                release_keys=[stranger]), [stranger])
    refused = await env.client.post("/v1/roots", data=forged, headers=env.bearer)
    assert refused.status == 422
    assert (await refused.json())["code"] == "signature_threshold"


async def test_device_registration_revocation_and_listing(env: ServerEnv) -> None:
    board = SimBoard("board-1", tags=("canary",))
    added = await env.client.post("/v1/devices", json=board.registration(), headers=env.bearer)
    assert added.status == 201
    again = await env.client.post("/v1/devices", json=board.registration(), headers=env.bearer)
    assert again.status == 200  # a station retry
    other_key = SimBoard("board-1")
    clash = await env.client.post("/v1/devices", json=other_key.registration(),
                                  headers=env.bearer)
    assert clash.status == 409
    assert (await clash.json())["code"] == "device_exists"
    shown = await (await env.client.get("/v1/devices/board-1", headers=env.bearer)).json()
    assert shown["tags"] == ["canary"]
    assert base64.b64decode(shown["public_key"]) == board.point
    assert "counter" not in shown
    revoked = await env.client.post("/v1/devices/board-1/revoke", headers=env.bearer)
    assert (await revoked.json())["revoked"] is not None
    listed = await (await env.client.get("/v1/devices", headers=env.bearer)).json()
    assert [d["device_id"] for d in listed["devices"]] == ["board-1"]


@pytest.mark.parametrize(("body", "code"), [
    (b"{junk", "bad_json"),
    (b'"a string"', "bad_json"),
    (json.dumps({"device_id": 5, "public_key": "x", "board": "unix"}).encode(), "bad_field"),
    (json.dumps({"device_id": "../x", "public_key": "AA==", "board": "unix"}).encode(),
     "bad_device_id"),
    (json.dumps({"device_id": "b1", "public_key": "not base64!", "board": "unix"}).encode(),
     "bad_public_key"),
    (json.dumps({"device_id": "b1", "public_key": base64.b64encode(b"\x04" + b"\x01" * 64)
                 .decode(), "board": "unix"}).encode(), "bad_public_key"),
    (json.dumps({"device_id": "b1", "board": "unix"}).encode(), "bad_field"),
    (json.dumps({"device_id": "b1", "public_key": base64.b64encode(
        keymod.public_point(keymod.generate_private_key())).decode(), "board": "unix",
        "tags": "canary"}).encode(), "bad_field"),
])
async def test_bad_device_registrations_get_400_and_change_nothing(
        env: ServerEnv, body: bytes, code: str) -> None:
    before = await store_fingerprint(env.settings)
    resp = await env.client.post("/v1/devices", data=body, headers=env.bearer)
    assert resp.status == 400, await resp.text()
    doc = await resp.json()
    assert doc["code"] == code
    assert doc["message"]
    assert (await store_fingerprint(env.settings)) == before


async def test_huge_json_body_is_refused_with_413(env: ServerEnv) -> None:
    before = await store_fingerprint(env.settings)
    body = json.dumps({"device_id": "b1", "padding": "x" * 1_000_000}).encode()
    resp = await env.client.post("/v1/devices", data=body, headers=env.bearer)
    assert resp.status == 413
    assert (await resp.json())["code"] == "too_large"
    assert (await store_fingerprint(env.settings)) == before


@pytest.mark.parametrize(("payload", "status", "code"), [
    ({"app": "nope", "sequence": 1}, 404, "unknown_release"),
    ({"app": "demo", "sequence": "1"}, 400, "bad_field"),
    ({"app": "demo", "sequence": 1, "percent": 0}, 400, "bad_policy"),
    ({"app": "demo", "sequence": 1, "policy": {"stages": [{"percent": 150}]}}, 400,
     "bad_policy"),
    ({"app": "demo", "sequence": 1, "policy": {"stages": [{"tag": "a", "percent": 5}]}}, 400,
     "bad_policy"),
    ({"app": "demo", "sequence": 1, "policy": {"failure_threshold": "high"}}, 400,
     "bad_policy"),
    ({"app": "demo", "sequence": 1, "policy": {"surprise": 1}}, 400, "bad_policy"),
])
async def test_bad_rollout_requests_get_4xx_and_change_nothing(
        env: ServerEnv, payload: dict, status: int, code: str) -> None:
    await env.publish({"app_main.py": b"x=1\n"}, version="1.0.0", sequence=1)
    before = await store_fingerprint(env.settings)
    resp = await env.client.post("/v1/channels/stable/rollout", json=payload, headers=env.bearer)
    assert resp.status == status, await resp.text()
    assert (await resp.json())["code"] == code
    assert (await store_fingerprint(env.settings)) == before


async def test_unknown_route_and_method_answer_json_errors(env: ServerEnv) -> None:
    missing = await env.client.get("/v1/nothing-here", headers=env.bearer)
    assert missing.status == 404
    assert (await missing.json())["code"] == "not_found"
    wrong = await env.client.delete("/v1/releases", headers=env.bearer)
    assert wrong.status == 405
    assert (await wrong.json())["code"] == "method_not_allowed"

