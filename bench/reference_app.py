"""The reference update, the same for every board figure (D1-D4) and for the board's tests.

Deterministic (fixed seed): 20 files, Python modules and data files of 1-12 KB each, about
100 KB in all; version 1.1.0 changes three of them (about 15 KB together) and adds none.

Also the small rig the board tests and benchmarks share: keys and root metadata, building and
signing a release with `signing/`, and provisioning a virtual board with tools/board_files.py.

    python bench/reference_app.py OUT_DIR   # writes OUT_DIR/1.0.0/ and OUT_DIR/1.1.0/
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tools.board_files import ClientLayout

SEED = 20261123
APP = "refapp"
ENTRY = "app_main"
# (path, size in bytes); the three marked True change in 1.1.0.
_LAYOUT: tuple[tuple[str, int, bool], ...] = (
    ("app_main.py", 4200, True),
    ("lib/sensors.py", 5100, True),
    ("lib/display.py", 3900, False),
    ("lib/net_util.py", 6200, False),
    ("lib/storage.py", 4800, False),
    ("lib/scheduler.py", 7100, False),
    ("lib/filters.py", 2900, False),
    ("lib/protocol.py", 8300, False),
    ("lib/calib.py", 1200, False),
    ("lib/ui.py", 5600, False),
    ("lib/log.py", 2100, False),
    ("data/config.json", 1500, False),
    ("data/lookup.csv", 9800, False),
    ("data/strings_en.txt", 4400, False),
    ("data/strings_de.txt", 4700, False),
    ("data/curve.csv", 6300, True),
    ("data/font.bin.txt", 11800, False),
    ("data/schedule.json", 3300, False),
    ("data/limits.json", 1800, False),
    ("data/readme.txt", 2600, False),
)
_WORDS = ("sensor", "value", "limit", "alarm", "offset", "gain", "window", "sample", "frame",
          "retry", "delay", "channel", "buffer", "level", "state", "event", "timer", "phase")


def _python_module(rng: random.Random, size: int, header: str) -> bytes:
    text = header
    i = 0
    while True:  # whole functions only, so the module stays valid Python
        word = rng.choice(_WORDS)
        func = (f"\ndef {word}_{i}(x, k={rng.randint(1, 999)}):\n"
                f"    # scale the {word} by its calibration factor\n"
                f"    return (x * k + {rng.randint(0, 65535)}) % {rng.randint(3, 9999)}\n")
        if len(text) + len(func) > size:
            return text.encode()
        text += func
        i += 1


def _data_file(rng: random.Random, size: int, path: str) -> bytes:
    out: list[str] = []
    total = 0
    while total < size:
        if path.endswith(".csv"):
            line = ",".join(str(rng.randint(0, 4095)) for _ in range(8))
        elif path.endswith(".json"):
            line = f'{{"{rng.choice(_WORDS)}": {rng.randint(0, 10000)}, ' \
                   f'"{rng.choice(_WORDS)}": "{rng.choice(_WORDS)}"}},'
        else:
            line = " ".join(rng.choice(_WORDS) for _ in range(10))
        out.append(line)
        total += len(line) + 1
    return "\n".join(out).encode()[:size]


def reference_files(version: str) -> dict[str, bytes]:
    """The files of the reference app at `version` ("1.0.0" or "1.1.0")."""
    if version not in ("1.0.0", "1.1.0"):
        raise ValueError(f"the reference app has versions 1.0.0 and 1.1.0, not {version!r}")
    files: dict[str, bytes] = {}
    for index, (path, size, changes) in enumerate(_LAYOUT):
        salt = 1 if changes and version == "1.1.0" else 0
        rng = random.Random(SEED * 100 + index * 2 + salt)
        if path == "app_main.py":
            header = (f"VERSION = {version!r}\nprint('APP', VERSION)\n"
                      "import lib.sensors  # noqa\n")
            files[path] = _python_module(rng, size, header)
        elif path.endswith(".py"):
            files[path] = _python_module(rng, size, f"# {path}\nNAME = {path!r}\n")
        else:
            files[path] = _data_file(rng, size, path)
    return files


def changed_paths() -> list[str]:
    return [path for path, _, changes in _LAYOUT if changes]


def small_app(version: str, extra: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
    """A tiny app for fast tests: an entry module printing its version, plus two files."""
    files = {
        "app_main.py": f"import lib.util\nprint('APP', {version!r})\n".encode(),
        "lib/util.py": b"def double(x):\n    return 2 * x\n",
        "data/notes.txt": f"notes for {version}\n".encode() * 4,
    }
    files.update(extra or {})
    return files


# -- the rig: keys, releases, boards ---------------------------------------------------------


@dataclass
class Keys:
    """A root key and a release key with root metadata version 1 signed by the root key."""

    root: Any
    release: Any
    root_envelope: bytes


def make_keys(expires: int | None = None) -> Keys:
    from signing import keys as keymod
    from signing.root import new_root, sign_root

    root_key = keymod.generate_private_key()
    release_key = keymod.generate_private_key()
    meta = new_root(version=1, expires=expires or int(time.time()) + 365 * 86400,
                    root_keys=[root_key], release_keys=[release_key])
    return Keys(root_key, release_key, sign_root(meta, [root_key]))


def build_release(work: Path, files: Mapping[str, bytes], version: str, sequence: int,
                  keys: Keys, *, deflate: bool = True, app: str = APP, entry: str = ENTRY,
                  boards: tuple[str, ...] = ("unix",), mpy: bool = False) -> Path:
    """Build and sign a bundle of `files`; returns the bundle directory."""
    from signing.bundle import build_bundle, sign_bundle

    source = work / f"src-{app}-{version}"
    for path, data in files.items():
        target = source / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    out = work / f"bundle-{app}-{version}"
    now = int(time.time())
    build_bundle(source, out, version=version, sequence=sequence, boards=boards, entry=entry,
                 min_micropython="1.20.0", mpy=mpy, deflate=deflate, created=now,
                 expires=now + 30 * 86400, app=app)
    sign_bundle(out, keys.release)
    return out


def bundle_files(bundle_dir: Path) -> dict[str, bytes]:
    """The files of a built bundle as the board stores them (blobs inflated)."""
    import zlib

    from signing.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    files = {}
    for entry in bundle.manifest.files:
        data = bundle.blob_path(entry).read_bytes()
        files[entry.path] = zlib.decompress(data) if entry.encoding == "deflate" else data
    return files


def provision_board(flash: Path, api: Any, device_id: str, server_url: str, keys: Keys,
                    files: Mapping[str, bytes], version: str = "1.0.0", sequence: int = 1,
                    *, app: str = APP, mpy: bool = False, channel: str = "stable",
                    client: ClientLayout = "files", server_ca: bytes | None = None,
                    **config: Any) -> Any:
    """Register a new board with the server and write its flash (and, with client="romfs",
    its ROM partition image); returns its private key."""
    from signing import keys as keymod
    from tools.board_files import BoardConfig, InitialApp, install_board

    key = keymod.generate_private_key()
    api.register_device(device_id, keymod.public_point(key), board="unix", channel=channel)
    flash.mkdir(parents=True, exist_ok=True)
    cfg = BoardConfig(device_id=device_id, server=server_url, board="unix", channel=channel,
                      **config)
    install_board(flash, cfg, key, keys.root_envelope, mpy=mpy,
                  app=InitialApp(app, version, sequence, ENTRY, dict(files)),
                  client=client, server_ca=server_ca)
    return key


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python bench/reference_app.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    for version in ("1.0.0", "1.1.0"):
        for path, data in reference_files(version).items():
            target = out / version / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    old, new = reference_files("1.0.0"), reference_files("1.1.0")
    changed = [p for p in old if old[p] != new[p]]
    print(f"{len(old)} files, {sum(map(len, old.values()))} bytes; 1.1.0 changes "
          f"{len(changed)} ({sum(len(new[p]) for p in changed)} bytes): {', '.join(changed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
