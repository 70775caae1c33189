"""tools/board_files.py: what goes on a board's flash, and that the board can use it."""

from __future__ import annotations

import json
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tools.board_files import (
    BoardConfig,
    BoardFilesError,
    InitialApp,
    board_files,
    client_files,
    client_romfs,
    code_size,
    install_board,
    read_state,
    slot_files,
)
from tools.virtual_board import VirtualBoard

APP = InitialApp("demo", "1.0.0", 1, "app_main", {"app_main.py": b"print('APP 1.0.0')\n"})
CONFIG = BoardConfig(device_id="b-1", server="http://127.0.0.1:9", wifi_ssid="lab",
                     wifi_password="s3cret-pass", poll_at_boot=False)


def test_board_files_hold_bootloader_client_config_key_trust_state_and_app():
    key = ec.generate_private_key(ec.SECP256R1())
    files = board_files(CONFIG, key, b'{"payloadType": "x"}', app=APP)
    assert {"/boot.py", "/main.py", "/ota_id/config.json", "/ota_id/device.key",
            "/ota_id/trust.json", "/ota/state0", "/ota_rec/state1", "/ota/slot_a.lst",
            "/app/a/app_main.py"} <= set(files)
    assert files["/ota_id/device.key"] == key.private_numbers().private_value.to_bytes(32, "big")
    config = json.loads(files["/ota_id/config.json"])
    assert config["wifi"] == {"ssid": "lab", "password": "s3cret-pass"}
    assert config["trial_boots"] == 3 and config["poll"]["at_boot"] is False
    assert "s3cret-pass" not in repr(CONFIG)


def test_mpy_client_compiles_every_module_and_boots(tmp_path, micropython):
    compiled = client_files(mpy=True)
    sources = client_files(mpy=False)
    assert {p[:-4] for p in compiled if p.endswith(".mpy")} == {
        p[:-3] for p in sources if p.startswith("/ota/")}
    assert compiled["/boot.py"] == sources["/boot.py"]  # boot.py and main.py stay source
    sizes = code_size(True)
    assert 0 < sizes["ota"] < code_size(False)["ota"]
    flash = tmp_path / "flash"
    install_board(flash, CONFIG, b"\x05" * 32, b"{}", mpy=True, app=APP)
    result = VirtualBoard(flash, micropython=micropython).run(max_boots=1, timeout=30)
    assert result.ended == "exit" and "APP 1.0.0" in result.output, result.output


def test_each_client_mpy_names_the_path_the_board_imports_it_from():
    # MicroPython interns the import path as a qstr; a source name equal to it costs no second
    # qstr per module (~18 in an update: docs/board.md, Memory budget)
    compiled = client_files(mpy=True)
    rom = client_romfs()
    modules = [p[len("/ota/"):-len(".mpy")] for p in compiled if p.endswith(".mpy")]
    assert "client" in modules and "update" in modules
    for name in modules:
        code = compiled[f"/ota/{name}.mpy"]
        assert f"ota/{name}.mpy".encode() in code and f"{name}.py".encode() not in code
        assert f"/rom/ota/{name}.mpy".encode() in rom and f"{name}.py".encode() not in rom


def test_update_repeats_the_entry_fields_of_slots():
    # update.py repeats slots.py's private consts for the fields of an entry tuple
    import re

    from tools.board_files import BOOTLOADER_DIR

    def fields(module: str) -> dict[str, str]:
        text = (BOOTLOADER_DIR / "ota" / module).read_text()
        return dict(re.findall(r"^(_[A-Z]+) = const\((\d+)\)$", text, re.M))

    wanted = {"_PATH", "_SHA", "_SIZE", "_ENCODING", "_BLOB", "_TRANSFER"}
    slots, update = fields("slots.py"), fields("update.py")
    assert wanted <= set(slots)
    assert {k: slots[k] for k in wanted} == {k: update[k] for k in wanted}


def test_installed_board_has_a_private_key_file_and_a_confirmed_slot_a(tmp_path):
    flash = tmp_path / "flash"
    install_board(flash, CONFIG, b"\x05" * 32, b"{}", app=APP)
    assert stat.S_IMODE((flash / "ota_id" / "device.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((flash / "ota_id" / "config.json").stat().st_mode) == 0o600
    state = read_state(flash)
    assert state is not None
    assert (state["active"], state["ok"], state["slots"]["a"]["version"]) == ("a", 1, "1.0.0")
    assert list(slot_files(flash, "a")) == ["app_main.py"]


@pytest.mark.parametrize(("change", "message"), [
    ({"device_key": b"short"}, "32-byte"),
    ({"trust_json": b"not json"}, "trust root is not JSON"),
    ({"config": BoardConfig(device_id="b", server="ftp://x")}, "server URL"),
    ({"config": BoardConfig(device_id="b", server="http://x", trial_boots=0)}, "trial_boots"),
    ({"config": BoardConfig(device_id="b", server="http://x", trial_watchdog_s=29)},
     "trial_watchdog_s"),
    ({"app": InitialApp("d", "1.0.0", 1, "m", {"../boot.py": b""})}, "escapes the slot"),
    ({"app": InitialApp("d", "1.0.0", 1, "m", {"\U0001f600" * 33: b""})},
     "132 bytes of UTF-8, must be 1..128"),
    ({"app": InitialApp("d", "1.0.0", 1, "m", {"a\nb": b""})}, "control character"),
    ({"app": InitialApp("d", "1.0.0", 1, "m", {"A.py": b"", "a.py": b""})},
     "differ only in case"),
])
def test_bad_input_is_refused_with_a_clear_error_and_writes_nothing(tmp_path, change, message):
    args = {"config": CONFIG, "device_key": b"\x05" * 32, "trust_json": b"{}", "app": APP}
    args.update(change)
    flash = tmp_path / "flash"
    with pytest.raises(BoardFilesError, match=message):
        install_board(flash, **args)
    assert not flash.exists()


def test_a_key_on_another_curve_is_refused():
    with pytest.raises(BoardFilesError, match="P-256"):
        board_files(CONFIG, ec.generate_private_key(ec.SECP384R1()), b"{}")


def test_trial_watchdog_is_off_by_default_and_must_outlast_a_request_and_a_wifi_connect():
    def written(**fields: int) -> dict[str, object]:
        return json.loads(BoardConfig(device_id="b", server="http://x", **fields).to_json())

    assert "trial_watchdog_s" not in written()  # off: absent, as on a board that never had it
    assert "trial_watchdog_s" not in written(trial_watchdog_s=0)
    assert written(trial_watchdog_s=30)["trial_watchdog_s"] == 30  # defaults: 20 s, 15 s
    assert written(timeout_s=5, wifi_timeout_s=8, trial_watchdog_s=18)["trial_watchdog_s"] == 18
    for fields, least in [({"trial_watchdog_s": 29}, 30),
                          ({"timeout_s": 40, "trial_watchdog_s": 45}, 50),
                          ({"wifi_timeout_s": 30, "trial_watchdog_s": 39}, 40),
                          ({"trial_watchdog_s": -1}, 30)]:
        with pytest.raises(BoardFilesError,
                           match=f"trial_watchdog_s must be 0 \\(off\\) or at least {least} s"):
            written(**fields)
