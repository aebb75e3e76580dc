"""Decode + flow throughput on a real capture, one core.

Prints packets/s for: reading the pcap alone (the baseline every figure includes),
reading + decode, and the full engine (decode, defrag, flows, EVE records built but
not written). Run: .venv/bin/python bench/replay.py [PCAP] [--repeat N] [--wall]

Figures are in CPU time of this process (time.process_time) by default: on a machine
shared with other work, wall-clock time counts the time other processes held the core.
--wall measures wall-clock time instead. Either way the best of N runs is kept.
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import replace
from pathlib import Path

from appliance.core.decode import Decoder
from appliance.core.engine import Engine, EngineConfig
from appliance.io.pcap import PcapReader

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared/data/pcaps/ndpi-mixed.pcap"


def best_of(fn, repeat: int, clock) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    best = float("inf")
    n = 0
    for _ in range(repeat):
        gc.collect()
        t0 = clock()
        n = fn()
        best = min(best, clock() - t0)
    return best, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pcap", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--wall", action="store_true",
                    help="wall-clock time rather than this process's CPU time")
    a = ap.parse_args()
    clock = time.perf_counter if a.wall else time.process_time
    packets = list(PcapReader(a.pcap))

    def read_only() -> int:
        with PcapReader(a.pcap) as r:
            return sum(1 for _ in r)

    def decode_only() -> int:
        d = Decoder()
        dec = d.decode
        for p in packets:
            dec(p.data, p.linktype, p.ts)
        return len(packets)

    def flows_only() -> int:
        # The foundation's measure: decode, defrag, flows and TCP state, without the app
        # layer, heuristics or checksum validation.
        cfg = EngineConfig(app_layer=False, heuristics=None)
        cfg = replace(cfg, flow=replace(cfg.flow, stream=replace(
            cfg.flow.stream, checksum_validation="no")))
        e = Engine(cfg)
        h = e.handle
        for p in packets:
            h(p)
        return len(packets)

    def engine_full() -> int:
        e = Engine()
        h = e.handle
        for p in packets:
            h(p)
        return len(packets)

    def read_and_engine() -> int:
        e = Engine()
        h = e.handle
        n = 0
        with PcapReader(a.pcap) as r:
            for p in r:
                h(p)
                n += 1
        return n

    print(f"capture: {a.pcap} ({len(packets)} packets), best of {a.repeat}, "
          f"{'wall-clock' if a.wall else 'CPU'} time")
    base = None
    for name, fn in (("read pcap", read_only), ("decode only (in memory)", decode_only),
                     ("decode+defrag+flows+TCP state (in memory)", flows_only),
                     ("whole engine, no rules (in memory)", engine_full),
                     ("read + engine", read_and_engine)):
        secs, n = best_of(fn, a.repeat, clock)
        pps = n / secs
        if base is None:
            base = pps
        print(f"{name:42s} {pps:12,.0f} packets/s  {1e6 / pps:6.2f} us/packet  "
              f"(x{base / pps:.1f} the read-only cost)")


if __name__ == "__main__":
    main()
