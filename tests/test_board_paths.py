"""Paths the host accepts, on the board: every path rule in UTF-8 bytes on both sides, file
lists that hold any accepted path, and a slot adopted only when it holds exactly the manifest's
files (docs/manifest.md, "Limits"; docs/board.md, "Update").

Whole boards (real MicroPython, real server) for the cases that broke in the field, and a
property test: random path sets the host accepts go through build, publish, the board's
verify, staging, slot list, check against the manifest and flip, in one persistent board
interpreter (the virtual board's REPL agent) for many examples.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from bench.reference_app import Keys, build_release, make_keys, provision_board, small_app
from signing.bundle import BundleError, load_bundle
from signing.errors import MalformedError
from signing.limits import DEFAULT_LIMITS
from signing.manifest import Manifest, check_path, check_path_set
from tools.board_files import app_hashes, client_files, read_state, slot_files
from tools.local_server import LocalServer
from tools.virtual_board import VirtualBoard
from tools.virtual_board.repl import ReplAgent

MAX_PATH = DEFAULT_LIMITS.max_path_length
# Examples in one board interpreter, ~150 ms each on either port (build, sign, publish, verify,
# stage, check, flip): ~15 s a port; and whole boards (~0.5 s each).
EXAMPLES = 100
WHOLE_BOARD_EXAMPLES = 4
_names = itertools.count(1)
_sequences = itertools.count(2)

# 40 CJK characters: 120 bytes of UTF-8, a 266-byte file list line with a 21-byte file.
CJK_40 = "\u6587" * 40
# 31 astral characters and 4 ASCII ones: 128 bytes, 35 code points, 66 UTF-16 units (the
# manifest JSON escapes each astral character as a surrogate pair).
ASTRAL_AT_LIMIT = "e/" + "\U0001f600" * 31 + "ab"


@dataclass
class Bench:
    keys: Keys
    server: LocalServer
    work: Path
    micropython: str

    @property
    def api(self) -> Any:
        return self.server.client()

    def install(self, files: Mapping[str, bytes]) -> tuple[Path, Any]:
        """A board on small_app 1.0.0 offered `files` as 1.1.0, booted until it settles."""
        name = f"p{next(_names)}"
        bundle = build_release(self.work, files, "1.1.0", 2, self.keys, app=name)
        self.api.publish(bundle, channel=name, percent=100)
        flash = self.work / name
        provision_board(flash, self.api, name, self.server.url, self.keys, small_app("1.0.0"),
                        app=name, channel=name, timeout_s=3)
        result = VirtualBoard(flash, micropython=self.micropython).run(max_boots=4, timeout=60)
        return flash, result


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Bench]:
    work = tmp_path_factory.mktemp("board-paths")
    keys = make_keys()
    (work / "root.json").write_bytes(keys.root_envelope)
    with LocalServer(work / "data", work / "root.json") as server:
        yield Bench(keys, server, work, micropython)


def _installed(flash: Path, result: Any, files: Mapping[str, bytes]) -> None:
    assert [b.ended for b in result.boots] == ["reset", "exit"], result.output
    assert "APP 1.1.0" in result.boots[-1].output
    state = read_state(flash)
    assert state is not None and (state["active"], state["ok"]) == ("b", 1)
    assert slot_files(flash, "b") == app_hashes(files)


def test_a_path_of_40_cjk_characters_and_every_file_after_it_install(bench):
    # The path's list line is 266 bytes: a list read 256 bytes a line ended there, and the
    # board adopted a slot without this file and the one after it.
    files = small_app("1.1.0", {CJK_40: b"x" * 500, "\u6587\u6587/after.txt": b"after\n"})
    flash, result = bench.install(files)
    _installed(flash, result, files)
    listed = (flash / "ota" / "slot_b.lst").read_bytes().split(b"\n")
    assert [len(line) + 1 for line in listed if line.endswith(CJK_40.encode())] == [266]


def test_an_astral_path_at_the_byte_limit_installs_under_its_own_name(bench):
    # The host counted 35 code points, the board 66 (MicroPython's json.loads leaves the
    # escaped surrogate pair of each astral character as two characters) and refused it.
    files = small_app("1.1.0", {ASTRAL_AT_LIMIT: "\U0001f600\n".encode()})
    assert len(ASTRAL_AT_LIMIT.encode()) == 128
    flash, result = bench.install(files)
    _installed(flash, result, files)


def test_a_path_one_byte_over_the_limit_is_refused_by_the_host(bench):
    with pytest.raises(MalformedError, match=r"129 bytes of UTF-8, must be 1\.\.128"):
        check_path(ASTRAL_AT_LIMIT + "x")
    check_path("d/" + "\u6587" * 42)
    with pytest.raises(BundleError, match="129 bytes of UTF-8"):
        build_release(bench.work, small_app("1.1.0", {"d/" + "\u6587" * 42 + "x": b""}),
                      "1.1.0", 2, bench.keys, app="too-long")


# -- staging, check and flip in one persistent board interpreter ---------------------------

# Board code: verify the envelope the host left at client.ENVELOPE (client.trusted_update, as
# a check-in leaves it), stage the release from the active slot's files (update.stage, with no
# session: every file is copied, none downloaded), then flip: client.check without the network.
_STAGE = """
from ota import client, state, update
class _NoNetwork:
    floor = 0
    key = b"\x05" * 32  # the device key that tags the verifier's tables on flash
st = state.BootState()
buf = memoryview(bytearray(1024))
release = client.trusted_update(_NoNetwork(), st, {"board": "unix"}, True, None, None, buf)
print("VERIFIED", release is not None)
DAMAGE
slot = update.stage(None, st, buf, client.PAYLOAD)
st.flip(slot, release, 3)
print("FLIPPED", slot)
"""


class Stager:
    """A board flash and the persistent interpreter that stages releases on it."""

    def __init__(self, flash: Path, agent: ReplAgent, bench: Bench) -> None:
        self.flash = flash
        self.agent = agent
        self.bench = bench
        self.content: dict[str, bytes] = {}  # every file released so far, by sha256

    def release(self, files: Mapping[str, bytes], publish: bool) -> tuple[bytes, Manifest]:
        """Build (and sign) a release of `files`; with `publish`, the server accepts it."""
        bench = self.bench
        bundle_dir = build_release(bench.work, files, "1.1.0", next(_sequences), bench.keys,
                                   app=f"s{next(_names)}")
        if publish:
            bench.api.publish(bundle_dir)
        for data in files.values():
            self.content[hashlib.sha256(data).hexdigest()] = data
        bundle = load_bundle(bundle_dir)
        return bundle.envelope_path.read_bytes(), bundle.manifest

    def run(self, code: str) -> tuple[str, str]:
        self.agent.submit(code.encode())
        out = b""
        while True:
            chunk, error = self.agent.read()
            out += chunk
            if error is not None:
                return out.decode("utf-8", "replace"), error.decode("utf-8", "replace")

    def stage(self, envelope: bytes, manifest: Manifest, damage: str = "") -> tuple[str, str]:
        """A fresh board whose active slot holds every file of `manifest` (under other
        names, listed in its slot list) and which was offered `envelope`; runs _STAGE."""
        for name in ("app", "ota/part"):
            shutil.rmtree(self.flash / name, ignore_errors=True)
        for pattern in ("state[01]", "slot_*.lst", "offer.*"):  # the state records, lists
            for leftover in (self.flash / "ota").glob(pattern):  # (all in /ota: no /ota_id)
                leftover.unlink()
        active = self.flash / "app" / "a"
        active.mkdir(parents=True)
        lines = []
        contents = {e.sha256: e for e in manifest.files}
        for i, (sha, entry) in enumerate(sorted(contents.items())):
            (active / f"c{i}").write_bytes(self.content[sha])
            lines.append(f"{sha} {entry.size} plain {sha} {entry.size} c{i}\n")
        (self.flash / "ota" / "slot_a.lst").write_text("".join(lines), encoding="utf-8")
        (self.flash / "ota" / "offer.dsse").write_bytes(envelope)
        return self.run(_STAGE.replace("DAMAGE", damage))


@pytest.fixture(scope="module")
def stager(tmp_path_factory: pytest.TempPathFactory, micropython: str,
           bench: Bench) -> Iterator[Stager]:
    flash = tmp_path_factory.mktemp("stager") / "flash"
    (flash / "ota").mkdir(parents=True)
    for path, data in client_files().items():
        if path.startswith("/ota/"):
            (flash / path[1:]).write_bytes(data)
    # No device key: the client reads this board's files where boards before /ota_id had them.
    (flash / "ota" / "trust.json").write_bytes(bench.keys.root_envelope)
    agent = ReplAgent(VirtualBoard(flash, micropython=micropython))
    agent.start()
    try:
        yield Stager(flash, agent, bench)
    finally:
        agent.close()


def _list_of(flash: Path, slot: str) -> list[tuple[str, str, int]]:
    text = (flash / "ota" / f"slot_{slot}.lst").read_bytes().decode("utf-8")
    assert text.endswith("\n")
    out = []
    for line in text[:-1].split("\n"):
        sha, size, _, _, _, path = line.split(" ", 5)
        out.append((path, sha, int(size)))
    return out


def _adopted(stager: Stager, manifest: Manifest, out: str, error: str) -> None:
    """The board flipped to slot b, which holds exactly the manifest's files, listed."""
    assert error == "" and "FLIPPED b" in out, (out, error)
    state = read_state(stager.flash)
    assert state is not None and (state["active"], state["ok"]) == ("b", 0)
    assert slot_files(stager.flash, "b") == {e.path: e.sha256 for e in manifest.files}
    assert _list_of(stager.flash, "b") == [(e.path, e.sha256, e.size) for e in manifest.files]
    assert not (stager.flash / "ota" / "offer.json").exists()  # the manifest kept for the check


def _refused(stager: Stager, out: str, error: str, why: str) -> None:
    """The update failed: no flip, slot b not adopted, the verified manifest removed."""
    assert "VERIFIED True" in out, (out, error)
    assert "UpdateFailed" in error and why in error, (out, error)
    # no flip: slot a stays active (the record may now hold the app the board was bound to at
    # this first check: docs/board.md, App binding)
    state = read_state(stager.flash)
    assert state is None or state["active"] == "a", state
    assert not (stager.flash / "ota" / "slot_b.lst").exists()
    assert not (stager.flash / "ota" / "offer.json").exists()


_LOSE_LAST_LINE = """
with open("/ota/offer.lst", "rb") as f:
    lines = f.read().split(b"\\n")
with open("/ota/offer.lst", "wb") as f:
    f.write(b"\\n".join(lines[:-2]) + b"\\n")
"""
_CUT_LAST_NEWLINE = """
with open("/ota/offer.lst", "rb") as f:
    text = f.read()
with open("/ota/offer.lst", "wb") as f:
    f.write(text[:-1])
"""
_ONE_LINE_MORE = """
with open("/ota/offer.lst", "rb") as f:
    first = f.readline()
with open("/ota/offer.lst", "ab") as f:
    f.write(first[:first.rindex(b" ") + 1] + b"extra.txt\\n")
"""


@pytest.mark.parametrize(("damage", "why"), [
    (_LOSE_LAST_LINE, "verify failed: z.txt"),
    (_CUT_LAST_NEWLINE, "is cut short or over 309 bytes"),
    (_ONE_LINE_MORE, "not in the manifest: extra.txt"),
], ids=["a-line-lost", "last-line-cut", "a-line-more"])
def test_a_staged_slot_that_is_not_the_manifest_is_not_adopted(stager, damage, why):
    # The offer list drives staging; the slot is judged by the manifest itself: a file it
    # misses, or one it holds beyond the manifest, fails the update and the old slot stays.
    files = {"app_main.py": b"print('APP')\n", "lib/a.py": b"A = 1\n", "z.txt": b"zzz\n"}
    envelope, manifest = stager.release(files, publish=False)
    out, error = stager.stage(envelope, manifest, damage)
    _refused(stager, out, error, why)


def test_the_stager_adopts_an_intact_release(stager):
    files = {"app_main.py": b"print('APP')\n", "lib/a.py": b"A = 1\n", "z.txt": b"zzz\n"}
    envelope, manifest = stager.release(files, publish=False)
    _adopted(stager, manifest, *stager.stage(envelope, manifest))


# -- the properties -------------------------------------------------------------------------

# Each path as the manifest carries it (a JSON string, non-ASCII escaped as json.dumps writes
# it), read through jscan as the board reads a file entry, then the board's path rule.
_VERDICTS = """
from ota import jscan, rules, trust
for text in TEXTS:
    doc = jscan.open_doc(text, "path")
    path = doc.load(0, len(text))
    try:
        rules.check_path(path)
        print("ok", len(path.encode()))
    except trust.TrustError as e:
        print(type(e).__name__)
"""
_any_text = st.text(st.one_of(
    st.sampled_from("a/.\\ \x00\x1f\x7f\u00e9\u6587\U0001f600\ud800\udc00"),
    st.characters(), st.characters(min_codepoint=0x10000)), max_size=70)


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=st.lists(st.one_of(_any_text, _any_text.map(lambda t: t * 4)), min_size=1,
                      max_size=8))
def test_host_and_board_give_every_path_the_same_verdict_and_byte_length(stager, paths):
    texts = [json.dumps(p).encode() for p in paths]
    out, error = stager.run(_VERDICTS.replace("TEXTS", repr(texts)))
    assert error == "", error
    expected = []
    for path in (json.loads(text) for text in texts):  # as the host's verifier reads them
        try:
            check_path(path)
            expected.append(f"ok {len(path.encode())}")
        except MalformedError:
            expected.append("MalformedError")
    assert out.splitlines() == expected, paths


_EXCLUDED_NAMES = {".git", "__pycache__", ".DS_Store", ".otaignore"}  # never bundled


def _char() -> st.SearchStrategy[str]:
    # Every Unicode scalar the rules allow, weighted towards the byte widths that matter:
    # 1 (ASCII, with the space and dots), 2, 3 (CJK) and 4 (astral: escaped as pairs).
    return st.one_of(
        st.sampled_from("aZ09._- ~'"),
        st.characters(min_codepoint=0x80, max_codepoint=0x7FF),
        st.characters(min_codepoint=0x800, max_codepoint=0xFFFF, exclude_categories=("Cs",)),
        st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),
        st.characters(min_codepoint=0x20, exclude_categories=("Cs",),
                      exclude_characters="/\\\x7f"),
    ).filter(lambda c: c >= " " and c != "\x7f" and c not in "/\\")


_segment = st.text(_char(), min_size=1, max_size=24).filter(
    lambda s: s not in (".", "..") and s not in _EXCLUDED_NAMES)


def _fill(path: str, pad: bool) -> str:
    # Some paths exactly at the limit: the last segment padded with ASCII to 128 bytes.
    size = len(path.encode())
    return path + "p" * (MAX_PATH - size) if pad and size < MAX_PATH else path


_path = st.builds(_fill, st.lists(_segment, min_size=1, max_size=5).map("/".join),
                  st.booleans()).filter(
    lambda p: len(p.encode()) <= MAX_PATH and not p.endswith(".pyc"))
_deep = st.integers(min_value=1, max_value=MAX_PATH // 2).map(
    lambda n: "/".join(["d"] * (n - 1) + ["f" * (MAX_PATH - 2 * (n - 1))]))


def _accepted(paths: list[str]) -> list[str]:
    """The paths that can be files of one slot together with app_main.py, in order."""
    kept = ["app_main.py"]
    for path in paths:
        try:
            check_path(path)
            check_path_set([*kept, path])
        except MalformedError:
            continue
        kept.append(path)
    return kept


_release_files = st.builds(
    lambda paths, contents: {p: contents[i % len(contents)] for i, p in enumerate(paths)},
    st.lists(st.one_of(_path, _deep), min_size=1, max_size=6).map(_accepted),
    # few contents, so files share blobs; some compress (deflate), some do not
    st.lists(st.one_of(st.binary(max_size=64), st.just(b"over the air " * 30)),
             min_size=1, max_size=3))


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(files=_release_files)
def test_any_path_set_the_host_accepts_ends_as_exactly_the_slot_the_manifest_names(
        stager, files):
    files = dict(files)
    files["app_main.py"] = b"print('APP')\n"
    envelope, manifest = stager.release(files, publish=True)  # build, sign, server accepts
    assert sorted(e.path for e in manifest.files) == sorted(files)
    _adopted(stager, manifest, *stager.stage(envelope, manifest))


# A few path sets through whole boards: download (pack, part files, rename into the slot),
# slot list, check, flip, trial boot and confirm.
WHOLE_BOARD_PATHS = [
    ["d/" + "\u6587" * 42, "\u00e9t\u00e9/\U0001d11e \u00c9.py", "d2/\u00a0\u0085\u2028.txt"],
    ["/".join(["d"] * 63 + ["f"]), ASTRAL_AT_LIMIT[:-2] + "\u00e9"],
]


@pytest.mark.parametrize("paths", WHOLE_BOARD_PATHS, ids=["cjk-latin-astral", "deep-astral"])
def test_whole_boards_install_non_ascii_and_deep_paths(bench, paths):
    assert all(len(p.encode()) <= MAX_PATH for p in paths)
    files = small_app("1.1.0", {p: f"{p}\n".encode() * (i + 1) for i, p in enumerate(paths)})
    flash, result = bench.install(files)
    _installed(flash, result, files)


@settings(max_examples=WHOLE_BOARD_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(files=_release_files)
def test_whole_boards_install_any_path_set_the_host_accepts(bench, files):
    files = small_app("1.1.0", {p: data for p, data in files.items() if p != "app_main.py"})
    try:
        check_path_set(list(files))
    except MalformedError:
        return  # a random path clashed with one of small_app's: not a release
    flash, result = bench.install(files)
    _installed(flash, result, files)
