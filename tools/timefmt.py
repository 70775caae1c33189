"""How the command line shows times: ISO 8601 in UTC, '-' for none."""

from __future__ import annotations

import time


def iso_utc(when: int | None) -> str:
    """Unix seconds as `2026-11-24T00:00:00Z`; `-` when there is no time."""
    if when is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
