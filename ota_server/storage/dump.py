"""The portable dump of a server's storage, written by `ota db export` and read by `ota db
import` (ota_server/storage/transfer.py; docs/operations.md, "Moving an embedded server to
PostgreSQL + S3").

A dump is a directory, the same whichever backends it came from:

    manifest.json          {"format": "mpota-dump", "format_version": 1, "schema_version": N,
                            "source": ..., "exported_at": T, "tables": {NAME: {"file": ...,
                            "rows": N, "sha256": HEX}}, "blobs": {"count": N, "bytes": N}}
    NAME.jsonl             one table: one JSON object per line, one line per row, keyed by
                           column name (keys sorted), rows in primary-key order
    blobs/aa/<sha256>      every blob a release refers to, named by its SHA-256

Values are JSON: integers, strings and null as they are; bytes (envelopes, public keys) as
standard base64; lists of strings (a release's boards and signers, a board's tags) as arrays;
a rollout's policy as an object. The columns are those of the schema version the manifest
names (both backends' migrations share their numbers), so a dump is imported by the mpota
version that wrote it, or one at the same schema version.

Reading is strict, because a dump crosses machines and hands: every line is parsed and every
value checked against its column before anything is imported, and a table file whose row count
or SHA-256 differs from the manifest's (cut short, edited) is refused. Errors name the file and
the line.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ota_server.storage.blobs import SHA256_HEX

FORMAT = "mpota-dump"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BLOB_DIR = "blobs"
_CHUNK = 1 << 20


class DumpError(Exception):
    """A dump that cannot be written or read; the message names the file (and line)."""


class Kind(enum.Enum):
    """What a column holds, whatever each backend calls it."""

    INT = "int"
    TEXT = "text"
    BYTES = "bytes"  # SQLite BLOB, PostgreSQL BYTEA; base64 in the dump
    TEXT_LIST = "text list"  # SQLite JSON text; PostgreSQL JSONB or TEXT[]
    OBJECT = "object"  # SQLite JSON text; PostgreSQL JSONB


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    nullable: bool = False
    bits: int = 64  # an INT's width in the narrower backend (PostgreSQL INTEGER: 32)


@dataclass(frozen=True)
class Table:
    """One table as the dump carries it: its columns, the order of its rows, and the id
    column PostgreSQL generates (its identity sequence is moved past the imported ids)."""

    name: str
    columns: tuple[Column, ...]
    order_by: tuple[str, ...]
    identity: str | None = None

    @property
    def file(self) -> str:
        return f"{self.name}.jsonl"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _c(name: str, kind: Kind = Kind.INT, nullable: bool = False, bits: int = 64) -> Column:
    return Column(name, kind, nullable, bits)


_T, _B = Kind.TEXT, Kind.BYTES

# Every table of the schema (ota_server/storage/migrations and pg_migrations), in an order
# that inserts referenced rows first. A schema change adds its columns here. Not
# deployment_tallies (version 8): it is derived, and the triggers on `deployments` rebuild it
# from the imported rows as they go in.
TABLES: tuple[Table, ...] = (
    Table("tokens", (_c("id"), _c("name", _T), _c("token_hash", _T), _c("created"),
                     _c("revoked", nullable=True), _c("scope", _T)), ("id",), "id"),
    Table("roots", (_c("version"), _c("envelope", _B), _c("created")), ("version",)),
    Table("releases", (_c("id"), _c("app", _T), _c("version", _T), _c("sequence"),
                       _c("boards", Kind.TEXT_LIST), _c("envelope", _B), _c("created"),
                       _c("expires"), _c("duplicate_of", nullable=True),
                       _c("yanked", nullable=True), _c("signers", Kind.TEXT_LIST)),
          ("id",), "id"),
    Table("release_blobs", (_c("release_id"), _c("blob", _T), _c("size")),
          ("release_id", "blob")),
    Table("sequence_reservations", (_c("app", _T), _c("version", _T), _c("sequence"),
                                    _c("created")), ("app", "version")),
    Table("devices", (_c("device_id", _T), _c("public_key", _B), _c("board", _T),
                      _c("tags", Kind.TEXT_LIST), _c("channel", _T), _c("bucket", bits=32),
                      _c("counter"), _c("created"), _c("revoked", nullable=True),
                      _c("app", _T, True), _c("version", _T, True),
                      _c("sequence", nullable=True), _c("root_version", nullable=True),
                      _c("micropython", _T, True), _c("mem_free", nullable=True),
                      _c("slot", _T, True), _c("last_seen", nullable=True),
                      _c("last_status", _T, True), _c("last_error", _T, True),
                      _c("records_counter")),
          ("device_id",)),
    Table("channels", (_c("name", _T), _c("base_release_id", nullable=True)), ("name",)),
    Table("rollouts", (_c("id"), _c("channel", _T), _c("release_id"),
                       _c("policy", Kind.OBJECT), _c("stage", bits=32), _c("state", _T),
                       _c("reason", _T, True), _c("created"), _c("updated")), ("id",), "id"),
    Table("deployments", (_c("device_id", _T), _c("release_id"), _c("status", _T),
                          _c("reason", _T, True), _c("updated"), _c("channel", _T)),
          ("device_id", "release_id")),
    Table("deployment_history", (_c("id"), _c("device_id", _T), _c("release_id"),
                                 _c("status", _T), _c("reason", _T, True), _c("at")),
          ("id",), "id"),
    Table("audit", (_c("id"), _c("at"), _c("actor", _T), _c("scope", _T), _c("action", _T),
                    _c("target", _T), _c("status", bits=32), _c("outcome", _T)), ("id",), "id"),
)
TABLES_BY_NAME = {t.name: t for t in TABLES}


@dataclass(frozen=True)
class DumpSummary:
    """What a dump holds: its schema version, rows per table, and its blobs."""

    schema_version: int
    rows: dict[str, int] = field(default_factory=dict)
    blobs: int = 0
    blob_bytes: int = 0

    def describe(self) -> str:
        return (f"schema {self.schema_version}, {self.rows.get('releases', 0)} release(s), "
                f"{self.rows.get('devices', 0)} board(s), {self.rows.get('rollouts', 0)} "
                f"rollout(s), {self.rows.get('tokens', 0)} token(s), "
                f"{self.rows.get('audit', 0)} audit entries, {self.blobs} blob(s) of "
                f"{self.blob_bytes} bytes")


# -- values ------------------------------------------------------------------------------------

def check_value(column: Column, value: Any) -> Any:
    """`value` if it is what `column` holds in its canonical Python form (int, str, bytes,
    list of str, dict; None where nullable) and fits both backends (an integer in the
    column's width, no NUL character in text: PostgreSQL stores neither); ValueError saying
    what is wrong otherwise."""
    if value is None:
        if column.nullable:
            return None
        raise ValueError(f"{column.name} must not be null")
    kind = column.kind
    if kind is Kind.INT:
        top = 2 ** (column.bits - 1)
        if type(value) is not int or not -top <= value < top:
            raise ValueError(f"{column.name} must be a {column.bits}-bit integer, "
                             f"got {_show(value)}")
    elif kind is Kind.TEXT:
        if type(value) is not str or "\x00" in value:
            raise ValueError(f"{column.name} must be a string without NUL, got {_show(value)}")
    elif kind is Kind.BYTES:
        if type(value) is not bytes:
            raise ValueError(f"{column.name} must be bytes, got {_show(value)}")
    elif kind is Kind.TEXT_LIST:
        if type(value) is not list or any(type(item) is not str or "\x00" in item
                                          for item in value):
            raise ValueError(f"{column.name} must be a list of strings without NUL, "
                             f"got {_show(value)}")
    elif type(value) is not dict:
        raise ValueError(f"{column.name} must be an object, got {_show(value)}")
    return value


def check_row(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """The row with exactly the table's columns, each value checked (check_value); a
    release_blobs row must name its blob by SHA-256. ValueError otherwise."""
    names = set(row)
    wanted = set(table.column_names)
    if names != wanted:
        missing, extra = sorted(wanted - names), sorted(names - wanted)
        raise ValueError(f"a {table.name} row must have the columns {', '.join(table.column_names)}"
                         + (f"; missing {', '.join(missing)}" if missing else "")
                         + (f"; unknown {', '.join(extra)}" if extra else ""))
    out = {c.name: check_value(c, row[c.name]) for c in table.columns}
    if table.name == "release_blobs" and not SHA256_HEX.fullmatch(out["blob"]):
        raise ValueError(f"blob must be 64 lowercase hex digits, got {_show(out['blob'])}")
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def encode_row(table: Table, row: Mapping[str, Any]) -> bytes:
    """One dump line (JSON and a newline) for a checked row."""
    doc = {c.name: (base64.b64encode(row[c.name]).decode("ascii")
                    if c.kind is Kind.BYTES and row[c.name] is not None else row[c.name])
           for c in table.columns}
    # Keys sorted: PostgreSQL's JSONB keeps an object's keys in its own order, and the same
    # rows make the same dump whichever backend they came from.
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                      allow_nan=False).encode("utf-8") + b"\n"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode_row(table: Table, line: bytes) -> dict[str, Any]:
    """The checked row a dump line holds; ValueError saying what is wrong."""
    try:
        doc = json.loads(line.decode("utf-8"), object_pairs_hook=_unique_keys,
                         parse_constant=_no_constant)
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8: {err.reason}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err.msg} at column {err.colno}") from None
    if type(doc) is not dict:
        raise ValueError(f"a row must be a JSON object, got {type(doc).__name__}")
    for column in table.columns:
        if column.kind is Kind.BYTES and type(doc.get(column.name)) is str:
            try:
                doc[column.name] = base64.b64decode(doc[column.name], validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{column.name} is not base64") from None
    return check_row(table, doc)


# -- writing -----------------------------------------------------------------------------------

class DumpWriter:
    """Builds a dump in `.NAME.partial` beside `dest` and renames it to `dest` when finished,
    so a dump directory is always whole; `abort()` removes what was written."""

    def __init__(self, dest: Path):
        if dest.exists():
            raise DumpError(f"{dest} already exists; give a new directory")
        self.dest = dest
        self.scratch = dest.with_name(f".{dest.name}.partial")
        shutil.rmtree(self.scratch, ignore_errors=True)
        try:
            self.scratch.mkdir(mode=0o700, parents=True)
        except OSError as err:
            raise DumpError(f"cannot create {self.scratch}: {err.strerror}") from err
        self._tables: dict[str, dict[str, Any]] = {}
        self._blobs = 0
        self._blob_bytes = 0

    def table(self, table: Table) -> TableWriter:
        """A writer of `table`'s file; its close() records the file in the manifest."""
        return TableWriter(self, table)

    def _finished_table(self, table: Table, rows: int, sha256: str) -> None:
        self._tables[table.name] = {"file": table.file, "rows": rows, "sha256": sha256}

    def blob_writer(self, sha256: str) -> IO[bytes]:
        """A new file for the blob `sha256` (the caller checks the bytes it writes)."""
        path = self.scratch / BLOB_DIR / sha256[:2] / sha256
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "xb")

    def added_blob(self, size: int) -> None:
        self._blobs += 1
        self._blob_bytes += size

    def finish(self, schema_version: int, source: str) -> DumpSummary:
        """Write manifest.json and move the dump to `dest`."""
        missing = [t.name for t in TABLES if t.name not in self._tables]
        if missing:
            raise DumpError(f"dump incomplete: no {', '.join(missing)}")
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                    "schema_version": schema_version, "source": source,
                    "exported_at": int(time.time()), "tables": self._tables,
                    "blobs": {"count": self._blobs, "bytes": self._blob_bytes}}
        path = self.scratch / MANIFEST
        with open(path, "x", encoding="utf-8") as out:
            json.dump(manifest, out, indent=1, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.rename(self.scratch, self.dest)
        return DumpSummary(schema_version, {k: v["rows"] for k, v in self._tables.items()},
                           self._blobs, self._blob_bytes)

    def abort(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


class TableWriter:
    """Writes one table's rows, each checked (check_row), hashing the file as it grows."""

    def __init__(self, dump: DumpWriter, table: Table):
        self._dump = dump
        self._table = table
        self._out = open(dump.scratch / table.file, "xb")  # noqa: SIM115 -- closed by close()
        self._digest = hashlib.sha256()
        self.rows = 0

    def write(self, row: Mapping[str, Any]) -> None:
        """Add a row; ValueError when it does not fit the table (a damaged source)."""
        line = encode_row(self._table, check_row(self._table, row))
        self._digest.update(line)
        self._out.write(line)
        self.rows += 1

    def close(self) -> None:
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        self._dump._finished_table(self._table, self.rows, self._digest.hexdigest())


# -- reading -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _TableEntry:
    file: str
    rows: int
    sha256: str


class Dump:
    """A dump directory opened for reading: its manifest checked at open, its rows and blobs
    checked as they are read."""

    def __init__(self, path: Path):
        self.path = path
        manifest = self._read_manifest()
        self.schema_version: int = manifest["schema_version"]
        self.source: str = manifest["source"]
        self._tables: dict[str, _TableEntry] = manifest["tables"]

    def _read_manifest(self) -> dict[str, Any]:
        where = self.path / MANIFEST
        try:
            doc = json.loads(where.read_bytes().decode("utf-8"), object_pairs_hook=_unique_keys,
                             parse_constant=_no_constant)
        except FileNotFoundError:
            raise DumpError(f"{self.path} holds no {MANIFEST}: not a dump, or an export that "
                            "did not finish") from None
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise DumpError(f"{where}: not a dump manifest: {err}") from None
        if type(doc) is not dict or doc.get("format") != FORMAT:
            raise DumpError(f"{where}: not a dump manifest (format is not {FORMAT!r})")
        if doc.get("format_version") != FORMAT_VERSION:
            raise DumpError(f"{where}: dump format version {_show(doc.get('format_version'))}, "
                            f"this mpota reads version {FORMAT_VERSION}")
        if type(doc.get("schema_version")) is not int or type(doc.get("source")) is not str:
            raise DumpError(f"{where}: schema_version or source missing")
        tables = doc.get("tables")
        if type(tables) is not dict or set(tables) != set(TABLES_BY_NAME):
            raise DumpError(f"{where}: tables must be exactly {', '.join(TABLES_BY_NAME)}")
        entries = {}
        for name, entry in tables.items():
            ok = (type(entry) is dict and entry.get("file") == TABLES_BY_NAME[name].file
                  and type(entry.get("rows")) is int and entry["rows"] >= 0
                  and type(entry.get("sha256")) is str
                  and SHA256_HEX.fullmatch(entry["sha256"]) is not None)
            if not ok:
                raise DumpError(f"{where}: the entry of table {name} is malformed")
            entries[name] = _TableEntry(entry["file"], entry["rows"], entry["sha256"])
        doc["tables"] = entries
        return doc

    def rows(self, table: Table) -> Iterator[dict[str, Any]]:
        """The table's rows, each checked; DumpError naming the file and line at the first
        bad one, or naming the file when its row count or SHA-256 is not the manifest's
        (raised after its last row: a caller that must write nothing of a bad dump reads it
        whole first, as `check` does)."""
        entry = self._tables[table.name]
        where = self.path / entry.file
        digest = hashlib.sha256()
        count = 0
        try:
            stream = open(where, "rb")  # noqa: SIM115 -- the with below closes it
        except OSError as err:
            raise DumpError(f"{where}: cannot read: {err.strerror}") from err
        with stream:
            for number, line in enumerate(stream, start=1):
                digest.update(line)
                if not line.endswith(b"\n"):
                    raise DumpError(f"{where} line {number}: cut short (no newline)")
                try:
                    row = decode_row(table, line)
                except ValueError as err:
                    raise DumpError(f"{where} line {number}: {err}") from None
                count = number
                yield row
        if count != entry.rows:
            raise DumpError(f"{where}: {count} row(s), the manifest says {entry.rows}")
        if digest.hexdigest() != entry.sha256:
            raise DumpError(f"{where}: does not match its SHA-256 in {MANIFEST} (changed "
                            "after the export)")

    def blob_path(self, sha256: str) -> Path:
        return self.path / BLOB_DIR / sha256[:2] / sha256

    def check(self) -> tuple[DumpSummary, list[tuple[str, int]]]:
        """Read the whole dump: every row of every table, and every blob a release refers to
        (present, of its size, matching its hash). The summary and the blobs (sha256, size);
        DumpError naming the first problem."""
        rows: dict[str, int] = {}
        blobs: dict[str, int] = {}
        for table in TABLES:
            rows[table.name] = 0
            for row in self.rows(table):
                rows[table.name] += 1
                if table.name == "release_blobs":
                    blobs[row["blob"]] = row["size"]
        for sha256, size in sorted(blobs.items()):
            self._check_blob(sha256, size)
        return (DumpSummary(self.schema_version, rows, len(blobs), sum(blobs.values())),
                sorted(blobs.items()))

    def _check_blob(self, sha256: str, size: int) -> None:
        path = self.blob_path(sha256)
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as stream:
                while chunk := stream.read(_CHUNK):
                    digest.update(chunk)
                found = stream.tell()
        except FileNotFoundError:
            raise DumpError(f"{path}: missing (a release refers to blob {sha256})") from None
        except OSError as err:
            raise DumpError(f"{path}: cannot read: {err.strerror}") from err
        if found != size or digest.hexdigest() != sha256:
            raise DumpError(f"{path}: does not match its hash or its size ({size} bytes)")
