"""Exception policies: each memory cap forced in turn, and the verdicts each policy gives.

Caps and policies are described in appliance/core/exception_policy.py. Every test runs
the whole Engine on raw IP packets, in "ips" (inline) mode unless it says otherwise.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from appliance.config import config_from_dict
from appliance.core.commands import Log, Verdict, VerdictKind
from appliance.core.defrag import FRAG_OVERHEAD, TRACKER_OVERHEAD, DefragConfig
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import LINKTYPE_RAW, PacketIn, Shutdown
from appliance.core.exception_policy import ExceptionPolicies
from appliance.core.flows import FLOW_COST_BYTES, FlowConfig
from appliance.core.stream import SESSION_COST_BYTES, StreamConfig
from appliance.errors import ConfigError
from appliance.rules.loader import detection_from_text

SRV = "198.51.100.20"


class Run:
    """An engine and a packet counter; `send` returns (verdict kind, EVE records)."""

    def __init__(self, cfg: EngineConfig, rules: str = "") -> None:
        det = None
        if rules:
            loaded = detection_from_text(rules.splitlines())
            assert not loaded.parse_failures and not loaded.program.failures
            det = loaded.engine
        self.engine = Engine(cfg, det)
        self.n = 0
        self.ts = 1000.0

    def send(self, pkt: Any) -> tuple[VerdictKind, list[dict[str, Any]]]:
        self.n += 1
        self.ts += 0.001
        cmds = self.engine.handle(PacketIn(self.n, self.ts, bytes(pkt), LINKTYPE_RAW))
        verdicts = [c for c in cmds if isinstance(c, Verdict)]
        assert len(verdicts) == 1, cmds  # exactly one verdict, whatever the policy
        return verdicts[0].kind, [c.record for c in cmds if isinstance(c, Log)]

    def handshake(self, cli: str, sport: int) -> None:
        self.send(IP(src=cli, dst=SRV) / TCP(sport=sport, dport=80, flags="S", seq=100))
        self.send(IP(src=SRV, dst=cli) / TCP(sport=80, dport=sport, flags="SA", seq=500,
                                             ack=101))
        self.send(IP(src=cli, dst=SRV) / TCP(sport=sport, dport=80, flags="A", seq=101,
                                             ack=501))

    def data(self, cli: str, sport: int, payload: bytes, off: int = 0) -> Any:
        return IP(src=cli, dst=SRV) / TCP(sport=sport, dport=80, flags="PA", seq=101 + off,
                                          ack=501) / Raw(payload)

    def uses(self, cap: str) -> dict[str, int]:
        got: dict[str, int] = self.engine.exception_policy_stats()[cap]["uses"]
        return got

    def drop_reasons(self) -> dict[str, int]:
        rec = self.engine.stats_record(self.ts)
        got: dict[str, int] = rec["stats"]["ips"]["drop_reason"]
        return got


def _cfg(mode: str = "ips", **policies: str) -> EngineConfig:
    return EngineConfig(mode=mode, heuristics=None,
                        exception_policy=ExceptionPolicies(**policies))


def _exception_anomalies(recs: list[dict[str, Any]]) -> list[str]:
    return [r["anomaly"]["event"] for r in recs if r.get("event_type") == "anomaly"
            and r["anomaly"]["type"] == "exception_policy"]


# -- flow memcap ----------------------------------------------------------------------------

def _flow_full(policy: str, mode: str = "ips") -> Run:
    """Two established flows fill a two-flow table."""
    cfg = replace(_cfg(mode, flow_memcap=policy), flow=FlowConfig(memcap=2 * FLOW_COST_BYTES))
    r = Run(cfg)
    r.handshake("10.0.0.1", 1001)
    r.handshake("10.0.0.2", 1002)
    assert len(r.engine.flows) == 2
    return r


@pytest.mark.parametrize(("policy", "want"), [
    ("drop-packet", VerdictKind.DROP), ("drop-flow", VerdictKind.DROP),
    ("reject", VerdictKind.REJECT), ("pass-packet", VerdictKind.ACCEPT),
    ("pass-flow", VerdictKind.ACCEPT), ("bypass", VerdictKind.BYPASS),
])
def test_flow_memcap_policy_decides_a_newcomer_and_keeps_established_flows(
        policy: str, want: VerdictKind) -> None:
    r = _flow_full(policy)
    kind, _ = r.send(IP(src="10.0.0.3", dst=SRV) / TCP(sport=1003, dport=80, flags="S"))
    assert kind is want
    # Nothing was evicted: the two established connections are still tracked.
    assert len(r.engine.flows) == 2 and r.engine.flows.stats.evicted == 0
    assert r.uses("flow_memcap") == {policy: 1}
    blocked = want in (VerdictKind.DROP, VerdictKind.REJECT)
    assert r.drop_reasons()["flow_memcap"] == (1 if blocked else 0)
    # An established flow's next packet is unaffected.
    kind, _ = r.send(r.data("10.0.0.1", 1001, b"hello"))
    assert kind is VerdictKind.ACCEPT


def test_flow_memcap_ignore_evicts_the_least_recent_flow_instead() -> None:
    r = _flow_full("ignore")
    kind, _ = r.send(IP(src="10.0.0.3", dst=SRV) / TCP(sport=1003, dport=80, flags="S"))
    assert kind is VerdictKind.ACCEPT
    assert r.engine.flows.stats.evicted == 1
    assert r.uses("flow_memcap") == {}  # no packet was refused a flow


def test_flow_memcap_reuses_half_open_flows_before_refusing() -> None:
    """A SYN flood's half-open flows are reused for newcomers: no policy use."""
    cfg = replace(_cfg(flow_memcap="drop-packet"), flow=FlowConfig(memcap=3 * FLOW_COST_BYTES))
    r = Run(cfg)
    r.handshake("10.0.0.1", 1001)
    for i in range(5):
        kind, _ = r.send(IP(src=f"10.1.0.{i}", dst=SRV) / TCP(sport=2000, dport=80,
                                                             flags="S"))
        assert kind is VerdictKind.ACCEPT
    assert r.engine.flows.stats.evicted == 3 and r.uses("flow_memcap") == {}
    assert r.engine.flows.emergency


def test_ids_mode_turns_drop_policies_into_ignore() -> None:
    r = _flow_full("drop-packet", mode="ids")
    assert r.engine.exc["flow_memcap"] == "ignore"
    kind, _ = r.send(IP(src="10.0.0.3", dst=SRV) / TCP(sport=1003, dport=80, flags="S"))
    assert kind is VerdictKind.ACCEPT and r.engine.flows.stats.evicted == 1


# -- stream (session) memcap ----------------------------------------------------------------

def _stream_full(policy: str, rules: str = "") -> Run:
    stream = StreamConfig(memcap=SESSION_COST_BYTES)  # one session
    cfg = replace(_cfg(stream_memcap=policy), flow=FlowConfig(stream=stream))
    r = Run(cfg, rules)
    r.handshake("10.0.0.1", 1001)
    return r


@pytest.mark.parametrize(("policy", "first", "later"), [
    ("drop-packet", VerdictKind.DROP, VerdictKind.ACCEPT),
    ("drop-flow", VerdictKind.DROP, VerdictKind.DROP),
    ("reject", VerdictKind.REJECT, VerdictKind.DROP),
    ("pass-flow", VerdictKind.ACCEPT, VerdictKind.ACCEPT),
    ("bypass", VerdictKind.BYPASS, VerdictKind.BYPASS),
    ("ignore", VerdictKind.ACCEPT, VerdictKind.ACCEPT),
])
def test_stream_memcap_policy(policy: str, first: VerdictKind, later: VerdictKind) -> None:
    rule = 'alert tcp any any -> any 80 (msg:"evil"; content:"evil"; sid:1;)'
    r = _stream_full(policy, rule)
    syn = IP(src="10.0.0.2", dst=SRV) / TCP(sport=1002, dport=80, flags="S", seq=100)
    kind, recs = r.send(syn)
    assert kind is first
    assert r.uses("stream_memcap") == {policy: 1}
    assert _exception_anomalies(recs) == [f"stream_memcap.{policy}"]
    # The flow's later packets: dropped for drop-flow/reject, uninspected for pass-flow
    # and bypass (no alert), inspected packet by packet for drop-packet and ignore.
    kind, recs = r.send(r.data("10.0.0.2", 1002, b"evil"))
    assert kind is later
    alerted = any(x.get("event_type") == "alert" for x in recs)
    assert alerted == (policy in ("drop-packet", "ignore"))


def test_stream_memcap_policy_does_not_touch_tracked_flows() -> None:
    r = _stream_full("drop-flow")
    r.send(IP(src="10.0.0.2", dst=SRV) / TCP(sport=1002, dport=80, flags="S"))
    kind, _ = r.send(r.data("10.0.0.1", 1001, b"GET / HTTP/1.0\r\n\r\n"))
    assert kind is VerdictKind.ACCEPT


# -- reassembly memcap ----------------------------------------------------------------------

def _reassembly_full(policy: str) -> Run:
    stream = StreamConfig(reassembly_memcap=2000)
    cfg = replace(_cfg(reassembly_memcap=policy), flow=FlowConfig(stream=stream))
    r = Run(cfg)
    r.handshake("10.0.0.1", 1001)
    return r


@pytest.mark.parametrize(("policy", "want", "action"), [
    ("drop-packet", VerdictKind.DROP, None),
    ("drop-flow", VerdictKind.DROP, "drop"),
    ("reject", VerdictKind.REJECT, "drop"),
    ("pass-packet", VerdictKind.ACCEPT, None),
    ("pass-flow", VerdictKind.ACCEPT, "accept"),
    ("bypass", VerdictKind.BYPASS, "bypass"),
    ("ignore", VerdictKind.ACCEPT, None),
])
def test_reassembly_memcap_policy(policy: str, want: VerdictKind, action: str | None
                                  ) -> None:
    r = _reassembly_full(policy)
    # Out of order (a hole at 0): held. The second one no longer fits the memcap.
    kind, _ = r.send(r.data("10.0.0.1", 1001, b"A" * 1000, off=10))
    assert kind is VerdictKind.ACCEPT
    kind, recs = r.send(r.data("10.0.0.1", 1001, b"B" * 1400, off=1010))
    assert kind is want
    assert r.uses("reassembly_memcap") == {policy: 1}
    flow = next(iter(r.engine.flows))
    assert flow.action == action
    blocked = want in (VerdictKind.DROP, VerdictKind.REJECT)
    assert r.drop_reasons()["stream_reassembly"] == (1 if blocked else 0)
    assert _exception_anomalies(recs) == [f"reassembly_memcap.{policy}"]


def test_reassembly_memcap_is_a_drop_by_default_inline() -> None:
    r = _reassembly_full("auto")
    assert r.engine.exc["reassembly_memcap"] == "drop-packet"
    r.send(r.data("10.0.0.1", 1001, b"A" * 1000, off=10))
    kind, _ = r.send(r.data("10.0.0.1", 1001, b"B" * 1400, off=1010))
    assert kind is VerdictKind.DROP


# -- defrag memcap --------------------------------------------------------------------------

@pytest.mark.parametrize(("policy", "want"), [
    ("drop-packet", VerdictKind.DROP), ("drop-flow", VerdictKind.DROP),
    ("reject", VerdictKind.REJECT), ("pass-packet", VerdictKind.ACCEPT),
    ("bypass", VerdictKind.BYPASS), ("ignore", VerdictKind.ACCEPT),
])
def test_defrag_memcap_policy(policy: str, want: VerdictKind) -> None:
    # Room for one small fragment's tracker and fragment overhead, not for 2,000 bytes.
    room = TRACKER_OVERHEAD + FRAG_OVERHEAD + 300
    cfg = replace(_cfg(defrag_memcap=policy), defrag=DefragConfig(memcap=room))
    r = Run(cfg)
    big = IP(src="10.0.0.1", dst=SRV, id=7, flags="MF") / Raw(b"x" * 2000)
    kind, _ = r.send(big)
    assert kind is want
    assert r.uses("defrag_memcap") == {policy: 1}
    # A fragment that fits is still taken (and accepted while its datagram is open).
    kind, _ = r.send(IP(src="10.0.0.1", dst=SRV, id=8, flags="MF") / Raw(b"y" * 16))
    assert kind is VerdictKind.ACCEPT and len(r.engine.defrag.trackers) == 1
    blocked = want in (VerdictKind.DROP, VerdictKind.REJECT)
    assert r.drop_reasons()["defrag_memcap"] == (1 if blocked else 0)


def test_a_drop_rule_on_a_rebuilt_datagram_drops_the_completing_fragment() -> None:
    """The verdict of the reassembled datagram goes to the fragment completing it."""
    rule = 'drop udp any any -> any any (msg:"evil"; content:"evil"; sid:2;)'
    r = Run(_cfg(), rule)
    from scapy.layers.inet import UDP, fragment

    frags = fragment(IP(src="10.0.0.1", dst=SRV, id=9) / UDP(sport=5, dport=6)
                     / Raw(b"x" * 40 + b"evil" + b"y" * 40), fragsize=24)
    kinds = [r.send(f)[0] for f in frags]
    assert kinds[:-1] == [VerdictKind.ACCEPT] * (len(frags) - 1)
    assert kinds[-1] is VerdictKind.DROP


# -- app-layer memcap -----------------------------------------------------------------------

def _post(body_len: int) -> bytes:
    return (b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % body_len
            + b"z" * body_len)


@pytest.mark.parametrize(("policy", "want", "later"), [
    ("auto", VerdictKind.DROP, VerdictKind.DROP),  # inline default: drop-flow
    ("drop-packet", VerdictKind.DROP, VerdictKind.ACCEPT),
    ("pass-flow", VerdictKind.ACCEPT, VerdictKind.ACCEPT),
    ("bypass", VerdictKind.BYPASS, VerdictKind.BYPASS),
    ("ignore", VerdictKind.ACCEPT, VerdictKind.ACCEPT),
])
def test_applayer_memcap_frees_the_parser_and_applies_the_policy(
        policy: str, want: VerdictKind, later: VerdictKind) -> None:
    cfg = replace(_cfg(applayer_memcap=policy), app_layer_memcap=4000)
    r = Run(cfg)
    r.handshake("10.0.0.1", 1001)
    r.handshake("10.0.0.2", 1002)
    small = _post(100)
    kind, _ = r.send(r.data("10.0.0.2", 1002, small))
    assert kind is VerdictKind.ACCEPT
    kind, _ = r.send(r.data("10.0.0.1", 1001, _post(6000)))
    assert kind is want
    assert r.uses("applayer_memcap") == {"drop-flow" if policy == "auto" else policy: 1}
    flows = {f.sp: f for f in r.engine.flows}
    assert flows[1001].app.parser is None  # the flow that grew lost its parser
    assert flows[1002].app.parser is not None  # the other one did not
    assert r.engine.app_memuse <= 4000
    kind, _ = r.send(r.data("10.0.0.1", 1001, b"more", off=len(_post(6000))))
    assert kind is later


def test_app_memory_is_given_back_when_flows_end() -> None:
    r = Run(_cfg())
    r.handshake("10.0.0.1", 1001)
    r.send(r.data("10.0.0.1", 1001, _post(3000)))
    assert r.engine.app_memuse >= 3000
    r.engine.handle(Shutdown())
    assert r.engine.app_memuse == 0


# -- stats, records, config -----------------------------------------------------------------

def test_exception_anomaly_and_stats_records_are_schema_valid(eve_validator: Any) -> None:
    r = _reassembly_full("drop-flow")
    r.send(r.data("10.0.0.1", 1001, b"A" * 1000, off=10))
    _, recs = r.send(r.data("10.0.0.1", 1001, b"B" * 1400, off=1010))
    # Logged once per flow: the next use on the same flow adds no record.
    _, again = r.send(r.data("10.0.0.1", 1001, b"C" * 1400, off=3000))
    assert _exception_anomalies(recs) and not _exception_anomalies(again)
    stats = r.engine.stats_record(r.ts)
    assert stats["stats"]["ips"]["drop_reason"]["stream_reassembly"] == 2
    for rec in [*recs, stats]:
        assert not list(eve_validator.iter_errors(rec))


def _force(cap: str, policy: str) -> Run:
    """An engine whose `cap` was hit once, answered by `policy`."""
    if cap == "flow_memcap":
        r = _flow_full(policy)
        r.send(IP(src="10.0.0.3", dst=SRV) / TCP(sport=1003, dport=80, flags="S"))
    elif cap == "stream_memcap":
        r = _stream_full(policy)
        r.send(IP(src="10.0.0.2", dst=SRV) / TCP(sport=1002, dport=80, flags="S"))
    elif cap == "reassembly_memcap":
        r = _reassembly_full(policy)
        r.send(r.data("10.0.0.1", 1001, b"A" * 1000, off=10))
        r.send(r.data("10.0.0.1", 1001, b"B" * 1400, off=1010))
    elif cap == "defrag_memcap":
        room = TRACKER_OVERHEAD + FRAG_OVERHEAD + 300
        r = Run(replace(_cfg(defrag_memcap=policy), defrag=DefragConfig(memcap=room)))
        r.send(IP(src="10.0.0.1", dst=SRV, id=7, flags="MF") / Raw(b"x" * 2000))
    else:
        r = Run(replace(_cfg(applayer_memcap=policy), app_layer_memcap=4000))
        r.handshake("10.0.0.1", 1001)
        r.send(r.data("10.0.0.1", 1001, _post(6000)))
    assert r.uses(cap) == {policy: 1}
    return r


# Where Suricata 7's stats count one use of each cap's exception policy.
EVE_COUNTER = {
    "flow_memcap": ("flow", "get_used_failed"),
    "stream_memcap": ("tcp", "ssn_memcap_drop"),
    "reassembly_memcap": ("tcp", "segment_memcap_drop"),
    "defrag_memcap": ("defrag", "max_frag_hits"),
    "applayer_memcap": ("app_layer", "error", "http", "alloc"),
}


# (The flow memcap's "ignore" evicts a flow instead: no use to count.)
@pytest.mark.parametrize(("cap", "policy"), [
    (c, p) for c in sorted(EVE_COUNTER) for p in ("pass-packet", "bypass", "ignore",
                                                  "drop-packet")
    if (c, p) != ("flow_memcap", "ignore")])
def test_eve_stats_count_every_use_whatever_the_policy(
        cap: str, policy: str, eve_validator: Any) -> None:
    """A pass, bypass or ignore use is counted in EVE stats too, not only drops."""
    r = _force(cap, policy)
    rec = r.engine.stats_record(r.ts)
    assert not list(eve_validator.iter_errors(rec))
    node: Any = rec["stats"]
    for k in EVE_COUNTER[cap]:
        node = node[k]
    assert node == 1
    # Only the drop-type policies add to ips.drop_reason.
    dropped = sum(rec["stats"]["ips"]["drop_reason"].values())
    assert dropped == (1 if policy == "drop-packet" else 0)
    # The other caps' counters stayed at zero.
    for other, path in EVE_COUNTER.items():
        if other != cap and path[0] != "app_layer":
            node = rec["stats"]
            for k in path:
                node = node[k]
            assert node == 0, other


def test_config_keys_set_each_policy_and_reject_unknown_values() -> None:
    cfg = config_from_dict({
        "exception-policy": "pass-flow",
        "flow": {"memcap-policy": "drop-packet"},
        "stream": {"reassembly-memcap-policy": "bypass"},
        "defrag": {"memcap": "1mb", "memcap-policy": "reject"},
        "app-layer": {"memcap": "8mb"},
    })
    eng = replace(cfg.engine, mode="ips")
    got = eng.exception_policy.resolved("ips")
    assert got == {"flow_memcap": "drop-packet", "stream_memcap": "pass-flow",
                   "reassembly_memcap": "bypass", "defrag_memcap": "reject",
                   "applayer_memcap": "pass-flow"}
    assert eng.defrag.memcap == 1024 * 1024 and eng.app_layer_memcap == 8 * 1024 * 1024
    with pytest.raises(ConfigError, match=r"stream.memcap-policy.*'drop-sometimes'"):
        config_from_dict({"stream": {"memcap-policy": "drop-sometimes"}})
    with pytest.raises(ConfigError, match="unknown key 'memcap-polcy'"):
        config_from_dict({"defrag": {"memcap-polcy": "ignore"}})
