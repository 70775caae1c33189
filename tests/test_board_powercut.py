"""Power cut at EVERY filesystem mutation of an update (download, swap, trial boot, confirm):
after each cut the board boots to completion and runs exactly the old or the new version, with
that version's exact file set and hashes; once it can reach the server again it ends on the
new one. The same for an update that first rotates the board's root: the board then also
trusts exactly the old or the new root. Real MicroPython (virtual board), real server
(LocalServer). These cut between file operations, on the directory flash; cuts at every block
program and erase of littlefs and FAT are in test_board_powercut_blocks.py."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from bench.reference_app import build_release, make_keys, provision_board, small_app
from signing import keys as keymod
from signing.root import new_root, sign_root
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


def _cut_then_alone(board: VirtualBoard, cut: int, micropython: str) -> str:
    """Cut power at mutation `cut`; power back with no network: the board must boot and run
    one whole version on its own. Returns that version."""
    cut_run = board.run(max_boots=4, timeout=60, cut_at=cut)
    assert cut_run.ended == "power_cut", (cut, cut_run.output)
    offline = VirtualBoard(board.flash_dir, micropython=micropython, wifi_ok=False,
                           flash=board.flash)
    alone = offline.run(max_boots=2, timeout=60)
    assert alone.ended == "exit", (cut, alone.output)
    return _running(board.flash_dir, alone.boots[-1].output)


def _back_online(board: VirtualBoard, cut: int) -> None:
    """Network back: the board finishes the job and stays, confirmed, on the new version."""
    online = board.run(max_boots=4, timeout=60)
    assert online.ended == "exit", (cut, online.output)
    assert _running(board.flash_dir, online.boots[-1].output) == "1.1.0", cut
    state = read_state(board.flash_dir)
    assert state is not None and state["ok"] == 1, (cut, state)


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
            return VirtualBoard(flash, micropython=micropython, flash="dir")

        probe = fresh("probe").run(max_boots=4, timeout=60)
        assert [b.ended for b in probe.boots] == ["reset", "exit"], probe.output
        total = probe.fs_ops
        assert total > 10
        seen = set()
        for cut in range(1, total + 1):
            board = fresh(f"cut{cut}")
            seen.add(_cut_then_alone(board, cut, micropython))
            _back_online(board, cut)
        assert seen == {"1.0.0", "1.1.0"}  # the cuts fell on both sides of the flip


# -- the same, with a root rotation in the update -----------------------------------------------

BOARD_DIR = PROJECT_ROOT / "bootloader_py"
# The board's own verifier loads each root file as client.load_root does, but with the root's
# own threshold checked at once instead of at its first use (expiry is not checked: the
# anchor's never is), and prints its version, one line per file.
_LOAD_ROOTS = """
import sys
sys.path.insert(0, {board!r})
from ota import trust
for path in {paths!r}:
    print(trust.load_root(path).version)
"""


def _trusted_file(flash: Path) -> Path:
    """The file client.load_root would take: trust.json, or the renamed-to-be copy when a
    rotation was cut between removing trust.json and renaming trust.json.new over it."""
    trust = flash / "ota_id" / "trust.json"
    return trust if trust.exists() else trust.with_name("trust.json.new")


def _board_root_versions(micropython: str, files: list[Path]) -> list[int]:
    script = _LOAD_ROOTS.format(board=str(BOARD_DIR), paths=[str(f) for f in files])
    done = subprocess.run([micropython, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return [int(line) for line in done.stdout.split()]


@pytest.mark.parametrize("steps", [1, 2])
def test_update_with_a_root_rotation_survives_a_power_cut_at_every_file_operation(
        tmp_path, micropython, steps):
    """Each newer root names a new release key and 1.1.0 is signed by the last one's: the
    board must rotate through `steps` roots (v2 … v1+steps, each verified from its
    predecessor) to install it. After a cut anywhere, the board trusts exactly root v1 or
    exactly the last root, never one in between (trust.json.new only in the one cut point
    between the remove and the rename) and runs one whole version; with the network back it
    ends on 1.1.0 trusting the last root."""
    keys = make_keys()
    (tmp_path / "root.json").write_bytes(keys.root_envelope)
    envelopes = {1: keys.root_envelope}
    last = 1 + steps
    for version in range(2, last + 1):
        new_release = keymod.generate_private_key()
        envelopes[version] = sign_root(
            new_root(version=version, expires=int(time.time()) + 30 * 86400,
                     root_keys=[keys.root], release_keys=[new_release]), [keys.root])
    root_last = envelopes[last]
    with LocalServer(tmp_path / "data", tmp_path / "root.json") as server:
        api = server.client()
        for version in range(2, last + 1):
            api.upload_root(envelopes[version])
        bundle = build_release(tmp_path, NEW, "1.1.0", 2,
                               dataclasses.replace(keys, release=new_release), app="pcr")
        api.publish(bundle, channel="stable", percent=100)

        def fresh(name: str) -> VirtualBoard:
            flash = tmp_path / name
            provision_board(flash, api, name, server.url, keys, OLD, app="pcr",
                            trial_boots=3, timeout_s=3)
            return VirtualBoard(flash, micropython=micropython, flash="dir")

        probe = fresh("probe").run(max_boots=4, timeout=60)
        assert [b.ended for b in probe.boots] == ["reset", "exit"], probe.output
        assert (tmp_path / "probe" / "ota_id" / "trust.json").read_bytes() == root_last
        total = probe.fs_ops
        assert total > 10
        held_dir = tmp_path / "held"
        held_dir.mkdir()
        held: list[Path] = []  # a copy of the root file each cut board holds, running alone
        held_versions = []  # which of the two envelopes each copy is
        seen = set()  # (trusted root version, running app version) after each cut
        in_window = []  # cut points that left trust.json removed, trust.json.new not renamed
        for cut in range(1, total + 1):
            board = fresh(f"cut{cut}")
            # Power back, no network: a whole version runs, and the root file is one of the
            # two signed envelopes, byte for byte.
            running = _cut_then_alone(board, cut, micropython)
            trusted = _trusted_file(board.flash_dir)
            assert trusted.exists(), (cut, "no root file left")
            data = trusted.read_bytes()
            versions = [v for v, env in envelopes.items() if env == data]
            assert versions, (cut, trusted.name, data[:80])
            if trusted.name == "trust.json.new":
                in_window.append((cut, versions[0]))
            held.append(held_dir / f"{cut}.{trusted.name}")
            held[-1].write_bytes(data)  # the online run below replaces the board's file
            held_versions.append(versions[0])
            seen.add((versions[0], running))
            # Network back: the board finishes the rotation and the update.
            _back_online(board, cut)
            ota_dir = board.flash_dir / "ota_id"
            assert (ota_dir / "trust.json").read_bytes() == root_last, cut
            assert not (ota_dir / "trust.json.new").exists(), cut
            assert api.device(f"cut{cut}")["root_version"] == last, cut
        # The board's own verifier takes every file a cut left as the trust anchor.
        assert _board_root_versions(micropython, held) == held_versions
        # trust.json.new is the anchor at one cut point only (between the remove and the
        # rename), and it holds the verified new root there.
        assert [v for _, v in in_window] == [last], in_window
        # Both sides of the rotation and of the flip; 1.1.0 never runs under root v1, and no
        # root between the first and the last is ever the anchor.
        assert seen == {(1, "1.0.0"), (last, "1.0.0"), (last, "1.1.0")}, seen
