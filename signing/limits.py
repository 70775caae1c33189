"""Caps that verification enforces, as data (like python-tuf's `UpdaterConfig`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What a verifier accepts at most. The defaults are the contract with the board.

    `max_envelope_bytes` binds first in practice: every file entry costs about 290 bytes of
    base64 in the envelope, so a default envelope holds about 39 files before `max_files`.
    `max_path_length` counts bytes of UTF-8, as the board does (docs/manifest.md, "Limits").
    """

    max_envelope_bytes: int = 12288
    max_files: int = 128
    max_path_length: int = 128


DEFAULT_LIMITS = Limits()
