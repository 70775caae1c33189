"""The rules behind the operator's commands, on the in-process server and as properties: the
pause rule for every fleet size, version precedence, yank, declared channels, the audit log."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_support import Backend, FleetKeys, ServerEnv, SimBoard, new_data_dir

from ota_server import state
from ota_server.app import create_app
from ota_server.rollout import (
    MIN_RESULTS_CAP,
    failures_to_pause,
    min_results,
    normalize_policy,
    would_pause,
)
from ota_server.versions import is_lower, version_key

# -- the pause rule ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(eligible=st.integers(1, 50_000),
       threshold=st.floats(0, 0.99, allow_nan=False))
def test_the_default_min_results_lets_any_fleet_pause_when_every_board_fails(
        eligible: int, threshold: float) -> None:
    """Whatever the fleet's size, a stage whose every eligible board failed pauses, and a big
    stage still waits for MIN_RESULTS_CAP results (the old default, 10 for every fleet, never
    paused a fleet of fewer than 10 boards)."""
    policy = normalize_policy({"failure_threshold": threshold})
    needed = min_results(policy, eligible)
    assert 1 <= needed <= min(eligible, MIN_RESULTS_CAP)
    assert would_pause(eligible, eligible, policy, needed)
    if eligible >= 2 * MIN_RESULTS_CAP:
        assert needed == MIN_RESULTS_CAP


@settings(max_examples=400, deadline=None)
@given(results=st.integers(0, 300), data=st.data(),
       threshold=st.floats(0, 1, allow_nan=False), needed=st.integers(1, 40))
def test_failures_to_pause_is_the_exact_number_of_failures_the_rule_needs(
        results: int, data: st.DataObject, threshold: float, needed: int) -> None:
    failures = data.draw(st.integers(0, results))
    policy = normalize_policy({"failure_threshold": threshold, "min_results": needed})
    answer = failures_to_pause(failures, results, policy, needed)
    if threshold >= 1:
        assert answer is None
        return
    assert answer is not None
    assert would_pause(failures + answer, results + answer, policy, needed)
    assert answer == 0 or not would_pause(failures + answer - 1, results + answer - 1, policy,
                                          needed)


def test_an_explicit_min_results_is_kept() -> None:
    policy = normalize_policy({"min_results": 25})
    assert min_results(policy, 3) == 25
    assert normalize_policy({})["min_results"] is None
    for bad in (0, -1, True, 1.5, "10"):
        with pytest.raises(Exception, match="min_results"):
            normalize_policy({"min_results": bad})


# -- version precedence -----------------------------------------------------------------------

_CORE = st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30))


@settings(max_examples=300, deadline=None)
@given(a=_CORE, b=_CORE, pre=st.lists(st.sampled_from(["alpha", "beta", "rc", "1", "2", "10"]),
                                      min_size=1, max_size=3))
def test_version_precedence_follows_semver(a: tuple[int, int, int], b: tuple[int, int, int],
                                           pre: list[str]) -> None:
    text_a, text_b = ".".join(map(str, a)), ".".join(map(str, b))
    assert is_lower(text_a, text_b) == (a < b)  # numbers by value, not as text
    assert is_lower(f"{text_a}-{'.'.join(pre)}", text_a)  # a pre-release is below its release
    assert version_key(f"{text_a}+build.7") == version_key(text_a)  # build metadata ignored


def test_version_precedence_examples_from_the_semver_spec() -> None:
    chain = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
             "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "1.10.0", "2.0.0"]
    for lower, higher in itertools.pairwise(chain):
        assert is_lower(lower, higher) and not is_lower(higher, lower)
    with pytest.raises(ValueError, match="semantic version"):
        version_key("1.0")


# -- yank, channels, audit on the in-process server ------------------------------------------

async def test_a_yanked_release_is_offered_to_no_board_not_even_one_that_started_it(
        env: ServerEnv) -> None:
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    started = await env.add_board(SimBoard("started"))
    waiting = await env.add_board(SimBoard("waiting"))
    await env.start_rollout("stable", "demo", 1, percent=100)
    assert (await env.checkin(started)).status == 200
    assert (await env.report(started, "downloading", 1)).status in (200, 204)
    pause = await env.client.post("/v1/channels/stable/rollout/pause", headers=env.bearer)
    assert pause.status == 200
    assert (await env.checkin(started)).status == 200  # a started board may finish ...
    resp = await env.client.post("/v1/releases/demo/1.0.0/yank", json={}, headers=env.bearer)
    assert resp.status == 409 and (await resp.json())["code"] == "rollout_active"
    resp = await env.client.post("/v1/releases/demo/1.0.0/yank", json={"force": True},
                                 headers=env.bearer)
    assert resp.status == 200
    yanked = await resp.json()
    assert yanked["aborted"] == ["stable"] and yanked["yanked"] is not None
    assert (await env.checkin(started)).status == 204  # ... until the release is yanked
    assert (await env.checkin(waiting)).status == 204
    again = await env.client.post("/v1/releases/demo/1.0.0/yank", headers=env.bearer)
    assert again.status == 200 and (await again.json())["yanked"] == yanked["yanked"]
    for path, code in (("/v1/releases/demo/1.0/yank", "bad_field"),
                       ("/v1/releases/demo/2.0.0/yank", "unknown_release")):
        resp = await env.client.post(path, headers=env.bearer)
        assert (await resp.json())["code"] == code


async def test_a_yanked_base_is_offered_to_no_board(env: ServerEnv) -> None:
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.publish({"app_main.py": b"v2\n"}, version="1.1.0", sequence=2)
    board = await env.add_board(SimBoard("new-board"))
    await env.start_rollout("stable", "demo", 1, percent=100)
    await env.start_rollout("stable", "demo", 2, policy={"stages": [{"tag": "none"}]})
    assert (await env.checkin(board)).status == 200  # the base, 1.0.0
    resp = await env.client.post("/v1/releases/demo/1.0.0/yank", headers=env.bearer)
    assert resp.status == 200  # a base is no rollout: no --force needed
    assert (await env.checkin(board)).status == 204


async def test_rollout_start_names_a_release_by_version_or_by_sequence_not_both(
        env: ServerEnv) -> None:
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=5)
    for body in ({"app": "demo"}, {"app": "demo", "version": "1.0.0", "sequence": 5}):
        resp = await env.client.post("/v1/channels/stable/rollout", json=body,
                                     headers=env.bearer)
        assert resp.status == 400 and (await resp.json())["code"] == "bad_field"
    resp = await env.client.post("/v1/channels/stable/rollout",
                                 json={"app": "demo", "version": "1.0.1"}, headers=env.bearer)
    doc = await resp.json()
    assert resp.status == 404 and doc["code"] == "unknown_release" and "1.0.0" in doc["message"]
    status = await env.start_rollout("stable", "demo", 5, percent=100)
    assert status["rollout"]["release"]["version"] == "1.0.0"


async def test_declared_channels_refuse_others_everywhere(aiohttp_client, tmp_path: Path,
                                                         backend: Backend) -> None:
    keys = FleetKeys.create(tmp_path)
    settings_, token = await new_data_dir(tmp_path, backend)
    settings_ = replace(settings_, root_path=keys.root_path, channels=("stable", "beta"))
    client = await aiohttp_client(create_app(settings_))
    env = ServerEnv(client, settings_, token, keys, tmp_path)
    typo = SimBoard("typo", channel="Stable")
    for method, path, body in (
            ("POST", "/v1/devices", typo.registration()),
            ("GET", "/v1/devices?channel=stabel", None),
            ("GET", "/v1/channels/beat/rollout", None),
            ("POST", "/v1/channels/stabl/rollout", {"app": "demo", "version": "1.0.0"}),
            ("POST", "/v1/channels/bet/rollout/pause", None)):
        resp = await client.request(method, path, json=body, headers=env.bearer)
        doc = await resp.json()
        assert (resp.status, doc["code"]) == (404, "unknown_channel"), path
        assert "did you mean" in doc["message"] and "declared: beta, stable" in doc["message"]
    resp = await client.get("/v1/channels/nightly/rollout", headers=env.bearer)
    assert "did you mean" not in (await resp.json())["message"]  # nothing close: no guess
    channels = (await (await client.get("/v1/channels", headers=env.bearer)).json())["channels"]
    assert [(c["channel"], c["boards"], c["declared"]) for c in channels] == \
        [("beta", 0, True), ("stable", 0, True)]


async def test_every_state_changing_call_is_audited_with_its_outcome(env: ServerEnv) -> None:
    store = env.app[state.STORE]
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    resp = await env.client.post("/v1/releases", data=b"not an envelope", headers=env.bearer)
    assert resp.status == 422
    await env.client.get("/v1/releases", headers=env.bearer)  # a read: not audited
    await env.client.post("/v1/releases", data=b"x", headers={"Authorization": "Bearer no"})
    entries = [(e.actor, e.action, e.status, e.outcome) for e in await store.list_audit(100)]
    assert entries[-2:] == [("tests", "POST /v1/releases", 201, "ok"),
                            ("tests", "POST /v1/releases", 422, "malformed")]
    assert all(action.split()[0] != "GET" for _, action, _, _ in entries)
    assert (await store.list_audit(100))[-2].target == "demo 1.0.0"
    resp = await env.client.get("/v1/audit?limit=0", headers=env.bearer)
    assert resp.status == 400 and (await resp.json())["code"] == "bad_field"
    resp = await env.client.get("/v1/audit?limit=1", headers=env.bearer)
    assert [e["outcome"] for e in (await resp.json())["entries"]] == ["malformed"]
