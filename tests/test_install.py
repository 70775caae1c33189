"""`ota install`: a signed release staged on a board over its REPL through the real mpremote
(socket://, a virtual board's endpoint): what it copies, what it refuses before touching the
board, a copy cut short and continued, a power cut at every file operation of the staging,
the --virtual path, and the server learning the new version at the board's next check-in."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from offline_rig import NEW, OLD, Offline, offline_rig, queued, running

from tools.board_files import read_state
from tools.install import InstallError, load_release, plan_install, read_board, stage
from tools.station.writer_mpremote import MpremoteBoard

VERSIONS = {"1.0.0": OLD, "1.1.0": NEW}
# A release with blobs of several copy chunks (tools/install.py _CHUNK), sent plain.
BIG = {**NEW, "data/table.bin": os.urandom(9000), "data/more.bin": os.urandom(5000)}


@pytest.fixture
def rig(tmp_path: Path, micropython: str) -> Any:
    with offline_rig(tmp_path, micropython) as r:
        yield r


def test_dry_run_says_what_would_be_copied_and_writes_nothing(rig: Offline):
    flash = rig.board("b1")
    bundle = rig.release(NEW, "1.1.0", 2, deflate=False)
    with rig.port(flash) as server:
        status, out, err = rig.install(bundle, server.port, "--dry-run", "--json")
        assert status == 0, err
        assert server.fs_ops == 0
    doc = json.loads(out)
    assert doc["dry_run"] is True and doc["board"]["version"] == "1.0.0"
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    unchanged = sorted(p for p in NEW if OLD.get(p) == NEW[p])
    assert sorted(doc["plan"]["from_slot"]) == unchanged
    wanted = {e["blob"]: e["size"] for e in manifest["files"] if e["path"] not in unchanged}
    assert {c["blob"]: c["bytes"] for c in doc["plan"]["copy"]} == wanted
    assert doc["plan"]["bytes"] == sum(wanted.values())
    assert not (flash / "ota" / "staged").exists()
    with rig.port(flash) as server:  # the table, for people
        status, out, _ = rig.install(bundle, server.port, "--dry-run")
    assert status == 0 and "would copy" in out and "BLOB" in out and "lib/util.py" in out


def test_a_damaged_bundle_is_refused_before_the_board_is_touched(rig: Offline):
    flash = rig.board("b1")
    bundle = rig.release(NEW, "1.1.0", 2, deflate=False)
    blob = next((bundle / "blobs").iterdir())
    blob.write_bytes(blob.read_bytes() + b"#")
    with rig.port(flash) as server:
        status, _, err = rig.install(bundle, server.port)
        assert server.fs_ops == 0
    assert status == 1 and blob.name in err, err


def test_an_unsigned_bundle_or_a_mismatched_envelope_is_refused(rig: Offline):
    bundle = rig.release(NEW, "1.1.0", 2)
    other = rig.release(OLD, "1.0.5", 3)
    (bundle / "manifest.dsse.json").write_bytes((other / "manifest.dsse.json").read_bytes())
    with pytest.raises(InstallError, match="signs another manifest"):
        load_release(bundle)
    (bundle / "manifest.dsse.json").unlink()
    with pytest.raises(InstallError, match="must be signed"):
        load_release(bundle)


def test_the_board_must_be_named_once_and_be_provisioned(rig: Offline, tmp_path: Path):
    bundle = rig.release(NEW, "1.1.0", 2)
    from tools.cli import main as ota

    assert ota(["install", str(bundle)]) == 1
    assert ota(["install", str(bundle), "--port", "x", "--virtual", str(tmp_path)]) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with rig.port(empty) as server:
        status, _, err = rig.install(bundle, server.port)
    assert status == 1 and "provision it first" in err, err


def test_a_board_whose_client_cannot_install_staged_releases_is_refused(rig: Offline):
    flash = rig.board("b1")
    (flash / "ota" / "offline.py").unlink()  # a board provisioned before offline installs
    with rig.port(flash) as server:
        status, _, err = rig.install(rig.release(NEW, "1.1.0", 2), server.port)
        assert server.fs_ops == 0
    assert status == 1 and "predates offline installs" in err, err


def test_a_copy_cut_short_leaves_the_old_app_and_the_next_install_continues(rig: Offline):
    flash = rig.board("b1")
    bundle = rig.release(BIG, "1.1.0", 2, deflate=False)
    release = load_release(bundle)
    versions = {**VERSIONS, "1.1.0": BIG}

    class CablePulled(Exception):
        pass

    def pull_half_way(done: int, total: int) -> None:
        if done * 2 >= total:
            raise CablePulled

    with rig.port(flash) as server:
        link = MpremoteBoard(f"socket://127.0.0.1:{server.port}")
        plan = plan_install(release, read_board(link))
        with pytest.raises(CablePulled):
            stage(link, plan, release, now=int(time.time()), progress=pull_half_way)
        link.close()
    booted = rig.boot(flash)
    assert running(flash, booted.output, versions) == "1.0.0"
    assert not (flash / "ota" / "staged" / "manifest.dsse").exists()

    staged = {p.name: p.stat().st_size for p in (flash / "ota" / "staged").iterdir()}
    with rig.port(flash) as server:
        status, out, err = rig.install(bundle, server.port, "--json", "--dry-run")
        assert status == 0, err
        status, _, err = rig.install(bundle, server.port)
    assert status == 0, err
    resumed = json.loads(out)["plan"]
    # what arrived is not sent again: a sealed blob is kept, a part continues from its size
    # (a whole part, which the cut left unsealed, is only sealed)
    arrived = sum(staged.values())
    assert arrived > 0
    assert resumed["bytes"] == plan.bytes_to_copy - arrived
    for blob, _, size in plan.copy:
        if blob in staged:
            assert blob in resumed["kept"]
        elif blob + ".t" in staged:
            assert {"blob": blob, "from": staged[blob + ".t"],
                    "bytes": size - staged[blob + ".t"]} in resumed["copy"]
    booted = rig.boot(flash)
    assert running(flash, booted.output, versions) == "1.1.0"


def test_progress_counts_the_bytes_copied(rig: Offline):
    flash = rig.board("b1")
    release = load_release(rig.release(BIG, "1.1.0", 2, deflate=False))
    seen: list[tuple[int, int]] = []
    with rig.port(flash) as server, \
            MpremoteBoard(f"socket://127.0.0.1:{server.port}") as link:
        plan = plan_install(release, read_board(link))
        stage(link, plan, release, now=int(time.time()), progress=lambda d, t: seen.append((d, t)))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1] == (plan.bytes_to_copy, plan.bytes_to_copy) and len(seen) > 2


def test_the_progress_bar_shows_on_a_terminal_only(monkeypatch):
    import io
    import sys

    from tools.cmd_install import _progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    with _progress(1000, enabled=True) as bar:
        assert bar is None  # a pipe or a file: no bar
    monkeypatch.setattr(sys, "stdout", Terminal())
    with _progress(1000, enabled=False) as bar:
        assert bar is None  # --json: no bar
    with _progress(1000, enabled=True) as bar:
        assert bar is not None
        bar(500, 1000)
        bar(1000, 1000)


def test_staged_leftovers_are_removed_by_the_next_install(rig: Offline):
    flash = rig.board("b1")
    staged = flash / "ota" / "staged"
    staged.mkdir()
    (staged / ("ab" * 32)).write_bytes(b"a blob of another release")
    (staged / "manifest.dsse").write_bytes(b"an old envelope")
    rig.stage(flash, rig.release(NEW, "1.1.0", 2))
    assert not (staged / ("ab" * 32)).exists()
    assert running(flash, rig.boot(flash).output, VERSIONS) == "1.1.0"


def test_install_onto_a_virtual_board_boots_it_and_says_what_it_runs(rig: Offline,
                                                                      monkeypatch):
    from tools.cli import main as ota

    monkeypatch.setenv("MICROPYTHON", rig.micropython)
    flash = rig.board("b1")
    assert ota(["install", str(rig.release(NEW, "1.1.0", 2)), "--virtual", str(flash)]) == 0
    assert read_state(flash)["slots"][read_state(flash)["active"]]["version"] == "1.1.0"
    status = ota(["install", str(rig.release(OLD, "1.0.9", 3, app="other")), "--virtual",
                  str(flash)])
    assert status == 1  # refused by the board: the command says so
    assert read_state(flash)["slots"][read_state(flash)["active"]]["version"] == "1.1.0"
    assert "WrongAppError" in queued(flash)[-1]["reason"]


def test_install_reads_the_board_where_its_layout_keeps_its_files(rig: Offline, monkeypatch):
    """A board provisioned before /ota_id (every file in /ota) takes an offline install; and
    on a board of the current layout a stale /ota/state1 (its life before /ota_rec) is not
    read: the client reads /ota_rec/state1 (docs/board.md, Three directories)."""
    from tools.board_files import record_bytes
    from tools.cli import main as ota

    monkeypatch.setenv("MICROPYTHON", rig.micropython)
    legacy = rig.board("legacy")
    for moved in ("ota_id/config.json", "ota_id/device.key", "ota_id/trust.json",
                  "ota_rec/state1"):
        (legacy / moved).rename(legacy / "ota" / moved.split("/")[1])
    (legacy / "ota_id").rmdir()
    (legacy / "ota_rec").rmdir()
    assert ota(["install", str(rig.release(NEW, "1.1.0", 2)), "--virtual", str(legacy)]) == 0
    assert read_state(legacy)["slots"][read_state(legacy)["active"]]["version"] == "1.1.0"
    assert not (legacy / "ota_id").exists()

    current = rig.board("current")
    stale = {**read_state(current), "seq": 99, "active": "b"}  # slot b holds nothing
    (current / "ota" / "state1").write_bytes(record_bytes(stale))
    with rig.port(current) as server:
        link = MpremoteBoard(f"socket://127.0.0.1:{server.port}")
        try:
            view = read_board(link)
        finally:
            link.close()
    assert (view.state["seq"], view.state["active"]) == (read_state(current)["seq"], "a")


def test_the_server_learns_the_offline_install_at_the_next_checkin(rig: Offline):
    from tools.local_server import LocalServer

    (rig.work / "root.json").write_bytes(rig.keys.root_envelope)
    with LocalServer(rig.work / "data", rig.work / "root.json") as server:
        api = server.client()
        flash = rig.board("b1", server=server.url, api=api)
        bundle = rig.release(NEW, "1.1.0", 2)
        api.publish(bundle)  # registered, rolled out to no channel: `ota install APP@1.1.0`
        rig.stage(flash, bundle)
        booted = rig.boot(flash)
        assert running(flash, booted.output, VERSIONS) == "1.1.0"
        device = api.device("b1")
    assert (device["app"], device["version"], device["sequence"]) == ("app", "1.1.0", 2), device
    # its reports say `offline`: recorded for the board, outside any rollout (docs/protocol.md)
    assert [(h["version"], h["status"]) for h in device["history"]] == [
        ("1.1.0", "installed"), ("1.1.0", "confirmed")], device["history"]


def test_staging_survives_a_power_cut_at_every_file_operation(rig: Offline):
    bundle = rig.release(NEW, "1.1.0", 2, deflate=False)
    probe = rig.board("probe")
    with rig.port(probe) as server:
        status, _, err = rig.install(bundle, server.port)
        assert status == 0, err
        total = server.fs_ops
    assert total > 5
    for cut in range(1, total + 1):
        flash = rig.board(f"cut{cut}")
        with rig.port(flash, cut_at=cut) as server:
            status, _, err = rig.install(bundle, server.port)
            assert server.powered_off, cut
        assert status == 1 and "ota:" in err, (cut, err)
        alone = rig.boot(flash)  # power back: nothing was committed, the old app runs
        assert alone.ended == "exit", (cut, alone.output)
        assert running(flash, alone.output, VERSIONS) == "1.0.0", cut
        with rig.port(flash) as server:  # the install again: it continues, then installs
            status, _, err = rig.install(bundle, server.port)
        assert status == 0, (cut, err)
        done = rig.boot(flash)
        assert running(flash, done.output, VERSIONS) == "1.1.0", (cut, done.output)




# -- properties ---------------------------------------------------------------------------------

_HEX = st.text("0123456789abcdef", min_size=64, max_size=64)


@settings(max_examples=80, deadline=None)
@given(files=st.lists(st.tuples(_HEX, st.integers(0, 9000), st.booleans()), min_size=1,
                      max_size=12, unique_by=lambda f: f[0]),
       staged=st.lists(st.tuples(st.integers(0, 14), st.sampled_from(["", ".t"]),
                                 st.integers(0, 9000)), max_size=10),
       envelope=st.booleans(), junk=st.booleans())
def test_a_plan_copies_exactly_what_the_board_lacks_and_keeps_what_it_can(
        files: list[tuple[str, int, bool]], staged: list[tuple[int, str, int]], envelope: bool,
        junk: bool) -> None:
    """Whatever the staging area holds (whole blobs, parts of any size, an old envelope,
    stray files): every blob the active slot lacks is kept whole or copied from a valid offset;
    nothing the slot has is sent; nothing kept is removed; the old envelope goes first."""
    from signing.manifest import FileEntry, Manifest
    from tools.install import BoardView, Release

    entries = tuple(FileEntry(f"f{i}.bin", sha, size) for i, (sha, size, _) in enumerate(files))
    manifest = Manifest("app", "1.1.0", 2, 0, 1, ("unix",), "1.20.0", "app_main", entries)
    release = Release(manifest, b"{}", {e.blob: Path(e.path) for e in entries})
    active = frozenset(sha for sha, _, in_slot in files if in_slot)
    on_board: dict[str, int] = {}
    for index, suffix, size in staged:  # indexes past the files name blobs of another release
        name = (files[index][0] if index < len(files) else f"{index:064x}") + suffix
        on_board[name] = size
    if envelope:
        on_board["manifest.dsse"] = 10
    if junk:
        on_board["now"] = 10
    plan = plan_install(release, BoardView({}, active, on_board))

    lacked = {e.blob: e.transfer_size for e in entries if e.sha256 not in active}
    copied = {blob: (offset, size) for blob, offset, size in plan.copy}
    assert set(copied) | set(plan.kept) == set(lacked)
    assert not set(copied) & set(plan.kept)
    for blob in plan.kept:
        assert on_board[blob] == lacked[blob]
    for blob, (offset, size) in copied.items():
        assert size == lacked[blob]
        assert offset == 0 or (0 < offset <= size and on_board[blob + ".t"] == offset)
    assert plan.bytes_to_copy == sum(s - o for o, s in copied.values())
    assert sorted(plan.from_slot) == sorted(e.path for e in entries if e.sha256 in active)
    keep = set(plan.kept) | {b + ".t" for b, (o, _) in copied.items() if o}
    assert set(plan.remove) == set(on_board) - keep
    if envelope:
        assert plan.remove[0] == "manifest.dsse"


# -- APP@VERSION: the release fetched from the server ---------------------------------------------


def test_app_at_version_is_fetched_from_the_server_and_installed(rig: Offline, monkeypatch):
    from tools.local_server import LocalServer

    (rig.work / "root.json").write_bytes(rig.keys.root_envelope)
    with LocalServer(rig.work / "data", rig.work / "root.json") as server:
        server.client().publish(rig.release(NEW, "1.1.0", 2))
        flash = rig.board("b1")
        monkeypatch.setenv("MPOTA_TOKEN", server.token)
        with rig.port(flash) as served:
            status, out, err = rig.install("app@1.1.0", served.port, "--server", server.url,
                                           "--json")
            assert status == 0, err
            missing, _, err = rig.install("app@9.9.9", served.port, "--server", server.url)
        assert missing == 1 and "unknown_release" in err, err
        monkeypatch.delenv("MPOTA_TOKEN")
        with rig.port(flash) as served:
            status, _, err = rig.install("app@1.1.0", served.port, "--server", server.url)
        assert status == 1 and "no publisher token" in err, err
    assert json.loads(out)["release"]["version"] == "1.1.0"
    booted = rig.boot(flash)
    assert running(flash, booted.output, VERSIONS) == "1.1.0"


def test_release_endpoints_serve_only_a_registered_release_to_a_publisher(rig: Offline):
    from tools.api_client import ApiClient, ApiClientError
    from tools.local_server import LocalServer

    (rig.work / "root.json").write_bytes(rig.keys.root_envelope)
    other = rig.release(OLD, "1.0.0", 1)
    bundle = rig.release(NEW, "1.1.0", 2)
    with LocalServer(rig.work / "data", rig.work / "root.json") as server:
        api = server.client()
        api.publish(other)
        api.publish(bundle)
        assert api.release_envelope("app", "1.1.0") == \
            (bundle / "manifest.dsse.json").read_bytes()
        blob = next((bundle / "blobs").iterdir())
        assert api.release_blob("app", "1.1.0", blob.name) == blob.read_bytes()
        stranger = next(b for b in (other / "blobs").iterdir()
                        if not (bundle / "blobs" / b.name).exists())
        for call, status, code in (
                (lambda: api.release_envelope("app", "2.0.0"), 404, "unknown_release"),
                (lambda: api.release_envelope("app", "1.1"), 400, "bad_field"),
                (lambda: api.release_envelope("-app", "1.1.0"), 400, "bad_name"),
                (lambda: api.release_blob("app", "1.1.0", stranger.name), 404, "unknown_blob"),
                (lambda: api.release_blob("app", "1.1.0", "zz"), 400, "bad_blob_id"),
                (lambda: ApiClient(server.url, "not-a-token").release_envelope("app", "1.1.0"),
                 401, "bad_token")):
            with pytest.raises(ApiClientError) as caught:
                call()
            assert (caught.value.status, caught.value.code) == (status, code)
