"""Random input to the parsers in front of the handlers: only the documented errors."""

from __future__ import annotations

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ota_server.device_auth import _parse_any_order, parse_authorization
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


def _outcome(parse: object, header: str) -> object:
    try:
        return parse(header)  # type: ignore[operator]
    except Unauthorized as err:
        return err.code, err.message


# Headers near the form boards send: the form itself, or one thing of it bent (a part at or just
# past a bound of its rule, a character outside its alphabet, another order, spaces).
_GOOD = {
    "id": st.sampled_from(["b", "a" * 64, "A9:b.c_d-e"])
    | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", fullmatch=True),
    "ctr": st.sampled_from(["0", "01", str(2**63 - 1), "9" * 18])
    | st.integers(0, 2**63 - 1).map(str),
    "sig": st.binary(min_size=64, max_size=64).map(lambda b: base64.b64encode(b).decode()),
}
_BENT = {
    "id": st.sampled_from(["a" * 65, "-x", ".a", "a b", "a,b", "é", ""]) | st.text(max_size=66),
    "ctr": st.sampled_from([str(2**63), "9" * 19, "9" * 20, "+1", "-1", "1 ", "\u0661", ""])
    | st.integers(2**63, 2**70).map(str) | st.text(max_size=5),
    "sig": st.binary(min_size=0, max_size=70).filter(lambda b: len(b) != 64).map(
        lambda b: base64.b64encode(b).decode())
    | st.binary(min_size=64, max_size=64).map(lambda b: base64.b64encode(b).decode()[:-2])
    | st.binary(min_size=64, max_size=64).map(
        lambda b: base64.b64encode(b).decode().replace("A", "-").replace("B", "_"))
    | st.text(max_size=90),
}


@st.composite
def _near_board_headers(draw: st.DrawFn) -> str:
    values = {name: draw(good) for name, good in _GOOD.items()}
    bend = draw(st.sampled_from(["nothing", "id", "ctr", "sig", "order", "spaces"]))
    order = ["id", "ctr", "sig"]
    if bend in _BENT:
        values[bend] = draw(_BENT[bend])
    elif bend == "order":
        order = draw(st.permutations(order))
    glue = ", " if bend == "spaces" else ","
    return "Mpota-P256 " + glue.join(f"{k}={values[k]}" for k in order)


@settings(max_examples=600, deadline=None)
@given(_near_board_headers())
def test_the_boards_form_is_parsed_as_every_form_is(header: str) -> None:
    """parse_authorization's one-match path for the form boards send accepts and refuses
    exactly what the any-order parse does, with the same credential or message."""
    assert _outcome(parse_authorization, header) == _outcome(_parse_any_order, header)


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
