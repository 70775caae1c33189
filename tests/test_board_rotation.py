"""Root rotation on the board: a new root (announced by X-Ota-Root) is taken only after
trust.verify_rotation, and persisted only then; a forged successor changes nothing.
Real MicroPython (virtual board), real server (LocalServer), fault proxy in between."""

from __future__ import annotations

import json
import sys
import time

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from board_rig import EVERYONE_NO_PAUSE
from faultproxy import FaultProxy

from bench.reference_app import build_release, make_keys, provision_board, small_app
from signing import keys as keymod
from signing.root import new_root, sign_root
from tools.board_files import app_hashes, slot_files
from tools.local_server import LocalServer
from tools.virtual_board import VirtualBoard


def test_board_takes_a_new_root_only_after_verifying_it(tmp_path, micropython):
    keys = make_keys()
    (tmp_path / "root.json").write_bytes(keys.root_envelope)
    expires = int(time.time()) + 86400 * 30
    new_release = keymod.generate_private_key()
    root_v2 = sign_root(new_root(version=2, expires=expires, root_keys=[keys.root],
                                 release_keys=[new_release]), [keys.root])
    stranger = keymod.generate_private_key()
    forged_v2 = sign_root(new_root(version=2, expires=expires, root_keys=[stranger],
                                   release_keys=[stranger]), [stranger])
    with LocalServer(tmp_path / "data", tmp_path / "root.json") as server, \
            FaultProxy(server.url) as proxy:
        api = server.client()
        old, new = small_app("1.0.0"), small_app("1.1.0")
        flash = tmp_path / "board"
        provision_board(flash, api, "rot-1", proxy.url, keys, old, app="rot")
        api.upload_root(root_v2)
        keys.release = new_release  # 1.1.0 is signed by the release key root v2 names
        api.publish(build_release(tmp_path, new, "1.1.0", 2, keys, app="rot"),
                    channel="stable", policy=EVERYONE_NO_PAUSE)
        trust_v1 = (flash / "ota_id" / "trust.json").read_bytes()

        proxy.inject("replace", match="/v1/device/root/2", body=forged_v2)
        refused = VirtualBoard(flash, micropython=micropython).run(max_boots=2, timeout=60)
        assert [b.ended for b in refused.boots] == ["exit"], refused.output
        assert "APP 1.0.0" in refused.output
        assert (flash / "ota_id" / "trust.json").read_bytes() == trust_v1
        assert slot_files(flash, "a") == app_hashes(old)
        sent = [json.loads(e.request.partition(b"\r\n\r\n")[2]) for e in proxy.exchanges
                if e.path.endswith("/report")]
        assert [r["status"] for r in sent] == ["failed"]
        assert sent[0]["reason"].startswith("root 2 refused: ThresholdError")

        updated = VirtualBoard(flash, micropython=micropython).run(max_boots=3, timeout=60)
        assert [b.ended for b in updated.boots] == ["reset", "exit"], updated.output
        assert "APP 1.1.0" in updated.boots[-1].output
        assert (flash / "ota_id" / "trust.json").read_bytes() == root_v2
        assert slot_files(flash, "b") == app_hashes(new)
        assert api.device("rot-1")["root_version"] == 2


def test_a_board_provisioned_before_ota_id_rotates_its_root_where_it_keeps_it(tmp_path,
                                                                            micropython):
    """Every file in /ota (the layout before /ota_id, docs/board.md, Three directories): the
    rotated root replaces /ota/trust.json, and no /ota_id is made (the client's ota.path)."""
    keys = make_keys()
    (tmp_path / "root.json").write_bytes(keys.root_envelope)
    root_v2 = sign_root(new_root(version=2, expires=int(time.time()) + 86400 * 30,
                                 root_keys=[keys.root], release_keys=[keys.release]),
                        [keys.root])
    with LocalServer(tmp_path / "data", tmp_path / "root.json") as server:
        api = server.client()
        flash = tmp_path / "board"
        provision_board(flash, api, "rot-legacy", server.url, keys, small_app("1.0.0"),
                        app="rot")
        for moved in ("ota_id/config.json", "ota_id/device.key", "ota_id/trust.json",
                      "ota_rec/state1"):
            (flash / moved).rename(flash / "ota" / moved.split("/")[1])
        (flash / "ota_id").rmdir()
        (flash / "ota_rec").rmdir()
        api.upload_root(root_v2)
        result = VirtualBoard(flash, micropython=micropython).run(max_boots=2, timeout=60)
        assert result.ended == "exit" and "APP 1.0.0" in result.output, result.output
        assert (flash / "ota" / "trust.json").read_bytes() == root_v2
        assert not (flash / "ota_id").exists() and not (flash / "ota_rec").exists()
        again = VirtualBoard(flash, micropython=micropython).run(max_boots=2, timeout=60)
        assert again.ended == "exit", again.output
        assert api.device("rot-legacy")["root_version"] == 2  # read back from /ota


def test_board_follows_a_root_chain_through_an_expired_intermediate_root(tmp_path, micropython):
    keys = make_keys()
    (tmp_path / "root.json").write_bytes(keys.root_envelope)
    now = int(time.time())
    valid, expired = now + 86400 * 30, now - 86400
    new_release = keymod.generate_private_key()

    def root(version: int, expires: int) -> bytes:
        release = keys.release if version == 2 else new_release
        return sign_root(new_root(version=version, expires=expires, root_keys=[keys.root],
                                  release_keys=[release]), [keys.root])

    with LocalServer(tmp_path / "data", tmp_path / "root.json") as server, \
            FaultProxy(server.url) as proxy:
        api = server.client()
        old, new = small_app("1.0.0"), small_app("1.1.0")
        flash = tmp_path / "board"
        provision_board(flash, api, "rot-2", proxy.url, keys, old, app="rot")
        api.upload_root(root(2, valid))  # the server takes no expired root
        root_v3 = root(3, valid)
        api.upload_root(root_v3)
        keys.release = new_release
        api.publish(build_release(tmp_path, new, "1.1.0", 2, keys, app="rot"),
                    channel="stable", policy=EVERYONE_NO_PAUSE)
        trust_v1 = (flash / "ota_id" / "trust.json").read_bytes()

        # Root 2 as a board that was offline meets it: signed alike, but expired by now.
        # An expired final root is still refused.
        proxy.inject("replace", match="/v1/device/root/2", body=root(2, expired))
        proxy.inject("replace", match="/v1/device/root/3", body=root(3, expired))
        refused = VirtualBoard(flash, micropython=micropython).run(max_boots=2, timeout=60)
        assert [b.ended for b in refused.boots] == ["exit"], refused.output
        assert (flash / "ota_id" / "trust.json").read_bytes() == trust_v1
        sent = [json.loads(e.request.partition(b"\r\n\r\n")[2]) for e in proxy.exchanges
                if e.path.endswith("/report")]
        assert [r["reason"].split(":")[0] for r in sent] == ["root 3 refused"], sent
        assert "ExpiredError" in sent[0]["reason"]

        proxy.inject("replace", match="/v1/device/root/2", body=root(2, expired))
        updated = VirtualBoard(flash, micropython=micropython).run(max_boots=3, timeout=60)
        assert [b.ended for b in updated.boots] == ["reset", "exit"], updated.output
        assert "APP 1.1.0" in updated.boots[-1].output
        assert (flash / "ota_id" / "trust.json").read_bytes() == root_v3
        assert slot_files(flash, "b") == app_hashes(new)


_ROOT_VERSION = """\
from ota import client
calls = []
real = client.load_root
def spy():
    calls.append(1)
    return real()
client.load_root = spy
try:
    print(client.root_version(), len(calls))
except Exception as e:
    print(type(e).__name__, len(calls))
"""


def test_check_in_names_the_held_root_version_from_the_files_first_bytes(tmp_path, micropython):
    """client.root_version reads the version from the head of trust.json without the verifier;
    a trust.json laid out otherwise (signatures first) or broken goes through load_root."""
    import shutil

    from signing.dsse import envelope_bytes

    keys = make_keys()
    root_v12 = sign_root(new_root(version=12, expires=int(time.time()) + 86400,
                                  root_keys=[keys.root], release_keys=[keys.release]),
                         [keys.root])
    doc = json.loads(root_v12)
    reordered = envelope_bytes({"signatures": doc["signatures"], "payload": doc["payload"],
                                "payloadType": doc["payloadType"]})
    # the payload's first 64 base64 characters are not within the 192 bytes the fast path reads
    assert reordered.find(b'"payload":"') + 11 + 64 > 192
    flash = tmp_path / "board"
    shutil.copytree(PROJECT_ROOT / "bootloader_py" / "ota", flash / "ota")
    (flash / "main.py").write_text(_ROOT_VERSION)
    outcomes = {}
    for name, data in (("ours", root_v12), ("reordered", reordered),
                       ("cut short", root_v12[:80])):
        (flash / "ota" / "trust.json").write_bytes(data)  # no key: the legacy layout's place
        outcomes[name] = VirtualBoard(flash, micropython=micropython).run().output.split()
    assert outcomes["ours"] == ["12", "0"]  # the verifier never loaded
    assert outcomes["reordered"] == ["12", "1"]  # load_root read it
    # load_root's own error, not a guess (the TrustError class loads only when raised)
    assert outcomes["cut short"][1] == "1" and outcomes["cut short"][0].endswith("Error")
