"""The esptool path: esptool's real library code, with a fake only at the serial port.

tests/fake_esp_serial.py is that fake (an ESP32 ROM bootloader over SLIP, backed by a flash
file); everything else here is the station's code and esptool's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import fake_esp_serial
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from littlefs import LittleFS
from test_board_romfs import list_romfs
from test_station_firmware import firmware_image
from test_station_image import mount_in_micropython

from signing.keys import generate_private_key, keyid_of_point, public_point
from signing.root import new_root, sign_root
from tools.board_files import client_romfs
from tools.fleet import Board, parse_fleet
from tools.local_server import LocalServer
from tools.station.flashing import FlashError, connect_esp_board
from tools.station.identify import IdentifyError, device_id_for, identify_esp
from tools.station.image import BLOCK_SIZE, PartitionGeometry, build_littlefs_image
from tools.station.log import StationLog
from tools.station.secrets import Secret
from tools.station.station import Station, StationJob
from tools.station.targets import Target

ESP32 = Board(name="esp32", chip="esp32", flash_size=0x400000, firmware_offset=0x1000,
              fs_offset=0x200000, fs_size=0x200000, prog_size=32)


@pytest.fixture(autouse=True)
def _fake_serial_handler() -> None:
    fake_esp_serial.register()


def flash_file(tmp_path: Path, mib: int = 4) -> Path:
    return fake_esp_serial.new_flash_file(tmp_path / "flash.bin", mib)


def test_identify_reads_chip_mac_from_efuses_and_flash_size(tmp_path: Path) -> None:
    url = fake_esp_serial.url_for(flash_file(tmp_path), "24:0a:c4:12:34:56", flash_mib=8)
    with connect_esp_board(url) as esp:
        found = esp.identify()
        who = identify_esp(esp, ESP32)
    assert found.chip == "ESP32"
    assert found.mac == "24:0a:c4:12:34:56"
    assert found.flash_size == "8MB"
    assert device_id_for(ESP32, who.hardware_id) == "esp32-240ac4123456"


def test_identify_refuses_a_chip_the_profile_does_not_expect(tmp_path: Path) -> None:
    s3 = Board(name="esp32s3", chip="esp32s3")
    with connect_esp_board(fake_esp_serial.url_for(flash_file(tmp_path), "24:0a:c4:00:00:01")) \
            as esp, pytest.raises(IdentifyError, match="esp32s3"):
        identify_esp(esp, s3)


def test_image_written_at_the_partition_offset_and_verified(tmp_path: Path) -> None:
    path = flash_file(tmp_path)
    files = {"/boot.py": b"import ota\n", "/ota_id/device.key": os.urandom(32)}
    image = build_littlefs_image(files, PartitionGeometry(0x200000, 0x200000))
    progress: list[tuple[int, int]] = []
    with connect_esp_board(fake_esp_serial.url_for(path, "24:0a:c4:00:00:02")) as esp:
        esp.write(0x200000, image, lambda done, total: progress.append((done, total)))
    flash = path.read_bytes()
    assert hashlib.sha256(flash[0x200000:]).digest() == hashlib.sha256(image).digest()
    assert flash[:0x200000] == b"\xff" * 0x200000  # nothing written outside the partition
    assert progress and progress[-1][0] == progress[-1][1]


def test_a_bad_flash_cell_fails_the_verify(tmp_path: Path) -> None:
    url = fake_esp_serial.url_for(flash_file(tmp_path), "24:0a:c4:00:00:03", flip_at=0x200100)
    with connect_esp_board(url) as esp, pytest.raises(FlashError, match="0x200000"):
        esp.write(0x200000, os.urandom(8192))


def test_power_cut_during_the_write_is_a_flash_error(tmp_path: Path) -> None:
    url = fake_esp_serial.url_for(flash_file(tmp_path), "24:0a:c4:00:00:04", cut_after=20_000)
    with connect_esp_board(url) as esp, pytest.raises(FlashError):
        esp.write(0x200000, os.urandom(64 * 1024))


def test_no_bootloader_on_the_port_is_a_flash_error(tmp_path: Path) -> None:
    with pytest.raises(FlashError, match="no Espressif bootloader"), \
            connect_esp_board(f"fakeesp://{tmp_path}/missing.bin", attempts=1):
        pass


# -- the whole station on the esptool path ------------------------------------------------------

FLEET = """\
version: 1
server: {{url: "{url}", publisher_token_env: T}}
channels: {{stable: {{}}}}
rollout: {{stages: [100]}}
wifi: {{factory: {{ssid: factory, password_env: W}}}}
boards:
  esp32: {{chip: esp32, flash_size: 0x400000, firmware_offset: 0x1000, fs_offset: 0x200000,
          fs_size: 0x200000, prog_size: 32}}
provisioning:
  line: {{board: esp32, method: image, wifi: factory, channel: stable, tags: [batch-7]}}
  lean: {{board: esp32, method: image, wifi: factory, channel: stable, client: romfs,
         romfs_offset: 0x1e0000}}
"""
WIFI_PASSWORD = "esp-wifi-" + "Zr8yK2"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    base = tmp_path_factory.mktemp("server")
    root_key = generate_private_key()
    root = new_root(version=1, expires=int(time.time()) + 86400 * 30, root_keys=[root_key],
                    release_keys=[root_key])
    (base / "root.json").write_bytes(sign_root(root, [root_key]))
    with LocalServer(base / "data", base / "root.json") as running:
        yield running


def esp_job(server: LocalServer, tmp_path: Path, profile: str = "line",
            **overrides: object) -> StationJob:
    fleet = parse_fleet(FLEET.format(url=server.url), tmp_path / "fleet.yaml")
    settings: dict[str, object] = dict(
        station="jig-2", operator="bo", profile=fleet.profile(profile), server_url=server.url,
        publisher_token=Secret(server.token, "token"),
        wifi_password=Secret(WIFI_PASSWORD, "wifi"), trust_json=server.root_json.read_bytes(),
        worker_setup=("fake_esp_serial:register",))
    settings.update(overrides)
    return StationJob(**settings)  # type: ignore[arg-type]


def test_station_images_esp32_boards_over_esptool_and_registers_only_verified_ones(
        tmp_path: Path, server: LocalServer, micropython: str) -> None:
    flashes = [fake_esp_serial.new_flash_file(tmp_path / f"flash{i}.bin") for i in range(3)]
    urls = [fake_esp_serial.url_for(flashes[0], "24:0a:c4:aa:00:01"),
            # This board loses power half-way through its image.
            fake_esp_serial.url_for(flashes[1], "24:0a:c4:aa:00:02", cut_after=300_000),
            fake_esp_serial.url_for(flashes[2], "24:0a:c4:aa:00:03")]
    log = StationLog(tmp_path / "station.db")
    records = Station(esp_job(server, tmp_path), log, timeout_s=120).run(
        [Target("serial", u) for u in urls])

    assert [r.outcome for r in records] == ["provisioned", "failed", "provisioned"], \
        [r.error for r in records]
    assert records[1].failed_step == "write" and not records[1].registered
    registered = {d["device_id"]: d for d in server.client().list_devices()}
    assert "esp32-240ac4aa0002" not in registered
    geometry = PartitionGeometry(0x200000, 0x200000, 32)
    for record, flash in ((records[0], flashes[0]), (records[2], flashes[2])):
        assert record.chip and record.chip.startswith("ESP32")
        assert record.flash_size == "4MB" and record.method == "image"
        image = tmp_path / f"{record.device_id}.img"
        image.write_bytes(flash.read_bytes()[0x200000:])
        on_board = mount_in_micropython(micropython, image, geometry)
        assert {"boot.py", "main.py", "ota_id/config.json", "ota_id/device.key",
                "ota_id/trust.json"} <= set(on_board)
        assert on_board["ota_id/trust.json"] == hashlib.sha256(
            server.root_json.read_bytes()).hexdigest()
        # The key in the image is the private half of what the server registered.
        files = read_image_files(image, geometry)
        scalar = int.from_bytes(files["ota_id/device.key"], "big")
        point = public_point(ec.derive_private_key(scalar, ec.SECP256R1()))
        device = registered[str(record.device_id)]
        assert base64.b64decode(device["public_key"]) == point
        assert keyid_of_point(point) == record.key_fingerprint
        assert json.loads(files["ota_id/config.json"])["device_id"] == record.device_id
        assert device["tags"] == ["batch-7"]
    logged = {r.port: r.outcome for r in log.records()}  # in the order boards finished
    assert logged == {r.port: r.outcome for r in records}


def test_factory_image_merges_firmware_and_filesystem_and_is_written_whole(
        tmp_path: Path, server: LocalServer) -> None:
    flash = fake_esp_serial.new_flash_file(tmp_path / "flash.bin")
    firmware = firmware_image("1.25.0", 200_000)
    out = tmp_path / "factory"
    out.mkdir()
    job = esp_job(server, tmp_path, firmware=firmware, factory_image_dir=out)
    (record,) = Station(job, StationLog(tmp_path / "s.jsonl"), timeout_s=120).run(
        [Target("serial", fake_esp_serial.url_for(flash, "24:0a:c4:bb:00:01"))])
    assert record.outcome == "provisioned", record.error
    assert record.firmware_sha256 == hashlib.sha256(firmware).hexdigest()
    (saved,) = out.iterdir()
    assert saved.name == f"{record.device_id}@0x1000.bin"
    assert saved.stat().st_mode & 0o777 == 0o600  # it holds the board's private key
    written = flash.read_bytes()
    assert written[0x1000:0x1000 + len(firmware)] == firmware
    assert written[0x1000:] == saved.read_bytes()


def read_image_files(image: Path, geometry: PartitionGeometry) -> dict[str, bytes]:
    """The files of a littlefs image, read on the host (the MicroPython mount checks hashes)."""
    fs = LittleFS(block_size=BLOCK_SIZE, block_count=geometry.block_count, mount=False,
                  read_size=geometry.prog_size, prog_size=geometry.prog_size, lookahead_size=32)
    fs.context.buffer[:] = image.read_bytes()
    fs.mount()
    out = {}
    for root, _dirs, names in fs.walk("/"):
        for name in names:
            path = f"{root.rstrip('/')}/{name}"
            with fs.open(path, "rb") as handle:
                out[path.lstrip("/")] = handle.read()
    return out


def test_secrets_stay_out_of_the_sqlite_log_and_the_output(
        tmp_path: Path, server: LocalServer, capfd: pytest.CaptureFixture[str]) -> None:
    flash = fake_esp_serial.new_flash_file(tmp_path / "flash.bin")
    log_path = tmp_path / "station.db"
    (record,) = Station(esp_job(server, tmp_path), StationLog(log_path), timeout_s=120).run(
        [Target("serial", fake_esp_serial.url_for(flash, "24:0a:c4:cc:00:01"))])
    assert record.outcome == "provisioned", record.error
    out, err = capfd.readouterr()
    files = read_image_files_from_flash(flash)
    key = files["ota_id/device.key"]
    assert WIFI_PASSWORD.encode() in files["ota_id/config.json"]  # it did reach the board
    raw_log = log_path.read_bytes()
    assert str(record.device_id).encode() in raw_log
    for secret in (WIFI_PASSWORD, server.token, key.hex(), base64.b64encode(key).decode()):
        assert secret not in out and secret not in err
        assert secret.encode() not in raw_log
    assert key not in raw_log


def test_a_worker_that_dies_is_a_failed_board_not_a_hung_station(
        tmp_path: Path, server: LocalServer) -> None:
    flash = fake_esp_serial.new_flash_file(tmp_path / "flash.bin")
    job = esp_job(server, tmp_path, worker_setup=("os:abort",))
    (record,) = Station(job, StationLog(tmp_path / "s.jsonl"), timeout_s=60).run(
        [Target("serial", fake_esp_serial.url_for(flash, "24:0a:c4:dd:00:01"))])
    assert record.outcome == "failed" and record.failed_step == "worker"
    assert "exited" in (record.error or "")


def read_image_files_from_flash(flash: Path) -> dict[str, bytes]:
    image = flash.with_suffix(".vfs")
    image.write_bytes(flash.read_bytes()[0x200000:])
    return read_image_files(image, PartitionGeometry(0x200000, 0x200000, 32))


def test_firmware_is_flashed_first_then_the_image_each_at_its_offset(
        tmp_path: Path, server: LocalServer) -> None:
    flash = fake_esp_serial.new_flash_file(tmp_path / "flash.bin")
    firmware = firmware_image("1.25.0", 150_000)
    job = esp_job(server, tmp_path, firmware=firmware)
    (record,) = Station(job, StationLog(tmp_path / "s.jsonl"), timeout_s=120).run(
        [Target("serial", fake_esp_serial.url_for(flash, "24:0a:c4:ee:00:01"))])
    assert record.outcome == "provisioned", record.error
    assert list(record.steps)[:2] == ["identify", "firmware"]
    written = flash.read_bytes()
    assert written[0x1000:0x1000 + len(firmware)] == firmware
    assert set(written[0x1000 + len(firmware):0x200000]) == {0xFF}
    assert "ota_id/device.key" in read_image_files_from_flash(flash)


def test_cli_exits_non_zero_when_a_board_fails_and_the_others_still_finish(
        tmp_path: Path, server: LocalServer, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    from tools.cli import main as ota

    monkeypatch.setenv("T", server.token)
    monkeypatch.setenv("W", WIFI_PASSWORD)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET.format(url=server.url))
    good = fake_esp_serial.new_flash_file(tmp_path / "good.bin")
    code = ota(["provision", "--fleet", str(fleet), "--profile", "line",
                "--root", str(server.root_json), "--log", str(tmp_path / "log.jsonl"),
                "--worker-setup", "fake_esp_serial:register",
                "--port", fake_esp_serial.url_for(good, "24:0a:c4:ff:00:01"),
                "--port", f"fakeesp://{tmp_path}/no-such-board.bin"])
    out, err = capfd.readouterr()
    assert code == 1
    assert "1 of 2 board(s) failed" in err
    assert "1 provisioned, 1 failed" in out
    records = StationLog(tmp_path / "log.jsonl").records()
    assert sorted(r.outcome for r in records) == ["failed", "provisioned"]
    for secret in (WIFI_PASSWORD, server.token):
        assert secret not in out + err


ROMFS_OFFSET = 0x1E0000


def test_romfs_client_is_flashed_at_romfs_offset_beside_the_filesystem_image(
        tmp_path: Path, server: LocalServer, micropython: str) -> None:
    flash = fake_esp_serial.new_flash_file(tmp_path / "flash.bin")
    log = StationLog(tmp_path / "station.jsonl")
    (record,) = Station(esp_job(server, tmp_path, "lean"), log, timeout_s=120).run(
        [Target("serial", fake_esp_serial.url_for(flash, "24:0a:c4:ab:00:01"))])
    assert record.outcome == "provisioned", record.error
    assert (record.client, record.method) == ("romfs", "image")
    assert [r.client for r in log.records()] == ["romfs"]

    written = flash.read_bytes()
    rom = client_romfs()
    assert written[ROMFS_OFFSET:ROMFS_OFFSET + len(rom)] == rom
    assert set(written[ROMFS_OFFSET + len(rom):0x200000]) == {0xFF}  # the rest: erased
    assert set(written[:ROMFS_OFFSET]) == {0xFF}  # no firmware in this job: nothing below
    # What the board will mount from its ROM partition: every client module.
    region = tmp_path / "romfs.bin"
    region.write_bytes(written[ROMFS_OFFSET:0x200000])
    assert "ota/client.mpy" in list_romfs(micropython, region)
    # The filesystem holds the data files and no client code.
    files = read_image_files_from_flash(flash)
    assert {"boot.py", "main.py", "ota_id/config.json", "ota_id/device.key"} <= set(files)
    assert not [p for p in files if p.startswith("ota/") and p.endswith((".py", ".mpy"))]


def test_factory_image_of_a_romfs_board_merges_firmware_romfs_and_filesystem(
        tmp_path: Path, server: LocalServer) -> None:
    flash = fake_esp_serial.new_flash_file(tmp_path / "flash.bin")
    firmware = firmware_image("1.25.0", 180_000)
    out = tmp_path / "factory"
    out.mkdir()
    job = esp_job(server, tmp_path, "lean", firmware=firmware, factory_image_dir=out)
    (record,) = Station(job, StationLog(tmp_path / "s.jsonl"), timeout_s=120).run(
        [Target("serial", fake_esp_serial.url_for(flash, "24:0a:c4:ab:00:02"))])
    assert record.outcome == "provisioned", record.error
    (saved,) = out.iterdir()
    merged = saved.read_bytes()
    rom = client_romfs()
    start = ROMFS_OFFSET - 0x1000  # the merged image starts at the firmware offset
    assert merged[:len(firmware)] == firmware
    assert merged[start:start + len(rom)] == rom
    assert flash.read_bytes()[0x1000:] == merged
    assert "ota_id/device.key" in read_image_files_from_flash(flash)


def test_firmware_that_would_run_into_the_romfs_partition_is_refused_before_any_write(
        tmp_path: Path, server: LocalServer) -> None:
    flash = fake_esp_serial.new_flash_file(tmp_path / "flash.bin")
    firmware = firmware_image("1.25.0", ROMFS_OFFSET)  # from 0x1000: into the ROMFS
    job = esp_job(server, tmp_path, "lean", firmware=firmware)
    (record,) = Station(job, StationLog(tmp_path / "s.jsonl"), timeout_s=120).run(
        [Target("serial", fake_esp_serial.url_for(flash, "24:0a:c4:ab:00:03"))])
    assert record.outcome == "failed" and record.failed_step == "firmware", record
    assert "overlaps the ROMFS partition at 0x1e0000" in (record.error or "")
    assert not record.registered
    assert set(flash.read_bytes()) == {0xFF}  # nothing was written
