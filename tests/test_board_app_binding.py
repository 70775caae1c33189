"""A board takes releases of its own app only (docs/threat-model.md, App binding): real
MicroPython (virtual board), real server (LocalServer) and the fault proxy replaying a genuinely
signed release of another app, as a hostile network or server would (TUF's mix-and-match)."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from board_rig import Rig, board_rig

from bench.reference_app import build_release, make_keys, small_app
from signing import errors
from signing.bundle import load_bundle
from signing.root import verify_root
from signing.verify import verify_manifest
from tools.board_files import (
    BoardConfig,
    BoardFilesError,
    InitialApp,
    board_files,
    install_board,
    read_state,
    slot_files,
)
from tools.fleet import FleetError, parse_fleet
from tools.micropython import PROJECT_ROOT

_names = itertools.count(1)
_CLIENT_DIR = PROJECT_ROOT / "bootloader_py"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Rig]:
    with board_rig(tmp_path_factory.mktemp("app-binding"), micropython) as started:
        yield started


@pytest.fixture
def case(rig: Rig) -> tuple[Rig, str]:
    rig.proxy.clear()
    return rig, f"b{next(_names)}"


def _refused_as_other_app(rig: Rig, other: str, mine: str) -> None:
    failed = rig.sent("failed")
    assert len(failed) == 1, failed
    assert failed[0]["reason"] == (f"manifest refused: WrongAppError: app '{other}' is not "
                                   f"this board's app '{mine}'"), failed
    assert rig.packs() == 0  # refused before a byte of it was fetched or staged


def test_board_refuses_a_signed_release_of_another_app_until_reprovisioned_for_it(case):
    rig, name = case
    other = f"{name}-other"
    # Genuinely signed, newer, for this board type, on the server: only the app differs.
    envelope = rig.publish(other, "2.0.0", 5, channel=other)
    flash = rig.board(name, app=name)
    rig.proxy.inject("replace", match="/checkin", body=envelope)
    result = rig.boot(flash)
    assert [b.ended for b in result.boots] == ["exit"], result.output
    assert "APP 1.0.0" in result.output and "APP 2.0.0" not in result.output
    _refused_as_other_app(rig, other, name)
    state = read_state(flash)
    assert state is not None and (state["active"], state["slots"]["b"]) == ("a", None)
    assert slot_files(flash, "b") == {}
    # Re-provisioning the board's config for the other app is the authorised act.
    (flash / "ota_id" / "config.json").write_bytes(rig.config(name, app=other).to_json())
    rig.proxy.clear()
    rig.proxy.inject("replace", match="/checkin", body=envelope)
    moved = rig.boot(flash)
    assert [b.ended for b in moved.boots] == ["reset", "exit"], moved.output
    assert "APP 2.0.0" in moved.boots[-1].output
    assert rig.checkins()[0]["app"] == other


def test_fresh_board_provisioned_for_an_app_takes_no_other_app(case):
    rig, name = case
    other = f"{name}-other"
    envelope = rig.publish(other, "2.0.0", 1, channel=name)  # the board's channel: other app
    flash = rig.bare_board(name, app=name, poll_every_min=0)
    assert json.loads((flash / "ota_id" / "config.json").read_bytes())["app"] == name
    first = rig.boot(flash)
    # The check-in names the board's app, so the server does not offer the other one.
    assert [b.ended for b in first.boots] == ["exit"], first.output
    assert [c["app"] for c in rig.checkins()] == [name]
    assert [e.status for e in rig.proxy.exchanges if e.path.endswith("/checkin")] == [204]
    # A hostile network or server replays it anyway: the board refuses it.
    rig.proxy.inject("replace", match="/checkin", body=envelope)
    replayed = rig.boot(flash)
    assert [b.ended for b in replayed.boots] == ["exit"], replayed.output
    assert "APP 2.0.0" not in replayed.output
    _refused_as_other_app(rig, other, name)
    assert slot_files(flash, "a") == {} and slot_files(flash, "b") == {}
    rig.publish(name, "1.1.0", 2, channel=name)  # its own app: installed
    result = rig.boot(flash)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.1.0" in result.boots[-1].output


def test_fresh_board_without_an_app_is_bound_to_the_first_app_offered(case):
    rig, name = case
    first = f"{name}-first"
    other = f"{name}-other"
    rig.publish(first, "1.0.0", 3, channel=name)
    envelope = rig.publish(other, "2.0.0", 9, channel=other)
    flash = rig.bare_board(name, poll_every_min=0)
    assert "app" not in json.loads((flash / "ota_id" / "config.json").read_bytes())
    rig.proxy.inject("500", match="/v1/device/pack", times=10)  # the first install fails
    failing = rig.boot(flash)
    assert [b.ended for b in failing.boots] == ["exit"], failing.output
    assert len(rig.sent("failed")) == 1 and rig.packs() == 1
    state = read_state(flash)
    assert state is not None and state["app"] == first and state["slots"]["b"] is None
    rig.proxy.clear()
    rig.proxy.inject("replace", match="/checkin", body=envelope)
    replayed = rig.boot(flash)
    assert "APP 2.0.0" not in replayed.output
    _refused_as_other_app(rig, other, first)
    assert rig.checkins()[0]["app"] == first  # recorded from then on, the check-in says so
    result = rig.boot(flash)
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.0.0" in result.boots[-1].output
    assert read_state(flash)["slots"]["b"]["app"] == first


def test_a_power_cut_while_the_first_app_is_recorded_leaves_the_board_bound_or_unbound(
        case, tmp_path):
    rig, name = case
    first = f"{name}-first"
    rig.publish(first, "1.0.0", 3, channel=name)
    flash = rig.bare_board(name, poll_every_min=0)
    rig.proxy.inject("500", match="/v1/device/pack", times=1000)  # every install fails
    whole = rig.boot(flash)  # how many flash writes a boot that records the app makes
    assert read_state(flash)["app"] == first, whole.output
    seen = set()
    for cut in range(1, whole.fs_ops + 1):
        board = tmp_path / f"cut{cut}"
        install_board(board, rig.config(name, poll_every_min=0),
                      (flash / "ota_id" / "device.key").read_bytes(), rig.keys.root_envelope)
        cut_run = rig.boot(board, max_boots=1, cut_at=cut)
        assert cut_run.ended == "power_cut", (cut, cut_run.output)
        state = read_state(board)
        assert state is not None, cut  # a record always survives
        assert state.get("app") in (None, first), (cut, state)
        seen.add(state.get("app"))
        after = rig.boot(board, max_boots=1)  # power back: the next boot records it
        assert after.ended == "exit", (cut, after.output)
        assert read_state(board)["app"] == first, cut
    assert seen == {None, first}  # the cuts fell both before and after the record


def _board_verdict(micropython: str, tmp_path: Path, envelope: bytes, root: bytes,
                   app: str, installed: int) -> str:
    (tmp_path / "offer.dsse").write_bytes(envelope)
    (tmp_path / "root.json").write_bytes(root)
    script = "\n".join([
        "import sys",
        f"sys.path.insert(0, {str(_CLIENT_DIR)!r})",
        "from ota import trust",
        f"root = trust.load_root({str(tmp_path / 'root.json')!r})",
        "try:",
        f"    m = trust.verify_manifest({str(tmp_path / 'offer.dsse')!r}, root, board='unix',",
        f"                              installed_sequence={installed}, app={app!r})",
        "    print('ok', m['app'])",
        "except trust.TrustError as e:",
        "    print(e.__class__.__name__ + ': ' + str(e))",
    ])
    done = subprocess.run([micropython, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("installed", [1, 4, 7])  # below, equal to and above its sequence
def test_host_and_board_refuse_another_apps_manifest_alike_before_its_sequence(
        micropython, tmp_path, installed):
    keys = make_keys()
    bundle = build_release(tmp_path, small_app("2.0.0"), "2.0.0", 4, keys, app="weather")
    envelope = load_bundle(bundle).envelope_path.read_bytes()
    root = verify_root(keys.root_envelope, now=0)
    with pytest.raises(errors.WrongAppError) as refused:
        verify_manifest(envelope, root, now=0, board="unix", installed_sequence=installed,
                        app="greenhouse")
    assert str(refused.value) == "app 'weather' is not this board's app 'greenhouse'"
    board = _board_verdict(micropython, tmp_path, envelope, keys.root_envelope, "greenhouse",
                           installed)
    assert board == f"WrongAppError: {refused.value}"
    assert verify_manifest(envelope, root, now=0, board="unix", app="weather").app == "weather"
    assert _board_verdict(micropython, tmp_path, envelope, keys.root_envelope, "weather",
                          0) == "ok weather"


# -- provisioning: the binding is written into the board's config ----------------------------

_FLEET = """\
version: 1
server:
  url: http://127.0.0.1:8080
  publisher_token_env: TOKEN
channels:
  stable: {{}}
rollout:
  stages: [100]
boards:
  unix:
    chip: unix
provisioning:
  p:
    board: unix
    channel: stable
{app}"""


def test_fleet_profile_binds_boards_by_name_or_by_its_first_app(tmp_path):
    named = parse_fleet(_FLEET.format(app="    app: greenhouse\n"), tmp_path / "f.yaml")
    assert (named.profile("p").app, named.profile("p").app_name) == (None, "greenhouse")
    first = parse_fleet(_FLEET.format(app="    app: {dir: src, name: weather, version: 1.0.0}\n"),
                        tmp_path / "f.yaml")
    assert first.profile("p").app is not None and first.profile("p").app_name == "weather"
    unbound = parse_fleet(_FLEET.format(app=""), tmp_path / "f.yaml")
    assert unbound.profile("p").app_name is None
    with pytest.raises(FleetError) as refused:
        parse_fleet(_FLEET.format(app="    app: ../etc\n"), tmp_path / "f.yaml")
    assert str(refused.value).endswith(":16: provisioning profile 'p': app '../etc' is not an "
                                       "app name ([A-Za-z0-9._-], 1..64)")
    with pytest.raises(FleetError) as refused:
        parse_fleet(_FLEET.format(app="    app: [greenhouse]\n"), tmp_path / "f.yaml")
    assert str(refused.value).endswith(":16: provisioning profile 'p': app must be an app "
                                       "name or a mapping {dir, name, version, ...}")


def test_provisioned_config_names_the_bound_app_and_refuses_a_contradiction():
    key = b"\x01" * 32
    bound = board_files(BoardConfig(device_id="b", server="http://127.0.0.1:1", app="greenhouse"),
                        key, b"{}")
    assert json.loads(bound["/ota_id/config.json"])["app"] == "greenhouse"
    unbound = board_files(BoardConfig(device_id="b", server="http://127.0.0.1:1"), key, b"{}")
    assert "app" not in json.loads(unbound["/ota_id/config.json"])
    first = InitialApp("weather", "1.0.0", 1, "app_main", {"app_main.py": b"pass\n"})
    with_app = board_files(BoardConfig(device_id="b", server="http://127.0.0.1:1"), key, b"{}",
                           app=first)
    assert json.loads(with_app["/ota_id/config.json"])["app"] == "weather"
    with pytest.raises(BoardFilesError, match="first app is 'weather' but the config binds the "
                                              "board to app 'greenhouse'"):
        board_files(BoardConfig(device_id="b", server="http://127.0.0.1:1", app="greenhouse"),
                    key, b"{}", app=first)
    with pytest.raises(BoardFilesError, match="is not an app name"):
        BoardConfig(device_id="b", server="http://127.0.0.1:1", app="a/b").to_json()
