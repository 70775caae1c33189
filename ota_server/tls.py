"""TLS for `ota serve --tls-cert FILE --tls-key FILE`: the server's context and its reload.

Boards verify the server's certificate against the fleet's CA (docs/operations.md, TLS). The
context is built once; SIGHUP loads the files again into the same context, so connections
already open keep their session and every handshake after the reload presents the new
certificate: a renewal needs no restart and drops no board. A pair that does not load (a
half-copied file, a key that does not match) is refused and the old one stays in service.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

log = logging.getLogger("ota_server")


class TlsSetupError(Exception):
    """The certificate or key cannot be used; the message names the file and the reason."""


def _load(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    for path in (cert, key):
        if not path.is_file():
            raise TlsSetupError(f"{path}: no such file")
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as err:
        raise TlsSetupError(f"{cert} / {key}: not a matching PEM certificate and private key "
                            f"({err.reason or err})") from err
    except (OSError, ValueError) as err:
        raise TlsSetupError(f"{cert} / {key}: {err}") from err


def _new_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # MicroPython's mbedtls builds speak TLS 1.2 (ESP-IDF's and extmod's configs); nothing
    # older is offered to anyone.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class ServerTls:
    """The server's certificate and key, loaded into one long-lived SSLContext."""

    def __init__(self, cert: Path, key: Path):
        self.cert = cert
        self.key = key
        self.context = _new_context()
        _load(self.context, cert, key)

    def reload(self) -> bool:
        """Load the files again (SIGHUP); False, with the reason logged, when they do not load.

        The pair is tried on a scratch context first: load_cert_chain on the live one could
        install the new certificate and then fail on the key, leaving a mismatched pair.
        """
        try:
            _load(_new_context(), self.cert, self.key)
            _load(self.context, self.cert, self.key)
        except TlsSetupError as err:
            log.error("TLS reload refused, the previous certificate stays in service: %s", err)
            return False
        log.info("TLS certificate reloaded from %s", self.cert)
        return True
