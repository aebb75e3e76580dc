"""Header sticky buffers (ipv4.hdr, ipv6.hdr, tcp.hdr, udp.hdr, icmpv4.hdr), byte keywords
with a variable byte count, byte_math wrap-around, byte_jump clamping, urilen alone."""

from __future__ import annotations

from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP, Ether
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

from appliance.core.commands import Log
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import LINKTYPE_ETHERNET, PacketIn
from appliance.rules.loader import detection_from_text

A, B = "192.168.1.10", "203.0.113.5"


def sids(rules: list[str], *pkts: Any) -> list[int]:
    return alert_sids(detection_from_text(rules), pkts)


def alert_sids(loaded: Any, pkts: Any) -> list[int]:
    """Replay Ethernet packets through an Engine with these rules; the sids alerted."""
    assert not loaded.failure_records(), loaded.failure_records()
    eng = Engine(EngineConfig(), loaded.engine)
    got: list[int] = []
    for n, pkt in enumerate(pkts, 1):
        for c in eng.handle(PacketIn(n, 100.0 + n, bytes(pkt), LINKTYPE_ETHERNET)):
            if isinstance(c, Log) and c.record["event_type"] == "alert":
                got.append(c.record["alert"]["signature_id"])
    return sorted(got)


def test_ipv4_header_with_options_and_tcp_header_with_options() -> None:
    rules = [
        # TTL 7 is byte 8 of the IPv4 header; the header is 24 bytes with one option.
        'alert ip any any -> any any (ipv4.hdr; content:"|07|"; offset:8; depth:1; '
        'bsize:24; sid:1;)',
        # MSS option (kind 2, length 4) right after the fixed 20 bytes, value < 536.
        'alert tcp any any -> any any (tcp.hdr; content:"|02 04|"; offset:20; '
        'byte_test:2,<,536,0,big,relative; sid:2;)',
        # The same bytes in the payload are not the header.
        'alert tcp any any -> any any (tcp.hdr; content:"HDR"; sid:3;)',
    ]
    ip_opt = IP(src=A, dst=B, ttl=7, options=b"\x01\x01\x01\x00")
    syn = TCP(sport=1000, dport=80, flags="S", seq=1, options=[("MSS", 500)])
    assert sids(rules, Ether() / ip_opt / syn / b"HDR") == [1, 2]
    big_mss = TCP(sport=1001, dport=80, flags="S", seq=1, options=[("MSS", 1460)])
    assert sids(rules, Ether() / IP(src=A, dst=B, ttl=9) / big_mss) == []


def test_ipv6_header_includes_extension_headers_and_udp_icmp_headers() -> None:
    rules = [
        # Next header 60 (destination options) in the fixed header ...
        'alert ip any any -> any any (ipv6.hdr; content:"|3c|"; offset:6; depth:1; sid:1;)',
        # ... and the extension header (next header 17 = UDP) after byte 40.
        'alert ip any any -> any any (ipv6.hdr; content:"|11|"; offset:40; depth:1; '
        'sid:2;)',
        'alert udp any any -> any any (udp.hdr; content:"|13 88|"; depth:2; sid:3;)',
        'alert icmp any any -> any any (icmpv4.hdr; content:"|08 00|"; depth:2; sid:4;)',
        'alert ip any any -> any any (ipv4.hdr; content:"|45|"; depth:1; sid:5;)',
    ]
    v6 = Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt() / \
        UDP(sport=5000, dport=53) / b"x"
    assert sids(rules, v6) == [1, 2, 3]
    ping = Ether() / IP(src=A, dst=B) / ICMP(type=8, code=0)
    assert sids(rules, ping) == [4, 5]


def test_byte_count_from_a_variable_and_byte_math_wraps() -> None:
    rules = [
        # The first byte says how many bytes the length field has (2), then jump over it.
        'alert udp any any -> any any (content:"L"; byte_extract:1,0,n,relative; '
        'byte_jump:n,0,relative; content:"END"; within:3; sid:1;)',
        # 0 - 5 is a huge unsigned number, not -5.
        'alert udp any any -> any any (content:"M"; byte_extract:1,0,v,relative; '
        'byte_math:bytes 1, offset 1, oper -, rvalue v, result r, relative; '
        'byte_test:1,<,r,0,relative; sid:2;)',
        # A negative post_offset past the buffer's start stops at the start.
        'alert udp any any -> any any (content:"JJ"; byte_jump:0,0,relative,post_offset -50; '
        'pcre:"/^ab/R"; sid:3;)',
    ]
    pkt = Ether() / IP(src=A, dst=B) / UDP(sport=1, dport=2)
    # "L", count 2, length 0x0003, then 3 bytes skipped, then "END".
    assert sids(rules, pkt / b"L\x02\x00\x03xyzEND") == [1]
    assert sids(rules, pkt / b"L\x02\x00\x03xyEND!") == []
    assert sids(rules, pkt / b"M\x05\x00\x09") == [2]
    assert sids(rules, pkt / b"abJJ") == [3]


def test_urilen_alone_makes_an_http_rule() -> None:
    rules = ['alert tcp any any -> any any (msg:"long uri"; urilen:>8; sid:1;)']
    loaded = detection_from_text(rules)
    r = loaded.program.rules[0]
    assert r.app and r.app_proto == "http"
    assert r.chains[0].key == ("http.uri", ())


def test_legacy_tls_keywords_compile_to_certificate_buffer_checks() -> None:
    from appliance.core.detect.inspect import match_chain

    loaded = detection_from_text([
        'alert tls any any -> any any (tls.subject:"O=Stamus, CN=SELKS"; sid:1;)',
        'alert tls any any -> any any (tls.issuerdn:!"CN=Evil"; sid:2;)',
        'alert tls any any -> any any (tls.fingerprint:"90:86:A4:3B"; sid:3;)',
    ])
    assert not loaded.failure_records()
    subj, issuer, fp = loaded.program.rules
    assert (subj.app, subj.app_proto) == (True, "tls")
    (ch,) = subj.chains
    assert ch.key == ("tls.cert_subject", ())
    assert match_chain(ch, b"C=FR, O=Stamus, CN=SELKS", {})
    assert not match_chain(ch, b"C=FR, O=stamus, CN=SELKS", {})  # case-sensitive
    (ch,) = issuer.chains
    assert match_chain(ch, b"CN=Good CA", {}) and not match_chain(ch, b"O=x, CN=Evil", {})
    (ch,) = fp.chains
    assert ch.key == ("tls.cert_fingerprint", ())
    assert match_chain(ch, b"90:86:a4:3b", {})  # hex case ignored, whole value
    assert not match_chain(ch, b"90:86:a4:3b:00", {})


def test_pcrexform_keeps_the_first_capture() -> None:
    from appliance.core.detect.inspect import apply_transforms

    tf = (("pcrexform", '"[a-zA-Z]+\\s+(.*)\\s+HTTP"'),)
    assert apply_transforms(b"GET /z4d4kWk.jpg HTTP/1.1", tf) == b"/z4d4kWk.jpg"
    assert apply_transforms(b"no match here", tf) == b"no match here"
    whole = (("pcrexform", '"d+"'),)  # no group: the whole match
    assert apply_transforms(b"abdddc", whole) == b"ddd"
    bad = detection_from_text(['alert http any any -> any any (http.uri; '
                               'pcrexform:"(unclosed"; content:"x"; sid:1;)'])
    (f,) = bad.failure_records()
    assert "pcrexform" in f.reason and "does not compile" in f.reason
