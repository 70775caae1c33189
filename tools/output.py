"""One output style for the command line's read commands (docs/operations.md, "Output").

A read command shows either an aligned table with a header row, for people, or JSON, for scripts
(`--json`). Tables use rich without colour when stdout is not a terminal or `NO_COLOR` is set;
times are ISO 8601 UTC everywhere (tools/timefmt.py).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click

from tools.timefmt import iso_utc


@dataclass(frozen=True)
class Column:
    """One column of a table: its header, the row's key, and how a value is shown."""

    header: str
    key: str
    show: Callable[[Any], str] = str
    align: str = "left"  # "left" or "right" (numbers)


def when(value: Any) -> str:
    """A column formatter for Unix seconds: ISO 8601 UTC, `-` for none."""
    return iso_utc(int(value)) if value is not None else "-"


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """The `--json` flag every read command takes."""
    return click.option("--json", "as_json", is_flag=True,
                        help="print JSON for scripts instead of a table")(func)


def echo_json(doc: Any) -> None:
    """Print a JSON document (sorted keys, indented) on stdout."""
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


def _plain() -> bool:
    return bool(os.environ.get("NO_COLOR")) or not sys.stdout.isatty()


def print_table(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]],
                *, title: str | None = None, empty: str = "none") -> None:
    """Print rows as an aligned table with a header row; `empty` when there are no rows."""
    from rich.console import Console
    from rich.table import Table

    if title:
        click.echo(title)
    if not rows:
        click.echo(f"  ({empty})")
        return
    plain = _plain()
    table = Table(box=None, show_edge=False, pad_edge=False, header_style=None if plain
                  else "bold", highlight=False)
    for col in columns:
        table.add_column(col.header, justify="right" if col.align == "right" else "left",
                         no_wrap=True, overflow="fold")
    for row in rows:
        value = [row.get(col.key) for col in columns]
        table.add_row(*("-" if v is None else col.show(v) for col, v in zip(columns, value,
                                                                             strict=True)))
    # A pipe gets a table as wide as its content, never cut at 80 columns.
    console = Console(no_color=plain, highlight=False, soft_wrap=True,
                      width=None if not plain else 10_000, force_terminal=False if plain
                      else None)
    with console.capture() as capture:
        console.print(table)
    click.echo("\n".join(line.rstrip() for line in capture.get().splitlines()))


def emit(doc: Any, columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], *,
         as_json: bool, title: str | None = None, empty: str = "none") -> None:
    """A read command's answer: `doc` as JSON when asked, else `rows` as a table."""
    if as_json:
        echo_json(doc)
    else:
        print_table(columns, rows, title=title, empty=empty)
