"""ECDSA over NIST P-256 with SHA-256, in pure MicroPython.

verify(pub, h, sig)   -> bool    (pub: 65-byte point, (x, y) or a Key with a precomputed table)
sign(d, h)            -> r||s    (RFC 6979 deterministic nonce, low S)
public_point(d)       -> 65-byte uncompressed point

Speed comes from comb tables (Lim-Lee, "teeth" w, spacing d = ceil(256 / w)): a table holds
the 2^w - 1 sums of {2^(i*d) P}, so k*P costs d - 1 doublings and ~d additions.  The generator's
table is built once per process; a release key's table is built by Key(...) so verification of
u1*G + u2*Q shares one run of doublings ("joint comb").  Tables are packed bytes (64 bytes per
affine point) because a bigint costs ~100 bytes of heap on its own.
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

# Comb widths: table size is (2^w - 1) * 64 bytes.  The OTA client may lower these before the
# first verify to save heap (w=4: 960 B per table), or raise them for speed (w=8: 16 KB).
G_TEETH = 6
KEY_TEETH = 6
# Keys verified without a precomputed table get a throw-away comb this wide.
ADHOC_TEETH = 4

_G_COMB = None


class Comb:
    """A fixed-base comb table for one point: `teeth` w, `spacing` d, packed affine points."""

    def __init__(self, x, y, teeth):
        if teeth < 1 or teeth > 8:
            raise ValueError("comb teeth must be 1..8")
        d = (256 + teeth - 1) // teeth
        self.teeth = teeth
        self.spacing = d
        size = (1 << teeth) - 1
        tab = bytearray(64 * size)
        # Base points B_i = 2^(i*d) * P, each written at index 1 << i.
        bx, by = x, y
        for i in range(teeth):
            _put(tab, 1 << i, bx, by)
            if i + 1 < teeth:
                X, Y, Z = bx, by, 1
                for _ in range(d):
                    X, Y, Z = _jdouble(X, Y, Z)
                bx, by = _to_affine(X, Y, Z)
        # Every other index is its lower bits' entry plus its top base point.  Affine adds with
        # one inversion each keep the build's heap flat (no list of Jacobian points).
        for idx in range(3, size + 1):
            top = 1
            while top << 1 <= idx:
                top <<= 1
            if idx == top:
                continue
            x1, y1 = _get(tab, idx - top)
            x2, y2 = _get(tab, top)
            x3, y3 = _affine_add(x1, y1, x2, y2)
            _put(tab, idx, x3, y3)
        self.table = tab

    def digits(self, u, length):
        """Column digits of scalar u: digit j has bit i set when bit i*d + j of u is set."""
        d = self.spacing
        out = bytearray(length)
        mask = (1 << d) - 1
        for i in range(self.teeth):
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


def _put(tab, idx, x, y):
    o = (idx - 1) * 64
    tab[o:o + 32] = x.to_bytes(32, "big")
    tab[o + 32:o + 64] = y.to_bytes(32, "big")


def _get(tab, idx):
    o = (idx - 1) * 64
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


def _affine_add(x1, y1, x2, y2):
    p = P
    if x1 == x2:
        if (y1 + y2) % p == 0:
            raise ValueError("point at infinity in table")
        lam = 3 * (x1 * x1 - 1) * _inv(2 * y1, p) % p
    else:
        lam = (y2 - y1) * _inv(x2 - x1, p) % p
    x3 = (lam * lam - x1 - x2) % p
    return x3, (lam * (x1 - x3) - y1) % p


def _comb_mul(combs, scalars):
    """Sum of scalars[i] * point(combs[i]) as Jacobian (X, Y, Z); Z == 0 is infinity."""
    p = P
    length = 0
    for c in combs:
        if c.spacing > length:
            length = c.spacing
    digs = [combs[i].digits(scalars[i], length) for i in range(len(combs))]
    tabs = [c.table for c in combs]
    pairs = list(zip(digs, tabs))
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
        for dig, tab in pairs:
            idx = dig[j]
            if not idx:
                continue
            o = (idx - 1) * 64
            x2 = int.from_bytes(tab[o:o + 32], "big")
            y2 = int.from_bytes(tab[o + 32:o + 64], "big")
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
    """The generator's comb table, built on first use (G_TEETH wide)."""
    global _G_COMB
    if _G_COMB is None or _G_COMB.teeth != G_TEETH:
        _G_COMB = None
        _G_COMB = Comb(GX, GY, G_TEETH)
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
    if isinstance(pub, Key):
        comb = pub.comb
        if comb is None:
            comb = Comb(pub.x, pub.y, ADHOC_TEETH)
    else:
        x, y = decode_point(pub)
        comb = Comb(x, y, ADHOC_TEETH)
    e = int.from_bytes(h, "big") % n
    w = _inv(s, n)
    X, Y, Z = _comb_mul((g_comb(), comb), (e * w % n, r * w % n))
    if not Z:
        return False
    # x(R) = X / Z^2 must be r mod n; compare in projective form to skip an inversion.
    p = P
    zz = Z * Z % p
    if (r * zz - X) % p == 0:
        return True
    return r + n < p and ((r + n) * zz - X) % p == 0


def _hmac(key, *parts):
    # HMAC-SHA256 from hashlib alone (MicroPython has no hmac module); key is 32 bytes.
    ipad = bytearray(64)
    opad = bytearray(64)
    for i in range(32):
        ipad[i] = key[i] ^ 0x36
        opad[i] = key[i] ^ 0x5C
    for i in range(32, 64):
        ipad[i] = 0x36
        opad[i] = 0x5C
    inner = hashlib.sha256(ipad)
    for part in parts:
        inner.update(part)
    outer = hashlib.sha256(opad)
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
