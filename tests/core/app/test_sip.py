"""SIP parser: request and response start lines per direction, header termination,
Suricata's events, the sip.* sticky buffers and EVE records through the engine."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.app import ANOMALY, APP_TX
from appliance.core.app.detect import detect_udp
from appliance.core.app.sip import SipParser, parse_message
from tests.core.app import SHARED
from tests.core.app.engine_run import alert_sids, engine_run

REGISTER = (b"REGISTER sip:example.org SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060\r\n"
            b"From: <sip:alice@example.org>\r\nTo: <sip:alice@example.org>\r\n"
            b"Call-ID: 1@10.0.0.1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")
UNAUTH = (b"SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 10.0.0.1:5060\r\n"
          b"CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")


def test_request_and_response() -> None:
    p = SipParser()
    (req,) = p.parse_datagram(REGISTER, True)
    (resp,) = p.parse_datagram(UNAUTH, False)
    assert req.kind == APP_TX and req.tx_id == 0 and resp.tx_id == 1
    bufs = req.data["buffers"]
    assert {k: v for k, v in bufs.items() if not k.startswith("frame:")} == {
        "sip.method": b"REGISTER", "sip.uri": b"sip:example.org", "sip.protocol": b"SIP/2.0",
        "sip.request_line": b"REGISTER sip:example.org SIP/2.0"}
    assert resp.data["eve"] == {"version": "SIP/2.0", "code": "401", "reason": "Unauthorized",
                                "response_line": "SIP/2.0 401 Unauthorized"}


def test_wrong_direction_keepalive_and_unended_headers_are_events() -> None:
    p = SipParser()
    assert [e.name for e in p.parse_datagram(UNAUTH, True)] == ["invalid_data"]
    assert [e.name for e in p.parse_datagram(REGISTER, False)] == ["invalid_data"]
    assert [e.name for e in p.parse_datagram(b"\r\n\r\n", True)] == ["invalid_data"]
    assert [e.name for e in p.parse_datagram(b"     ", True)] == ["invalid_data"]
    assert parse_message(REGISTER[:60], True) == "incomplete_data"
    assert parse_message(b"REGISTER sip:x SIP/2.0\r\nno colon here\r\n\r\n", True) \
        == "invalid_data"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_hostile_bytes_never_raise(data: bytes, to_server: bool) -> None:
    for e in SipParser().parse_datagram(REGISTER[:40] + data, to_server):
        assert e.kind in (ANOMALY, APP_TX)


def test_detection_on_port_5060_only() -> None:
    assert detect_udp(REGISTER, 40000, 5060) == "sip"
    assert detect_udp(UNAUTH, 5060, 40000) == "sip"
    assert detect_udp(REGISTER, 40000, 5070) is None
    assert detect_udp(b"     ", 40000, 5060) is None


def test_real_capture_counts() -> None:
    """suricata-verify sip.pcap: 47 requests one way, 34 responses the other (a flow's
    direction is its first datagram's)."""
    import dpkt

    p = SipParser()
    first: set[tuple[bytes, bytes]] = set()
    kinds: list[str] = []
    with (SHARED / "suricata-verify" / "tests" / "sip-method" / "sip.pcap").open("rb") as fh:
        for _ts, buf in dpkt.pcap.Reader(fh):
            ip = dpkt.ethernet.Ethernet(buf).data
            udp = getattr(ip, "data", None)
            if not isinstance(udp, dpkt.udp.UDP) or 5060 not in (udp.sport, udp.dport):
                continue
            if (ip.dst, ip.src) not in first:
                first.add((ip.src, ip.dst))
            to_server = (ip.src, ip.dst) in first
            for e in p.parse_datagram(bytes(udp.data), to_server):
                kinds.append(e.name if e.kind == ANOMALY else
                             "req" if "sip.method" in e.data["buffers"] else "resp")
    assert kinds.count("req") == 47 and kinds.count("resp") == 34
    assert kinds.count("invalid_data") == 21  # the 5-blank keep-alives


def test_buffers_alerts_and_schema_valid_records(eve_validator: Any) -> None:
    rules = [
        'alert sip any any -> any any (flow:to_server; sip.method; content:"REGISTER"; sid:1;)',
        'alert sip any any -> any any (sip.uri; content:"example.org"; sid:2;)',
        'alert sip any any -> any any (sip.stat_code; content:"401"; sid:3;)',
        'alert sip any any -> any any (sip.stat_msg; content:"Unauth"; sid:4;)',
        'alert sip any any -> any any (flow:to_client; sip.protocol; content:"SIP/2.0"; sid:5;)',
        'alert sip any any -> any any (sip.response_line; content:"200"; sid:6;)',
        'alert sip any any -> any any (sip.request_line; content:"sip:example.org SIP";'
        ' sid:7;)',
        'alert sip any any -> any any (app-layer-event:sip.invalid_data; sid:8;)',
    ]
    recs = engine_run(rules, [(True, REGISTER), (False, UNAUTH), (True, b"    ")], 5060,
                      udp=True)
    assert alert_sids(recs) == [1, 2, 3, 4, 5, 7, 8]
    assert [r["event_type"] for r in recs].count("sip") == 2
    for r in recs:
        errors = list(eve_validator.iter_errors(r))
        assert not errors, (r["event_type"], errors[0].message)


INVITE = (b"INVITE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060\r\n"
          b"Content-Type: application/sdp\r\nContent-Length: 9\r\n\r\nv=0\r\no=x\r\n")


def test_frames_as_suricata_cuts_a_message() -> None:
    """pdu: the datagram; line: the start line with its CRLF; headers: the fields with
    their CRLFs, not the empty line; body: after the empty line; no empty frame."""
    (req,) = SipParser().parse_datagram(INVITE, True)
    frames = {k: v for k, v in req.data["buffers"].items() if k.startswith("frame:")}
    assert frames == {
        "frame:sip.pdu": INVITE,
        "frame:sip.request.line": b"INVITE sip:bob@example.org SIP/2.0\r\n",
        "frame:sip.request.headers": b"Via: SIP/2.0/UDP 10.0.0.1:5060\r\n"
                                     b"Content-Type: application/sdp\r\n"
                                     b"Content-Length: 9\r\n",
        "frame:sip.request.body": b"v=0\r\no=x\r\n"}
    (resp,) = SipParser().parse_datagram(UNAUTH, False)
    assert sorted(k for k in resp.data["buffers"] if k.startswith("frame:")) == [
        "frame:sip.pdu", "frame:sip.response.headers", "frame:sip.response.line"]


def test_frame_keyword_rules() -> None:
    rules = [
        'alert sip any any -> any any (flow:to_server; frame:pdu; content:"INVITE sip";'
        ' startswith; sid:1;)',
        'alert sip any any -> any any (flow:to_server; frame:request.line;'
        ' content:"SIP/2.0|0d 0a|"; endswith; sid:2;)',
        'alert sip any any -> any any (flow:to_server; frame:request.headers; content:"Via:";'
        ' startswith; content:"Content-Length: 9|0d 0a|"; endswith; sid:3;)',
        'alert sip any any -> any any (flow:to_server; frame:sip.request.body;'
        ' content:"v=0"; startswith; sid:4;)',
        'alert sip any any -> any any (flow:to_client; frame:response.headers;'
        ' content:"Via:"; startswith; sid:5;)',
        'alert sip any any -> any any (flow:to_client; frame:response.body; content:"x";'
        ' sid:6;)',  # the 401 has no body: no frame
    ]
    recs = engine_run(rules, [(True, INVITE), (False, UNAUTH)], 5060, udp=True)
    assert alert_sids(recs) == [1, 2, 3, 4, 5]


def test_frames_of_other_protocols_are_reported_unsupported() -> None:
    import pytest

    from appliance.rules.parser import RuleParseError, parse_rule

    with pytest.raises(RuleParseError, match=r"frame 'http1\.response'"):
        parse_rule('alert http any any -> any any (frame:http1.response; content:"x"; sid:1;)')
