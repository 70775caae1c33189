"""ota/crash.py on the real MicroPython port: whatever a trial app's exception says, the kept
reason is `Type: message` cut to 200 bytes of printable ASCII, and the server's strict reason
rule accepts it (so the rollback report is never dropped for its reason)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ota_server.routes_device import report_reason
from tools.micropython import PROJECT_ROOT

_SCRIPT = """
import sys, json
sys.path.insert(0, {client!r})
from ota import crash
crash._FILE = {kept!r}
for message in json.load(open({messages!r})):
    try:
        raise ValueError(message)
    except Exception as e:
        crash.record(e)
    print(json.dumps(crash.take()))
print(json.dumps(crash.take()))
"""


def _model(message: str) -> str:
    raw = ("ValueError: " + message).encode()[:200]
    return "".join(chr(b) if 32 <= b < 127 else "?" for b in raw)


@settings(max_examples=6, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=1, max_size=30))
def test_a_kept_reason_is_short_printable_and_accepted_by_the_server(
        micropython: str, messages: list[str]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        # surrogates are not text MicroPython can hold: the app's own strings are UTF-8
        messages = [m.encode("utf-8", "replace").decode("utf-8") for m in messages]
        # raw UTF-8: MicroPython's json reads a \\u escape of a pair as two 3-byte halves
        (work / "messages.json").write_text(json.dumps(messages, ensure_ascii=False),
                                             encoding="utf-8")
        script = _SCRIPT.format(client=str(PROJECT_ROOT / "bootloader_py"),
                                kept=str(work / "app_error"),
                                messages=str(work / "messages.json"))
        done = subprocess.run([micropython, "-c", script], capture_output=True, text=True,
                              timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    kept = [json.loads(line) for line in done.stdout.splitlines()]
    assert kept[:-1] == [_model(m) for m in messages]
    assert kept[-1] is None  # taken: nothing left for a later rollback
    for reason in kept[:-1]:
        assert report_reason(reason) == reason
