"""The operator's day (issue 15, items 1, 2, 3 and 7) through the real CLI against a real
`ota serve` on 127.0.0.1: releases by version and yanked, declared channels, rollouts that say
whom they reach and how far they are from pausing, tokens with scopes and the audit log."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_support import Backend, FleetKeys, SimBoard, make_bundle

from ota_server.storage.sqlite import SqliteStore, _migrations
from signing.keys import keyid, save_private_key
from tools.cli import main
from tools.local_server import LocalServer

FLEET = """\
version: 1
server:
  url: http://127.0.0.1:8080
  publisher_token_env: MPOTA_TOKEN
channels:
  stable:
    description: every board in the field
  beta:
    description: the lab
rollout:
  stages: [100]
boards:
  unix:
    chip: unix
provisioning:
  lab:
    board: unix
    channel: beta
"""


class Operator:
    """The CLI as an operator runs it, with the server and token in the environment."""

    def __init__(self, srv: LocalServer, keys: FleetKeys, workdir: Path,
                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
        self.srv = srv
        self.keys = keys
        self.workdir = workdir
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        self.key_file = workdir / "release.key"
        save_private_key(self.key_file, keys.release_key, None)
        monkeypatch.setenv("MPOTA_SERVER", srv.url)
        self.use(srv.token)

    def use(self, token: str) -> None:
        self.monkeypatch.setenv("MPOTA_TOKEN", token)

    def run(self, *args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str) -> Any:
        code, out, err = self.run(*args, "--json")
        assert code == 0, err
        return json.loads(out)

    def app(self, label: str, text: str) -> Path:
        folder = self.workdir / label / "demo"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "app_main.py").write_text(text)
        return folder

    def publish(self, label: str, version: str, *extra: str) -> tuple[int, str, str]:
        return self.run("publish", str(self.app(label, f"print({label!r})\n")), "--version",
                        version, "--board", "unix", "--key", str(self.key_file), *extra)

    def checkin(self, board: SimBoard) -> dict[str, Any] | None:
        """The manifest the server offers `board`, None for "nothing new" (204)."""
        status, body = self.board_request(board, "/v1/device/checkin", board.checkin_body())
        if status == 204:
            return None
        assert status == 200
        manifest: dict[str, Any] = json.loads(base64.b64decode(json.loads(body)["payload"]))
        return manifest

    def report(self, board: SimBoard, status: str, sequence: int) -> None:
        code, body = self.board_request(board, "/v1/device/report",
                                        board.report_body(status, sequence, "a test"))
        assert code in (200, 204), body

    def board_request(self, board: SimBoard, path: str, body: bytes) -> tuple[int, bytes]:
        request = urllib.request.Request(self.srv.url + path, data=body, method="POST",
                                         headers=board.auth("POST", path, body))
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def add_board(self, device_id: str, channel: str = "stable", **kw: Any) -> SimBoard:
        board = SimBoard(device_id, channel=channel, **kw)
        public = self.workdir / f"{device_id}.pub"
        public.write_text(base64.b64encode(board.point).decode())
        tags = [arg for tag in board.tags for arg in ("--tag", tag)]
        code, _, err = self.run("devices", "add", device_id, "--public-key", f"@{public}",
                                "--board", "unix", "--channel", channel, *tags)
        assert code == 0, err
        return board


@pytest.fixture
def keys(tmp_path: Path) -> FleetKeys:
    return FleetKeys.create(tmp_path)


@pytest.fixture
def operator(tmp_path: Path, keys: FleetKeys, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str], backend: Backend) -> Iterator[Operator]:
    with LocalServer(tmp_path / "data", keys.root_path, **backend.urls) as srv:
        yield Operator(srv, keys, tmp_path, monkeypatch, capsys)


@pytest.fixture
def fleet_operator(tmp_path: Path, keys: FleetKeys, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str],
                   backend: Backend) -> Iterator[Operator]:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET)
    with LocalServer(tmp_path / "data", keys.root_path, extra_args=["--fleet", str(fleet)],
                     **backend.urls) as srv:
        yield Operator(srv, keys, tmp_path, monkeypatch, capsys)


def _sequence(out: str) -> int:
    return int(out.split(" sequence ")[1].split(":")[0])


# -- item 1: releases by version, yank --------------------------------------------------------

def test_publish_twice_roll_out_by_version_yank_and_the_board_is_not_offered_it(
        operator: Operator) -> None:
    op = operator
    code, out, err = op.publish("a", "1.0.0", "--channel", "stable", "--percent", "100")
    assert code == 0, err
    first = _sequence(out)
    # the same version with other content: refused, naming the sequence it has
    code, _, err = op.publish("b", "1.0.0")
    assert code == 1 and "version_exists" in err and f"sequence {first}" in err
    code, out, err = op.publish("c", "1.1.0")
    assert code == 0, err
    second = _sequence(out)
    runs_first = op.add_board("runs-1.0", sequence=first)
    fresh = op.add_board("fresh")
    # a rollout by version, not by sequence
    code, out, err = op.run("rollout", "start", "stable", "--app", "demo", "--version", "1.1.0",
                            "--percent", "100")
    assert code == 0, err
    assert f"rollout of demo 1.1.0 (sequence {second})" in out
    assert (op.checkin(runs_first) or {}).get("version") == "1.1.0"
    listed = {r["version"]: r for r in op.json("releases", "list")}
    assert listed["1.1.0"]["channels"] == [{"channel": "stable", "as": "rollout active"}]
    assert listed["1.0.0"]["channels"] == [{"channel": "stable", "as": "base"}]
    assert listed["1.1.0"]["signers"] == [keyid(op.keys.release_key)]
    assert listed["1.1.0"]["yanked"] is None
    # a yank is refused while the release rolls out, and says how to go on
    code, _, err = op.run("releases", "yank", "demo", "1.1.0")
    assert code == 1 and "rollout_active" in err and "--force" in err
    assert (op.checkin(runs_first) or {}).get("version") == "1.1.0"
    code, out, err = op.run("releases", "yank", "demo", "1.1.0", "--force")
    assert code == 0, err
    assert "aborted the rollout of demo 1.1.0 on stable" in out
    # offered to no board from now on: the board on 1.0.0 keeps it, a new board gets the base
    assert op.checkin(runs_first) is None
    assert (op.checkin(fresh) or {}).get("version") == "1.0.0"
    listed = {r["version"]: r for r in op.json("releases", "list")}
    assert listed["1.1.0"]["yanked"] is not None
    assert listed["1.1.0"]["channels"] == []  # the aborted rollout points nowhere
    code, out, _ = op.run("releases", "list")
    header = out.splitlines()[0].split()
    assert header == ["APP", "VERSION", "SEQUENCE", "CREATED", "SIGNERS", "CHANNELS", "STATE",
                      "EXPIRES"]
    assert "yanked 20" in out and "stable (base)" in out
    # a yanked release cannot be rolled out again
    code, _, err = op.run("rollout", "start", "stable", "--app", "demo", "--version", "1.1.0")
    assert code == 1 and "release_yanked" in err
    code, _, err = op.run("releases", "yank", "demo", "9.9.9")
    assert code == 1 and "unknown_release" in err and "1.1.0" in err


def test_a_lower_version_than_the_channel_runs_needs_allow_downgrade_version(
        operator: Operator) -> None:
    op = operator
    code, out, err = op.publish("a", "2.0.0", "--channel", "stable", "--percent", "100")
    assert code == 0, err
    top = _sequence(out)
    code, _, err = op.publish("b", "1.9.0", "--channel", "stable", "--percent", "100")
    assert code == 1 and "--allow-downgrade-version" in err and "2.0.0" in err
    assert [r["version"] for r in op.json("releases", "list")] == ["2.0.0"]  # nothing uploaded
    code, out, err = op.publish("b", "1.9.0", "--channel", "stable", "--percent", "100",
                                "--allow-downgrade-version")
    assert code == 0, err
    assert "warning" in err and "lower version than 2.0.0" in err
    assert _sequence(out) > top  # the sequence still rises: boards take it
    # the server holds the same rule for a rollout started by hand
    code, out, err = op.publish("c", "1.8.0")
    assert code == 0, err
    code, _, err = op.run("rollout", "start", "stable", "--app", "demo", "--version", "1.8.0")
    assert code == 1 and "version_downgrade" in err
    code, _, err = op.run("rollout", "start", "stable", "--app", "demo", "--version", "1.8.0",
                          "--sequence", "1")
    assert code == 1 and "--version" in err


# -- item 2: declared channels ----------------------------------------------------------------

def test_under_a_fleet_an_unknown_channel_is_refused_with_did_you_mean(
        fleet_operator: Operator) -> None:
    op = fleet_operator
    op.add_board("lab-1", channel="beta")
    op.add_board("field-1")
    op.add_board("field-2")
    public = op.workdir / "lab-1.pub"
    code, _, err = op.run("devices", "add", "typo-1", "--public-key", f"@{public}", "--board",
                          "unix", "--channel", "stabel")
    assert code == 1 and "unknown_channel" in err and "did you mean 'stable'" in err
    code, _, err = op.run("rollout", "status", "bta")
    assert code == 1 and "did you mean 'beta'" in err
    code, _, err = op.publish("a", "1.0.0", "--channel", "stabel")
    assert code == 1 and "did you mean 'stable'" in err
    assert op.json("releases", "list") == []  # refused before anything was uploaded
    code, out, err = op.publish("a", "1.0.0", "--channel", "stable")
    assert code == 0, err
    channels = {c["channel"]: c for c in op.json("channels", "list")}
    assert set(channels) == {"stable", "beta"}
    assert (channels["stable"]["boards"], channels["beta"]["boards"]) == (2, 1)
    assert channels["stable"]["declared"] is True
    assert channels["stable"]["rollout"]["release"]["version"] == "1.0.0"
    assert channels["beta"]["rollout"] is None and channels["beta"]["base"] is None
    code, out, _ = op.run("channels", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["CHANNEL", "BASE", "ROLLOUT", "STAGE", "REACH", "BOARDS"]
    stable = next(line for line in lines if line.startswith("stable"))
    assert "demo 1.0.0 active" in stable and "2 of 2 boards eligible" in stable


# -- item 3: reach, warnings, the pause rule for small fleets ---------------------------------

def test_a_stage_that_reaches_no_board_warns_and_three_boards_can_pause_a_rollout(
        operator: Operator) -> None:
    op = operator
    boards = [op.add_board(f"small-{i}") for i in range(3)]
    code, out, err = op.publish("a", "1.0.0")
    assert code == 0, err
    sequence = _sequence(out)
    policy = op.workdir / "policy.json"
    policy.write_text(json.dumps({"stages": [{"tag": "canary"}, {"percent": 100}]}))
    code, out, err = op.run("rollout", "start", "stable", "--app", "demo", "--version", "1.0.0",
                            "--policy", str(policy))
    assert code == 0, err
    assert "reaches 0 of 3 boards" in err and "ota rollout advance stable" in err
    assert "stage 1 (tag canary): 0 of 3 boards eligible" in out
    assert op.checkin(boards[0]) is None
    code, out, err = op.run("rollout", "advance", "stable")
    assert code == 0 and "warning" not in err
    assert "stage 2 (100%): 3 of 3 boards eligible" in out
    # three boards: the default min_results is 2 (half of 3), not 10
    status = op.json("rollout", "status", "stable")
    progress = status["rollout"]["progress"]
    assert (progress["min_results"], progress["failures_to_pause"]) == (2, 2)
    assert "auto-pause after 2 more failure(s)" in op.run("rollout", "status", "stable")[1]
    for board in boards[:2]:
        assert (op.checkin(board) or {}).get("sequence") == sequence
    op.report(boards[0], "failed", sequence)
    progress = op.json("rollout", "status", "stable")["rollout"]["progress"]
    assert (progress["results"], progress["failures_to_pause"]) == (1, 1)
    op.report(boards[1], "rolled_back", sequence)
    status = op.json("rollout", "status", "stable")
    assert status["rollout"]["state"] == "paused"
    assert "2 of 2 boards failed" in status["rollout"]["reason"]
    assert op.checkin(boards[2]) is None


# -- item 7: scopes, the audit log, token files -----------------------------------------------

def test_tokens_have_scopes_every_change_is_audited_and_loose_token_files_are_refused(
        operator: Operator, tmp_path: Path) -> None:
    op = operator
    # the token commands reach the store the server runs on
    store = ["--data", str(op.srv.data_dir)]
    store += ["--db", op.srv.db_url] if op.srv.db_url else []
    code, out, err = op.run("tokens", "create", "viewer", "--scope", "read", *store)
    assert code == 0, err
    viewer = out.strip()
    code, out, err = op.run("tokens", "create", "ci", *store)  # publish by default
    assert code == 0, err
    ci = out.strip()
    tokens = {t["name"]: t for t in op.json("tokens", "list", *store)}
    assert (tokens["viewer"]["scope"], tokens["ci"]["scope"], tokens["local"]["scope"]) == \
        ("read", "publish", "admin")
    code, out, _ = op.run("tokens", "list", *store)
    assert out.splitlines()[0].split() == ["NAME", "SCOPE", "CREATED", "REVOKED"]
    assert viewer not in out and ci not in out
    # publish: uploads and rolls out; cannot revoke a board
    op.use(ci)
    code, _, err = op.publish("a", "1.0.0", "--channel", "stable", "--percent", "100")
    assert code == 0, err
    op.use(op.srv.token)
    op.add_board("audited-1")
    op.use(ci)
    code, _, err = op.run("devices", "revoke", "audited-1")
    assert code == 1 and "insufficient_scope" in err and "'admin'" in err
    # read: lists; cannot pause
    op.use(viewer)
    assert op.json("releases", "list")[0]["version"] == "1.0.0"
    code, _, err = op.run("rollout", "pause", "stable")
    assert code == 1 and "insufficient_scope" in err and "HTTP 403" in err
    assert op.json("rollout", "status", "stable")["rollout"]["state"] == "active"
    entries = op.json("audit", "list")
    seen = {(e["actor"], e["action"], e["outcome"]) for e in entries}
    assert ("ci", "POST /v1/releases", "ok") in seen
    assert ("ci", "POST /v1/channels/{channel}/rollout", "ok") in seen
    assert ("ci", "POST /v1/devices/{device_id}/revoke", "insufficient_scope") in seen
    assert ("viewer", "POST /v1/channels/{channel}/rollout/pause", "insufficient_scope") in seen
    assert any(actor.startswith("local:") and action == "ota tokens create"
               for actor, action, _ in seen)
    assert not any(e["actor"] == "viewer" and e["action"].startswith("GET") for e in entries)
    started = next(e for e in entries if e["action"] == "POST /v1/channels/{channel}/rollout")
    assert started["target"].startswith("stable: demo 1.0.0 (sequence ")
    assert started["status"] == 201
    assert [e["id"] for e in op.json("audit", "list", "--actor", "viewer")] == \
        [e["id"] for e in entries if e["actor"] == "viewer"]
    code, out, _ = op.run("audit", "list", "--limit", "2")
    assert out.splitlines()[0].split() == ["WHEN", "WHO", "SCOPE", "WHAT", "TARGET", "STATUS",
                                           "OUTCOME"]
    assert len(out.splitlines()) == 3
    # a token file others can read is refused before it is used; 0600 is fine
    token_file = tmp_path / "viewer.token"
    token_file.write_text(viewer + "\n")
    for mode in (0o644, 0o640, 0o604):
        os.chmod(token_file, mode)
        code, _, err = op.run("releases", "list", "--token-file", str(token_file))
        assert code == 1 and "chmod 600" in err and viewer not in err
    os.chmod(token_file, 0o600)
    code, _, err = op.run("releases", "list", "--token-file", str(token_file))
    assert code == 0, err


@pytest.mark.sqlite_only(reason="migrates a SQLite file written by schema version 2")
async def test_tokens_from_before_scopes_stay_admin_and_releases_get_their_signers(
        tmp_path: Path, keys: FleetKeys) -> None:
    """A data directory of schema version 2 migrates: its tokens keep every power (admin),
    its releases get the key ids their envelopes name."""
    bundle = make_bundle(tmp_path, {"app_main.py": b"x\n"}, version="1.0.0", sequence=1,
                         key=keys.release_key)
    path = tmp_path / "mpota.sqlite3"
    db = sqlite3.connect(path)
    scripts = dict(_migrations())
    db.executescript(f"BEGIN;\n{scripts[1]}\n;\n{scripts[2]}\n;PRAGMA user_version=2;\nCOMMIT;")
    db.execute("INSERT INTO tokens (name, token_hash, created) VALUES ('old', 'ab', 0)")
    db.execute("INSERT INTO releases (app, version, sequence, boards, envelope, created, "
               "expires) VALUES ('demo', '1.0.0', 1, '[\"unix\"]', ?, 0, 9999999999)",
               ((bundle / "manifest.dsse.json").read_bytes(),))
    db.commit()
    db.close()
    store = SqliteStore(path)
    try:
        assert await store.schema_version() >= 3
        token = await store.token("ab")
        assert token is not None and token.scope == "admin"
        [release] = await store.list_releases("demo")
        assert release.signers == (keyid(keys.release_key),)
        assert release.yanked is None
    finally:
        await store.close()


def test_an_admin_token_manages_tokens_over_the_api_and_others_cannot(
        operator: Operator, monkeypatch: pytest.MonkeyPatch) -> None:
    op = operator
    monkeypatch.delenv("MPOTA_DATA", raising=False)  # no --data: the server is asked
    code, out, err = op.run("tokens", "create", "remote-ci")  # as `local`, an admin token
    assert code == 0, err
    remote_ci = out.strip()
    assert remote_ci.startswith("mpota_")
    listed = {t["name"]: t for t in op.json("tokens", "list")}
    assert listed["remote-ci"]["scope"] == "publish" and remote_ci not in json.dumps(listed)
    op.use(remote_ci)
    code, _, err = op.run("tokens", "create", "sneaky", "--scope", "admin")
    assert code == 1 and "insufficient_scope" in err
    code, _, err = op.run("tokens", "list")
    assert code == 1 and "insufficient_scope" in err
    op.use(op.srv.token)
    code, _, err = op.run("tokens", "create", "bad name!")
    assert code == 1 and "bad_name" in err
    code, out, err = op.run("tokens", "revoke", "remote-ci")
    assert code == 0 and "revoked 1 token(s)" in out, err
    code, _, err = op.run("tokens", "revoke", "remote-ci")
    assert code == 1 and "unknown_token" in err
    op.use(remote_ci)
    code, _, err = op.run("releases", "list")
    assert code == 1 and "bad_token" in err
    op.use(op.srv.token)
    entries = [(e["actor"], e["action"], e["target"], e["outcome"])
               for e in op.json("audit", "list")]
    assert ("local", "POST /v1/tokens", "remote-ci scope=publish", "ok") in entries
    assert any(actor == "remote-ci" and action == "POST /v1/tokens"
               and outcome == "insufficient_scope" for actor, action, _, outcome in entries)
    assert ("local", "POST /v1/tokens/{name}/revoke", "name=remote-ci", "ok") in entries
    assert all(remote_ci not in str(entry) for entry in entries)


@pytest.mark.parametrize("path", [("releases", "list"), ("releases", "yank"),
                                  ("channels", "list"), ("audit", "list"),
                                  ("tokens", "create"), ("tokens", "list"),
                                  ("tokens", "revoke"), ("rollout", "start")])
def test_the_operator_commands_have_a_summary_and_every_option_has_help(
        path: tuple[str, ...]) -> None:
    import click

    from tools.cli import cli

    command: click.Command = cli
    for part in path:
        assert isinstance(command, click.Group)
        command = command.commands[part]
    summary = command.get_short_help_str(limit=70)
    assert summary and not summary.endswith("..."), summary
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{' '.join(path)} {param.opts[0]} has no help"
