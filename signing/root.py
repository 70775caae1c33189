"""Root metadata: the trust anchor. Which keys may sign roots and releases, until when.

Model: python-tuf's root update. Root N+1 is accepted only when it is version N+1 and is
signed by a threshold of root N's root keys *and* of its own, so neither a stolen old key set
nor a stolen new key alone can move the anchor.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from signing import dsse
from signing import keys as keymod
from signing.errors import ExpiredError, MalformedError, RotationError
from signing.limits import DEFAULT_LIMITS, Limits

ROOT_PAYLOAD_TYPE = "application/vnd.mpota.root+json"
KEYTYPE = "ecdsa-p256"
ROLES = ("root", "release")
# The CA certificates boards trust for the server (`server_ca`, DER): the same cap as the
# board's CA file (bootloader_py/ota/http.py _MAX_CA), at most this many (old and new, and
# room for one more during a rotation).
MAX_SERVER_CA_BYTES = 4096
MAX_SERVER_CAS = 4


@dataclass(frozen=True)
class Role:
    """Keyids allowed to sign for a role and how many distinct ones must."""

    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class RootMetadata:
    """A verified (or about to be signed) root document."""

    version: int
    expires: int
    keys: Mapping[str, keymod.PublicKey] = field(repr=False)
    root: Role
    release: Role
    # CA certificates (DER) boards verify the server against; None: the root says nothing,
    # boards keep the CA they have (docs/operations.md, Moving the fleet to a new CA).
    server_ca: tuple[bytes, ...] | None = field(default=None, repr=False)

    def role_keys(self, role: Role) -> dict[str, keymod.PublicKey]:
        """The public keys of a role, by keyid."""
        return {kid: self.keys[kid] for kid in role.keyids}

    def to_payload(self) -> bytes:
        """The JSON payload bytes as docs/manifest.md defines them."""
        doc = {
            "_type": "root",
            "version": self.version,
            "expires": self.expires,
            "keys": {
                kid: {"keytype": KEYTYPE, "public": dsse.b64encode(keymod.public_point(key))}
                for kid, key in self.keys.items()
            },
            "roles": {
                name: {"keyids": list(role.keyids), "threshold": role.threshold}
                for name, role in (("root", self.root), ("release", self.release))
            },
        }
        if self.server_ca is not None:
            doc["server_ca"] = [dsse.b64encode(der) for der in self.server_ca]
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_payload(cls, payload: bytes) -> RootMetadata:
        """Parse and validate a root payload; raises MalformedError naming the field."""
        doc = dsse.loads_json(payload, "root")
        if not isinstance(doc, dict) or doc.get("_type") != "root":
            raise MalformedError("root: not a root document (_type must be 'root')")
        version = _int(doc, "version", minimum=1)
        expires = _int(doc, "expires", minimum=0)
        raw_keys = doc.get("keys")
        if not isinstance(raw_keys, dict):
            raise MalformedError("root: 'keys' missing or not an object")
        keys = {kid: _public_key(kid, entry) for kid, entry in raw_keys.items()}
        roles = doc.get("roles")
        if not isinstance(roles, dict):
            raise MalformedError("root: 'roles' missing or not an object")
        root, release = (_role(name, roles.get(name), keys) for name in ROLES)
        server_ca = _server_ca(doc["server_ca"]) if "server_ca" in doc else None
        return cls(version=version, expires=expires, keys=keys, root=root, release=release,
                   server_ca=server_ca)


def _server_ca(value: Any) -> tuple[bytes, ...]:
    """The `server_ca` list: 1 to MAX_SERVER_CAS base64 DER CA certificates, at most
    MAX_SERVER_CA_BYTES in all; MalformedError naming the entry otherwise."""
    from cryptography import x509

    if not isinstance(value, list) or not 1 <= len(value) <= MAX_SERVER_CAS:
        raise MalformedError(f"root: 'server_ca' must be a list of 1 to {MAX_SERVER_CAS} "
                             "base64 DER certificates")
    out = []
    for index, entry in enumerate(value):
        where = f"root: server_ca[{index}]"
        if not isinstance(entry, str):
            raise MalformedError(f"{where}: not a string")
        der = dsse.b64decode(entry, where)
        try:
            cert = x509.load_der_x509_certificate(der)
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except (ValueError, x509.ExtensionNotFound) as err:
            raise MalformedError(f"{where}: not a DER X.509 CA certificate ({err})") from None
        if not constraints.ca:
            raise MalformedError(f"{where}: {cert.subject.rfc4514_string()} is not a CA")
        out.append(der)
    if sum(map(len, out)) > MAX_SERVER_CA_BYTES:
        raise MalformedError(f"root: 'server_ca' holds {sum(map(len, out))} bytes, over "
                             f"{MAX_SERVER_CA_BYTES}")
    return tuple(out)


def _int(doc: dict[str, Any], name: str, *, minimum: int) -> int:
    value = doc.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise MalformedError(f"root: {name!r} missing or not an integer >= {minimum}")
    return value


def _public_key(kid: str, entry: Any) -> keymod.PublicKey:
    where = f"root: key {kid[:16]}"
    if not isinstance(entry, dict) or entry.get("keytype") != KEYTYPE:
        raise MalformedError(f"{where}: keytype must be {KEYTYPE!r}")
    public = entry.get("public")
    if not isinstance(public, str):
        raise MalformedError(f"{where}: 'public' missing or not a string")
    point = dsse.b64decode(public, where)
    key = keymod.public_key_from_point(point)
    # Without this one key could be listed under two keyids and count twice for a threshold.
    if keymod.keyid_of_point(point) != kid:
        raise MalformedError(f"{where}: keyid is not the SHA-256 of the key's SPKI")
    return key


def _role(name: str, entry: Any, keys: Mapping[str, keymod.PublicKey]) -> Role:
    where = f"root: role {name!r}"
    if not isinstance(entry, dict):
        raise MalformedError(f"{where}: missing or not an object")
    keyids = entry.get("keyids")
    threshold = entry.get("threshold")
    if not isinstance(keyids, list) or not all(isinstance(k, str) for k in keyids):
        raise MalformedError(f"{where}: 'keyids' must be a list of strings")
    if len(set(keyids)) != len(keyids):
        raise MalformedError(f"{where}: duplicate keyid")
    unknown = [k for k in keyids if k not in keys]
    if unknown:
        raise MalformedError(f"{where}: keyid {unknown[0][:16]} is not in 'keys'")
    if (not isinstance(threshold, int) or isinstance(threshold, bool)
            or not 1 <= threshold <= len(keyids)):
        raise MalformedError(f"{where}: threshold must be an integer in 1..{len(keyids)}")
    return Role(tuple(keyids), threshold)


def new_root(
    *,
    version: int,
    expires: int,
    root_keys: Sequence[keymod.PublicKey | keymod.PrivateKey],
    release_keys: Sequence[keymod.PublicKey | keymod.PrivateKey],
    root_threshold: int = 1,
    release_threshold: int = 1,
    server_ca: Sequence[bytes] | None = None,
) -> RootMetadata:
    """Root metadata for the given public keys (private keys stand for their public half).

    Raises MalformedError when the result would not pass `RootMetadata.from_payload`.
    """
    keys: dict[str, keymod.PublicKey] = {}
    for key in (*root_keys, *release_keys):
        public = key.public_key() if isinstance(key, keymod.PrivateKey) else key
        keys[keymod.keyid(public)] = public
    root = RootMetadata(
        version=version,
        expires=expires,
        keys=keys,
        root=Role(tuple(dict.fromkeys(keymod.keyid(k) for k in root_keys)), root_threshold),
        release=Role(tuple(dict.fromkeys(keymod.keyid(k) for k in release_keys)),
                     release_threshold),
        server_ca=tuple(server_ca) if server_ca is not None else None,
    )
    return RootMetadata.from_payload(root.to_payload())


def sign_root(root: RootMetadata, keys: Iterable[keymod.PrivateKey]) -> bytes:
    """The root's envelope bytes signed by `keys` (for a rotation: old and new root keys)."""
    return dsse.envelope_bytes(dsse.sign_envelope(ROOT_PAYLOAD_TYPE, root.to_payload(), keys))


def _check_expiry(root: RootMetadata, now: int) -> None:
    if root.expires <= now:
        raise ExpiredError(f"root version {root.version} expired at {root.expires} (now {now})")


def verify_root_signatures(
    envelope_bytes: bytes, limits: Limits = DEFAULT_LIMITS
) -> RootMetadata:
    """A self-signed root (its own root threshold met), without checking expiry.

    For a signer's own tools, e.g. rotating away from an expired root. Raises TrustError.
    """
    envelope = dsse.parse_envelope(envelope_bytes, ROOT_PAYLOAD_TYPE, limits)
    root = RootMetadata.from_payload(envelope.payload)
    dsse.require_threshold(envelope, root.role_keys(root.root), root.root.threshold, "root")
    return root


def verify_root(
    envelope_bytes: bytes, *, now: int, limits: Limits = DEFAULT_LIMITS
) -> RootMetadata:
    """Trust a root given explicitly (provisioning, `--root`): self-signed and not expired.

    Raises TooLargeError, MalformedError, PayloadTypeError, ThresholdError or ExpiredError.
    """
    root = verify_root_signatures(envelope_bytes, limits)
    _check_expiry(root, now)
    return root


def _rotate(trusted: RootMetadata, envelope_bytes: bytes, limits: Limits) -> RootMetadata:
    envelope = dsse.parse_envelope(envelope_bytes, ROOT_PAYLOAD_TYPE, limits)
    # Old keys first, so untrusted JSON is parsed only once the old root vouched for it.
    dsse.require_threshold(
        envelope, trusted.role_keys(trusted.root), trusted.root.threshold, "root (trusted)"
    )
    new = RootMetadata.from_payload(envelope.payload)
    if new.version != trusted.version + 1:
        raise RotationError(
            f"root version {new.version} does not follow trusted version {trusted.version}"
        )
    dsse.require_threshold(envelope, new.role_keys(new.root), new.root.threshold, "root (new)")
    return new


def verify_rotation(
    trusted: RootMetadata, new_envelope_bytes: bytes, *, now: int,
    limits: Limits = DEFAULT_LIMITS,
) -> RootMetadata:
    """Accept root N+1 from trusted root N: both thresholds met, version N+1, not expired.

    Raises TooLargeError, MalformedError, PayloadTypeError, ThresholdError, RotationError or
    ExpiredError.
    """
    new = _rotate(trusted, new_envelope_bytes, limits)
    _check_expiry(new, now)
    return new


def verify_root_chain(
    trusted: RootMetadata, envelopes: Iterable[bytes], *, now: int,
    limits: Limits = DEFAULT_LIMITS,
) -> RootMetadata:
    """Walk rotations N+1, N+2, ... from `trusted`; only the final root must be unexpired.

    Intermediate roots may have expired while a board was offline; each still has to be
    signed by its predecessor's threshold and its own. Raises the errors of verify_rotation.
    """
    current = trusted
    for envelope_bytes in envelopes:
        current = _rotate(current, envelope_bytes, limits)
    _check_expiry(current, now)
    return current
