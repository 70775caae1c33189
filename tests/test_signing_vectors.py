"""The shared vectors: the host verifier gives every expected outcome, and the checked-in
files are exactly what tests/vectors/generate.py writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from signing import errors
from signing.root import verify_root, verify_rotation
from signing.verify import verify_manifest

VECTORS = Path(__file__).parent / "vectors"
CASES: list[dict[str, Any]] = json.loads((VECTORS / "vectors.json").read_text())


def _outcome(case: dict[str, Any]) -> str:
    trusted = verify_root((VECTORS / case["trusted_root"]).read_bytes(), now=case["now"])
    envelope = (VECTORS / case["envelope"]).read_bytes()
    try:
        if case["kind"] == "manifest":
            verify_manifest(envelope, trusted, now=case["now"], board=case["board"],
                            installed_sequence=case["installed_sequence"], app=case.get("app"))
        else:
            assert case["kind"] == "root"
            verify_rotation(trusted, envelope, now=case["now"])
    except errors.TrustError as err:
        return type(err).__name__
    return "ok"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_host_verifier_gives_the_expected_outcome(case: dict[str, Any]) -> None:
    assert _outcome(case) == case["expect"], case["description"]


def test_vectors_name_only_documented_error_classes_and_cover_each_rule() -> None:
    expects = {c["expect"] for c in CASES}
    documented = {name for name in dir(errors)
                  if isinstance(getattr(errors, name), type)
                  and issubclass(getattr(errors, name), errors.TrustError)}
    assert expects - {"ok"} <= documented
    # Every envelope-level rule class appears; file mismatches are checked on blobs, not here.
    assert documented - expects == {"TrustError", "FileMismatchError", "HashMismatchError",
                                    "LengthMismatchError"}
    assert len({c["name"] for c in CASES}) == len(CASES)


def test_checked_in_vectors_are_exactly_what_the_generator_writes(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("vector_generator", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    written = generator.generate(tmp_path, VECTORS / "keys")
    checked_in = sorted(p.name for p in VECTORS.glob("*.json"))
    assert written == checked_in
    for name in written:
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes(), name
