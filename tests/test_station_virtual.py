"""The station end to end on virtual boards: real mpremote over socket://, a real server.

Each board is MicroPython's unix port on a flash directory (tools/virtual_board), reached by
mpremote's serial transport at socket://127.0.0.1:PORT; the server is `ota serve` as a real
process (tools/local_server.py). Nothing here is faked.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from signing.keys import generate_private_key
from signing.root import new_root, sign_root
from tools.board_files import STATE_FILES, client_romfs, read_state, record_bytes
from tools.cli import main as ota
from tools.fleet import load_fleet
from tools.local_server import LocalServer
from tools.station.log import StationLog
from tools.station.secrets import Secret
from tools.station.station import Station, StationJob, virtual_unique_id
from tools.station.targets import Target
from tools.virtual_board import VirtualBoard, rom_image_path

WIFI_PASSWORD = "wifi-Pa55-" + "q7Zx9"
TOKEN_ENV = "MPOTA_TEST_PUBLISHER_TOKEN"
WIFI_ENV = "MPOTA_TEST_WIFI"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    base = tmp_path_factory.mktemp("server")
    root_key, release_key = generate_private_key(), generate_private_key()
    root = new_root(version=1, expires=int(time.time()) + 86400 * 30, root_keys=[root_key],
                    release_keys=[release_key])
    (base / "root.json").write_bytes(sign_root(root, [root_key]))
    with LocalServer(base / "data", base / "root.json") as running:
        yield running


@pytest.fixture
def fleet_file(tmp_path: Path, server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(TOKEN_ENV, server.token)
    monkeypatch.setenv(WIFI_ENV, WIFI_PASSWORD)
    app = tmp_path / "first-app"
    app.mkdir()
    (app / "app_main.py").write_text("def main():\n    print('first app up')\n")
    path = tmp_path / "fleet.yaml"
    path.write_text(f"""\
version: 1
server:
  url: {server.url}
  publisher_token_env: {TOKEN_ENV}
  root: {server.root_json}
channels:
  stable: {{}}
rollout:
  stages: [100]
wifi:
  lab:
    ssid: lab
    password_env: {WIFI_ENV}
boards:
  unix:
    chip: unix
provisioning:
  lab:
    board: unix
    wifi: lab
    channel: stable
    tags: [lab]
    poll_interval_s: 60
    app: {{dir: first-app, name: demo, version: 1.0.0, sequence: 1}}
  lab-romfs:
    board: unix
    wifi: lab
    channel: stable
    tags: [lab]
    poll_interval_s: 60
    client: romfs
    trial_boots: 2
    timeout_s: 5
    app: {{dir: first-app, name: demo, version: 1.0.0, sequence: 1}}
""")
    return path


def flash_dirs(tmp_path: Path, count: int) -> list[Path]:
    dirs = []
    for index in range(count):
        path = tmp_path / f"board{index}"
        path.mkdir()
        dirs.append(path)
    return dirs


def job_for(fleet_file: Path, server: LocalServer, **overrides: object) -> StationJob:
    fleet = load_fleet(fleet_file)
    settings: dict[str, object] = dict(
        station="test-station", operator="tester", profile=fleet.profile("lab"),
        server_url=server.url, publisher_token=Secret(server.token, "token"),
        wifi_password=Secret(WIFI_PASSWORD, "wifi"), trust_json=server.root_json.read_bytes())
    settings.update(overrides)
    return StationJob(**settings)  # type: ignore[arg-type]


def devices(server: LocalServer) -> dict[str, dict[str, object]]:
    return {d["device_id"]: d for d in server.client().list_devices()}


def test_four_virtual_boards_provisioned_in_parallel_boot_and_check_in(
        tmp_path: Path, server: LocalServer, fleet_file: Path,
        capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    boards = flash_dirs(tmp_path, 4)
    log_path = tmp_path / "station.jsonl"
    args = ["provision", "--fleet", str(fleet_file), "--profile", "lab", "--log", str(log_path),
            "--station", "line-1", "--operator", "ana"]
    for board in boards:
        args += ["--virtual", str(board)]

    assert ota(args) == 0
    out, err = capfd.readouterr()

    records = StationLog(log_path).records()
    assert [r.outcome for r in records] == ["provisioned"] * 4, [r.error for r in records]
    registered = devices(server)
    for board, record in zip(boards, sorted(records, key=lambda r: r.port), strict=True):
        assert record.port == f"virtual:{board.name}"
        assert record.device_id == f"unix-{virtual_unique_id(board).hex()}"
        assert record.station == "line-1" and record.operator == "ana"
        assert record.method == "mpremote" and record.registered
        assert set(record.steps) >= {"identify", "check", "key", "files", "write", "register"}
        # What the server holds is the public half of the key the board holds.
        device = registered[record.device_id]
        assert device["revoked"] is None and device["tags"] == ["lab"]
        config = json.loads((board / "ota_id" / "config.json").read_text())
        assert config["device_id"] == record.device_id and config["server"] == server.url
        assert (board / "ota_id" / "device.key").stat().st_size == 32

    # The four workers really overlapped: every write started before the first one ended.
    writes = [r.steps["write"] for r in records]
    assert max(start for start, _ in writes) < min(end for _, end in writes)

    for board, record in zip(boards, sorted(records, key=lambda r: r.port), strict=True):
        # The board boots from its new files, checks in, then runs its first app.
        run = VirtualBoard(board, unique_id=virtual_unique_id(board)).run(max_boots=1,
                                                                           timeout=60)
        assert run.ended == "exit" and "first app up" in run.output, run.output
        assert "ota: check failed" not in run.output, run.output
        device = server.client().device(str(record.device_id))
        assert device.get("last_seen"), f"{record.device_id} never checked in:\n{run.output}"

    listed = _cli_devices_list(server, capfd, monkeypatch)
    for record in records:
        assert record.device_id in listed

    # The operator saw every board (so the output below is not vacuously clean) ...
    for record in records:
        assert str(record.device_id) in out
    assert "4 provisioned, 0 failed" in out
    # ... and no secret: not the Wi-Fi password, the token, or any board's private key.
    _assert_no_secret_in([out, err, log_path.read_text()], boards, server)


def _cli_devices_list(server: LocalServer, capfd: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MPOTA_TOKEN", server.token)
    code = ota(["devices", "list", "--server", server.url])
    out, err = capfd.readouterr()
    assert code == 0, err
    return out


def _assert_no_secret_in(texts: list[str], boards: list[Path], server: LocalServer) -> None:
    secrets = [WIFI_PASSWORD, server.token]
    for board in boards:
        key = (board / "ota_id" / "device.key").read_bytes()
        secrets += [key.hex(), base64.b64encode(key).decode(), repr(key)]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_power_cut_mid_write_fails_that_board_only_and_it_is_not_registered(
        tmp_path: Path, server: LocalServer, fleet_file: Path) -> None:
    boards = flash_dirs(tmp_path, 3)
    victim = Target("virtual", str(boards[1].resolve()))
    # Cut the power at the board's 6th filesystem change: in the middle of copying its files.
    job = job_for(fleet_file, server, virtual_cut_at={victim.label: 6})
    log = StationLog(tmp_path / "station.db")
    records = Station(job, log, timeout_s=120).run(
        [Target("virtual", str(b.resolve())) for b in boards])

    by_port = {r.port: r for r in records}
    failed = by_port[victim.label]
    assert failed.outcome == "failed" and failed.failed_step == "write", failed
    assert not failed.registered
    assert failed.device_id not in devices(server)
    others = [r for r in records if r.port != victim.label]
    assert [r.outcome for r in others] == ["provisioned", "provisioned"]
    assert {r.port: r.outcome for r in log.records()} == {r.port: r.outcome for r in records}


def test_reprovision_is_explicit_and_revokes_the_old_key(
        tmp_path: Path, server: LocalServer, fleet_file: Path) -> None:
    (board,) = flash_dirs(tmp_path, 1)
    target = Target("virtual", str(board.resolve()))
    log = StationLog(tmp_path / "station.jsonl")
    (first,) = Station(job_for(fleet_file, server), log).run([target])
    assert first.outcome == "provisioned"

    (again,) = Station(job_for(fleet_file, server), log).run([target])
    assert again.outcome == "failed" and again.failed_step == "check"
    assert "--reprovision" in (again.error or "")
    assert devices(server)[str(first.device_id)]["revoked"] is None

    (second,) = Station(job_for(fleet_file, server, reprovision=True), log).run([target])
    assert second.outcome == "provisioned", second.error
    assert second.device_id == f"{first.device_id}-r2"
    assert second.revoked == [first.device_id]
    known = devices(server)
    assert known[str(first.device_id)]["revoked"] is not None
    assert known[str(second.device_id)]["revoked"] is None
    assert second.key_fingerprint != first.key_fingerprint
    config = json.loads((board / "ota_id" / "config.json").read_text())
    assert config["device_id"] == second.device_id


def test_a_key_where_boards_before_ota_id_kept_it_is_an_identity_too(
        tmp_path: Path, server: LocalServer, fleet_file: Path) -> None:
    # A board provisioned before /ota_id (docs/board.md, Three directories), by another
    # server: its /ota/device.key is an identity the station must not silently replace.
    (board,) = flash_dirs(tmp_path, 1)
    (board / "ota").mkdir(parents=True, exist_ok=True)
    (board / "ota" / "device.key").write_bytes(os.urandom(32))
    target = Target("virtual", str(board.resolve()))
    (refused,) = Station(job_for(fleet_file, server), StationLog(tmp_path / "l.jsonl")).run(
        [target])
    assert refused.outcome == "failed" and refused.failed_step == "check", refused
    assert "a key on the board" in (refused.error or "")
    assert not (board / "ota_id").exists()


def test_reprovisioning_leaves_no_boot_record_of_the_boards_earlier_life(
        tmp_path: Path, server: LocalServer, fleet_file: Path) -> None:
    """A board back from the field has two boot records; the newer one (any sequence) names
    the slot, the app and the rollback floor of its earlier life. After re-provisioning the
    board must boot the state the station wrote, whichever record it was in."""
    (board,) = flash_dirs(tmp_path, 1)
    target = Target("virtual", str(board.resolve()))
    log = StationLog(tmp_path / "station.jsonl")
    (first,) = Station(job_for(fleet_file, server), log).run([target])
    assert first.outcome == "provisioned"
    fresh = read_state(board)
    assert fresh is not None
    field_life = {**fresh, "seq": 57, "active": "b", "reject": 41,
                  "slots": {"a": fresh["slots"]["a"], "b": {"app": "old", "version": "9.9.9",
                                                            "sequence": 42,
                                                            "entry": "app_main"}}}
    for record in STATE_FILES:  # the board alternates between the two: either may be newest
        (board / record.lstrip("/")).write_bytes(record_bytes(field_life))
        (again,) = Station(job_for(fleet_file, server, reprovision=True), log).run([target])
        assert again.outcome == "provisioned", again.error
        assert read_state(board) == fresh, record


def test_missing_secret_is_refused_before_touching_any_board(
        tmp_path: Path, fleet_file: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(WIFI_ENV)
    (board,) = flash_dirs(tmp_path, 1)
    code = ota(["provision", "--fleet", str(fleet_file), "--profile", "lab",
                "--log", str(tmp_path / "log.jsonl"), "--virtual", str(board)])
    _, err = capfd.readouterr()
    assert code == 1
    assert WIFI_ENV in err
    assert not any(board.iterdir()) and not (tmp_path / "log.jsonl").exists()
    assert os.environ.get(WIFI_ENV) is None


def test_failure_after_registration_revokes_the_new_identity(
        tmp_path: Path, server: LocalServer, fleet_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Run one board's provisioning in this process so the reset can be made to fail: the board
    # drops off the link right after its files were verified and it was registered.
    from tools.station import writer_mpremote
    from tools.station.station import BoardProvisioner

    def board_vanishes(self: writer_mpremote.MpremoteBoard) -> None:
        raise writer_mpremote.WriteError("soft reset failed: board vanished")

    monkeypatch.setattr(writer_mpremote.MpremoteBoard, "soft_reset", board_vanishes)
    (board,) = flash_dirs(tmp_path, 1)
    events: list[tuple[str, object]] = []
    record = BoardProvisioner(job_for(fleet_file, server), Target("virtual", str(board)),
                              lambda kind, payload: events.append((kind, payload))).run()
    assert record.outcome == "failed" and record.failed_step == "reset"
    assert record.device_id is not None and record.revoked == [record.device_id]
    assert not record.registered
    assert devices(server)[record.device_id]["revoked"] is not None
    assert [p for k, p in events if k == "step"][-2:] == ["register", "reset"]


def test_virtual_board_provisioned_with_the_romfs_client_boots_it_from_its_rom_partition(
        tmp_path: Path, server: LocalServer, fleet_file: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    (board,) = flash_dirs(tmp_path, 1)
    # The app shows where its client came from.
    (tmp_path / "first-app" / "app_main.py").write_text(
        "import ota\ndef main():\n    print('first app up, ota from', ota.__path__)\n")
    log_path = tmp_path / "station.jsonl"
    assert ota(["provision", "--fleet", str(fleet_file), "--profile", "lab-romfs",
                "--log", str(log_path), "--virtual", str(board)]) == 0
    out, err = capfd.readouterr()

    (record,) = StationLog(log_path).records()
    assert record.outcome == "provisioned", record.error
    assert (record.client, record.method) == ("romfs", "mpremote")
    assert f"{record.device_id}" in out and "client romfs" in out
    # The station wrote the ROM partition (the image beside the flash directory) ...
    assert rom_image_path(board).read_bytes() == client_romfs()
    # ... and no client code onto the filesystem: only boot.py and main.py, as source.
    assert sorted(p.name for p in board.rglob("*.py")) == ["app_main.py", "boot.py", "main.py"]
    assert not list(board.rglob("*.mpy"))
    # The profile's board settings reached the board; the others kept their defaults.
    config = json.loads((board / "ota_id" / "config.json").read_text())
    assert (config["trial_boots"], config["timeout_s"], config["wifi_timeout_s"]) == (2, 5, 15)

    run = VirtualBoard(board, unique_id=virtual_unique_id(board)).run(max_boots=1, timeout=60)
    assert run.ended == "exit", run.output
    assert "first app up, ota from /rom/ota" in run.output, run.output
    assert "ota: check failed" not in run.output, run.output
    assert server.client().device(str(record.device_id)).get("last_seen")
    _assert_no_secret_in([out, err, log_path.read_text()], [board], server)
