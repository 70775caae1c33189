"""The board unloads its verifier between phases (ota/client.py, ota/__init__.py forget) and
loads it again: an error the verifier raises must still be a TrustError of the trust module
loaded now, whatever was unloaded in between, or it escapes the client's `except
trust.TrustError` (a refused manifest would then not be reported as refused)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import signing.errors

BOARD_DIR = Path(__file__).resolve().parent.parent / "bootloader_py"

# What may be unloaded between two refusals: the client's own unload, or single modules.
UNLOADS = ["client._unload_verifier()", "ota.forget('trust')", "ota.forget('errors')",
           "ota.forget('trust'); ota.forget('errors')", "ota.shed()", ""]

SCRIPT = """
import sys
sys.path.insert(0, %r)
import ota
from ota import client
KINDS = %r
for unload in %r:
    for first in KINDS:
        from ota import trust
        try:
            trust.fail("first", first)
        except trust.TrustError:
            pass
        exec(unload)
        from ota import client
        for kind in KINDS:
            from ota import trust
            try:
                trust.fail("again", kind)
            except trust.TrustError as e:
                if e.__class__.__name__ != kind:
                    print("WRONG", unload, first, kind, e.__class__.__name__)
            except Exception as e:
                print("ESCAPED", unload, first, kind, e.__class__.__name__)
print("done")
"""


def test_a_refusal_after_any_unload_is_a_trust_error_of_the_loaded_trust(micropython) -> None:
    kinds = sorted(name for name, value in vars(signing.errors).items()
                   if isinstance(value, type) and issubclass(value, signing.errors.TrustError)
                   and value is not signing.errors.TrustError)
    assert "SameSequenceError" in kinds and "ExpiredError" in kinds
    out = subprocess.run([micropython, "-c", SCRIPT % (str(BOARD_DIR), kinds, UNLOADS)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr + out.stdout
    assert out.stdout.strip().splitlines() == ["done"], out.stdout[:2000]
