"""deploy/: the systemd unit passes systemd's own checks with a low exposure score, and the
nginx site passes `nginx -t`, agrees with the server's body limits and really proxies: a
publish over https through it, a board request over its 4 KiB cap refused (Debian's nginx,
unpacked by the Makefile; docs/operations.md, "Running it on a server")."""

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
SITE = DEPLOY / "nginx-mpota.conf"
_HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
              "ProtectHome=yes", "CapabilityBoundingSet=", "StateDirectory=mpota",
              "User=mpota")


def _tool(name: str, *candidates: Path) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `make pytest` installs Debian's systemd for it")
    return Path(found)


def _unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's `ota` (systemd checks it exists)."""
    ota = PROJECT_ROOT / ".venv" / "bin" / "ota"
    text = UNIT.read_text().replace("/opt/mpota/venv/bin/ota", str(ota))
    path = tmp_path / "mpota.service"
    path.write_text(text)
    return path


def test_the_systemd_unit_verifies_cleanly_and_is_hardened(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    unit = _unit_here(tmp_path)
    done = subprocess.run([analyze, "verify", unit], capture_output=True, text=True,
                          timeout=60, check=False)
    # verify only warns (exit 0) about a misspelt key: any output is a defect here
    assert done.returncode == 0 and not done.stdout + done.stderr, done.stdout + done.stderr
    lines = UNIT.read_text().splitlines()
    assert all(option in lines for option in _HARDENING)
    security = subprocess.run([analyze, "security", "--offline=yes", unit],
                              capture_output=True, text=True, timeout=60, check=False)
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert level is not None, security.stdout + security.stderr
    assert float(level.group(1)) <= 2.0, security.stdout  # systemd calls up to 2.0 "OK"


def test_a_misspelt_unit_option_is_caught(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    unit = _unit_here(tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilegs="))
    done = subprocess.run([analyze, "verify", unit], capture_output=True, text=True,
                          timeout=60, check=False)
    assert "NoNewPrivilegs" in done.stderr  # the check above would see it


def _size(text: str) -> int:
    units = {"": 1, "k": 1024, "m": 1024 * 1024}
    match = re.fullmatch(r"(\d+)([km]?)", text)
    assert match is not None, text
    return int(match.group(1)) * units[match.group(2)]


def _body_limits() -> dict[str, int]:
    """client_max_body_size per location ("" for the server block)."""
    limits: dict[str, int] = {}
    where = ""
    for line in SITE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("location "):
            where = line.split()[1]
        elif line == "}":
            where = ""
        elif line.startswith("client_max_body_size "):
            limits[where] = _size(line.split()[1].rstrip(";"))
    return limits


def test_the_site_s_body_limits_are_the_server_s() -> None:
    limits = Limits()
    assert _body_limits() == {"": limits.max_query_bytes,
                              "/v1/device/": limits.max_device_body_bytes,
                              "/v1/blobs/": limits.max_blob_bytes}


def _site_here(tmp_path: Path, port: int, http_port: int, upstream: int) -> Path:
    """The site as an nginx.conf for this machine: loopback ports, certificates from
    `ota tls init`, temp files and logs under tmp_path."""
    tls = tmp_path / "tls"
    assert main(["tls", "init", str(tls), "--host", "127.0.0.1"]) == 0
    site = SITE.read_text()
    site = site.replace("/etc/mpota/tls/", f"{tls}/")
    site = site.replace("127.0.0.1:8080", f"127.0.0.1:{upstream}")
    site = re.sub(r"listen \[::\]:\d+[^;]*;", "", site)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    site = site.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;")
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""\
daemon off;
master_process off;
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


def test_the_nginx_site_passes_nginx_t(nginx: Path, tmp_path: Path) -> None:
    conf = _site_here(tmp_path, free_port(), free_port(), 8080)
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
