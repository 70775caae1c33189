"""Find the MicroPython unix port that board code runs on during tests, demos and benchmarks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_CACHED = PROJECT_ROOT / ".cache" / "micropython" / "bin" / "micropython"
_CACHED_32BIT = PROJECT_ROOT / ".cache" / "micropython-i386" / "bin" / "micropython"
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
    installed = _install() if install else None
    if installed:
        return installed
    raise MicroPythonNotFound(
        "no MicroPython unix port found: set MICROPYTHON to its path, put `micropython` on PATH, "
        "or run tools/get_micropython.sh (needs apt-get and a Debian mirror)"
    )


def find_micropython_32bit(install: bool = True) -> str:
    """Return the path of a 32-bit MicroPython unix port: the boards' word size (ESP32, RP2),
    for heap figures that are theirs (docs/board.md, Memory budget).

    Order: $MICROPYTHON32, the project cache, then (when `install`) the installer script with
    --32bit, which fetches Debian's i386 package (an x86-64 host that runs i386 programs).
    Raises MicroPythonNotFound when none can be had.
    """
    env = os.environ.get("MICROPYTHON32")
    if env:
        return env
    if _CACHED_32BIT.exists():
        return str(_CACHED_32BIT)
    installed = _install("--32bit") if install else None
    if installed:
        return installed
    raise MicroPythonNotFound(
        "no 32-bit MicroPython unix port found: set MICROPYTHON32 to its path or run "
        "tools/get_micropython.sh --32bit (needs an x86-64 host, apt-get and a Debian mirror)"
    )


def _install(*args: str) -> str | None:
    if not _INSTALLER.exists():
        return None
    done = subprocess.run(
        ["bash", str(_INSTALLER), *args], capture_output=True, text=True, check=False
    )
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip().splitlines()[-1]
    return None


def word_bits(path: str) -> int:
    """The interpreter's word size in bits (64 on x86-64, 32 on i386 and on the boards)."""
    return int(_ask(path, "print(64 if sys.maxsize > 1 << 32 else 32)"))


def micropython_version(path: str) -> str:
    """The interpreter's own version line, e.g. 'MicroPython v1.25.0'."""
    return _ask(path, "print(sys.implementation.name, sys.version)")


def _ask(path: str, code: str) -> str:
    """What the interpreter at `path` prints running `import sys` and `code`."""
    out = subprocess.run([path, "-c", "import sys; " + code], capture_output=True, text=True,
                         check=True, timeout=30)
    return out.stdout.strip()
