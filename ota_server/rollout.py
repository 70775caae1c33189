"""Staged rollouts: which release a board is offered, and how a rollout moves on its own.

A rollout points a channel at one release with a policy:

    {"stages": [{"tag": "canary"}, {"percent": 10}, {"percent": 50}, {"percent": 100}],
     "auto_advance": true,       # advance when the stage's `success` count of confirmations is met
     "failure_threshold": 0.2,   # pause when (failed + rolled_back) / results > this ...
     "min_results": null}        # ... once at least this many boards finished (null: the
                                 # default rule, `min_results` below)

Stages are cumulative: at stage k a board is eligible if it matches any stage 0..k. A percent
stage takes the boards whose stable bucket (sha256 of the device id, 0..9999) is below
percent * 100, so the same boards are chosen on every check-in and a larger percentage keeps
them. Boards outside the stage get the channel's base release (the last release that reached
100% before this rollout) if that is newer than what they run. A yanked or expired release is
offered to no board.
"""

from __future__ import annotations

import hashlib
import math
import time
from fractions import Fraction
from typing import Any

from ota_server.errors import BadRequest, Conflict
from ota_server.storage import BoardIdentity, MetadataStore, Release, Rollout
from ota_server.storage.errors import StoreConflict
from ota_server.storage.records import STARTED_STATUSES
from ota_server.versions import is_lower

BUCKETS = 10_000
DEFAULT_STAGES: list[dict[str, Any]] = [
    {"tag": "canary"}, {"percent": 10}, {"percent": 50}, {"percent": 100}]
DEFAULT_THRESHOLD = 0.2
# The default `min_results` is min(MIN_RESULTS_CAP, half the boards the stage reaches), at
# least 1: docs/operations.md, "When a rollout pauses on its own", gives the reasons.
MIN_RESULTS_CAP = 10
_ACTIVE_STATES = ("active", "paused")


def bucket_of(device_id: str) -> int:
    """The board's stable rollout bucket, 0..9999: the first 8 bytes of sha256(id), mod 10000."""
    digest = hashlib.sha256(device_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def _stage(raw: Any, index: int) -> dict[str, Any]:
    where = f"policy.stages[{index}]"
    if not isinstance(raw, dict):
        raise BadRequest(f"{where} must be an object", code="bad_policy")
    extra = set(raw) - {"tag", "percent", "success"}
    if extra:
        raise BadRequest(f"{where}: unknown field(s) {sorted(extra)}", code="bad_policy")
    if ("tag" in raw) == ("percent" in raw):
        raise BadRequest(f"{where} needs exactly one of `tag` or `percent`", code="bad_policy")
    stage: dict[str, Any] = {}
    if "tag" in raw:
        if not isinstance(raw["tag"], str) or not raw["tag"]:
            raise BadRequest(f"{where}.tag must be a non-empty string", code="bad_policy")
        stage["tag"] = raw["tag"]
    else:
        pct = raw["percent"]
        if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0 < pct <= 100:
            raise BadRequest(f"{where}.percent must be a number in (0, 100]", code="bad_policy")
        stage["percent"] = pct
    if "success" in raw:
        ok = raw["success"]
        if isinstance(ok, bool) or not isinstance(ok, int) or ok < 1:
            raise BadRequest(f"{where}.success must be a positive integer", code="bad_policy")
        stage["success"] = ok
    return stage


def normalize_policy(raw: Any) -> dict[str, Any]:
    """Validate a policy from the API and fill in the documented defaults.

    Raises BadRequest (`bad_policy`) naming the offending field.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadRequest("policy must be an object", code="bad_policy")
    extra = set(raw) - {"stages", "auto_advance", "failure_threshold", "min_results"}
    if extra:
        raise BadRequest(f"policy: unknown field(s) {sorted(extra)}", code="bad_policy")
    stages_raw = raw.get("stages", DEFAULT_STAGES)
    if not isinstance(stages_raw, list) or not 1 <= len(stages_raw) <= 20:
        raise BadRequest("policy.stages must be a list of 1 to 20 stages", code="bad_policy")
    stages = [_stage(s, i) for i, s in enumerate(stages_raw)]
    auto = raw.get("auto_advance", True)
    if not isinstance(auto, bool):
        raise BadRequest("policy.auto_advance must be true or false", code="bad_policy")
    threshold = raw.get("failure_threshold", DEFAULT_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
            or not 0 <= threshold <= 1:
        raise BadRequest("policy.failure_threshold must be a number in [0, 1]", code="bad_policy")
    min_results = raw.get("min_results")
    if min_results is not None and (isinstance(min_results, bool)
                                    or not isinstance(min_results, int) or min_results < 1):
        raise BadRequest("policy.min_results must be a positive integer, or null for the "
                         "default rule", code="bad_policy")
    return {"stages": stages, "auto_advance": auto, "failure_threshold": float(threshold),
            "min_results": min_results}


def percent_policy(percent: float) -> dict[str, Any]:
    """The one-stage policy behind `ota rollout start CHANNEL --percent P`."""
    return normalize_policy({"stages": [{"percent": percent}]})


def eligible(device: BoardIdentity, policy: dict[str, Any], stage: int) -> bool:
    """Is the board inside stages 0..stage of the policy?"""
    for spec in policy["stages"][: stage + 1]:
        if "tag" in spec and spec["tag"] in device.tags:
            return True
        if "percent" in spec and device.bucket < spec["percent"] * (BUCKETS // 100):
            return True
    return False


def _fits(release: Release | None, app: str | None, sequence: int, board: str,
          now: int) -> bool:
    """Newer than what the board runs, the same app (or none yet), built for its board, not
    yanked and not expired (the board would refuse it, and ask again at every check-in)."""
    return (release is not None and (not app or app == release.app)
            and release.sequence > sequence and board in release.boards
            and release.offerable(now))


async def release_for(store: MetadataStore, device: BoardIdentity, app: str | None,
                      sequence: int, board: str, now: int | None = None, *,
                      epoch: int | None = None) -> Release | None:
    """The release to offer a `board` running (`app`, `sequence`) at `now` (Unix time; the
    clock when None), or None: "nothing new". `epoch`: the fleet epoch the board request's
    counter statement saw (MetadataStore.current_rollout may answer from a copy that new).

    A paused rollout is offered only to boards that already started it (downloading or
    installed), so they can finish; an aborted one to nobody; an expired or yanked release to
    nobody. Reads only the store's cached rollout, base and release: no query of its own
    but the deployment of a board outside the stage.
    """
    when = int(time.time()) if now is None else now
    rollout = await store.current_rollout(device.channel, epoch=epoch)
    if rollout is not None and rollout.state in _ACTIVE_STATES \
            and _fits(rollout.release, app, sequence, board, when):
        if rollout.state == "active" and eligible(device, rollout.policy, rollout.stage):
            return rollout.release
        status = await store.deployment_status(device.device_id, rollout.release.id)
        if status in STARTED_STATUSES:
            return rollout.release
    base = await store.base_release(device.channel, epoch=epoch)
    return base if _fits(base, app, sequence, board, when) else None


def is_complete(rollout: Rollout) -> bool:
    """An active rollout whose current stage covers every board."""
    spec = rollout.policy["stages"][rollout.stage]
    return rollout.state == "active" and spec.get("percent") == 100


async def current_release(store: MetadataStore, channel: str) -> Release | None:
    """What the channel points at now: its active or paused rollout's release, else its base."""
    rollout = await store.current_rollout(channel)
    if rollout is not None and rollout.state in _ACTIVE_STATES:
        return rollout.release
    return await store.base_release(channel)


async def downgrade_from(store: MetadataStore, channel: str, release: Release) -> Release | None:
    """The channel's current release of the same app when `release` has a lower version."""
    current = await current_release(store, channel)
    if current is not None and current.app == release.app \
            and is_lower(release.version, current.version):
        return current
    return None


async def start(store: MetadataStore, channel: str, release: Release,
                policy: dict[str, Any], now: int | None = None, *,
                allow_downgrade_version: bool = False) -> Rollout:
    """Point `channel` at `release`. A previous rollout that reached 100% becomes the base.

    Raises Conflict: `already_rolling_out`, `not_newer`, `release_expired` (no board would
    take it), `release_yanked`, or `version_downgrade` (a lower version than the channel's
    current one, unless `allow_downgrade_version`: its sequence is higher, so boards would
    take it), or `rollout_moved` (another request changed the channel's rollout while this
    one checked it: nothing was started).
    """
    when = int(time.time()) if now is None else now
    if release.expired(when):
        raise Conflict(f"{release.app} {release.version} (sequence {release.sequence}) expired "
                       f"at {iso_utc(release.expires)}; boards refuse it: publish a new version",
                       code="release_expired")
    if release.yanked is not None:
        raise Conflict(f"{release.app} {release.version} (sequence {release.sequence}) was "
                       f"yanked at {iso_utc(release.yanked)}; publish a new version",
                       code="release_yanked")
    previous = await store.current_rollout(channel)
    base = await store.base_release(channel)
    if previous is not None:
        if previous.release.id == release.id and previous.state in _ACTIVE_STATES:
            raise Conflict(f"{release.app} sequence {release.sequence} is already rolling out "
                           f"on {channel!r}", code="already_rolling_out")
        if is_complete(previous):
            base = previous.release  # becomes the base below, once nothing is refused
    if base is not None and base.app == release.app and base.sequence >= release.sequence:
        raise Conflict(f"channel {channel!r} already has {base.app} sequence {base.sequence}; "
                       f"a rollout must be newer", code="not_newer")
    lower = await downgrade_from(store, channel, release)
    if lower is not None and not allow_downgrade_version:
        raise Conflict(f"{release.app} {release.version} is a lower version than "
                       f"{lower.version}, which channel {channel!r} runs now; its sequence "
                       f"{release.sequence} is higher, so boards would take it: give "
                       f"--allow-downgrade-version if that is what you want",
                       code="version_downgrade")
    new_base = previous.release.id if previous is not None and is_complete(previous) else None
    try:
        # One transaction, and only if the rollout checked above is still the channel's.
        return await store.start_rollout(channel, release.id, policy, base_release_id=new_base,
                                         replaces=None if previous is None else previous.id)
    except StoreConflict:
        raise Conflict(f"the rollout of channel {channel!r} changed while this one was being "
                       f"started; look at it again (`ota rollout status {channel}`)",
                       code="rollout_moved") from None


async def _require(store: MetadataStore, channel: str, states: tuple[str, ...],
                   action: str) -> Rollout:
    rollout = await store.current_rollout(channel)
    if rollout is None:
        raise Conflict(f"channel {channel!r} has no rollout to {action}", code="no_rollout")
    if rollout.state not in states:
        raise Conflict(f"cannot {action} a rollout that is {rollout.state}",
                       code="bad_rollout_state")
    return rollout


async def _move(store: MetadataStore, rollout: Rollout, action: str, *,
                stage: int | None = None, state: str | None = None,
                reason: str | None = None) -> Rollout:
    """Change `rollout` only from the stage and state it was read in (a conditional update:
    correct with any number of replicas); Conflict (`rollout_moved`) when another request
    moved it first, with nothing changed."""
    if not await store.update_rollout(rollout.id, stage=stage, state=state, reason=reason,
                                      expect_stage=rollout.stage, expect_state=rollout.state):
        raise Conflict(f"cannot {action}: the rollout of channel {rollout.channel!r} changed "
                       f"meanwhile; look at it again (`ota rollout status {rollout.channel}`)",
                       code="rollout_moved")
    found = await store.rollout(rollout.id)
    assert found is not None
    return found


async def pause(store: MetadataStore, channel: str, reason: str = "paused by hand") -> Rollout:
    rollout = await _require(store, channel, ("active",), "pause")
    return await _move(store, rollout, "pause", state="paused", reason=reason)


async def resume(store: MetadataStore, channel: str) -> Rollout:
    rollout = await _require(store, channel, ("paused",), "resume")
    return await _move(store, rollout, "resume", state="active", reason="resumed")


async def abort(store: MetadataStore, channel: str) -> Rollout:
    rollout = await _require(store, channel, _ACTIVE_STATES, "abort")
    return await _move(store, rollout, "abort", state="aborted", reason="aborted by hand")


async def advance(store: MetadataStore, channel: str) -> Rollout:
    rollout = await _require(store, channel, _ACTIVE_STATES, "advance")
    if rollout.stage + 1 >= len(rollout.policy["stages"]):
        raise Conflict("the rollout is already at its last stage", code="last_stage")
    return await _move(store, rollout, "advance", stage=rollout.stage + 1)


async def eligible_count(store: MetadataStore, channel: str, policy: dict[str, Any],
                         stage: int) -> int:
    """Boards of `channel` (not revoked) that stages 0..`stage` of the policy reach."""
    stages = policy["stages"][: stage + 1]
    tags = [s["tag"] for s in stages if "tag" in s]
    limit = max([s["percent"] * (BUCKETS // 100) for s in stages if "percent" in s], default=0)
    return await store.count_eligible(channel, tags, limit)


def success_target(rollout: Rollout, eligible: int) -> int:
    """Confirmations needed to leave the current stage: the stage's `success`, or by default
    half the `eligible` boards the stage reaches (at least 1)."""
    spec = rollout.policy["stages"][rollout.stage]
    if "success" in spec:
        return int(spec["success"])
    return max(1, math.ceil(eligible / 2))


def min_results(policy: dict[str, Any], eligible: int) -> int:
    """Results (confirmed, failed, rolled back) needed before the failure rate may pause the
    rollout: the policy's `min_results`, or by default half the `eligible` boards the current
    stage reaches, at most MIN_RESULTS_CAP and at least 1 (docs/operations.md)."""
    if policy.get("min_results") is not None:
        return int(policy["min_results"])
    return max(1, min(MIN_RESULTS_CAP, math.ceil(eligible / 2)))


def would_pause(failures: int, results: int, policy: dict[str, Any], needed: int) -> bool:
    """The automatic pause rule: at least `needed` results, and failures / results above the
    threshold (compared exactly, as fractions: no rounding decides a pause)."""
    return results >= needed and results > 0 and \
        Fraction(failures, results) > Fraction(policy["failure_threshold"])


def failures_to_pause(failures: int, results: int, policy: dict[str, Any],
                      needed: int) -> int | None:
    """How many more failures, with no other result in between, would pause the rollout;
    0 when the rule already holds, None when no number can (a threshold of 1)."""
    threshold = Fraction(policy["failure_threshold"])
    if threshold >= 1:
        return None
    # f + k > t (r + k)  <=>  k > (t r - f) / (1 - t): the least such k, in exact fractions;
    # and at least `needed` results.
    by_rate = max(0, math.floor((threshold * results - failures) / (1 - threshold)) + 1)
    return max(by_rate, needed - results)


async def after_report(store: MetadataStore, channel: str, release_id: int, *,
                       epoch: int | None = None) -> None:
    """Apply automatic pause and automatic advance after a board reported on `release_id`
    for a deployment that `channel` opened; only that channel's counts decide. `epoch`: the
    fleet epoch of the report's counter statement (current_rollout); every move is
    conditional on the stage and state read, so a rollout moved meanwhile is left alone."""
    rollout = await store.current_rollout(channel, epoch=epoch)
    if rollout is None or rollout.release.id != release_id or rollout.state != "active":
        return
    counts = await store.deployment_counts(release_id, channel)
    policy = rollout.policy
    last = len(policy["stages"]) - 1
    may_advance = policy["auto_advance"] and rollout.stage < last
    if counts.failures == 0 and not may_advance:
        # No failure cannot pause (the threshold is at least 0) and there is no stage to
        # advance to: counting the eligible boards, a query over the whole fleet, would decide
        # nothing. Most reports are a confirmation on a rollout's last stage (figure S5).
        return
    eligible = await eligible_count(store, channel, policy, rollout.stage)
    if would_pause(counts.failures, counts.results, policy, min_results(policy, eligible)):
        # Conditional, as every automatic move: of two reports deciding together (on two
        # replicas), one moves the rollout and the other finds it moved and does nothing.
        await store.update_rollout(
            rollout.id, state="paused",
            reason=f"auto-paused: {counts.failures} of {counts.results} boards failed or "
                   f"rolled back (threshold {policy['failure_threshold']:.0%})",
            expect_stage=rollout.stage, expect_state="active")
        return
    if may_advance and counts.confirmed >= success_target(rollout, eligible):
        await store.update_rollout(rollout.id, stage=rollout.stage + 1,
                                   expect_stage=rollout.stage, expect_state="active")


def iso_utc(when: int) -> str:
    """Unix time as ISO 8601 UTC, for messages."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _release_view(release: Release, now: int) -> dict[str, Any]:
    return {**release.view(), "expired": release.expired(now)}


def _stage_name(spec: dict[str, Any]) -> str:
    return f"tag {spec['tag']}" if "tag" in spec else f"{spec['percent']:g}%"


async def _reach(store: MetadataStore, rollout: Rollout, boards: int) -> list[dict[str, Any]]:
    """Each stage with the boards it makes eligible (cumulative) of the channel's `boards`."""
    out = []
    for index, spec in enumerate(rollout.policy["stages"]):
        count = await eligible_count(store, rollout.channel, rollout.policy, index)
        out.append({"stage": index, "name": _stage_name(spec), "eligible": count,
                    "boards": boards, "text": f"{count} of {boards} boards eligible"})
    return out


def _progress(rollout: Rollout, counts: Any, eligible: int) -> dict[str, Any]:
    """How far the rollout is from pausing on its own and from advancing on its own."""
    policy = rollout.policy
    needed = min_results(policy, eligible)
    to_pause = failures_to_pause(counts.failures, counts.results, policy, needed) \
        if rollout.state == "active" else None
    last = rollout.stage + 1 >= len(policy["stages"])
    target = success_target(rollout, eligible)
    to_advance = None if last or not policy["auto_advance"] or rollout.state != "active" \
        else max(0, target - counts.confirmed)
    return {"results": counts.results, "failures": counts.failures,
            "confirmed": counts.confirmed, "min_results": needed,
            "min_results_rule": "policy" if policy.get("min_results") is not None
            else f"min({MIN_RESULTS_CAP}, half of {eligible} eligible)",
            "failure_threshold": policy["failure_threshold"],
            "failures_to_pause": to_pause, "success_target": target,
            "confirmations_to_advance": to_advance}


def _warnings(rollout: Rollout, reach: list[dict[str, Any]]) -> list[str]:
    """What an operator must know to see the rollout move: a stage that reaches no board."""
    if rollout.state not in _ACTIVE_STATES:
        return []
    current = reach[rollout.stage]
    if current["eligible"]:
        return []
    channel = rollout.channel
    if not current["boards"]:
        return [f"channel {channel!r} has no boards: no board is offered "
                f"{rollout.release.app} {rollout.release.version}"]
    return [f"stage {rollout.stage + 1} ({current['name']}) reaches 0 of {current['boards']} "
            f"boards of channel {channel!r}: no board is offered {rollout.release.app} "
            f"{rollout.release.version} until the rollout advances (`ota rollout advance "
            f"{channel}`)"]


async def status(store: MetadataStore, channel: str, now: int | None = None) -> dict[str, Any]:
    """The channel's rollout state as the API and CLI show it; each release says whether it
    has `expired` (then it is offered to no board). A rollout shows each stage's reach ("N of
    M boards eligible"), how far it is from pausing or advancing on its own, and `warnings`
    (a current stage that reaches no board)."""
    when = int(time.time()) if now is None else now
    rollout = await store.current_rollout(channel)
    base = await store.base_release(channel)
    out: dict[str, Any] = {"channel": channel,
                           "base": _release_view(base, when) if base else None,
                           "rollout": None, "warnings": []}
    if rollout is not None:
        counts = await store.deployment_counts(rollout.release.id, channel)
        boards = (await store.board_counts()).get(channel, 0)
        reach = await _reach(store, rollout, boards)
        out["warnings"] = _warnings(rollout, reach)
        out["rollout"] = {
            "id": rollout.id, "release": _release_view(rollout.release, when),
            "state": rollout.state,
            "stage": rollout.stage, "stages": rollout.policy["stages"],
            "current_stage": rollout.policy["stages"][rollout.stage],
            "policy": rollout.policy, "reason": rollout.reason,
            "created": rollout.created, "updated": rollout.updated,
            "counts": {k: getattr(counts, k) for k in
                       ("offered", "downloading", "installed", "confirmed", "failed",
                        "rolled_back")},
            "reach": reach,
            "progress": _progress(rollout, counts, reach[rollout.stage]["eligible"]),
        }
    return out
