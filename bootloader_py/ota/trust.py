"""The board's trust decisions: DSSE envelopes, root metadata and rotation, release manifests.

Bytes and a reference time in, a verified object out, or one TrustError subclass; no network
and no clock reads.  Same rules, order of checks and error names as the host's signing/
package (docs/manifest.md, docs/board-trust.md), so both refuse exactly the same documents.

    root = load_root("/ota/trust.json")
    manifest = verify_manifest(buf, root, board="esp32", installed_sequence=3, now=None)
    new_root = verify_rotation(root, buf, now=None)

`now` None means the board has no trustworthy time (no NTP yet): expiry is then not checked;
signatures, board and sequence still are.
"""

import binascii
import hashlib
import json
import re

from ota import p256

# Caps, as data: the OTA client may override them (the host's defaults are the contract).
MAX_ENVELOPE_BYTES = 12288
MAX_FILES = 128
MAX_PATH_LENGTH = 64

ROOT_PAYLOAD_TYPE = "application/vnd.mpota.root+json"
MANIFEST_PAYLOAD_TYPE = "application/vnd.mpota.manifest+json"
KEYTYPE = "ecdsa-p256"
_B64_CHUNK = 768  # bytes re-encoded at a time when checking base64 is canonical
_B64_TEXT = 1024  # base64 characters decoded at a time (a multiple of 4)
_SPACE = (b" ", b"\t", b"\n", b"\r")

_SEMVER = re.compile(
    "(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)"
    "(-[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?(\\+[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?$"
)
_MP_VERSION = re.compile("[0-9]+\\.[0-9]+(\\.[0-9]+)?$")
_MODULE = re.compile("[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME = re.compile("[A-Za-z0-9][A-Za-z0-9._-]*$")


class TrustError(Exception):
    """Base of every verification failure: the data must not be trusted."""


class MalformedError(TrustError):
    """Not JSON, wrong types, missing fields, bad base64, bad path, sig not 64 bytes..."""


class PayloadTypeError(TrustError):
    """The envelope's payloadType is not the expected one."""


class TooLargeError(TrustError):
    """The envelope is over the size cap (checked before parsing)."""


class ThresholdError(TrustError):
    """Fewer valid signatures from distinct trusted keyids than the role's threshold."""


class ExpiredError(TrustError):
    """expires <= now."""


class RollbackError(TrustError):
    """The manifest's sequence is lower than the installed one."""


class SameSequenceError(RollbackError):
    """The manifest's sequence equals the installed one: the normal "nothing new"."""


class WrongBoardError(TrustError):
    """This board is not among the manifest's boards."""


class RotationError(TrustError):
    """A new root's version is not exactly the trusted version + 1."""


class FileMismatchError(TrustError):
    """A file's bytes do not match its manifest entry."""


class HashMismatchError(FileMismatchError):
    """The SHA-256 of the bytes differs from the manifest's."""


class LengthMismatchError(FileMismatchError):
    """The bytes are shorter or longer than the manifest's size."""


class Root:
    """Verified root metadata: keys by keyid (p256.Key) and the two roles."""

    def __init__(self, version, expires, keys, root_keyids, root_threshold, release_keyids,
                 release_threshold):
        self.version = version
        self.expires = expires
        self.keys = keys
        self.root_keyids = root_keyids
        self.root_threshold = root_threshold
        self.release_keyids = release_keyids
        self.release_threshold = release_threshold
        self._unchecked = None  # (digest, sigs) of a self-signature check still to do

    def check(self):
        """Run a deferred self-signature check (see parse_root); ThresholdError if it fails.

        Every trust decision made with this root calls it first, so an unchecked root is only
        ever used for what needs no trust (e.g. reporting its version in a check-in).
        """
        if self._unchecked is not None:
            digest, sigs = self._unchecked
            _require_threshold(digest, sigs, self.keys, self.root_keyids, self.root_threshold,
                               "root")
            self._unchecked = None

    def precompute(self):
        """Build comb tables (p256.KEY_TEETH wide) for the release keys; idempotent.

        Costs ~7 ms and 2^(w-1) * 64 bytes per key (w = 6: 2 KB); KEY_TEETH = 0 skips it
        (each verify then builds a throw-away table, ~8 ms).
        """
        teeth = p256.KEY_TEETH
        if not teeth:
            return
        for kid in self.release_keyids:
            key = self.keys[kid]
            if key.comb is None or key.comb.teeth != teeth:
                key.precompute(teeth)


# -- envelopes ---------------------------------------------------------------------------------

def _field(obj, name, kind, where):
    value = obj.get(name)
    # type() and not isinstance(): True must not pass for an int.
    if type(value) is not kind:
        raise MalformedError(where + ": '" + name + "' missing or not a " + kind.__name__)
    return value


def _b64decode(text, what):
    """Strict base64: MicroPython's decoder skips junk, so the text must re-encode to itself."""
    data = _b64_strict(text)
    if data is None:
        raise MalformedError(what + ": bad base64")
    return data


def _b64_strict(text):
    """The bytes of canonical base64 `text` (str, bytes or memoryview), else None."""
    try:
        data = binascii.a2b_base64(text)
    except ValueError:
        return None
    # Compare hashes of the text and of its re-encoding, chunk by chunk, to avoid a second
    # full-size copy of a payload on a small heap.
    again = hashlib.sha256()
    view = memoryview(data)
    for i in range(0, len(data), _B64_CHUNK):
        again.update(binascii.b2a_base64(view[i:i + _B64_CHUNK], newline=False))
    if again.digest() != hashlib.sha256(text).digest():
        return None
    return data


def _loads(buf, what):
    try:
        return json.loads(buf)
    except (ValueError, UnicodeError):
        raise MalformedError(what + ": not JSON")


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
        for i in range(0, len(buf), _B64_CHUNK):
            chunk = bytes(buf[i:i + _B64_CHUNK])
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
        raise MalformedError("envelope: not JSON (cut short: brackets left open)")


def _read_envelope(buf, payload_type, consume=False):
    """(payload bytes, [(keyid, sig64)], PAE digest); size cap first, then JSON and shape."""
    if len(buf) > MAX_ENVELOPE_BYTES:
        raise TooLargeError("envelope is " + str(len(buf)) + " bytes, over the cap of "
                            + str(MAX_ENVELOPE_BYTES))
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
        kind = _field(doc, "payloadType", str, "envelope")
        entries = _field(doc, "signatures", list, "envelope")
    except MalformedError:
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
    doc = _loads(buf, "envelope")
    if type(doc) is not dict:
        raise MalformedError("envelope: not a JSON object")
    _check_closed(buf, doc)
    kind = _field(doc, "payloadType", str, "envelope")
    text = _field(doc, "payload", str, "envelope")
    entries = _field(doc, "signatures", list, "envelope")
    if kind != payload_type:
        raise PayloadTypeError("payloadType is '" + kind[:60] + "', expected '"
                               + payload_type + "'")
    doc = None
    payload = _b64decode(text, "envelope payload")
    text = None
    return payload, _signatures(entries), _pae_digest(kind, payload)


def _signatures(entries):
    sigs = []
    for i in range(len(entries)):
        entry = entries[i]
        where = "envelope signature " + str(i)
        if type(entry) is not dict:
            raise MalformedError(where + ": not a JSON object")
        sig = _b64decode(_field(entry, "sig", str, where), where)
        if len(sig) != 64:
            raise MalformedError(where + ": sig is " + str(len(sig)) + " bytes, not 64")
        sigs.append((_field(entry, "keyid", str, where), sig))
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


def _require_threshold(digest, sigs, keys, keyids, threshold, role):
    """Raise ThresholdError unless `threshold` distinct keyids of the role signed the digest.

    Unknown keyids are ignored, a keyid counts once, and checking stops once the threshold
    is met (the outcome is the same as counting all).
    """
    valid = []
    for kid, sig in sigs:
        if len(valid) >= threshold:
            return
        if kid in valid or kid not in keyids:
            continue
        if p256.verify(keys[kid], digest, sig):
            valid.append(kid)
    if len(valid) < threshold:
        raise ThresholdError(role + ": " + str(len(valid)) + " valid signature(s) from trusted"
                             " keys, threshold is " + str(threshold))


# -- root metadata -----------------------------------------------------------------------------

def _count(obj, name, where, minimum=0):
    value = obj.get(name)
    if type(value) is not int or value < minimum:
        raise MalformedError(where + ": '" + name + "' missing or not an integer >= "
                             + str(minimum))
    return value


def parse_root(buf, precompute=False, defer_check=False):
    """A self-signed root envelope (its own root threshold met) as a Root; expiry unchecked.

    What the board was provisioned with is trusted as given, even past its expiry (the next
    rotation replaces it).  Raises TooLargeError, MalformedError, PayloadTypeError or
    ThresholdError.

    precompute: build the release keys' comb tables now (~7 ms) instead of at the first
    verify_manifest.  defer_check: parse and validate now, but check the root's own signatures
    (~8 ms per signature, no table for root keys) only at the first verify_manifest or
    verify_rotation (Root.check), so a boot with nothing new pays no ECDSA at all.
    """
    from ota import rootmeta  # root parsing lives apart: a client unloads it after use
    return rootmeta.parse_root(buf, precompute, defer_check)


def load_root(path="/ota/trust.json", precompute=False, defer_check=False):
    """parse_root() of a file; the file is size-checked before it is read into one buffer.

    OSError when the file cannot be read; TooLargeError when it is over the envelope cap.
    """
    from ota import rootmeta
    return rootmeta.load_root(path, precompute, defer_check)


def verify_rotation(root, buf, now=None):
    """Root N+1 from trusted root N: version N+1, both root thresholds met, unexpired.

    The old root's threshold is checked before the new payload is parsed, so unvouched JSON
    is never interpreted.  Expiry is checked only when now is not None.  Raises
    TooLargeError, MalformedError, PayloadTypeError, ThresholdError, RotationError or
    ExpiredError.  Keys kept across the rotation keep their comb tables.
    """
    from ota import rootmeta
    return rootmeta.verify_rotation(root, buf, now)


# -- release manifests ------------------------------------------------------------------------

def check_path(path):
    """Raise MalformedError unless path is relative, '/'-separated and stays inside the app."""
    if not path or len(path) > MAX_PATH_LENGTH:
        raise MalformedError("file path '" + path[:80] + "': length must be 1.."
                             + str(MAX_PATH_LENGTH))
    if path[0] == "/" or "\\" in path:
        raise MalformedError("file path '" + path + "': must be relative and '/'-separated")
    if min(path) < " " or "\x7f" in path:
        raise MalformedError("file path: control character")
    for segment in path.split("/"):
        if segment == "" or segment == "." or segment == "..":
            raise MalformedError("file path '" + path + "': empty, '.' or '..' segment")


def _matching(obj, name, pattern, what, where="manifest"):
    value = _field(obj, name, str, where)
    if not pattern.match(value):
        raise MalformedError(where + ": '" + name + "' is not " + what)
    return value


def _is_hex64(value):
    # A round trip through binascii (C) is ~7x faster than a regex here, and strict:
    # unhexlify's leniency shows up as a difference, hexlify writes lowercase only.
    if type(value) is not str or len(value) != 64:
        return False
    try:
        return binascii.hexlify(binascii.unhexlify(value)) == value.encode()
    except ValueError:
        return False


def _bad_file(where, problem):
    raise MalformedError("manifest file " + where + ": " + problem)


def _check_file(entry, index, seen):
    # One tight function per entry: up to 128 of them, so messages are built only on failure.
    if type(entry) is not dict:
        _bad_file(str(index), "not a JSON object")
    path = entry.get("path")
    if type(path) is not str:
        _bad_file(str(index), "'path' missing or not a str")
    check_path(path)
    sha = entry.get("sha256")
    blob = entry.get("blob")
    size = entry.get("size")
    transfer = entry.get("transfer_size")
    encoding = entry.get("encoding")
    if not _is_hex64(sha) or (blob is not sha and blob != sha and not _is_hex64(blob)):
        _bad_file("'" + path + "'", "'sha256' and 'blob' must be 64 lowercase hex digits")
    if type(size) is not int or size < 0 or type(transfer) is not int or transfer < 0:
        _bad_file("'" + path + "'", "'size' and 'transfer_size' must be integers >= 0")
    if encoding == "plain":
        if blob != sha or transfer != size:
            _bad_file("'" + path + "'", "plain file must have blob == sha256 and "
                      "transfer_size == size")
    elif encoding != "deflate" or type(encoding) is not str:
        _bad_file("'" + path + "'", "encoding must be one of plain, deflate")
    if path in seen:
        raise MalformedError("manifest: duplicate file path '" + path + "'")
    seen[path] = 1


def check_manifest(doc):
    """Raise MalformedError unless doc has the manifest's documented fields and shapes.

    Unknown top-level fields are ignored (room for later versions), as on the host.
    """
    if type(doc) is not dict or doc.get("_type") != "manifest":
        raise MalformedError("manifest: not a manifest document (_type must be 'manifest')")
    app = _matching(doc, "app", _NAME, "an app name ([A-Za-z0-9._-], 1..64)")
    if len(app) > 64:
        raise MalformedError("manifest: 'app' is not an app name ([A-Za-z0-9._-], 1..64)")
    _matching(doc, "version", _SEMVER, "a semantic version (MAJOR.MINOR.PATCH)")
    _count(doc, "sequence", "manifest")
    _count(doc, "created", "manifest")
    _count(doc, "expires", "manifest")
    boards = _field(doc, "boards", list, "manifest")
    if not boards:
        raise MalformedError("manifest: 'boards' must be a non-empty list of names")
    for b in boards:
        if type(b) is not str or not b:
            raise MalformedError("manifest: 'boards' must be a non-empty list of names")
    _matching(doc, "min_micropython", _MP_VERSION, "a version like 1.20.0")
    _matching(doc, "entry", _MODULE, "a module name")
    files = _field(doc, "files", list, "manifest")
    if len(files) > MAX_FILES:
        raise MalformedError("manifest: " + str(len(files)) + " files, more than the cap of "
                             + str(MAX_FILES))
    seen = {}
    for i in range(len(files)):
        _check_file(files[i], i, seen)


def verify_manifest(buf, root, board=None, installed_sequence=None, now=None, consume=False):
    """The manifest payload as a dict, once signed by a threshold of root's release keys.

    buf: the envelope (bytes, bytearray or memoryview; at most MAX_ENVELOPE_BYTES).
    board None skips the board check, installed_sequence None the sequence check, now None
    the expiry check (no trustworthy time).  consume=True lets a bytearray buf be overwritten
    with the decoded payload (one payload-sized block less at the peak; the caller must not
    use buf afterwards).  Order of checks, as on the host: size, envelope,
    payloadType, release threshold, manifest fields, board, sequence, expiry.
    Raises TooLargeError, MalformedError, PayloadTypeError, ThresholdError, WrongBoardError,
    RollbackError, SameSequenceError or ExpiredError.
    """
    root.check()
    payload, sigs, digest = _read_envelope(buf, MANIFEST_PAYLOAD_TYPE, consume)
    buf = None
    root.precompute()
    _require_threshold(digest, sigs, root.keys, root.release_keyids, root.release_threshold,
                       "release")
    sigs = None
    doc = _loads(payload, "manifest")
    payload = None
    check_manifest(doc)
    if board is not None and board not in doc["boards"]:
        raise WrongBoardError("board '" + board + "' is not in the manifest's boards")
    seq = doc["sequence"]
    if installed_sequence is not None:
        if seq == installed_sequence:
            raise SameSequenceError("sequence " + str(seq) + " is already installed")
        if seq < installed_sequence:
            raise RollbackError("sequence " + str(seq) + " is lower than installed "
                                + str(installed_sequence))
    if now is not None and doc["expires"] <= now:
        raise ExpiredError("manifest expired at " + str(doc["expires"]) + " (now " + str(now)
                           + ")")
    return doc
