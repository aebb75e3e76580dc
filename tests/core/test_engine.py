"""Engine contract: exactly one verdict per packet, failures contained, stats schema."""

from __future__ import annotations

from typing import Any

from appliance.core.commands import Log, Verdict, VerdictKind
from appliance.core.engine import Engine
from appliance.core.events import LINKTYPE_ETHERNET, LINKTYPE_RAW, PacketIn, Shutdown


def test_a_crashing_stage_is_contained_and_the_packet_still_gets_its_verdict() -> None:
    engine = Engine()

    def boom(*_a: object) -> None:
        raise RuntimeError("detector bug")

    engine.flows.lookup = boom  # type: ignore[method-assign,assignment]
    ip = bytes.fromhex("4500001c000100004011f9c90a0000010a000002") + bytes.fromhex(
        "04d2162e00080000")
    cmds = engine.handle(PacketIn(42, 1.0, ip, LINKTYPE_RAW))
    assert cmds == [Verdict(42, VerdictKind.ACCEPT)]
    assert engine.stats.errors == 1


def test_shutdown_emits_flows_then_schema_valid_stats(eve_validator: Any) -> None:
    engine = Engine()
    ip = bytes.fromhex("4500001c000100004011f9c90a0000010a000002") + bytes.fromhex(
        "04d2162e00080000")
    engine.handle(PacketIn(1, 5.0, ip, LINKTYPE_RAW))
    engine.handle(PacketIn(2, 6.0, b"\x45\x00", LINKTYPE_RAW))  # truncated
    engine.handle(PacketIn(3, 7.0, b"\x00" * 5, LINKTYPE_ETHERNET))
    out = engine.handle(Shutdown())
    recs = [c.record for c in out if isinstance(c, Log)]
    assert [r["event_type"] for r in recs] == ["flow", "stats"]
    stats = recs[-1]["stats"]
    assert stats["decoder"]["pkts"] == 3
    assert stats["decoder"]["invalid"] == 2
    assert stats["decoder"]["event"]["ipv4"]["pkt_too_small"] == 1
    assert stats["decoder"]["event"]["ethernet"]["pkt_too_small"] == 1
    assert stats["flow"]["total"] == 1
    for r in recs:
        assert not list(eve_validator.iter_errors(r))


def test_decode_anomaly_is_logged_with_suricata_name(eve_validator: Any) -> None:
    engine = Engine()
    cmds = engine.handle(PacketIn(9, 1.5, b"\x45\x00\x00\x10", LINKTYPE_RAW))
    logs = [c.record for c in cmds if isinstance(c, Log)]
    assert len(logs) == 1
    rec = logs[0]
    assert rec["anomaly"] == {"type": "decode", "event": "decoder.ipv4.pkt_too_small"}
    assert rec["pcap_cnt"] == 9
    assert rec["timestamp"] == "1970-01-01T00:00:01.500000+0000"
    assert not list(eve_validator.iter_errors(rec))


def test_download_is_held_until_its_verdict_and_dropped_when_malicious() -> None:
    """The packet completing a file gets no Verdict until FileScanned; one Verdict in all."""
    from scapy.layers.inet import IP, TCP, Ether

    from appliance.core.commands import Hold, ScanRequest
    from appliance.core.engine import EngineConfig
    from appliance.filescan import resolve

    c, s = "10.203.0.10", "203.0.113.10"
    req = b"GET /x.exe HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"MZ-not-really-malware"
    hdr = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    pkts = [
        Ether() / IP(src=c, dst=s) / TCP(sport=4000, dport=80, flags="S", seq=0),
        Ether() / IP(src=s, dst=c) / TCP(sport=80, dport=4000, flags="SA", seq=0, ack=1),
        Ether() / IP(src=c, dst=s) / TCP(sport=4000, dport=80, flags="A", seq=1, ack=1),
        Ether() / IP(src=c, dst=s) / TCP(sport=4000, dport=80, flags="PA", seq=1, ack=1) / req,
        Ether() / IP(src=s, dst=c) / TCP(sport=80, dport=4000, flags="PA", seq=1,
                                         ack=1 + len(req)) / (hdr + body),
    ]
    asked: list[ScanRequest] = []

    def scan(r: ScanRequest) -> tuple[str, tuple[str, ...], str]:
        asked.append(r)
        return "malicious", ("yara:test:Fake",), "scan"

    engine = Engine(EngineConfig(mode="ips", scan_files=True))
    verdicts: dict[int, list[VerdictKind]] = {}
    for n, pkt in enumerate(pkts, 1):
        cmds = engine.handle(PacketIn(n, 1.0 + n, bytes(pkt), LINKTYPE_ETHERNET))
        if n == len(pkts):
            assert any(isinstance(x, Hold) for x in cmds)
            assert not any(isinstance(x, Verdict) for x in cmds)
        for x in resolve(engine, cmds, scan):
            if isinstance(x, Verdict):
                verdicts.setdefault(x.packet_id, []).append(x.kind)
    assert verdicts == {1: [VerdictKind.ACCEPT], 2: [VerdictKind.ACCEPT],
                        3: [VerdictKind.ACCEPT], 4: [VerdictKind.ACCEPT],
                        5: [VerdictKind.DROP]}
    (r,) = asked
    assert r.data == body and r.size == len(body) and r.packet_id == 5


def test_tunnelled_traffic_is_inspected_and_the_tunnel_packet_dropped() -> None:
    """An attack wrapped in IP-in-IP or GRE is seen: the inner packets go through every
    stage, and the tunnel packet gets the strictest verdict of its layers."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import GRE
    from scapy.packet import Raw

    from appliance.core.engine import EngineConfig
    from appliance.rules.loader import detection_from_text

    loaded = detection_from_text([
        'drop tcp any any -> any 80 (msg:"evil"; flow:established,to_server; '
        'content:"/evil.exe"; sid:7;)'])
    for wrap in (lambda p: IP(src="192.0.2.1", dst="192.0.2.2") / p,
                 lambda p: IP(src="192.0.2.1", dst="192.0.2.2") / GRE() / p):
        engine = Engine(EngineConfig(mode="ips", heuristics=None), loaded.engine)
        c, s = "10.1.0.1", "10.2.0.2"
        inner = [
            IP(src=c, dst=s) / TCP(sport=5000, dport=80, flags="S", seq=0),
            IP(src=s, dst=c) / TCP(sport=80, dport=5000, flags="SA", seq=0, ack=1),
            IP(src=c, dst=s) / TCP(sport=5000, dport=80, flags="A", seq=1, ack=1),
            IP(src=c, dst=s) / TCP(sport=5000, dport=80, flags="PA", seq=1, ack=1)
            / Raw(b"GET /evil.exe HTTP/1.0\r\n\r\n"),
        ]
        kinds = []
        alerts = []
        for n, p in enumerate(inner, 1):
            cmds = engine.handle(PacketIn(n, 10.0 + n, bytes(wrap(p)), LINKTYPE_RAW))
            kinds += [x.kind for x in cmds if isinstance(x, Verdict)]
            alerts += [x.record for x in cmds if isinstance(x, Log)
                       and x.record["event_type"] == "alert"]
        assert kinds == [VerdictKind.ACCEPT] * 3 + [VerdictKind.DROP]
        assert [a["alert"]["signature_id"] for a in alerts] == [7]
        assert alerts[0]["src_ip"] == c  # the inner packet's addresses


def _conn(sport: int, isn: int, payload: bytes) -> list[bytes]:
    from scapy.layers.inet import IP, TCP
    from scapy.packet import Raw

    c, s = "10.1.0.1", "10.2.0.2"
    return [bytes(x) for x in (
        IP(src=c, dst=s) / TCP(sport=sport, dport=80, flags="S", seq=isn),
        IP(src=s, dst=c) / TCP(sport=80, dport=sport, flags="SA", seq=9000, ack=isn + 1),
        IP(src=c, dst=s) / TCP(sport=sport, dport=80, flags="A", seq=isn + 1, ack=9001),
        IP(src=c, dst=s) / TCP(sport=sport, dport=80, flags="PA", seq=isn + 1, ack=9001)
        / Raw(payload))]


def _verdicts(engine: Engine, pkts: list[bytes], t0: float) -> list[VerdictKind]:
    out = []
    for n, raw in enumerate(pkts):
        cmds = engine.handle(PacketIn(n, t0 + n * 0.01, raw, LINKTYPE_RAW))
        out += [x.kind for x in cmds if isinstance(x, Verdict)]
    return out


def test_a_reused_port_after_a_reject_or_a_bypass_is_a_new_connection() -> None:
    """The guest's next connection on the same 4-tuple must not inherit the old one's
    drop (its reset or drop hid the end from the engine) or bypass."""
    from appliance.core.engine import EngineConfig
    from appliance.core.stream import FLOW_BYPASSED
    from appliance.rules.loader import detection_from_text

    loaded = detection_from_text([
        'reject tcp any any -> any 80 (msg:"probe"; content:"/bin/sh"; sid:1;)',
        'pass tcp any any -> any 80 (msg:"bulk"; content:"GET /bulk/"; depth:10; sid:2;)'])
    engine = Engine(EngineConfig(mode="ips", heuristics=None), loaded.engine)
    A, R, B, D = (VerdictKind.ACCEPT, VerdictKind.REJECT, VerdictKind.BYPASS,
                  VerdictKind.DROP)
    assert _verdicts(engine, _conn(4000, 100, b"GET /;/bin/sh"), 10.0) == [A, A, A, R]
    # The same port, a new ISN: a new flow, inspected afresh (not dropped).
    assert _verdicts(engine, _conn(4000, 77777, b"GET / HTTP/1.0\r\n\r\n"), 20.0) == [
        A, A, A, A]
    assert engine.flows.stats.reused == 1
    # A retransmitted SYN of a dropped connection (same ISN) is still dropped.
    engine2 = Engine(EngineConfig(mode="ips", heuristics=None), loaded.engine)
    first = _conn(4001, 100, b"GET /;/bin/sh")
    assert _verdicts(engine2, first, 10.0) == [A, A, A, R]
    assert _verdicts(engine2, first[:1], 11.0) == [D]
    # Bypass: the flow is marked bypassed (shorter timeout), and a new SYN on the same
    # 4-tuple (conntrack queued it: a new connection) is inspected again.
    assert _verdicts(engine, _conn(4002, 500, b"GET /bulk/1 HTTP/1.0\r\n\r\n"), 30.0) == [
        A, A, A, B]
    (bulk,) = [f for f in engine.flows if f.sp == 4002]
    assert bulk.state == FLOW_BYPASSED and engine.flows.timeout_of(bulk) == 100
    assert _verdicts(engine, _conn(4002, 90000, b"GET /;/bin/sh"), 40.0) == [A, A, A, R]


def test_a_session_picked_up_at_the_synack_is_oriented_client_to_server() -> None:
    """Midstream pickup at the server's SYN/ACK (Suricata's FlowSwap): the flow's client
    is the SYN/ACK's receiver, so to_server rules and the HTTP parser see the request
    as a request."""
    from scapy.layers.inet import IP, TCP
    from scapy.packet import Raw

    from appliance.core.engine import EngineConfig
    from appliance.rules.loader import detection_from_text

    loaded = detection_from_text([
        'alert http any any -> any any (msg:"uri"; flow:to_server; http.uri; '
        'content:"/index"; sid:5;)'])
    from appliance.core.flows import FlowConfig

    engine = Engine(EngineConfig(heuristics=None, flow=FlowConfig(midstream=True)),
                    loaded.engine)
    c, s = "10.1.0.1", "10.2.0.2"
    pkts = [
        IP(src=s, dst=c) / TCP(sport=80, dport=5000, flags="SA", seq=900, ack=101),
        IP(src=c, dst=s) / TCP(sport=5000, dport=80, flags="A", seq=101, ack=901),
        IP(src=c, dst=s) / TCP(sport=5000, dport=80, flags="PA", seq=101, ack=901)
        / Raw(b"GET /index HTTP/1.0\r\n\r\n"),
    ]
    alerts = []
    for n, p in enumerate(pkts, 1):
        cmds = engine.handle(PacketIn(n, 10.0 + n, bytes(p), LINKTYPE_RAW))
        alerts += [x.record for x in cmds if isinstance(x, Log)
                   and x.record["event_type"] == "alert"]
    (f,) = list(engine.flows)
    assert f.sp == 5000 and f.dp == 80 and f.tc_pkts == 1 and f.ts_pkts == 2
    assert [a["alert"]["signature_id"] for a in alerts] == [5]


def test_app_state_is_freed_when_both_sides_close() -> None:
    """A closed TCP flow waits for its closed timeout in the table, but its parser,
    bodies and transactions go at once (and its last records are written)."""
    from scapy.layers.inet import IP, TCP
    from scapy.packet import Raw

    from appliance.core.engine import EngineConfig

    engine = Engine(EngineConfig(heuristics=None))
    c, s = "10.1.0.1", "10.2.0.2"
    req = b"GET /t HTTP/1.1\r\nHost: x\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n" + b"t" * 3000
    pkts = [
        IP(src=c, dst=s) / TCP(sport=5000, dport=80, flags="S", seq=0),
        IP(src=s, dst=c) / TCP(sport=80, dport=5000, flags="SA", seq=0, ack=1),
        IP(src=c, dst=s) / TCP(sport=5000, dport=80, flags="A", seq=1, ack=1),
        IP(src=c, dst=s) / TCP(sport=5000, dport=80, flags="PA", seq=1, ack=1) / Raw(req),
        IP(src=s, dst=c) / TCP(sport=80, dport=5000, flags="PA", seq=1, ack=1 + len(req))
        / Raw(resp),
    ]
    e = 1 + len(req)
    r = 1 + len(resp)
    fins = [
        IP(src=c, dst=s) / TCP(sport=5000, dport=80, flags="FA", seq=e, ack=r),
        IP(src=s, dst=c) / TCP(sport=80, dport=5000, flags="FA", seq=r, ack=e + 1),
        IP(src=c, dst=s) / TCP(sport=5000, dport=80, flags="A", seq=e + 1, ack=r + 1),
    ]
    types = []
    for n, p in enumerate(pkts, 1):
        types += [x.record["event_type"] for x in engine.handle(
            PacketIn(n, 10.0 + n, bytes(p), LINKTYPE_RAW)) if isinstance(x, Log)]
    assert "http" in types and engine.app_memuse >= 3000
    for n, p in enumerate(fins, 10):
        engine.handle(PacketIn(n, 10.0 + n, bytes(p), LINKTYPE_RAW))
    (f,) = list(engine.flows)  # still in the table, for its closed timeout
    assert f.app.parser is None and engine.app_memuse == 0


def _dir_session(engine: Engine, wrap: Any = None) -> list[Verdict]:
    """A session whose client sends 3 x 600 bytes (depth 1000), then the server 3 x 600
    bytes; the verdicts of every packet. `wrap` puts each packet in a tunnel."""
    from scapy.layers.inet import IP, TCP
    from scapy.packet import Raw

    c, s = "10.1.0.1", "10.2.0.2"
    pkts = [IP(src=c, dst=s) / TCP(sport=4100, dport=80, flags="S", seq=100),
            IP(src=s, dst=c) / TCP(sport=80, dport=4100, flags="SA", seq=900, ack=101),
            IP(src=c, dst=s) / TCP(sport=4100, dport=80, flags="A", seq=101, ack=901)]
    for i in range(3):
        pkts.append(IP(src=c, dst=s) / TCP(sport=4100, dport=80, flags="PA",
                                           seq=101 + 600 * i, ack=901) / Raw(b"u" * 600))
        pkts.append(IP(src=s, dst=c) / TCP(sport=80, dport=4100, flags="A", seq=901,
                                           ack=701 + 600 * i))
    for i in range(3):
        pkts.append(IP(src=s, dst=c) / TCP(sport=80, dport=4100, flags="PA",
                                           seq=901 + 600 * i, ack=1901)
                    / Raw(b"evil" + b"d" * 596))
    out = []
    for n, x in enumerate(pkts):
        raw = bytes(wrap(x) if wrap else x)
        cmds = engine.handle(PacketIn(n, 50.0 + n * 0.01, raw, LINKTYPE_RAW))
        out += [v for v in cmds if isinstance(v, Verdict)]
    return out


def test_a_direction_past_depth_is_bypassed_alone_while_the_other_is_inspected() -> None:
    from dataclasses import replace

    from appliance.core.commands import DIRECTION_BYPASS
    from appliance.core.engine import EngineConfig
    from appliance.core.flows import FlowConfig
    from appliance.core.stream import StreamConfig
    from appliance.rules.loader import detection_from_text

    rule = 'alert tcp any 80 -> any any (msg:"evil reply"; content:"evil"; sid:1;)'
    cfg = EngineConfig(mode="ips", heuristics=None,
                       flow=FlowConfig(stream=StreamConfig(depth=1000)))
    engine = Engine(cfg, detection_from_text([rule]).engine)
    got = [(v.kind, v.detail) for v in _dir_session(engine)]
    A, B, D = VerdictKind.ACCEPT, VerdictKind.BYPASS, DIRECTION_BYPASS
    # Handshake; the client's first 600 bytes (inspected); the server's ACK; the second
    # 600 cross the depth: that packet and the third bypass the client's direction only.
    assert got[:5] == [(A, ""), (A, ""), (A, ""), (A, ""), (A, "")]
    assert got[5] == (B, D) and got[7] == (B, D)
    assert got[6] == (A, "") and got[8] == (A, "")  # the server's ACKs: still queued
    # The server's data is still inspected (alerts), until it passes depth too: then the
    # whole connection is bypassed.
    assert got[9] == (A, "")
    assert got[10] == (B, "") and got[11] == (B, "")
    assert engine.alerts == 2  # both server packets with "evil" before the bypass
    # Off: only whole connections, once both directions are past depth.
    off = Engine(replace(cfg, bypass_per_direction=False), detection_from_text([rule]).engine)
    kinds = [(v.kind, v.detail) for v in _dir_session(off)]
    assert (B, D) not in kinds and kinds[-1] == (B, "")
    # Tunnelled: the mark would bypass the tunnel's connection, so never per direction.
    from scapy.layers.inet import IP

    tun = Engine(cfg, detection_from_text([rule]).engine)
    kinds = [(v.kind, v.detail) for v in _dir_session(
        tun, lambda x: IP(src="192.0.2.1", dst="192.0.2.2", proto=4) / x)]
    assert (B, D) not in kinds


def test_checksum_auto_validates_live_traffic_not_capture_files() -> None:
    """`auto`: a capture file's TCP checksums are not validated (Suricata 7.0.4's pcap
    runs reject no segment for it); live, a wrong checksum keeps the segment out of the
    stream and the app layer."""
    from scapy.layers.inet import IP, TCP
    from scapy.packet import Raw

    from appliance.core.engine import EngineConfig
    from appliance.rules.loader import detection_from_text

    rule = 'alert http any any -> any any (msg:"evil"; http.uri; content:"/evil"; sid:1;)'
    c, s = "10.1.0.1", "10.2.0.2"
    pkts = [IP(src=c, dst=s) / TCP(sport=4200, dport=80, flags="S", seq=100),
            IP(src=s, dst=c) / TCP(sport=80, dport=4200, flags="SA", seq=900, ack=101),
            IP(src=c, dst=s) / TCP(sport=4200, dport=80, flags="A", seq=101, ack=901),
            IP(src=c, dst=s) / TCP(sport=4200, dport=80, flags="PA", seq=101, ack=901,
                                   chksum=0x1234) / Raw(b"GET /evil HTTP/1.1\r\nHost: x\r\n\r\n")]

    def run(live: bool, trusted: bool = False) -> tuple[int, int]:
        engine = Engine(EngineConfig(heuristics=None, live=live),
                        detection_from_text([rule]).engine)
        for n, x in enumerate(pkts):
            engine.handle(PacketIn(n, 70.0 + n * 0.01, bytes(x), LINKTYPE_RAW,
                                   csum_trusted=trusted))
        return engine.alerts, engine.flows.stream.stats.invalid_checksum

    assert run(live=False) == (1, 0)
    assert run(live=True) == (0, 1)
    # Live, the kernel's word (NFQUEUE skb info without NOTVERIFIED): not summed again.
    assert run(live=True, trusted=True) == (1, 0)
