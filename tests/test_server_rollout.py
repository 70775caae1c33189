"""Staged rollouts with 100 simulated boards sending signed requests to create_app."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from server_support import ServerEnv, SimBoard

from ota_server.rollout import BUCKETS, after_report, bucket_of, normalize_policy
from ota_server.storage.sqlite import SqliteStore

FLEET_SIZE = 100


async def _fleet(env: ServerEnv, count: int = FLEET_SIZE, **kwargs) -> list[SimBoard]:
    return [await env.add_board(SimBoard(f"board-{i:03d}", **kwargs)) for i in range(count)]


async def _offered(env: ServerEnv, boards: list[SimBoard]) -> set[str]:
    offered = set()
    for board in boards:
        resp = await env.checkin(board)
        assert resp.status in (200, 204), await resp.text()
        if resp.status == 200:
            offered.add(board.device_id)
    return offered


def test_buckets_are_stable_and_spread() -> None:
    ids = [f"dev-{i}" for i in range(5000)]
    buckets = [bucket_of(i) for i in ids]
    assert buckets == [bucket_of(i) for i in ids]
    assert all(0 <= b < BUCKETS for b in buckets)
    share = sum(b < 1000 for b in buckets) / len(ids)
    assert 0.08 < share < 0.12


async def test_ten_percent_stage_offers_the_same_ten_boards_every_time(env: ServerEnv) -> None:
    boards = await _fleet(env)
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, policy={
        "stages": [{"percent": 10}, {"percent": 50}, {"percent": 100}], "auto_advance": False})
    first = await _offered(env, boards)
    assert 7 <= len(first) <= 13
    assert await _offered(env, boards) == first
    assert await _offered(env, boards) == first
    # advancing keeps everyone already in, and adds more
    resp = await env.client.post("/v1/channels/stable/rollout/advance", headers=env.bearer)
    assert resp.status == 200
    half = await _offered(env, boards)
    assert first < half
    assert 40 <= len(half) <= 60


async def test_three_rollbacks_out_of_ten_results_pause_the_rollout(env: ServerEnv) -> None:
    boards = await _fleet(env)
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, policy={
        "stages": [{"percent": 10}, {"percent": 100}], "auto_advance": False,
        "failure_threshold": 0.2, "min_results": 10})
    offered = sorted(await _offered(env, boards))
    assert len(offered) >= 10
    by_id = {b.device_id: b for b in boards}
    in_stage = [by_id[i] for i in offered]
    outcomes = ["rolled_back"] * 3 + ["confirmed"] * 6
    for board, status in zip(in_stage, outcomes, strict=False):
        assert (await env.report(board, "downloading", 1)).status == 204
        assert (await env.report(board, status, 1)).status == 204
    rollout = await env.rollout()
    assert rollout["state"] == "active"  # 3/9 fail, but fewer than min_results results
    started = in_stage[10] if len(in_stage) > 10 else None
    if started is not None:
        assert (await env.report(started, "downloading", 1)).status == 204
    tenth = in_stage[9]
    assert (await env.report(tenth, "confirmed", 1)).status == 204
    rollout = await env.rollout()
    assert rollout["state"] == "paused"
    assert "3 of 10" in rollout["reason"]
    # paused: boards that never started get nothing; one mid-download may finish
    fresh = [b for b in boards if b.device_id not in offered]
    resp = await env.checkin(fresh[0])
    assert resp.status == 204
    if started is not None:
        assert (await env.checkin(started)).status == 200
    # even an eligible board that was offered but did not start gets nothing now
    resp = await env.client.post("/v1/channels/stable/rollout/advance", headers=env.bearer)
    assert resp.status == 200  # advance is allowed while paused, but offers nothing new
    assert (await env.checkin(fresh[0])).status == 204
    resumed = await env.client.post("/v1/channels/stable/rollout/resume", headers=env.bearer)
    assert (await resumed.json())["rollout"]["state"] == "active"
    assert (await env.checkin(fresh[0])).status == 200


async def test_canary_stage_then_auto_advance_on_success_count(env: ServerEnv) -> None:
    canaries = [await env.add_board(SimBoard(f"canary-{i}", tags=("canary",)))
                for i in range(2)]
    boards = await _fleet(env, 20)
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, policy={
        "stages": [{"tag": "canary", "success": 2}, {"percent": 100}]})
    assert await _offered(env, boards) == set()
    assert await _offered(env, canaries) == {"canary-0", "canary-1"}
    await env.report(canaries[0], "confirmed", 1)
    assert (await env.rollout())["stage"] == 0
    await env.report(canaries[1], "confirmed", 1)
    assert (await env.rollout())["stage"] == 1
    assert len(await _offered(env, boards)) == 20


async def test_abort_stops_offers_and_a_completed_rollout_becomes_the_base(
        env: ServerEnv) -> None:
    boards = await _fleet(env, 10)
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.publish({"app_main.py": b"v2\n"}, version="2.0.0", sequence=2)
    await env.publish({"app_main.py": b"v3\n"}, version="3.0.0", sequence=3)
    await env.start_rollout("stable", "demo", 1, percent=100)
    assert len(await _offered(env, boards)) == 10
    # v2 to 10%: the others still get v1 (the base) when they run nothing
    status = await env.start_rollout("stable", "demo", 2, policy={
        "stages": [{"percent": 10}, {"percent": 100}], "auto_advance": False})
    assert status["base"]["sequence"] == 1
    for board in boards:
        resp = await env.checkin(board)
        assert resp.status == 200
    aborted = await env.client.post("/v1/channels/stable/rollout/abort", headers=env.bearer)
    assert (await aborted.json())["rollout"]["state"] == "aborted"
    for board in boards:
        board.sequence = 1
        assert (await env.checkin(board)).status == 204
    again = await env.client.post("/v1/channels/stable/rollout/pause", headers=env.bearer)
    assert again.status == 409
    assert (await again.json())["code"] == "bad_rollout_state"
    await env.start_rollout("stable", "demo", 3, percent=100)
    assert len(await _offered(env, boards)) == 10


async def test_rollout_must_be_newer_than_the_base(env: ServerEnv) -> None:
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.publish({"app_main.py": b"v2\n"}, version="2.0.0", sequence=2)
    await env.start_rollout("stable", "demo", 2, percent=100)
    await env.publish({"app_main.py": b"v3\n"}, version="3.0.0", sequence=3)
    await env.start_rollout("stable", "demo", 3, percent=100)  # v2 becomes the base
    resp = await env.client.post("/v1/channels/stable/rollout",
                                 json={"app": "demo", "sequence": 1, "percent": 100},
                                 headers=env.bearer)
    assert resp.status == 409
    assert (await resp.json())["code"] == "not_newer"


async def test_default_success_count_is_half_the_eligible_boards(env: ServerEnv) -> None:
    canaries = [await env.add_board(SimBoard(f"c-{i}", tags=("canary",))) for i in range(4)]
    await env.add_board(SimBoard("other-channel", channel="beta", tags=("canary",)))
    await env.publish({"app_main.py": b"v1\n"}, version="1.0.0", sequence=1)
    await env.start_rollout("stable", "demo", 1, policy={
        "stages": [{"tag": "canary"}, {"percent": 100}]})
    assert len(await _offered(env, canaries)) == 4
    await env.report(canaries[0], "confirmed", 1)
    assert (await env.rollout())["stage"] == 0  # 1 of the 2 needed (half of 4 canaries)
    await env.report(canaries[1], "confirmed", 1)
    assert (await env.rollout())["stage"] == 1


class _CountingStore(SqliteStore):
    """The real SQLite store, counting the fleet-wide eligibility counts asked of it."""

    fleet_counts = 0

    async def count_eligible(self, channel: str, tags: Sequence[str],
                             bucket_limit: float) -> int:
        self.fleet_counts += 1
        return await super().count_eligible(channel, tags, bucket_limit)


async def test_a_confirmation_on_the_last_stage_does_not_count_the_fleet(tmp_path: Path) -> None:
    """A report decides an automatic move only by the eligible boards when it could pause
    (some failure) or advance (a stage left): most reports, confirmations on a rollout's last
    stage, no longer cost a query over the whole fleet (S5, docs/benchmarks.md); a failure
    still pauses as before."""
    store = _CountingStore(tmp_path / "meta.db")
    try:
        sequence, _ = await store.reserve_sequence("app", "1.0.0")
        release = await store.add_release("app", "1.0.0", sequence, ["esp32"], b"env", [],
                                          2_000_000_000)
        policy = normalize_policy({"stages": [{"percent": 100}], "min_results": 4,
                                   "failure_threshold": 0.2})
        await store.start_rollout("stable", release.id, policy)
        for n in range(4):
            await store.add_device(f"b{n}", b"\x04" + bytes(64), "esp32", [], "stable",
                                   bucket_of(f"b{n}"))
            await store.open_deployment_for(f"b{n}", release.id, "stable")
        for n in (0, 1):
            await store.set_deployment(f"b{n}", release.id, "confirmed")
            await after_report(store, "stable", release.id)
        assert store.fleet_counts == 0
        assert (await store.current_rollout("stable")).state == "active"
        # a failure, then a fourth result: 1 of 4 failed, above 20% once 4 results are in
        await store.set_deployment("b2", release.id, "failed")
        await after_report(store, "stable", release.id)
        assert (await store.current_rollout("stable")).state == "active"  # 3 results
        await store.set_deployment("b3", release.id, "confirmed")
        await after_report(store, "stable", release.id)
        assert store.fleet_counts == 2
        assert (await store.current_rollout("stable")).state == "paused"
    finally:
        await store.close()
