"""A trial app's exception reaches the server as the reason of the rollback report, bounded
and printable (bootloader_py/ota/crash.py), and lands in the board's deployment history;
the board's console says what the client does. Real MicroPython (virtual board), real server.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from bench.reference_app import Keys, build_release, make_keys, provision_board, small_app
from tools.local_server import LocalServer
from tools.virtual_board import VirtualBoard

_names = itertools.count(1)


@dataclass
class Rig:
    keys: Keys
    server: LocalServer
    work: Path
    micropython: str

    def publish(self, app: str, files: dict[str, bytes], version: str, sequence: int) -> None:
        bundle = build_release(self.work, files, version, sequence, self.keys, app=app)
        self.server.client().publish(bundle, channel=app, percent=100)

    def board(self, app: str, files: dict[str, bytes]) -> Path:
        flash = self.work / app
        provision_board(flash, self.server.client(), app, self.server.url, self.keys, files,
                        app=app, channel=app, trial_boots=1, timeout_s=3)
        return flash

    def boot(self, flash: Path, max_boots: int) -> Any:
        return VirtualBoard(flash, micropython=self.micropython).run(max_boots=max_boots,
                                                                       timeout=60)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("failure-reasons")
    keys = make_keys()
    (work / "root.json").write_bytes(keys.root_envelope)
    with LocalServer(work / "data", work / "root.json") as server:
        yield Rig(keys, server, work, micropython)


def _rolled_back(rig: Rig, app: str, crash: bytes) -> tuple[Any, dict[str, Any]]:
    """Publish 1.1.0 whose entry raises `crash` on a board running 1.0.0; boot until the
    board rolled back and reported; (the boots, the board as the server shows it)."""
    rig.publish(app, small_app("1.1.0", {"app_main.py": crash}), "1.1.0", 2)
    flash = rig.board(app, small_app("1.0.0"))
    # update + reset, the crashing trial boot + reset, rollback and its report
    result = rig.boot(flash, max_boots=3)
    assert [b.ended for b in result.boots] == ["reset", "reset", "exit"], result.output
    return result, rig.server.client().device(app)


def test_the_trial_app_s_exception_is_the_rollback_s_reason_on_the_server(rig: Rig) -> None:
    app = f"fr{next(_names)}"
    result, shown = _rolled_back(rig, app, b"raise ValueError('sensor 7 not found')\n")
    reason = "ValueError: sensor 7 not found"
    assert "APP 1.0.0" in result.boots[-1].output
    assert [(h["version"], h["status"], h["reason"]) for h in shown["history"]
            if h["status"] == "rolled_back"] == [("1.1.0", "rolled_back", reason)]
    assert shown["last_error"] == reason
    assert not (rig.work / app / "ota" / "app_error").exists()  # taken by the rollback


def test_a_long_or_unprintable_exception_message_is_cut_and_made_printable(rig: Rig) -> None:
    app = f"fr{next(_names)}"
    # a newline, an escape, a non-ASCII letter and 400 more bytes: the board sends 200
    # printable ASCII bytes, which the server's strict reason rule accepts
    crash = b"raise RuntimeError('line\\nnext \\x1b[31m caf\\xe9 ' + 'z' * 400)\n"
    _, shown = _rolled_back(rig, app, crash)
    (entry,) = [h for h in shown["history"] if h["status"] == "rolled_back"]
    reason = entry["reason"]
    assert reason.startswith("RuntimeError: line?next ?[31m caf?? zzz"), reason
    assert len(reason.encode()) == 200 and reason.isprintable() and reason.isascii()


def test_the_console_says_what_the_client_does(rig: Rig) -> None:
    app = f"fr{next(_names)}"
    result, _ = _rolled_back(rig, app, b"raise ValueError('boom')\n")
    first, trial, back = (b.output for b in result.boots)
    assert "ota: checking" in first
    assert "ota: downloading" in first and " bytes in " in first
    assert "ota: installed 1.1.0" in first
    assert "ota: app failed on trial" in trial
    assert "ota: nothing new" in back  # 1.1.0 is rejected for good: nothing else to take
    good = f"fr{next(_names)}"
    rig.publish(good, small_app("1.1.0"), "1.1.0", 2)
    flash = rig.board(good, small_app("1.0.0"))
    confirmed = rig.boot(flash, max_boots=2)
    assert "ota: confirmed 1.1.0" in confirmed.boots[-1].output, confirmed.output


def test_an_update_the_board_refuses_is_said_on_its_console(rig: Rig) -> None:
    import time

    from signing.bundle import build_bundle, sign_bundle

    app = f"fr{next(_names)}"
    source = rig.work / f"src-{app}"
    source.mkdir()
    (source / "app_main.py").write_bytes(b"print('APP 1.1.0')\n")
    now = int(time.time())
    bundle = rig.work / f"bundle-{app}"
    build_bundle(source, bundle, version="1.1.0", sequence=2, boards=("unix",),
                 entry="app_main", min_micropython="99.0.0", mpy=False, deflate=False,
                 created=now, expires=now + 86400, app=app)
    sign_bundle(bundle, rig.keys.release)
    rig.server.client().publish(bundle, channel=app, percent=100)
    flash = rig.board(app, small_app("1.0.0"))
    result = rig.boot(flash, max_boots=1)
    assert "ota: update refused: needs MicroPython 99.0.0" in result.output, result.output
    assert "APP 1.0.0" in result.output


def test_a_revoked_board_says_so_and_sends_nothing_more(rig: Rig) -> None:
    app = f"fr{next(_names)}"
    flash = rig.board(app, small_app("1.0.0"))
    rig.server.client().revoke_device(app)
    result = rig.boot(flash, max_boots=1)
    assert result.ended == "exit" and "APP 1.0.0" in result.output
    assert "revoked (403)" in result.output, result.output
    assert not (flash / "ota" / "reports").exists()  # nothing queued the server would refuse
    assert rig.server.client().device(app)["history"] == []
