"""Decoder tests on the captures of pcaps/ (see pcaps/README.md) and hand-built bytes.

Expectations are exact: addresses, ports, flags, offsets, options, and the Suricata 7
decoder event name of each malformed packet (checked against Suricata's decode-*.c).
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.core.commands import Log, Verdict
from appliance.core.decode import Decoder, Packet
from appliance.core.engine import Engine
from appliance.core.events import (
    DLT_RAW_ALT,
    DLT_RAW_ALT2,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    PacketIn,
    Shutdown,
)
from appliance.io.pcap import PcapReader

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"

TH_FIN, TH_SYN, TH_PSH, TH_ACK = 0x01, 0x02, 0x08, 0x10


def ip(s: str) -> bytes:
    return ipaddress.ip_address(s).packed


def read(name: str) -> list[PacketIn]:
    with PcapReader(PCAPS / name) as r:
        return list(r)


def decode_file(name: str) -> list[Packet]:
    d = Decoder()
    return [d.decode(p.data, p.linktype, p.ts) for p in read(name)]


def run_engine(pkts: list[PacketIn]) -> list[dict[str, Any]]:
    """Every record the engine logs for these packets, shutdown included."""
    eng = Engine()
    out: list[dict[str, Any]] = []
    for p in pkts:
        out += [c.record for c in eng.handle(p) if isinstance(c, Log)]
    out += [c.record for c in eng.handle(Shutdown()) if isinstance(c, Log)]
    assert eng.stats.errors == 0
    return out


def flows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["event_type"] == "flow"]


# -- link types ---------------------------------------------------------------------------

C4, S4 = ip("192.0.2.10"), ip("198.51.100.20")
C6, S6 = ip("2001:db8::10"), ip("2001:db8::20")
REQUEST = b"GET / HTTP/1.0\r\nHost: example.test\r\n\r\n"
N = len(REQUEST)

# (ipver, src, sp, dst, dp, proto, tcp flags, seq, ack, payload) of the 11 records
EXCHANGE = [
    (4, C4, 40000, S4, 80, 6, TH_SYN, 1000, 0, b""),
    (4, S4, 80, C4, 40000, 6, TH_SYN | TH_ACK, 5000, 1001, b""),
    (4, C4, 40000, S4, 80, 6, TH_ACK, 1001, 5001, b""),
    (4, C4, 40000, S4, 80, 6, TH_PSH | TH_ACK, 1001, 5001, REQUEST),
    (4, S4, 80, C4, 40000, 6, TH_ACK, 5001, 1001 + N, b""),
    (4, C4, 40000, S4, 80, 6, TH_FIN | TH_ACK, 1001 + N, 5001, b""),
    (4, S4, 80, C4, 40000, 6, TH_ACK, 5001, 1002 + N, b""),
    (4, S4, 80, C4, 40000, 6, TH_FIN | TH_ACK, 5001, 1002 + N, b""),
    (4, C4, 40000, S4, 80, 6, TH_ACK, 1002 + N, 5002, b""),
    (6, C6, 40000, S6, 7, 17, -1, 0, 0, b"ping6"),
    (6, S6, 7, C6, 40000, 17, -1, 0, 0, b"ping6"),
]

LINKTYPE_FILES = [
    ("linktype-eth.pcap", LINKTYPE_ETHERNET, 14),
    ("linktype-raw.pcap", LINKTYPE_RAW, 0),
    ("linktype-sll.pcap", LINKTYPE_LINUX_SLL, 16),
    ("linktype-sll2.pcap", LINKTYPE_LINUX_SLL2, 20),
    ("linktype-eth.pcapng", LINKTYPE_ETHERNET, 14),
]


@pytest.mark.parametrize(("name", "linktype", "l3_off"), LINKTYPE_FILES)
def test_every_link_type_gives_the_same_tuples_flags_and_payloads(
        name: str, linktype: int, l3_off: int) -> None:
    pkts = read(name)
    assert [p.linktype for p in pkts] == [linktype] * 11
    d = Decoder()
    got = []
    for p in pkts:
        q = d.decode(p.data, p.linktype, p.ts)
        assert q.events is None
        assert q.vlan == ()
        assert q.l3_off == l3_off
        # IPv4/TCP headers are 20 bytes each, IPv6 40
        assert q.l4_off == l3_off + (20 if q.ipver == 4 else 40)
        got.append((q.ipver, q.src, q.sp, q.dst, q.dp, q.proto, q.tcp_flags, q.tcp_seq,
                    q.tcp_ack, q.payload))
    assert got == EXCHANGE


@pytest.mark.parametrize(("name", "linktype", "l3_off"), LINKTYPE_FILES)
def test_every_link_type_gives_one_tcp_and_one_udp_flow(
        name: str, linktype: int, l3_off: int) -> None:
    fl = flows(run_engine(read(name)))
    summary = sorted((f["proto"], f["src_ip"], f["src_port"], f["dest_ip"], f["dest_port"],
                      f["flow"]["pkts_toserver"], f["flow"]["pkts_toclient"], f["flow"]["state"])
                     for f in fl)
    assert summary == [
        ("TCP", "192.0.2.10", 40000, "198.51.100.20", 80, 5, 4, "closed"),
        ("UDP", "2001:0db8:0000:0000:0000:0000:0000:0010", 40000,
         "2001:0db8:0000:0000:0000:0000:0000:0020", 7, 1, 1, "established"),
    ]
    tcp = next(f for f in fl if f["proto"] == "TCP")
    # Suricata closes the session on the last ACK (LAST_ACK/TIME_WAIT -> CLOSED).
    assert tcp["tcp"]["state"] == "closed"
    assert tcp["tcp"]["tcp_flags_ts"] == "1b"  # SYN FIN PSH ACK
    assert tcp["tcp"]["tcp_flags_tc"] == "13"  # SYN FIN ACK


IP4_UDP = bytes.fromhex("4500001c000100004011f9c90a0000010a000002") + bytes.fromhex(
    "04d2162e00080000")  # 10.0.0.1:1234 -> 10.0.0.2:5678, empty UDP


@pytest.mark.parametrize(("linktype", "frame"), [
    (LINKTYPE_RAW, IP4_UDP),
    (DLT_RAW_ALT, IP4_UDP),
    (DLT_RAW_ALT2, IP4_UDP),
    (LINKTYPE_IPV4, IP4_UDP),
    (LINKTYPE_NULL, struct.pack("<I", 2) + IP4_UDP),  # BSD loopback, little-endian host
    (LINKTYPE_NULL, struct.pack(">I", 2) + IP4_UDP),  # ... big-endian host
    (LINKTYPE_ETHERNET, b"\x02" * 12 + b"\x08\x00" + IP4_UDP),
])
def test_hand_built_link_layers_reach_the_same_udp_header(linktype: int, frame: bytes) -> None:
    p = Decoder().decode(frame, linktype, 1.0)
    assert p.events is None
    assert (p.ipver, p.src, p.sp, p.dst, p.dp, p.proto) == (
        4, ip("10.0.0.1"), 1234, ip("10.0.0.2"), 5678, 17)
    assert p.l3_off == len(frame) - len(IP4_UDP)


def test_linktype_ipv6_decodes_an_ipv6_header() -> None:
    v6 = bytes(read("linktype-raw.pcap")[9].data)
    p = Decoder().decode(v6, LINKTYPE_IPV6, 1.0)
    assert (p.ipver, p.src, p.sp, p.dst, p.dp, p.payload) == (6, C6, 40000, S6, 7, b"ping6")


@pytest.mark.parametrize(("linktype", "frame", "event"), [
    (LINKTYPE_LINUX_SLL, b"\x00" * 15, "decoder.sll.pkt_too_small"),
    (LINKTYPE_LINUX_SLL2, b"\x08\x00" + b"\x00" * 17, "decoder.sll.pkt_too_small"),
    (LINKTYPE_RAW, b"\x75" + IP4_UDP[1:], "decoder.ipraw.invalid_ip_version"),
    (LINKTYPE_RAW, b"", "decoder.ipraw.invalid_ip_version"),
    (LINKTYPE_NULL, b"\x02\x00", "decoder.ltnull.pkt_too_small"),
    (LINKTYPE_NULL, struct.pack("<I", 7) + IP4_UDP, "decoder.ltnull.unsupported_type"),
    (LINKTYPE_ETHERNET, b"\x02" * 12 + b"\x81\x00\x00", "decoder.vlan.header_too_small"),
    (4242, IP4_UDP, "decoder.unsupported_linktype"),
])
def test_link_layer_anomalies(linktype: int, frame: bytes, event: str) -> None:
    p = Decoder().decode(frame, linktype, 1.0)
    assert p.events == [event]
    assert p.ipver == 0


# -- VLAN -----------------------------------------------------------------------------------

def test_vlan_ids_single_tag_and_qinq() -> None:
    pkts = decode_file("vlan.pcap")
    assert [p.vlan for p in pkts] == [(100,), (100,), (200, 300), (200, 300), (101,), (101,)]
    # 4 bytes per tag before the IPv4 header
    assert [p.l3_off for p in pkts] == [18, 18, 22, 22, 18, 18]
    assert [(p.sp, p.dp, p.payload) for p in pkts] == [
        (33000, 53, b"query"), (53, 33000, b"answer"),
        (33001, 53, b"query"), (53, 33001, b"answer"),
        (33000, 53, b"query"), (53, 33000, b"answer"),
    ]
    assert all(p.events is None for p in pkts)


def test_same_five_tuple_on_two_vlans_is_two_flows() -> None:
    fl = flows(run_engine(read("vlan.pcap")))
    got = sorted((f["vlan"], f["src_port"], f["flow"]["pkts_toserver"],
                  f["flow"]["pkts_toclient"]) for f in fl)
    assert got == [([100], 33000, 1, 1), ([101], 33000, 1, 1), ([200, 300], 33001, 1, 1)]


def test_vlan_stats_count_single_qinq_and_qinqinq() -> None:
    d = Decoder()
    for p in read("vlan.pcap"):
        d.decode(p.data, p.linktype, p.ts)
    tags3 = b"\x02" * 12 + b"\x91\x00\x20\x01" + b"\x88\xa8\x00\x02" + b"\x81\x00\xf0\x03" \
        + b"\x08\x00" + IP4_UDP
    p = d.decode(tags3, LINKTYPE_ETHERNET, 1.0)
    assert p.events is None
    assert p.vlan == (1, 2, 3)  # PCP/DEI bits (0x2000, 0xf000) masked off
    assert p.dp == 5678
    c = d.stats.counts
    assert (c["vlan"], c["vlan_qinq"], c["vlan_qinqinq"]) == (7, 2, 1)


# -- IPv4 options, IPv6 extension headers ------------------------------------------------

def test_ipv4_options_are_skipped_to_the_transport_header() -> None:
    pkts = decode_file("ipv4-options.pcap")
    assert all(p.events is None for p in pkts)
    assert [(p.l3_off, p.l4_off) for p in pkts] == [(14, 46), (14, 42), (14, 54)]
    assert [(p.proto, p.sp, p.dp, p.payload) for p in pkts] == [
        (17, 1024, 53, b"rr"), (6, 1025, 80, b""), (17, 1026, 53, b"both")]
    assert pkts[1].tcp_flags == TH_SYN


def test_ipv4_duplicate_option_is_reported() -> None:
    opts = b"\x07\x03\x04" + b"\x07\x03\x04" + b"\x00\x00"  # record-route twice
    hdr = struct.pack("!BBHHHBBH4s4s", 0x47, 0, 28 + 8, 1, 0, 64, 17, 0, ip("10.0.0.1"),
                      ip("10.0.0.2"))
    p = Decoder().decode(hdr + opts + IP4_UDP[20:], LINKTYPE_RAW, 1.0)
    assert p.events == ["decoder.ipv4.opt_duplicate"]
    assert (p.l4_off, p.dp) == (28, 5678)


def test_ipv6_extension_headers_are_skipped_to_the_right_transport() -> None:
    pkts = decode_file("ipv6-ext.pcap")
    assert all(p.events is None for p in pkts)
    a, b = ip("2001:db8:1::1"), ip("2001:db8:2::2")
    assert [(p.ipver, p.src, p.dst) for p in pkts] == [(6, a, b)] * 4
    # hop-by-hop 8; dst opts 8; routing type 2 24; hbh+dst+rh2+dst 48
    assert [p.l4_off for p in pkts] == [62, 62, 78, 102]
    assert [(p.proto, p.sp, p.dp, p.payload) for p in pkts] == [
        (6, 2000, 443, b""), (17, 2001, 53, b"dstopt"), (6, 2002, 443, b""),
        (17, 2003, 53, b"chain")]
    assert [p.tcp_seq for p in pkts if p.proto == 6] == [100, 200]


def test_ipv6_routing_type_0_and_duplicate_hop_by_hop_are_reported() -> None:
    udp = struct.pack("!HHHH", 1, 2, 8, 0)
    rh0 = bytes([17, 0, 0, 0, 0, 0, 0, 0])  # routing type 0, no addresses
    hbh_to_hbh = bytes([0, 0, 1, 4, 0, 0, 0, 0])
    hbh_to_udp = bytes([17, 0, 1, 4, 0, 0, 0, 0])
    for nxt, body, event in [(43, rh0, "decoder.ipv6.rh_type_0"),
                             (0, hbh_to_hbh + hbh_to_udp, "decoder.ipv6.exthdr_dupl_hh")]:
        pkt = struct.pack("!IHBB16s16s", 6 << 28, len(body) + 8, nxt, 64, C6, S6) + body + udp
        p = Decoder().decode(pkt, LINKTYPE_RAW, 1.0)
        assert p.events == [event]
        assert (p.proto, p.sp, p.dp) == (17, 1, 2)


# -- ICMP -------------------------------------------------------------------------------------

def test_icmp_types_codes_and_quoted_tuples() -> None:
    pkts = decode_file("icmp.pcap")
    assert all(p.events is None for p in pkts)
    assert [(p.proto, p.icmp_type, p.icmp_code) for p in pkts] == [
        (1, 8, 0), (1, 0, 0), (1, 8, 0), (1, 0, 0), (17, -1, -1), (1, 3, 3),
        (58, 128, 0), (58, 129, 0), (58, 135, 0), (17, -1, -1), (58, 1, 4)]
    inner = [p.icmp_inner for p in pkts]
    assert inner[5] == (17, C4, 5353, S4, 33434)
    assert inner[10] == (17, C6, 5354, S6, 33435)
    assert [i for n, i in enumerate(inner) if n not in (5, 10)] == [None] * 9
    # the payload starts after the 8-byte ICMP header: echo data, the NS target address
    assert pkts[0].payload == b"abcdefgh"
    assert pkts[6].payload == b"v6echo"
    assert pkts[8].payload[:16] == S6


@pytest.mark.parametrize(("quote", "event"), [
    (IP4_UDP[:10], "decoder.icmpv4.ipv4_trunc_pkt"),
    (b"\x60" + IP4_UDP[1:], "decoder.icmpv4.ipv4_unknown_ver"),
], ids=["quote-10-bytes", "quote-version-6"])
def test_icmpv4_error_with_a_bad_quoted_packet(quote: bytes, event: str) -> None:
    icmp = b"\x03\x03\x00\x00\x00\x00\x00\x00" + quote  # port unreachable
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                      ip("10.0.0.2"), ip("10.0.0.1"))
    p = Decoder().decode(hdr + icmp, LINKTYPE_RAW, 1.0)
    assert (p.icmp_type, p.icmp_code, p.icmp_inner) == (3, 3, None)
    assert p.events == [event]


def test_icmp_errors_join_the_udp_flows_they_quote() -> None:
    fl = flows(run_engine(read("icmp.pcap")))
    udp = sorted((f["src_port"], f["flow"]["pkts_toserver"], f["flow"]["pkts_toclient"])
                 for f in fl if f["proto"] == "UDP")
    # probe to the server, the ICMP error back to the client: one flow each
    assert udp == [(5353, 1, 1), (5354, 1, 1)]
    echo4 = [f for f in fl if f["proto"] == "ICMP"]
    assert len(echo4) == 1
    assert (echo4[0]["icmp_type"], echo4[0]["response_icmp_type"]) == (8, 0)
    assert (echo4[0]["flow"]["pkts_toserver"], echo4[0]["flow"]["pkts_toclient"]) == (2, 2)


# -- TCP options -------------------------------------------------------------------------------

def test_tcp_options_are_decoded() -> None:
    pkts = decode_file("tcp-options.pcap")
    assert all(p.events is None for p in pkts)
    got = []
    for p in pkts:
        o = p.tcp_opts
        assert o is not None
        got.append((o.mss, o.wscale, o.sackok, o.tsval, o.tsecr, o.sack))
    assert got == [
        (1460, 7, True, 100000, 0, ()),
        (1400, 8, True, 500000, 100000, ()),
        (None, None, False, 100010, 500000, ()),
        (None, None, False, 100020, 500000, ()),
        (None, None, False, 500010, 100020, ((1201, 1301),)),
        (None, None, False, None, None, ((1201, 1301), (1401, 1501))),
    ]
    assert pkts[3].payload == b"A" * 100
    assert [p.l4_off for p in pkts] == [34] * 6


def _tcp(options: bytes) -> bytes:
    assert len(options) % 4 == 0
    tcp = struct.pack("!HHIIBBHHH", 1111, 2222, 1, 0, (5 + len(options) // 4) << 4, TH_SYN,
                      1024, 0, 0) + options
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0,
                      ip("10.0.0.1"), ip("10.0.0.2"))
    return hdr + tcp


@pytest.mark.parametrize(("options", "event", "fields"), [
    # MSS twice: the second wins, as it is read last
    (b"\x02\x04\x05\xb4\x02\x04\x05\x78", "decoder.tcp.opt_duplicate", (1400, None, ())),
    (b"\x05\x06\x00\x00\x00\x01\x00\x00", "decoder.tcp.opt_invalid_len", (None, None, ())),
    (b"\x03\x04\x07\x00", "decoder.tcp.opt_invalid_len", (None, None, ())),
    (b"\x01\x01\x01\x03", "decoder.tcp.opt_invalid_len", (None, None, ())),  # kind, no length
    (b"\x03\x03\x0e\x00", None, (None, 14, ())),  # window scale 14, then end of list
])
def test_tcp_option_anomalies(options: bytes, event: str | None,
                              fields: tuple[Any, ...]) -> None:
    p = Decoder().decode(_tcp(options), LINKTYPE_RAW, 1.0)
    assert p.events == (None if event is None else [event])
    assert p.tcp_flags == TH_SYN and (p.sp, p.dp) == (1111, 2222)
    o = p.tcp_opts
    assert o is not None
    assert (o.mss, o.wscale, o.sack) == fields


# -- malformed packets ---------------------------------------------------------------------------

# Record order of pcaps/malformed.pcap, with Suricata 7's decoder event for each.
MALFORMED_EVENTS: list[Any] = [
    "decoder.ethernet.pkt_too_small",
    "decoder.ipv4.pkt_too_small",
    "decoder.ipv4.wrong_ip_version",
    "decoder.ipv4.hlen_too_small",
    "decoder.ipv4.iplen_smaller_than_hlen",
    "decoder.ipv4.trunc_pkt",
    "decoder.ipv4.opt_invalid_len",
    "decoder.tcp.pkt_too_small",
    "decoder.tcp.invalid_optlen",
    "decoder.tcp.hlen_too_small",
    "decoder.tcp.opt_invalid_len",
    "decoder.udp.hlen_too_small",
    "decoder.udp.len_invalid",
    "decoder.udp.pkt_too_small",
    "decoder.icmpv4.pkt_too_small",
    "decoder.icmpv4.pkt_too_small",
    "decoder.ipv6.pkt_too_small",
    "decoder.ipv6.trunc_pkt",
    "decoder.ipv6.trunc_exthdr",
    "decoder.icmpv6.pkt_too_small",
    "decoder.icmpv6.pkt_too_small",
    "decoder.vlan.too_many_layers",
]


@pytest.fixture(scope="module")
def malformed() -> list[PacketIn]:
    return read("malformed.pcap")


def test_malformed_pcap_has_one_record_per_expected_event(malformed: list[PacketIn]) -> None:
    assert len(malformed) == len(MALFORMED_EVENTS) == 22


def _malformed_params() -> list[Any]:
    return [pytest.param(n, e, id=f"{n}-{e}") for n, e in enumerate(MALFORMED_EVENTS)]


@pytest.mark.parametrize(("index", "event"), _malformed_params())
def test_malformed_packet_gives_its_suricata_event(malformed: list[PacketIn], index: int,
                                                   event: str) -> None:
    rec = malformed[index]
    p = Decoder().decode(rec.data, rec.linktype, rec.ts)
    assert p.events == [event]


def test_malformed_packets_never_raise_and_each_gets_one_verdict_and_its_anomaly(
        malformed: list[PacketIn]) -> None:
    eng = Engine()
    for rec in malformed:
        p = Decoder().decode(rec.data, rec.linktype, rec.ts)
        cmds = eng.handle(rec)
        verdicts = [c for c in cmds if isinstance(c, Verdict)]
        assert [v.packet_id for v in verdicts] == [rec.id]
        logged = [c.record["anomaly"]["event"] for c in cmds if isinstance(c, Log)
                  and c.record["event_type"] == "anomaly"
                  and c.record["anomaly"]["type"] == "decode"]
        assert logged == (p.events or [])
        assert all(c.record["pcap_cnt"] == rec.id for c in cmds if isinstance(c, Log)
                   and c.record["event_type"] == "anomaly")
    assert eng.stats.errors == 0
    assert eng.stats.packets == 22


def test_malformed_packets_decode_only_up_to_the_bad_layer(malformed: list[PacketIn]) -> None:
    pkts = [Decoder().decode(r.data, r.linktype, r.ts) for r in malformed]
    # link, IPv4 and IPv6 header errors: no network layer at all
    assert [n for n, p in enumerate(pkts) if p.ipver == 0] == [0, 1, 2, 3, 4, 5, 16, 17, 21]
    # transport errors keep the IP layer but no ports
    for n in (7, 8, 9, 11, 12, 13, 14, 19):
        assert (pkts[n].ipver != 0, pkts[n].has_l4, pkts[n].sp, pkts[n].dp) == (True, False, 0, 0)
    # a bad IPv4 option length still decodes the UDP header behind the options
    assert (pkts[6].proto, pkts[6].sp, pkts[6].dp, pkts[6].payload) == (17, 45001, 53, b"data")


# -- tunnels ---------------------------------------------------------------------------------------

def test_tunnels_carry_an_inner_packet_with_the_inner_addresses() -> None:
    pkts = decode_file("tunnels.pcap")
    assert all(p.events is None for p in pkts)
    assert [(p.src, p.dst, p.proto) for p in pkts] == [
        (ip("203.0.113.1"), ip("203.0.113.2"), 41), (ip("203.0.113.2"), ip("203.0.113.1"), 41),
        (ip("198.51.100.1"), ip("198.51.100.2"), 47), (ip("198.51.100.2"), ip("198.51.100.1"), 47),
        (ip("192.0.2.1"), ip("192.0.2.2"), 17), (ip("192.0.2.2"), ip("192.0.2.1"), 17)]
    inner = []
    for p in pkts:
        q = p.inner
        assert q is not None and q.inner is None and q.events is None
        inner.append((q.ipver, q.src, q.sp, q.dst, q.dp, q.proto, q.tcp_flags, q.payload))
    a6, b6 = ip("2001:db8:a::1"), ip("2001:db8:b::2")
    g1, g2 = ip("10.1.0.1"), ip("10.2.0.2")
    v1, v2 = ip("172.16.0.1"), ip("172.16.0.2")
    assert inner == [
        (6, a6, 50000, b6, 443, 6, TH_SYN, b""),
        (6, b6, 443, a6, 50000, 6, TH_SYN | TH_ACK, b""),
        (4, g1, 5000, g2, 53, 17, -1, b"gre-query"),
        (4, g2, 53, g1, 5000, 17, -1, b"gre-answer"),
        (4, v1, 1234, v2, 5678, 17, -1, b"vx-req"),
        (4, v2, 5678, v1, 1234, 17, -1, b"vx-rep"),
    ]


def test_each_inner_conversation_is_its_own_flow() -> None:
    fl = flows(run_engine(read("tunnels.pcap")))
    # Only TCP/UDP flows: whether the outer 6in4/GRE packets get flows of their own is the
    # engine's policy (Suricata keeps flows for TCP, UDP, ICMP, SCTP and ESP).
    got = sorted((f["proto"], f["src_ip"], f["src_port"], f["dest_ip"], f["dest_port"],
                  f["flow"]["pkts_toserver"], f["flow"]["pkts_toclient"])
                 for f in fl if f["proto"] in ("TCP", "UDP"))
    assert got == [
        ("TCP", "2001:0db8:000a:0000:0000:0000:0000:0001", 50000,
         "2001:0db8:000b:0000:0000:0000:0000:0002", 443, 1, 1),
        ("UDP", "10.1.0.1", 5000, "10.2.0.2", 53, 1, 1),
        ("UDP", "172.16.0.1", 1234, "172.16.0.2", 5678, 1, 1),
        # the VXLAN replies leave from another source port: two outer flows
        ("UDP", "192.0.2.1", 49152, "192.0.2.2", 4789, 1, 0),
        ("UDP", "192.0.2.2", 49153, "192.0.2.1", 4789, 1, 0),
    ]


def test_vxlan_needs_the_i_flag_and_port_4789() -> None:
    data = read("tunnels.pcap")[4].data
    vx = 14 + 20 + 8  # VXLAN header offset
    no_i_flag = data[:vx] + b"\x00" + data[vx + 1:]
    p = Decoder().decode(no_i_flag, LINKTYPE_ETHERNET, 1.0)
    assert p.inner is None and p.events is None and p.dp == 4789
    other_port = data[:36] + struct.pack("!H", 4790) + data[38:]
    p = Decoder().decode(other_port, LINKTYPE_ETHERNET, 1.0)
    assert p.inner is None and p.dp == 4790


# -- robustness (hypothesis) ---------------------------------------------------------------

ALL_LINKTYPES = [LINKTYPE_NULL, LINKTYPE_ETHERNET, DLT_RAW_ALT, DLT_RAW_ALT2, LINKTYPE_RAW,
                 LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2]

SEED_FILES = ["linktype-eth.pcap", "linktype-raw.pcap", "linktype-sll.pcap",
              "linktype-sll2.pcap", "vlan.pcap", "ipv4-options.pcap", "ipv6-ext.pcap",
              "icmp.pcap", "tcp-options.pcap", "tunnels.pcap", "flow-timeouts.pcap"]


def _ip_part(p: PacketIn) -> bytes | None:
    """The IP packet inside a seed record, to put behind any link header."""
    q = Decoder().decode(p.data, p.linktype, p.ts)
    return bytes(p.data[q.l3_off:]) if q.l3_off >= 0 else None


def _wrap(linktype: int, ip_pkt: bytes) -> bytes:
    v6 = ip_pkt[0] >> 4 == 6
    etype = b"\x86\xdd" if v6 else b"\x08\x00"
    if linktype == LINKTYPE_ETHERNET:
        return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02" + etype + ip_pkt
    if linktype == LINKTYPE_LINUX_SLL:
        return b"\x00\x00\x00\x01\x00\x06" + b"\x02" * 6 + b"\x00\x00" + etype + ip_pkt
    if linktype == LINKTYPE_LINUX_SLL2:
        return etype + b"\x00\x00\x00\x00\x00\x02\x00\x01\x00\x06" + b"\x02" * 8 + ip_pkt
    if linktype == LINKTYPE_NULL:
        return struct.pack("<I", 30 if v6 else 2) + ip_pkt
    return ip_pkt  # the raw IP link types


def _seeds() -> list[tuple[int, bytes]]:
    seeds: list[tuple[int, bytes]] = []
    for name in SEED_FILES:
        for p in read(name):
            seeds.append((p.linktype, bytes(p.data)))  # as captured (VLAN tags included)
            ip_pkt = _ip_part(p)
            if ip_pkt:
                seeds += [(lt, _wrap(lt, ip_pkt)) for lt in ALL_LINKTYPES
                          if lt not in (LINKTYPE_IPV4, LINKTYPE_IPV6)
                          or (ip_pkt[0] >> 4) == (4 if lt == LINKTYPE_IPV4 else 6)]
    return seeds


SEEDS = _seeds()


def test_seeds_cover_every_link_type_and_decode_cleanly() -> None:
    assert {lt for lt, _ in SEEDS} == set(ALL_LINKTYPES)
    d = Decoder()
    for lt, data in SEEDS:
        p = d.decode(data, lt, 1.0)
        assert p.events is None, (lt, data.hex())
        assert p.ipver in (4, 6)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[int, bytes]:
    """A valid packet with bit flips, truncations and byte insertions applied."""
    lt, data = draw(st.sampled_from(SEEDS))
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert"]))
        if op == "flip" and b:
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del b[draw(st.integers(0, len(b))):]
        elif op == "insert":
            i = draw(st.integers(0, len(b)))
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
    return lt, bytes(b)


random_frames = st.tuples(st.sampled_from([*ALL_LINKTYPES, 4242]), st.binary(max_size=160))
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decodes_without_raising(lt: int, data: bytes) -> None:
    p = Decoder().decode(data, lt, 1.0)
    assert isinstance(p, Packet)
    # "decoder.malformed" is the net under a missing length check: it must never be needed
    assert "decoder.malformed" not in (p.events or [])


@settings(FUZZ, max_examples=400)
@given(random_frames)
def test_random_bytes_never_raise(frame: tuple[int, bytes]) -> None:
    _decodes_without_raising(*frame)


@settings(FUZZ, max_examples=900)
@given(mutated())
def test_mutated_valid_packets_never_raise(frame: tuple[int, bytes]) -> None:
    _decodes_without_raising(*frame)


@settings(FUZZ, max_examples=600)
@given(st.lists(st.one_of(mutated(), random_frames), min_size=1, max_size=6),
       st.integers(1, 2**31))
def test_engine_gives_exactly_one_verdict_per_packet(frames: list[tuple[int, bytes]],
                                                     first_id: int) -> None:
    eng = Engine()
    for n, (lt, data) in enumerate(frames):
        pid = first_id + n
        cmds = eng.handle(PacketIn(pid, 1000.0 + n * 0.5, data, lt))
        verdicts = [c for c in cmds if isinstance(c, Verdict)]
        assert len(verdicts) == 1
        assert verdicts[0].packet_id == pid
    assert eng.stats.errors == 0
    assert eng.stats.packets == len(frames)


class _GeneralOnly(Decoder):
    """The decoder without its IPv4 fast path: every packet the general way."""

    __slots__ = ()

    def decode(self, data: bytes, linktype: int, ts: float) -> Packet:
        return self._decode(data, linktype, ts)


def _same_decoding(lt: int, data: bytes, fast: Decoder, general: Decoder) -> None:
    a = fast.decode(data, lt, 1.5)
    b = general.decode(data, lt, 1.5)
    for name in Packet.__slots__:
        if name == "tcp_opts":
            oa, ob = a.tcp_opts, b.tcp_opts
            assert (oa is None) == (ob is None), data.hex()
            if oa is not None and ob is not None:
                assert all(getattr(oa, n) == getattr(ob, n) for n in oa.__slots__), data.hex()
        elif name != "inner":
            assert getattr(a, name) == getattr(b, name), (name, data.hex())
    assert (a.inner is None) == (b.inner is None)
    assert fast.stats.counts == general.stats.counts, data.hex()
    assert fast.stats.events == general.stats.events, data.hex()


def test_fast_path_decodes_the_sample_captures_as_the_general_path() -> None:
    fast, general = Decoder(), _GeneralOnly()
    taken = 0
    for lt, data in SEEDS:
        _same_decoding(lt, data, fast, general)
        taken += lt == LINKTYPE_ETHERNET and data[12:15] == b"\x08\x00\x45"
        # And each IPv4 Ethernet seed again as NFQUEUE hands packets over (raw IP).
        if lt == LINKTYPE_ETHERNET and data[12:14] == b"\x08\x00":
            _same_decoding(LINKTYPE_RAW, data[14:], fast, general)
    assert taken  # the seeds do exercise the fast path
    assert fast.stats.fast_raw


@settings(FUZZ, max_examples=900)
@given(mutated())
def test_fast_path_decodes_mutated_packets_as_the_general_path(
        frame: tuple[int, bytes]) -> None:
    # Bit flips, truncations and insertions reach every length and flag check the fast
    # path makes: it must either decline the packet or decode it exactly as the general
    # path does (fields, counters, events).
    _same_decoding(*frame, Decoder(), _GeneralOnly())


def _eth_ip4(proto: int, l4: bytes, tot: int | None = None, fragf: int = 0) -> bytearray:
    n = 20 + len(l4) if tot is None else tot
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, n, 7, fragf, 64, proto, 0, C4, S4)
    return bytearray(b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + hdr + l4)


def test_fast_path_boundaries_match_the_general_path() -> None:
    """Every length and flag the fast path checks, at and around each boundary: IPv4
    total length, capture length (truncation, padding), fragment bits, TCP data offset
    (with options), UDP length and the tunnel ports it must leave to the general path."""
    fast, general = Decoder(), _GeneralOnly()
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 2, 8 << 4, TH_ACK, 512, 0, 0) + \
        b"\x02\x04\x05\xb4\x01\x01\x04\x02\x01\x03\x03\x07" + b"payload"
    udp_body = b"0123456789"
    frames: list[bytearray] = []
    for proto, l4 in ((6, tcp), (17, struct.pack("!HHHH", 5353, 53, 18, 0) + udp_body)):
        base = _eth_ip4(proto, l4)
        for tot in range(0, len(base) - 14 + 3):
            f = _eth_ip4(proto, l4, tot=tot)
            for cut in (len(f) - 1, len(f), len(f) + 4):  # truncated, exact, padded
                frames.append((f + b"\x00" * 8)[:cut])
        for fragf in (0x4000, 0x8000, 0x2000, 0x0001, 0x1FFF, 0x6000):
            frames.append(_eth_ip4(proto, l4, fragf=fragf))
    for doff in range(16):
        f = _eth_ip4(6, tcp)
        f[34 + 12] = doff << 4
        frames.append(f)
    for ulen in range(0, 8 + len(udp_body) + 3):
        frames.append(_eth_ip4(17, struct.pack("!HHHH", 5353, 53, ulen, 0) + udp_body))
    for sp, dp in ((1, 4789), (1, 6081), (1, 3544), (3544, 1), (4789, 1), (6081, 1)):
        frames.append(_eth_ip4(17, struct.pack("!HHHH", sp, dp, 18, 0) + udp_body))
    # The NOP, NOP, timestamps layout the fast path reads directly, and near misses.
    for opts in (b"\x01\x01\x08\x0a" + bytes(range(1, 9)),
                 b"\x01\x01\x08\x0b" + bytes(range(1, 9)),
                 b"\x01\x01\x08\x0a" + bytes(range(1, 9)) + b"\x00" * 4,
                 b"\x01\x08\x0a" + bytes(range(1, 9)) + b"\x01",
                 b"\x01\x01\x08\x0a" + bytes(range(1, 5)),
                 b"\x08\x0a" + bytes(range(1, 9)) + b"\x08\x0a"):
        doff = (20 + len(opts)) // 4
        hdr = struct.pack("!HHIIBBHHH", 40000, 80, 1, 2, doff << 4, TH_ACK, 512, 0, 0)
        frames.append(_eth_ip4(6, hdr + opts + b"data"))
    for f in frames:
        _same_decoding(LINKTYPE_ETHERNET, bytes(f), fast, general)
        # The same IP packets as NFQUEUE hands them over: no link header.
        _same_decoding(LINKTYPE_RAW, bytes(f[14:]), fast, general)
    assert fast.stats.fast_raw and fast.stats.fast_tcp > fast.stats.fast_raw
    assert fast.stats.fast_v6 == 0


def _eth_ip6(nxt: int, body: bytes, plen: int | None = None, version: int = 6) -> bytearray:
    n = len(body) if plen is None else plen
    hdr = struct.pack("!IHBB16s16s", version << 28, n, nxt, 64, C6, S6)
    return bytearray(b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x86\xdd"
                     + hdr + body)


def test_ipv6_fast_path_boundaries_match_the_general_path() -> None:
    """IPv6 without extension headers: the payload length at and around the data's
    (0 is a jumbogram), truncation and padding, the next headers the fast path must
    leave alone (hop-by-hop, fragment, none, ICMPv6), a wrong version, TCP data offsets
    and UDP lengths, on Ethernet and as raw IP."""
    fast, general = Decoder(), _GeneralOnly()
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 2, 8 << 4, TH_ACK, 512, 0, 0) + \
        b"\x01\x01\x08\x0a" + bytes(range(1, 9)) + b"payload"
    udp = struct.pack("!HHHH", 5353, 53, 18, 0) + b"0123456789"
    frames: list[bytearray] = []
    for nxt, body in ((6, tcp), (17, udp)):
        for plen in range(0, len(body) + 3):
            f = _eth_ip6(nxt, body, plen=plen)
            for cut in (len(f) - 1, len(f), len(f) + 4):
                frames.append((f + b"\x00" * 8)[:cut])
    for nxt in (0, 44, 59, 58, 4, 41):
        frames.append(_eth_ip6(nxt, udp))
    frames.append(_eth_ip6(6, tcp, version=4))
    for doff in range(16):
        f = _eth_ip6(6, tcp)
        f[54 + 12] = doff << 4
        frames.append(f)
    for ulen in range(0, len(udp) + 3):
        frames.append(_eth_ip6(17, struct.pack("!HHHH", 5353, 53, ulen, 0) + udp[8:]))
    for sp, dp in ((1, 4789), (1, 6081), (1, 3544), (3544, 1)):
        frames.append(_eth_ip6(17, struct.pack("!HHHH", sp, dp, 18, 0) + udp[8:]))
    for f in frames:
        _same_decoding(LINKTYPE_ETHERNET, bytes(f), fast, general)
        _same_decoding(LINKTYPE_RAW, bytes(f[14:]), fast, general)
    assert fast.stats.fast_v6 and fast.stats.fast_raw and fast.stats.fast_udp
