"""The signer's commands, driven in-process through tools.cli.main."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from signing import keys as keymod
from signing.keys import load_private_key
from signing.root import verify_root, verify_rotation
from tools.cli import main

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.fixture
def keydir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           capsys: pytest.CaptureFixture[str]) -> Path:
    monkeypatch.delenv("MPOTA_KEY_PASSPHRASE", raising=False)
    assert main(["keys", "init", str(tmp_path / "keys")]) == 0
    capsys.readouterr()
    return tmp_path / "keys"


@pytest.fixture
def bundle(tmp_path: Path, keydir: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    app = tmp_path / "app"
    (app / "lib").mkdir(parents=True)
    (app / "app_main.py").write_text("import lib.util\n")
    (app / "lib" / "util.py").write_text("print('v1')\n" * 50)
    out = tmp_path / "out"
    assert main(["build", str(app), "--version", "1.0.0", "--sequence", "3", "--board", "unix",
                 "--board", "esp32", "--deflate", "-o", str(out)]) == 0
    assert main(["sign", str(out), "--key", str(keydir / "release.key")]) == 0
    capsys.readouterr()
    return out


def _secret_renderings(key: ec.EllipticCurvePrivateKey) -> list[str]:
    scalar = key.private_numbers().private_value
    raw = scalar.to_bytes(32, "big")
    return [f"{scalar:064x}", f"{scalar:064X}", str(scalar), base64.b64encode(raw).decode(),
            "PRIVATE KEY", "-----BEGIN"]


def test_keys_init_writes_0600_keys_and_prints_no_key_material(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("MPOTA_KEY_PASSPHRASE", raising=False)
    target = tmp_path / "keys"
    assert main(["keys", "init", str(target)]) == 0
    out = capsys.readouterr()
    printed = out.out + out.err
    for name in ("root.key", "release.key"):
        path = target / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for secret in _secret_renderings(load_private_key(path, None)):
            assert secret not in printed
    root = verify_root((target / "root.json").read_bytes(), now=0)
    assert root.version == 1
    assert root.release.keyids[0] in printed  # keyids (public) are shown
    assert (target / "root.1.json").read_bytes() == (target / "root.json").read_bytes()


def test_keys_init_encrypts_with_the_passphrase_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MPOTA_KEY_PASSPHRASE", "tr0ub4dor&3")
    assert main(["keys", "init", str(tmp_path / "k")]) == 0
    printed = "".join(capsys.readouterr())
    assert "tr0ub4dor&3" not in printed and "encrypted" in printed
    pem = (tmp_path / "k" / "release.key").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in pem
    key = load_private_key(tmp_path / "k" / "release.key", b"tr0ub4dor&3")
    for secret in _secret_renderings(key)[:4]:
        assert secret not in printed


def test_keys_init_refuses_to_overwrite(keydir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (keydir / "root.key").read_bytes()
    assert main(["keys", "init", str(keydir)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (keydir / "root.key").read_bytes() == before


def test_envelope_from_ota_sign_passes_an_independent_dsse_check(bundle: Path,
                                                                 keydir: Path) -> None:
    """Written from the DSSE spec and `cryptography` alone, not signing/'s helpers."""
    envelope = json.loads((bundle / "manifest.dsse.json").read_bytes())
    assert set(envelope) == {"payloadType", "payload", "signatures"}
    payload_type = envelope["payloadType"]
    assert payload_type == "application/vnd.mpota.manifest+json"
    payload = base64.b64decode(envelope["payload"], validate=True)
    assert payload == (bundle / "manifest.json").read_bytes()
    kind = payload_type.encode()
    pae = b"DSSEv1 " + str(len(kind)).encode() + b" " + kind + b" " + \
        str(len(payload)).encode() + b" " + payload

    public = serialization.load_pem_public_key((keydir / "release.pub").read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    spki = public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    [signature] = envelope["signatures"]
    assert signature["keyid"] == hashlib.sha256(spki).hexdigest()
    raw = base64.b64decode(signature["sig"], validate=True)
    assert len(raw) == 64
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    assert 1 <= r < P256_ORDER and 1 <= s <= P256_ORDER // 2
    public.verify(encode_dss_signature(r, s), pae, ec.ECDSA(hashes.SHA256()))  # raises if bad

    manifest = json.loads(payload)
    assert manifest["sequence"] == 3 and manifest["boards"] == ["unix", "esp32"]
    util = next(f for f in manifest["files"] if f["path"] == "lib/util.py")
    assert util["encoding"] == "deflate" and util["transfer_size"] < util["size"]


def test_verify_prints_the_manifest_or_the_error_class(
    bundle: Path, keydir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    root = str(keydir / "root.json")
    assert main(["verify", str(bundle), "--root", root, "--board", "esp32"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1.0.0"
    assert main(["verify", str(bundle / "manifest.dsse.json"), "--root", root,
                 "--board", "rp2"]) == 1
    assert capsys.readouterr().err.startswith("ota: WrongBoardError: board 'rp2'")
    assert main(["verify", str(bundle), "--root", root, "--installed-sequence", "3"]) == 1
    assert "ota: SameSequenceError" in capsys.readouterr().err
    blob = next((bundle / "blobs").iterdir())
    blob.write_bytes(blob.read_bytes() + b"\0")
    assert main(["verify", str(bundle), "--root", root]) == 1
    assert "ota: LengthMismatchError" in capsys.readouterr().err


def test_verify_refuses_a_manifest_signed_by_another_fleet(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["keys", "init", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    assert main(["verify", str(bundle), "--root", str(tmp_path / "other" / "root.json")]) == 1
    assert "ota: ThresholdError" in capsys.readouterr().err


def test_rotate_release_key_gives_root_v2_that_the_old_root_accepts(
    bundle: Path, keydir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    v1 = verify_root((keydir / "root.json").read_bytes(), now=0)
    old_release = (keydir / "release.key").read_bytes()
    assert main(["keys", "rotate", str(keydir), "--release", "--root"]) == 0
    printed = "".join(capsys.readouterr())
    v2 = verify_rotation(v1, (keydir / "root.json").read_bytes(), now=0)
    assert v2.version == 2 and set(v2.release.keyids).isdisjoint(v1.release.keyids)
    assert set(v2.root.keyids).isdisjoint(v1.root.keyids)
    assert (keydir / "retired" / "release.key.v1").read_bytes() == old_release
    assert stat.S_IMODE((keydir / "release.key").stat().st_mode) == 0o600
    for secret in _secret_renderings(load_private_key(keydir / "release.key", None)):
        assert secret not in printed
    # The old release signature no longer counts; re-signing with the new key does.
    root = str(keydir / "root.json")
    assert main(["verify", str(bundle), "--root", root]) == 1
    assert "ThresholdError" in capsys.readouterr().err
    assert main(["sign", str(bundle), "--key", str(keydir / "release.key")]) == 0
    assert main(["verify", str(bundle), "--root", root]) == 0


def test_show_and_user_errors(keydir: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "show", str(keydir)]) == 0
    shown = capsys.readouterr().out
    release_kid = keymod.keyid(keymod.load_public_key(keydir / "release.pub"))
    assert "root metadata version 1" in shown
    assert any(line.split()[:2] == ["release", "1"] and release_kid in line
               and line.endswith("release.pub") for line in shown.splitlines()), shown
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app_main.py").write_text("x = 1\n")
    assert main(["build", str(tmp_path / "app"), "--version", "1.0.0", "-o",
                 str(tmp_path / "o")]) == 1
    assert "--board" in capsys.readouterr().err
    root = str(keydir / "root.json")
    assert main(["verify", root, "--root", root]) == 1  # a root is not a manifest
    assert capsys.readouterr().err.startswith("ota: PayloadTypeError")
    (tmp_path / "junk.json").write_text("{}")
    assert main(["verify", str(tmp_path / "junk.json"), "--root", root]) == 1
    assert capsys.readouterr().err.startswith("ota: MalformedError: envelope: 'payloadType'")


def test_keys_init_can_prompt_for_the_passphrase(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from tools.cli import cli

    monkeypatch.delenv("MPOTA_KEY_PASSPHRASE", raising=False)
    target = tmp_path / "k"
    result = CliRunner().invoke(cli, ["keys", "init", str(target), "--prompt-passphrase"],
                                input="Zebra-Quartz-91\nZebra-Quartz-91\n")
    assert result.exit_code == 0, result.output
    assert "Zebra-Quartz-91" not in result.output
    key = load_private_key(target / "root.key", b"Zebra-Quartz-91")
    for secret in _secret_renderings(key):
        assert secret not in result.output


def test_rotate_without_flags_renews_expiry_and_keeps_keys(
    keydir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    v1 = verify_root((keydir / "root.json").read_bytes(), now=0)
    assert main(["keys", "rotate", str(keydir), "--expires-days", "800"]) == 0
    v2 = verify_rotation(v1, (keydir / "root.json").read_bytes(), now=0)
    assert (v2.version, v2.root, v2.release) == (2, v1.root, v1.release)
    assert v2.expires > v1.expires
    assert not (keydir / "retired").exists()
    assert (keydir / "root.2.json").read_bytes() == (keydir / "root.json").read_bytes()


def test_rotate_refuses_a_root_key_the_metadata_does_not_trust(
    keydir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["keys", "init", str(tmp_path / "other")]) == 0
    (keydir / "root.key").write_bytes((tmp_path / "other" / "root.key").read_bytes())
    before = (keydir / "root.json").read_bytes()
    capsys.readouterr()
    assert main(["keys", "rotate", str(keydir), "--release"]) == 1
    assert "is not a root key of root.json" in capsys.readouterr().err
    assert (keydir / "root.json").read_bytes() == before
    assert not (keydir / "root.2.json").exists()


def test_rotate_never_writes_a_clear_key_beside_encrypted_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    keys = tmp_path / "enc-keys"
    monkeypatch.setenv("MPOTA_KEY_PASSPHRASE", "correct horse")
    assert main(["keys", "init", str(keys)]) == 0
    before = {p.name: p.read_bytes() for p in keys.iterdir() if p.is_file()}
    capsys.readouterr()
    # The old keys open (passphrase typed at a prompt, say) but no passphrase for new ones.
    monkeypatch.setattr("tools.cmd_keys._passphrase_for_new_key", lambda prompt=False: None)
    monkeypatch.setattr(
        "tools.cmd_keys.load_signing_key",
        lambda path: load_private_key(path, b"correct horse"))
    assert main(["keys", "rotate", str(keys), "--release"]) == 1
    assert "encrypted" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in keys.iterdir() if p.is_file()} == before
