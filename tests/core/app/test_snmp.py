"""SNMP parser: v1/v2c communities, v3 USM user names, encrypted scoped PDUs, PDU types
and variable names, Suricata's events, the snmp keywords and EVE records."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.app import ANOMALY, APP_TX, AppEvent
from appliance.core.app.detect import detect_udp
from appliance.core.app.snmp import SnmpParser
from tests.core.app import SHARED, udp_payloads
from tests.core.app.engine_run import alert_sids, engine_run
from tests.core.app.test_krb5 import integer, seq, tlv

SYS_DESCR = tlv(0x06, bytes([0x2B, 6, 1, 2, 1, 1, 1, 0]))  # 1.3.6.1.2.1.1.1.0


def pdu(tag: int, *oids: bytes) -> bytes:
    binds = seq(*(seq(o, tlv(0x05, b"")) for o in oids))
    return tlv(0xA0 | tag, integer(42) + integer(0) + integer(0) + binds)


def v2c(community: bytes = b"public", tag: int = 0) -> bytes:
    return seq(integer(1), tlv(0x04, community), pdu(tag, SYS_DESCR))


def v3(user: bytes = b"admin", encrypted: bool = False, model: int = 3) -> bytes:
    usm = seq(tlv(0x04, b"\x80\x00\x1f\x88"), integer(1), integer(100), tlv(0x04, user),
              tlv(0x04, b""), tlv(0x04, b""))
    glob = seq(integer(7), integer(65507), tlv(0x04, b"\x07" if encrypted else b"\x04"),
               integer(model))
    data = tlv(0x04, b"\x99" * 32) if encrypted else seq(tlv(0x04, b""), tlv(0x04, b""),
                                                            pdu(0, SYS_DESCR))
    return seq(integer(3), glob, tlv(0x04, usm), data)


def recs(events: list[AppEvent]) -> list[dict[str, Any]]:
    return [e.data["eve"] for e in events if e.kind == APP_TX]


def test_versions_communities_users() -> None:
    p = SnmpParser()
    ev = p.parse_datagram(v2c(), True) + p.parse_datagram(v2c(tag=2), False)
    assert recs(ev) == [
        {"version": 2, "pdu_type": "get_request", "vars": ["1.3.6.1.2.1.1.1.0"],
         "community": "public"},
        {"version": 2, "pdu_type": "response", "vars": ["1.3.6.1.2.1.1.1.0"],
         "community": "public"}]
    q = SnmpParser()
    ev = q.parse_datagram(v3(), True) + q.parse_datagram(v3(encrypted=True), True)
    assert recs(ev) == [
        {"version": 3, "pdu_type": "get_request", "vars": ["1.3.6.1.2.1.1.1.0"],
         "usm": "admin"},
        {"version": 3, "pdu_type": "encrypted", "usm": "admin"}]
    assert next(e for e in ev if e.kind == APP_TX).data["buffers"]["snmp.usm"] == b"admin"


def test_events() -> None:
    p = SnmpParser()
    assert [e.name for e in p.parse_datagram(b"\x30\x03\x02\x01", True)] == ["malformed_data"]
    assert [e.name for e in p.parse_datagram(v3(model=2), True)] == ["unknown_security_model",
                                                                    "snmp"]
    assert next(e.name for e in p.parse_datagram(v2c(), True)) == "version_mismatch"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 120))
def test_hostile_bytes_never_raise(junk: bytes, cut: int) -> None:
    m = v3()
    for e in SnmpParser().parse_datagram(m[:cut] + junk + m[cut + len(junk):], True):
        assert e.kind in (ANOMALY, APP_TX)


def test_detection() -> None:
    assert detect_udp(v2c(), 40000, 161) == "snmp"
    assert detect_udp(v2c(), 162, 40000) == "snmp"
    assert detect_udp(v2c(), 40000, 1161) is None
    assert detect_udp(b"\x30\x03\x02\x01\x07", 40000, 161) is None


def test_v3_capture() -> None:
    """suricata-verify snmp-v3-encrypted: 8 v3 messages, 2 get_request, 4 encrypted."""
    p = SnmpParser()
    ev: list[AppEvent] = []
    for sport, _dport, data in udp_payloads(SHARED / "suricata-verify" / "tests" /
                                            "snmp-v3-encrypted" / "SNMPv3.pcap"):
        ev += p.parse_datagram(data, sport != 161)
    r = recs(ev)
    assert len(r) == 8 and all(x["version"] == 3 and x["usm"] == "admin" for x in r)
    assert [x["pdu_type"] for x in r].count("get_request") == 2
    assert [x["pdu_type"] for x in r].count("encrypted") == 4


def test_keywords_alerts_and_schema_valid_records(eve_validator: Any) -> None:
    rules = [
        'alert snmp any any -> any any (snmp.usm; content:"admin"; sid:1;)',
        'alert snmp any any -> any any (snmp.community; content:"private"; sid:2;)',
        "alert snmp any any -> any any (snmp.version:2; sid:3;)",
        "alert snmp any any -> any any (snmp.pdu_type:2; sid:4;)",
        "alert snmp any any -> any any (snmp.version:>2; sid:5;)",
    ]
    got = engine_run(rules, [(True, v2c(b"private")), (False, v2c(b"private", tag=2))], 161,
                     udp=True)
    assert alert_sids(got) == [2, 2, 3, 3, 4]
    got += engine_run(rules, [(True, v3()), (False, v3(encrypted=True))], 161, udp=True)
    assert alert_sids(got) == [1, 1, 2, 2, 3, 3, 4, 5, 5]
    for r in got:
        errors = list(eve_validator.iter_errors(r))
        assert not errors, (r["event_type"], errors[0].message)
