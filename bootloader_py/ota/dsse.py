# DSSE envelopes for the board's verifier: reading an envelope (size cap, JSON, shape,
# payloadType, strict base64) and checking a role's signature threshold over its PAE.
#
# Part of trust.py's API (docs/board-trust.md), kept apart so that a client short of heap
# holds only the phase it is in: this module and ota.p256 while signatures are checked,
# ota.rules while the signed payload is parsed and checked.
import binascii
import hashlib
import json

from ota import trust as t

_B64_TEXT = 1024  # base64 characters decoded at a time (a multiple of 4)
_SPACE = (b" ", b"\t", b"\n", b"\r")


def _check_closed(buf, doc):
    """Refuse an envelope cut short, which MicroPython's json would accept.

    That parser closes brackets still open at the end of the input.  A JSON object is complete
    when its braces balance outside strings: braces in the raw bytes minus those inside the
    parsed strings must be zero.  A brace written as a \\u escape inside a string is refused;
    no mpota signer writes one.  Signed payloads need no such check: a cut-short payload fails
    its signature.
    """
    if hasattr(buf, "count"):
        braces = buf.count(b"{") - buf.count(b"}")
    else:  # memoryview: count in small copies
        braces = 0
        for i in range(0, len(buf), t._B64_CHUNK):
            chunk = bytes(buf[i:i + t._B64_CHUNK])
            braces += chunk.count(b"{") - chunk.count(b"}")
    # Iterative walk: a hostile, deeply nested document must not exhaust the C stack.
    todo = [doc]
    while todo:
        item = todo.pop()
        kind = type(item)
        if kind is str:
            braces -= item.count("{") - item.count("}")
        elif kind is dict:
            for k in item:
                todo.append(k)
                todo.append(item[k])
        elif kind is list:
            todo.extend(item)
    if braces:
        raise t.MalformedError("envelope: not JSON (cut short: brackets left open)")


def read_envelope(buf, payload_type, consume=False):
    """(payload bytes, [(keyid, sig64)], PAE digest); size cap first, then JSON and shape."""
    if len(buf) > t.MAX_ENVELOPE_BYTES:
        raise t.TooLargeError("envelope is " + str(len(buf)) + " bytes, over the cap of "
                              + str(t.MAX_ENVELOPE_BYTES))
    got = _read_lean(buf, payload_type, consume)
    if got is None:  # anything unusual: the full parse decides, with its exact errors
        got = _read_full(buf, payload_type)
    return got


def _payload_span(buf):
    """(start, end) of the payload's base64 text in the raw envelope, or None.

    Only for plain envelopes: bytes/bytearray, no backslash anywhere (so every raw quote
    delimits a string) and exactly one raw '"payload"'.  _read_lean then checks that the
    parser sees this very string as the top-level payload.
    """
    if not hasattr(buf, "find") or buf.find(b"\\") >= 0:
        return None
    at = buf.find(b'"payload"')
    if at < 0 or buf.find(b'"payload"', at + 1) >= 0:
        return None
    at += 9
    while buf[at:at + 1] in _SPACE:
        at += 1
    if buf[at:at + 1] != b":":
        return None
    at += 1
    while buf[at:at + 1] in _SPACE:
        at += 1
    if buf[at:at + 1] != b'"':
        return None
    end = buf.find(b'"', at + 1)
    return None if end < 0 else (at + 1, end)


def _read_lean(buf, payload_type, consume):
    """_read_full's result without ever holding the payload as a JSON string.

    The envelope is parsed with its payload text cut out (a few hundred bytes instead of a
    6 KB string plus the parser's 8 KB scratch), and the base64 is decoded straight from the
    caller's buffer: with `consume`, into that very buffer (the payload is then a memoryview
    of its start).  None when the envelope is not plain or anything in it is wrong: the full
    parse then gives the same verdict it always did (the buffer is still intact then).
    """
    span = _payload_span(buf)
    if span is None:
        return None
    start, end = span
    head = buf[:start] + buf[end:]
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeError):
        return None
    if type(doc) is not dict or doc.get("payload") != "" or start == end:
        return None
    try:
        _check_closed(head, doc)
        kind = t._field(doc, "payloadType", str, "envelope")
        entries = t._field(doc, "signatures", list, "envelope")
    except t.MalformedError:
        return None
    if kind != payload_type:
        return None
    doc = head = None
    size = (end - start) // 4 * 3 - (buf[end - 1] == 61) - (buf[end - 2] == 61)  # 61: "="
    h = _pae_start(kind, size)
    if size < 0 or _b64_chunks(buf, start, end, h.update) != size:
        return None
    sigs = _signatures(entries)
    if consume and type(buf) is bytearray:
        view = memoryview(buf)
        out = [0]

        def put(data):
            view[out[0]:out[0] + len(data)] = data  # never past what is already read
            out[0] += len(data)

        _b64_chunks(buf, start, end, put)
        payload = view[:size]
    else:
        payload = binascii.a2b_base64(memoryview(buf)[start:end])
    return payload, sigs, h.digest()


def _b64_chunks(buf, start, end, sink):
    """Decode the canonical base64 buf[start:end] chunk by chunk into sink(bytes).

    Returns the decoded length, or -1 when the text is not canonical (it must re-encode to
    itself, and only the last chunk may end in padding).
    """
    view = memoryview(buf)
    total = 0
    while start < end:
        stop = min(start + _B64_TEXT, end)
        text = view[start:stop]
        try:
            data = binascii.a2b_base64(text)
        except ValueError:
            return -1
        if (stop < end and len(data) * 4 != len(text) * 3) or binascii.b2a_base64(
                data, newline=False) != bytes(text):
            return -1
        sink(data)
        total += len(data)
        start = stop
    return total


def _read_full(buf, payload_type):
    doc = t._loads(buf, "envelope")
    if type(doc) is not dict:
        raise t.MalformedError("envelope: not a JSON object")
    _check_closed(buf, doc)
    kind = t._field(doc, "payloadType", str, "envelope")
    text = t._field(doc, "payload", str, "envelope")
    entries = t._field(doc, "signatures", list, "envelope")
    if kind != payload_type:
        raise t.PayloadTypeError("payloadType is '" + kind[:60] + "', expected '"
                                 + payload_type + "'")
    doc = None
    payload = t._b64decode(text, "envelope payload")
    text = None
    return payload, _signatures(entries), _pae_digest(kind, payload)


def _signatures(entries):
    sigs = []
    for i in range(len(entries)):
        entry = entries[i]
        where = "envelope signature " + str(i)
        if type(entry) is not dict:
            raise t.MalformedError(where + ": not a JSON object")
        sig = t._b64decode(t._field(entry, "sig", str, where), where)
        if len(sig) != 64:
            raise t.MalformedError(where + ": sig is " + str(len(sig)) + " bytes, not 64")
        sigs.append((t._field(entry, "keyid", str, where), sig))
    return sigs


def _pae_start(kind, size):
    # PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, hashed in pieces.
    kind = kind.encode()
    h = hashlib.sha256(b"DSSEv1 ")
    h.update(str(len(kind)))
    h.update(b" ")
    h.update(kind)
    h.update(b" ")
    h.update(str(size))
    h.update(b" ")
    return h


def _pae_digest(kind, payload):
    h = _pae_start(kind, len(payload))
    h.update(payload)
    return h.digest()


def require_threshold(digest, sigs, keys, keyids, threshold, role):
    """Raise ThresholdError unless `threshold` distinct keyids of the role signed the digest.

    Unknown keyids are ignored, a keyid counts once, and checking stops once the threshold
    is met (the outcome is the same as counting all).
    """
    from ota import p256
    valid = []
    for kid, sig in sigs:
        if len(valid) >= threshold:
            return
        if kid in valid or kid not in keyids:
            continue
        if p256.verify(keys[kid], digest, sig):
            valid.append(kid)
    if len(valid) < threshold:
        raise t.ThresholdError(role + ": " + str(len(valid)) + " valid signature(s) from trusted"
                               " keys, threshold is " + str(threshold))
