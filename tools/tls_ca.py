"""A private certificate authority for a fleet's server (`ota tls init`, `ota tls issue`).

Boards pin the fleet's CA at provisioning (/ota_id/ca.der) and verify the server's certificate
against it, host name included (docs/operations.md, TLS). Everything here is ECDSA P-256 with
SHA-256: every MicroPython mbedtls build that has `tls` verifies it, and the handshake costs a
board far less than RSA. Library first: the CLI (tools/cmd_tls.py) and the tests call these.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 397  # what public CAs may issue at most; renew with `ota tls issue`
# Where a board's clock starts when nothing has set it: mbedtls checks a certificate's
# validity against time(), which counts from the Unix epoch on an ESP32 (gettimeofday from 0)
# and from 2021-01-01 on an RP2 (ports/rp2/main.c, aon_timer_start). Our certificates start
# here, so a board whose NTP sync failed still accepts them; their end is checked once the
# clock is set (docs/operations.md, TLS). Validity *starts* are no security property here.
UNSET_CLOCK = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
# The board's cap on the CA file it loads (bootloader_py/ota/tlsca.py reads it whole: a
# certificate is a few hundred bytes; a bundle of two during a CA rotation fits too).
MAX_CA_BYTES = 4096


class CaError(ValueError):
    """A CA or certificate file cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class Issued:
    """A key and its certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_ca(name: str, *, days: int = CA_DAYS,
           not_before: datetime.datetime | None = None) -> Issued:
    """A self-signed CA certificate that may sign server certificates only (pathlen 0), valid
    from UNSET_CLOCK (or `not_before`) until `days` from now."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = not_before or UNSET_CLOCK
    end = (not_before or _now()) + datetime.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_server(ca: Issued, hosts: Sequence[str], *, days: int = SERVER_DAYS,
                 not_before: datetime.datetime | None = None) -> Issued:
    """A server certificate for `hosts` (DNS names or IP addresses), signed by `ca`, valid from
    UNSET_CLOCK until `days` from now (with `not_before`: from then, for `days`).

    The first host is also the subject's common name: mbedtls matches the host name against
    the subjectAltName entries, and older builds against the CN.
    """
    if not hosts:
        raise CaError("a server certificate needs at least one --host")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or UNSET_CLOCK
    end = (not_before or _now()) + datetime.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(key, cert)


def ca_der(data: bytes, where: str) -> bytes:
    """The DER of the CA certificate in `data` (PEM or DER), as a board loads it.

    Raises CaError naming `where` when it is not one parseable X.509 CA certificate.
    """
    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except ValueError as err:
        raise CaError(f"{where}: not a PEM or DER X.509 certificate ({err})") from err
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CaError(f"{where}: {cert.subject.rfc4514_string()} is not a CA certificate "
                      "(basicConstraints CA:TRUE); give the CA that signed the server's "
                      "certificate, not the server's own")
    der = cert.public_bytes(serialization.Encoding.DER)
    if len(der) > MAX_CA_BYTES:
        raise CaError(f"{where}: {len(der)} bytes, over the board's {MAX_CA_BYTES}-byte cap")
    return der
