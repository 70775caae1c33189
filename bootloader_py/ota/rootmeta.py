# Root metadata: parsing the provisioned root and verifying rotations (docs/board-trust.md).
#
# The API is trust.parse_root / load_root / verify_rotation; this module holds their code so
# that a client can unload it once the root is loaded: it is not needed while a manifest is
# verified, the heap's peak.
import binascii
import hashlib

from ota import dsse, p256
from ota import trust as t

# DER SubjectPublicKeyInfo header of a P-256 key; a keyid is sha256(header + 65-byte point).
_SPKI_PREFIX = b"0Y0\x13\x06\x07*\x86H\xce=\x02\x01\x06\x08*\x86H\xce=\x03\x01\x07\x03B\x00"


def _public_key(kid, entry, old_keys):
    where = "root: key " + kid[:16]
    if type(entry) is not dict or entry.get("keytype") != t.KEYTYPE:
        t.fail(where + ": keytype must be '" + t.KEYTYPE + "'")
    point = t._b64decode(t._field(entry, "public", str, where), where)
    # Without this one key could sit under two keyids and count twice towards a threshold.
    if binascii.hexlify(hashlib.sha256(_SPKI_PREFIX + point).digest()).decode() != kid:
        t.fail(where + ": keyid is not the SHA-256 of the key's SPKI")
    old = old_keys.get(kid) if old_keys else None
    if old is not None:
        return old  # same keyid, same point: keep its comb table across a rotation
    try:
        return p256.Key(point, 0)
    except ValueError:
        t.fail(where + ": not an uncompressed point on P-256")


def _role(name, entry, keys):
    where = "root: role '" + name + "'"
    if type(entry) is not dict:
        t.fail(where + ": missing or not an object")
    keyids = entry.get("keyids")
    if type(keyids) is not list:
        t.fail(where + ": 'keyids' must be a list of strings")
    seen = []
    for kid in keyids:
        if type(kid) is not str:
            t.fail(where + ": 'keyids' must be a list of strings")
        if kid in seen:
            t.fail(where + ": duplicate keyid")
        seen.append(kid)
    for kid in keyids:
        if kid not in keys:
            t.fail(where + ": keyid " + kid[:16] + " is not in 'keys'")
    threshold = entry.get("threshold")
    if type(threshold) is not int or not 1 <= threshold <= len(keyids):
        t.fail(where + ": threshold must be an integer in 1.."
               + str(len(keyids)))
    return tuple(keyids), threshold


def _parse_root(payload, old_keys=None):
    doc = t._loads(payload, "root")
    if type(doc) is not dict or doc.get("_type") != "root":
        t.fail("root: not a root document (_type must be 'root')")
    version = t._count(doc, "version", "root", 1)
    expires = t._count(doc, "expires", "root")
    raw = doc.get("keys")
    if type(raw) is not dict:
        t.fail("root: 'keys' missing or not an object")
    keys = {}
    for kid in raw:
        if type(kid) is not str:
            t.fail("root: key ids must be strings")
        keys[kid] = _public_key(kid, raw[kid], old_keys)
    roles = doc.get("roles")
    if type(roles) is not dict:
        t.fail("root: 'roles' missing or not an object")
    root_ids, root_t = _role("root", roles.get("root"), keys)
    rel_ids, rel_t = _role("release", roles.get("release"), keys)
    root = t.Root(version, expires, keys, root_ids, root_t, rel_ids, rel_t)
    # As it is (None for most roots): decoded and checked only when a rotation takes it
    # (verify_rotation), then written to the CA file (client.rotate_root).
    root.server_ca = doc.get("server_ca")
    return root


def _read(src):
    """(payload bytes, sigs, digest) of a root envelope: bytes-like or a file path."""
    from ota import jscan
    doc = jscan.open_doc(src, "envelope")
    try:
        return dsse.read(doc, t.ROOT_PAYLOAD_TYPE)
    finally:
        doc.f.close()


def parse_root(src, precompute=False, defer_check=False):
    """trust.parse_root (documented there)."""
    payload, sigs, digest = _read(src)
    root = _parse_root(payload)
    root._unchecked = (digest, sigs)
    if not defer_check:
        root.check()
    if precompute:
        root.precompute()
    return root


def verify_rotation(root, src, now=None):
    """trust.verify_rotation (documented there)."""
    root.check()
    payload, sigs, digest = _read(src)
    dsse.require_threshold(digest, sigs, root.keys, root.root_keyids, root.root_threshold,
                           "root (trusted)")
    new = _parse_root(payload, root.keys)
    if new.server_ca is not None:
        from ota import tlsca
        new.server_ca = tlsca.from_root(new.server_ca)
    if new.version != root.version + 1:
        t.fail("root version " + str(new.version) + " does not follow trusted "
               "version " + str(root.version), "RotationError")
    dsse.require_threshold(digest, sigs, new.keys, new.root_keyids, new.root_threshold,
                           "root (new)")
    if now is not None and new.expires <= now:
        t.fail("root version " + str(new.version) + " expired at "
               + str(new.expires) + " (now " + str(now) + ")", "ExpiredError")
    return new
