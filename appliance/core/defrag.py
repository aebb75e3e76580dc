"""IPv4/IPv6 fragment reassembly with target-based overlap policies, timeouts, memcap.

An IPS must rebuild the datagram the receiving host will rebuild. When fragments
overlap, hosts disagree on whose bytes win (Novak, "Target-Based Fragmentation
Reassembly", 2005; Suricata's defrag policies). Each policy here is a rule deciding,
for two overlapping fragments, whether the newer one's bytes replace the older one's:

- first:   the older fragment always wins (Windows-like "first come").
- last:    the newer fragment always wins.
- bsd:     the newer wins only where it starts before the older one (Suricata's default).
- linux:   the newer wins where it starts at or before the older one.
- windows: the older wins, unless the newer starts before it and ends after it (Suricata
           DEFRAG_POLICY_WINDOWS; solaris is treated the same way).

IPv6 has no policy: RFC 5722 makes every current receiver drop a datagram whose
fragments overlap (with the fragments still to come), so the datagram is given up.

Reassembly happens when the last fragment (MF clear) is in and the data from 0 to its
end is contiguous. Sizes past 65535 bytes (the "ping of death" shape) are refused with
an anomaly.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from appliance.core.decode import Packet

POLICIES: Final = ("first", "last", "bsd", "linux", "windows", "solaris")

# The largest IP datagram (RFC 791 total length is 16 bits; RFC 8200 payload length).
MAX_DATAGRAM: Final = 65535
# Per-datagram fragment cap: enough for a maximal datagram cut into 8-byte pieces
# (65535 / 8), so no legitimate datagram is refused; past it a sender is only trying to
# make reassembly expensive (Suricata's defrag.max-frags guards the same thing).
MAX_FRAGS_PER_DATAGRAM: Final = 8192
# Overlapping fragments per datagram before it is given up: real retransmissions
# overlap a handful of times; reassembling with overlaps costs O(fragments x segments).
MAX_OVERLAPS_PER_DATAGRAM: Final = 64

# What a datagram being rebuilt costs on top of its payload bytes, counted against the
# memcap (measured with tracemalloc in tests/core/test_defrag.py: ~850 bytes for a
# tracker holding one 64-byte fragment): the tracker, its coverage lists, its key and
# table entry; and per fragment the fragment object and its bytes header. Without them
# a flood of tiny incomplete trains would cost ten times what the memcap allows.
TRACKER_OVERHEAD: Final = 600
FRAG_OVERHEAD: Final = 150

DefragKey = tuple[int, tuple[int, ...], bytes, bytes, int, int]

# A first fragment too short to hold the whole transport header (and, for IPv6, the
# rest of the header chain): the "tiny fragment" attack of RFC 1858 section 3, which
# hides the TCP flags or ports from a filter that only looks at first fragments; RFC
# 7112 forbids it for IPv6. Reassembly still takes it (the receiver will), so what is
# inspected is the rebuilt datagram. Suricata has no event for it: these names are ours
# (Suricata-style, so decode-event rules and anomaly records treat them alike).
EV_TINY_FIRST_V4: Final = "decoder.ipv4.frag_tiny_first"
EV_TINY_FIRST_V6: Final = "decoder.ipv6.frag_tiny_first"
APPLIANCE_EVENTS: Final = frozenset({EV_TINY_FIRST_V4, EV_TINY_FIRST_V6})
# The fixed part of each transport header (RFC 9293, 768, 792, 4443, 9260).
_L4_MIN: Final = {6: 20, 17: 8, 1: 8, 58: 8, 132: 12}
# IPv6 extension headers that may follow a fragment header (hop-by-hop may not).
_IP6_CHAIN: Final = frozenset({43, 60, 135, 51})


def _first_fragment_needs(proto: int, payload: bytes) -> int:
    """How many bytes a first fragment must carry: the rest of the IPv6 header chain,
    then the transport header (TCP: its data offset, when that byte is there)."""
    pos = 0
    for _ in range(8):  # a chain longer than this is odd enough already
        if proto not in _IP6_CHAIN:
            break
        if len(payload) < pos + 2:
            return pos + 8
        size = (payload[pos + 1] + 2) * 4 if proto == 51 else (payload[pos + 1] + 1) * 8
        proto = payload[pos]
        pos += size
    need = _L4_MIN.get(proto, 0)
    if proto == 6 and len(payload) > pos + 12:
        need = max(need, (payload[pos + 12] >> 4) * 4)
    return pos + need


@dataclass(frozen=True, slots=True)
class DefragConfig:
    policy: str = "bsd"  # Suricata's default defrag policy
    timeout: float = 60.0  # Suricata's defrag.timeout default
    memcap: int = 32 * 1024 * 1024  # Suricata's defrag.memcap default
    max_trackers: int = 65535  # Suricata's defrag.trackers default


class _Frag:
    __slots__ = ("data", "end", "off", "seq")

    def __init__(self, off: int, data: bytes, seq: int) -> None:
        self.off = off
        self.end = off + len(data)
        self.data = data
        self.seq = seq


class _Coverage:
    """Merged [start, end) intervals covered so far; tells whether a new one overlaps."""

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, a: int, b: int) -> bool:
        starts, ends = self.starts, self.ends
        i = bisect_right(starts, a) - 1  # last interval starting at or before a
        overlap = (i >= 0 and ends[i] > a) or (i + 1 < len(starts) and starts[i + 1] < b)
        # Merge [a, b) with every interval it touches.
        lo = i if i >= 0 and ends[i] >= a else i + 1
        hi = lo
        while hi < len(starts) and starts[hi] <= b:
            hi += 1
        if lo < hi:
            a = min(a, starts[lo])
            b = max(b, ends[hi - 1])
        starts[lo:hi] = [a]
        ends[lo:hi] = [b]
        return overlap

    @property
    def contiguous_to(self) -> int:
        """End of the covered prefix starting at 0 (0 when offset 0 is missing)."""
        return self.ends[0] if self.starts and self.starts[0] == 0 else 0


class _Tracker:
    __slots__ = ("cover", "dead", "first_header", "frags", "last", "link", "overlaps",
                 "seen_last", "size", "total")

    def __init__(self, ts: float) -> None:
        self.dead = False
        self.frags: list[_Frag] = []
        self.cover = _Coverage()
        self.overlaps = 0
        self.last = ts
        self.total = -1  # datagram payload length, known once the last fragment is in
        self.first_header = b""  # link + IP header (+ v6 unfragmentable part) of offset 0
        self.link = 0
        self.seen_last = False
        self.size = 0


def _newer_wins(policy: str, new: _Frag, old: _Frag) -> bool:
    if policy == "first":
        return False
    if policy == "last":
        return True
    if policy == "bsd":
        return new.off < old.off
    if policy == "linux":
        return new.off <= old.off
    # windows / solaris
    return new.off < old.off and new.end > old.end


class DefragStats:
    __slots__ = ("fragments", "max_frag_hits", "memcap_hits", "memcap_refused", "overlaps",
                 "reassembled", "timeouts", "tiny_first", "too_large")

    def __init__(self) -> None:
        self.fragments = 0
        self.reassembled = 0
        self.timeouts = 0
        self.overlaps = 0
        self.too_large = 0
        self.memcap_hits = 0  # the memcap was reached (the oldest datagram was evicted)
        self.memcap_refused = 0  # ... and this fragment could still not be stored
        self.max_frag_hits = 0
        self.tiny_first = 0  # first fragments shorter than their transport header


class Defragmenter:
    def __init__(self, config: DefragConfig | None = None) -> None:
        self.config = config or DefragConfig()
        if self.config.policy not in POLICIES:
            raise ValueError(f"unknown defrag policy {self.config.policy!r}")
        self.trackers: OrderedDict[DefragKey, _Tracker] = OrderedDict()
        self.memuse = 0
        self.stats = DefragStats()
        self._seq = 0

    def add(self, p: Packet, policy: str | None = None) -> bytes | None:
        """Take a fragment; return the rebuilt datagram (link header, IP header without
        fragmentation, payload) when complete, else None. Anomalies go on `p.events`."""
        assert p.frag is not None
        st = self.stats
        st.fragments += 1
        self._expire(p.ts)
        ident, off, more = p.frag
        if p.l3_discard:
            return None  # the receiver's IP layer drops this fragment (bad options)
        data = p.data
        l3 = p.l3_off
        if p.ipver == 4:
            hlen = (data[l3] & 0x0F) << 2
            tot = int.from_bytes(data[l3 + 2:l3 + 4], "big")
            header_end = l3 + hlen
            payload = data[header_end:l3 + tot]
            key: DefragKey = (4, p.vlan, p.src, p.dst, p.proto, ident)
        else:
            plen = int.from_bytes(data[l3 + 4:l3 + 6], "big")
            header_end, _ = _ipv6_frag_header(data, l3)
            payload = data[header_end + 8:l3 + 40 + plen]
            key = (6, p.vlan, p.src, p.dst, 0, ident)
        # The rebuilt datagram's length field is 16 bits and counts the IPv4 header (IPv6:
        # the extension headers before the fragment header) too.
        if off + len(payload) > MAX_DATAGRAM - (header_end - l3 - (0 if p.ipver == 4 else 40)):
            st.too_large += 1
            p.event("decoder.ipv4.frag_pkt_too_large" if p.ipver == 4
                    else "decoder.ipv6.frag_pkt_too_large")
            return None
        if more and len(payload) % 8 and p.ipver == 6:
            # RFC 8200: all but the last fragment carry a multiple of 8 bytes.
            p.event("decoder.ipv6.frag_invalid_length")
        if off == 0 and more and len(payload) < _first_fragment_needs(p.proto, payload):
            st.tiny_first += 1
            p.event(EV_TINY_FIRST_V4 if p.ipver == 4 else EV_TINY_FIRST_V6)
        cost = len(payload) + FRAG_OVERHEAD
        t = self.trackers.get(key)
        if t is None:
            if len(self.trackers) >= self.config.max_trackers or (
                    self.memuse + cost + TRACKER_OVERHEAD > self.config.memcap):
                st.memcap_hits += 1
                self._evict_oldest()
                if self.memuse + cost + TRACKER_OVERHEAD > self.config.memcap:
                    st.memcap_refused += 1
                    p.event("decoder.ipv4.frag_ignored" if p.ipver == 4
                            else "decoder.ipv6.frag_ignored")
                    return None
            t = _Tracker(p.ts)
            t.size = TRACKER_OVERHEAD
            self.memuse += TRACKER_OVERHEAD
            self.trackers[key] = t
        else:
            self.trackers.move_to_end(key)
            t.last = p.ts
        if t.dead or len(t.frags) >= MAX_FRAGS_PER_DATAGRAM:
            st.max_frag_hits += 1
            p.event("decoder.ipv4.frag_ignored" if p.ipver == 4 else "decoder.ipv6.frag_ignored")
            return None
        self._seq += 1
        fr = _Frag(off, payload, self._seq)
        if t.cover.add(fr.off, fr.end):
            st.overlaps += 1
            t.overlaps += 1
            p.event("decoder.ipv4.frag_overlap" if p.ipver == 4
                    else "decoder.ipv6.frag_overlap")
            if p.ipver == 6 or t.overlaps > MAX_OVERLAPS_PER_DATAGRAM:
                # IPv6: RFC 5722 makes receivers discard a datagram with overlapping
                # fragments, and the fragments still to come: so do we (no policy).
                # Many overlaps in one datagram only serve evasion or CPU exhaustion:
                # give up on it. The tracker stays, empty and marked dead, until it times
                # out, so later fragments cannot start a fresh, different datagram.
                self.memuse -= t.size - TRACKER_OVERHEAD
                t.size = TRACKER_OVERHEAD
                t.frags = []
                t.dead = True
                p.event("decoder.ipv4.frag_ignored" if p.ipver == 4
                        else "decoder.ipv6.frag_ignored")
                return None
        t.frags.append(fr)
        t.size += cost
        self.memuse += cost
        if off == 0:
            if p.ipver == 4:
                t.first_header = data[:header_end]
            else:
                # Keep headers up to (not including) the fragment header; the next-header
                # byte that pointed at it is patched at rebuild.
                t.first_header = data[:header_end] + bytes([p.proto])
            t.link = l3
        if not more:
            t.seen_last = True
            t.total = fr.end
        if not t.seen_last or not t.first_header:
            return None
        rebuilt = self._rebuild(t, p.ipver)
        if rebuilt is None:
            return None
        del self.trackers[key]
        self.memuse -= t.size
        st.reassembled += 1
        return rebuilt

    def _rebuild(self, t: _Tracker, ipver: int) -> bytes | None:
        total = t.total
        if t.cover.contiguous_to < total:
            return None  # a hole remains
        if not t.overlaps:
            ordered = sorted(t.frags, key=lambda f: f.off)
            buf = b"".join(f.data for f in ordered)[:total]
            return self._header(t, ipver, total) + buf
        # The winner map: sorted, non-overlapping (start, end, fragment) segments. Each
        # fragment, in arrival order, takes over the parts where the policy says the
        # newer fragment wins, and every part nobody covered yet.
        policy = self.config.policy
        segs: list[tuple[int, int, _Frag]] = []
        for fr in t.frags:
            a, b = fr.off, min(fr.end, total)
            if a >= b:
                continue
            out: list[tuple[int, int, _Frag]] = []
            pos = a
            for s0, s1, owner in segs:
                if s1 <= a or s0 >= b:
                    out.append((s0, s1, owner))
                    continue
                if s0 < a:
                    out.append((s0, a, owner))
                if pos < s0:
                    out.append((pos, s0, fr))  # a gap only the new fragment covers
                lo, hi = max(s0, a), min(s1, b)
                out.append((lo, hi, fr if _newer_wins(policy, fr, owner) else owner))
                if s1 > b:
                    out.append((b, s1, owner))
                pos = max(pos, hi)
            if pos < b:
                out.append((pos, b, fr))
            out.sort(key=lambda x: x[0])
            segs = out
        buf = b"".join(o.data[s0 - o.off:s1 - o.off] for s0, s1, o in segs)
        return self._header(t, ipver, total) + buf

    @staticmethod
    def _header(t: _Tracker, ipver: int, total: int) -> bytes:
        """The first fragment's link and IP headers, rewritten for the whole datagram."""
        head = bytearray(t.first_header)
        l3 = t.link
        if ipver == 4:
            hlen = (head[l3] & 0x0F) << 2
            head[l3 + 2:l3 + 4] = (hlen + total).to_bytes(2, "big")
            head[l3 + 6:l3 + 8] = b"\x00\x00"  # clear MF and offset
            # Header checksum is left stale: the rebuilt datagram is inspected, never sent.
            return bytes(head)
        # IPv6: drop the fragment header: the byte before it named it; name the upper
        # layer instead (kept as the last byte of first_header by add()).
        upper = head.pop()
        _end, nh_pos = _ipv6_frag_header(bytes(head) + b"\x00" * 8, l3)
        head[nh_pos] = upper
        head[l3 + 4:l3 + 6] = (len(head) - l3 - 40 + total).to_bytes(2, "big")
        return bytes(head)

    def _expire(self, now: float) -> None:
        tmo = self.config.timeout
        while self.trackers:
            key, t = next(iter(self.trackers.items()))
            if now - t.last <= tmo:
                break
            del self.trackers[key]
            self.memuse -= t.size
            self.stats.timeouts += 1

    def _evict_oldest(self) -> None:
        if self.trackers:
            _key, t = self.trackers.popitem(last=False)
            self.memuse -= t.size


def _ipv6_frag_header(data: bytes, l3: int) -> tuple[int, int]:
    """Offset of the IPv6 fragment header and of the next-header byte pointing at it."""
    nh_pos = l3 + 6
    pos = l3 + 40
    nxt = data[nh_pos]
    while nxt in (0, 43, 60, 135) and pos + 2 <= len(data):
        nh_pos = pos
        nxt = data[pos]
        pos += (data[pos + 1] + 1) * 8
    return pos, nh_pos
