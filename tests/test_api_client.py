"""The publisher client never carries its token to another place."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tools.api_client import ApiClient, ApiClientError

TOKEN = "mpota_" + "redirect-probe-token"


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:
        _Recorder.seen.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"devices": []}')

    def log_message(self, *args: object) -> None:
        pass


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def elsewhere() -> Iterator[str]:
    _Recorder.seen = []
    yield from _serve(_Recorder)


def test_a_redirect_is_refused_and_the_token_does_not_follow_it(elsewhere: str) -> None:
    class Redirector(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", elsewhere + self.path)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    for url in _serve(Redirector):
        with pytest.raises(ApiClientError) as err:
            ApiClient(url, TOKEN).list_devices()
        assert err.value.code == "redirect" and err.value.status == 302
        assert TOKEN not in str(err.value)
    assert _Recorder.seen == []


def test_the_token_goes_to_the_server_asked(elsewhere: str) -> None:
    assert ApiClient(elsewhere, TOKEN).list_devices() == []
    assert _Recorder.seen == [f"Bearer {TOKEN}"]
