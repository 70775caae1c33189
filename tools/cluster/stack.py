"""The whole scale-out stack on 127.0.0.1, for the cluster demo and benchmark: PostgreSQL,
SeaweedFS's S3 gateway, `ota db migrate`, several `ota serve` replicas on them, and nginx
balancing over the replicas (docs/operations.md, "Production layout").

    with Cluster(workdir, root_json, replicas=2) as cluster:
        cluster.client().publish(bundle, channel="stable", percent=100)
        cluster.url                       # nginx, in front of every replica
        cluster.replicas[0].kill()        # a replica's crash; nginx skips it

Each replica has a data directory of its own (its lock and blob cache) and an admin token of
its own in the shared database ("local", "local-2", ...); `cluster.token` is the first one,
named as one LocalServer's, so the audit log reads the same through a cluster. With `tls_dir`
(`ota tls init` made it) nginx terminates https with its server.pem / server.key and talks
plain http to the replicas, as in production (deploy/nginx-mpota-cluster.conf).
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

from ota_server.grants import GrantKey
from tools.api_client import ApiClient
from tools.cluster import ComponentError
from tools.cluster.nginx import BlobGrants, Nginx
from tools.cluster.postgres import PostgresServer
from tools.cluster.seaweed import SeaweedS3
from tools.local_server import LocalServer
from tools.micropython import PROJECT_ROOT

MIGRATE_TIMEOUT = 120.0
DATABASE = "mpota"


class TlsNginx(Nginx):
    """Nginx's load balancer, listening with TLS (the certificate `ota tls init` made)."""

    def __init__(self, workdir: Path, upstreams: list[str], tls_dir: Path, *,
                 accel: dict[str, Path] | None = None, grants: BlobGrants | None = None):
        super().__init__(None, workdir, upstreams=upstreams, accel=accel, grants=grants)
        self.tls_dir = tls_dir

    def _server_block(self) -> str:
        plain = f"listen 127.0.0.1:{self.port};"
        secure = (f"listen 127.0.0.1:{self.port} ssl;\n"
                  f"        ssl_certificate {self.tls_dir / 'server.pem'};\n"
                  f"        ssl_certificate_key {self.tls_dir / 'server.key'};\n"
                  f"        ssl_protocols TLSv1.2 TLSv1.3;")
        block = super()._server_block()
        if plain not in block:
            raise ComponentError("the nginx configuration has no plain listen line to secure")
        return block.replace(plain, secure)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


class Cluster:
    """PostgreSQL + SeaweedFS + `replicas` replicas of `ota serve` + nginx, started in that
    order by `with`, stopped in the reverse order (ComponentError or LocalServerError when a
    part does not come up: everything already started is stopped again).

    `pg_settings` override PostgresServer's test settings (e.g. {"fsync": "on"} for
    production's durability); `extra_args` go to every `ota serve`. With `blob_accel` (the
    default, production's layout) nginx sends whole blobs from each replica's verified cache
    itself: replica N runs with `--blob-accel /_mpota/replicaN`, which nginx maps to its
    blob-cache/ (docs/operations.md, "Blobs sent by nginx"). With `grants` (the default, too)
    every replica runs with `--grant-key` on one key file (`grant_key_path`), so check-ins
    that get an offer carry a download grant, and nginx checks grants itself (njs) and sends
    a granted blob from whichever replica's cache holds it, asking no replica."""

    def __init__(self, workdir: Path, root_json: Path, *, replicas: int = 2,
                 pg_settings: dict[str, str] | None = None, extra_args: list[str] | None = None,
                 tls_dir: Path | None = None, blob_accel: bool = True, grants: bool = True):
        if replicas < 1:
            raise ValueError("a cluster needs at least one replica")
        self.workdir = workdir
        self.root_json = root_json
        self.replica_count = replicas
        self.pg_settings = pg_settings
        self.extra_args = list(extra_args or [])
        self.tls_dir = tls_dir
        self.blob_accel = blob_accel
        self.grants = grants
        self.postgres: PostgresServer | None = None
        self.s3: SeaweedS3 | None = None
        self.replicas: list[LocalServer] = []
        self.nginx: Nginx | None = None
        self.db_url = ""
        self.blobs_url = ""
        self._stack = ExitStack()

    # -- what clients use ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    @property
    def token(self) -> str:
        return self.replicas[0].token

    @property
    def ca_path(self) -> Path | None:
        return None if self.tls_dir is None else self.tls_dir / "ca.pem"

    @property
    def data_dir(self) -> Path:
        """Where the replicas' data directories (and logs) are."""
        return self.workdir / "replicas"

    @property
    def grant_key_path(self) -> Path:
        """The replicas' shared grant key file (`--grant-key`), when `grants`."""
        return self.workdir / "grant.key"

    def client(self) -> ApiClient:
        """A publisher client of the cluster, through nginx."""
        return ApiClient(self.url, self.token, ca=self.ca_path)

    def env(self) -> dict[str, str]:
        """The environment of a replica: this one's, with the S3 gateway's keys."""
        assert self.s3 is not None
        return {**os.environ, **self.s3.credentials_env()}

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.close()

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.postgres = self._stack.enter_context(PostgresServer(settings=self.pg_settings))
        self.db_url = self.postgres.create_database(DATABASE)
        self.s3 = self._stack.enter_context(SeaweedS3())
        self.blobs_url = self.s3.url()
        self.migrate()
        accel: dict[str, Path] = {}
        caches: list[Path] = []
        if self.grants:
            GrantKey.load_or_create(self.grant_key_path)  # 0600, as every replica needs it
        for n in range(1, self.replica_count + 1):
            data_dir = self.data_dir / f"replica{n}"
            caches.append(data_dir / "blob-cache")  # Settings.blob_cache_dir
            extra = list(self.extra_args)
            if self.grants:
                extra += ["--grant-key", str(self.grant_key_path)]
            if self.blob_accel:
                prefix = f"/_mpota/replica{n}"
                extra += ["--blob-accel", prefix]
                accel[prefix] = data_dir / "blob-cache"  # Settings.blob_cache_dir
            replica = LocalServer(data_dir, self.root_json,
                                  db_url=self.db_url, blobs_url=self.blobs_url, env=self.env(),
                                  extra_args=extra,
                                  publisher="local" if n == 1 else f"local-{n}")
            self._stack.enter_context(replica)
            self.replicas.append(replica)
        upstreams = [replica.url for replica in self.replicas]
        lb_dir = self.workdir / "nginx"
        lb_dir.mkdir(exist_ok=True)
        grants = BlobGrants(self.grant_key_path, tuple(caches)) if self.grants else None
        self.nginx = (Nginx(None, lb_dir, upstreams=upstreams, accel=accel, grants=grants)
                      if self.tls_dir is None
                      else TlsNginx(lb_dir, upstreams, self.tls_dir, accel=accel,
                                    grants=grants))
        self._stack.enter_context(self.nginx)

    def migrate(self) -> None:
        """`ota db migrate --db URL --blobs URL`, as an operator runs it before the replicas
        start (ComponentError with its output when it fails)."""
        env = {**self.env(), "PYTHONPATH": str(PROJECT_ROOT)}
        done = subprocess.run([sys.executable, "-m", "tools.cli", "db", "migrate",
                               "--db", self.db_url, "--blobs", self.blobs_url],
                              capture_output=True, text=True, env=env, cwd=PROJECT_ROOT,
                              timeout=MIGRATE_TIMEOUT, check=False)
        if done.returncode != 0:
            raise ComponentError(f"ota db migrate failed: {done.stderr[-1000:]}")

    def stop(self) -> None:
        """Stop nginx and every replica (SIGTERM): the cluster answers nothing."""
        if self.nginx is not None:
            self.nginx.__exit__()
        for replica in self.replicas:
            replica.stop()

    def start(self) -> Cluster:
        """Start the replicas and nginx again, on their ports, after `stop`."""
        for replica in self.replicas:
            replica.start()
        if self.nginx is not None and self.nginx.process is None:
            self.nginx.__enter__()
        return self
