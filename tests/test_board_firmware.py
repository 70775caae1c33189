"""The firmware floor on the board: a module the client needs but the firmware lacks is a failed
check, never an ImportError out of `ota.client.check()` (docs/board.md, Firmware floor).

Real MicroPython (virtual board), real server behind the fault proxy. The virtual board's
firmware is Debian's MicroPython 1.25, which has every module; a firmware without one is
stood in for by a STAND-IN at the import boundary, written before boot.py as firmware runs
first: MicroPython's own `builtins.__import__` hook makes `import <name>` fail with the error
MicroPython raises for a module it was built without ("no module named '<name>'").
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from faultproxy import FaultProxy
from tls_support import server_tls

from bench.reference_app import Keys, build_release, make_keys, provision_board, small_app
from tools.board_files import app_hashes, read_state, slot_files
from tools.local_server import LocalServer
from tools.virtual_board import VirtualBoard

# STAND-IN for a firmware built without the modules named in MISSING (see the docstring).
_FIRMWARE_WITHOUT = """\
import builtins
def _firmware_import(name, *rest, _real=builtins.__import__, _missing=%r):
    if name in _missing:
        raise ImportError("no module named '%%s'" %% name)
    return _real(name, *rest)
builtins.__import__ = _firmware_import
del builtins, _firmware_import
"""


@dataclass
class Rig:
    keys: Keys
    server: LocalServer
    proxy: FaultProxy
    work: Path
    micropython: str

    def publish(self, app: str, files: dict[str, bytes], version: str, sequence: int) -> None:
        bundle = build_release(self.work, files, version, sequence, self.keys, app=app,
                               deflate=True)
        self.server.client().publish(bundle, channel=app, percent=100)

    def board(self, name: str, files: dict[str, bytes], url: str, missing: tuple[str, ...],
              server_ca: bytes | None = None) -> Path:
        flash = self.work / name
        provision_board(flash, self.server.client(), name, url, self.keys, files, app=name,
                        channel=name, timeout_s=3, server_ca=server_ca)
        boot = flash / "boot.py"
        boot.write_bytes((_FIRMWARE_WITHOUT % (missing,)).encode() + boot.read_bytes())
        return flash

    def boot(self, flash: Path, max_boots: int = 3) -> Any:
        return VirtualBoard(flash, micropython=self.micropython).run(max_boots=max_boots,
                                                                       timeout=60)

    def sent_reports(self, status: str) -> list[dict[str, Any]]:
        sent = [json.loads(e.request.partition(b"\r\n\r\n")[2]) for e in self.proxy.exchanges
                if e.path.endswith("/v1/device/report")]
        return [r for r in sent if r["status"] == status]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("board-firmware")
    keys = make_keys()
    (work / "root.json").write_bytes(keys.root_envelope)
    with LocalServer(work / "data", work / "root.json") as server, \
            FaultProxy(server.url) as proxy:
        yield Rig(keys, server, proxy, work, micropython)


def _compressible_app(version: str) -> dict[str, bytes]:
    """An app whose changed file is sent deflated (the board then needs `deflate`)."""
    return small_app(version, {"lib/table.py": b"T = %r\n" % ([version] * 400,)})


def test_firmware_without_deflate_reports_failed_and_keeps_the_old_app(rig: Rig) -> None:
    rig.proxy.clear()
    name = "no-deflate"
    old, new = _compressible_app("1.0.0"), _compressible_app("1.1.0")
    rig.publish(name, new, "1.1.0", 2)
    flash = rig.board(name, old, rig.proxy.url, ("deflate",))
    result = rig.boot(flash, max_boots=2)
    assert [b.ended for b in result.boots] == ["exit"], result.output
    assert "Traceback" not in result.output and "ota: check failed" not in result.output
    assert "APP 1.0.0" in result.output
    failed = rig.sent_reports("failed")
    assert [(r["version"], r["reason"]) for r in failed] == [
        ("1.1.0", "firmware: no module named 'deflate'")], failed
    state = read_state(flash)
    assert state is not None and state["active"] == "a"
    assert slot_files(flash, "a") == app_hashes(old)


def test_firmware_without_tls_is_a_check_that_reached_no_one_not_a_crash(
        rig: Rig, tmp_path: Path) -> None:
    name = "no-tls"
    tls = server_tls(tmp_path)
    with FaultProxy(rig.server.url, tls=tls.context) as tls_front:
        flash = rig.board(name, small_app("1.0.0"), tls_front.url, ("tls",), tls.ca_der)
        result = rig.boot(flash, max_boots=2)
        served = list(tls_front.exchanges)
    assert [b.ended for b in result.boots] == ["exit"], result.output
    assert "Traceback" not in result.output and "ota: check failed" not in result.output
    assert "ota: firmware lacks a module the client needs: no module named 'tls'" \
        in result.output
    assert "APP 1.0.0" in result.output
    assert served == []  # no request left the board in clear text instead


def test_the_same_boards_update_on_the_real_firmware(rig: Rig, tmp_path: Path) -> None:
    """The stand-in removes only what it names: without it both paths work (https, deflate)."""
    name = "full-firmware"
    old, new = _compressible_app("1.0.0"), _compressible_app("1.1.0")
    rig.publish(name, new, "1.1.0", 2)
    tls = server_tls(tmp_path)
    with FaultProxy(rig.server.url, tls=tls.context) as tls_front:
        flash = rig.board(name, old, tls_front.url, (), tls.ca_der)
        result = rig.boot(flash)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.1.0" in result.boots[-1].output
    assert slot_files(flash, "b") == app_hashes(new)
