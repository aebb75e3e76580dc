"""The netlink NFQUEUE transport without a kernel: messages built and parsed against
hand-built bytes (layouts of linux/netlink.h and linux/netfilter/nfnetlink_queue.h),
verdict batching, and the worker's one-verdict-per-packet contract over it."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.core.commands import ScanRequest, Verdict, VerdictKind
from appliance.core.events import FileScanned, PacketIn
from appliance.io import nfnetlink as nl
from appliance.io.nfqueue import QueueWorker


def nlhdr(length: int, mtype: int, flags: int, seq: int = 0) -> bytes:
    return struct.pack("=IHHII", length, mtype, flags, seq, 0)


def nla(kind: int, value: bytes) -> bytes:
    n = 4 + len(value)
    return struct.pack("=HH", n, kind) + value + b"\0" * (-n % 4)


def packet_msg(pid: int, payload: bytes, *extra: bytes, seq: int = 0) -> bytes:
    """A NFQNL_MSG_PACKET as the kernel sends it: header attribute first."""
    attrs = nla(1, struct.pack("!IHB", pid, 0x0800, 2)) + b"".join(extra) + nla(10, payload)
    body = b"\x00\x00\x00\x05" + attrs  # nfgenmsg: AF_UNSPEC, v0, queue 5
    return nlhdr(16 + len(body), 0x0300, 0, seq) + body


def decode_verdict(msg: bytes) -> tuple[int, int, int, int | None]:
    """(message type, verdict, id, mark) of a verdict message we built."""
    length, mtype, _f, _s, _p = struct.unpack_from("=IHHII", msg)
    assert length == len(msg)
    off, mark, verdict, pid = 20, None, -1, -1
    while off < length:
        alen, atype = struct.unpack_from("=HH", msg, off)
        if atype == 2:
            verdict, pid = struct.unpack_from("!II", msg, off + 4)
        elif atype == 3:
            mark = struct.unpack_from("!I", msg, off + 4)[0]
        off += (alen + 3) & ~3
    return mtype & 0xFF, verdict, pid, mark


# -- building ---------------------------------------------------------------------------

def test_bind_message_bytes() -> None:
    msg = nl.config_bind(3, seq=9)
    # 16 header + 4 nfgenmsg + 8 attribute (len 8, NFQA_CFG_CMD, BIND, pad, pf 0)
    assert msg == (struct.pack("=IHHII", 28, 0x0302, 0x1 | 0x4, 9, 0)
                   + bytes([0, 0, 0, 3]) + struct.pack("=HH", 8, 1) + bytes([1, 0, 0, 0]))


def test_params_message_clamps_copy_range_and_sets_max_len() -> None:
    msg = nl.config_params(1, copy_range=0x10000, max_len=4096)
    body = msg[20:]
    # NFQA_CFG_PARAMS: 5 bytes (copy_range be32, mode) padded to 8, then QUEUE_MAXLEN.
    assert body[:4] == struct.pack("=HH", 9, 2)
    assert struct.unpack("!IB", body[4:9]) == (0xFFFF - 4, 2)  # NFQNL_COPY_PACKET
    assert body[9:12] == b"\0\0\0"
    assert body[12:] == struct.pack("=HH", 8, 3) + struct.pack("!I", 4096)
    assert struct.unpack_from("=I", msg)[0] == len(msg) == 16 + 4 + 12 + 8


def test_flags_message_gso_and_fail_open() -> None:
    msg = nl.config_flags(0, nl.NFQA_CFG_F_GSO | nl.NFQA_CFG_F_FAIL_OPEN,
                          nl.NFQA_CFG_F_GSO | nl.NFQA_CFG_F_FAIL_OPEN, ack=False)
    assert msg[20:] == (struct.pack("=HH", 8, 4) + struct.pack("!I", 5)
                        + struct.pack("=HH", 8, 5) + struct.pack("!I", 5))
    assert struct.unpack_from("=H", msg, 6)[0] == 1  # NLM_F_REQUEST only


def test_verdict_messages() -> None:
    single = nl.verdict_message(2, 77, nl.NF_ACCEPT)
    assert single == (nlhdr(32, 0x0301, 1) + bytes([0, 0, 0, 2])
                      + struct.pack("=HH", 12, 2) + struct.pack("!II", 1, 77))
    batch = nl.verdict_message(2, 90, nl.NF_ACCEPT, mark=0x10000, batch=True)
    assert decode_verdict(batch) == (3, 1, 90, 0x10000)
    assert decode_verdict(nl.verdict_message(0, 5, nl.NF_DROP)) == (1, 0, 5, None)


# -- parsing ----------------------------------------------------------------------------

def test_parse_one_packet_with_every_attribute() -> None:
    ip = bytes(range(40))
    hw = struct.pack("!Hxx", 6) + bytes.fromhex("0a0b0c0d0e0f") + b"\0\0"
    buf = packet_msg(1234, ip,
                     nla(3, struct.pack("!I", 0x10001)),
                     nla(4, b"\0" * 16),  # timestamp: skipped
                     nla(7, struct.pack("!I", 11)), nla(8, struct.pack("!I", 12)),
                     nla(9, hw), nla(13, struct.pack("!I", 70000)),
                     nla(14, struct.pack("!I", 3)))
    (p,) = list(nl.parse_messages(buf))
    assert isinstance(p, nl.QueuedPacket)
    assert (p.id, p.hw_protocol, p.hook) == (1234, 0x0800, 2)
    assert p.get_payload() == ip and p.get_mark() == 0x10001
    assert (p.physindev, p.physoutdev) == (11, 12)
    assert p.get_hw() == bytes.fromhex("0a0b0c0d0e0f")
    assert p.cap_len == 70000 and p.truncated
    assert p.checksum_not_ready and p.skb_info & nl.NFQA_SKB_GSO
    assert p.csum_trusted  # partial: left to the device


def test_only_a_not_verified_checksum_is_untrusted() -> None:
    ip = bytes(range(40))
    for info, trusted in ((None, True), (nl.NFQA_SKB_CSUMNOTREADY, True),
                          (nl.NFQA_SKB_CSUM_NOTVERIFIED, False),
                          (nl.NFQA_SKB_CSUM_NOTVERIFIED | nl.NFQA_SKB_GSO, False)):
        extra = [] if info is None else [nla(14, struct.pack("!I", info))]
        (p,) = list(nl.parse_messages(packet_msg(7, ip, *extra)))
        assert isinstance(p, nl.QueuedPacket)
        assert p.csum_trusted is trusted, info


def test_several_messages_in_one_buffer_and_a_trailing_part() -> None:
    """One receive may hold several messages; an error/ack among them; a length that
    overruns the buffer stops parsing with a MalformedMessage, not an exception."""
    ack = nlhdr(36, 2, 0, 4) + struct.pack("=i", 0) + nlhdr(28, 0x0302, 5, 7)
    err = nlhdr(36, 2, 0, 4) + struct.pack("=i", -16) + nlhdr(28, 0x0302, 5, 8)
    odd = packet_msg(2, b"abc")  # 3-byte payload: the message is padded to 4 bytes
    buf = packet_msg(1, b"x" * 20) + ack + odd + b"\0" * ((-len(odd)) % 4) + err
    buf += nlhdr(200, 0x0300, 0) + b"\0" * 8
    out = list(nl.parse_messages(bytearray(buf) + b"junk", len(buf)))
    assert [type(m).__name__ for m in out] == ["QueuedPacket", "NetlinkError",
                                               "QueuedPacket", "NetlinkError",
                                               "MalformedMessage"]
    assert out[1] == nl.NetlinkError(0, 7)
    assert out[3] == nl.NetlinkError(16, 8)  # EBUSY: the queue is bound elsewhere
    assert isinstance(out[2], nl.QueuedPacket) and out[2].payload == b"abc"


def test_malformed_packet_messages() -> None:
    no_hdr = nlhdr(28, 0x0300, 0) + b"\0\0\0\0" + nla(10, b"abcd")
    bad_attr = nlhdr(28, 0x0300, 0) + b"\0\0\0\0" + struct.pack("=HH", 40, 10) + b"abcd"
    short_hdr = nlhdr(28, 0x0300, 0) + b"\0\0\0\0" + nla(1, b"\0\0\0")
    for buf in (no_hdr, bad_attr, short_hdr):
        (m,) = list(nl.parse_messages(buf))
        assert isinstance(m, nl.MalformedMessage), buf
    # An unknown message type and a NOOP are skipped; the packet after them is read.
    buf = nlhdr(16, 1, 0) + nlhdr(20, 0x0700, 0) + b"\0" * 4 + packet_msg(9, b"z" * 4)
    assert [m.id for m in nl.parse_messages(buf) if isinstance(m, nl.QueuedPacket)] == [9]


def test_attribute_type_flag_bits_are_ignored() -> None:
    """NLA_F_NESTED / NLA_F_NET_BYTEORDER (the top two bits of the type) do not change
    which attribute it is."""
    buf = packet_msg(3, b"data", nla(3 | 0x4000, struct.pack("!I", 42)))
    (p,) = list(nl.parse_messages(buf))
    assert isinstance(p, nl.QueuedPacket) and p.mark == 42


# Optional attributes of a packet message, as the kernel may add them (mark, devices,
# hardware address, timestamp, cap length, skb info), some with odd lengths.
_OPTIONAL: list[bytes] = [
    nla(3, struct.pack("!I", 0x20000)), nla(4, b"\1" * 16), nla(5, struct.pack("!I", 2)),
    nla(6, struct.pack("!I", 3)), nla(7, struct.pack("!I", 11)),
    nla(8, struct.pack("!I", 12)),
    nla(9, struct.pack("!Hxx", 6) + bytes.fromhex("0a0b0c0d0e0f") + b"\0\0"),
    nla(9, struct.pack("!Hxx", 12) + bytes(range(8))), nla(9, struct.pack("!Hxx", 6)),
    nla(13, struct.pack("!I", 70000)), nla(14, struct.pack("!I", 5)),
    nla(3, b"\1\2"), nla(11, b"ct" * 5), nla(3 | 0x4000, struct.pack("!I", 9))]


def _fields(p: Any) -> tuple[Any, ...]:
    if not isinstance(p, nl.QueuedPacket):
        return (type(p).__name__,)
    return tuple(getattr(p, n) for n in nl.QueuedPacket.__slots__ if n != "verdict_sink")


def _read_both(buf: bytes) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """parse_packet (layouts first) and the attribute-by-attribute read of one
    message; each a MalformedMessage when it cannot be read."""
    out = []
    for f in (nl.parse_packet, nl._parse_attrs):
        try:
            out.append(_fields(f(buf, 20, len(buf))))
        except nl.MalformedMessage:
            out.append(("MalformedMessage",))
    return out[0], out[1]


def _msg_header_at(pid: int, payload: bytes, attrs: list[bytes], at: int) -> bytes:
    """A packet message with its header attribute after `at` of the others (the kernel
    writes it first; the attribute read takes any order)."""
    hdr = nla(1, struct.pack("!IHB", pid, 0x0800, 2))
    body = b"\x00\x00\x00\x05" + b"".join([*attrs[:at], hdr, *attrs[at:]]) + nla(10, payload)
    return nlhdr(16 + len(body), 0x0300, 0) + body


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(range(len(_OPTIONAL))), max_size=6),
       st.lists(st.binary(min_size=0, max_size=70), min_size=1, max_size=4),
       st.integers(0, 2**32 - 1), st.integers(-1, 200), st.integers(0, 7),
       st.integers(0, 6))
def test_layout_read_equals_the_attribute_read(extra: list[int], payloads: list[bytes],
                                               pid: int, flip: int, bit: int,
                                               hdr_at: int) -> None:
    """Messages of one shape, the later ones read by the layout the first taught, and
    any of them with a bit flipped (a header, a length, a value), the packet header
    anywhere among the attributes: every field comes out as the attribute-by-attribute
    read gives it, or both refuse the message."""
    attrs = [_OPTIONAL[i] for i in extra]
    for n, payload in enumerate(payloads):
        buf = bytearray(_msg_header_at((pid + n) % 2**32, payload, attrs,
                                       min(hdr_at, len(attrs))))
        if n == len(payloads) - 1 and 0 <= flip < len(buf) - 20:
            buf[20 + flip] ^= 1 << bit
        fast, slow = _read_both(bytes(buf))
        assert fast == slow, buf.hex()


def test_layouts_follow_the_shapes_of_recent_messages() -> None:
    nl._layouts.clear()
    mark = nla(3, struct.pack("!I", 7))
    a = packet_msg(1, b"first", nla(7, struct.pack("!I", 11)))
    b = packet_msg(2, b"second", mark, nla(7, struct.pack("!I", 11)))
    for buf in (a, b, a, b):
        p = nl.parse_packet(buf, 20, len(buf))
        assert p.physindev == 11
    assert len(nl._layouts) == 2  # one per shape, learnt once each
    assert nl.parse_packet(b, 20, len(b)).mark == 7
    assert nl.parse_packet(a, 20, len(a)).mark == 0
    # An attribute twice has no fixed layout: always read the long way, last one wins.
    dup = packet_msg(3, b"x", mark, nla(3, struct.pack("!I", 8)))
    assert nl.parse_packet(dup, 20, len(dup)).mark == 8
    assert len(nl._layouts) == 2
    for n in range(nl.LAYOUTS_KEPT + 2):
        buf = packet_msg(4, b"y", nla(4, b"\0" * (4 * n + 4)))  # a new shape each
        nl.parse_packet(buf, 20, len(buf))
    assert len(nl._layouts) == nl.LAYOUTS_KEPT  # bounded


# -- batching ---------------------------------------------------------------------------

def test_batcher_groups_runs_and_splits_on_change() -> None:
    sent: list[bytes] = []
    b = nl.VerdictBatcher(0, sent.append, batch_max=4)
    for i in range(1, 4):
        b.add(i, nl.NF_ACCEPT, None)
    b.add(4, nl.NF_ACCEPT, 0x10000)  # a mark: not the same run
    b.add(5, nl.NF_ACCEPT, 0x10000)
    b.add(6, nl.NF_DROP, None)
    for i in range(7, 12):  # five accepts: a full batch of four, then one
        b.add(i, nl.NF_ACCEPT, None)
    b.flush()
    b.flush()  # nothing pending: nothing sent
    assert [decode_verdict(m) for m in sent] == [
        (3, 1, 3, None), (3, 1, 5, 0x10000), (1, 0, 6, None), (3, 1, 10, None),
        (1, 1, 11, None)]
    assert (b.batches, b.singles) == (3, 2)


def test_batcher_never_reaches_back_after_an_id_wrap() -> None:
    sent: list[bytes] = []
    b = nl.VerdictBatcher(0, sent.append)
    b.add(0xFFFFFFFF, nl.NF_ACCEPT, None)
    b.add(1, nl.NF_ACCEPT, None)
    b.flush()
    assert [decode_verdict(m)[2] for m in sent] == [0xFFFFFFFF, 1]


def test_packet_gets_one_verdict_only() -> None:
    got: list[tuple[int, int, int | None]] = []
    (p,) = list(nl.parse_messages(packet_msg(5, b"d" * 20)))
    assert isinstance(p, nl.QueuedPacket)
    p.verdict_sink = lambda *a: got.append(a)
    p.set_mark(0x10000)
    p.accept()
    with pytest.raises(RuntimeError):
        p.drop()
    assert got == [(5, nl.NF_ACCEPT, 0x10000)]


# -- the worker over this transport ----------------------------------------------------

def udp(n: int) -> bytes:
    u = struct.pack("!HHHH", 1000 + n, 53, 8, 0)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0,
                       bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + u


class ScriptedEngine:
    """Answers each packet id as told: a verdict kind, 'raise', or 'hold' (a
    ScanRequest answered by FileScanned with a drop)."""

    def __init__(self, script: dict[int, Any]) -> None:
        self.script = script

    def handle(self, ev: Any) -> list[Any]:
        if isinstance(ev, PacketIn):
            what = self.script.get(ev.id, VerdictKind.ACCEPT)
            if what == "raise":
                raise RuntimeError("engine bug")
            if what == "hold":
                return [ScanRequest(ev.id, ev.id, "0" * 64, b"x", 1, None, "f")]
            detail = "reject" if what is VerdictKind.REJECT else ""
            return [Verdict(ev.id, what, detail)]
        if isinstance(ev, FileScanned):
            return [Verdict(ev.token, VerdictKind.DROP)]
        return []


def run_worker(script: dict[int, Any], ids: range, fail_open: bool = False
               ) -> tuple[list[tuple[int, int, int, int | None]], QueueWorker]:
    sent: list[bytes] = []
    batcher = nl.VerdictBatcher(0, sent.append)
    worker = QueueWorker(0, ScriptedEngine(script), None,  # type: ignore[arg-type]
                         fail_open=fail_open, transport="netlink",
                         scan=lambda req: ("malicious", (), "scan"))
    worker._flush = batcher.flush
    buf = b"".join(packet_msg(i, udp(i)) for i in ids)
    for p in nl.parse_messages(buf):
        assert isinstance(p, nl.QueuedPacket)
        p.verdict_sink = batcher.add
        worker.handle(p)
    batcher.flush()
    return [decode_verdict(m) for m in sent], worker


def covered(msgs: list[tuple[int, int, int, int | None]], ids: range) -> dict[int, int]:
    """Which verdict each id ends up with, applying batch semantics (every id up to the
    batch's not yet answered) as the kernel does; an id answered twice fails."""
    left = list(ids)
    out: dict[int, int] = {}
    for mtype, verdict, pid, _mark in msgs:
        hit = [i for i in left if i <= pid] if mtype == 3 else [pid]
        assert hit and all(i in left for i in hit), (mtype, pid)
        for i in hit:
            out[i] = verdict
            left.remove(i)
    assert not left, f"no verdict for {left}"
    return out


def test_worker_hands_the_engine_every_field_of_the_packet() -> None:
    """The callback builds its PacketIn as a plain tuple (the fast way): it must be the
    PacketIn the keywords give, field for field, ports named, MAC cut to 6 bytes."""
    seen: list[Any] = []

    class Recorder(ScriptedEngine):
        def handle(self, ev: Any) -> list[Any]:
            seen.append(ev)
            return super().handle(ev)

    worker = QueueWorker(0, Recorder({}), None, fail_open=False,  # type: ignore[arg-type]
                         transport="netlink")
    worker._ifnames = {11: "desktop", 12: "gateway"}
    hw = struct.pack("!Hxx", 6) + bytes.fromhex("0a0b0c0d0e0f") + b"\0\0"
    for skb_info, trusted in ((0, True), (nl.NFQA_SKB_CSUM_NOTVERIFIED, False)):
        buf = packet_msg(42, udp(42), nla(3, struct.pack("!I", 0x100)),
                         nla(7, struct.pack("!I", 11)), nla(8, struct.pack("!I", 12)),
                         nla(9, hw), nla(14, struct.pack("!I", skb_info)))
        (p,) = list(nl.parse_messages(buf))
        assert isinstance(p, nl.QueuedPacket)
        p.verdict_sink = lambda *a: None
        worker.handle(p)
        ev = seen[-1]
        assert type(ev) is PacketIn and len(ev) == len(PacketIn._fields)
        assert ev == PacketIn(id=42, ts=ev.ts, data=udp(42), linktype=101,
                              in_port="desktop", out_port="gateway", mark=0x100,
                              hw_src=bytes.fromhex("0a0b0c0d0e0f"), csum_trusted=trusted)
    assert worker.stats.errors == 0 and worker.stats.verdicts == {"accept": 2}


def test_worker_sends_one_verdict_per_packet_with_batches() -> None:
    ids = range(1, 11)
    script = {4: VerdictKind.DROP, 5: VerdictKind.DROP, 7: "raise"}
    msgs, worker = run_worker(script, ids)
    verdicts = covered(msgs, ids)
    assert verdicts == {1: 1, 2: 1, 3: 1, 4: 0, 5: 0, 6: 1, 7: 0, 8: 1, 9: 1, 10: 1}
    # accepts 1-3 | drops 4-5 | accept 6 | 7: the engine raised, fail-closed default drop
    assert [(m[0], m[2]) for m in msgs] == [(3, 3), (3, 5), (1, 6), (1, 7), (3, 10)]
    assert worker.stats.errors == 1 and worker.stats.packets == 10


def test_worker_bypass_carries_the_mark_and_fail_open_default() -> None:
    msgs, _ = run_worker({2: VerdictKind.BYPASS, 3: VerdictKind.BYPASS, 4: "raise"},
                         range(1, 6), fail_open=True)
    assert msgs == [(1, 1, 1, None), (3, 1, 3, 0x10000), (3, 1, 5, None)]


def test_reject_and_held_packets_get_verdicts_of_their_own() -> None:
    """Earlier packets are answered before a packet is held for a scan and before a
    reject; the held/rejected packet's own verdict goes alone."""
    ids = range(1, 9)
    msgs, worker = run_worker({3: "hold", 6: VerdictKind.REJECT}, ids)
    assert [(m[0], m[1], m[2]) for m in msgs] == [
        (3, 1, 2),  # 1-2 accepted before the hold
        (1, 0, 3),  # the held packet: dropped (the scan said malicious), alone
        (3, 1, 5),
        (1, 0, 6),  # the rejected packet's drop, alone
        (3, 1, 8)]
    assert covered(msgs, ids)[6] == 0 and worker.stats.errors == 0


def test_truncated_packet_gets_the_default_uninspected() -> None:
    """A packet longer than the copy range (NFQA_CAP_LEN above the payload's length)
    cannot be inspected whole: the configured default, never the engine's accept."""
    for fail_open, want in ((False, nl.NF_DROP), (True, nl.NF_ACCEPT)):
        sent: list[bytes] = []
        batcher = nl.VerdictBatcher(0, sent.append)
        engine = ScriptedEngine({1: VerdictKind.ACCEPT, 2: VerdictKind.DROP})
        worker = QueueWorker(0, engine, None, fail_open=fail_open,  # type: ignore[arg-type]
                             transport="netlink")
        worker._flush = batcher.flush
        buf = b"".join(packet_msg(i, udp(i), nla(13, struct.pack("!I", 65535)))
                       for i in (1, 2))
        for p in nl.parse_messages(buf):
            assert isinstance(p, nl.QueuedPacket) and p.truncated
            p.verdict_sink = batcher.add
            worker.handle(p)
        batcher.flush()
        assert [decode_verdict(m) for m in sent] == [(3, want, 2, None)]
        assert worker.stats.truncated == 2


class FakeNetlinkSocket:
    """Hands out scripted datagrams (bytes) or raises scripted errors, then EAGAIN."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.sent: list[bytes] = []

    def recv_into(self, buf: bytearray, n: int = 0, flags: int = 0) -> int:
        if not self.script:
            raise BlockingIOError
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        buf[:len(item)] = item
        return len(item)

    def send(self, msg: bytes) -> int:
        self.sent.append(msg)
        return len(msg)


def fake_queue(script: list[Any]) -> tuple[nl.NfQueue, FakeNetlinkSocket]:
    q = nl.NfQueue.__new__(nl.NfQueue)  # no kernel: the socket is a fake
    sock = FakeNetlinkSocket(script)
    q.queue, q.stats, q._early, q._seq = 0, nl.QueueStats(), [], 0
    q._buf = bytearray(nl.RECV_BUFFER)
    q._view = memoryview(q._buf)
    q.sock = sock  # type: ignore[assignment]
    q.batcher = nl.VerdictBatcher(0, q._send)
    return q, sock


def test_receive_counts_enobufs_and_goes_on() -> None:
    import errno

    gso = nla(14, struct.pack("!I", nl.NFQA_SKB_GSO | nl.NFQA_SKB_CSUMNOTREADY))
    two = packet_msg(3, b"c" * 8) + packet_msg(4, b"d" * 8)
    q, sock = fake_queue([packet_msg(1, b"a" * 8, gso), OSError(errno.ENOBUFS, "lost"),
                          packet_msg(2, b"b" * 7), two, b"\x05\x00\x00\x00" + b"\0" * 12,
                          packet_msg(5, b"e" * 8, nla(13, struct.pack("!I", 70000)))])
    got = []
    for _ in range(8):
        got += q.receive()
    assert [p.id for p in got] == [1, 2, 3, 4, 5]
    st = q.stats
    assert (st.enobufs, st.messages, st.malformed, st.gso, st.csum_not_ready,
            st.truncated) == (1, 5, 1, 1, 1, 1)
    for p in got:
        p.accept()
    q.flush()
    assert [decode_verdict(m) for m in sock.sent] == [(3, 1, 5, None)]
    with pytest.raises(OSError):
        fake_queue([OSError(errno.EBADF, "closed")])[0].receive()


class FakeKernel(FakeNetlinkSocket):
    """Answers config requests as nfnetlink_queue would: an ack per request, or the
    errno that `refuse(msg)` returns; packets already queued come before the answer."""

    def __init__(self, refuse: Any, early: bytes = b"") -> None:
        super().__init__([])
        self.refuse = refuse
        self.early = early
        self.options: list[tuple[int, int, int]] = []

    def send(self, msg: bytes) -> int:
        self.sent.append(msg)
        seq = struct.unpack_from("=I", msg, 8)[0]
        err = self.refuse(msg)
        self.script.append(self.early + nlhdr(36, 2, 0, seq) + struct.pack("=i", -err)
                           + msg[:16])
        self.early = b""
        return len(msg)

    def bind(self, addr: Any) -> None:
        pass

    def setsockopt(self, level: int, opt: int, value: int) -> None:
        self.options.append((level, opt, value))

    def settimeout(self, t: Any) -> None:
        pass

    def setblocking(self, b: bool) -> None:
        pass

    def close(self) -> None:
        pass


def flags_of(msg: bytes) -> tuple[int, int] | None:
    """(mask, flags) of a config message that sets flags, else None."""
    if struct.unpack_from("=H", msg, 4)[0] != 0x0302 or len(msg) < 36:
        return None
    if struct.unpack_from("=HH", msg, 20) != (8, 4):
        return None
    return struct.unpack_from("!I", msg, 24)[0], struct.unpack_from("!I", msg, 32)[0]


def test_bind_sequence_gso_fallback_and_early_packets(monkeypatch: Any) -> None:
    import errno

    def old_kernel(msg: bytes) -> int:
        f = flags_of(msg)
        return errno.EOPNOTSUPP if f and f[1] & nl.NFQA_CFG_F_GSO else 0

    kernel = FakeKernel(old_kernel, early=packet_msg(1, b"x" * 8))
    monkeypatch.setattr(nl.socket, "socket", lambda *a: kernel)
    q = nl.NfQueue(4, max_len=100, fail_open=True)
    assert not q.gso
    sent = [flags_of(m) for m in kernel.sent]
    assert sent[2:] == [(5, 5), (1, 1)]  # GSO|FAIL_OPEN refused; FAIL_OPEN alone
    assert kernel.options and kernel.options[0][1] == nl.SO_RCVBUFFORCE
    # The packet queued while binding is handed out by the first receive.
    assert q.has_early and [p.id for p in q.receive()] == [1]

    kernel = FakeKernel(lambda m: errno.EBUSY if struct.unpack_from("=H", m, 4)[0] == 0x0302
                        and m[24] == 1 else 0)
    monkeypatch.setattr(nl.socket, "socket", lambda *a: kernel)
    with pytest.raises(nl.NfQueueError, match="bind/unbind: EBUSY"):
        nl.NfQueue(4)
