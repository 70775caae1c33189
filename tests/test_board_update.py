"""Board updates end to end: real MicroPython (virtual board), real server (LocalServer), and
the fault proxy in front of it, counting what travels and breaking what the test asks for."""

from __future__ import annotations

import itertools
import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from board_rig import EVERYONE_NO_PAUSE
from faultproxy import FaultProxy
from tls_support import server_tls

from bench.reference_app import (
    Keys,
    build_release,
    bundle_files,
    changed_paths,
    make_keys,
    provision_board,
    reference_files,
    small_app,
)
from signing import dsse
from signing.bundle import load_bundle
from tools.board_files import app_hashes, read_state, slot_files
from tools.local_server import LocalServer
from tools.virtual_board import VirtualBoard

_names = itertools.count(1)


@dataclass
class Rig:
    keys: Keys
    server: LocalServer
    proxy: FaultProxy
    work: Path
    micropython: str

    @property
    def api(self) -> Any:
        return self.server.client()

    def publish(self, app: str, files: dict[str, bytes], version: str, sequence: int,
                channel: str, deflate: bool = True, mpy: bool = False) -> Any:
        bundle = build_release(self.work, files, version, sequence, self.keys, app=app,
                               deflate=deflate, mpy=mpy)
        self.api.publish(bundle, channel=channel, policy=EVERYONE_NO_PAUSE)
        return load_bundle(bundle).manifest

    def board(self, name: str, app: str, files: dict[str, bytes], channel: str,
              **config: Any) -> Path:
        flash = self.work / name
        config.setdefault("timeout_s", 3)
        provision_board(flash, self.api, name, self.proxy.url, self.keys, files, app=app,
                        channel=channel, **config)
        return flash

    def boot(self, flash: Path, max_boots: int = 4) -> Any:
        return VirtualBoard(flash, micropython=self.micropython).run(max_boots=max_boots,
                                                                       timeout=60)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("board-update")
    keys = make_keys()
    (work / "root.json").write_bytes(keys.root_envelope)
    with LocalServer(work / "data", work / "root.json") as server, \
            FaultProxy(server.url) as proxy:
        yield Rig(keys, server, proxy, work, micropython)


@pytest.fixture
def case(rig: Rig) -> tuple[Rig, str]:
    """A fresh app name and channel per test, so rollouts of different tests never mix."""
    rig.proxy.clear()
    return rig, f"t{next(_names)}"


def _reports(rig: Rig) -> list[dict[str, Any]]:
    return [json.loads(e.request.partition(b"\r\n\r\n")[2]) for e in rig.proxy.exchanges
            if e.path.endswith("/v1/device/report") and e.status == 204]


def _sent(rig: Rig, status: str) -> list[dict[str, Any]]:
    """Reports with `status` the board sent, whatever the server answered (it answers 404 to
    reports about a manifest it never published, such as a forged one)."""
    sent = [json.loads(e.request.partition(b"\r\n\r\n")[2]) for e in rig.proxy.exchanges
            if e.path.endswith("/v1/device/report")]
    return [r for r in sent if r["status"] == status]


def test_board_updates_and_only_changed_files_travel(case):
    rig, name = case
    old, new = reference_files("1.0.0"), reference_files("1.1.0")
    manifest = rig.publish(name, new, "1.1.0", 2, channel=name)
    flash = rig.board(name, name, old, channel=name)
    result = rig.boot(flash)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.1.0" in result.boots[-1].output
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"]) == ("b", 1)
    assert slot_files(flash, "b") == app_hashes(new)
    assert slot_files(flash, "a") == app_hashes(old)  # the active slot was never written
    changed = {e.path: e for e in manifest.files if e.path in changed_paths()}
    assert len(changed) == 3
    # one signed request fetches exactly the changed files' blobs, nothing else travels
    packs = [e for e in rig.proxy.exchanges if "/v1/device/pack" in e.path]
    assert len(packs) == 1
    assert sorted(packs[0].path.partition("?blobs=")[2].split(",")) == sorted(
        e.blob for e in changed.values())
    assert not any("/v1/blobs/" in e.path for e in rig.proxy.exchanges)
    assert rig.proxy.body_bytes("/v1/device/pack") == sum(
        e.transfer_size for e in changed.values())
    assert [r["status"] for r in _reports(rig)] == ["downloading", "installed", "confirmed"]
    assert rig.api.device(name)["version"] == "1.1.0"


def test_board_with_nothing_new_writes_only_its_counter_reservation(case):
    rig, name = case
    flash = rig.board(name, name, small_app("1.0.0"), channel=name)
    # Counts file operations: the directory flash (block flash counts programs and erases).
    board = VirtualBoard(flash, micropython=rig.micropython, flash="dir")
    first = board.run(max_boots=1, timeout=30)
    assert first.ended == "exit" and "APP 1.0.0" in first.output, first.output
    assert first.fs_ops == 2  # open + write of the counter reservation, once per process
    for _ in range(2):  # each boot checks in with fresh counters the server accepts
        again = board.run(max_boots=1, timeout=30)
        assert again.ended == "exit"
    checkins = [e.status for e in rig.proxy.exchanges if e.path.endswith("/checkin")]
    assert checkins == [204, 204, 204]


def test_crash_on_trial_is_rolled_back_and_reported_with_the_old_version(case):
    rig, name = case
    old = small_app("1.0.0")
    bad = small_app("1.1.0", {"app_main.py": b"print('APP 1.1.0')\nraise ValueError('boom')\n"})
    rig.publish(name, bad, "1.1.0", 2, channel=name)
    flash = rig.board(name, name, old, channel=name, trial_boots=2)
    result = rig.boot(flash, max_boots=6)
    # update+reset, trial 1 crash, trial 2 crash, rollback boot runs 1.0.0 and checks in
    assert [b.ended for b in result.boots] == ["reset", "reset", "reset", "exit"], result.output
    assert "APP 1.0.0" in result.boots[-1].output
    assert slot_files(flash, "a") == app_hashes(old)
    state = read_state(flash)
    assert state is not None and (state["active"], state["reject"]) == ("a", 2)
    rolled = [r for r in _reports(rig) if r["status"] == "rolled_back"]
    assert len(rolled) == 1 and rolled[0]["version"] == "1.0.0" and rolled[0]["sequence"] == 2
    device = rig.api.device(name)
    assert (device["last_status"], device["version"]) == ("rolled_back", "1.0.0")
    # The board does not take the rolled-back release again.
    again = rig.boot(flash, max_boots=2)
    assert [b.ended for b in again.boots] == ["exit"] and "APP 1.0.0" in again.output


def test_app_that_confirms_itself_stays(case):
    rig, name = case
    good = small_app("1.1.0", {"app_main.py": b"import ota\nprint('APP 1.1.0')\nota.confirm()\n"})
    rig.publish(name, good, "1.1.0", 2, channel=name)
    flash = rig.board(name, name, small_app("1.0.0"), channel=name, auto_confirm=False,
                      trial_boots=1)
    result = rig.boot(flash)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    for _ in range(3):
        again = rig.boot(flash, max_boots=2)
        assert "APP 1.1.0" in again.output, again.output
    assert rig.api.device(name)["last_status"] == "confirmed"


def test_resumes_an_interrupted_download_with_range(case):
    rig, name = case
    big = small_app("1.1.0", {"data/big.txt": bytes(range(256)) * 24})  # 6 KB, incompressible
    manifest = rig.publish(name, big, "1.1.0", 2, channel=name, deflate=False)
    flash = rig.board(name, name, small_app("1.0.0"), channel=name)
    big_blob = next(e.blob for e in manifest.files if e.path == "data/big.txt")
    rig.proxy.inject("reset", match=big_blob)
    first = rig.boot(flash, max_boots=1)
    assert "APP 1.0.0" in first.output, first.output
    failed = [r for r in _reports(rig) if r["status"] == "failed"]
    assert len(failed) == 1 and "big.txt" in failed[0]["reason"]
    cut = next(e for e in rig.proxy.exchanges if e.fault == "reset")
    order = cut.path.partition("?blobs=")[2].split(",")
    sizes = {e.blob: e.transfer_size for e in manifest.files}
    before = order[:order.index(big_blob)]
    have = cut.body_bytes - sum(sizes[b] for b in before)  # of big.txt, when the reset hit
    assert 0 < have < sizes[big_blob]
    second = rig.boot(flash)
    assert "APP 1.1.0" in second.output, second.output
    ranged = [e for e in rig.proxy.exchanges if e.request_range]
    assert len(ranged) == 1 and ranged[0].status == 206
    assert ranged[0].request_range == f"bytes={have}-"
    # the resumed pack starts with the interrupted blob and asks for none that arrived whole
    assert ranged[0].path.partition("?blobs=")[2].split(",") == [big_blob] + [
        b for b in order if b not in before and b != big_blob]
    assert ranged[0].body_bytes == sum(sizes[b] for b in order if b not in before) - have
    assert slot_files(flash, "b") == app_hashes(big)
    statuses = [r["status"] for r in _reports(rig)]
    assert statuses.count("failed") == 1 and statuses[-1] == "confirmed"


FAULT_CASES = [
    ("truncate", "/v1/device/pack", "truncated"),
    ("reset", "/v1/device/pack", "blob"),
    ("flip", "/v1/device/pack", "hash mismatch"),
    ("longer", "/v1/device/pack", "length"),
    ("drip", "/v1/device/pack", "timeout"),
    ("404", "/v1/device/pack", "http 404"),
    ("500", "/v1/device/pack", "http 500"),
    ("junk_json", "/checkin", "MalformedError"),
    ("junk_envelope", "/checkin", "MalformedError"),
    ("flip", "/checkin", "manifest refused"),
]


@pytest.mark.parametrize(("fault", "match", "reason"), FAULT_CASES,
                         ids=[f"{f}-{m.strip('/').split('/')[-1]}" for f, m, _ in FAULT_CASES])
def test_network_fault_keeps_old_app_reports_failure_and_retry_succeeds(case, fault, match,
                                                                        reason):
    rig, name = case
    old, new = small_app("1.0.0"), small_app("1.1.0", {"data/more.txt": b"x" * 700})
    rig.publish(name, new, "1.1.0", 2, channel=name, deflate=False)
    flash = rig.board(name, name, old, channel=name, timeout_s=2)
    rig.proxy.inject(fault, match=match)
    faulty = rig.boot(flash, max_boots=1)
    assert faulty.ended == "exit", faulty.output
    assert "APP 1.0.0" in faulty.output
    assert slot_files(flash, "a") == app_hashes(old)
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"]) == ("a", 1)
    retry = rig.boot(flash)
    assert "APP 1.1.0" in retry.boots[-1].output, retry.output
    assert slot_files(flash, "b") == app_hashes(new)
    failed = [r for r in _reports(rig) if r["status"] == "failed"]
    assert len(failed) == 1 and reason in failed[0]["reason"], failed
    assert rig.api.device(name)["version"] == "1.1.0"


def test_a_server_error_at_check_in_is_no_answer_and_no_failed_report(case):
    """A check-in the server answers 5xx (its database restarting: 503) is the server's
    failure, not the update's: the board reports nothing (a `failed` would count against the
    rollout's pause rule, docs/operations.md "Faults") and tries again at its next check-in."""
    rig, name = case
    new = small_app("1.1.0", {"data/more.txt": b"x" * 700})
    rig.publish(name, new, "1.1.0", 2, channel=name, deflate=False)
    flash = rig.board(name, name, small_app("1.0.0"), channel=name, timeout_s=2)
    rig.proxy.inject("500", match="/checkin")
    faulty = rig.boot(flash, max_boots=1)
    assert faulty.ended == "exit" and "APP 1.0.0" in faulty.output, faulty.output
    assert "ota: no answer: checkin: http 500" in faulty.output, faulty.output
    assert _sent(rig, "failed") == []
    retry = rig.boot(flash)
    assert "APP 1.1.0" in retry.boots[-1].output, retry.output
    assert _sent(rig, "failed") == []
    assert rig.api.device(name)["version"] == "1.1.0"


def test_a_large_pack_on_a_slow_link_gets_time_for_its_bytes(case):
    # 24 KB at 4 KB/s takes ~6 s, three times timeout_s: the pack's deadline is timeout_s plus
    # a second per KB it carries (docs/board.md, Deadlines), so a slow but steady link still
    # updates; before, the request's 2 s ended it on every try.
    rig, name = case
    rig.publish(name, small_app("1.1.0", {"data/big.bin": os.urandom(24 * 1024)}), "1.1.0",
                2, channel=name, deflate=False)
    flash = rig.board(name, name, small_app("1.0.0"), channel=name, timeout_s=2)
    rig.proxy.slow_bps = 4096
    rig.proxy.inject("slow", match="/v1/device/pack")
    result = rig.boot(flash, max_boots=2)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.1.0" in result.boots[-1].output
    assert result.boots[0].seconds > 5  # it really came slowly


def test_a_stalled_answer_is_cut_off_at_the_request_deadline(case):
    # Half the pack arrives at once, one byte more 1.5 s later, then the server goes silent
    # with the connection open. The request's deadline (timeout_s = 2 s from its start) ends
    # it, not a whole timeout_s of silence after that last byte (3.5 s).
    rig, name = case
    rig.publish(name, small_app("1.1.0", {"data/more.txt": b"x" * 700}), "1.1.0", 2,
                channel=name, deflate=False)
    flash = rig.board(name, name, small_app("1.0.0"), channel=name, timeout_s=2)
    rig.proxy.inject("stall", match="/v1/device/pack")
    stalled = rig.boot(flash, max_boots=1)
    assert stalled.ended == "exit" and "APP 1.0.0" in stalled.output, stalled.output
    assert stalled.boots[0].seconds < 3.2, stalled.boots[0].seconds
    failed = [r for r in _reports(rig) if r["status"] == "failed"]
    assert len(failed) == 1 and "timeout" in failed[0]["reason"], failed


def _forged(rig: Rig, name: str, files: list[dict[str, Any]]) -> bytes:
    """A manifest signed with the real release key whose content the server never saw."""
    manifest = {"_type": "manifest", "app": name, "version": "6.6.6", "sequence": 66,
                "created": 1764000000, "expires": 4102444800, "boards": ["unix"],
                "min_micropython": "1.20.0", "entry": "app_main", "files": files}
    payload = json.dumps(manifest).encode()
    return dsse.envelope_bytes(dsse.sign_envelope(
        "application/vnd.mpota.manifest+json", payload, [rig.keys.release]))


@pytest.mark.parametrize("path", ["../boot.py", "/main.py", "a/../../ota_id/trust.json"])
def test_manifest_escaping_the_slot_is_refused(case, path):
    rig, name = case
    old = small_app("1.0.0")
    flash = rig.board(name, name, old, channel=name)
    boot_py = (flash / "boot.py").read_bytes()
    evil = b"print('pwned')\n"
    import hashlib
    sha = hashlib.sha256(evil).hexdigest()
    entry = {"path": path, "sha256": sha, "size": len(evil), "encoding": "plain",
             "blob": sha, "transfer_size": len(evil)}
    rig.proxy.inject("replace", match="/checkin", body=_forged(rig, name, [entry]))
    result = rig.boot(flash, max_boots=2)
    assert [b.ended for b in result.boots] == ["exit"], result.output
    assert "APP 1.0.0" in result.output and "pwned" not in result.output
    assert (flash / "boot.py").read_bytes() == boot_py
    assert not any("/v1/device/pack" in e.path for e in rig.proxy.exchanges)
    failed = _sent(rig, "failed")
    assert len(failed) == 1 and "manifest refused" in failed[0]["reason"]


def test_oversize_manifest_is_refused_unread(case):
    rig, name = case
    flash = rig.board(name, name, small_app("1.0.0"), channel=name)
    huge = b'{"payloadType": "x", "payload": "' + b"A" * 20000 + b'", "signatures": []}'
    rig.proxy.inject("replace", match="/checkin", body=huge)
    result = rig.boot(flash, max_boots=2)
    assert [b.ended for b in result.boots] == ["exit"] and "APP 1.0.0" in result.output
    failed = _sent(rig, "failed")
    assert len(failed) == 1 and "manifest too large" in failed[0]["reason"]


def test_replayed_checkin_is_refused(case):
    rig, name = case
    flash = rig.board(name, name, small_app("1.0.0"), channel=name)
    result = rig.boot(flash, max_boots=1)
    assert result.ended == "exit"
    checkin = next(e for e in rig.proxy.exchanges if e.path.endswith("/checkin"))
    assert checkin.status == 204
    head, _, body = checkin.request.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    replay = urllib.request.Request(rig.server.url + "/v1/device/checkin", data=body,
                                    headers={"Authorization": headers["Authorization"],
                                             "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(replay, timeout=10)
    assert refused.value.code == 401
    assert json.loads(refused.value.read())["code"] == "replay"


def test_checkin_with_a_foreign_key_is_refused_and_the_app_still_runs(case):
    rig, name = case
    flash = rig.board(name, name, small_app("1.0.0"), channel=name)
    (flash / "ota_id" / "device.key").write_bytes(b"\x07" * 32)  # not the registered key
    result = rig.boot(flash, max_boots=1)
    assert result.ended == "exit" and "APP 1.0.0" in result.output
    statuses = [e.status for e in rig.proxy.exchanges if e.path.endswith("/checkin")]
    assert statuses == [401]



# D1 (bench/bench_board.py) on the 32-bit port, the boards' word size, is 28 KB with the ROMFS
# client: the goal, 32 KB, is the bound here. On the 64-bit port it is 40-44 KB with the ROMFS
# client and 64-68 KB with .mpy files on the filesystem (60 fails; 2026-12-06); these leave
# at least 4 KB of margin, so a change that costs the update a few KB of heap fails here
# before it shows in the benchmark. A dozen more names in the update allocate the qstr
# pool's next step (7.4 KB on this port, docs/board.md, Memory budget) and can fail it here.
@pytest.mark.parametrize(("port", "client", "heapsize"),
                         [("micropython64", "files", "72k"), ("micropython64", "romfs", "48k"),
                          ("micropython32", "romfs", "32k")])
def test_mpy_client_updates_the_reference_app_in_a_bounded_heap(case, request, port, client,
                                                                 heapsize):
    rig, name = case
    interpreter = request.getfixturevalue(port)  # the fixture of the port's interpreter
    old_bundle = build_release(rig.work, reference_files("1.0.0"), "1.0.0", 1, rig.keys,
                               app=f"{name}-old", mpy=True)
    new_files = reference_files("1.1.0")
    manifest = rig.publish(name, new_files, "1.1.0", 2, channel=name, mpy=True)
    flash = rig.work / name
    provision_board(flash, rig.api, name, rig.proxy.url, rig.keys, bundle_files(old_bundle),
                    app=name, channel=name, mpy=True, client=client)
    if client == "files":
        assert (flash / "ota" / "client.mpy").exists()
        assert not (flash / "ota" / "client.py").exists()
    else:
        assert not list((flash / "ota").glob("*.*py"))
    # D1's flash: the directory (block flash's harness and filesystem heap: docs/board.md).
    board = VirtualBoard(flash, micropython=interpreter, heapsize=heapsize, flash="dir")
    result = board.run(max_boots=3, timeout=60)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.1.0" in result.boots[-1].output
    assert slot_files(flash, "b") == {e.path: e.sha256 for e in manifest.files}
    assert read_state(flash)["ok"] == 1


def test_the_reference_update_allocates_no_further_qstr_pool(case, micropython, tmp_path,
                                                             monkeypatch):
    # MicroPython never frees qstrs and doubles its pool when one is full: the 621st qstr costs
    # a 7.4 KB pool on the 64-bit port (4.5 KB on the 32-bit one), as much as the margin of the
    # bounded-heap test above. The update interns its names after the check-in: it must end
    # in the pools the check-in left (docs/board.md, Memory budget).
    import tools.board_files as board_files
    from bench.bench_board import _instrumented_client

    rig, name = case
    old_bundle = build_release(rig.work, reference_files("1.0.0"), "1.0.0", 1, rig.keys,
                               app=f"{name}-old", mpy=True)
    rig.publish(name, reference_files("1.1.0"), "1.1.0", 2, channel=name, mpy=True)
    flash = rig.work / name
    monkeypatch.setattr(board_files, "BOOTLOADER_DIR",
                        _instrumented_client(tmp_path / "client", micropython))
    provision_board(flash, rig.api, name, rig.proxy.url, rig.keys, bundle_files(old_bundle),
                    app=name, channel=name, mpy=True, client="files")
    # The directory flash, as D1: the block flash's harness interns names of its own.
    result = VirtualBoard(flash, micropython=micropython, flash="dir").run(max_boots=3,
                                                                           timeout=60)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    lines = result.boots[0].output.splitlines()

    def pools_at(phase: str) -> int:  # each mark prints "HEAP <phase> <bytes>", then the pools
        at = next(i for i, line in enumerate(lines) if line.startswith("HEAP " + phase))
        return int(lines[at + 1].split("n_pool=")[1].split(",")[0])

    assert pools_at("checked in") == pools_at("staged"), result.boots[0].output


def test_reports_wait_on_flash_while_offline_and_arrive_later(case):
    rig, name = case
    bad = small_app("1.1.0", {"app_main.py": b"raise ValueError('boom')\n"})
    rig.publish(name, bad, "1.1.0", 2, channel=name)
    flash = rig.board(name, name, small_app("1.0.0"), channel=name, trial_boots=1)
    installed = rig.boot(flash, max_boots=2)  # update, reset, one crashing trial boot
    assert [b.ended for b in installed.boots] == ["reset", "reset"], installed.output
    offline = VirtualBoard(flash, micropython=rig.micropython, wifi_ok=False)
    rolled = offline.run(max_boots=2, timeout=60)  # rollback happens with no network
    assert rolled.ended == "exit" and "APP 1.0.0" in rolled.output, rolled.output
    queue = (flash / "ota" / "reports").read_text().splitlines()
    assert [json.loads(line)["status"] for line in queue] == ["rolled_back"]
    assert not [r for r in _reports(rig) if r["status"] == "rolled_back"]
    online = rig.boot(flash, max_boots=2)
    assert online.ended == "exit"
    assert [r["version"] for r in _reports(rig) if r["status"] == "rolled_back"] == ["1.0.0"]
    assert not (flash / "ota" / "reports").exists()


def test_board_updates_over_https(case, tmp_path):
    rig, name = case
    old, new = small_app("1.0.0"), small_app("1.1.0", {"lib/util.py": b"X = 2\n"})
    rig.publish(name, new, "1.1.0", 2, channel=name)
    tls = server_tls(tmp_path)
    with FaultProxy(rig.server.url, tls=tls.context) as tls_front:
        assert tls_front.url.startswith("https://")
        flash = rig.work / name
        provision_board(flash, rig.api, name, tls_front.url, rig.keys, old, app=name,
                        channel=name, server_ca=tls.ca_der)
        result = rig.boot(flash)
        served = [e.path for e in tls_front.exchanges]
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.1.0" in result.boots[-1].output
    assert slot_files(flash, "b") == app_hashes(new)
    assert any("/v1/device/pack" in p for p in served)
    assert any(p.endswith("/checkin") for p in served)


def test_board_whose_counter_records_are_lost_is_still_accepted(case):
    rig, name = case
    flash = rig.board(name, name, small_app("1.0.0"), channel=name)
    assert rig.boot(flash, max_boots=1).ended == "exit"
    assert (flash / "ota" / "ctr0").exists()
    for record in (flash / "ota" / "ctr0", flash / "ota_rec" / "ctr1"):
        record.unlink(missing_ok=True)  # flash damage: the reservation mark is gone
    assert rig.boot(flash, max_boots=1).ended == "exit"
    statuses = [e.status for e in rig.proxy.exchanges if e.path.endswith("/checkin")]
    assert statuses == [204, 204]  # the clock floor keeps counters above the lost ones


def _bare_board(rig: Rig, name: str, **config: Any) -> Path:
    """A board provisioned without an app (slot a holds nothing), registered on `name`."""
    from signing import keys as keymod
    from tools.board_files import BoardConfig, install_board

    key = keymod.generate_private_key()
    rig.api.register_device(name, keymod.public_point(key), board="unix", channel=name)
    flash = rig.work / name
    flash.mkdir()
    config.setdefault("timeout_s", 3)
    install_board(flash, BoardConfig(device_id=name, server=rig.proxy.url, channel=name,
                                     **config), key, rig.keys.root_envelope)
    return flash


def _set_config(flash: Path, **values: Any) -> None:
    """Add keys to a provisioned board's /ota_id/config.json (BoardConfig has no field for them)."""
    path = flash / "ota_id" / "config.json"
    doc = json.loads(path.read_bytes())
    doc.update(values)
    path.write_text(json.dumps(doc))


def test_first_app_that_never_confirms_ends_its_trial_and_a_fixed_release_installs(case):
    rig, name = case
    bad = small_app("1.1.0", {"app_main.py": b"print('APP 1.1.0')\nraise ValueError('boom')\n"})
    rig.publish(name, bad, "1.1.0", 2, channel=name)
    flash = _bare_board(rig, name, trial_boots=2)
    result = rig.boot(flash, max_boots=8)
    # update+reset, trial 1 crash, trial 2 crash; then the trial ends: the app runs unconfirmed
    # and off trial, so its crash no longer resets the board
    assert [b.ended for b in result.boots] == ["reset", "reset", "reset", "crash"], result.output
    state = read_state(flash)
    assert state is not None
    assert (state["active"], state["ok"], state["trial"], state["reject"]) == ("b", 1, 0, 0)
    failed = [r for r in _reports(rig) if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["sequence"] == 2, failed
    assert "no previous app to roll back to" in failed[0]["reason"]
    assert rig.api.device(name)["last_status"] == "failed"
    again = rig.boot(flash, max_boots=3)  # no more trial boots counted
    assert [b.ended for b in again.boots] == ["crash"], again.output
    assert read_state(flash) == state
    fixed = small_app("1.2.0")
    rig.publish(name, fixed, "1.2.0", 3, channel=name)
    result = rig.boot(flash, max_boots=3)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.2.0" in result.boots[-1].output
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"]) == ("a", 1)
    assert slot_files(flash, "a") == app_hashes(fixed)
    assert _reports(rig)[-1]["status"] == "confirmed"
    assert (rig.api.device(name)["version"], rig.api.device(name)["last_status"]) == (
        "1.2.0", "confirmed")


def test_app_whose_main_raises_at_once_is_not_auto_confirmed_but_rolled_back(case):
    rig, name = case
    crashing_main = b"def main():\n    print('APP 1.1.0')\n    raise ValueError('boom')\n"
    bad = small_app("1.1.0", {"app_main.py": crashing_main})
    rig.publish(name, bad, "1.1.0", 2, channel=name)
    flash = rig.board(name, name, small_app("1.0.0"), channel=name, trial_boots=2)
    result = rig.boot(flash, max_boots=6)
    assert [b.ended for b in result.boots] == ["reset", "reset", "reset", "exit"], result.output
    assert "APP 1.0.0" in result.boots[-1].output
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"], state["reject"]) == ("a", 1, 2)
    statuses = [r["status"] for r in _reports(rig)]
    assert "confirmed" not in statuses and statuses[-1] == "rolled_back", statuses
    assert rig.api.device(name)["last_status"] == "rolled_back"


def test_app_whose_main_returns_is_auto_confirmed(case):
    rig, name = case
    good = small_app("1.1.0", {"app_main.py": b"def main():\n    print('APP 1.1.0')\n"})
    rig.publish(name, good, "1.1.0", 2, channel=name)
    flash = rig.board(name, name, small_app("1.0.0"), channel=name, trial_boots=1)
    result = rig.boot(flash)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"]) == ("b", 1)
    assert rig.api.device(name)["last_status"] == "confirmed"


def test_app_whose_main_confirms_itself_then_fails_stays_confirmed(case):
    rig, name = case
    good = small_app("1.1.0", {"app_main.py": (
        b"import ota\ndef main():\n    print('APP 1.1.0')\n    ota.confirm()\n"
        b"    raise ValueError('late failure')\n")})
    rig.publish(name, good, "1.1.0", 2, channel=name)
    flash = rig.board(name, name, small_app("1.0.0"), channel=name, trial_boots=1)
    result = rig.boot(flash)
    # confirmed: the failure afterwards is an ordinary crash, not a trial reset
    assert [b.ended for b in result.boots] == ["reset", "crash"], result.output
    assert "late failure" in result.boots[-1].output
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"]) == ("b", 1)
    assert rig.api.device(name)["last_status"] == "confirmed"


_LOOP_APP = (b"import ota, time\n"
             b"def main():\n"
             b"    print('APP 1.1.0')\n"
             b"    start = time.ticks_ms()\n"
             b"    while time.ticks_diff(time.ticks_ms(), start) < 1500:\n"
             b"        ota.poll()\n"
             b"        time.sleep_ms(50)\n"
             b"    raise SystemExit  # ends the boot as a power-off would, main() never returns\n")


@pytest.mark.parametrize(("confirm_after_s", "confirmed"), [(1, True), (60, False)])
def test_looping_app_is_auto_confirmed_at_a_poll_after_its_health_period(case, confirm_after_s,
                                                                          confirmed):
    rig, name = case
    rig.publish(name, small_app("1.1.0", {"app_main.py": _LOOP_APP}), "1.1.0", 2, channel=name)
    flash = rig.board(name, name, small_app("1.0.0"), channel=name, trial_boots=1)
    _set_config(flash, confirm_after_s=confirm_after_s)
    result = rig.boot(flash)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.1.0" in result.boots[-1].output
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"]) == ("b", int(confirmed))
    assert (rig.api.device(name)["last_status"] == "confirmed") is confirmed


# Trial watchdog (config trial_watchdog_s). The tests write 1 s straight into config.json, below
# what provisioning accepts (BoardConfig: the longer timeout plus 10 s), to keep them quick;
# against a local server a check takes far less than that.
_HUNG_LOOPS = {"busy": b"    pass\n", "sleeping": b"    time.sleep_ms(100)\n"}


def _hung_app(loop: bytes) -> dict[str, bytes]:
    """1.1.0 whose entry never returns and never calls the client."""
    return small_app("1.1.0", {"app_main.py": b"import time\nprint('APP 1.1.0')\nwhile True:\n"
                                              + loop})


@pytest.mark.parametrize("loop", list(_HUNG_LOOPS.values()), ids=list(_HUNG_LOOPS))
def test_trial_app_that_hangs_is_reset_by_the_watchdog_and_rolled_back(case, loop):
    rig, name = case
    rig.publish(name, _hung_app(loop), "1.1.0", 2, channel=name)
    flash = rig.board(name, name, small_app("1.0.0"), channel=name, trial_boots=2)
    _set_config(flash, trial_watchdog_s=1)
    result = rig.boot(flash, max_boots=6)
    # update+reset; two trial boots that hang until the watchdog resets them, each counted by
    # boot.py; then the rollback boot runs 1.0.0, confirmed, and reports
    assert [b.ended for b in result.boots] == ["reset", "watchdog", "watchdog", "exit"], \
        result.output
    assert [b.reset_cause for b in result.boots] == [1, 5, 3, 3]
    assert result.output.count("APP 1.1.0") == 2
    assert "APP 1.0.0" in result.boots[-1].output
    state = read_state(flash)
    assert state is not None
    assert (state["active"], state["ok"], state["trial"], state["reject"]) == ("a", 1, 0, 2)
    rolled = [r for r in _reports(rig) if r["status"] == "rolled_back"]
    assert [(r["version"], r["sequence"]) for r in rolled] == [("1.0.0", 2)], rolled
    assert "not confirmed after 2 boots" in rolled[0]["reason"]
    device = rig.api.device(name)
    assert (device["last_status"], device["version"]) == ("rolled_back", "1.0.0")


def test_trial_app_that_hangs_without_the_watchdog_keeps_running(case):
    rig, name = case
    rig.publish(name, _hung_app(_HUNG_LOOPS["sleeping"]), "1.1.0", 2, channel=name)
    flash = rig.board(name, name, small_app("1.0.0"), channel=name, trial_boots=2)
    result = VirtualBoard(flash, micropython=rig.micropython).run(max_boots=4, timeout=4)
    assert [b.ended for b in result.boots] == ["reset", "timeout"], result.output
    assert "APP 1.1.0" in result.boots[-1].output
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"], state["trial"]) == ("b", 0, 1)


# Polls for longer than the watchdog's period (confirmed at its first poll), then stops feeding
# for longer than the period: only a process whose boot armed the watchdog is reset there.
_POLL_THEN_QUIET_APP = (
    b"import machine, ota, time\n"
    b"def main():\n"
    b"    print('APP 1.1.0 cause', machine.reset_cause(), 'armed',\n"
    b"          getattr(ota, 'wdt', None) is not None)\n"
    b"    start = time.ticks_ms()\n"
    b"    while time.ticks_diff(time.ticks_ms(), start) < 1500:\n"
    b"        ota.poll()\n"
    b"        time.sleep_ms(50)\n"
    b"    print('POLLED')\n"
    b"    time.sleep_ms(1500)\n"
    b"    print('QUIET')\n"
    b"    raise SystemExit  # ends the boot as a power-off would, main() never returns\n")


def test_confirmed_app_keeps_the_trial_watchdog_until_a_reset_then_boots_without_it(case):
    rig, name = case
    app = small_app("1.1.0", {"app_main.py": _POLL_THEN_QUIET_APP})
    rig.publish(name, app, "1.1.0", 2, channel=name)
    flash = rig.board(name, name, small_app("1.0.0"), channel=name, trial_boots=1,
                      confirm_after_s=0)
    _set_config(flash, trial_watchdog_s=1)
    result = rig.boot(flash)
    # The trial boot: armed, fed by every ota.poll() and confirmed at the first; the process
    # keeps the watchdog, so going quiet resets it. The next boot is a confirmed one: unarmed.
    assert [b.ended for b in result.boots] == ["reset", "watchdog", "exit"], result.output
    trial, confirmed = result.boots[1], result.boots[2]
    assert "APP 1.1.0 cause 5 armed True" in trial.output and "POLLED" in trial.output
    assert "QUIET" not in trial.output
    assert "APP 1.1.0 cause 3 armed False" in confirmed.output and "QUIET" in confirmed.output
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"]) == ("b", 1)
    assert [r["status"] for r in _reports(rig)] == ["downloading", "installed", "confirmed"]
    again = rig.boot(flash, max_boots=2)  # power on: still confirmed, still unarmed
    assert [b.ended for b in again.boots] == ["exit"], again.output
    assert "APP 1.1.0 cause 1 armed False" in again.output and "QUIET" in again.output
    assert rig.api.device(name)["last_status"] == "confirmed"


def _counter_record(flash: Path) -> dict[str, Any]:
    """The newest valid request-counter record of a board's flash."""
    import hashlib
    records = []
    for path in (flash / "ota" / "ctr0", flash / "ota_rec" / "ctr1"):
        if not path.exists():
            continue
        body, tag = path.read_bytes().split(b"\n")[:2]
        if hashlib.sha256(body).hexdigest().encode() == tag:
            records.append(json.loads(body))
    return max(records, key=lambda r: r["seq"])


def test_board_whose_state_records_are_both_lost_still_refuses_an_older_release(case):
    rig, name = case
    current = small_app("3.0.0")
    flash = rig.board(name, name, current, channel=name, version="3.0.0", sequence=3)
    first = rig.boot(flash, max_boots=1)
    assert first.ended == "exit" and "APP 3.0.0" in first.output, first.output
    assert _counter_record(flash)["floor"] == 3
    rig.publish(name, small_app("1.1.0"), "1.1.0", 2, channel=name)  # older, validly signed
    for record in (flash / "ota" / "state0", flash / "ota_rec" / "state1"):
        record.write_bytes(b"\x00garbage\n")  # flash damage: no boot state left
    result = rig.boot(flash, max_boots=2)
    assert [b.ended for b in result.boots] == ["exit"], result.output
    assert "APP 3.0.0" in result.output
    assert not any("/v1/device/pack" in e.path for e in rig.proxy.exchanges)
    assert slot_files(flash, "b") == {} and slot_files(flash, "a") == app_hashes(current)
    failed = _sent(rig, "failed")
    assert len(failed) == 1 and "RollbackError" in failed[0]["reason"], failed


def test_counter_record_keeps_the_installed_sequence_as_anti_rollback_floor(case):
    rig, name = case
    rig.publish(name, small_app("1.1.0"), "1.1.0", 5, channel=name)
    flash = rig.board(name, name, small_app("1.0.0"), channel=name)
    update = rig.boot(flash, max_boots=1)
    assert [b.ended for b in update.boots] == ["reset"], update.output
    assert _counter_record(flash)["floor"] == 1  # written with the check-in, before the flip
    trial = rig.boot(flash, max_boots=1)  # the trial boot's check-in writes the new floor
    assert trial.ended == "exit" and "APP 1.1.0" in trial.output, trial.output
    assert _counter_record(flash)["floor"] == 5
