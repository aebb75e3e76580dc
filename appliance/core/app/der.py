"""A minimal, bounded DER/BER reader (ITU-T X.690) for the Kerberos and SNMP parsers.

Definite lengths only (DER; BER's indefinite form is refused, as neither Kerberos nor
SNMP over UDP uses it in practice), tag numbers up to 30 in one byte or in the long form
up to four bytes, lengths up to four bytes. Nothing raises: a TLV that does not fit its
enclosing bounds is ``None``. Nesting is bounded by the callers, which walk known
structures (no recursion on the data).
"""

from __future__ import annotations

from typing import Final, NamedTuple

# Tag classes (X.690 8.1.2.2).
UNIVERSAL: Final = 0
APPLICATION: Final = 1
CONTEXT: Final = 2

INTEGER: Final = 0x02
OCTET_STRING: Final = 0x04
OID: Final = 0x06
SEQUENCE: Final = 0x10


class Tlv(NamedTuple):
    cls: int  # UNIVERSAL, APPLICATION, CONTEXT or 3 (private)
    constructed: bool
    tag: int  # the tag number within its class
    start: int  # first byte of the value
    end: int  # one past its last byte


def read(data: bytes, pos: int, end: int) -> Tlv | None:
    """The TLV at ``pos``, contained in ``data[:end]``, or None."""
    if end > len(data):
        end = len(data)
    if pos + 2 > end:
        return None
    b = data[pos]
    cls = b >> 6
    constructed = bool(b & 0x20)
    tag = b & 0x1F
    pos += 1
    if tag == 0x1F:  # long-form tag number (8.1.2.4)
        tag = 0
        for _ in range(4):
            if pos >= end:
                return None
            c = data[pos]
            pos += 1
            tag = (tag << 7) | (c & 0x7F)
            if not c & 0x80:
                break
        else:
            return None
    if pos >= end:
        return None
    ln = data[pos]
    pos += 1
    if ln & 0x80:
        n = ln & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            return None  # indefinite (0x80) or absurd
        ln = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + ln > end:
        return None
    return Tlv(cls, constructed, tag, pos, pos + ln)


def children(data: bytes, t: Tlv, limit: int = 256) -> list[Tlv] | None:
    """The TLVs inside a constructed one (at most ``limit``), or None if they do not
    tile its value exactly."""
    out: list[Tlv] = []
    pos = t.start
    while pos < t.end:
        if len(out) >= limit:
            return None
        c = read(data, pos, t.end)
        if c is None:
            return None
        out.append(c)
        pos = c.end
    return out


def context(data: bytes, t: Tlv) -> dict[int, Tlv] | None:
    """A SEQUENCE of context-tagged fields ([0], [1]...) as tag -> field; the inner
    value of an explicit tag is read by the caller with ``inner``."""
    kids = children(data, t)
    if kids is None:
        return None
    return {k.tag: k for k in kids if k.cls == CONTEXT}


def inner(data: bytes, t: Tlv | None) -> Tlv | None:
    """The one TLV inside an explicit tag."""
    if t is None:
        return None
    return read(data, t.start, t.end)


def integer(data: bytes, t: Tlv | None) -> int | None:
    """A (signed) INTEGER of at most 8 bytes."""
    if t is None or t.cls != UNIVERSAL or t.tag != INTEGER or not 0 < t.end - t.start <= 8:
        return None
    return int.from_bytes(data[t.start : t.end], "big", signed=True)


def value(data: bytes, t: Tlv | None) -> bytes | None:
    if t is None:
        return None
    return data[t.start : t.end]
