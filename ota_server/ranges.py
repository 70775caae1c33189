"""The `Range` header of blob and pack answers, parsed strictly (docs/protocol.md, "Ranges").

One parser for every ranged answer, written from RFC 9110 §14 as docs/protocol.md states it:
one `bytes` range of the forms `a-b`, `a-` or `-n`, decimal ASCII digits only. Python's int()
alone would take `+1`, ` 1`, `1_0` or non-ASCII digits; a lenient parser also took `bytes=-0`
for the whole blob, where RFC 9110 says a zero-length suffix is unsatisfiable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_DIGITS = re.compile(r"[0-9]+")
# RFC 9110 §5.6.2 token: the range unit
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_OWS = " \t"
# Past any content's size; a longer number means the same (and int() refuses > 4300 digits).
_HUGE = 10**19


class RangeNotSatisfiable(ValueError):
    """The Range is malformed or asks for nothing the content has: answer 416 with
    `Content-Range: bytes */<size>`."""


def byte_range(fields: Sequence[str], size: int) -> tuple[int, int] | None:
    """(offset, count) of the part of content of `size` bytes that the `Range` field values
    `fields` ask for, or None to send the whole content: no Range, a range unit other than
    `bytes` (RFC 9110 §14.2: ignored), or a suffix range of empty content (no Content-Range can
    name a part of nothing).

    Raises RangeNotSatisfiable (its message says what is wrong) for more than one Range field,
    a malformed value, more or fewer than one range, `last < first`, a `first` at or past the
    end, or a zero-length suffix `-0`.
    """
    if not fields:
        return None
    if len(fields) > 1:
        raise RangeNotSatisfiable("more than one Range header")
    unit, equals, ranges = fields[0].strip(_OWS).partition("=")
    if not equals or not _TOKEN.fullmatch(unit):
        raise RangeNotSatisfiable("Range is not <unit>=<ranges>")
    if unit.lower() != "bytes":
        return None
    # A list (RFC 9110 §5.6.1): elements between commas with optional whitespace around the
    # commas only; empty elements do not count.
    pieces = ranges.split(",")
    specs = [piece.lstrip(_OWS) if i else piece for i, piece in enumerate(pieces)]
    specs = [spec.rstrip(_OWS) for spec in specs]
    specs = [spec for spec in specs if spec]
    if len(specs) != 1:
        raise RangeNotSatisfiable(f"Range must name exactly one range, not {len(specs)}")
    first, dash, last = specs[0].partition("-")
    if not dash or (first and not _DIGITS.fullmatch(first)) \
            or not (_DIGITS.fullmatch(last) or (first and not last)):
        raise RangeNotSatisfiable("a range is `a-b`, `a-` or `-n` in decimal digits")
    if not first:  # `-n`: the last n bytes
        suffix = _number(last)
        if suffix == 0:
            raise RangeNotSatisfiable("a suffix range of 0 bytes asks for nothing")
        if size == 0:
            return None
        count = min(suffix, size)
        return size - count, count
    start = _number(first)
    stop = size if not last else _number(last) + 1
    if last and stop <= start:
        raise RangeNotSatisfiable("the range ends before it starts")
    if start >= size:
        raise RangeNotSatisfiable(f"the range starts at or past the end ({size} bytes)")
    return start, min(stop, size) - start


def _number(digits: str) -> int:
    """The value of ASCII `digits`; any value past every content size is _HUGE."""
    significant = digits.lstrip("0")
    return _HUGE if len(significant) > 19 else int(significant or "0")
