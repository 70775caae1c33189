"""Split and drip: every body-taking endpoint answers a body that arrives in many small TCP
segments (Content-Length or chunked) exactly as it answers the body sent in one piece.

The endpoints come from ota_server/openapi.json (every operation with a requestBody), which a
test holds equal to the route table: a new endpoint that takes a body fails here until it has
a recipe below. Two real servers on 127.0.0.1 run the same script of requests, one sent whole,
one dripped; answers are compared endpoint by endpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cluster_support import backend_of
from server_framing_support import (
    LiveServer,
    RawAnswer,
    chunked,
    exchange,
    live_server,
    request_head,
    split,
)
from server_support import Backend, FleetKeys, SimBoard, bundle_blobs, make_bundle

from ota_server.device_auth import sign_request

OPENAPI = Path(__file__).parent.parent / "ota_server" / "openapi.json"
# 1-byte writes up to this many pieces; a longer body is cut into this many equal pieces
MAX_PIECES = 200
PAUSE = 0.001


def body_endpoints() -> set[tuple[str, str]]:
    doc = json.loads(OPENAPI.read_text())
    return {(method.upper(), path) for path, ops in doc["paths"].items()
            for method, op in ops.items() if isinstance(op, dict) and "requestBody" in op}


@dataclass
class Fleet:
    """What the script's requests are built from: the same for both servers."""

    keys: FleetKeys
    bundle: Path
    board: SimBoard
    rotated_root: bytes
    big_blob: str = ""
    counter: int = 1000

    @property
    def blobs(self) -> dict[str, bytes]:
        return bundle_blobs(self.bundle)


@dataclass
class Step:
    method: str
    template: str  # the path as openapi.json names it
    target: str
    body: bytes
    auth: str  # "publisher" or "device"


def _script(fleet: Fleet) -> list[Step]:
    """One valid request per body-taking endpoint, in an order where each is accepted."""
    board = fleet.board
    envelope = (fleet.bundle / "manifest.dsse.json").read_bytes()
    steps = [Step("POST", "/v1/devices", "/v1/devices",
                  json.dumps(board.registration()).encode(), "publisher")]
    steps += [Step("PUT", "/v1/blobs/{sha256}", f"/v1/blobs/{sha}", data, "publisher")
              for sha, data in sorted(fleet.blobs.items())]
    steps += [
        Step("POST", "/v1/blobs/missing", "/v1/blobs/missing",
             json.dumps({"blobs": [*sorted(fleet.blobs), "f" * 64]}).encode(), "publisher"),
        Step("POST", "/v1/releases/sequence", "/v1/releases/sequence",
             json.dumps({"app": "demo", "version": "2.0.0"}).encode(), "publisher"),
        Step("POST", "/v1/releases", "/v1/releases", envelope, "publisher"),
        Step("POST", "/v1/channels/{channel}/rollout", "/v1/channels/stable/rollout",
             json.dumps({"app": "demo", "sequence": 1, "percent": 100}).encode(),
             "publisher"),
        Step("POST", "/v1/device/checkin", "/v1/device/checkin", board.checkin_body(),
             "device"),
        Step("POST", "/v1/device/report", "/v1/device/report",
             board.report_body("downloading", 1), "device"),
        Step("POST", "/v1/roots", "/v1/roots", fleet.rotated_root, "publisher"),
        Step("POST", "/v1/releases/{app}/{version}/yank", "/v1/releases/demo/1.0.0/yank",
             json.dumps({"force": True}).encode(), "publisher"),
        Step("POST", "/v1/tokens", "/v1/tokens",
             json.dumps({"name": "dripped", "scope": "read"}).encode(), "publisher"),
    ]
    return steps


def _headers(step: Step, server: LiveServer, fleet: Fleet, counter: int) -> dict[str, str]:
    if step.auth == "publisher":
        return server.bearer
    board = fleet.board
    return {"Authorization": sign_request(board.key, board.device_id, counter, step.method,
                                          step.target, step.body)}


Send = Callable[[LiveServer, Step, dict[str, str]], Awaitable[RawAnswer]]


async def _whole(server: LiveServer, step: Step, headers: dict[str, str]) -> RawAnswer:
    head = request_head(step.method, step.target, headers, body_length=len(step.body))
    return await exchange(server.port, [head + step.body])


async def _dripped_plain(server: LiveServer, step: Step, headers: dict[str, str]) -> RawAnswer:
    head = request_head(step.method, step.target, headers, body_length=len(step.body))
    # the head in two pieces too, the body 1 byte (or 1/MAX_PIECES) at a time
    middle = len(head) // 2
    return await exchange(server.port, [head[:middle], head[middle:],
                                        *split(step.body, MAX_PIECES)], pause=PAUSE)


async def _dripped_chunked(server: LiveServer, step: Step,
                           headers: dict[str, str]) -> RawAnswer:
    head = request_head(step.method, step.target, headers, body_length=None)
    # the chunked framing itself is cut anywhere: inside sizes, CRLFs and data alike
    return await exchange(server.port, [head, *split(chunked(step.body), MAX_PIECES)],
                          pause=PAUSE)


SENDERS: dict[str, Send] = {"plain": _dripped_plain, "chunked": _dripped_chunked}


def _stable(value: Any, now: float) -> Any:
    """`value` with timestamps of this run (within an hour of now) and new tokens (random)
    masked: two servers run the same script a few seconds apart."""
    if isinstance(value, dict):
        return {k: "<token>" if k == "token" else _stable(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [_stable(v, now) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value - now) < 3600:
        return "<now>"
    return value


def _summary(answer: RawAnswer) -> dict[str, Any]:
    body: Any = answer.body
    if answer.headers.get("content-type", "").startswith("application/json"):
        body = _stable(answer.json(), time.time())
    return {"status": answer.status, "type": answer.headers.get("content-type"), "body": body}


@dataclass
class Run:
    answers: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)


async def _run(directory: Path, backend: Backend, fleet: Fleet, send: Send) -> Run:
    run = Run()
    async with live_server(directory, backend, keys=fleet.keys) as server:
        counter = fleet.counter
        for step in _script(fleet):
            counter += 1
            answer = await send(server, step, _headers(step, server, fleet, counter))
            run.answers.setdefault((step.method, step.template), []).append(_summary(answer))
    return run


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    keys = FleetKeys.create(tmp_path)
    # one blob longer than MAX_PIECES bytes many times over: cut into equal pieces
    files = {"app_main.py": b"print('drip')\n", "lib/data.bin": bytes(range(256)) * 160}
    bundle = make_bundle(tmp_path, files, version="1.0.0", sequence=1, key=keys.release_key)
    rotated, _ = keys.rotated_root(2)
    return Fleet(keys, bundle, SimBoard("drip-board"), rotated)


def test_the_script_covers_every_endpoint_that_takes_a_body(fleet: Fleet) -> None:
    covered = {(s.method, s.template) for s in _script(fleet)}
    assert covered == body_endpoints(), "a body-taking endpoint has no recipe in _script"


@pytest.mark.parametrize("framing", list(SENDERS))
async def test_every_body_split_and_dripped_gets_the_answer_of_the_body_sent_whole(
        tmp_path: Path, fleet: Fleet, framing: str, backend: Backend,
        request: pytest.FixtureRequest) -> None:
    whole = await _run(tmp_path / "whole", backend, fleet, _whole)
    with backend_of(backend.kind, request) as fresh:  # a second empty store of the same kind
        dripped = await _run(tmp_path / "dripped", fresh, fleet, SENDERS[framing])
    assert set(whole.answers) == body_endpoints()
    for endpoint, answers in whole.answers.items():
        assert all(a["status"] < 300 for a in answers), (endpoint, answers)
    differ = {endpoint: {"whole": answers, framing: dripped.answers.get(endpoint)}
              for endpoint, answers in whole.answers.items()
              if dripped.answers.get(endpoint) != answers}
    assert not differ
