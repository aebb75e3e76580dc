"""TCP connection state, as one transition table (DESIGN.md principle 3).

This is the session tracking the flow table needs to know whether a connection is new,
established or closed (for timeouts and EVE). Sequence/window validation and reassembly
are not done here yet: they come with the stream reassembly work (issue 3); until then
states advance on flags alone.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from appliance.core.decode import TH_ACK, TH_FIN, TH_RST, TH_SYN


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

# Segment classes the table is indexed by.
SEG_SYN: Final = 0  # SYN without ACK
SEG_SYNACK: Final = 1
SEG_ACK: Final = 2  # ACK (with or without data), no SYN/FIN/RST
SEG_FIN: Final = 3
SEG_RST: Final = 4
SEG_OTHER: Final = 5  # no ACK, no SYN/FIN/RST: ignored for state


def segment_class(flags: int) -> int:
    if flags & TH_RST:
        return SEG_RST
    if flags & TH_SYN:
        return SEG_SYNACK if flags & TH_ACK else SEG_SYN
    if flags & TH_FIN:
        return SEG_FIN
    if flags & TH_ACK:
        return SEG_ACK
    return SEG_OTHER


S = TcpState
# (state, segment class, from client?) -> next state. Missing entries keep the state.
# Without sequence tracking a FIN from either side moves along the RFC 9293 close
# sequence; the side that sent FIN first is the one in FIN_WAIT states.
TRANSITIONS: Final[dict[tuple[TcpState, int, bool], TcpState]] = {
    (S.NONE, SEG_SYN, True): S.SYN_SENT,
    (S.SYN_SENT, SEG_SYN, True): S.SYN_SENT,  # retransmitted SYN
    (S.SYN_SENT, SEG_SYNACK, False): S.SYN_RECV,
    (S.SYN_SENT, SEG_SYN, False): S.SYN_RECV,  # simultaneous open (RFC 9293 3.5)
    (S.SYN_RECV, SEG_SYNACK, False): S.SYN_RECV,
    (S.SYN_RECV, SEG_ACK, True): S.ESTABLISHED,
    (S.SYN_RECV, SEG_FIN, True): S.FIN_WAIT1,
    (S.SYN_RECV, SEG_ACK, False): S.ESTABLISHED,  # simultaneous open completes
    (S.ESTABLISHED, SEG_FIN, True): S.FIN_WAIT1,
    (S.ESTABLISHED, SEG_FIN, False): S.FIN_WAIT1,
    (S.FIN_WAIT1, SEG_ACK, False): S.FIN_WAIT2,
    (S.FIN_WAIT1, SEG_ACK, True): S.FIN_WAIT2,
    (S.FIN_WAIT1, SEG_FIN, False): S.CLOSING,
    (S.FIN_WAIT1, SEG_FIN, True): S.CLOSING,
    (S.FIN_WAIT2, SEG_FIN, False): S.TIME_WAIT,
    (S.FIN_WAIT2, SEG_FIN, True): S.TIME_WAIT,
    (S.CLOSING, SEG_ACK, False): S.TIME_WAIT,
    (S.CLOSING, SEG_ACK, True): S.TIME_WAIT,
}
for _st in TcpState:
    if _st is not S.NONE:
        # RST closes any tracked session (RFC 9293 3.10.7.4); in-window checks come with
        # sequence tracking.
        TRANSITIONS[(_st, SEG_RST, True)] = S.CLOSED
        TRANSITIONS[(_st, SEG_RST, False)] = S.CLOSED


class TcpSession:
    """Per-flow TCP state (lives on the Flow). Only created when the flow starts with a
    SYN, or midstream pickup is on (Suricata's `stream.midstream`)."""

    __slots__ = ("state",)

    def __init__(self, state: TcpState = TcpState.NONE) -> None:
        self.state = state

    def update(self, flags: int, from_client: bool) -> TcpState:
        nxt = TRANSITIONS.get((self.state, segment_class(flags), from_client))
        if nxt is not None:
            self.state = nxt
        return self.state


def is_stream_starter(flags: int) -> bool:
    """A SYN without ACK: the packet that may start (or reuse) a TCP session."""
    return flags & (TH_SYN | TH_ACK | TH_RST) == TH_SYN
