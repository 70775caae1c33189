# Request signing (docs/protocol.md): every device request carries
#   Authorization: Mpota-P256 id=<device_id>,ctr=<counter>,sig=<base64 r||s>
# The counter must grow strictly. Writing it to flash on every request would wear the flash
# and cost a write per request, so the board reserves counters in blocks: the record holds the
# first counter NOT yet reserved; a boot that needs counters moves that mark up by a block
# (one write) and hands out the block from RAM. A power cut only wastes the rest of a block.
# Counters also never fall below the clock in milliseconds (when it looks set).
# The record also keeps "floor", the board's anti-rollback sequence floor (the highest release
# sequence installed or rejected), a second copy of what the boot state holds: should both
# state records be lost, the board still refuses releases below it (docs/board.md).
import binascii
import hashlib

from micropython import const

from ota import records

KEY_PATH = "/ota/device.key"
COUNTER_BASE = "/ota/ctr"
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


class Signer:
    """Signs device requests with the board's key and a strictly growing counter."""

    def __init__(self, device_id, key_path=KEY_PATH):
        self.device_id = device_id
        with open(key_path, "rb") as f:
            self._key = f.read(32)
        if len(self._key) != 32:
            raise ValueError("device key must be 32 bytes")
        self._next = 0
        self._limit = 0
        # Anti-rollback floor: set by the client, merged with the record's at each reservation.
        self.floor = 0

    def _counter(self):
        if self._next >= self._limit:
            rec, index = records.read(COUNTER_BASE)
            if rec is None:
                rec = {"seq": 0, "mark": 1}
            start = max(rec["mark"], self._next, _clock_floor())
            rec["mark"] = start + _BLOCK
            # the floor read back here is what the client checks against
            self.floor = rec["floor"] = max(rec.get("floor", 0), self.floor)
            records.write(COUNTER_BASE, rec, index)
            self._next = start
            self._limit = start + _BLOCK
        ctr = self._next
        self._next += 1
        return ctr

    def authorization(self, method, path, body):
        """The Authorization header value for one request (uses up one counter)."""
        from ota import p256
        ctr = self._counter()
        msg = "mpota-req-v1\n%s\n%s\n%s\n%d\n%s" % (
            method, path, self.device_id, ctr, _hex(hashlib.sha256(body).digest()))
        sig = p256.sign(self._key, hashlib.sha256(msg.encode()).digest())
        return "Mpota-P256 id=%s,ctr=%d,sig=%s" % (
            self.device_id, ctr, binascii.b2a_base64(sig)[:-1].decode())


_signer = None


def signer(device_id):
    """The board's Signer, kept for the life of the process so counter blocks get used up."""
    global _signer
    if _signer is None or _signer.device_id != device_id:
        _signer = Signer(device_id)
    return _signer

