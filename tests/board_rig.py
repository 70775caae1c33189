"""A real server (LocalServer) behind the fault proxy, and virtual boards provisioned against
it: the rig of the board policy tests (app binding, boards with no app, polling)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from faultproxy import FaultProxy

from bench.reference_app import Keys, build_release, make_keys, provision_board, small_app
from signing.bundle import load_bundle
from tools.board_files import BoardConfig, install_board
from tools.local_server import LocalServer
from tools.virtual_board import VirtualBoard

# Everyone now, without the automatic pause: the board tests are about the board (a failed
# report, then a retry that succeeds); under the default rule one board's failed report pauses a
# one-board rollout (docs/operations.md, "When a rollout pauses on its own").
EVERYONE_NO_PAUSE: dict[str, Any] = {"stages": [{"percent": 100}], "failure_threshold": 1}


@dataclass
class Rig:
    keys: Keys
    server: LocalServer
    proxy: FaultProxy
    work: Path
    micropython: str

    def publish(self, app: str, version: str, sequence: int, channel: str) -> bytes:
        """Publish small_app(version) as `app` on `channel`; returns its signed envelope."""
        bundle = build_release(self.work, small_app(version), version, sequence, self.keys,
                               app=app)
        self.server.client().publish(bundle, channel=channel, policy=EVERYONE_NO_PAUSE)
        return load_bundle(bundle).envelope_path.read_bytes()

    def config(self, name: str, **values: Any) -> BoardConfig:
        return BoardConfig(device_id=name, server=self.proxy.url, board="unix", channel=name,
                           timeout_s=3, **values)

    def board(self, name: str, app: str) -> Path:
        """A board running `app` 1.0.0 (sequence 1), registered on channel `name`."""
        flash = self.work / name
        provision_board(flash, self.server.client(), name, self.proxy.url, self.keys,
                        small_app("1.0.0"), app=app, channel=name, timeout_s=3)
        return flash

    def bare_board(self, name: str, **values: Any) -> Path:
        """A board provisioned without an app (slot a empty), registered on channel `name`."""
        from signing import keys as keymod

        key = keymod.generate_private_key()
        self.server.client().register_device(name, keymod.public_point(key), board="unix",
                                             channel=name)
        flash = self.work / name
        flash.mkdir()
        install_board(flash, self.config(name, **values), key, self.keys.root_envelope)
        return flash

    def boot(self, flash: Path, max_boots: int = 3, cut_at: int | None = None,
             timeout: float = 60) -> Any:
        return VirtualBoard(flash, micropython=self.micropython).run(
            max_boots=max_boots, timeout=timeout, cut_at=cut_at)

    def sent(self, status: str) -> list[dict[str, Any]]:
        """Reports with `status` the board sent (whatever the server answered)."""
        sent = [json.loads(e.request.partition(b"\r\n\r\n")[2]) for e in self.proxy.exchanges
                if e.path.endswith("/v1/device/report")]
        return [r for r in sent if r["status"] == status]

    def checkins(self) -> list[dict[str, Any]]:
        return [json.loads(e.request.partition(b"\r\n\r\n")[2]) for e in self.proxy.exchanges
                if e.path.endswith("/v1/device/checkin")]

    def packs(self) -> int:
        return sum("/v1/device/pack" in e.path for e in self.proxy.exchanges)


@contextlib.contextmanager
def board_rig(work: Path, micropython: str) -> Iterator[Rig]:
    """Fresh keys, a server and its proxy on 127.0.0.1, stopped when the block ends."""
    keys = make_keys()
    (work / "root.json").write_bytes(keys.root_envelope)
    with LocalServer(work / "data", work / "root.json") as server, \
            FaultProxy(server.url) as proxy:
        yield Rig(keys, server, proxy, work, micropython)
