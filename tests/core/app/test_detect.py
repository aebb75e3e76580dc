"""Protocol detection by content, port only as a hint."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.app import APP_PROTOS, PARSERS, new_parser
from appliance.core.app.detect import DETECT_DEPTH, ProtoDetector, detect_stream, detect_udp
from tests.core.app import PCAPS, oracle_events, tcp_flows

CLIENT_HELLO = bytes.fromhex("160301002e0100002a0303") + b"\x00" * 32 + b"\x00\x00\x02\x00\x2f\x01\x00"
DNS_QUERY = (struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0)
             + b"\x07example\x03com\x00\x00\x01\x00\x01")
DNS_TCP = struct.pack("!H", len(DNS_QUERY)) + DNS_QUERY


def detect(chunks: list[tuple[bool, bytes]], sport: int = 40000, dport: int = 12345,
           step: int = 0) -> str | None:
    d = ProtoDetector(sport, dport)
    r = None
    for to_server, data in chunks:
        pieces = [data[i : i + step] for i in range(0, len(data), step)] if step else [data]
        for piece in pieces:
            r = d.feed(piece, to_server)
            if r is not None:
                return r
    return r


CASES = [
    ("http", [(True, b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")], 8888),
    ("http", [(True, b"\r\npost /x HTTP/1.0\r\n\r\n")], 1),
    ("http", [(False, b"HTTP/1.1 200 OK\r\n\r\n")], 31600),
    ("tls", [(True, CLIENT_HELLO)], 8443),
    ("dns", [(True, DNS_TCP)], 53),
    ("dns", [(True, DNS_TCP)], 5300),  # exact-length message on another port
    ("ssh", [(False, b"SSH-2.0-OpenSSH_9.6\r\n")], 2222),
    ("smtp", [(False, b"220 mail.example.com ESMTP Postfix\r\n")], 2525),
    ("ftp", [(False, b"220 ProFTPD Server ready\r\n")], 2121),
    ("smtp", [(False, b"220 host ready\r\n"), (True, b"EHLO me\r\n")], 2525),
    ("ftp", [(False, b"220 host ready\r\n"), (True, b"USER anonymous\r\n")], 2121),
    ("pop3", [(False, b"+OK POP3 ready\r\n")], 1110),
    ("imap", [(False, b"* OK IMAP4rev1 ready\r\n")], 1143),
]


@pytest.mark.parametrize(("proto", "chunks", "port"), CASES)
@pytest.mark.parametrize("step", [0, 1])
def test_detects_by_content(proto: str, chunks: list[tuple[bool, bytes]], port: int,
                            step: int) -> None:
    assert detect(chunks, dport=port, step=step) == proto
    assert proto in APP_PROTOS


def test_undecided_then_failed() -> None:
    d = ProtoDetector(40000, 7000)
    assert d.feed(b"G", True) is None
    assert d.feed(b"E", True) is None
    assert d.feed(b"X", True) is None  # "GEX" is no method: this direction failed...
    assert d.feed(b"\x00\x01binary", False) == "failed"  # ...and so did the other one
    d = ProtoDetector(40000, 7000)
    assert d.feed(b"\x8a" * 100, True) is None  # the server may still speak
    assert d.feed(b"\x8a" * DETECT_DEPTH, True) == "failed"


def test_port_is_only_a_hint() -> None:
    # TLS on port 80 is TLS, HTTP on 443 is HTTP.
    assert detect([(True, CLIENT_HELLO)], dport=80) == "tls"
    assert detect([(True, b"GET / HTTP/1.1\r\n\r\n")], dport=443) == "http"
    assert detect_stream(b"\x00\x10partial", True, 40000, 53) is None  # wait for more DNS


def test_udp() -> None:
    assert detect_udp(DNS_QUERY, 5353, 5353) == "dns"
    assert detect_udp(DNS_QUERY, 40000, 53) == "dns"
    assert detect_udp(b"\x01\x02\x03", 40000, 53) is None
    assert detect_udp(b"random payload that is not dns", 40000, 9999) is None


def test_registry_is_explicit() -> None:
    assert [name for name, _ in PARSERS] == [
        "http", "http2", "tls", "dns", "ssh", "ftp",
        "smtp", "dcerpc", "quic", "smb", "mqtt", "krb5", "sip", "snmp",
        "nfs"]
    for name, _ in PARSERS:
        p = new_parser(name)
        assert p is not None and p.app_proto == name
    assert new_parser("imap") is None  # detected, not parsed


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=200)), max_size=6),
       st.integers(0, 65535), st.integers(0, 65535))
def test_fuzz_never_raises(chunks: list[tuple[bool, bytes]], sport: int, dport: int) -> None:
    d = ProtoDetector(sport, dport)
    for to_server, data in chunks:
        r = d.feed(data, to_server)
        assert r is None or r in APP_PROTOS or r == "failed"
        detect_udp(data, sport, dport)


def test_real_traffic_app_proto_matches_oracle_flows() -> None:
    # netflix.pcap: every TCP flow Suricata gave an app_proto to.
    if not (PCAPS / "netflix.pcap").exists():
        pytest.skip("shared pcaps not available")
    ours = {}
    for f in tcp_flows(PCAPS / "netflix.pcap"):
        r = detect(f.chunks, f.client[1], f.server[1])
        ours[(f.client[1], f.server[1])] = r
    oracle = [r for r in oracle_events("netflix", "flow")
              if r["proto"] == "TCP" and "app_proto" in r]
    same = sum(1 for r in oracle if ours.get((r["src_port"], r["dest_port"])) == r["app_proto"])
    print(f"netflix: app_proto equal to Suricata's on {same}/{len(oracle)} TCP flows")
    assert same / len(oracle) >= 0.95


def test_a_rule_naming_an_app_protocol_waits_for_the_flow_to_be_decided() -> None:
    """Whatever protocol a rule names, it does not match a flow whose protocol is not
    decided yet (Suricata skips the rule on an app-protocol mismatch, unknown
    included); once decided, the same bytes match. Before, an `alert tls` rule matched
    undecided flows while an `alert http` one did not."""
    from tests.core.app.engine_run import alert_sids, engine_run

    rules = ['alert tls any any -> any any (content:"he"; sid:1;)',
             'alert http any any -> any any (content:"he"; sid:2;)']
    assert alert_sids(engine_run(rules, [(True, b"he")], 443)) == []
    hello = bytes.fromhex("160301002f0100002b0303") + b"he" + b"\x00" * 30 + bytes.fromhex(
        "000002002f0100")
    assert alert_sids(engine_run(rules, [(True, hello)], 443)) == [1]
