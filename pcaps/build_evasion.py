"""Build the TCP evasion captures in pcaps/evasion/ (run: .venv/bin/python pcaps/build_evasion.py).

Each case is one TCP connection from a client to a server that tries to make an IDS see
different bytes than the receiving host: overlapping segments with different data,
out-of-order delivery, tiny segments, a retransmission with a different payload, data
outside the receiver's window, chaff with a bad checksum, a TTL too low to reach the
receiver or IP options it discards, urgent data, tiny IP fragments, and a few more. Every
case is written over IPv4 (192.0.2.10 -> 198.51.100.20) and, where it applies, IPv6
(2001:db8::10 -> 2001:db8::20): documentation addresses only (RFC 5737, RFC 3849),
locally administered MACs, fixed timestamps (T0 = 1700000000 plus 1 ms per record), no
randomness, so rebuilding gives byte-identical files. Nothing is ever sent: these are
files.

`CASES` is also what tests/core/test_stream.py checks: for each case, the client->server
bytes the receiver reassembles under each host OS policy (`expected`, with "*" for every
policy not listed). `FRAG_CASES` are IP fragment trains (Novak's overlap pattern) with
the datagram each defrag policy rebuilds. tests/core/test_evasion_engine.py replays every
file through the whole engine with rules on those bytes. pcaps/EVASION.md describes them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

logging.getLogger("scapy").setLevel(logging.ERROR)

from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    HBHOptUnknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    PadN,
)
from scapy.layers.l2 import Dot1Q, Ether  # noqa: E402
from scapy.packet import Packet, Raw  # noqa: E402
from scapy.utils import PcapWriter  # noqa: E402

OUT = Path(__file__).resolve().parent / "evasion"
T0 = Decimal(1_700_000_000)
CMAC, SMAC = "02:00:00:00:00:0a", "02:00:00:00:00:14"
ADDRS = {4: ("192.0.2.10", "198.51.100.20"), 6: ("2001:db8::10", "2001:db8::20")}
CPORT, SPORT = 40000, 80
CISN, SISN = 1000, 5000  # initial sequence numbers of client and server
LT_ETHERNET = 1


@dataclass(frozen=True)
class Seg:
    """One packet of a case. `off` is the stream offset of the first data byte (0 = the
    byte after the SYN); for the server it counts in the server's stream."""

    client: bool
    flags: str
    off: int = 0
    data: bytes = b""
    win: int = 65535
    chksum: int | None = None  # a fixed (bad) TCP checksum
    ts: tuple[int, int] | None = None  # TCP timestamps option (tsval, tsecr)
    ack_off: int | None = None  # ACK as a stream offset of the other side (default: all)
    ttl: int = 64  # IPv4 TTL / IPv6 hop limit
    urg: int = 0  # urgent pointer (with "U" in flags)
    vlan: int | None = None  # 802.1Q tag (default: the case's)
    ipopts: bytes = b""  # raw IPv4 options (IPv4 only; may be malformed on purpose)
    v6ext: str = ""  # IPv6 extension headers: "hbh", "dst-skip", "dst-discard", "atomic"
    frag: int = 0  # IP-fragment the segment into pieces of this many bytes, sent last first


@dataclass(frozen=True)
class Case:
    name: str
    about: str
    segs: Sequence[Seg]
    # policy -> client->server bytes the receiver reassembles; "*" for the others.
    expected: dict[str, bytes]
    # StreamConfig fields the case needs (e.g. checksum validation).
    config: dict[str, object] = field(default_factory=dict)
    # The anomaly every policy must raise (Suricata event name), if any.
    event: str | None = None
    event_v6: str | None = None  # the IPv6 file's anomaly, where it differs
    versions: tuple[int, ...] = (4, 6)
    vlan: int | None = None  # 802.1Q tag on every packet


def handshake(win: int = 65535, ts: bool = False) -> list[Seg]:
    t = (100, 0) if ts else None
    return [Seg(True, "S", -1, ts=t, win=win), Seg(False, "SA", -1, ts=(500, 100) if ts else None,
                                                    win=win),
            Seg(True, "A", 0, ts=(101, 500) if ts else None, win=win)]


def server_ack(upto: int, win: int = 65535) -> Seg:
    return Seg(False, "A", 0, ack_off=upto, win=win)


REQ = b"GET /evil.exe HTTP/1.0\r\n\r\n"
_NEW_SAME_START_LONGER = {"last", "linux", "old-linux", "solaris", "hpux11"}
_NEW_BEFORE_COVERS = {"last", "bsd", "hpux10", "irix", "macos", "windows", "windows2k3",
                      "linux", "old-linux", "solaris", "hpux11"}
ALL_POLICIES = ("first", "last", "bsd", "linux", "old-linux", "windows", "windows2k3",
                "vista", "solaris", "hpux10", "hpux11", "irix", "macos")

CASES: list[Case] = [
    Case("tiny-segments", "the request in 1-byte segments",
         [*handshake(), *(Seg(True, "PA", i, REQ[i:i + 1]) for i in range(len(REQ))),
          server_ack(len(REQ))],
         {"*": REQ}),
    Case("out-of-order", "the request in 4 segments sent last first",
         [*handshake(), Seg(True, "PA", 18, REQ[18:]), Seg(True, "PA", 12, REQ[12:18]),
          Seg(True, "PA", 5, REQ[5:12]), Seg(True, "PA", 0, REQ[:5]), server_ack(len(REQ))],
         {"*": REQ}),
    Case("overlap-same-start-longer",
         "held 'good' at 5, then 'evil.exe' at 5 (same start, longer), then 'GET /' fills the "
         "hole: Linux, old Linux, Solaris, HP-UX 11 and 'last' take the new bytes",
         [*handshake(), Seg(True, "PA", 5, b"good"), Seg(True, "PA", 5, b"evil.exe"),
          Seg(True, "PA", 13, REQ[13:]), Seg(True, "PA", 0, b"GET /"), server_ack(len(REQ))],
         {**{p: REQ for p in _NEW_SAME_START_LONGER}, "*": b"GET /good.exe" + REQ[13:]},
         event="stream.reassembly_overlap_different_data"),
    Case("overlap-starts-before",
         "held 'XXXX' at 9, then 'evil.exe' at 5 covering it, then 'GET /': every policy but "
         "first and Vista takes the new bytes",
         [*handshake(), Seg(True, "PA", 9, b"XXXX"), Seg(True, "PA", 5, b"evil.exe"),
          Seg(True, "PA", 13, REQ[13:]), Seg(True, "PA", 0, b"GET /"), server_ack(len(REQ))],
         {**{p: REQ for p in _NEW_BEFORE_COVERS}, "*": b"GET /evilXXXX" + REQ[13:]},
         event="stream.reassembly_overlap_different_data"),
    Case("retransmit-different",
         "'GET /good.exe' delivered in order, then the same sequence numbers again with "
         "'GET /evil.exe': the receiver keeps its first copy",
         [*handshake(), Seg(True, "PA", 0, b"GET /good.exe"), Seg(True, "PA", 0, b"GET /evil.exe"),
          Seg(True, "PA", 13, REQ[13:]), server_ack(len(REQ))],
         {"*": b"GET /good.exe" + REQ[13:]},
         event="stream.reassembly_overlap_different_data"),
    Case("out-of-window",
         "the server advertises an 8-byte window; 'evil' is sent at offset 8 before the "
         "window opens (every receiver drops it), then the real bytes",
         [*handshake(win=8), Seg(True, "PA", 8, b"XXXXXXXX", win=8),
          Seg(True, "PA", 0, REQ[:8], win=8), server_ack(8, win=65535),
          Seg(True, "PA", 8, REQ[8:]), server_ack(len(REQ))],
         {"*": REQ}, event="stream.est_packet_out_of_window"),
    Case("bad-checksum",
         "'GET /good.exe' with a bad TCP checksum first (the receiver drops it), then the "
         "real 'GET /evil.exe'",
         [*handshake(), Seg(True, "PA", 0, b"GET /good.exe", chksum=0xBAD0),
          Seg(True, "PA", 0, REQ[:13]), Seg(True, "PA", 13, REQ[13:]), server_ack(len(REQ))],
         {"*": REQ}, config={"checksum_validation": "yes"}, event="stream.invalid_checksum"),
    Case("no-ack-chaff",
         "'GET /good.exe' without the ACK flag (dropped by a synchronized receiver, RFC 9293 "
         "3.10.7.4), then the real bytes",
         [*handshake(), Seg(True, "P", 0, b"GET /good.exe"), Seg(True, "PA", 0, REQ[:13]),
          Seg(True, "PA", 13, REQ[13:]), server_ack(len(REQ))],
         {"*": REQ}, event="stream.pkt_without_ack"),
    Case("paws-chaff",
         "timestamps negotiated; 'GET /good.exe' with an old timestamp (PAWS drops it, RFC "
         "7323 5), then the real bytes with a current one",
         [*handshake(ts=True), Seg(True, "PA", 0, b"GET /good.exe", ts=(50, 500)),
          Seg(True, "PA", 0, REQ[:13], ts=(102, 500)), Seg(True, "PA", 13, REQ[13:], ts=(103, 500)),
          server_ack(len(REQ))],
         {"*": REQ}, event="stream.pkt_invalid_timestamp"),
    Case("rst-out-of-window",
         "a RST far outside the window (ignored: the connection lives on), then the request",
         [*handshake(), Seg(True, "R", 400_000), Seg(True, "PA", 0, REQ), server_ack(len(REQ))],
         {"*": REQ}, event="stream.rst_invalid"),
    Case("syn-with-data-tfo",
         "TCP Fast Open: the SYN carries 'GET /' and the SYN/ACK acknowledges it, then the rest",
         [Seg(True, "S", -1, b"GET /"), Seg(False, "SA", -1, ack_off=5),
          Seg(True, "A", 5), Seg(True, "PA", 5, REQ[5:]), server_ack(len(REQ))],
         {"*": REQ}),
    Case("ttl-chaff",
         "'GET /good.exe' with TTL 3 (it expires before the receiver), then the real bytes "
         "with the handshake's TTL 64",
         [*handshake(), Seg(True, "PA", 0, b"GET /good.exe", ttl=3),
          Seg(True, "PA", 0, REQ[:13]), Seg(True, "PA", 13, REQ[13:]), server_ack(len(REQ))],
         {"*": REQ}, event="stream.pkt_ttl_below_flow"),
    Case("urgent-pointer",
         "'GET /ev', then 'X' as urgent data followed by 'il.exe ...' in one segment: a "
         "receiver without SO_OOBINLINE reads 'X' out of band",
         [*handshake(), Seg(True, "PA", 0, REQ[:7]), Seg(True, "PAU", 7, b"X" + REQ[7:13], urg=1),
          Seg(True, "PA", 14, REQ[13:]), server_ack(len(REQ) + 1)],
         {"*": REQ}, event="stream.urgent_data"),
    Case("zero-window",
         "the server closes its window; 'GET /good.exe' sent into it (dropped) and a 1-byte "
         "probe 'X' (not acknowledged), then the window opens and the real bytes come",
         [*handshake(), server_ack(0, win=0), Seg(True, "PA", 0, b"GET /good.exe"),
          Seg(True, "PA", 0, b"X"), server_ack(0), Seg(True, "PA", 0, REQ),
          server_ack(len(REQ))],
         {"*": REQ}, event="stream.est_packet_out_of_window"),
    Case("tiny-fragments",
         "the request in one segment cut into 8-byte IP fragments sent last first",
         [*handshake(), Seg(True, "PA", 0, REQ, frag=8), server_ack(len(REQ))],
         {"*": REQ}, event="decoder.ipv4.frag_tiny_first",
         event_v6="decoder.ipv6.frag_tiny_first"),
    Case("bad-ip-options",
         "'GET /good.exe' in a packet the receiver's IP layer discards (IPv4: an option "
         "whose length runs past the header; IPv6: a destination option of unknown type "
         "0x9E, action 'discard'), then the real bytes",
         [*handshake(), Seg(True, "PA", 0, b"GET /good.exe", ipopts=b"\x44\x28\x05\x00",
                            v6ext="dst-discard"),
          Seg(True, "PA", 0, REQ[:13]), Seg(True, "PA", 13, REQ[13:]), server_ack(len(REQ))],
         {"*": REQ}, event="decoder.ipv4.opt_invalid_len",
         event_v6="decoder.ipv6.dstopts_unknown_opt"),
    Case("ipv6-ext-atomic",
         "IPv6 only: data behind Hop-by-Hop and Destination Options headers (one with an "
         "unknown option the receiver skips), and an atomic fragment (offset 0, M=0)",
         [*handshake(), Seg(True, "PA", 0, REQ[:5], v6ext="hbh"),
          Seg(True, "PA", 5, REQ[5:13], v6ext="atomic"),
          Seg(True, "PA", 13, REQ[13:], v6ext="dst-skip"), server_ack(len(REQ))],
         {"*": REQ}, event="decoder.ipv6.exthdr_useless_fh", versions=(6,)),
    Case("vlan-8021q",
         "the connection on 802.1Q VLAN 100; 'GET /good.exe' with the same addresses and "
         "sequence numbers on VLAN 200 (another LAN: the receiver never sees it)",
         [*handshake(), Seg(True, "PA", 0, b"GET /good.exe", vlan=200),
          Seg(True, "PA", 0, REQ[:13]), Seg(True, "PA", 13, REQ[13:]), server_ack(len(REQ))],
         {"*": REQ}, vlan=100),
    Case("midstream",
         "no handshake in the capture (picked up midstream): data, the server's ACK, data",
         [Seg(True, "PA", 0, REQ[:13]), server_ack(13), Seg(True, "PA", 13, REQ[13:]),
          server_ack(len(REQ))],
         {"*": REQ}, config={"midstream": True}),
]


def _seq(isn: int, off: int) -> int:
    return (isn + 1 + off) & 0xFFFFFFFF


def build_packets(case: Case, ipver: int) -> list[Packet]:
    cli, srv = ADDRS[ipver]
    pkts: list[Packet] = []
    sent_c = 0  # highest client stream offset sent, for the server's default ACK
    syn_data = 0
    for s in case.segs:
        if s.client:
            ip = IP(src=cli, dst=srv) if ipver == 4 else IPv6(src=cli, dst=srv)
            seq = (CISN if s.off < 0 else _seq(CISN, s.off))
            ack = 0 if s.flags in ("S", "R", "P") and "A" not in s.flags else _seq(SISN, 0)
            tcp = TCP(sport=CPORT, dport=SPORT, flags=s.flags, seq=seq, ack=ack, window=s.win)
            if s.flags == "S":
                syn_data = len(s.data)
            sent_c = max(sent_c, s.off + len(s.data))
            eth = Ether(src=CMAC, dst=SMAC)
        else:
            ip = IP(src=srv, dst=cli) if ipver == 4 else IPv6(src=srv, dst=cli)
            seq = SISN if s.off < 0 else _seq(SISN, s.off)
            if s.flags == "SA":
                # Acknowledges the SYN, and the SYN's data when ack_off says so (TFO).
                ack = (CISN + 1 + (s.ack_off or 0 if syn_data else 0)) & 0xFFFFFFFF
            else:
                ack = _seq(CISN, s.ack_off if s.ack_off is not None else sent_c)
            tcp = TCP(sport=SPORT, dport=CPORT, flags=s.flags, seq=seq, ack=ack, window=s.win)
            eth = Ether(src=SMAC, dst=CMAC)
        if s.ts is not None:
            tcp.options = [("Timestamp", s.ts)]
        if s.chksum is not None:
            tcp.chksum = s.chksum
        if s.urg:
            tcp.urgptr = s.urg
        if ipver == 4:
            ip.ttl = s.ttl
        else:
            ip.hlim = s.ttl
        vlan = s.vlan if s.vlan is not None else case.vlan
        l2: Packet = eth / Dot1Q(vlan=vlan) if vlan is not None else eth
        seg: Packet = tcp / Raw(s.data) if s.data else tcp
        if ipver == 6 and s.v6ext:
            seg = _v6ext(s.v6ext) / seg
        p = l2 / ip / seg
        if s.ipopts and ipver == 4:
            p = _with_ipv4_options(p, s.ipopts)
        if s.frag:
            pkts.extend(_fragments(p, ipver, s.frag, len(pkts)))
        else:
            pkts.append(p)
    return pkts


def _v6ext(kind: str) -> Packet:
    if kind == "hbh":
        return IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\x00\x00\x00\x00")])
    if kind == "dst-skip":  # unknown type 0x1E, action 00: the receiver skips it
        return IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1E, optdata=b"\x00" * 4)])
    if kind == "dst-discard":  # unknown type 0x9E, action 10: the receiver discards
        return IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x9E, optdata=b"\x00" * 4)])
    if kind == "atomic":  # RFC 6946: a fragment header with offset 0 and M=0
        return IPv6ExtHdrFragment(offset=0, m=0, id=0x5EED)
    raise ValueError(kind)


def _with_ipv4_options(p: Packet, opts: bytes) -> Packet:
    """`p` with raw `opts` put into its IPv4 header (lengths and header checksum
    recomputed; the options themselves are left as given, malformed or not)."""
    raw = bytes(p)
    l3 = len(raw) - len(p[IP])
    ip = bytearray(raw[l3:l3 + 20]) + opts + b"\x00" * (-len(opts) % 4)
    hlen = len(ip)
    body = raw[l3 + 20:]
    ip[0] = 0x40 | (hlen // 4)
    ip[2:4] = (hlen + len(body)).to_bytes(2, "big")
    ip[10:12] = b"\x00\x00"
    ip[10:12] = _inet_sum(bytes(ip)).to_bytes(2, "big")
    return Ether(raw[:l3] + bytes(ip) + body)


def _inet_sum(data: bytes) -> int:
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _fragments(p: Packet, ipver: int, size: int, ident: int) -> list[Packet]:
    """Cut `p`'s IP payload (transport header included) into `size`-byte fragments,
    returned last first (the receiver reassembles them in any order)."""
    raw = bytes(p)
    if ipver == 4:
        l3 = len(raw) - len(p[IP])
        hlen = (raw[l3] & 0x0F) * 4
        head, body = raw[:l3 + hlen], raw[l3 + hlen:]
    else:
        l3 = len(raw) - len(p[IPv6])
        head, body = raw[:l3 + 40], raw[l3 + 40:]
    out = []
    for off in range(0, len(body), size):
        piece = body[off:off + size]
        more = off + size < len(body)
        if ipver == 4:
            ip = bytearray(head[l3:])
            ip[2:4] = (len(ip) + len(piece)).to_bytes(2, "big")
            ip[4:6] = (0x100 + ident).to_bytes(2, "big")
            ip[6:8] = ((0x2000 if more else 0) | (off // 8)).to_bytes(2, "big")
            ip[10:12] = b"\x00\x00"
            ip[10:12] = _inet_sum(bytes(ip)).to_bytes(2, "big")
            out.append(Ether(head[:l3] + bytes(ip) + piece))
        else:
            ip6 = bytearray(head[l3:])
            nh = ip6[6]
            ip6[6] = 44
            fh = bytes([nh, 0]) + (off | more).to_bytes(2, "big") + (0x100 + ident).to_bytes(4, "big")
            ip6[4:6] = (8 + len(piece)).to_bytes(2, "big")
            out.append(Ether(head[:l3] + bytes(ip6) + fh + piece))
    return out[::-1]


# -- IP fragment overlaps (Novak's pattern) -------------------------------------------------

@dataclass(frozen=True)
class FragCase:
    name: str
    about: str
    # (offset in 8-byte units, length in units, fill byte), in sending order; the last one
    # ends the datagram (MF clear). Unit 0 of the datagram is the UDP header.
    frags: Sequence[tuple[int, int, bytes]]
    # IPv4 defrag policy -> the UDP payload the receiver rebuilds (IPv6: none, RFC 5722).
    expected: dict[str, bytes]


def _units(pattern: str) -> bytes:
    return b"".join(c.encode() * 8 for c in pattern)


# Six fragments in the shape of Novak's test ("Target-Based Fragmentation Reassembly",
# 2005): fragment 4 starts inside fragment 1 and ends inside fragment 2, filling the hole
# between them; fragment 5 has fragment 3's offset and length. Each fragment's bytes are
# its number, so the rebuilt payload tells whose bytes each policy kept.
NOVAK = FragCase(
    "frag-overlap-novak",
    "six UDP fragments in Novak's overlap pattern; the payload each policy rebuilds",
    [(0, 3, b"1"), (4, 2, b"2"), (6, 3, b"3"), (1, 4, b"4"), (6, 3, b"5"), (9, 3, b"6")],
    {"first": _units("11422333666"), "windows": _units("11422333666"),
     "solaris": _units("11422333666"), "bsd": _units("11442333666"),
     "linux": _units("11442555666"), "last": _units("44442555666")})
FRAG_CASES: list[FragCase] = [NOVAK]
FRAG_SPORT, FRAG_DPORT = 40001, 5300  # a port no app-layer parser claims


def build_frag_packets(case: FragCase, ipver: int) -> list[Packet]:
    cli, srv = ADDRS[ipver]
    total = max((o + n) for o, n, _b in case.frags) * 8
    out: list[Packet] = []
    for k, (off, n, fill) in enumerate(case.frags):
        piece = fill * (n * 8)
        if off == 0:
            # The UDP header (length: the whole datagram; checksum 0: none, IPv4 only;
            # over IPv6 no checksum can be right for every policy, nor need be: RFC 5722
            # receivers drop the datagram anyway).
            piece = UDP(sport=FRAG_SPORT, dport=FRAG_DPORT, len=total, chksum=0).build() \
                + piece[8:]
        more = k != len(case.frags) - 1
        if ipver == 4:
            ip = IP(src=cli, dst=srv, id=0x4E0F, proto=17, frag=off,
                    flags="MF" if more else 0)
            out.append(Ether(src=CMAC, dst=SMAC) / ip / Raw(piece))
        else:
            fh = IPv6ExtHdrFragment(nh=17, offset=off, m=int(more), id=0x4E0F)
            out.append(Ether(src=CMAC, dst=SMAC) / IPv6(src=cli, dst=srv) / fh / Raw(piece))
    return out


def write_case(case: Case | FragCase, ipver: int, out: Path = OUT) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{case.name}-v{ipver}.pcap"
    pkts = (build_packets(case, ipver) if isinstance(case, Case)
            else build_frag_packets(case, ipver))
    with PcapWriter(str(path), linktype=LT_ETHERNET, sync=True) as w:
        for i, p in enumerate(pkts):
            p.time = T0 + Decimal(i) / 1000
            w.write(p)
    return path


def main(out: Path = OUT) -> list[Path]:
    return ([write_case(c, v, out) for c in CASES for v in c.versions]
            + [write_case(c, v, out) for c in FRAG_CASES for v in (4, 6)])


if __name__ == "__main__":
    for path in main():
        print(path)
