"""MQTT parser: fixed header and remaining length, MQTT 3.1.1 and 5 messages, the
transaction rules and Suricata's mqtt.* events, chunking, hostile input, the mqtt sticky
buffers and EVE records through the engine."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.app import ANOMALY, APP_TX, AppEvent
from appliance.core.app.detect import detect_stream
from appliance.core.app.mqtt import MAX_MSG_LEN, MAX_OPEN_TX, MqttParser, probe
from tests.core.app import SHARED, feed_all, tcp_flows
from tests.core.app.engine_run import alert_sids, engine_run

SV = SHARED / "suricata-verify" / "tests"


def s(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def msg(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect(level: int = 4, client: bytes = b"dev1", user: bytes | None = None,
            props: bytes = b"", will: tuple[bytes, bytes] | None = None) -> bytes:
    flags = 0x02 | (0x80 if user is not None else 0) | (0x04 if will else 0)
    body = s(b"MQTT") + bytes([level, flags]) + b"\x00\x3c"
    if level == 5:
        body += varint(len(props)) + props
    body += s(client)
    if will:
        if level == 5:
            body += b"\x00"
        body += s(will[0]) + s(will[1])
    if user is not None:
        body += s(user)
    return msg(0x10, body)


CONNACK = msg(0x20, b"\x00\x00")


def publish(topic: bytes, payload: bytes, qos: int = 0, mid: int = 1, v5: bool = False) -> bytes:
    body = s(topic) + (struct.pack("!H", mid) if qos else b"") + (b"\x00" if v5 else b"")
    return msg(0x30 | (qos << 1), body + payload)


def subscribe(mid: int, *topics: bytes) -> bytes:
    return msg(0x82, struct.pack("!H", mid) + b"".join(s(t) + b"\x01" for t in topics))


def ack(first: int, mid: int, extra: bytes = b"") -> bytes:
    return msg(first, struct.pack("!H", mid) + extra)


def run(conv: list[tuple[bool, bytes]], chunk: int = 0) -> tuple[list[AppEvent], MqttParser]:
    p = MqttParser()
    return feed_all(p, conv, chunk), p


def anomalies(events: list[AppEvent]) -> list[str]:
    return [e.name for e in events if e.kind == ANOMALY]


def records(events: list[AppEvent]) -> list[dict[str, Any]]:
    return [e.data["eve"] for e in events if e.kind == APP_TX and "eve" in e.data]


GOOD = [
    (True, connect(user=b"alice")), (False, CONNACK),
    (True, subscribe(7, b"house/#", b"car/+")), (False, ack(0x90, 7, b"\x01\x01")),
    (True, publish(b"house/lamp", b"ON", qos=1, mid=9)), (False, ack(0x40, 9)),
    (True, publish(b"house/door", b"OPEN", qos=2, mid=10)), (False, ack(0x50, 10)),
    (True, ack(0x62, 10)), (False, ack(0x70, 10)),
    (True, publish(b"t", b"x")), (True, msg(0xC0, b"")), (False, msg(0xD0, b"")),
    (True, msg(0xE0, b"")),
]


def test_clean_session_has_no_events_and_pairs_acknowledgements() -> None:
    ev, p = run(GOOD)
    assert anomalies(ev) == []
    recs = records(ev)
    assert [sorted(r) for r in recs] == [
        ["connack", "connect"], ["suback", "subscribe"], ["puback", "publish"],
        ["pubcomp", "publish", "pubrec", "pubrel"], ["publish"], ["pingreq"], ["pingresp"],
        ["disconnect"]]
    c = recs[0]["connect"]
    assert c["client_id"] == "dev1" and c["username"] == "alice"
    assert c["protocol_string"] == "MQTT" and c["protocol_version"] == 4
    assert c["flags"]["username"] and not c["flags"]["password"]
    assert recs[1]["subscribe"]["topics"] == [{"topic": "house/#", "qos": 1},
                                              {"topic": "car/+", "qos": 1}]
    assert recs[1]["suback"]["qos_granted"] == [1, 1]
    assert recs[2]["publish"]["topic"] == "house/lamp"
    assert recs[2]["publish"]["message_id"] == 9
    assert p.connected and not p.open


def test_any_chunking_gives_the_same_events() -> None:
    whole, _ = run(GOOD)
    for size in (1, 2, 3, 7):
        ev, _ = run(GOOD, chunk=size)
        assert records(ev) == records(whole), size


def test_connack_without_connect_is_missing_connect() -> None:
    ev, p = run([(False, CONNACK), (True, publish(b"a", b"b"))])
    assert anomalies(ev) == ["missing_connect", "unintroduced_message"]
    assert not p.connected


def test_publish_before_connack_is_unintroduced() -> None:
    ev, _ = run([(True, connect()), (True, publish(b"a", b"b"))])
    assert anomalies(ev) == ["unintroduced_message"]


def test_double_connect_and_unmatched_acknowledgements() -> None:
    ev, _ = run([(True, connect()), (False, CONNACK), (True, connect()),
                 (False, ack(0x40, 3)), (False, ack(0x90, 4, b"\x00")),
                 (False, ack(0xB0, 5))])
    assert anomalies(ev) == ["double_connect", "missing_publish", "missing_subscribe",
                             "missing_unsubscribe"]


def test_qos_3_and_unassigned_type() -> None:
    ev, _ = run([(True, connect()), (False, CONNACK), (True, msg(0x36, s(b"t") + b"\0\1")),
                 (True, msg(0x00, b"abc"))])
    assert anomalies(ev) == ["invalid_qos_level", "unassigned_msg_type"]


def test_mqtt5_properties_are_parsed() -> None:
    props = b"\x11" + struct.pack("!I", 60) + b"\x26" + s(b"k") + s(b"v")
    ev, p = run([(True, connect(level=5, props=props, will=(b"wt", b"wm"))),
                 (False, msg(0x20, b"\x00\x00\x03\x22\x00\x0a")),
                 (True, publish(b"t", b"hello", v5=True))])
    assert anomalies(ev) == []
    assert p.protocol_version == 5
    recs = records(ev)
    c = recs[0]["connect"]
    assert c["properties"] == {"session_expiry_interval": 60, "user_property": {"k": "v"}}
    assert c["will"]["topic"] == "wt" and c["will"]["message"] == "wm"
    assert recs[0]["connack"]["properties"] == {"topic_alias_maximum": 10}
    assert recs[1]["publish"]["message"] == "hello"


def test_excessive_property_length_is_malformed_and_stops_the_flow() -> None:
    # As suricata-verify mqtt5-excessiveproplen: a property length past the message.
    body = s(b"MQTT") + b"\x05\xc2\x00\x3c" + b"\xff\x21" + b"\x00" * 20
    ev, p = run([(True, msg(0x10, body)), (False, CONNACK), (True, publish(b"a", b"b"))])
    assert anomalies(ev) == ["malformed_traffic"]
    assert p.failed and records(ev) == []


def test_unknown_property_and_five_byte_length_are_malformed() -> None:
    ev, _ = run([(True, connect(level=5, props=b"\x7f\x00"))])
    assert anomalies(ev) == ["malformed_traffic"]
    ev, _ = run([(True, b"\x30\xff\xff\xff\xff\x01")])
    assert anomalies(ev) == ["malformed_traffic"]


def test_field_running_past_the_message_is_malformed() -> None:
    ev, _ = run([(True, msg(0x10, s(b"MQTT") + b"\x04\x02\x00\x3c" + b"\x00\x09ab"))])
    assert anomalies(ev) == ["malformed_traffic"]


def test_over_long_message_is_skipped_not_buffered() -> None:
    big = publish(b"t", b"A" * (MAX_MSG_LEN + 10))
    p = MqttParser()
    out = p.feed(connect(), True) + p.feed(CONNACK, False)
    peak = 0
    for i in range(0, len(big), 65536):
        out += p.feed(big[i : i + 65536], True)
        peak = max(peak, p.memuse())
    out += p.feed(publish(b"after", b"x"), True)
    assert peak < 4096
    recs = records(out)
    assert recs[1]["publish"]["truncated"] is True
    assert recs[1]["publish"]["skipped_length"] == len(big)
    assert recs[2]["publish"]["topic"] == "after"


def test_open_transactions_are_bounded() -> None:
    conv = [(True, connect()), (False, CONNACK)]
    conv += [(True, publish(b"t", b"x", qos=1, mid=i)) for i in range(MAX_OPEN_TX + 5)]
    ev, p = run(conv)
    assert anomalies(ev).count("too_many_transactions") == 5
    assert len(p.open) == 0  # close() logged the rest


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=12))
def test_hostile_bytes_never_raise_and_stay_bounded(conv: list[tuple[bool, bytes]]) -> None:
    p = MqttParser()
    for ts, data in [(True, connect()), (False, CONNACK), *conv]:
        for e in p.feed(data, ts):
            assert e.kind in (ANOMALY, APP_TX)
        assert p.memuse() < 64 * 1024
    p.close()


def test_probe_and_detection_on_port_1883() -> None:
    assert probe(connect()) is True
    assert probe(b"\x10") is None
    assert probe(b"\x00\x02") is False  # type 0
    assert probe(b"\x36\x02") is False  # QoS 3
    assert detect_stream(connect(), True, 40000, 1883) == "mqtt"
    assert detect_stream(CONNACK, False, 1883, 40000) == "mqtt"
    assert detect_stream(connect(), True, 40000, 1884) == "failed"


def test_suricata_verify_captures() -> None:
    """The four suricata-verify MQTT captures give the events their tests expect."""
    want = {"mqtt-events-missing-connect": "missing_connect",
            "mqtt-events-unassigned-msgtype": "unassigned_msg_type",
            "mqtt-events-unintroduced": "unintroduced_message",
            "mqtt5-excessiveproplen": "malformed_traffic"}
    for name, event in want.items():
        pcap = SV / name / "input.pcap"
        names: list[str] = []
        for f in tcp_flows(pcap):
            if 1883 not in (f.server[1], f.client[1]):
                continue
            ev, _ = run(f.chunks)
            names += anomalies(ev)
        assert names.count(event) == 1, (name, names)


def test_buffers_alerts_and_schema_valid_records(eve_validator: Any) -> None:
    rules = [
        'alert mqtt any any -> any any (mqtt.publish.topic; content:"house/lamp"; sid:1;)',
        'alert mqtt any any -> any any (mqtt.connect.username; content:"alice"; sid:2;)',
        'alert mqtt any any -> any any (mqtt.subscribe.topic; content:"car/+"; sid:3;)',
        'alert mqtt any any -> any any (mqtt.publish.message; content:"OPEN"; sid:4;)',
        'alert mqtt any any -> any any (mqtt.connect.clientid; content:"nobody"; sid:5;)',
        'alert mqtt any any -> any any (app-layer-event:mqtt.missing_publish; sid:6;)',
        'alert mqtt any any -> any any (mqtt.type:CONNACK; sid:7;)',
    ]
    recs = engine_run(rules, [*GOOD, (False, ack(0x40, 99))], 1883)
    assert alert_sids(recs) == [1, 2, 3, 4, 6, 7]
    kinds = [r["event_type"] for r in recs]
    assert kinds.count("mqtt") == 9
    anomaly = [r for r in recs if r["event_type"] == "anomaly"]
    assert anomaly[0]["anomaly"] == {"app_proto": "mqtt", "type": "applayer",
                                     "event": "missing_publish", "layer": "proto_parser"}
    for r in recs:
        errors = list(eve_validator.iter_errors(r))
        assert not errors, (r["event_type"], errors[0].message)
