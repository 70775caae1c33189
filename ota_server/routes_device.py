"""Board endpoints: check-in, root metadata, status reports (docs/protocol.md); blobs and packs
are answered in ota_server/blob_answers.py.

Every handler here is `@device`: the auth middleware has already verified the board's signed
request and its counter, and put the board and the exact body bytes on the request.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from aiohttp import web

from ota_server import rollout, state
from ota_server.counters import WRITE_BEHIND_SECONDS
from ota_server.errors import ApiError, BadRequest, Conflict, NotFound
from ota_server.middleware import device, device_records_behind
from ota_server.storage import (
    DEPLOYMENT_STATUSES,
    BoardIdentity,
    Deployment,
    MetadataStore,
)
from ota_server.storage.records import FINAL_STATUSES, RECORDS_COUNTER
from ota_server.validation import name, optional, parse_json_object, required

ENVELOPE_TYPE = "application/vnd.dsse+json"
# A report's reason: at most this many bytes of UTF-8, no control characters (docs/protocol.md,
# "Report reasons"). The board sends printable ASCII of at most 200 bytes for an app's
# exception; its other reasons are its own short messages.
MAX_REASON_BYTES = 256


async def _envelope(app: web.Application, release_id: int) -> bytes:
    cache = app[state.ENVELOPES]
    envelope = cache.get(release_id)
    if envelope is None:  # releases are immutable, so the cache never goes stale
        envelope = cache[release_id] = await app[state.STORE].envelope(release_id)
    return envelope


def _counter(doc: dict[str, Any], field: str, what: str) -> int | None:
    value = optional(doc, field, int, what)
    if value is not None and value < 0:
        raise BadRequest(f"{what}: field {field!r} must not be negative", code="bad_field")
    return value


@device_records_behind
async def checkin(request: web.Request) -> web.Response:
    """204: nothing new; 200: the envelope of the manifest to install. Records inventory."""
    found: BoardIdentity = request[state.DEVICE]
    doc = parse_json_object(request[state.BODY], "check-in")
    what = "check-in"
    app_name = optional(doc, "app", str, what)
    if app_name:
        name(app_name, "check-in app")
    sequence = _counter(doc, "sequence", what)
    root_version = _counter(doc, "root_version", what)
    board = optional(doc, "board", str, what)
    slot = optional(doc, "slot", (str, int), what)
    inventory = {
        "app": app_name, "version": optional(doc, "version", str, what),
        "sequence": sequence, "root_version": root_version,
        "micropython": optional(doc, "micropython", str, what),
        "mem_free": _counter(doc, "mem_free", what),
        "slot": None if slot is None else str(slot),
        # Written behind, maybe after a later request of the board through another process
        # wrote its own records: only over older ones (storage.records.RECORDS_COUNTER).
        RECORDS_COUNTER: request[state.COUNTER],
    }
    store = request.app[state.STORE]
    headers = {}
    latest = request.app[state.TRUST].latest.version
    if root_version is not None and latest > root_version:
        headers["X-Ota-Root"] = str(latest)
    metrics = request.app[state.METRICS]
    offer = await rollout.release_for(store, found, app_name, sequence or 0, board or found.board,
                                      epoch=request.get(state.FLEET_EPOCH))
    # Written behind (ota_server.counters): in the database before any later request is
    # handled. The whole inventory: `found` is the board's identity only (what never
    # changes), not its stored inventory.
    # Replicas (PostgreSQL) share the database: the board's next request (its report) may
    # reach another one, which must find the offer there, so the offer is written now (one
    # statement shared with the offers of the same turn of the loop) and only the inventory
    # behind (ota_server.counters, "Replicas").
    writes = request.app[state.BOARD_WRITES]
    offer_now = offer is not None and writes.shared
    writes.record_checkin(found.device_id, inventory,
                          None if offer is None or offer_now else offer.id, found.channel)
    if offer is None:
        metrics.inc("mpota_checkins_total", outcome="nothing_new")
        return web.Response(status=204, headers=headers)
    if offer_now:
        await writes.write_offer(found.device_id, offer.id, found.channel)
    metrics.inc("mpota_checkins_total", outcome="offered")
    grants = request.app.get(state.GRANTS)
    if grants is not None:  # the downloads of this offer need no signature (ota_server.grants)
        headers["X-Ota-Grant"] = grants.mint(found.device_id, time.time(),
                                             request.app[state.SETTINGS].grant_lifetime)
    return web.Response(body=await _envelope(request.app, offer.id), content_type=ENVELOPE_TYPE,
                        headers=headers)


@device
async def root_metadata(request: web.Request) -> web.Response:
    """The root metadata envelope of one version, for a board walking a rotation."""
    raw = request.match_info["version"]
    if not re.fullmatch(r"[0-9]{1,9}", raw):
        raise BadRequest(f"root version must be a positive integer, got {raw[:20]!r}",
                         code="bad_version")
    envelope = await request.app[state.TRUST].envelope(int(raw))
    if envelope is None:
        raise NotFound(f"no root metadata version {int(raw)}", code="unknown_root")
    return web.Response(body=envelope, content_type=ENVELOPE_TYPE)


# Reports that may name the release the board runs rather than the one that failed.
_REDIRECTED = ("failed", "rolled_back")
# How long a report through one worker waits for an offer another worker writes behind: the
# offer is in the database WRITE_BEHIND_SECONDS after its check-in, and this leaves three
# times that for the write itself on a loaded server.
PEER_OFFER_WAIT_S = 4 * WRITE_BEHIND_SECONDS


# Once confirmed, a deployment only changes again by a rollback.
def _may_replace(old: str | None, new: str) -> bool:
    return old != "confirmed" or new == "rolled_back"


@device
async def report(request: web.Request) -> web.Response:
    """Move the board's deployment of a release to `status`; may pause or advance the rollout
    of the channel that opened the deployment.

    Only a deployment the server opened for this board (a check-in offered it the release)
    moves: a report about anything else is refused (404 `unknown_release`, 409 `not_offered`),
    counted in `mpota_reports_refused_total` and changes nothing but the board's counter.
    """
    found: BoardIdentity = request[state.DEVICE]
    what = "report"
    doc = parse_json_object(request[state.BODY], what)
    app_name = required(doc, "app", str, what)
    sequence = _counter(doc, "sequence", what)
    if sequence is None:
        raise BadRequest("report: field 'sequence' is required", code="bad_field")
    status = required(doc, "status", str, what)
    if status not in DEPLOYMENT_STATUSES:
        raise BadRequest(f"report: status must be one of {list(DEPLOYMENT_STATUSES)}, "
                         f"got {status[:40]!r}", code="bad_status")
    # A board that runs no app yet reports a failed first install with app "" (it names
    # what it runs); anything else must name an app.
    if app_name or status not in _REDIRECTED:
        name(app_name, "report app")
    version = optional(doc, "version", str, what)
    reason = report_reason(doc.get("reason"))
    store = request.app[state.STORE]
    metrics = request.app[state.METRICS]
    offline = doc.get("offline") in (1, True)
    try:
        try:
            deployment = await _deployment_seen_by_every_worker(
                request, found.device_id, app_name, sequence, status)
        except (NotFound, Conflict):
            if not offline:
                raise
            deployment = await _offline_deployment(store, found, app_name, sequence)
    except ApiError as err:
        metrics.inc("mpota_reports_refused_total", code=err.code)
        raise
    inventory: dict[str, Any] = {"last_status": status, RECORDS_COUNTER: request[state.COUNTER]}
    if status in ("failed", "rolled_back"):
        inventory["last_error"] = reason or status
    if status == "confirmed":
        release = await store.release_by_id(deployment.release_id)
        assert release is not None
        inventory.update(app=release.app, version=release.version, sequence=release.sequence,
                         last_error=None)
    elif status == "rolled_back" and version is not None:
        inventory["version"] = version
    # The move, its history row and the inventory: one transaction, one commit.
    if not (_may_replace(deployment.status, status) and await store.set_deployment(
            found.device_id, deployment.release_id, status, reason, inventory=inventory)):
        await store.record_checkin(found.device_id, inventory)
    metrics.inc("mpota_reports_total", status=status)
    if status in FINAL_STATUSES:
        await rollout.after_report(store, deployment.channel, deployment.release_id,
                                   epoch=request.get(state.FLEET_EPOCH))
    return web.Response(status=204)


async def _deployment_seen_by_every_worker(request: web.Request, device_id: str, app: str,
                                           sequence: int, status: str) -> Deployment:
    """_deployment_for; on a worker of `ota serve --workers N`, a report refused for want of a
    deployment looks again every WRITE_BEHIND_SECONDS for PEER_OFFER_WAIT_S first: the offer
    may be queued in the worker that answered the check-in, which writes it behind
    (ota_server.counters), at most WRITE_BEHIND_SECONDS after its check-in (docs/operations.md,
    Workers)."""
    store = request.app[state.STORE]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PEER_OFFER_WAIT_S if state.WORKER in request.app else None
    while True:
        try:
            return await _deployment_for(store, device_id, app, sequence, status)
        except (NotFound, Conflict):
            if deadline is None or loop.time() >= deadline:
                raise
            await asyncio.sleep(WRITE_BEHIND_SECONDS)


def report_reason(value: Any) -> str | None:
    """A report's `reason`: None (absent or null) or a string of at most MAX_REASON_BYTES
    bytes of UTF-8 without control characters (C0, DEL, C1: what could forge lines or
    escape sequences on an operator's terminal). Raises BadRequest (`bad_field`) saying
    which rule it broke; nothing is stored then."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"report: field 'reason' must be a string or null, got "
                         f"{type(value).__name__}", code="bad_field")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate (a \ud800 escape): not text
        raise BadRequest("report: field 'reason' is not valid UTF-8 (a lone surrogate)",
                         code="bad_field") from None
    if size > MAX_REASON_BYTES:
        raise BadRequest(f"report: field 'reason' is {size} bytes of UTF-8, at most "
                         f"{MAX_REASON_BYTES} are allowed", code="bad_field")
    for at, char in enumerate(value):
        if char < " " or "\x7f" <= char <= "\x9f":
            raise BadRequest(f"report: field 'reason' has control character U+{ord(char):04X} "
                             f"at {at}", code="bad_field")
    return value


# The channel of a deployment a board opened itself, by installing a release over USB: no
# channel is named so, so no rollout ever counts it (docs/protocol.md, Reports).
OFFLINE_CHANNEL = ""


async def _offline_deployment(store: MetadataStore, device: BoardIdentity, app: str,
                              sequence: int) -> Deployment:
    """The deployment of a release the board says it installed over USB (`offline`: ota
    install, docs/board.md), opened now if the server had none: its history and inventory
    record it, and no rollout counts it. Raises NotFound (`unknown_release`) for a release
    the server does not have, Conflict (`wrong_board`) for one not built for this board."""
    named = await store.release(app, sequence) if app else None
    if named is None:
        raise NotFound(f"no release {app!r} sequence {sequence} for this board",
                       code="unknown_release")
    if device.board not in named.boards:
        raise Conflict(f"{app} sequence {sequence} is not a release for board "
                       f"{device.board!r}", code="wrong_board")
    await store.open_deployment_for(device.device_id, named.id, OFFLINE_CHANNEL)
    opened = await store.deployment(device.device_id, named.id)
    assert opened is not None
    return opened


async def _deployment_for(store: MetadataStore, device_id: str, app: str, sequence: int,
                          status: str) -> Deployment:
    """The deployment a report is about: one the server opened for this board.

    The report names a release by (`app`, `sequence`). `failed` and `rolled_back` may name the
    release the board runs (the old one, e.g. when the new manifest failed to verify): when
    the board has no deployment of the named release, or has confirmed it, they go to its
    newest unfinished deployment of a newer release of the app (of any app for a board that
    runs none: `app` "", `sequence` 0).
    Raises NotFound (`unknown_release`) when neither the release nor such a deployment exists,
    Conflict (`not_offered`) when the release exists but was never offered to this board.
    """
    named = await store.release(app, sequence) if app else None
    opened = None if named is None else await store.deployment(device_id, named.id)
    if status in _REDIRECTED and (opened is None or opened.status == "confirmed"):
        newer_id = await store.open_deployment(device_id, app or None)
        newer = None if newer_id is None else await store.release_by_id(newer_id)
        if newer is not None and newer.sequence > sequence:
            deployment = await store.deployment(device_id, newer.id)
            if deployment is not None:
                return deployment
    if opened is not None:
        return opened
    if named is None:
        raise NotFound(f"no release {app!r} sequence {sequence} for this board",
                       code="unknown_release")
    raise Conflict(f"{app} sequence {sequence} was never offered to this board: a report "
                   f"counts only for a release the server offered it", code="not_offered")
