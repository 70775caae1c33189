"""The operator's view: one live line per port (rich), then a summary.

On a terminal the lines update in place; otherwise (CI, a log file, tests) each board's end is
printed as one plain line, so the output stays readable. Nothing shown here comes from a
secret: records carry no secrets and their error texts were redacted in the worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from tools.station.log import BoardRecord
from tools.station.station import StationView


@dataclass
class _Line:
    step: str = "waiting"
    done: int = 0
    total: int = 0
    outcome: str | None = None
    detail: str = ""
    started: float = field(default_factory=time.monotonic)


class LiveView(StationView):
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=False)
        self.lines: dict[str, _Line] = {}
        self._live: Live | None = None

    def started(self, labels: list[str]) -> None:
        self.lines = {label: _Line() for label in labels}
        if self.console.is_terminal:
            self._live = Live(self._table(), console=self.console, refresh_per_second=8,
                              transient=False)
            self._live.start()
        else:
            self.console.print(f"station: provisioning {len(labels)} board(s): "
                               + ", ".join(labels))

    def step(self, label: str, step: str) -> None:
        line = self.lines.setdefault(label, _Line())
        line.step, line.done, line.total = step, 0, 0
        self._refresh()

    def progress(self, label: str, done: int, total: int) -> None:
        line = self.lines.setdefault(label, _Line())
        line.done, line.total = done, total
        self._refresh()

    def finished(self, record: BoardRecord) -> None:
        line = self.lines.setdefault(record.port, _Line())
        line.outcome = record.outcome
        line.step = "done" if record.outcome == "provisioned" else f"{record.failed_step}"
        if record.outcome == "provisioned":
            line.detail = (f"{record.device_id}  key {(record.key_fingerprint or '')[:16]}  "
                           f"client {record.client}")
        else:
            line.detail = f"{record.failed_step}: {record.error}"
        self._refresh()
        if self._live is None:
            mark = "ok  " if record.outcome == "provisioned" else "FAIL"
            self.console.print(f"{mark} {record.port}  {line.detail}", markup=False,
                               highlight=False, soft_wrap=True)

    def summary(self, records: list[BoardRecord]) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()
            self._live = None
        good = sum(r.outcome == "provisioned" for r in records)
        bad = len(records) - good
        style = "green" if not bad else "red"
        self.console.print(f"[{style}]station: {good} provisioned, {bad} failed[/{style}]",
                           highlight=False)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    def _table(self) -> Table:
        table = Table(show_header=True, header_style="bold", expand=False)
        for column in ("port", "step", "progress", "result"):
            table.add_column(column)
        for label, line in self.lines.items():
            percent = f"{100 * line.done // line.total}%" if line.total else ""
            if line.outcome is None:
                result = f"{time.monotonic() - line.started:.1f} s"
            elif line.outcome == "provisioned":
                result = f"[green]ok[/green] {escape(line.detail)}"
            else:
                result = f"[red]failed[/red] {escape(line.detail)}"
            table.add_row(label, line.step, percent, result)
        return table
