"""What the dashboard asks of the store: a board filter, the board statuses, fleet counts.

The status of a board is one SQL expression (`STATUS_SQL`), used for the counts, the filter
and each board's own page alike, so the three can never disagree:

    revoked     the board was revoked
    never_seen  it never checked in
    silent      its last check-in is older than the silence cutoff (docs/dashboard.md)
    failing     its last report was `failed` or `rolled_back`
    ok          anything else
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

BOARD_STATUSES = ("ok", "failing", "silent", "never_seen", "revoked")
STATUS_SQL = ("CASE WHEN revoked IS NOT NULL THEN 'revoked' "
              "WHEN last_seen IS NULL THEN 'never_seen' "
              "WHEN last_seen < :cutoff THEN 'silent' "
              "WHEN last_status IN ('failed', 'rolled_back') THEN 'failing' "
              "ELSE 'ok' END")
MAX_PAGE = 200


@dataclass(frozen=True)
class BoardFilter:
    """The board table's filters; None (or "") leaves a field unfiltered.

    `search` is a substring of the device id; `seen_since` keeps boards whose last check-in
    is at or after that Unix time; `silent_before` is the cutoff that makes a board silent.
    """

    silent_before: int
    search: str | None = None
    tag: str | None = None
    channel: str | None = None
    version: str | None = None
    status: str | None = None
    seen_since: int | None = None

    def where(self, dialect: str = "sqlite") -> tuple[str, dict[str, Any]]:
        """The SQL condition (named parameters only, never values) and its parameters, for
        SQLite or (`dialect` "postgres") PostgreSQL, whose tags are JSONB."""
        postgres = dialect == "postgres"
        parts = ["TRUE"]
        args: dict[str, Any] = {"cutoff": self.silent_before}
        if self.search:
            parts.append("strpos(device_id, :search) > 0" if postgres
                         else "instr(device_id, :search) > 0")
            args["search"] = self.search
        if self.tag:
            parts.append("tags ? :tag" if postgres else
                         "EXISTS (SELECT 1 FROM json_each(devices.tags) WHERE value = :tag)")
            args["tag"] = self.tag
        if self.channel:
            parts.append("channel = :channel")
            args["channel"] = self.channel
        if self.version:
            parts.append("version = :version")
            args["version"] = self.version
        if self.status:
            parts.append(f"({STATUS_SQL}) = :status")
            args["status"] = self.status
        if self.seen_since is not None:
            parts.append("last_seen >= :seen_since")
            args["seen_since"] = self.seen_since
        return " AND ".join(parts), args


@dataclass(frozen=True)
class FleetCounts:
    """Boards by (app, version), by channel and by status (every status, zeros included)."""

    total: int
    by_version: list[tuple[str | None, str | None, int]]
    by_channel: list[tuple[str, int]]
    by_status: dict[str, int]


@dataclass(frozen=True)
class BoardDeployment:
    """A board's deployment of one release as the store has it now: its latest status and
    the reason the board gave (the full history of each step comes with issue #15)."""

    release_id: int
    app: str
    version: str
    sequence: int
    status: str
    reason: str | None
    channel: str
    updated: int


_NAMED = re.compile(r"(?<!:):([a-z_][a-z0-9_]*)")


def positional(sql: str, args: dict[str, Any]) -> tuple[str, list[Any]]:
    """`sql` with its :name parameters as PostgreSQL's $1, $2, ... and their values in that
    order (a name used twice is one parameter); KeyError for a name without a value."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    text = _NAMED.sub(number, sql)
    return text, [args[name] for name in order]
