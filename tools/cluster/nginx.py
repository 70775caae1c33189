"""nginx from Debian, run without installing it: `nginx` on PATH, else the package fetched with
`apt-get download` and unpacked under .cache/nginx (nothing system-wide, no service started).

`Nginx` serves a directory (the benchmarks' static baseline) or balances over upstream servers
(replicas of `ota serve`), on 127.0.0.1 with one worker and its configuration in a work
directory; with `grants`, it checks download grants itself (njs, deploy/mpota-grant.js) and
sends granted blobs from the replicas' caches. `python -m tools.cluster.nginx` fetches nginx and
its njs module, Debian's libnginx-mod-http-js (make test runs it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.cluster import ComponentError, log_tail, stop_process
from tools.local_server import free_port

ROOT = Path(__file__).resolve().parents[2]
NGINX_CACHE = ROOT / ".cache" / "nginx"
START_TIMEOUT = 10.0
NJS_MODULE = "ngx_http_js_module.so"
GRANT_SCRIPT = ROOT / "deploy" / "mpota-grant.js"


def _unpacked(package: str, wanted: Path, quiet: bool) -> Path:
    """`wanted` (a path under .cache/nginx) from Debian's `package`, fetched with `apt-get
    download` and unpacked there when missing (`apt-get update` once if the package lists are
    missing). ComponentError when it cannot be fetched."""
    if wanted.exists():
        return wanted
    NGINX_CACHE.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"fetching the Debian {package} package (apt-get download) ...", flush=True)
    download = ["apt-get", "download", package]
    fetched = subprocess.run(download, cwd=NGINX_CACHE, capture_output=True, timeout=300,
                             check=False)
    if fetched.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300,
                       check=False)
        fetched = subprocess.run(download, cwd=NGINX_CACHE, capture_output=True, timeout=300,
                                 check=False)
    debs = sorted(NGINX_CACHE.glob(f"{package}_*.deb"))
    if fetched.returncode != 0 or not debs:
        raise ComponentError(f"could not fetch the {package} package: "
                             + fetched.stderr.decode(errors="replace")[-500:])
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(NGINX_CACHE)], check=True, timeout=120)
    if not wanted.exists():
        raise ComponentError(f"the {package} package holds no {wanted.relative_to(NGINX_CACHE)}")
    return wanted


def nginx_binary(quiet: bool = False) -> str:
    """The nginx program: on PATH, or Debian's package unpacked under .cache/nginx (fetched on
    first use)."""
    found = shutil.which("nginx") or (shutil.which("nginx", path="/usr/sbin"))
    if found:
        return found
    return str(_unpacked("nginx", NGINX_CACHE / "usr" / "sbin" / "nginx", quiet))


def njs_module(quiet: bool = False) -> Path:
    """nginx's njs module (`load_module` it): Debian's libnginx-mod-http-js, installed beside
    an installed nginx, else unpacked under .cache/nginx (fetched on first use). It is built
    for Debian's nginx of the same release (its nginx-abi dependency)."""
    installed = Path("/usr/lib/nginx/modules") / NJS_MODULE
    if not nginx_binary(quiet).startswith(str(NGINX_CACHE)) and installed.exists():
        return installed
    return _unpacked("libnginx-mod-http-js",
                     NGINX_CACHE / "usr" / "lib" / "nginx" / "modules" / NJS_MODULE, quiet)


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


# The njs variable that says nginx may send a blob itself (deploy/mpota-grant.js blobGranted).
GRANT_VARIABLE = "$mpota_grant_blob"
# nginx's own answer to a granted whole-blob GET/HEAD: the replica's headers
# (ota_server/blob_answers.py BLOB_CACHE, the strong tag), none of the static module's.
_CACHED_BLOB_HEADERS = """types { }
default_type application/octet-stream;
etag off;
add_header ETag $mpota_blob_tag;
add_header Cache-Control "public, max-age=31536000, immutable";
add_header Last-Modified "";
if_modified_since off;
max_ranges 0;"""


def _indented(text: str, indent: str) -> str:
    return "\n".join(indent + line if line else line for line in text.splitlines())


def grant_key_include(key_file: Path) -> str:
    """The http-level include that gives deploy/mpota-grant.js the replicas' grant key:
    `js_var $mpota_grant_key <64 hex>;` (what the operator's one-line command writes,
    docs/operations.md, "Blobs sent by nginx"); the file is made (0600) when missing, as a
    replica makes it. GrantKeyError when `key_file` is not a key file the server would take."""
    from ota_server.grants import GrantKey

    return f"js_var $mpota_grant_key {GrantKey.load_or_create(key_file).secret.hex()};\n"


def grant_http_directives(script: Path, key_include: Path) -> str:
    """http-level: the grant check (njs) and its key."""
    return (f"js_import mpota_grant from {script};\n"
            f"include {key_include};\n"
            f"js_set {GRANT_VARIABLE} mpota_grant.blobGranted;")


def granted_blob_location(upstream: str, indent: str) -> str:
    """The location of `/v1/blobs/<sha256>`: a granted whole-blob GET/HEAD goes to
    @mpota_cached_blob, anything else (an upload, a signed request, a range, a grant njs
    does not accept) to the replicas, as before. docs/operations.md, "Blobs sent by nginx"."""
    return _indented(f"""location ~ "^/v1/blobs/([0-9a-f]{{2}})([0-9a-f]{{62}})$" {{
    set $mpota_blob_file $1/$1$2;
    set $mpota_blob_tag '"$1$2"';
    # 418: only the jump to the named location (an `if` cannot pick one), never an answer.
    error_page 418 = @mpota_cached_blob;
    if ({GRANT_VARIABLE}) {{
        return 418;
    }}
    proxy_pass http://{upstream};
}}""", indent)


def cached_blob_locations(upstream: str, caches: Sequence[Path | str], indent: str) -> str:
    """The named locations behind granted_blob_location: the blob's file from the first of
    the replicas' verified caches (`<cache>/<aa>/<sha256>`, ota_server/storage/s3.py) that
    holds it, sent by nginx with the replica's headers; else (not cached anywhere, or evicted
    between the look and the open) the request goes to the replicas, which check the grant
    again and answer as they do without nginx's check."""
    tries = "".join(f"{cache}/$mpota_blob_file\n              " for cache in caches)
    return _indented(f"""location @mpota_cached_blob {{
    root /;
    try_files {tries}@mpota_blob_from_replicas;
    recursive_error_pages on;
    error_page 403 404 = @mpota_blob_from_replicas;
{_indented(_CACHED_BLOB_HEADERS, "    ")}
}}
location @mpota_blob_from_replicas {{
    proxy_pass http://{upstream};
}}""", indent)


@dataclass(frozen=True)
class BlobGrants:
    """nginx checks download grants itself (njs) and sends a granted blob from the first of
    `caches` (each replica's blob-cache directory) that holds it; `key_file` is the replicas'
    `--grant-key`."""

    key_file: Path
    caches: tuple[Path, ...]


class Nginx:
    """nginx on 127.0.0.1:`port`, one worker, config in `workdir`: serving the files of `root`,
    or, given `upstreams` (base URLs such as http://127.0.0.1:8001), passing every request to
    them in turn over kept-alive connections (a failed upstream is skipped). `accel` maps the
    X-Accel-Redirect prefix of each upstream (`ota serve --blob-accel`) to its blob directory;
    `grants` has nginx check download grants and send granted blobs from the caches itself.
    """

    def __init__(self, root: Path | None, workdir: Path, *,
                 upstreams: Sequence[str] = (), accel: Mapping[str, Path] | None = None,
                 grants: BlobGrants | None = None):
        if (root is None) == (not upstreams):
            raise ValueError("Nginx serves either a root directory or upstreams, exactly one")
        if (accel or grants) and not upstreams:
            raise ValueError("X-Accel-Redirect locations and grants need upstreams")
        self.root = root
        self.workdir = workdir
        self.upstreams = [u.removeprefix("http://").rstrip("/") for u in upstreams]
        self.accel = dict(accel or {})
        self.grants = grants
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def _user_line(self) -> str:
        """Under root nginx's worker runs as nobody, which cannot enter the replicas' data
        directories (test and benchmark scratch directories are 0700): the worker that sends
        their blob files runs as the user that started nginx instead. Production gives nginx's
        own user read access to the cache instead (docs/operations.md)."""
        if not (self.accel or self.grants) or os.geteuid() != 0:
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
        granted = "" if self.grants is None else (
            granted_blob_location("replicas", " " * 8) + "\n"
            + cached_blob_locations("replicas", self.grants.caches, " " * 8))
        # The proxy settings are the server's, so that every location that proxies (the blob
        # locations of `grants` too) has the same.
        return f"""    upstream replicas {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        client_max_body_size 0;
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
        location / {{
            proxy_pass http://replicas;
        }}
{granted}
{accel}
    }}"""

    def _main_lines(self) -> str:
        """Main-context lines: the njs module, when grants are checked."""
        return "" if self.grants is None else f"load_module {njs_module(quiet=True)};"

    def _http_lines(self) -> str:
        """http-level lines: the grant check and its key (written 0600: it is the replicas'
        secret), when grants are checked."""
        if self.grants is None:
            return ""
        include = self.workdir / "mpota-grant-key.conf"
        fd = os.open(include, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(grant_key_include(self.grants.key_file))
        return _indented(grant_http_directives(GRANT_SCRIPT, include), "    ")

    def __enter__(self) -> Nginx:
        conf = self.workdir / "nginx.conf"
        tmp = self.workdir / "nginx-tmp"
        tmp.mkdir(exist_ok=True)
        conf.write_text(f"""
daemon off;
master_process on;
{self._main_lines()}
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
{self._http_lines()}
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
    njs_module(quiet=True)
