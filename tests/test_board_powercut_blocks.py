"""Power cut at block programs and erases of the reference update (bench/reference_app.py), on
littlefs and on FAT on the virtual board's flash block device (bench/block_cuts.py): after the
cut the board powers up with no network and must boot one whole version, old or new; with the
network back it ends confirmed on the new one. The suite runs a sample of the cut points (every
STRIDE-th, a torn write at every TORN_EVERY-th point tried); the full enumeration, every
program and erase, is `python bench/block_cuts.py` and its table is in docs/board.md."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.micropython import PROJECT_ROOT

if str(PROJECT_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(PROJECT_ROOT))

from bench.bench_board import Bench
from bench.block_cuts import Tally, enumerate_cuts
from tools.local_server import LocalServer

# About 25 cut points per filesystem (each a fresh board, the cut, a boot alone, a boot online),
# spread over the whole update: download, staging, the flip, the trial boot, the confirm.
STRIDE = 37
TORN_EVERY = 4


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Bench]:
    work = tmp_path_factory.mktemp("block-cuts")
    bench = Bench(Path(work), micropython)
    with LocalServer(work / "data", work / "root.json") as server:
        bench.setup(server)
        yield bench


def _sampled(bench: Bench, kind: str) -> Tally:
    tally = enumerate_cuts(bench, kind, STRIDE, TORN_EVERY)
    summary = tally.summary()
    assert tally.operations > 300, summary  # the update programs and erases that many blocks
    assert tally.tried == len(range(1, tally.operations + 1, STRIDE)) + tally.torn, summary
    assert tally.torn > 0, summary
    assert tally.old + tally.new + tally.neither == tally.tried, summary
    assert tally.old > 0 and tally.new > 0, summary  # cuts fell on both sides of the flip
    return tally


def test_on_littlefs_a_cut_at_any_block_program_or_erase_leaves_a_whole_app_that_updates(
        bench: Bench) -> None:
    tally = _sampled(bench, "lfs2")
    assert tally.neither == 0, tally.summary()
    assert tally.recovered == tally.tried, tally.summary()


def _between_erase_and_program(point: str) -> bool:
    """A FAT sector write is an erase then a program (ports/esp32/esp32_partition.c): the
    even operations are the programs, so a clean cut at one leaves its sector erased."""
    cut, _, torn = point.partition(" ")
    return bool(torn) or int(cut) % 2 == 0


def test_on_fat_only_a_cut_that_leaves_a_sector_erased_or_torn_loses_anything(
        bench: Bench) -> None:
    """FAT as it is (docs/board.md, Flash and power cuts): a clean cut before a sector's erase
    loses nothing; what a cut loses, it loses through a sector erased and not yet programmed,
    or torn. A board that booted an app whole updates once back online: the sectors an update
    rewrites hold nothing of its identity (/ota_id) and at most one copy of its boot state."""
    tally = _sampled(bench, "fat")
    summary = tally.summary()
    assert all(_between_erase_and_program(p) for p in tally.bricked_at), summary
    assert all(_between_erase_and_program(p) for p in tally.unrecovered_at), summary
    assert set(tally.unrecovered_at) <= set(tally.bricked_at), summary
