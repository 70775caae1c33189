"""nginx from Debian, run without installing it: `nginx` on PATH, else the package fetched with
`apt-get download` and unpacked under .cache/nginx (nothing system-wide, no service started).

`Nginx` serves a directory (the benchmarks' static baseline) or balances over upstream servers
(replicas of `ota serve`), on 127.0.0.1 with one worker and its configuration in a work
directory. `python -m tools.cluster.nginx` fetches the package (make test runs it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tools.cluster import ComponentError, log_tail, stop_process
from tools.local_server import free_port

ROOT = Path(__file__).resolve().parents[2]
NGINX_CACHE = ROOT / ".cache" / "nginx"
START_TIMEOUT = 10.0


def nginx_binary(quiet: bool = False) -> str:
    """The nginx program: on PATH, or Debian's package unpacked under .cache/nginx (fetched on
    first use; `apt-get update` once if the package lists are missing)."""
    found = shutil.which("nginx") or (shutil.which("nginx", path="/usr/sbin"))
    if found:
        return found
    cached = NGINX_CACHE / "usr" / "sbin" / "nginx"
    if cached.exists():
        return str(cached)
    NGINX_CACHE.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print("fetching the Debian nginx package (apt-get download) ...", flush=True)
    download = ["apt-get", "download", "nginx"]
    fetched = subprocess.run(download, cwd=NGINX_CACHE, capture_output=True, timeout=300,
                             check=False)
    if fetched.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300,
                       check=False)
        fetched = subprocess.run(download, cwd=NGINX_CACHE, capture_output=True, timeout=300,
                                 check=False)
    debs = sorted(NGINX_CACHE.glob("nginx_*.deb"))
    if fetched.returncode != 0 or not debs:
        raise ComponentError("could not fetch the nginx package: "
                             + fetched.stderr.decode(errors="replace")[-500:])
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(NGINX_CACHE)], check=True, timeout=120)
    return str(cached)


def accel_location(prefix: str, directory: Path) -> str:
    """The internal location that sends the blob files an upstream names with
    `X-Accel-Redirect: <prefix>/<aa>/<sha256>` from `directory` (the replica's blob cache),
    with the headers the replica itself would send (docs/operations.md, "Blobs sent by
    nginx"): nginx keeps the upstream's Content-Type and Cache-Control on the redirect but
    not its ETag, and adds its own validators (ETag, Last-Modified, Accept-Ranges), which
    are not the blob's."""
    return f"""        location {prefix}/ {{
            internal;
            alias {directory}/;
            etag off;
            add_header ETag $upstream_http_etag;
            add_header Last-Modified "";
            if_modified_since off;
            max_ranges 0;
        }}"""


class Nginx:
    """nginx on 127.0.0.1:`port`, one worker, config in `workdir`: serving the files of `root`,
    or, given `upstreams` (base URLs such as http://127.0.0.1:8001), passing every request to
    them in turn over kept-alive connections (a failed upstream is skipped). `accel` maps the
    X-Accel-Redirect prefix of each upstream (`ota serve --blob-accel`) to its blob directory.
    """

    def __init__(self, root: Path | None, workdir: Path, *,
                 upstreams: Sequence[str] = (), accel: Mapping[str, Path] | None = None):
        if (root is None) == (not upstreams):
            raise ValueError("Nginx serves either a root directory or upstreams, exactly one")
        if accel and not upstreams:
            raise ValueError("X-Accel-Redirect locations need upstreams that name them")
        self.root = root
        self.workdir = workdir
        self.upstreams = [u.removeprefix("http://").rstrip("/") for u in upstreams]
        self.accel = dict(accel or {})
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def _user_line(self) -> str:
        """Under root nginx's worker runs as nobody, which cannot enter the replicas' data
        directories (test and benchmark scratch directories are 0700): the worker that sends
        their blob files runs as the user that started nginx instead. Production gives nginx's
        own user read access to the cache instead (docs/operations.md)."""
        if not self.accel or os.geteuid() != 0:
            return ""
        return f"user {pwd.getpwuid(os.geteuid()).pw_name};"

    def _server_block(self) -> str:
        if self.root is not None:
            return f"""    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
    }}"""
        # A replica that failed once is skipped for 2 s, then tried again. `proxy_next_upstream
        # error timeout` passes a request on to the next replica only when nginx is allowed
        # to: a POST (a check-in, a report: each spends the board's counter) never once it was
        # sent to a replica, since nginx does not repeat a non-idempotent request; a 503 goes
        # to the client as it is (a store outage is the same on every replica, and nginx does
        # not count it against the replica). docs/operations.md, "Faults".
        servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=2s;"
                            for u in self.upstreams)
        accel = "\n".join(accel_location(prefix, directory)
                          for prefix, directory in self.accel.items())
        return f"""    upstream replicas {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_request_buffering off;
            proxy_buffering off;
            # Unbuffered, nginx relays an answer through one proxy_buffer_size buffer: 4 KB by
            # default, 256 reads and writes per 1 MB blob; 256 KB makes it 4 (S6,
            # docs/benchmarks.md: nginx's CPU per blob from ~1.7 to ~0.5 ms).
            proxy_buffer_size 256k;
            proxy_buffers 4 256k;
            proxy_busy_buffers_size 256k;
            proxy_next_upstream error timeout;
        }}
{accel}
    }}"""

    def __enter__(self) -> Nginx:
        conf = self.workdir / "nginx.conf"
        tmp = self.workdir / "nginx-tmp"
        tmp.mkdir(exist_ok=True)
        conf.write_text(f"""
daemon off;
master_process on;
{self._user_line()}
worker_processes 1;
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{self._server_block()}
}}
""")
        if self.root is not None:
            # The worker runs as nobody when the master is root: it must read the files.
            for path in (self.workdir, self.root, *self.root.iterdir()):
                path.chmod(0o755 if path.is_dir() else 0o644)
        self.process = subprocess.Popen([nginx_binary(), "-p", str(self.workdir), "-c", str(conf),
                                         "-e", str(self.workdir / "nginx-error.log")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise ComponentError("nginx did not start: "
                             + log_tail(self.workdir / "nginx-error.log"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


if __name__ == "__main__":
    nginx_binary(quiet=True)
