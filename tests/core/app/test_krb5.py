"""Kerberos 5 parser: AS/TGS requests and replies, KRB-ERROR, TCP records in any
chunking, hostile DER, the krb5 keywords and EVE records through the engine."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.app import ANOMALY, APP_TX, AppEvent, der
from appliance.core.app.detect import detect_stream, detect_udp
from appliance.core.app.krb5 import MAX_RECORD, Krb5Parser
from appliance.rules.compiler import CompileError, compile_rule
from appliance.rules.keywords import KeywordError
from appliance.rules.parser import parse_rule
from tests.core.app import SHARED, tcp_flows
from tests.core.app.engine_run import alert_sids, engine_run


def tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    ln = bytes([n]) if n < 128 else bytes([0x82]) + struct.pack("!H", n)
    return bytes([tag]) + ln + body


def ctx(n: int, body: bytes) -> bytes:
    return tlv(0xA0 | n, body)


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def integer(v: int) -> bytes:
    return tlv(0x02, v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big", signed=True))


def gstr(s: bytes) -> bytes:
    return tlv(0x1B, s)


def principal(*names: bytes) -> bytes:
    return seq(ctx(0, integer(1)), ctx(1, seq(*(gstr(n) for n in names))))


def enc(etype: int) -> bytes:
    return seq(ctx(0, integer(etype)), ctx(2, tlv(0x04, b"\x00" * 16)))


def as_req(user: bytes = b"alice") -> bytes:
    body = seq(ctx(0, tlv(0x03, b"\x00\x40\x81\x00\x10")), ctx(1, principal(user)),
               ctx(2, gstr(b"EXAMPLE.ORG")), ctx(3, principal(b"krbtgt", b"EXAMPLE.ORG")),
               ctx(7, integer(12345)), ctx(8, seq(integer(18), integer(23))))
    return tlv(0x6A, seq(ctx(1, integer(5)), ctx(2, integer(10)), ctx(4, body)))


def tgs_rep(ticket_etype: int = 23, etype: int = 18) -> bytes:
    ticket = tlv(0x61, seq(ctx(0, integer(5)), ctx(1, gstr(b"EXAMPLE.ORG")),
                           ctx(2, principal(b"HTTP", b"web.example.org")),
                           ctx(3, enc(ticket_etype))))
    return tlv(0x6D, seq(ctx(0, integer(5)), ctx(1, integer(13)),
                         ctx(3, gstr(b"EXAMPLE.ORG")), ctx(4, principal(b"alice")),
                         ctx(5, ticket), ctx(6, enc(etype))))


def krb_error(code: int = 25) -> bytes:
    return tlv(0x7E, seq(ctx(0, integer(5)), ctx(1, integer(30)), ctx(4, tlv(0x18, b"x")),
                         ctx(5, integer(0)), ctx(6, integer(code)),
                         ctx(9, gstr(b"EXAMPLE.ORG")),
                         ctx(10, principal(b"krbtgt", b"EXAMPLE.ORG"))))


def rec(m: bytes) -> bytes:
    return struct.pack("!I", len(m)) + m


def txs(events: list[AppEvent]) -> list[dict[str, Any]]:
    return [e.data["eve"] for e in events if e.kind == APP_TX]


def test_udp_exchange() -> None:
    p = Krb5Parser()
    ev = p.parse_datagram(as_req(), True) + p.parse_datagram(krb_error(), False)
    ev += p.parse_datagram(tgs_rep(), False)
    assert txs(ev) == [
        {"msg_type": "KRB_AS_REQ", "cname": "alice", "realm": "EXAMPLE.ORG",
         "sname": "krbtgt/EXAMPLE.ORG"},
        {"msg_type": "KRB_ERROR", "failed_request": "KRB_AS_REQ",
         "error_code": "KDC_ERR_PREAUTH_REQUIRED", "cname": "<empty>",
         "realm": "EXAMPLE.ORG", "sname": "krbtgt/EXAMPLE.ORG"},
        {"msg_type": "KRB_TGS_REP", "cname": "alice", "realm": "EXAMPLE.ORG",
         "sname": "HTTP/web.example.org", "encryption": "aes256-cts-hmac-sha1-96",
         "weak_encryption": False, "ticket_encryption": "rc4-hmac",
         "ticket_weak_encryption": True}]
    assert [e.name for e in ev if e.kind == ANOMALY] == []
    assert [e for e in ev if e.kind == APP_TX][2].data["buffers"]["krb5_sname"] == [
        b"HTTP", b"web.example.org"]


def test_weak_reply_encryption_is_an_event() -> None:
    ev = Krb5Parser().parse_datagram(tgs_rep(etype=23), False)
    assert [e.name for e in ev if e.kind == ANOMALY] == ["weak_encryption"]


@pytest.mark.parametrize("size", [1, 3, 50, 10_000])
def test_tcp_records_in_any_chunking(size: int) -> None:
    stream = rec(as_req()) + rec(as_req(b"bob"))
    p = Krb5Parser()
    ev: list[AppEvent] = []
    for i in range(0, len(stream), size):
        ev += p.feed(stream[i : i + size], True)
    assert [t["cname"] for t in txs(ev)] == ["alice", "bob"]
    assert p.memuse() == 0


def test_oversized_record_is_skipped_not_buffered() -> None:
    p = Krb5Parser()
    n = MAX_RECORD + 100
    ev = p.feed(struct.pack("!I", n) + b"\x00" * 1000, True)
    assert [e.name for e in ev] == ["malformed_data"]
    ev = p.feed(b"\x00" * (n - 1000), True) + p.feed(rec(as_req()), True)
    assert [t["cname"] for t in txs(ev)] == ["alice"]
    assert p.memuse() == 0


def test_garbage_is_malformed() -> None:
    p = Krb5Parser()
    assert [e.name for e in p.parse_datagram(b"\x6a\x05\x30\x03\x02\x01", True)] == [
        "malformed_data"]
    assert [e.name for e in p.parse_datagram(b"\x04\x00", True)] == ["malformed_data"]
    # An indefinite length (BER) is refused.
    assert der.read(b"\x30\x80\x02\x01\x05\x00\x00", 0, 7) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 400), st.booleans())
def test_hostile_bytes_never_raise(junk: bytes, cut: int, tcp: bool) -> None:
    m = tgs_rep()
    m = m[:cut] + junk + m[cut + len(junk):]
    p = Krb5Parser()
    ev = p.feed(rec(m), True) if tcp else p.parse_datagram(m, False)
    for e in ev:
        assert e.kind in (ANOMALY, APP_TX)


def test_detection() -> None:
    assert detect_udp(as_req(), 40000, 88) == "krb5"
    assert detect_udp(as_req(), 40000, 89) is None
    assert detect_stream(rec(as_req()), True, 40000, 88) == "krb5"
    assert detect_stream(rec(as_req())[:3], True, 40000, 88) is None


def test_kerberoasting_capture() -> None:
    """suricata-verify krb5-kerberoasting: the TGS-REP of an RC4 service ticket."""
    pcap = SHARED / "suricata-verify" / "tests" / "krb5-kerberoasting" / "kerberoast.pcap"
    (flow,) = tcp_flows(pcap)
    p = Krb5Parser()
    ev: list[AppEvent] = []
    for ts, data in flow.chunks:
        ev += p.feed(data, ts)
    reps = [t for t in txs(ev) if t["msg_type"] == "KRB_TGS_REP"]
    assert len(reps) == 1
    assert reps[0]["ticket_encryption"] == "rc4-hmac" and reps[0]["ticket_weak_encryption"]
    assert [e for e in ev if e.kind == ANOMALY] == []


def test_keywords_alerts_and_schema_valid_records(eve_validator: Any) -> None:
    rules = [
        "alert krb5 any any -> any any (krb5.ticket_encryption: weak; sid:1;)",
        "alert krb5 any any -> any any (krb5.ticket_encryption: 23; sid:2;)",
        "alert krb5 any any -> any any (krb5.ticket_encryption: aes256-cts-hmac-sha1-96;"
        " sid:3;)",
        "alert krb5 any any -> any any (krb5_msg_type:10; sid:4;)",
        "alert krb5 any any -> any any (krb5_err_code:25; sid:5;)",
        'alert krb5 any any -> any any (krb5_cname; content:"alice"; sid:6;)',
        'alert krb5 any any -> any any (krb5_sname; content:"web.example.org"; sid:7;)',
        "alert krb5 any any -> any any (krb5.ticket_encryption: !weak; sid:8;)",
    ]
    for udp in (True, False):
        msgs = [(True, as_req()), (False, krb_error()), (False, tgs_rep())]
        if not udp:
            msgs = [(ts, rec(m)) for ts, m in msgs]
        recs = engine_run(rules, msgs, 88, udp=udp)
        assert alert_sids(recs) == [1, 2, 4, 5, 6, 6, 7], udp
        assert [r["event_type"] for r in recs].count("krb5") == 3
        for r in recs:
            errors = list(eve_validator.iter_errors(r))
            assert not errors, (r["event_type"], errors[0].message)


def test_keyword_errors() -> None:
    for bad in ("krb5.ticket_encryption: nonsense", "krb5.ticket_encryption: ;",
                "krb5_msg_type: x"):
        rule = parse_rule(f"alert krb5 any any -> any any ({bad}; sid:1;)")
        with pytest.raises((CompileError, KeywordError)):
            compile_rule(rule, 0, {})
