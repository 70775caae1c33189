# Request signing (docs/protocol.md): every device request carries
#   Authorization: Mpota-P256 id=<device_id>,ctr=<counter>,sig=<base64 r||s>
# The counter must grow strictly. Writing it to flash on every request would wear the flash
# and cost a write per request, so the board reserves counters in blocks: the record holds the
# first counter NOT yet reserved; a conversation that needs counters moves that mark up by a
# block (one write) and hands out the block from RAM. A power cut only wastes the rest of it.
# Counters also never fall below the clock in milliseconds (when it looks set).
# The record also keeps "floor", the board's anti-rollback sequence floor (the highest release
# sequence installed or rejected), a second copy of what the boot state holds: should both
# state records be lost, the board still refuses releases below it (docs/board.md).
import binascii
import hashlib

from micropython import const

import ota
from ota import records

KEY_PATH = "/ota_id/device.key"  # ota.path: /ota/device.key on boards provisioned before
COUNTER_BASE = ("/ota/ctr0", "/ota_rec/ctr1")
_BLOCK = const(64)


def _clock_floor():
    """Unix milliseconds when the clock looks set, else 0.

    Counters never go below it, so a board whose counter records were lost (flash damage)
    still sends counters above every one it used before, once its clock is right: a request
    takes milliseconds (signing alone), so counters never run ahead of the clock.
    """
    import time
    if hasattr(time, "time_ns"):
        now_ms = time.time_ns() // 1000000
    else:
        now_ms = time.time() * 1000
    if time.gmtime(0)[0] == 2000:  # ports whose epoch is 2000-01-01
        now_ms += 946684800000
    return now_ms if now_ms > 1600000000000 else 0


def _hex(data):
    return binascii.hexlify(data).decode()


def load_key(path=KEY_PATH):
    """The board's 32-byte private scalar (ValueError when the file is not 32 bytes)."""
    with open(ota.path(path), "rb") as f:
        key = f.read(32)
    if len(key) != 32:
        raise ValueError("device key must be 32 bytes")
    return key


def _counter(sess):
    # The block reserved in RAM lives on the Session (client.py), not here, so this module can
    # be unloaded between requests (docs/board.md, Memory budget).
    if sess.ctr >= sess.ctr_end:
        rec, index = records.read(COUNTER_BASE)
        if rec is None:
            rec = {"seq": 0, "mark": 1}
        start = max(rec["mark"], sess.ctr, _clock_floor())
        rec["mark"] = start + _BLOCK
        # the floor read back here is what the client checks against
        sess.floor = rec["floor"] = max(rec.get("floor", 0), sess.floor)
        records.write(COUNTER_BASE, rec, index)
        sess.ctr = start
        sess.ctr_end = start + _BLOCK
    ctr = sess.ctr
    sess.ctr += 1
    return ctr


def authorization(sess, method, path, body):
    """The Authorization header value for one request of `sess` (uses up one counter)."""
    from ota import p256
    ctr = _counter(sess)
    msg = "mpota-req-v1\n%s\n%s\n%s\n%d\n%s" % (
        method, path, sess.device_id, ctr, _hex(hashlib.sha256(body).digest()))
    sig = p256.sign(sess.key, hashlib.sha256(msg.encode()).digest())
    return "Mpota-P256 id=%s,ctr=%d,sig=%s" % (
        sess.device_id, ctr, binascii.b2a_base64(sig)[:-1].decode())
