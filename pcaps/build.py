"""Build the small deterministic captures in pcaps/ (run: .venv/bin/python pcaps/build.py).

Every packet gets an explicit timestamp, every address and port is fixed, and nothing is
random, so rebuilding gives byte-identical files (tests/core/test_decode.py checks the
exact bytes they expect). Only documentation (RFC 5737, RFC 3849) and private (RFC 1918,
RFC 4193) addresses and locally administered MAC addresses appear: these are files, no
packet is ever sent.

Well-formed packets are built with scapy; the malformed ones are assembled from raw bytes
with `struct`, because scapy would "fix" the very lengths and versions they get wrong.
pcaps/README.md says what each file holds and what the tests expect from it.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path

# scapy warns about "inconsistent linktypes" when it writes raw IP or bytes records;
# the link type is given explicitly for every file here, so the warning is noise.
logging.getLogger("scapy").setLevel(logging.ERROR)

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, IPOption_Timestamp  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import GRE, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether  # noqa: E402
from scapy.layers.vxlan import VXLAN  # noqa: E402
from scapy.packet import Packet, Raw  # noqa: E402
from scapy.utils import PcapNgWriter, PcapWriter  # noqa: E402

OUT = Path(__file__).resolve().parent

# Link types (libpcap LINKTYPE_*).
LT_ETHERNET = 1
LT_RAW = 101
LT_SLL = 113
LT_SLL2 = 276

# 2023-11-14T22:13:20Z: a fixed epoch for every capture.
T0 = Decimal(1_700_000_000)

# The hosts of the TCP exchange in the linktype-* files.
CLIENT4, SERVER4 = "192.0.2.10", "198.51.100.20"
CLIENT6, SERVER6 = "2001:db8::10", "2001:db8::20"
CMAC, SMAC = "02:00:00:00:00:0a", "02:00:00:00:00:14"
CPORT, SPORT = 40000, 80

REQUEST = b"GET / HTTP/1.0\r\nHost: example.test\r\n\r\n"
UDP6_PAYLOAD = b"ping6"


def at(offset_us: int, extra_ns: int = 0) -> Decimal:
    """T0 + offset, in exact decimal seconds (floats would drift at nanoseconds)."""
    return T0 + Decimal(offset_us) / 1_000_000 + Decimal(extra_ns) / 1_000_000_000


def write_pcap(name: str, linktype: int, records: Iterable[tuple[Decimal, Packet | bytes]]
               ) -> Path:
    """Little-endian microsecond pcap; each record stamped with its own time."""
    path = OUT / name
    with PcapWriter(str(path), linktype=linktype, endianness="<") as w:
        for t, pkt in records:
            rec = Raw(load=pkt) if isinstance(pkt, bytes) else Raw(load=bytes(pkt))
            rec.time = t
            w.write(rec)
    return path


class NanoPcapNgWriter(PcapNgWriter):
    """scapy's pcapng writer with nanosecond timestamps (if_tsresol = 9).

    scapy (2.8) always writes microsecond pcapng and turns the time into a float on the
    way; this keeps the Decimal time so nanoseconds survive, and adds the if_tsresol
    option to the interface description block."""

    def __init__(self, filename: str, linktype: int) -> None:
        super().__init__(filename)
        self.linktype = linktype
        self.tsresol = 1_000_000_000

    def _get_time(self, packet, sec, usec):  # type: ignore[no-untyped-def]
        return packet.time, 0

    def _write_block_idb(self, linktype, ifname=None):  # type: ignore[no-untyped-def]
        body = struct.pack("<HHI", linktype, 0, 262144)
        # option 9 (if_tsresol), length 1, value 9 (10^-9 s), padded; then opt_endofopt
        opts = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
        self.f.write(self.build_block(struct.pack("<I", 1), body, options=opts))


def write_pcapng_ns(name: str, linktype: int,
                    records: Iterable[tuple[Decimal, Packet | bytes]]) -> Path:
    path = OUT / name
    with NanoPcapNgWriter(str(path), linktype) as w:
        for t, pkt in records:
            rec = Raw(load=pkt) if isinstance(pkt, bytes) else Raw(load=bytes(pkt))
            rec.time = t
            w.write(rec)
    return path


# -- the TCP exchange of the linktype-* files ---------------------------------------------

# (microseconds after T0, extra nanoseconds, from client?, packet at the IP layer)
def tcp_exchange() -> list[tuple[Decimal, bool, Packet]]:
    c = IP(src=CLIENT4, dst=SERVER4, id=1, ttl=64)
    s = IP(src=SERVER4, dst=CLIENT4, id=2, ttl=63)
    cs, ss = 1000, 5000  # initial sequence numbers
    n = len(REQUEST)
    steps: list[tuple[int, int, bool, Packet]] = [
        (0, 123, True, c / TCP(sport=CPORT, dport=SPORT, flags="S", seq=cs, window=64240)),
        (250, 256, False, s / TCP(sport=SPORT, dport=CPORT, flags="SA", seq=ss, ack=cs + 1,
                                  window=65160)),
        (512, 0, True, c / TCP(sport=CPORT, dport=SPORT, flags="A", seq=cs + 1, ack=ss + 1)),
        (1024, 7, True, c / TCP(sport=CPORT, dport=SPORT, flags="PA", seq=cs + 1, ack=ss + 1)
         / Raw(REQUEST)),
        (1300, 0, False, s / TCP(sport=SPORT, dport=CPORT, flags="A", seq=ss + 1,
                                 ack=cs + 1 + n)),
        (2000, 999, True, c / TCP(sport=CPORT, dport=SPORT, flags="FA", seq=cs + 1 + n,
                                  ack=ss + 1)),
        (2210, 0, False, s / TCP(sport=SPORT, dport=CPORT, flags="A", seq=ss + 1,
                                 ack=cs + 2 + n)),
        (2500, 0, False, s / TCP(sport=SPORT, dport=CPORT, flags="FA", seq=ss + 1,
                                 ack=cs + 2 + n)),
        (2700, 0, True, c / TCP(sport=CPORT, dport=SPORT, flags="A", seq=cs + 2 + n,
                                ack=ss + 2)),
        # and an IPv6 UDP pair, so raw IP and the cooked headers carry both versions
        (5000, 0, True, IPv6(src=CLIENT6, dst=SERVER6, hlim=64)
         / UDP(sport=CPORT, dport=7) / Raw(UDP6_PAYLOAD)),
        (5300, 0, False, IPv6(src=SERVER6, dst=CLIENT6, hlim=64)
         / UDP(sport=7, dport=CPORT) / Raw(UDP6_PAYLOAD)),
    ]
    return [(at(us, ns), from_client, pkt) for us, ns, from_client, pkt in steps]


def _mac(m: str) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


def as_ethernet(from_client: bool, ip: Packet) -> Packet:
    src, dst = (CMAC, SMAC) if from_client else (SMAC, CMAC)
    return Ether(src=src, dst=dst) / ip


def as_sll(from_client: bool, ip: Packet) -> Packet:
    # Captured on the client: its packets are outgoing (4), the server's to us (0).
    src = CMAC if from_client else SMAC
    return CookedLinux(pkttype=4 if from_client else 0, lladdrtype=1, lladdrlen=6,
                       src=_mac(src) + b"\x00\x00") / ip


def as_sll2(from_client: bool, ip: Packet) -> Packet:
    src = CMAC if from_client else SMAC
    return CookedLinuxV2(ifindex=2, lladdrtype=1, pkttype=4 if from_client else 0,
                         lladdrlen=6, src=_mac(src) + b"\x00\x00") / ip


def build_linktypes() -> None:
    ex = tcp_exchange()
    write_pcap("linktype-eth.pcap", LT_ETHERNET, [(t, as_ethernet(c, p)) for t, c, p in ex])
    write_pcap("linktype-raw.pcap", LT_RAW, [(t, p) for t, _c, p in ex])
    write_pcap("linktype-sll.pcap", LT_SLL, [(t, as_sll(c, p)) for t, c, p in ex])
    write_pcap("linktype-sll2.pcap", LT_SLL2, [(t, as_sll2(c, p)) for t, c, p in ex])
    write_pcapng_ns("linktype-eth.pcapng", LT_ETHERNET,
                    [(t, as_ethernet(c, p)) for t, c, p in ex])


# -- VLAN ----------------------------------------------------------------------------------

def build_vlan() -> None:
    a, b = "10.0.0.1", "10.0.0.2"
    m1, m2 = "02:00:00:00:01:01", "02:00:00:00:01:02"

    def pair(tags: Sequence[Packet], sp: int, dp: int) -> tuple[Packet, Packet]:
        req: Packet = Ether(src=m1, dst=m2)
        rep: Packet = Ether(src=m2, dst=m1)
        for tag in tags:
            req = req / tag.copy()
            rep = rep / tag.copy()
        return (req / IP(src=a, dst=b) / UDP(sport=sp, dport=dp) / Raw(b"query"),
                rep / IP(src=b, dst=a) / UDP(sport=dp, dport=sp) / Raw(b"answer"))

    single = pair([Dot1Q(prio=5, vlan=100)], 33000, 53)
    qinq = pair([Dot1AD(vlan=200), Dot1Q(vlan=300)], 33001, 53)
    # the same 5-tuple as `single`, on VLAN 101: another flow
    other_vlan = pair([Dot1Q(vlan=101)], 33000, 53)
    pkts = [*single, *qinq, *other_vlan]
    write_pcap("vlan.pcap", LT_ETHERNET, [(at(i * 1000), p) for i, p in enumerate(pkts)])


# -- IPv4 options, IPv6 extension headers ----------------------------------------------

def build_ipv4_options() -> None:
    a, b = "192.0.2.1", "198.51.100.2"
    eth = Ether(src="02:00:00:00:02:01", dst="02:00:00:00:02:02")
    rr = IPOption_RR(routers=["0.0.0.0", "0.0.0.0"])  # 2 empty slots: 11 bytes
    ts = IPOption_Timestamp(flg=0, timestamp=12345)  # timestamps only, 1 slot: 8 bytes
    pkts = [
        eth / IP(src=a, dst=b, id=10, options=[rr]) / UDP(sport=1024, dport=53) / Raw(b"rr"),
        eth / IP(src=a, dst=b, id=11, options=[ts])
        / TCP(sport=1025, dport=80, flags="S", seq=1),
        eth / IP(src=a, dst=b, id=12, options=[rr, ts]) / UDP(sport=1026, dport=53)
        / Raw(b"both"),
    ]
    write_pcap("ipv4-options.pcap", LT_ETHERNET, [(at(i * 1000), p) for i, p in enumerate(pkts)])


def build_ipv6_ext() -> None:
    a, b = "2001:db8:1::1", "2001:db8:2::2"
    home = "2001:db8:3::3"
    eth = Ether(src="02:00:00:00:03:01", dst="02:00:00:00:03:02")
    rh2 = IPv6ExtHdrRouting(type=2, segleft=1, addresses=[home])  # RFC 6275 type 2
    pkts = [
        eth / IPv6(src=a, dst=b) / IPv6ExtHdrHopByHop()
        / TCP(sport=2000, dport=443, flags="S", seq=100),
        eth / IPv6(src=a, dst=b) / IPv6ExtHdrDestOpt() / UDP(sport=2001, dport=53)
        / Raw(b"dstopt"),
        eth / IPv6(src=a, dst=b) / rh2 / TCP(sport=2002, dport=443, flags="S", seq=200),
        eth / IPv6(src=a, dst=b) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / rh2.copy()
        / IPv6ExtHdrDestOpt() / UDP(sport=2003, dport=53) / Raw(b"chain"),
    ]
    write_pcap("ipv6-ext.pcap", LT_ETHERNET, [(at(i * 1000), p) for i, p in enumerate(pkts)])


# -- ICMP ---------------------------------------------------------------------------------

def build_icmp() -> None:
    c4, s4 = "192.0.2.10", "198.51.100.20"
    c6, s6 = "2001:db8::10", "2001:db8::20"
    ce = Ether(src=CMAC, dst=SMAC)
    se = Ether(src=SMAC, dst=CMAC)
    probe = IP(src=c4, dst=s4, id=7, ttl=64) / UDP(sport=5353, dport=33434) / Raw(b"probe-data")
    probe6 = IPv6(src=c6, dst=s6) / UDP(sport=5354, dport=33435) / Raw(b"probe6")
    pkts = [
        ce / IP(src=c4, dst=s4, id=1) / ICMP(type=8, id=0x1234, seq=1) / Raw(b"abcdefgh"),
        se / IP(src=s4, dst=c4, id=2) / ICMP(type=0, id=0x1234, seq=1) / Raw(b"abcdefgh"),
        ce / IP(src=c4, dst=s4, id=3) / ICMP(type=8, id=0x1234, seq=2) / Raw(b"abcdefgh"),
        se / IP(src=s4, dst=c4, id=4) / ICMP(type=0, id=0x1234, seq=2) / Raw(b"abcdefgh"),
        ce / probe,
        # port unreachable quoting the probe's IP header and first 8 bytes (RFC 792)
        se / IP(src=s4, dst=c4, id=5) / ICMP(type=3, code=3) / Raw(bytes(probe)[:28]),
        ce / IPv6(src=c6, dst=s6) / ICMPv6EchoRequest(id=0x4321, seq=1, data=b"v6echo"),
        se / IPv6(src=s6, dst=c6) / ICMPv6EchoReply(id=0x4321, seq=1, data=b"v6echo"),
        # neighbour solicitation, unicast (neighbour unreachability detection, RFC 4861)
        ce / IPv6(src=c6, dst=s6, hlim=255) / ICMPv6ND_NS(tgt=s6)
        / ICMPv6NDOptSrcLLAddr(lladdr=CMAC),
        ce / probe6,
        # ICMPv6 port unreachable quoting the whole UDP probe
        se / IPv6(src=s6, dst=c6) / ICMPv6DestUnreach(code=4) / Raw(bytes(probe6)),
    ]
    write_pcap("icmp.pcap", LT_ETHERNET, [(at(i * 1000), p) for i, p in enumerate(pkts)])


# -- TCP options ----------------------------------------------------------------------------

def build_tcp_options() -> None:
    c, s = "10.1.1.1", "10.1.1.2"
    ce = Ether(src="02:00:00:00:04:01", dst="02:00:00:00:04:02")
    se = Ether(src="02:00:00:00:04:02", dst="02:00:00:00:04:01")
    cip, sip = IP(src=c, dst=s), IP(src=s, dst=c)
    nop = ("NOP", None)
    pkts = [
        ce / cip / TCP(sport=41000, dport=443, flags="S", seq=1000, options=[
            ("MSS", 1460), ("SAckOK", b""), ("Timestamp", (100000, 0)), nop, ("WScale", 7)]),
        se / sip / TCP(sport=443, dport=41000, flags="SA", seq=9000, ack=1001, options=[
            ("MSS", 1400), ("SAckOK", b""), ("Timestamp", (500000, 100000)), nop,
            ("WScale", 8)]),
        ce / cip / TCP(sport=41000, dport=443, flags="A", seq=1001, ack=9001, options=[
            nop, nop, ("Timestamp", (100010, 500000))]),
        ce / cip / TCP(sport=41000, dport=443, flags="PA", seq=1001, ack=9001, options=[
            nop, nop, ("Timestamp", (100020, 500000))]) / Raw(b"A" * 100),
        # data from 1101 onwards was lost; 1201-1301 arrived: one SACK block
        se / sip / TCP(sport=443, dport=41000, flags="A", seq=9001, ack=1101, options=[
            nop, nop, ("Timestamp", (500010, 100020)), nop, nop, ("SAck", (1201, 1301))]),
        # two SACK blocks
        se / sip / TCP(sport=443, dport=41000, flags="A", seq=9001, ack=1101, options=[
            nop, nop, ("SAck", (1201, 1301, 1401, 1501))]),
    ]
    write_pcap("tcp-options.pcap", LT_ETHERNET, [(at(i * 1000), p) for i, p in enumerate(pkts)])


# -- malformed packets, from raw bytes ----------------------------------------------------

ETH_HDR_IP4 = _mac(SMAC) + _mac(CMAC) + b"\x08\x00"
ETH_HDR_IP6 = _mac(SMAC) + _mac(CMAC) + b"\x86\xdd"
A4 = bytes([192, 0, 2, 66])
B4 = bytes([198, 51, 100, 77])
A6 = bytes.fromhex("20010db8000000000000000000000066")
B6 = bytes.fromhex("20010db8000000000000000000000077")


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def raw_ipv4(proto: int, payload: bytes, *, options: bytes = b"", version: int = 4,
             ihl: int | None = None, total: int | None = None) -> bytes:
    """An IPv4 header as given (wrong fields included) followed by `payload`."""
    hlen = 20 + len(options)
    if ihl is None:
        ihl = hlen // 4
    if total is None:
        total = hlen + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, total, 0x4D41, 0x4000, 64,
                      proto, 0, A4, B4) + options
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + payload


def raw_ipv6(nxt: int, payload: bytes, *, plen: int | None = None) -> bytes:
    if plen is None:
        plen = len(payload)
    return struct.pack("!IHBB16s16s", 6 << 28, plen, nxt, 64, A6, B6) + payload


def raw_tcp(*, offset: int = 5, options: bytes = b"", payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", 45000, 80, 1, 0, offset << 4, 0x02, 1024, 0, 0) \
        + options + payload


def raw_udp(length: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", 45001, 53, length, 0) + payload


# (name, the Suricata decoder event expected, the frame). The order is the order of the
# records in malformed.pcap; tests/core/test_decode.py keeps the same table.
MALFORMED: list[tuple[str, str, bytes]] = [
    ("ethernet frame too short", "decoder.ethernet.pkt_too_small",
     ETH_HDR_IP4[:10]),
    ("IPv4 header too short", "decoder.ipv4.pkt_too_small",
     ETH_HDR_IP4 + raw_ipv4(17, b"")[:12]),
    ("IPv4 wrong version (5)", "decoder.ipv4.wrong_ip_version",
     ETH_HDR_IP4 + raw_ipv4(17, raw_udp(12, b"data"), version=5)),
    ("IPv4 ihl 3 (< 5)", "decoder.ipv4.hlen_too_small",
     ETH_HDR_IP4 + raw_ipv4(17, raw_udp(12, b"data"), ihl=3)),
    ("IPv4 total length 16 < header length 20", "decoder.ipv4.iplen_smaller_than_hlen",
     ETH_HDR_IP4 + raw_ipv4(17, raw_udp(12, b"data"), total=16)),
    ("IPv4 total length 200 > captured 32", "decoder.ipv4.trunc_pkt",
     ETH_HDR_IP4 + raw_ipv4(17, raw_udp(12, b"data"), total=200)),
    ("IPv4 record-route option length 39 past the 4-byte option area",
     "decoder.ipv4.opt_invalid_len",
     ETH_HDR_IP4 + raw_ipv4(17, raw_udp(12, b"data"), options=b"\x07\x27\x04\x00")),
    ("TCP header too short (10 bytes)", "decoder.tcp.pkt_too_small",
     ETH_HDR_IP4 + raw_ipv4(6, raw_tcp()[:10])),
    ("TCP data offset 3 (< 5)", "decoder.tcp.invalid_optlen",
     ETH_HDR_IP4 + raw_ipv4(6, raw_tcp(offset=3, payload=b"data"))),
    ("TCP data offset 15 (60 bytes) with 24 bytes", "decoder.tcp.hlen_too_small",
     ETH_HDR_IP4 + raw_ipv4(6, raw_tcp(offset=15, payload=b"data"))),
    ("TCP MSS option length 8 past the 4-byte option area", "decoder.tcp.opt_invalid_len",
     ETH_HDR_IP4 + raw_ipv4(6, raw_tcp(offset=6, options=b"\x02\x08\x05\xb4"))),
    ("UDP too short (4 bytes)", "decoder.udp.hlen_too_small",
     ETH_HDR_IP4 + raw_ipv4(17, raw_udp(12, b"")[:4])),
    ("UDP length field 4 (< 8)", "decoder.udp.len_invalid",
     ETH_HDR_IP4 + raw_ipv4(17, raw_udp(4, b"data"))),
    ("UDP length field 100 > 12 bytes present", "decoder.udp.pkt_too_small",
     ETH_HDR_IP4 + raw_ipv4(17, raw_udp(100, b"data"))),
    ("ICMPv4 2 bytes", "decoder.icmpv4.pkt_too_small",
     ETH_HDR_IP4 + raw_ipv4(1, b"\x08\x00")),
    ("ICMPv4 6 bytes (header is 8)", "decoder.icmpv4.pkt_too_small",
     ETH_HDR_IP4 + raw_ipv4(1, b"\x08\x00\xf7\xff\x00\x00")),
    ("IPv6 header too short (30 bytes)", "decoder.ipv6.pkt_too_small",
     ETH_HDR_IP6 + raw_ipv6(17, b"")[:30]),
    ("IPv6 payload length 100 > 12 bytes present", "decoder.ipv6.trunc_pkt",
     ETH_HDR_IP6 + raw_ipv6(17, raw_udp(12, b"data"), plen=100)),
    ("IPv6 hop-by-hop header of 48 bytes in an 8-byte payload", "decoder.ipv6.trunc_exthdr",
     ETH_HDR_IP6 + raw_ipv6(0, bytes([17, 5, 1, 4, 0, 0, 0, 0]))),
    ("ICMPv6 2 bytes", "decoder.icmpv6.pkt_too_small",
     ETH_HDR_IP6 + raw_ipv6(58, b"\x80\x00")),
    ("ICMPv6 6 bytes (header is 8)", "decoder.icmpv6.pkt_too_small",
     ETH_HDR_IP6 + raw_ipv6(58, b"\x80\x00\x00\x00\x00\x00")),
    ("four 802.1Q tags (Suricata decodes 3)", "decoder.vlan.too_many_layers",
     _mac(SMAC) + _mac(CMAC) + b"\x81\x00\x00\x0a" * 4 + b"\x08\x00"
     + raw_ipv4(17, raw_udp(12, b"data"))),
]


def build_malformed() -> None:
    write_pcap("malformed.pcap", LT_ETHERNET,
               [(at(i * 1000), frame) for i, (_n, _e, frame) in enumerate(MALFORMED)])


# -- truncated file, not a pcap ---------------------------------------------------------------

TRUNCATED_CHOP = 10  # bytes cut off the end: the last record loses part of its data


def build_truncated() -> None:
    eth = Ether(src=CMAC, dst=SMAC)
    pkts = [eth / IP(src="10.9.0.1", dst="10.9.0.2", id=i) / UDP(sport=6000, dport=6001)
            / Raw(b"record %02d payload" % i) for i in range(1, 11)]
    path = write_pcap("truncated.pcap", LT_ETHERNET,
                      [(at(i * 1000), p) for i, p in enumerate(pkts)])
    data = path.read_bytes()
    path.write_bytes(data[:-TRUNCATED_CHOP])


NOT_A_PCAP = (
    "This file is plain text, not a capture.\n"
    "The appliance must refuse it with a clear one-line error naming the file,\n"
    "never a traceback, and exit with status 2 from `appliance replay`.\n"
) * 3


def build_not_a_pcap() -> None:
    (OUT / "not-a-pcap.bin").write_bytes(NOT_A_PCAP.encode())


# -- tunnels ---------------------------------------------------------------------------------

def build_tunnels() -> None:
    eth_ab = Ether(src="02:00:00:00:05:01", dst="02:00:00:00:05:02")
    eth_ba = Ether(src="02:00:00:00:05:02", dst="02:00:00:00:05:01")
    inner6_a = IPv6(src="2001:db8:a::1", dst="2001:db8:b::2")
    inner6_b = IPv6(src="2001:db8:b::2", dst="2001:db8:a::1")
    gre_a = IP(src="10.1.0.1", dst="10.2.0.2", id=1)
    gre_b = IP(src="10.2.0.2", dst="10.1.0.1", id=2)
    vx_in_a = Ether(src="02:00:00:00:06:01", dst="02:00:00:00:06:02") \
        / IP(src="172.16.0.1", dst="172.16.0.2", id=3)
    vx_in_b = Ether(src="02:00:00:00:06:02", dst="02:00:00:00:06:01") \
        / IP(src="172.16.0.2", dst="172.16.0.1", id=4)
    pkts = [
        # IPv6 in IPv4 (6in4, protocol 41)
        eth_ab / IP(src="203.0.113.1", dst="203.0.113.2", id=10)
        / inner6_a / TCP(sport=50000, dport=443, flags="S", seq=10),
        eth_ba / IP(src="203.0.113.2", dst="203.0.113.1", id=11)
        / inner6_b / TCP(sport=443, dport=50000, flags="SA", seq=20, ack=11),
        # GRE (version 0, no options) carrying IPv4
        eth_ab / IP(src="198.51.100.1", dst="198.51.100.2", id=12) / GRE()
        / gre_a / UDP(sport=5000, dport=53) / Raw(b"gre-query"),
        eth_ba / IP(src="198.51.100.2", dst="198.51.100.1", id=13) / GRE()
        / gre_b / UDP(sport=53, dport=5000) / Raw(b"gre-answer"),
        # VXLAN (UDP 4789, VNI 42) carrying Ethernet/IPv4/UDP
        eth_ab / IP(src="192.0.2.1", dst="192.0.2.2", id=14) / UDP(sport=49152, dport=4789)
        / VXLAN(flags=0x08, vni=42) / vx_in_a / UDP(sport=1234, dport=5678) / Raw(b"vx-req"),
        eth_ba / IP(src="192.0.2.2", dst="192.0.2.1", id=15) / UDP(sport=49153, dport=4789)
        / VXLAN(flags=0x08, vni=42) / vx_in_b / UDP(sport=5678, dport=1234) / Raw(b"vx-rep"),
    ]
    write_pcap("tunnels.pcap", LT_ETHERNET, [(at(i * 1000), p) for i, p in enumerate(pkts)])


# -- flow timeouts, TCP session reuse, midstream -------------------------------------------

def build_flow_timeouts() -> None:
    ce = Ether(src=CMAC, dst=SMAC)
    se = Ether(src=SMAC, dst=CMAC)
    uc, us = "192.168.10.1", "192.168.10.2"
    tc, ts = "192.168.20.1", "192.168.20.2"
    mc, ms = "192.168.30.1", "192.168.30.2"

    def udp_pair() -> list[Packet]:
        return [ce / IP(src=uc, dst=us) / UDP(sport=7000, dport=7001) / Raw(b"hello"),
                se / IP(src=us, dst=uc) / UDP(sport=7001, dport=7000) / Raw(b"hello back")]

    def tcp(src_is_client: bool, flags: str, seq: int, ack: int, data: bytes = b"") -> Packet:
        if src_is_client:
            p = ce / IP(src=tc, dst=ts) / TCP(sport=42000, dport=8080, flags=flags, seq=seq,
                                              ack=ack)
        else:
            p = se / IP(src=ts, dst=tc) / TCP(sport=8080, dport=42000, flags=flags, seq=seq,
                                              ack=ack)
        return p / Raw(data) if data else p

    conn1 = [
        tcp(True, "S", 100, 0), tcp(False, "SA", 900, 101), tcp(True, "A", 101, 901),
        tcp(True, "PA", 101, 901, b"one"), tcp(False, "A", 901, 104),
        tcp(True, "FA", 104, 901), tcp(False, "A", 901, 105),
        tcp(False, "FA", 901, 105), tcp(True, "A", 105, 902),
    ]
    # the same ports again, a new SYN after the FIN/FIN close: TCP session reuse
    conn2 = [
        tcp(True, "S", 5000, 0), tcp(False, "SA", 7000, 5001), tcp(True, "A", 5001, 7001),
        tcp(True, "PA", 5001, 7001, b"two"), tcp(False, "A", 7001, 5004),
    ]
    # picked up midstream: data without any SYN
    midstream = [
        ce / IP(src=mc, dst=ms) / TCP(sport=43000, dport=9090, flags="PA", seq=300, ack=800)
        / Raw(b"mid-1"),
        se / IP(src=ms, dst=mc) / TCP(sport=9090, dport=43000, flags="A", seq=800, ack=305),
        ce / IP(src=mc, dst=ms) / TCP(sport=43000, dport=9090, flags="PA", seq=305, ack=800)
        / Raw(b"mid-2"),
    ]
    recs: list[tuple[Decimal, Packet]] = []
    recs += [(at(i * 100_000), p) for i, p in enumerate(udp_pair())]  # t 0, 0.1
    recs += [(at(1_000_000 + i * 100_000), p) for i, p in enumerate(conn1)]  # t 1.0-1.8
    recs += [(at(2_000_000 + i * 100_000), p) for i, p in enumerate(conn2)]  # t 2.0-2.4
    recs += [(at(3_000_000 + i * 100_000), p) for i, p in enumerate(midstream)]  # t 3.0-3.2
    # 400 s of silence after the first UDP pair, then the same UDP 5-tuple again
    recs += [(at(400_000_000 + i * 100_000), p) for i, p in enumerate(udp_pair())]
    write_pcap("flow-timeouts.pcap", LT_ETHERNET, recs)


def main() -> None:
    build_linktypes()
    build_vlan()
    build_ipv4_options()
    build_ipv6_ext()
    build_icmp()
    build_tcp_options()
    build_malformed()
    build_truncated()
    build_not_a_pcap()
    build_tunnels()
    build_flow_timeouts()
    for p in sorted(OUT.iterdir()):
        if p.suffix in (".pcap", ".pcapng", ".bin"):
            print(f"{p.name:24} {p.stat().st_size:6} bytes")


def build_all() -> None:
    """Every bundled capture: these, the evasion suite and the heuristics' positives."""
    import runpy

    main()
    here = Path(__file__).resolve().parent
    for script in ("build_evasion.py", "build_heuristics.py"):
        runpy.run_path(str(here / script), run_name="__main__")


if __name__ == "__main__":
    build_all()
