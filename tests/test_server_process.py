"""`ota serve` as a real process on 127.0.0.1 (through tools.local_server): the CLI end to
end, crash safety under SIGKILL in the middle of a publish, and start-up refusals."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from server_support import Backend, FleetKeys, SimBoard, make_bundle

from tools.api_client import ApiClient, ApiClientError
from tools.cli import main
from tools.local_server import LocalServer, LocalServerError


def check_store_consistent(data_dir: Path) -> None:
    """SQLite intact; every blob named by its hash; every release complete and backed."""
    db = sqlite3.connect(data_dir / "mpota.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        releases = db.execute("SELECT id, envelope FROM releases").fetchall()
        for release_id, envelope in releases:
            payload = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
            wanted = {f["blob"]: f["transfer_size"] for f in payload["files"]}
            rows = dict(db.execute("SELECT blob, size FROM release_blobs WHERE release_id = ?",
                                   (release_id,)).fetchall())
            assert rows == wanted, "release registered without all of its blobs"
            for blob, size in rows.items():
                path = data_dir / "blobs" / blob[:2] / blob
                assert path.is_file(), f"release {release_id} points at missing blob {blob}"
                assert path.stat().st_size == size
    finally:
        db.close()
    for path in (data_dir / "blobs").glob("??/*"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, \
            f"half-written blob visible under its final name: {path}"


@pytest.fixture
def keys(tmp_path: Path) -> FleetKeys:
    return FleetKeys.create(tmp_path)


def _big_bundle(tmp_path: Path, keys: FleetKeys, sequence: int = 1) -> Path:
    # Enough bytes that uploading takes a while on loopback, few enough to stay fast.
    files = {f"lib/m{i:02d}.py": hashlib.sha256(b"%d" % i).digest() * 8192 for i in range(24)}
    files["app_main.py"] = b"print('big')\n"
    return make_bundle(tmp_path, files, version="1.0.0", sequence=sequence,
                       key=keys.release_key)


@pytest.mark.sqlite_only(reason="crash safety of the blob directory: a half upload in "
                                "blobs/tmp/ after SIGKILL (S3's: tests/test_storage_s3.py)")
def test_sigkill_mid_blob_upload_leaves_nothing_visible_and_publish_retries(
        tmp_path: Path, keys: FleetKeys) -> None:
    bundle = _big_bundle(tmp_path, keys)
    blob = next((bundle / "blobs").iterdir())
    data = blob.read_bytes()
    with LocalServer(tmp_path / "data", keys.root_path) as srv:
        # Send the headers and half of one blob, then cut the server's power.
        with socket.create_connection((srv.host, srv.port)) as conn:
            conn.sendall(
                f"PUT /v1/blobs/{blob.name} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {srv.token}\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode() + data[: len(data) // 2])
            tmp_dir = tmp_path / "data" / "blobs" / "tmp"
            deadline = time.monotonic() + 10
            while not any(tmp_dir.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert any(tmp_dir.iterdir()), "the upload never reached the server"
            srv.kill()
        check_store_consistent(tmp_path / "data")
        assert not (tmp_path / "data" / "blobs" / blob.name[:2] / blob.name).exists()
        srv.start()
        assert list((tmp_path / "data" / "blobs" / "tmp").iterdir()) == []
        result = srv.client().publish(bundle, "stable", percent=100)
        assert result.release["sequence"] == 1
        check_store_consistent(tmp_path / "data")
        again = srv.client().publish(bundle, "stable", percent=100)  # a retry after success
        assert again.uploaded == [] and again.release["id"] == result.release["id"]
        assert again.rollout is not None and again.rollout["rollout"]["state"] == "active"


@pytest.mark.sqlite_only(reason="SQLite's integrity check and the blob directory's files "
                                "after SIGKILL at any point of a publish")
def test_sigkill_at_any_point_of_a_publish_keeps_the_store_consistent(
        tmp_path: Path, keys: FleetKeys) -> None:
    bundle = _big_bundle(tmp_path, keys)
    data_dir = tmp_path / "data"
    with LocalServer(data_dir, keys.root_path) as srv:
        started = time.monotonic()
        srv.client().publish(bundle)  # measure one full publish, then start over
        duration = time.monotonic() - started
    for leftover in (data_dir / "blobs").glob("??/*"):
        leftover.unlink()
    (data_dir / "mpota.sqlite3").unlink()
    for extra in data_dir.glob("mpota.sqlite3-*"):
        extra.unlink()
    srv = LocalServer(data_dir, keys.root_path)
    srv.start()
    outcomes = []
    try:
        for fraction in (0.1, 0.35, 0.6, 0.85):
            errors: list[BaseException] = []

            def run(client: ApiClient, errors: list[BaseException]) -> None:
                try:
                    client.publish(bundle)
                except ApiClientError as err:
                    errors.append(err)

            worker = threading.Thread(target=run, args=(srv.client(), errors))
            worker.start()
            time.sleep(duration * fraction)
            srv.kill()
            worker.join(30)
            outcomes.append("killed" if errors else "finished")
            check_store_consistent(data_dir)
            srv.start()
            check_store_consistent(data_dir)
        result = srv.client().publish(bundle, "stable", percent=100)
        assert result.release["sequence"] == 1
        assert srv.client().list_releases("demo")[0]["sequence"] == 1
        check_store_consistent(data_dir)
    finally:
        srv.stop()
    assert "killed" in outcomes, outcomes


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_publish_rollout_devices_and_tokens_against_a_real_server(
        tmp_path: Path, keys: FleetKeys, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], backend: Backend) -> None:
    app = tmp_path / "demo"
    app.mkdir()
    (app / "app_main.py").write_text("print('hello')\n")
    key_file = tmp_path / "release.key"
    from signing.keys import save_private_key
    save_private_key(key_file, keys.release_key, None)
    with LocalServer(tmp_path / "data", keys.root_path, **backend.urls) as srv:
        monkeypatch.setenv("MPOTA_TOKEN", srv.token)
        monkeypatch.setenv("MPOTA_SERVER", srv.url)
        code, out, err = _run(["publish", str(app), "--version", "1.0.0", "--sequence", "5",
                               "--channel", "stable", "--percent", "100", "--board", "unix",
                               "--key", str(key_file)], capsys)
        assert code == 0, err
        assert "published demo 1.0.0 sequence 5" in out
        assert srv.token not in out + err
        code, out, _ = _run(["releases", "list", "--json"], capsys)
        assert code == 0 and [r["sequence"] for r in json.loads(out)] == [5]
        board = SimBoard("cli-board")
        client = srv.client()
        client.register_device(board.device_id, board.point, board="unix", channel="stable")
        body = board.checkin_body()
        request = urllib.request.Request(
            srv.url + "/v1/device/checkin", data=body, method="POST",
            headers=board.auth("POST", "/v1/device/checkin", body))
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
            assert json.loads(answer.read())["payloadType"].endswith("manifest+json")
        code, out, _ = _run(["devices", "list"], capsys)
        assert code == 0 and "cli-board" in out
        code, out, _ = _run(["devices", "show", "cli-board", "--json"], capsys)
        assert json.loads(out)["device_id"] == "cli-board"
        code, out, _ = _run(["rollout", "pause", "stable"], capsys)
        assert code == 0 and "paused" in out
        code, out, _ = _run(["rollout", "status", "stable", "--json"], capsys)
        assert json.loads(out)["rollout"]["state"] == "paused"
        code, out, _ = _run(["rollout", "resume", "stable"], capsys)
        assert code == 0 and "active" in out
        code, _, err = _run(["rollout", "resume", "stable"], capsys)
        assert code == 1 and err.startswith("ota: ") and "bad_rollout_state" in err
        rotated, _ = keys.rotated_root(version=2)
        (tmp_path / "root.2.json").write_bytes(rotated)
        code, out, _ = _run(["roots", "upload", str(tmp_path / "root.2.json")], capsys)
        assert code == 0 and "version 2 accepted" in out
        code, _, err = _run(["roots", "upload", str(tmp_path / "root.2.json")], capsys)
        assert code == 1 and "bad_rotation" in err
        code, out, _ = _run(["devices", "revoke", "cli-board"], capsys)
        assert code == 0
        assert client.device("cli-board")["revoked"] is not None
        # tokens: create, list (names only), revoke; a revoked token is refused at once
        store_args = ["--data", str(tmp_path / "data")]
        store_args += ["--db", backend.db_url] if backend.db_url else []
        code, out, _ = _run(["tokens", "create", "ci", *store_args], capsys)
        ci_token = out.strip()
        assert ci_token.startswith("mpota_")
        assert ApiClient(srv.url, ci_token).list_releases() != []
        code, out, _ = _run(["tokens", "list", *store_args], capsys)
        assert "ci" in out and ci_token not in out
        code, out, _ = _run(["tokens", "revoke", "ci", *store_args], capsys)
        assert code == 0
        with pytest.raises(ApiClientError) as refused:
            ApiClient(srv.url, ci_token).list_releases()
        assert refused.value.status == 401


def test_client_commands_without_a_token_say_how_to_get_one(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MPOTA_TOKEN", raising=False)
    code, _, err = _run(["releases", "list"], capsys)
    assert code == 1
    assert "MPOTA_TOKEN" in err and "ota tokens create" in err


def test_serve_refuses_to_start_without_a_valid_trust_anchor(tmp_path: Path,
                                                             keys: FleetKeys,
                                                             backend: Backend) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    for root_args in ([], ["--root", str(junk)]):
        proc = subprocess.run(
            [sys.executable, "-m", "tools.cli", "serve", "--data", str(tmp_path / "d"),
             "--port", "0", *root_args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert proc.stderr.startswith("ota: ")
    # a different root on a later start is refused unless it is a verified rotation
    with LocalServer(tmp_path / "d2", keys.root_path, **backend.urls):
        pass
    (tmp_path / "other").mkdir()
    other = FleetKeys.create(tmp_path / "other")
    with pytest.raises(LocalServerError, match="not a verified rotation"):
        LocalServer(tmp_path / "d2", other.root_path, **backend.urls).start()
    rotated, _ = keys.rotated_root(version=2)
    (tmp_path / "root.2.json").write_bytes(rotated)
    with LocalServer(tmp_path / "d2", tmp_path / "root.2.json", **backend.urls) as srv:
        assert srv.client().list_roots() == {"versions": [1, 2], "latest": 2}
    # an older stored root is fine
    with LocalServer(tmp_path / "d2", keys.root_path, **backend.urls) as srv:
        assert srv.client().list_roots()["latest"] == 2


def test_server_answers_on_loopback_only(tmp_path: Path, keys: FleetKeys, backend: Backend) -> None:
    with LocalServer(tmp_path / "data", keys.root_path, **backend.urls) as srv:
        assert srv.host == "127.0.0.1"
        out = subprocess.run(["ss", "-ltnH", f"sport = :{srv.port}"], capture_output=True,
                             text=True).stdout
        if out.strip():  # ss present: the only listener is 127.0.0.1
            assert all("127.0.0.1:" in line for line in out.strip().splitlines()), out
        with urllib.request.urlopen(srv.url + "/healthz", timeout=5) as answer:
            assert json.loads(answer.read()) == {"status": "ok"}


def test_json_logs_have_one_object_per_request_and_no_secrets(tmp_path: Path,
                                                              keys: FleetKeys,
                                                              backend: Backend) -> None:
    with LocalServer(tmp_path / "data", keys.root_path, extra_args=["--json-logs"],
                     **backend.urls) as srv:
        srv.client().list_releases()
        board = SimBoard("log-board")
        srv.client().register_device(board.device_id, board.point, board="unix")
        body = board.checkin_body()
        request = urllib.request.Request(
            srv.url + "/v1/device/checkin", data=body, method="POST",
            headers=board.auth("POST", "/v1/device/checkin", body))
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 204
        token = srv.token
    lines = [json.loads(line) for line in srv.log_path.read_text().splitlines()
             if line.startswith("{")]
    checkins = [doc for doc in lines if doc.get("path") == "/v1/device/checkin"]
    assert checkins and checkins[0]["status"] == 204
    assert checkins[0]["device_id"] == "log-board"
    text = srv.log_path.read_text()
    assert token not in text and "Mpota-P256" not in text


def test_restart_keeps_port_token_and_data(
        tmp_path: Path, keys: FleetKeys, backend: Backend) -> None:
    with LocalServer(tmp_path / "data", keys.root_path, **backend.urls) as srv:
        board = SimBoard("kept")
        srv.client().register_device(board.device_id, board.point, board="unix")
        url, token, pid = srv.url, srv.token, srv.pid
        srv.restart()
        assert (srv.url, srv.token) == (url, token)
        assert srv.pid != pid
        assert srv.client().device("kept")["device_id"] == "kept"
    with pytest.raises(ApiClientError) as down:
        ApiClient(url, token, timeout=2).list_releases()
    assert (down.value.status, down.value.code) == (0, "unreachable")
