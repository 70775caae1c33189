"""Power cut at EVERY filesystem mutation of an update (download, swap, trial boot, confirm):
after each cut the board boots to completion and runs exactly the old or the new version, with
that version's exact file set and hashes; once it can reach the server again it ends on the
new one. Real MicroPython (virtual board), real server (LocalServer)."""

from __future__ import annotations

import sys
from pathlib import Path

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from bench.reference_app import build_release, make_keys, provision_board, small_app
from tools.board_files import app_hashes, read_state, slot_files
from tools.local_server import LocalServer
from tools.virtual_board import VirtualBoard

OLD = small_app("1.0.0", {"old_only.txt": b"removed in 1.1.0\n"})
NEW = small_app("1.1.0", {
    "lib/util.py": b"def double(x):\n    return x + x\n",  # changed
    "lib/extra.py": b"EXTRA = True\n" * 40,                 # added
    "data/notes.txt": OLD["data/notes.txt"],                 # unchanged: copied
})


def _running(flash: Path, output: str) -> str:
    """Which version the board runs, checked against the active slot's exact file set."""
    state = read_state(flash)
    assert state is not None, "no valid boot state"
    active = slot_files(flash, state["active"])
    printed = [line for line in output.splitlines() if line.startswith("APP ")]
    assert printed, output
    version = printed[-1].split()[1]
    expected = {"1.0.0": OLD, "1.1.0": NEW}[version]
    assert active == app_hashes(expected), (version, sorted(active))
    return version


def test_update_survives_a_power_cut_at_every_file_operation(tmp_path, micropython):
    keys = make_keys()
    (tmp_path / "root.json").write_bytes(keys.root_envelope)
    with LocalServer(tmp_path / "data", tmp_path / "root.json") as server:
        api = server.client()
        bundle = build_release(tmp_path, NEW, "1.1.0", 2, keys, app="pc")
        api.publish(bundle, channel="stable", percent=100)

        def fresh(name: str) -> VirtualBoard:
            flash = tmp_path / name
            provision_board(flash, api, name, server.url, keys, OLD, app="pc", trial_boots=3)
            return VirtualBoard(flash, micropython=micropython)

        probe = fresh("probe").run(max_boots=4, timeout=60)
        assert [b.ended for b in probe.boots] == ["reset", "exit"], probe.output
        total = probe.fs_ops
        assert total > 10
        seen = set()
        for cut in range(1, total + 1):
            board = fresh(f"cut{cut}")
            cut_run = board.run(max_boots=4, timeout=60, cut_at=cut)
            assert cut_run.ended == "power_cut", (cut, cut_run.output)
            # Power back, no network: the board must run a whole version on its own.
            offline = VirtualBoard(board.flash_dir, micropython=micropython, wifi_ok=False)
            alone = offline.run(max_boots=2, timeout=60)
            assert alone.ended == "exit", (cut, alone.output)
            seen.add(_running(board.flash_dir, alone.boots[-1].output))
            # Network back: the board finishes the job and stays on the new version.
            online = board.run(max_boots=4, timeout=60)
            assert online.ended == "exit", (cut, online.output)
            assert _running(board.flash_dir, online.boots[-1].output) == "1.1.0", cut
            state = read_state(board.flash_dir)
            assert state is not None and state["ok"] == 1, (cut, state)
        assert seen == {"1.0.0", "1.1.0"}  # the cuts fell on both sides of the flip
