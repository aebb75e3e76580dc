"""Run scripted TCP or UDP conversations through the whole engine (tests of the app-layer
parsers: mqtt, sip, krb5, snmp, nfs, ssh, http2, dcerpc)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def engine_run(rules: list[str], msgs: list[tuple[bool, bytes]], dport: int,
               udp: bool = False, *, segment: int = 0, config: Any = None,
               commands: list[Any] | None = None) -> list[dict[str, Any]]:
    """``msgs``: (to_server, payload) in order, one packet (TCP segment or datagram)
    each; with ``segment`` a TCP payload longer than that goes in several segments.
    ``config``: the EngineConfig (default EngineConfig()); ``commands`` (a list) gets
    every command the packets returned. Returns every EVE record the engine logged,
    flow end included."""
    from scapy.layers.inet import IP, TCP, UDP, Ether

    from appliance.core.commands import Log
    from appliance.core.engine import Engine, EngineConfig
    from appliance.core.events import LINKTYPE_ETHERNET, PacketIn, Shutdown
    from appliance.rules.loader import detection_from_text

    loaded = detection_from_text(rules)
    assert not loaded.failure_records(), loaded.failure_records()
    eng = Engine(config or EngineConfig(), loaded.engine)
    a, b, sport = "10.0.0.1", "10.0.0.2", 40000
    pkts: list[Any] = []
    if udp:
        for ts, d in msgs:
            ip = IP(src=a, dst=b) if ts else IP(src=b, dst=a)
            u = UDP(sport=sport, dport=dport) if ts else UDP(sport=dport, dport=sport)
            pkts.append(Ether() / ip / u / d)
    else:
        cseq, sseq = 1000, 5000
        pkts += [Ether() / IP(src=a, dst=b) / TCP(sport=sport, dport=dport, flags="S",
                                                  seq=cseq),
                 Ether() / IP(src=b, dst=a) / TCP(sport=dport, dport=sport, flags="SA",
                                                  seq=sseq, ack=cseq + 1),
                 Ether() / IP(src=a, dst=b) / TCP(sport=sport, dport=dport, flags="A",
                                                  seq=cseq + 1, ack=sseq + 1)]
        cseq += 1
        sseq += 1
        for ts, d in _segments(msgs, segment):
            if ts:
                pkts.append(Ether() / IP(src=a, dst=b) / TCP(
                    sport=sport, dport=dport, flags="PA", seq=cseq, ack=sseq) / d)
                cseq += len(d)
                pkts.append(Ether() / IP(src=b, dst=a) / TCP(
                    sport=dport, dport=sport, flags="A", seq=sseq, ack=cseq))
            else:
                pkts.append(Ether() / IP(src=b, dst=a) / TCP(
                    sport=dport, dport=sport, flags="PA", seq=sseq, ack=cseq) / d)
                sseq += len(d)
                pkts.append(Ether() / IP(src=a, dst=b) / TCP(
                    sport=sport, dport=dport, flags="A", seq=cseq, ack=sseq))
    recs: list[dict[str, Any]] = []
    for i, pk in enumerate(pkts):
        cmds = eng.handle(PacketIn(i + 1, 1000.0 + i / 100, bytes(pk), LINKTYPE_ETHERNET))
        recs += [c.record for c in cmds if isinstance(c, Log)]
        if commands is not None:
            commands += cmds
    for c in eng.handle(Shutdown(2000.0)):
        if isinstance(c, Log):
            recs.append(c.record)
    return recs


def _segments(msgs: list[tuple[bool, bytes]], size: int) -> Iterator[tuple[bool, bytes]]:
    for ts, m in msgs:
        if not size or len(m) <= size:
            yield ts, m
        else:
            for i in range(0, len(m), size):
                yield ts, m[i:i + size]


def alert_sids(recs: list[dict[str, Any]]) -> list[int]:
    return sorted(r["alert"]["signature_id"] for r in recs if r["event_type"] == "alert")
