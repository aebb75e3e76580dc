"""TCP session tracking and per-direction stream reassembly (sans-I/O).

One `StreamTracker` per flow table holds the configuration, the global memory accounting
and the counters; one `TcpSession` per TCP flow holds the connection state and a `_Half`
for each direction (named for its *sender*). `StreamTracker.process(session, packet,
to_server)` validates a segment, moves the state machine and returns a `StreamUpdate`
with the new in-order bytes of each direction.

What the receiver will see is what gets delivered:
- all sequence arithmetic is modulo 2**32 (RFC 9293 section 3.4); internally every byte
  gets an unbounded *stream offset*, so wrap-around never reaches the buffers;
- in-order data is delivered at once (the inline view: a packet is decided before the
  receiver gets it); data after a hole waits in a sorted out-of-order list, bounded per
  direction and by a global memcap;
- overlapping out-of-order data is resolved by the receiving host's policy, chosen per
  destination network like Suricata's `host-os-policy` (stream-tcp-list.c,
  DoHandleDataOverlap: the table `NEW_WINS` below says when the newer bytes win);
- a retransmission whose bytes differ from bytes already delivered (inspected) raises
  Suricata's `stream.reassembly_overlap_different_data` and sets `differs`: the receiver
  keeps the first copy, so a difference means someone is playing games (or we saw a
  packet the receiver did not, e.g. a bad-checksum or TTL-expiring insertion); in inline
  mode the engine drops such a segment, as Suricata inline never lets a packet through
  that differs from what it inspected;
- RST is honoured only in window, FIN/ACK drive the close states, data outside the
  receiver's window and PAWS-failing segments (RFC 7323 section 5) are not reassembled;
- past `depth` bytes a direction is "inspection done": nothing more is delivered and
  the engine may bypass the flow once both directions are done.

The state machine is the table `TRANSITIONS` (DESIGN.md principle 3); state names and
the flow-state mapping are Suricata's (stream-tcp-private.h, StreamTcpPacketSetState).

Anomaly names are Suricata's `stream.*` event names where Suricata has one; the ones it
lacks are ours and listed in `APPLIANCE_EVENTS`.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple

from appliance.core.decode import TH_ACK, TH_FIN, TH_RST, TH_SYN, TH_URG, Packet


class TcpState(IntEnum):
    """Suricata's TCP states (stream-tcp-private.h), in its order: comparisons such as
    `state >= LAST_ACK` mean "closing or closed" as in Suricata."""

    NONE = 0
    SYN_SENT = 2
    SYN_RECV = 3
    ESTABLISHED = 4
    FIN_WAIT1 = 5
    FIN_WAIT2 = 6
    TIME_WAIT = 7
    LAST_ACK = 8
    CLOSE_WAIT = 9
    CLOSING = 10
    CLOSED = 11


# EVE names of the states (as Suricata's flow log prints them).
STATE_NAMES: Final = {
    TcpState.NONE: "none",
    TcpState.SYN_SENT: "syn_sent",
    TcpState.SYN_RECV: "syn_recv",
    TcpState.ESTABLISHED: "established",
    TcpState.FIN_WAIT1: "fin_wait1",
    TcpState.FIN_WAIT2: "fin_wait2",
    TcpState.TIME_WAIT: "time_wait",
    TcpState.LAST_ACK: "last_ack",
    TcpState.CLOSE_WAIT: "close_wait",
    TcpState.CLOSING: "closing",
    TcpState.CLOSED: "closed",
}

# Flow-level state used for timeouts (Suricata's StreamTcpGetFlowState): handshake
# states are "new", data and half-closed states "established", the rest "closed".
FLOW_NEW: Final = 0
FLOW_ESTABLISHED: Final = 1
FLOW_CLOSED: Final = 2
# Inline, once the kernel was asked to stop queueing the connection (a bypass verdict):
# the engine will not see it end, so it times out on the shorter "bypassed" timeout.
FLOW_BYPASSED: Final = 3

FLOW_STATE_OF: Final = {
    TcpState.NONE: FLOW_NEW,
    TcpState.SYN_SENT: FLOW_NEW,
    TcpState.SYN_RECV: FLOW_NEW,
    TcpState.ESTABLISHED: FLOW_ESTABLISHED,
    TcpState.FIN_WAIT1: FLOW_ESTABLISHED,
    TcpState.FIN_WAIT2: FLOW_ESTABLISHED,
    TcpState.CLOSING: FLOW_ESTABLISHED,
    TcpState.CLOSE_WAIT: FLOW_ESTABLISHED,
    TcpState.LAST_ACK: FLOW_CLOSED,
    TcpState.TIME_WAIT: FLOW_CLOSED,
    TcpState.CLOSED: FLOW_CLOSED,
}


def is_stream_starter(flags: int) -> bool:
    """A SYN without ACK: the packet that may start (or reuse) a TCP session."""
    return flags & (TH_SYN | TH_ACK | TH_RST) == TH_SYN


# -- sequence space ---------------------------------------------------------------------

MASK32: Final = 0xFFFFFFFF
HALF32: Final = 0x80000000


def seq_diff(a: int, b: int) -> int:
    """`a - b` in sequence space, in [-2**31, 2**31) (RFC 9293 3.4 / RFC 1982)."""
    return ((a - b + HALF32) & MASK32) - HALF32


# -- segment classes and the state table ---------------------------------------------------

SEG_SYN: Final = 0  # SYN without ACK
SEG_SYNACK: Final = 1
SEG_ACK: Final = 2  # ACK (with or without data), no SYN/FIN/RST
SEG_ACK_FIN: Final = 3  # an ACK that acknowledges the peer's FIN
SEG_FIN: Final = 4
SEG_FIN_ACK_FIN: Final = 5  # a FIN that also acknowledges the peer's FIN
SEG_RST: Final = 6
SEG_OTHER: Final = 7  # no ACK, no SYN/FIN/RST: ignored for state

# When (state, class, side) has no entry, the plainer class is tried.
_FALLBACK: Final = {SEG_ACK_FIN: SEG_ACK, SEG_FIN_ACK_FIN: SEG_FIN}

S = TcpState
C, V = True, False  # from the client / from the server
# (state, segment class, from client?) -> next state, for segments that passed
# validation (checksum, PAWS, window, RST in window). Missing entries keep the state.
# As Suricata (stream-tcp.c StreamTcpHandleFin and the per-state handlers), states are
# seen from the server: the client's FIN moves to CLOSE_WAIT, the server's to FIN_WAIT1.
TRANSITIONS: Final[dict[tuple[TcpState, int, bool], TcpState]] = {
    (S.NONE, SEG_SYN, C): S.SYN_SENT,
    (S.SYN_SENT, SEG_SYN, C): S.SYN_SENT,  # retransmitted SYN
    (S.SYN_SENT, SEG_SYNACK, V): S.SYN_RECV,
    (S.SYN_SENT, SEG_SYN, V): S.SYN_RECV,  # simultaneous open (RFC 9293 3.5, figure 8)
    (S.SYN_RECV, SEG_SYNACK, V): S.SYN_RECV,  # retransmitted SYN/ACK
    (S.SYN_RECV, SEG_SYNACK, C): S.SYN_RECV,  # simultaneous open: the client's SYN/ACK
    (S.SYN_RECV, SEG_ACK, C): S.ESTABLISHED,
    (S.SYN_RECV, SEG_ACK, V): S.ESTABLISHED,  # simultaneous open completes
    (S.SYN_RECV, SEG_FIN, C): S.CLOSE_WAIT,
    (S.SYN_RECV, SEG_FIN, V): S.FIN_WAIT1,
    (S.ESTABLISHED, SEG_FIN, C): S.CLOSE_WAIT,
    (S.ESTABLISHED, SEG_FIN, V): S.FIN_WAIT1,
    (S.FIN_WAIT1, SEG_ACK_FIN, C): S.FIN_WAIT2,
    (S.FIN_WAIT1, SEG_FIN, C): S.CLOSING,
    (S.FIN_WAIT1, SEG_FIN_ACK_FIN, C): S.TIME_WAIT,
    (S.FIN_WAIT2, SEG_FIN, C): S.TIME_WAIT,
    (S.CLOSE_WAIT, SEG_FIN, V): S.LAST_ACK,
    # Suricata closes the session on the last ACK (StreamTcpPacketStateLastAck) and on
    # any ACK in TIME_WAIT; checked against its flow log on ndpi-mixed and netflix.
    (S.LAST_ACK, SEG_ACK_FIN, C): S.CLOSED,
    (S.TIME_WAIT, SEG_ACK, C): S.CLOSED,
    (S.TIME_WAIT, SEG_ACK, V): S.CLOSED,
    (S.CLOSING, SEG_ACK_FIN, C): S.TIME_WAIT,
    (S.CLOSING, SEG_ACK_FIN, V): S.TIME_WAIT,
}
for _st in TcpState:
    if _st is not S.NONE:
        # An acceptable RST closes any tracked session (RFC 9293 3.10.7.4); whether it
        # is acceptable (in window) is checked before the table is consulted.
        TRANSITIONS[(_st, SEG_RST, C)] = S.CLOSED
        TRANSITIONS[(_st, SEG_RST, V)] = S.CLOSED

# Suricata's `stream.async-oneside`: the client's ACK after its SYN completes the
# handshake when the server's packets take another path.
ASYNC_TRANSITIONS: Final = {(S.SYN_SENT, SEG_ACK, C): S.ESTABLISHED}


def next_state(state: TcpState, seg: int, from_client: bool) -> TcpState:
    nxt = TRANSITIONS.get((state, seg, from_client))
    if nxt is None and seg in _FALLBACK:
        nxt = TRANSITIONS.get((state, _FALLBACK[seg], from_client))
    return state if nxt is None else nxt


# Module constants for the per-packet path: an enum member looked up on its class goes
# through a descriptor (~50 ns each in CPython 3.11).
_EST: Final = TcpState.ESTABLISHED
_CTRL: Final = TH_SYN | TH_RST | TH_FIN | TH_ACK | TH_URG


# -- overlap policies ---------------------------------------------------------------------

# How a new out-of-order segment overlaps one already held (Suricata's
# DoHandleDataOverlap distinguishes exactly these cases).
OV_SAME_START_SHORTER: Final = 0  # same start, new ends first: old always wins
OV_SAME_START_LONGER: Final = 1
OV_SAME: Final = 2  # same start and end
OV_BEFORE_ENDS_INSIDE: Final = 3  # new starts before, ends inside the old one
OV_BEFORE_COVERS: Final = 4  # new starts before, ends at or after the old end
OV_AFTER_ENDS_AFTER: Final = 5  # new starts inside, ends after the old end
OV_AFTER_INSIDE: Final = 6  # new starts inside, ends at or before the old end

_ALL: Final = frozenset(range(7))
_BSD: Final = frozenset({OV_BEFORE_ENDS_INSIDE, OV_BEFORE_COVERS})
_SOLARIS: Final = frozenset({OV_SAME_START_LONGER, OV_SAME, OV_BEFORE_COVERS,
                             OV_AFTER_ENDS_AFTER})

# Target-based reassembly (Novak & Sturges, "Target-Based TCP Stream Reassembly", 2007),
# as Suricata applies it: the cases in which the NEW segment's bytes win. Everything else
# keeps the bytes that arrived first.
NEW_WINS: Final[dict[str, frozenset[int]]] = {
    "first": frozenset(),
    "last": _ALL,
    "bsd": _BSD,
    "hpux10": _BSD,
    "irix": _BSD,
    "macos": _BSD,
    "windows": _BSD,
    "windows2k3": _BSD,
    "vista": frozenset(),
    "linux": _BSD | {OV_SAME_START_LONGER},
    "old-linux": _BSD | {OV_SAME_START_LONGER, OV_SAME},
    "solaris": _SOLARIS,
    "hpux11": _SOLARIS,
}
POLICIES: Final = tuple(NEW_WINS)


def overlap_case(new_start: int, new_end: int, old_start: int, old_end: int) -> int:
    if new_start == old_start:
        if new_end < old_end:
            return OV_SAME_START_SHORTER
        return OV_SAME_START_LONGER if new_end > old_end else OV_SAME
    if new_start < old_start:
        return OV_BEFORE_ENDS_INSIDE if new_end < old_end else OV_BEFORE_COVERS
    return OV_AFTER_ENDS_AFTER if new_end > old_end else OV_AFTER_INSIDE


# -- checksums ------------------------------------------------------------------------------


def l4_checksum(src: bytes, dst: bytes, proto: int, segment: bytes | memoryview) -> int:
    """The Internet checksum (RFC 1071) of a TCP or UDP segment under the IPv4 (RFC 9293
    3.1, RFC 768) or IPv6 (RFC 8200 8.1) pseudo-header, computed with the checksum field
    as it is in `segment` (zero it first to compute the value to store).

    A ones'-complement sum of 16-bit words is the value modulo 0xFFFF (2**16 = 1 mod
    0xFFFF), so one big-integer conversion replaces the word loop: ~1 us for 1,460 bytes.
    """
    n = len(segment)
    body = int.from_bytes(segment, "big")
    if n & 1:
        body <<= 8  # pad the odd byte with zero (RFC 1071)
    r = (int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + n + body) % 0xFFFF
    return 0xFFFF - r if r else 0


CSUM_OK: Final = 0
CSUM_BAD: Final = 1
CSUM_OFFLOADED: Final = 2


def check_l4_checksum(p: Packet, offload_first: bool = False) -> int:
    """CSUM_OK, CSUM_BAD, or CSUM_OFFLOADED when the field holds just the pseudo-header
    partial sum (not yet computed: packets from a local veth reach NFQUEUE like that).

    offload_first: look for the partial sum before summing the segment, for callers that
    accept an offloaded checksum anyway (`auto`): a GSO super-packet handed over whole
    (netlink transport) is ~64 KiB, ~130 us to sum, and always partial."""
    data = p.data
    off = p.l4_off
    end = off + ((data[off + 12] >> 4) << 2) + len(p.payload)
    field = (data[off + 16] << 8) | data[off + 17]
    n = end - off
    # The pseudo-header sum, once for both tests. Folded (modulo 0xFFFF) it is what Linux
    # leaves in the checksum field of a CHECKSUM_PARTIAL packet (veth/tap offload: the
    # NIC, or nobody, completes it). With the segment added it is l4_checksum()'s sum,
    # which gives 0 or 0xFFFF exactly when that is 0 modulo 0xFFFF.
    pseudo = int.from_bytes(p.src, "big") + int.from_bytes(p.dst, "big") + p.proto + n
    partial = field % 0xFFFF == pseudo % 0xFFFF
    if partial and offload_first:
        return CSUM_OFFLOADED
    body = int.from_bytes(memoryview(data)[off:end], "big")
    if n & 1:
        body <<= 8  # pad the odd byte with zero (RFC 1071)
    if (pseudo + body) % 0xFFFF == 0:
        return CSUM_OK
    return CSUM_OFFLOADED if partial else CSUM_BAD


# `checksum_validation: auto` (Suricata's checksum-checks auto, util-checksum.c
# ChecksumAutoModeCheck): the first CHECKSUM_SAMPLE segments are validated; if more than
# 1 in CHECKSUM_BAD_RATIO of them are bad, the capture evidently has offloaded checksums
# that were never filled in and validation stops for the rest of the run. Segments that
# carry exactly the Linux partial (pseudo-header) sum are offloaded, not bad, in `auto`
# mode from the first packet, so local veth traffic is never thrown away; in `yes` mode
# they are bad like any other.
CHECKSUM_SAMPLE: Final = 1000
CHECKSUM_BAD_RATIO: Final = 10


# -- configuration --------------------------------------------------------------------------

KIB: Final = 1024
MIB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StreamConfig:
    # Bytes per direction delivered for inspection; past it the direction is
    # "inspection done" (Suricata stream.reassembly.depth default 1mb). 0: unlimited.
    depth: int = 1 * MIB
    # Session state memory (Suricata stream.memcap default 64mb): no new session past it.
    memcap: int = 64 * MIB
    # Buffered segment bytes, out-of-order and kept-for-retransmission, all flows
    # together (Suricata stream.reassembly.memcap default 256mb).
    reassembly_memcap: int = 256 * MIB
    # Out-of-order bytes held per direction. A receiver never holds more than its window
    # and Linux caps a socket's receive buffer at 6 MiB by default (tcp_rmem); 1 MiB
    # covers the windows seen in practice while one flow cannot take the global memcap.
    max_ooo_bytes: int = 1 * MIB
    # Delivered but not yet acknowledged bytes kept per direction to compare
    # retransmissions with (the receiver keeps the first copy; a differing copy is an
    # anomaly). 256 KiB covers a Linux default initial receive window (64 KiB) four
    # times over; older unacknowledged data is not compared (counted, never an error).
    retransmit_keep: int = 256 * KIB
    midstream: bool = False  # Suricata stream.midstream default
    async_oneside: bool = False  # Suricata stream.async-oneside default
    # Inline (IPS): a segment overlapping already-accepted data with different bytes is
    # never taken (old data wins, `differs` tells the engine to drop it), as Suricata
    # inline. Off (IDS/replay): out-of-order overlaps resolve by host OS policy.
    inline: bool = False
    checksum_validation: str = "auto"  # auto | yes | no
    # Suricata's host-os-policy: (policy, networks) pairs; longest prefix wins.
    host_os_policy: tuple[tuple[str, tuple[str, ...]], ...] = ()
    default_policy: str = "bsd"  # Suricata's default when no host-os-policy matches
    # Urgent data (RFC 9293 3.8.5, RFC 6093). "oob": the byte before the urgent pointer
    # is taken out of the stream, as a Linux, BSD or Windows socket without
    # SO_OOBINLINE (the default) delivers it; "inline": it stays in the stream (an
    # application that set SO_OOBINLINE, and Suricata's default). Either way the
    # segment raises `stream.urgent_data`: HTTP and TLS never use it.
    urgent_policy: str = "oob"


# -- what one segment produced ----------------------------------------------------------------


class StreamUpdate(NamedTuple):
    """New in-order bytes per direction and what happened. A NamedTuple, not a frozen
    dataclass, because one is built per data segment (see events.PacketIn)."""

    to_server: bytes = b""
    to_client: bytes = b""
    events: tuple[str, ...] = ()
    # The to-server / to-client direction reached depth: inspection done (the current
    # state, on every update from then on; both done: the engine may bypass the flow).
    done_ts: bool = False
    done_tc: bool = False
    # The segment overlaps already inspected data with different bytes: never deliver it
    # (inline: drop the packet). Nothing of such a segment was taken in inline mode.
    differs: bool = False
    gap_ts: bool = False  # bytes were skipped (never seen) before `to_server`
    gap_tc: bool = False
    # The segment could not be buffered (per-flow or global memcap): the receiver may
    # get bytes we never inspect; inline policy may drop it.
    memcap_drop: bool = False
    # Bytes held out of order behind a hole, handed over when an accepted RST ends the
    # session (`StreamTracker._flush_held`): one chunk per run of contiguous bytes, each
    # after a hole. For stream (raw) rules only, never for the app layer, which cannot
    # cross a hole nobody acknowledged. Suricata's raw reassembly likewise inspects the
    # unacknowledged data at the end of a session, moving past holes without a gap
    # event (suricata-verify tcp-rst-unacked-stream-03/04/07/08).
    raw_ts: tuple[bytes, ...] = ()
    raw_tc: tuple[bytes, ...] = ()


EMPTY: Final = StreamUpdate()

EV_OVERLAP_DIFF: Final = "stream.reassembly_overlap_different_data"
EV_OUT_OF_WINDOW: Final = "stream.est_packet_out_of_window"
EV_BAD_TS: Final = "stream.pkt_invalid_timestamp"
EV_SYNACK_WRONG_ACK: Final = "stream.3whs_synack_with_wrong_ack"
EV_GAP: Final = "stream.reassembly_seq_gap"
EV_DEPTH: Final = "stream.reassembly_depth_reached"
# The sender of an RST carrying a TCP MD5 (RFC 2385) or TCP-AO (RFC 5925) option went on
# sending: the receiver evidently discarded the RST (its signature did not verify), so it
# was likely injected (Suricata's event; suricata-verify security-4710-01/02).
EV_RST_INJECT: Final = "stream.suspected_rst_inject"
# Ours (Suricata raises no event for these; it ignores the packet or only counts it):
EV_RST_INVALID: Final = "stream.rst_invalid"  # RST outside the receiver's window: ignored
EV_BAD_CSUM: Final = "stream.invalid_checksum"  # bad TCP checksum: never reassembled
EV_NO_ACK: Final = "stream.pkt_without_ack"  # data without ACK after the handshake
EV_MEMCAP: Final = "stream.reassembly_memcap_drop"  # segment not buffered: memcap
# A segment whose TTL / hop limit is below the lowest its sender used in the handshake:
# it may expire before the receiver (TTL-expiring chaff); see `_hold_weak`.
EV_LOW_TTL: Final = "stream.pkt_ttl_below_flow"
EV_URGENT: Final = "stream.urgent_data"  # URG with data: see StreamConfig.urgent_policy
APPLIANCE_EVENTS: Final = frozenset({EV_RST_INVALID, EV_BAD_CSUM, EV_NO_ACK, EV_MEMCAP,
                                     EV_LOW_TTL, EV_URGENT})
# Urgent bytes remembered per direction (a receiver keeps one urgent mark at a time;
# more than a few is only an attempt to make us keep state).
MAX_URGENT_MARKS: Final = 16

# Estimated bytes per buffered entry on top of its data (sys.getsizeof: a 3-slot
# segment object 56 + bytearray 57 + two ints 56; a kept (offset, bytes) pair tuple 56 +
# int 28 + bytes header 33), rounded up: what counts against the memcaps.
SEGMENT_OVERHEAD: Final = 200
KEPT_OVERHEAD: Final = 120
# Estimated bytes of one session (TcpSession + two _Half, measured with tracemalloc in
# tests/core/test_stream.py) for stream.memcap.
SESSION_COST_BYTES: Final = 1200
# The largest window RFC 7323 allows (2**16 << 14): the bound used when the receiver's
# window is unknown (one-sided or midstream sessions).
MAX_WINDOW: Final = 1 << 30


class _Seg:
    """An out-of-order segment: its original [start, end) stream offsets and its bytes
    after overlap resolution (kept current when later segments overwrite part of it)."""

    __slots__ = ("data", "end", "start")

    def __init__(self, start: int, data: bytearray) -> None:
        self.start = start
        self.end = start + len(data)
        self.data = data

    def __lt__(self, other: _Seg) -> bool:
        return (self.start, self.end) < (other.start, other.end)


class _Half:
    """One direction of a connection, named for its sender: what it sent (sequence
    space, reassembly) and what it advertised about the other direction (ack, window)."""

    __slots__ = ("ack", "ack_seen", "done", "fin_seq", "isn", "kept", "kept_bytes",
                 "kept_off", "min_ttl", "new_wins", "nxt_off", "nxt_seq", "ooo", "ooo_bytes",
                 "ooo_maxlen", "sackok", "started", "syn_data", "ts", "tsval", "urg", "weak",
                 "weak_bytes", "win", "wscale", "wscale_offer")

    def __init__(self, new_wins: frozenset[int]) -> None:
        self.started = False  # sequence numbers known (SYN seen, or picked up)
        self.isn = 0
        self.nxt_seq = 0  # next expected sequence number (reassembly point)
        self.nxt_off = 0  # its stream offset = bytes delivered so far
        self.syn_data = b""  # data on a SYN, held until the SYN/ACK says if it was taken
        self.ooo: list[_Seg] = []  # sorted by (start, end)
        self.ooo_bytes = 0  # accounted bytes of `ooo` (with SEGMENT_OVERHEAD)
        self.ooo_maxlen = 0  # longest held segment: bounds the overlap search
        self.kept: deque[tuple[int, bytes]] | None = None  # delivered, not yet acked
        self.kept_off = 0
        self.kept_bytes = 0  # accounted bytes of `kept` (with KEPT_OVERHEAD)
        self.ack = 0  # last ACK this side sent (acknowledging the other direction)
        self.ack_seen = False
        self.win = 0  # window this side advertised, scaled (bytes)
        self.wscale = 0  # shift applied to this side's window fields (RFC 7323 2.3)
        self.wscale_offer = -1  # the shift offered on its SYN, -1: no option
        self.ts = False  # timestamps option on its SYN
        self.tsval = 0  # TS.Recent for this sender (RFC 7323 4.3)
        self.sackok = False
        self.fin_seq = -1  # sequence number of its FIN, -1 before one
        self.done = False  # depth reached: inspection done for this direction
        self.new_wins = new_wins  # the receiving host's overlap policy
        # Lowest TTL / hop limit of this sender's handshake packets (0: unknown, or
        # inline, where it is not needed: see `StreamTracker._hold_weak`).
        self.min_ttl = 0
        # "Weak" data: bytes the receiver may not have taken (TTL below min_ttl, a byte
        # sent into a zero window), as (stream offset, bytes) in arrival order. Never
        # delivered unless the receiver acknowledges them; real bytes always win.
        self.weak: list[tuple[int, bytes]] | None = None
        self.weak_bytes = 0  # accounted bytes of `weak` (with SEGMENT_OVERHEAD)
        # Stream offsets of urgent bytes not yet delivered (urgent_policy "oob").
        self.urg: list[int] | None = None

    def start_at(self, seq: int) -> None:
        self.started = True
        self.nxt_seq = seq & MASK32
        self.nxt_off = 0


class TcpSession:
    """Per-flow TCP state (lives on the Flow). Created by the flow table when the flow
    starts with a SYN, or on any ACK when midstream pickup is on."""

    __slots__ = ("cli", "insp_tc", "insp_ts", "leftover", "live", "midstream", "rst_auth", "srv",
                 "state", "ts_ok", "win_ok")

    def __init__(self, state: TcpState, cli_policy: frozenset[int],
                 srv_policy: frozenset[int]) -> None:
        self.state = state
        # Data from the client lands on the server: the server host's policy applies.
        self.cli = _Half(srv_policy)
        self.srv = _Half(cli_policy)
        self.midstream = False
        self.live = True  # counted in the tracker's active sessions until released
        self.ts_ok = False  # both SYNs carried timestamps: PAWS applies (RFC 7323 3.2)
        self.win_ok = False  # both SYNs seen: window scale known, window checks apply
        # The last bytes of each direction's reassembled stream already inspected by
        # stream rules (detection keeps them here so they go with the session): a match
        # may span them and the next chunk (core/detect/signatures.py STREAM_TAIL).
        self.insp_ts = b""
        self.insp_tc = b""
        # An accepted RST that carried an MD5/AO signature we cannot verify: (the state
        # before it, sent by the client?). If its sender goes on sending, the receiver
        # ignored it: the state comes back and EV_RST_INJECT is raised.
        self.rst_auth: tuple[TcpState, bool] | None = None
        # What was still held behind holes when the session was released (raw_ts /
        # raw_tc only): the engine gives it to stream rules with the flow's end, as
        # Suricata inspects unacknowledged data at flow timeout, then drops it.
        self.leftover: StreamUpdate | None = None


class StreamStats:
    """Counters named as Suricata's `stats.tcp` (schema.json) plus a few of ours."""

    __slots__ = ("ack_unseen_data", "checksum_auto_disabled", "checksum_checked",
                 "checksum_offloaded", "invalid_checksum", "midstream_pickups", "overlap",
                 "overlap_diff_data", "reassembly_gap", "rst", "rst_invalid",
                 "segment_memcap_drop", "sessions", "ssn_memcap_drop",
                 "stream_depth_reached", "syn", "synack")

    def __init__(self) -> None:
        self.sessions = 0
        self.ssn_memcap_drop = 0
        self.midstream_pickups = 0
        self.syn = 0
        self.synack = 0
        self.rst = 0
        self.rst_invalid = 0
        self.invalid_checksum = 0
        self.checksum_checked = 0
        self.checksum_offloaded = 0
        self.checksum_auto_disabled = 0
        self.overlap = 0
        self.overlap_diff_data = 0
        self.segment_memcap_drop = 0
        self.stream_depth_reached = 0
        self.reassembly_gap = 0
        self.ack_unseen_data = 0


_CSUM_MODES: Final = ("auto", "yes", "no")
_URGENT_POLICIES: Final = ("oob", "inline")


class StreamTracker:
    """Global stream state: configuration, memory accounting, counters, policy lookup."""

    def __init__(self, config: StreamConfig | None = None) -> None:
        cfg = self.config = config or StreamConfig()
        if cfg.checksum_validation not in _CSUM_MODES:
            raise ValueError(f"checksum_validation: {cfg.checksum_validation!r} is not one "
                             f"of {', '.join(_CSUM_MODES)}")
        if cfg.urgent_policy not in _URGENT_POLICIES:
            raise ValueError(f"urgent_policy: {cfg.urgent_policy!r} is not one of "
                             f"{', '.join(_URGENT_POLICIES)}")
        if cfg.default_policy not in NEW_WINS:
            raise ValueError(f"unknown host OS policy {cfg.default_policy!r}")
        nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, frozenset[int]]] = []
        for name, cidrs in cfg.host_os_policy:
            if name not in NEW_WINS:
                raise ValueError(f"unknown host OS policy {name!r} "
                                 f"(known: {', '.join(POLICIES)})")
            for c in cidrs:
                nets.append((ipaddress.ip_network(c, strict=False), NEW_WINS[name]))
        nets.sort(key=lambda n: -n[0].prefixlen)  # longest prefix first
        self._nets = nets
        self._default = NEW_WINS[cfg.default_policy]
        self._policy_cache: dict[bytes, frozenset[int]] = {}
        self.stats = StreamStats()
        self.active = 0  # live sessions
        self.reassembly_memuse = 0  # buffered bytes of every session
        self._csum = cfg.checksum_validation != "no"
        self._csum_auto = cfg.checksum_validation == "auto"
        self._csum_bad_sample = 0
        # Set by the engine for each packet: the capture vouches for its transport
        # checksum (NFQUEUE: the kernel verified it or leaves it to the device). Under
        # `auto` such a segment is not summed again (64 KiB GSO super-packets cost
        # ~40% of their inspection time to sum in Python).
        self.csum_trusted = False
        self._depth = cfg.depth if cfg.depth > 0 else 1 << 62
        self._keep_max = cfg.retransmit_keep
        self._reasm_cap = cfg.reassembly_memcap

    # -- sessions -------------------------------------------------------------------------

    @property
    def memuse(self) -> int:
        return self.active * SESSION_COST_BYTES

    def policy_for(self, addr: bytes) -> frozenset[int]:
        """The overlap policy of the host at `addr` (Suricata's host-os-policy)."""
        pol = self._policy_cache.get(addr)
        if pol is None:
            pol = self._default
            if self._nets:
                ip = ipaddress.ip_address(addr)
                for net, p in self._nets:
                    if ip.version == net.version and ip in net:
                        pol = p
                        break
            # Bounded: one entry per distinct host; cleared rather than grown past this
            # (a scan would otherwise fill it with one-off addresses).
            if len(self._policy_cache) >= POLICY_CACHE_MAX:
                self._policy_cache.clear()
            self._policy_cache[addr] = pol
        return pol

    def new_session(self, p: Packet, to_server: bool) -> TcpSession | None:
        """A session for a flow seen without one: on a SYN from the client, or on any
        ACK with midstream pickup on. None: leave the flow untracked (Suricata's default
        without a SYN) or the session memcap is reached."""
        flags = p.tcp_flags
        starter = to_server and is_stream_starter(flags)
        if not starter and not (self.config.midstream and flags & TH_ACK
                                and not flags & TH_RST):
            return None
        if (self.active + 1) * SESSION_COST_BYTES > self.config.memcap:
            self.stats.ssn_memcap_drop += 1
            return None
        cli, srv = (p.src, p.dst) if to_server else (p.dst, p.src)
        sess = TcpSession(TcpState.NONE, self.policy_for(cli), self.policy_for(srv))
        self.active += 1
        self.stats.sessions += 1
        if not starter:
            # Midstream pickup (Suricata stream.midstream): both directions start here,
            # the sender's at this segment's sequence number, the receiver's at its ACK.
            # Window scale and timestamps were negotiated out of sight: no window or
            # PAWS checks on this session.
            self.stats.midstream_pickups += 1
            sess.midstream = True
            sess.state = TcpState.ESTABLISHED
            s, r = (sess.cli, sess.srv) if to_server else (sess.srv, sess.cli)
            s.start_at(p.tcp_seq + 1 if flags & TH_SYN else p.tcp_seq)
            r.start_at(p.tcp_ack)
        return sess

    def release(self, sess: TcpSession) -> None:
        """Give back a finished session's memory (the flow table calls this when the
        flow is retired)."""
        if sess.live:
            sess.live = False
            self.active -= 1
            if sess.cli.ooo or sess.srv.ooo:
                # Moved out of the memcaps with the rest; the engine takes it at once.
                raw_ts, raw_tc = self._flush_held(sess.cli), self._flush_held(sess.srv)
                if raw_ts or raw_tc:
                    sess.leftover = StreamUpdate(raw_ts=raw_ts, raw_tc=raw_tc)
            for h in (sess.cli, sess.srv):
                self.reassembly_memuse -= h.ooo_bytes + h.kept_bytes + h.weak_bytes
                h.ooo = []
                h.kept = None
                h.weak = None
                h.ooo_bytes = h.kept_bytes = h.ooo_maxlen = h.weak_bytes = 0

    # -- per segment --------------------------------------------------------------------------

    def process(self, sess: TcpSession, p: Packet, to_server: bool) -> StreamUpdate:
        flags = p.tcp_flags
        if p.l3_discard:
            # The receiver's IP layer drops it (the decoder raised the anomaly).
            return StreamUpdate(done_ts=sess.cli.done, done_tc=sess.srv.done)
        if self._csum and not (self.csum_trusted and self._csum_auto) \
                and not self._checksum_ok(p):
            return StreamUpdate(events=(EV_BAD_CSUM,), done_ts=sess.cli.done,
                                done_tc=sess.srv.done)
        if to_server:
            s, r = sess.cli, sess.srv
        else:
            s, r = sess.srv, sess.cli
        state = sess.state
        seq = p.tcp_seq
        payload = p.payload

        # Fast path: an in-order ACK segment on an established session with nothing
        # held out of order. No sorting, no copy: the payload object itself is
        # delivered and kept for the retransmission check.
        if (state is _EST and flags & _CTRL == TH_ACK and seq == s.nxt_seq and not s.ooo
                and not s.done and p.ttl >= s.min_ttl and s.urg is None):
            opts = p.tcp_opts
            tsval = None if opts is None else opts.tsval
            n = len(payload)
            # seq_diff() inlined: seq_diff(a, b) >= 0 is ((a - b + HALF32) & MASK32) >= HALF32
            # and seq_diff(a, b) <= 0 is ((a - b + HALF32) & MASK32) <= HALF32.
            if (tsval is None or not sess.ts_ok
                    or ((tsval - s.tsval + HALF32) & MASK32) >= HALF32) and not (
                    n and sess.win_ok and r.ack_seen
                    and ((((r.ack + r.win) & MASK32) - seq + HALF32) & MASK32) <= HALF32):
                if tsval is not None:
                    s.tsval = tsval
                ack = p.tcp_ack
                s.ack = ack
                s.win = p.tcp_win << s.wscale
                s.ack_seen = True
                out_tc = b""
                gap = False
                if r.started:
                    d = ((ack - r.nxt_seq + HALF32) & MASK32) - HALF32
                    kept = r.kept
                    if d > 0 or r.fin_seq >= 0 or r.weak is not None:
                        if d > 0 or (kept and kept[0][0] + len(kept[0][1]) <= r.nxt_off + d):
                            out_tc, gap = self._acked(r, ack)
                    elif kept and kept[0][0] + len(kept[0][1]) <= r.nxt_off + d:
                        # _acked() when it has only kept bytes to forget (no FIN, no weak
                        # data, nothing acknowledged past the reassembly point).
                        self._forget_acked(r, r.nxt_off + d)
                if not n:
                    if out_tc or gap or r.done:
                        return self._result(to_server, b"", out_tc, None, False, gap, s, r)
                    return EMPTY
                off = s.nxt_off
                if n < self._depth - off and not out_tc and not gap:
                    s.nxt_seq = (seq + n) & MASK32
                    s.nxt_off = off + n
                    self._keep(s, off, payload)
                    if to_server:
                        return StreamUpdate(payload, b"", (), False, r.done)
                    return StreamUpdate(b"", payload, (), r.done)
                return self._result(to_server, self._deliver_inorder(s, payload), out_tc,
                                    None, False, gap, s, r)
        u = self._slow(sess, p, to_server, s, r)
        if s.urg is not None or r.urg is not None:
            u = self._cut_urgent(u, to_server, s, r)
        if s.done or r.done:
            # done_ts / done_tc always tell the current state of each direction.
            ts_done, tc_done = (s.done, r.done) if to_server else (r.done, s.done)
            if u.done_ts != ts_done or u.done_tc != tc_done:
                u = u._replace(done_ts=ts_done, done_tc=tc_done)
        return u

    def _result(self, to_server: bool, mine: bytes, theirs: bytes, events: list[str] | None,
                differs: bool, their_gap: bool, s: _Half, r: _Half, my_gap: bool = False,
                memcap: bool = False) -> StreamUpdate:
        """Build the update: `mine` flows in the packet's direction, `theirs` the other way
        (released by this packet's ACK closing a gap)."""
        ev = tuple(events) if events else ()
        if to_server:
            return StreamUpdate(mine, theirs, ev, s.done, r.done, differs, my_gap, their_gap,
                                memcap)
        return StreamUpdate(theirs, mine, ev, r.done, s.done, differs, their_gap, my_gap,
                            memcap)

    def _checksum_ok(self, p: Packet) -> bool:
        st = self.stats
        res = check_l4_checksum(p, self._csum_auto)
        if res == CSUM_OK:
            ok = True
        elif res == CSUM_OFFLOADED and self._csum_auto:
            st.checksum_offloaded += 1
            ok = True
        else:
            st.invalid_checksum += 1
            ok = False
        if self._csum_auto and st.checksum_checked < CHECKSUM_SAMPLE:
            st.checksum_checked += 1
            if not ok:
                self._csum_bad_sample += 1
            if (st.checksum_checked == CHECKSUM_SAMPLE
                    and self._csum_bad_sample * CHECKSUM_BAD_RATIO > CHECKSUM_SAMPLE):
                self._csum = False
                st.checksum_auto_disabled += 1
        return ok

    # -- the general path -------------------------------------------------------------------

    def _slow(self, sess: TcpSession, p: Packet, to_server: bool, s: _Half,
              r: _Half) -> StreamUpdate:
        flags = p.tcp_flags
        seq = p.tcp_seq
        ack = p.tcp_ack
        payload = p.payload
        state = sess.state
        events: list[str] = []
        opts = p.tcp_opts
        st = self.stats
        out_ts = b""  # bytes for the packet's direction
        out_other = b""  # bytes for the other direction (SYN data taken, gap closed)
        gap_mine = gap_other = False
        differs = memcap = False

        if flags & TH_SYN:
            if flags & TH_ACK:
                st.synack += 1
            else:
                st.syn += 1
            return self._syn(sess, p, to_server, s, r, events)

        if flags & TH_RST:
            st.rst += 1
            if not self._rst_ok(sess, p, to_server, s, r):
                st.rst_invalid += 1
                return StreamUpdate(events=(EV_RST_INVALID,))
            sess.state = next_state(state, SEG_RST, to_server)
            if opts is not None and opts.auth:
                # A signature we cannot verify (its key is exchanged out of band): the
                # receiver may well discard this RST. Taken as Suricata does, but
                # remembered, and nothing held is given up yet.
                if state is not TcpState.CLOSED:
                    sess.rst_auth = (state, to_server)
                return EMPTY
            sess.rst_auth = None
            if state is TcpState.CLOSED or not (s.ooo or r.ooo):
                return EMPTY
            # The session ends: what waits behind a hole will never be completed.
            raw_s, raw_r = self._flush_held(s), self._flush_held(r)
            if to_server:
                return StreamUpdate(raw_ts=raw_s, raw_tc=raw_r)
            return StreamUpdate(raw_ts=raw_r, raw_tc=raw_s)

        if sess.rst_auth is not None and sess.rst_auth[1] == to_server:
            # The signed RST's sender carries on: its peer did not take the RST.
            if state is TcpState.CLOSED:
                sess.state = state = sess.rst_auth[0]
                events.append(EV_RST_INJECT)
            sess.rst_auth = None

        if not s.started:
            # Nothing known of this direction's sequence space (e.g. server data while
            # still in SYN_SENT): nothing to reassemble against.
            return EMPTY

        # PAWS (RFC 7323 5.3 R1): an older timestamp than TS.Recent means an old
        # duplicate; the receiver drops it.
        tsval = opts.tsval if opts is not None else None
        if sess.ts_ok and tsval is not None and seq_diff(tsval, s.tsval) < 0:
            return StreamUpdate(events=(EV_BAD_TS,))

        if not flags & TH_ACK:
            # RFC 9293 3.10.7.4 (fifth check): a segment without ACK is dropped in a
            # synchronized state, so its data never reaches the application.
            if payload or flags & TH_FIN:
                return StreamUpdate(events=(EV_NO_ACK,))
            return EMPTY

        n = len(payload)
        if p.ttl < s.min_ttl:
            # TTL-expiring chaff, or a route change: nothing tells which. Its bytes are
            # held as weak (delivered only if the receiver acknowledges them, and any
            # copy with a normal TTL wins); its ACK, window and flags are not taken.
            events.append(EV_LOW_TTL)
            if n:
                self._hold_weak(s, seq, payload, events)
            return StreamUpdate(events=tuple(events))
        weak = False
        if n and sess.win_ok and r.ack_seen:
            edge = seq_diff((r.ack + r.win) & MASK32, seq)
            if edge <= 0:
                # Starts at or past the right edge of the receiver's window: every
                # receiver drops it (RFC 9293 3.10.7.4). A 1-byte zero-window probe is
                # normal; whether the receiver took its byte depends on its stack, so
                # (IDS) it is weak: delivered only once acknowledged.
                if r.win == 0 and n == 1 and not self.config.inline:
                    weak = True
                elif r.win or n > 1:
                    events.append(EV_OUT_OF_WINDOW)
                    return StreamUpdate(events=tuple(events))
                elif not self.config.inline:
                    return EMPTY

        if tsval is not None and (not sess.ts_ok or seq_diff(tsval, s.tsval) > 0):
            s.tsval = tsval
        s.ack = ack
        s.win = p.tcp_win << s.wscale
        s.ack_seen = True

        # This segment's ACK: the other direction's acknowledged data needs no keeping,
        # and an ACK beyond what we saw of it means a gap (capture loss).
        if r.started:
            out_other, gap_other = self._acked(r, ack)

        if flags & TH_URG and n:
            events.append(EV_URGENT)
            if p.tcp_urp and self.config.urgent_policy == "oob":
                self._mark_urgent(s, seq, p.tcp_urp)
        if weak:
            self._hold_weak(s, seq, payload, events)
        elif n and not (state is TcpState.SYN_SENT and to_server
                        and not self.config.async_oneside):
            out_ts, differs, memcap, gap_mine = self._data(s, seq, payload, events)

        if flags & TH_FIN and not differs:
            fseq = (seq + n) & MASK32
            if s.fin_seq < 0:
                s.fin_seq = fseq

        seg = SEG_ACK
        if flags & TH_FIN:
            seg = SEG_FIN
        if r.fin_seq >= 0 and seq_diff(ack, r.fin_seq) >= 1:
            seg = SEG_FIN_ACK_FIN if seg == SEG_FIN else SEG_ACK_FIN
        nxt = next_state(state, seg, to_server)
        if nxt is state and self.config.async_oneside:
            nxt = ASYNC_TRANSITIONS.get((state, seg, to_server), state)
            if nxt is not state and not r.started:
                # One-sided: the server's SYN/ACK went another way; its data would start
                # where the client's ACK points.
                r.start_at(ack)
        if not differs:
            sess.state = nxt
        if not (out_ts or out_other or events or differs or gap_mine or gap_other or memcap):
            return EMPTY
        return self._result(to_server, out_ts, out_other, events, differs, gap_other, s, r,
                            gap_mine, memcap)

    def _syn(self, sess: TcpSession, p: Packet, to_server: bool, s: _Half, r: _Half,
             events: list[str]) -> StreamUpdate:
        flags = p.tcp_flags
        state = sess.state
        seg = SEG_SYNACK if flags & TH_ACK else SEG_SYN
        nxt = next_state(state, seg, to_server)
        if nxt is state and (state, seg, to_server) not in TRANSITIONS:
            return EMPTY  # a SYN where none belongs (e.g. on an established session)
        out_other = b""
        if seg == SEG_SYN and (not s.started or (state is TcpState.SYN_SENT and to_server)):
            # The first SYN of this side (or a retransmission, which restarts it).
            self._init_syn_side(s, p)
        elif seg == SEG_SYNACK:
            ack = p.tcp_ack
            if r.started and not sess.midstream:
                plain = (r.isn + 1) & MASK32
                with_data = (r.isn + 1 + len(r.syn_data)) & MASK32
                if ack != plain and ack != with_data:
                    return StreamUpdate(events=(EV_SYNACK_WRONG_ACK,))
                if not s.started or state is TcpState.SYN_SENT:
                    self._init_syn_side(s, p)
                if r.syn_data:
                    if ack == with_data:
                        # TCP Fast Open (RFC 7413): the SYN's data was acknowledged, so
                        # the server took it; it is the first bytes of that direction.
                        out_other = self._deliver_inorder(r, r.syn_data)
                    r.syn_data = b""
            elif not s.started:
                self._init_syn_side(s, p)
            s.ack = ack
            s.ack_seen = True
            s.win = p.tcp_win  # never scaled in a SYN (RFC 7323 2.2)
            # Both SYNs seen: settle window scaling and timestamps for the session.
            if r.wscale_offer >= 0 and s.wscale_offer >= 0:
                # RFC 7323 2.3: shifts above 14 are used as 14.
                r.wscale = min(r.wscale_offer, 14)
                s.wscale = min(s.wscale_offer, 14)
            sess.ts_ok = r.ts and s.ts
            sess.win_ok = not sess.midstream
        sess.state = nxt
        if out_other:
            return self._result(to_server, b"", out_other, events, False, False, s, r)
        return EMPTY

    def _init_syn_side(self, s: _Half, p: Packet) -> None:
        opts = p.tcp_opts
        s.isn = p.tcp_seq
        s.start_at(p.tcp_seq + 1)
        if not self.config.inline and (not s.min_ttl or p.ttl < s.min_ttl):
            s.min_ttl = p.ttl
        s.win = p.tcp_win
        # Data on a SYN waits for the SYN/ACK to say whether it was taken (TFO) or not
        # (then the client sends it again after the handshake).
        s.syn_data = p.payload if not p.tcp_flags & TH_ACK else b""
        if opts is not None:
            s.wscale_offer = opts.wscale if opts.wscale is not None else -1
            s.ts = opts.tsval is not None
            if opts.tsval is not None:
                s.tsval = opts.tsval
            s.sackok = opts.sackok
        else:
            s.wscale_offer = -1
            s.ts = False
            s.sackok = False

    def _rst_ok(self, sess: TcpSession, p: Packet, to_server: bool, s: _Half,
                r: _Half) -> bool:
        """Is this RST acceptable to its receiver? As Suricata (StreamTcpValidateRst) and
        RFC 9293 3.10.7: in SYN_SENT only if it acknowledges the SYN; otherwise its
        sequence number must fall in the receiver's window, counted from the next
        expected sequence number (or from what the receiver acknowledged, if we missed
        some of the sender's data)."""
        if sess.state is TcpState.SYN_SENT and not to_server:
            return ( bool(p.tcp_flags & TH_ACK) and r.started
                    and p.tcp_ack in ((r.isn + 1) & MASK32,
                                      (r.isn + 1 + len(r.syn_data)) & MASK32))
        if not s.started:
            return False
        seq = p.tcp_seq
        win = r.win if (sess.win_ok and r.ack_seen) else MAX_WINDOW
        win = max(win, 1)
        nxt = s.nxt_seq
        if s.fin_seq >= 0 and s.nxt_seq == s.fin_seq:
            nxt = (nxt + 1) & MASK32  # the FIN took a sequence number
        if 0 <= seq_diff(seq, nxt) < win:
            return True
        return r.ack_seen and 0 <= seq_diff(seq, r.ack) < win

    # -- reassembly ----------------------------------------------------------------------------

    def _deliver_inorder(self, s: _Half, data: bytes) -> bytes:
        """`data` starts exactly at the reassembly point: advance it (up to depth) and
        keep the bytes for retransmission comparison."""
        n = len(data)
        room = self._depth - s.nxt_off
        if n >= room:
            data = data[:room]
            n = room
            s.done = True
            self.stats.stream_depth_reached += 1
            self._drop_buffers(s)
        s.nxt_seq = (s.nxt_seq + n) & MASK32
        off = s.nxt_off
        s.nxt_off = off + n
        if n and not s.done:
            self._keep(s, off, data)
        return data

    def _keep(self, s: _Half, off: int, data: bytes) -> None:
        cost = len(data) + KEPT_OVERHEAD
        kept = s.kept
        if kept is None:
            kept = s.kept = deque()
            s.kept_off = off
        kept.append((off, data))
        s.kept_bytes += cost
        self.reassembly_memuse += cost
        if s.kept_bytes <= self._keep_max and self.reassembly_memuse <= self._reasm_cap:
            return
        keep = self._keep_max
        memcap = self._reasm_cap
        while kept and (s.kept_bytes > keep or self.reassembly_memuse > memcap):
            o, b = kept.popleft()
            c = len(b) + KEPT_OVERHEAD
            s.kept_bytes -= c
            self.reassembly_memuse -= c
            s.kept_off = o + len(b)

    def _forget_acked(self, r: _Half, ack_off: int) -> None:
        """Kept (inspected, unacknowledged) segments that end by `ack_off` are gone."""
        kept = r.kept
        while kept and kept[0][0] + len(kept[0][1]) <= ack_off:
            o, b = kept.popleft()
            c = len(b) + KEPT_OVERHEAD
            r.kept_bytes -= c
            self.reassembly_memuse -= c
            r.kept_off = o + len(b)

    def _acked(self, r: _Half, ack: int) -> tuple[bytes, bool]:
        """The other side acknowledged `r`'s bytes up to `ack`: forget kept bytes below
        it; if it acknowledges bytes we never saw, skip the hole (Suricata's
        reassembly gap on ACK) and release what was waiting behind it."""
        d = seq_diff(ack, r.nxt_seq)
        if r.fin_seq >= 0 and seq_diff(ack, r.fin_seq) >= 1:
            d = min(d, seq_diff(r.fin_seq, r.nxt_seq))  # the FIN's sequence number
        ack_off = r.nxt_off + d
        if r.kept:
            self._forget_acked(r, ack_off)
        out = b""
        if r.weak is not None:
            out = self._release_weak(r, ack_off if d > 0 else r.nxt_off)
            d = ack_off - r.nxt_off
        if d <= 0 or r.done:
            return out, False
        # Acknowledged but never seen: a gap.
        self.stats.ack_unseen_data += 1
        self.stats.reassembly_gap += 1
        target = ack_off
        if r.ooo and r.ooo[0].start < target:
            target = r.ooo[0].start
        skip = target - r.nxt_off
        r.nxt_off = target
        r.nxt_seq = (r.nxt_seq + skip) & MASK32
        if r.kept is not None:
            self._forget_kept(r)
        return out + self._drain(r), True

    # -- weak data and urgent bytes --------------------------------------------------------

    def _hold_weak(self, s: _Half, seq: int, payload: bytes, events: list[str]) -> None:
        """Hold bytes the receiver may not have taken (IDS only: inline, a later copy
        with other bytes is a differing retransmission and is dropped instead).

        TTL-expiring chaff (Ptacek & Newsham 1998) works because an IDS cannot know the
        hop count to the receiver (Suricata does not model it either). Dropping low-TTL
        segments would be unsound the other way: the real data could be sent with a
        lower TTL that still reaches the receiver. So they are neither taken nor thrown
        away: a copy with a normal TTL (or the reassembly point passing them) makes
        them obsolete, and the receiver's ACK covering them releases them into the
        stream (the receiver evidently took them)."""
        if s.done or not s.started:
            return
        start = s.nxt_off + seq_diff(seq, s.nxt_seq)
        if start < s.nxt_off:
            payload = payload[s.nxt_off - start:]
            start = s.nxt_off
        if not payload:
            return
        cost = len(payload) + SEGMENT_OVERHEAD
        if (s.weak_bytes + cost > self.config.max_ooo_bytes
                or self.reassembly_memuse + cost > self._reasm_cap):
            self.stats.segment_memcap_drop += 1
            events.append(EV_MEMCAP)
            return
        if s.weak is None:
            s.weak = []
        s.weak.append((start, payload))
        s.weak_bytes += cost
        self.reassembly_memuse += cost

    def _release_weak(self, r: _Half, ack_off: int) -> bytes:
        """The receiver acknowledged `r`'s bytes up to `ack_off`: weak bytes below it
        that no real segment supplied fill the holes (real held segments win over them);
        weak bytes below the reassembly point are obsolete."""
        weak = r.weak
        assert weak is not None
        keep: list[tuple[int, bytes]] = []
        take: list[tuple[int, bytes]] = []
        for start, data in weak:
            end = start + len(data)
            if end <= r.nxt_off:
                continue
            if start < ack_off:
                take.append((start, data[:ack_off - start]))
            if end > ack_off:
                keep.append((ack_off, data[ack_off - start:]) if start < ack_off
                            else (start, data))
        self.reassembly_memuse -= r.weak_bytes
        r.weak_bytes = sum(len(b) + SEGMENT_OVERHEAD for _o, b in keep)
        self.reassembly_memuse += r.weak_bytes
        r.weak = keep or None
        if not take:
            return b""
        policy = r.new_wins
        r.new_wins = NEW_WINS["first"]  # what is already held (real bytes) wins
        try:
            for start, data in take:
                if start + len(data) <= r.nxt_off:
                    continue
                if start < r.nxt_off:
                    data = data[r.nxt_off - start:]
                    start = r.nxt_off
                self._insert(r, start, data, [], start == r.nxt_off)
        finally:
            r.new_wins = policy
        return self._drain(r)

    def _mark_urgent(self, s: _Half, seq: int, urp: int) -> None:
        """Remember the stream offset of the urgent byte (the one before the urgent
        pointer, RFC 6093 section 3: how every major stack reads it)."""
        off = s.nxt_off + seq_diff(seq, s.nxt_seq) + urp - 1
        if off < s.nxt_off:
            return
        urg = s.urg
        if urg is None:
            s.urg = [off]
        elif off not in urg and len(urg) < MAX_URGENT_MARKS:
            bisect.insort(urg, off)

    def _cut_urgent(self, u: StreamUpdate, to_server: bool, s: _Half,
                    r: _Half) -> StreamUpdate:
        """Take the urgent bytes out of what this update delivers (urgent_policy
        "oob"): the receiving application reads them out of band, not in the stream."""
        for h, ts_dir in ((s, to_server), (r, not to_server)):
            urg = h.urg
            if urg is None:
                continue
            data = u.to_server if ts_dir else u.to_client
            start = h.nxt_off - len(data)
            if data and urg[0] < h.nxt_off:
                buf = bytearray(data)
                for off in reversed(urg):
                    if start <= off < h.nxt_off:
                        del buf[off - start]
                cut = bytes(buf)
                u = u._replace(to_server=cut) if ts_dir else u._replace(to_client=cut)
            left = [o for o in urg if o >= h.nxt_off]
            h.urg = left or None
        return u

    def _flush_held(self, s: _Half) -> tuple[bytes, ...]:
        """Give up the out-of-order segments of a direction whose session ends: each run
        of contiguous held bytes (cut at depth) becomes one chunk, for stream rules. The
        reassembly point does not move and no gap is counted: nobody acknowledged the
        missing bytes, the session simply ended before they came."""
        segs = s.ooo
        if not segs:
            return ()
        limit = self._depth  # stream offsets past depth are never inspected
        runs: list[tuple[int, bytearray]] = []
        run_end = -1
        for h in segs:  # sorted by start; held segments may overlap (already resolved)
            if h.start >= limit:
                break
            end = min(h.end, limit)
            if runs and h.start <= run_end:
                if end > run_end:
                    runs[-1][1].extend(h.data[run_end - h.start:end - h.start])
                    run_end = end
            else:
                runs.append((h.start, bytearray(h.data[:end - h.start])))
                run_end = end
        self.reassembly_memuse -= s.ooo_bytes
        s.ooo = []
        s.ooo_bytes = 0
        s.ooo_maxlen = 0
        return tuple(bytes(data) for _start, data in runs)

    def _forget_kept(self, s: _Half) -> None:
        if s.kept:
            for _o, b in s.kept:
                self.reassembly_memuse -= len(b) + KEPT_OVERHEAD
        s.kept = None
        s.kept_bytes = 0

    def _drop_buffers(self, s: _Half) -> None:
        self._forget_kept(s)
        self.reassembly_memuse -= s.ooo_bytes + s.weak_bytes
        s.weak = None
        s.weak_bytes = 0
        s.ooo = []
        s.ooo_bytes = 0
        s.ooo_maxlen = 0

    def _data(self, s: _Half, seq: int, payload: bytes,
              events: list[str]) -> tuple[bytes, bool, bool, bool]:
        """Take one segment's data. Returns (new in-order bytes, differs, memcap drop,
        gap)."""
        n = len(payload)
        start = s.nxt_off + seq_diff(seq, s.nxt_seq)
        end = start + n
        if s.fin_seq >= 0:
            fin_off = s.nxt_off + seq_diff(s.fin_seq, s.nxt_seq)
            if start >= fin_off:
                return b"", False, False, False  # after the FIN: no receiver takes it
            if end > fin_off:
                payload = payload[:fin_off - start]
                end = fin_off
        if s.done:
            if start <= s.nxt_off < end:
                s.nxt_seq = (s.nxt_seq + end - s.nxt_off) & MASK32
                s.nxt_off = end
            return b"", False, False, False
        nxt = s.nxt_off
        differs = False
        if start < nxt:
            # Bytes the receiver already has: it keeps its first copy (every OS), so we
            # only check that this copy says the same.
            self.stats.overlap += 1
            if self._differs_from_kept(s, start, min(end, nxt), payload):
                self.stats.overlap_diff_data += 1
                events.append(EV_OVERLAP_DIFF)
                differs = True
                if self.config.inline:
                    return b"", True, False, False
            if end <= nxt:
                return b"", differs, False, False
            payload = payload[nxt - start:]
            start = nxt
        if start == nxt and not s.ooo:
            return self._deliver_inorder(s, payload), differs, False, False
        ok, diff2 = self._insert(s, start, payload, events, start == nxt)
        if diff2 and self.config.inline:
            return b"", True, False, False
        if not ok:
            self.stats.segment_memcap_drop += 1
            events.append(EV_MEMCAP)
            return b"", differs, True, False
        return self._drain(s), differs or diff2, False, False

    def _differs_from_kept(self, s: _Half, start: int, end: int, payload: bytes) -> bool:
        kept = s.kept
        if not kept or end <= s.kept_off:
            return False  # no longer kept: cannot compare (not an error)
        # Retransmissions are usually of the oldest unacknowledged bytes, which sit at
        # the left: a scan from there is short.
        for o, b in kept:
            if o >= end:
                break
            lo = max(o, start)
            hi = min(o + len(b), end)
            if lo < hi and b[lo - o:hi - o] != payload[lo - start:hi - start]:
                return True
        return False

    def _insert(self, s: _Half, start: int, payload: bytes, events: list[str],
                in_order: bool) -> tuple[bool, bool]:
        """Hold an out-of-order segment, resolving overlaps with held ones by the
        receiver's policy. Returns (stored or merged, data differed). A segment at the
        reassembly point is always taken: it is delivered (and freed) at once."""
        end = start + len(payload)
        segs = s.ooo
        buf = bytearray(payload)
        differs = False
        covered = None
        overlapped = False
        new_wins = s.new_wins
        inline = self.config.inline
        # Held segments are sorted by start; any overlapping one starts before `end`,
        # and none that starts a longest-segment length before `start` can reach it.
        hi = bisect.bisect_left(segs, _Seg(end, bytearray()))
        horizon = start - s.ooo_maxlen
        for k in range(hi - 1, -1, -1):
            h = segs[k]
            if h.start < horizon:
                break
            if h.end <= start:
                continue
            lo = max(start, h.start)
            up = min(end, h.end)
            if lo >= up:
                continue
            overlapped = True
            old = h.data[lo - h.start:up - h.start]
            new = buf[lo - start:up - start]
            if old != new:
                differs = True
                if inline:
                    continue
                if overlap_case(start, end, h.start, h.end) in new_wins:
                    h.data[lo - h.start:up - h.start] = new
                else:
                    buf[lo - start:up - start] = old
            if h.start <= start and end <= h.end:
                covered = h
        if overlapped:
            self.stats.overlap += 1
        if differs:
            self.stats.overlap_diff_data += 1
            events.append(EV_OVERLAP_DIFF)
            if inline:
                return True, True
        if covered is not None:
            return True, differs  # its bytes are all in `covered` already
        cost = len(buf) + SEGMENT_OVERHEAD
        if not in_order and (s.ooo_bytes + cost > self.config.max_ooo_bytes
                             or self.reassembly_memuse + cost > self.config.reassembly_memcap):
            return False, differs
        seg = _Seg(start, buf)
        bisect.insort(segs, seg)
        if len(buf) > s.ooo_maxlen:
            s.ooo_maxlen = len(buf)
        s.ooo_bytes += cost
        self.reassembly_memuse += cost
        return True, differs

    def _drain(self, s: _Half) -> bytes:
        """Deliver the held segments that now continue the stream."""
        segs = s.ooo
        if not segs or segs[0].start > s.nxt_off:
            return b""
        parts: list[bytes] = []
        nxt = s.nxt_off
        k = 0
        freed = 0
        while k < len(segs) and segs[k].start <= nxt:
            h = segs[k]
            if h.end > nxt:
                parts.append(bytes(h.data[nxt - h.start:]))
                nxt = h.end
            freed += len(h.data) + SEGMENT_OVERHEAD
            k += 1
        del segs[:k]
        if not segs:
            s.ooo_maxlen = 0
        s.ooo_bytes -= freed
        self.reassembly_memuse -= freed
        if not parts:
            return b""
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return self._deliver_inorder(s, data)

    # -- EVE -----------------------------------------------------------------------------------

    def eve_tcp(self) -> dict[str, int]:
        """The `stats.tcp` object, with Suricata's names (schema.json)."""
        st = self.stats
        return {
            "sessions": st.sessions,
            "active_sessions": self.active,
            "ssn_memcap_drop": st.ssn_memcap_drop,
            "midstream_pickups": st.midstream_pickups,
            "syn": st.syn,
            "synack": st.synack,
            "rst": st.rst,
            "invalid_checksum": st.invalid_checksum,
            "overlap": st.overlap,
            "overlap_diff_data": st.overlap_diff_data,
            "segment_memcap_drop": st.segment_memcap_drop,
            "stream_depth_reached": st.stream_depth_reached,
            "reassembly_gap": st.reassembly_gap,
            "ack_unseen_data": st.ack_unseen_data,
            "memuse": self.memuse,
            "reassembly_memuse": self.reassembly_memuse,
        }


# Distinct hosts whose policy lookup is cached (a few KiB of dict); a scan past it
# clears the cache instead of growing it.
POLICY_CACHE_MAX: Final = 4096
