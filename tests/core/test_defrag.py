"""Defragmentation: in-order, out-of-order, IPv6, overlaps per target policy, limits."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP, Ether, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment

from appliance.core.decode import LINKTYPE_C_HDLC, LINKTYPE_PPP, Decoder
from appliance.core.defrag import EV_TINY_FIRST_V4, EV_TINY_FIRST_V6, DefragConfig, Defragmenter
from appliance.core.events import LINKTYPE_ETHERNET


def v4frag(off8: int, payload: bytes, mf: bool, ident: int = 7, proto: int = 17) -> bytes:
    ip = IP(src="10.0.0.1", dst="10.0.0.2", id=ident, proto=proto, frag=off8,
            flags="MF" if mf else 0)
    return bytes(Ether() / ip / payload)


def feed(d: Defragmenter, frames: list[bytes], ts: float = 1.0) -> list[bytes]:
    dec = Decoder()
    out = []
    for fr in frames:
        p = dec.decode(fr, LINKTYPE_ETHERNET, ts)
        assert p.frag is not None
        r = d.add(p)
        if r is not None:
            out.append(r)
    return out


def l4_of(rebuilt: bytes) -> bytes:
    p = Decoder().decode(rebuilt, LINKTYPE_ETHERNET, 0.0)
    return rebuilt[p.l4_off:]


UDP_DGRAM = bytes(UDP(sport=1111, dport=2222) / (b"A" * 24 + b"B" * 24))


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1], [2, 1, 0]])
def test_reassembles_in_any_order(order: list[int]) -> None:
    chunks = [UDP_DGRAM[0:24], UDP_DGRAM[24:48], UDP_DGRAM[48:]]
    frames = [v4frag(i * 3, chunks[i], i < 2) for i in range(3)]
    (rebuilt,) = feed(Defragmenter(), [frames[i] for i in order])
    assert l4_of(rebuilt) == UDP_DGRAM
    p = Decoder().decode(rebuilt, LINKTYPE_ETHERNET, 0.0)
    assert (p.frag, p.sp, p.dp, p.payload) == (None, 1111, 2222, b"A" * 24 + b"B" * 24)


def test_ipv6_fragments_rebuild_and_drop_the_fragment_header() -> None:
    pl = bytes(UDP(sport=5, dport=6) / (b"x" * 40))
    base = IPv6(src="2001:db8::1", dst="2001:db8::2")
    f1 = bytes(Ether() / base / IPv6ExtHdrFragment(nh=17, offset=0, m=1, id=9) / pl[:24])
    f2 = bytes(Ether() / base / IPv6ExtHdrFragment(nh=17, offset=3, m=0, id=9) / pl[24:])
    (rebuilt,) = feed(Defragmenter(), [f2, f1])
    p = Decoder().decode(rebuilt, LINKTYPE_ETHERNET, 0.0)
    assert (p.ipver, p.proto, p.frag, p.sp, p.dp) == (6, 17, None, 5, 6)
    assert p.payload == b"x" * 40


# Overlap: fragment 1 [0,16) "1"*16 MF, fragment 2 [8,24) "2"*16 MF (overlaps 8..16),
# fragment 3 [0,8) "3"*8 MF (same offset as fragment 1), last [24,32) "4"*8.
# What each policy keeps follows the rule in appliance/core/defrag.py's docstring.
@pytest.mark.parametrize("policy,expected", [
    ("first", b"1" * 16 + b"2" * 8 + b"4" * 8),
    ("last", b"3" * 8 + b"2" * 16 + b"4" * 8),
    ("bsd", b"1" * 16 + b"2" * 8 + b"4" * 8),
    ("linux", b"3" * 8 + b"1" * 8 + b"2" * 8 + b"4" * 8),
    ("windows", b"1" * 16 + b"2" * 8 + b"4" * 8),
])
def test_overlap_policies(policy: str, expected: bytes) -> None:
    frames = [v4frag(0, b"1" * 16, True, proto=253), v4frag(1, b"2" * 16, True, proto=253),
              v4frag(0, b"3" * 8, True, proto=253), v4frag(3, b"4" * 8, False, proto=253)]
    (rebuilt,) = feed(Defragmenter(DefragConfig(policy=policy)), frames)
    assert rebuilt[14 + 20:] == expected


def test_new_fragment_starting_earlier_wins_under_bsd() -> None:
    frames = [v4frag(1, b"o" * 8, True, proto=253), v4frag(0, b"n" * 16, True, proto=253),
              v4frag(2, b"z" * 8, False, proto=253)]
    (rebuilt,) = feed(Defragmenter(DefragConfig(policy="bsd")), frames)
    assert rebuilt[34:] == b"n" * 16 + b"z" * 8


def test_overlap_is_an_anomaly() -> None:
    dec = Decoder()
    d = Defragmenter()
    p1 = dec.decode(v4frag(0, b"a" * 16, True), LINKTYPE_ETHERNET, 1.0)
    p2 = dec.decode(v4frag(1, b"b" * 16, True), LINKTYPE_ETHERNET, 1.0)
    d.add(p1)
    d.add(p2)
    assert p2.events == ["decoder.ipv4.frag_overlap"]
    assert d.stats.overlaps == 1


def test_timeout_discards_incomplete_datagram() -> None:
    d = Defragmenter(DefragConfig(timeout=60))
    assert feed(d, [v4frag(0, UDP_DGRAM[:24], True)], ts=0.0) == []
    # The rest arrives after the timeout: the first half is gone, nothing is rebuilt.
    assert feed(d, [v4frag(3, UDP_DGRAM[24:], False)], ts=61.0) == []
    assert d.stats.timeouts == 1


def test_oversized_datagram_is_refused() -> None:
    dec = Decoder()
    p = dec.decode(v4frag(8189, b"x" * 16, False), LINKTYPE_ETHERNET, 1.0)
    assert Defragmenter().add(p) is None
    assert p.events == ["decoder.ipv4.frag_pkt_too_large"]


def test_memcap_bounds_held_bytes() -> None:
    d = Defragmenter(DefragConfig(memcap=1000))
    for i in range(100):
        feed(d, [v4frag(0, b"x" * 96, True, ident=i)])
    assert d.memuse <= 1000
    assert d.stats.memcap_hits > 0


def test_many_overlaps_give_up_on_the_datagram() -> None:
    d = Defragmenter()
    frames = [v4frag(0, b"x" * 16, True, proto=253) for _ in range(70)]
    frames.append(v4frag(2, b"y" * 8, False, proto=253))
    assert feed(d, frames) == []
    assert len(d.trackers) <= 1


# -- Novak's overlap pattern, from the evasion capture ------------------------------------

def _novak_case() -> object:
    from tests.core.test_stream import BUILD
    return BUILD.NOVAK


@pytest.mark.parametrize("policy", ["first", "last", "bsd", "linux", "windows", "solaris"])
def test_novak_overlap_pattern_per_policy(policy: str) -> None:
    from appliance.io.pcap import PcapReader
    from tests.conftest import PCAPS
    case = _novak_case()
    with PcapReader(PCAPS / "evasion" / "frag-overlap-novak-v4.pcap") as r:
        frames = [ev.data for ev in r]
    (rebuilt,) = feed(Defragmenter(DefragConfig(policy=policy)), frames)
    p = Decoder().decode(rebuilt, LINKTYPE_ETHERNET, 0.0)
    assert p.payload == case.expected[policy]  # type: ignore[attr-defined]


def test_ipv6_overlapping_fragments_drop_the_datagram() -> None:
    from appliance.io.pcap import PcapReader
    from tests.conftest import PCAPS
    dec = Decoder()
    d = Defragmenter(DefragConfig(policy="last"))
    events: list[str] = []
    with PcapReader(PCAPS / "evasion" / "frag-overlap-novak-v6.pcap") as r:
        for ev in r:
            p = dec.decode(ev.data, LINKTYPE_ETHERNET, ev.ts)
            assert d.add(p) is None
            events += p.events or []
    # the first overlap (fragment 4) kills the datagram; fragments 5 and 6 are ignored
    assert events == ["decoder.ipv6.frag_overlap", "decoder.ipv6.frag_ignored",
                      "decoder.ipv6.frag_ignored", "decoder.ipv6.frag_ignored"]


def test_tracker_cost_estimate_is_within_2x_of_measured() -> None:
    import tracemalloc

    from appliance.core.defrag import FRAG_OVERHEAD, TRACKER_OVERHEAD
    dec = Decoder()
    pkts = [dec.decode(v4frag(0, b"z" * 64, True, ident=i), LINKTYPE_ETHERNET, 1.0)
            for i in range(3000)]
    d = Defragmenter(DefragConfig(memcap=1 << 30))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for p in pkts:
        assert d.add(p) is None
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per = sum(s.size_diff for s in after.compare_to(before, "filename")) / 3000
    est = TRACKER_OVERHEAD + FRAG_OVERHEAD + 64
    assert d.memuse == 3000 * est
    assert est / 2 <= per <= est * 2, per


def test_memcap_bounds_incomplete_trains_with_their_overhead() -> None:
    from appliance.core.defrag import FRAG_OVERHEAD, TRACKER_OVERHEAD
    est = TRACKER_OVERHEAD + FRAG_OVERHEAD + 16
    d = Defragmenter(DefragConfig(memcap=100 * est))
    feed(d, [v4frag(0, b"q" * 16, True, ident=i) for i in range(1000)])
    assert len(d.trackers) == 100 and d.memuse <= 100 * est
    assert d.stats.memcap_hits == 900


# -- tiny first fragments (RFC 1858 section 3, RFC 7112) ------------------------------------

TCP_SEG = bytes(TCP(sport=40000, dport=80, flags="S", seq=1) / b"payload!")


def _events(frames: list[bytes]) -> list[list[str]]:
    dec, d = Decoder(), Defragmenter()
    out = []
    for fr in frames:
        p = dec.decode(fr, LINKTYPE_ETHERNET, 1.0)
        d.add(p)
        out.append(list(p.events or []))
    return out


def test_tiny_first_fragment_is_an_anomaly_and_still_reassembled() -> None:
    # The first fragment carries 8 of the 20 TCP header bytes: the flags are in the second.
    frames = [v4frag(0, TCP_SEG[:8], True, proto=6), v4frag(1, TCP_SEG[8:], False, proto=6)]
    assert _events(frames) == [[EV_TINY_FIRST_V4], []]
    (rebuilt,) = feed(Defragmenter(), frames)
    assert l4_of(rebuilt) == TCP_SEG


def test_first_fragment_holding_the_whole_header_is_not_tiny() -> None:
    assert _events([v4frag(0, TCP_SEG[:24], True, proto=6),
                    v4frag(3, TCP_SEG[24:], False, proto=6)]) == [[], []]
    # A TCP header with options (data offset 6: 24 bytes) cut after 20 bytes is tiny.
    opt = bytes(TCP(sport=1, dport=2, options=[("MSS", 1460)]) / b"12345678")
    assert (opt[12] >> 4) * 4 == 24
    assert _events([v4frag(0, opt[:16], True, proto=6)]) == [[EV_TINY_FIRST_V4]]
    # UDP needs 8 bytes; a later fragment is never "first".
    assert _events([v4frag(0, UDP_DGRAM[:8], True), v4frag(5, b"x" * 4, True)]) == [[], []]


def test_ipv6_first_fragment_must_hold_the_header_chain() -> None:
    base = IPv6(src="2001:db8::1", dst="2001:db8::2")
    tiny = bytes(Ether() / base / IPv6ExtHdrFragment(nh=6, offset=0, m=1, id=3)
                 / TCP_SEG[:16])
    whole = bytes(Ether() / base / IPv6ExtHdrFragment(nh=6, offset=0, m=1, id=4)
                  / TCP_SEG[:24])
    # A destination options header (8 bytes) after the fragment header, then TCP: the
    # first fragment must reach past both (8 + 20 bytes).
    dst = bytes(IPv6ExtHdrDestOpt(nh=6))
    assert len(dst) == 8
    chained = bytes(Ether() / base / IPv6ExtHdrFragment(nh=60, offset=0, m=1, id=5)
                    / (dst + TCP_SEG[:16]))
    assert _events([tiny, whole, chained]) == [[EV_TINY_FIRST_V6], [], [EV_TINY_FIRST_V6]]


# -- link layers and atomic fragments seen in suricata-verify ----------------------------

def test_ppp_framed_fragments_reassemble() -> None:
    # libpcap LINKTYPE_PPP with a compressed (1-byte) protocol field, as scapy writes
    # PPP() (suricata-verify defrag/bug-6887-defrag-ppp-ipv4-tcp-syn).
    pkt = IP(src="1.1.1.1", dst="2.2.2.2", id=1) / TCP(sport=12345, dport=8080, flags="S")
    frags = [b"\x21" + bytes(f) for f in fragment(pkt, fragsize=8)]
    dec, d = Decoder(), Defragmenter()
    rebuilt = []
    for fr in frags:
        p = dec.decode(fr, LINKTYPE_PPP, 1.0)
        assert p.frag is not None and p.l3_off == 1
        r = d.add(p)
        if r is not None:
            rebuilt.append(dec.decode_rebuilt(r, p.l3_off, p.ipver, p.vlan, 1.0))
    (q,) = rebuilt
    assert (q.proto, q.sp, q.dp, q.tcp_flags) == (6, 12345, 8080, 0x02)
    # The uncompressed field, with the HDLC-like address/control pair (RFC 1662).
    p = dec.decode(b"\xff\x03\x00\x21" + bytes(pkt), LINKTYPE_PPP, 1.0)
    assert (p.ipver, p.dp, p.events) == (4, 8080, None)
    assert dec.decode(b"\x00\x99" + bytes(pkt), LINKTYPE_PPP, 1.0).events == [
        "decoder.ppp.wrong_type"]
    assert dec.decode(b"\x21" + bytes(pkt)[:12], LINKTYPE_PPP, 1.0).events == [
        "decoder.ppp.ip4_pkt_too_small"]


def test_cisco_hdlc_carries_an_ethertype() -> None:
    pkt = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=53) / b"q")
    p = Decoder().decode(b"\x0f\x00\x08\x00" + pkt, LINKTYPE_C_HDLC, 1.0)
    assert (p.ipver, p.proto, p.dp, p.payload) == (4, 17, 53, b"q")
    assert Decoder().decode(b"\x0f\x00", LINKTYPE_C_HDLC, 1.0).events == [
        "decoder.chdlc.pkt_too_small"]


@pytest.mark.parametrize(("tail", "events"), [
    # An atomic fragment (offset 0, M=0) with nothing or one byte after it: the chain is
    # truncated (Suricata), not the transport header (ipv6-malformed-fragments-25/27/28).
    (b"", ["decoder.ipv6.exthdr_useless_fh", "decoder.ipv6.trunc_exthdr"]),
    (b"\x80", ["decoder.ipv6.exthdr_useless_fh", "decoder.ipv6.trunc_exthdr"]),
    # Two bytes or more reach the transport decoder, which finds its header short.
    (b"\x80\x00", ["decoder.ipv6.exthdr_useless_fh", "decoder.icmpv6.pkt_too_small"]),
])
def test_atomic_fragment_with_too_little_after_it(tail: bytes, events: list[str]) -> None:
    base = IPv6(src="2001:db8::1", dst="2001:db8::2")
    fr = bytes(Ether() / base / IPv6ExtHdrFragment(nh=58, offset=0, m=0, id=1) / tail)
    p = Decoder().decode(fr, LINKTYPE_ETHERNET, 1.0)
    assert p.frag is None
    assert p.events == events


@pytest.mark.parametrize(("nh", "inner", "event"), [
    # IPv6-in-IPv6 whose inner version nibble is not 6 (suricata-verify bug-7964-02).
    (41, b"\x45" + bytes(39), "decoder.ipv6.ipv6_in_ipv6_wrong_version"),
    (41, b"\x60" + bytes(20), "decoder.ipv6.ipv6_in_ipv6_too_small"),
    (4, b"\x60" + bytes(39), "decoder.ipv6.ipv4_in_ipv6_wrong_version"),
    (4, b"\x45" + bytes(10), "decoder.ipv6.ipv4_in_ipv6_too_small"),
])
def test_ip_in_ipv6_checks_the_inner_header(nh: int, inner: bytes, event: str) -> None:
    fr = bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2", nh=nh) / inner)
    p = Decoder().decode(fr, LINKTYPE_ETHERNET, 1.0)
    assert p.events == [event] and p.inner is None
    ok = bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2")
               / IPv6(src="2001:db8::3", dst="2001:db8::4") / UDP(sport=1, dport=2))
    q = Decoder().decode(ok, LINKTYPE_ETHERNET, 1.0)
    assert q.events is None and q.inner is not None and q.inner.dp == 2
