# A small record that survives power loss on littlefs and FAT alike.
#
# Two files, base[0] and base[1], each "<json>\n<hex sha256 of json>\n". The json carries a
# sequence number "seq"; the newest record whose checksum holds wins. A write always goes to
# the file that does NOT hold the newest valid record, so a write torn by a power cut leaves
# the previous record intact: no rename needed, so no reliance on an atomic rename (FAT has none).
# The two files are in two directories (/ota, /ota_rec; ota.path: /ota on boards provisioned
# before): on FAT a cut that erases one directory's sector takes one copy, never both
# (docs/board.md, Flash and power cuts).
import binascii
import hashlib
import json
import os

from micropython import const

import ota

_MAX_RECORD = const(1024)


def _tag(body):
    return binascii.hexlify(hashlib.sha256(body).digest())


def _read_one(path):
    try:
        size = os.stat(path)[6]
        if size > _MAX_RECORD:
            return None
        with open(path, "rb") as f:
            # Exactly its size: read(n) takes an n-byte block first, and late in a boot (the
            # app loaded, the heap in pieces) a 1 KB block may be there no longer.
            data = f.read(size)
    except OSError:
        return None
    nl = data.find(b"\n")
    if nl < 0 or data[nl + 1:nl + 65] != _tag(data[:nl]):
        return None
    try:
        rec = json.loads(data[:nl])
    except ValueError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int):
        return None
    return rec


def read(base):
    """Return (record, index) of the newest valid record of the two files `base`, or (None, 1)
    when there is none."""
    best = None
    index = 1
    for i in (0, 1):
        rec = _read_one(ota.path(base[i]))
        if rec is not None and (best is None or rec["seq"] > best["seq"]):
            best = rec
            index = i
    return best, index


def write(base, rec, index):
    """Write `rec` as the successor of the record read at `index`; returns the new index.

    Increments rec["seq"] (read-modify-write). Raises OSError when the flash refuses it.
    """
    rec["seq"] = rec.get("seq", 0) + 1
    target = 1 - index
    body = json.dumps(rec).encode()
    if len(body) + 66 > _MAX_RECORD:
        raise ValueError("record too large")
    with open(ota.path(base[target]), "wb") as f:
        f.write(body + b"\n" + _tag(body) + b"\n")  # one write: one flash program
    return target
