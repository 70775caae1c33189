"""`ota serve --workers N` (ota_server/workers.py): several processes of one server on one
embedded store, run as real processes on 127.0.0.1.

Boards open a new connection for every request, so the kernel spreads their requests over the
workers: what one worker changes (a pause, a yank, an offer, a root), every other one acts on
at once, and what the server reports (metrics) is the sum of all of them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from server_support import FleetKeys, SimBoard, make_bundle

from ota_server.counters import WRITE_BEHIND_SECONDS
from ota_server.datadir import WORKERS_DIR
from ota_server.settings import SettingsError, load_settings
from tools.local_server import LocalServer, LocalServerError
from tools.micropython import PROJECT_ROOT

WORKERS = 2
# Boards checking in at once, and their check-ins in one burst: the kernel hands each new
# connection to one worker's socket by a hash of its address and port, so 48 of them reach
# every worker but with a chance of 2 in 2**48 (and the tests check that they did).
BURST_BOARDS = 6
SPREAD = BURST_BOARDS * 8
DEADLINE_S = 15.0


@pytest.fixture
def keys(tmp_path: Path) -> FleetKeys:
    return FleetKeys.create(tmp_path)


@pytest.fixture
def server(tmp_path: Path, keys: FleetKeys) -> Iterator[LocalServer]:
    with LocalServer(tmp_path / "data", keys.root_path,
                     extra_args=["--workers", str(WORKERS)]) as srv:
        yield srv


def _send(srv: LocalServer, board: SimBoard, method: str, path: str,
          body: bytes = b"") -> tuple[int, bytes]:
    """One signed board request on a new connection (as boards do)."""
    request = urllib.request.Request(srv.url + path, data=body if method == "POST" else None,
                                     method=method, headers=board.auth(method, path, body))
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _checkin(srv: LocalServer, board: SimBoard) -> int:
    return _send(srv, board, "POST", "/v1/device/checkin", board.checkin_body())[0]


def _boards(srv: LocalServer, count: int, **fields: object) -> list[SimBoard]:
    api = srv.client()
    boards = []
    for n in range(count):
        board = SimBoard(f"board-{n:03d}", **fields)  # type: ignore[arg-type]
        api.register_device(board.device_id, board.point, board=board.board,
                            channel=board.channel, tags=board.tags)
        boards.append(board)
    return boards


def _publish(srv: LocalServer, keys: FleetKeys, tmp_path: Path, version: str,
             sequence: int) -> None:
    bundle = make_bundle(tmp_path, {"app_main.py": f"v{sequence}\n".encode()}, version=version,
                         sequence=sequence, key=keys.release_key)
    srv.client().publish(bundle, "stable",
                         policy={"stages": [{"percent": 100}], "auto_advance": False})


def _burst(srv: LocalServer, boards: list[SimBoard], rounds: int = 8) -> list[int]:
    """Check-ins of every board `rounds` times, the boards at once (one thread each, so each
    board's counters stay in order): connections arrive together, as in the field, and every
    worker takes some (the tests check that it did: `_taken_by_each`)."""
    def one_board(board: SimBoard) -> list[int]:
        return [_checkin(srv, board) for _ in range(rounds)]

    with ThreadPoolExecutor(len(boards)) as pool:
        return [status for statuses in pool.map(one_board, boards) for status in statuses]


def _saved_checkins(srv: LocalServer) -> dict[str, float]:
    """Check-ins each worker counted, as it last saved them (about once a second)."""
    saved = {}
    for path in (srv.data_dir / WORKERS_DIR).glob("metrics-*.json"):
        rows = json.loads(path.read_text())
        saved[path.name] = sum(value for name, _, value in rows
                               if name == "mpota_checkins_total")
    return saved


def _taken_by_each(srv: LocalServer, before: dict[str, float], sent: int) -> None:
    """Every worker handled some of the `sent` check-ins since `before` was saved."""
    _until(lambda: sum(_saved_checkins(srv).values()) == sum(before.values()) + sent,
           "the workers never saved the check-ins sent")
    now = _saved_checkins(srv)
    assert len(now) == WORKERS, now
    assert all(now[name] > before.get(name, 0) for name in now), (before, now)


def _worker_pids(srv: LocalServer) -> list[int]:
    assert srv.pid is not None
    out = subprocess.run(["ps", "-ww", "--ppid", str(srv.pid), "-o", "pid=,args="],
                         capture_output=True, text=True, check=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "spawn_main" in line]


def _metric(srv: LocalServer, name: str) -> float:
    with urllib.request.urlopen(srv.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_every_worker_serves_and_the_metrics_are_their_sum(server: LocalServer) -> None:
    assert len(_worker_pids(server)) == WORKERS
    boards = _boards(server, BURST_BOARDS)
    assert _burst(server, boards) == [204] * SPREAD
    _taken_by_each(server, {}, SPREAD)
    # A scrape reaches one worker, which sums its own counts and the others' saved ones.
    for _ in range(10):
        assert _metric(server, "mpota_checkins_total") == SPREAD


def test_a_pause_and_a_yank_through_one_worker_hold_on_every_worker(
        server: LocalServer, keys: FleetKeys, tmp_path: Path) -> None:
    boards = _boards(server, BURST_BOARDS)
    _publish(server, keys, tmp_path, "1.0.0", 1)
    # Every worker reads the active rollout (and keeps it) before each move.
    for move, expected in ((server.client().rollout_pause, 204),
                           (server.client().rollout_resume, 200)):
        before = _saved_checkins(server)
        assert _burst(server, boards) == [200 if expected == 204 else 204] * SPREAD
        _taken_by_each(server, before, SPREAD)
        move("stable")
        before = _saved_checkins(server)
        assert _burst(server, boards) == [expected] * SPREAD
        _taken_by_each(server, before, SPREAD)
    server.client().yank("demo", "1.0.0", force=True)
    before = _saved_checkins(server)
    assert _burst(server, boards) == [204] * SPREAD
    _taken_by_each(server, before, SPREAD)


def test_a_report_through_any_worker_finds_the_offer_another_wrote_behind(
        server: LocalServer, keys: FleetKeys, tmp_path: Path) -> None:
    """A check-in's offer is written behind by the worker that answered it; the board's report,
    sent at once on a new connection, may reach the other worker first, which waits for it
    (ota_server.routes_device.PEER_OFFER_WAIT_S) instead of refusing it."""
    boards = _boards(server, 30)
    _publish(server, keys, tmp_path, "1.0.0", 1)
    for board in boards:
        assert _checkin(server, board) == 200
        status, body = _send(server, board, "POST", "/v1/device/report",
                             board.report_body("downloading", 1))
        assert status == 204, body
    counts = server.client().rollout_status("stable")["rollout"]["counts"]
    assert counts["downloading"] == 30


def test_a_check_in_written_behind_never_undoes_a_later_report_through_another_worker(
        server: LocalServer, keys: FleetKeys, tmp_path: Path) -> None:
    """A board checks in (its inventory queued behind in the worker that answered) and at once
    reports a rollback through a new connection, maybe to the other worker, which writes it
    first: the check-in's older inventory, written after, must not bring its version back."""
    boards = _boards(server, 30)
    _publish(server, keys, tmp_path, "1.0.0", 1)
    for board in boards:
        assert _checkin(server, board) == 200  # offered 1.0.0
    for board in boards:
        # It runs 1.0.0 on trial: nothing new for it; then the trial fails.
        body = board.checkin_body(version="1.0.0", sequence=1)
        assert _send(server, board, "POST", "/v1/device/checkin", body)[0] == 204
        report = json.dumps({"app": "demo", "sequence": 1, "version": "0.9.0",
                             "status": "rolled_back", "reason": "boom"}).encode()
        status, answer = _send(server, board, "POST", "/v1/device/report", report)
        assert status == 204, answer
    time.sleep(4 * WRITE_BEHIND_SECONDS)  # every record queued behind is written by now
    versions = {d["device_id"]: d["version"] for d in server.client().list_devices()}
    assert versions == {board.device_id: "0.9.0" for board in boards}


def test_a_root_rotated_through_one_worker_is_hinted_by_every_worker(
        server: LocalServer, keys: FleetKeys) -> None:
    boards = _boards(server, BURST_BOARDS)
    envelope, _ = keys.rotated_root(2)
    server.client().upload_root(envelope)

    def hints(board: SimBoard) -> list[str]:
        seen = []
        for _ in range(SPREAD // BURST_BOARDS):
            request = urllib.request.Request(
                server.url + "/v1/device/checkin", data=board.checkin_body(), method="POST",
                headers=board.auth("POST", "/v1/device/checkin", board.checkin_body()))
            with urllib.request.urlopen(request, timeout=10) as resp:
                seen.append(resp.headers.get("X-Ota-Root", ""))
        return seen

    def every_worker_hints_root_2() -> bool:
        before = _saved_checkins(server)
        with ThreadPoolExecutor(BURST_BOARDS) as pool:
            seen = {hint for found in pool.map(hints, boards) for hint in found}
        _taken_by_each(server, before, SPREAD)
        return seen == {"2"}

    _until(every_worker_hints_root_2, "a worker still hints root 1")


def test_a_worker_that_dies_is_replaced_and_the_counts_go_on(server: LocalServer) -> None:
    boards = _boards(server, 2)
    for n in range(SPREAD):
        assert _checkin(server, boards[n % 2]) == 204
    _until(lambda: _metric(server, "mpota_checkins_total") == SPREAD, "metrics never summed")
    time.sleep(1.5)  # both workers saved their counts since
    victim = _worker_pids(server)[0]
    os.kill(victim, signal.SIGKILL)
    _until(lambda: victim not in _worker_pids(server) and len(_worker_pids(server)) == WORKERS,
           "the killed worker was not replaced")
    for n in range(SPREAD):  # served throughout, by whichever worker is there
        assert _checkin(server, boards[n % 2]) == 204
    # The new worker went on from the counts its predecessor saved: the sum never went down.
    _until(lambda: _metric(server, "mpota_checkins_total") == 2 * SPREAD,
           "the check-ins of the killed worker were lost from the sum")


def test_the_data_directory_stays_locked_until_the_last_worker_is_gone(
        tmp_path: Path, keys: FleetKeys) -> None:
    first = LocalServer(tmp_path / "data", keys.root_path, extra_args=["--workers", "2"])
    with first:
        second = LocalServer(tmp_path / "data", keys.root_path)
        with pytest.raises(LocalServerError, match="in use by another ota serve"):
            second.start()
        workers = _worker_pids(first)
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)  # the supervisor, without its clean-up
        # Its workers hold the lock until they notice they are orphans and stop.
        _until(lambda: not any(_alive(pid) for pid in workers),
               "the workers of a killed supervisor kept running")
        second.start()  # the directory is free again
        second.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_stops_every_worker_and_writes_what_they_held(
        server: LocalServer) -> None:
    boards = _boards(server, 5)
    for board in boards:
        assert _checkin(server, board) == 204  # inventories queued behind, in both workers
    workers = _worker_pids(server)
    server.stop()
    assert not any(_alive(pid) for pid in workers)
    import sqlite3

    db = sqlite3.connect(server.data_dir / "mpota.sqlite3")
    try:
        rows = db.execute("SELECT COUNT(*) FROM devices WHERE micropython = '1.25.0'")
        assert rows.fetchone()[0] == 5
    finally:
        db.close()


@pytest.mark.parametrize(("given", "message"), [
    ("0", "0 is outside 1..64"), ("65", "65 is outside 1..64"), ("two", "not a whole number"),
    ("-1", "not a whole number"), (" ", "not a whole number")])
def test_a_bad_worker_count_is_refused_by_name(tmp_path: Path, given: str, message: str) -> None:
    with pytest.raises(SettingsError, match=f"--workers / MPOTA_WORKERS: {message}"):
        load_settings({"data_dir": tmp_path, "workers": given}, environ={})


def test_several_workers_need_the_embedded_store(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="share the embedded store"):
        load_settings({"data_dir": tmp_path, "workers": "2",
                       "db_url": "postgresql://u@127.0.0.1/db"}, environ={})
    assert load_settings({"data_dir": tmp_path}, environ={"MPOTA_WORKERS": "3"}).workers == 3


def test_ota_serve_says_which_setting_is_wrong(tmp_path: Path, keys: FleetKeys) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tools.cli", "serve", "--data", str(tmp_path / "d"),
         "--root", str(keys.root_path), "--workers", "0"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    assert result.returncode != 0
    assert "--workers / MPOTA_WORKERS: 0 is outside 1..64" in result.stderr
    assert not (tmp_path / "d").exists()  # nothing was made


def test_sighup_renews_the_certificate_of_every_worker(tmp_path: Path, keys: FleetKeys) -> None:
    import socket
    import ssl

    from cryptography import x509

    from tools.cli import main

    tls_dir = tmp_path / "tls"
    assert main(["tls", "init", str(tls_dir), "--host", "127.0.0.1"]) == 0

    def served_serials(srv: LocalServer, count: int) -> set[int]:
        """The certificate serials `count` new connections were served."""
        context = ssl.create_default_context(cafile=str(srv.ca_path))
        serials = set()
        for _ in range(count):
            with socket.create_connection((srv.host, srv.port), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=srv.host) as conn:
                der = conn.getpeercert(binary_form=True)
                assert der is not None
                serials.add(x509.load_der_x509_certificate(der).serial_number)
        return serials

    with LocalServer(tmp_path / "data", keys.root_path, tls_dir=tls_dir,
                     extra_args=["--workers", str(WORKERS)]) as srv:
        (before,) = served_serials(srv, SPREAD)
        assert main(["tls", "issue", str(tls_dir), "--host", "127.0.0.1"]) == 0
        renewed = x509.load_pem_x509_certificate((tls_dir / "server.pem").read_bytes())
        srv.reload_tls()  # SIGHUP to the supervisor, which passes it on
        # Once every worker reloaded, no connection (whichever worker takes it) gets the old one.
        _until(lambda: served_serials(srv, SPREAD) == {renewed.serial_number},
               "a worker still serves the old certificate")
        assert renewed.serial_number != before
