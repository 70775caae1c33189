"""Download grants checked by nginx itself (deploy/mpota-grant.js in njs, the cached-blob
locations of tools/cluster/nginx.py and deploy/nginx-mpota-cluster.conf), on the real stack:
nginx + two `ota serve` replicas on PostgreSQL + SeaweedFS sharing one `--grant-key`.

A whole-blob GET/HEAD with a grant njs accepts is sent by nginx from a replica's verified cache
without reaching any replica; everything else reaches a replica, which answers as it does
without nginx's check. njs and ota_server.grants.GrantKey.check accept exactly the same grants.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from server_support import FleetKeys, SimBoard, make_bundle

from ota_server.device_auth import DEVICE_ID
from ota_server.errors import Unauthorized
from ota_server.grants import MAX_LIFETIME_S, SCHEME, GrantKey
from tools.cluster.nginx import (
    cached_blob_locations,
    grant_key_include,
    granted_blob_location,
)
from tools.cluster.stack import Cluster
from tools.micropython import PROJECT_ROOT

CLUSTER_SITE = PROJECT_ROOT / "deploy" / "nginx-mpota-cluster.conf"
OPERATIONS = PROJECT_ROOT / "docs" / "operations.md"
# What a replica counts of each request that reaches it: a blob answer by status, or a refusal
# of its credentials (ota_server/metrics.py).
_SEEN = re.compile(r"^mpota_(?:blob_requests|auth_failures)_total\{[^}]*\} (\d+)$", re.M)


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        found = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(found) <= 1, (name, found)
        return found[0] if found else None

    def code(self) -> str:
        """The `code` of a replica's JSON error."""
        assert self.header("Content-Type") == "application/json; charset=utf-8", self.headers
        return str(json.loads(self.body)["code"])


@dataclass
class Stack:
    cluster: Cluster
    keys: FleetKeys
    key: GrantKey

    def ask(self, method: str, path: str, headers: dict[str, str],
            body: bytes | None = None) -> Answer:
        """One request through nginx, on a connection of its own."""
        assert self.cluster.nginx is not None
        conn = http.client.HTTPConnection("127.0.0.1", self.cluster.nginx.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return Answer(resp.status, resp.getheaders(), resp.read())
        finally:
            conn.close()

    def seen(self) -> int:
        """How many blob requests the replicas have answered or refused, together."""
        total = 0
        for replica in self.cluster.replicas:
            text = urllib.request.urlopen(replica.url + "/metrics", timeout=10).read().decode()
            total += sum(int(n) for n in _SEEN.findall(text))
        return total

    def new_blob(self, size: int = 150_000) -> tuple[str, bytes]:
        data = os.urandom(size)
        sha = hashlib.sha256(data).hexdigest()
        assert self.cluster.client().upload_blob(sha, data)
        return sha, data

    def grant(self, device_id: str = "grant-board", lifetime: int = 900) -> str:
        return self.key.mint(device_id, time.time(), lifetime)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("grants")
    keys = FleetKeys.create(tmp)
    with Cluster(tmp / "cluster", keys.root_path, extra_args=["--quiet"]) as cluster:
        yield Stack(cluster, keys, GrantKey.load_or_create(cluster.grant_key_path))


def _cached(stack: Stack, sha: str, data: bytes) -> None:
    """Have a replica fill its cache with the blob (a granted GET no cache holds yet)."""
    answer = stack.ask("GET", f"/v1/blobs/{sha}", {"Authorization": stack.grant()})
    assert (answer.status, answer.body) == (200, data)


def _without_date(answer: Answer) -> list[tuple[str, str]]:
    return sorted((k.lower(), "<date>" if k.lower() == "date" else v)
                  for k, v in answer.headers)


# -- the layout: one logic for the stack and the shipped site ----------------------------------

def test_the_shipped_site_has_the_stacks_grant_locations() -> None:
    """deploy/nginx-mpota-cluster.conf holds the very locations tools/cluster/nginx.py writes
    for the test and benchmark stack (its upstream and production's replica caches)."""
    site = CLUSTER_SITE.read_text()
    assert granted_blob_location("mpota", " " * 8) in site
    assert cached_blob_locations("mpota", ["/var/lib/mpota/replica-8081/blob-cache",
                                           "/var/lib/mpota/replica-8082/blob-cache"],
                                 " " * 4) in site


def test_the_documented_key_include_command_makes_the_include_njs_reads(
        tmp_path: Path) -> None:
    """docs/operations.md's one line that makes nginx's key include from the replicas' key
    file writes what the stack's nginx is given (grant_key_include), mode 0600; a key file
    that is not a key gives an empty include (njs then checks nothing)."""
    lines = [line for line in OPERATIONS.read_text().splitlines()
             if line.startswith("install -m 0600 -o root -g root /dev/null "
                                "/etc/nginx/mpota-grant-key.conf && sed ")]
    assert lines and len(set(lines)) == 1, lines  # the same line wherever the docs give it
    key_file, include = tmp_path / "grant.key", tmp_path / "mpota-grant-key.conf"
    GrantKey.load_or_create(key_file)
    command = (lines[0].replace("-o root -g root ", "")
               .replace("/etc/mpota/grant.key", str(key_file))
               .replace("/etc/nginx/mpota-grant-key.conf", str(include)))
    subprocess.run(["sh", "-c", command], check=True, timeout=30)
    assert include.read_text() == grant_key_include(key_file)
    assert include.stat().st_mode & 0o777 == 0o600
    include.unlink()
    key_file.write_text("not a key\n")
    subprocess.run(["sh", "-c", command], check=True, timeout=30)
    assert include.read_text() == ""


# -- what nginx sends itself --------------------------------------------------------------------

def test_a_checkins_grant_gets_the_blob_from_nginx_with_the_replicas_answer(
        stack: Stack, tmp_path: Path) -> None:
    """The grant of a real check-in's offer: the first download (no cache holds the blob)
    reaches a replica, which fills its cache and answers; the next ones are nginx's, from
    that cache, with no replica asked, and the same answer header for header (nginx's Date
    aside): status, body, ETag, Cache-Control, Content-Type, Content-Length, Server, and no
    Last-Modified or Accept-Ranges. HEAD likewise, against the replica's own HEAD."""
    client = stack.cluster.client()
    payload = os.urandom(300_000)
    sha = hashlib.sha256(payload).hexdigest()
    bundle = make_bundle(tmp_path, {"app_main.py": b"print(1)\n", "lib/big.bin": payload},
                         version="1.0.0", sequence=1, key=stack.keys.release_key)
    client.publish(bundle, channel="stable", percent=100)
    board = SimBoard("grant-checkin")
    client.register_device(board.device_id, board.point, board="unix")
    body = board.checkin_body()
    checkin = stack.ask("POST", "/v1/device/checkin",
                        {**board.auth("POST", "/v1/device/checkin", body),
                         "Content-Type": "application/json"}, body)
    assert checkin.status == 200, checkin.body[:300]
    grant = checkin.header("X-Ota-Grant")
    assert grant is not None and grant.startswith(f"{SCHEME} id={board.device_id},")
    path = f"/v1/blobs/{sha}"

    before = stack.seen()
    first = stack.ask("GET", path, {"Authorization": grant})
    assert (first.status, first.body) == (200, payload)
    assert stack.seen() == before + 1  # no cache held it: a replica checked and answered
    second = stack.ask("GET", path, {"Authorization": grant})
    assert stack.seen() == before + 1  # nginx's, from the cache
    assert (second.status, second.body) == (200, payload)
    assert _without_date(second) == _without_date(first)
    assert second.header("ETag") == f'"{sha}"'
    assert second.header("Cache-Control") == "public, max-age=31536000, immutable"
    assert second.header("Content-Type") == "application/octet-stream"
    assert second.header("Content-Length") == str(len(payload))
    assert second.header("Last-Modified") is None and second.header("Accept-Ranges") is None
    # The replica sending the blob itself (a condition that does not hold), nginx relaying.
    relayed = stack.ask("GET", path, {"Authorization": grant, "If-None-Match": '"other"'})
    assert stack.seen() == before + 2
    assert (relayed.status, relayed.body) == (200, payload)
    assert _without_date(relayed) == _without_date(second)

    head = stack.ask("HEAD", path, {"Authorization": grant})
    assert stack.seen() == before + 2
    replica_head = stack.ask("HEAD", path, {"Authorization": grant, "If-None-Match": '"x"'})
    assert stack.seen() == before + 3
    assert (head.status, head.body, replica_head.status) == (200, b"", 200)
    assert _without_date(head) == _without_date(replica_head)


# -- what goes to a replica ---------------------------------------------------------------------

def _signed_with(key: GrantKey, device_id: str, expires: int) -> str:
    return f"{SCHEME} id={device_id},exp={expires},mac={key.mac(device_id, expires)}"


def _flip_last(text: str) -> str:
    return text[:-1] + ("A" if text[-1] != "A" else "B")


# (the Authorization value, given the stack's key; the replica's status and error code)
_REFUSED = {
    "expired": (lambda k: _signed_with(k, "b-1", int(time.time()) - 5), 401, "grant_expired"),
    "beyond any lifetime": (lambda k: _signed_with(k, "b-1", int(time.time()) + 2 * 86400),
                            401, "bad_grant"),
    "tampered mac": (lambda k: _flip_last(k.mint("b-1", time.time(), 900)), 401, "bad_grant"),
    "other device, same mac": (lambda k: k.mint("b-1", time.time(), 900).replace(
        "id=b-1,", "id=b-2,"), 401, "bad_grant"),
    "other key": (lambda k: _signed_with(GrantKey(os.urandom(32)), "b-1", int(time.time()) + 900),
                  401, "bad_grant"),
    "padded mac": (lambda k: k.mint("b-1", time.time(), 900) + "=", 401, "bad_credentials"),
    "another parameter": (lambda k: k.mint("b-1", time.time(), 900) + ",x=1", 401,
                          "bad_credentials"),
    "lower-case scheme": (lambda k: k.mint("b-1", time.time(), 900).lower(), 401,
                          "bad_credentials"),
}


@pytest.mark.parametrize("case", sorted(_REFUSED))
def test_a_grant_njs_refuses_reaches_a_replica_which_answers_its_json_401(
        stack: Stack, case: str) -> None:
    make, status, code = _REFUSED[case]
    sha, data = stack.new_blob()
    _cached(stack, sha, data)  # nginx could send it: only the grant stops it
    before = stack.seen()
    answer = stack.ask("GET", f"/v1/blobs/{sha}", {"Authorization": make(stack.key)})
    assert stack.seen() == before + 1
    assert (answer.status, answer.code()) == (status, code)
    assert data[:64] not in answer.body


@pytest.mark.parametrize(("extra", "status"), [
    ({"Range": "bytes=100-199"}, 206),
    ({"If-None-Match": "<tag>"}, 304),
    ({"If-Range": "<tag>", "Range": "bytes=0-9"}, 206),
    ({"If-Match": "<tag>"}, 200),
    ({"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}, 200),
    ({"If-Unmodified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}, 200),
    ({"Range": ""}, 416),
])
def test_ranges_and_conditions_with_a_valid_grant_are_the_replicas(
        stack: Stack, extra: dict[str, str], status: int) -> None:
    """nginx's static module would judge these by the file's time and size: the replica
    answers each (nginx relaying), even a present but empty header (which the replica
    refuses with its JSON 416; its metrics count no 416, so that answer is the proof)."""
    sha, data = stack.new_blob()
    _cached(stack, sha, data)
    headers = {name: value.replace("<tag>", f'"{sha}"') for name, value in extra.items()}
    before = stack.seen()
    answer = stack.ask("GET", f"/v1/blobs/{sha}", {"Authorization": stack.grant(), **headers})
    assert answer.status == status
    if status == 416:
        assert answer.code() == "range_not_satisfiable"
    else:
        assert stack.seen() == before + 1
    if status == 206:
        assert answer.header("Content-Range") is not None
        assert answer.body == (data[100:200] if "bytes=100" in extra["Range"] else data[:10])


def test_a_signed_download_and_an_odd_path_are_the_replicas(stack: Stack) -> None:
    """Only a grant is checked by nginx, and only on the request path as sent being exactly
    /v1/blobs/<sha256>: a query, or a character nginx would decode, goes to the replica as
    sent (which serves it, as it judges it). Another method is the replica's 405."""
    sha, data = stack.new_blob()
    _cached(stack, sha, data)
    board = SimBoard("grant-signed")
    stack.cluster.client().register_device(board.device_id, board.point, board="unix")
    path = f"/v1/blobs/{sha}"
    for target, headers in (
            (path, board.auth("GET", path)),
            (f"{path}?x=1", {"Authorization": stack.grant()}),
            (f"/v1/blobs/%{ord(sha[0]):02x}{sha[1:]}", {"Authorization": stack.grant()})):
        before = stack.seen()
        answer = stack.ask("GET", target, headers)
        assert (answer.status, answer.body) == (200, data), target
        assert stack.seen() == before + 1, target
    refused = stack.ask("DELETE", path, {"Authorization": stack.grant()})
    assert (refused.status, refused.code()) == (405, "method_not_allowed")


# -- njs and GrantKey.check: the same rules -----------------------------------------------------

_ID_CHARS = "AZaz09._:-"
# Device ids of the form and just off it: a first character that may not start one, up to 65
# characters (64 is the most), each with an ordinary character of its kind in the middle.
_DEVICE_IDS = st.from_regex(DEVICE_ID, fullmatch=True) | st.builds(
    lambda first, rest: first + rest, st.sampled_from(_ID_CHARS),
    st.text(alphabet=_ID_CHARS, min_size=60, max_size=64))
# exp relative to now: expired, at the edges, within, and beyond any lifetime
_OFFSETS = st.sampled_from([-86400, -2, 0, 2, 60, 900, MAX_LIFETIME_S - 2, MAX_LIFETIME_S + 2,
                            10 * MAX_LIFETIME_S]) | st.integers(-10**6, 10**6)
_GRANT_CHARS = "Mpota-Grant id=,exp:mac._-0123456789abcAZz_/+= "


@st.composite
def _grant_texts(draw: st.DrawFn, key: GrantKey) -> str:
    """Valid grants and grants a little off: other ids and expiries, another key's MAC, one
    character changed, added or dropped anywhere."""
    device_id = draw(_DEVICE_IDS)
    expires = max(1, int(time.time()) + draw(_OFFSETS))
    signer = draw(st.sampled_from([key, key, GrantKey(b"\x01" * 32)]))
    text = _signed_with(signer, device_id, expires)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        where = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["replace", "insert", "delete"]))
        char = draw(st.sampled_from(_GRANT_CHARS))
        if edit == "insert":
            text = text[:where] + char + text[where:]
        elif where < len(text):
            text = text[:where] + (char if edit == "replace" else "") + text[where + 1:]
    return text.strip(" ")  # HTTP drops a header value's surrounding spaces on both sides


def _accepts(key: GrantKey, text: str, now: float) -> bool:
    try:
        key.check(text, now)
    except Unauthorized:
        return False
    return True


@pytest.fixture(scope="module")
def probe(stack: Stack) -> tuple[str, bytes]:
    """A blob a replica's cache holds: whether nginx sends it turns on the grant alone."""
    sha, data = stack.new_blob()
    _cached(stack, sha, data)
    return sha, data


def _nginx_judges_as_the_server(stack: Stack, probe: tuple[str, bytes],
                                text: str) -> bool | None:
    """`text` as a grant through nginx: nginx sends the cached blob itself exactly when
    GrantKey.check accepts the text (judged at the request's start and end, which agree but
    for the rare second that crosses an edge: None then); otherwise a replica answers, 200
    when the server accepts what njs did not (it never should), else its JSON 401. Whether
    the server accepted it."""
    sha, blob = probe
    before, start = stack.seen(), time.time()
    answer = stack.ask("GET", f"/v1/blobs/{sha}", {"Authorization": text})
    end = time.time()
    by_nginx = stack.seen() == before
    accepted = _accepts(stack.key, text, start)
    if accepted != _accepts(stack.key, text, end):
        return None  # an edge crossed during the request: either answer is right
    assert by_nginx == accepted, (text, answer.status, answer.body[:200])
    assert (answer.status, answer.body) == ((200, blob) if accepted
                                             else (401, answer.body))
    if not accepted:
        assert answer.code() in ("bad_credentials", "grant_expired", "bad_grant")
    return accepted


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_nginx_and_the_server_accept_exactly_the_same_grants(
        stack: Stack, probe: tuple[str, bytes], data: st.DataObject) -> None:
    text = data.draw(_grant_texts(stack.key))
    event(f"accepted: {_nginx_judges_as_the_server(stack, probe, text)}")


# Each rule's edge, on the side a random grant seldom lands: (device id, exp from now, how the
# text is changed after signing).
_EDGES = {
    "64-character id": ("a" * 64, 900, None),
    "65-character id": ("a" * 65, 900, None),
    "id of every kind of character": ("Z9:._-a", 900, None),
    "id starting with a dot": (".a", 900, None),
    "empty id": ("", 900, None),
    "exp at the furthest": ("b", MAX_LIFETIME_S - 3, None),
    "exp just past the furthest": ("b", MAX_LIFETIME_S + 3, None),
    "exp just passed": ("b", -2, None),
    "exp with a leading zero": ("b", 900, lambda t: t.replace(",exp=", ",exp=0")),
    "exp of 13 digits": ("b", 900, lambda t: re.sub(r"exp=\d+", "exp=1" + "0" * 12, t)),
    "mac of 42 characters": ("b", 900, lambda t: t[:-1]),
    "mac with a standard base64 character": ("b", 900, lambda t: t[:-1] + "+"),
    "two spaces after the scheme": ("b", 900, lambda t: t.replace(" ", "  ", 1)),
    "a tab for the space": ("b", 900, lambda t: t.replace(" ", "\t", 1)),
    "parameters in another order": ("b", 900, lambda t: re.sub(
        r"id=([^,]+),exp=(\d+)", r"exp=\2,id=\1", t)),
}


@pytest.mark.parametrize("edge", sorted(_EDGES))
def test_nginx_and_the_server_agree_on_each_rules_edge(
        stack: Stack, probe: tuple[str, bytes], edge: str) -> None:
    device_id, offset, change = _EDGES[edge]
    text = _signed_with(stack.key, device_id, int(time.time()) + offset)
    _nginx_judges_as_the_server(stack, probe, text if change is None else change(text))


# -- nginx alone --------------------------------------------------------------------------------

def test_a_cached_blob_is_sent_with_both_replicas_stopped(stack: Stack) -> None:
    """The proof that nginx asks no replica: with both stopped, a valid grant still gets the
    cached blob; a refused grant gets nginx's 502 (no replica to answer it)."""
    sha, data = stack.new_blob()
    _cached(stack, sha, data)
    for replica in stack.cluster.replicas:
        replica.stop()
    try:
        answer = stack.ask("GET", f"/v1/blobs/{sha}", {"Authorization": stack.grant()})
        assert (answer.status, answer.body) == (200, data)
        assert answer.header("ETag") == f'"{sha}"'
        refused = stack.ask("GET", f"/v1/blobs/{sha}",
                            {"Authorization": _flip_last(stack.grant())})
        assert refused.status == 502 and data[:64] not in refused.body
    finally:
        for replica in stack.cluster.replicas:
            replica.start()
