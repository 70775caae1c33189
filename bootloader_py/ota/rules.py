# The release manifest's rules for the board's verifier: fields, shapes, paths, then app,
# board, sequence and expiry (docs/manifest.md, "Rules every verifier applies").
#
# Part of trust.py's API (docs/board-trust.md): trust.accept_manifest, check_manifest and
# check_path load it.  Kept apart so it is not in the heap while signatures are checked.
# The payload is walked with ota.jscan: the top-level fields are read one by one and the file
# entries one at a time, so the manifest is never a dict of every file in the heap.
import binascii
import hashlib
import re

from micropython import const

from ota import trust as t

_MAX_DIRS = const(64)  # directories whose keys are kept (a real app has a handful)
# The field patterns are written where they are used, compiled there (once per manifest): a
# module-level name is a qstr for good, and an update sits a few qstrs below the qstr pool's
# next step (docs/board.md, Memory budget).


def check_path(path):
    """Raise MalformedError unless path is relative, '/'-separated and stays inside the app.

    The host's rules in the host's order (signing.manifest.check_path): no lone surrogate,
    1..MAX_PATH_LENGTH bytes of UTF-8, then the shape.  `path` must come through jscan (or
    jscan.pairs): MicroPython's json.loads leaves a surrogate pair as two characters.
    """
    raw = path.encode()
    if b"\xed" in raw:  # the lead byte of U+D000..U+DFFF, surrogates among them
        for c in path:
            if "\ud800" <= c <= "\udfff":
                # the path is left out: it is not valid UTF-8, which a report must be
                t.fail("file path: lone surrogate (not Unicode text)")
    size = len(raw)
    raw = None
    if not size or size > t.MAX_PATH_LENGTH:
        t.fail("file path '" + path[:80] + "': " + str(size)
               + " bytes of UTF-8, must be 1.." + str(t.MAX_PATH_LENGTH))
    if path[0] == "/" or "\\" in path:
        t.fail("file path '" + path + "': must be relative and '/'-separated")
    if min(path) < " " or "\x7f" in path:
        t.fail("file path: control character")
    for segment in path.split("/"):
        if segment == "" or segment == "." or segment == "..":
            t.fail("file path '" + path + "': empty, '.' or '..' segment")


def _matching(obj, name, pattern, what, where="manifest"):
    value = t._field(obj, name, str, where)
    if not re.match(pattern, value):  # pattern: a regular expression's source
        t.fail(where + ": '" + name + "' is not " + what)
    return value


def _is_hex64(value):
    # A round trip through binascii (C) is ~7x faster than a regex here, and strict:
    # unhexlify's leniency shows up as a difference, hexlify writes lowercase only.
    if type(value) is not str or len(value) != 64:
        return False
    try:
        return binascii.hexlify(binascii.unhexlify(value)) == value.encode()
    except ValueError:
        return False


def _bad_file(where, problem):
    t.fail("manifest file " + where + ": " + problem)


def _check_file(entry, index):
    # One tight function per entry: up to 128 of them, so messages are built only on failure.
    if type(entry) is not dict:
        _bad_file(str(index), "not a JSON object")
    path = entry.get("path")
    if type(path) is not str:
        _bad_file(str(index), "'path' missing or not a str")
    check_path(path)
    sha = entry.get("sha256")
    blob = entry.get("blob")
    size = entry.get("size")
    transfer = entry.get("transfer_size")
    encoding = entry.get("encoding")
    if not _is_hex64(sha) or (blob is not sha and blob != sha and not _is_hex64(blob)):
        _bad_file("'" + path + "'", "'sha256' and 'blob' must be 64 lowercase hex digits")
    if type(size) is not int or size < 0 or type(transfer) is not int or transfer < 0:
        _bad_file("'" + path + "'", "'size' and 'transfer_size' must be integers >= 0")
    # the host's MAX_FILE_SIZE, 2**64 - 1 (20 digits at most): a big int, so not a const
    if size > 0xFFFFFFFFFFFFFFFF or transfer > 0xFFFFFFFFFFFFFFFF:
        _bad_file("'" + path + "'", "'size' and 'transfer_size' must be <= 2**64 - 1")
    if encoding == "plain":
        if blob != sha or transfer != size:
            _bad_file("'" + path + "'", "plain file must have blob == sha256 and "
                      "transfer_size == size")
    elif encoding != "deflate" or type(encoding) is not str:
        _bad_file("'" + path + "'", "encoding must be one of plain, deflate")
    return path


def _check_head(doc):
    """The top-level fields but `files`, in the host's order (Manifest.from_payload)."""
    if type(doc) is not dict or doc.get("_type") != "manifest":
        t.fail("manifest: not a manifest document (_type must be 'manifest')")
    app = _matching(doc, "app", "[A-Za-z0-9][A-Za-z0-9._-]*$",
                    "an app name ([A-Za-z0-9._-], 1..64)")
    if len(app) > 64:
        t.fail("manifest: 'app' is not an app name ([A-Za-z0-9._-], 1..64)")
    _matching(doc, "version",
              "(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)"
              "(-[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?(\\+[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?$",
              "a semantic version (MAJOR.MINOR.PATCH)")
    t._count(doc, "sequence", "manifest")
    t._count(doc, "created", "manifest")
    t._count(doc, "expires", "manifest")
    boards = t._field(doc, "boards", list, "manifest")
    if not boards:
        t.fail("manifest: 'boards' must be a non-empty list of names")
    for b in boards:
        if type(b) is not str or not b:
            t.fail("manifest: 'boards' must be a non-empty list of names")
    _matching(doc, "min_micropython", "[0-9]+\\.[0-9]+(\\.[0-9]+)?$", "a version like 1.20.0")
    _matching(doc, "entry", "[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)*$",
              "a module name")


def _too_many(count):
    if count > t.MAX_FILES:
        t.fail("manifest: " + str(count) + " files, more than the cap of "
               + str(t.MAX_FILES))


def _clash(kind, earlier, path):
    # The host's messages (signing.manifest.check_path_set), for kind 1, 2 or 3 of _kind().
    if kind == 1:
        t.fail("manifest: duplicate file path '" + path + "'")
    if kind == 2:
        t.fail("manifest: file paths '" + earlier + "' and '" + path + "' differ only in case")
    if len(earlier) > len(path):
        earlier, path = path, earlier
    t.fail("manifest: file path '" + earlier + "' is also a directory in '" + path + "'")


def _kind(p, q):
    # How two checked paths clash: 0 not, 1 the same, 2 the same but for ASCII case (str.lower()
    # lowers ASCII only here, as signing.manifest.fold_case), 3 one a directory of the other.
    if p == q:
        return 1
    p = p.lower()
    q = q.lower()
    if p == q:
        return 2
    if len(p) > len(q):
        p, q = q, p
    return 3 if q.startswith(p) and q[len(p)] == "/" else 0


def _note(path, keys, dirs):
    # Add the key of path (lowered) to keys and those of its directories to dirs, at most
    # _MAX_DIRS of them (past that, every path is a suspect: the heap stays bounded, only the
    # confirming re-reads grow); True when a key met one of the other set: a clash, a full
    # dirs, or two hashes alike by chance.
    low = path.lower()
    key = _path_key(low)
    hit = key in keys or key in dirs or len(dirs) >= _MAX_DIRS
    keys.add(key)
    at = low.find("/")
    while at > 0:
        key = _path_key(low[:at])
        hit = hit or key in keys
        if len(dirs) < _MAX_DIRS:
            dirs.add(key)
        at = low.find("/", at + 1)
    return hit


def _worse(worst, earlier, path):
    # worst, or (kind, earlier path, path) of path's worst clash with the paths of `earlier`
    # (the first of that kind) when it is a worse kind: so the first path of the worst kind
    # wins, as on the host.
    for q in earlier:
        k = _kind(q, path)
        if k and (worst is None or k < worst[0]):
            worst = (k, q, path)
    return worst


def check_manifest(doc):
    """trust.check_manifest (documented there), for a manifest already parsed into a dict."""
    from ota import jscan
    doc = jscan.pairs(doc)  # as parsed by json.loads: join the astral characters' halves
    _check_head(doc)
    files = t._field(doc, "files", list, "manifest")
    _too_many(len(files))
    paths = [_check_file(files[i], i) for i in range(len(files))]
    keys = set()
    dirs = set()
    worst = None
    for i in range(len(paths)):  # after every entry passed, as on the host
        if _note(paths[i], keys, dirs) and (worst is None or worst[0] > 1):
            worst = _worse(worst, paths[:i], paths[i])
    if worst is not None:
        _clash(*worst)


_HEAD = ("_type", "app", "version", "sequence", "created", "expires", "boards",
         "min_micropython", "entry")


def _path_key(path):
    # 30 bits: a small int on every port, so the set of them costs no object per path.
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "big") >> 2


def _check_files(doc, start, files):
    """Check the entries of the `files` array at doc[start], handing each to files(entry).

    As on the host: the count cap first, then every entry, then clashing paths (duplicate,
    then equal but for ASCII case, then a file that is also a directory), each kind reported
    for its first path.  Found by two sets of 30-bit hashes, of the lowered paths and of their
    lowered directories; a hit is confirmed by reading the earlier entries again.
    """
    count = 0
    for _ in doc.elements(start):
        count += 1
    _too_many(count)
    keys = set()
    dirs = set()
    worst = None
    i = 0
    for a, b in doc.elements(start):
        entry = doc.load(a, b)
        path = _check_file(entry, i)
        if _note(path, keys, dirs) and (worst is None or worst[0] > 1):
            worst = _worse(worst, _paths_before(doc, start, i), path)
        if files is not None:
            files(entry)
        entry = None
        i += 1
    if worst is not None:
        _clash(*worst)


def _paths_before(doc, start, index):
    i = 0
    for a, b in doc.elements(start):
        if i == index:
            return
        yield doc.load(a, b).get("path")
        i += 1


def accept_manifest(payload, board, installed_sequence, now, files=None, app=None):
    """trust.accept_manifest (documented there): payload is bytes or a file path."""
    from ota import jscan
    doc = jscan.open_doc(payload, "manifest")
    try:
        head = {}
        span = None
        for key, a, b in doc.top():
            if key == "files":
                span = a if doc.at(a) == 91 else None
            elif key in _HEAD:
                head[key] = doc.load(a, b)
        _check_head(head)
        if span is None:
            t.fail("manifest: 'files' missing or not a list")
        _check_files(doc, span, files)
    finally:
        doc.f.close()
    # Before the sequence: another app's sequence numbers say nothing about this one's.
    if app is not None and head["app"] != app:
        t.fail("app '" + head["app"] + "' is not this board's app '" + app + "'",
               "WrongAppError")
    if board is not None and board not in head["boards"]:
        t.fail("board '" + board + "' is not in the manifest's boards", "WrongBoardError")
    seq = head["sequence"]
    if installed_sequence is not None:
        if seq == installed_sequence:
            t.fail("sequence " + str(seq) + " is already installed", "SameSequenceError")
        if seq < installed_sequence:
            t.fail("sequence " + str(seq) + " is lower than installed "
                   + str(installed_sequence), "RollbackError")
    if now is not None and head["expires"] <= now:
        t.fail("manifest expired at " + str(head["expires"]) + " (now "
               + str(now) + ")", "ExpiredError")
    if files is not None:
        return head
    if type(payload) is str:  # the whole document as signed, for callers with heap to spare
        with open(payload, "rb") as f:
            payload = f.read()
    from ota import jscan
    return jscan.pairs(t._loads(payload, "manifest"))
