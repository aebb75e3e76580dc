"""TCP reassembly throughput on a real capture, one core, no detection.

Two lines, measured in the same run on the same packets (already read into memory):
- baseline: decode + flow table lookup and counters (no TCP tracking);
- reassembly: decode + flows + TCP tracking + per-direction reassembly (what
  `FlowTable.update_tcp` does for every TCP packet), with checksum validation as
  configured (default `auto`, as the engine).
Prints packets/s, MB/s of captured bytes, MB/s of reassembled stream bytes delivered,
and the cost ratio of the reassembly line over the baseline.

Run: .venv/bin/python bench/reassembly.py [PCAP] [--repeat N] [--checksum auto|yes|no]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.core.decode import PROTO_TCP, Decoder
from appliance.core.flows import FlowConfig, FlowTable
from appliance.core.stream import StreamConfig
from appliance.io.pcap import PcapReader

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared/data/pcaps/ndpi-mixed.pcap"


def best_of(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    best = float("inf")
    out = 0
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pcap", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--checksum", default="auto", choices=("auto", "yes", "no"))
    a = ap.parse_args()
    with PcapReader(a.pcap) as r:
        packets = [(ev.data, ev.linktype, ev.ts) for ev in r]
    wire = sum(len(d) for d, _l, _t in packets)

    def run(stream: bool) -> int:
        """Decode and look up flows; with `stream`, TCP tracking and reassembly too.
        Returns the stream bytes delivered."""
        dec = Decoder().decode
        ft = FlowTable(FlowConfig(stream=StreamConfig(checksum_validation=a.checksum)))
        lookup = ft.lookup
        update = ft.update_tcp
        delivered = 0
        for data, lt, ts in packets:
            p = dec(data, lt, ts)
            if p.ipver and p.frag is None and p.has_l4:
                f, to_server = lookup(p)
                if to_server:
                    f.ts_pkts += 1
                else:
                    f.tc_pkts += 1
                if stream and p.proto == PROTO_TCP:
                    u = update(f, p, to_server)
                    if u is not None:
                        delivered += len(u.to_server) + len(u.to_client)
        ft.shutdown()
        return delivered

    n = len(packets)
    t_base, _ = best_of(lambda: run(False), a.repeat)
    t_re, delivered = best_of(lambda: run(True), a.repeat)
    mb = 1e6
    print(f"capture: {a.pcap}: {n} packets, {wire / mb:.1f} MB captured, "
          f"{delivered / mb:.1f} MB of TCP stream reassembled (checksum {a.checksum})")
    print(f"baseline   (decode + flows):                  {n / t_base:10,.0f} pkt/s "
          f"{wire / mb / t_base:7.1f} MB/s   {t_base:6.2f} s")
    print(f"reassembly (decode + flows + TCP + reassembly): {n / t_re:8,.0f} pkt/s "
          f"{wire / mb / t_re:7.1f} MB/s   {t_re:6.2f} s   "
          f"stream bytes {delivered / mb / t_re:6.1f} MB/s")
    print(f"ratio reassembly/baseline time: {t_re / t_base:.2f}x "
          f"(TCP tracking and reassembly alone: "
          f"{n / max(t_re - t_base, 1e-9):,.0f} pkt/s)")


if __name__ == "__main__":
    main()
