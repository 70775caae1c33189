"""Boards verify the server over https (issue #13): the certificate must chain to the CA pinned
at provisioning (/ota_id/ca.der) and name the host; anything else is refused with the reason on
the console, counted, and the old app keeps running (docs/board.md, TLS).

The update runs against the real `ota serve --tls-cert/--tls-key` on 127.0.0.1. The refusals
run against a man-in-the-middle: a TLS front with the wrong certificate, forwarding to a real
server that has the same release for the board, so a board that accepted it would update."""

from __future__ import annotations

import datetime
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from faultproxy import FaultProxy
from tls_support import ServerTls, server_tls

from bench.reference_app import Keys, build_release, make_keys, provision_board, small_app
from tools.board_files import app_hashes, read_state, slot_files
from tools.local_server import LocalServer
from tools.tls_ca import Issued, new_ca
from tools.virtual_board import VirtualBoard

OLD, NEW = small_app("1.0.0"), small_app("1.1.0", {"lib/util.py": b"X = 2\n"})


@dataclass
class Rig:
    keys: Keys
    fleet_ca: Issued
    secure: LocalServer  # the real server over https, its certificate from fleet_ca
    plain: LocalServer  # the same release, behind each man in the middle
    work: Path
    micropython: str

    @property
    def fleet_ca_der(self) -> bytes:
        return self.fleet_ca.cert.public_bytes(serialization.Encoding.DER)

    def board(self, server: LocalServer, name: str, url: str, ca_der: bytes | None,
              files: dict[str, bytes] = OLD) -> Path:
        flash = self.work / name
        provision_board(flash, server.client(), name, url, self.keys, files, channel="stable",
                        timeout_s=3, server_ca=ca_der)
        return flash

    def boot(self, flash: Path, max_boots: int = 3) -> Any:
        return VirtualBoard(flash, micropython=self.micropython).run(max_boots=max_boots,
                                                                       timeout=60)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("board-tls")
    keys = make_keys()
    (work / "root.json").write_bytes(keys.root_envelope)
    fleet_ca = new_ca("fleet CA")
    tls_dir = work / "tls"
    tls_dir.mkdir()
    (tls_dir / "ca.pem").write_bytes(fleet_ca.cert_pem)
    issued = server_tls(tls_dir, ("127.0.0.1",), ca=fleet_ca, name="server")
    assert issued.ca_der
    bundle = build_release(work, NEW, "1.1.0", 2, keys)
    with LocalServer(work / "secure", work / "root.json", tls_dir=tls_dir) as secure, \
            LocalServer(work / "plain", work / "root.json") as plain:
        for server in (secure, plain):
            server.client().publish(bundle, channel="stable", percent=100)
        yield Rig(keys, fleet_ca, secure, plain, work, micropython)


def test_board_with_the_fleet_ca_updates_end_to_end_over_https(rig: Rig) -> None:
    assert rig.secure.url.startswith("https://")
    flash = rig.board(rig.secure, "tls-ok", rig.secure.url, rig.fleet_ca_der)
    assert (flash / "ota_id" / "ca.der").read_bytes() == rig.fleet_ca_der
    result = rig.boot(flash)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.1.0" in result.boots[-1].output
    assert "certificate refused" not in result.output
    assert slot_files(flash, "b") == app_hashes(NEW)
    state = read_state(flash)
    assert state is not None and state["active"] == "b"
    assert rig.secure.client().device("tls-ok")["version"] == "1.1.0"


def _man_in_the_middle(rig: Rig, case: str, tmp: Path) -> ServerTls | None:
    """The TLS context a man in the middle presents in `case` (None: plain http)."""
    now = datetime.datetime.now(datetime.UTC)
    if case == "another-ca":  # a certificate for the right host from a CA the board lacks
        return server_tls(tmp, ("127.0.0.1",))
    if case == "wrong-host":  # the fleet's own CA, for another host
        return server_tls(tmp, ("ota.example.com",), ca=rig.fleet_ca)
    if case == "self-signed":  # a certificate that signs itself, for the right host
        own = new_ca("127.0.0.1")
        (tmp / "own.pem").write_bytes(own.cert_pem)
        (tmp / "own.key").write_bytes(own.key_pem)
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp / "own.pem", tmp / "own.key")
        return ServerTls(context, b"", tmp / "own.pem")
    if case == "expired":  # the fleet's CA, the right host, ended yesterday
        return server_tls(tmp, ("127.0.0.1",), ca=rig.fleet_ca,
                          not_before=now - datetime.timedelta(days=31), days=30)
    if case == "starts-later":  # valid from tomorrow: what a board whose clock was never set
        # sees of a certificate that starts after its clock's origin (a public CA's; ours
        # start at 1970, tools/tls_ca.UNSET_CLOCK)
        return server_tls(tmp, ("127.0.0.1",), ca=rig.fleet_ca,
                          not_before=now + datetime.timedelta(days=1), days=30)
    assert case == "plain-http"
    return None


REASONS = {
    "another-ca": "The certificate is not correctly signed by the trusted CA",
    "wrong-host": "The certificate Common Name (CN) does not match with the expected CN",
    "self-signed": "The certificate is not correctly signed by the trusted CA",
    "expired": "The certificate validity has expired",
    "starts-later": "The certificate validity starts in the future",
    "plain-http": "",
}


@pytest.mark.parametrize("case", list(REASONS))
def test_board_refuses_a_server_it_cannot_verify_and_keeps_its_app(rig: Rig, case: str,
                                                                   tmp_path: Path) -> None:
    front = _man_in_the_middle(rig, case, tmp_path)
    with FaultProxy(rig.plain.url, tls=front.context if front else None) as mitm:
        url = mitm.url.replace("http://", "https://")  # the board's config says https
        flash = rig.board(rig.plain, f"mitm-{case}", url, rig.fleet_ca_der)
        result = rig.boot(flash, max_boots=2)
        forwarded = list(mitm.exchanges)
    assert [b.ended for b in result.boots] == ["exit"], result.output
    assert "APP 1.0.0" in result.output and "Traceback" not in result.output
    assert forwarded == []  # not one request reached the server through it
    if front is not None:
        assert "ota: server certificate refused: " + REASONS[case] in result.output, \
            result.output
    assert slot_files(flash, "a") == app_hashes(OLD)
    state = read_state(flash)
    assert state is not None and state["active"] == "a"


def test_board_without_a_ca_never_speaks_https_unverified(rig: Rig, tmp_path: Path) -> None:
    """A CA file lost from flash: no fallback to CERT_NONE; the request is not even made."""
    front = server_tls(tmp_path, ("127.0.0.1",), ca=rig.fleet_ca)
    with FaultProxy(rig.plain.url, tls=front.context) as honest:
        flash = rig.board(rig.plain, "no-ca", honest.url, rig.fleet_ca_der)
        (flash / "ota_id" / "ca.der").unlink()
        result = rig.boot(flash, max_boots=2)
        forwarded = list(honest.exchanges)
    assert [b.ended for b in result.boots] == ["exit"], result.output
    assert "APP 1.0.0" in result.output
    assert forwarded == []
    assert slot_files(flash, "a") == app_hashes(OLD)


def test_refusals_are_counted_for_the_app(rig: Rig, tmp_path: Path) -> None:
    """ota.tls_refused() counts the refusals since boot: an app can show or report them."""
    front = server_tls(tmp_path, ("127.0.0.1",))
    app = dict(OLD)
    app["app_main.py"] = (b"import ota\n\ndef main():\n    ota.poll(True)\n"
                          b"    print('REFUSED', ota.tls_refused())\n")
    with FaultProxy(rig.plain.url, tls=front.context) as mitm:
        flash = rig.board(rig.plain, "counted", mitm.url, rig.fleet_ca_der, app)
        result = rig.boot(flash, max_boots=1)
    # the boot's check-in, then the app's own poll: two refusals, each said on the console
    assert result.output.count("ota: server certificate refused:") == 2, result.output
    assert "REFUSED 2" in result.output, result.output


def test_a_ca_rotation_through_root_metadata_moves_the_board_to_the_new_ca(
        micropython: str, tmp_path: Path) -> None:
    """docs/operations.md, Moving the fleet to a new CA: root N+1 lists old and new CA, the
    server's certificate moves to the new CA, root N+2 lists the new CA only. The board takes
    each CA set from a verified root, accepts the new CA's certificate, and refuses the old
    CA's once the last root dropped it."""
    import time

    from signing.root import new_root, sign_root

    keys = make_keys()
    (tmp_path / "root.json").write_bytes(keys.root_envelope)
    ca_a, ca_b = new_ca("fleet CA A"), new_ca("fleet CA B")
    der_a, der_b = (ca.cert.public_bytes(serialization.Encoding.DER) for ca in (ca_a, ca_b))
    front_a = server_tls(tmp_path / "a", ("127.0.0.1",), ca=ca_a)
    server_tls(tmp_path / "b", ("127.0.0.1",), ca=ca_b)  # tmp/b/server.pem, .key
    context = front_a.context  # the front's certificate is swapped in place, like SIGHUP

    def present(which: str) -> None:
        context.load_cert_chain(tmp_path / which / "server.pem", tmp_path / which / "server.key")

    def root(version: int, cas: list[bytes]) -> bytes:
        return sign_root(new_root(version=version, expires=int(time.time()) + 86400,
                                  root_keys=[keys.root], release_keys=[keys.release],
                                  server_ca=cas), [keys.root])

    with LocalServer(tmp_path / "data", tmp_path / "root.json") as server, \
            FaultProxy(server.url, tls=context) as front:
        api = server.client()
        flash = tmp_path / "board"
        provision_board(flash, api, "moving", front.url, keys, OLD, channel="stable",
                        timeout_s=3, server_ca=der_a)
        vb = VirtualBoard(flash, micropython=micropython)
        api.upload_root(root(2, [der_a, der_b]))  # 1: trust both
        first = vb.run(max_boots=1, timeout=60)
        assert "certificate refused" not in first.output, first.output
        assert (flash / "ota_id" / "ca.der").read_bytes() == der_a + der_b
        present("b")  # 2: the server's certificate from the new CA
        api.publish(build_release(tmp_path, NEW, "1.1.0", 2, keys), channel="stable",
                    percent=100)
        moved = vb.run(max_boots=3, timeout=60)
        assert [b.ended for b in moved.boots] == ["reset", "exit"], moved.output
        assert "APP 1.1.0" in moved.boots[-1].output
        api.upload_root(root(3, [der_b]))  # 3: the old CA goes
        dropped = vb.run(max_boots=1, timeout=60)
        assert "certificate refused" not in dropped.output, dropped.output
        assert (flash / "ota_id" / "ca.der").read_bytes() == der_b
        present("a")  # a server (or a man in the middle) with the old CA's certificate
        refused = vb.run(max_boots=1, timeout=60)
    assert ("ota: server certificate refused: The certificate is not correctly signed by the "
            "trusted CA") in refused.output, refused.output
    assert "APP 1.1.0" in refused.output
    assert slot_files(flash, "b") == app_hashes(NEW)
