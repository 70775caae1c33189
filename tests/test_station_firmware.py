"""The firmware floor at the station and in the manifest default (docs/board.md, Firmware floor).

A board running MicroPython older than the floor is refused before anything is written, with
the port, the version found and the floor in the message. Boards: the virtual board (real
MicroPython 1.25 over mpremote, above the floor: accepted) and tests/fake_mp_serial.py, the
one FAKE here, at the serial port: an RP2 answering its raw REPL as a MicroPython 1.22.2 would.
Firmware images the station flashes are read for their version banner first
(tests/fake_esp_serial.py is the ESP32 ROM they are written to).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import fake_esp_serial
import fake_mp_serial
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signing.keys import generate_private_key
from signing.manifest import MICROPYTHON_FLOOR, micropython_version
from signing.root import new_root, sign_root
from tools.cli import main as ota
from tools.fleet import parse_fleet
from tools.local_server import LocalServer
from tools.station.firmware import (
    FLOOR,
    ROMFS_FLOOR,
    FirmwareError,
    MicroPythonVersion,
    check_board_version,
    check_firmware_image,
    version_from_implementation,
    version_in_image,
)
from tools.station.log import StationLog
from tools.station.secrets import Secret
from tools.station.station import Station, StationJob
from tools.station.targets import Target

FLEET = """\
version: 1
server: {{url: "{url}", publisher_token_env: T}}
channels: {{stable: {{}}}}
rollout: {{stages: [100]}}
wifi: {{factory: {{ssid: factory, password_env: W}}}}
boards:
  esp32: {{chip: esp32, flash_size: 0x400000, firmware_offset: 0x1000, fs_offset: 0x200000,
          fs_size: 0x200000, prog_size: 32}}
  rp2-pico-w: {{chip: rp2, flash_size: 0x200000, fs_offset: 0x12C000, fs_size: 0x0D4000,
               prog_size: 256}}
  unix: {{chip: unix}}
provisioning:
  esp-image: {{board: esp32, method: image, wifi: factory, channel: stable}}
  esp-repl: {{board: esp32, method: mpremote, wifi: factory, channel: stable}}
  esp-lean: {{board: esp32, method: image, wifi: factory, channel: stable, client: romfs,
             romfs_offset: 0x1e0000}}
  pico: {{board: rp2-pico-w, method: mpremote, wifi: factory, channel: stable}}
  lab: {{board: unix, wifi: factory, channel: stable}}
"""


def banner(version: str, date: str = "2025-04-15") -> bytes:
    """What py/mpconfig.h's MICROPY_BANNER_NAME_AND_VERSION puts into every build."""
    return f"MicroPython v{version} on {date}".encode()


def firmware_image(version: str, size: int = 150_000) -> bytes:
    """Stand-in firmware bytes: random, with a build's banner somewhere in the middle."""
    mark = banner(version) + b"; Generic ESP32 module with ESP32\0"
    half = (size - len(mark)) // 2
    return os.urandom(half) + mark + os.urandom(size - half - len(mark))


# -- the version rules ------------------------------------------------------------------------


def test_the_floor_is_one_constant_and_1_23_0() -> None:
    assert MICROPYTHON_FLOOR == "1.23.0"
    assert MicroPythonVersion(1, 23, 0) == FLOOR


@pytest.mark.parametrize(("text", "found"), [
    (b"MicroPython v1.25.0 on 2025-04-15; Generic ESP32 module", MicroPythonVersion(1, 25, 0)),
    (b"MicroPython v1.22.2 on 2024-02-22", MicroPythonVersion(1, 22, 2)),
    (b"MicroPython v1.23.0-preview.379.gcfd5a8ea3 on 2024-05-31",
     MicroPythonVersion(1, 23, 0, released=False)),
    (b"MicroPython v1.25.0-dirty on 2025-05-01", MicroPythonVersion(1, 25, 0)),
    (b"MicroPython (with v2.0 preview) v1.24.1 on 2024-11-29", MicroPythonVersion(1, 24, 1)),
])
def test_a_firmware_images_version_is_read_from_its_banner(text: bytes,
                                                           found: MicroPythonVersion) -> None:
    assert version_in_image(os.urandom(300) + text + b"\0" + os.urandom(300)) == found


def test_a_preview_of_the_floor_is_below_it() -> None:
    # tls arrived during 1.23's preview builds: only the release is known to have it.
    assert MicroPythonVersion(1, 23, 0, released=False) < FLOOR <= MicroPythonVersion(1, 23, 0)


@pytest.mark.parametrize(("reported", "found"), [
    ((1, 22, 2), MicroPythonVersion(1, 22, 2)),
    ((1, 25, 0, ""), MicroPythonVersion(1, 25, 0)),
    ((1, 26, 0, "preview"), MicroPythonVersion(1, 26, 0, released=False)),
])
def test_sys_implementation_version_of_every_shape_is_understood(
        reported: tuple[object, ...], found: MicroPythonVersion) -> None:
    assert version_from_implementation(reported) == found


@pytest.mark.parametrize("reported", [None, "1.25.0", (1, 25), (1, "25", 0), (1, 25, 0, 0),
                                      (True, 25, 0), (1, 25, -1), (1, 25, 0, "", "x")])
def test_an_odd_sys_implementation_version_is_refused(reported: object) -> None:
    with pytest.raises(FirmwareError, match="not a MicroPython version"):
        version_from_implementation(reported)


_VERSIONS = st.builds(MicroPythonVersion, st.integers(0, 3), st.integers(0, 40),
                      st.integers(0, 9), st.booleans())


@settings(max_examples=60, deadline=None)
@given(version=_VERSIONS)
def test_images_and_boards_are_refused_exactly_below_the_floor(
        version: MicroPythonVersion) -> None:
    tag = f"{version.major}.{version.minor}.{version.micro}" + (
        "" if version.released else "-preview.12.gabcdef0")
    image = os.urandom(64) + banner(tag) + os.urandom(64)
    reported = (version.major, version.minor, version.micro,
                "" if version.released else "preview")
    if version < FLOOR:
        with pytest.raises(FirmwareError, match=f"{version}, older than the firmware floor"):
            check_firmware_image(image)
        with pytest.raises(FirmwareError, match=f"^COM7: the board runs MicroPython {version}"):
            check_board_version("COM7", version_from_implementation(reported))
    else:
        assert check_firmware_image(image) == str(version)
        assert check_board_version("COM7", version_from_implementation(reported)) \
            == str(version)


@settings(max_examples=30, deadline=None)
@given(version=_VERSIONS)
def test_the_romfs_layout_needs_1_25_and_the_files_layout_the_floor(
        version: MicroPythonVersion) -> None:
    reported = (version.major, version.minor, version.micro,
                "" if version.released else "preview")
    found = version_from_implementation(reported)
    for client, floor in (("files", FLOOR), ("romfs", ROMFS_FLOOR)):
        if version < floor:
            with pytest.raises(FirmwareError, match=f"older than .* {floor}; nothing"):
                check_board_version("/dev/ttyACM0", found, client)
        else:
            assert check_board_version("/dev/ttyACM0", found, client) == str(version)


def test_an_image_without_a_banner_is_refused_not_guessed() -> None:
    with pytest.raises(FirmwareError, match="no MicroPython banner"):
        check_firmware_image(os.urandom(100_000).replace(b"MicroPython", b"xx"))


def test_ota_build_defaults_min_micropython_to_the_floor(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "app_main.py").write_text("print('hi')\n")
    out = tmp_path / "out"
    assert ota(["build", str(app), "--version", "1.0.0", "--board", "esp32",
                "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["min_micropython"] == MICROPYTHON_FLOOR
    assert micropython_version(manifest["min_micropython"]) == (1, 23, 0)


# -- the station --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    base = tmp_path_factory.mktemp("server")
    root_key = generate_private_key()
    root = new_root(version=1, expires=int(time.time()) + 86400 * 30, root_keys=[root_key],
                    release_keys=[root_key])
    (base / "root.json").write_bytes(sign_root(root, [root_key]))
    with LocalServer(base / "data", base / "root.json") as running:
        yield running


@pytest.fixture(autouse=True)
def _fake_serial_handlers() -> None:
    fake_esp_serial.register()
    fake_mp_serial.register()


def job(server: LocalServer, tmp_path: Path, profile: str, **overrides: object) -> StationJob:
    fleet = parse_fleet(FLEET.format(url=server.url), tmp_path / "fleet.yaml")
    settings: dict[str, object] = dict(
        station="line-3", operator="cy", profile=fleet.profile(profile), server_url=server.url,
        publisher_token=Secret(server.token, "token"), wifi_password=Secret("w-" * 6, "wifi"),
        trust_json=server.root_json.read_bytes(),
        worker_setup=("fake_esp_serial:register", "fake_mp_serial:register"))
    settings.update(overrides)
    return StationJob(**settings)  # type: ignore[arg-type]


def test_a_board_running_micropython_below_the_floor_is_refused_before_any_write(
        server: LocalServer, tmp_path: Path) -> None:
    sent = tmp_path / "sent.log"
    port = fake_mp_serial.url_for("1.22.2", "rp2", "e66038b713543a2c", log=sent)
    records = Station(job(server, tmp_path, "pico"), StationLog(tmp_path / "log.jsonl"),
                      timeout_s=60).run([Target("serial", port)])
    record = records[0]
    assert (record.outcome, record.failed_step) == ("failed", "firmware"), record.error
    assert record.error == (
        f"{port}: the board runs MicroPython 1.22.2, older than the firmware floor 1.23.0; "
        "nothing was written: flash MicroPython 1.23.0 or later, then re-run "
        "(docs/board.md, Firmware floor)")
    assert list(record.steps) == ["identify", "firmware"]
    assert record.micropython is None and not record.registered
    programs = sent.read_text().splitlines()
    assert programs[-1] == "print(repr(__import__('sys').implementation.version))"
    assert not [p for p in programs if "open(" in p or "mkdir" in p]
    assert "rp2-pico-w-e66038b713543a2c" not in {
        d["device_id"] for d in server.client().list_devices()}


def test_a_board_at_the_floor_passes_the_check_and_goes_on(server: LocalServer,
                                                           tmp_path: Path) -> None:
    """The same fake reporting 1.23.0 passes the firmware step (then fails at the first look
    at its files: the fake emulates no filesystem), so the refusal above is the version's."""
    port = fake_mp_serial.url_for("1.23.0", "rp2", "e66038b713543a2d")
    record = Station(job(server, tmp_path, "pico"), StationLog(tmp_path / "log.jsonl"),
                     timeout_s=60).run([Target("serial", port)])[0]
    assert record.micropython == "1.23.0"
    assert list(record.steps)[:2] == ["identify", "firmware"]
    assert record.failed_step == "inspect", record.error  # the first look at its files


def test_a_virtual_board_reports_its_real_micropython_and_is_provisioned(
        server: LocalServer, tmp_path: Path) -> None:
    flash = tmp_path / "vb"
    flash.mkdir()
    record = Station(job(server, tmp_path, "lab"), StationLog(tmp_path / "log.db"),
                     timeout_s=120).run([Target("virtual", str(flash))])[0]
    assert record.outcome == "provisioned", record.error
    assert record.micropython == "1.25.0"  # Debian's unix port, through mpremote
    assert StationLog(tmp_path / "log.db").records()[0].micropython == "1.25.0"


@pytest.mark.parametrize(("firmware", "why"), [
    (firmware_image("1.22.2"), "the firmware image is MicroPython 1.22.2, older than the "
                               "firmware floor 1.23.0"),
    (os.urandom(150_000).replace(b"MicroPython", b"xx"), "has no MicroPython banner"),
], ids=["too-old", "no-banner"])
@pytest.mark.parametrize("profile", ["esp-image", "esp-repl"])
def test_firmware_below_the_floor_is_refused_before_esptool_writes_a_byte(
        server: LocalServer, tmp_path: Path, firmware: bytes, why: str, profile: str) -> None:
    flash = fake_esp_serial.new_flash_file(tmp_path / "flash.bin")
    url = fake_esp_serial.url_for(flash, "24:0a:c4:aa:10:01")
    record = Station(job(server, tmp_path, profile, firmware=firmware),
                     StationLog(tmp_path / "log.jsonl"), timeout_s=60).run(
        [Target("serial", url)])[0]
    assert (record.outcome, record.failed_step) == ("failed", "firmware")
    assert why in str(record.error)
    assert set(flash.read_bytes()) == {0xFF}  # erased as it came
    assert not record.registered


def test_firmware_at_the_floor_is_flashed_and_recorded(server: LocalServer,
                                                       tmp_path: Path) -> None:
    flash = fake_esp_serial.new_flash_file(tmp_path / "flash.bin")
    firmware = firmware_image("1.23.0")
    record = Station(job(server, tmp_path, "esp-image", firmware=firmware),
                     StationLog(tmp_path / "log.jsonl"), timeout_s=120).run(
        [Target("serial", fake_esp_serial.url_for(flash, "24:0a:c4:aa:10:02"))])[0]
    assert record.outcome == "provisioned", record.error
    assert record.micropython == "1.23.0"
    assert flash.read_bytes()[0x1000:0x1000 + len(firmware)] == firmware


def test_a_romfs_board_needs_a_firmware_with_vfs_rom(server: LocalServer,
                                                     tmp_path: Path) -> None:
    flash = fake_esp_serial.new_flash_file(tmp_path / "flash.bin")
    record = Station(job(server, tmp_path, "esp-lean", firmware=firmware_image("1.24.1")),
                     StationLog(tmp_path / "log.jsonl"), timeout_s=60).run(
        [Target("serial", fake_esp_serial.url_for(flash, "24:0a:c4:aa:10:03"))])[0]
    assert (record.outcome, record.failed_step) == ("failed", "firmware")
    assert "MicroPython 1.24.1, older than the romfs client layout's floor (vfs.VfsRom) " \
           "1.25.0" in str(record.error)
    assert set(flash.read_bytes()) == {0xFF}
