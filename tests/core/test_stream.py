"""TCP tracking and reassembly (appliance/core/stream.py): scripted segment sequences with
the exact bytes delivered and the exact states reached."""

from __future__ import annotations

import importlib.util
import sys
import tracemalloc
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from appliance.core.decode import Decoder, Packet
from appliance.core.defrag import Defragmenter
from appliance.core.events import LINKTYPE_ETHERNET, LINKTYPE_RAW
from appliance.core.flows import FlowConfig, FlowTable
from appliance.core.stream import (
    CHECKSUM_SAMPLE,
    EV_BAD_CSUM,
    EV_BAD_TS,
    EV_GAP,
    EV_MEMCAP,
    EV_NO_ACK,
    EV_OUT_OF_WINDOW,
    EV_OVERLAP_DIFF,
    EV_RST_INJECT,
    EV_RST_INVALID,
    EV_SYNACK_WRONG_ACK,
    FLOW_STATE_OF,
    NEW_WINS,
    SEGMENT_OVERHEAD,
    SESSION_COST_BYTES,
    StreamConfig,
    StreamTracker,
    StreamUpdate,
    TcpSession,
    TcpState,
    check_l4_checksum,
    l4_checksum,
    seq_diff,
)
from appliance.io.pcap import PcapReader
from tests.conftest import PCAPS

CLI, SRV = "192.0.2.10", "198.51.100.20"
CLI6, SRV6 = "2001:db8::10", "2001:db8::20"
CISN, SISN = 1000, 5000


class Conn:
    """One scripted TCP connection fed straight to a StreamTracker. Offsets are stream
    offsets (0 = first byte after the SYN) unless `seq=` is given."""

    def __init__(self, cfg: StreamConfig | None = None, cisn: int = CISN, sisn: int = SISN,
                 v6: bool = False, tracker: StreamTracker | None = None) -> None:
        self.tracker = tracker or StreamTracker(cfg or StreamConfig())
        self.dec = Decoder()
        self.sess: TcpSession | None = None
        self.cisn, self.sisn = cisn, sisn
        self.v6 = v6
        self.ts = b""  # bytes delivered to the server
        self.tc = b""
        self.events: list[str] = []
        self.updates: list[StreamUpdate | None] = []

    def packet(self, client: bool, flags: str, off: int = 0, data: bytes = b"",
               ack_off: int = 0, seq: int | None = None, ack: int | None = None,
               win: int = 65535, options: list[Any] | None = None,
               chksum: int | None = None) -> Packet:
        a, b = (CLI6, SRV6) if self.v6 else (CLI, SRV)
        if not client:
            a, b = b, a
        ip = IPv6(src=a, dst=b) if self.v6 else IP(src=a, dst=b)
        my, their = (self.cisn, self.sisn) if client else (self.sisn, self.cisn)
        if seq is None:
            seq = (my + 1 + off) & 0xFFFFFFFF
        if ack is None:
            ack = (their + 1 + ack_off) & 0xFFFFFFFF if "A" in flags else 0
        tcp = TCP(sport=40000 if client else 80, dport=80 if client else 40000, flags=flags,
                  seq=seq, ack=ack, window=win, options=options or [])
        if chksum is not None:
            tcp.chksum = chksum
        raw = bytes(ip / tcp / data) if data else bytes(ip / tcp)
        return self.dec.decode(raw, LINKTYPE_RAW, 1.0)

    def feed(self, p: Packet, client: bool) -> StreamUpdate | None:
        tr = self.tracker
        if self.sess is None:
            self.sess = tr.new_session(p, client)
            if self.sess is None:
                self.updates.append(None)
                return None
        u = tr.process(self.sess, p, client)
        self.ts += u.to_server
        self.tc += u.to_client
        self.events += u.events
        self.updates.append(u)
        return u

    def c(self, flags: str, off: int = 0, data: bytes = b"", **kw: Any) -> StreamUpdate | None:
        return self.feed(self.packet(True, flags, off, data, **kw), True)

    def s(self, flags: str, off: int = 0, data: bytes = b"", **kw: Any) -> StreamUpdate | None:
        return self.feed(self.packet(False, flags, off, data, **kw), False)

    def handshake(self, **kw: Any) -> None:
        self.c("S", seq=self.cisn, **kw)
        self.s("SA", seq=self.sisn, **kw)
        self.c("A")

    def state(self) -> TcpState:
        assert self.sess is not None
        return self.sess.state


# -- sequence space and the state table ------------------------------------------------------

@pytest.mark.parametrize(("a", "b", "d"), [
    (5, 3, 2), (3, 5, -2), (1, 0xFFFFFFFF, 2), (0xFFFFFFFF, 1, -2), (0x80000000, 0, -0x80000000),
    (0x7FFFFFFF, 0, 0x7FFFFFFF),
])
def test_seq_diff_is_modulo_2_32(a: int, b: int, d: int) -> None:
    assert seq_diff(a, b) == d


def test_handshake_and_data_both_ways() -> None:
    k = Conn()
    k.c("S", seq=CISN)
    assert k.state() is TcpState.SYN_SENT
    k.s("SA", seq=SISN)
    assert k.state() is TcpState.SYN_RECV
    k.c("A")
    assert k.state() is TcpState.ESTABLISHED
    u = k.c("PA", 0, b"hello ")
    assert u == StreamUpdate(to_server=b"hello ")
    k.c("PA", 6, b"world")
    u = k.s("PA", 0, b"HTTP/1.0 200", ack_off=11)
    assert u is not None and u.to_client == b"HTTP/1.0 200"
    assert (k.ts, k.tc, k.events) == (b"hello world", b"HTTP/1.0 200", [])
    assert FLOW_STATE_OF[k.state()] == 1


def test_synack_with_wrong_ack_is_ignored() -> None:
    k = Conn()
    k.c("S", seq=CISN)
    k.s("SA", seq=SISN, ack=CISN + 7)
    assert k.state() is TcpState.SYN_SENT
    assert k.events == [EV_SYNACK_WRONG_ACK]


@pytest.mark.parametrize(("script", "states"), [
    # client closes first: CLOSE_WAIT, LAST_ACK, then CLOSED on the last ACK (Suricata)
    ([("c", "FA", 0, 0), ("s", "A", 0, 1), ("s", "FA", 0, 1), ("c", "A", 1, 1)],
     ["close_wait", "close_wait", "last_ack", "closed"]),
    # server closes first: FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSED on an ACK
    ([("s", "FA", 0, 0), ("c", "A", 0, 1), ("c", "FA", 0, 1), ("s", "A", 1, 1)],
     ["fin_wait1", "fin_wait2", "time_wait", "closed"]),
    # both FINs cross: FIN_WAIT1, then the client's FIN that does not ack it: CLOSING
    ([("s", "FA", 0, 0), ("c", "FA", 0, 0), ("s", "A", 1, 1)],
     ["fin_wait1", "closing", "time_wait"]),
])
def test_fin_states(script: list[tuple[str, str, int, int]], states: list[str]) -> None:
    k = Conn()
    k.handshake()
    got = []
    for who, flags, off, ack_off in script:
        (k.c if who == "c" else k.s)(flags, off, ack_off=ack_off)
        got.append(k.state().name.lower())
    assert got == states


def test_data_after_fin_is_not_delivered() -> None:
    k = Conn()
    k.handshake()
    k.c("FPA", 0, b"bye")
    k.c("PA", 3, b"more")
    assert k.ts == b"bye"


def test_rst_in_window_closes() -> None:
    k = Conn()
    k.handshake()
    k.c("PA", 0, b"abc")
    k.s("RA", 0, ack_off=3)
    assert k.state() is TcpState.CLOSED
    assert k.events == []


def test_rst_out_of_window_is_ignored() -> None:
    k = Conn()
    k.handshake()
    k.s("R", 0, seq=SISN + 1 + 100_000)
    assert k.state() is TcpState.ESTABLISHED
    assert k.events == [EV_RST_INVALID]
    k.c("PA", 0, b"still here")
    assert k.ts == b"still here"
    assert k.tracker.stats.rst == 1 and k.tracker.stats.rst_invalid == 1


def test_rst_hands_held_data_to_stream_rules_without_a_gap() -> None:
    # suricata-verify tcp-rst-unacked-stream-03: "Please " in order, "Let " never seen,
    # "Me " and "In!" held behind the hole, then the client resets.
    k = Conn()
    k.handshake()
    k.s("PA", 0, b"Please ")
    k.s("PA", 11, b"Me ")
    k.s("PA", 14, b"In!")
    k.s("PA", 30, b"tail")  # a second run, after a second hole
    held = k.tracker.reassembly_memuse
    u = k.c("RA", 0, ack_off=7)
    assert u is not None and k.state() is TcpState.CLOSED
    # One chunk per run, for stream rules only: nothing joins the in-order stream.
    assert (u.raw_tc, u.raw_ts, u.to_client, u.gap_tc) == ((b"Me In!", b"tail"), (), b"", False)
    assert k.tc == b"Please "
    assert k.tracker.stats.reassembly_gap == 0 and k.events == []
    assert k.tracker.reassembly_memuse < held  # the held segments are freed
    # Given once: another RST on the closed session has nothing to give.
    u2 = k.c("RA", 0, ack_off=7)
    assert u2 is not None and u2.raw_tc == ()


def test_rst_without_held_data_or_past_depth() -> None:
    k = Conn()
    k.handshake()
    k.c("PA", 0, b"abc")
    assert k.c("RA", 3) == StreamUpdate()
    # Held bytes past depth are never inspected: the chunk is cut there.
    k = Conn(StreamConfig(depth=12))
    k.handshake()
    k.c("PA", 0, b"GET ")
    k.c("PA", 8, b"abcdefgh")
    u = k.s("RA", 0, ack_off=4)
    assert u is not None and u.raw_ts == (b"abcd",)


def test_release_keeps_what_was_held_behind_holes_for_the_flow_end() -> None:
    k = Conn()
    k.handshake()
    k.c("PA", 0, b"ab")
    k.c("PA", 5, b"held")
    k.s("PA", 3, b"xyz")
    assert k.tracker.reassembly_memuse > 0
    assert k.sess is not None
    k.tracker.release(k.sess)
    assert k.sess.leftover == StreamUpdate(raw_ts=(b"held",), raw_tc=(b"xyz",))
    assert k.tracker.reassembly_memuse == 0 and k.tracker.active == 0
    # Nothing held: nothing left over.
    k2 = Conn()
    k2.handshake()
    k2.c("PA", 0, b"ab")
    assert k2.sess is not None
    k2.tracker.release(k2.sess)
    assert k2.sess.leftover is None


def test_rst_with_an_md5_signature_ignored_by_its_sender_is_suspected_injection() -> None:
    # suricata-verify security-4710-01: an RST with a TCP MD5 option right after the
    # handshake, then the client sends its request as if nothing happened.
    k = Conn()
    k.handshake()
    k.s("PA", 10, b"held")  # out of order: not given up on a signed RST
    u = k.c("RA", 0, options=[("MD5", b"\x01" * 16)])
    assert k.state() is TcpState.CLOSED
    assert u == StreamUpdate()
    k.s("A", 0)  # the receiver speaking does not tell anything
    assert k.state() is TcpState.CLOSED and EV_RST_INJECT not in k.events
    u = k.c("PA", 0, b"GET /ultrasurf.html")
    assert u is not None and u.events == (EV_RST_INJECT,)
    assert k.state() is TcpState.ESTABLISHED and k.ts == b"GET /ultrasurf.html"
    k.c("PA", 19, b" HTTP/1.1")
    assert k.events.count(EV_RST_INJECT) == 1
    # TCP-AO (kind 29) is treated the same; a plain RST whose sender goes on is not.
    k = Conn()
    k.handshake()
    k.c("RA", 0, options=[(29, b"\xa6\x28")])
    k.c("PA", 0, b"x")
    assert k.events == [EV_RST_INJECT]
    k = Conn()
    k.handshake()
    k.c("RA", 0)
    k.c("PA", 0, b"x")
    assert k.events == [] and k.state() is TcpState.CLOSED


def test_rst_in_syn_sent_must_ack_the_syn() -> None:
    k = Conn()
    k.c("S", seq=CISN)
    k.s("RA", seq=0, ack=CISN + 5)
    assert k.state() is TcpState.SYN_SENT
    k.s("RA", seq=0, ack=CISN + 1)
    assert k.state() is TcpState.CLOSED


def test_simultaneous_open() -> None:
    k = Conn()
    k.c("S", seq=CISN)
    k.s("S", seq=SISN)
    assert k.state() is TcpState.SYN_RECV
    k.c("SA", seq=CISN, ack=SISN + 1)
    k.s("SA", seq=SISN, ack=CISN + 1)
    k.c("A")
    assert k.state() is TcpState.ESTABLISHED
    k.c("PA", 0, b"x")
    k.s("PA", 0, b"y", ack_off=1)
    assert (k.ts, k.tc) == (b"x", b"y")


def test_syn_data_not_acknowledged_is_dropped_and_retransmitted_once() -> None:
    k = Conn()
    k.c("S", data=b"early", seq=CISN)
    k.s("SA", seq=SISN)  # acks only the SYN: the server did not take the data
    k.c("A")
    assert k.ts == b""
    k.c("PA", 0, b"early")
    assert k.ts == b"early"


def test_tcp_fast_open_data_is_delivered_when_acknowledged() -> None:
    k = Conn()
    k.c("S", data=b"GET /", seq=CISN)
    u = k.s("SA", seq=SISN, ack=CISN + 1 + 5)
    assert u is not None and u.to_server == b"GET /"
    k.c("A", 5)
    k.c("PA", 5, b"x HTTP/1.0")
    assert k.ts == b"GET /x HTTP/1.0"


def test_midstream_off_leaves_the_flow_untracked() -> None:
    k = Conn()
    assert k.c("PA", 0, b"data") is None
    assert k.sess is None


def test_midstream_pickup() -> None:
    k = Conn(StreamConfig(midstream=True))
    k.c("PA", 0, b"mid-1")
    k.s("A", 0, ack_off=5)
    k.c("PA", 5, b"mid-2")
    k.s("PA", 0, b"reply", ack_off=10)
    assert (k.ts, k.tc) == (b"mid-1mid-2", b"reply")
    assert k.state() is TcpState.ESTABLISHED
    assert k.tracker.stats.midstream_pickups == 1


def test_one_sided_flow_needs_async_oneside() -> None:
    off = Conn()
    off.c("S", seq=CISN)
    off.c("A")
    off.c("PA", 0, b"one way")
    assert (off.state(), off.ts) == (TcpState.SYN_SENT, b"")
    on = Conn(StreamConfig(async_oneside=True))
    on.c("S", seq=CISN)
    on.c("A")
    on.c("PA", 0, b"one ")
    on.c("PA", 4, b"way")
    assert (on.state(), on.ts) == (TcpState.ESTABLISHED, b"one way")


# -- reassembly ---------------------------------------------------------------------------------

def test_out_of_order_is_held_then_delivered() -> None:
    k = Conn()
    k.handshake()
    assert k.c("PA", 6, b"world") == StreamUpdate()
    assert k.c("PA", 11, b"!") == StreamUpdate()
    u = k.c("PA", 0, b"hello ")
    assert u is not None and u.to_server == b"hello world!"
    assert k.tracker.reassembly_memuse > 0
    k.s("A", 0, ack_off=12)
    assert k.tracker.reassembly_memuse == 0  # delivered and acknowledged: nothing held


def test_retransmission_with_same_data_is_quiet() -> None:
    k = Conn()
    k.handshake()
    k.c("PA", 0, b"abcdef")
    u = k.c("PA", 0, b"abcdef")
    assert u == StreamUpdate()
    assert k.ts == b"abcdef"
    assert k.tracker.stats.overlap == 1 and k.tracker.stats.overlap_diff_data == 0


def test_retransmission_with_different_data_differs() -> None:
    k = Conn()
    k.handshake()
    k.c("PA", 0, b"GET /good")
    u = k.c("PA", 0, b"GET /evil and more")
    assert u is not None and u.differs and u.events == (EV_OVERLAP_DIFF,)
    # IDS mode: the receiver kept "GET /good" and takes the new tail
    assert k.ts == b"GET /good and more"
    assert k.tracker.stats.overlap_diff_data == 1


def test_inline_differing_retransmission_is_not_taken() -> None:
    k = Conn(StreamConfig(inline=True))
    k.handshake()
    k.c("PA", 0, b"GET /good")
    u = k.c("PA", 0, b"GET /evil and more")
    assert u == StreamUpdate(events=(EV_OVERLAP_DIFF,), differs=True)
    # the packet is dropped, so the sender sends the tail again
    k.c("PA", 9, b" and more")
    assert k.ts == b"GET /good and more"


def test_acknowledged_data_is_no_longer_compared() -> None:
    k = Conn()
    k.handshake()
    k.c("PA", 0, b"abcd")
    k.s("A", 0, ack_off=4)
    u = k.c("PA", 0, b"wxyz")
    assert u == StreamUpdate() and k.ts == b"abcd"


# The classic overlap test vectors, one case each (Novak & Sturges): a held segment
# ("B"), a new one overlapping it ("a"), then "00" fills the hole at offset 0.
# (held offset, held bytes, new offset, new bytes, result if old wins, result if new wins)
VECTORS = {
    "same-start-shorter": (2, b"BBBB", 2, b"aa", b"00BBBB", b"00aaBB"),
    "same-start-longer": (2, b"BBBB", 2, b"aaaaaa", b"00BBBBaa", b"00aaaaaa"),
    "same": (2, b"BBBB", 2, b"aaaa", b"00BBBB", b"00aaaa"),
    "before-ends-inside": (4, b"BBBB", 2, b"aaaa", b"00aaBBBB", b"00aaaaBB"),
    "before-covers": (4, b"BB", 2, b"aaaaaa", b"00aaBBaa", b"00aaaaaa"),
    "after-ends-after": (2, b"BBBB", 4, b"aaaa", b"00BBBBaa", b"00BBaaaa"),
    "after-inside": (2, b"BBBB", 3, b"aa", b"00BBBB", b"00BaaB"),
}
# Which policies take the new bytes in each case, as Suricata (stream-tcp-list.c).
NEW_WINS_BY_CASE = {
    "same-start-shorter": {"last"},
    "same-start-longer": {"last", "linux", "old-linux", "solaris", "hpux11"},
    "same": {"last", "old-linux", "solaris", "hpux11"},
    "before-ends-inside": {"last", "bsd", "hpux10", "irix", "macos", "windows", "windows2k3",
                           "linux", "old-linux"},
    "before-covers": {"last", "bsd", "hpux10", "irix", "macos", "windows", "windows2k3",
                      "linux", "old-linux", "solaris", "hpux11"},
    "after-ends-after": {"last", "solaris", "hpux11"},
    "after-inside": {"last"},
}


@pytest.mark.parametrize("policy", sorted(NEW_WINS))
@pytest.mark.parametrize("case", sorted(VECTORS))
def test_overlap_policy_vectors(policy: str, case: str) -> None:
    hoff, hdata, noff, ndata, old, new = VECTORS[case]
    k = Conn(StreamConfig(default_policy=policy))
    k.handshake()
    k.c("PA", hoff, hdata)
    u = k.c("PA", noff, ndata)
    assert u is not None and u.events == (EV_OVERLAP_DIFF,)
    k.c("PA", 0, b"00")
    assert k.ts == (new if policy in NEW_WINS_BY_CASE[case] else old)


def test_overlap_with_same_data_raises_nothing() -> None:
    k = Conn(StreamConfig(default_policy="first"))
    k.handshake()
    k.c("PA", 2, b"cdef")
    assert k.c("PA", 1, b"bcdefg") == StreamUpdate()
    k.c("PA", 0, b"a")
    assert k.ts == b"abcdefg"
    assert k.tracker.stats.overlap == 1 and k.tracker.stats.overlap_diff_data == 0


def test_inline_out_of_order_conflict_keeps_old_and_differs() -> None:
    k = Conn(StreamConfig(inline=True, default_policy="last"))
    k.handshake()
    k.c("PA", 2, b"BBBB")
    u = k.c("PA", 2, b"aaaaaa")
    assert u is not None and u.differs
    k.c("PA", 0, b"00")
    assert k.ts == b"00BBBB"


def test_policy_is_chosen_by_destination_network() -> None:
    cfg = StreamConfig(default_policy="first",
                       host_os_policy=(("last", ("198.51.100.0/24",)),
                                       ("first", ("198.51.100.20/32",)),
                                       ("linux", ("2001:db8::/32",))))
    tr = StreamTracker(cfg)
    assert tr.policy_for(bytes([198, 51, 100, 20])) == NEW_WINS["first"]  # longest prefix
    assert tr.policy_for(bytes([198, 51, 100, 21])) == NEW_WINS["last"]
    assert tr.policy_for(bytes([192, 0, 2, 1])) == NEW_WINS["first"]
    assert tr.policy_for(bytes.fromhex("20010db8" + "00" * 11 + "20")) == NEW_WINS["linux"]
    # data to the server uses the server's policy, data to the client the client's
    cfg2 = StreamConfig(default_policy="first", host_os_policy=(("last", (SRV + "/32",)),))
    k = Conn(cfg2)
    k.handshake()
    k.c("PA", 2, b"BBBB")
    k.c("PA", 2, b"aaaa")
    k.c("PA", 0, b"00")
    k.s("PA", 2, b"BBBB", ack_off=6)
    k.s("PA", 2, b"aaaa", ack_off=6)
    k.s("PA", 0, b"00", ack_off=6)
    assert (k.ts, k.tc) == (b"00aaaa", b"00BBBB")


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown host OS policy 'beos'"):
        StreamTracker(StreamConfig(host_os_policy=(("beos", ("10.0.0.0/8",)),)))
    with pytest.raises(ValueError, match="checksum_validation"):
        StreamTracker(StreamConfig(checksum_validation="maybe"))


@pytest.mark.parametrize("isn", [0xFFFFFFFF - 3, 0xFFFFFFFF, 0xFFFFFFF0])
def test_sequence_wraparound(isn: int) -> None:
    k = Conn(cisn=isn, sisn=0xFFFFFFFE)
    k.handshake()
    data = bytes(range(40))
    k.c("PA", 20, data[20:])  # out of order, across the wrap
    k.c("PA", 0, data[:10])
    k.c("PA", 10, data[10:20])
    k.s("PA", 0, b"reply", ack_off=40)
    assert (k.ts, k.tc) == (data, b"reply")
    k.c("FA", 40, ack_off=5)
    assert k.state() is TcpState.CLOSE_WAIT


def test_depth_marks_inspection_done() -> None:
    k = Conn(StreamConfig(depth=10))
    k.handshake()
    u1 = k.c("PA", 0, b"123456")
    u2 = k.c("PA", 6, b"789abc")
    assert u1 is not None and not u1.done_ts
    assert u2 == StreamUpdate(to_server=b"7890"[:3] + b"a", done_ts=True)
    k.c("PA", 12, b"more")
    assert k.ts == b"123456789a"
    assert k.tracker.stats.stream_depth_reached == 1
    u = k.s("PA", 0, b"server", ack_off=16)
    assert u is not None and u.done_ts and not u.done_tc and u.to_client == b"server"


def test_out_of_order_memory_stays_within_the_per_flow_cap() -> None:
    cap = 50 * (10 + SEGMENT_OVERHEAD)
    k = Conn(StreamConfig(max_ooo_bytes=cap))
    k.handshake()
    for i in range(1000):  # 1,000 holes: each 10-byte segment leaves a gap before it
        k.c("PA", 20 * i + 10, b"x" * 10)
    assert k.sess is not None
    assert k.sess.cli.ooo_bytes <= cap
    assert k.tracker.reassembly_memuse <= cap
    assert k.tracker.stats.segment_memcap_drop == 950
    assert k.events.count(EV_MEMCAP) == 950
    # the in-order stream still flows
    k.c("PA", 0, b"y" * 10)
    assert k.ts == b"y" * 10 + b"x" * 10


def test_global_reassembly_memcap_bounds_all_flows() -> None:
    memcap = 20 * (100 + SEGMENT_OVERHEAD)
    tr = StreamTracker(StreamConfig(reassembly_memcap=memcap))
    for n in range(10):
        k = Conn(tracker=tr, cisn=CISN + n)
        k.handshake()
        for i in range(10):
            k.c("PA", 200 * i + 100, b"z" * 100)
    assert tr.reassembly_memuse <= memcap
    assert tr.stats.segment_memcap_drop == 100 - 20


def test_ack_beyond_seen_data_is_a_gap() -> None:
    k = Conn()
    k.handshake()
    k.c("PA", 0, b"abc")
    k.c("PA", 10, b"klm")  # 3..10 lost before us
    u = k.s("A", 0, ack_off=13)
    assert u is not None and u.gap_ts and u.to_server == b"klm" and EV_GAP not in u.events
    assert k.tracker.stats.reassembly_gap == 1


def test_out_of_window_data_is_not_reassembled() -> None:
    k = Conn()
    k.c("S", seq=CISN)
    k.s("SA", seq=SISN, win=100)
    k.c("A")
    k.c("PA", 100, b"chaff")
    assert k.events == [EV_OUT_OF_WINDOW]
    k.c("PA", 0, b"x" * 100)
    k.s("A", 0, ack_off=100, win=1000)
    k.c("PA", 100, b"real!")
    assert k.ts == b"x" * 100 + b"real!"


def test_window_scale_is_applied_after_the_handshake() -> None:
    k = Conn()
    k.c("S", seq=CISN, options=[("WScale", 7)])
    k.s("SA", seq=SISN, win=100, options=[("WScale", 2)])
    k.c("A")
    k.s("A", 0, win=100)  # 100 << 2 = 400 bytes
    k.c("PA", 399, b"in")
    k.c("PA", 400, b"out")
    assert k.events == [EV_OUT_OF_WINDOW]


def test_paws_drops_old_timestamps() -> None:
    k = Conn()
    k.c("S", seq=CISN, options=[("Timestamp", (100, 0))])
    k.s("SA", seq=SISN, options=[("Timestamp", (500, 100))])
    k.c("A", options=[("Timestamp", (101, 500))])
    k.c("PA", 0, b"chaff", options=[("Timestamp", (99, 500))])
    k.c("PA", 0, b"real!", options=[("Timestamp", (102, 500))])
    assert k.ts == b"real!"
    assert k.events == [EV_BAD_TS]


def test_data_without_ack_is_not_reassembled() -> None:
    k = Conn()
    k.handshake()
    k.c("P", 0, b"chaff")
    k.c("PA", 0, b"real!")
    assert (k.ts, k.events) == (b"real!", [EV_NO_ACK])


# -- checksums ----------------------------------------------------------------------------------

@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("size", [0, 1, 2, 1459, 1460])
def test_l4_checksum_matches_scapy(v6: bool, proto: str, size: int) -> None:
    ip = IPv6(src=CLI6, dst=SRV6) if v6 else IP(src=CLI, dst=SRV)
    l4 = TCP(sport=1, dport=2, seq=7) if proto == "tcp" else UDP(sport=1, dport=2)
    raw = bytes(ip / l4 / (bytes(range(256)) * 6)[:size])
    built = (IPv6 if v6 else IP)(raw)
    want = built[TCP if proto == "tcp" else UDP].chksum
    l4off = 40 if v6 else 20
    seg = bytearray(raw[l4off:])
    pos = 16 if proto == "tcp" else 6
    seg[pos:pos + 2] = b"\0\0"
    src, dst = (raw[8:24], raw[24:40]) if v6 else (raw[12:16], raw[16:20])
    got = l4_checksum(src, dst, 6 if proto == "tcp" else 17, bytes(seg))
    assert got == want or (proto == "udp" and got == 0 and want == 0xFFFF)
    assert l4_checksum(src, dst, 6 if proto == "tcp" else 17, raw[l4off:]) in (0, 0xFFFF)


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.binary(max_size=64), st.sampled_from(["good", "partial", "other"]),
       st.integers(0, 0xFFFF), st.booleans())
def test_check_l4_checksum_classifies_as_l4_checksum_says(
        v6: bool, payload: bytes, kind: str, other: int, offload_first: bool) -> None:
    """check_l4_checksum() against its definition in terms of l4_checksum() and the
    folded pseudo-header sum, for right, partial (offloaded) and arbitrary fields."""
    src, dst = (bytes(range(1, 17)), bytes(range(17, 33))) if v6 else (b"\x0a\0\0\x01",
                                                                      b"\x0a\0\0\x02")
    seg = bytearray(TCP_HDR + payload)
    pseudo = (int.from_bytes(src, "big") + int.from_bytes(dst, "big") + 6 + len(seg)) % 0xFFFF
    field = {"good": l4_checksum(src, dst, 6, bytes(seg)), "partial": pseudo,
             "other": other}[kind]
    seg[16:18] = field.to_bytes(2, "big")
    if v6:
        raw = bytes([0x60, 0, 0, 0]) + len(seg).to_bytes(2, "big") + b"\x06\x40" + src + dst
    else:
        raw = (bytes([0x45, 0]) + (20 + len(seg)).to_bytes(2, "big") + b"\0\0\0\0\x40\x06\0\0"
               + src + dst)
    p = Decoder().decode(raw + bytes(seg), LINKTYPE_RAW, 1.0)
    assert p.l4_off >= 0 and p.payload == payload
    ok = l4_checksum(src, dst, 6, bytes(seg)) in (0, 0xFFFF)
    partial = field % 0xFFFF == pseudo
    want = (2 if partial and offload_first else 0 if ok else 2 if partial else 1)
    assert check_l4_checksum(p, offload_first) == want  # CSUM_OK 0, BAD 1, OFFLOADED 2


TCP_HDR = bytes.fromhex("9c400050000000010000000250100200" "00000000")


def _offloaded(k: Conn, off: int, data: bytes) -> Packet:
    """A client segment whose checksum field holds only the pseudo-header sum, as Linux
    leaves it for checksum offload (CHECKSUM_PARTIAL on a veth)."""
    n = 20 + len(data)
    partial = (int.from_bytes(bytes([192, 0, 2, 10]), "big")
               + int.from_bytes(bytes([198, 51, 100, 20]), "big") + 6 + n) % 0xFFFF
    return k.packet(True, "PA", off, data, chksum=partial)


@pytest.mark.parametrize(("mode", "bad_taken", "offloaded_taken"), [
    ("yes", False, False), ("auto", False, True), ("no", True, True),
])
def test_checksum_modes(mode: str, bad_taken: bool, offloaded_taken: bool) -> None:
    k = Conn(StreamConfig(checksum_validation=mode))
    k.handshake()
    k.c("PA", 0, b"bad!", chksum=0x1234)
    assert k.ts == (b"bad!" if bad_taken else b"")
    assert k.events == ([] if bad_taken else [EV_BAD_CSUM])
    k.feed(_offloaded(k, len(k.ts), b"offl"), True)
    assert k.ts.endswith(b"offl") == offloaded_taken
    assert k.tracker.stats.invalid_checksum == (0 if mode == "no" else
                                                1 + (mode == "yes"))


def test_checksum_auto_turns_off_when_the_sample_is_mostly_bad() -> None:
    k = Conn(StreamConfig(checksum_validation="auto"))
    k.handshake()
    for i in range(CHECKSUM_SAMPLE - 3):
        k.c("PA", i, b"z", chksum=0x1111)
    assert k.ts == b""
    # sample complete, >10 % bad: validation stops, the stream is taken from here
    k.c("PA", 0, b"abc", chksum=0x1111)
    assert k.ts == b"abc"
    assert k.tracker.stats.checksum_auto_disabled == 1


# -- random input ---------------------------------------------------------------------------------

DATA = bytes(range(97, 123)) * 8  # 208 bytes


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 207), st.integers(1, 40), st.booleans()),
                min_size=1, max_size=40),
       st.sampled_from(sorted(NEW_WINS)), st.integers(0, 120), st.booleans())
def test_random_segments_never_raise_and_respect_depth(
        segs: list[tuple[int, int, bool]], policy: str, depth: int, inline: bool) -> None:
    k = Conn(StreamConfig(default_policy=policy, depth=depth, inline=inline))
    k.handshake()
    altered = False
    for off, n, garble in segs:
        chunk = DATA[off:off + n]
        if garble:
            chunk = bytes(b ^ 0x20 for b in chunk)
            altered = True
        k.c("PA", off, chunk)
    k.c("PA", 0, DATA)  # fill every hole
    limit = depth if depth else len(DATA)
    assert len(k.ts) <= limit
    if not altered:
        # same bytes everywhere: every policy reassembles the original
        assert k.ts == DATA[:limit]
    assert k.tracker.reassembly_memuse >= 0


# -- flow table integration, memory ----------------------------------------------------------------

def test_flow_table_drives_the_tracker_and_releases_sessions() -> None:
    ft = FlowTable(FlowConfig())
    k = Conn()
    pkts = [(k.packet(True, "S", seq=CISN), True), (k.packet(False, "SA", seq=SISN), False),
            (k.packet(True, "A"), True), (k.packet(True, "PA", 0, b"hi"), True)]
    ups = []
    for p, _ in pkts:
        f, to_server = ft.lookup(p)
        ups.append(ft.update_tcp(f, p, to_server))
    assert ups[-1] == StreamUpdate(to_server=b"hi")
    assert ft.stream.active == 1 and ft.stream.reassembly_memuse > 0
    ft.shutdown()
    assert ft.stream.active == 0 and ft.stream.reassembly_memuse == 0
    tcp = ft.stream.eve_tcp()
    assert (tcp["sessions"], tcp["syn"], tcp["synack"]) == (1, 1, 1)


def test_flow_without_syn_is_untracked_by_the_flow_table() -> None:
    ft = FlowTable(FlowConfig())
    p = Conn().packet(True, "PA", 0, b"x")
    f, to_server = ft.lookup(p)
    assert ft.update_tcp(f, p, to_server) is None and f.tcp is None


def test_eve_tcp_stats_use_schema_names(eve_validator: Any) -> None:
    tr = StreamTracker()
    rec = {"timestamp": "2023-11-14T22:13:20.000000+0000", "event_type": "stats",
           "stats": {"uptime": 0, "tcp": tr.eve_tcp()}}
    errors = list(eve_validator.iter_errors(rec))
    assert not errors, errors[0].message


def test_session_cost_estimate_is_within_2x_of_measured() -> None:
    tr = StreamTracker()
    k = Conn(tracker=tr)
    p = k.packet(True, "S", seq=CISN)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    sessions = []
    for _ in range(2000):
        s = tr.new_session(p, True)
        assert s is not None
        tr.process(s, p, True)
        sessions.append(s)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per = sum(st.size_diff for st in after.compare_to(before, "filename")) / 2000
    assert SESSION_COST_BYTES / 2 <= per <= SESSION_COST_BYTES * 2, per


def test_session_memcap_refuses_new_sessions() -> None:
    tr = StreamTracker(StreamConfig(memcap=3 * SESSION_COST_BYTES))
    p = Conn().packet(True, "S", seq=CISN)
    got = [tr.new_session(p, True) for _ in range(5)]
    assert [s is not None for s in got] == [True, True, True, False, False]
    assert tr.stats.ssn_memcap_drop == 2


# -- the evasion captures -------------------------------------------------------------------------

def _load_builder() -> ModuleType:
    path = PCAPS / "build_evasion.py"
    spec = importlib.util.spec_from_file_location("build_evasion", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["build_evasion"] = mod
    spec.loader.exec_module(mod)
    return mod


BUILD = _load_builder()
CASE_NAMES = [c.name for c in BUILD.CASES]


def _reassemble(path: Path, cfg: StreamConfig) -> tuple[bytes, list[str], bool]:
    """Decode (IP fragments through defrag), flows, stream: the client->server bytes
    delivered, the decoder and stream anomalies, and whether a segment differed."""
    ft = FlowTable(FlowConfig(stream=cfg))
    dec = Decoder()
    defrag = Defragmenter()
    out = b""
    events: list[str] = []
    differs = False
    with PcapReader(path) as r:
        for ev in r:
            assert ev.linktype == LINKTYPE_ETHERNET
            p = dec.decode(ev.data, ev.linktype, ev.ts)
            if p.frag is not None:
                rebuilt = defrag.add(p)
                events += p.events or []
                if rebuilt is None:
                    continue
                p = dec.decode_rebuilt(rebuilt, p.l3_off, p.ipver, p.vlan, p.ts)
            events += p.events or []
            f, to_server = ft.lookup(p)
            u = ft.update_tcp(f, p, to_server)
            if u is not None:
                out += u.to_server
                events += u.events
                differs |= u.differs
    return out, events, differs


@pytest.mark.parametrize(("name", "ipver"),
                         [(c.name, v) for c in BUILD.CASES for v in c.versions])
def test_evasion_pcaps_reassemble_what_the_receiver_sees(name: str, ipver: int) -> None:
    case = next(c for c in BUILD.CASES if c.name == name)
    path = PCAPS / "evasion" / f"{name}-v{ipver}.pcap"
    for policy in BUILD.ALL_POLICIES:
        cfg = replace(StreamConfig(default_policy=policy), **case.config)
        got, events, _ = _reassemble(path, cfg)
        want = case.expected.get(policy, case.expected["*"])
        assert got == want, (policy, got)
        event = case.event_v6 if ipver == 6 and case.event_v6 else case.event
        if event is not None:
            assert event in events, (policy, events)
        else:
            assert events == [], (policy, events)


def test_evasion_pcaps_are_up_to_date(tmp_path: Path) -> None:
    for path in BUILD.main(tmp_path):
        assert path.read_bytes() == (PCAPS / "evasion" / path.name).read_bytes(), path.name


def test_bad_checksum_chaff_is_reassembled_when_validation_is_off() -> None:
    path = PCAPS / "evasion" / "bad-checksum-v4.pcap"
    got, events, differs = _reassemble(path, StreamConfig(checksum_validation="no"))
    assert got.startswith(b"GET /good.exe") and differs
    assert EV_OVERLAP_DIFF in events


def test_inline_mode_flags_the_differing_retransmission() -> None:
    path = PCAPS / "evasion" / "retransmit-different-v4.pcap"
    got, events, differs = _reassemble(path, StreamConfig(inline=True))
    assert differs and got == b"GET /good.exe HTTP/1.0\r\n\r\n"
    assert events == [EV_OVERLAP_DIFF]


def test_urgent_byte_stays_in_the_stream_with_the_inline_policy() -> None:
    path = PCAPS / "evasion" / "urgent-pointer-v4.pcap"
    got, events, _ = _reassemble(path, StreamConfig(urgent_policy="inline"))
    assert got == b"GET /evXil.exe HTTP/1.0\r\n\r\n"
    assert events == ["stream.urgent_data"]


def test_inline_mode_drops_the_real_segment_after_ttl_chaff() -> None:
    # Inline, the chaff is inspected (and forwarded: it expires on the way); the real
    # bytes then differ from what was inspected, so the engine drops them and the attack
    # cannot complete.
    path = PCAPS / "evasion" / "ttl-chaff-v6.pcap"
    got, events, differs = _reassemble(path, StreamConfig(inline=True))
    assert differs and got.startswith(b"GET /good.exe")
    assert EV_OVERLAP_DIFF in events


def test_low_ttl_data_is_delivered_once_the_receiver_acknowledges_it() -> None:
    # The reverse trick: real data with a lower TTL that still reaches the receiver.
    # Held, not lost: the receiver's ACK proves it took the bytes.
    k = Conn()
    k.c("S", seq=CISN)
    k.s("SA", seq=SISN)
    k.c("A")
    raw = k.packet(True, "PA", 0, b"GET /evil")
    raw.ttl = 20  # the handshake came with scapy's 64
    u = k.feed(raw, True)
    assert u is not None and u.to_server == b"" and u.events == ("stream.pkt_ttl_below_flow",)
    assert k.tracker.reassembly_memuse > 0
    u = k.s("A", 0, ack_off=9)
    assert u is not None and u.to_server == b"GET /evil" and not u.gap_ts
    k.c("PA", 9, b".exe")
    assert k.ts == b"GET /evil.exe"
    k.s("A", 0, ack_off=13)
    assert k.tracker.reassembly_memuse == 0


def test_low_ttl_bytes_lose_to_real_ones_and_never_move_the_ack() -> None:
    k = Conn()
    k.handshake()
    k.s("PA", 0, b"hello", ack_off=0)
    chaff = k.packet(True, "PA", 3, b"XXXX", ack_off=5 + 1000)  # acks unseen server data
    chaff.ttl = 1
    k.feed(chaff, True)
    assert k.tracker.stats.reassembly_gap == 0  # its ACK was not taken
    k.c("PA", 0, b"abc")  # real bytes before the chaff
    k.c("PA", 5, b"fgh")  # real bytes after it: 3..5 missing
    k.s("A", 5, ack_off=8)  # the receiver has 0..8: the chaff's 3..5 filled the hole
    assert k.ts == b"abcXXfgh"
    assert k.sess is not None and k.sess.cli.weak is None and k.sess.cli.weak_bytes == 0


def test_zero_window_probe_byte_counts_only_when_acknowledged() -> None:
    k = Conn()
    k.handshake()
    k.s("A", 0, win=0)
    k.c("PA", 0, b"X")
    assert k.ts == b""
    k.s("A", 0, ack_off=1, win=1000)  # this receiver took the probe's byte
    assert k.ts == b"X"
    k.c("PA", 1, b"yz")
    assert k.ts == b"Xyz"


def test_urgent_pointer_past_the_segment_marks_a_later_byte() -> None:
    k = Conn()
    k.handshake()
    k.c("PAU", 0, b"ab")  # no urgent pointer: nothing marked
    p = k.packet(True, "PAU", 2, b"cd")
    p.tcp_urp = 4  # the urgent byte is stream offset 2 + 4 - 1 = 5
    k.feed(p, True)
    k.c("PA", 4, b"efgh")
    assert k.ts == b"abcdegh"
    assert k.events.count("stream.urgent_data") == 2
    assert k.sess is not None and k.sess.cli.urg is None


def test_packets_the_receiver_ip_layer_discards_are_not_reassembled() -> None:
    k = Conn()
    k.handshake()
    p = k.packet(True, "PA", 0, b"chaff")
    p.l3_discard = True
    assert k.feed(p, True) == StreamUpdate()
    k.c("PA", 0, b"real!")
    assert k.ts == b"real!"


# -- flood (bench/stream_flood.py, small) ----------------------------------------------------------

def test_flood_of_holes_and_fragment_trains_stays_within_the_memcaps() -> None:
    path = Path(__file__).resolve().parents[2] / "bench" / "stream_flood.py"
    spec = importlib.util.spec_from_file_location("stream_flood", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["stream_flood"] = mod  # its dataclass looks itself up there
    spec.loader.exec_module(mod)
    # Caps small enough that the flood (20,000 held segments, 10,000 trains) hits them.
    r = mod.run(segments=20_000, trains=10_000, reassembly_memcap=512 * 1024,
                defrag_memcap=256 * 1024, stream_memcap=1024 * SESSION_COST_BYTES)
    assert r.errors == 0
    assert r.segment_memcap_drops > 0 and r.defrag_evictions > 0
    assert r.reassembly_peak <= 512 * 1024 and r.defrag_peak <= 256 * 1024
    assert r.stream_peak <= 1024 * SESSION_COST_BYTES
    # the normal connection, interleaved over the whole flood, was reassembled: the
    # stream rule and the HTTP parser both saw its request (split in 4-byte segments)
    assert r.normal_alerts == {1: 1, 2: 1}
