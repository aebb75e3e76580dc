"""decode-event, stream-event, engine-event and app-layer-event: rules that match the anomaly events the
decoder, the TCP stream and the app-layer parsers raise on a packet."""

from __future__ import annotations

from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP, Ether

from appliance.core.commands import Log
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import LINKTYPE_ETHERNET, PacketIn
from appliance.rules.compiler import CompileError, _event_name
from appliance.rules.loader import detection_from_text

A, B = "192.168.1.10", "203.0.113.5"

RULES = [
    'alert pkthdr any any -> any any (msg:"udp len"; decode-event:udp.len_invalid; sid:1;)',
    'alert tcp any any -> any any (msg:"bad synack"; '
    'stream-event:3whs_synack_with_wrong_ack; sid:2;)',
    'alert dns any any -> any any (msg:"z flag"; app-layer-event:dns.z_flag_set; sid:3;)',
    'alert udp any any -> any any (msg:"z+content"; content:"zzz"; '
    'app-layer-event:dns.z_flag_set; sid:4;)',
    'alert tcp any any -> any any (msg:"two events"; decode-event:tcp.opt_invalid_len; '
    'stream-event:3whs_synack_with_wrong_ack; sid:5;)',
    'alert tcp any any -> any any (msg:"engine"; '
    'engine-event:stream.3whs_synack_with_wrong_ack; sid:6;)',
]


class Run:
    def __init__(self) -> None:
        loaded = detection_from_text(RULES)
        assert not loaded.failure_records(), loaded.failure_records()
        self.engine = Engine(EngineConfig(), loaded.engine)
        self.n = 0

    def sids(self, pkt: Any) -> list[int]:
        self.n += 1
        cmds = self.engine.handle(PacketIn(self.n, 1000.0 + self.n / 100, bytes(pkt),
                                           LINKTYPE_ETHERNET))
        return sorted(c.record["alert"]["signature_id"] for c in cmds
                      if isinstance(c, Log) and c.record["event_type"] == "alert")


def test_decode_event_matches_the_packet_that_raised_it() -> None:
    r = Run()
    good = Ether() / IP(src=A, dst=B) / UDP(sport=1000, dport=2000) / b"payload"
    assert r.sids(good) == []
    bad = Ether() / IP(src=A, dst=B) / UDP(sport=1000, dport=2000, len=4) / b"payload"
    assert r.sids(bad) == [1]


def test_stream_event_matches_on_the_segment() -> None:
    r = Run()
    assert r.sids(Ether() / IP(src=A, dst=B) / TCP(sport=4000, dport=80, flags="S",
                                                   seq=100)) == []
    # SYN-ACK acknowledging the wrong sequence number.
    assert r.sids(Ether() / IP(src=B, dst=A) / TCP(sport=80, dport=4000, flags="SA",
                                                   seq=900, ack=5555)) == [2, 6]


def test_app_layer_event_needs_the_event_and_the_rest_of_the_rule() -> None:
    r = Run()
    plain = DNS(id=1, rd=1, qd=DNSQR(qname="example.com"))
    assert r.sids(Ether() / IP(src=A, dst=B) / UDP(sport=5353, dport=53) / plain) == []
    z = DNS(id=2, rd=1, z=1, qd=DNSQR(qname="example.com"))
    assert r.sids(Ether() / IP(src=A, dst=B) / UDP(sport=5354, dport=53) / z) == [3]
    zc = DNS(id=3, rd=1, z=1, qd=DNSQR(qname="zzz.example.com"))
    assert r.sids(Ether() / IP(src=A, dst=B) / UDP(sport=5355, dport=53) / zc) == [3, 4]


@pytest.mark.parametrize(("kw", "value", "name", "proto"), [
    ("decode-event", "ipv4.trunc_pkt", "decoder.ipv4.trunc_pkt", None),
    ("decode-event", "decoder.ipv6.frag_overlap", "decoder.ipv6.frag_overlap", None),
    ("stream-event", "reassembly_seq_gap", "stream.reassembly_seq_gap", None),
    ("app-layer-event", "http.request_field_too_long", "app:http.request_field_too_long",
     "http"),
    ("app-layer-event", "ssl.invalid_record_type", "app:tls.invalid_record_type", "tls"),
    ("app-layer-event", "applayer_mismatch_protocol_both_directions",
     "app:applayer_mismatch_protocol_both_directions", None),
    # engine-event: a decoder or stream event by its full name.
    ("engine-event", "stream.3whs_synack_with_wrong_ack", "stream.3whs_synack_with_wrong_ack",
     None),
    ("engine-event", "decoder.ipv4.trunc_pkt", "decoder.ipv4.trunc_pkt", None),
    ("engine-event", "ipv4.trunc_pkt", "decoder.ipv4.trunc_pkt", None),
])
def test_event_names(kw: str, value: str, name: str, proto: str | None) -> None:
    assert _event_name(kw, value) == (name, proto)


def test_bad_event_name_is_a_load_failure() -> None:
    with pytest.raises(CompileError, match="needs an event name"):
        _event_name("decode-event", "ipv4 trunc")
    loaded = detection_from_text(['alert ip any any -> any any (decode-event:; sid:9;)'])
    (f,) = loaded.failure_records()
    assert f.sid == 9


def test_decode_event_on_a_fragment() -> None:
    """A fragment's own anomaly (here an overlap) is matched on that fragment."""
    loaded = detection_from_text([
        'alert pkthdr any any -> any any (msg:"overlap"; decode-event:ipv4.frag_overlap; '
        'sid:7;)'])
    eng = Engine(EngineConfig(), loaded.engine)
    base = IP(src=A, dst=B, id=77, proto=17)
    frags = [Ether() / base.copy() / (b"A" * 16), Ether() / base.copy() / (b"B" * 16)]
    frags[0][IP].flags = "MF"
    frags[1][IP].flags = "MF"
    frags[1][IP].frag = 1  # 8 bytes in: overlaps the first fragment's second half
    alerts = []
    for n, f in enumerate(frags, 1):
        for c in eng.handle(PacketIn(n, 1.0 + n, bytes(f), LINKTYPE_ETHERNET)):
            if isinstance(c, Log) and c.record["event_type"] in ("alert", "anomaly"):
                alerts.append((n, c.record.get("alert", c.record.get("anomaly"))))
    assert [(n, a["signature_id"]) for n, a in alerts if "signature_id" in a] == [(2, 7)]
