"""Hypothesis feeds random and mutated envelopes to the verifiers: only TrustError subclasses
may come out (never KeyError, TypeError, UnicodeError, RecursionError, ...)."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signing import dsse, errors, keys
from signing.manifest import MANIFEST_PAYLOAD_TYPE, FileEntry, Manifest, check_path_set
from signing.root import verify_root, verify_rotation
from signing.verify import verify_manifest

VECTORS = Path(__file__).parent / "vectors"
NOW = 1764000000
ROOT_V1 = verify_root((VECTORS / "root-v1.json").read_bytes(), now=NOW)
GOOD_MANIFEST = (VECTORS / "m-ok-deflate-entry.json").read_bytes()
GOOD_ROTATION = (VECTORS / "r-rotation-v1-to-v2.json").read_bytes()
RELEASE_A = keys.load_private_key(VECTORS / "keys" / "release_a.pem", None)
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12,
)


def _only_trust_errors(envelope: bytes, board: str | None = "unix") -> None:
    with contextlib.suppress(errors.TrustError):
        verify_manifest(envelope, ROOT_V1, now=NOW, board=board, installed_sequence=1)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if action == "flip":
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "delete":
            del data[where]
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[where:]
        if not data:
            break
    return bytes(data)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(data: bytes) -> None:
    _only_trust_errors(data)


@FUZZ
@given(mutated(GOOD_MANIFEST))
def test_mutated_signed_manifest_envelope(data: bytes) -> None:
    _only_trust_errors(data)


@FUZZ
@given(mutated(GOOD_ROTATION))
def test_mutated_rotation_envelope(data: bytes) -> None:
    with contextlib.suppress(errors.TrustError):
        verify_rotation(ROOT_V1, data, now=NOW)


@FUZZ
@given(mutated((VECTORS / "root-2of3.json").read_bytes()))
def test_mutated_self_signed_root(data: bytes) -> None:
    with contextlib.suppress(errors.TrustError):
        verify_root(data, now=NOW)


@FUZZ
@given(st.dictionaries(st.sampled_from(["payloadType", "payload", "signatures", "x"]),
                       json_values | st.just(MANIFEST_PAYLOAD_TYPE), max_size=4))
def test_random_envelope_shapes(doc: dict[str, Any]) -> None:
    _only_trust_errors(json.dumps(doc).encode())


def _valid_manifest() -> dict[str, Any]:
    payload = json.loads(base64.b64decode(json.loads(GOOD_MANIFEST)["payload"]))
    assert isinstance(payload, dict)
    return payload


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.sampled_from(sorted(_valid_manifest())),
       st.sampled_from(sorted(_valid_manifest()["files"][0])), json_values)
def test_validly_signed_manifest_with_one_random_field(
    in_file: bool, field: str, file_field: str, value: Any,
) -> None:
    doc = _valid_manifest()
    if in_file:
        doc["files"][-1][file_field] = value
    else:
        doc[field] = value
    payload = json.dumps(doc).encode()
    envelope = dsse.envelope_bytes(dsse.sign_envelope(MANIFEST_PAYLOAD_TYPE, payload,
                                                      [RELEASE_A]))
    _only_trust_errors(envelope)


@FUZZ
@given(st.binary(max_size=300))
def test_validly_signed_random_payload_bytes(payload: bytes) -> None:
    envelope = dsse.envelope_bytes(dsse.sign_envelope(MANIFEST_PAYLOAD_TYPE, payload,
                                                      [RELEASE_A]))
    try:
        verify_manifest(envelope, ROOT_V1, now=NOW)
    except errors.TrustError as err:
        assert isinstance(err, errors.MalformedError)


_segment = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=10).filter(
    lambda s: s not in (".", ".."))
_paths = st.lists(_segment, min_size=1, max_size=4).map("/".join).filter(lambda p: len(p) <= 64)
_hex = st.binary(min_size=32, max_size=32).map(bytes.hex)


def _one_file_each(paths: list[str]) -> bool:
    try:
        check_path_set(paths)
    except errors.MalformedError:
        return False  # a file that is also a directory ('a' and 'a/b'): not a valid manifest
    return True


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    files = []
    for path in draw(st.lists(_paths, max_size=8, unique=True).filter(_one_file_each)):
        sha, size = draw(_hex), draw(st.integers(0, 1 << 20))
        if draw(st.booleans()):
            files.append(FileEntry(path, sha, size))
        else:
            files.append(FileEntry(path, sha, size, "deflate", draw(_hex),
                                   draw(st.integers(0, 1 << 20))))
    return Manifest(
        app=draw(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)),
        version=draw(st.from_regex(r"(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]?)\.(0|[1-9])"
                                   r"(-rc\.[1-9])?", fullmatch=True)),
        sequence=draw(st.integers(0, 1 << 40)), created=draw(st.integers(0, NOW)),
        expires=draw(st.integers(NOW + 1, 1 << 40)),
        boards=tuple(draw(st.lists(st.sampled_from(["esp32", "rp2", "unix"]), min_size=1,
                                   max_size=3, unique=True))),
        min_micropython=draw(st.sampled_from(["1.20", "1.20.0", "1.25.0"])),
        entry=draw(st.from_regex(r"[a-z_][a-z0-9_]{0,10}(\.[a-z_][a-z0-9_]{0,10})?",
                                 fullmatch=True)),
        files=tuple(files),
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_any_valid_manifest_round_trips_through_sign_and_verify(manifest: Manifest) -> None:
    envelope = dsse.envelope_bytes(dsse.sign_envelope(MANIFEST_PAYLOAD_TYPE,
                                                      manifest.to_payload(), [RELEASE_A]))
    board = manifest.boards[0]
    verified = verify_manifest(envelope, ROOT_V1, now=NOW, board=board,
                               installed_sequence=manifest.sequence - 1 if manifest.sequence
                               else None)
    assert verified == manifest
