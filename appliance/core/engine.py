"""The inspection engine: `Engine.handle(event) -> list[Command]`.

Sans-I/O (DESIGN.md): it never reads a clock, a socket or a file. Time is the packet's
timestamp. Live NFQUEUE and pcap replay feed it the same events, so a replay test proves
the live path. Every PacketIn gets exactly one Verdict, whatever happens inside
(principle 7: a failing stage is counted and the packet is still decided).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from appliance.core import applayer
from appliance.core.app.ftp import Expectations
from appliance.core.app.http import FileBudget
from appliance.core.applayer import AppResult, AppState
from appliance.core.commands import (
    DIRECTION_BYPASS,
    Command,
    Hold,
    Log,
    ScanRequest,
    Verdict,
    VerdictKind,
)
from appliance.core.decode import (
    PROTO_ESP,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    TH_ACK,
    TH_FIN,
    TH_RST,
    TH_SYN,
    Decoder,
    Packet,
    pseudo_tcp_packet,
)
from appliance.core.defrag import APPLIANCE_EVENTS as DEFRAG_EVENTS
from appliance.core.defrag import DefragConfig, Defragmenter
from appliance.core.detect.heuristics import (
    HeuristicHit,
    HeuristicsConfig,
    HeuristicsEngine,
    with_overrides,
)
from appliance.core.detect.signatures import RuleMatch, SignatureEngine, facing, packet_events
from appliance.core.events import (
    LINKTYPE_ETHERNET,
    Event,
    FileScanned,
    PacketIn,
    Shutdown,
    Tick,
)
from appliance.core.exception_policy import CAPS, DROP_REASON, ExceptionPolicies
from appliance.core.flows import Flow, FlowConfig, FlowTable, FlowTableFull
from appliance.core.policy import (
    POLICY_GID,
    POLICY_SID_APP,
    POLICY_SID_EGRESS,
    POLICY_SID_INGRESS,
    Policy,
    heuristic_action,
    on_detection,
)
from appliance.core.policy import explain as _explain
from appliance.core.records import (
    alert_record,
    anomaly_record,
    app_record,
    app_stats_name,
    flow_record,
    heuristic_record,
    stats_record,
)
from appliance.core.stream import (
    EMPTY,
    FLOW_CLOSED,
    FLOW_ESTABLISHED,
    FLOW_NEW,
    StreamUpdate,
    is_stream_starter,
)

# Decoder events that Suricata's stats schema does not name (ours, not Suricata's):
# counted in `decoder.invalid` and the engine's own counters, left out of
# `stats.decoder.event` so the record stays schema-valid.
FLOW_PROTOS: Final = frozenset({PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP,
                                PROTO_ESP})

_SYN_ACK: Final = TH_SYN | TH_ACK
_SYN_ACK_RST: Final = TH_SYN | TH_ACK | TH_RST

# How strict a verdict is, to keep the strictest when several stages decide.
_SEVERITY: Final = {VerdictKind.BYPASS: 0, VerdictKind.ACCEPT: 1, VerdictKind.DROP: 2,
                    VerdictKind.REJECT: 3}
# Per-packet code reads these: a module global is cheaper than an enum class attribute.
_ACCEPT: Final = VerdictKind.ACCEPT
_BYPASS: Final = VerdictKind.BYPASS
# NamedTuple's generated __new__ is a Python function: the C constructor it calls, for
# the one Verdict every packet gets.
_new_tuple: Final = tuple.__new__

# The appliance's own alert for a malicious file (EVE gid/sid; stable).
FILE_GID: Final = 9003
FILE_SID_MALICIOUS: Final = 9003001

NON_SURICATA_EVENTS: Final = frozenset({"decoder.malformed", "decoder.unsupported_linktype",
                                        *DEFRAG_EVENTS})


def _from_flow_timeout(out: list[Command], since: int) -> None:
    """Alerts logged since `out[since]` were judged on a flow's pseudo packet: they say
    so in pkt_src and carry no pcap_cnt (no packet of the input)."""
    for c in out[since:]:
        if isinstance(c, Log) and c.record.get("event_type") == "alert":
            c.record.pop("pcap_cnt", None)
            c.record["pkt_src"] = "stream (flow timeout)"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    flow: FlowConfig = field(default_factory=FlowConfig)
    defrag: DefragConfig = field(default_factory=DefragConfig)
    # Log each decoder anomaly as an EVE anomaly event (Suricata: anomaly.types.decode).
    log_decode_anomalies: bool = True
    # Log TCP stream anomalies (Suricata: anomaly.types.stream).
    log_stream_anomalies: bool = True
    # Application layer: protocol detection and parsers (HTTP, DNS, TLS); their parser
    # events as anomalies (Suricata: anomaly.types.applayer); http/dns/tls/fileinfo logs.
    app_layer: bool = True
    log_app_anomalies: bool = True
    log_app_records: bool = True
    # Files seen in traffic are decided on (scan cache, scanners): the runtime must have a
    # scanner. Downloads up to this size are handed over whole; larger ones by hash only.
    scan_files: bool = False
    scan_max_bytes: int = 32 * 1024 * 1024
    # Download content kept for the scanners, all flows together; a download that does
    # not fit is decided by its hash alone (the cache knows it, or "unknown").
    file_memcap: int = 128 * 1024 * 1024
    # Behaviour detectors (core/detect/heuristics.py); None: off.
    heuristics: HeuristicsConfig | None = field(default_factory=HeuristicsConfig)
    # Where packets come from, for EVE's pkt_src ("wire/pcap" in replay and live alike,
    # as Suricata writes for captured packets).
    pkt_src: str = "wire/pcap"
    # EVE pcap_cnt (the record number) makes sense in replay only; live packets have none.
    log_pcap_cnt: bool = True
    # Packets come from a live capture (NFQUEUE), not a file. With checksum validation
    # "auto", a capture file's TCP checksums are not validated, as Suricata 7.0.4 on pcap
    # files with its default configuration: tcp.invalid_checksum is 0 on every oracle
    # capture (ndpi-mixed holds 1,608 wrong TCP checksums) and the suricata-verify
    # captures with zeroed checksums pass. Live, "auto" takes the kernel's word
    # (PacketIn.csum_trusted: NFQUEUE skb info without NOTVERIFIED) and Linux partial
    # sums as offloaded, and validates the rest.
    live: bool = False
    # What a packet that could not be decoded gets (inline): Suricata passes them.
    invalid_verdict: VerdictKind = VerdictKind.ACCEPT
    # "ids": drop/reject rules only alert (action "allowed"), as Suricata offline;
    # "ips": they drop (action "blocked") and a dropped flow stays dropped.
    mode: str = "ids"
    # Bypass flows that need no more inspection (Suricata's stream.bypass): the verdict
    # asks the kernel to stop queueing the connection. Off: every packet is inspected.
    bypass: bool = True
    # ... and each direction of a TCP session on its own once it reached depth, while
    # the other is still inspected (a one-way bulk transfer leaves the queue: Suricata
    # waits for both directions). Off: only whole flows are bypassed.
    bypass_per_direction: bool = True
    # What a packet gets when a memory cap is hit (core/exception_policy.py).
    exception_policy: ExceptionPolicies = field(default_factory=ExceptionPolicies)
    # Bytes all app-layer parsers together may hold (bodies, headers, partial records).
    app_layer_memcap: int = 256 * 1024 * 1024


class _Decided(Exception):
    """An exception policy decided the packet: the rest of the pipeline is skipped."""

    def __init__(self, kind: VerdictKind) -> None:
        self.kind = kind


class EngineStats:
    __slots__ = ("app_alloc_errors", "drop_reasons", "errors", "exception_policy",
                 "first_ts", "last_ts", "packets", "verdicts")

    def __init__(self) -> None:
        self.packets = 0
        self.errors = 0  # exceptions caught inside the engine (should stay 0)
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.verdicts: dict[str, int] = {k.value: 0 for k in VerdictKind}
        # Uses of each exception policy: cap -> policy -> count.
        self.exception_policy: dict[str, dict[str, int]] = {c: {} for c in CAPS}
        # Packets dropped (or rejected) by an exception policy, by Suricata's drop reason.
        self.drop_reasons: dict[str, int] = {}
        # App-layer memcap hits by Suricata's stats name of the protocol (dns_udp, http..):
        # Suricata 7 counts a parser refused memory as app_layer.error.<proto>.alloc.
        self.app_alloc_errors: dict[str, int] = {}


class Engine:
    def __init__(self, config: EngineConfig | None = None,
                 detector: SignatureEngine | None = None, policy: Policy | None = None,
                 role_detectors: Mapping[str, SignatureEngine] | None = None) -> None:
        self.config = config or EngineConfig()
        self.detector = detector
        self.policy = policy
        self.role_detectors = dict(role_detectors or {})
        self.alerts = 0
        self.alerts_by_severity: dict[int, int] = {}
        self._reject_how = ""
        # Per-direction bypass (inline only) and whether this packet asks for it.
        self._bypass_dir = (self.config.mode == "ips" and self.config.bypass
                            and self.config.bypass_per_direction)
        self._dir_bypass = False
        self.decoder = Decoder()
        flow_cfg = self.config.flow
        if self.config.mode == "ips" and not flow_cfg.stream.inline:
            # Inline, conflicting retransmissions keep the inspected bytes (Suricata IPS).
            flow_cfg = replace(flow_cfg, stream=replace(flow_cfg.stream, inline=True))
        if not self.config.live and flow_cfg.stream.checksum_validation == "auto":
            flow_cfg = replace(flow_cfg, stream=replace(flow_cfg.stream,
                                                        checksum_validation="no"))
        self.flows = FlowTable(flow_cfg)
        self.defrag = Defragmenter(self.config.defrag)
        self.stats = EngineStats()
        # Exception policies in force (cap -> policy) and the cap hit by this packet.
        self.exc = self.config.exception_policy.resolved(self.config.mode)
        self.flows.evict_established = self.exc["flow_memcap"] == "ignore"
        self._exc_hit: str | None = None
        self._flow_seen: Flow | None = None  # the flow of the packet being inspected
        sc = self.flows.stream.config
        self._pickup_synack = sc.midstream or sc.async_oneside
        self._ssn_drops = 0  # stream.stats.ssn_memcap_drop when last looked at
        self.app_memuse = 0  # bytes held by every flow's app-layer state
        self.anomalies = 0
        self.heuristics = (HeuristicsEngine(self.config.heuristics)
                           if self.config.heuristics is not None else None)
        # Roles with their own thresholds get their own detectors (state included): the
        # role of the flow's guest picks them.
        self.role_heuristics: dict[str, HeuristicsEngine] = {}
        if self.heuristics is not None and policy is not None:
            for name, role in policy.roles.items():
                if role.heuristics:
                    self.role_heuristics[name] = HeuristicsEngine(
                        with_overrides(self.config.heuristics or HeuristicsConfig(),
                                       role.heuristics))
        # Files waiting for a verdict: token -> (packet, its verdict so far, flow, name).
        self._pending: dict[int, tuple[Packet, int, VerdictKind, Flow, str, str]] = {}
        # Their EVE fileinfo records, logged with the verdict (token -> record body).
        self._file_records: dict[int, dict[str, Any]] = {}
        self.file_budget = (FileBudget(self.config.file_memcap, self.config.scan_max_bytes)
                            if self.config.scan_files else None)
        self._next_token = 1
        self._hold: int | None = None
        # FTP data connections announced on control channels (app/ftp.py), bounded.
        self.ftp_expect = Expectations()
        self._held: set[int] = set()

    # -- the one entry point ---------------------------------------------------------

    def handle(self, event: Event) -> list[Command]:
        if type(event) is PacketIn:  # the hot path: an exact type check is cheapest
            return self._packet(event)
        if isinstance(event, PacketIn):
            return self._packet(event)
        if isinstance(event, Tick):
            self.flows.sweep(event.ts)
            return self._ended_flows(event.ts)
        if isinstance(event, Shutdown):
            return self._shutdown(event)
        if isinstance(event, FileScanned):
            return self._file_scanned(event)
        raise TypeError(f"unknown event {type(event).__name__}")

    # -- packets ----------------------------------------------------------------------

    def _packet(self, ev: PacketIn) -> list[Command]:
        st = self.stats
        st.packets += 1
        ts = ev.ts
        if st.first_ts is None:
            st.first_ts = ts
        st.last_ts = ts
        out: list[Command] = []
        kind = _ACCEPT
        self._reject_how = ""
        self._hold = None
        self._flow_seen = None
        self._dir_bypass = False
        flow: Flow | None = None
        try:
            p = self.decoder.decode(ev.data, ev.linktype, ts)
            if p.ipver:
                stream = self.flows.stream
                stream.csum_trusted = ev.csum_trusted
                kind = self._inspect(p, ev, out)
                flow = self._flow_seen
                inner = p.inner
                stream.csum_trusted = False  # the kernel's word is on the outer packet
                while inner is not None:
                    # Tunnelled traffic (IP-in-IP, GRE, VXLAN, Geneve, Teredo) is
                    # inspected as well: the tunnel packet gets the strictest verdict of
                    # its layers. A reset cannot be sent into a tunnel: an inner reject
                    # drops it.
                    if inner.ipver:
                        k = self._inspect(inner, ev, out)
                        if k is VerdictKind.REJECT:
                            k = VerdictKind.DROP
                        if _SEVERITY[k] > _SEVERITY[kind]:
                            kind = k
                    inner = inner.inner
                if p.inner is not None:
                    # A direction mark would go on the tunnel's connection: every inner
                    # flow's.
                    self._dir_bypass = False
                self._flow_seen = flow
            if p.events is not None:
                self.anomalies += len(p.events)
                if self.config.log_decode_anomalies:
                    for name in p.events:
                        out.append(Log(anomaly_record(
                            p, flow, name, ev.id if self.config.log_pcap_cnt else None,
                            self.config.pkt_src)))
                if not p.ipver:
                    kind = self.config.invalid_verdict
            if self.flows.ended:
                # Ended flows are judged on pseudo packets of their own: what they decide
                # must not change how this packet is rejected.
                how = self._reject_how
                out.extend(self._ended_flows(ts))
                self._reject_how = how
        except Exception:  # principle 7: count it, the packet still gets its verdict
            st.errors += 1
            if self._fail_closed(flow or self._flow_seen):
                kind = VerdictKind.DROP  # the guest's role fails closed
        if kind is _BYPASS:
            if not self.config.bypass:
                kind = VerdictKind.ACCEPT
            elif flow is not None and self.config.mode == "ips":
                self.flows.mark_bypassed(flow)
        if self._hold is not None and kind in (VerdictKind.ACCEPT, VerdictKind.BYPASS):
            # The packet completing a download waits for the file's verdict. (With
            # several files done by one packet, the last one's answer gives the Verdict,
            # after the others': resolve() answers them in order.)
            pk, _k, _v, fl, sha, name = self._pending[self._hold]
            self._pending[self._hold] = (pk, ev.id, kind, fl, sha, name)
            self._held.add(self._hold)
            out.append(Hold(ev.id, self._hold))
            return out
        if self._dir_bypass and kind is _ACCEPT:
            # This packet's direction of its TCP session is past depth: the transport
            # marks that direction of the connection bypassed (DIRECTION_BYPASS).
            st.verdicts[_BYPASS] += 1
            out.append(Verdict(ev.id, _BYPASS, DIRECTION_BYPASS))
            return out
        st.verdicts[kind] += 1  # a StrEnum is its value as a key (no .value lookup)
        out.append(Verdict(ev.id, kind, self._reject_how)
                   if self._reject_how and kind is VerdictKind.REJECT
                   else _new_tuple(Verdict, (ev.id, kind, "")))  # = Verdict(ev.id, kind)
        return out

    def _inspect(self, p: Packet, ev: PacketIn, out: list[Command]) -> VerdictKind:
        """Every stage for one decoded IP packet (a tunnel's inner packets come here too);
        returns its verdict. The flow it belongs to is left in self._flow_seen."""
        kind = _ACCEPT
        flow: Flow | None = None
        self._flow_seen = None
        self._exc_hit = None
        try:
            if p.frag is None:
                flow, to_server, upd = self._flow_update(p)
                self._flow_seen = flow
                if flow is not None and self.policy is not None and \
                        flow.ts_pkts + flow.tc_pkts == 1:
                    self._assign_role(flow, p, ev, out)
                if self._exc_hit is not None and \
                        self._exc_hit != "reassembly_memcap":  # that one: _stream
                    self._decide_exception(p, flow, ev.id, out)
                app = None
                if flow is not None and flow.action is None and \
                        self.config.app_layer:
                    app = self._app(p, flow, to_server, upd)
                    if self._exc_hit == "applayer_memcap":
                        self._decide_exception(p, flow, ev.id, out)
                if self.heuristics is not None:
                    self._heuristics(p, flow, to_server, app, out)
                if self.detector is not None or (flow is not None and flow.action):
                    kind = self._detect(p, flow, to_server, ev.id, out,
                                        packet_events(p, upd, app, flow))
                if upd is not None and flow is not None and (
                        self.detector is not None or self.role_detectors) and (
                        upd.to_server or upd.to_client or upd.raw_ts or upd.raw_tc):
                    kind = self._detect_stream(p, flow, upd, kind, ev.id, out)
                if app is not None and flow is not None:
                    kind = self._app_results(p, flow, app, kind, ev.id, out, upd)
                if upd is not None and flow is not None:
                    if upd is not EMPTY:  # _stream() has nothing to do with EMPTY
                        kind = self._stream(p, flow, upd, kind, ev.id, out)
                        if kind is _ACCEPT and self._bypass_dir and flow.action is None \
                                and (upd.done_ts if to_server else upd.done_tc):
                            self._dir_bypass = True
                    if flow.state == FLOW_CLOSED and flow.app is not None and (
                            flow.app.parser is not None or flow.app.detector is not None):
                        # Both sides closed: the app layer has nothing more to parse.
                        # Its last records now, and its memory back, rather than after
                        # the closed timeout (60 s of bodies and transactions kept).
                        # What the close completes (a body read until the connection
                        # closed) is inspected with this packet, as Suricata inspects
                        # at the end of the stream.
                        try:
                            res = self._app_close(flow, p.ts, out)
                            if res is not None and res.inspections and flow.action is None:
                                kind = self._inspect_txs(p, flow, res, kind, ev.id, out,
                                                         upd)
                        finally:
                            flow.app.abandon()  # never closed (and inspected) twice
            else:
                kind = self._fragment(p, out, ev.id)
        except _Decided as d:
            kind = d.kind
        return kind

    def _file_scanned(self, ev: FileScanned) -> list[Command]:
        """The verdict on a held file: the held packet's Verdict, an alert and, by the
        guest's role, an action when the file is malicious."""
        got = self._pending.pop(ev.token, None)
        if got is None:
            return []
        held = ev.token in self._held
        self._held.discard(ev.token)
        p, packet_id, kind, flow, sha, name = got
        out: list[Command] = []
        fileinfo = self._file_records.pop(ev.token, None)
        if fileinfo is not None and self.config.log_app_records:
            # The 7.0 schema's fileinfo has no verdict field: the verdict goes in the
            # record's metadata flowvars (Suricata's place for values attached to a
            # flow), and a malicious file lists the appliance's file rule in `sid`.
            fileinfo["metadata"] = {"flowvars": [
                {"key": "file_verdict", "value": ev.verdict},
                {"key": "file_verdict_source", "value": ev.source},
                *({"key": "file_signature", "value": s} for s in ev.signatures)]}
            if ev.verdict == "malicious":
                fileinfo["fileinfo"]["sid"] = [FILE_SID_MALICIOUS]
            out.append(Log(app_record(flow, p.ts, fileinfo)))
        if ev.verdict == "malicious":
            ips = self.config.mode == "ips"
            sigs = ", ".join(ev.signatures) or "unknown signature"
            rec = alert_record(
                p, flow, packet_id if self.config.log_pcap_cnt else None,
                self.config.pkt_src, action="blocked" if ips else "allowed",
                gid=FILE_GID, sid=FILE_SID_MALICIOUS, rev=1,
                signature=f"APPLIANCE FILE malicious download ({sigs})",
                category="A Network Trojan was detected", severity=1,
                metadata={"sha256": [sha], "filename": [name], "signatures":
                          list(ev.signatures) or ["unknown"], "verdict_source": [ev.source]},
                tx_id=None, to_server=False)
            self.alerts += 1
            flow.alerted = True
            if self.policy is not None:
                role = self.policy.role(flow.role)
                _explain(rec, flow, "drop", "drop")
                req = on_detection(self.policy, role, flow, p, 1, FILE_SID_MALICIOUS, rec)
                if req is not None:
                    out.append(req)
            out.append(Log(rec))
            if ips:
                flow.action = "drop"  # the rest of the transfer too: it never completes
        elif ev.verdict == "unknown" and ev.source == "timeout" and self._fail_closed(flow):
            # No verdict in time: a role that fails closed does not let the file through.
            flow.action = "drop"
        if not held:
            return out  # another file of the same packet gives its Verdict
        if self.config.mode == "ips" and flow.action == "drop":
            kind = VerdictKind.DROP
        self.stats.verdicts[kind] += 1
        out.append(Verdict(packet_id, kind))
        return out

    def _fail_closed(self, flow: Flow | None) -> bool:
        """Inline, when something could not be decided for this flow: does its guest's
        role fail closed (drop) rather than open (accept)?"""
        if self.config.mode != "ips" or self.policy is None or flow is None:
            return False
        return not self.policy.role(flow.role).fail_open

    def _scan_files(self, p: Packet, flow: Flow, res: AppResult, pkt_id: int,
                    out: list[Command]) -> None:
        """Downloads that finished with this packet go to the scan cache/scanners."""
        if self.policy is not None and not self.policy.role(flow.role).scan_files:
            return
        for f in res.files:
            # Downloads: HTTP responses; FTP RETR data whichever way its connection goes.
            if not getattr(f, "download", not f.to_server) or f.state != "CLOSED":
                f.release()
                continue
            data = f.take_data()  # the content kept as it streamed (app/http.py)
            if data is None:
                # Not kept (no room, or the flow started before scanning was on): the
                # body kept for detection, if it is the whole file.
                tx = flow.app.parser.get_tx(f.tx_id) if flow.app is not None and \
                    hasattr(flow.app.parser, "get_tx") else None
                body = bytes(tx.response_body) if tx is not None else b""
                if len(body) == f.size and f.size <= self.config.scan_max_bytes:
                    data = body
            token = self._next_token
            self._next_token += 1
            name = f.filename.decode("utf-8", "replace")
            self._pending[token] = (p, pkt_id, VerdictKind.ACCEPT, flow, f.sha256, name)
            for i, rec in enumerate(res.records):
                fi = rec.get("fileinfo")
                if fi is not None and fi.get("sha256") == f.sha256 and \
                        rec.get("tx_id") == f.tx_id:
                    self._file_records[token] = res.records.pop(i)
                    break
            out.append(ScanRequest(token, pkt_id, f.sha256, data, f.size, flow.guest, name))
            self._hold = token

    def _fragment(self, p: Packet, out: list[Command], pkt_id: int) -> VerdictKind:
        """Feed a fragment to defrag; a completed datagram is decoded and goes through
        flow handling like any packet (Suricata's reassembled pseudo-packet). Returns
        the fragment's verdict: the rebuilt datagram's for the one that completed it."""
        refused = self.defrag.stats.memcap_refused
        rebuilt = self.defrag.add(p)
        own = VerdictKind.ACCEPT
        if p.events is not None and self.detector is not None:
            # The fragment's own anomalies (overlap, bad length, too large...): Suricata
            # inspects each fragment packet, so decode-event rules match on it.
            own = self._detect(p, None, True, pkt_id, out, packet_events(p, None, None, None))
        if rebuilt is None:
            if self.defrag.stats.memcap_refused != refused:
                self._exc_hit = "defrag_memcap"
                self._decide_exception(p, None, pkt_id, out)
            return own
        q = self.decoder.decode_rebuilt(rebuilt, p.l3_off, p.ipver, p.vlan, p.ts)
        if q.events is not None:
            self.anomalies += len(q.events)
            if self.config.log_decode_anomalies:
                for name in q.events:
                    out.append(Log(anomaly_record(q, None, name, pkt_id, self.config.pkt_src)))
        if not q.ipver:
            return VerdictKind.ACCEPT
        flow, to_server, upd = self._flow_update(q)
        if self._exc_hit is not None and self._exc_hit != "reassembly_memcap":
            self._decide_exception(q, flow, pkt_id, out)
        # The rebuilt datagram goes through the same stages as a packet (app layer,
        # both payload views, stream anomalies); its verdict goes to the fragment that
        # completed it.
        app = None
        if flow is not None and flow.action is None and self.config.app_layer:
            app = self._app(q, flow, to_server, upd)
        kind = VerdictKind.ACCEPT
        if self.detector is not None or (flow is not None and flow.action):
            kind = self._detect(q, flow, to_server, pkt_id, out)
        if flow is not None and upd is not None:
            if upd.to_server or upd.to_client or upd.raw_ts or upd.raw_tc:
                kind = self._detect_stream(q, flow, upd, kind, pkt_id, out)
            if app is not None:
                kind = self._app_results(q, flow, app, kind, pkt_id, out)
            kind = self._stream(q, flow, upd, kind, pkt_id, out)
        elif app is not None and flow is not None:
            kind = self._app_results(q, flow, app, kind, pkt_id, out)
        return kind

    # -- exception policies (core/exception_policy.py) -----------------------------------

    def _decide_exception(self, p: Packet, flow: Flow | None, pkt_id: int,
                          out: list[Command]) -> None:
        """Apply the policy of the cap this packet hit; unless it is "ignore", that
        decides the packet and the rest of its pipeline is skipped."""
        kind = self._exception(p, flow, pkt_id, out)
        if kind is not None:
            raise _Decided(kind)

    def _exception(self, p: Packet, flow: Flow | None, pkt_id: int,
                   out: list[Command]) -> VerdictKind | None:
        """Count and log one use of the exception policy of the cap in self._exc_hit;
        returns the packet's verdict, or None for "ignore"."""
        cap = self._exc_hit
        assert cap is not None
        self._exc_hit = None
        pol = self.exc[cap]
        uses = self.stats.exception_policy[cap]
        uses[pol] = uses.get(pol, 0) + 1
        bit = 1 << CAPS.index(cap)
        if flow is not None and not flow.exceptions & bit:
            # Once per flow (a flow-less use is counted in stats only: under a flood
            # each packet would be one).
            flow.exceptions |= bit
            self.anomalies += 1
            out.append(Log(anomaly_record(
                p, flow, f"{cap}.{pol}", pkt_id if self.config.log_pcap_cnt else None,
                self.config.pkt_src, kind="exception_policy")))
        if pol == "ignore":
            return None
        if flow is not None and flow.action == "drop":
            kind = VerdictKind.DROP  # already dropped (a rule or an earlier policy)
        elif pol == "drop-packet":
            kind = VerdictKind.DROP
        elif pol == "drop-flow" or pol == "reject":
            if flow is not None:
                flow.action = "drop"
            kind = VerdictKind.DROP
            if pol == "reject":
                kind = VerdictKind.REJECT
                self._reject_how = "reject"
        elif pol == "pass-packet":
            kind = VerdictKind.ACCEPT
        elif pol == "pass-flow":
            if flow is not None:
                flow.action = "accept"
            kind = VerdictKind.ACCEPT
        else:  # bypass
            if flow is not None:
                flow.action = "bypass"
            kind = VerdictKind.BYPASS
        if kind is not VerdictKind.ACCEPT and kind is not VerdictKind.BYPASS:
            reason = DROP_REASON[cap]
            self.stats.drop_reasons[reason] = self.stats.drop_reasons.get(reason, 0) + 1
        return kind

    def _detect(self, p: Packet, flow: Flow | None, to_server: bool, pkt_id: int,
                out: list[Command], events: frozenset[str] | None = None) -> VerdictKind:
        """Signatures on one packet; returns its verdict and appends alert records."""
        det = self.detector
        if flow is not None and flow.action is not None:
            # A dropped flow is not inspected again (Suricata: no more alerts on it) and,
            # inline, stays dropped. A passed flow needs no more inspection: bypass it.
            if flow.action == "drop":
                return VerdictKind.DROP if self.config.mode == "ips" else VerdictKind.ACCEPT
            if flow.action == "accept":
                return VerdictKind.ACCEPT
            return VerdictKind.BYPASS
        if flow is not None and flow.role in self.role_detectors:
            det = self.role_detectors[flow.role]
        if det is None:
            return VerdictKind.ACCEPT
        matches = det.inspect_packet(p, flow, to_server, events)
        if not matches:
            return VerdictKind.ACCEPT
        return self._act(p, flow, to_server, pkt_id, matches, out)

    def _detect_stream(self, p: Packet, flow: Flow, upd: StreamUpdate, kind: VerdictKind,
                       pkt_id: int, out: list[Command]) -> VerdictKind:
        """Stream rules on the reassembled bytes this packet delivered, per direction
        (the second view of TCP payload, besides the packet's own: issue 3 item 5)."""
        if flow.action is not None:
            return kind
        det = self.role_detectors.get(flow.role, self.detector)
        if det is None or not det.has_stream_rules:
            return kind
        chunks = [(True, upd.to_server, upd.gap_ts), (False, upd.to_client, upd.gap_tc)]
        # Held bytes an RST left behind holes: each chunk follows a hole (core/stream.py).
        chunks += [(True, c, True) for c in upd.raw_ts]
        chunks += [(False, c, True) for c in upd.raw_tc]
        for chunk_ts, data, gap in chunks:
            if not data:
                continue
            matches = det.inspect_stream(p, flow, chunk_ts, data, gap)
            if matches:
                k = self._act(p, flow, chunk_ts, pkt_id, matches, out, stateful=True)
                if _SEVERITY[k] > _SEVERITY[kind]:
                    kind = k
        return kind

    def _act(self, p: Packet, flow: Flow | None, to_server: bool, pkt_id: int,
             matches: list[RuleMatch], out: list[Command], stateful: bool = False
             ) -> VerdictKind:
        ips = self.config.mode == "ips"
        kind = VerdictKind.ACCEPT
        role = self.policy.role(flow.role) if self.policy is not None and flow else None
        for m in matches:
            r = m.rule
            act = r.action
            if role is not None:
                # The guest's role may turn an alert into a drop (or the reverse).
                act = role.action_for(act, r.rule.sid, r.rule.classtype, r.severity)
            # Suricata 7's action scope by rule type, inline or not: a pass or drop
            # from a transaction, the stream, an IP-only rule, or payload bytes of a
            # tracked TCP session (Suricata matches those on the stream) applies to the
            # rest of the flow; one from a rule on this packet alone (header keywords,
            # dsize, the payload of a packet outside a session) to this packet only,
            # and later packets are still inspected (suricata-verify util-action-04).
            whole_flow = flow is not None and act != "alert" and (
                stateful or m.tx_id is not None or r.ip_only
                or (flow.state == FLOW_ESTABLISHED and flow.tcp is not None
                    and r.inspects_payload))
            if act == "pass":
                if whole_flow:
                    assert flow is not None
                    flow.action = "pass"
                    kind = VerdictKind.BYPASS
                else:
                    # This packet only: no further rule acts on it.
                    return kind
                continue
            if whole_flow:
                assert flow is not None
                flow.action = "drop"
            blocking = ips and act != "alert"
            if blocking:
                if act.startswith("reject"):
                    kind = VerdictKind.REJECT
                    self._reject_how = act
                elif kind is VerdictKind.ACCEPT:
                    kind = VerdictKind.DROP
            if m.alert:
                self.alerts += 1
                sev = r.severity
                self.alerts_by_severity[sev] = self.alerts_by_severity.get(sev, 0) + 1
                if flow is not None:
                    flow.alerted = True
                rule = r.rule
                rec = alert_record(
                    p, flow, pkt_id if self.config.log_pcap_cnt else None, self.config.pkt_src,
                    action="blocked" if blocking else "allowed", gid=rule.gid, sid=rule.sid,
                    rev=rule.rev, signature=rule.msg, category=r.category,
                    severity=r.severity, metadata=r.metadata, tx_id=m.tx_id,
                    to_server=to_server)
                if role is not None and flow is not None:
                    _explain(rec, flow, r.action, act)
                    wants = r.metadata.get("appliance_action")
                    req = on_detection(self.policy, role, flow, p, r.severity, rule.sid,
                                       rec, wants[0] if wants else None)
                    if req is not None:
                        out.append(req)
                out.append(Log(rec))
        return kind

    def _assign_role(self, flow: Flow, p: Packet, ev: PacketIn, out: list[Command]) -> None:
        """A new flow: find its guest and role; refuse it if the role does not allow
        the conversation (egress for the guest's own flows, ingress for flows to it)."""
        pol = self.policy
        assert pol is not None
        mac = ev.hw_src
        if mac is None and ev.linktype == LINKTYPE_ETHERNET and len(ev.data) >= 12:
            mac = ev.data[6:12]  # replay: the Ethernet source
        guest, client = pol.resolve(p.src, p.dst, ev.in_port, ev.out_port, mac)
        if guest is None:
            return
        flow.guest = guest.name
        flow.guest_port = ev.in_port if client else ev.out_port
        flow.guest_client = client
        flow.role = guest.role
        role = pol.role(guest.role)
        if p.proto == PROTO_TCP and not is_stream_starter(p.tcp_flags):
            # Picked up midstream (e.g. a worker restarted): who opened the connection is
            # unknown, so the allowlists cannot be judged; signatures still apply.
            return
        allowed = (role.egress_allowed(p.proto, p.dst, p.dp) if client
                   else role.ingress_allowed(p.proto, p.src, p.dp))
        if allowed:
            return
        flow.action = "drop"
        ips = self.config.mode == "ips"
        direction = "egress" if client else "ingress"
        rec = alert_record(
            p, flow, ev.id if self.config.log_pcap_cnt else None, self.config.pkt_src,
            action="blocked" if ips else "allowed", gid=POLICY_GID,
            sid=POLICY_SID_EGRESS if client else POLICY_SID_INGRESS, rev=1,
            signature=f"APPLIANCE POLICY {direction} not allowed for role {role.name}",
            category="Policy", severity=2,
            metadata={"guest": [guest.name], "role": [role.name],
                      "explain": [f"{direction} {p.dp}/{p.proto} is not in role "
                                  f"{role.name}'s {direction} allowlist"]},
            tx_id=None, to_server=True)
        self.alerts += 1
        out.append(Log(rec))

    def _heuristics(self, p: Packet, flow: Flow | None, to_server: bool,
                    app: AppResult | None, out: list[Command]) -> None:
        h = self.heuristics
        assert h is not None
        if flow is not None and self.role_heuristics:
            h = self.role_heuristics.get(flow.role, h)
        new = flow is not None and flow.ts_pkts + flow.tc_pkts == 1
        hits = h.on_packet(p, flow, to_server, new)
        if app is not None and flow is not None:
            if app.proto_decided:
                hits += h.on_app_proto(flow, p.ts)
            for qname, qtype in app.dns_questions:
                hits += h.on_dns_query(p, flow, qname, qtype)
            for status in app.http_statuses:
                hits += h.on_http_status(p, flow, status)
        for hit in hits:
            self._heuristic_alert(hit, flow, out)

    def _heuristic_alert(self, hit: HeuristicHit, flow: Flow | None,
                         out: list[Command]) -> None:
        """A heuristic hit is an alert; the policy may act on it: block an outside
        offender (whose role asks for actions), or quarantine an offending guest."""
        self.alerts += 1
        rec = heuristic_record(hit, flow, "allowed")
        out.append(Log(rec))
        pol = self.policy
        if pol is None:
            return
        req = heuristic_action(pol, hit, rec)
        if req is not None:
            out.append(req)

    def _check_app_proto(self, p: Packet, flow: Flow, kind: VerdictKind, pkt_id: int,
                         out: list[Command]) -> VerdictKind:
        """A role's services may name the application protocols they carry: once the
        app layer decided the flow's, a protocol not allowed there ends the flow."""
        assert self.policy is not None
        role = self.policy.role(flow.role)
        peer, port = (flow.dst, flow.dp) if flow.guest_client else (flow.src, flow.dp)
        if role.app_allowed(flow.guest_client, flow.proto, peer, port, flow.app_proto):
            return kind
        flow.action = "drop"
        ips = self.config.mode == "ips"
        direction = "egress" if flow.guest_client else "ingress"
        rec = alert_record(
            p, flow, pkt_id if self.config.log_pcap_cnt else None, self.config.pkt_src,
            action="blocked" if ips else "allowed", gid=POLICY_GID, sid=POLICY_SID_APP,
            rev=1, signature=f"APPLIANCE POLICY {flow.app_proto} not allowed on "
                             f"{direction} port {port} for role {role.name}",
            category="Policy", severity=2,
            metadata={"guest": [flow.guest or "unknown"], "role": [role.name],
                      "explain": [f"app_proto {flow.app_proto} is not among those role "
                                  f"{role.name} allows on port {port}"]},
            tx_id=None, to_server=True)
        self.alerts += 1
        out.append(Log(rec))
        return VerdictKind.DROP if ips else kind

    def _app(self, p: Packet, flow: Flow, to_server: bool,
             upd: StreamUpdate | None) -> AppResult | None:
        """Feed the app layer what this packet delivered (stream bytes or a datagram)."""
        if p.proto == PROTO_TCP:
            if upd is None or not (upd.to_server or upd.to_client):
                if p.tcp_flags & TH_FIN and flow.app_proto == "ftp-data":
                    res = AppResult()  # an FTP data connection's FIN ends its file
                    applayer.ftp_data_fin(flow, to_server, res)
                    return res
                return None
            if flow.app is None and len(self.ftp_expect):
                # An FTP data connection? (its parser keeps its file in the budget)
                applayer.ftp_data_flow(flow, self.ftp_expect, p.ts, self.file_budget)
            if flow.app is None and self.file_budget is not None and (
                    self.policy is None or self.policy.role(flow.role).scan_files):
                flow.app = AppState(flow, self.file_budget)  # its downloads are kept
            res = AppResult()
            if upd.to_server:
                applayer.feed_tcp(flow, upd.to_server, True, res)
            if upd.to_client:
                applayer.feed_tcp(flow, upd.to_client, False, res)
            for ip, exp in res.expected:  # data connections an FTP command announced
                self.ftp_expect.add(ip, exp, p.ts)
            if p.tcp_flags & TH_FIN and flow.app_proto == "ftp-data":
                applayer.ftp_data_fin(flow, to_server, res)
        elif p.proto == PROTO_UDP:
            st = flow.app
            if st is not None and (st.parser is None or not p.payload):
                return None  # decided already, and no parser: nothing to feed
            res = AppResult()
            applayer.feed_udp(flow, p, to_server, res)
        else:
            return None
        st = flow.app
        if st is not None:
            m = st.memuse()
            grew = m - st.mem
            if grew:
                st.mem = m
                self.app_memuse += grew
                if grew > 0 and self.app_memuse > self.config.app_layer_memcap:
                    # Over the app layer's memcap: this flow's parser goes, whatever
                    # the policy (memory stays bounded); the policy decides the rest.
                    st.abandon()
                    self.app_memuse -= m
                    st.mem = 0
                    self._exc_hit = "applayer_memcap"
                    name = app_stats_name(flow.app_proto or "failed", flow.proto)
                    errs = self.stats.app_alloc_errors
                    errs[name] = errs.get(name, 0) + 1
        return res

    def _app_results(self, p: Packet, flow: Flow, res: AppResult, kind: VerdictKind,
                     pkt_id: int, out: list[Command],
                     upd: StreamUpdate | None = None) -> VerdictKind:
        """App-layer rules on each transaction that progressed; EVE app records."""
        cfg = self.config
        for name, _to_server, tx_id in res.anomalies:
            self.anomalies += 1
            if cfg.log_app_anomalies:
                body: dict[str, Any] = {
                    "event_type": "anomaly",
                    "anomaly": {"app_proto": flow.app_proto or "unknown", "type": "applayer",
                                "event": name, "layer": "proto_parser"}}
                if tx_id >= 0:
                    body["tx_id"] = tx_id
                out.append(Log(app_record(flow, p.ts, body, cfg.pkt_src)))
        if res.proto_decided and flow.guest is not None and self.policy is not None:
            kind = self._check_app_proto(p, flow, kind, pkt_id, out)
        if flow.action is None:
            kind = self._inspect_txs(p, flow, res, kind, pkt_id, out, upd)
        scans: list[Command] = []
        if cfg.scan_files and res.files:
            # Before the records: a scanned file's fileinfo waits for its verdict.
            self._scan_files(p, flow, res, pkt_id, scans)
        if cfg.log_app_records:
            for body in res.records:
                out.append(Log(app_record(flow, p.ts, body)))
        out.extend(scans)
        if res.encrypted and flow.action is None and cfg.bypass and cfg.mode == "ips":
            flow.action = "bypass"  # TLS after the handshake: nothing left to inspect
        return kind

    def _inspect_txs(self, p: Packet, flow: Flow, res: AppResult, kind: VerdictKind,
                     pkt_id: int, out: list[Command],
                     upd: StreamUpdate | None = None) -> VerdictKind:
        """App-layer rules (the flow role's detector) on each transaction inspection;
        `upd`: what the packet delivered of the TCP stream (inspect_tx's stream_data)."""
        det = self.role_detectors.get(flow.role, self.detector)
        if det is not None:
            for insp in res.inspections:
                data = b"" if upd is None else (upd.to_server if insp.to_server
                                                 else upd.to_client)
                # Judged (and reported) in the transaction's direction, whichever way
                # the packet that delivered its bytes went.
                q = facing(p, flow, insp.to_server)
                matches = det.inspect_tx(q, flow, insp.to_server, insp.tx_id, insp.buffers,
                                         data)
                if matches:
                    k = self._act(q, flow, insp.to_server, pkt_id, matches, out,
                                  stateful=True)
                    if _SEVERITY[k] > _SEVERITY[kind]:
                        kind = k
        return kind

    def _stream(self, p: Packet, flow: Flow, upd: StreamUpdate, kind: VerdictKind,
                pkt_id: int, out: list[Command]) -> VerdictKind:
        """What TCP reassembly said about this segment: anomalies; inline, a segment
        whose bytes differ from what was inspected is dropped (never inspected one way
        and delivered another); both directions past depth: nothing left to inspect."""
        if upd.events:
            self.anomalies += len(upd.events)
            if self.config.log_stream_anomalies:
                cnt = pkt_id if self.config.log_pcap_cnt else None
                for name in upd.events:
                    out.append(Log(anomaly_record(p, flow, name, cnt, self.config.pkt_src,
                                                  kind="stream")))
        if self._exc_hit == "reassembly_memcap":
            # The segment could not be buffered: the policy decides (inline default:
            # drop it, the sender retransmits once memory frees).
            k = self._exception(p, flow, pkt_id, out)
            if k is not None and (_SEVERITY[kind] < _SEVERITY[VerdictKind.DROP]
                                  or _SEVERITY[k] > _SEVERITY[kind]):
                kind = k  # a pass or bypass policy never undoes a rule's drop
        if self.config.mode == "ips" and upd.differs:
            return VerdictKind.DROP
        if upd.done_ts and upd.done_tc and flow.action is None and self.config.bypass \
                and self.config.mode == "ips":
            # Inline only: bypass is how the kernel stops queueing the connection. Replay
            # keeps inspecting packets past depth, as Suricata with stream.bypass off.
            flow.action = "bypass"
            if kind is VerdictKind.ACCEPT:
                return VerdictKind.BYPASS
        return kind

    def _flow_update(self, p: Packet) -> tuple[Flow | None, bool, StreamUpdate | None]:
        proto = p.proto
        if proto not in FLOW_PROTOS or (p.l4_off < 0 and proto != PROTO_ESP):  # has_l4
            # Suricata keeps flows for TCP, UDP, ICMP, ICMPv6, SCTP and ESP only; a bad
            # transport header leaves nothing to key a flow on.
            return None, True, None
        flows = self.flows
        try:
            f, to_server = flows.lookup(p)
        except FlowTableFull:
            self._exc_hit = "flow_memcap"
            return None, True, None
        if proto == PROTO_TCP and not (f.ts_pkts or f.tc_pkts) and \
                p.tcp_flags & _SYN_ACK_RST == _SYN_ACK and self._pickup_synack:
            # A session picked up at the server's SYN/ACK: the flow is the other way.
            flows.reverse(f)
            to_server = False
        n = p.pkt_len
        if to_server:
            f.ts_pkts += 1
            f.ts_bytes += n
            f.ts_payload += len(p.payload)
        else:
            f.tc_pkts += 1
            f.tc_bytes += n
            f.tc_payload += len(p.payload)
        upd = None
        if proto == PROTO_TCP:
            upd = flows.update_tcp(f, p, to_server)
            if upd is None:
                if f.tcp is None:
                    drops = flows.stream.stats.ssn_memcap_drop
                    if drops != self._ssn_drops:  # no session: the stream memcap
                        self._ssn_drops = drops
                        self._exc_hit = "stream_memcap"
            elif upd.memcap_drop:
                self._exc_hit = "reassembly_memcap"
        else:
            if (proto == PROTO_ICMP or proto == PROTO_ICMPV6) and p.icmp_inner is None:
                if to_server and f.icmp_ts is None:
                    f.icmp_ts = (p.icmp_type, p.icmp_code)
                elif not to_server and f.icmp_tc is None:
                    f.icmp_tc = (p.icmp_type, p.icmp_code)
            # Non-TCP flows are established once both sides have spoken (Suricata's
            # FlowUpdateState for UDP/ICMP/other).
            if f.state == FLOW_NEW and f.ts_pkts and f.tc_pkts:
                flows.set_state(f, FLOW_ESTABLISHED)
        return f, to_server, upd

    def _ended_flows(self, now: float) -> list[Command]:
        out: list[Command] = []
        for f in self.flows.drain():
            self._flow_end(f, now, out)
        return out

    def _flow_end(self, f: Flow, now: float, out: list[Command]) -> None:
        if f.tcp is not None and f.tcp.leftover is not None:
            try:
                self._stream_leftover(f, now, out)
            except Exception:  # a detection bug must not lose the flow record
                self.stats.errors += 1
        res = self._app_close(f, now, out)
        if res is not None and res.inspections and f.action is None and f.tcp is not None:
            # What the close completed (a body read until the connection closed), on a
            # pseudo packet as Suricata inspects at flow timeout and at the end of input.
            try:
                p = pseudo_tcp_packet(now, f.ipver, f.src, f.dst, f.sp, f.dp, f.vlan)
                n = len(out)
                self._inspect_txs(p, f, res, VerdictKind.ACCEPT, 0, out)
                _from_flow_timeout(out, n)
            except Exception:  # a detection bug must not lose the flow record
                self.stats.errors += 1
        if self.heuristics is not None:
            h = self.role_heuristics.get(f.role, self.heuristics)
            for hit in h.on_flow_end(f):
                self._heuristic_alert(hit, f, out)
        out.append(Log(flow_record(f, now)))

    def _stream_leftover(self, f: Flow, now: float, out: list[Command]) -> None:
        """Stream rules on what the session still held behind holes when it ended
        (core/stream.py TcpSession.leftover), judged on a pseudo packet as Suricata
        does at flow timeout; its alerts say so in pkt_src and carry no pcap_cnt."""
        assert f.tcp is not None
        upd, f.tcp.leftover = f.tcp.leftover, None
        if upd is None or f.action is not None:
            return
        p = pseudo_tcp_packet(now, f.ipver, f.src, f.dst, f.sp, f.dp, f.vlan)
        n = len(out)
        self._detect_stream(p, f, upd, VerdictKind.ACCEPT, 0, out)
        _from_flow_timeout(out, n)

    def _app_close(self, f: Flow, now: float, out: list[Command]) -> AppResult | None:
        """The parser's last words logged; what they hold is returned for inspection."""
        if f.app is None or not self.config.app_layer:
            return None
        self.app_memuse -= f.app.mem
        f.app.mem = 0
        f.app.release_files()
        try:
            res = AppResult()
            applayer.close(f, res)
            if self.config.log_app_records:
                for body in res.records:
                    out.append(Log(app_record(f, now, body)))
        except Exception:  # a parser bug must not lose the flow record
            self.stats.errors += 1
            return None
        return res

    def _shutdown(self, ev: Shutdown) -> list[Command]:
        now = ev.ts if ev.ts is not None else (self.stats.last_ts or 0.0)
        out: list[Command] = []
        for f in self.flows.shutdown():
            self._flow_end(f, now, out)
        out.append(Log(self.stats_record(now)))
        return out

    # -- stats ------------------------------------------------------------------------

    def stats_record(self, now: float) -> dict[str, Any]:
        dc = self.decoder.stats
        decoder: dict[str, Any] = dict(dc.counts)
        pk = dc.counts["pkts"]
        decoder["avg_pkt_size"] = dc.counts["bytes"] // pk if pk else 0
        events: dict[str, dict[str, int]] = {}
        for name, n in dc.events.items():
            if name in NON_SURICATA_EVENTS:
                continue
            _, layer, ev = name.split(".", 2)
            events.setdefault(layer, {})[ev] = n
        decoder["event"] = events
        fs = self.flows.stats
        flow = {
            "total": fs.total,
            "active": len(self.flows),
            "memuse": self.flows.memuse,
            "emerg_mode_entered": fs.emergency_entered,
            "emerg_mode_over": fs.emergency_left,
            "tcp_reuse": fs.reused,
            "get_used": fs.evicted,
        }
        first = self.stats.first_ts if self.stats.first_ts is not None else now
        rec = stats_record(now, int(now - first), decoder, flow)
        st = rec["stats"]
        st["tcp"] = self.flows.stream.eve_tcp()
        for section, counters in self.memcap_counters().items():
            st.setdefault(section, {}).update(counters)
        v = self.stats.verdicts
        st["ips"].update({
            "accepted": v["accept"] + v["bypass"], "blocked": v["drop"] + v["reject"],
            "rejected": v["reject"],
        })
        return rec

    def memcap_counters(self) -> dict[str, dict[str, Any]]:
        """Memcap hits and exception-policy uses under Suricata 7's stats names, by
        stats section (merged into `stats_record`; workers report them for the
        supervisor's record).

        Each use of a memcap's exception policy is counted, whatever the policy did,
        under Suricata 7's own counter for it: flow.get_used_failed (the flow table
        refused a flow even after reuse), tcp.ssn_memcap_drop (stream),
        tcp.segment_memcap_drop (reassembly), defrag.max_frag_hits (no tracker or
        fragment could be stored) and app_layer.error.<proto>.alloc. flow.memcap counts
        every time the table was full, also when a sweep or reuse made room.
        ips.drop_reason counts the packets a policy dropped or rejected. Which policy
        answered each use (pass and bypass included) is in exception_policy_stats()
        (status, metrics): the 7.0 schema has no per-policy counters."""
        ss = self.flows.stream.stats
        d = self.defrag.stats
        out: dict[str, dict[str, Any]] = {
            "flow": {"memcap": self.flows.stats.memcap_hits,
                     "get_used_failed": sum(self.stats.exception_policy["flow_memcap"]
                                            .values())},
            "tcp": {"ssn_memcap_drop": ss.ssn_memcap_drop,
                    "segment_memcap_drop": ss.segment_memcap_drop},
            "defrag": {"max_frag_hits": d.max_frag_hits + d.memcap_refused},
            "ips": {"drop_reason": {r: self.stats.drop_reasons.get(r, 0)
                                    for r in DROP_REASON.values()}},
        }
        if self.stats.app_alloc_errors:
            out["app_layer"] = {"error": {name: {"alloc": n} for name, n
                                          in self.stats.app_alloc_errors.items()}}
        return out

    def exception_policy_stats(self) -> dict[str, Any]:
        """Each cap's policy in force and its uses by policy (for status and metrics)."""
        return {cap: {"policy": self.exc[cap], "uses": dict(self.stats.exception_policy[cap])}
                for cap in CAPS}
