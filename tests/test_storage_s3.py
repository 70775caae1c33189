"""The S3 blob store against a real SeaweedFS S3 gateway (tests/cluster_support.py): uploads
checked before they are visible, ranged reads, the local read-through cache, and the typed
errors when the store is down or refuses the keys."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ota_server.storage.blobs import BlobHashMismatch, BlobTooLarge, FileBlobStore
from ota_server.storage.errors import StoreError, StoreNotFound, StoreUnavailable
from ota_server.storage.s3 import (
    MIN_PART_SIZE,
    S3BlobStore,
    S3Location,
    credentials_from_env,
    parse_s3_url,
)
from tools.cluster.seaweed import SeaweedS3
from tools.local_server import free_port

MIB = 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset:offset + size]


async def _read(store: S3BlobStore, sha: str, start: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.read(sha, start, length)])


@pytest.fixture
async def store(s3_url: str, tmp_path: Path) -> AsyncIterator[S3BlobStore]:
    opened = await S3BlobStore.open(s3_url, tmp_path / "cache", part_size=MIN_PART_SIZE)
    yield opened
    await opened.close()


def _bucket_contents(seaweed: SeaweedS3, bucket: str) -> tuple[list[str], list[str]]:
    """(object keys, keys of unfinished multipart uploads) of a bucket, read directly."""
    client = seaweed.client()
    try:
        objects = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    finally:
        client.close()
    return [o["Key"] for o in objects], [u["Key"] for u in uploads]


# -- the URL and the keys -----------------------------------------------------------------------

def test_a_well_formed_url_names_bucket_endpoint_and_region() -> None:
    assert parse_s3_url("s3://fleet-blobs?endpoint=http://127.0.0.1:8333") == S3Location(
        "fleet-blobs", "http://127.0.0.1:8333", "us-east-1")
    assert parse_s3_url("s3://a.b-c/?region=eu-west-1&endpoint=https://s3.internal/") == (
        S3Location("a.b-c", "https://s3.internal", "eu-west-1"))


@pytest.mark.parametrize("url, message", [
    ("http://bucket?endpoint=http://h", "must start with s3://"),
    ("s3://key:secret@bucket?endpoint=http://h", "bucket name only"),
    ("s3://bucket:80?endpoint=http://h", "bucket name only"),
    ("s3://Bucket?endpoint=http://h", "is not a bucket name"),
    ("s3://ab?endpoint=http://h", "is not a bucket name"),
    ("s3://a..b?endpoint=http://h", "is not a bucket name"),
    ("s3://-ab?endpoint=http://h", "is not a bucket name"),
    ("s3://bucket/prefix?endpoint=http://h", "a path"),
    ("s3://bucket", "needs ?endpoint="),
    ("s3://bucket?endpoint=http://h&endpoint=http://i", "given twice"),
    ("s3://bucket?endpoint=http://h&acl=public", "unknown parameter 'acl'"),
    ("s3://bucket?endpoint", "not name=value"),
    ("s3://bucket?endpoint=ftp://h", "must be http(s)://HOST"),
    ("s3://bucket?endpoint=http://", "must be http(s)://HOST"),
    ("s3://bucket?endpoint=http://h:port", "does not parse"),
    ("s3://bucket?endpoint=http://h/path", "nothing after the port"),
    ("s3://bucket?endpoint=http://u:p@h", "nothing after the port"),
    ("s3://bucket?endpoint=http://h&region=EU WEST", "not a region name"),
    ("s3://bucket?endpoint=http://h#frag", "fragment"),
])
def test_malformed_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_s3_url(url)


@settings(max_examples=100, deadline=None)
@given(url=st.one_of(st.text(max_size=80),
                     st.builds(lambda b, q: f"s3://{b}?{q}", st.text(max_size=20),
                               st.text(max_size=40))))
def test_any_url_parses_or_is_refused_with_value_error(url: str) -> None:
    try:
        location = parse_s3_url(url)
    except ValueError:
        return
    assert parse_s3_url(location.url) == location


def test_keys_come_from_the_environment_and_a_missing_one_is_named() -> None:
    assert credentials_from_env({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}) == (
        "k", "s")
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY"):
        credentials_from_env({"AWS_ACCESS_KEY_ID": "k"})
    with pytest.raises(ValueError, match="AWS_ACCESS_KEY_ID"):
        credentials_from_env({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "s"})


# -- uploads and reads --------------------------------------------------------------------------

async def test_a_blob_is_stored_once_and_read_back_whole_and_in_ranges(
        store: S3BlobStore) -> None:
    data = os.urandom(300_000)
    sha = _sha(data)
    assert not await store.exists(sha) and await store.size(sha) is None
    assert await store.put_stream(sha, _chunks(data), 1_000_000)
    assert not await store.put_stream(sha, _chunks(data), 1_000_000)  # already there
    assert await store.exists(sha) and await store.size(sha) == len(data)
    assert await _read(store, sha) == data
    assert await _read(store, sha, 1000, 5000) == data[1000:6000]
    assert await _read(store, sha, len(data) - 10) == data[-10:]
    assert await _read(store, sha, 5, 0) == b""
    with pytest.raises(ValueError, match="no byte"):
        await _read(store, sha, len(data) + 1)
    with pytest.raises(ValueError, match="negative"):
        await _read(store, sha, -1)
    missing = _sha(b"missing")
    with pytest.raises(StoreNotFound):
        await _read(store, missing)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        await store.exists("../" + sha[3:])


async def test_a_blob_larger_than_a_part_goes_up_in_parts(
        store: S3BlobStore, seaweed: SeaweedS3) -> None:
    data = os.urandom(2 * MIN_PART_SIZE + 12345)
    sha = _sha(data)
    assert await store.put_stream(sha, _chunks(data, MIB), 3 * MIN_PART_SIZE)
    assert await store.size(sha) == len(data)
    assert _sha(await _read(store, sha)) == sha
    assert await _read(store, sha, MIN_PART_SIZE - 3, 6) == data[MIN_PART_SIZE - 3:
                                                               MIN_PART_SIZE + 3]
    assert _bucket_contents(seaweed, store.location.bucket) == ([store.key(sha)], [])


@pytest.mark.parametrize("size", [50_000, 2 * MIN_PART_SIZE + 1])
async def test_a_wrong_hash_leaves_nothing_visible(store: S3BlobStore, seaweed: SeaweedS3,
                                                   size: int) -> None:
    data = os.urandom(size)
    claimed = _sha(data + b"x")
    with pytest.raises(BlobHashMismatch):
        await store.put_stream(claimed, _chunks(data, MIB), 4 * MIN_PART_SIZE)
    assert not await store.exists(claimed)
    assert _bucket_contents(seaweed, store.location.bucket) == ([], [])


@pytest.mark.parametrize("size, cap", [(50_000, 49_999),
                                       (2 * MIN_PART_SIZE + 1, 2 * MIN_PART_SIZE)])
async def test_a_blob_over_the_cap_leaves_nothing_visible(
        store: S3BlobStore, seaweed: SeaweedS3, size: int, cap: int) -> None:
    data = os.urandom(size)
    with pytest.raises(BlobTooLarge):
        await store.put_stream(_sha(data), _chunks(data, MIB), cap)
    assert _bucket_contents(seaweed, store.location.bucket) == ([], [])
    assert await store.put_stream(_sha(data), _chunks(data, MIB), size)  # at the cap: stored


async def test_an_upload_in_progress_is_not_visible(store: S3BlobStore) -> None:
    data = os.urandom(MIN_PART_SIZE + 1000)
    sha = _sha(data)
    first_part_sent = asyncio.Event()
    finish = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield data[:MIN_PART_SIZE]
        yield data[MIN_PART_SIZE:MIN_PART_SIZE + 1]  # the part above goes up before this
        first_part_sent.set()
        await finish.wait()
        yield data[MIN_PART_SIZE + 1:]

    upload = asyncio.create_task(store.put_stream(sha, body(), len(data)))
    await asyncio.wait_for(first_part_sent.wait(), 30)
    assert not await store.exists(sha)
    with pytest.raises(StoreNotFound):
        await _read(store, sha)
    finish.set()
    assert await asyncio.wait_for(upload, 30)
    assert _sha(await _read(store, sha)) == sha


async def test_concurrent_uploads_of_one_blob_both_succeed(store: S3BlobStore) -> None:
    data = os.urandom(100_000)
    sha = _sha(data)
    results = await asyncio.gather(*(store.put_stream(sha, _chunks(data), len(data))
                                     for _ in range(3)))
    assert True in results
    assert await _read(store, sha) == data


# -- the same upload rules on both blob backends -----------------------------------------------

async def _store_holding(s3_url: str, cache: Path, sha: str, data: bytes) -> S3BlobStore:
    """A store on the bucket, with `data` stored under `sha` (put once, kept across examples)."""
    store = await S3BlobStore.open(s3_url, cache)
    try:
        if not await store.exists(sha):
            await store.put_stream(sha, _chunks(data), len(data))
    except BaseException:
        await store.close()
        raise
    return store


async def _read_opened(blobs: Any, sha: str, start: int = 0, length: int = -1) -> bytes:
    """Bytes of a blob through the BlobStore protocol's open_blob (what the server sends)."""
    with await blobs.open_blob(sha) as fobj:
        fobj.seek(start)
        return bytes(fobj.read(length))


@pytest.fixture(params=["directory", "s3"])
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "directory":
        yield FileBlobStore(tmp_path / "blobs")
        return
    opened = await S3BlobStore.open(request.getfixturevalue("s3_url"), tmp_path / "cache")
    yield opened
    await opened.close()


async def test_both_blob_backends_keep_the_same_upload_rules(blobs: Any) -> None:
    data = os.urandom(70_000)
    sha = _sha(data)
    with pytest.raises(BlobTooLarge):
        await blobs.put_stream(sha, _chunks(data), len(data) - 1)
    with pytest.raises(BlobHashMismatch):
        await blobs.put_stream(_sha(b"other"), _chunks(data), len(data))
    assert not await blobs.exists(sha) and not await blobs.exists(_sha(b"other"))
    assert await blobs.size(sha) is None
    assert await blobs.put_stream(sha, _chunks(data), len(data)) is True
    assert await blobs.put_stream(sha, _chunks(data), len(data)) is False
    assert await blobs.size(sha) == len(data)
    assert await _read_opened(blobs, sha, 100, 1000) == data[100:1100]
    assert await _read_opened(blobs, sha) == data
    with pytest.raises(StoreNotFound):
        await blobs.open_blob(_sha(b"never stored"))
    with pytest.raises(ValueError, match="64 lowercase hex"):
        await blobs.exists(sha.upper())


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.sampled_from([0, 1, 4, 102_404]), start=st.integers(min_value=0,
                                                                  max_value=102_410),
       length=st.one_of(st.none(), st.integers(min_value=0, max_value=120_000)))
def test_any_range_reads_exactly_those_bytes(s3_url: str, tmp_path: Path, size: int,
                                             start: int, length: int | None) -> None:
    """Any range of a blob of any size (an empty one too: a pack may hold empty files) reads
    exactly its bytes; a range starting past the end is a ValueError, the whole blob never."""
    data = (bytes(range(256)) * 400 + b"tail")[:size]
    sha = _sha(data)

    async def run() -> bytes:
        store = await _store_holding(s3_url, tmp_path / "cache", sha, data)
        try:
            if start == 0 and length is None:  # the whole blob, as a cache fill reads it
                assert await _read_opened(store, sha) == data
            return await _read(store, sha, start, length)
        finally:
            await store.close()

    end = len(data) if length is None else start + length
    if start >= len(data) and length != 0 and not (start == 0 and length is None):
        with pytest.raises(ValueError, match="has no byte"):
            asyncio.run(run())
    else:
        assert asyncio.run(run()) == data[start:end]


# -- the store down or refusing -----------------------------------------------------------------

async def test_a_store_that_is_down_gives_store_unavailable(tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    down = await S3BlobStore.open(f"s3://mpota?endpoint=http://127.0.0.1:{free_port()}",
                                  tmp_path / "cache", environ=env)
    try:
        data = b"a blob"
        with pytest.raises(StoreUnavailable):
            await down.exists(_sha(data))
        with pytest.raises(StoreUnavailable):
            await down.put_stream(_sha(data), _chunks(data), 100)
        with pytest.raises(StoreUnavailable):
            await _read(down, _sha(data))
        with pytest.raises(StoreUnavailable):
            await down.local_path(_sha(data))
        assert list((tmp_path / "cache").rglob("*" + _sha(data) + "*")) == []
    finally:
        await down.close()


async def test_wrong_keys_are_a_store_error_that_does_not_show_them(
        s3_url: str, tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
           "AWS_SECRET_ACCESS_KEY": "wrong-secret-key-0123456789"}
    refused = await S3BlobStore.open(s3_url, tmp_path / "cache", environ=env)
    try:
        data = b"a blob"
        with pytest.raises(StoreError, match="refused") as caught:
            await refused.put_stream(_sha(data), _chunks(data), 100)
        assert not isinstance(caught.value, StoreUnavailable)
        assert "wrong-secret-key" not in str(caught.value)
    finally:
        await refused.close()


# -- the local read-through cache ---------------------------------------------------------------

async def test_the_cache_is_filled_verified_and_used_without_the_store(
        store: S3BlobStore, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    sha = _sha(data)
    await store.put_stream(sha, _chunks(data), len(data))
    paths = await asyncio.gather(*(store.local_path(sha) for _ in range(4)))
    path = paths[0]
    assert set(paths) == {path} and path.read_bytes() == data
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    with pytest.raises(StoreNotFound):
        await store.local_path(_sha(b"not stored"))

    # Another replica process on the same cache, with the store down: the file is hashed once
    # and served; a damaged file is dropped and fetched again (which fails while it is down).
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    down = await S3BlobStore.open(f"s3://mpota?endpoint=http://127.0.0.1:{free_port()}",
                                  tmp_path / "cache", environ=env)
    try:
        assert await down.local_path(sha) == path
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        down._verified.clear()  # a process that has not checked this file yet
        with pytest.raises(StoreUnavailable):
            await down.local_path(sha)
        assert not path.exists()
    finally:
        await down.close()
    # The live store fetches it again and the copy is whole.
    store._verified.clear()
    assert (await store.local_path(sha)).read_bytes() == data


async def test_an_object_that_does_not_match_its_id_is_never_cached(
        store: S3BlobStore, seaweed: SeaweedS3, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    sha = _sha(data)
    client = seaweed.client()  # damage the stored object behind the store's back
    try:
        client.put_object(Bucket=store.location.bucket, Key=store.key(sha), Body=b"other bytes")
    finally:
        client.close()
    with pytest.raises(StoreError, match="hashes to"):
        await store.local_path(sha)
    cached: Iterable[Path] = (p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert list(cached) == []


async def test_the_cache_stays_under_its_bound_dropping_the_least_recently_used(
        s3_url: str, tmp_path: Path) -> None:
    store = await S3BlobStore.open(s3_url, tmp_path / "cache", cache_max_bytes=250_000)
    try:
        blobs = [os.urandom(100_000) for _ in range(3)]
        shas = [_sha(b) for b in blobs]
        for data, sha in zip(blobs, shas, strict=True):
            await store.put_stream(sha, _chunks(data), len(data))
        first = await store.local_path(shas[0])
        await asyncio.sleep(0.05)  # file times tick in milliseconds
        second = await store.local_path(shas[1])
        await asyncio.sleep(0.05)
        assert await store.local_path(shas[0]) == first  # used again: now the newest
        await asyncio.sleep(0.05)
        third = await store.local_path(shas[2])
        assert first.exists() and third.exists() and not second.exists()
        cached = [p for p in (tmp_path / "cache").glob("??/*")]
        assert sum(p.stat().st_size for p in cached) <= 250_000
        # Dropped from the cache, not from the store: it is fetched again, whole.
        assert (await store.local_path(shas[1])).read_bytes() == blobs[1]
    finally:
        await store.close()


async def test_the_cache_bound_setting_reaches_the_store_and_eviction_honours_it(
        s3_url: str, tmp_path: Path) -> None:
    """--blob-cache-bytes (Settings.blob_cache_bytes) through open_blob_store: blobs of 100 KB
    under a 250 KB bound (limits shrunk so that the bound may be that small)."""
    from ota_server.app import open_blob_store
    from ota_server.settings import Limits, Settings

    settings = Settings(data_dir=tmp_path, blobs_url=s3_url, blob_cache_bytes=250_000,
                        limits=Limits(max_blob_bytes=100_000))
    store = await open_blob_store(settings)
    try:
        blobs = [os.urandom(100_000) for _ in range(4)]
        for data in blobs:
            await store.put_stream(_sha(data), _chunks(data), len(data))
            await store.local_path(_sha(data))
            await asyncio.sleep(0.02)  # file times tick in milliseconds
        cached = list(settings.blob_cache_dir.glob("??/*"))
        assert sorted(p.name for p in cached) == sorted(_sha(b) for b in blobs[2:])
    finally:
        await store.close()


async def test_files_used_recently_are_kept_past_the_bound(s3_url: str, tmp_path: Path) -> None:
    """With keep_recent (--blob-accel: nginx opens a file moments after the answer naming
    it), a file used within that many seconds stays even when the cache is over its bound;
    once older it goes first, as before."""
    store = await S3BlobStore.open(s3_url, tmp_path / "cache", cache_max_bytes=150_000,
                                   keep_recent=0.5)
    try:
        first, second, third = (os.urandom(100_000) for _ in range(3))
        for data in (first, second):
            await store.put_stream(_sha(data), _chunks(data), len(data))
            await store.local_path(_sha(data))
        assert store.cache_path(_sha(first)).exists()  # 200 KB cached: over the bound
        await asyncio.sleep(0.6)
        await store.put_stream(_sha(third), _chunks(third), len(third))
        await store.local_path(_sha(third))
        left = sorted(p.name for p in (tmp_path / "cache").glob("??/*"))
        assert left == [_sha(third)]
    finally:
        await store.close()


_DAMAGE = ("overwrite", "truncate", "append", "replace", "chmod_then_overwrite")


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.sampled_from(_DAMAGE), at=st.integers(min_value=0, max_value=49_999),
       via_open=st.booleans())
def test_a_cache_file_changed_after_its_check_is_never_handed_out(
        s3_url: str, tmp_path: Path, damage: str, at: int, via_open: bool) -> None:
    """Whatever happens to a checked cache file between two uses (bytes overwritten in place,
    cut short, grown, replaced by another file, its mode changed and then its bytes), the next
    use (local_path for nginx, open_blob for sendfile) gets exactly the blob's bytes again."""
    data = bytes(range(256)) * 195 + b"tail"  # 49,924 bytes
    sha = _sha(data)

    async def run() -> bytes:
        store = await _store_holding(s3_url, tmp_path / "cache", sha, data)
        try:
            path = await store.local_path(sha)  # filled and checked
            assert path.read_bytes() == data
            offset = at % len(data)
            if damage == "overwrite":
                with open(path, "r+b") as out:
                    out.seek(offset)
                    out.write(bytes([data[offset] ^ 1]))
            elif damage == "truncate":
                os.truncate(path, offset)
            elif damage == "append":
                with open(path, "ab") as out:
                    out.write(b"x")
            elif damage == "replace":
                other = path.with_name("other")
                other.write_bytes(data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1:])
                os.replace(other, path)
            else:
                path.chmod(0o600)
                with open(path, "r+b") as out:
                    out.seek(offset)
                    out.write(bytes([data[offset] ^ 1]))
                os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns - 10**9))
            if via_open:
                with await store.open_blob(sha) as fobj:
                    return fobj.read()
            return (await store.local_path(sha)).read_bytes()
        finally:
            await store.close()

    assert asyncio.run(run()) == data


async def test_a_blob_larger_than_the_cache_bound_is_still_served(
        s3_url: str, tmp_path: Path) -> None:
    store = await S3BlobStore.open(s3_url, tmp_path / "cache", cache_max_bytes=1000)
    try:
        data = os.urandom(5000)
        await store.put_stream(_sha(data), _chunks(data), len(data))
        assert (await store.local_path(_sha(data))).read_bytes() == data
    finally:
        await store.close()
