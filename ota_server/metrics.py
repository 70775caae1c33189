"""Prometheus counters kept in memory and rendered as the text exposition format."""

from __future__ import annotations

from collections import defaultdict

from ota_server.storage import MetadataStore

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
        "mpota_pack_requests_total": ("counter", "Pack requests from boards by status code."),
        "mpota_reports_total": ("counter", "Board status reports by status."),
        "mpota_auth_failures_total": ("counter", "Refused credentials by error code."),
        "mpota_releases_registered_total": ("counter", "Releases registered since start."),
    }

    def __init__(self) -> None:
        self._values: defaultdict[tuple[str, tuple[tuple[str, str], ...]], float] = \
            defaultdict(float)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self._values[(name, tuple(sorted(labels.items())))] += amount

    def value(self, name: str, **labels: str) -> float:
        return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self, store: MetadataStore) -> str:
        lines: list[str] = []
        for name, (kind, text) in self._HELP.items():
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            for (metric, labels), value in sorted(self._values.items()):
                if metric == name:
                    lines.append(f"{name}{_labels(labels)} {value:g}")
        lines.append("# HELP mpota_rollout_state 1 for the current state of each channel's "
                     "rollout.")
        lines.append("# TYPE mpota_rollout_state gauge")
        lines.append("# HELP mpota_rollout_stage Index of the current stage of each rollout.")
        lines.append("# TYPE mpota_rollout_stage gauge")
        for channel in store.list_channels():
            rollout = store.current_rollout(channel)
            if rollout is None:
                continue
            for state in _ROLLOUT_STATES:
                pairs = (("channel", channel), ("state", state))
                lines.append(f"mpota_rollout_state{_labels(pairs)} "
                             f"{1 if rollout.state == state else 0}")
            lines.append(f"mpota_rollout_stage{_labels((('channel', channel),))} {rollout.stage}")
        return "\n".join(lines) + "\n"
