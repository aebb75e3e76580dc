"""Ruleset load (cold, warm) and replay speed with the full ruleset, plus peak RSS.

    .venv/bin/python bench/rules.py [RULES_DIR] [PCAP]

Suricata 7.0.4 on this kind of machine (../shared/data/oracle/ndpi-mixed/summary.txt):
3.82 s wall for ET Open on ndpi-mixed, of which about 2.5 s is rule loading, so about
60,000 packets in ~1.3 s of processing. The figures below are measured in this run.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

from appliance.core.engine import Engine
from appliance.io.pcap import PcapReader
from appliance.rules.loader import load_detection

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SURICATA_PPS = 61097 / (3.82 - 2.5)  # from the oracle summary, see above


def main() -> None:
    rules = Path(sys.argv[1]) if len(sys.argv) > 1 else SHARED / "rules/etopen-2024-04-21"
    pcap = Path(sys.argv[2]) if len(sys.argv) > 2 else SHARED / "pcaps/ndpi-mixed.pcap"
    cache = Path(tempfile.mkdtemp(prefix="bench-rules-"))
    t0 = time.perf_counter()
    cold = load_detection([rules], cache_dir=cache)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = load_detection([rules], cache_dir=cache)
    t_warm = time.perf_counter() - t0
    print(f"rules: {cold.active} active, {cold.failed} not loaded, {cold.disabled} disabled")
    print(f"load cold (parse + compile + hyperscan): {t_cold:6.2f} s   "
          f"(Suricata 7.0.4: ~2.5 s)")
    print(f"load warm (cache):                       {t_warm:6.2f} s   (goal < 1 s)")
    packets = list(PcapReader(pcap))
    for name, loaded in (("cold-loaded", cold), ("warm-loaded (lazy compile)", warm)):
        engine = Engine(detector=loaded.engine)
        t0 = time.perf_counter()
        for p in packets:
            engine.handle(p)
        secs = time.perf_counter() - t0
        pps = len(packets) / secs
        print(f"replay {pcap.name} with {name} rules: {pps:9,.0f} packets/s "
              f"({pps / SURICATA_PPS:.0%} of Suricata's ~{SURICATA_PPS:,.0f}), "
              f"{engine.alerts} alerts")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
