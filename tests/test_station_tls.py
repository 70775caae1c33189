"""The station and an https server: boards get the CA they verify the server against
(/ota_id/ca.der), and nothing is provisioned for https without a usable one
(docs/provisioning.md, The server's CA)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from signing.keys import generate_private_key
from signing.root import new_root, sign_root
from tools.cli import main as ota
from tools.local_server import LocalServer

TOKEN_ENV = "MPOTA_TLS_TEST_TOKEN"
WIFI_ENV = "MPOTA_TLS_TEST_WIFI"


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    base = tmp_path_factory.mktemp("https")
    assert ota(["tls", "init", str(base / "tls"), "--host", "127.0.0.1"]) == 0
    root_key, release_key = generate_private_key(), generate_private_key()
    root = new_root(version=1, expires=int(time.time()) + 86400 * 30, root_keys=[root_key],
                    release_keys=[release_key])
    (base / "root.json").write_bytes(sign_root(root, [root_key]))
    with LocalServer(base / "data", base / "root.json", tls_dir=base / "tls") as running:
        yield running


def _fleet(tmp_path: Path, server: LocalServer, monkeypatch: pytest.MonkeyPatch,
           ca_line: str) -> Path:
    monkeypatch.setenv(TOKEN_ENV, server.token)
    monkeypatch.setenv(WIFI_ENV, "wifi-secret-x1")
    path = tmp_path / "fleet.yaml"
    path.write_text(f"""\
version: 1
server:
  url: {server.url}
  publisher_token_env: {TOKEN_ENV}
  root: {server.root_json}
  {ca_line}
channels: {{stable: {{}}}}
rollout: {{stages: [100]}}
wifi: {{lab: {{ssid: lab, password_env: {WIFI_ENV}}}}}
boards: {{unix: {{chip: unix}}}}
provisioning:
  lab: {{board: unix, wifi: lab, channel: stable}}
""")
    (tmp_path / "board").mkdir()
    return path


def _provision(fleet: Path, *extra: str) -> int:
    return ota(["provision", "--fleet", str(fleet), "--profile", "lab", "--virtual",
                str(fleet.parent / "board"), "--log", str(fleet.parent / "station.jsonl"),
                *extra])


def test_a_board_provisioned_for_https_gets_the_fleet_ca_as_der(
        tmp_path: Path, https_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert https_server.ca_path is not None
    fleet = _fleet(tmp_path, https_server, monkeypatch, f"ca: {https_server.ca_path}")
    assert _provision(fleet) == 0
    written = (tmp_path / "board" / "ota_id" / "ca.der").read_bytes()
    expected = x509.load_pem_x509_certificate(https_server.ca_path.read_bytes())
    assert written == expected.public_bytes(serialization.Encoding.DER)
    # the station registered the board over https, trusting that CA
    ids = [d["device_id"] for d in https_server.client().list_devices()]
    assert len(ids) == 1


@pytest.mark.parametrize(("ca", "message"), [
    (None, "is https, and boards verify its certificate against a CA"),
    (b"not a certificate", "not a PEM or DER X.509 certificate"),
    ("server", "is not a CA certificate"),
    ("missing", "No such file"),
])
def test_https_without_a_usable_ca_is_refused_before_any_board_is_touched(
        tmp_path: Path, https_server: LocalServer, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str], ca: bytes | str | None, message: str) -> None:
    ca_file = tmp_path / "ca.pem"
    assert https_server.tls_dir is not None
    if isinstance(ca, bytes):
        ca_file.write_bytes(ca)
    elif ca == "server":
        ca_file.write_bytes((https_server.tls_dir / "server.pem").read_bytes())
    fleet = _fleet(tmp_path, https_server, monkeypatch,
                   "" if ca is None else f"ca: {ca_file}")
    before = len(https_server.client().list_devices())
    assert _provision(fleet) == 1
    assert message in capfd.readouterr().err
    assert list((tmp_path / "board").iterdir()) == []
    assert len(https_server.client().list_devices()) == before
