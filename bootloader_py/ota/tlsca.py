# The server's certificate, checked (docs/board.md, TLS): the TLS context a https request
# wraps its socket with, the CA file it trusts, a refusal said and counted, and the CA file
# replaced from a verified root. Loaded only for https and CA rotations: a board on http never
# interns a name of it (the update's qstr pool: docs/board.md, Memory budget).
from micropython import const

from ota.fail import HttpError

# The CA(s) an https server's certificate must chain to, DER, back to back; written at
# provisioning (tools/board_files.py CA_PATH, capped there at _MAX_CA bytes too).
CA_PATH = "/ota_id/ca.der"  # ota.path: /ota/ca.der on boards provisioned before
_MAX_CA = const(4096)


def wrap(sock, host):
    """sock wrapped in TLS that verifies the server, its handshake not yet begun.

    CERT_REQUIRED against CA_PATH's certificates and `host`: there is no fallback to
    CERT_NONE or to http. The handshake runs inside the request's first writes and reads
    (http.request, http._send), each step waiting on poll against the deadline: with
    do_handshake_on_connect (the default) wrap_socket would run it to its end in C, on a
    non-blocking socket in a loop that has no deadline, on a blocking one with a timeout that
    restarts at every byte (extmod/modtls_mbedtls.c, ssl_socket_make_new; docs/board.md,
    Deadlines). Raises HttpError, before any byte is sent, when the firmware's tls does not
    keep CERT_REQUIRED (axTLS on the ESP8266)."""
    import tls
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    need = getattr(tls, "CERT_REQUIRED", None)
    if need is not None:
        ctx.verify_mode = need
    if need is None or ctx.verify_mode != need:
        # axTLS (the ESP8266's tls) has no CERT_REQUIRED and no load_verify_locations, and
        # reads verify_mode as CERT_NONE whatever is set (extmod/modtls_axtls.c): its
        # handshake would trust any server. Refused, never downgraded (docs/board.md,
        # Platforms).
        print("ota: https refused: this firmware's tls cannot verify the server")
        raise HttpError("https refused: tls cannot verify the server")
    data = _read_cas()
    at = 0
    while at < len(data):
        # load_verify_locations parses one DER certificate per call and adds it to the
        # context's chain (extmod/modtls_mbedtls.c, ssl_context_load_cadata:
        # mbedtls_x509_crt_parse), so a file of two (old and new CA) goes a piece at a time
        n = der_length(data, at)
        if not n:
            raise HttpError("bad CA file")
        ctx.load_verify_locations(data[at:at + n])
        at += n
    return ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)


def _read_cas():
    import os
    import ota
    path = ota.path(CA_PATH)
    try:
        size = os.stat(path)[6]
    except OSError:
        try:  # a CA rotation cut between its remove and its rename (install)
            os.rename(path + ".new", path)
            size = os.stat(path)[6]
        except OSError:
            raise HttpError("https needs the server's CA in " + path + ": none provisioned")
    if not 0 < size <= _MAX_CA:
        raise HttpError("bad CA file: %d bytes" % size)
    with open(path, "rb") as f:
        return f.read(size)


def der_length(data, at):
    """Bytes of the DER SEQUENCE at data[at:], header included; 0 when there is not one that
    fits in data (a certificate's outer length takes one or two bytes: under 64 KB)."""
    if len(data) - at < 2 or data[at] != 0x30:
        return 0
    first = data[at + 1]
    if first < 0x80:
        n = 2 + first
    elif first == 0x81 and len(data) - at >= 3:
        n = 3 + data[at + 2]
    elif first == 0x82 and len(data) - at >= 4:
        n = 4 + (data[at + 2] << 8 | data[at + 3])
    else:
        return 0
    return n if n <= len(data) - at else 0


def refused(err):
    """The HttpError for a server certificate mbedtls refused, said on the console and counted
    (ota.tls_refused()): the reason, from mbedtls' verify flags, comes as a ValueError out of
    the handshake (extmod/modtls_mbedtls.c, the CERT_VERIFY_FAILED branches)."""
    import ota
    ota.refusals = ota.tls_refused() + 1
    reason = "; ".join([r.strip() for r in str(err).split("\n") if r.strip()])
    print("ota: server certificate refused:", reason)
    return HttpError("server certificate refused: " + reason)


def from_root(value):
    """A root's `server_ca` (1 to 4 base64 DER certificates, 4096 bytes in all) as the bytes
    CA_PATH holds: the DERs back to back. The host checks that each is an X.509 CA
    (signing/root.py), the board that each is one whole DER SEQUENCE; MalformedError (the
    root's) otherwise."""
    from ota import trust as t
    fail = t.fail
    where = "root: server_ca"
    if type(value) is not list or not 1 <= len(value) <= 4:
        fail(where + " must be a list of 1 to 4 base64 DER certificates")
    out = b""
    for entry in value:
        if type(entry) is not str:
            fail(where + ": not a string")
        der = t._b64decode(entry, where)
        if not der or der_length(der, 0) != len(der):
            fail(where + ": not one DER certificate")
        out += der
    if len(out) > _MAX_CA:
        fail(where + ": over 4096 bytes")
    return out


def install(der):
    """Replace CA_PATH with `der`, the CAs of a verified root (client.rotate_root)."""
    import os
    import ota
    path = ota.path(CA_PATH)
    with open(path + ".new", "wb") as f:
        f.write(der)
    try:
        os.remove(path)  # FAT cannot rename over a file; _read_cas covers the gap
    except OSError:
        pass
    os.rename(path + ".new", path)
