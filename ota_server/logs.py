"""Log set-up for `ota serve`: plain lines, or one JSON object per line with --json-logs.

Every record that reaches the handler, the libraries' included (aiohttp's parser logs a bad
request's raw header line), goes through the same two steps before it is written
(docs/operations.md, Logs):

- credentials are redacted: the value of any `Authorization` header, and anything shaped like
  a publisher token or a download grant (its scheme onwards, and any `mac=` value), wherever
  they appear in the message, the exception text or the fields;
- control characters are escaped, so no field (a percent-decoded path, a header value echoed
  in a parser error) can start a forged line or hide bytes in it. In plain logs a record is one
  line; a traceback's lines follow it, each indented, so a line at column 0 always starts a
  record. JSON logs escape them through json.dumps.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from ota_server.grants import SCHEME as GRANT_SCHEME
from ota_server.tokens import TOKEN_PREFIX

REDACTED = "[redacted]"

# Attributes a LogRecord always has; anything else came in through `extra=` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# An Authorization header's value, as a header line, a dict repr or a bytes repr shows it: up
# to the end of the line or of the quoted string, whatever the scheme (Bearer, the boards'
# signature scheme, or junk that made the parser fail).
_AUTH_VALUE = re.compile(r"""(?i)(authorization['"]?\s*[:=]\s*['"]?)[^'"\r\n]*""")
# A publisher token anywhere else (a URL, a message that quotes one): prefix + any run of
# token characters, however short, since a cut token still narrows the search for it.
_TOKEN = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_\-]+")
# A download grant is a bearer credential too (ota_server.grants), and travels outside
# Authorization as well (the check-in's X-Ota-Grant): its scheme up to the end of the line or
# quoted string, and a grant's MAC wherever it shows without its scheme.
_GRANT = re.compile(re.escape(GRANT_SCHEME) + r"""[^'"\r\n]*""")
_GRANT_MAC = re.compile(r"(?i)(\bmac=)[A-Za-z0-9_\-]+")
# C0 controls, DEL, C1 controls and the Unicode line and paragraph separators: everything a
# terminal or a log reader may take for a line break or a command.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def redact(text: str) -> str:
    """`text` with every credential it shows replaced by [redacted]."""
    text = _AUTH_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _GRANT.sub(f"{GRANT_SCHEME} {REDACTED}", text)
    text = _GRANT_MAC.sub(lambda m: m.group(1) + REDACTED, text)
    return _TOKEN.sub(TOKEN_PREFIX + REDACTED, text)


def escape_controls(text: str) -> str:
    r"""`text` with each control character written as an escape (`\n`, `\x00`, `\u2028`)."""
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    if named:
        return named
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def _clean(value: Any) -> Any:
    """A field's value made safe to log: strings redacted, containers walked."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(repr(value))
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _timestamp(record: logging.LogRecord) -> str:
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class PlainFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER MESSAGE`, one line a record; a traceback follows, indented."""

    def format(self, record: logging.LogRecord) -> str:
        message = escape_controls(redact(record.getMessage()))
        line = f"{_timestamp(record)} {record.levelname} {record.name} {message}"
        details = []
        if record.exc_info:
            details.append(self.formatException(record.exc_info))
        if record.stack_info:
            details.append(self.formatStack(record.stack_info))
        for block in details:
            for part in redact(block).splitlines():
                line += "\n    " + escape_controls(part)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a record (json.dumps escapes every control character)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(_extras(record))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(_clean(doc), default=lambda v: redact(str(v)))


def configure_logging(json_logs: bool, level: int = logging.INFO) -> None:
    """Send every logger's records to stderr through the redacting formatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_logs else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
