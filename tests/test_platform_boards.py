"""Boards of the seed's other platforms, ESP8266 and Pyboard-D (docs/board.md, Platforms):
what fleet.yaml and `ota provision` refuse for them, each refusal naming why and where, before
any board is touched.

- A FAT board (the Pyboard-D's filesystem) gets no image: the station builds littlefs images
  only, and a littlefs image on a FAT board is a filesystem its firmware reformats.
- An ESP8266 cannot verify a server's certificate (its `tls` is axTLS): an https server is
  refused for it, never used unverified.
- A trial watchdog longer than the board's machine.WDT counts is refused: the ESP8266's takes
  5 s only, the STM32's 32.767 s at most (the board would run without one).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.cli import main as ota
from tools.fleet import FleetError, image_method_problem, load_fleet, parse_fleet

ROOT = Path(__file__).resolve().parent.parent

FLEET = """\
version: 1
server: {url: "%(url)s", publisher_token_env: PLATFORM_TEST_TOKEN}
channels: {stable: {}}
rollout: {stages: [100]}
wifi:
  lab: {ssid: lab, password_env: PLATFORM_TEST_WIFI}
boards:
  esp8266:
    chip: esp8266
    flash_size: 0x400000
    fs_offset: 0x100000
    fs_size: 0x2FB000
  pybd:
    chip: stm32
    flash_size: 0x200000
    fs_size: 0x200000
    filesystem: fat
provisioning:
  p:
    board: %(board)s
    wifi: lab
    channel: stable
"""


def fleet_text(board: str = "esp8266", url: str = "http://127.0.0.1:9", extra: str = "") -> str:
    return FLEET % {"board": board, "url": url} + extra


def error_of(text: str) -> str:
    with pytest.raises(FleetError) as caught:
        parse_fleet(text, Path("/fleets/fleet.yaml"))
    return str(caught.value)


def test_the_example_fleets_esp8266_and_pyboard_d_have_the_ports_filesystems() -> None:
    boards = load_fleet(ROOT / "fleet.yaml").boards
    assert boards["esp8266"].filesystem == "littlefs"
    assert boards["pybd-sf2"].filesystem == "fat"
    assert image_method_problem(boards["esp8266"]) is None
    problem = image_method_problem(boards["pybd-sf2"])
    assert problem is not None and "FAT" in problem


def test_a_fat_board_with_the_image_method_is_refused_with_its_line() -> None:
    text = fleet_text("pybd", extra="    method: image\n")
    message = error_of(text)
    assert message.startswith("/fleets/fleet.yaml:23:"), message  # the `method:` line
    assert "FAT filesystem" in message and "littlefs images only" in message
    assert "method mpremote" in message


def test_a_fat_board_with_the_mpremote_method_loads() -> None:
    profile = parse_fleet(fleet_text("pybd"), Path("/f.yaml")).profile("p")
    assert (profile.board.filesystem, profile.method) == ("fat", "mpremote")


@pytest.mark.parametrize(("entry", "line", "says"), [
    ("    filesystem: spiffs\n", 17, "filesystem must be one of littlefs, fat, not 'spiffs'"),
    ("    prog_size: 32\n", 18, "prog_size is littlefs's; a FAT filesystem has none"),
])
def test_a_boards_filesystem_is_checked(entry: str, line: int, says: str) -> None:
    text = fleet_text("pybd").replace("    filesystem: fat\n", entry if "filesystem" in entry
                                      else "    filesystem: fat\n" + entry)
    message = error_of(text)
    assert message.startswith(f"/fleets/fleet.yaml:{line}:"), message
    assert says in message


def test_an_esp8266_profile_with_an_https_server_is_refused() -> None:
    message = error_of(fleet_text(url="https://ota.example.com"))
    assert message.startswith("/fleets/fleet.yaml:20:"), message  # the profile's `board:`
    assert "cannot verify an https server" in message and "axTLS" in message
    assert "serve its boards over http" in message


def test_an_esp8266_profile_with_an_http_server_loads() -> None:
    profile = parse_fleet(fleet_text(), Path("/f.yaml")).profile("p")
    assert profile.board.chip == "esp8266"


def test_a_pyboard_d_verifies_https_so_its_profile_loads() -> None:
    profile = parse_fleet(fleet_text("pybd", url="https://ota.example.com"),
                          Path("/f.yaml")).profile("p")
    assert profile.board.chip == "stm32"


@pytest.mark.parametrize(("board", "seconds", "most"), [("esp8266", 30, 5000),
                                                       ("pybd", 33, 32767)])
def test_a_trial_watchdog_the_boards_wdt_cannot_count_is_refused(board: str, seconds: int,
                                                                   most: int) -> None:
    message = error_of(fleet_text(board, extra=f"    trial_watchdog_s: {seconds}\n"))
    assert message.startswith("/fleets/fleet.yaml:23:"), message
    assert f"trial_watchdog_s {seconds} is longer than" in message
    assert f"{most} ms at most" in message and "machine_wdt.c" in message


def test_a_trial_watchdog_the_pyboard_d_can_count_loads() -> None:
    profile = parse_fleet(fleet_text("pybd", extra="    trial_watchdog_s: 32\n"),
                          Path("/f.yaml")).profile("p")
    assert profile.behaviour == (("trial_watchdog_s", 32),)


@pytest.fixture
def cli_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PLATFORM_TEST_TOKEN", "tok-abcdef")
    monkeypatch.setenv("PLATFORM_TEST_WIFI", "wifi-abcdef")
    return tmp_path / "fleet.yaml"


def test_provision_refuses_the_image_method_for_a_fat_board_before_any_board_is_touched(
        cli_fleet: Path, capfd: pytest.CaptureFixture[str]) -> None:
    cli_fleet.write_text(fleet_text("pybd"))
    code = ota(["provision", "--fleet", str(cli_fleet), "--profile", "p", "--method", "image",
                "--port", "/dev/null-no-board"])
    out, err = capfd.readouterr()
    assert code == 1
    assert "profile 'p'" in out + err and "littlefs images only" in out + err


def test_provision_refuses_an_https_server_override_for_an_esp8266(
        cli_fleet: Path, capfd: pytest.CaptureFixture[str]) -> None:
    cli_fleet.write_text(fleet_text())
    code = ota(["provision", "--fleet", str(cli_fleet), "--profile", "p",
                "--server", "https://ota.example.com", "--port", "/dev/null-no-board"])
    out, err = capfd.readouterr()
    assert code == 1
    assert "cannot verify an https server" in out + err
