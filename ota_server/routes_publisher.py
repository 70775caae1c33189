"""Publisher endpoints (bearer token): blobs, releases, roots, boards, channels and rollouts."""

from __future__ import annotations

import asyncio
import base64
import binascii
import difflib
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ota_server import rollout, state
from ota_server.errors import (
    ApiError,
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
)
from ota_server.middleware import admin, publisher, reader
from ota_server.rollout import bucket_of, normalize_policy, percent_policy
from ota_server.storage import MetadataStore, Release
from ota_server.storage.blobs import BlobHashMismatch, BlobTooLarge
from ota_server.storage.errors import StoreConflict, StoreNotFound
from ota_server.storage.records import AuditEntry
from ota_server.trust import RootRotationRace
from ota_server.validation import (
    BodyTimeout,
    blob_id,
    name,
    optional,
    read_body,
    read_json,
    required,
)
from signing import errors as trust_errors
from signing.dsse import parse_envelope, valid_keyids
from signing.keys import POINT_SIZE, public_key_from_point
from signing.manifest import _SEMVER as SEMVER  # the manifest's own version rule
from signing.manifest import MANIFEST_PAYLOAD_TYPE, Manifest
from signing.verify import verify_manifest

_MAX_MISSING_QUERY = 10_000
MAX_AUDIT_ROWS = 1000
_MAX_TAGS = 32
_CHUNK = 256 * 1024

# TrustError class -> (status, stable code) for refused uploads.
_TRUST_CODES: list[tuple[type[Exception], int, str]] = [
    (trust_errors.TooLargeError, 413, "too_large"),
    (trust_errors.PayloadTypeError, 422, "wrong_payload_type"),
    (trust_errors.MalformedError, 422, "malformed"),
    (trust_errors.ThresholdError, 422, "signature_threshold"),
    (trust_errors.ExpiredError, 422, "expired"),
    (trust_errors.RotationError, 422, "bad_rotation"),
    (trust_errors.TrustError, 422, "untrusted"),
]


def trust_error(err: Exception, what: str) -> ApiError:
    for kind, status, code in _TRUST_CODES:
        if isinstance(err, kind):
            return ApiError(f"{what}: {type(err).__name__}: {err}", code=code, status=status)
    raise err


# -- blobs ------------------------------------------------------------------------------------

@publisher
async def put_blob(request: web.Request) -> web.Response:
    """Upload one blob under its SHA-256; 201 new, 200 already present. Streamed to disk."""
    sha256 = blob_id(request.match_info["sha256"])
    limits = request.app[state.SETTINGS].limits
    limit = limits.max_blob_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"blob is larger than the limit of {limit} bytes")
    blobs = request.app[state.BLOBS]
    try:
        # the whole upload within one deadline; put_stream removes its partial file
        async with asyncio.timeout(limits.upload_timeout):
            if await blobs.exists(sha256):
                await request.release()  # drain; the content is already here
                return web.json_response({"blob": sha256, "created": False}, status=200)
            created = await blobs.put_stream(sha256, request.content.iter_chunked(_CHUNK),
                                             limit)
    except TimeoutError:
        raise BodyTimeout(f"blob upload did not arrive whole within "
                          f"{limits.upload_timeout:g} s") from None
    except HttpProcessingError:
        raise BadRequest("blob upload: the body's framing is broken (Content-Length or "
                         "chunked encoding)", code="bad_body") from None
    except BlobTooLarge as err:
        raise PayloadTooLarge(str(err)) from None
    except BlobHashMismatch as err:
        raise BadRequest(str(err), code="hash_mismatch") from None
    return web.json_response({"blob": sha256, "created": created}, status=201 if created else 200)


@reader
async def missing_blobs(request: web.Request) -> web.Response:
    """Which of the given blob ids the server does not have yet."""
    doc = await read_json(request, "missing blobs",
                          request.app[state.SETTINGS].limits.max_query_bytes)
    wanted = required(doc, "blobs", list, "missing blobs")
    if len(wanted) > _MAX_MISSING_QUERY:
        raise BadRequest(f"missing blobs: at most {_MAX_MISSING_QUERY} ids", code="bad_field")
    if not all(isinstance(b, str) for b in wanted):
        raise BadRequest("missing blobs: 'blobs' must be a list of strings", code="bad_field")
    blobs = request.app[state.BLOBS]
    return web.json_response(
        {"missing": [b for b in dict.fromkeys(wanted) if not await blobs.exists(blob_id(b))]})


# -- releases ---------------------------------------------------------------------------------

@publisher
async def register_release(request: web.Request) -> web.Response:
    """Register a signed manifest envelope: verified, every blob present, version and sequence
    new (docs/protocol.md, "Releases: versions and sequences").

    A version that is already registered answers 200 with that release when the new manifest
    has the same content (a re-publish, a retry after a crash), 409 `version_exists` otherwise.
    A sequence that is taken, reserved for another version, or not above the app's latest
    without being reserved for this version is a 409.
    """
    limits = request.app[state.SETTINGS].limits
    envelope = await read_body(request, limits.max_envelope_bytes, "release")
    # The newest root in the store: another replica may have rotated it.
    root = await request.app[state.TRUST].current()
    now = int(time.time())
    if root.expires <= now:
        raise Conflict(f"the server's newest root (version {root.version}) has expired; "
                       f"upload a rotated root first", code="root_expired")
    try:
        manifest = verify_manifest(envelope, root, now=now)
    except trust_errors.ThresholdError as err:
        raise _untrusted_signers(envelope, root, err) from None
    except trust_errors.TrustError as err:
        raise trust_error(err, "release") from None
    # Before the blobs: `ota publish` registers first, so a file the server would refuse is
    # named before a byte of the bundle is uploaded.
    for entry in manifest.files:
        if entry.transfer_size > limits.max_blob_bytes:
            raise PayloadTooLarge(f"release: file {entry.path!r} is {entry.transfer_size} "
                                  f"bytes to transfer, over the server's limit of "
                                  f"{limits.max_blob_bytes} bytes per file", code="file_too_large")
    store = request.app[state.STORE]
    request[state.AUDIT_TARGET] = f"{manifest.app} {manifest.version}"
    same = await _registered_version(store, manifest, envelope, now)
    if same is not None:
        return web.json_response(same.view(), status=200)
    await _check_sequence(store, manifest)
    blobs = request.app[state.BLOBS]
    needed: dict[str, int] = {}
    for entry in manifest.files:
        needed[entry.blob] = entry.transfer_size
    missing = [b for b in needed if not await blobs.exists(b)]
    if missing:
        raise Conflict(f"{len(missing)} blob(s) not uploaded yet: {', '.join(missing[:5])}",
                       code="missing_blobs")
    wrong = [b for b, size in needed.items() if await blobs.size(b) != size]
    if wrong:
        raise Conflict(f"blob {wrong[0]} is not the transfer_size the manifest declares",
                       code="blob_size_mismatch")
    # The key ids whose signature verified, for `ota releases list` (not those merely named).
    signers = sorted(valid_keyids(parse_envelope(envelope, MANIFEST_PAYLOAD_TYPE),
                                  root.role_keys(root.release)))
    try:
        release = await store.add_release(manifest.app, manifest.version, manifest.sequence,
                                          manifest.boards, envelope, sorted(needed.items()),
                                          manifest.expires, signers)
    except StoreConflict:
        raise Conflict(f"{manifest.app} {manifest.version} sequence {manifest.sequence} was "
                       f"registered concurrently", code="sequence_not_greater") from None
    request.app[state.METRICS].inc("mpota_releases_registered_total")
    return web.json_response(release.view(), status=201)


def _untrusted_signers(envelope: bytes, root: Any, err: Exception) -> ApiError:
    """The refusal of a manifest whose signatures do not meet the root's release threshold:
    the key ids it was signed with, the ones the server's newest root lists, and the fix."""
    try:
        used = sorted({s.keyid for s in parse_envelope(envelope, MANIFEST_PAYLOAD_TYPE)
                       .signatures})
    except trust_errors.TrustError:
        used = []
    role = root.release
    return ApiError(
        f"release: signed by key id(s) {', '.join(used) or 'none'}, but the server's root "
        f"(version {root.version}) lists release key id(s) {', '.join(role.keyids)} "
        f"(threshold {role.threshold}): {type(err).__name__}: {err}. After `ota keys rotate`, "
        f"upload the new root "
        f"first (`ota roots upload keys/root.json`); else sign with a key that root lists",
        code="signature_threshold", status=422)


def _content(manifest: Manifest) -> tuple[Any, ...]:
    """What a release delivers: everything in the manifest but its sequence and times."""
    return (manifest.app, manifest.version, manifest.boards, manifest.min_micropython,
            manifest.entry, manifest.files)


async def _registered_version(store: MetadataStore, manifest: Manifest, envelope: bytes,
                              now: int) -> Release | None:
    """The registered release of the manifest's version when the manifest has its content;
    None when the version is new. Raises Conflict (`version_exists`) when the version names
    a release of other content, or one that expired (boards refuse it; a new version is due).
    """
    existing = await store.release_by_version(manifest.app, manifest.version)
    if existing is None:
        return None
    stored = await store.envelope(existing.id)
    if stored == envelope:
        return existing  # the same upload again: a retry
    found = Manifest.from_payload(parse_envelope(stored, MANIFEST_PAYLOAD_TYPE).payload)
    if _content(found) != _content(manifest):
        raise Conflict(f"{manifest.app} {manifest.version} is already registered as sequence "
                       f"{existing.sequence} with other content; publish a new version",
                       code="version_exists")
    if existing.expired(now):
        raise Conflict(f"{manifest.app} {manifest.version} is already registered as sequence "
                       f"{existing.sequence}, which expired at {rollout.iso_utc(existing.expires)};"
                       f" publish a new version", code="version_exists")
    return existing


async def _check_sequence(store: MetadataStore, manifest: Manifest) -> None:
    """Refuse a sequence another release has, another version reserved, or one not above the
    app's latest unless the server reserved it for this version (Conflict)."""
    app, sequence = manifest.app, manifest.sequence
    taken = await store.release(app, sequence)
    if taken is not None:
        raise Conflict(f"{app} sequence {sequence} is already registered for version "
                       f"{taken.version}", code="sequence_not_greater")
    holder = await store.reserved_version(app, sequence)
    if holder is not None and holder != manifest.version:
        raise Conflict(f"{app} sequence {sequence} is reserved for version {holder}; let "
                       f"`ota publish` ask the server for a sequence", code="sequence_reserved")
    latest = await store.max_sequence(app)
    if holder is None and latest is not None and sequence <= latest:
        raise Conflict(f"{app} sequence {sequence} is not greater than the latest registered "
                       f"sequence {latest}", code="sequence_not_greater")


@publisher
async def reserve_sequence(request: web.Request) -> web.Response:
    """The sequence to sign `version` of `app` with: {"app", "version", "sequence",
    "registered"}. Asked again, it answers the same; two versions never get the same one; a
    new one is at least the server's clock in Unix seconds."""
    what = "sequence"
    doc = await read_json(request, what, request.app[state.SETTINGS].limits.max_json_bytes)
    app_name = name(required(doc, "app", str, what), "app")
    version = required(doc, "version", str, what)
    if not SEMVER.fullmatch(version):
        raise BadRequest(f"sequence: version {version!r} is not a semantic version "
                         f"(MAJOR.MINOR.PATCH)", code="bad_field")
    # The clock as a floor: above any sequence a board may run that the server never
    # registered (a first app installed at the factory, fleet.yaml `app.sequence`) and above
    # what `ota build` gave by default (the build time in Unix seconds).
    sequence, registered = await request.app[state.STORE].reserve_sequence(
        app_name, version, floor=int(time.time()))
    return web.json_response({"app": app_name, "version": version, "sequence": sequence,
                              "registered": registered})


async def _pointers(store: MetadataStore) -> dict[int, list[dict[str, str]]]:
    """Release id -> the channels pointing at it: as their base, or by a rollout (with its
    state)."""
    out: dict[int, list[dict[str, str]]] = {}
    for channel in await store.list_channels():
        base = await store.base_release(channel)
        if base is not None:
            out.setdefault(base.id, []).append({"channel": channel, "as": "base"})
        current = await store.current_rollout(channel)
        if current is not None and current.state != "aborted":
            out.setdefault(current.release.id, []).append(
                {"channel": channel, "as": f"rollout {current.state}"})
    return out


@reader
async def list_releases(request: web.Request) -> web.Response:
    """Releases (optionally of one app), each with its signer key ids, whether it is yanked
    or expired, and the channels pointing at it."""
    app_name = request.query.get("app")
    if app_name is not None:
        name(app_name, "app")
    store = request.app[state.STORE]
    releases = await store.list_releases(app_name)
    pointers = await _pointers(store)
    now = int(time.time())
    return web.json_response({"releases": [
        {**r.view(), "expired": r.expired(now), "channels": pointers.get(r.id, [])}
        for r in releases]})


async def _release_of(store: MetadataStore, app_name: str, version: str) -> Release:
    """The release `version` of `app_name` names; NotFound (`unknown_release`) naming the
    versions there are."""
    if not SEMVER.fullmatch(version):
        raise BadRequest(f"version {version[:40]!r} is not a semantic version "
                         f"(MAJOR.MINOR.PATCH)", code="bad_field")
    found = await store.release_by_version(app_name, version)
    if found is None:
        known = [r.version for r in await store.list_releases(app_name)][-5:]
        hint = f"; its latest versions: {', '.join(known)}" if known else \
            f"; no release of {app_name!r} is registered"
        raise NotFound(f"no release {app_name!r} {version}{hint}", code="unknown_release")
    return found


@publisher
async def yank_release(request: web.Request) -> web.Response:
    """Stop offering a release to any board (boards that run it keep it). Refused (409
    `rollout_active`) while a rollout of it is active or paused, unless {"force": true}: then
    those rollouts are aborted first."""
    app_name = name(request.match_info["app"], "app")
    version = request.match_info["version"]
    doc = await read_json(request, "yank", request.app[state.SETTINGS].limits.max_json_bytes) \
        if request.can_read_body else {}
    force = optional(doc, "force", bool, "yank") or False
    request[state.AUDIT_TARGET] = f"{app_name} {version[:40]}"
    return web.json_response(await yank(request.app[state.STORE], app_name, version, force=force))


# The API's yank handler above and the dashboard's Yank button (ota_server/ui) both go through
# yank, as the rollout actions go through act_on_rollout: one set of rules for both.
async def yank(store: MetadataStore, app_name: str, version: str, *,
               force: bool) -> dict[str, Any]:
    """Yank release `version` of `app_name` (a checked name); with `force`, abort its active
    or paused rollouts first. The yanked release's view with `aborted`, the channels whose
    rollouts were aborted.

    Raises BadRequest for a version that is not semantic, NotFound (`unknown_release`) for an
    unknown release, Conflict (`rollout_active`) while it rolls out and `force` is not given.
    """
    release = await _release_of(store, app_name, version)
    rolling = await store.rollouts_of(release.id)
    if rolling and not force:
        where = ", ".join(f"{r.channel!r} ({r.state})" for r in rolling)
        raise Conflict(f"{app_name} {version} is rolling out on {where}; abort the rollout "
                       f"first, or yank with --force to abort it", code="rollout_active")
    for found in rolling:
        await store.update_rollout(found.id, state="aborted",
                                   reason=f"aborted: {app_name} {version} was yanked")
    yanked = await store.yank_release(release.id)
    return {**yanked.view(), "aborted": [r.channel for r in rolling]}


async def _registered(request: web.Request) -> Release:
    """The release the path's {app} and {version} name; NotFound when none is registered."""
    app_name = name(request.match_info["app"], "app")
    version = request.match_info["version"]
    if not SEMVER.fullmatch(version):
        raise BadRequest(f"version {version[:40]!r} is not a semantic version (MAJOR.MINOR.PATCH)",
                         code="bad_field")
    release = await request.app[state.STORE].release_by_version(app_name, version)
    if release is None:
        raise NotFound(f"no release {app_name} {version}", code="unknown_release")
    return release


@reader
async def release_envelope(request: web.Request) -> web.Response:
    """A registered release's signed manifest envelope, the bytes its publisher signed
    (`ota install APP@VERSION` stages it on a board over USB)."""
    release = await _registered(request)
    return web.Response(body=await request.app[state.STORE].envelope(release.id),
                        content_type="application/vnd.dsse+json")


@reader
async def release_blob(request: web.Request) -> web.StreamResponse:
    """One blob of a registered release, for a publisher (`ota install APP@VERSION`); a blob
    the release does not name is 404 `unknown_blob`, stored or not."""
    release = await _registered(request)
    sha256 = blob_id(request.match_info["sha256"])
    try:
        if sha256 not in release.blobs:
            raise StoreNotFound(sha256)
        fobj = await request.app[state.BLOBS].open_blob(sha256)
    except StoreNotFound:
        raise NotFound(f"release {release.app} {release.version} has no blob {sha256}",
                       code="unknown_blob") from None
    # aiohttp streams the file in chunks and closes it once sent.
    return web.Response(body=fobj, headers={"Content-Type": "application/octet-stream"})


# -- roots ------------------------------------------------------------------------------------

@admin
async def upload_root(request: web.Request) -> web.Response:
    """Accept root metadata N+1, verified against the server's newest root N."""
    envelope = await read_body(request, request.app[state.SETTINGS].limits.max_envelope_bytes,
                                "root")
    try:
        new = await request.app[state.TRUST].rotate(envelope)
    except trust_errors.TrustError as err:
        raise trust_error(err, "root") from None
    except RootRotationRace as err:
        raise Conflict(f"root: {err}; look at `ota roots list`", code="root_exists") from None
    return web.json_response({"version": new.version, "expires": new.expires}, status=201)


@reader
async def list_roots(request: web.Request) -> web.Response:
    versions = [v for v, _ in await request.app[state.STORE].roots()]
    return web.json_response({"versions": versions,
                              "latest": (await request.app[state.TRUST].current()).version})


# -- boards -----------------------------------------------------------------------------------

def _tags(doc: dict[str, Any]) -> list[str]:
    tags = optional(doc, "tags", list, "device") or []
    if len(tags) > _MAX_TAGS or not all(isinstance(t, str) for t in tags):
        raise BadRequest(f"device: 'tags' must be a list of at most {_MAX_TAGS} names",
                         code="bad_field")
    return [name(t, "tag") for t in tags]


@publisher
async def register_device(request: web.Request) -> web.Response:
    """Add a board: id, public key (base64 65-byte point), board type, tags, channel.

    Registering the same id with the same key again answers 200 (a station retry); another
    key for an existing id is a 409.
    """
    from ota_server.device_auth import DEVICE_ID

    doc = await read_json(request, "device", request.app[state.SETTINGS].limits.max_json_bytes)
    device_id = required(doc, "device_id", str, "device")
    if not DEVICE_ID.fullmatch(device_id):
        raise BadRequest(f"device_id {device_id[:80]!r} must match {DEVICE_ID.pattern}",
                         code="bad_device_id")
    try:
        point = base64.b64decode(required(doc, "public_key", str, "device", max_len=200),
                                 validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("device: public_key is not base64", code="bad_public_key") from None
    try:
        public_key_from_point(point)
    except trust_errors.MalformedError as err:
        raise BadRequest(f"device: public_key: {err} ({POINT_SIZE} bytes expected)",
                         code="bad_public_key") from None
    board = name(required(doc, "board", str, "device"), "board")
    channel = _declared(request, optional(doc, "channel", str, "device") or "stable")
    tags = _tags(doc)
    request[state.AUDIT_TARGET] = device_id
    store = request.app[state.STORE]
    existing = await store.device(device_id)
    if existing is not None:
        if existing.public_key == point and existing.revoked is None:
            return web.json_response(existing.public_view(), status=200)
        raise Conflict(f"device {device_id!r} is already registered with another key or "
                       f"revoked", code="device_exists")
    try:
        added = await store.add_device(device_id, point, board, tags, channel,
                                       bucket_of(device_id))
    except StoreConflict:
        raise Conflict(f"device {device_id!r} was registered concurrently",
                       code="device_exists") from None
    return web.json_response(added.public_view(), status=201)


@reader
async def list_devices(request: web.Request) -> web.Response:
    devices = await request.app[state.STORE].list_devices()
    channel = request.query.get("channel")
    if channel is not None:
        _declared(request, channel)
    return web.json_response({"devices": [d.public_view() for d in devices
                                          if channel is None or d.channel == channel]})


async def _device_or_404(request: web.Request) -> Any:
    device_id = request.match_info["device_id"]
    found = await request.app[state.STORE].device(device_id)
    if found is None:
        raise NotFound(f"no device {device_id[:80]!r}", code="unknown_device")
    return found


@reader
async def show_device(request: web.Request) -> web.Response:
    """The board, its inventory and its deployment history (`history`, oldest first)."""
    found = await _device_or_404(request)
    history = await request.app[state.STORE].device_history(found.device_id)
    return web.json_response({**found.public_view(), "history": [h.view() for h in history]})


@admin
async def revoke_device(request: web.Request) -> web.Response:
    """Revoke a board: its requests are refused from now on (403 `revoked`)."""
    return web.json_response(
        await revoke_board(request.app[state.STORE], request.match_info["device_id"]))


# The API's revoke handler above and the dashboard's Revoke button both go through this.
async def revoke_board(store: MetadataStore, device_id: str) -> dict[str, Any]:
    """Revoke the board `device_id` (a board revoked before keeps its first time); its public
    view afterwards. Raises NotFound (`unknown_device`) for an unknown board."""
    found = await store.device(device_id)
    if found is None:
        raise NotFound(f"no device {device_id[:80]!r}", code="unknown_device")
    await store.revoke_device(found.device_id)
    revoked = await store.device(found.device_id)
    assert revoked is not None
    return revoked.public_view()


# -- channels and rollouts --------------------------------------------------------------------

def _declared(request: web.Request, channel: str) -> str:
    """`channel`, a valid name and, when the server runs with a fleet (--fleet), one the fleet
    declares; NotFound (`unknown_channel`) with the nearest declared names otherwise."""
    channel = name(channel, "channel")
    declared = request.app[state.SETTINGS].channels
    if declared is None or channel in declared:
        return channel
    close = difflib.get_close_matches(channel, declared, n=2)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise NotFound(f"no channel {channel!r} in the fleet{hint} (declared: "
                   f"{', '.join(sorted(declared))})", code="unknown_channel")


def _channel(request: web.Request) -> str:
    return _declared(request, request.match_info["channel"])


@reader
async def list_channels(request: web.Request) -> web.Response:
    """Every channel (declared in the fleet, or with boards or a release) with its base
    release, its rollout and its board count."""
    store = request.app[state.STORE]
    declared = request.app[state.SETTINGS].channels
    counts = await store.board_counts()
    names = sorted({*await store.list_channels(), *(declared or ())})
    return web.json_response({"channels": [
        {**await rollout.status(store, c), "boards": counts.get(c, 0),
         "declared": None if declared is None else c in declared} for c in names]})


@reader
async def rollout_status(request: web.Request) -> web.Response:
    return web.json_response(await rollout.status(request.app[state.STORE], _channel(request)))


@publisher
async def rollout_start(request: web.Request) -> web.Response:
    """Point a channel at a release: {app, version | sequence, policy | percent,
    allow_downgrade_version}."""
    channel = _channel(request)
    what = "rollout"
    doc = await read_json(request, what, request.app[state.SETTINGS].limits.max_json_bytes)
    app_name = name(required(doc, "app", str, what), "app")
    sequence = optional(doc, "sequence", int, what)
    version = optional(doc, "version", str, what)
    if (sequence is None) == (version is None):
        raise BadRequest("rollout: give the release's 'version' or its 'sequence' (one of them)",
                         code="bad_field")
    downgrade = optional(doc, "allow_downgrade_version", bool, what) or False
    percent = optional(doc, "percent", (int, float), what)
    if percent is not None and "policy" in doc:
        raise BadRequest("rollout: give either 'percent' or 'policy', not both", code="bad_policy")
    if percent is not None:
        if not 0 < percent <= 100:
            raise BadRequest("rollout: percent must be in (0, 100]", code="bad_policy")
        policy = percent_policy(percent)
    else:
        raw = doc.get("policy", request.app[state.SETTINGS].default_policy)
        policy = normalize_policy(raw)
    store = request.app[state.STORE]
    request[state.AUDIT_TARGET] = f"{channel}: {app_name} {version or sequence}"
    if version is not None:
        release = await _release_of(store, app_name, version)
    else:
        assert sequence is not None
        found = await store.release(app_name, sequence)
        if found is None:
            raise NotFound(f"no release {app_name!r} sequence {sequence}",
                           code="unknown_release")
        release = found
    request[state.AUDIT_TARGET] = f"{channel}: {app_name} {release.version} (sequence " \
                                  f"{release.sequence})"
    lower = await rollout.downgrade_from(store, channel, release)
    await rollout.start(store, channel, release, policy, allow_downgrade_version=downgrade)
    answer = await rollout.status(store, channel)
    if lower is not None:
        answer["warnings"].insert(0, f"{release.version} is a lower version than "
                                  f"{lower.version}, which {channel!r} ran")
    return web.json_response(answer, status=201)


# The rollout actions by name: the API's handlers below and the dashboard (ota_server/ui) both
# go through act_on_rollout, so a check added there holds for both.
ROLLOUT_ACTIONS = {"pause": rollout.pause, "resume": rollout.resume, "abort": rollout.abort,
                   "advance": rollout.advance}


async def act_on_rollout(store: MetadataStore, channel: str, action: str) -> dict[str, Any]:
    """Apply the action named `action` (a key of ROLLOUT_ACTIONS) to the channel's rollout;
    its status afterwards, as GET /v1/channels/{channel}/rollout shows it.

    Raises Conflict when the rollout is missing or in a state the action does not apply to,
    KeyError for an unknown action name.
    """
    await ROLLOUT_ACTIONS[action](store, channel)
    return await rollout.status(store, channel)


def _action(action: str) -> Any:
    @publisher
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            await act_on_rollout(request.app[state.STORE], _channel(request), action))
    handler.__name__ = f"rollout_{action}"
    handler.__doc__ = f"{action.capitalize()} the channel's rollout."
    return handler


rollout_pause = _action("pause")
rollout_resume = _action("resume")
rollout_abort = _action("abort")
rollout_advance = _action("advance")


# -- tokens -----------------------------------------------------------------------------------

@admin
async def list_tokens(request: web.Request) -> web.Response:
    """Token names, scopes and times (never a token, never its hash)."""
    rows = await request.app[state.STORE].list_tokens()
    return web.json_response({"tokens": [
        {k: row[k] for k in ("name", "scope", "created", "revoked")} for row in rows]})


@admin
async def create_token(request: web.Request) -> web.Response:
    """A new token {name, scope}: answered once, in this response, and stored hashed."""
    from ota_server.tokens import SCOPES
    from ota_server.tokens import create_token as new_token

    what = "token"
    doc = await read_json(request, what, request.app[state.SETTINGS].limits.max_json_bytes)
    token_name = name(required(doc, "name", str, what), "token name")
    scope = required(doc, "scope", str, what)
    if scope not in SCOPES:
        raise BadRequest(f"token: scope {scope[:20]!r} is not one of {', '.join(SCOPES)}",
                         code="bad_field")
    request[state.AUDIT_TARGET] = f"{token_name} scope={scope}"
    token = await new_token(request.app[state.STORE], token_name, scope)
    return web.json_response({"name": token_name, "scope": scope, "token": token}, status=201)


@admin
async def revoke_token(request: web.Request) -> web.Response:
    """Revoke every valid token of the name; 404 `unknown_token` when there is none."""
    token_name = name(request.match_info["name"], "token name")
    count = await request.app[state.STORE].revoke_token(token_name)
    if count == 0:
        raise NotFound(f"no valid token named {token_name!r}", code="unknown_token")
    return web.json_response({"name": token_name, "revoked": count})


# -- audit ------------------------------------------------------------------------------------

@reader
async def list_audit(request: web.Request) -> web.Response:
    """The newest audit entries, oldest first: ?limit= (1..1000, default 100), ?actor=."""
    entries = await audit_entries(request.app[state.STORE], request.query.get("limit", "100"),
                                  request.query.get("actor"))
    return web.json_response({"entries": [e.view() for e in entries]})


async def audit_entries(store: MetadataStore, raw_limit: str,
                        actor: str | None) -> list[AuditEntry]:
    """The newest `raw_limit` audit entries (of `actor` when given), oldest first: the API's
    GET /v1/audit and the dashboard's audit page. Raises BadRequest unless `raw_limit` is an
    integer from 1 to MAX_AUDIT_ROWS."""
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_AUDIT_ROWS:
        raise BadRequest(f"audit: limit must be an integer from 1 to {MAX_AUDIT_ROWS}",
                         code="bad_field")
    return await store.list_audit(int(raw_limit), actor)
