"""The scale-out components as tools/cluster runs them: a private PostgreSQL that never runs as
root and checks passwords, a SeaweedFS S3 gateway that checks signatures, and nginx serving
files or balancing over upstream processes (skipping one that died)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tools.cluster import ComponentError, stop_process, wait_until
from tools.cluster.nginx import Nginx
from tools.cluster.postgres import PostgresServer
from tools.cluster.seaweed import SeaweedS3
from tools.local_server import free_port


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, answer.read()


def test_postgres_runs_unprivileged_on_loopback_and_checks_passwords(
        postgres_server: PostgresServer, pg_dsn: str) -> None:
    assert postgres_server.running
    pid = postgres_server._process.pid  # type: ignore[union-attr]
    uid = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("Uid:")).split()[1])
    assert uid != 0
    assert postgres_server.psql("postgres", "SHOW listen_addresses").strip() == "127.0.0.1"
    assert postgres_server.psql("postgres", "SHOW password_encryption").strip() == \
        "scram-sha-256"
    result = subprocess.run(
        [str(postgres_server.bindir / "psql"), "-X", "-h", "127.0.0.1", "-p",
         str(postgres_server.port), "-U", postgres_server.role, "-d", "postgres", "-c",
         "SELECT 1"], env={**os.environ, "PGPASSWORD": "wrong"}, capture_output=True,
        timeout=30, check=False)
    assert result.returncode != 0 and b"password authentication failed" in result.stderr


def test_create_database_refuses_a_name_it_would_have_to_quote(
        postgres_server: PostgresServer) -> None:
    with pytest.raises(ValueError, match="database name"):
        postgres_server.create_database('x"; DROP DATABASE postgres; --')


def test_seaweed_checks_the_keys(seaweed: SeaweedS3) -> None:
    client = seaweed.client()
    try:
        client.put_object(Bucket=seaweed.bucket, Key="k", Body=b"v")
        assert client.get_object(Bucket=seaweed.bucket, Key="k")["Body"].read() == b"v"
        client.delete_object(Bucket=seaweed.bucket, Key="k")
    finally:
        client.close()
    secret = seaweed.secret_key
    seaweed.secret_key = "not-the-secret"
    try:
        intruder = seaweed.client()
        with pytest.raises(ClientError) as refused:
            intruder.put_object(Bucket=seaweed.bucket, Key="k2", Body=b"v")
        intruder.close()
    finally:
        seaweed.secret_key = secret
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_nginx_serves_a_directory() -> None:
    # Under /tmp, not pytest's private tmp_path: nginx's worker runs as nobody when we are root.
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "root"
        root.mkdir()
        (root / "file.bin").write_bytes(b"x" * 1000)
        with Nginx(root, Path(work)) as nginx:
            assert _get(nginx.url + "/file.bin") == (200, b"x" * 1000)


def test_nginx_balances_over_upstreams_and_skips_one_that_died(tmp_path: Path) -> None:
    upstreams = []
    try:
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            (folder / "who").write_text(name)
            port = free_port()
            process = subprocess.Popen(
                [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
                 "--directory", str(folder)], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            upstreams.append((process, f"http://127.0.0.1:{port}"))
            wait_until(lambda url=f"http://127.0.0.1:{port}": _answers(url), 20,
                       f"upstream {name}", process)
        with Nginx(None, tmp_path, upstreams=[url for _, url in upstreams]) as nginx:
            seen = [_get(nginx.url + "/who") for _ in range(10)]
            assert {body for _, body in seen} == {b"a", b"b"}
            stop_process(upstreams[0][0])
            assert [_get(nginx.url + "/who") for _ in range(10)] == [(200, b"b")] * 10
    finally:
        for process, _ in upstreams:
            stop_process(process)


def _answers(url: str) -> bool:
    try:
        _get(url + "/who")
    except OSError:
        return False
    return True


def test_nginx_takes_a_root_or_upstreams_not_both(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Nginx(tmp_path, tmp_path, upstreams=["http://127.0.0.1:1"])
    with pytest.raises(ValueError, match="exactly one"):
        Nginx(None, tmp_path)


def test_nginx_maps_accel_prefixes_only_in_front_of_upstreams(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="need upstreams"):
        Nginx(tmp_path, tmp_path, accel={"/_x": tmp_path})


def test_a_component_that_exits_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("the reason it stopped")
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(ComponentError, match=r"exited with status 3.*the reason it stopped"):
        wait_until(lambda: False, 20, "thing", process, log)
    with pytest.raises(ComponentError, match="did not answer within"):
        wait_until(lambda: False, 0.3, "thing")
