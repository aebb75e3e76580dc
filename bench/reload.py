"""Rules reload: the full ET Open ruleset loaded cold and cached, and the swap in a worker.

    .venv/bin/python bench/reload.py [RULES_DIR] [PCAP]

- cold: what the supervisor's `rules.reload` pays for a ruleset it has never seen (parse,
  compile, hyperscan databases), with an empty cache directory;
- cached: the same files again with that cache: what each worker pays in its background
  thread after the supervisor's load (hot reload option (a), appliance/rules/reload.py);
- swap: `swap_detector` in an engine that holds the flows of a replayed capture (the
  packet thread's only pause), and a packet rate check before and after the swap.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path

from appliance.core.engine import Engine
from appliance.io.pcap import PcapReader
from appliance.reload import prepare_reload, rule_index, swap_detector
from appliance.rules.loader import load_detection

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    rules = Path(sys.argv[1]) if len(sys.argv) > 1 else SHARED / "rules/etopen-2024-04-21"
    pcap = Path(sys.argv[2]) if len(sys.argv) > 2 else SHARED / "pcaps/ndpi-mixed.pcap"
    if not rules.exists():
        sys.exit(f"{rules}: not present")
    cache = Path(tempfile.mkdtemp(prefix="bench-reload-"))

    t0 = time.perf_counter()
    cold = prepare_reload([rules], cache_dir=cache)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = load_detection([rules], cache_dir=cache)
    t_warm = time.perf_counter() - t0
    assert warm.from_cache
    print(f"rules: {rules.name}: {cold.active} active, {cold.failed} not loaded, "
          f"{cold.disabled} disabled")
    print(f"reload cold   (supervisor: parse + compile + hyperscan + check): {t_cold:6.2f} s")
    print(f"reload cached (worker: warm load, same files):                   {t_warm:6.2f} s")

    engine = Engine(detector=cold.engine)
    n = 0
    if pcap.exists():
        with PcapReader(pcap) as reader:
            # Enough of the capture to hold a realistic table of live flows.
            for ev in itertools.islice(reader, 20000):
                engine.handle(ev)
                n += 1
    flows = len(engine.flows)
    marks = sum(len(f.tx_alerted) for f in engine.flows.flows.values())
    bits = sum(len(f.bits) for f in engine.flows.flows.values())
    print(f"engine state: {n} packets replayed from {pcap.name}, {flows} live flows, "
          f"{bits} flowbits, {marks} per-transaction alert marks")
    t0 = time.perf_counter()
    indexes = {id(warm): rule_index(warm), id(cold): rule_index(cold)}
    print(f"rule index (worker background thread, per ruleset): "
          f"{(time.perf_counter() - t0) / 2 * 1000:7.2f} ms")
    for label, use_index in (("index built in the background", True),
                             ("no index: looked up in the swap", False)):
        swaps = []
        for i in range(6):
            new = warm if i % 2 == 0 else cold
            t0 = time.perf_counter()
            report = swap_detector(engine, new, index=indexes[id(new)] if use_index else None)
            swaps.append(time.perf_counter() - t0)
        print(f"swap between two packets ({label}): median "
              f"{sorted(swaps)[len(swaps) // 2] * 1000:6.2f} ms, max "
              f"{max(swaps) * 1000:6.2f} ms ({report.tx_marks_kept} marks carried, "
              f"{report.thresholds_kept} thresholds)")


if __name__ == "__main__":
    main()
