# The one piece of DER the board reads itself: how long a certificate is, so a file of CA
# certificates back to back (/ota/ca.der) can be handed to mbedtls one at a time.


def length(data, at):
    """Bytes of the DER SEQUENCE at data[at:], header included; ValueError when it is not one
    that fits in data (a certificate's outer length takes one or two bytes: under 64 KB)."""
    if len(data) - at < 2 or data[at] != 0x30:
        raise ValueError("not a DER SEQUENCE")
    first = data[at + 1]
    if first < 0x80:
        n = 2 + first
    elif first == 0x81 and len(data) - at >= 3:
        n = 3 + data[at + 2]
    elif first == 0x82 and len(data) - at >= 4:
        n = 4 + (data[at + 2] << 8 | data[at + 3])
    else:
        raise ValueError("not a DER SEQUENCE")
    if n > len(data) - at:
        raise ValueError("DER SEQUENCE cut short")
    return n
