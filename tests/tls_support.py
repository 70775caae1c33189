"""Certificates for board tests over TLS, made with the project's own tools/tls_ca.py: a
throw-away fleet CA and a server certificate it signed for 127.0.0.1, as `ota tls init` makes
them; boards are given the CA (`server_ca`), never the server's certificate."""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tools.tls_ca import Issued, issue_server, new_ca


@dataclass(frozen=True)
class ServerTls:
    """A server context, the DER of the CA that signed its certificate, and where it is."""

    context: ssl.SSLContext
    ca_der: bytes
    ca_path: Path  # the DER, for a board's /ota_id/ca.der or http.CA_PATH


def server_tls(tmp: Path, hosts: tuple[str, ...] = ("127.0.0.1",), *, ca: Issued | None = None,
               not_before: datetime.datetime | None = None, days: int = 30,
               name: str = "server") -> ServerTls:
    """A TLS server context for `hosts` whose certificate `ca` (else a new CA) signed."""
    ca = ca or new_ca("test fleet CA")
    server = issue_server(ca, list(hosts), not_before=not_before, days=days)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / f"{name}.pem").write_bytes(server.cert_pem)
    (tmp / f"{name}.key").write_bytes(server.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / f"{name}.pem", tmp / f"{name}.key")
    ca_der = ca.cert.public_bytes(serialization.Encoding.DER)
    (tmp / f"{name}-ca.der").write_bytes(ca_der)
    return ServerTls(context, ca_der, tmp / f"{name}-ca.der")
