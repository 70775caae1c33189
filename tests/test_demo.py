"""`make demo` keeps showing the whole chain: every board confirms 1.1.0, then a crashing 1.2.0
is rolled back by the first two boards on their own and the rollout pauses before the third;
then 1.3.0 is installed offline on one board, 1.2.0 is yanked, a viewer's read token lists but
may not pause, the audit log names who did what, and the dashboard's address is printed."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from tools.micropython import PROJECT_ROOT

WIFI_PASSWORD = "demo-wifi-" + "s3cret-xq"


@pytest.fixture(scope="module", params=["embedded", "cluster"])
def demo_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One run of `python -m tools.demo` (as `make demo` runs it), and one of `make
    demo-cluster` (the same story through PostgreSQL, S3 and two replicas behind nginx),
    each shared by the tests below: the two must tell the same story."""
    cluster = request.param == "cluster"
    demo_dir = tmp_path_factory.mktemp("demo-run") / "demo"
    env = dict(os.environ, MPOTA_DEMO_DIR=str(demo_dir), COLUMNS="200",
               MPOTA_DEMO_WIFI=WIFI_PASSWORD)
    for name in ("MPOTA_TOKEN", "MPOTA_SERVER", "MPOTA_CA", "MPOTA_VB_FLASH",
                 "MPOTA_DEMO_KEEP"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "tools.demo", *["--cluster"] * cluster],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    if cluster:  # through nginx, in front of two replicas on PostgreSQL and S3
        assert "3. The cluster on 127.0.0.1: PostgreSQL, SeaweedFS (S3)" in done.stdout
        balanced = done.stdout.split("nginx balances over ", 1)[1].split(";", 1)[0]
        assert balanced.count("http://127.0.0.1:") == 2
        assert "demo done: cluster stopped" in done.stdout
        logs = list((demo_dir / "server" / "replicas").glob("replica*/server.log"))
        # both replicas answered boards: nginx balanced the demo's requests over them
        assert len(logs) == 2 and all("/v1/device/checkin" in log.read_text() for log in logs)
    return done, demo_dir


def test_demo_updates_every_board_rolls_back_a_bad_release_and_prints_the_fleet(
        demo_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, demo_dir = demo_run
    wifi_password = WIFI_PASSWORD
    # over https, every board verifying the server against the CA it was provisioned with
    assert "serving at https://127.0.0.1:" in done.stdout
    assert "certificate refused" not in done.stdout
    out = done.stdout
    # every command the demo prints names releases by version, never by sequence
    commands = [line for line in out.splitlines() if line.startswith("$ ota ")]
    assert any("--version 1.2.0" in c for c in commands)
    assert not [c for c in commands if "--sequence" in c], commands
    after_update = _segment(out, "$ ota rollout status stable", "8. A bad release")
    after_bad = _segment(out.split("9. The fleet", 1)[1], "$ ota rollout status stable",
                         "$ ota devices list")
    # 1.1.0 reached every board ...
    assert _row(after_update, "confirmed") == ["confirmed", "3"]
    assert _row(after_update, "rolled_back") == ["rolled_back", "0"]
    # ... 1.2.0 was rolled back by two, which paused its rollout before the third.
    assert _row(after_bad, "rollout")[:3] == ["rollout", "demo", "1.2.0"]
    assert _row(after_bad, "rollout")[4] == "paused"
    assert _row(after_bad, "confirmed") == ["confirmed", "0"]
    assert _row(after_bad, "rolled_back") == ["rolled_back", "2"]
    listed = _segment(out, "$ ota devices list", "$ ota devices show")
    fleet = [line.split() for line in listed.splitlines() if line.startswith("unix-")]
    assert [row[3:5] for row in fleet] == [["demo", "1.1.0"]] * 3
    assert sorted(row[5] for row in fleet) == ["confirmed", "rolled_back", "rolled_back"]
    # the deployment history of a board that rolled back, with the app's own exception
    shown = out.split("$ ota devices show ", 1)[1]
    assert shown.split()[0] in {row[0] for row in fleet if row[5] == "rolled_back"}
    history = shown.split("deployment history", 1)[1].split("10. Offline install", 1)[0]
    rolled = [line.split(None, 5) for line in history.splitlines() if " rolled_back " in line]
    assert [(r[2], r[5]) for r in rolled] == [("1.2.0", "OSError: sensor bus not found")]
    assert wifi_password not in done.stdout + done.stderr
    log = (demo_dir / "station-log.jsonl").read_text()
    assert wifi_password not in log
    # the third board runs its client from a ROM partition image, the others from files, and
    # boots on the 32-bit port in a 40 KB heap (https): it took 1.1.0, was never offered 1.2.0
    assert done.stdout.count("board3 (32-bit port, 40k heap): ") == 4
    boards = demo_dir / "boards"
    assert (boards / "board3.romfs").is_file() and not (boards / "board1.romfs").exists()
    assert not list((boards / "board3" / "ota").glob("*.*py"))
    assert list((boards / "board1" / "ota").glob("*.mpy"))
    ca_der = (boards / "board1" / "ota_id" / "ca.der").read_bytes()
    assert all((boards / f"board{n}" / "ota_id" / "ca.der").read_bytes() == ca_der
               for n in (2, 3))
    # the boards' flash, said in one line: littlefs on a block device, an image file each
    assert ("the virtual boards' flash: MicroPython's own littlefs v2 (vfs.VfsLfs2) on a flash "
            "block device" in out)
    assert all((boards / f"board{n}.flash").stat().st_size == 2 * 1024 * 1024 for n in (1, 2, 3))


def test_demo_installs_offline_yanks_and_shows_scopes_the_audit_and_the_dashboard(
        demo_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, demo_dir = demo_run
    out = done.stdout
    board1 = json.loads((demo_dir / "boards" / "board1" / "ota_id" / "config.json").read_text())
    # 1. 1.3.0, signed and registered but rolled out nowhere, is installed on board1 over its
    # REPL while the server is down; the board runs it, and the server learns it at check-in.
    offline = _segment(out, "10. Offline install", "11. Yank")
    assert "$ ota publish " in offline and "--version 1.3.0" in offline
    assert "--channel" not in offline  # registered, rolled out nowhere
    assert offline.index("server stopped") < offline.index("$ ota install ")
    assert offline.index("installed: the board runs 1.3.0") < offline.index("server started")
    (install,) = [c for c in _commands(offline) if c.startswith("$ ota install ")]
    assert install == (f"$ ota install {demo_dir / 'bundles' / '1.3.0'} "
                       f"--virtual {demo_dir / 'boards' / 'board1'}")
    checked_in = offline.split("server started again", 1)[1]
    assert "demo app 1.3.0 reading 21.25" in checked_in
    fleet = {row[0]: row[4] for row in (line.split() for line in checked_in.splitlines())
             if row[:1] and row[0].startswith("unix-")}
    assert fleet.pop(board1["device_id"]) == "1.3.0"
    assert list(fleet.values()) == ["1.1.0", "1.1.0"]
    # 3. 1.2.0 yanked: its paused rollout aborted, no new rollout of it, board3 offered nothing
    yank = _segment(out, "11. Yank", "12. Scopes")
    assert "yanked demo 1.2.0 (sequence" in yank
    assert "(release_yanked, HTTP 409) (exit status 1)" in _words(yank)
    board3 = yank.split("board3 (32-bit port, 40k heap): 1 boot(s), ended exit", 1)[1]
    assert "ota: nothing new\n    demo app 1.1.0 reading 21.5" in board3
    # 2. the viewer's read token lists channels and releases, and is refused a pause
    scopes = _segment(out, "12. Scopes", "13. The dashboard")
    token_file = demo_dir / "viewer.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert token not in out + done.stderr
    logs = list((demo_dir / "server").rglob("server.log"))  # the server's, or each replica's
    assert logs and not [log for log in logs if token in log.read_text()]
    channels = _segment(scopes, "$ ota channels list --token-file ", "$ ota releases list")
    assert _row(channels, "stable")[1:5] == ["demo", "1.1.0", "demo", "1.2.0"]
    releases = _segment(scopes, "$ ota releases list --token-file ", "$ ota rollout pause")
    states = {line.split()[1]: "yanked" if " yanked " in line else "offered" * (" offered " in line)
              for line in releases.splitlines() if line.startswith("demo ")}
    assert states == {"1.1.0": "offered", "1.2.0": "yanked", "1.3.0": "offered"}
    refused = _segment(scopes, "$ ota rollout pause stable --token-file ", "$ ota audit list")
    assert "token 'viewer' has scope 'read'" in _words(refused)
    assert "(insufficient_scope, HTTP 403) (exit status 1)" in _words(refused)
    audit = [line.split() for line in scopes.split("$ ota audit list", 1)[1].splitlines()
             if line[:1].isdigit()]
    assert [(r[1], r[2], r[-2], r[-1]) for r in audit if r[1] == "viewer"] == [
        ("viewer", "read", "403", "insufficient_scope")]
    assert ["local", "admin", "POST", "/v1/releases/{app}/{version}/yank", "demo", "1.2.0",
            "200", "ok"] in [r[1:] for r in audit]
    # 4. the dashboard: its address and the token file's path, never the token
    dashboard = out.split("13. The dashboard", 1)[1]
    assert "dashboard: https://127.0.0.1:" in dashboard and "/ui/ " in dashboard
    assert f"log in with the viewer's token from {token_file}" in _words(dashboard)
    assert "MPOTA_DEMO_KEEP=1 make demo" in dashboard


def _commands(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("$ ota ")]


def _words(text: str) -> str:
    """`text` with every run of white space one space: the console wraps long lines."""
    return " ".join(text.split())


def _segment(text: str, start: str, end: str) -> str:
    """The part of `text` from the first `start` to the next `end` after it."""
    return text.split(start, 1)[1].split(end, 1)[0]


def _row(table: str, first: str) -> list[str]:
    """The cells of the one line of `table` whose first cell is `first`."""
    (row,) = [line.split() for line in table.splitlines() if line.split()[:1] == [first]]
    return row


def test_demo_keeps_the_server_for_the_dashboard_until_ctrl_c(tmp_path: Path) -> None:
    """MPOTA_DEMO_KEEP=1: the server stays up at the end; the viewer's token from its file
    logs into the dashboard over https (the demo's CA); Ctrl-C stops the server, exit 0."""
    demo_dir = tmp_path / "demo"
    env = dict(os.environ, MPOTA_DEMO_DIR=str(demo_dir), COLUMNS="200", MPOTA_DEMO_KEEP="1")
    for name in ("MPOTA_TOKEN", "MPOTA_SERVER", "MPOTA_CA", "MPOTA_VB_FLASH"):
        env.pop(name, None)
    out_path = tmp_path / "demo.out"
    with out_path.open("w") as out_file:
        demo = subprocess.Popen([sys.executable, "-m", "tools.demo"], cwd=PROJECT_ROOT, env=env,
                                stdout=out_file, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while "Ctrl-C to stop it" not in out_path.read_text():
            assert demo.poll() is None, out_path.read_text()[-3000:]
            assert time.monotonic() < deadline, out_path.read_text()[-3000:]
            time.sleep(0.2)
        port = int(out_path.read_text().split("dashboard: https://127.0.0.1:", 1)[1]
                   .split("/", 1)[0])
        context = ssl.create_default_context(cafile=str(demo_dir / "tls" / "ca.pem"))
        token = (demo_dir / "viewer.token").read_text().strip()
        fleet = _dashboard_login(port, context, token)
        assert "1.3.0" in fleet and "1.1.0" in fleet  # the fleet by version, as the demo left it
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0, out_path.read_text()[-3000:]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert "demo done: server stopped" in out_path.read_text()
    with pytest.raises(OSError):  # the server is gone with the demo
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def _dashboard_login(port: int, context: ssl.SSLContext, token: str) -> str:
    """Log into the dashboard with `token` as a browser does (the login form's nonce and its
    cookie), and return the fleet page."""
    def request(method: str, path: str, body: str | None = None,
                headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        conn.request(method, path, body=body, headers=headers or {})
        return conn.getresponse()

    form = request("GET", "/ui/login")
    assert form.status == 200
    page = form.read().decode()
    nonce = page.split('name="nonce" value="', 1)[1].split('"', 1)[0]
    login_cookie = form.getheader("Set-Cookie", "").split(";", 1)[0]
    done = request("POST", "/ui/login",
                   urllib.parse.urlencode({"nonce": nonce, "token": token, "next": "/ui/fleet"}),
                   {"Content-Type": "application/x-www-form-urlencoded", "Cookie": login_cookie})
    assert done.status == 303, done.read()[:500]
    session = [c.split(";", 1)[0] for c in done.headers.get_all("Set-Cookie") or []
               if c.startswith("mpota_session=")]
    assert session, done.headers
    fleet = request("GET", "/ui/fleet", headers={"Cookie": session[0]})
    assert fleet.status == 200
    return fleet.read().decode()
