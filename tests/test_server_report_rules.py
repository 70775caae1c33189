"""Which board reports move a rollout: only those about a deployment the server opened for that
board (a check-in offered it the release, in its channel). Examples, then a property over
random fleets, channels, releases, rollout states and reports (docs/protocol.md, "Which
reports count")."""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from cluster_support import backend_of
from conftest import BACKENDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import Backend, FleetKeys, ServerEnv, SimBoard, make_bundle, new_data_dir

CANARY_FIRST = {"stages": [{"tag": "canary"}, {"percent": 100}], "auto_advance": True}


async def _offered_sequence(env: ServerEnv, board: SimBoard) -> int | None:
    """The sequence of the manifest a check-in offers `board`, None for 204."""
    resp = await env.checkin(board)
    assert resp.status in (200, 204), await resp.text()
    if resp.status == 204:
        return None
    envelope = json.loads(await resp.read())
    return int(json.loads(base64.b64decode(envelope["payload"]))["sequence"])


async def _metrics(env: ServerEnv) -> str:
    return await (await env.client.get("/metrics")).text()


async def test_a_board_never_offered_the_release_cannot_advance_the_canary(
        env: ServerEnv) -> None:
    canaries = [await env.add_board(SimBoard(f"canary-{i}", tags=("canary",))) for i in range(2)]
    outsider = await env.add_board(SimBoard("outsider"))
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, policy=CANARY_FIRST)
    assert await _offered_sequence(env, outsider) is None  # not in the canary stage
    for status in ("downloading", "installed", "confirmed"):
        resp = await env.report(outsider, status, 1)
        assert resp.status == 409, await resp.text()
        assert (await resp.json())["code"] == "not_offered"
    rollout = await env.rollout()
    assert (rollout["stage"], rollout["counts"]["confirmed"]) == (0, 0)
    text = await _metrics(env)
    assert 'mpota_reports_refused_total{code="not_offered"} 3' in text
    assert not [line for line in text.splitlines() if line.startswith("mpota_reports_total{")]
    # the canaries themselves still move it: one of the two confirms, half the stage
    assert await _offered_sequence(env, canaries[0]) == 1
    assert (await env.report(canaries[0], "confirmed", 1)).status == 204
    assert (await env.rollout())["stage"] == 1


async def test_ten_boards_never_offered_cannot_force_an_auto_pause(env: ServerEnv) -> None:
    await env.add_board(SimBoard("canary-0", tags=("canary",)))
    strangers = [await env.add_board(SimBoard(f"s-{i}")) for i in range(10)]
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, policy={**CANARY_FIRST, "min_results": 10})
    for board in strangers:
        resp = await env.report(board, "failed", 1, reason="forged")
        assert resp.status == 409
    rollout = await env.rollout()
    assert rollout["state"] == "active"
    assert rollout["counts"]["failed"] == 0
    assert 'mpota_reports_refused_total{code="not_offered"} 10' in await _metrics(env)
    shown = await (await env.client.get("/v1/devices/s-0", headers=env.bearer)).json()
    assert shown["last_error"] is None  # a refused report changes nothing about the board


async def test_a_board_of_another_channel_counts_only_in_its_own_channel(env: ServerEnv) -> None:
    stable = [await env.add_board(SimBoard(f"st-{i}", tags=("canary",))) for i in range(4)]
    beta = [await env.add_board(SimBoard(f"be-{i}", channel="beta")) for i in range(4)]
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, policy=CANARY_FIRST)
    await env.start_rollout("beta", "demo", 1, percent=100)
    for board in beta:
        assert await _offered_sequence(env, board) == 1
        assert (await env.report(board, "confirmed", 1)).status == 204
    assert (await env.rollout("beta"))["counts"]["confirmed"] == 4
    rollout = await env.rollout("stable")
    assert (rollout["stage"], rollout["counts"]["confirmed"]) == (0, 0)
    assert await _offered_sequence(env, stable[0]) == 1
    assert (await env.rollout("stable"))["counts"]["offered"] == 1


async def test_reports_on_a_paused_or_aborted_rollout_still_count_for_it(env: ServerEnv) -> None:
    boards = [await env.add_board(SimBoard(f"p-{i}")) for i in range(3)]
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, percent=100)
    for board in boards:
        assert await _offered_sequence(env, board) == 1
    await env.client.post("/v1/channels/stable/rollout/pause", headers=env.bearer)
    assert (await env.report(boards[0], "confirmed", 1)).status == 204
    await env.client.post("/v1/channels/stable/rollout/abort", headers=env.bearer)
    assert (await env.report(boards[1], "failed", 1, reason="late")).status == 204
    rollout = await env.rollout()
    assert rollout["state"] == "aborted"
    assert (rollout["counts"]["confirmed"], rollout["counts"]["failed"],
            rollout["counts"]["offered"]) == (1, 1, 1)


async def test_reports_queued_across_boots_count_after_the_rollout_moved_on(
        env: ServerEnv) -> None:
    board = await env.add_board(SimBoard("q-1"))
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.publish({"app_main.py": b"v2\n"}, version="2.0.0", sequence=2)
    await env.start_rollout("stable", "demo", 1, percent=100)
    assert await _offered_sequence(env, board) == 1
    await env.start_rollout("stable", "demo", 2, percent=100)  # 1 becomes the base
    # the board installed 1 offline; its queue arrives now, in order
    for status in ("downloading", "installed", "confirmed"):
        assert (await env.report(board, status, 1)).status == 204
    shown = await (await env.client.get("/v1/devices/q-1", headers=env.bearer)).json()
    assert (shown["sequence"], shown["last_status"]) == (1, "confirmed")
    # and the rolled-back trial of 2 names 2, with the version it runs again
    board.sequence = 1
    assert await _offered_sequence(env, board) == 2
    assert (await env.report(board, "installed", 2)).status == 204
    assert (await env.report(board, "rolled_back", 2, reason="not confirmed")).status == 204
    assert (await env.rollout())["counts"]["rolled_back"] == 1


# -- the property: random fleets, rollouts and reports ---------------------------------------

STATUSES = ("downloading", "installed", "confirmed", "failed", "rolled_back")
OPEN = ("offered", "downloading", "installed")
CHANNELS = ("stable", "beta")
SEQUENCES = (1, 2, 3)


@dataclass
class Model:
    """What the rules say the server holds: deployments opened by the offers it was seen to
    make, moved only by reports the rules accept."""

    deployments: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)
    refused: int = 0

    def offer(self, board: SimBoard, sequence: int) -> None:
        self.deployments.setdefault((board.device_id, sequence), ("offered", board.channel))

    def report(self, board: SimBoard, sequence: int, status: str) -> int:
        """The status the server must answer; applies the report when it counts."""
        key = (board.device_id, sequence)
        named = self.deployments.get(key)
        target = key if named is not None else None
        if status in ("failed", "rolled_back") and (named is None or named[0] == "confirmed"):
            newer = [s for (d, s), (state, _) in self.deployments.items()
                     if d == board.device_id and state in OPEN and s > sequence]
            if newer:
                target = (board.device_id, max(newer))
        if target is None:
            self.refused += 1
            return 409 if sequence in SEQUENCES else 404
        old, channel = self.deployments[target]
        if old != "confirmed" or status == "rolled_back":
            self.deployments[target] = (status, channel)
        return 204

    def counts(self, channel: str, sequence: int) -> dict[str, int]:
        out = dict.fromkeys(("offered", *STATUSES), 0)
        for (_, seq), (state, where) in self.deployments.items():
            if seq == sequence and where == channel:
                out[state] += 1
        return out


boards_strategy = st.lists(
    st.tuples(st.sampled_from(CHANNELS), st.booleans()), min_size=2, max_size=6)
step_strategy = st.one_of(
    st.tuples(st.just("checkin"), st.integers(0, 5), st.sampled_from((0, *SEQUENCES))),
    st.tuples(st.just("report"), st.integers(0, 5), st.sampled_from((*SEQUENCES, 9)),
              st.sampled_from(STATUSES)),
    st.tuples(st.sampled_from(("pause", "resume", "abort", "advance")),
              st.sampled_from(CHANNELS)),
    st.tuples(st.just("start"), st.sampled_from(CHANNELS), st.sampled_from(SEQUENCES)),
)


async def _scenario(workdir: Path, backend: Backend, fleet: list[tuple[str, bool]],
                    steps: list[tuple[Any, ...]]) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from ota_server.app import create_app

    keys = FleetKeys.create(workdir)
    settings, token = await new_data_dir(workdir, backend)
    settings = replace(settings, root_path=keys.root_path)
    async with TestClient(TestServer(create_app(settings))) as client:
        env = ServerEnv(client, settings, token, keys, workdir)
        boards = [await env.add_board(SimBoard(f"b{i}", channel=channel,
                                               tags=("canary",) if canary else ()))
                  for i, (channel, canary) in enumerate(fleet)]
        for sequence in SEQUENCES:
            bundle = make_bundle(workdir, {"app_main.py": b"v%d\n" % sequence},
                                 version=f"{sequence}.0.0", sequence=sequence,
                                 key=keys.release_key)
            await env.upload_bundle(bundle)
        policy = {"stages": [{"tag": "canary"}, {"percent": 50}, {"percent": 100}],
                  "min_results": 2, "failure_threshold": 0.3}
        for channel in CHANNELS:
            await env.start_rollout(channel, "demo", 1, policy=policy)
        model = Model()
        for step in steps:
            kind = step[0]
            if kind == "checkin":
                board = boards[step[1] % len(boards)]
                board.sequence = step[2]
                offered = await _offered_sequence(env, board)
                if offered is not None:
                    model.offer(board, offered)
            elif kind == "report":
                board = boards[step[1] % len(boards)]
                expected = model.report(board, step[2], step[3])
                resp = await env.report(board, step[3], step[2])
                assert resp.status == expected, (step, await resp.text())
            elif kind == "start":
                await client.post(f"/v1/channels/{step[1]}/rollout", headers=env.bearer,
                                  json={"app": "demo", "sequence": step[2], "policy": policy})
            else:
                await client.post(f"/v1/channels/{step[1]}/rollout/{kind}", headers=env.bearer)
        for channel in CHANNELS:
            rollout = await env.rollout(channel)
            sequence = rollout["release"]["sequence"]
            assert rollout["counts"] == model.counts(channel, sequence), (channel, sequence)
        text = await (await client.get("/metrics")).text()
        refused = sum(float(line.split()[-1]) for line in text.splitlines()
                      if line.startswith("mpota_reports_refused_total{"))
        assert refused == model.refused


@pytest.mark.parametrize("kind", BACKENDS)
# A fresh store for each example (backend_of), so the function-scoped `request` is safe to share.
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(fleet=boards_strategy, steps=st.lists(step_strategy, min_size=1, max_size=30))
def test_only_reports_for_deployments_opened_for_the_board_move_counts(
        kind: str, request: pytest.FixtureRequest, fleet: list[tuple[str, bool]],
        steps: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory(prefix="report-rules-") as scratch, \
            backend_of(kind, request) as backend:
        asyncio.run(_scenario(Path(scratch), backend, fleet, steps))


async def test_a_board_running_no_app_reports_its_failed_first_install(env: ServerEnv) -> None:
    """A fresh board that cannot install its first offer names what it runs: app "" and
    sequence 0 (ota/client.py); the failure counts for the offer it got."""
    fresh = await env.add_board(SimBoard("fresh", app=""))
    never = await env.add_board(SimBoard("never", app=""))
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, percent=100)
    assert await _offered_sequence(env, fresh) == 1
    resp = await env.report(fresh, "failed", 0, reason="manifest: ExpiredError")
    assert resp.status == 204, await resp.text()
    assert (await env.rollout())["counts"]["failed"] == 1
    resp = await env.report(never, "failed", 0, reason="forged")
    assert (resp.status, (await resp.json())["code"]) == (404, "unknown_release")
    resp = await env.report(fresh, "confirmed", 0)  # only a failure may name no app
    assert (resp.status, (await resp.json())["code"]) == (400, "bad_name")


async def _offline_report(env: ServerEnv, board: SimBoard, status: str, sequence: int,
                          reason: str | None = None) -> Any:
    body = json.dumps({"app": board.app, "sequence": sequence, "version": "1.0.0",
                       "status": status, "reason": reason, "offline": 1}).encode()
    return await env.client.post("/v1/device/report", data=body,
                                 headers=board.auth("POST", "/v1/device/report", body))


async def test_a_release_installed_over_usb_is_recorded_but_never_counts_in_a_rollout(
        env: ServerEnv) -> None:
    """`ota install` puts a verified release on a board without the server: the board's
    reports say `offline`, and the server records them for that board (history, inventory)
    while every rollout ignores them."""
    canary = await env.add_board(SimBoard("canary-0", tags=("canary",)))
    bench = await env.add_board(SimBoard("bench"))
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, policy={**CANARY_FIRST, "min_results": 1})
    assert await _offered_sequence(env, bench) is None  # not in the canary stage
    for status in ("installed", "confirmed"):
        assert (await _offline_report(env, bench, status, 1)).status == 204
    shown = await (await env.client.get("/v1/devices/bench", headers=env.bearer)).json()
    assert (shown["version"], shown["sequence"]) == ("1.0.0", 1)
    assert [(h["status"], h["version"]) for h in shown["history"]] == [
        ("installed", "1.0.0"), ("confirmed", "1.0.0")]
    rollout = await env.rollout()
    assert (rollout["stage"], rollout["counts"]["confirmed"]) == (0, 0)
    # a failed offline install (verified, then flash full) is recorded and pauses nothing
    other = await env.add_board(SimBoard("bench-2"))
    assert (await _offline_report(env, other, "failed", 1, "offline install: flash full")
            ).status == 204
    assert (await env.rollout())["state"] == "active"
    # without the flag, the rule of reports stands; with it, the release must exist
    assert (await env.report(await env.add_board(SimBoard("s")), "confirmed", 1)).status == 409
    missing = await _offline_report(env, canary, "confirmed", 7)
    assert (missing.status, (await missing.json())["code"]) == (404, "unknown_release")
    esp = await env.add_board(SimBoard("esp", board="esp8266"))
    wrong = await _offline_report(env, esp, "confirmed", 1)
    assert (wrong.status, (await wrong.json())["code"]) == (409, "wrong_board")
