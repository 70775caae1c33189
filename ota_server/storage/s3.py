"""The scale-out blob store: content-addressed blobs in an S3-compatible bucket (aiobotocore),
with a local read-through cache so a replica sends blobs to boards from its own disk (bounded:
least recently used files go first).

Located by a URL, `s3://BUCKET?endpoint=http://HOST:PORT[&region=NAME]`, parsed strictly; the
keys come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never from the URL.

An upload never becomes visible before its size and hash are checked: a blob that fits in one
part is held in memory, checked, then stored with one PUT; a larger one goes up as a multipart
upload that is completed (the only step that makes an object visible) after the hash of every
byte matched, and aborted otherwise. Blobs are immutable, so the cache needs no invalidation:
a file enters it only through an atomic rename after its hash matched, and a file this process
did not write or check itself (left by an earlier run) is hashed again before its first use.
A file changed on disk after this process checked it (its inode, size or change time differ
from what the process saw after its own last use) is hashed again before it is handed out.

Driver exceptions never leave this module: StoreNotFound for a missing blob, StoreUnavailable
when the store cannot be reached or fails (5xx), StoreError when it refuses the request.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from aiobotocore.session import AioSession, get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from ota_server.storage.blobs import BlobHashMismatch, BlobTooLarge, check_blob_id
from ota_server.storage.errors import StoreError, StoreNotFound, StoreUnavailable

# S3's smallest part but the last is 5 MiB; a blob up to one part is checked in memory.
MIN_PART_SIZE = 5 * 1024 * 1024
DEFAULT_PART_SIZE = 8 * 1024 * 1024
READ_CHUNK = 256 * 1024
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 30.0
# A cache fill in progress is seconds old; a temp file older than this was left by a crash.
STALE_TEMP_SECONDS = 3600
DEFAULT_REGION = "us-east-1"
# The local cache's default bound: a few hundred releases of a few MB each.
DEFAULT_CACHE_MAX_BYTES = 2 * 1024 * 1024 * 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z0-9-]{1,32}$")
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")
_REFUSED = ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
_BUSY = ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    endpoint: str
    region: str = DEFAULT_REGION

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}?endpoint={self.endpoint}&region={self.region}"


def parse_s3_url(url: str) -> S3Location:
    """The bucket, endpoint and region of `s3://BUCKET?endpoint=http(s)://HOST[:PORT]
    [&region=NAME]`; ValueError saying what is wrong with anything else (keys in the URL, a
    path, an unknown or repeated parameter, a malformed bucket name or endpoint)."""
    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise ValueError(f"blob store URL does not parse: {err}") from None
    if parts.scheme != "s3":
        raise ValueError(f"blob store URL must start with s3://, got scheme {parts.scheme!r}")
    if "@" in parts.netloc or ":" in parts.netloc:
        raise ValueError("blob store URL: s3://BUCKET takes a bucket name only; keys come from "
                         "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the address from "
                         "?endpoint=")
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"blob store URL: {bucket!r} is not a bucket name (3 to 63 lowercase "
                         "letters, digits, dots and hyphens, starting and ending with a letter "
                         "or digit)")
    if parts.path not in ("", "/"):
        raise ValueError(f"blob store URL: a path ({parts.path!r}) is not supported; name the "
                         "bucket only")
    if parts.fragment:
        raise ValueError("blob store URL must not have a #fragment")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ValueError(f"blob store URL: query {parts.query!r} is not name=value pairs "
                         "joined by &") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in ("endpoint", "region"):
            raise ValueError(f"blob store URL: unknown parameter {name!r} (endpoint, region)")
        if name in params:
            raise ValueError(f"blob store URL: parameter {name!r} given twice")
        params[name] = value
    if "endpoint" not in params:
        raise ValueError("blob store URL needs ?endpoint=http(s)://HOST:PORT (the S3 server)")
    region = params.get("region", DEFAULT_REGION)
    if not _REGION.fullmatch(region):
        raise ValueError(f"blob store URL: region {region!r} is not a region name")
    return S3Location(bucket=bucket, endpoint=_check_endpoint(params["endpoint"]), region=region)


def _check_endpoint(endpoint: str) -> str:
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError as err:
        raise ValueError(f"blob store URL: endpoint {endpoint!r} does not parse: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"blob store URL: endpoint {endpoint!r} must be http(s)://HOST[:PORT]")
    if parts.username is not None or parts.path not in ("", "/") or parts.query \
            or parts.fragment:
        raise ValueError(f"blob store URL: endpoint {endpoint!r} must be http(s)://HOST[:PORT] "
                         "with nothing after the port")
    return endpoint.rstrip("/")


def credentials_from_env(environ: Mapping[str, str]) -> tuple[str, str]:
    """(access key id, secret key) from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY;
    ValueError naming the variable that is missing or empty (never showing a value)."""
    found = []
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        value = environ.get(name, "")
        if not value:
            raise ValueError(f"the S3 blob store needs {name} in the environment")
        found.append(value)
    return found[0], found[1]


def _translate(err: BaseException, what: str) -> BaseException:
    """The storage error for an S3 client or socket exception; anything else unchanged."""
    if isinstance(err, StoreError):
        return err
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND:
            return StoreNotFound(f"{what}: no such blob")
        if code in _REFUSED:
            return StoreError(f"{what}: the S3 server refused the request ({code}): check "
                              "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy")
        if code == "NoSuchBucket":
            return StoreError(f"{what}: the bucket does not exist")
        if status >= 500 or code in _BUSY:
            return StoreUnavailable(f"{what}: the S3 server failed ({code or status})")
        return StoreError(f"{what}: the S3 server answered {code or status}: "
                          f"{error.get('Message', '')}")
    if isinstance(err, BotoConnectionError | HTTPClientError | aiohttp.ClientError | OSError
                  | TimeoutError):
        return StoreUnavailable(f"{what}: S3 server unreachable: {type(err).__name__}: {err}")
    if isinstance(err, BotoCoreError):
        return StoreError(f"{what}: {type(err).__name__}: {err}")
    return err


@asynccontextmanager
async def _s3_errors(what: str) -> AsyncIterator[None]:
    try:
        yield
    except Exception as err:
        translated = _translate(err, what)
        if translated is err:
            raise
        raise translated from err


def _touch(path: Path) -> bool:
    """Mark a cache file used now (its mtime orders eviction); False when it is gone."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


# What a cache file's stat() said after this process last used it: (inode, size, change time).
_Seen = tuple[int, int, int]


def _stat_seen(path: Path) -> _Seen | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_size, info.st_ctime_ns


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def shared_session() -> AioSession:
    """The process's one botocore session, which every S3 client is made from. A session holds
    about 11 MB of parsed service descriptions, and botocore keeps recent clients (and so
    their sessions) alive in a global cache: a process that opens stores again and again
    (the test suite, tools) would hold a copy per client, up to a gigabyte."""
    return get_session()


class S3BlobStore:
    """BlobStore on an S3-compatible bucket: objects `blobs/<sha256>`, plus a local cache
    directory `<cache>/<aa>/<sha256>` (and `<cache>/tmp/` for fills in progress)."""

    def __init__(self, client: Any, location: S3Location, cache_dir: Path,
                 exit_stack: AsyncExitStack, part_size: int = DEFAULT_PART_SIZE,
                 cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES, keep_recent: float = 0.0):
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if cache_max_bytes < 0:
            raise ValueError(f"cache_max_bytes must not be negative, got {cache_max_bytes}")
        if not 0 <= keep_recent < float("inf"):
            raise ValueError(f"keep_recent must be a number of seconds >= 0, got {keep_recent}")
        self._cache_max_bytes = cache_max_bytes
        # Files used this recently are never evicted: another process (nginx, given the path
        # by X-Accel-Redirect) may be about to open them.
        self._keep_recent = keep_recent
        self._client = client
        self.location = location
        self.cache_dir = cache_dir
        self._exit_stack = exit_stack
        self._part_size = part_size
        # Cache files this process wrote or hashed, with what stat() said after its last use.
        self._verified: dict[str, _Seen] = {}
        self._fills: dict[str, asyncio.Lock] = {}
        self._tmp = cache_dir / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._drop_stale_temp_files()

    @classmethod
    async def open(cls, url: str, cache_dir: Path, *, environ: Mapping[str, str] | None = None,
                   part_size: int = DEFAULT_PART_SIZE,
                   cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
                   keep_recent: float = 0.0) -> S3BlobStore:
        """A store on the bucket `url` names, keys from `environ` (default: os.environ);
        ValueError for a malformed URL or missing keys. Opening sends no request.
        `cache_max_bytes` bounds the local cache; files used in the last `keep_recent`
        seconds are never evicted (they may then hold the cache above its bound)."""
        location = parse_s3_url(url)
        access_key, secret_key = credentials_from_env(os.environ if environ is None
                                                      else environ)
        stack = AsyncExitStack()
        client = await stack.enter_async_context(shared_session().create_client(
            "s3", endpoint_url=location.endpoint, region_name=location.region,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(s3={"addressing_style": "path"}, connect_timeout=CONNECT_TIMEOUT,
                          read_timeout=READ_TIMEOUT,
                          retries={"max_attempts": 2, "mode": "standard"})))
        try:
            return cls(client, location, cache_dir, stack, part_size, cache_max_bytes,
                       keep_recent)
        except BaseException:
            await stack.aclose()
            raise

    async def close(self) -> None:
        await self._exit_stack.aclose()

    def key(self, sha256: str) -> str:
        """The object key of a blob (ValueError for anything but 64 lowercase hex digits)."""
        return f"blobs/{check_blob_id(sha256)}"

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (set-up, not a server's start-up path)."""
        async with _s3_errors(f"bucket {self.location.bucket}"):
            try:
                await self._client.head_bucket(Bucket=self.location.bucket)
                return
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                    raise
            await self._client.create_bucket(Bucket=self.location.bucket)

    # -- queries ------------------------------------------------------------------------------

    async def size(self, sha256: str) -> int | None:
        """The blob's size in bytes, None when it is not stored."""
        key = self.key(sha256)
        try:
            async with _s3_errors(f"blob {sha256}"):
                head = await self._client.head_object(Bucket=self.location.bucket, Key=key)
        except StoreNotFound:
            return None
        return int(head["ContentLength"])

    async def exists(self, sha256: str) -> bool:
        return await self.size(sha256) is not None

    # -- writes -------------------------------------------------------------------------------

    async def put_stream(self, sha256: str, chunks: AsyncIterator[bytes], max_bytes: int) -> bool:
        """Store the bytes if their hash is `sha256`; True if newly written, False if the blob
        was stored already. Raises BlobTooLarge past `max_bytes`, BlobHashMismatch when the
        bytes hash to something else, StoreUnavailable / StoreError when the store fails: in
        every case nothing is visible under the blob's key that was not there before."""
        key = self.key(sha256)
        digest = hashlib.sha256()
        buffer = bytearray()
        total = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                total += len(chunk)
                if total > max_bytes:
                    raise BlobTooLarge(f"blob is larger than the limit of {max_bytes} bytes")
                digest.update(chunk)
                buffer += chunk
                if len(buffer) >= self._part_size:
                    if upload_id is None:
                        upload_id = await self._start_multipart(key)
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1,
                                                         bytes(buffer)))
                    buffer.clear()
            actual = digest.hexdigest()
            if actual != sha256:
                raise BlobHashMismatch(f"body hashes to {actual}, not to the blob id {sha256}")
            if await self.exists(sha256):
                return False
            async with _s3_errors(f"storing blob {sha256}"):
                if upload_id is None:
                    await self._client.put_object(Bucket=self.location.bucket, Key=key,
                                                  Body=bytes(buffer))
                else:
                    if buffer:
                        parts.append(await self._upload_part(key, upload_id, len(parts) + 1,
                                                             bytes(buffer)))
                    await self._client.complete_multipart_upload(
                        Bucket=self.location.bucket, Key=key, UploadId=upload_id,
                        MultipartUpload={"Parts": parts})
                    upload_id = None
            return True
        finally:
            if upload_id is not None:
                await asyncio.shield(self._abort_multipart(key, upload_id))

    async def _start_multipart(self, key: str) -> str:
        async with _s3_errors("starting an upload"):
            answer = await self._client.create_multipart_upload(Bucket=self.location.bucket,
                                                                Key=key)
        return str(answer["UploadId"])

    async def _upload_part(self, key: str, upload_id: str, number: int,
                           body: bytes) -> dict[str, Any]:
        async with _s3_errors(f"uploading part {number}"):
            answer = await self._client.upload_part(
                Bucket=self.location.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                Body=body)
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def _abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an upload's parts; best effort (a store that is down keeps them until its own
        expiry of unfinished uploads: they are never visible as an object)."""
        with suppress(ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError):
            await self._client.abort_multipart_upload(Bucket=self.location.bucket, Key=key,
                                                      UploadId=upload_id)

    # -- reads --------------------------------------------------------------------------------

    async def read(self, sha256: str, start: int = 0,
                   length: int | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes from `start`, `length` of them (to the end when None), streamed in
        chunks of at most READ_CHUNK; StoreNotFound when it is not stored, ValueError for a
        negative start or length, or a start past the end."""
        if start < 0 or (length is not None and length < 0):
            raise ValueError(f"blob range must not be negative: start {start}, length {length}")
        key = self.key(sha256)
        if length == 0:
            return
        # The whole blob is asked for without a Range: S3 answers any range of an empty
        # object with InvalidRange (it has no byte 0), but the whole of it is its 0 bytes.
        ranged = {} if start == 0 and length is None else {
            "Range": f"bytes={start}-{'' if length is None else start + length - 1}"}
        async with _s3_errors(f"blob {sha256}"):
            try:
                answer = await self._client.get_object(
                    Bucket=self.location.bucket, Key=key, **ranged)
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") == "InvalidRange":
                    raise ValueError(f"blob {sha256} has no byte {start}") from None
                raise
            async with answer["Body"] as body:
                while chunk := await body.read(READ_CHUNK):
                    yield chunk

    # -- local cache --------------------------------------------------------------------------

    def cache_path(self, sha256: str) -> Path:
        return self.cache_dir / sha256[:2] / check_blob_id(sha256)

    async def local_path(self, sha256: str) -> Path:
        """A local file holding exactly the blob, for sendfile or nginx (X-Accel-Redirect):
        from the cache when it is there and its hash matches, else fetched from the store into
        the cache first. StoreNotFound when the blob is not stored; StoreError when the store
        returned bytes that do not hash to the id (nothing is cached then)."""
        path = self.cache_path(sha256)
        if self._use_if_unchanged(sha256, path):
            return path
        lock = self._fills.setdefault(sha256, asyncio.Lock())
        async with lock:
            if self._use_if_unchanged(sha256, path):
                return path
            self._verified.pop(sha256, None)
            if _touch(path):
                if await asyncio.to_thread(_hash_file, path) == sha256:
                    self._remember(sha256, path)
                    return path
                path.unlink(missing_ok=True)  # damaged on disk: fetch again
            await self._fill(sha256, path)
            self._remember(sha256, path)
            self._evict(keep=path)
        self._fills.pop(sha256, None)
        return path

    def _use_if_unchanged(self, sha256: str, path: Path) -> bool:
        """Mark a verified cache file used now and True, if it is there and unchanged since
        this process last used it (same inode, size and change time: any write, truncation,
        replacement, chmod or time change moves the change time, which no one can set back)."""
        seen = self._verified.get(sha256)
        if seen is None or _stat_seen(path) != seen or not _touch(path):
            return False
        self._remember(sha256, path)
        return True

    def _remember(self, sha256: str, path: Path) -> None:
        seen = _stat_seen(path)
        if seen is None:
            self._verified.pop(sha256, None)
        else:
            self._verified[sha256] = seen

    async def open_blob(self, sha256: str) -> BinaryIO:
        """The blob as a local file opened for reading (the verified cache, filled first when
        needed): what the server sends with sendfile. StoreNotFound, StoreUnavailable and
        StoreError as local_path."""
        for _ in range(2):  # another request's fill may evict the file between the two steps
            path = await self.local_path(sha256)
            try:
                return open(path, "rb")
            except FileNotFoundError:
                self._verified.pop(sha256, None)
        raise StoreUnavailable(f"blob {sha256}: the local cache is too small to hold it")

    def _evict(self, keep: Path) -> None:
        """Delete the least recently used cache files until the cache holds at most
        cache_max_bytes (never `keep`, the file just filled, nor a file used in the last
        keep_recent seconds). A file being sent stays readable through its open descriptor;
        the next request for it fills it again."""
        files = []
        for path in self.cache_dir.glob("??/*"):
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            files.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in files)
        recent = time.time() - self._keep_recent
        for mtime, size, path in sorted(files):
            if total <= self._cache_max_bytes or (self._keep_recent and mtime >= recent):
                break  # sorted by time: every later file is as recent
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            self._verified.pop(path.name, None)
            total -= size

    async def _fill(self, sha256: str, path: Path) -> None:
        tmp = self._tmp / f"{sha256}.{secrets.token_hex(8)}"
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as out:
                async for chunk in self.read(sha256):
                    digest.update(chunk)
                    out.write(chunk)
            actual = digest.hexdigest()
            if actual != sha256:
                raise StoreError(f"the S3 object of blob {sha256} hashes to {actual}: not cached")
            path.parent.mkdir(exist_ok=True)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _drop_stale_temp_files(self) -> None:
        """Remove fills a crash cut short; recent ones may belong to a running process."""
        cutoff = time.time() - STALE_TEMP_SECONDS
        for leftover in self._tmp.iterdir():
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
            except FileNotFoundError:
                continue
