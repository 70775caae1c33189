# JSON documents read through a small window instead of parsed whole (docs/board-trust.md).
#
# An envelope or a manifest payload can be several KB; json.loads of it builds every string
# and dict at once (the heap's peak). Here the document stays on flash (or in the caller's
# bytes) and is walked member by member: only the values the verifier asks for are handed to
# json.loads, one small slice at a time. Strings are skipped with find(), so the Python-level
# loop only sees the few bytes between them.
import json

from micropython import const

from ota import trust as t

_WINDOW = const(256)
_MAX_DEPTH = const(32)


class Doc:
    """A document of `size` bytes in a seekable stream `f` (a file, io.BytesIO), read through
    one window `buf`; `what` names it in errors."""

    def __init__(self, f, size, what, buf=None):
        self.f = f
        self.size = size
        self.what = what
        self.buf = buf if buf is not None else bytearray(_WINDOW)
        self.base = 0
        self.n = 0

    def bad(self, why="not JSON"):
        t.fail(self.what + ": " + why)

    def _fill(self, pos):
        self.f.seek(pos)
        n = 0
        mv = memoryview(self.buf)
        while n < len(mv) and pos + n < self.size:
            got = self.f.readinto(mv[n:min(len(mv), self.size - pos)])
            if not got:
                break
            n += got
        self.base = pos
        self.n = n

    def at(self, pos):
        """The byte at pos, -1 past the end."""
        i = pos - self.base
        if i < 0 or i >= self.n:
            if pos >= self.size or pos < 0:
                return -1
            self._fill(pos)
            i = 0
        return self.buf[i]

    def find(self, sub, pos, end):
        """Position of the byte string `sub` (one byte) in [pos, end), else -1."""
        while pos < end:
            i = pos - self.base
            if i < 0 or i >= self.n:
                self._fill(pos)
                i = 0
                if not self.n:
                    return -1
            j = self.buf.find(sub, i, min(self.n, end - self.base))
            if j >= 0:
                return self.base + j
            pos = self.base + self.n
        return -1

    def read(self, start, end):
        """bytes of [start, end)."""
        self.f.seek(start)
        data = self.f.read(end - start)
        self.n = 0  # the stream moved: the window must be read again
        if len(data) != end - start:
            self.bad("shorter than its size")
        return data

    def load(self, start, end):
        """json.loads of one value's bytes, surrogate pairs joined as on the host (pairs)."""
        data = self.read(start, end)
        try:
            value = json.loads(data)
        except (ValueError, UnicodeError):
            self.bad()
        if b"\\ud" in data or b"\\uD" in data:
            value = pairs(value)
        return value

    def ws(self, pos):
        c = self.at(pos)
        while c == 32 or c == 10 or c == 13 or c == 9:
            pos += 1
            c = self.at(pos)
        return pos

    def string_end(self, pos):
        """End (after the closing quote) of the string opening at pos."""
        q = pos
        while True:
            q = self.find(b'"', q + 1, self.size)
            if q < 0:
                self.bad("not JSON (string not closed)")
            k = q - 1
            while self.at(k) == 92:  # backslashes before the quote: an odd count escapes it
                k -= 1
            if (q - 1 - k) % 2 == 0:
                return q + 1

    def value_end(self, pos):
        """End of the JSON value starting at pos (containers: brackets matched, strings
        skipped; scalars: up to the next separator, checked by json.loads when read)."""
        c = self.at(pos)
        if c == 34:
            return self.string_end(pos)
        if c != 123 and c != 91:
            end = pos
            while True:
                c = self.at(end)
                if c < 0 or c == 44 or c == 125 or c == 93 or c == 32 or c == 10 or c == 13 \
                        or c == 9:
                    break
                end += 1
            if end == pos:
                self.bad()
            return end
        closers = bytearray(_MAX_DEPTH)
        depth = 0
        while True:
            if c == 34:
                pos = self.string_end(pos)
            else:
                if c == 123 or c == 91:
                    if depth >= _MAX_DEPTH:
                        self.bad("nested too deep")
                    closers[depth] = c + 2  # "{" + 2 == "}", "[" + 2 == "]"
                    depth += 1
                elif c == 125 or c == 93:
                    depth -= 1
                    if depth < 0 or closers[depth] != c:
                        self.bad()
                    if not depth:
                        return pos + 1
                elif c < 0:
                    self.bad("not JSON (cut short: brackets left open)")
                pos += 1
            c = self.at(pos)

    def members(self, pos):
        """(key, value start, value end) of each member of the object at pos, in order."""
        if self.at(pos) != 123:
            self.bad("not a JSON object")
        pos = self.ws(pos + 1)
        if self.at(pos) == 125:
            self.end = pos + 1
            return
        while True:
            if self.at(pos) != 34:
                self.bad()
            key_end = self.string_end(pos)
            key = self.load(pos, key_end)
            pos = self.ws(key_end)
            if self.at(pos) != 58:
                self.bad()
            start = self.ws(pos + 1)
            end = self.value_end(start)
            yield key, start, end
            pos = self.ws(end)
            c = self.at(pos)
            if c == 125:
                self.end = pos + 1
                return
            if c != 44:
                self.bad()
            pos = self.ws(pos + 1)

    def elements(self, pos):
        """(start, end) of each element of the array at pos, in order."""
        pos = self.ws(pos + 1)
        if self.at(pos) == 93:
            return
        while True:
            end = self.value_end(pos)
            yield pos, end
            pos = self.ws(end)
            c = self.at(pos)
            if c == 93:
                return
            if c != 44:
                self.bad()
            pos = self.ws(pos + 1)

    def top(self):
        """The members of the whole document, which must be one object and nothing else."""
        for member in self.members(self.ws(0)):
            yield member
        if self.ws(self.end) != self.size:
            self.bad("not JSON (data after the object)")


def pairs(value):
    """`value` (a loaded JSON value) with every surrogate pair in its strings joined into the
    one character it encodes, as every JSON decoder but MicroPython's does.

    MicroPython's json.loads turns each \\uXXXX escape into the character it names, so the
    escaped pair of an astral character (`\\ud83d\\ude00`, the way Python's json.dumps
    writes U+1F600) becomes two surrogate characters: 6 bytes of (invalid) UTF-8 where the host
    has 4, and another file name.  A lone surrogate is kept (the path rule refuses it).
    """
    if type(value) is str:
        if b"\xed" not in value.encode():  # no surrogate (U+D800..U+DFFF: lead byte 0xED)
            return value
        out = []
        high = 0
        for c in value:
            code = ord(c)
            if high and 0xDC00 <= code <= 0xDFFF:
                out.append(chr(0x10000 + ((high - 0xD800) << 10) + code - 0xDC00))
                high = 0
                continue
            if high:
                out.append(chr(high))
            high = code if 0xD800 <= code <= 0xDBFF else 0
            if not high:
                out.append(c)
        if high:
            out.append(chr(high))
        return "".join(out)
    if type(value) is list:
        return [pairs(v) for v in value]
    if type(value) is dict:
        return {pairs(k): pairs(v) for k, v in value.items()}
    return value


def open_doc(src, what, buf=None):
    """A Doc over `src`: a file path (str) or bytes-like. The caller closes doc.f.

    TooLargeError when it is over trust.MAX_ENVELOPE_BYTES (checked before any byte is read).
    """
    if type(src) is str:
        import os
        size = os.stat(src)[6]
        _cap(size, src)
        return Doc(open(src, "rb"), size, what, buf)
    import io
    _cap(len(src), what)
    return Doc(io.BytesIO(src), len(src), what, buf)


def _cap(size, what):
    if size > t.MAX_ENVELOPE_BYTES:
        t.fail(what + " is " + str(size) + " bytes, over the cap of "
               + str(t.MAX_ENVELOPE_BYTES), "TooLargeError")
