"""NFQUEUE over a plain netlink socket: GSO super-packets and batch verdicts.

netfilterqueue (libnetfilter_queue) answers one packet at a time and never asks for GSO,
so the kernel segments every super-packet before queueing it and each ~1,500-byte
segment costs one receive and one verdict system call (DESIGN.md, transport figures).
This module speaks nfnetlink_queue itself, with the standard library only:

- the queue is bound with NFQNL_MSG_CONFIG: command BIND, copy mode PACKET with a copy
  range, the queue's maximum length, and the flags NFQA_CFG_F_GSO (the kernel hands
  over GSO super-packets whole: one message per up to 64 KiB of TCP instead of ~45) and,
  when fail-open, NFQA_CFG_F_FAIL_OPEN (a full queue or socket accepts instead of drops);
- the socket gets a large receive buffer (SO_RCVBUFFORCE when privileged), and a
  receive that fails with ENOBUFS (the kernel could not deliver some packet messages:
  those packets were dropped, or accepted when fail-open, never left in the queue) is
  counted and reading goes on;
- verdicts: NFQNL_MSG_VERDICT for one packet, NFQNL_MSG_VERDICT_BATCH for a run of
  consecutive packets that share a verdict and a mark. The kernel applies a batch
  verdict to every packet still queued with an id up to the given one, so a batch is
  only sent while every earlier packet of this queue has its verdict (`VerdictBatcher`).

Field numbers and layouts are the kernel's UAPI (linux/netfilter/nfnetlink_queue.h,
linux/netfilter/nfnetlink.h, linux/netlink.h); every integer in an nfnetlink attribute
is big-endian, the netlink headers are host order.

Not implemented: NFQA_CFG_F_CONNTRACK (NFQA_CT/NFQA_CT_INFO are skipped: the engine keeps
its own flow state), UID/GID and security context, verdicts that rewrite the payload,
and BIG TCP super-packets over 64 KiB (a copy range tops out at 0xFFFF - 4; a longer
packet is handed over truncated, with its NFQA_CAP_LEN, counted in `truncated`; the
worker gives it the configured default uninspected, so with BIG TCP enabled on the
bridge's ports (gro/gso_max_size above 65536) fail-closed drops such packets).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

# linux/netlink.h
NETLINK_NETFILTER: Final = 12
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLMSG_HDRLEN: Final = 16
NLA_HDRLEN: Final = 4
NLA_TYPE_MASK: Final = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
SOL_NETLINK: Final = 270
SO_RCVBUFFORCE: Final = 33  # asm-generic/socket.h: SO_RCVBUF beyond rmem_max (root)

# linux/netfilter/nfnetlink.h
NFNL_SUBSYS_QUEUE: Final = 3
NFNETLINK_V0: Final = 0
NFGENMSG_LEN: Final = 4

# linux/netfilter/nfnetlink_queue.h: message types
NFQNL_MSG_PACKET: Final = 0
NFQNL_MSG_VERDICT: Final = 1
NFQNL_MSG_CONFIG: Final = 2
NFQNL_MSG_VERDICT_BATCH: Final = 3
# packet attributes
NFQA_PACKET_HDR: Final = 1
NFQA_VERDICT_HDR: Final = 2
NFQA_MARK: Final = 3
NFQA_TIMESTAMP: Final = 4
NFQA_IFINDEX_INDEV: Final = 5
NFQA_IFINDEX_OUTDEV: Final = 6
NFQA_IFINDEX_PHYSINDEV: Final = 7
NFQA_IFINDEX_PHYSOUTDEV: Final = 8
NFQA_HWADDR: Final = 9
NFQA_PAYLOAD: Final = 10
NFQA_CT: Final = 11
NFQA_CT_INFO: Final = 12
NFQA_CAP_LEN: Final = 13
NFQA_SKB_INFO: Final = 14
# NFQA_SKB_INFO bits
NFQA_SKB_CSUMNOTREADY: Final = 1 << 0  # checksum left to the device (CHECKSUM_PARTIAL)
NFQA_SKB_GSO: Final = 1 << 1  # a GSO super-packet, longer than the device's MTU
NFQA_SKB_CSUM_NOTVERIFIED: Final = 1 << 2
# config attributes, commands, copy modes, flags
NFQA_CFG_CMD: Final = 1
NFQA_CFG_PARAMS: Final = 2
NFQA_CFG_QUEUE_MAXLEN: Final = 3
NFQA_CFG_MASK: Final = 4
NFQA_CFG_FLAGS: Final = 5
NFQNL_CFG_CMD_BIND: Final = 1
NFQNL_CFG_CMD_UNBIND: Final = 2
NFQNL_COPY_PACKET: Final = 2
NFQA_CFG_F_FAIL_OPEN: Final = 1 << 0
NFQA_CFG_F_GSO: Final = 1 << 2

# linux/netfilter.h verdicts
NF_DROP: Final = 0
NF_ACCEPT: Final = 1

# The kernel caps a copy range at 0xFFFF minus an attribute header (NFQNL_MAX_COPY_RANGE);
# asking for more is clamped, so ask for exactly what it gives.
MAX_COPY_RANGE: Final = 0xFFFF - NLA_HDRLEN
# One receive buffer: the largest packet message (a 64 KiB payload plus ~100 bytes of
# headers and attributes) fits with room to spare, so no message is ever cut (MSG_TRUNC).
# The kernel sends every packet message as a datagram of its own, so a receive returns
# one packet (measured: receives == messages); the parser still takes any number of
# messages per buffer (config answers, errors).
RECV_BUFFER: Final = 256 * 1024
# The socket's receive buffer in the kernel. A full queue of MAX_QUEUE_LEN GSO messages
# could take far more; 16 MiB absorbs bursts of ~250 super-packets or ~30,000 small ones
# (netlink charges an skb's truesize) while the worker is busy with one slow packet.
SOCKET_RCVBUF: Final = 16 * 1024 * 1024
# Consecutive same-verdict packets per batch verdict. The first packet of a batch waits
# for the rest, so a batch is also flushed whenever the socket is empty; 64 keeps that
# wait to 63 packets' inspection at worst, and only when those packets were already
# waiting (issue 6's measurement used 64).
BATCH_MAX: Final = 64
# How long to wait for the kernel's answer to a config request.
ACK_TIMEOUT: Final = 2.0

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host order)
_NLATTR = struct.Struct("=HH")  # len, type (host order)
_LEN_TYPE = struct.Struct("=IH")  # the start of a netlink header: len, type
_NFGEN = struct.Struct("!BBH")  # family, version, res_id (big-endian)
_BE32 = struct.Struct("!I")
_PKT_HDR = struct.Struct("!IHB")  # packet_id, hw_protocol, hook
_HW = struct.Struct("!H")  # hw_addrlen (then 2 pad bytes, then up to 8 address bytes)
_VERDICT_HDR = struct.Struct("!II")  # verdict, id
_ERRNO = struct.Struct("=i")


class NfQueueError(OSError):
    """A config request the kernel refused (errno set), or no answer at all."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, value: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes (the length field excludes the padding)."""
    n = NLA_HDRLEN + len(value)
    return _NLATTR.pack(n, kind) + value + b"\0" * (_align(n) - n)


def message(msg_type: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST,
            seq: int = 0) -> bytes:
    """An nfnetlink_queue message: netlink header, nfgenmsg (AF_UNSPEC, version 0, the
    queue number as res_id), then the attributes."""
    body = _NFGEN.pack(socket.AF_UNSPEC, NFNETLINK_V0, queue) + attrs
    return _NLMSGHDR.pack(NLMSG_HDRLEN + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type,
                          flags, seq, 0) + body


def config_bind(queue: int, seq: int = 0) -> bytes:
    return message(NFQNL_MSG_CONFIG, queue,
                   attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)),
                   NLM_F_REQUEST | NLM_F_ACK, seq)


def config_unbind(queue: int, seq: int = 0) -> bytes:
    return message(NFQNL_MSG_CONFIG, queue,
                   attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, 0)),
                   NLM_F_REQUEST | NLM_F_ACK, seq)


def config_params(queue: int, copy_range: int, max_len: int, seq: int = 0) -> bytes:
    """Copy whole packets (up to copy_range bytes) and hold at most max_len in the kernel."""
    params = _BE32.pack(min(copy_range, MAX_COPY_RANGE)) + bytes([NFQNL_COPY_PACKET])
    return message(NFQNL_MSG_CONFIG, queue,
                   attr(NFQA_CFG_PARAMS, params)
                   + attr(NFQA_CFG_QUEUE_MAXLEN, _BE32.pack(max_len)),
                   NLM_F_REQUEST | NLM_F_ACK, seq)


def config_flags(queue: int, flags: int, mask: int, seq: int = 0, ack: bool = True) -> bytes:
    """Set the queue flags in `mask` to their value in `flags` (others are untouched)."""
    return message(NFQNL_MSG_CONFIG, queue,
                   attr(NFQA_CFG_MASK, _BE32.pack(mask)) + attr(NFQA_CFG_FLAGS,
                                                                _BE32.pack(flags)),
                   NLM_F_REQUEST | (NLM_F_ACK if ack else 0), seq)


def verdict_message(queue: int, packet_id: int, verdict: int, mark: int | None = None,
                    batch: bool = False) -> bytes:
    """A verdict for one packet, or with batch=True for every queued packet whose id is
    at most packet_id. A mark, when given, is set on the packet(s) (skb->mark)."""
    attrs = attr(NFQA_VERDICT_HDR, _VERDICT_HDR.pack(verdict, packet_id))
    if mark is not None:
        attrs += attr(NFQA_MARK, _BE32.pack(mark & 0xFFFFFFFF))
    return message(NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT, queue, attrs)


# -- parsing -----------------------------------------------------------------------------


class QueuedPacket:
    """One packet message from the kernel, with the surface of a netfilterqueue Packet
    that the worker uses (id, physindev, physoutdev, get_payload, get_hw, get_mark,
    set_mark, accept, drop), so both transports share the worker's callback. accept()
    and drop() hand the verdict to `verdict_sink` (the queue's batcher)."""

    __slots__ = ("_set_mark", "cap_len", "hook", "hw_protocol", "hwaddr", "id", "indev",
                 "mark", "outdev", "payload", "physindev", "physoutdev", "skb_info",
                 "verdict_sink")

    def __init__(self, packet_id: int) -> None:
        self.id = packet_id
        self.hw_protocol = 0
        self.hook = 0
        self.payload = b""
        self.mark = 0
        self.indev = 0
        self.outdev = 0
        self.physindev = 0
        self.physoutdev = 0
        self.hwaddr: bytes | None = None
        self.cap_len: int | None = None  # the packet's full length when it was cut
        self.skb_info = 0
        self._set_mark: int | None = None
        self.verdict_sink: Callable[[int, int, int | None], None] | None = None

    @property
    def truncated(self) -> bool:
        return self.cap_len is not None and self.cap_len > len(self.payload)

    @property
    def csum_trusted(self) -> bool:
        """The kernel vouches for the transport checksum: it verified it, or it is
        left to the device (CHECKSUM_PARTIAL, e.g. a guest's veth). Only a packet
        flagged NFQA_SKB_CSUM_NOTVERIFIED needs summing; without the flag the kernel
        sends no skb info at all."""
        return not self.skb_info & NFQA_SKB_CSUM_NOTVERIFIED

    @property
    def checksum_not_ready(self) -> bool:
        """The transport checksum holds only the pseudo-header sum (CHECKSUM_PARTIAL):
        the engine's `checksum_validation: auto` takes such segments as offloaded."""
        return bool(self.skb_info & NFQA_SKB_CSUMNOTREADY)

    def get_payload(self) -> bytes:
        return self.payload

    def get_hw(self) -> bytes | None:
        return self.hwaddr

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, mark: int) -> None:
        self._set_mark = mark

    def accept(self) -> None:
        self._verdict(NF_ACCEPT)

    def drop(self) -> None:
        self._verdict(NF_DROP)

    def _verdict(self, verdict: int) -> None:
        if self.verdict_sink is None:
            raise RuntimeError("packet is not attached to a queue")
        sink, self.verdict_sink = self.verdict_sink, None  # one verdict, never two
        sink(self.id, verdict, self._set_mark)


@dataclass(frozen=True, slots=True)
class NetlinkError:
    """An NLMSG_ERROR: errno 0 is an acknowledgement of request `seq`."""

    errno: int
    seq: int


class MalformedMessage(ValueError):
    pass


def parse_packet(buf: bytes | bytearray | memoryview, off: int, end: int) -> QueuedPacket:
    """The attributes of one NFQNL_MSG_PACKET (from just after its nfgenmsg to `end`).

    The hot loop of the netlink transport. The kernel writes a queue's packet messages
    with the same attributes in the same order as long as the packets are alike
    (bridged, marked or not, with or without skb info), so a message is first read
    with the layouts of recent ones (`_Layout`: one check of every attribute header,
    then every value in one unpack); a message no layout fits is read attribute by
    attribute and its layout kept."""
    for lay in _layouts:
        pkt = lay.read(buf, off, end)
        if pkt is not None:
            return pkt
    pkt = _parse_attrs(buf, off, end)
    learnt = _Layout.learn(buf, off, end)
    if learnt is not None:
        _layouts.insert(0, learnt)
        del _layouts[LAYOUTS_KEPT:]
    return pkt


# Packet message layouts tried before the attribute-by-attribute read, newest first.
LAYOUTS_KEPT: Final = 4


class _Layout:
    """Where a packet message's attributes sit, as a kernel's message showed them: the
    attribute headers (host order) in one struct, their values (big-endian) in another.
    A message fits when every header before the payload's is the same (types and
    lengths, so every offset is) and its payload attribute ends the message; the only
    difference allowed is the payload's length."""

    __slots__ = ("expect", "hdr", "heads", "hw", "payload_at", "ptype", "u32", "vals")

    def __init__(self, heads: struct.Struct, expect: tuple[int, ...], ptype: int,
                 vals: struct.Struct, u32: tuple[int, ...], hw: tuple[int, int] | None,
                 payload_at: int, hdr: int) -> None:
        self.hdr = hdr  # index of the packet header's id in the values (then proto, hook)
        self.heads = heads
        self.expect = expect
        self.ptype = ptype
        self.vals = vals
        self.u32 = u32  # per _U32_ORDER attribute: its index in the values, or -1
        self.hw = hw  # (index of hw_addrlen in the values, bytes of address read)
        self.payload_at = payload_at  # the payload attribute's offset from the first

    @classmethod
    def learn(cls, buf: bytes | bytearray | memoryview, off: int, end: int
              ) -> _Layout | None:
        """The layout of a message `_parse_attrs` read without error; None when it has
        no fixed shape (an attribute twice, or after the payload)."""
        heads, vals = "=", "!"
        expect: list[int] = []
        u32 = dict.fromkeys(_U32_ORDER, -1)
        nvals = 0
        hw: tuple[int, int] | None = None
        hdr = -1
        seen: set[int] = set()
        start = off
        while off + 4 <= end:
            alen, atype = _NLATTR.unpack_from(buf, off)
            kind = atype & NLA_TYPE_MASK
            if kind in seen:
                return None
            seen.add(kind)
            if kind == NFQA_PAYLOAD:
                if off + _align(alen) < end or NFQA_PACKET_HDR not in seen:
                    return None
                return cls(struct.Struct(heads + "HH"), tuple(expect), atype,
                           struct.Struct(vals), tuple(u32[k] for k in _U32_ORDER), hw,
                           off - start, hdr)
            size = _align(alen)
            heads += f"HH{size - 4}x"
            expect += (alen, atype)
            body = size - 4
            if kind == NFQA_PACKET_HDR:
                vals += f"4xIHB{body - _PKT_HDR.size}x"
                hdr = nvals
                nvals += 3
            elif kind in _U32_ATTRS and alen >= 8:
                vals += f"4xI{body - 4}x"
                u32[kind] = nvals
                nvals += 1
            elif kind == NFQA_HWADDR and alen >= NLA_HDRLEN + 4:
                n = min(alen - NLA_HDRLEN - 4, 8)
                vals += f"4xH2x{n}s{body - 4 - n}x"
                hw = (nvals, n)
                nvals += 2
            else:
                vals += f"{size}x"
            off += size
        return None

    def read(self, buf: bytes | bytearray | memoryview, off: int, end: int
             ) -> QueuedPacket | None:
        heads = self.heads
        if off + heads.size > end:
            return None
        h = heads.unpack_from(buf, off)
        if h[-1] != self.ptype or h[:-2] != self.expect:
            return None
        at = off + self.payload_at
        plen = h[-2]
        if plen < NLA_HDRLEN or at + plen > end or at + _align(plen) < end:
            return None
        v = self.vals.unpack_from(buf, off)
        at_hdr = self.hdr
        pkt = QueuedPacket(v[at_hdr])
        pkt.hw_protocol = v[at_hdr + 1]
        pkt.hook = v[at_hdr + 2]
        pkt.payload = bytes(buf[at + NLA_HDRLEN:at + plen])
        mark, indev, outdev, physin, physout, cap, info = self.u32
        if mark >= 0:
            pkt.mark = v[mark]
        if indev >= 0:
            pkt.indev = v[indev]
        if outdev >= 0:
            pkt.outdev = v[outdev]
        if physin >= 0:
            pkt.physindev = v[physin]
        if physout >= 0:
            pkt.physoutdev = v[physout]
        if cap >= 0:
            pkt.cap_len = v[cap] or None
        if info >= 0:
            pkt.skb_info = v[info]
        hw = self.hw
        if hw is not None:
            i, n = hw
            pkt.hwaddr = v[i + 1][:min(v[i], n)]
        return pkt


def _parse_attrs(buf: bytes | bytearray | memoryview, off: int, end: int) -> QueuedPacket:
    """parse_packet attribute by attribute: any order, any attributes (~2 us a packet;
    the attribute numbers are bound to locals once, as global lookups cost a tenth)."""
    pkt: QueuedPacket | None = None
    payload = b""
    hw: bytes | None = None
    # The u32 attributes (mark, interfaces, cap length, skb info) by type number: one
    # store per attribute instead of a chain of comparisons.
    u32 = [0] * _U32_SLOTS
    unpack_attr = _NLATTR.unpack_from
    be32 = _BE32.unpack_from
    u32_attrs = _U32_ATTRS
    a_payload = NFQA_PAYLOAD
    a_hdr = NFQA_PACKET_HDR
    while off + 4 <= end:  # NLA_HDRLEN
        alen, atype = unpack_attr(buf, off)
        if alen < 4 or off + alen > end:
            raise MalformedMessage(f"attribute length {alen} at {off} overruns the message")
        atype &= 0x3FFF  # NLA_TYPE_MASK
        if atype == a_payload:
            payload = bytes(buf[off + 4:off + alen])
        elif atype in u32_attrs:
            if alen >= 8:
                u32[atype] = be32(buf, off + 4)[0]
        elif atype == a_hdr:
            if alen < NLA_HDRLEN + _PKT_HDR.size:
                raise MalformedMessage("packet header attribute too short")
            pid, hw_proto, hook = _PKT_HDR.unpack_from(buf, off + 4)
            pkt = QueuedPacket(pid)
            pkt.hw_protocol = hw_proto
            pkt.hook = hook
        elif atype == NFQA_HWADDR and alen >= NLA_HDRLEN + 4:
            v = off + NLA_HDRLEN
            n = _HW.unpack_from(buf, v)[0]
            hw = bytes(buf[v + 4:v + 4 + min(n, alen - NLA_HDRLEN - 4, 8)])
        off += (alen + 3) & ~3  # attributes are 4-byte aligned (NLA_ALIGN)
    if pkt is None:
        raise MalformedMessage("packet message without NFQA_PACKET_HDR")
    pkt.payload = payload
    pkt.mark = u32[NFQA_MARK]
    pkt.indev = u32[NFQA_IFINDEX_INDEV]
    pkt.outdev = u32[NFQA_IFINDEX_OUTDEV]
    pkt.physindev = u32[NFQA_IFINDEX_PHYSINDEV]
    pkt.physoutdev = u32[NFQA_IFINDEX_PHYSOUTDEV]
    pkt.hwaddr = hw
    pkt.cap_len = u32[NFQA_CAP_LEN] or None  # sent only for a packet that was cut
    pkt.skb_info = u32[NFQA_SKB_INFO]
    return pkt


_U32_ATTRS: Final = frozenset({NFQA_MARK, NFQA_IFINDEX_INDEV, NFQA_IFINDEX_OUTDEV,
                               NFQA_IFINDEX_PHYSINDEV, NFQA_IFINDEX_PHYSOUTDEV,
                               NFQA_CAP_LEN, NFQA_SKB_INFO})
_U32_SLOTS: Final = max(_U32_ATTRS) + 1
# The order of _Layout.u32.
_U32_ORDER: Final = (NFQA_MARK, NFQA_IFINDEX_INDEV, NFQA_IFINDEX_OUTDEV,
                     NFQA_IFINDEX_PHYSINDEV, NFQA_IFINDEX_PHYSOUTDEV, NFQA_CAP_LEN,
                     NFQA_SKB_INFO)
_layouts: list[_Layout] = []


def parse_messages(buf: bytes | bytearray | memoryview, n: int | None = None
                   ) -> Iterator[QueuedPacket | NetlinkError | MalformedMessage]:
    """Every netlink message in buf[:n]: a QueuedPacket per packet message, a
    NetlinkError per error/ack, a MalformedMessage for one that cannot be read (the
    rest of the buffer is skipped when its length cannot be trusted). Other types
    (NOOP, DONE, other subsystems) are skipped."""
    end = len(buf) if n is None else n
    off = 0
    unpack_hdr = _NLMSGHDR.unpack_from
    while off + NLMSG_HDRLEN <= end:
        mlen, mtype, _flags, seq, _pid = unpack_hdr(buf, off)
        if mlen < NLMSG_HDRLEN or off + mlen > end:
            yield MalformedMessage(f"netlink message length {mlen} at {off} "
                                   f"(buffer holds {end - off} bytes)")
            return
        if mtype == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            if mlen < NLMSG_HDRLEN + NFGENMSG_LEN:
                yield MalformedMessage("packet message without nfgenmsg")
            else:
                try:
                    yield parse_packet(buf, off + NLMSG_HDRLEN + NFGENMSG_LEN, off + mlen)
                except MalformedMessage as e:
                    yield e
        elif mtype == NLMSG_ERROR:
            if mlen < NLMSG_HDRLEN + 4:
                yield MalformedMessage("netlink error message too short")
            else:
                code = _ERRNO.unpack_from(buf, off + NLMSG_HDRLEN)[0]
                # The request's header follows the code: its seq says what failed.
                rseq = (unpack_hdr(buf, off + NLMSG_HDRLEN + 4)[3]
                        if mlen >= 2 * NLMSG_HDRLEN + 4 else seq)
                yield NetlinkError(-code, rseq)
        off += _align(mlen)


_PACKET_MSG: Final = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET


# -- verdict batching -----------------------------------------------------------------------


class VerdictBatcher:
    """Collects verdicts of consecutive packets and sends them as few messages as it can.

    Packets arrive in id order and each gets its verdict before the next is looked at,
    so while a run of packets shares (verdict, mark), one NFQNL_MSG_VERDICT_BATCH with
    the last id answers them all: every packet still queued with a lower id belongs to
    the run. A different verdict or mark, BATCH_MAX packets, or flush() (the socket is
    empty; before a packet is held for a file scan; around a reject, whose drop
    must be in the kernel before the reset goes out) sends the run. A run of one goes
    as a plain verdict. A packet whose id is not above the run's last one (the id
    sequence wrapped at 2**32) ends the run first, so a batch never reaches back.
    """

    __slots__ = ("batch_max", "batches", "key", "last_id", "pending", "queue", "send",
                 "singles")

    def __init__(self, queue: int, send: Callable[[bytes], None],
                 batch_max: int = BATCH_MAX) -> None:
        self.queue = queue
        self.send = send
        self.batch_max = batch_max
        self.key: tuple[int, int | None] | None = None
        self.last_id = 0
        self.pending = 0
        self.batches = 0  # batch messages sent
        self.singles = 0  # single verdict messages sent

    def add(self, packet_id: int, verdict: int, mark: int | None) -> None:
        key = (verdict, mark)
        if self.pending and (key != self.key or packet_id <= self.last_id):
            self.flush()
        self.key = key
        self.last_id = packet_id
        self.pending += 1
        if self.pending >= self.batch_max:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        assert self.key is not None
        verdict, mark = self.key
        batch = self.pending > 1
        self.pending = 0
        if batch:
            self.batches += 1
        else:
            self.singles += 1
        self.send(verdict_message(self.queue, self.last_id, verdict, mark, batch=batch))


# -- the socket ------------------------------------------------------------------------------


@dataclass
class QueueStats:
    receives: int = 0  # recv calls that returned data
    messages: int = 0  # packet messages parsed
    enobufs: int = 0  # receives that failed with ENOBUFS (packet messages lost)
    netlink_errors: int = 0  # error replies to our verdicts (e.g. an unknown id)
    malformed: int = 0
    truncated: int = 0  # packets longer than the copy range
    gso: int = 0  # GSO super-packets handed over whole
    csum_not_ready: int = 0


class NfQueue:
    """One bound NFQUEUE on its own netlink socket (non-blocking)."""

    def __init__(self, queue: int, copy_range: int = MAX_COPY_RANGE, max_len: int = 4096,
                 fail_open: bool = False, gso: bool = True, rcvbuf: int = SOCKET_RCVBUF,
                 batch_max: int = BATCH_MAX) -> None:
        self.queue = queue
        self.stats = QueueStats()
        self._buf = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._early: list[QueuedPacket] = []  # packets that came in while awaiting acks
        self._seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.batcher = VerdictBatcher(queue, self._send, batch_max)
            self.sock.bind((0, 0))
            self._set_rcvbuf(rcvbuf)
            self._request(config_bind(queue, self._next_seq()))
            self._request(config_params(queue, copy_range, max_len, self._next_seq()))
            mask = NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN
            open_flag = NFQA_CFG_F_FAIL_OPEN if fail_open else 0
            self.gso = gso
            try:
                self._request(config_flags(queue, (NFQA_CFG_F_GSO if gso else 0) | open_flag,
                                           mask, self._next_seq()))
            except NfQueueError as e:
                if not gso or e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                # A kernel without NFQA_CFG_F_GSO (before 3.10): segments are queued,
                # as with netfilterqueue; batch verdicts still apply.
                self.gso = False
                self._request(config_flags(queue, open_flag, NFQA_CFG_F_FAIL_OPEN,
                                           self._next_seq()))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def _set_rcvbuf(self, size: int) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except OSError:  # not privileged: as much as net.core.rmem_max allows
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def fileno(self) -> int:
        return self.sock.fileno()

    def _send(self, msg: bytes) -> None:
        try:
            self.sock.send(msg)
        except BlockingIOError:
            # The kernel processes a netlink request inside send(); EAGAIN is not
            # expected for sends to the kernel, but a verdict must not be lost: retry
            # once blocking.
            self.sock.setblocking(True)
            try:
                self.sock.send(msg)
            finally:
                self.sock.setblocking(False)

    def _request(self, msg: bytes) -> None:
        """Send a config request and wait for its acknowledgement (blocking, bounded)."""
        seq = _NLMSGHDR.unpack_from(msg, 0)[3]
        self.sock.settimeout(ACK_TIMEOUT)
        try:
            self.sock.send(msg)
            while True:
                try:
                    n = self.sock.recv_into(self._buf)
                except TimeoutError:
                    raise NfQueueError(errno.ETIMEDOUT, f"queue {self.queue}: no answer "
                                       "to a config request") from None
                except OSError as e:
                    if e.errno == errno.ENOBUFS:
                        self.stats.enobufs += 1
                        continue
                    raise
                for m in parse_messages(self._view, n):
                    if isinstance(m, QueuedPacket):
                        self._early.append(m)  # queued already: answered by receive()
                    elif isinstance(m, NetlinkError) and m.seq == seq:
                        if m.errno:
                            raise NfQueueError(m.errno, f"queue {self.queue}: "
                                               f"{_config_what(msg)}: "
                                               f"{errno.errorcode.get(m.errno, m.errno)}")
                        return
        finally:
            self.sock.settimeout(None)

    def receive(self) -> list[QueuedPacket]:
        """The packets of one receive (none when the socket is empty). Each packet's
        accept()/drop() goes to this queue's batcher."""
        st = self.stats
        sink = self.batcher.add
        out = self._early
        self._early = []
        for early in out:
            early.verdict_sink = sink
        try:
            n = self.sock.recv_into(self._buf, RECV_BUFFER, socket.MSG_DONTWAIT)
        except BlockingIOError:
            n = 0
        except InterruptedError:
            n = 0
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            st.enobufs += 1  # lost messages: the kernel already dropped/accepted them
            n = 0
        if not n:
            return out
        st.receives += 1
        view = self._view
        mlen, mtype = _LEN_TYPE.unpack_from(view, 0)
        if mtype == _PACKET_MSG and NLMSG_HDRLEN + NFGENMSG_LEN <= mlen <= n <= _align(mlen):
            # The usual receive: exactly one packet message (no generator, no loop).
            try:
                pkt = parse_packet(view, NLMSG_HDRLEN + NFGENMSG_LEN, mlen)
            except MalformedMessage:
                st.malformed += 1  # answered by the next batch verdict, as below
                return out
            pkt.verdict_sink = sink
            out.append(pkt)
            st.messages += 1
            if pkt.skb_info or pkt.cap_len:
                self._count_skb_info(pkt)
        else:
            for m in parse_messages(view, n):
                if type(m) is QueuedPacket:
                    m.verdict_sink = sink
                    out.append(m)
                    st.messages += 1
                    if m.skb_info or m.cap_len:
                        self._count_skb_info(m)
                elif isinstance(m, NetlinkError):
                    if m.errno:
                        st.netlink_errors += 1
                else:
                    # A message without a readable packet id gets no verdict from us;
                    # the next batch verdict (every id up to its own) answers it.
                    st.malformed += 1
        return out

    def _count_skb_info(self, m: QueuedPacket) -> None:
        st = self.stats
        if m.skb_info & NFQA_SKB_GSO:
            st.gso += 1
        if m.skb_info & NFQA_SKB_CSUMNOTREADY:
            st.csum_not_ready += 1
        if m.cap_len is not None and m.cap_len > len(m.payload):
            st.truncated += 1

    @property
    def has_early(self) -> bool:
        """Packets read while waiting for a config answer, not yet handed out."""
        return bool(self._early)

    def flush(self) -> None:
        self.batcher.flush()

    def close(self) -> None:
        """Send what is pending and unbind (the kernel drops what is still queued when
        the socket closes; a worker only closes when it stops)."""
        try:
            self.flush()
            self.sock.setblocking(True)
            self.sock.send(config_unbind(self.queue, self._next_seq()))
        except OSError:
            pass
        finally:
            self.sock.close()

    def __enter__(self) -> NfQueue:
        return self

    def __exit__(self, *_a: object) -> None:
        self.close()


def _config_what(msg: bytes) -> str:
    """What a config request asked for, for error messages."""
    kinds = []
    off = NLMSG_HDRLEN + NFGENMSG_LEN
    while off + NLA_HDRLEN <= len(msg):
        alen, atype = _NLATTR.unpack_from(msg, off)
        kinds.append({NFQA_CFG_CMD: "bind/unbind", NFQA_CFG_PARAMS: "copy mode",
                      NFQA_CFG_QUEUE_MAXLEN: "queue length", NFQA_CFG_MASK: "flags",
                      NFQA_CFG_FLAGS: "flags"}.get(atype, str(atype)))
        off += _align(max(alen, NLA_HDRLEN))
    return "/".join(dict.fromkeys(kinds))
