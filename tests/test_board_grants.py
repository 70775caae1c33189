"""Download grants on the board: the real client (virtual board, MicroPython unix port) against a
real server (LocalServer, which gives grants: its data directory's grant.key).

A check-in answered 200 carries `X-Ota-Grant`; the board keeps that value in RAM for the
conversation and sends it as the pack's Authorization instead of a signed request (no counter
used). A grant the server refuses (401: expired, another key) is dropped and the pack is asked
for again, signed, in the same attempt: no `failed` report. A grant header the board cannot
trust to be one header of printable ASCII is ignored: the board signs (docs/board.md,
Download grants).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from board_rig import EVERYONE_NO_PAUSE
from faultproxy import FaultProxy

from bench.reference_app import Keys, build_release, make_keys, provision_board, small_app
from ota_server.grants import GrantKey
from tools.board_files import app_hashes, slot_files
from tools.local_server import LocalServer
from tools.virtual_board import VirtualBoard

_names = itertools.count(1)
_GRANT_HEADER = b"x-ota-grant"
_LINE = 200  # ota/http.py _LINE: the longest header line the board reads


@dataclass
class GrantProxy(FaultProxy):
    """The fault proxy that also keeps each X-Ota-Grant value the server gave (`given`) and
    sends the board what `rewrite` makes of the check-in's header lines instead (a hostile
    server, or a grant the server will refuse)."""

    given: list[bytes] = field(default_factory=list)
    rewrite: Callable[[bytes], list[bytes]] | None = None
    answers: list[tuple[bytes, bytes]] = field(default_factory=list)  # (request, answer)

    async def _forward(self, request: bytes) -> bytes:
        answer = await super()._forward(request)
        self.answers.append((request, answer))
        head, sep, body = answer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        kept = []
        for line in lines:
            name, _, value = line.partition(b":")
            if name.strip().lower() != _GRANT_HEADER:
                kept.append(line)
                continue
            self.given.append(value.strip())
            kept.extend(self.rewrite(value.strip()) if self.rewrite else [line])
        return b"\r\n".join(kept) + sep + body


@dataclass
class Rig:
    keys: Keys
    server: LocalServer
    proxy: GrantProxy
    work: Path
    micropython: str

    def update(self, name: str, files: int = 0) -> tuple[Path, dict[str, bytes], Any]:
        """A board running 1.0.0 on channel `name`, 1.1.0 published with `files` more files;
        the board's boots until it runs 1.1.0 (or gives up)."""
        new = small_app("1.1.0", {f"data/f{i}.txt": b"%d\n" % i * 40 for i in range(files)})
        bundle = build_release(self.work, new, "1.1.0", 2, self.keys, app=name)
        self.server.client().publish(bundle, channel=name, policy=EVERYONE_NO_PAUSE)
        flash = self.work / name
        provision_board(flash, self.server.client(), name, self.proxy.url, self.keys,
                        small_app("1.0.0"), app=name, channel=name, timeout_s=3)
        result = VirtualBoard(flash, micropython=self.micropython).run(max_boots=3, timeout=60)
        return flash, new, result

    def metric(self, name: str) -> float:
        """The server's /metrics value of `name` (0 before its first count)."""
        with urllib.request.urlopen(self.server.url + "/metrics", timeout=10) as answer:
            text = answer.read().decode()
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    def grant_key(self) -> GrantKey:
        return GrantKey.load_or_create(self.server.data_dir / "grant.key")

    def sent(self, status: str) -> list[dict[str, Any]]:
        sent = [json.loads(e.request.partition(b"\r\n\r\n")[2]) for e in self.proxy.exchanges
                if e.path.endswith("/v1/device/report")]
        return [r for r in sent if r["status"] == status]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("board-grants")
    keys = make_keys()
    (work / "root.json").write_bytes(keys.root_envelope)
    with LocalServer(work / "data", work / "root.json") as server, \
            GrantProxy(server.url) as proxy:
        yield Rig(keys, server, proxy, work, micropython)


@pytest.fixture
def case(rig: Rig) -> tuple[Rig, str]:
    rig.proxy.clear()
    rig.proxy.given.clear()
    rig.proxy.answers.clear()
    rig.proxy.rewrite = None
    return rig, f"g{next(_names)}"


def _authorization(request: bytes) -> str:
    head = request.partition(b"\r\n\r\n")[0].decode("latin-1")
    return next(line.split(": ", 1)[1] for line in head.split("\r\n")
                if line.lower().startswith("authorization:"))


def _counter(request: bytes) -> int | None:
    """The counter of a signed request (None: not signed)."""
    found = re.fullmatch(r"Mpota-P256 id=[^,]+,ctr=([0-9]+),sig=\S+", _authorization(request))
    return int(found.group(1)) if found else None


def _updated(rig: Rig, flash: Path, new: dict[str, bytes], result: Any) -> None:
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.1.0" in result.boots[-1].output
    assert slot_files(flash, "b") == app_hashes(new)
    assert rig.sent("failed") == []


def test_the_pack_travels_with_the_offers_grant_and_uses_no_counter(case):
    rig, name = case
    before = rig.metric("mpota_grant_requests_total")
    flash, new, result = rig.update(name)
    _updated(rig, flash, new, result)
    offer = next(e for e in rig.proxy.exchanges if e.path.endswith("/checkin"))
    assert offer.status == 200 and len(rig.proxy.given) == 1
    grant = rig.proxy.given[0].decode()
    assert grant.startswith(f"Mpota-Grant id={name},exp=")
    packs = [e for e in rig.proxy.exchanges if "/v1/device/pack" in e.path]
    assert [(p.status, _authorization(p.request)) for p in packs] == [(200, grant)]
    # the server took it as a grant (one HMAC): counted there, not signed
    assert rig.metric("mpota_grant_requests_total") == before + 1
    # The update's boot: check-in and `downloading` report signed with consecutive counters,
    # the pack none; the trial boot's requests are signed again.
    first = rig.proxy.exchanges[:rig.proxy.exchanges.index(packs[0]) + 1]
    counters = [_counter(e.request) for e in first]
    assert counters[-1] is None and None not in counters[:-1]
    assert counters[:-1] == list(range(counters[0], counters[0] + len(counters) - 1))
    assert all(_counter(e.request) is not None for e in rig.proxy.exchanges if e not in packs)
    assert grant not in result.output  # never printed


def _expired(rig: Rig, name: str) -> list[bytes]:
    """A grant of the server's own key that expired a minute ago (401 grant_expired)."""
    exp = int(time.time()) - 60
    return [b"X-Ota-Grant: Mpota-Grant id=%s,exp=%d,mac=%s" % (
        name.encode(), exp, rig.grant_key().mac(name, exp).encode())]


def _other_key(rig: Rig, name: str) -> list[bytes]:
    """A grant of another key (the server's key rotated since the check-in: 401 bad_grant)."""
    return [b"X-Ota-Grant: " + GrantKey(os.urandom(32)).mint(name, time.time(), 900).encode()]


def _not_a_grant(rig: Rig, name: str) -> list[bytes]:
    """Printable, but no grant a server takes (a server or proxy of another protocol:
    401 bad_credentials)."""
    return [b"X-Ota-Grant: Bearer abc.def"]


REFUSED = {"expired": (_expired, "grant_expired"), "another_key": (_other_key, "bad_grant"),
           "not_a_grant": (_not_a_grant, "bad_credentials")}


@pytest.mark.parametrize("refusal", sorted(REFUSED))
def test_a_refused_grant_is_dropped_and_the_pack_is_signed_at_once(case, refusal):
    rig, name = case
    make, code = REFUSED[refusal]
    given = make(rig, name)
    rig.proxy.rewrite = lambda value: given
    flash, new, result = rig.update(name, files=34)  # two packs: 32 blobs a pack at most
    _updated(rig, flash, new, result)
    packs = [e for e in rig.proxy.exchanges if "/v1/device/pack" in e.path]
    # the grant once, refused; the same pack again at once, signed; the next pack signed
    assert [e.status for e in packs] == [401, 200, 200], [e.status for e in packs]
    assert _authorization(packs[0].request) == given[0].partition(b": ")[2].decode()
    refused = next(a for r, a in rig.proxy.answers if r == packs[0].request)
    assert json.loads(refused.partition(b"\r\n\r\n")[2])["code"] == code
    assert packs[1].path == packs[0].path
    assert None not in (_counter(packs[1].request), _counter(packs[2].request))
    assert result.boots[0].output.count("ota: downloading") == 1  # one attempt, no retry


def _repeated(value: bytes) -> list[bytes]:
    return [b"X-Ota-Grant: " + value] * 2


HOSTILE: dict[str, Callable[[bytes], list[bytes]]] = {
    # its line longer than the board reads (_LINE): skipped whole
    "oversize": lambda v: [b"X-Ota-Grant: " + v + b",pad=" + b"A" * (_LINE - len(v))],
    "non_ascii": lambda v: [b"X-Ota-Grant: " + v[:-2] + "é".encode()],
    # a CR inside the value would end the Authorization line the board writes: refused
    "carriage_return": lambda v: [b"X-Ota-Grant: " + v + b"\rX-Evil: 1"],
    "control_byte": lambda v: [b"X-Ota-Grant: " + v + b"\x00"],
    "empty": lambda v: [b"X-Ota-Grant: "],
    "repeated": _repeated,
}


@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_a_grant_header_the_board_cannot_trust_is_ignored_and_the_pack_signed(case, shape):
    rig, name = case
    rig.proxy.rewrite = HOSTILE[shape]
    flash, new, result = rig.update(name)
    _updated(rig, flash, new, result)
    packs = [e for e in rig.proxy.exchanges if "/v1/device/pack" in e.path]
    assert len(packs) == 1 and packs[0].status == 200
    assert _counter(packs[0].request) is not None, _authorization(packs[0].request)
    assert b"X-Evil" not in packs[0].request
    assert not [e for e in rig.proxy.exchanges if e.status == 401]


# -- the rule, one header at a time: the real ota.http reading answers from 127.0.0.1 -------

_DRIVER = """
import sys
from ota import http
url = sys.argv[1]
for _ in range(int(sys.argv[2])):
    resp = http.request(url, "GET", "/", "", b"", 5)
    auth = getattr(resp, "auth", None)  # the member exists only when the header came
    print("none" if auth is None else "got:" + auth)
    resp.close()
"""


def _kept(value: bytes) -> str | None:
    """What the board keeps of `X-Ota-Grant: <value>` (one header line): None when the line
    is longer than it reads, "" unless the stripped value is printable ASCII."""
    line = b"X-Ota-Grant: " + value + b"\r\n"
    if len(line) > _LINE:
        return None
    value = value.strip()
    return value.decode() if all(32 <= c <= 126 for c in value) else ""


def _serve(answers: list[bytes]) -> tuple[str, threading.Thread]:
    """A server on 127.0.0.1 answering one connection with each of `answers` in turn."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def run() -> None:
        with listener:
            for answer in answers:
                conn, _ = listener.accept()
                with conn:
                    got = b""
                    while b"\r\n\r\n" not in got:
                        piece = conn.recv(4096)
                        if not piece:
                            break
                        got += piece
                    conn.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", thread


_values = st.one_of(
    st.binary(max_size=260).filter(lambda b: b"\n" not in b),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=150,
            max_size=200).map(str.encode))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(_values, min_size=1, max_size=25))
def test_the_board_keeps_exactly_the_grant_values_it_can_echo_safely(micropython, values):
    answers = [b"HTTP/1.1 204 No Content\r\nX-Ota-Grant: " + v + b"\r\nContent-Length: 0\r\n\r\n"
               for v in values]
    url, server = _serve(answers)
    out = subprocess.run([micropython, "-c", _DRIVER, url, str(len(values))],
                         env=dict(os.environ, MICROPYPATH=str(PROJECT_ROOT / "bootloader_py")),
                         capture_output=True, timeout=60)
    server.join(timeout=10)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    got = out.stdout.decode().split("\n")[:len(values)]
    want = ["none" if _kept(v) is None else "got:" + str(_kept(v)) for v in values]
    assert got == want
