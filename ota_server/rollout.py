"""Staged rollouts: which release a board is offered, and how a rollout moves on its own.

A rollout points a channel at one release with a policy:

    {"stages": [{"tag": "canary"}, {"percent": 10}, {"percent": 50}, {"percent": 100}],
     "auto_advance": true,       # advance when the stage's `success` count of confirmations is met
     "failure_threshold": 0.2,   # pause when (failed + rolled_back) / results > this ...
     "min_results": 10}          # ... once at least this many boards finished

Stages are cumulative: at stage k a board is eligible if it matches any stage 0..k. A percent
stage takes the boards whose stable bucket (sha256 of the device id, 0..9999) is below
percent * 100, so the same boards are chosen on every check-in and a larger percentage keeps
them. Boards outside the stage get the channel's base release (the last release that reached
100% before this rollout) if that is newer than what they run.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

from ota_server.errors import BadRequest, Conflict
from ota_server.storage import Device, MetadataStore, Release, Rollout
from ota_server.storage.records import STARTED_STATUSES

BUCKETS = 10_000
DEFAULT_STAGES: list[dict[str, Any]] = [
    {"tag": "canary"}, {"percent": 10}, {"percent": 50}, {"percent": 100}]
DEFAULT_THRESHOLD = 0.2
DEFAULT_MIN_RESULTS = 10
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
    min_results = raw.get("min_results", DEFAULT_MIN_RESULTS)
    if isinstance(min_results, bool) or not isinstance(min_results, int) or min_results < 1:
        raise BadRequest("policy.min_results must be a positive integer", code="bad_policy")
    return {"stages": stages, "auto_advance": auto, "failure_threshold": float(threshold),
            "min_results": min_results}


def percent_policy(percent: float) -> dict[str, Any]:
    """The one-stage policy behind `ota rollout start CHANNEL --percent P`."""
    return normalize_policy({"stages": [{"percent": percent}]})


def eligible(device: Device, policy: dict[str, Any], stage: int) -> bool:
    """Is the board inside stages 0..stage of the policy?"""
    for spec in policy["stages"][: stage + 1]:
        if "tag" in spec and spec["tag"] in device.tags:
            return True
        if "percent" in spec and device.bucket < spec["percent"] * (BUCKETS // 100):
            return True
    return False


def _fits(release: Release | None, app: str | None, sequence: int, board: str,
          now: int) -> bool:
    """Newer than what the board runs, the same app (or none yet), built for its board, and
    not expired (the board would refuse it, and ask again at every check-in)."""
    return (release is not None and (not app or app == release.app)
            and release.sequence > sequence and board in release.boards
            and not release.expired(now))


def release_for(store: MetadataStore, device: Device, app: str | None,
                sequence: int, board: str, now: int | None = None) -> Release | None:
    """The release to offer a `board` running (`app`, `sequence`) at `now` (Unix time; the
    clock when None), or None: "nothing new".

    A paused rollout is offered only to boards that already started it (downloading or
    installed), so they can finish; an aborted one to nobody; an expired release to nobody.
    """
    when = int(time.time()) if now is None else now
    rollout = store.current_rollout(device.channel)
    if rollout is not None and rollout.state in _ACTIVE_STATES \
            and _fits(rollout.release, app, sequence, board, when):
        if rollout.state == "active" and eligible(device, rollout.policy, rollout.stage):
            return rollout.release
        status = store.deployment_status(device.device_id, rollout.release.id)
        if status in STARTED_STATUSES:
            return rollout.release
    base = store.base_release(device.channel)
    return base if _fits(base, app, sequence, board, when) else None


def is_complete(rollout: Rollout) -> bool:
    """An active rollout whose current stage covers every board."""
    spec = rollout.policy["stages"][rollout.stage]
    return rollout.state == "active" and spec.get("percent") == 100


def start(store: MetadataStore, channel: str, release: Release,
          policy: dict[str, Any], now: int | None = None) -> Rollout:
    """Point `channel` at `release`. A previous rollout that reached 100% becomes the base.

    Raises Conflict: `already_rolling_out`, `not_newer`, or `release_expired` (no board would
    take it).
    """
    when = int(time.time()) if now is None else now
    if release.expired(when):
        raise Conflict(f"{release.app} {release.version} (sequence {release.sequence}) expired "
                       f"at {iso_utc(release.expires)}; boards refuse it: publish a new version",
                       code="release_expired")
    previous = store.current_rollout(channel)
    if previous is not None:
        if previous.release.id == release.id and previous.state in _ACTIVE_STATES:
            raise Conflict(f"{release.app} sequence {release.sequence} is already rolling out "
                           f"on {channel!r}", code="already_rolling_out")
        if is_complete(previous):
            store.set_base_release(channel, previous.release.id)
    base = store.base_release(channel)
    if base is not None and base.app == release.app and base.sequence >= release.sequence:
        raise Conflict(f"channel {channel!r} already has {base.app} sequence {base.sequence}; "
                       f"a rollout must be newer", code="not_newer")
    return store.start_rollout(channel, release.id, policy)


def _require(store: MetadataStore, channel: str, states: tuple[str, ...], action: str) -> Rollout:
    rollout = store.current_rollout(channel)
    if rollout is None:
        raise Conflict(f"channel {channel!r} has no rollout to {action}", code="no_rollout")
    if rollout.state not in states:
        raise Conflict(f"cannot {action} a rollout that is {rollout.state}",
                       code="bad_rollout_state")
    return rollout


def pause(store: MetadataStore, channel: str, reason: str = "paused by hand") -> Rollout:
    rollout = _require(store, channel, ("active",), "pause")
    store.update_rollout(rollout.id, state="paused", reason=reason)
    return _reload(store, channel)


def resume(store: MetadataStore, channel: str) -> Rollout:
    rollout = _require(store, channel, ("paused",), "resume")
    store.update_rollout(rollout.id, state="active", reason="resumed")
    return _reload(store, channel)


def abort(store: MetadataStore, channel: str) -> Rollout:
    rollout = _require(store, channel, _ACTIVE_STATES, "abort")
    store.update_rollout(rollout.id, state="aborted", reason="aborted by hand")
    return _reload(store, channel)


def advance(store: MetadataStore, channel: str) -> Rollout:
    rollout = _require(store, channel, _ACTIVE_STATES, "advance")
    if rollout.stage + 1 >= len(rollout.policy["stages"]):
        raise Conflict("the rollout is already at its last stage", code="last_stage")
    store.update_rollout(rollout.id, stage=rollout.stage + 1)
    return _reload(store, channel)


def _reload(store: MetadataStore, channel: str) -> Rollout:
    found = store.current_rollout(channel)
    assert found is not None
    return found


def success_target(store: MetadataStore, rollout: Rollout) -> int:
    """Confirmations needed to leave the current stage: the stage's `success`, or by default
    half the boards the stage makes eligible (at least 1)."""
    spec = rollout.policy["stages"][rollout.stage]
    if "success" in spec:
        return int(spec["success"])
    return max(1, math.ceil(eligible_count(store, rollout) / 2))


def eligible_count(store: MetadataStore, rollout: Rollout) -> int:
    """The active boards of the rollout's channel inside its stages 0..stage (as `eligible`
    decides for one board)."""
    stages = rollout.policy["stages"][: rollout.stage + 1]
    tags = [s["tag"] for s in stages if "tag" in s]
    limit = max([s["percent"] * (BUCKETS // 100) for s in stages if "percent" in s], default=0)
    return store.count_eligible(rollout.channel, tags, limit)


def after_report(store: MetadataStore, channel: str, release_id: int) -> None:
    """Apply automatic pause and automatic advance after a board reported on `release_id`
    for a deployment that `channel` opened; only that channel's counts decide."""
    rollout = store.current_rollout(channel)
    if rollout is None or rollout.release.id != release_id or rollout.state != "active":
        return
    counts = store.deployment_counts(release_id, channel)
    policy = rollout.policy
    if counts.results >= policy["min_results"] and \
            counts.failures / counts.results > policy["failure_threshold"]:
        store.update_rollout(
            rollout.id, state="paused",
            reason=f"auto-paused: {counts.failures} of {counts.results} boards failed or "
                   f"rolled back (threshold {policy['failure_threshold']:.0%})")
        return
    last = len(policy["stages"]) - 1
    if policy["auto_advance"] and rollout.stage < last \
            and counts.confirmed >= success_target(store, rollout):
        store.update_rollout(rollout.id, stage=rollout.stage + 1)


def iso_utc(when: int) -> str:
    """Unix time as ISO 8601 UTC, for messages."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _release_view(release: Release, now: int) -> dict[str, Any]:
    return {**release.view(), "expired": release.expired(now)}


def status(store: MetadataStore, channel: str, now: int | None = None) -> dict[str, Any]:
    """The channel's rollout state as the API and CLI show it; each release says whether it
    has `expired` (then it is offered to no board)."""
    when = int(time.time()) if now is None else now
    rollout = store.current_rollout(channel)
    base = store.base_release(channel)
    out: dict[str, Any] = {"channel": channel,
                           "base": _release_view(base, when) if base else None,
                           "rollout": None}
    if rollout is not None:
        counts = store.deployment_counts(rollout.release.id, channel)
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
        }
    return out
