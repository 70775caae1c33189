"""`ota keys init|rotate|show`, `ota build`, `ota sign`, `ota verify`: the signer's commands.

The trust decisions live in signing/; this module reads the clock, the environment and the
files, and turns errors into one `ota: ...` line. It never prints key material: only keyids,
which are hashes of public keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from signing import keys as keymod
from signing.bundle import BLOB_DIR, ENVELOPE_NAME, build_bundle, sign_bundle
from signing.errors import BundleError, KeyFileError, TrustError
from signing.manifest import MICROPYTHON_FLOOR
from signing.root import (
    RootMetadata,
    new_root,
    sign_root,
    verify_root,
    verify_root_signatures,
    verify_rotation,
)
from signing.verify import verify_blob, verify_manifest
from tools.errors import UserError
from tools.output import Column, emit, json_option
from tools.timefmt import iso_utc

PASSPHRASE_ENV = "MPOTA_KEY_PASSPHRASE"  # noqa: S105 (a variable name, not a secret)
DAY = 86400
ROOT_KEY, RELEASE_KEY = "root.key", "release.key"
ROOT_PUB, RELEASE_PUB = "root.pub", "release.pub"
ROOT_JSON = "root.json"
RETIRED_DIR = "retired"


def _now() -> int:
    return int(time.time())



@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the library's errors into the CLI's one error line (class name first)."""
    try:
        yield
    except TrustError as err:
        raise UserError(f"{type(err).__name__}: {err}") from err
    except (KeyFileError, BundleError) as err:
        raise UserError(str(err)) from err


def _passphrase_for_new_key(prompt: bool = False) -> bytes | None:
    """From a hidden prompt (`prompt`) or $MPOTA_KEY_PASSPHRASE; none means unencrypted."""
    if prompt:
        typed = click.prompt("passphrase for the new private keys", hide_input=True,
                             confirmation_prompt=True)
        return typed.encode("utf-8") if typed else None
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value else None


_PROMPT_OPTION = click.option(
    "--prompt-passphrase", "prompt", is_flag=True,
    help=f"ask for the passphrase of new keys instead of reading ${PASSPHRASE_ENV}",
)


def load_signing_key(path: Path) -> keymod.PrivateKey:
    """Load a private key, with $MPOTA_KEY_PASSPHRASE or, on a terminal, a hidden prompt."""
    passphrase = _passphrase_for_new_key()
    if passphrase is None and sys.stdin.isatty() and _is_encrypted(path):
        passphrase = click.prompt(f"passphrase for {path}", hide_input=True).encode("utf-8")
    return keymod.load_private_key(path, passphrase)


def _is_encrypted(path: Path) -> bool:
    try:
        return keymod.is_encrypted_pem(path.read_bytes())
    except OSError:
        return False  # load_private_key reports the unreadable file


def _save_key_pair(directory: Path, key_name: str, pub_name: str, key: keymod.PrivateKey,
                   passphrase: bytes | None) -> None:
    keymod.save_private_key(directory / key_name, key, passphrase)
    keymod.save_public_key(directory / pub_name, key)


def _write_root(directory: Path, envelope: bytes, version: int) -> None:
    (directory / f"root.{version}.json").write_bytes(envelope)
    tmp = directory / f".{ROOT_JSON}.tmp"
    tmp.write_bytes(envelope)
    os.replace(tmp, directory / ROOT_JSON)


def _describe_root(root: RootMetadata) -> list[str]:
    lines = [f"root metadata version {root.version}, expires {iso_utc(root.expires)}"]
    for name, role in (("root", root.root), ("release", root.release)):
        lines.append(f"  {name} role: threshold {role.threshold} of {len(role.keyids)}")
        lines.extend(f"    keyid {kid}" for kid in role.keyids)
    if root.server_ca is not None:
        lines.append(f"  server CAs boards trust: {len(root.server_ca)}")
        lines.extend(f"    sha256 {hashlib.sha256(der).hexdigest()}" for der in root.server_ca)
    return lines


@click.group("keys")
def keys_group() -> None:
    """Create, rotate and show the root and release keys (passphrase: $MPOTA_KEY_PASSPHRASE)."""


@keys_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--expires-days", type=click.IntRange(min=1), default=365, show_default=True,
              help="validity of root metadata v1")
@_PROMPT_OPTION
def keys_init(directory: Path, expires_days: int, prompt: bool) -> None:
    """Create DIRECTORY/root.key, release.key (0600), their .pub files and root.json (v1)."""
    existing = [n for n in (ROOT_KEY, RELEASE_KEY, ROOT_JSON) if (directory / n).exists()]
    if existing:
        raise UserError(f"{directory / existing[0]} already exists; refusing to overwrite keys")
    passphrase = _passphrase_for_new_key(prompt)
    directory.mkdir(parents=True, exist_ok=True)
    root_key, release_key = keymod.generate_private_key(), keymod.generate_private_key()
    root = new_root(version=1, expires=_now() + expires_days * DAY,
                    root_keys=[root_key], release_keys=[release_key])
    with _user_errors():
        _save_key_pair(directory, ROOT_KEY, ROOT_PUB, root_key, passphrase)
        _save_key_pair(directory, RELEASE_KEY, RELEASE_PUB, release_key, passphrase)
        _write_root(directory, sign_root(root, [root_key]), 1)
    state = "encrypted" if passphrase else (
        f"NOT encrypted (set {PASSPHRASE_ENV} or use --prompt-passphrase to encrypt)")
    click.echo(f"wrote keys to {directory}: private keys are mode 0600, {state}")
    for line in _describe_root(root):
        click.echo(line)
    click.echo(f"keep {ROOT_KEY} offline; {ROOT_JSON} is the trust root boards are given")


def _read_server_cas(paths: Sequence[Path]) -> list[bytes]:
    from tools.tls_ca import CaError, ca_der

    out = []
    for path in paths:
        try:
            out.append(ca_der(path.read_bytes(), str(path)))
        except OSError as err:
            raise UserError(f"{path}: {err.strerror}") from err
        except CaError as err:
            raise UserError(str(err)) from err
    return out


@keys_group.command("rotate")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--release", "new_release", is_flag=True, help="replace the release key")
@click.option("--root", "new_root_key", is_flag=True, help="replace the root key")
@click.option("--expires-days", type=click.IntRange(min=1), default=365, show_default=True,
              help="validity of the new root metadata")
@click.option("--server-ca", "server_cas", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="a CA (PEM or DER) boards trust for the server from this root on; repeat "
                   "for old and new CA during a move (default: the current root's, if any)")
@_PROMPT_OPTION
def keys_rotate(directory: Path, new_release: bool, new_root_key: bool, expires_days: int,
                server_cas: tuple[Path, ...], prompt: bool) -> None:
    """Write root metadata N+1, signed by the current root key (and the new one, if any).

    Without --release, --root or --server-ca it only renews the expiry. Replaced private keys
    move to DIRECTORY/retired/ (0600): destroy them once every board has the new root. Boards
    that take a root with server CAs trust exactly those for https from then on.
    """
    new_cas = _read_server_cas(server_cas) if server_cas else None
    now = _now()
    with _user_errors():
        current = verify_root_signatures(_read(directory / ROOT_JSON))
        old_root = load_signing_key(directory / ROOT_KEY)
        if keymod.keyid(old_root) not in current.root.keyids:
            raise UserError(f"{directory / ROOT_KEY} is not a root key of {ROOT_JSON}")
        passphrase = _passphrase_for_new_key(prompt) if (new_root_key or new_release) else None
        if (new_root_key or new_release) and passphrase is None and (
                _is_encrypted(directory / ROOT_KEY) or _is_encrypted(directory / RELEASE_KEY)):
            # Never downgrade: a rotation must not leave a new key in clear beside encrypted ones.
            raise UserError(f"the keys in {directory} are encrypted: give the new keys a "
                            f"passphrase (${PASSPHRASE_ENV} or --prompt-passphrase)")
        fresh: dict[str, keymod.PrivateKey] = {}
        if new_root_key:
            fresh[ROOT_KEY] = keymod.generate_private_key()
        if new_release:
            fresh[RELEASE_KEY] = keymod.generate_private_key()
        root_signer = fresh.get(ROOT_KEY, old_root)
        release_keys: Sequence[keymod.PublicKey | keymod.PrivateKey] = (
            [fresh[RELEASE_KEY]] if new_release
            else list(current.role_keys(current.release).values())
        )
        root = new_root(version=current.version + 1, expires=now + expires_days * DAY,
                        root_keys=[root_signer], release_keys=release_keys,
                        server_ca=new_cas if new_cas is not None else current.server_ca)
        signers = [old_root] + ([root_signer] if new_root_key else [])
        envelope = sign_root(root, signers)
        verify_rotation(current, envelope, now=now)  # the one check a board will make
        _install_rotation(directory, current.version, fresh, passphrase)
        _write_root(directory, envelope, root.version)
    click.echo(f"rotated {directory}: {', '.join(fresh) or 'expiry only'}")
    if fresh and passphrase is None:
        click.echo(f"new private keys are mode 0600, NOT encrypted (set ${PASSPHRASE_ENV} or "
                   "use --prompt-passphrase to encrypt)")
    for line in _describe_root(root):
        click.echo(line)
    click.echo(f"next: `ota roots upload {directory / ROOT_JSON}` so the server accepts "
               f"releases signed by the new keys and boards rotate to root {root.version}")


def _install_rotation(directory: Path, old_version: int, fresh: dict[str, keymod.PrivateKey],
                      passphrase: bytes | None) -> None:
    """Put new keys in place, keeping each replaced one under retired/ (never deleted)."""
    for name, key in fresh.items():
        staged = directory / f"{name}.new"
        keymod.save_private_key(staged, key, passphrase, overwrite=True)
        retired = directory / RETIRED_DIR
        retired.mkdir(mode=0o700, exist_ok=True)
        os.replace(directory / name, retired / f"{name}.v{old_version}")
        os.replace(staged, directory / name)
        keymod.save_public_key(directory / name.replace(".key", ".pub"), key)


@keys_group.command("show")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@json_option
def keys_show(path: Path, as_json: bool) -> None:
    """Show root metadata (PATH: a root.json or a key directory) and which key files match."""
    root_file = path / ROOT_JSON if path.is_dir() else path
    with _user_errors():
        root = verify_root_signatures(_read(root_file))
    files: dict[str, str] = {}
    if path.is_dir():
        for pub in sorted(path.glob("*.pub")):
            with _user_errors():
                files[keymod.keyid(keymod.load_public_key(pub))] = pub.name
    expired = root.expires <= _now()
    rows = [{"role": name, "threshold": f"{role.threshold} of {len(role.keyids)}",
             "keyid": kid, "file": files.get(kid)}
            for name, role in (("root", root.root), ("release", root.release))
            for kid in role.keyids]
    cas = [hashlib.sha256(der).hexdigest() for der in root.server_ca or ()]
    doc = {"version": root.version, "expires": root.expires, "expired": expired,
           "roles": {name: {"threshold": role.threshold, "keyids": list(role.keyids)}
                     for name, role in (("root", root.root), ("release", root.release))},
           "server_ca_sha256": cas, "key_files": {name: kid for kid, name in files.items()}}
    emit(doc, [Column("ROLE", "role"), Column("THRESHOLD", "threshold"),
               Column("KEYID", "keyid"), Column("FILE", "file")], rows, as_json=as_json,
         title=f"root metadata version {root.version}, expires {iso_utc(root.expires)}"
               + (" (EXPIRED)" if expired else ""))
    if as_json:
        return
    for sha in cas:
        click.echo(f"server CA boards trust: sha256 {sha}")
    if expired:
        click.echo(f"EXPIRED: rotate it (ota keys rotate {root_file.parent})")


@click.command("build")
@click.argument("app_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--version", "version", required=True, help="semantic version, e.g. 1.2.0")
@click.option("--sequence", type=click.IntRange(min=0), default=None,
              help="anti-rollback sequence [default: max(now in Unix seconds, previous + 1)]")
@click.option("--board", "boards", multiple=True, help="a compatible board (repeat)")
@click.option("--mpy", is_flag=True, help="compile .py to .mpy with mpy-cross")
@click.option("--deflate", is_flag=True, help="send files deflated when that is smaller")
@click.option("-o", "--out", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path), help="bundle directory")
@click.option("--entry", default="app_main", show_default=True, help="the app's entry module")
@click.option("--app", "app", default=None, help="app name [default: APP_DIR's name]")
@click.option("--min-micropython", default=MICROPYTHON_FLOOR, show_default=True,
              help="the oldest MicroPython the app runs on")
@click.option("--expires-days", type=click.IntRange(min=1), default=365, show_default=True,
              help="days until boards stop accepting the release")
def build_cmd(app_dir: Path, version: str, sequence: int | None, boards: tuple[str, ...],
              mpy: bool, deflate: bool, out_dir: Path, entry: str, app: str | None,
              min_micropython: str, expires_days: int) -> None:
    """Build APP_DIR into a bundle: OUT/blobs/<sha256> and the unsigned OUT/manifest.json."""
    if not boards:
        raise UserError("give at least one --board (e.g. --board esp32 --board unix)")
    created = _now()
    with _user_errors():
        bundle = build_bundle(
            app_dir, out_dir, version=version, sequence=sequence, boards=boards, entry=entry,
            min_micropython=min_micropython, mpy=mpy, deflate=deflate, created=created,
            expires=created + expires_days * DAY, app=app,
        )
    manifest = bundle.manifest
    sent = sum(f.transfer_size for f in manifest.files)
    click.echo(f"built {manifest.app} {manifest.version} sequence {manifest.sequence}: "
               f"{len(manifest.files)} files, {sent} bytes to send, in {out_dir}")


@click.command("sign")
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--key", "key_paths", multiple=True, required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="a release private key (repeat for a threshold)")
def sign_cmd(out_dir: Path, key_paths: tuple[Path, ...]) -> None:
    """Sign the bundle OUT_DIR's manifest: writes OUT_DIR/manifest.dsse.json."""
    with _user_errors():
        signers = [load_signing_key(path) for path in key_paths]
        envelope = sign_bundle(out_dir, signers)
    click.echo(f"signed {envelope}")
    for key in signers:
        click.echo(f"  keyid {keymod.keyid(key)}")


@click.command("verify")
@click.argument("envelope", type=click.Path(exists=True, path_type=Path))
@click.option("--root", "root_path", required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="trusted root metadata (root.json)")
@click.option("--board", default=None, help="check that this board is in the manifest")
@click.option("--installed-sequence", type=int, default=None,
              help="check the manifest is newer than this sequence")
@click.option("--now", type=int, default=None, help="reference time [default: the clock]")
def verify_cmd(envelope: Path, root_path: Path, board: str | None,
               installed_sequence: int | None, now: int | None) -> None:
    """Verify a signed manifest (a file, or a bundle directory with its blobs).

    Prints the verified manifest as JSON; any failure is one line naming the error class.
    """
    when = _now() if now is None else now
    bundle_dir = envelope if envelope.is_dir() else None
    envelope_file = envelope / ENVELOPE_NAME if bundle_dir else envelope
    with _user_errors():
        root = verify_root(_read(root_path), now=when)
        manifest = verify_manifest(_read(envelope_file), root, now=when, board=board,
                                   installed_sequence=installed_sequence)
        if bundle_dir is not None:
            for entry in manifest.files:
                with _open_blob(bundle_dir / BLOB_DIR / entry.blob) as stream:
                    verify_blob(entry, stream)
    click.echo(json.dumps(manifest.to_json(), indent=2))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from err


@contextmanager
def _open_blob(path: Path) -> Iterator[Any]:
    try:
        stream = path.open("rb")
    except OSError as err:
        raise UserError(f"{path}: blob missing ({err.strerror})") from err
    with stream:
        yield stream


def register(cli: click.Group) -> None:
    """Add `keys`, `build`, `sign` and `verify` to the `ota` command line."""
    for command in (keys_group, build_cmd, sign_cmd, verify_cmd):
        cli.add_command(command)
