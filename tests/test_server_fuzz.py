"""Random input to the parsers in front of the handlers: only the documented errors."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ota_server.device_auth import parse_authorization
from ota_server.errors import ApiError, Unauthorized
from ota_server.rollout import normalize_policy
from ota_server.validation import parse_json_object

_HEADER_PARTS = st.lists(st.one_of(
    st.text(max_size=30),
    st.sampled_from(["id=", "ctr=", "sig=", ",", " ", "Mpota-P256 ", "=", "AAAA", "board-1",
                     "²", "\n", "1" * 25]),
), max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(_HEADER_PARTS)
def test_authorization_parser_raises_only_unauthorized(header: str) -> None:
    try:
        cred = parse_authorization(header)
    except Unauthorized as err:
        assert err.status == 401 and err.code in ("missing_credentials", "bad_credentials")
        return
    assert len(cred.signature) == 64
    assert 0 <= cred.counter < 2**63


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_rollout_policy_validation_raises_only_bad_policy(raw: object) -> None:
    try:
        policy = normalize_policy(raw)
    except ApiError as err:
        assert (err.status, err.code) == (400, "bad_policy")
        return
    assert policy["stages"] and 0 <= policy["failure_threshold"] <= 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | _JSON.map(lambda v: json.dumps(v).encode()))
def test_json_body_parser_raises_only_bad_json(body: bytes) -> None:
    try:
        doc = parse_json_object(body, "test")
    except ApiError as err:
        assert (err.status, err.code) == (400, "bad_json")
        return
    assert isinstance(doc, dict)
