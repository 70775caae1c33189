"""The scale-out components, run for real on 127.0.0.1: PostgreSQL (`postgres.py`), SeaweedFS as
the S3-compatible object store (`seaweed.py`) and nginx (`nginx.py`).

Each is a context manager that starts its process with private state in a temporary directory,
waits (bounded by a deadline) until it answers, and stops it (SIGTERM, then SIGKILL after a
deadline). Tests start each once per session (tests/cluster_support.py); the benchmarks and the
cluster demo use the same classes.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

STOP_TIMEOUT = 10.0


class ComponentError(RuntimeError):
    """A component could not be installed, started or stopped (the message says which and why,
    with the tail of its log)."""


def wait_until(ready: Callable[[], bool], deadline_s: float, what: str,
               process: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    """Poll `ready` until it answers True; raise ComponentError when `deadline_s` passes first
    or `process` exits (the message carries the tail of `log`)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ComponentError(f"{what} exited with status {process.returncode} while "
                                 f"starting: {log_tail(log)}")
        if ready():
            return
        time.sleep(0.1)
    raise ComponentError(f"{what} did not answer within {deadline_s:.0f} s: {log_tail(log)}")


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def log_tail(log: Path | None, limit: int = 2000) -> str:
    """The last `limit` characters of a log file, or a note that there is none."""
    if log is None or not log.exists():
        return "(no log)"
    return log.read_text(errors="replace")[-limit:] or "(empty log)"
