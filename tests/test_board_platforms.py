"""A board whose firmware's `tls` cannot verify a server never speaks https (docs/board.md,
Platforms): the ESP8266's `tls` is axTLS, whose SSLContext has no CERT_REQUIRED and no
load_verify_locations and reads `verify_mode` as CERT_NONE whatever is set
(extmod/modtls_axtls.c, v1.23.0 to v1.25.0). The client refuses the request before a byte is
sent, says so, and the app keeps running; it never falls back to an unverified handshake.

Real MicroPython (the virtual board) against a real server behind a TLS front whose
certificate comes from the fleet's CA: a board that spoke TLS without verifying would reach
it. The virtual board's firmware has mbedtls; the ESP8266's `tls` is stood in for by a
STAND-IN with axTLS's API, put in `sys.modules` before boot.py runs, as firmware modules load
first. Its contexts are real mbedtls contexts with verification off, so a client that used
one would complete the handshake and update through the front.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from faultproxy import FaultProxy
from tls_support import server_tls

from bench.reference_app import Keys, build_release, make_keys, provision_board, small_app
from tools.board_files import app_hashes, read_state, slot_files
from tools.local_server import LocalServer
from tools.tls_ca import Issued, new_ca
from tools.virtual_board import VirtualBoard

OLD, NEW = small_app("1.0.0"), small_app("1.1.0", {"lib/util.py": b"X = 2\n"})

# STAND-IN for the ESP8266's `tls` (extmod/modtls_axtls.c): SSLContext(protocol) with
# load_cert_chain and wrap_socket, `verify_mode` always read as CERT_NONE (0) and its stores
# ignored, and the constants PROTOCOL_TLS_CLIENT, PROTOCOL_TLS_SERVER and CERT_NONE only.
# %(extra)s adds to the module what a later axTLS build might add without verifying anyway.
_AXTLS = """\
import sys, tls as _mbedtls
class _AxtlsContext:
    def __init__(self, protocol):
        self._ctx = _mbedtls.SSLContext(protocol)
        self._ctx.verify_mode = _mbedtls.CERT_NONE
    @property
    def verify_mode(self):
        return 0
    @verify_mode.setter
    def verify_mode(self, value):
        pass
    def load_cert_chain(self, cert, key):
        self._ctx.load_cert_chain(cert, key)
    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                    server_hostname=None):
        return self._ctx.wrap_socket(sock, server_side=server_side,
                                     do_handshake_on_connect=do_handshake_on_connect,
                                     server_hostname=server_hostname)
%(extra)s
class _Axtls:
    SSLContext = _AxtlsContext
    PROTOCOL_TLS_CLIENT = 0
    PROTOCOL_TLS_SERVER = 1
    CERT_NONE = 0
%(constants)s
sys.modules["tls"] = _Axtls
del sys, _AxtlsContext, _Axtls
"""
# v1.25.0's axTLS module as it is; and one that names CERT_REQUIRED and takes CA data
# without using either (a context whose verify_mode does not read back what was set).
_VARIANTS = {
    "axtls-1.25": {"extra": "", "constants": ""},
    "axtls-ignoring-cert-required": {
        "extra": "_AxtlsContext.load_verify_locations = lambda self, cadata: None",
        "constants": "    CERT_REQUIRED = 2",
    },
}


@dataclass
class Rig:
    keys: Keys
    fleet_ca: Issued
    plain: LocalServer
    work: Path
    micropython: str

    @property
    def fleet_ca_der(self) -> bytes:
        return self.fleet_ca.cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("board-platforms")
    keys = make_keys()
    (work / "root.json").write_bytes(keys.root_envelope)
    bundle = build_release(work, NEW, "1.1.0", 2, keys)
    with LocalServer(work / "plain", work / "root.json") as plain:
        plain.client().publish(bundle, channel="stable", percent=100)
        yield Rig(keys, new_ca("fleet CA"), plain, work, micropython)


@pytest.mark.parametrize("variant", sorted(_VARIANTS))
def test_a_board_whose_tls_cannot_verify_refuses_https_and_keeps_its_app(
        rig: Rig, tmp_path: Path, variant: str) -> None:
    # the front's certificate is the fleet CA's own, for the right host: only a board that
    # verified nothing at all would be refused by nothing here, so the refusal is the client's
    front = server_tls(tmp_path, ("127.0.0.1",), ca=rig.fleet_ca)
    with FaultProxy(rig.plain.url, tls=front.context) as proxy:
        flash = rig.work / f"axtls-{variant}"
        provision_board(flash, rig.plain.client(), f"axtls-{variant}", proxy.url, rig.keys,
                        OLD, channel="stable", timeout_s=3, server_ca=rig.fleet_ca_der)
        boot = flash / "boot.py"
        boot.write_bytes((_AXTLS % _VARIANTS[variant]).encode() + boot.read_bytes())
        result = VirtualBoard(flash, micropython=rig.micropython).run(max_boots=2, timeout=60)
        forwarded = list(proxy.exchanges)
    assert [b.ended for b in result.boots] == ["exit"], result.output
    assert "ota: https refused: this firmware's tls cannot verify the server" in result.output
    assert "Traceback" not in result.output, result.output
    assert "APP 1.0.0" in result.output
    assert forwarded == []  # not one request reached the server through the front
    assert slot_files(flash, "a") == app_hashes(OLD)
    state = read_state(flash)
    assert state is not None and state["active"] == "a"
