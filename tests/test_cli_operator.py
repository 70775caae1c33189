"""The operator's commands through the real CLI against a real `ota serve` (issue #15, items 4
and 6): every read command prints an aligned table or, with --json, JSON that parses; every
command and option has help, and `ota --help` cuts no summary; publishing refuses what it
would fail with before a byte is uploaded, saying what to do; `ota provision --virtual DIR`
creates DIR."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from signing import keys as keymod
from signing.bundle import load_bundle
from tools.cli import cli, main
from tools.local_server import LocalServer
from tools.micropython import PROJECT_ROOT


@dataclass
class Fleet:
    server: LocalServer
    keydir: Path
    work: Path


def _app(work: Path, name: str, files: dict[str, bytes]) -> Path:
    app = work / "apps" / name
    app.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        (app / path).parent.mkdir(parents=True, exist_ok=True)
        (app / path).write_bytes(data)
    return app


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A server with a release rolled out, a board that took it, and the key directory."""
    work = tmp_path_factory.mktemp("operator")
    keydir = work / "keys"
    assert main(["keys", "init", str(keydir)]) == 0
    with LocalServer(work / "data", keydir / "root.json") as server:
        point = keymod.public_point(keymod.generate_private_key())
        server.client().register_device("board-1", point, board="unix", tags=["lab"])
        yield Fleet(server, keydir, work)


@pytest.fixture
def env(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> Fleet:
    monkeypatch.setenv("MPOTA_TOKEN", fleet.server.token)
    monkeypatch.setenv("MPOTA_SERVER", fleet.server.url)
    monkeypatch.delenv("MPOTA_CA", raising=False)
    monkeypatch.chdir(fleet.work)  # no ./fleet.yaml here: publish checks no fleet by default
    return fleet


def _publish(fleet: Fleet, name: str, version: str, *extra: str,
             files: dict[str, bytes] | None = None) -> int:
    app = _app(fleet.work, f"{name}-{version}", files or {
        "app_main.py": f"def main():\n    print({version!r})\n".encode()})
    return main(["publish", str(app), "--app", name, "--version", version, "--board", "unix",
                 "--key", str(fleet.keydir / "release.key"), *extra])


# -- one output style -------------------------------------------------------------------------

# Every read command: (its arguments, the first cell of its table's header row). A new read
# command is one more line here.
READ_COMMANDS: list[tuple[list[str], str]] = [
    (["devices", "list"], "DEVICE"),
    (["devices", "show", "board-1"], "FIELD"),
    (["rollout", "status", "stable"], "ROLE"),
    (["roots", "list"], "VERSION"),
    (["keys", "show", "{keydir}"], "ROLE"),
    (["releases", "list"], "APP"),
    (["channels", "list"], "CHANNEL"),
    (["audit", "list"], "WHEN"),
    (["tokens", "list"], "NAME"),
]


def _args(args: list[str], fleet: Fleet) -> list[str]:
    return [a.format(keydir=fleet.keydir) for a in args]


@pytest.fixture
def rolled_out(env: Fleet) -> Fleet:
    if not env.server.client().list_releases("demo"):
        assert _publish(env, "demo", "1.0.0", "--channel", "stable", "--percent", "100") == 0
    return env


@pytest.mark.parametrize(("args", "header"), READ_COMMANDS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else v)
def test_every_read_command_prints_json_that_parses(
        rolled_out: Fleet, capsys: pytest.CaptureFixture[str], args: list[str],
        header: str) -> None:
    capsys.readouterr()
    assert main([*_args(args, rolled_out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc or doc == []


@pytest.mark.parametrize(("args", "header"), READ_COMMANDS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else v)
def test_every_read_command_prints_an_aligned_table_with_a_header(
        rolled_out: Fleet, capsys: pytest.CaptureFixture[str], args: list[str],
        header: str) -> None:
    capsys.readouterr()
    assert main(_args(args, rolled_out)) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == [header])
    assert "\t" not in "".join(lines)
    head, first = lines[at], lines[at + 1]
    # aligned: the second column starts at the same place in the header and the first row
    second = head.split()[1]
    column = head.index(second, len(header))
    assert first[column - 1] == " " and first[column] != " ", (head, first)
    assert "\x1b[" not in "".join(lines)  # no colour off a terminal


def test_times_are_iso_8601_utc(rolled_out: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["devices", "show", "board-1"]) == 0
    created = next(line for line in capsys.readouterr().out.splitlines()
                   if line.startswith("created"))
    stamp = created.split()[1]
    assert time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")


def test_devices_show_prints_the_deployment_history_with_reasons(
        rolled_out: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["devices", "show", "board-1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["device_id"] == "board-1" and doc["history"] == []
    assert main(["devices", "show", "board-1"]) == 0
    out = capsys.readouterr().out
    assert "deployment history" in out and "(no reports yet)" in out


def test_publish_json_prints_the_release(env: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert _publish(env, "jsonapp", "2.0.0", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["app"], doc["version"], doc["new"]) == ("jsonapp", "2.0.0", True)
    assert isinstance(doc["sequence"], int) and len(doc["uploaded"]) == 1
    assert _publish(env, "jsonapp", "2.0.0", "--json") == 0  # the same content again
    again = json.loads(capsys.readouterr().out)
    assert (again["sequence"], again["new"], again["uploaded"]) == (doc["sequence"], False, [])


# -- help -------------------------------------------------------------------------------------

def _commands(group: click.Group, path: tuple[str, ...] = ()
              ) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in group.commands.items():
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def test_every_command_has_a_summary_and_every_option_help() -> None:
    missing = []
    for path, command in _commands(cli):
        if not command.get_short_help_str(limit=10_000):
            missing.append(" ".join(path))
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and not param.help:
                missing.append(f"{' '.join(path)} {param.opts[0]}")
    assert not missing, missing


def test_no_summary_is_cut_off_in_help_listings() -> None:
    groups = [()] + [path for path, c in _commands(cli) if isinstance(c, click.Group)]
    runner = CliRunner()
    for path in groups:
        result = runner.invoke(cli, [*path, "--help"], terminal_width=80)
        assert result.exit_code == 0
        listing = result.output.split("Commands:", 1)[1]
        assert "..." not in listing, (path, listing)


# -- errors that say what to do ---------------------------------------------------------------

def test_a_key_the_root_does_not_list_is_named_with_the_fix_and_nothing_is_uploaded(
        env: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    stray = env.work / "stray.key"
    key = keymod.generate_private_key()
    keymod.save_private_key(stray, key, None)
    out = env.work / "stray-bundle"
    app = _app(env.work, "stray-1.0.0", {"app_main.py": b"x = 1\n" * 50})
    capsys.readouterr()
    assert main(["publish", str(app), "--app", "stray", "--version", "1.0.0", "--board",
                 "unix", "--key", str(stray), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    expected = keymod.keyid(keymod.load_public_key(env.keydir / "release.pub"))
    assert keymod.keyid(key) in err and expected in err, err
    assert "ota roots upload keys/root.json" in err and "ota keys rotate" in err
    blobs = [e.blob for e in load_bundle(out).manifest.files]
    assert env.server.client().missing_blobs(blobs) == blobs  # not one byte went up


def test_keys_rotate_says_to_upload_the_new_root(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "init", str(tmp_path / "k")]) == 0
    capsys.readouterr()
    assert main(["keys", "rotate", str(tmp_path / "k"), "--release"]) == 0
    assert f"ota roots upload {tmp_path / 'k' / 'root.json'}" in capsys.readouterr().out


def test_a_file_over_the_size_limit_is_named_and_nothing_is_uploaded(
        env: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    from ota_server.settings import Limits

    out = env.work / "big-bundle"
    app = _app(env.work, "big-1.0.0", {"app_main.py": b"x = 1\n",
                                       "data/huge.bin": b"\0" * (Limits().max_blob_bytes + 1)})
    capsys.readouterr()
    assert main(["publish", str(app), "--app", "big", "--version", "1.0.0", "--board", "unix",
                 "--key", str(env.keydir / "release.key"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "'data/huge.bin'" in err and str(Limits().max_blob_bytes) in err, err
    blobs = [e.blob for e in load_bundle(out).manifest.files]
    assert env.server.client().missing_blobs(blobs) == blobs


def test_an_unknown_board_is_refused_with_the_known_ones(
        env: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    app = _app(env.work, "typo-1.0.0", {"app_main.py": b"x = 1\n"})
    capsys.readouterr()
    assert main(["publish", str(app), "--app", "typo", "--version", "1.0.0", "--board",
                 "esp32-generic", "--fleet", str(PROJECT_ROOT / "fleet.yaml"),
                 "--key", str(env.keydir / "release.key")]) == 1
    err = capsys.readouterr().err
    assert "unknown board 'esp32-generic'" in err
    assert "esp32, esp8266, pybd-sf2, rp2-pico, rp2-pico-w, unix" in err
    assert not env.server.client().list_releases("typo")


def test_an_app_larger_than_the_board_s_partition_is_refused(
        env: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    # rp2-pico-w's filesystem is 848 KiB (fleet.yaml): it cannot hold a 500 KB app twice
    app = _app(env.work, "fat-1.0.0", {"app_main.py": b"x = 1\n",
                                       "data/table.bin": os.urandom(500_000)})
    capsys.readouterr()
    assert main(["publish", str(app), "--app", "fat", "--version", "1.0.0", "--board",
                 "rp2-pico-w", "--fleet", str(PROJECT_ROOT / "fleet.yaml"),
                 "--key", str(env.keydir / "release.key")]) == 1
    err = capsys.readouterr().err
    assert "'rp2-pico-w'" in err and str(0xD4000) in err, err
    assert not env.server.client().list_releases("fat")


# -- progress on a terminal only --------------------------------------------------------------

def _publish_process(fleet: Fleet, name: str, stderr: int) -> subprocess.Popen[bytes]:
    app = _app(fleet.work, name, {"app_main.py": b"x = 1\n", "blob.bin": os.urandom(300_000)})
    environ = dict(os.environ, MPOTA_TOKEN=fleet.server.token, MPOTA_SERVER=fleet.server.url,
                   COLUMNS="100")
    return subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "publish", str(app), "--app", name, "--version",
         "1.0.0", "--board", "unix", "--key", str(fleet.keydir / "release.key")],
        cwd=fleet.work, env=environ, stdout=subprocess.PIPE, stderr=stderr)


def test_publish_shows_an_upload_bar_on_a_terminal_only(fleet: Fleet) -> None:
    leader, follower = pty.openpty()
    process = _publish_process(fleet, "tty", follower)
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0
    assert b"uploading" in seen, seen
    piped = _publish_process(fleet, "pipe", subprocess.PIPE)
    _, err = piped.communicate(timeout=60)
    assert piped.returncode == 0 and b"uploading" not in err, err


# -- provisioning a virtual board into a new directory ----------------------------------------

def _provision_fleet(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPERATOR_TEST_TOKEN", fleet.server.token)
    monkeypatch.setenv("OPERATOR_TEST_WIFI", "wifi-" + "x7q")
    path = fleet.work / "provision-fleet.yaml"
    path.write_text(f"""\
version: 1
server:
  url: {fleet.server.url}
  publisher_token_env: OPERATOR_TEST_TOKEN
  root: {fleet.keydir / "root.json"}
channels:
  stable: {{}}
rollout:
  stages: [100]
wifi:
  lab:
    ssid: lab
    password_env: OPERATOR_TEST_WIFI
boards:
  unix:
    chip: unix
  esp32: {{chip: esp32, flash_size: 0x400000, fs_offset: 0x200000, fs_size: 0x200000}}
provisioning:
  lab: {{board: unix, wifi: lab, channel: stable}}
  esp: {{board: esp32, wifi: lab, channel: stable, method: image}}
""")
    return path


def test_provision_virtual_creates_the_board_s_directory(
        fleet: Fleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fleet_file = _provision_fleet(fleet, monkeypatch)
    refused = tmp_path / "boards" / "refused"
    assert main(["provision", "--fleet", str(fleet_file), "--profile", "esp", "--virtual",
                 str(refused), "--log", str(tmp_path / "log.jsonl")]) == 1
    assert not refused.exists()  # a refused run makes nothing
    board = tmp_path / "boards" / "new"
    assert main(["provision", "--fleet", str(fleet_file), "--profile", "lab", "--virtual",
                 str(board), "--log", str(tmp_path / "log.jsonl")]) == 0
    assert json.loads((board / "ota_id" / "config.json").read_text())["channel"] == "stable"
