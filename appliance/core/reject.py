"""Building the packets a reject sends (pure: bytes in, bytes out).

For a rejected TCP packet, a RST that the receiving side accepts (RFC 9293 3.10.7: a RST
is valid when its sequence number is in the window; we use the sequence number the peer
expects next). For anything else, ICMP destination unreachable (port unreachable for
UDP, administratively prohibited otherwise), quoting the offending packet as RFC 792 and
RFC 4443 ask. The runtime wraps these in Ethernet and sends them on the bridge port.
"""

from __future__ import annotations

import struct
from typing import Final

from appliance.core.decode import PROTO_TCP, PROTO_UDP, TH_ACK, TH_FIN, TH_RST, TH_SYN, Packet

_TTL: Final = 64
# ICMPv6 errors must not exceed the minimum IPv6 MTU (RFC 4443 2.4(c)).
_ICMP6_MAX: Final = 1280


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ip4(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, _TTL, proto,
                      0, src, dst)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def _ip6(src: bytes, dst: bytes, nxt: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nxt, _TTL, src, dst) + payload


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def tcp_rst(p: Packet, to_source: bool = True) -> bytes | None:
    """A RST for the connection of TCP packet `p`, sent to its source (or destination)."""
    if p.proto != PROTO_TCP or p.tcp_flags < 0 or p.tcp_flags & TH_RST:
        return None
    seg_len = len(p.payload) + (1 if p.tcp_flags & TH_SYN else 0) + (
        1 if p.tcp_flags & TH_FIN else 0)
    if to_source:
        src, dst, sp, dp = p.dst, p.src, p.dp, p.sp
        if p.tcp_flags & TH_ACK:
            seq, ack, flags = p.tcp_ack, 0, TH_RST
        else:
            seq, ack, flags = 0, (p.tcp_seq + seg_len) & 0xFFFFFFFF, TH_RST | TH_ACK
    else:
        # Towards the destination: the next byte it expects from the source.
        src, dst, sp, dp = p.src, p.dst, p.sp, p.dp
        seq, ack, flags = (p.tcp_seq + seg_len) & 0xFFFFFFFF, 0, TH_RST
    tcp = struct.pack("!HHIIBBHHH", sp, dp, seq, ack, 5 << 4, flags, 0, 0, 0)
    csum = checksum(_pseudo(src, dst, PROTO_TCP, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    return _ip4(src, dst, PROTO_TCP, tcp) if p.ipver == 4 else _ip6(src, dst, PROTO_TCP, tcp)


def icmp_unreachable(p: Packet) -> bytes | None:
    """ICMP(v6) destination unreachable to the source of `p`, quoting it."""
    if p.ipver == 4:
        quoted = p.data[p.l3_off:p.l3_off + ((p.data[p.l3_off] & 0x0F) << 2) + 8]
        code = 3 if p.proto == PROTO_UDP else 13  # port unreachable / admin prohibited
        body = struct.pack("!BBHI", 3, code, 0, 0) + quoted
        body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
        return _ip4(p.dst, p.src, 1, body)
    if p.ipver == 6:
        quoted = p.data[p.l3_off:p.l3_off + _ICMP6_MAX - 48]
        code = 4 if p.proto == PROTO_UDP else 1  # port unreachable / admin prohibited
        body = struct.pack("!BBHI", 1, code, 0, 0) + quoted
        csum = checksum(_pseudo(p.dst, p.src, 58, len(body)) + body)
        body = body[:2] + struct.pack("!H", csum) + body[4:]
        return _ip6(p.dst, p.src, 58, body)
    return None


def reject_packets(p: Packet, how: str) -> list[tuple[bool, bytes]]:
    """What to send for a reject rule: (towards the source?, IP packet) pairs.
    `how` is the rule action: reject/rejectsrc, rejectdst or rejectboth (Suricata)."""
    out: list[tuple[bool, bytes]] = []
    if p.proto == PROTO_TCP:
        if how in ("reject", "rejectsrc", "rejectboth"):
            rst = tcp_rst(p, to_source=True)
            if rst:
                out.append((True, rst))
        if how in ("rejectdst", "rejectboth"):
            rst = tcp_rst(p, to_source=False)
            if rst:
                out.append((False, rst))
    elif how in ("reject", "rejectsrc", "rejectboth"):
        icmp = icmp_unreachable(p)
        if icmp:
            out.append((True, icmp))
    return out
