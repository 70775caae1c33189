"""The rig of the offline-install tests: boards provisioned with no server in reach, releases
built and signed with signing/, and `ota install` run in-process against a board's REPL
endpoint through the real mpremote (socket://)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from bench.reference_app import Keys, build_release, make_keys, provision_board, small_app
from tools.board_files import app_hashes, read_state, slot_files
from tools.cli import main as ota
from tools.virtual_board import VirtualBoard

# Nothing listens here: a board's check-in fails at once (connection refused), as a board with
# no network at all would carry on.
NO_SERVER = "http://127.0.0.1:9"
OLD = small_app("1.0.0", {"data/old_only.txt": b"removed in 1.1.0\n"})
NEW = small_app("1.1.0", {"lib/util.py": b"def double(x):\n    return x + x\n",
                          "lib/extra.py": b"EXTRA = True\n" * 40})
NEWER = {**NEW, "app_main.py": b"import lib.util\nprint('APP', '1.2.0')\n"}


class _NoServer:
    """Provisioning with no server: the board's key is registered nowhere."""

    def register_device(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class Offline:
    keys: Keys
    work: Path
    micropython: str

    def board(self, name: str, files: Mapping[str, bytes] = OLD, app: str = "app",
              server: str = NO_SERVER, api: Any = None, **config: Any) -> Path:
        """A board running `files` as `app` 1.0.0 (sequence 1)."""
        flash = self.work / name
        provision_board(flash, api or _NoServer(), name, server, self.keys, files, app=app,
                        timeout_s=1, **config)
        return flash

    def release(self, files: Mapping[str, bytes], version: str, sequence: int,
                app: str = "app", **kwargs: Any) -> Path:
        return build_release(self.work, files, version, sequence, self.keys, app=app, **kwargs)

    def boot(self, flash: Path, max_boots: int = 4, cut_at: int | None = None,
             wifi: bool = True) -> Any:
        return VirtualBoard(flash, micropython=self.micropython, wifi_ok=wifi).run(
            max_boots=max_boots, timeout=90, cut_at=cut_at)

    @contextlib.contextmanager
    def port(self, flash: Path, cut_at: int | None = None) -> Iterator[Any]:
        """The board's REPL endpoint (a ReplServer: port, fs_ops, powered_off)."""
        with VirtualBoard(flash, micropython=self.micropython).repl_server(cut_at=cut_at) as s:
            yield s

    def install(self, bundle: Path, port: int, *extra: str) -> tuple[int, str, str]:
        """`ota install BUNDLE --port socket://...` in-process: (status, stdout, stderr)."""
        import io
        from contextlib import redirect_stderr, redirect_stdout

        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = ota(["install", str(bundle), "--port", f"socket://127.0.0.1:{port}",
                          *extra])
        return status, out.getvalue(), err.getvalue()

    def stage(self, flash: Path, bundle: Path) -> dict[str, Any]:
        """Install over the board's REPL; returns the --json result."""
        with self.port(flash) as server:
            status, out, err = self.install(bundle, server.port, "--json")
        assert status == 0, err
        return dict(json.loads(out))


@contextlib.contextmanager
def offline_rig(work: Path, micropython: str) -> Iterator[Offline]:
    yield Offline(make_keys(), work, micropython)


def running(flash: Path, output: str, versions: Mapping[str, Mapping[str, bytes]]) -> str:
    """The version the board printed last, checked against its active slot's exact files."""
    state = read_state(flash)
    assert state is not None, "no valid boot state"
    printed = [line for line in output.splitlines() if line.startswith("APP ")]
    assert printed, output
    version = printed[-1].split()[1]
    assert slot_files(flash, state["active"]) == app_hashes(versions[version]), version
    return version


def queued(flash: Path) -> list[dict[str, Any]]:
    """The reports waiting on the board's flash for its next check-in."""
    path = flash / "ota" / "reports"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expired_release(rig: Offline, files: Mapping[str, bytes], version: str,
                    sequence: int) -> Path:
    """A signed bundle whose manifest expired an hour ago."""
    from signing.bundle import build_bundle, sign_bundle

    source = rig.work / f"src-expired-{version}"
    for path, data in files.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_bytes(data)
    out = rig.work / f"bundle-expired-{version}"
    now = int(time.time())
    build_bundle(source, out, version=version, sequence=sequence, boards=("unix",),
                 entry="app_main", min_micropython="1.20.0", mpy=False, deflate=True,
                 created=now - 7200, expires=now - 3600, app="app")
    sign_bundle(out, rig.keys.release)
    return out
