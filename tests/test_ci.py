"""`.ci/run` is `make test`: it passes when the tests pass and fails when one fails.

The nested run reuses the venv and MicroPython that the outer run installed (make's stamps), and
points both pytest passes (the whole suite, and beside it the board tests on the 32-bit port) at one
throw-away test file through PYTEST_ARGS and PYTEST32_ARGS, so it costs one lint pass.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tools.micropython import PROJECT_ROOT

CI_RUN = PROJECT_ROOT / ".ci" / "run"


def _ci_run_with(tmp_path: Path, test_body: str) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / "test_probe.py"
    test_file.write_text(f"def test_probe():\n    {test_body}\n")
    args = f"{test_file} -p no:cacheprovider"
    env = dict(os.environ, PYTEST_ARGS=args, PYTEST32_ARGS=args)
    env.pop("MAKEFLAGS", None)
    return subprocess.run(["bash", str(CI_RUN)], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def test_ci_run_is_make_test() -> None:
    script = CI_RUN.read_text()
    commands = [line.strip() for line in script.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert "make test" in commands


def test_ci_run_fails_when_a_test_fails_and_passes_when_it_passes(tmp_path: Path) -> None:
    failing = _ci_run_with(tmp_path, "assert 1 + 1 == 3")
    assert failing.returncode != 0
    assert "1 failed" in failing.stdout

    passing = _ci_run_with(tmp_path, "assert 1 + 1 == 2")
    assert passing.returncode == 0, passing.stdout[-2000:] + passing.stderr[-2000:]
    assert "1 passed" in passing.stdout
