"""Whether a release can go to the boards it names, checked before anything is signed or
uploaded: each board name is one fleet.yaml declares, and the app fits each board's filesystem
partition twice (docs/operations.md, "Publishing").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tools.errors import UserError
from tools.fleet import Board, Fleet, FleetError, load_fleet

# Where `ota publish` looks for the fleet when --fleet is not given.
DEFAULT_FLEET = Path("fleet.yaml")


def fleet_for_publish(path: Path | None) -> Fleet | None:
    """The fleet `ota publish` checks against: `path`, else ./fleet.yaml when there is one,
    else None (no check). Raises UserError when the file is invalid."""
    if path is None:
        if not DEFAULT_FLEET.is_file():
            return None
        path = DEFAULT_FLEET
    try:
        return load_fleet(path)
    except FleetError as err:
        raise UserError(str(err)) from err


def known_boards(fleet: Fleet, names: Sequence[str]) -> list[Board]:
    """The fleet's boards of `names`. Raises UserError naming the first unknown one and
    listing those the fleet knows."""
    out = []
    for board in names:
        if board not in fleet.boards:
            raise UserError(f"unknown board {board!r}: {fleet.path} declares "
                            f"{', '.join(sorted(fleet.boards)) or 'no boards'}")
        out.append(fleet.boards[board])
    return out


def check_fits(boards: Iterable[Board], app_bytes: int, app: str) -> None:
    """Refuse an app that cannot fit a board's filesystem partition.

    An update stages the new slot beside the running one, so a board holds the app twice
    (A/B slots): twice its installed size must fit the partition. A board without a declared
    partition (`fs_size` 0, e.g. the virtual board) is not checked. Raises UserError naming
    the board, the partition and the app's size.
    """
    for board in boards:
        if board.fs_size and 2 * app_bytes > board.fs_size:
            raise UserError(
                f"{app} is {app_bytes} bytes installed; board {board.name!r} has a "
                f"{board.fs_size}-byte filesystem partition (fleet.yaml fs_size), which must "
                f"hold the app twice (the running slot and the one an update stages): at most "
                f"{board.fs_size // 2} bytes")
