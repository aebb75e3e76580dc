"""Signature matching semantics, rule by rule, on scripted packets (Suricata's behaviour)."""

from __future__ import annotations

from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, Ether

from appliance.core.commands import Log, Verdict, VerdictKind
from appliance.core.detect.inspect import match_chain
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import LINKTYPE_ETHERNET, PacketIn
from appliance.rules.compiler import compile_rule
from appliance.rules.loader import detection_from_text
from appliance.rules.parser import parse_rule

CLIENT, SERVER = "192.168.1.10", "203.0.113.5"  # HOME_NET client, EXTERNAL_NET server


class Run:
    def __init__(self, *rules: str, mode: str = "ids") -> None:
        self.loaded = detection_from_text(rules)
        assert not self.loaded.parse_failures, self.loaded.parse_failures
        assert not self.loaded.program.failures, self.loaded.program.failures
        self.engine = Engine(EngineConfig(mode=mode), self.loaded.engine)
        self.n = 0
        self.ts = 1000.0

    def send(self, pkt: Any) -> tuple[VerdictKind, list[dict[str, Any]]]:
        self.n += 1
        self.ts += 0.01
        cmds = self.engine.handle(PacketIn(self.n, self.ts, bytes(pkt), LINKTYPE_ETHERNET))
        alerts = [c.record for c in cmds if isinstance(c, Log)
                  and c.record["event_type"] == "alert"]
        (v,) = [c for c in cmds if isinstance(c, Verdict)]
        return v.kind, alerts

    def sids(self, pkt: Any) -> list[int]:
        return [a["alert"]["signature_id"] for a in self.send(pkt)[1]]

    def handshake(self, sport: int = 40000, dport: int = 80) -> None:
        self.send(tcp(CLIENT, SERVER, sport, dport, "S", 100, 0))
        self.send(tcp(SERVER, CLIENT, dport, sport, "SA", 500, 101))
        self.send(tcp(CLIENT, SERVER, sport, dport, "A", 101, 501))


def tcp(src: str, dst: str, sp: int, dp: int, flags: str, seq: int, ack: int,
        data: bytes = b"") -> Any:
    return Ether() / IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags=flags, seq=seq,
                                                ack=ack) / data


def udp(data: bytes, src: str = CLIENT, dst: str = SERVER, sp: int = 5000,
        dp: int = 9999) -> Any:
    return Ether() / IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / data


def chain_matches(opts: str, data: bytes) -> bool:
    """Compile `alert udp any any -> any any (OPTS sid:1;)` and test its chain on data."""
    rule = parse_rule(f"alert udp any any -> any any ({opts} sid:1;)")
    cr = compile_rule(rule, 0, {})
    env: dict[str, int] = {}
    return all(match_chain(ch, data, env) for ch in cr.chains)


@pytest.mark.parametrize("opts,data,expected", [
    ('content:"abc";', b"xxabcxx", True),
    ('content:"ABC"; nocase;', b"xxabcxx", True),
    ('content:"ABC";', b"xxabcxx", False),
    ('content:"abc"; depth:4;', b"xxabcxx", False),
    ('content:"abc"; depth:5;', b"xxabcxx", True),
    ('content:"abc"; offset:3;', b"xxabcxx", False),
    ('content:"abc"; offset:2; depth:3;', b"xxabcxx", True),
    ('content:"abc"; startswith;', b"abcxx", True),
    ('content:"abc"; startswith;', b"xabc", False),
    ('content:"abc"; endswith;', b"xxabc", True),
    ('content:"abc"; endswith;', b"abcx", False),
    ('content:!"abc";', b"xyz", True),
    ('content:!"abc";', b"xabc", False),
    ('content:"|00 01|ab|ff|";', b"\x00\x01ab\xff", True),
    # distance/within relative to the previous match, with Suricata's backtracking.
    ('content:"a"; content:"b"; distance:0; within:1;', b"a_ab", True),
    ('content:"a"; content:"b"; distance:1; within:1;', b"a_b", True),
    ('content:"a"; content:"b"; distance:1; within:1;', b"ab", False),
    ('content:"a"; content:"c"; distance:0; within:2;', b"abbc", False),
    ('content:"GET"; content:!"Host"; distance:0;', b"GET / HTTP/1.0\r\n\r\n", True),
    ('content:"GET"; content:!"Host"; distance:0;', b"GET / HTTP/1.0\r\nHost: x\r\n", False),
    # pcre, absolute and relative.
    ('pcre:"/^GET \\/[a-z]+\\.php/";', b"GET /index.php HTTP/1.1", True),
    ('pcre:"/^get/i";', b"GET /", True),
    ('content:"id="; pcre:"/^\\d{3}&/R";', b"x?id=123&", True),
    ('content:"id="; pcre:"/^\\d{3}&/R";', b"x?id=12&", False),
    ('pcre:!"/evil/";', b"good", True),
    # A pcre is retried past its last match while a later relative item fails.
    ('pcre:"/super/"; content:"nova"; within:7;', b"super_duper_nova_in_super_nova", True),
    ('pcre:"/super/"; content:"nova"; within:7;', b"super_duper_nova_in_super_duper", False),
    ('pcre:"/^super/"; content:"nova"; within:7;', b"super_duper_nova_in_super_nova", False),
    # byte_test / byte_jump / byte_extract / isdataat / bsize / dsize.
    ('byte_test:2,>,255,0;', b"\x01\x00rest", True),
    ('byte_test:2,>,255,0,little;', b"\x01\x00rest", False),
    ('byte_test:3,=,123,1,string,dec;', b"x123y", True),
    ('byte_test:1,&,0x80,0;', b"\x81", True),
    ('byte_test:1,!&,0x80,0;', b"\x81", False),
    ('byte_jump:1,0; content:"Z"; within:1;', b"\x02abZ", True),
    ('byte_jump:1,0; content:"Z"; within:1;', b"\x01abZ", False),
    ('byte_extract:1,0,len; content:"Q"; distance:len; within:1;', b"\x02..Q", True),
    ('byte_extract:1,0,len; content:"Q"; distance:len; within:1;', b"\x01..Q", False),
    ('content:"ab"; isdataat:2,relative;', b"ab12", True),
    ('content:"ab"; isdataat:2,relative;', b"ab1", False),
    ('content:"ab"; isdataat:!1,relative;', b"ab", True),
    ('content:"ab"; bsize:4;', b"ab12", True),
    ('content:"ab"; bsize:>4;', b"ab12", False),
])
def test_content_inspection(opts: str, data: bytes, expected: bool) -> None:
    assert chain_matches(opts, data) is expected


def test_udp_rule_alerts_with_suricata_record(eve_validator: Any) -> None:
    r = Run('alert udp $HOME_NET any -> $EXTERNAL_NET any (msg:"test dht"; '
            'content:"d1:ad2:id20:"; depth:12; classtype:policy-violation; '
            'metadata:created_at 2010_07_30; sid:1000001; rev:3;)')
    kind, alerts = r.send(udp(b"d1:ad2:id20:xxxxxxxxxxxx"))
    assert kind is VerdictKind.ACCEPT
    (a,) = alerts
    assert a["alert"] == {"action": "allowed", "gid": 1, "signature_id": 1000001, "rev": 3,
                          "signature": "test dht", "category": "",
                          "severity": 3, "metadata": {"created_at": ["2010_07_30"]}}
    assert (a["src_ip"], a["dest_ip"], a["proto"], a["direction"]) == (
        CLIENT, SERVER, "UDP", "to_server")
    assert not list(eve_validator.iter_errors(a))
    # Wrong direction for the address groups: no alert.
    assert r.sids(udp(b"d1:ad2:id20:xx", src=SERVER, dst=CLIENT)) == []


def test_flow_established_and_direction() -> None:
    r = Run('alert tcp any any -> any 80 (msg:"x"; flow:established,to_server; '
            'content:"attack"; sid:1;)')
    # Without a handshake, Suricata tracks no session: not established, no alert.
    assert r.sids(tcp(CLIENT, SERVER, 40001, 80, "PA", 1, 1, b"attack")) == []
    r.handshake()
    assert r.sids(tcp(CLIENT, SERVER, 40000, 80, "PA", 101, 501, b"attack")) == [1]
    assert r.sids(tcp(SERVER, CLIENT, 80, 40000, "PA", 501, 107, b"attack")) == []


def test_flowbits_set_then_isset_and_noalert() -> None:
    r = Run(
        'alert udp any any -> any any (msg:"set"; content:"login"; '
        'flowbits:set,logged_in; flowbits:noalert; sid:1;)',
        'alert udp any any -> any any (msg:"after login"; content:"cmd"; '
        'flowbits:isset,logged_in; sid:2;)',
        'alert udp any any -> any any (msg:"not logged"; content:"cmd"; '
        'flowbits:isnotset,logged_in; sid:3;)',
    )
    assert r.sids(udp(b"cmd")) == [3]
    assert r.sids(udp(b"login")) == []  # noalert
    assert r.sids(udp(b"cmd")) == [2]


def test_threshold_limit_and_both() -> None:
    r = Run('alert udp any any -> any any (msg:"lim"; content:"x"; '
            'threshold:type limit, track by_src, count 2, seconds 60; sid:1;)',
            'alert udp any any -> any any (msg:"both"; content:"y"; '
            'threshold:type both, track by_src, count 3, seconds 60; sid:2;)')
    assert [len(r.sids(udp(b"x"))) for _ in range(4)] == [1, 1, 0, 0]
    assert [len(r.sids(udp(b"y"))) for _ in range(5)] == [0, 0, 1, 0, 0]


def test_pass_rule_wins_over_alert_and_drop_blocks_in_ips() -> None:
    rules = ('drop udp any any -> any any (msg:"drop"; content:"bad"; sid:1;)',
             'pass udp any any -> any any (msg:"ok"; content:"bad-but-allowed"; sid:2;)')
    r = Run(*rules, mode="ips")
    # Suricata 7's action scope: a rule on a UDP packet's payload acts on that packet.
    # The pass wins over the drop for it, without alerts, and later packets are still
    # inspected.
    assert r.send(udp(b"bad-but-allowed", sp=1)) == (VerdictKind.ACCEPT, [])
    kind, alerts = r.send(udp(b"bad", sp=1))
    assert kind is VerdictKind.DROP
    assert alerts[0]["alert"]["action"] == "blocked"
    # The drop concerned that packet: the flow's next harmless packet passes.
    assert r.send(udp(b"harmless", sp=1)) == (VerdictKind.ACCEPT, [])
    # IDS mode: the same rule only alerts ("allowed").
    ids = Run(*rules)
    kind, alerts = ids.send(udp(b"bad", sp=3))
    assert kind is VerdictKind.ACCEPT and alerts[0]["alert"]["action"] == "allowed"


def test_protocol_detection_only_rule_matches_once_per_flow() -> None:
    """app-layer-protocol alone (Suricata's PD-only rule) alerts when the protocol is
    decided, not on every later packet; with another keyword it is a packet rule."""
    r = Run('alert tcp any any -> any any (msg:"http seen"; app-layer-protocol:http; sid:1;)',
            'alert tcp any any -> any any (msg:"http with data"; app-layer-protocol:http; '
            'dsize:>0; sid:2;)')
    got = []
    got += r.sids(tcp(CLIENT, SERVER, 4001, 80, "S", 100, 0))
    got += r.sids(tcp(SERVER, CLIENT, 80, 4001, "SA", 500, 101))
    got += r.sids(tcp(CLIENT, SERVER, 4001, 80, "A", 101, 501))
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    got += r.sids(tcp(CLIENT, SERVER, 4001, 80, "PA", 101, 501, req))
    got += r.sids(tcp(SERVER, CLIENT, 80, 4001, "A", 501, 101 + len(req)))
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    got += r.sids(tcp(SERVER, CLIENT, 80, 4001, "PA", 501, 101 + len(req), resp))
    got += r.sids(tcp(CLIENT, SERVER, 4001, 80, "PA", 101 + len(req), 501 + len(resp),
                      req))
    assert got.count(1) == 1
    assert got.count(2) >= 2  # the packet rule: each packet with data once http is known


def test_flow_scope_of_pass_and_drop_as_suricata() -> None:
    """IP-only rules and payload rules on a tracked TCP session act on the whole flow;
    header-only rules (dsize, flags) on the packet alone."""
    r = Run('pass ip 198.51.100.5 any -> any any (msg:"trusted"; sid:1;)',
            'drop tcp any any -> any any (msg:"evil"; flow:established; content:"evil"; '
            'sid:2;)',
            'drop tcp any any -> any any (msg:"empty"; dsize:0; flags:A; sid:3;)',
            'drop udp any any -> any any (msg:"bad"; content:"bad"; sid:4;)',
            mode="ips")
    # IP-only pass: the whole flow is bypassed, a later "bad" packet included.
    assert r.send(udp(b"x", src="198.51.100.5", sp=7)) == (VerdictKind.BYPASS, [])
    assert r.send(udp(b"bad", src="198.51.100.5", sp=7)) == (VerdictKind.BYPASS, [])
    # A TCP session: the bare ACK is dropped (dsize:0, this packet only), the session
    # goes on; its payload drop ends it.
    assert r.send(tcp(CLIENT, SERVER, 4000, 80, "S", 100, 0))[0] is VerdictKind.ACCEPT
    assert r.send(tcp(SERVER, CLIENT, 80, 4000, "SA", 500, 101))[0] is VerdictKind.ACCEPT
    kind, alerts = r.send(tcp(CLIENT, SERVER, 4000, 80, "A", 101, 501))
    assert kind is VerdictKind.DROP and [a["alert"]["signature_id"] for a in alerts] == [3]
    assert r.send(tcp(CLIENT, SERVER, 4000, 80, "PA", 101, 501, b"hello"))[0] \
        is VerdictKind.ACCEPT
    kind, alerts = r.send(tcp(CLIENT, SERVER, 4000, 80, "PA", 106, 501, b"evil"))
    assert kind is VerdictKind.DROP and [a["alert"]["signature_id"] for a in alerts] == [2]
    assert r.send(tcp(CLIENT, SERVER, 4000, 80, "PA", 110, 501, b"more"))[0] \
        is VerdictKind.DROP
    assert r.send(tcp(SERVER, CLIENT, 80, 4000, "PA", 501, 110, b"reply"))[0] \
        is VerdictKind.DROP


def test_header_only_rules_by_address_and_port_and_icmp() -> None:
    r = Run('alert ip [198.51.100.7,198.51.100.9] any -> $HOME_NET any (msg:"rep"; sid:1;)',
            'alert tcp $EXTERNAL_NET any -> $HOME_NET 22 (msg:"ssh syn"; flags:S,12; sid:2;)',
            'alert icmp any any -> any any (msg:"ping"; itype:8; sid:3;)')
    assert r.sids(udp(b"x", src="198.51.100.9", dst=CLIENT)) == [1]
    assert r.sids(udp(b"x", src="198.51.100.8", dst=CLIENT)) == []
    assert r.sids(tcp(SERVER, CLIENT, 5555, 22, "S", 1, 0)) == [2]
    assert r.sids(tcp(SERVER, CLIENT, 5556, 23, "S", 1, 0)) == []
    assert r.sids(Ether() / IP(src=CLIENT, dst=SERVER) / ICMP(type=8)) == [3]
    assert r.sids(Ether() / IP(src=CLIENT, dst=SERVER) / ICMP(type=0)) == []


def test_ip_header_keywords_per_packet_between_the_same_endpoints() -> None:
    """sameip, ip_proto and ttl: what a rule's header asks of the packet, whether it
    depends on the endpoints alone (checked once per endpoints and protocol, then
    kept) or on each packet (ttl)."""
    r = Run('alert ip any any -> any any (msg:"same"; sameip; sid:1;)',
            'alert ip $HOME_NET any -> any any (msg:"gre"; ip_proto:47; sid:2;)',
            'alert ip $HOME_NET any -> any any (msg:"not udp"; ip_proto:!17; sid:3;)',
            'alert udp $HOME_NET any -> any any (msg:"low ttl"; ttl:<5; sid:4;)')
    assert r.sids(udp(b"x", src=CLIENT, dst=CLIENT)) == [1]
    assert r.sids(udp(b"x")) == []
    assert r.sids(Ether() / IP(src=CLIENT, dst=SERVER, ttl=3) / UDP(sport=5000,
                                                                   dport=9999)) == [4]
    assert r.sids(udp(b"x")) == []  # same endpoints again: ttl is the packet's
    assert sorted(r.sids(Ether() / IP(src=CLIENT, dst=SERVER, proto=47) / b"gre")) \
        == [2, 3]
    assert r.sids(tcp(CLIENT, SERVER, 5000, 9999, "S", 1, 0)) == [3]
    assert r.engine.stats.errors == 0


def test_unsupported_keyword_is_reported_not_loaded() -> None:
    loaded = detection_from_text([
        'alert tcp any any -> any any (msg:"x"; asn1:oversize_length 100; sid:5;)',
        'alert tcp any any -> any any (msg:"ok"; content:"a"; sid:6;)',
    ])
    assert [f.reason for f in loaded.program.failures] == ["unsupported keyword 'asn1'"]
    assert loaded.active == 1


def test_bidirectional_rule_matches_both_ways() -> None:
    r = Run('alert udp 10.9.9.9 any <> $HOME_NET any (msg:"bi"; content:"q"; sid:1;)')
    assert r.sids(udp(b"q", src="10.9.9.9", dst=CLIENT)) == [1]
    assert r.sids(udp(b"q", src=CLIENT, dst="10.9.9.9")) == [1]


def test_tls_version_keyword_checks_the_negotiated_version() -> None:
    loaded = detection_from_text([
        'alert tls any any -> any any (msg:"tls12"; tls.version:1.2; sid:1;)',
        'alert tls any any -> any any (msg:"not ssl"; ssl_version:!sslv2,sslv3; sid:2;)',
    ])
    assert not loaded.program.failures
    eng = loaded.engine
    pkt = Ether() / IP(src=SERVER, dst=CLIENT) / TCP(sport=443, dport=40000, flags="PA")
    from appliance.core.decode import Decoder
    from appliance.core.flows import FlowTable

    p = Decoder().decode(bytes(pkt), LINKTYPE_ETHERNET, 1.0)
    flow, _ = FlowTable().lookup(p)
    flow.app_proto = "tls"
    got = eng.inspect_tx(p, flow, False, 0, {"tls.version": b"TLS 1.2"})
    assert sorted(m.rule.rule.sid for m in got) == [1, 2]
    flow.tx_alerted = set()
    got = eng.inspect_tx(p, flow, False, 1, {"tls.version": b"SSLv3"})
    assert [m.rule.rule.sid for m in got] == []


def test_dns_opcode_and_rrtype_keywords() -> None:
    loaded = detection_from_text([
        'alert dns any any -> any any (msg:"txt"; dns.rrtype:TXT; sid:1;)',
        'alert dns any any -> any any (msg:"notify"; dns.opcode:4; sid:2;)',
        'alert dns any any -> any any (msg:"q"; dns.query; content:"evil"; dns.opcode:!4; '
        'sid:3;)',
    ])
    assert not loaded.program.failures, loaded.program.failures
    eng = loaded.engine
    from appliance.core.decode import Decoder
    from appliance.core.flows import FlowTable

    p = Decoder().decode(bytes(udp(b"x", dp=53)), LINKTYPE_ETHERNET, 1.0)
    flow, _ = FlowTable().lookup(p)
    flow.app_proto = "dns"
    got = eng.inspect_tx(p, flow, True, 0, {"dns.query": [b"evil.example"],
                                             "dns.opcode": b"0", "dns.rrtype": [b"16"]})
    assert sorted(m.rule.rule.sid for m in got) == [1, 3]
    got = eng.inspect_tx(p, flow, True, 1, {"dns.query": [b"evil.example"],
                                             "dns.opcode": b"4", "dns.rrtype": [b"1"]})
    assert sorted(m.rule.rule.sid for m in got) == [2]


def test_xbits_per_host_and_pair_with_expiry() -> None:
    other = "192.168.1.77"
    r = Run(
        'alert udp any any -> any any (msg:"set src"; content:"login"; '
        'xbits:set,seen,track ip_src,expire 10; xbits:noalert; sid:1;)',
        'alert udp any any -> any any (msg:"src seen"; content:"cmd"; '
        'xbits:isset,seen,track ip_src; sid:2;)',
        'alert udp any any -> any any (msg:"reply to seen"; content:"reply"; '
        'xbits:isset,seen,track ip_dst; sid:3;)',
        'alert udp any any -> any any (msg:"pair"; content:"hello"; '
        'xbits:set,talk,track ip_pair; sid:4;)',
        'alert udp any any -> any any (msg:"pair back"; content:"bye"; '
        'xbits:isset,talk,track ip_pair; xbits:unset,talk,track ip_pair; sid:5;)',
        'alert udp any any -> any any (msg:"not seen"; content:"cmd"; '
        'xbits:isnotset,seen,track ip_src; sid:6;)',
    )
    assert r.sids(udp(b"cmd")) == [6]
    assert r.sids(udp(b"login")) == []  # noalert
    # Another flow (port) of the same host: the bit is per host, not per flow.
    assert r.sids(udp(b"cmd", sp=6000)) == [2]
    assert r.sids(udp(b"cmd", src=other)) == [6]
    assert r.sids(udp(b"reply", src=SERVER, dst=CLIENT)) == [3]
    # An address pair is the same pair in both directions; unset ends it.
    assert r.sids(udp(b"hello", src=other)) == [4]
    assert r.sids(udp(b"bye", src=SERVER, dst=CLIENT)) == []
    assert r.sids(udp(b"bye", src=SERVER, dst=other)) == [5]
    assert r.sids(udp(b"bye", src=other)) == []
    # expire 10: gone 10 s of packet time after it was set.
    r.ts += 11
    assert r.sids(udp(b"cmd")) == [6]


def test_hostbits_directions_toggle_and_noalert() -> None:
    r = Run(
        'alert udp any any -> any any (content:"mark"; hostbits:set,bad,dst; '
        'hostbits:noalert; sid:1;)',
        'alert udp any any -> any any (content:"flip"; hostbits:toggle,bad,both; sid:2;)',
        'alert udp any any -> any any (content:"q"; hostbits:isset,bad; sid:3;)',
        'alert udp any any -> any any (content:"q"; hostbits:isset,bad,both; sid:4;)',
    )
    assert r.sids(udp(b"mark")) == []  # sets the bit on SERVER
    assert r.sids(udp(b"q")) == [4]  # CLIENT (src) has none; both: SERVER has it
    assert r.sids(udp(b"q", src=SERVER, dst=CLIENT)) == [3, 4]
    assert r.sids(udp(b"flip")) == [2]  # both hosts toggled: CLIENT on, SERVER off
    assert r.sids(udp(b"q", src=SERVER, dst=CLIENT)) == [4]
    assert r.sids(udp(b"q")) == [3, 4]


@pytest.mark.parametrize("rule,reason", [
    ("xbits:set,a;", "'xbits' needs 'track ip_src|ip_dst|ip_pair'"),
    ("xbits:set,a,track ip_host;", "'xbits': invalid option 'track ip_host'"),
    ("xbits:set,a,track ip_src,expire x;", "'xbits': invalid option 'expire x'"),
    ("hostbits:wipe,a;", "'hostbits': unknown command 'wipe'"),
    ("hostbits:set,a,left;", "'hostbits': invalid direction 'left'"),
])
def test_xbits_errors(rule: str, reason: str) -> None:
    loaded = detection_from_text([f"alert udp any any -> any any ({rule} sid:1;)"])
    assert [f.reason for f in loaded.program.failures] == [reason]


def test_base64_decode_and_base64_data() -> None:
    import base64

    enc = base64.b64encode(b"secret payload \x9e").decode()
    r = Run(
        'alert udp any any -> any any (content:"k="; base64_decode:relative; base64_data; '
        'content:"secret"; startswith; sid:1;)',
        'alert udp any any -> any any (base64_decode:bytes 8,offset 2; base64_data; '
        'content:"secret"; sid:2;)',
        'alert udp any any -> any any (base64_decode:bytes 4,offset 2; base64_data; '
        'content:"secret"; sid:3;)',
        'alert udp any any -> any any (content:"k="; base64_decode:relative; base64_data; '
        'content:"|9e|"; endswith; sid:4;)',
    )
    # "secret" is the first 8 base64 characters after "k=".
    assert r.sids(udp(f"k={enc}".encode())) == [1, 2, 4]
    # RFC 4648 strict: decoding stops at the first byte outside the alphabet.
    assert r.sids(udp(f"k={enc[:8]}%{enc[8:]}".encode())) == [1, 2]
    assert r.sids(udp(b"k=!!!!" + enc.encode())) == []


def test_base64_errors_and_transformed_buffer_options() -> None:
    loaded = detection_from_text([
        'alert udp any any -> any any (base64_data; content:"x"; sid:1;)',
        'alert udp any any -> any any (base64_decode:bytes 0; base64_data; content:"x"; '
        'sid:2;)',
    ])
    assert sorted(f.reason for f in loaded.program.failures) == [
        "'base64_data' needs a 'base64_decode' before it",
        "'base64_decode': bytes must be 1 to 65535"]
    # A buffer keyword after a transform inspects the transformed buffer.
    rule = parse_rule('alert http any any -> any any (http.cookie; url_decode; '
                      'content:"a="; base64_decode:relative; isdataat:1; sid:3;)')
    cr = compile_rule(rule, 0, {})
    assert [ch.key for ch in cr.chains] == [("http.cookie", (("url_decode", None),))]


def test_tcp_mss_and_ipopts() -> None:
    r = Run('alert tcp any any -> any any (msg:"small mss"; tcp.mss:<536; sid:1;)',
            'alert tcp any any -> any any (msg:"mss 1460"; tcp.mss:1460; sid:2;)',
            'alert ip any any -> any any (msg:"rr"; ipopts:rr; sid:3;)',
            'alert ip any any -> any any (msg:"any opt"; ipopts:any; sid:4;)')

    def syn(sp: int, opts: list[Any], ipopt: bytes = b"") -> Any:
        return Ether() / IP(src=CLIENT, dst=SERVER, options=ipopt) / TCP(
            sport=sp, dport=80, flags="S", options=opts)

    assert r.sids(syn(1, [("NOP", None), ("MSS", 500)])) == [1]
    assert r.sids(syn(2, [("WScale", 7), ("MSS", 1460)])) == [2]
    assert r.sids(syn(3, [])) == []  # no MSS option: tcp.mss does not match
    # Record route (type 7, length 7, pointer 4, one address, padded with EOL).
    assert r.sids(syn(4, [], b"\x07\x07\x04\x00\x00\x00\x00\x00")) == [3, 4]
    assert r.sids(syn(5, [], b"\x01\x01\x01\x00")) == [4]


def test_flow_established_ends_when_the_session_closes() -> None:
    r = Run('alert tcp any any -> any 80 (msg:"est ack"; flow:established,to_server; '
            'flags:A; sid:1;)')
    r.send(tcp(CLIENT, SERVER, 40000, 80, "S", 100, 0))
    r.send(tcp(SERVER, CLIENT, 80, 40000, "SA", 500, 101))
    assert r.sids(tcp(CLIENT, SERVER, 40000, 80, "A", 101, 501)) == [1]
    r.send(tcp(CLIENT, SERVER, 40000, 80, "FA", 101, 501))
    r.send(tcp(SERVER, CLIENT, 80, 40000, "FA", 501, 102))
    # The last ACK closes the session: not established any more (as Suricata's flow).
    assert r.sids(tcp(CLIENT, SERVER, 40000, 80, "A", 102, 502)) == []


def test_app_rule_with_payload_content_checks_the_packet() -> None:
    from scapy.layers.dns import DNS, DNSQR

    r = Run('alert dns any any -> any any (msg:"rd query"; content:"|01 00 00 01|"; '
            'offset:2; depth:4; dns.query; content:"evil"; sid:1;)')

    def q(rd: int, name: str, sp: int) -> Any:
        return Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=sp, dport=53) / DNS(
            id=7, rd=rd, qd=DNSQR(qname=name))

    assert r.sids(q(1, "evil.example", 3001)) == [1]
    assert r.sids(q(0, "evil.example", 3002)) == []  # flags 0x0000: payload differs
    assert r.sids(q(1, "good.example", 3003)) == []


def test_header_candidates_are_cached_per_endpoints_and_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.core.detect.signatures as sigmod

    monkeypatch.setattr(sigmod, "STATIC_CACHE_MAX", 8)
    r = Run('alert udp any any -> any 53 (msg:"dns port"; sid:1;)',
            'alert udp 198.51.100.0/24 any -> any any (msg:"src net"; sid:2;)')
    # The same answers from the cache as from the lookups, whatever the order.
    for _ in range(2):
        assert r.sids(udp(b"q", dp=53)) == [1]
        assert r.sids(udp(b"q", src="198.51.100.4", dp=53)) == [1, 2]
        assert r.sids(udp(b"q", src="198.51.100.4", dp=54)) == [2]
        assert r.sids(udp(b"q", dp=54)) == []
    # A flood of new endpoint pairs: the cache never grows past its bound.
    det = r.loaded.engine
    for sp in range(100):
        r.sids(udp(b"x", sp=1000 + sp))
        assert len(det._static) <= 8


def test_stream_view_reuses_the_packet_scan_and_still_sees_split_patterns() -> None:
    """In-order data: the stream chunk is the packet's payload, whose prefilter scan is
    reused; a pattern split across two segments (tail + chunk) is still found, a
    pattern inside one segment alerts once."""
    r = Run('alert tcp any any -> any 80 (msg:"split"; flow:established,to_server; '
            'content:"SPLITPATTERN"; sid:1;)',
            'alert tcp any any -> any 80 (msg:"whole"; flow:established,to_server; '
            'content:"WHOLEPATTERN"; sid:2;)')
    got: list[int] = []
    got += r.sids(tcp(CLIENT, SERVER, 4300, 80, "S", 100, 0))
    got += r.sids(tcp(SERVER, CLIENT, 80, 4300, "SA", 900, 101))
    got += r.sids(tcp(CLIENT, SERVER, 4300, 80, "A", 101, 901))
    one = b"x" * 100 + b"SPLIT"
    two = b"PATTERN" + b"y" * 50 + b"WHOLEPATTERN" + b"z" * 10
    got += r.sids(tcp(CLIENT, SERVER, 4300, 80, "PA", 101, 901, one))
    got += r.sids(tcp(SERVER, CLIENT, 80, 4300, "A", 901, 101 + len(one)))
    got += r.sids(tcp(CLIENT, SERVER, 4300, 80, "PA", 101 + len(one), 901, two))
    got += r.sids(tcp(SERVER, CLIENT, 80, 4300, "A", 901, 101 + len(one) + len(two)))
    assert sorted(got) == [1, 2]
