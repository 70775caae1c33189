"""`ota provision` refuses bad input up front, before any board is touched."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from tools.cli import main as ota
from tools.station.log import BoardRecord
from tools.station.view import LiveView

FLEET = """\
version: 1
server: {url: "http://127.0.0.1:9", publisher_token_env: CLI_TEST_TOKEN}
channels: {stable: {}}
rollout: {stages: [100]}
wifi:
  lab:
    ssid: lab
    password_env: CLI_TEST_WIFI
boards:
  unix: {chip: unix}
  esp32: {chip: esp32, flash_size: 0x400000, fs_offset: 0x200000, fs_size: 0x200000}
provisioning:
  lab: {board: unix, wifi: lab, channel: stable}
  esp: {board: esp32, wifi: lab, channel: stable, method: image}
"""


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLI_TEST_TOKEN", "tok-abcdef")
    monkeypatch.setenv("CLI_TEST_WIFI", "wifi-abcdef")
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    (tmp_path / "board").mkdir()
    return path


def run(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = ota(["provision", *args])
    out, err = capfd.readouterr()
    return code, out + err


def test_literal_password_in_fleet_is_refused_with_its_line(
        fleet: Path, capfd: pytest.CaptureFixture[str]) -> None:
    fleet.write_text(FLEET.replace("password_env: CLI_TEST_WIFI", "password: wifi-abcdef"))
    code, text = run(capfd, "--fleet", str(fleet), "--profile", "lab",
                     "--virtual", str(fleet.parent / "board"))
    assert code == 1
    assert f"{fleet}:8:" in text and "password_env" in text
    assert "wifi-abcdef" not in text


def test_virtual_board_with_an_esp32_profile_is_refused(
        fleet: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, text = run(capfd, "--fleet", str(fleet), "--profile", "esp", "--root",
                     str(fleet), "--virtual", str(fleet.parent / "board"))
    assert code == 1 and "virtual board" in text


def test_missing_trust_root_is_refused(fleet: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, text = run(capfd, "--fleet", str(fleet), "--profile", "lab",
                     "--virtual", str(fleet.parent / "board"))
    assert code == 1 and "trust root" in text
    code, text = run(capfd, "--fleet", str(fleet), "--profile", "lab", "--root", str(fleet),
                     "--virtual", str(fleet.parent / "board"))
    assert code == 1 and "not JSON" in text


def test_unknown_profile_lists_the_known_ones(fleet: Path,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    code, text = run(capfd, "--fleet", str(fleet), "--profile", "nope", "--all")
    assert code == 1 and "esp, lab" in text


def test_live_view_draws_one_line_per_port_and_a_summary() -> None:
    screen = io.StringIO()
    view = LiveView(Console(file=screen, force_terminal=True, width=120))
    view.started(["/dev/ttyUSB0", "/dev/ttyUSB1"])
    view.step("/dev/ttyUSB0", "write")
    view.progress("/dev/ttyUSB0", 50, 100)
    ok = BoardRecord(station="s", operator="o", port="/dev/ttyUSB0", method="image",
                     profile="p", outcome="provisioned", device_id="esp32-01",
                     key_fingerprint="ab" * 32)
    bad = BoardRecord(station="s", operator="o", port="/dev/ttyUSB1", method="image",
                      profile="p", failed_step="identify", error="no bootloader [x]")
    view.finished(ok)
    view.finished(bad)
    view.summary([ok, bad])
    text = screen.getvalue()
    assert "esp32-01" in text and "no bootloader [x]" in text
    assert "1 provisioned, 1 failed" in text


def test_romfs_client_through_mpremote_is_refused_for_a_real_board(
        fleet: Path, capfd: pytest.CaptureFixture[str]) -> None:
    fleet.write_text(FLEET + (
        "  esp-lean: {board: esp32, wifi: lab, channel: stable, method: image, client: romfs,\n"
        "             romfs_offset: 0x1e0000}\n"
        "  lab-lean: {board: unix, wifi: lab, channel: stable, client: romfs}\n"))
    log = fleet.parent / "log.jsonl"
    code, text = run(capfd, "--fleet", str(fleet), "--profile", "esp-lean", "--root", str(fleet),
                     "--method", "mpremote", "--port", "/dev/ttyUSB9", "--log", str(log))
    assert code == 1
    assert "profile 'esp-lean'" in text and "method: image" in text and "esptool" in text
    code, text = run(capfd, "--fleet", str(fleet), "--profile", "lab-lean", "--root", str(fleet),
                     "--port", "/dev/ttyUSB9", "--log", str(log))
    assert code == 1 and "virtual boards only" in text
    assert not log.exists()  # refused before any board or log was touched
