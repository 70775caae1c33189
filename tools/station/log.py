"""The station log: one record per board the station touched, success or failure.

Two formats, chosen by the file name: `.jsonl` (one JSON object a line, append-only, easy to
ship) or anything else as SQLite (one table, `boards`, easy to query). A record holds who
(station, operator), where (port), what (MAC, chip, flash size, firmware SHA-256, device id,
public-key fingerprint, method, client layout), when (per-step start/end times) and the
outcome. It never holds a private key or a secret: `BoardRecord` has no field that could
carry one.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

OUTCOMES = ("provisioned", "failed")


@dataclass
class BoardRecord:
    station: str
    operator: str
    port: str
    method: str
    profile: str
    client: str = "files"  # the client layout: "files" (on the filesystem) or "romfs"
    outcome: str = "failed"
    started: float = 0.0  # Unix seconds
    finished: float = 0.0
    chip: str | None = None
    mac: str | None = None
    flash_size: str | None = None
    firmware_sha256: str | None = None
    micropython: str | None = None  # the MicroPython version the board runs or was flashed with
    device_id: str | None = None
    key_fingerprint: str | None = None  # keyid: hex SHA-256 of the public key's DER SPKI
    registered: bool = False
    revoked: list[str] = field(default_factory=list)  # key fingerprints revoked on the server
    failed_step: str | None = None
    error: str | None = None
    steps: dict[str, list[float]] = field(default_factory=dict)  # step -> [start, end]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BoardRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_COLUMNS = [f.name for f in fields(BoardRecord)]
_JSON_COLUMNS = ("revoked", "steps")
_DEFAULTS = {f.name: f.default for f in fields(BoardRecord)}


def _sql_default(column: str) -> str:
    """The SQL literal of a field's default, for a column added to an older log (the names
    and values are this module's own, never input)."""
    default = _DEFAULTS[column]
    if isinstance(default, bool):
        return str(int(default))
    if isinstance(default, int | float):
        return repr(default)
    if isinstance(default, str):
        return "'" + default.replace("'", "''") + "'"
    return "NULL"


class StationLog:
    """Append-only log of BoardRecords at `path` (JSONL or SQLite by suffix)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.jsonl = self.path.suffix in (".jsonl", ".ndjson")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.jsonl:
            with self._db() as db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS boards (id INTEGER PRIMARY KEY, "
                    + ", ".join(_COLUMNS) + ")"
                )
                # A log begun by an older station lacks the newer fields: add them, keep its
                # rows (which read back with the field's default, what those boards got).
                have = {row[1] for row in db.execute("PRAGMA table_info(boards)")}
                for column in _COLUMNS:
                    if column not in have:
                        try:
                            db.execute(f"ALTER TABLE boards ADD COLUMN {column} "
                                       f"DEFAULT {_sql_default(column)}")
                        except sqlite3.OperationalError as err:  # another station was first
                            if "duplicate column" not in str(err):
                                raise

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """One connection per operation, committed and closed (the log is written rarely)."""
        with closing(sqlite3.connect(self.path, timeout=30)) as db, db:
            yield db

    def append(self, record: BoardRecord) -> None:
        data = record.to_json()
        if self.jsonl:
            line = json.dumps(data, sort_keys=True) + "\n"
            # One write of one line with O_APPEND: stations sharing a log never interleave.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            return
        values = [json.dumps(data[c]) if c in _JSON_COLUMNS else data[c] for c in _COLUMNS]
        with self._db() as db:
            db.execute(
                f"INSERT INTO boards ({', '.join(_COLUMNS)}) "  # noqa: S608 - fixed column names
                f"VALUES ({', '.join('?' for _ in _COLUMNS)})",
                values,
            )

    def records(self) -> list[BoardRecord]:
        if self.jsonl:
            if not self.path.exists():
                return []
            lines = self.path.read_text(encoding="utf-8").splitlines()
            return [BoardRecord.from_json(json.loads(line)) for line in lines if line.strip()]
        with self._db() as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM boards ORDER BY id").fetchall()  # noqa: S608
        out = []
        for row in rows:
            data = dict(zip(_COLUMNS, row, strict=True))
            for column in _JSON_COLUMNS:
                data[column] = json.loads(data[column])
            data["registered"] = bool(data["registered"])
            out.append(BoardRecord.from_json(data))
        return out
