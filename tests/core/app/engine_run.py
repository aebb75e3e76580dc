"""Run scripted TCP or UDP conversations through the whole engine (tests of the app-layer
parsers: mqtt, sip, krb5, snmp, nfs, ssh, http2, dcerpc)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def engine_run(rules: list[str], msgs: list[tuple[bool, bytes]], dport: int,
               udp: bool = False, *, segment: int = 0, config: Any = None,
               commands: list[Any] | None = None, close: bool = False
               ) -> list[dict[str, Any]]:
    """``msgs``: (to_server, payload) in order, one packet (TCP segment or datagram)
    each; with ``segment`` a TCP payload longer than that goes in several segments.
    ``config``: the EngineConfig (default EngineConfig()); ``commands`` (a list) gets
    every command the packets returned; ``close``: the client then the server send FIN
    and the client ACKs (TCP). Returns every EVE record the engine logged, flow end
    included."""
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
        if close:
            pkts += [Ether() / IP(src=a, dst=b) / TCP(sport=sport, dport=dport, flags="FA",
                                                      seq=cseq, ack=sseq),
                     Ether() / IP(src=b, dst=a) / TCP(sport=dport, dport=sport, flags="FA",
                                                      seq=sseq, ack=cseq + 1),
                     Ether() / IP(src=a, dst=b) / TCP(sport=sport, dport=dport, flags="A",
                                                      seq=cseq + 1, ack=sseq + 1)]
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


class ScanSession:
    """TCP connections through an engine (raw IP packets, one handled at a time), its
    file scans answered with ``verdict`` ("clean" or "malicious", then with the
    signature ``sig``); ``logs`` gathers the EVE records. Subclasses set ``window`` (the
    TCP window of every segment) and ``sig``."""

    window = 8192  # scapy's default
    sig = "yara:test:Bad"

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.n = 0
        self.asked: list[Any] = []  # the ScanRequests
        self.logs: list[dict[str, Any]] = []
        self.verdict = "clean"
        self.seq: dict[tuple[str, int, str, int], int] = {}

    def _send(self, pkt: Any) -> Any:
        """One packet through the engine; its verdict kind (ACCEPT when it has none)."""
        from appliance.core.commands import Log, Verdict, VerdictKind
        from appliance.core.events import LINKTYPE_RAW, PacketIn
        from appliance.filescan import resolve

        self.n += 1

        def scan(r: Any) -> tuple[str, tuple[str, ...], str]:
            self.asked.append(r)
            sigs = (self.sig,) if self.verdict == "malicious" else ()
            return self.verdict, sigs, "scan"

        cmds = self.engine.handle(PacketIn(self.n, 100.0 + self.n * 0.001, bytes(pkt),
                                           LINKTYPE_RAW))
        kind = VerdictKind.ACCEPT
        for x in resolve(self.engine, cmds, scan):
            if isinstance(x, Verdict):
                kind = x.kind
            elif isinstance(x, Log):
                self.logs.append(x.record)
        return kind

    def connect(self, c: tuple[str, int], s: tuple[str, int]) -> None:
        """The three-way handshake from client ``c`` to server ``s`` (ISNs 0)."""
        from scapy.layers.inet import IP, TCP

        w = self.window
        self._send(IP(src=c[0], dst=s[0]) / TCP(sport=c[1], dport=s[1], flags="S", seq=0,
                                                window=w))
        self._send(IP(src=s[0], dst=c[0]) / TCP(sport=s[1], dport=c[1], flags="SA", seq=0,
                                                ack=1, window=w))
        self._send(IP(src=c[0], dst=s[0]) / TCP(sport=c[1], dport=s[1], flags="A", seq=1,
                                                ack=1, window=w))
        self.seq[(c[0], c[1], s[0], s[1])] = 1
        self.seq[(s[0], s[1], c[0], c[1])] = 1

    def send(self, src: tuple[str, int], dst: tuple[str, int], data: bytes,
             seg: int = 1400) -> list[Any]:
        """``data`` from ``src`` to ``dst`` in segments of ``seg`` bytes; their verdicts."""
        from scapy.layers.inet import IP, TCP
        from scapy.packet import Raw

        out = []
        for off in range(0, len(data), seg):
            piece = data[off:off + seg]
            k = (src[0], src[1], dst[0], dst[1])
            seq, ack = self.seq[k], self.seq[(dst[0], dst[1], src[0], src[1])]
            out.append(self._send(IP(src=src[0], dst=dst[0]) / TCP(
                sport=src[1], dport=dst[1], flags="PA", seq=seq, ack=ack,
                window=self.window) / Raw(piece)))
            self.seq[k] = seq + len(piece)
        return out

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.logs if r.get("event_type") == kind]
