"""Memory of the heuristic detectors under a spray of spoofed sources.

Run: .venv/bin/python bench/heuristics_memory.py [--sources N]

Each of N distinct source addresses (default 1,000,000, synthetic Packet objects: no
network) sends what fills every per-source table once: a SYN to a guest (flood, beacon),
a FIN probe (stealth scan), a UDP probe refused by ICMP (scan by port and by host), a
short SSH connection ending (brute force), an HTTP 401 and a TXT query for a fresh name
(DNS). The same loop runs twice in one process: first with no detector (baseline: the
cost of building the packets and flows), then with DEFAULT_DETECTORS. Peak RSS only
grows, so the baseline runs first; the difference is what the detectors' bounded tables
cost at their caps. Prints figures; asserts nothing (DESIGN.md: benchmarks print).
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.core.decode import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Packet
from appliance.core.detect.heuristics import (
    DEFAULT_DETECTORS,
    HeuristicsEngine,
)
from appliance.core.flows import Flow, flow_key, protocol_class

GUEST = b"\x0a\x14\x00\x0a"  # 10.20.0.10
RESOLVER = b"\x0a\x14\x00\x35"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return float("nan")
    return pages * resource.getpagesize() / (1024 * 1024)


def _pkt(ts: float, src: bytes, dst: bytes, proto: int, sp: int, dp: int,
         flags: int = -1) -> Packet:
    p = Packet(ts, b"")
    p.ipver = 4
    p.l4_off = 20
    p.src, p.dst, p.proto, p.sp, p.dp, p.tcp_flags = src, dst, proto, sp, dp, flags
    return p


def spray(eng: HeuristicsEngine, n: int) -> tuple[float, int]:
    """Returns (seconds, hits)."""
    hits = 0
    t0 = time.perf_counter()
    for i in range(n):
        src = (0xC6120000 + i).to_bytes(4, "big")  # 198.18.0.0/15 and up: distinct
        ts = 1_700_000_000.0 + i * 1e-4
        syn = _pkt(ts, src, GUEST, PROTO_TCP, 40000 + i % 20000, 22, 0x02)
        f = Flow(flow_key(syn), syn, protocol_class(PROTO_TCP))
        f.ts_pkts = 1
        hits += len(eng.on_packet(syn, f, True, True))
        fin = _pkt(ts, src, GUEST, PROTO_TCP, 40001, 80 + i % 1000, 0x01)
        hits += len(eng.on_packet(fin, None, True, True))
        icmp = _pkt(ts, GUEST, src, PROTO_ICMP, 0, 0)
        icmp.icmp_type, icmp.icmp_code = 3, 3
        icmp.icmp_inner = (PROTO_UDP, src, 40002, GUEST, 161)
        hits += len(eng.on_packet(icmp, f, False, False))
        f.flags_ts, f.flags_tc, f.last = 0x12, 0x12, ts + 1.0
        hits += len(eng.on_flow_end(f))
        hits += len(eng.on_http_status(syn, f, 401))
        q = _pkt(ts, src, RESOLVER, PROTO_UDP, 30000, 53)
        name = b"d%d.%x.exfil.example" % (i, i * 2654435761 & 0xFFFFFFFF)
        hits += len(eng.on_dns_query(q, None, name, 16))
    return time.perf_counter() - t0, hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", type=int, default=1_000_000)
    n = ap.parse_args().sources

    gc.collect()
    start = current_rss_mib()
    base = HeuristicsEngine(detectors=[])
    secs, _ = spray(base, n)
    gc.collect()
    base_peak, base_now = peak_rss_mib(), current_rss_mib()
    print(f"sources sprayed: {n:,}")
    print(f"baseline (no detectors): {secs:.1f} s, {secs / n * 1e6:.2f} us/source; "
          f"peak RSS {base_peak:.1f} MiB, current {base_now:.1f} MiB (start {start:.1f})")
    del base

    eng = HeuristicsEngine(detectors=DEFAULT_DETECTORS)
    secs, hits = spray(eng, n)
    gc.collect()
    peak, now = peak_rss_mib(), current_rss_mib()
    print(f"with detectors:          {secs:.1f} s, {secs / n * 1e6:.2f} us/source; "
          f"peak RSS {peak:.1f} MiB, current {now:.1f} MiB")
    print(f"detectors' cost: +{peak - base_peak:.1f} MiB peak, +{now - base_now:.1f} MiB held")
    print(f"hits: {hits} (the spray is itself a SYN flood on 10.20.0.10:22: one hit, then"
          " suppressed; the other tables see one event per source: nothing to report)")
    print("table sizes (entries) vs caps:")
    c = eng.config
    caps = {
        "scan.by_port": c.scan.max_entries, "scan.by_host": c.scan.max_entries,
        "scan.stealth": c.scan.max_entries, "flood.victims": c.flood.max_entries,
        "brute.conns": c.brute.max_entries, "brute.failures": c.brute.max_entries,
        "dns.domains": c.dns.max_entries, "dns.names": c.dns.max_names,
        "beacon.pairs": c.beacon.max_entries, "suppress": c.suppress_max_entries,
    }
    for name, size in eng.table_sizes().items():
        print(f"  {name:16} {size:>8,} / {caps.get(name, 0):,}")


if __name__ == "__main__":
    main()
