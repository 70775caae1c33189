"""`ota serve` over https (--tls-cert/--tls-key), the fleet's private CA (`ota tls`), and a
certificate renewal by SIGHUP that drops no connection (docs/operations.md, TLS)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from server_support import Backend, FleetKeys, SimBoard, make_bundle

from ota_server.tls import ServerTls, TlsSetupError
from tools.cli import main
from tools.local_server import LocalServer, free_port
from tools.tls_ca import CaError, ca_der, issue_server, new_ca


@pytest.fixture
def keys(tmp_path: Path) -> FleetKeys:
    return FleetKeys.create(tmp_path)


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "tls"
    assert main(["tls", "init", str(directory), "--host", "127.0.0.1", "--host",
                 "localhost"]) == 0
    return directory


def _served_cert(srv: LocalServer) -> x509.Certificate:
    context = ssl.create_default_context(cafile=str(srv.ca_path))
    with socket.create_connection((srv.host, srv.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=srv.host) as conn:
        der = conn.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)


def test_tls_init_writes_a_ca_and_a_server_certificate_keys_0600(tls_dir: Path,
                                                                capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
    for name in ("ca.key", "server.key"):
        assert stat.S_IMODE((tls_dir / name).stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((tls_dir / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tls_dir / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    # valid from the Unix epoch: a board whose clock was never set accepts them (tls_ca)
    assert ca.not_valid_before_utc.year == server.not_valid_before_utc.year == 1970
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    # no key material on the terminal, and no overwrite of a CA
    assert main(["tls", "init", str(tls_dir), "--host", "127.0.0.1"]) == 1
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err
    for name in ("ca.key", "server.key"):
        assert (tls_dir / name).read_text().splitlines()[1] not in err


def test_boards_and_publishers_work_over_https(tmp_path: Path, keys: FleetKeys,
                                               tls_dir: Path, backend: Backend) -> None:
    payload = b"over tls " * 40000
    bundle = make_bundle(tmp_path, {"app_main.py": payload}, version="1.0.0", sequence=1,
                         key=keys.release_key)
    with LocalServer(tmp_path / "data", keys.root_path, tls_dir=tls_dir, **backend.urls) as srv:
        assert srv.url.startswith("https://")
        client = srv.client()
        board = SimBoard("tls-board")
        client.register_device(board.device_id, board.point, board="unix")
        client.publish(bundle, "stable", percent=100)
        context = ssl.create_default_context(cafile=str(srv.ca_path))
        conn = http.client.HTTPSConnection(srv.host, srv.port, context=context, timeout=10)
        body = board.checkin_body()
        conn.request("POST", "/v1/device/checkin", body,
                     board.auth("POST", "/v1/device/checkin", body))
        offer = conn.getresponse()
        assert offer.status == 200
        manifest = json.loads(base64.b64decode(json.loads(offer.read())["payload"]))
        blob = manifest["files"][0]["blob"]
        path = f"/v1/blobs/{blob}"
        # A blob over TLS goes through the copying path, not sendfile(2) on the raw socket.
        conn.request("GET", path, headers={**board.auth("GET", path), "Range": "bytes=100-"})
        part = conn.getresponse()
        data = part.read()
        assert part.status == 206
        whole = (bundle / "blobs" / blob).read_bytes()
        assert data == whole[100:]
        assert hashlib.sha256(whole).hexdigest() == blob
        conn.close()


def test_a_client_that_does_not_trust_the_fleet_ca_is_refused(tmp_path: Path, keys: FleetKeys,
                                                              tls_dir: Path,
                                                              backend: Backend) -> None:
    other = tmp_path / "other"
    assert main(["tls", "init", str(other), "--host", "127.0.0.1"]) == 0
    with LocalServer(tmp_path / "data", keys.root_path, tls_dir=tls_dir, **backend.urls) as srv:
        wrong = ssl.create_default_context(cafile=str(other / "ca.pem"))
        with socket.create_connection((srv.host, srv.port), timeout=5) as raw, \
                pytest.raises(ssl.SSLCertVerificationError):
            wrong.wrap_socket(raw, server_hostname=srv.host)
        with socket.create_connection((srv.host, srv.port), timeout=5) as raw, \
                pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            ssl.create_default_context(cafile=str(srv.ca_path)).wrap_socket(
                raw, server_hostname="ota.example.com")


def test_sighup_serves_a_renewed_certificate_without_dropping_a_connection(
        tmp_path: Path, keys: FleetKeys, tls_dir: Path, backend: Backend) -> None:
    with LocalServer(tmp_path / "data", keys.root_path, tls_dir=tls_dir, **backend.urls) as srv:
        before = _served_cert(srv)
        context = ssl.create_default_context(cafile=str(srv.ca_path))
        kept = http.client.HTTPSConnection(srv.host, srv.port, context=context, timeout=10)
        kept.request("GET", "/healthz")
        assert kept.getresponse().read() == b'{"status": "ok"}'
        assert main(["tls", "issue", str(tls_dir), "--host", "127.0.0.1"]) == 0
        srv.reload_tls()
        deadline = time.monotonic() + 10
        while _served_cert(srv).serial_number == before.serial_number:
            assert time.monotonic() < deadline, "the renewed certificate was never served"
            time.sleep(0.05)
        kept.request("GET", "/healthz")  # the connection made before the reload still works
        assert kept.getresponse().read() == b'{"status": "ok"}'
        kept.close()
        renewed = _served_cert(srv)
        # A broken pair (a key cut short) is refused; the renewed certificate stays in service.
        (tls_dir / "server.key").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n")
        srv.reload_tls()
        deadline = time.monotonic() + 10
        while "TLS reload refused" not in srv.log_path.read_text():
            assert time.monotonic() < deadline, srv.log_path.read_text()
            time.sleep(0.05)
        assert _served_cert(srv).serial_number == renewed.serial_number


def _serve(tmp_path: Path, keys: FleetKeys, *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "serve", "--data", str(tmp_path / "d"),
         "--root", str(keys.root_path), "--port", str(free_port()), *tls],
        capture_output=True, text=True, timeout=60)


def test_serve_refuses_a_certificate_it_cannot_use(tmp_path: Path, keys: FleetKeys,
                                                   tls_dir: Path) -> None:
    other = tmp_path / "other"
    assert main(["tls", "init", str(other), "--host", "127.0.0.1"]) == 0
    cases = {
        "mismatch": (["--tls-cert", str(tls_dir / "server.pem"),
                      "--tls-key", str(other / "server.key")], "not a matching"),
        "missing": (["--tls-cert", str(tls_dir / "nope.pem"),
                     "--tls-key", str(tls_dir / "server.key")], "nope.pem: no such file"),
        "half": (["--tls-cert", str(tls_dir / "server.pem")], "needs both --tls-cert"),
    }
    for args, message in cases.values():
        proc = _serve(tmp_path, keys, *args)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith("ota: ") and message in proc.stderr, proc.stderr


def test_server_context_offers_tls_1_2_at_least(tls_dir: Path) -> None:
    tls = ServerTls(tls_dir / "server.pem", tls_dir / "server.key")
    assert tls.context.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(TlsSetupError, match="no such file"):
        ServerTls(tls_dir / "missing.pem", tls_dir / "server.key")


def test_ca_der_takes_a_ca_in_pem_or_der_and_refuses_anything_else() -> None:
    from cryptography.hazmat.primitives import serialization

    ca = new_ca("test CA")
    der = ca.cert.public_bytes(serialization.Encoding.DER)
    assert ca_der(ca.cert_pem, "ca.pem") == der
    assert ca_der(der, "ca.der") == der
    server = issue_server(ca, ["127.0.0.1"])
    with pytest.raises(CaError, match=r"server\.pem: .* is not a CA certificate"):
        ca_der(server.cert_pem, "server.pem")
    for junk in (b"", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                 der[:-10], b"\x30\x03\x02\x01\x01"):
        with pytest.raises(CaError, match=r"junk: not a PEM or DER X\.509 certificate"):
            ca_der(junk, "junk")
