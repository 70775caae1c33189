"""The station log (JSONL and SQLite), secrets from env/file, and target selection."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import sqlite3
from pathlib import Path

import pytest

from tools.fleet import SecretRef
from tools.station.log import BoardRecord, StationLog
from tools.station.secrets import Redactor, SecretError, resolve_secret
from tools.station.targets import TargetError, collect_targets


def sample(port: str, outcome: str = "provisioned") -> BoardRecord:
    return BoardRecord(
        station="line-1", operator="ana", port=port, method="image", profile="p",
        outcome=outcome, started=1.5, finished=2.5, chip="ESP32-D0WD-V3", mac="24:0a:c4:00:00:01",
        flash_size="4MB", firmware_sha256="ab" * 32, device_id="esp32-240ac4000001",
        key_fingerprint="cd" * 32, registered=outcome == "provisioned",
        revoked=["esp32-240ac4000001-r1"],
        failed_step=None if outcome == "provisioned" else "write",
        error=None if outcome == "provisioned" else "power cut",
        steps={"identify": [1.5, 1.6], "write": [1.7, 2.4]})


@pytest.mark.parametrize("name", ["station.jsonl", "station.db"])
def test_log_keeps_every_field_of_every_board_in_order(tmp_path: Path, name: str) -> None:
    log = StationLog(tmp_path / name)
    records = [sample("/dev/ttyUSB0"), sample("/dev/ttyUSB1", "failed")]
    for record in records:
        log.append(record)
    assert StationLog(tmp_path / name).records() == records


def test_jsonl_log_is_one_object_per_line(tmp_path: Path) -> None:
    log = StationLog(tmp_path / "s.jsonl")
    log.append(sample("a"))
    log.append(sample("b"))
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 2


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WIFI_X", "s3cret-value")
    secret = resolve_secret(SecretRef(env="WIFI_X"), "Wi-Fi")
    assert secret.reveal() == "s3cret-value"
    assert "s3cret" not in repr(secret) and "s3cret" not in str(secret)
    assert pickle.loads(pickle.dumps(secret)).reveal() == "s3cret-value"  # to a worker


def test_missing_environment_variable_names_it() -> None:
    with pytest.raises(SecretError, match="NOT_SET_ANYWHERE_42"):
        resolve_secret(SecretRef(env="NOT_SET_ANYWHERE_42"), "token", environ={})


def test_secret_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "wifi.txt"
    path.write_text("pw-from-file\n")
    os.chmod(path, 0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        resolve_secret(SecretRef(file=path), "Wi-Fi")
    os.chmod(path, 0o600)
    assert resolve_secret(SecretRef(file=path), "Wi-Fi").reveal() == "pw-from-file"


def test_empty_or_missing_secret_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="cannot read"):
        resolve_secret(SecretRef(file=tmp_path / "none"), "token")
    empty = tmp_path / "empty"
    empty.write_text("")
    os.chmod(empty, 0o600)
    with pytest.raises(SecretError, match="empty"):
        resolve_secret(SecretRef(file=empty), "token")


def test_redactor_scrubs_every_secret() -> None:
    redact = Redactor(["hunter22", "tok-123456"])
    redact.add("deadbeefcafe")
    assert redact("pw hunter22 tok tok-123456 key deadbeefcafe") == "pw *** tok *** key ***"


def test_targets_refuse_duplicates_missing_dirs_and_nothing(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="given twice"):
        collect_targets(("/dev/ttyUSB0", "/dev/ttyUSB0"), False, ())
    (tmp_path / "a-file").write_text("")
    with pytest.raises(TargetError, match="not a directory"):
        collect_targets((), False, (str(tmp_path / "a-file"),))
    # a directory that does not exist yet is a board `ota provision` creates
    assert collect_targets((), False, (str(tmp_path / "new"),))[0].kind == "virtual"
    with pytest.raises(TargetError, match="no boards"):
        collect_targets((), False, ())
    (tmp_path / "b1").mkdir()
    targets = collect_targets(("/dev/ttyUSB0",), False, (str(tmp_path / "b1"),))
    assert [t.label for t in targets] == ["/dev/ttyUSB0", "virtual:b1"]


def test_sqlite_log_of_an_older_station_gains_the_client_column_and_keeps_its_rows(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = dataclasses.asdict(sample("/dev/ttyUSB0"))
    del old["client"]  # what a station before the romfs layout logged
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE boards (id INTEGER PRIMARY KEY, {', '.join(old)})")
        db.execute(f"INSERT INTO boards ({', '.join(old)}) VALUES ({', '.join('?' * len(old))})",
                   [json.dumps(v) if k in ("revoked", "steps") else v for k, v in old.items()])
    db.close()

    log = StationLog(path)
    newer = dataclasses.replace(sample("/dev/ttyUSB1"), client="romfs")
    log.append(newer)
    assert log.records() == [sample("/dev/ttyUSB0"), newer]
    assert log.records()[0].client == "files"
