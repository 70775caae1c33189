"""Root metadata's `server_ca`: the CAs boards trust for the server, moved by a verified root
rotation (docs/manifest.md, Root metadata; docs/operations.md, Moving the fleet to a new CA)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from signing import dsse
from signing.errors import MalformedError
from signing.keys import generate_private_key
from signing.root import (
    RootMetadata,
    new_root,
    sign_root,
    verify_root_signatures,
    verify_rotation,
)
from tools.cli import main
from tools.tls_ca import issue_server, new_ca


def _der(cert_owner: object) -> bytes:
    return cert_owner.cert.public_bytes(serialization.Encoding.DER)  # type: ignore[attr-defined]


def _payload(**server_ca: object) -> bytes:
    key = generate_private_key()
    root = new_root(version=1, expires=int(time.time()) + 3600, root_keys=[key],
                    release_keys=[key])
    doc = json.loads(root.to_payload())
    doc.update(server_ca)
    return json.dumps(doc).encode()


def test_server_ca_round_trips_and_is_absent_unless_given() -> None:
    key = generate_private_key()
    plain = new_root(version=1, expires=1, root_keys=[key], release_keys=[key])
    assert plain.server_ca is None and b"server_ca" not in plain.to_payload()
    cas = (_der(new_ca("a")), _der(new_ca("b")))
    with_cas = new_root(version=1, expires=1, root_keys=[key], release_keys=[key],
                        server_ca=cas)
    assert RootMetadata.from_payload(with_cas.to_payload()).server_ca == cas


@pytest.mark.parametrize(("value", "message"), [
    ("x", "must be a list of 1 to 4"),
    ([], "must be a list of 1 to 4"),
    (["x"] * 5, "must be a list of 1 to 4"),
    ([7], r"server_ca\[0\]: not a string"),
    (["!!"], r"server_ca\[0\]"),
    ([dsse.b64encode(b"\x30\x03\x02\x01\x01")], "not a DER X.509 CA certificate"),
    ([dsse.b64encode(_der(issue_server(new_ca("c"), ["127.0.0.1"])))], "is not a CA"),
    ([dsse.b64encode(_der(new_ca("d")) + b"\0" * 4096)], r"server_ca\[0\]"),
])
def test_a_malformed_server_ca_is_refused_naming_the_entry(value: object, message: str) -> None:
    with pytest.raises(MalformedError, match=message):
        RootMetadata.from_payload(_payload(server_ca=value))


def test_keys_rotate_sets_and_then_keeps_the_server_cas(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    keys = tmp_path / "keys"
    assert main(["keys", "init", str(keys)]) == 0
    ca_a, ca_b = new_ca("a"), new_ca("b")
    (tmp_path / "a.pem").write_bytes(ca_a.cert_pem)
    (tmp_path / "b.der").write_bytes(_der(ca_b))
    before = (keys / "root.json").read_bytes()
    assert main(["keys", "rotate", str(keys), "--server-ca", str(tmp_path / "a.pem"),
                 "--server-ca", str(tmp_path / "b.der")]) == 0
    assert "server CAs boards trust: 2" in capsys.readouterr().out
    after = (keys / "root.json").read_bytes()
    trusted = verify_root_signatures(before)
    rotated = verify_rotation(trusted, after, now=int(time.time()))
    assert rotated.server_ca == (_der(ca_a), _der(ca_b))
    assert main(["keys", "rotate", str(keys)]) == 0  # an expiry renewal keeps them
    again = verify_rotation(rotated, (keys / "root.json").read_bytes(), now=int(time.time()))
    assert again.server_ca == rotated.server_ca
    # a server certificate given as a CA is refused before anything is written
    (tmp_path / "server.pem").write_bytes(issue_server(ca_a, ["127.0.0.1"]).cert_pem)
    kept = (keys / "root.json").read_bytes()
    assert main(["keys", "rotate", str(keys), "--server-ca", str(tmp_path / "server.pem")]) == 1
    assert "is not a CA certificate" in capsys.readouterr().err
    assert (keys / "root.json").read_bytes() == kept


def test_a_signed_root_with_server_cas_verifies_like_any_other() -> None:
    key = generate_private_key()
    v1 = new_root(version=1, expires=int(time.time()) + 3600, root_keys=[key],
                  release_keys=[key])
    v2 = new_root(version=2, expires=int(time.time()) + 3600, root_keys=[key],
                  release_keys=[key], server_ca=[_der(new_ca("x"))])
    assert verify_rotation(v1, sign_root(v2, [key]), now=int(time.time())).server_ca
