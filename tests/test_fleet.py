"""fleet.yaml: the example loads, and each kind of mistake is refused with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.fleet import FleetError, SecretRef, load_fleet, parse_fleet

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
version: 1
server:
  url: http://127.0.0.1:8080
  publisher_token_env: TOKEN
channels:
  stable: {}
groups:
  canary:
    tags: [canary]
rollout:
  canary_group: canary
  stages: [10, 100]
wifi:
  lab:
    ssid: lab
    password_env: LAB_WIFI
boards:
  esp32:
    chip: esp32
    flash_size: 0x400000
    fs_offset: 0x200000
    fs_size: 0x200000
provisioning:
  p:
    board: esp32
    method: image
    wifi: lab
    channel: stable
"""


def parse(text: str) -> object:
    return parse_fleet(text, Path("/fleets/fleet.yaml"))


def error_of(text: str) -> str:
    with pytest.raises(FleetError) as caught:
        parse(text)
    return str(caught.value)


def test_the_example_fleet_loads_with_every_section() -> None:
    fleet = load_fleet(ROOT / "fleet.yaml")
    assert set(fleet.channels) == {"stable", "beta"}
    assert fleet.rollout.canary_group == "canary"
    assert fleet.rollout.stages[-1] == 100
    profile = fleet.profile("esp32-field")
    assert profile.board.fs_offset == 0x200000 and profile.board.fs_size == 0x200000
    assert profile.method == "image"
    assert profile.wifi is not None
    assert profile.wifi.password.file == ROOT / "secrets/field-wifi.txt"
    assert fleet.server.publisher_token == SecretRef(env="MPOTA_TOKEN")
    assert fleet.profile("lab-virtual").board.chip == "unix"


def test_good_fleet_resolves_references() -> None:
    fleet = parse(GOOD)
    profile = fleet.profile("p")  # type: ignore[attr-defined]
    assert profile.wifi.ssid == "lab"
    assert profile.wifi.password == SecretRef(env="LAB_WIFI")
    assert profile.channel.name == "stable"
    assert profile.board.fs_size == 0x200000


def test_literal_wifi_password_is_refused_naming_its_line() -> None:
    text = GOOD.replace("    password_env: LAB_WIFI\n", "    password: hunter2\n")
    message = error_of(text)
    assert message.startswith("/fleets/fleet.yaml:16:")
    assert "password_env" in message
    assert "hunter2" not in message


def test_literal_publisher_token_is_refused() -> None:
    text = GOOD.replace("  publisher_token_env: TOKEN\n", "  token: abc\n")
    assert error_of(text).startswith("/fleets/fleet.yaml:4:")


def test_unknown_reference_names_the_line_and_known_names() -> None:
    message = error_of(GOOD.replace("    channel: stable", "    channel: nightly"))
    assert message.startswith("/fleets/fleet.yaml:28:")
    assert "nightly" in message and "stable" in message


def test_wrong_type_names_the_line() -> None:
    assert error_of(GOOD.replace("fs_size: 0x200000", "fs_size: big")).startswith(
        "/fleets/fleet.yaml:22:")


def test_partition_must_be_whole_blocks() -> None:
    assert "multiples of 4096" in error_of(GOOD.replace("fs_size: 0x200000", "fs_size: 0x200001"))


def test_rollout_stages_must_end_at_100() -> None:
    message = error_of(GOOD.replace("stages: [10, 100]", "stages: [10, 50]"))
    assert message.startswith("/fleets/fleet.yaml:12:")


def test_duplicate_key_names_its_line() -> None:
    text = GOOD.replace("  stable: {}\n", "  stable: {}\n  stable: {}\n")
    assert error_of(text).startswith("/fleets/fleet.yaml:7: duplicate key")


def test_yaml_syntax_error_names_the_line() -> None:
    assert error_of(GOOD + "  bad: [\n").startswith("/fleets/fleet.yaml:")


def test_unknown_key_is_refused() -> None:
    assert "unknown key 'colour'" in error_of(GOOD.replace("    chip: esp32\n",
                                                           "    chip: esp32\n    colour: red\n"))


def test_env_and_file_together_are_refused() -> None:
    text = GOOD.replace("    password_env: LAB_WIFI\n",
                        "    password_env: LAB_WIFI\n    password_file: wifi.txt\n")
    assert "not both" in error_of(text)


def test_missing_file_is_a_fleet_error(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="cannot read"):
        load_fleet(tmp_path / "nope.yaml")


def test_first_app_is_parsed_and_checked() -> None:
    text = GOOD + "    app: {dir: app, name: demo, version: 1.2.0, sequence: 3}\n"
    app = parse(text).profile("p").app  # type: ignore[attr-defined]
    assert (app.directory, app.name, app.version, app.sequence, app.entry) == (
        Path("/fleets/app"), "demo", "1.2.0", 3, "app_main")
    bad = GOOD + "    app:\n      dir: app\n      name: demo\n      version: one\n"
    assert error_of(bad).startswith("/fleets/fleet.yaml:32:")  # the version line


ROMFS = GOOD + "    client: romfs\n    romfs_offset: 0x1e0000\n"
_ADDED = GOOD.count("\n") + 1  # the line of the first key added after GOOD


def test_client_layout_defaults_to_files_and_romfs_takes_its_partition_offset() -> None:
    assert parse(GOOD).profile("p").client == "files"  # type: ignore[attr-defined]
    profile = parse(ROMFS).profile("p")  # type: ignore[attr-defined]
    assert (profile.client, profile.romfs_offset) == ("romfs", 0x1E0000)
    example = load_fleet(ROOT / "fleet.yaml")
    assert example.profile("esp32-lean").client == "romfs"
    assert example.profile("lab-virtual-romfs").client == "romfs"


@pytest.mark.parametrize(("text", "line", "words"), [
    (GOOD + "    client: flash\n", _ADDED, ["client must be one of files, romfs", "'flash'"]),
    (GOOD + "    client: romfs\n", _ADDED, ["needs romfs_offset"]),
    (GOOD.replace("method: image", "method: mpremote") + "    client: romfs\n", _ADDED,
     ["needs the image method", "esptool", "mpremote method writes only the filesystem"]),
    (GOOD + "    romfs_offset: 0x1e0000\n", _ADDED, ["romfs_offset is only used with client"]),
    (ROMFS.replace("0x1e0000", "0x1e0800"), _ADDED + 1, ["must be a multiple of 4096"]),
    (ROMFS.replace("0x1e0000", "0x210000"), _ADDED + 1, ["inside the fs partition"]),
    (ROMFS.replace("0x1e0000", "0x400000"), _ADDED + 1, ["inside the flash"]),
    (ROMFS + "    mpy: false\n", _ADDED + 2, ["always ships the client as .mpy"]),
    (GOOD + "    trial_boots: 0\n", _ADDED, ["trial_boots must be at least 1"]),
    (GOOD + "    timeout_s: 20\n    trial_watchdog_s: 25\n", _ADDED + 1,
     ["trial_watchdog_s must be 0 (off) or at least 30 s", "not 25"]),
    (GOOD + "    auto_confirm: 1\n", _ADDED, ["auto_confirm"]),
    (GOOD + "    confirm_after_s: -1\n", _ADDED, ["must not be negative"]),
], ids=["bad-layout", "no-offset", "mpremote-on-esp32", "offset-without-romfs", "unaligned",
        "in-fs-partition", "past-flash", "mpy-false", "no-trial-boots", "watchdog-too-short",
        "not-a-bool", "negative"])
def test_profile_mistakes_are_refused_naming_the_key_and_line(
        text: str, line: int, words: list[str]) -> None:
    message = error_of(text)
    assert message.startswith(f"/fleets/fleet.yaml:{line}:"), message
    for word in words:
        assert word in message, message


def test_romfs_through_mpremote_is_fine_for_a_virtual_board() -> None:
    text = GOOD.replace("  esp32:\n", "  unix:\n    chip: unix\n  esp32:\n", 1) + (
        "  v:\n    board: unix\n    wifi: lab\n    channel: stable\n    client: romfs\n")
    profile = parse(text).profile("v")  # type: ignore[attr-defined]
    assert (profile.method, profile.client, profile.romfs_offset) == ("mpremote", "romfs", None)


def test_profile_board_settings_are_read_and_checked_together() -> None:
    text = GOOD + ("    trial_boots: 2\n    auto_confirm: false\n    confirm_after_s: 30\n"
                   "    timeout_s: 10\n    trial_watchdog_s: 40\n")
    profile = parse(text).profile("p")  # type: ignore[attr-defined]
    assert dict(profile.behaviour) == {"trial_boots": 2, "auto_confirm": False,
                                       "confirm_after_s": 30, "timeout_s": 10,
                                       "trial_watchdog_s": 40}
    assert parse(GOOD).profile("p").behaviour == ()  # type: ignore[attr-defined]
