"""Power cut at every block program and erase of the reference update, on littlefs and on FAT.

Each cut point N is a fresh board (bench/reference_app.py's 1.0.0, client .mpy in ROMFS, the
reference update 1.1.0 published) on the virtual board's flash block device (ESP32 `vfs`
geometry): power cut just before its Nth block program or erase (or, torn, in the middle of
it), then powered up with no network: the filesystem is mounted again as the port does
(littlefs' own recovery; FAT as it is) and the board must boot and run one whole version, the
old or the new, with that version's exact file set in its active slot. Then, network back,
whether it ends confirmed on 1.1.0.

    python bench/block_cuts.py [STRIDE [TORN_EVERY [lfs2,fat]]]   # full run: 1 10 (docs/board.md)
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))
if str(PROJECT_ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))

from bench.bench_board import Bench  # noqa: E402
from bench.reference_app import bundle_files  # noqa: E402
from tools.board_files import app_hashes, read_state, slot_files  # noqa: E402
from tools.local_server import LocalServer  # noqa: E402
from tools.micropython import find_micropython  # noqa: E402
from tools.virtual_board import (  # noqa: E402
    Torn,
    VirtualBoard,
    flash_image_path,
    rom_image_path,
)
from tools.virtual_board.flash import FlashKind  # noqa: E402

_TIMEOUT_S = 60.0
# A torn program writes this many bytes of its buffer (under littlefs' 128-byte cache line and
# FAT's 4096-byte sector); the rest alternates between erased flash and the bytes as before.
TORN_BYTES = 20


@dataclass
class Tally:
    """The outcome of the cut points tried on one filesystem."""

    kind: str
    operations: int = 0  # block programs and erases of the uncut update
    tried: int = 0  # cut points tried, clean and torn
    torn: int = 0  # of which torn
    old: int = 0  # booted 1.0.0, whole
    new: int = 0  # booted 1.1.0, whole
    neither: int = 0  # booted no whole version: bricked
    recovered: int = 0  # network back: ended confirmed on 1.1.0
    bricked_at: list[str] = field(default_factory=list)  # "N" or "N torn-ff": where
    unrecovered_at: list[str] = field(default_factory=list)  # not on 1.1.0 with network back

    def summary(self) -> dict[str, object]:
        return {"fs": self.kind, "operations": self.operations, "tried": self.tried,
                "torn": self.torn, "old": self.old, "new": self.new, "neither": self.neither,
                "recovered": self.recovered, "bricked_at": self.bricked_at[:20],
                "unrecovered_at": self.unrecovered_at[:20]}


def _version(flash: Path, output: str, apps: dict[str, dict[str, str]]) -> str | None:
    """The version the board ran, if it ran one whole: printed, and the active slot holding
    exactly that version's files; None otherwise. With no valid state record the board boots
    slot a (the factory state, bootloader_py/ota/state.py)."""
    printed = [line.split()[1] for line in output.splitlines() if line.startswith("APP ")]
    state = read_state(flash)
    if not printed or printed[-1] not in apps:
        return None
    active = "a" if state is None else state["active"]
    if slot_files(flash, active) != apps[printed[-1]]:
        return None
    return printed[-1]


def _discard(flash: Path) -> None:
    shutil.rmtree(flash, ignore_errors=True)
    for sibling in (flash_image_path(flash), rom_image_path(flash),
                    flash.with_name(flash.name + ".flash.json")):
        sibling.unlink(missing_ok=True)


def try_cut(bench: Bench, kind: FlashKind, cut: int, torn: Torn | None,
            apps: dict[str, dict[str, str]]) -> tuple[str | None, bool, str]:
    """One cut point on a fresh board: (version it booted alone or None, whether it ended
    confirmed on 1.1.0 with the network back, the output of the boot after the cut)."""
    flash = bench.board(bench.server.url, "update")
    try:
        board = VirtualBoard(flash, micropython=bench.micropython, flash=kind)
        cut_run = board.run(max_boots=4, timeout=_TIMEOUT_S, cut_at=cut, torn=torn)
        if cut_run.ended != "power_cut":
            raise AssertionError(f"{kind} cut {cut}: the update ended {cut_run.ended} before "
                                 f"the cut:\n{cut_run.output[-2000:]}")
        alone = VirtualBoard(flash, micropython=bench.micropython, flash=kind,
                             wifi_ok=False).run(max_boots=2, timeout=_TIMEOUT_S)
        version = (_version(flash, alone.boots[-1].output, apps)
                   if alone.ended == "exit" else None)
        online = board.run(max_boots=4, timeout=_TIMEOUT_S)
        state = read_state(flash)
        recovered = (online.ended == "exit"
                     and _version(flash, online.boots[-1].output, apps) == "1.1.0"
                     and state is not None and state["ok"] == 1)
        return version, recovered, alone.output
    finally:
        _discard(flash)


def count_operations(bench: Bench, kind: FlashKind) -> int:
    """Block programs and erases of the uncut reference update on `kind`."""
    flash = bench.board(bench.server.url, "update")
    try:
        run = VirtualBoard(flash, micropython=bench.micropython, flash=kind
                           ).run(max_boots=4, timeout=_TIMEOUT_S)
        if [b.ended for b in run.boots] != ["reset", "exit"] or "APP 1.1.0" not in run.output:
            raise AssertionError(f"the uncut update on {kind} failed:\n{run.output[-2000:]}")
        return run.fs_ops
    finally:
        _discard(flash)


def enumerate_cuts(bench: Bench, kind: FlashKind, stride: int = 1, torn_every: int = 0,
                   points: list[int] | None = None) -> Tally:
    """Cut the reference update on `kind` at every `stride`-th block operation (or at
    `points`), and torn at every `torn_every`-th point tried (0: none). `bench` is set up."""
    apps = {"1.0.0": app_hashes(bench.old_files),
            "1.1.0": app_hashes(bundle_files(bench.new_bundle))}
    tally = Tally(kind, operations=count_operations(bench, kind))
    chosen = points if points is not None else list(range(1, tally.operations + 1, stride))
    for i, cut in enumerate(chosen):
        cuts: list[Torn | None] = [None]
        if torn_every and i % torn_every == 0:
            cuts.append(Torn(TORN_BYTES, "ff" if (i // torn_every) % 2 == 0 else "old"))
        for torn in cuts:
            version, recovered, _ = try_cut(bench, kind, cut, torn, apps)
            tally.tried += 1
            tally.torn += torn is not None
            if version == "1.0.0":
                tally.old += 1
            elif version == "1.1.0":
                tally.new += 1
            else:
                tally.neither += 1
                tally.bricked_at.append(f"{cut}" + ("" if torn is None else f" torn-{torn.rest}"))
            tally.recovered += recovered
            if not recovered:
                tally.unrecovered_at.append(f"{cut}" + ("" if torn is None
                                                        else f" torn-{torn.rest}"))
    return tally


def main(argv: list[str]) -> int:
    stride = int(argv[0]) if argv else 1
    torn_every = int(argv[1]) if len(argv) > 1 else 10
    kinds = cast(list[FlashKind], argv[2].split(",") if len(argv) > 2 else ["lfs2", "fat"])
    with tempfile.TemporaryDirectory(prefix="block-cuts-") as tmp:
        bench = Bench(Path(tmp), find_micropython())
        with LocalServer(Path(tmp) / "data", Path(tmp) / "root.json") as server:
            bench.setup(server)
            tallies = []
            for kind in kinds:
                tallies.append(enumerate_cuts(bench, kind, stride, torn_every))
                print(json.dumps({**tallies[-1].summary(),
                                  "bricked_at": tallies[-1].bricked_at,
                                  "unrecovered_at": tallies[-1].unrecovered_at}), flush=True)
    print(json.dumps({"R1_block_cuts": sum(t.tried for t in tallies),
                      "R1_bricked": sum(t.neither for t in tallies), "stride": stride,
                      "torn_every": torn_every}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
