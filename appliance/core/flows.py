"""Bidirectional flow table with packet-time timeouts, a memcap and emergency mode.

Semantics follow Suricata 7's flow engine (flow-hash.c, flow-manager.c):
- a flow is keyed by (vlan ids, protocol, both address/port ends), direction-free;
  ICMP echo and the like are keyed on addresses only, as Suricata hashes ICMP without
  ports, and ICMP errors join the flow of the packet they quote;
- the first packet's source is the client ("toserver" side);
- a flow whose timeout passed is retired when its next packet arrives (a new flow
  starts) or when the periodic sweep finds it. Like Suricata (FlowIsTimedOut compares
  `lastts.secs + timeout < now.secs`), time is compared in whole seconds, so a flow idle
  for 60.4 s at a 60 s timeout may live on: this keeps flow splits identical to Suricata's;
- a TCP SYN on a closed session starts a new flow (Suricata's TCP session reuse);
- timeouts depend on protocol and state, and shrink to the emergency values while the
  table is full; when even that frees nothing, the least recently used flow is evicted.

Expiry is O(expired): flows sit in one LRU queue per (protocol class, state). Within a
queue all flows share one timeout, so the queue's head is always the next to expire.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Final

from appliance.core.decode import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TH_ACK,
    TH_RST,
    TH_SYN,
    Packet,
)
from appliance.core.stream import (
    FLOW_BYPASSED,
    FLOW_CLOSED,
    FLOW_ESTABLISHED,
    FLOW_NEW,
    FLOW_STATE_OF,
    StreamConfig,
    StreamTracker,
    StreamUpdate,
    TcpSession,
    TcpState,
)

_SYN_ACK_RST: Final = TH_SYN | TH_ACK | TH_RST

# Protocol classes for timeouts, as Suricata's flow-timeouts sections.
PC_DEFAULT: Final = 0
PC_TCP: Final = 1
PC_UDP: Final = 2
PC_ICMP: Final = 3

FlowKey = tuple[tuple[int, ...], int, bytes, int, bytes, int]


# Signature protocols that also name other flow protocols, as Suricata 7 compares them
# (AppProtoEquals): "http" is any HTTP (our flows say "http" for HTTP/1 and "http2"),
# "http1" HTTP/1 only, and "dcerpc" also DCERPC carried in SMB named pipes (app/smb.py).
APP_PROTO_ALSO: Final = {"http": "http2", "http1": "http", "dcerpc": "smb"}


def app_proto_matches(want: str, have: str | None) -> bool:
    """Whether a flow whose app layer is `have` is what a rule or a role's `want` names."""
    return have == want or (have is not None and APP_PROTO_ALSO.get(want) == have)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds a flow may stay idle, per state (new, established, closed)."""

    new: float
    established: float
    closed: float
    bypassed: float = 100.0

    def for_state(self, state: int) -> float:
        if state == FLOW_BYPASSED:
            return self.bypassed
        return self.new if state == FLOW_NEW else (
            self.established if state == FLOW_ESTABLISHED else self.closed)


def _default_timeouts() -> dict[int, tuple[Timeouts, Timeouts]]:
    # Suricata 7 defaults (suricata.yaml flow-timeouts): (normal, emergency).
    return {
        PC_DEFAULT: (Timeouts(30, 300, 0, 100), Timeouts(10, 100, 0, 50)),
        PC_TCP: (Timeouts(60, 600, 60, 100), Timeouts(5, 100, 10, 50)),
        PC_UDP: (Timeouts(30, 300, 0, 100), Timeouts(10, 100, 0, 50)),
        PC_ICMP: (Timeouts(30, 300, 0, 100), Timeouts(10, 100, 0, 50)),
    }


# Estimated bytes a flow costs in this process (Flow object, its key, its dict and
# queue entries): tracemalloc measured ~600 over 5,000 UDP flows, rounded up for TCP
# session state (tests/core/test_flows.py checks the estimate stays within 2x of the
# measurement). Stream and app-layer buffers will account their own bytes.
FLOW_COST_BYTES: Final = 700


@dataclass(frozen=True, slots=True)
class FlowConfig:
    memcap: int = 128 * 1024 * 1024  # Suricata's default flow.memcap
    # Leave emergency mode once usage is below (100 - this)% of the memcap (Suricata's
    # flow.emergency-recovery).
    emergency_recovery: int = 30
    # Seconds of packet time between sweeps for timed-out flows (Suricata's flow
    # manager wakes about once a second).
    sweep_interval: float = 1.0
    timeouts: dict[int, tuple[Timeouts, Timeouts]] = field(default_factory=_default_timeouts)
    midstream: bool = False  # Suricata's stream.midstream default
    # TCP tracking and reassembly; `midstream` above (what config.py sets) turns pickup
    # on for the stream tracker too.
    stream: StreamConfig = field(default_factory=StreamConfig)

    @property
    def max_flows(self) -> int:
        return max(1, self.memcap // FLOW_COST_BYTES)


class Flow:
    __slots__ = (
        "action",
        "alerted",
        "app",
        "app_proto",
        "bits",
        "dp",
        "dst",
        "end_reason",
        "exceptions",
        "flags_tc",
        "flags_ts",
        "flow_id",
        "guest",
        "guest_client",
        "guest_port",
        "icmp_tc",
        "icmp_ts",
        "ints",
        "ipver",
        "key",
        "last",
        "pclass",
        "proto",
        "queue",
        "role",
        "sp",
        "spi",
        "src",
        "start",
        "state",
        "tc_bytes",
        "tc_payload",
        "tc_pkts",
        "tcp",
        "ts_bytes",
        "ts_payload",
        "ts_pkts",
        "tx_alerted",
        "vlan",
    )

    def __init__(self, key: FlowKey, p: Packet, pclass: int) -> None:
        self.key = key
        self.vlan = p.vlan
        self.proto = p.proto
        self.ipver = p.ipver
        self.src = p.src
        self.dst = p.dst
        self.sp = p.sp
        self.dp = p.dp
        self.start = p.ts
        self.last = p.ts
        self.pclass = pclass
        self.state = FLOW_NEW
        self.ts_pkts = 0
        self.tc_pkts = 0
        self.ts_bytes = 0
        self.tc_bytes = 0
        self.flags_ts = 0
        self.flags_tc = 0
        self.tcp: TcpSession | None = None
        self.icmp_ts: tuple[int, int] | None = None
        self.icmp_tc: tuple[int, int] | None = None
        self.spi = p.spi
        self.ts_payload = 0  # transport payload bytes per direction (stream_size)
        self.tc_payload = 0
        self.alerted = False
        self.app_proto: str | None = None
        self.app: Any = None  # app-layer state (core/applayer.py), made on first data
        # Detection state, created on first use so plain flows stay small.
        self.bits: set[str] = _NO_BITS
        self.ints: dict[str, int] = _NO_INTS
        self.tx_alerted: set[tuple[int, int | None]] = _NO_TX
        # "pass": no more inspection, bypassed; "bypass": the same, set by the engine;
        # "accept": no more inspection, not bypassed; "drop": every further packet is
        # dropped (inline).
        self.action: str | None = None
        self.exceptions = 0  # bit per exception-policy cap already logged for this flow
        # Policy: the guest this flow belongs to (None: unknown), its bridge port, role.
        self.guest: str | None = None
        self.guest_port: str | None = None
        self.guest_client = False  # the guest is the client side of this flow
        self.role = "default"
        self.end_reason = ""
        self.queue: tuple[int, int] = (pclass, FLOW_NEW)
        self.flow_id = _flow_id(key, p.ts)


class _Empty(set):  # type: ignore[type-arg]
    """Shared empty placeholder: reads are free; the first write must replace it."""

    def add(self, _x: object) -> None:
        raise TypeError("replace the shared empty set before adding")


_NO_BITS: Final[set[str]] = _Empty()
_NO_TX: Final[set[tuple[int, int | None]]] = _Empty()
_NO_INTS: Final[dict[str, int]] = {}


def _flow_id(key: FlowKey, ts: float) -> int:
    """Suricata-style flow id: a positive 51-bit integer (it fits a JSON double),
    stable for the same flow and start time so replays are reproducible."""
    h = hashlib.blake2b(repr((key, ts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") & 0x7FFFFFFFFFFFF or 1


def protocol_class(proto: int) -> int:
    if proto == PROTO_TCP:
        return PC_TCP
    if proto == PROTO_UDP:
        return PC_UDP
    if proto == PROTO_ICMP or proto == PROTO_ICMPV6:
        return PC_ICMP
    return PC_DEFAULT


def flow_key(p: Packet) -> FlowKey:
    """Direction-free key: the lower (address, port) end first."""
    proto = p.proto
    if proto == PROTO_ICMP or proto == PROTO_ICMPV6:
        inner = p.icmp_inner
        if inner is not None:
            # ICMP errors belong to the flow of the packet they quote (Suricata does the
            # same so e.g. a port-unreachable is seen on the UDP flow it answers).
            iproto, isrc, isp, idst, idp = inner
            if isrc < idst or (isrc == idst and isp <= idp):
                return (p.vlan, iproto, isrc, isp, idst, idp)
            return (p.vlan, iproto, idst, idp, isrc, isp)
        a, b = p.src, p.dst
        return (p.vlan, proto, a, 0, b, 0) if a <= b else (p.vlan, proto, b, 0, a, 0)
    a, ap, b, bp = p.src, p.sp, p.dst, p.dp
    if a < b or (a == b and ap <= bp):
        return (p.vlan, proto, a, ap, b, bp)
    return (p.vlan, proto, b, bp, a, ap)


class FlowStats:
    __slots__ = ("emergency_entered", "emergency_left", "evicted", "memcap_hits", "reused",
                 "timed_out", "total")

    def __init__(self) -> None:
        self.total = 0
        self.timed_out = 0
        self.evicted = 0
        self.reused = 0
        self.memcap_hits = 0
        self.emergency_entered = 0
        self.emergency_left = 0


class FlowTableFull(Exception):
    """No flow can be made for this packet: the table is at its memcap and no flow could
    be reused (core/exception_policy.py: the flow_memcap policy decides the packet)."""


class FlowTable:
    """Owns every Flow. `lookup()` returns (flow, to_server) for a packet and hands back
    flows that ended on the way in `ended` (the engine logs and drops them)."""

    def __init__(self, config: FlowConfig | None = None) -> None:
        self.config = config or FlowConfig()
        self.flows: dict[FlowKey, Flow] = {}
        self.queues: dict[tuple[int, int], OrderedDict[FlowKey, Flow]] = {
            (pc, st): OrderedDict()
            for pc in (PC_DEFAULT, PC_TCP, PC_UDP, PC_ICMP)
            for st in (FLOW_NEW, FLOW_ESTABLISHED, FLOW_CLOSED, FLOW_BYPASSED)
        }
        self.emergency = False
        # Whether a newcomer may evict an established flow when the table is full (the
        # engine clears it unless its flow_memcap policy is "ignore").
        self.evict_established = True
        self.stats = FlowStats()
        self.ended: list[Flow] = []
        # The first packet sweeps the (empty) table: that sets the next sweep time.
        self._next_sweep = float("-inf")
        self._max = self.config.max_flows
        tmo = self.config.timeouts
        self._tmo_normal = {q: tmo[q[0]][0].for_state(q[1]) for q in self.queues}
        self._tmo_emerg = {q: tmo[q[0]][1].for_state(q[1]) for q in self.queues}
        self._recover_below = self._max * (100 - self.config.emergency_recovery) // 100
        sc = self.config.stream
        self.stream = StreamTracker(replace(sc, midstream=sc.midstream or self.config.midstream))

    def __len__(self) -> int:
        return len(self.flows)

    @property
    def memuse(self) -> int:
        return len(self.flows) * FLOW_COST_BYTES

    def timeout_of(self, f: Flow) -> float:
        # f.queue is (protocol class, state): one dict lookup per packet.
        return (self._tmo_emerg if self.emergency else self._tmo_normal)[f.queue]

    # -- per packet ---------------------------------------------------------------

    def lookup(self, p: Packet) -> tuple[Flow, bool]:
        ts = p.ts
        if ts >= self._next_sweep:
            self.sweep(ts)
        proto = p.proto
        if proto == PROTO_TCP or proto == PROTO_UDP:
            # flow_key() inlined for the common case (one call less per packet).
            a, ap, b, bp = p.src, p.sp, p.dst, p.dp
            if a < b or (a == b and ap <= bp):
                key: FlowKey = (p.vlan, proto, a, ap, b, bp)
            else:
                key = (p.vlan, proto, b, bp, a, ap)
        else:
            key = flow_key(p)
        f = self.flows.get(key)
        if f is not None:
            last = f.last
            tmo = (self._tmo_emerg if self.emergency else self._tmo_normal)[f.queue]
            # int(x) is within 1 of x (either sign), so the exact whole-second test below
            # can only hold when ts - last > tmo - 2: most packets skip both int() calls.
            if ts - last > tmo - 2 and int(ts) > int(last) + tmo:
                self._retire(f, "timeout")
                self.stats.timed_out += 1
                f = None
            elif (proto == PROTO_TCP and f.tcp is not None
                  and p.tcp_flags & _SYN_ACK_RST == TH_SYN  # is_stream_starter()
                  and (f.tcp.state >= TcpState.TIME_WAIT
                       or ((f.state == FLOW_BYPASSED or f.action == "drop")
                           and p.tcp_seq != f.tcp.cli.isn))):
                # A fresh SYN on a finished session starts a new connection on the same
                # 4-tuple (Suricata: TcpSessionReuseDoneEnough). So does a SYN with
                # another ISN on a session the engine stopped following (bypassed: the
                # kernel queued this SYN, so conntrack saw a new connection; dropped or
                # reset: its end was never seen): the old decision must not carry over
                # to the guest's next connection that happens to reuse the port.
                self._retire(f, "timeout")
                self.stats.reused += 1
                f = None
        if f is None:
            f = self._new_flow(key, p)
            to_server = True
        elif proto == PROTO_TCP or proto == PROTO_UDP:
            to_server = p.src == f.src and p.sp == f.sp
        elif proto == PROTO_ICMP or proto == PROTO_ICMPV6:
            if p.icmp_inner is not None:
                # The quoted packet went client->server when the error goes the other way.
                to_server = not (p.icmp_inner[1] == f.src and p.icmp_inner[2] == f.sp)
            else:
                to_server = p.src == f.src
        else:
            to_server = p.src == f.src and p.sp == f.sp
        if ts > f.last:
            # A packet stamped earlier than the last one (a capture's clock stepped back)
            # does not age the flow: else the next packet would find it timed out.
            f.last = ts
        self.queues[f.queue].move_to_end(key)
        return f, to_server

    def set_state(self, f: Flow, state: int) -> None:
        """Move a flow to another state (and so another timeout queue). A bypassed
        flow stays bypassed (packets already in flight must not undo it)."""
        if state == f.state or f.state == FLOW_BYPASSED:
            return
        f.state = state
        nq = (f.pclass, state)
        del self.queues[f.queue][f.key]
        self.queues[nq][f.key] = f
        f.queue = nq

    def reverse(self, f: Flow) -> None:
        """The flow's first packet came from the server (a SYN/ACK picked up midstream):
        its sender is the server, as Suricata's FlowSwap decides."""
        f.src, f.dst = f.dst, f.src
        f.sp, f.dp = f.dp, f.sp

    def mark_bypassed(self, f: Flow) -> None:
        """The kernel stops queueing this connection: the bypassed timeout applies."""
        if f.state != FLOW_BYPASSED:
            self.set_state(f, FLOW_BYPASSED)

    def update_tcp(self, f: Flow, p: Packet, to_server: bool) -> StreamUpdate | None:
        """Track the TCP session and reassemble its streams (core/stream.py). Without a
        SYN and with midstream pickup off, the session is not tracked, as in Suricata:
        state stays new and None comes back."""
        sess = f.tcp
        if sess is None:
            sess = self.stream.new_session(p, to_server)
            if sess is None:
                return None
            f.tcp = sess
        if to_server:
            f.flags_ts |= p.tcp_flags
        else:
            f.flags_tc |= p.tcp_flags
        upd = self.stream.process(sess, p, to_server)
        state = FLOW_STATE_OF[sess.state]
        if state != f.state:
            self.set_state(f, state)
        return upd

    # -- time and memory ----------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Retire every flow whose timeout has passed at packet time `now`."""
        self._next_sweep = now + self.config.sweep_interval
        limits = self._tmo_emerg if self.emergency else self._tmo_normal
        for qk, q in self.queues.items():
            if not q:
                continue
            limit = limits[qk]  # config.timeouts[pc][emergency].for_state(st)
            while q:
                f = next(iter(q.values()))
                if int(now) > int(f.last) + limit:
                    self._retire(f, "timeout")
                    self.stats.timed_out += 1
                else:
                    break
        if self.emergency and len(self.flows) < self._recover_below:
            self.emergency = False
            self.stats.emergency_left += 1

    def _new_flow(self, key: FlowKey, p: Packet) -> Flow:
        if len(self.flows) >= self._max:
            self.stats.memcap_hits += 1
            if not self.emergency:
                self.emergency = True
                self.stats.emergency_entered += 1
            self.sweep(p.ts)
            if len(self.flows) >= self._max and not self._evict_one():
                raise FlowTableFull
        pc = protocol_class(p.proto)
        f = Flow(key, p, pc)
        self.flows[key] = f
        self.queues[f.queue][key] = f
        self.stats.total += 1
        return f

    def _evict_one(self) -> bool:
        """Forced eviction when emergency timeouts freed nothing: the least recently
        seen flow, preferring ones that never got past the handshake (as a SYN flood's
        half-open flows), so established connections survive a flood longest. False:
        nothing could be evicted (only established flows, and they may not be)."""
        best: Flow | None = None
        states = ((FLOW_CLOSED, FLOW_NEW, FLOW_ESTABLISHED) if self.evict_established
                  else (FLOW_CLOSED, FLOW_NEW))
        for st in states:
            for pc in (PC_TCP, PC_UDP, PC_ICMP, PC_DEFAULT):
                q = self.queues[(pc, st)]
                if q:
                    f = next(iter(q.values()))
                    if best is None or f.last < best.last:
                        best = f
            if best is not None:
                break
        if best is None:
            return False
        self._retire(best, "forced")
        self.stats.evicted += 1
        return True

    def _retire(self, f: Flow, reason: str) -> None:
        del self.flows[f.key]
        del self.queues[f.queue][f.key]
        if f.tcp is not None:
            self.stream.release(f.tcp)  # its buffers leave the stream memcaps
        f.end_reason = reason
        self.ended.append(f)

    def drain(self) -> list[Flow]:
        out = self.ended
        self.ended = []
        return out

    def shutdown(self) -> list[Flow]:
        """End every flow (reason shutdown), oldest first, as at the end of a replay."""
        for f in sorted(self.flows.values(), key=lambda x: x.start):
            f.end_reason = "shutdown"
            if f.tcp is not None:
                self.stream.release(f.tcp)
            self.ended.append(f)
        self.flows.clear()
        for q in self.queues.values():
            q.clear()
        return self.drain()

    def __iter__(self) -> Iterator[Flow]:
        return iter(self.flows.values())
