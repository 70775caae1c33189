"""A typed client of the publisher API, used by the CLI, the provisioning station, the demo and
tests. Synchronous (urllib): the callers are scripts and threads, not an event loop.

Every failure is an ApiClientError carrying the server's stable `code` and `message`.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from signing.bundle import load_bundle

DEFAULT_TIMEOUT = 30.0
ENVELOPE_TYPE = "application/vnd.dsse+json"

# progress(uploaded_bytes, total_bytes) while `publish` uploads blobs.
Progress = Callable[[int, int], None]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would carry the bearer token to wherever one points."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def _opener_trusting(ca: Path | bytes) -> urllib.request.OpenerDirector:
    """An opener that verifies https servers against `ca` only (host names included)."""
    try:
        context = (ssl.create_default_context(cadata=ca) if isinstance(ca, bytes)
                   else ssl.create_default_context(cafile=str(ca)))
    except (OSError, ssl.SSLError) as err:
        what = "the CA" if isinstance(ca, bytes) else f"the CA file {ca}"
        raise ApiClientError(0, "bad_ca", f"cannot load {what}: {err}") from None
    return urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(context=context))


class ApiClientError(Exception):
    """The server refused a request (status >= 400) or could not be reached (status 0)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{message} ({code}, HTTP {status})" if status else message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PublishResult:
    release: dict[str, Any]
    uploaded: list[str]
    skipped: list[str]
    rollout: dict[str, Any] | None
    # False when the server already had this version with the same content (`release` is
    # that registration, its sequence included): nothing new was registered.
    new: bool = True


class ApiClient:
    """`ApiClient(url, token)`: one publisher talking to one server."""

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT,
                 ca: Path | bytes | None = None):
        """`ca`: the CA an https server's certificate must chain to (a fleet's private CA,
        `ota tls init`): a PEM file, or DER bytes; without it, the system's trusted CAs."""
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self._opener = _OPENER if ca is None else _opener_trusting(ca)

    def __repr__(self) -> str:  # never show the token
        return f"ApiClient({self.url!r})"

    # -- plumbing -----------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, body: bytes | BinaryIO | None = None,
                 content_type: str = "application/json", length: int | None = None,
                 auth: bool = True) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token}"
        if body is not None:
            headers["Content-Type"] = content_type
            size = len(body) if isinstance(body, bytes) else length
            if size is not None:
                headers["Content-Length"] = str(size)
        request = urllib.request.Request(self.url + path, data=body, method=method,  # noqa: S310
                                         headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            if 300 <= err.code < 400:
                raise ApiClientError(err.code, "redirect", f"the server answered {err.code} "
                                     "(a redirect); the publisher API does not follow redirects, "
                                     "so the token never leaves for another host: fix the URL"
                                     ) from None
            raw = err.read()
            try:
                doc = json.loads(raw)
                code, message = str(doc["code"]), str(doc["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", raw.decode("utf-8", "replace")[:200] or err.reason
            raise ApiClientError(err.code, code, message) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ApiClientError(0, "unreachable",
                                 f"cannot reach the server at {self.url}: {reason}") from None

    def _json(self, method: str, path: str, payload: Any = None, **kwargs: Any) -> Any:
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        _, raw = self._request(method, path, body=body, **kwargs)
        return json.loads(raw) if raw else None

    # -- health -------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/healthz", auth=False)
        return result

    # -- blobs and releases -------------------------------------------------------------------

    def missing_blobs(self, blobs: Iterable[str]) -> list[str]:
        return list(self._json("POST", "/v1/blobs/missing", {"blobs": list(blobs)})["missing"])

    def upload_blob(self, sha256: str, source: Path | bytes) -> bool:
        """Upload one blob (streamed from a file); True if the server did not have it."""
        if isinstance(source, bytes):
            status, _ = self._request("PUT", f"/v1/blobs/{sha256}", body=source,
                                      content_type="application/octet-stream")
        else:
            with open(source, "rb") as stream:
                status, _ = self._request("PUT", f"/v1/blobs/{sha256}", body=stream,
                                          content_type="application/octet-stream",
                                          length=source.stat().st_size)
        return status == 201

    def register_release(self, envelope: bytes) -> dict[str, Any]:
        return self._register(envelope)[0]

    def _register(self, envelope: bytes) -> tuple[dict[str, Any], bool]:
        """The registered release, and True when this call registered it (201)."""
        status, raw = self._request("POST", "/v1/releases", body=envelope,
                                    content_type=ENVELOPE_TYPE)
        result: dict[str, Any] = json.loads(raw)
        return result, status == 201

    def reserve_sequence(self, app: str, version: str) -> int:
        """The sequence to sign `version` of `app` with, from the server: the registered
        release's, this version's earlier reservation, or a new one no other version gets."""
        result = self._json("POST", "/v1/releases/sequence", {"app": app, "version": version})
        return int(result["sequence"])

    def list_releases(self, app: str | None = None) -> list[dict[str, Any]]:
        query = "?" + urllib.parse.urlencode({"app": app}) if app else ""
        return list(self._json("GET", "/v1/releases" + query)["releases"])

    def publish(self, bundle_dir: Path | str, channel: str | None = None, *,
                policy: dict[str, Any] | None = None, percent: float | None = None,
                progress: Progress | None = None) -> PublishResult:
        """Upload a signed bundle's missing blobs, register its manifest and, with `channel`,
        start a rollout there (`policy` or `percent`; the server's default policy otherwise).

        Safe to repeat after a failure or a server crash: present blobs are skipped and the
        same envelope registers idempotently.
        """
        bundle = load_bundle(bundle_dir)
        envelope = bundle.envelope_path.read_bytes()
        paths = {entry.blob: bundle.blob_path(entry) for entry in bundle.manifest.files}
        # Registered first: the server checks the signatures, the version, the sequence and
        # each file's size before it looks for blobs, so whatever it would refuse is refused
        # before a byte is uploaded (its answer `missing_blobs` means all that passed).
        try:
            release, new = self._register(envelope)
        except ApiClientError as err:
            if err.code != "missing_blobs":
                raise
        else:
            return PublishResult(release, [], sorted(paths), self._start(release, channel,
                                                                         policy, percent), new)
        missing = set(self.missing_blobs(paths))
        total = sum(paths[b].stat().st_size for b in missing)
        done = 0
        uploaded = []
        for blob in sorted(missing):
            self.upload_blob(blob, paths[blob])
            uploaded.append(blob)
            done += paths[blob].stat().st_size
            if progress is not None:
                progress(done, total)
        release, new = self._register(envelope)
        return PublishResult(release, uploaded, sorted(set(paths) - missing),
                             self._start(release, channel, policy, percent), new)

    def _start(self, release: dict[str, Any], channel: str | None,
               policy: dict[str, Any] | None, percent: float | None) -> dict[str, Any] | None:
        """The rollout `publish` starts on `channel` (None without one)."""
        if channel is None:
            return None
        try:
            return self.rollout_start(channel, policy, app=release["app"],
                                      sequence=release["sequence"], percent=percent)
        except ApiClientError as err:
            if err.code != "already_rolling_out":  # a retry of a publish that finished
                raise
            return self.rollout_status(channel)

    # -- roots --------------------------------------------------------------------------------

    def upload_root(self, envelope: bytes) -> dict[str, Any]:
        _, raw = self._request("POST", "/v1/roots", body=envelope, content_type=ENVELOPE_TYPE)
        result: dict[str, Any] = json.loads(raw)
        return result

    def list_roots(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/v1/roots")
        return result

    # -- boards -------------------------------------------------------------------------------

    def register_device(self, device_id: str, public_point: bytes, *, board: str,
                        channel: str = "stable", tags: Iterable[str] = ()) -> dict[str, Any]:
        """Register a board's 65-byte public point; repeating the same registration is fine."""
        result: dict[str, Any] = self._json("POST", "/v1/devices", {
            "device_id": device_id,
            "public_key": base64.b64encode(public_point).decode("ascii"),
            "board": board, "channel": channel, "tags": list(tags)})
        return result

    def revoke_device(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "POST", f"/v1/devices/{urllib.parse.quote(device_id, safe='')}/revoke")
        return result

    def list_devices(self, channel: str | None = None) -> list[dict[str, Any]]:
        query = "?" + urllib.parse.urlencode({"channel": channel}) if channel else ""
        return list(self._json("GET", "/v1/devices" + query)["devices"])

    def device(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "GET", f"/v1/devices/{urllib.parse.quote(device_id, safe='')}")
        return result

    # -- channels and rollouts ----------------------------------------------------------------

    def channels(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/channels")["channels"])

    def rollout_start(self, channel: str, policy: dict[str, Any] | None = None, *, app: str,
                      sequence: int, percent: float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"app": app, "sequence": sequence}
        if percent is not None:
            body["percent"] = percent
        elif policy is not None:
            body["policy"] = policy
        result: dict[str, Any] = self._json("POST", f"/v1/channels/{channel}/rollout", body)
        return result

    def rollout_status(self, channel: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/channels/{channel}/rollout")
        return result

    def _rollout_action(self, channel: str, action: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", f"/v1/channels/{channel}/rollout/{action}")
        return result

    def rollout_pause(self, channel: str) -> dict[str, Any]:
        return self._rollout_action(channel, "pause")

    def rollout_resume(self, channel: str) -> dict[str, Any]:
        return self._rollout_action(channel, "resume")

    def rollout_abort(self, channel: str) -> dict[str, Any]:
        return self._rollout_action(channel, "abort")

    def rollout_advance(self, channel: str) -> dict[str, Any]:
        return self._rollout_action(channel, "advance")
