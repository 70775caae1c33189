"""`ota backup` while `ota serve` runs and writes, then `ota restore` into a new directory and a
server started on it: nothing registered before the backup is lost; bad backups and occupied
destinations are refused with nothing written (docs/operations.md, "Backup and restore")."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from server_support import FleetKeys, make_bundle

from signing import keys as keymod
from signing.bundle import load_bundle
from tools.cli import main
from tools.local_server import LocalServer


def _publish(server: LocalServer, tmp_path: Path, keys: FleetKeys, n: int) -> list[str]:
    bundle = make_bundle(tmp_path / f"b{n}", {"app_main.py": f"V = {n}\n".encode(),
                                              "data.bin": bytes([n % 256]) * 5000},
                         version=f"1.0.{n}", sequence=n + 1, key=keys.release_key)
    server.client().publish(bundle)
    return [e.blob for e in load_bundle(bundle).manifest.files]


def test_a_live_backup_restores_into_a_server_with_everything_it_held(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = FleetKeys.create(tmp_path)
    backup = tmp_path / "backup"
    with LocalServer(tmp_path / "data", keys.root_path) as server:
        blobs = [b for n in range(3) for b in _publish(server, tmp_path, keys, n)]
        point = keymod.public_point(keymod.generate_private_key())
        server.client().register_device("board-1", point, board="unix")
        # another publisher keeps writing while the backup is taken
        stop = threading.Event()
        written: list[int] = []

        def writer() -> None:
            n = 10
            while not stop.is_set() and n < 40:
                _publish(server, tmp_path, keys, n)
                written.append(n)
                n += 1

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert main(["backup", str(tmp_path / "data"), str(backup)]) == 0
        finally:
            stop.set()
            thread.join(timeout=60)
        assert "backed up to" in capsys.readouterr().out
    restored = tmp_path / "restored"
    assert main(["restore", str(backup), str(restored)]) == 0
    assert "restored into" in capsys.readouterr().out
    with LocalServer(restored, keys.root_path) as again:
        client = again.client()
        versions = {r["version"] for r in client.list_releases()}
        assert {"1.0.0", "1.0.1", "1.0.2"} <= versions
        # the snapshot is one moment of the live server: whole releases only, each with blobs
        assert versions <= {f"1.0.{n}" for n in [0, 1, 2, *written]}
        assert client.missing_blobs(blobs) == []
        assert client.device("board-1")["board"] == "unix"


def test_a_backup_missing_a_blob_is_refused_and_nothing_is_restored(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = FleetKeys.create(tmp_path)
    with LocalServer(tmp_path / "data", keys.root_path) as server:
        blob = _publish(server, tmp_path, keys, 0)[0]
    backup = tmp_path / "backup"
    assert main(["backup", str(tmp_path / "data"), str(backup)]) == 0
    assert main(["backup", str(tmp_path / "data"), str(backup)]) == 1  # never overwritten
    assert "already exists" in capsys.readouterr().err
    (backup / "blobs" / blob[:2] / blob).unlink()
    assert main(["restore", str(backup), str(tmp_path / "restored")]) == 1
    assert f"blob {blob}" in capsys.readouterr().err
    assert not (tmp_path / "restored").exists()


def test_restore_never_overwrites_a_data_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = FleetKeys.create(tmp_path)
    with LocalServer(tmp_path / "data", keys.root_path) as server:
        _publish(server, tmp_path, keys, 0)
    assert main(["backup", str(tmp_path / "data"), str(tmp_path / "backup")]) == 0
    before = (tmp_path / "data" / "mpota.sqlite3").read_bytes()
    assert main(["restore", str(tmp_path / "backup"), str(tmp_path / "data")]) == 1
    assert "already holds a database" in capsys.readouterr().err
    assert (tmp_path / "data" / "mpota.sqlite3").read_bytes() == before
