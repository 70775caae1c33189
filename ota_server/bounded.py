"""Bounded memories of a process (kept boards, offers written, channel copies) that forget
their oldest entry one at a time."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def keep(memory: dict[K, V], key: K, value: V, bound: int) -> None:
    """`memory[key] = value`; when that adds a key to a memory already holding `bound` entries,
    the oldest one is forgotten first. One at a time: emptying 100,000 entries at once stopped
    the event loop for a noticeable part of a second under S3's load (docs/benchmarks.md)."""
    if key not in memory and len(memory) >= bound:
        del memory[next(iter(memory))]
    memory[key] = value
