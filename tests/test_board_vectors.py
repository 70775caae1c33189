"""The signing issue's shared vectors (tests/vectors/vectors.json) on the board's verifier.

Every case must give exactly its expected outcome (the exact error class, not a parent or a
child) on the real MicroPython interpreter; all cases run in one process.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).resolve().parent / "vectors"
BOARD_DIR = Path(__file__).resolve().parent.parent / "bootloader_py"

RUNNER = """
import sys, json
sys.path.insert(0, BOARD_DIR)
from ota import trust
for c in json.loads(sys.stdin.read()):
    try:
        # the trusted root as provisioned: self-signed (load_root does not judge expiry)
        root = trust.load_root(c["trusted_root"])
        if c["kind"] == "manifest":
            trust.verify_manifest(open(c["envelope"], "rb").read(), root, board=c["board"],
                                  installed_sequence=c["installed_sequence"], now=c["now"],
                                  app=c.get("app"))
        else:
            trust.verify_rotation(root, open(c["envelope"], "rb").read(), now=c["now"])
        res = ["ok", ""]
    except trust.TrustError as e:
        res = [type(e).__name__, str(e)]
    print(json.dumps(res))
"""


def _cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((VECTORS / "vectors.json").read_text())
    return cases


@pytest.fixture(scope="module")
def board_outcomes(micropython: str) -> dict[str, list[str]]:
    cases = _cases()
    for case in cases:
        case["trusted_root"] = str(VECTORS / case["trusted_root"])
        case["envelope"] = str(VECTORS / case["envelope"])
    done = subprocess.run(
        [micropython, "-c", RUNNER.replace("BOARD_DIR", repr(str(BOARD_DIR)))],
        input=json.dumps(cases), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(cases), done.stdout
    return {c["name"]: json.loads(line) for c, line in zip(cases, lines, strict=True)}


def test_vectors_cover_every_outcome_kind() -> None:
    expects = {c["expect"] for c in _cases()}
    assert {"ok", "MalformedError", "ThresholdError", "TooLargeError", "PayloadTypeError",
            "ExpiredError", "RotationError", "RollbackError", "SameSequenceError",
            "WrongBoardError"} <= expects


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_board_gives_the_vector_outcome(board_outcomes: dict[str, list[str]],
                                        case: dict[str, Any]) -> None:
    got, message = board_outcomes[case["name"]]
    assert got == case["expect"], f"{case['description']}: board says {got}: {message}"
