"""Semantic version precedence (SemVer 2.0.0, section 11), to tell an upgrade from a downgrade.

Boards never compare versions (the sequence decides what they accept); the server and the
command line compare them to warn an operator who points a channel at a lower version.
"""

from __future__ import annotations

from signing.manifest import _SEMVER as SEMVER  # the manifest's own version rule

# A pre-release identifier: numeric ones sort below alphanumeric ones, numbers by value.
Identifier = tuple[int, int | str]


def version_key(version: str) -> tuple[int, int, int, int, tuple[Identifier, ...]]:
    """A key whose order is SemVer precedence: 1.0.0-alpha < 1.0.0-alpha.1 < 1.0.0-beta <
    1.0.0 < 1.0.1; build metadata (`+...`) is ignored. Raises ValueError for a version that is
    not MAJOR.MINOR.PATCH[-pre][+build]."""
    match = SEMVER.fullmatch(version)
    if match is None:
        raise ValueError(f"{version[:40]!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    core, _, _ = version.partition("+")
    numbers, dash, pre = core.partition("-")
    major, minor, patch = (int(part) for part in numbers.split("."))
    if not dash:
        return major, minor, patch, 1, ()  # a release sorts above all its pre-releases
    ids: list[Identifier] = [(0, int(p)) if p.isdigit() else (1, p) for p in pre.split(".")]
    return major, minor, patch, 0, tuple(ids)


def is_lower(version: str, than: str) -> bool:
    """Does `version` have lower precedence than `than`?"""
    return version_key(version) < version_key(than)
