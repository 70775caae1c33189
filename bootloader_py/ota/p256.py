"""ECDSA over NIST P-256 with SHA-256, in pure MicroPython.

verify(pub, h, sig)   -> bool    (pub: 65-byte point, (x, y) or a Key with a precomputed table)
sign(d, h)            -> r||s    (RFC 6979 deterministic nonce, low S)
public_point(d)       -> 65-byte uncompressed point
use_tables(folder, secret)       (a Key's table kept in a file, HMAC-tagged: the OTA client's way)

Speed comes from signed comb tables (see Comb): with w "teeth", k*P costs about 257/w
doublings and as many mixed additions instead of 256 doublings.  The generator's table is
embedded (G_TEETH == 6); a release key's table is built by Key(...), so verification of
u1*G + u2*Q shares one run of doublings ("joint comb").  Tables are packed bytes (64 bytes per
affine point) because a bigint costs ~100 bytes of heap on its own.  Bigint `%` is most of the
time (a 512-bit reduction costs twice a 256-bit multiplication), so formulas are chosen for
few reductions, not few additions.
"""

import hashlib

# Curve constants (FIPS 186-4, D.1.2.3).  Plain globals: const() cannot hold 256-bit ints
# portably; hot functions copy them into locals.
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
HALF_N = N >> 1

# Comb widths (teeth w, 1..8): a table holds 2^(w-1) points, 64 bytes each (w=6: 2 KB).  The OTA
# client may change these before the first verify: lower to save heap (w=4: 512 B), higher for
# speed (w=8: 8 KB).  G_TEETH == _G_TABLE_TEETH uses the table embedded below (no build time).
G_TEETH = 6
KEY_TEETH = 6
# Keys verified without a precomputed table get a throw-away comb this wide.
ADHOC_TEETH = 4
# Width of the comb tables kept on flash (use_tables): 2^(w-1) * 64 bytes (4: 512 B; building
# a 5-teeth one at a key's first verify needs more heap than an update has at D1's 32 KB).
TABLE_TEETH = 4

_G_COMB = None
_tables = None  # (folder, MAC key) while use_tables() is on


class Comb:
    """A signed fixed-base comb (teeth w, spacing d, w * d >= 257) for one point P.

    An odd scalar k < 2^(w*d) is a sum of 2^i * s_i with every s_i = +-1 (s_i = 2 b_i - 1 for
    the bits b_i of (k + 2^(w*d) - 1) / 2); an even k is replaced by k + n, the same multiple.
    Column j's digits s_(i*d + j) select sum_i s * 2^(i*d) * P, which is +-T[b] with
    T[b] = P + sum_(i>=1) (+-1) 2^(i*d) P: 2^(w-1) entries, and every column costs exactly one
    addition (d - 1 doublings, d additions per scalar).
    """

    def __init__(self, x, y, teeth, table=None):
        if teeth < 1 or teeth > 8:
            raise ValueError("comb teeth must be 1..8")
        self.teeth = teeth
        self.spacing = (257 + teeth - 1) // teeth
        self.table = table if table is not None else _build_table(x, y, teeth, self.spacing)

    def digits(self, u):
        """The w-bit column patterns of scalar u (0 <= u < n), one byte per column."""
        if not u & 1:
            u += N
        w = self.teeth
        d = self.spacing
        u = (u + (1 << (w * d)) - 1) >> 1
        out = bytearray(d)
        mask = (1 << d) - 1
        for i in range(w):
            c = (u >> (i * d)) & mask
            bit = 1 << i
            j = 0
            while c:
                # 16 bits at a time so the inner loop works on small ints.
                s = c & 0xFFFF
                c >>= 16
                k = j
                while s:
                    if s & 1:
                        out[k] |= bit
                    s >>= 1
                    k += 1
                j += 16
        return out


def _build_table(x, y, teeth, d):
    # Base points B_i = 2^(i*d) P and D_i = 2 B_i; T[0] = B_0 - B_1 - ...;
    # T[b + 2^t] = T[b] + D_(t+1).  Each base point is brought to affine as soon as it is made
    # (one inversion each, ~80 multiplications: a table is built once per key), so the build
    # holds 2w - 1 affine pairs rather than as many Jacobian triples and their normalisation's
    # lists: it runs at a key's first verify, in the middle of an update (D1).  Entries are
    # brought to affine in batches of at most _BATCH with one inversion each.
    p = P
    pts = [(x, y)]  # B_0..B_(w-1), then D_1..D_(w-1)
    X, Y, Z = x, y, 1
    for i in range(1, teeth):
        for _ in range(d):
            X, Y, Z = _jdouble(X, Y, Z)
        pts.append(_to_affine(X, Y, Z))
    for i in range(1, teeth):
        pts.append(_to_affine(*_jdouble(pts[i][0], pts[i][1], 1)))
    tab = bytearray(64 << (teeth - 1))
    X, Y, Z = x, y, 1
    for i in range(1, teeth):
        X, Y, Z = _madd(X, Y, Z, pts[i][0], p - pts[i][1])
    tx, ty = _normalize([(X, Y, Z)])[0]
    _put(tab, 0, tx, ty)
    top = 1
    while top < 1 << (teeth - 1):
        dx, dy = pts[teeth - 1 + _bit_length(top)]
        # Entries [top, 2 top) depend only on [0, top), already in the table.
        for start in range(top, 2 * top, _BATCH):
            stop = min(start + _BATCH, 2 * top)
            batch = []
            for b in range(start, stop):
                x1, y1 = _get(tab, b - top)
                batch.append(_madd(x1, y1, 1, dx, dy))
            batch = _normalize(batch)
            for b in range(start, stop):
                _put(tab, b, batch[b - start][0], batch[b - start][1])
        top <<= 1
    return tab


_BATCH = 16


def _normalize(points):
    """Jacobian points (none at infinity) to affine with one inversion (Montgomery's trick)."""
    p = P
    prefix = []
    acc = 1
    for X, Y, Z in points:
        acc = acc * Z % p
        prefix.append(acc)
    if not acc:
        raise ValueError("point at infinity in table")
    inv = _inv(acc, p)
    out = [None] * len(points)
    for i in range(len(points) - 1, -1, -1):
        X, Y, Z = points[i]
        zi = inv * prefix[i - 1] % p if i else inv
        inv = inv * Z % p
        zi2 = zi * zi % p
        out[i] = (X * zi2 % p, Y * zi2 * zi % p)
    return out


def _madd(X, Y, Z, x2, y2):
    """Jacobian (X, Y, Z) + affine (x2, y2), with the equal and opposite cases."""
    p = P
    if not Z:
        return x2, y2, 1
    z2 = Z * Z % p
    H = (x2 * z2 - X) % p
    R = (y2 * (Z * z2 % p) - Y) % p
    if not H:
        return _jdouble(X, Y, Z) if not R else (0, 1, 0)
    HH = H * H % p
    HHH = H * HH % p
    V = X * HH % p
    X3 = (R * R - HHH - 2 * V) % p
    return X3, (R * (V - X3) - Y * HHH) % p, Z * H % p


def _bit_length(v):
    n = 0
    while v:
        v >>= 1
        n += 1
    return n


def _put(tab, idx, x, y):
    o = idx * 64
    tab[o:o + 32] = x.to_bytes(32, "big")
    tab[o + 32:o + 64] = y.to_bytes(32, "big")


def _get(tab, idx):
    o = idx * 64
    return int.from_bytes(tab[o:o + 32], "big"), int.from_bytes(tab[o + 32:o + 64], "big")


def _inv(a, m):
    """a^-1 mod m (m prime, a not 0 mod m); extended Euclid beats pow(a, m-2, m) ~3x here."""
    x0, x1, r0, r1 = 1, 0, a % m, m
    while r1:
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        x0, x1 = x1, x0 - q * x1
    return x0 % m


def _jdouble(X, Y, Z):
    # dbl-2001-b (a = -3); Z == 0 (infinity) stays infinity.
    p = P
    delta = Z * Z % p
    gamma = Y * Y % p
    beta = X * gamma % p
    alpha = 3 * (X - delta) * (X + delta) % p
    X3 = (alpha * alpha - 8 * beta) % p
    Z3 = 2 * Y * Z % p
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
    return X3, Y3, Z3


def _to_affine(X, Y, Z):
    p = P
    zi = _inv(Z, p)
    zi2 = zi * zi % p
    return X * zi2 % p, Y * zi2 * zi % p


def _comb_mul(combs, scalars):
    """Sum of scalars[i] * point(combs[i]) as Jacobian (X, Y, Z); Z == 0 is infinity."""
    p = P
    length = 0
    for c in combs:
        if c.spacing > length:
            length = c.spacing
    jobs = [(combs[i].digits(scalars[i]), combs[i].table, (1 << combs[i].teeth) - 1,
             combs[i].spacing) for i in range(len(combs))]
    X, Y, Z = 0, 1, 0
    for j in range(length - 1, -1, -1):
        if Z:
            # Inline dbl-2001-b: a call costs as much as two field multiplications.
            delta = Z * Z % p
            gamma = Y * Y % p
            beta = X * gamma % p
            alpha = 3 * (X - delta) * (X + delta) % p
            Z = 2 * Y * Z % p
            X = (alpha * alpha - 8 * beta) % p
            Y = (alpha * (4 * beta - X) - 8 * gamma * gamma) % p
        for dig, tab, mask, spacing in jobs:
            if j >= spacing:
                continue
            v = dig[j]
            if v & 1:
                o = (v >> 1) << 6
                x2 = int.from_bytes(tab[o:o + 32], "big")
                y2 = int.from_bytes(tab[o + 32:o + 64], "big")
            else:
                # Sign digit -1: the column is minus the entry of the complemented pattern.
                o = ((v ^ mask) >> 1) << 6
                x2 = int.from_bytes(tab[o:o + 32], "big")
                y2 = p - int.from_bytes(tab[o + 32:o + 64], "big")
            if not Z:
                X, Y, Z = x2, y2, 1
                continue
            # Mixed Jacobian + affine addition (11M).
            z2 = Z * Z % p
            H = (x2 * z2 - X) % p
            R = (y2 * (Z * z2 % p) - Y) % p
            if not H:
                if R:
                    X, Y, Z = 0, 1, 0
                else:
                    X, Y, Z = _jdouble(X, Y, Z)
                continue
            HH = H * H % p
            HHH = H * HH % p
            V = X * HH % p
            Z = Z * H % p
            X = (R * R - HHH - 2 * V) % p
            Y = (R * (V - X) - Y * HHH) % p
    return X, Y, Z


def g_comb():
    """The generator's comb table, G_TEETH wide: the embedded one for 6, else built once."""
    global _G_COMB
    if _G_COMB is None or _G_COMB.teeth != G_TEETH:
        _G_COMB = None
        table = _G_TABLE if G_TEETH == _G_TABLE_TEETH else None
        _G_COMB = Comb(GX, GY, G_TEETH, table)
    return _G_COMB


def decode_point(pub):
    """(x, y) from a 65-byte uncompressed point or an (x, y) pair; ValueError if not on P-256."""
    if isinstance(pub, tuple):
        x, y = pub
    else:
        if len(pub) != 65 or pub[0] != 4:
            raise ValueError("public key must be a 65-byte uncompressed point")
        x = int.from_bytes(pub[1:33], "big")
        y = int.from_bytes(pub[33:65], "big")
    p = P
    if not (0 <= x < p and 0 <= y < p) or (y * y - (x * x * x - 3 * x + B)) % p:
        raise ValueError("public key is not a point on P-256")
    return x, y


class Key:
    """A verified P-256 public key with its comb table (teeth 0: no table, built per verify)."""

    def __init__(self, pub, teeth=-1):
        self.x, self.y = decode_point(pub)
        self.comb = None
        if teeth < 0:
            teeth = KEY_TEETH
        if teeth:
            self.precompute(teeth)

    def precompute(self, teeth=0):
        """(Re)build this key's comb table, teeth wide (0: KEY_TEETH)."""
        self.comb = None  # let the old table go before the new one is allocated
        self.comb = Comb(self.x, self.y, teeth or KEY_TEETH)


def verify(pub, h, sig):
    """True when sig (64-byte r||s) is a valid low-S ECDSA signature of digest h by pub.

    pub is a Key, a 65-byte uncompressed point or an (x, y) pair; h is the 32-byte SHA-256
    digest.  Out-of-range r or s, high S and malformed sizes give False; an invalid public
    key raises ValueError.
    """
    if len(sig) != 64 or len(h) != 32:
        return False
    r = int.from_bytes(sig[0:32], "big")
    s = int.from_bytes(sig[32:64], "big")
    n = N
    if not (0 < r < n and 0 < s <= HALF_N):
        return False
    key = pub if isinstance(pub, Key) else None
    if key is not None:
        x, y, comb = key.x, key.y, key.comb
    else:
        x, y = decode_point(pub)
        comb = None
    import gc
    # The arithmetic makes hundreds of KB of short-lived bignums and keeps none: a collection
    # every few KB (ota/run.py's threshold while a check runs, there against fragmentation by
    # long-lived objects) costs as much as the arithmetic itself. Here collections happen when
    # the heap is full instead; the caller's threshold is back before verify returns.
    old = gc.threshold()
    gc.threshold(-1)
    try:
        if comb is None:
            comb = stored_comb(key) if _tables and key is not None else Comb(x, y, ADHOC_TEETH)
        e = int.from_bytes(h, "big") % n
        w = _inv(s, n)
        X, Y, Z = _comb_mul((g_comb(), comb), (e * w % n, r * w % n))
    finally:
        gc.threshold(old)
    if not Z:
        return False
    # x(R) = X / Z^2 must be r mod n; compare in projective form to skip an inversion.
    p = P
    zz = Z * Z % p
    if (r * zz - X) % p == 0:
        return True
    return r + n < p and ((r + n) * zz - X) % p == 0


def use_tables(folder, secret):
    """Keep each Key's comb table (TABLE_TEETH wide) in `folder` between verifies; folder None
    turns it off. `secret` (32 bytes, the device key) keys the tables' HMAC: a table is used
    only if its tag, over the key's point and the table, is the one this board computed."""
    global _tables
    _tables = None if folder is None else (folder, _hmac(secret, b"mpota comb table mac key"))


def table_path(key):
    """The file of `key`'s table while use_tables() is on (named by the point's x)."""
    return "%s/comb%08x.bin" % (_tables[0], key.x >> 224)


def stored_comb(key):
    """key's comb from its table file (use_tables() on) when the file's HMAC tag checks;
    else a comb built now and stored there for the next verify (a write that fails is
    ignored: the table is only a cache). Never trusts a table it did not authenticate."""
    w = TABLE_TEETH
    size = 64 << (w - 1)
    path = table_path(key)
    point = key.x.to_bytes(32, "big") + key.y.to_bytes(32, "big")
    try:
        with open(path, "rb") as f:
            data = f.read(size + 33)
    except OSError:
        data = b""
    if len(data) == size + 32:
        tag = _hmac(_tables[1], bytes((w,)), point, memoryview(data)[:size])
        diff = 0
        for i in range(32):  # every byte compared, whatever the first difference
            diff |= tag[i] ^ data[size + i]
        if not diff:
            return Comb(key.x, key.y, w, data)
    data = None
    comb = Comb(key.x, key.y, w)
    try:
        with open(path, "wb") as f:
            f.write(comb.table)
            f.write(_hmac(_tables[1], bytes((w,)), point, comb.table))
    except OSError:
        pass
    return comb


_IPAD = int.from_bytes(b"\x36" * 32, "big")
_OPAD = int.from_bytes(b"\x5c" * 32, "big")


def _hmac(key, *parts):
    # HMAC-SHA256 from hashlib alone (MicroPython has no hmac module); key is 32 bytes, so it
    # is XORed with the pads as one integer instead of byte by byte.
    k = int.from_bytes(key, "big")
    inner = hashlib.sha256((k ^ _IPAD).to_bytes(32, "big"))
    inner.update(b"\x36" * 32)
    for part in parts:
        inner.update(part)
    outer = hashlib.sha256((k ^ _OPAD).to_bytes(32, "big"))
    outer.update(b"\x5c" * 32)
    outer.update(inner.digest())
    return outer.digest()


def _scalar(d):
    if len(d) != 32:
        raise ValueError("private key must be 32 bytes")
    x = int.from_bytes(d, "big")
    if not 0 < x < N:
        raise ValueError("private key out of range")
    return x


def rfc6979_k(d, h):
    """The first RFC 6979 (3.2) nonce for private key d and digest h (both 32 bytes)."""
    return next(_nonces(_scalar(d), h))


def _nonces(x, h):
    # qlen == hlen == 256, so bits2int is a plain conversion and bits2octets one reduction.
    xo = x.to_bytes(32, "big")
    ho = (int.from_bytes(h, "big") % N).to_bytes(32, "big")
    V = b"\x01" * 32
    K = b"\x00" * 32
    K = _hmac(K, V, b"\x00", xo, ho)
    V = _hmac(K, V)
    K = _hmac(K, V, b"\x01", xo, ho)
    V = _hmac(K, V)
    while True:
        V = _hmac(K, V)
        k = int.from_bytes(V, "big")
        if 0 < k < N:
            yield k
        K = _hmac(K, V, b"\x00")
        V = _hmac(K, V)


def _mul_g(k):
    X, Y, Z = _comb_mul((g_comb(),), (k,))
    return _to_affine(X, Y, Z)


def sign(d, h):
    """Deterministic ECDSA (RFC 6979) of 32-byte digest h with 32-byte private key d.

    Returns raw r||s (64 bytes) with s normalised to the lower half.  ValueError on a bad key.
    """
    if len(h) != 32:
        raise ValueError("digest must be 32 bytes")
    x = _scalar(d)
    n = N
    e = int.from_bytes(h, "big") % n
    for k in _nonces(x, h):
        r = _mul_g(k)[0] % n
        if not r:
            continue
        s = _inv(k, n) * (e + r * x) % n
        if not s:
            continue
        if s > HALF_N:
            s = n - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def public_point(d):
    """65-byte uncompressed public point of 32-byte private key d."""
    x, y = _mul_g(_scalar(d))
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


# The generator's comb table for G_TEETH == 6 (2 KB), so the first signature of a boot (request
# authentication) does not pay ~12 ms to build it.  Generated by Comb(GX, GY, 6) on the host;
# tests/test_board_p256.py checks it equals what the board computes.
_G_TABLE_TEETH = 6
_G_TABLE = (
    b'\xac\xb4\x1aTMp\xbcv\xd6K\x82\x1a\x90\xc9\xe3M`\x1b\xd3\xcc(\xbfN\x8e\xd2.\x1b\x90\x9c@%'
    b'\xfd\xa8\xcaf\xdb\x84\xd1\x9d+yE\x8f\x19\xebM\x8c.\xb7\xbc\xe8\xe2\xbb\xff\xb3Wp\x80uym>'
    b'\xe3~S\x08\x05\x1b\\\xbf[\x11\xa5\x90\xa5\xbd;\xfd\x8bY\xd6\x07,j\xea3\xd2\xec\xbfQ\t\xc9'
    b'\xef=\x0c\xa4\x1b[\x89\xf6\xbd\x8d\xc6\xf9Y\xaaCK\x9fk\x16\x0b\xec\xa0\x94\xd9W}\xf8\xe4'
    b'\x80[o\\\xcd*\xe6z\x9d\xf67\x809\x8bP1c\x9d\xafZ\x83Q\xf0\x8b}\xd4\xf8kr$\x87\xf1 \xb4#G'
    b'\x06\xcf7S0\xbc \xe4\x1c\x9aV\xadE\xfc\xaf\xe7\x9b/I\xc8~\xcf\x96\xbc\xa5\x1f\xd8Z\xd9'
    b'\xb3G\xe2c\\;n}\x02\xbf\xc9S\xa5Y\x7f\x81O\xcd\x93\xa3?\x02\x1az\xc3k`\xf2TIF\xcb\xfe\xd9'
    b'\xc9\xfc\xbe\xb8\x01\x8d\xfd\x8c\x85\x15:]\x86 \xeb\x9d\xd2\x9b\x96\xd0\x0b\xa0\x9f?\xc7'
    b"\xec%\xa4\x02\xd9@X};\x02\x8f(\x7f\xe2`+\x94\xd1|\x8f\xc0\xf7'\xdf\x851\xf8U\x97$\xb50P4["
    b"z\x0eG\xb7\x14\xae\xc1\x93\xd7\xba\xbfnXs\xd3\x8a\xc4V?\x82\x85\x14Y\x9d\xc0\x0bQ\xcdm'V"
    b'\xb0\x03Je\x13\x0f\x0cY\x80\xfe\xef\xa5\x1e\xba!2l\x8bnh\x9b\x1ec8\xa4\x96j \xad\x98.S'
    b'\x939\x16\xc9\r\xc2\x13\x1f\xc7\x11VD\xac\xbe\xe7\xeb\xce\x0c\xef\xab\xf7\xb4C\x86KR*\x1f'
    b'\xc41]\x83\xffg\xaf\x8c\x01\x98\xed\xeb\xde\xc8>\x13\xe43Y>\x8a\xd7 \xbf\x82%P*\x17]\x94]'
    b'|"i\x10\xb0s\xd1#\x9e\x0b\x1a}\xb6$\xbd*#En\x06\xea^\xaf\xcf\xaa[i\xcde\x9bc!\xa8\xf9@~'
    b'\x99\xdc\x97\x95L\xd8(\x7f\r\xac\x81\xb0W\x8a\xe6"\xe0\xed\xeeII\xfc\xcf\x80\x00&\x99\xb6'
    b'M\xff\xc5\x866\x18\xc3\xaf\x0f8\xd4F\x9b\xf3\xd7\xb8\x97\x83\xe27\x19T^\x93\x11(0\xc2oSz'
    b"\xd9}\xc4\xf3$\x1e9\xe9x\xd5\xa1[)DSE\x14\x04\xecw\x07\x11\x047\xf0'\x0c\\:\xde\xcc\xb4"
    b'\xa6u7\xd9\xe7[\t\xf3\x06\x0f\xefL;9\xf7\x07+3|\x91\xd0\xddca\x93I\x82\xe6\xdf\xaa\xbd'
    b'\x1a^d\x8ap\xba\xc7G\xfc\xcb\xea\xb5\xb9)\xab\xb7\xc5\xf3\xa1\xc39dW\xe8A\xd3 \xb7\x8a'
    b"\x98\xd3\x9a\x1e\x96\x95N'W\xe0y&\x8aR4\xfa\xe3\x00\xda\x96ExF\x97\xe5\xdc\xfc\x81;\xa5L"
    b'\xa3\xfc \xf0+\xe9f\x88\xbclJ\t\xc7\x12^\x0e\xd0\x87_Y^eO\xc5\xb0\x99\xbe\xd7\n8Q0\xaf,'
    b'\x1f\x88(y_\xf0\xddb\xea@\x823K\x03\xf9\xf4\x8d\xf1\xab$%\x90]\xd8\xe7\xd6\xc8\x93\xd6'
    b'\xea\xa8\x944\x91\rH\xa4\xab\xf6\x03NK\xb8\xa6\xc5\x1au\xe3t\x8d\xbf\xb3B\xfd\xca\x18\xb0'
    b'}2T\x08\xe0]S\x02GZ\x9a2\xa5\x12O"\xd5m|?\xa7\x7f\x82D\x0c\xceh\xaf\xf9\x04s\\)\x04\xf3'
    b'\xf9\xc8\xa4\xaaf\x97\xf4\xaf\xc6\xd3\xf1\x84k\x83`:p\xdb\xcf#s3K\xafM\xf8\xeay7{\xa25'
    b'\xa2a\t\xe3x|\xc8DI\xf2>W`\xdc\xe3\xac\x0e\xb9\x01\x18\xe5K\x8d\xe2\x99\xb4os\x8fGS\x01o'
    b'\x13\xbb#e\x1c\xf8\x94\xdb\xa3\xb6\x0f\x17\x0frbr;\x87\x84Z\x9ck\x9b9\x19\xb2\x9cV\xef'
    b'\xe4\x9d\xa1\x8cyKUr4\xe6\xeaUS\xa1\xca\xbc\x150\xc29\xcfr]qx\x1e\x0f\x10<\x1d"\x06\x9b'
    b'\xaa1\xf9o\xc5\xebQ\xf0xry\xac\xaf7rc-t\xc0\xdeq\x8b\xf5y\xe3\xeb\x10Aq#\x154\xb5d.\xc6Q'
    b'\xc5*\xccg\xd2\x05\xb1kZGo\xbd\x84\xf4>\x93\x05v9\x07f\xf2\xea\xdc\xac\xb6\xee\xdd\x0fnpV'
    b'W\x8c\xf6\x99:\xc3\xbe\xa6\x8cy\xd2Z\x94\x8c\xf6\x07\x85\xa6\x16\xe4\xab\xe6\x0cK\x18\xa4'
    b'v\xfd\xab\r\xb5\x9c\x1a\xc3vxU\xb4\x11\x8b\xe0\x11;\xd0K\xb6y\xf1\x95-\xd3Fc\x02z\xf9\x8a'
    b'\x18\x04rJq7==\xe9>\x04\xa8\x8c\xf0G\x08\xab;\x8e\x9c\x86,ZP\xa2\xf0\x0eC9cJ\x1d(\xa5\xd1'
    b'A\xbf\xc2dB<\xf2_|\xbc\x15T\xc3\xd0\xc8\x03\xd6\x06\t\r\t*P\x13\xe1\xe0}\xb3B\x7f\xa6\xe8'
    b'O\x04\x8aU\x9d\xfb\x89\x9c|\xbe\x14\xdaAc\x04\x0f\x07R\xccG\xc9\xbap\x8b\xb8\xf8Q\xfe{'
    b'\x8eo\x85K=\x9ah\x9e\xf4\xf3\xc4\xb3\xb0\x06\x04\x88\x1c\xdcR\x94\\K,|\xb5\x06\xdaz\xee;'
    b'\xcclO\xa7\xcbS\xb1\x9bS8lk\x05\xef\xd1\xd7<\x18\x96\x1c\xf4h\xff\xe8|\x90\xbc\xa1\x8a'
    b'\xda\x01\xb4Y\xf2\x8e\x93\xb3d\xaa\xaf{\xc5-n\x03\xd10]z\xfa8t~\x98E\x00rd\xfe\x15\x9aL'
    b'\xcc\x8d&\xdb\xec\xaa\xa8\xab\xb0(\xce\x1e\xe1G\xbeD\x9av\x8f(\x11$e\xadTF\xb5\x98\x86o'
    b'\x08\xb1\x86\x1f\xff\x9e%\xf9i\xce+\xc6M\x7f6e\xe5a \xda\xea\x05\xac#D]?\xc2\xe8Y\xfb\xa9'
    b'@\x1b\xb3<\xd3\xdb\x1a\xc1\xe3\x1a/\x05\xcf\xa5\x0b\x1d\n\r\x9f\x83<\xdd\xb0\xcfQ\xe9('
    b"\xae06/p\xb6\xc6'\xa2[\xd6\x99\xd8\xae\xf3\xef\xb00Tz\x8d V\xcaa\xdc7\xf2\xae\xe5\x13\xe1"
    b'\x8a\x93\xceb\x81\xaf\x1b\xa4\x04\xd1\xad\x9d\xd4\xf9,\xa4(G8-.\xd78\xc9`\xff\xf4\t_\xee='
    b"Cl3\x92\xee;A\x1c\x8bd\xb1\xf1\x03\x0c$\xf4\xf3\x05'\xb7\xde\xf5\xd2m\xd4W\x89n\x0fj\xfc"
    b'\xf2\xa7\xe2\xa37\xe1>\x93\xf8\x8e0,\xab\xbe\xdf\xf8S<Lk\xcd\x96\x92\xe4\x994m\x98\xf1d'
    b'\xc9`\xa2]\xc9\x1f\xb8\xe3\x01\x07\x8a\xc1\xd1\xcf\xcc]\xea \xbb\xb6NW,\xe8\x85"\xf4\xc8'
    b'\xc6\xb4\x16\x1a!k\x0eQ,nW\xcb\xef\xf6$\xc7\xd0\xfb\n\x10x\x18:\xect\xfa!\xac\xf1+.`\xd0'
    b'\xc6\xfd\xd3P"\xd0\x94\xbe\xd0\x1d%i9\xa5\xe4\xfd\x9e\x96k\x9c\x8b=&*\xfa\xb3\xd5\xac\r'
    b'\xed@\x93\x8dgL@\x93\xa8\xc37ZT\xb7\x0eA\x9d)\x1a\xc3\xe7D\x87\xfd\xe9\\\xa1\xf4\x00\xd9;'
    b'\x123^>\x04\xd4\xa7\x8f\xbb\xb8CbR\xeb\xaa\xe0\x00\xbb\x7f\xa1\x1f\xb4\xc1c\xebi\xadOj'
    b'\x05u\xd4\x8d\x99\x81Q\x7f\xa7\xc4\x08(\xc3\xe6\xfa\xda\xda0\x1e+B\x02P1\x14\xf6v\x12\xc6'
    b'\xdc7\x1aE\xc9\x13\xea\x93Y\x10\xe9\xef]\xecS\xf2\x8a\xd6\x1f\xf2\x979\x1c\xfdU\x8d\xe8'
    b'\x1fJp(\x89S\x81\x9f\x96\x06\xf9Q\xc6Iw\xf6\x03y\xb9\r B\xf1\xf7\x9e\xf8;\xb2\xc5\xbc\xab'
    b'\xd9\xc5M3\xfbnf\xb4\x1c\xe3\x86\xbf\x17\x16 \xc1\x8e\xd6\xb7\xb2\xfd\x1e\x0c/\x8d\xa3>'
    b'\xe8\x0c\xb3\x86\xac.\xf4\x83s\xca\xd5\xb5j>\xe9\x0b\x12sx\x92\xec\x00\xad\x80\xa7\xab9]'
    b'\xa0(Z\x0cP\\;S\x1a\xf7\x8e\xe9\xd2\xa0\xb7\xfd\xd2\rN\x04w\x8a\xd7\xd7\x88\xf8\xe0\xcf'
    b"\x95q\xa0\x1e%'\x99\xf7\x945n;KoqW&\x81Z\x04\xa6.\xb02\x1f\x17\x1b\x12O\x9f\xa0\x0f\xbe2!"
    b'\x1d7\xf4*ub\x98\xe2u<V3uH\xf4\xac\xcf\x9c\x17\t\x91\x80\xbf>\xcb\xbe\xfd\xea\x00\x02\xd2'
    b"o\x97\xabeZ'\xd2\xff\x07?\xa4\x82\x06\xb5z\xa7\x83&\xbd\xe7\x038\x04E\xcf\xaf?\x05\xe1"
    b'\x044T\r\xb1:w\xdc\x93\xea\x97\x00\x06\x0fJ<4\xad\x96\xd0\xdaX\x1d\xc3\xc1\x08\xc3HJ\xd2'
    b'\xec\xb9\xa0\xfb\xc5\xdc\xdc.\x0f-\x1d.uN\xedd\x84\xd5\x13;\x857\xd3\x89,?lY|\xd0\x1b\x98'
    b'xo\x01_BG\x07D\xa0\x1e;\x1f\xf3\x0b\x96,<g\x04\xa9\x13C\xbd:)\xc8\x1f!\xea\x9e:\r6mANh]I'
    b'\x83\xd9\x10$\xfe\xb2\xac\xa24\xb9n\xbd5\xd6\xf50\xcd\xbf\x9c\x05\xad\xd4\x1f8\xb5k\x86'
    b'\x8cp\x02\xdc\xa5TT\x0e\x99\xfb6,#k0>\x85\n\x16ht\xf2\xc6s\x8d\xe6\xd8\xe6\xd6\x03\xa4'
    b'\xc0\xee\xd2\xef\xa7B\xbc"\xae\x1b%\x18743\xc7Tm\xe6\xc0\xe1-\xbbX\x0c\x9aO\x1f\xb2\xd6:'
    b'\xda+S\xb9\xe47\xf4\xaf\xcc+\xefS\x1f0\x7f\xb4\x8f!\xf2*\x0cz~\x9c\xe6\xf4\x9f,\xb9\xb9'
    b'\xb3\xa1\x85\xaeF\xab\x12\xd9\x0f\xbf\xd9/\xb9'
)
