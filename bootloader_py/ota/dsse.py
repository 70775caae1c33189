# DSSE envelopes for the board's verifier: reading an envelope (size cap, JSON, shape,
# payloadType, strict base64) and checking a role's signature threshold over its PAE.
#
# Part of trust.py's API (docs/board-trust.md), kept apart so that a client short of heap
# holds only the phase it is in. The envelope is never parsed whole: its members are found
# with ota.jscan, and the payload's base64 is decoded a window at a time into the PAE hash
# and into the caller's scratch file (or bytes, for a caller with heap to spare).
import binascii
import hashlib

from micropython import const

from ota import trust as t

_TEXT = const(256)  # base64 characters decoded at a time (a multiple of 4)
_ESCAPES = {34: b'"', 92: b"\\", 47: b"/", 98: b"\b", 102: b"\f", 110: b"\n", 114: b"\r",
            116: b"\t"}


def read(doc, payload_type, scratch=None):
    """(payload, [(keyid, sig64)], PAE digest) of the envelope in jscan.Doc `doc`.

    The payload is written to the file `scratch` and returned as that path, or returned as
    bytes when scratch is None. Raises MalformedError or PayloadTypeError.
    """
    kind = text = entries = None
    for key, start, end in doc.top():  # a duplicate key: the last one counts, as in json
        if key == "payloadType":
            kind = doc.load(start, end)
        elif key == "payload":
            text = (start, end) if doc.at(start) == 34 else None
        elif key == "signatures":
            entries = doc.load(start, end)
    if type(kind) is not str:
        doc.bad("'payloadType' missing or not a str")
    if text is None:
        doc.bad("'payload' missing or not a str")
    if type(entries) is not list:
        doc.bad("'signatures' missing or not a list")
    if kind != payload_type:
        t.fail("payloadType is '" + kind[:60] + "', expected '"
               + payload_type + "'", "PayloadTypeError")
    start, end = text[0] + 1, text[1] - 1
    size = _decoded_size(doc, start, end)
    h = hashlib.sha256(("DSSEv1 %d %s %d " % (len(kind.encode()), kind, size)).encode())
    if scratch is None:
        import io
        out = io.BytesIO()
    else:
        out = open(scratch, "wb")
    import gc
    # The decode makes a few KB of short-lived chunks per KB of payload and keeps none: no
    # collection every few KB (ota/run.py's threshold during a check) until the heap is full.
    old = gc.threshold()
    gc.threshold(-1)
    try:
        _decode(doc, start, end, h, out)
        payload = out.getvalue() if scratch is None else scratch
    finally:
        gc.threshold(old)
        out.close()
    return payload, _signatures(entries), h.digest()


def _pieces(doc, start, end):
    """The text of the JSON string whose content is doc[start:end], unescaped, in pieces."""
    pos = start
    while pos < end:
        esc = doc.find(b"\\", pos, end)
        stop = end if esc < 0 else esc
        while pos < stop:
            n = min(stop, pos + _TEXT)
            yield doc.read(pos, n)
            pos = n
        if esc < 0:
            return
        c = doc.at(esc + 1)
        if c == 117:  # \uXXXX: only ASCII can be base64; anything else fails the decode
            try:
                code = int(doc.read(esc + 2, esc + 6), 16)
            except ValueError:
                doc.bad()
            yield bytes((code if code < 128 else 0,))
            pos = esc + 6
        else:
            piece = _ESCAPES.get(c)
            if piece is None or esc + 2 > end:
                doc.bad()
            yield piece
            pos = esc + 2


def _decoded_size(doc, start, end):
    """Bytes the canonical base64 text decodes to (its padding counted off), or Malformed."""
    if doc.find(b"\\", start, end) < 0:  # no escape (every envelope we sign): no walk
        n = end - start
        tail = doc.read(max(start, end - 2), end)
    else:
        n = 0
        tail = b""
        for piece in _pieces(doc, start, end):
            n += len(piece)
            tail = (tail + piece)[-2:]
    if n % 4:
        doc.bad("bad base64")
    return n // 4 * 3 - tail.count(b"=")


def _decode(doc, start, end, h, out):
    """Decode the base64 text into h.update and out.write, a chunk at a time; the text must
    re-encode to itself (MicroPython's decoder skips junk) and pad only at its end."""
    acc = b""
    done = False
    pieces = _pieces(doc, start, end)
    while not done:
        try:
            acc += next(pieces)
            if len(acc) <= _TEXT:
                continue
            # whole quanta, but never all of acc: the last quantum (the only one that may pad)
            # is decoded once the text is known to end there
            cut = (len(acc) - 1) // 4 * 4
        except StopIteration:
            done = True
            cut = len(acc)
        text = acc[:cut]
        acc = acc[cut:]
        if not text:
            continue
        try:
            data = binascii.a2b_base64(text)
        except ValueError:
            doc.bad("bad base64")
        if (not done and len(data) * 4 != len(text) * 3) or binascii.b2a_base64(
                data, newline=False) != text:
            doc.bad("bad base64")
        h.update(data)
        out.write(data)


def _signatures(entries):
    sigs = []
    for i in range(len(entries)):
        entry = entries[i]
        where = "envelope signature " + str(i)
        if type(entry) is not dict:
            t.fail(where + ": not a JSON object")
        sig = t._b64decode(t._field(entry, "sig", str, where), where)
        if len(sig) != 64:
            t.fail(where + ": sig is " + str(len(sig)) + " bytes, not 64")
        sigs.append((t._field(entry, "keyid", str, where), sig))
    return sigs


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
        t.fail(role + ": " + str(len(valid)) + " valid signature(s) from trusted"
               " keys, threshold is " + str(threshold), "ThresholdError")
