"""Server settings: fleet.yaml, then environment, then flags; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ota_server.settings import SettingsError, load_settings
from tools.cmd_server import _fleet_values

ROOT = Path(__file__).resolve().parent.parent


def test_fleet_values_come_from_the_example_fleet() -> None:
    values = _fleet_values(ROOT / "fleet.yaml")
    assert values["root_path"] == ROOT / "keys" / "root.json"
    policy = values["default_policy"]
    assert policy["stages"][0] == {"tag": "canary"}
    assert policy["stages"][-1] == {"percent": 100}
    # min_results left out: the server's rule for every fleet size (docs/operations.md)
    assert (policy["failure_threshold"], policy["min_results"]) == (0.2, None)
    assert values["channels"] == ("stable", "beta")


def test_later_sources_win(tmp_path: Path) -> None:
    fleet = {"root_path": tmp_path / "fleet-root.json", "port": 9000}
    env = {"MPOTA_DATA": str(tmp_path / "env-data"), "MPOTA_PORT": "9001"}
    settings = load_settings({"port": None, "host": None}, fleet_values=fleet, environ=env)
    assert (settings.data_dir, settings.port, settings.host) == \
        (tmp_path / "env-data", 9001, "127.0.0.1")
    assert settings.root_path == tmp_path / "fleet-root.json"
    flags = load_settings({"port": 9002, "data_dir": tmp_path / "flag"}, fleet_values=fleet,
                          environ=env)
    assert (flags.data_dir, flags.port) == (tmp_path / "flag", 9002)


@pytest.mark.parametrize(("flags", "env", "needle"), [
    ({}, {}, "data directory"),
    ({"data_dir": Path("/d")}, {"MPOTA_PORT": "eighty"}, "MPOTA_PORT"),
    ({"data_dir": Path("/d"), "port": 70000}, {}, "port"),
])
def test_bad_settings_name_what_is_wrong(flags: dict, env: dict, needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load_settings(flags, environ=env)


def test_the_blob_cache_bound_comes_from_the_flag_or_the_environment() -> None:
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
           "MPOTA_BLOBS": "s3://bucket?endpoint=http://127.0.0.1:9", "MPOTA_DATA": "/d"}
    assert load_settings({}, environ=env).blob_cache_bytes is None  # the store's 2 GiB
    given = {**env, "MPOTA_BLOB_CACHE_BYTES": str(64 << 20)}
    assert load_settings({}, environ=given).blob_cache_bytes == 64 << 20
    assert load_settings({"blob_cache_bytes": str(32 << 20)}, environ=given) \
        .blob_cache_bytes == 32 << 20


@pytest.mark.parametrize(("value", "needle"), [
    ("-1", "not a whole number"),
    ("1e9", "not a whole number"),
    ("lots", "not a whole number"),
    ("9" * 40, "not a whole number"),
    ("1000", "smaller than the largest blob"),
    ("0", "smaller than the largest blob"),
])
def test_a_bad_blob_cache_bound_is_refused_naming_the_setting(value: str, needle: str) -> None:
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
           "MPOTA_BLOBS": "s3://bucket?endpoint=http://127.0.0.1:9", "MPOTA_DATA": "/d"}
    with pytest.raises(SettingsError, match=f"--blob-cache-bytes: .*{needle}"):
        load_settings({"blob_cache_bytes": value}, environ=env)
    with pytest.raises(SettingsError, match=f"MPOTA_BLOB_CACHE_BYTES: .*{needle}"):
        load_settings({}, environ={**env, "MPOTA_BLOB_CACHE_BYTES": value})


def test_a_blob_cache_bound_without_an_s3_store_is_refused() -> None:
    with pytest.raises(SettingsError, match="only the S3 blob store has a cache"):
        load_settings({"data_dir": Path("/d"), "blob_cache_bytes": str(64 << 20)}, environ={})
