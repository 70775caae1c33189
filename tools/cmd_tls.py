"""`ota tls init|issue`: a private CA for the fleet's server, and the server's certificate.

`init DIR --host NAME` makes DIR/ca.pem + DIR/ca.key (the CA, offline like the root keys) and
DIR/server.pem + DIR/server.key (for `ota serve --tls-cert --tls-key`, or the proxy in front).
`issue DIR --host NAME` renews the server's certificate from the same CA; boards keep trusting
it, since they pin the CA (fleet.yaml `server.ca`), not the server's certificate. Private keys
are written 0600 and never printed.
"""

from __future__ import annotations

from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signing.keys import write_atomic
from tools.errors import UserError
from tools.tls_ca import CA_DAYS, SERVER_DAYS, CaError, Issued, issue_server, new_ca

CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"

_hosts = click.option("--host", "hosts", multiple=True, required=True,
                      help="a DNS name or IP address boards use in the server URL "
                           "(repeat for several)")


@click.group("tls")
def tls_group() -> None:
    """A private certificate authority for the server's https (docs/operations.md, TLS)."""


def _write_server(directory: Path, server: Issued) -> None:
    write_atomic(directory / SERVER_KEY, server.key_pem, 0o600)
    write_atomic(directory / SERVER_CERT, server.cert_pem, 0o644)


def _summary(what: str, cert: x509.Certificate) -> str:
    return (f"{what}: {cert.subject.rfc4514_string()}, valid until "
            f"{cert.not_valid_after_utc.strftime('%Y-%m-%dT%H:%M:%SZ')}")


@tls_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@_hosts
@click.option("--name", default="mpota fleet CA", show_default=True,
              help="the CA's common name")
@click.option("--ca-days", type=click.IntRange(1, 36500), default=CA_DAYS, show_default=True,
              help="how long the CA is valid")
@click.option("--days", type=click.IntRange(1, 3650), default=SERVER_DAYS, show_default=True,
              help="how long the server's certificate is valid")
def tls_init(directory: Path, hosts: tuple[str, ...], name: str, ca_days: int,
             days: int) -> None:
    """Create a CA and a server certificate for --host in DIRECTORY (refuses to overwrite)."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = [n for n in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY) if (directory / n).exists()]
    if existing:
        raise UserError(f"{directory}: {', '.join(existing)} already exist(s); refusing to "
                        "overwrite (use `ota tls issue` to renew the server's certificate)")
    ca = new_ca(name, days=ca_days)
    try:
        server = issue_server(ca, hosts, days=days)
    except CaError as err:
        raise UserError(str(err)) from err
    write_atomic(directory / CA_KEY, ca.key_pem, 0o600)
    write_atomic(directory / CA_CERT, ca.cert_pem, 0o644)
    _write_server(directory, server)
    click.echo(_summary(f"CA {directory / CA_CERT}", ca.cert))
    click.echo(_summary(f"server certificate {directory / SERVER_CERT}", server.cert))
    click.echo(f"boards trust the CA: set `server.ca: {directory / CA_CERT}` in fleet.yaml; "
               f"keep {directory / CA_KEY} offline")


@tls_group.command("issue")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@_hosts
@click.option("--days", type=click.IntRange(1, 3650), default=SERVER_DAYS, show_default=True,
              help="how long the server's certificate is valid")
def tls_issue(directory: Path, hosts: tuple[str, ...], days: int) -> None:
    """Issue a new server certificate from DIRECTORY's CA (replaces server.pem/server.key);
    then send `ota serve` a SIGHUP to load it without dropping a board."""
    try:
        ca_cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        ca_key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"{directory}: cannot load the CA ({CA_CERT}, {CA_KEY}): {err}") \
            from err
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise UserError(f"{directory / CA_KEY}: not an ECDSA key")
    try:
        server = issue_server(Issued(ca_key, ca_cert), hosts, days=days)
    except CaError as err:
        raise UserError(str(err)) from err
    _write_server(directory, server)
    click.echo(_summary(f"server certificate {directory / SERVER_CERT}", server.cert))


def register(cli: click.Group) -> None:
    cli.add_command(tls_group)
