"""Prometheus counters kept in memory and rendered as the text exposition format.

With several worker processes (`ota serve --workers N`, ota_server.workers) a scrape reaches
one of them, chosen by the kernel. So each worker saves its counters to a file of its own in a
directory they share (`save`, about once a second: `SAVE_INTERVAL_S`) and renders its own live
counters plus the others' saved ones: a scrape sees every worker's counts, the others' at most
that old. A worker started again in place of one that died goes on from its predecessor's
file, so no sum ever goes down while the server runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from pathlib import Path

from ota_server.storage import MetadataStore

SAVE_INTERVAL_S = 1.0
log = logging.getLogger("ota_server")
_Key = tuple[str, tuple[tuple[str, str], ...]]

_ROLLOUT_STATES = ("active", "paused", "aborted", "superseded")


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters by name and labels; one instance per application."""

    _HELP = {
        "mpota_checkins_total": ("counter", "Board check-ins by outcome (offered, nothing_new)."),
        "mpota_blob_bytes_served_total": ("counter",
                                          "Blob bytes sent to boards, single blobs and packs."),
        "mpota_blob_requests_total": ("counter", "Blob requests from boards by status code."),
        "mpota_blob_accel_total": ("counter", "Whole-blob answers handed to nginx "
                                   "(X-Accel-Redirect, --blob-accel) by status code."),
        "mpota_blob_accel_bytes_total": ("counter", "Bytes of the blobs handed to nginx to "
                                         "send (not in mpota_blob_bytes_served_total)."),
        "mpota_pack_requests_total": ("counter", "Pack requests from boards by status code."),
        "mpota_grant_requests_total": ("counter", "Blob and pack requests from boards "
                                       "authorised by a download grant (no signature)."),
        "mpota_reports_total": ("counter", "Board status reports by status."),
        "mpota_reports_refused_total": ("counter",
                                        "Board reports refused by error code: about a release "
                                        "the server never offered that board, or unknown."),
        "mpota_auth_failures_total": ("counter", "Refused credentials by error code."),
        "mpota_releases_registered_total": ("counter", "Releases registered since start."),
        "mpota_store_unavailable_total": ("counter", "Requests answered 503 because the "
                                          "database or object store was unavailable."),
    }

    def __init__(self, shared: Path | None = None, worker: int = 0) -> None:
        """`shared`: the directory the workers of one server save their counters in (module
        docstring), this one as `worker`; None: a server of one process."""
        self._values: defaultdict[_Key, float] = defaultdict(float)
        self._shared = shared
        self._worker = worker
        self._changes = 0  # increments since the last save
        if shared is not None:
            self._values.update(_load(self._file(worker)))

    def _file(self, worker: int) -> Path:
        assert self._shared is not None
        return self._shared / f"metrics-{worker}.json"

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self._values[(name, tuple(sorted(labels.items())))] += amount
        self._changes += 1

    def save(self) -> None:
        """Write this worker's counters for the others to render (replacing the file whole:
        a reader sees the old one or the new one), when they changed since the last save."""
        if self._shared is None or not self._changes:
            return
        self._changes = 0
        path = self._file(self._worker)
        tmp = path.with_suffix(".tmp")
        rows = [[name, dict(labels), value] for (name, labels), value in self._values.items()]
        tmp.write_text(json.dumps(rows), encoding="utf-8")
        os.replace(tmp, path)

    def _all_workers(self) -> dict[_Key, float]:
        """This worker's counters plus every other worker's saved ones."""
        if self._shared is None:
            return self._values
        total: defaultdict[_Key, float] = defaultdict(float, self._values)
        for path in self._shared.glob("metrics-*.json"):
            if path.name != self._file(self._worker).name:
                for key, value in _load(path).items():
                    total[key] += value
        return total

    def value(self, name: str, **labels: str) -> float:
        return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    async def render(self, store: MetadataStore, now: int | None = None) -> str:
        lines: list[str] = []
        values = sorted(self._all_workers().items())
        for name, (kind, text) in self._HELP.items():
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            for (metric, labels), value in values:
                if metric == name:
                    lines.append(f"{name}{_labels(labels)} {value:g}")
        lines.extend(await _rollout_lines(store, int(time.time()) if now is None else now))
        return "\n".join(lines) + "\n"


def _load(path: Path) -> dict[_Key, float]:
    """The counters a worker saved at `path`; none when there is no such file or it does not
    hold what `Metrics.save` writes (a scrape never fails on another worker's file)."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return {(str(name), tuple(sorted((str(k), str(v)) for k, v in labels.items()))):
                float(value) for name, labels, value in rows}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as err:
        log.warning("metrics of another worker unreadable (%s): %s", path.name, err)
        return {}


async def _rollout_lines(store: MetadataStore, now: int) -> list[str]:
    """Gauges per channel: rollout state and stage, and the expiry of the releases offered."""
    state, stage, expires, expired = [], [], [], []
    for channel in await store.list_channels():
        rollout = await store.current_rollout(channel)
        releases = [("base", await store.base_release(channel))]
        if rollout is not None:
            releases.append(("rollout", rollout.release))
            for name in _ROLLOUT_STATES:
                pairs = (("channel", channel), ("state", name))
                state.append(f"mpota_rollout_state{_labels(pairs)} "
                             f"{1 if rollout.state == name else 0}")
            stage.append(f"mpota_rollout_stage{_labels((('channel', channel),))} "
                         f"{rollout.stage}")
        for role, release in releases:
            if release is None:
                continue
            pairs = (("channel", channel), ("release", role))
            expires.append(f"mpota_release_expires_seconds{_labels(pairs)} {release.expires}")
            expired.append(f"mpota_release_expired{_labels(pairs)} "
                           f"{1 if release.expired(now) else 0}")
    return [
        "# HELP mpota_rollout_state 1 for the current state of each channel's rollout.",
        "# TYPE mpota_rollout_state gauge", *state,
        "# HELP mpota_rollout_stage Index of the current stage of each rollout.",
        "# TYPE mpota_rollout_stage gauge", *stage,
        "# HELP mpota_release_expires_seconds Unix time the channel's rollout or base release "
        "expires.",
        "# TYPE mpota_release_expires_seconds gauge", *expires,
        "# HELP mpota_release_expired 1 when the channel's rollout or base release has expired "
        "and is offered to no board.",
        "# TYPE mpota_release_expired gauge", *expired,
    ]
