"""Flow table: keys, direction, timeouts by packet time, TCP reuse, memcap/emergency."""

from __future__ import annotations

import tracemalloc

from scapy.layers.inet import ICMP, IP, TCP, UDP, Ether, IPerror, UDPerror
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

from appliance.core.commands import Log, Verdict
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import LINKTYPE_ETHERNET, PacketIn, Shutdown, Tick
from appliance.core.flows import FLOW_COST_BYTES, FlowConfig, Timeouts

A, B = "10.1.0.1", "10.1.0.2"


class Feeder:
    def __init__(self, **flow_kw: object) -> None:
        self.engine = Engine(EngineConfig(flow=FlowConfig(**flow_kw)))  # type: ignore[arg-type]
        self.n = 0
        self.logs: list[dict[str, object]] = []

    def send(self, pkt: object, ts: float) -> list[Verdict]:
        self.n += 1
        cmds = self.engine.handle(PacketIn(self.n, ts, bytes(pkt), LINKTYPE_ETHERNET))  # type: ignore[call-overload]
        self.logs += [c.record for c in cmds if isinstance(c, Log)]
        return [c for c in cmds if isinstance(c, Verdict)]

    def finish(self, ts: float | None = None) -> list[dict[str, object]]:
        self.logs += [c.record for c in self.engine.handle(Shutdown(ts)) if isinstance(c, Log)]
        return [r for r in self.logs if r["event_type"] == "flow"]


def eth(l3: object) -> object:
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l3  # type: ignore[operator]


def test_both_directions_share_a_flow_and_counts_split() -> None:
    f = Feeder()
    f.send(eth(IP(src=A, dst=B) / UDP(sport=5000, dport=53) / b"q"), 100.0)
    f.send(eth(IP(src=B, dst=A) / UDP(sport=53, dport=5000) / b"answer"), 100.5)
    f.send(eth(IP(src=A, dst=B) / UDP(sport=5000, dport=53) / b"q2"), 101.0)
    (rec,) = f.finish()
    assert (rec["src_ip"], rec["src_port"], rec["dest_ip"], rec["dest_port"]) == (A, 5000, B, 53)
    fl = rec["flow"]
    assert isinstance(fl, dict)
    assert (fl["pkts_toserver"], fl["pkts_toclient"]) == (2, 1)
    assert fl["bytes_toserver"] == 2 * 14 + 20 + 8 + 1 + 20 + 8 + 2
    assert fl["state"] == "established"
    assert fl["reason"] == "shutdown"
    assert fl["start"] == "1970-01-01T00:01:40.000000+0000"
    assert fl["end"] == "1970-01-01T00:01:41.000000+0000"
    assert fl["age"] == 1


def test_every_packet_gets_exactly_one_verdict() -> None:
    f = Feeder()
    for i in range(50):
        assert len(f.send(eth(IP(src=A, dst=B) / UDP(sport=1000 + i, dport=9)), 1.0 + i)) == 1
    # Garbage too.
    v = f.engine.handle(PacketIn(999, 2.0, b"\x00\x01", LINKTYPE_ETHERNET))
    assert [c.packet_id for c in v if isinstance(c, Verdict)] == [999]


def test_udp_timeout_splits_flow_by_packet_time() -> None:
    f = Feeder()
    f.send(eth(IP(src=A, dst=B) / UDP(sport=5000, dport=53)), 0.0)
    f.send(eth(IP(src=B, dst=A) / UDP(sport=53, dport=5000)), 1.0)
    # Established UDP times out after 300 s (Suricata's default).
    f.send(eth(IP(src=A, dst=B) / UDP(sport=5000, dport=53)), 250.0)
    f.send(eth(IP(src=A, dst=B) / UDP(sport=5000, dport=53)), 551.0)
    flows = f.finish()
    assert [r["flow"]["pkts_toserver"] for r in flows] == [2, 1]  # type: ignore[index]
    assert [r["flow"]["reason"] for r in flows] == ["timeout", "shutdown"]  # type: ignore[index]


def test_tick_expires_idle_flows_without_packets() -> None:
    f = Feeder()
    f.send(eth(IP(src=A, dst=B) / UDP(sport=5000, dport=53)), 0.0)
    recs = [c.record for c in f.engine.handle(Tick(29.0)) if isinstance(c, Log)]
    assert recs == []
    recs = [c.record for c in f.engine.handle(Tick(31.0)) if isinstance(c, Log)]
    assert [r["flow"]["state"] for r in recs] == ["new"]
    assert len(f.engine.flows) == 0


def tcp(src: str, dst: str, sp: int, dp: int, flags: str, seq: int = 0, ack: int = 0) -> object:
    return eth(IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags=flags, seq=seq, ack=ack))


def test_tcp_states_and_session_reuse() -> None:
    f = Feeder()
    t = 10.0
    # Real sequence numbers: the tracker checks that the SYN/ACK acknowledges the SYN.
    for pkt in (tcp(A, B, 40000, 80, "S", 0, 0), tcp(B, A, 80, 40000, "SA", 0, 1),
                tcp(A, B, 40000, 80, "A", 1, 1), tcp(A, B, 40000, 80, "FA", 1, 1),
                tcp(B, A, 80, 40000, "FA", 1, 2), tcp(A, B, 40000, 80, "A", 2, 2)):
        f.send(pkt, t)
        t += 0.1
    flow = next(iter(f.engine.flows))
    # Suricata closes the session on the last ACK of the close sequence.
    assert flow.tcp is not None and flow.tcp.state.name == "CLOSED"
    # A new SYN on the same ports: a new connection, hence a new flow.
    f.send(tcp(A, B, 40000, 80, "S", seq=999), t + 1)
    flows = f.finish()
    assert len(flows) == 2
    first = flows[0]
    assert first["flow"]["state"] == "closed"  # type: ignore[index]
    assert first["tcp"]["tcp_flags"] == "13"  # type: ignore[index]  # SYN|FIN|ACK
    assert first["tcp"]["state"] == "closed"  # type: ignore[index]
    assert flows[1]["flow"]["pkts_toserver"] == 1  # type: ignore[index]
    assert f.engine.flows.stats.reused == 1


def test_midstream_flow_is_not_tracked_by_default_like_suricata() -> None:
    f = Feeder()
    f.send(tcp(A, B, 40001, 80, "PA"), 1.0)
    f.send(tcp(B, A, 80, 40001, "A"), 1.1)
    (rec,) = f.finish()
    assert rec["flow"]["state"] == "new"  # type: ignore[index]
    assert rec["tcp"] == {"tcp_flags": "00", "tcp_flags_ts": "00", "tcp_flags_tc": "00"}


def test_midstream_pickup_when_enabled() -> None:
    f = Feeder(midstream=True)
    f.send(tcp(A, B, 40001, 80, "PA"), 1.0)
    (rec,) = f.finish()
    assert rec["flow"]["state"] == "established"  # type: ignore[index]
    assert rec["tcp"]["state"] == "established"  # type: ignore[index]


def test_icmp_echo_pair_is_one_flow_and_error_joins_udp_flow() -> None:
    f = Feeder()
    f.send(eth(IP(src=A, dst=B) / ICMP(type=8, id=7, seq=1)), 1.0)
    f.send(eth(IP(src=B, dst=A) / ICMP(type=0, id=7, seq=1)), 1.1)
    f.send(eth(IP(src=A, dst=B) / UDP(sport=5353, dport=7777) / b"x"), 2.0)
    f.send(eth(IP(src=B, dst=A) / ICMP(type=3, code=3) / IPerror(src=A, dst=B)
               / UDPerror(sport=5353, dport=7777) / b"x"), 2.1)
    flows = f.finish()
    assert len(flows) == 2
    icmp = next(r for r in flows if r["proto"] == "ICMP")
    assert (icmp["icmp_type"], icmp["response_icmp_type"]) == (8, 0)
    udp = next(r for r in flows if r["proto"] == "UDP")
    assert udp["flow"]["pkts_toclient"] == 1  # type: ignore[index]  # the port unreachable


def test_icmpv6_echo_and_full_ipv6_addresses() -> None:
    f = Feeder()
    f.send(eth(IPv6(src="2001:db8::1", dst="2001:db8::2") / ICMPv6EchoRequest(id=1)), 1.0)
    f.send(eth(IPv6(src="2001:db8::2", dst="2001:db8::1") / ICMPv6EchoReply(id=1)), 1.2)
    (rec,) = f.finish()
    assert rec["proto"] == "IPv6-ICMP"
    assert rec["src_ip"] == "2001:0db8:0000:0000:0000:0000:0000:0001"
    assert (rec["icmp_type"], rec["response_icmp_type"]) == (128, 129)


def test_vlan_separates_flows() -> None:
    from scapy.layers.l2 import Dot1Q

    f = Feeder()
    base = IP(src=A, dst=B) / UDP(sport=1, dport=2)
    f.send(Ether() / Dot1Q(vlan=10) / base, 1.0)
    f.send(Ether() / Dot1Q(vlan=20) / base, 1.0)
    flows = f.finish()
    assert sorted(r["vlan"] for r in flows) == [[10], [20]]  # type: ignore[type-var]


def test_memcap_enters_emergency_evicts_and_recovers() -> None:
    # Room for 10 flows; timeouts long so only emergency values or eviction can free.
    cap = 10 * FLOW_COST_BYTES
    f = Feeder(memcap=cap, emergency_recovery=30,
               timeouts={k: (Timeouts(1000, 1000, 1000), Timeouts(5, 5, 5)) for k in range(4)})
    for i in range(10):
        f.send(eth(IP(src=A, dst=B) / UDP(sport=2000 + i, dport=9)), 100.0)
    table = f.engine.flows
    assert len(table) == 10 and not table.emergency
    # The 11th flow at once: emergency timeouts free nothing yet, so one is evicted.
    f.send(eth(IP(src=A, dst=B) / UDP(sport=3000, dport=9)), 100.0)
    assert table.emergency and table.stats.evicted == 1 and len(table) == 10
    forced = [r for r in f.logs if r["event_type"] == "flow"]
    assert [r["flow"]["reason"] for r in forced] == ["forced"]  # type: ignore[index]
    # Later, emergency timeouts (5 s) expire the idle flows; below 70% we leave emergency.
    f.send(eth(IP(src=A, dst=B) / UDP(sport=4000, dport=9)), 110.0)
    assert not table.emergency
    assert table.stats.emergency_entered == 1 and table.stats.emergency_left == 1
    assert len(table) == 1


def test_flow_cost_estimate_is_honest() -> None:
    """FLOW_COST_BYTES (used for the memcap) within 2x of what flows really take."""
    engine = Engine()
    pkts = [bytes(eth(IP(src=A, dst=f"10.2.{i // 250}.{i % 250}") / UDP(sport=1, dport=2)))
            for i in range(5000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, d in enumerate(pkts):
        engine.handle(PacketIn(i, 1.0, d, LINKTYPE_ETHERNET))
    used = (tracemalloc.get_traced_memory()[0] - before) / len(engine.flows)
    tracemalloc.stop()
    print(f"measured {used:.0f} bytes per flow, estimate {FLOW_COST_BYTES}")
    assert FLOW_COST_BYTES / 2 <= used <= FLOW_COST_BYTES * 2
