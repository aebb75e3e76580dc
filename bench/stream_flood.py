"""Out-of-order segment and fragment flood through the engine, in memory (no network).

    .venv/bin/python bench/stream_flood.py [--segments 200000] [--trains 100000]
        [--reassembly-memcap 16mb] [--defrag-memcap 8mb]

Generated frames (Ethernet, RFC 2544 benchmarking addresses 198.18.0.0/15 and
2001:2::/48, never sent anywhere) are fed to `Engine.handle` one by one:
- `--segments` out-of-order TCP segments: flows of 10 segments each, every flow opened
  with a full handshake, every segment 100 bytes after a 100-byte hole that is never
  filled, so each one must be held (or refused at the memcap);
- `--trains` incomplete fragment trains (9 in 10 IPv4, 1 in 10 IPv6): each one first
  fragment (MF set) whose datagram never completes;
- interleaved with both, one normal HTTP connection whose request arrives in 4-byte
  segments spread over the whole flood, with a tcp-stream rule and an http.uri rule on
  the request: both must alert once, i.e. it was reassembled correctly.

Prints RSS before and after, the configured memcaps and the highest usage seen
(after every frame), refusals, and whether the normal flow was detected; exits
non-zero if a memcap was exceeded or the normal flow was not reassembled.
tests/core/test_stream.py runs a small flood with the same code.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.core.commands import Log
from appliance.core.defrag import DefragConfig
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import LINKTYPE_ETHERNET, PacketIn, Shutdown
from appliance.core.flows import FlowConfig
from appliance.core.stream import StreamConfig, l4_checksum
from appliance.rules.loader import detection_from_text

ETH4 = bytes.fromhex("020000000014" "02000000000a" "0800")
ETH6 = bytes.fromhex("020000000014" "02000000000a" "86dd")
SERVER4 = bytes([198, 19, 0, 1])
NORMAL_CLIENT4 = bytes([198, 19, 0, 2])
REQUEST = b"GET /flood-survivor.exe HTTP/1.1\r\nHost: bench.example\r\n\r\n"
RULES = [
    'alert tcp-stream any any -> any any (msg:"normal flow, stream"; flow:to_server; '
    'content:"GET /flood-survivor.exe HTTP/1.1"; sid:1;)',
    'alert http any any -> any any (msg:"normal flow, uri"; http.uri; '
    'content:"/flood-survivor.exe"; sid:2;)',
]
MIB = 1024 * 1024


def _ip_sum(h: bytes) -> int:
    s = sum(struct.unpack("!10H", h))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src: bytes, dst: bytes, proto: int, body: bytes, ident: int = 0,
         frag: int = 0) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident & 0xFFFF, frag, 64,
                    proto, 0, src, dst)
    return ETH4 + h[:10] + struct.pack("!H", _ip_sum(h)) + h[12:] + body


def tcp4(src: bytes, dst: bytes, sp: int, dp: int, seq: int, ack: int, flags: int,
         payload: bytes = b"") -> bytes:
    seg = struct.pack("!HHIIBBHHH", sp, dp, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4,
                      flags, 65535, 0, 0) + payload
    c = l4_checksum(src, dst, 6, seg)
    return ipv4(src, dst, 6, seg[:16] + struct.pack("!H", c) + seg[18:])


def frag6(src: bytes, dst: bytes, ident: int, body: bytes) -> bytes:
    fh = struct.pack("!BBHI", 17, 0, 1, ident)  # offset 0, M=1
    h = struct.pack("!IHBB16s16s", 6 << 28, 8 + len(body), 44, 64, src, dst)
    return ETH6 + h + fh + body


SYN, ACK, PSH_ACK, SYN_ACK = 0x02, 0x10, 0x18, 0x12


def normal_flow(n_slots: int) -> list[list[bytes]]:
    """The normal connection's frames, split into `n_slots` groups to interleave: the
    handshake first, the request in 4-byte segments spread over the rest, then the
    server's ACK."""
    c, s, sp, dp = NORMAL_CLIENT4, SERVER4, 40000, 80
    cisn, sisn = 1000, 5000
    frames = [tcp4(c, s, sp, dp, cisn, 0, SYN), tcp4(s, c, dp, sp, sisn, cisn + 1, SYN_ACK),
              tcp4(c, s, sp, dp, cisn + 1, sisn + 1, ACK)]
    for off in range(0, len(REQUEST), 4):
        frames.append(tcp4(c, s, sp, dp, cisn + 1 + off, sisn + 1, PSH_ACK,
                           REQUEST[off:off + 4]))
    frames.append(tcp4(s, c, dp, sp, sisn + 1, cisn + 1 + len(REQUEST), ACK))
    slots: list[list[bytes]] = [[] for _ in range(n_slots)]
    for i, fr in enumerate(frames):
        slots[i * n_slots // len(frames)].append(fr)
    return slots


def flood(segments: int, trains: int, normal_slots: int = 200) -> Iterator[bytes]:
    """The flood's frames, the normal flow's interleaved."""
    per_flow = 10
    flows = max(1, segments // per_flow)
    slots = normal_flow(normal_slots)
    total = flows + trains
    step = max(1, total // normal_slots)
    k = 0
    f = t = 0
    while f < flows or t < trains:
        if k % step == 0 and k // step < normal_slots:
            yield from slots[k // step]
        k += 1
        # alternate: a flow's ten segments, then a few fragment trains
        if f < flows:
            c = bytes([198, 18, (f >> 8) & 0xFF, f & 0xFF])
            sp = 1024 + (f >> 16)
            isn = 7 + f * 977
            yield tcp4(c, SERVER4, sp, 80, isn, 0, SYN)
            yield tcp4(SERVER4, c, 80, sp, 9000, isn + 1, SYN_ACK)
            yield tcp4(c, SERVER4, sp, 80, isn + 1, 9001, ACK)
            for i in range(min(per_flow, segments - f * per_flow)):
                yield tcp4(c, SERVER4, sp, 80, isn + 1 + 100 + 200 * i, 9001, PSH_ACK,
                           b"x" * 100)
            f += 1
        for _ in range(max(1, trains // flows) if f < flows else 1):
            if t >= trains:
                break
            body = struct.pack("!HHHH", 5000, 53, 800, 0) + b"y" * 56
            if t % 10 == 9:
                src6 = bytes.fromhex("20010002000000000000000000000000")[:12] + \
                    t.to_bytes(4, "big")
                yield frag6(src6, bytes.fromhex("20010002" + "00" * 11 + "01"), t, body)
            else:
                src4 = bytes([198, 18, 128 | ((t >> 16) & 0x7F), (t >> 8) & 0xFF])
                yield ipv4(src4, SERVER4, 17, body, ident=t, frag=0x2000)
            t += 1
    for k2 in range(k // step, normal_slots):
        yield from slots[k2]


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class FloodResult:
    frames: int
    seconds: float
    rss_before_kib: int
    rss_after_kib: int
    reassembly_memcap: int
    reassembly_peak: int
    stream_memcap: int
    stream_peak: int
    defrag_memcap: int
    defrag_peak: int
    segment_memcap_drops: int
    defrag_evictions: int
    normal_alerts: dict[int, int]
    errors: int

    @property
    def within_memcaps(self) -> bool:
        return (self.reassembly_peak <= self.reassembly_memcap
                and self.stream_peak <= self.stream_memcap
                and self.defrag_peak <= self.defrag_memcap)

    @property
    def normal_flow_ok(self) -> bool:
        return self.normal_alerts == {1: 1, 2: 1}


def run(segments: int, trains: int, reassembly_memcap: int, defrag_memcap: int,
        stream_memcap: int = 64 * MIB) -> FloodResult:
    loaded = detection_from_text(RULES)
    sc = StreamConfig(reassembly_memcap=reassembly_memcap, memcap=stream_memcap)
    cfg = EngineConfig(flow=replace(FlowConfig(), stream=sc),
                       defrag=DefragConfig(memcap=defrag_memcap), heuristics=None,
                       log_stream_anomalies=False, log_decode_anomalies=False)
    eng = Engine(cfg, loaded.engine)
    st = eng.flows.stream
    rss0 = rss_kib()
    peaks = [0, 0, 0]
    alerts: dict[int, int] = {}
    n = 0
    t0 = time.perf_counter()
    for fr in flood(segments, trains):
        n += 1
        for c in eng.handle(PacketIn(n, 1_700_000_000.0 + n * 1e-5, fr, LINKTYPE_ETHERNET)):
            if isinstance(c, Log) and c.record["event_type"] == "alert":
                sid = c.record["alert"]["signature_id"]
                alerts[sid] = alerts.get(sid, 0) + 1
        if st.reassembly_memuse > peaks[0]:
            peaks[0] = st.reassembly_memuse
        if st.memuse > peaks[1]:
            peaks[1] = st.memuse
        if eng.defrag.memuse > peaks[2]:
            peaks[2] = eng.defrag.memuse
    secs = time.perf_counter() - t0
    rss1 = rss_kib()
    eng.handle(Shutdown())
    return FloodResult(n, secs, rss0, rss1, reassembly_memcap, peaks[0], stream_memcap,
                       peaks[1], defrag_memcap, peaks[2], st.stats.segment_memcap_drop,
                       eng.defrag.stats.memcap_hits, alerts, eng.stats.errors)


def _size(text: str) -> int:
    t = text.lower()
    for suf, mul in (("gb", 1 << 30), ("mb", MIB), ("kb", 1024)):
        if t.endswith(suf):
            return int(float(t[:-2]) * mul)
    return int(t)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=200_000)
    ap.add_argument("--trains", type=int, default=100_000)
    ap.add_argument("--reassembly-memcap", default="16mb")
    ap.add_argument("--defrag-memcap", default="8mb")
    a = ap.parse_args()
    r = run(a.segments, a.trains, _size(a.reassembly_memcap), _size(a.defrag_memcap))
    print(f"frames fed: {r.frames:,} ({a.segments:,} out-of-order segments in "
          f"{a.segments // 10:,} flows with holes, {a.trains:,} incomplete fragment "
          f"trains, one normal flow) in {r.seconds:.1f} s ({r.frames / r.seconds:,.0f} "
          f"frames/s)")
    print(f"RSS before {r.rss_before_kib / 1024:.1f} MiB, after {r.rss_after_kib / 1024:.1f} "
          f"MiB (+{(r.rss_after_kib - r.rss_before_kib) / 1024:.1f} MiB; flows and sessions "
          f"included)")
    print(f"stream reassembly memcap {r.reassembly_memcap / MIB:.1f} MiB, peak use "
          f"{r.reassembly_peak / MIB:.2f} MiB, segments refused at the memcap "
          f"{r.segment_memcap_drops:,}")
    print(f"stream session memcap {r.stream_memcap / MIB:.1f} MiB, peak use "
          f"{r.stream_peak / MIB:.2f} MiB")
    print(f"defrag memcap {r.defrag_memcap / MIB:.1f} MiB, peak use "
          f"{r.defrag_peak / MIB:.2f} MiB, memcap hits (oldest train evicted) "
          f"{r.defrag_evictions:,}")
    print(f"within memcaps: {r.within_memcaps}; normal flow reassembled and detected "
          f"(tcp-stream and http.uri alerts {r.normal_alerts}): {r.normal_flow_ok}; "
          f"engine errors {r.errors}")
    return 0 if r.within_memcaps and r.normal_flow_ok and not r.errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
