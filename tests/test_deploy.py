"""deploy/: the systemd units (one server; one replica of a scale-out installation) pass
systemd's own checks with a low exposure score, and the nginx sites pass `nginx -t`, agree with
the server's body limits and really proxy: a publish over https through them, a board request
over its 4 KiB cap refused, and with the scale-out site two replicas on PostgreSQL + S3 with
one of them killed (Debian's nginx, unpacked by the Makefile; docs/operations.md, "Running it
on a server" and "Production layout")."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_support import FleetKeys, make_bundle

from ota_server.settings import Limits
from tools.api_client import ApiClient
from tools.cli import main
from tools.local_server import LocalServer, free_port
from tools.micropython import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
UNIT = DEPLOY / "mpota.service"
REPLICA_UNIT = DEPLOY / "mpota@.service"
SITE = DEPLOY / "nginx-mpota.conf"
CLUSTER_SITE = DEPLOY / "nginx-mpota-cluster.conf"
_HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
              "ProtectHome=yes", "CapabilityBoundingSet=", "User=mpota")
# The unit file, the unit systemd checks (an instance of the template), its state directory.
_UNITS = [(UNIT, "mpota.service", "StateDirectory=mpota"),
          (REPLICA_UNIT, "mpota@8081.service", "StateDirectory=mpota/replica-%i")]
# What only the replicas' 0600 EnvironmentFile may hold, never the unit itself.
_SECRETS = ("MPOTA_DB", "MPOTA_BLOBS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _tool(name: str, *candidates: Path) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `make pytest` installs Debian's systemd for it")
    return Path(found)


def _unit_here(tmp_path: Path, source: Path = UNIT, name: str = "mpota.service") -> Path:
    """The unit with ExecStart pointing at this checkout's `ota` (systemd checks it exists),
    as the unit `name` (an instance of a template is checked through the template)."""
    ota = PROJECT_ROOT / ".venv" / "bin" / "ota"
    text = source.read_text().replace("/opt/mpota/venv/bin/ota", str(ota))
    (tmp_path / source.name).write_text(text)
    return tmp_path / name


@pytest.mark.parametrize("source, name, state", _UNITS, ids=["server", "replica"])
def test_the_systemd_unit_verifies_cleanly_and_is_hardened(
        tmp_path: Path, source: Path, name: str, state: str) -> None:
    analyze = _tool("systemd-analyze")
    unit = _unit_here(tmp_path, source, name)
    done = subprocess.run([analyze, "verify", unit], capture_output=True, text=True,
                          timeout=60, check=False)
    # verify only warns (exit 0) about a misspelt key: any output is a defect here
    assert done.returncode == 0 and not done.stdout + done.stderr, done.stdout + done.stderr
    lines = source.read_text().splitlines()
    assert all(option in lines for option in (*_HARDENING, state))
    security = subprocess.run([analyze, "security", "--offline=yes", unit],
                              capture_output=True, text=True, timeout=60, check=False)
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert level is not None, security.stdout + security.stderr
    assert float(level.group(1)) <= 2.0, security.stdout  # systemd calls up to 2.0 "OK"


@pytest.mark.parametrize("source, name, state", _UNITS, ids=["server", "replica"])
def test_a_misspelt_unit_option_is_caught(tmp_path: Path, source: Path, name: str,
                                          state: str) -> None:
    analyze = _tool("systemd-analyze")
    unit = _unit_here(tmp_path, source, name)
    template = tmp_path / source.name
    template.write_text(template.read_text().replace("NoNewPrivileges=", "NoNewPrivilegs="))
    done = subprocess.run([analyze, "verify", unit], capture_output=True, text=True,
                          timeout=60, check=False)
    assert "NoNewPrivilegs" in done.stderr  # the check above would see it


def test_replicas_take_their_secrets_only_from_a_root_only_environment_file() -> None:
    """The database password and the S3 keys are never in the unit (world-readable, shown by
    `systemctl show`): only in the EnvironmentFile, which the unit's own comment says to make
    0600, and every replica has a data directory and port of its own (its instance name)."""
    lines = [line.strip() for line in REPLICA_UNIT.read_text().splitlines()]
    settings = [line for line in lines if line and not line.startswith("#")]
    assert "EnvironmentFile=/etc/mpota/cluster.env" in settings
    assert not [line for line in settings if any(name in line for name in _SECRETS)]
    commented = [line for line in lines if line.startswith("#")]
    assert all(any(f"{name}=" in line for line in commented) for name in _SECRETS)
    assert any("0600" in line and "cluster.env" in line for line in commented)
    assert "Environment=MPOTA_PORT=%i" in settings
    assert "Environment=MPOTA_DATA=/var/lib/mpota/replica-%i" in settings
    # Whole blobs sent by nginx: the unit's prefix is what the cluster site maps to the
    # replica's cache, which the site reads as a member of the replica's group.
    assert "Environment=MPOTA_BLOB_ACCEL=/_mpota/replica-%i" in settings
    # Download grants: every replica on the one key file that nginx's include is made from.
    assert "Environment=MPOTA_GRANT_KEY=/etc/mpota/grant.key" in settings
    assert "StateDirectoryMode=0750" in settings and "UMask=0027" in settings
    site = CLUSTER_SITE.read_text()
    for port in (8081, 8082):
        assert (f"location /_mpota/replica-{port}/ {{\n        internal;\n        alias "
                f"/var/lib/mpota/replica-{port}/blob-cache/;") in site


def _size(text: str) -> int:
    units = {"": 1, "k": 1024, "m": 1024 * 1024}
    match = re.fullmatch(r"(\d+)([km]?)", text)
    assert match is not None, text
    return int(match.group(1)) * units[match.group(2)]


def _body_limits(site: Path = SITE) -> dict[str, int]:
    """client_max_body_size per location ("" for the server block)."""
    limits: dict[str, int] = {}
    where = ""
    for line in site.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("location "):
            where = line.split()[1]
        elif line == "}":
            where = ""
        elif line.startswith("client_max_body_size "):
            limits[where] = _size(line.split()[1].rstrip(";"))
    return limits


@pytest.mark.parametrize("site", [SITE, CLUSTER_SITE], ids=["server", "cluster"])
def test_the_site_s_body_limits_are_the_server_s(site: Path) -> None:
    limits = Limits()
    assert _body_limits(site) == {"": limits.max_query_bytes,
                              "/v1/device/": limits.max_device_body_bytes,
                              "/v1/blobs/": limits.max_blob_bytes}


def _site_here(tmp_path: Path, port: int, http_port: int, upstream: int,
               source: Path = SITE, replicas: tuple[int, ...] = (),
               replica_dirs: tuple[Path, ...] = ()) -> Path:
    """The site as an nginx.conf for this machine: loopback ports, certificates from
    `ota tls init`, temp files and logs under tmp_path (the cluster site's replicas 8081,
    8082 on the ports `replicas`, their data directories `replica_dirs`; its grant check
    with the njs module Debian's libnginx-mod-http-js loads, deploy/mpota-grant.js, and the
    key include made from tmp_path/grant.key, the replicas' --grant-key)."""
    from tools.cluster.nginx import grant_key_include, njs_module

    tls = tmp_path / "tls"
    assert main(["tls", "init", str(tls), "--host", "127.0.0.1"]) == 0
    site = source.read_text()
    modules = ""
    if "js_import" in site:
        include = tmp_path / "mpota-grant-key.conf"
        include.write_text(grant_key_include(tmp_path / "grant.key"))
        include.chmod(0o600)
        site = site.replace("/etc/nginx/mpota-grant.js", str(DEPLOY / "mpota-grant.js"))
        site = site.replace("/etc/nginx/mpota-grant-key.conf", str(include))
        modules = f"load_module {njs_module(quiet=True)};"
    site = site.replace("/etc/mpota/tls/", f"{tls}/")
    site = site.replace("127.0.0.1:8080", f"127.0.0.1:{upstream}")
    for shipped, here in zip((8081, 8082), replicas, strict=False):
        site = site.replace(f"127.0.0.1:{shipped} ", f"127.0.0.1:{here} ")
    for shipped, data_dir in zip((8081, 8082), replica_dirs, strict=False):
        site = site.replace(f"/var/lib/mpota/replica-{shipped}/", f"{data_dir}/")
    site = re.sub(r"listen \[::\]:\d+[^;]*;", "", site)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    site = site.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;")
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""\
daemon off;
master_process off;
{modules}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{site}
}}
""")
    return conf


@pytest.fixture
def nginx() -> Path:
    from tools.cluster.nginx import nginx_binary

    return Path(nginx_binary(quiet=True))  # Debian's, unpacked under .cache if not installed


@pytest.mark.parametrize("site", [SITE, CLUSTER_SITE], ids=["server", "cluster"])
def test_the_nginx_site_passes_nginx_t(nginx: Path, tmp_path: Path, site: Path) -> None:
    conf = _site_here(tmp_path, free_port(), free_port(), 8080, site)
    done = subprocess.run([nginx, "-t", "-c", conf, "-p", tmp_path / "nginx", "-e", "stderr"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


@pytest.fixture
def proxied(nginx: Path, tmp_path: Path
            ) -> Iterator[tuple[LocalServer, str, Path, FleetKeys]]:
    """`ota serve` on loopback behind nginx with the site: (server, https URL, CA file,
    the fleet's keys)."""
    keys = FleetKeys.create(tmp_path)
    port = free_port()
    with LocalServer(tmp_path / "data", keys.root_path) as server:
        conf = _site_here(tmp_path, port, free_port(), server.port)
        proxy = subprocess.Popen([nginx, "-c", conf, "-p", tmp_path / "nginx", "-e", "stderr"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            url = f"https://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while True:
                try:
                    ApiClient(url, server.token, ca=tmp_path / "tls" / "ca.pem").health()
                    break
                except Exception:
                    if time.monotonic() > deadline or proxy.poll() is not None:
                        raise
                    time.sleep(0.1)
            yield server, url, tmp_path / "tls" / "ca.pem", keys
        finally:
            proxy.terminate()
            proxy.wait(timeout=10)


def test_a_publish_goes_through_the_site_and_oversized_bodies_stop_there(
        proxied: tuple[LocalServer, str, Path, FleetKeys], tmp_path: Path) -> None:
    server, url, ca, keys = proxied
    bundle = make_bundle(tmp_path, {"app_main.py": b"print(1)\n", "big.bin": b"\0" * 2_000_000},
                         version="1.0.0", sequence=1, key=keys.release_key)
    client = ApiClient(url, server.token, ca=ca)
    result = client.publish(bundle, channel="stable", percent=100)
    assert result.release["version"] == "1.0.0" and len(result.uploaded) == 2
    assert server.client().list_releases()[0]["version"] == "1.0.0"
    # the 2 MB blob passed the upload location's 16 MiB; a board request body over 4 KiB
    # never reaches the server
    request = urllib.request.Request(url + "/v1/device/checkin", data=b"x" * 5000,
                                     method="POST")
    context = ssl.create_default_context(cafile=str(ca))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10, context=context)
    assert refused.value.code == 413


def test_the_cluster_site_balances_over_replicas_and_skips_a_dead_one(
        nginx: Path, tmp_path: Path, pg_dsn: str, s3_url: str) -> None:
    """Two replicas on one PostgreSQL database and S3 bucket (migrated first, as the
    operator does) behind the shipped cluster site over https: a publish through it lands in
    the shared database; each replica answers through it; with replica 1 killed (SIGKILL)
    every request still answers, through replica 2. Each replica runs with the unit's
    MPOTA_BLOB_ACCEL, and a board's blob download through the site is sent by nginx from
    that replica's cache (the site's internal locations), whole and with the blob's tag; with
    a download grant under the replicas' key, nginx sends it without asking a replica."""
    keys = FleetKeys.create(tmp_path)
    assert main(["db", "migrate", "--db", pg_dsn, "--blobs", s3_url]) == 0
    port = free_port()
    with LocalServer(tmp_path / "r1", keys.root_path, db_url=pg_dsn, blobs_url=s3_url,
                     publisher="r1", extra_args=["--blob-accel", "/_mpota/replica-8081",
                                                 "--grant-key", str(tmp_path / "grant.key")]
                     ) as first, \
            LocalServer(tmp_path / "r2", keys.root_path, db_url=pg_dsn, blobs_url=s3_url,
                        publisher="r2", extra_args=["--blob-accel", "/_mpota/replica-8082",
                                                    "--grant-key", str(tmp_path / "grant.key")]
                        ) as second:
        conf = _site_here(tmp_path, port, free_port(), 8080, CLUSTER_SITE,
                          (first.port, second.port), (first.data_dir, second.data_dir))
        proxy = subprocess.Popen([nginx, "-c", conf, "-p", tmp_path / "nginx", "-e", "stderr"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            url, ca = f"https://127.0.0.1:{port}", tmp_path / "tls" / "ca.pem"
            client = ApiClient(url, first.token, ca=ca)
            deadline = time.monotonic() + 20
            while True:
                try:
                    client.health()
                    break
                except Exception:
                    if time.monotonic() > deadline or proxy.poll() is not None:
                        raise
                    time.sleep(0.1)
            bundle = make_bundle(tmp_path, {"app_main.py": b"print(1)\n"}, version="1.0.0",
                                 sequence=1, key=keys.release_key)
            assert client.publish(bundle, channel="stable", percent=100).release["sequence"] == 1
            # one database: either replica lists it, directly; nginx passes requests to both
            for replica in (first, second):
                assert [r["version"] for r in replica.client().list_releases()] == ["1.0.0"]
            served = sum(_requests_seen(r) for r in (first, second))
            for _ in range(6):
                client.list_releases()
            assert _requests_seen(first) > 0 and _requests_seen(second) > 0
            assert sum(_requests_seen(r) for r in (first, second)) >= served + 6
            _download_blobs_through(url, ca, client, b"print(1)\n", (first, second))
            _granted_download_sent_by_nginx(url, ca, tmp_path / "grant.key", b"print(1)\n",
                                            (first, second))
            first.kill()
            for _ in range(6):  # round robin would send half of these to the dead replica
                assert [r["version"] for r in client.list_releases()] == ["1.0.0"]
        finally:
            proxy.terminate()
            proxy.wait(timeout=10)


def _download_blobs_through(url: str, ca: Path, client: ApiClient, data: bytes,
                            replicas: tuple[LocalServer, ...]) -> None:
    """A registered board downloads the blob `data` through the site until every replica has
    handed one download to nginx (round robin: a few requests)."""
    import hashlib

    from ota_server.device_auth import sign_request
    from signing import keys as keymod

    sha = hashlib.sha256(data).hexdigest()
    key = keymod.generate_private_key()
    client.register_device("deploy-board", keymod.public_point(key), board="unix")
    context = ssl.create_default_context(cafile=str(ca))
    path = f"/v1/blobs/{sha}"
    for counter in range(1, 7):
        request = urllib.request.Request(url + path, headers={
            "Authorization": sign_request(key, "deploy-board", counter, "GET", path)})
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            assert answer.status == 200 and answer.read() == data
            assert answer.headers["ETag"] == f'"{sha}"'
            assert answer.headers["Last-Modified"] is None
    handed = [_metric(replica, "mpota_blob_accel_total{code=\"200\"}") for replica in replicas]
    assert all(count >= 1 for count in handed) and sum(handed) == 6, handed


_BLOB_200 = 'mpota_blob_requests_total{code="200"}'


def _granted_download_sent_by_nginx(url: str, ca: Path, key_file: Path, data: bytes,
                                    replicas: tuple[LocalServer, ...]) -> None:
    """A download with a grant under the replicas' key, of a blob the replicas' caches hold:
    nginx sends it (the site's njs check and cached-blob location), no replica counts it."""
    import hashlib

    from ota_server.grants import GrantKey

    sha = hashlib.sha256(data).hexdigest()
    grant = GrantKey.load_or_create(key_file).mint("deploy-board", time.time(), 900)
    asked = [_metric(r, _BLOB_200) for r in replicas]
    context = ssl.create_default_context(cafile=str(ca))
    request = urllib.request.Request(url + f"/v1/blobs/{sha}", headers={"Authorization": grant})
    with urllib.request.urlopen(request, timeout=10, context=context) as answer:
        assert answer.status == 200 and answer.read() == data
        assert answer.headers["ETag"] == f'"{sha}"' and answer.headers["Last-Modified"] is None
    assert [_metric(r, _BLOB_200) for r in replicas] == asked


def _metric(server: LocalServer, line_start: str) -> float:
    text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    found = [line.split()[-1] for line in text.splitlines() if line.startswith(line_start)]
    return float(found[0]) if found else 0.0


def _requests_seen(server: LocalServer) -> int:
    """How many API requests the replica's log records (one line each, not --quiet)."""
    return server.log_path.read_text(errors="replace").count("/v1/releases")
