"""The board's trust decisions: DSSE envelopes, root metadata and rotation, release manifests.

Bytes and a reference time in, a verified object out, or one TrustError subclass; no network
and no clock reads.  Same rules, order of checks and error names as the host's signing/
package (docs/manifest.md, docs/board-trust.md), so both refuse the same documents.

    root = load_root("/ota_id/trust.json")
    manifest = verify_manifest(src, root, board="esp32", installed_sequence=3, now=None)
    new_root = verify_rotation(root, src, now=None)

`src` is the envelope: bytes-like, or the path of a file holding it (the OTA client's way: the
envelope is never held in the heap, docs/board.md).  `now` None means the board has no
trustworthy time (no NTP yet): expiry is then not checked; signatures, board and sequence
still are.
"""

import binascii
import json

# Caps, as data: the OTA client may override them (the host's defaults are the contract).
MAX_ENVELOPE_BYTES = 12288
MAX_FILES = 128
MAX_PATH_LENGTH = 128  # bytes of UTF-8

ROOT_PAYLOAD_TYPE = "application/vnd.mpota.root+json"
MANIFEST_PAYLOAD_TYPE = "application/vnd.mpota.manifest+json"
KEYTYPE = "ecdsa-p256"


class TrustError(Exception):
    """Base of every verification failure: the data must not be trusted."""


def fail(why, kind="MalformedError"):
    """Raise the TrustError subclass named `kind` with the message `why`.

    The subclasses (the host's signing.errors tree) live in ota/errors.py, loaded only when one
    is raised: a verification that passes never holds their dozen classes in the heap.
    """
    from ota import errors
    if errors.TrustError is not TrustError:
        # errors.py was loaded against a copy of this module since unloaded: its classes
        # would escape every `except TrustError` of this copy. Load it against this one.
        import ota
        ota.forget("errors")
        from ota import errors
    raise getattr(errors, kind)(why)


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
            from ota import dsse
            digest, sigs = self._unchecked
            dsse.require_threshold(digest, sigs, self.keys, self.root_keyids,
                                   self.root_threshold, "root")
            self._unchecked = None

    def precompute(self):
        """Build comb tables (p256.KEY_TEETH wide) for the release keys; idempotent.

        Costs ~7 ms and 2^(w-1) * 64 bytes per key (w = 6: 2 KB); KEY_TEETH = 0 skips it
        (each verify then builds a throw-away table, ~8 ms).
        """
        from ota import p256  # imported where used: a client may unload it (signed_manifest)
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
        fail(where + ": '" + name + "' missing or not a " + kind.__name__)
    return value


def _b64decode(text, what):
    """Strict base64: MicroPython's decoder skips junk, so the text must re-encode to itself."""
    try:
        data = binascii.a2b_base64(text)
    except ValueError:
        data = None
    if data is None or binascii.b2a_base64(data, newline=False) != text.encode():
        fail(what + ": bad base64")
    return data


def _loads(buf, what):
    try:
        return json.loads(buf)
    except (ValueError, UnicodeError):
        fail(what + ": not JSON")


# -- root metadata -----------------------------------------------------------------------------

def _count(obj, name, where, minimum=0):
    value = obj.get(name)
    if type(value) is not int or value < minimum:
        fail(where + ": '" + name + "' missing or not an integer >= "
             + str(minimum))
    return value


def parse_root(src, precompute=False, defer_check=False):
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
    return rootmeta.parse_root(src, precompute, defer_check)


def load_root(path="/ota_id/trust.json", precompute=False, defer_check=False):
    """parse_root() of a file, which is size-checked (os.stat) before a byte of it is read.

    OSError when the file cannot be read; TooLargeError when it is over the envelope cap.
    """
    return parse_root(path, precompute, defer_check)


def verify_rotation(root, src, now=None):
    """Root N+1 from trusted root N: version N+1, both root thresholds met, unexpired.

    The old root's threshold is checked before the new payload is parsed, so unvouched JSON
    is never interpreted.  Expiry is checked only when now is not None.  Raises
    TooLargeError, MalformedError, PayloadTypeError, ThresholdError, RotationError or
    ExpiredError.  Keys kept across the rotation keep their comb tables.
    """
    from ota import rootmeta
    return rootmeta.verify_rotation(root, src, now)


# -- release manifests ------------------------------------------------------------------------

def verify_manifest(src, root, board=None, installed_sequence=None, now=None, files=None,
                    scratch=None, app=None):
    """The manifest, once signed by a threshold of root's release keys and every rule passed.

    src: the envelope, bytes-like or a file path (at most MAX_ENVELOPE_BYTES).  app None
    skips the app check, board None the board check, installed_sequence None the sequence
    check, now None the expiry check (no trustworthy time).  Order of checks, as on the host:
    size, envelope, payloadType, release threshold, manifest fields, app, board, sequence,
    expiry.  Raises TooLargeError, MalformedError, PayloadTypeError, ThresholdError,
    WrongAppError, WrongBoardError, RollbackError, SameSequenceError or ExpiredError.

    files None: the payload as parsed, a dict with its `files` list.  files a callable: it is
    called with each file entry (a dict) as the entries are checked, and the dict returned
    holds the other fields only; the caller must drop what it got when this raises.
    scratch: a file for the decoded payload (None: the heap).  It is signed_manifest() then
    accept_manifest(): a caller short of heap calls the two itself and lets go of the root
    (and with it ota.p256) in between.
    """
    payload = signed_manifest(src, root, scratch)
    src = root = None
    return accept_manifest(payload, board, installed_sequence, now, files, app)


def signed_manifest(src, root, scratch=None):
    """First half of verify_manifest: the payload, once a threshold of root's release keys
    signed it (size, envelope, payloadType, release threshold): bytes, or the path `scratch`
    it was written to.  Raises TooLargeError, MalformedError, PayloadTypeError or
    ThresholdError.
    """
    root.check()  # first: the root's own signatures, before the envelope reader loads
    from ota import dsse, jscan
    doc = jscan.open_doc(src, "envelope")
    try:
        payload, sigs, digest = dsse.read(doc, MANIFEST_PAYLOAD_TYPE, scratch)
    finally:
        doc.f.close()
    doc = src = None
    root.precompute()
    dsse.require_threshold(digest, sigs, root.keys, root.release_keyids,
                           root.release_threshold, "release")
    return payload


def check_path(path):
    """Raise MalformedError unless path is relative, '/'-separated and stays inside the app."""
    from ota import rules
    rules.check_path(path)


def check_manifest(doc):
    """Raise MalformedError unless doc has the manifest's documented fields and shapes.

    Unknown top-level fields are ignored (room for later versions), as on the host.
    """
    from ota import rules
    rules.check_manifest(doc)


def accept_manifest(payload, board=None, installed_sequence=None, now=None, files=None,
                    app=None):
    """Second half of verify_manifest, for a payload signed_manifest() returned and nothing
    else: manifest fields, paths, app, board, sequence, expiry (files: as verify_manifest).

    Raises MalformedError, WrongAppError, WrongBoardError, RollbackError, SameSequenceError
    or ExpiredError.
    """
    from ota import rules
    return rules.accept_manifest(payload, board, installed_sequence, now, files, app)
