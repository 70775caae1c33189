"""Find the MicroPython unix port that board code runs on during tests, demos and benchmarks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_CACHED = PROJECT_ROOT / ".cache" / "micropython" / "bin" / "micropython"
_INSTALLER = PROJECT_ROOT / "tools" / "get_micropython.sh"


class MicroPythonNotFound(RuntimeError):
    """No MicroPython interpreter could be found or installed."""


def find_micropython(install: bool = True) -> str:
    """Return the path of a runnable MicroPython unix port.

    Order: $MICROPYTHON, `micropython` on PATH, the project cache, then (when `install`) the
    installer script, which fetches Debian's package into the cache.
    Raises MicroPythonNotFound with instructions when none can be had.
    """
    env = os.environ.get("MICROPYTHON")
    if env:
        return env
    on_path = shutil.which("micropython")
    if on_path:
        return on_path
    if _CACHED.exists():
        return str(_CACHED)
    if install and _INSTALLER.exists():
        done = subprocess.run(
            ["bash", str(_INSTALLER)], capture_output=True, text=True, check=False
        )
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().splitlines()[-1]
    raise MicroPythonNotFound(
        "no MicroPython unix port found: set MICROPYTHON to its path, put `micropython` on PATH, "
        "or run tools/get_micropython.sh (needs apt-get and a Debian mirror)"
    )


def micropython_version(path: str) -> str:
    """The interpreter's own version line, e.g. 'MicroPython v1.25.0'."""
    out = subprocess.run(
        [path, "-c", "import sys; print(sys.implementation.name, sys.version)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()
