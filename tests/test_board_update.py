"""Board updates end to end: real MicroPython (virtual board), real server (LocalServer), and
the fault proxy in front of it, counting what travels and breaking what the test asks for."""

from __future__ import annotations

import itertools
import json
import ssl
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

from faultproxy import FaultProxy

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
        self.api.publish(bundle, channel=channel, percent=100)
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
    blob_requests = [e for e in rig.proxy.exchanges if "/v1/blobs/" in e.path]
    assert sorted(e.path.rsplit("/", 1)[1] for e in blob_requests) == sorted(
        e.blob for e in changed.values())
    assert rig.proxy.body_bytes("/v1/blobs/") == sum(e.transfer_size for e in changed.values())
    assert [r["status"] for r in _reports(rig)] == ["downloading", "installed", "confirmed"]
    assert rig.api.device(name)["version"] == "1.1.0"


def test_board_with_nothing_new_writes_only_its_counter_reservation(case):
    rig, name = case
    flash = rig.board(name, name, small_app("1.0.0"), channel=name)
    board = VirtualBoard(flash, micropython=rig.micropython)
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
    rig.proxy.inject("reset", match=next(e.blob for e in manifest.files
                                         if e.path == "data/big.txt"))
    first = rig.boot(flash, max_boots=1)
    assert "APP 1.0.0" in first.output, first.output
    failed = [r for r in _reports(rig) if r["status"] == "failed"]
    assert len(failed) == 1 and "big.txt" in failed[0]["reason"]
    second = rig.boot(flash)
    assert "APP 1.1.0" in second.output, second.output
    ranged = [e for e in rig.proxy.exchanges if e.request_range]
    assert len(ranged) == 1 and ranged[0].status == 206
    assert ranged[0].request_range == f"bytes={len(big['data/big.txt']) // 2}-"
    assert slot_files(flash, "b") == app_hashes(big)
    statuses = [r["status"] for r in _reports(rig)]
    assert statuses.count("failed") == 1 and statuses[-1] == "confirmed"


FAULT_CASES = [
    ("truncate", "/v1/blobs/", "truncated"),
    ("reset", "/v1/blobs/", "blob"),
    ("flip", "/v1/blobs/", "hash mismatch"),
    ("longer", "/v1/blobs/", "length"),
    ("drip", "/v1/blobs/", "timeout"),
    ("404", "/v1/blobs/", "http 404"),
    ("500", "/v1/blobs/", "http 500"),
    ("500", "/checkin", "checkin: http 500"),
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


def _forged(rig: Rig, name: str, files: list[dict[str, Any]]) -> bytes:
    """A manifest signed with the real release key whose content the server never saw."""
    manifest = {"_type": "manifest", "app": name, "version": "6.6.6", "sequence": 66,
                "created": 1764000000, "expires": 4102444800, "boards": ["unix"],
                "min_micropython": "1.20.0", "entry": "app_main", "files": files}
    payload = json.dumps(manifest).encode()
    return dsse.envelope_bytes(dsse.sign_envelope(
        "application/vnd.mpota.manifest+json", payload, [rig.keys.release]))


@pytest.mark.parametrize("path", ["../boot.py", "/main.py", "a/../../ota/trust.json"])
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
    assert not any("/v1/blobs/" in e.path for e in rig.proxy.exchanges)
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
    (flash / "ota" / "device.key").write_bytes(b"\x07" * 32)  # not the registered key
    result = rig.boot(flash, max_boots=1)
    assert result.ended == "exit" and "APP 1.0.0" in result.output
    statuses = [e.status for e in rig.proxy.exchanges if e.path.endswith("/checkin")]
    assert statuses == [401]



def test_mpy_client_updates_the_reference_app_in_a_bounded_heap(case):
    rig, name = case
    old_bundle = build_release(rig.work, reference_files("1.0.0"), "1.0.0", 1, rig.keys,
                               app=f"{name}-old", mpy=True)
    new_files = reference_files("1.1.0")
    manifest = rig.publish(name, new_files, "1.1.0", 2, channel=name, mpy=True)
    flash = rig.work / name
    provision_board(flash, rig.api, name, rig.proxy.url, rig.keys, bundle_files(old_bundle),
                    app=name, channel=name, mpy=True)
    assert (flash / "ota" / "client.mpy").exists() and not (flash / "ota" / "client.py").exists()
    board = VirtualBoard(flash, micropython=rig.micropython, heapsize="192k")
    result = board.run(max_boots=3, timeout=60)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.1.0" in result.boots[-1].output
    assert slot_files(flash, "b") == {e.path: e.sha256 for e in manifest.files}


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


def _tls_context(tmp: Path) -> ssl.SSLContext:
    """A server context with a throw-away self-signed P-256 certificate for 127.0.0.1."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp / "tls.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "tls.pem", tmp / "tls.key")
    return context


def test_board_updates_over_https(case, tmp_path):
    rig, name = case
    old, new = small_app("1.0.0"), small_app("1.1.0", {"lib/util.py": b"X = 2\n"})
    rig.publish(name, new, "1.1.0", 2, channel=name)
    with FaultProxy(rig.server.url, tls=_tls_context(tmp_path)) as tls_front:
        assert tls_front.url.startswith("https://")
        flash = rig.work / name
        provision_board(flash, rig.api, name, tls_front.url, rig.keys, old, app=name,
                        channel=name)
        result = rig.boot(flash)
        served = [e.path for e in tls_front.exchanges]
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.1.0" in result.boots[-1].output
    assert slot_files(flash, "b") == app_hashes(new)
    assert any("/v1/blobs/" in p for p in served) and any(p.endswith("/checkin") for p in served)


def test_board_whose_counter_records_are_lost_is_still_accepted(case):
    rig, name = case
    flash = rig.board(name, name, small_app("1.0.0"), channel=name)
    assert rig.boot(flash, max_boots=1).ended == "exit"
    for record in (flash / "ota").glob("ctr[01]"):
        record.unlink()  # flash damage: the reservation mark is gone
    assert rig.boot(flash, max_boots=1).ended == "exit"
    statuses = [e.status for e in rig.proxy.exchanges if e.path.endswith("/checkin")]
    assert statuses == [204, 204]  # the clock floor keeps counters above the lost ones
