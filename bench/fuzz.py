"""Fuzz every input-facing part of the appliance for N generated inputs (default
1,000,000 in total, shared between targets by weight) and print, per target: inputs,
crashes (exceptions escaping, or swallowed by a catch-all net, or another broken
invariant), packets without exactly one verdict, packets decided, inputs/s.

    nice .venv/bin/python bench/fuzz.py [--inputs N] [--seed S] [--targets a,b] [--save]

The harness and its invariants are tests/fuzz/harness.py; the same code runs bounded in
tests/fuzz/test_fuzz.py. A failure is printed with (target, seed, index), which
regenerates the input alone, and minimised; --save writes it to tests/fuzz/corpus/ as a
regression case. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz.harness import Report, run_target, targets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1_000_000, help="inputs in total")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--targets", default="", help="comma-separated subset")
    ap.add_argument("--max-memory", type=int, default=8, help="GiB of address space")
    ap.add_argument("--save", action="store_true",
                    help="write minimised failures to tests/fuzz/corpus/")
    args = ap.parse_args()
    chosen = [t for t in targets()
              if not args.targets or t.name in args.targets.split(",")]
    if not chosen:
        ap.error("no such target")
    # A runaway allocation in the code under test is a MemoryError (a crash to report),
    # not the machine's OOM killer.
    resource.setrlimit(resource.RLIMIT_AS, (args.max_memory << 30, args.max_memory << 30))
    total_w = sum(t.weight for t in chosen)
    counts = [args.inputs * t.weight // total_w for t in chosen]
    for i in range(args.inputs - sum(counts)):  # the remainder: every input is run
        counts[i % len(counts)] += 1
    print(f"fuzz: {args.inputs:,} inputs, seed {args.seed}, "
          f"{len(chosen)} targets", flush=True)
    print(f"{'target':<9}{'inputs':>10}{'crashes':>9}{'no-verdict':>12}{'packets':>11}"
          f"{'inputs/s':>10}", flush=True)
    reports: list[Report] = []
    t0 = time.perf_counter()
    for t, n in zip(chosen, counts, strict=True):
        rep = run_target(t, n, args.seed, save=args.save)
        reports.append(rep)
        crashes = sum(1 for f in rep.failures if f.failure.kind != "verdicts")
        print(f"{t.name:<9}{rep.inputs:>10,}{crashes:>9}{rep.unanswered:>12}"
              f"{rep.packets:>11,}{rep.rate:>10,.0f}", flush=True)
    inputs = sum(r.inputs for r in reports)
    crashes = sum(1 for r in reports for f in r.failures if f.failure.kind != "verdicts")
    unanswered = sum(r.unanswered for r in reports)
    packets = sum(r.packets for r in reports)
    secs = time.perf_counter() - t0
    print(f"{'total':<9}{inputs:>10,}{crashes:>9}{unanswered:>12}{packets:>11,}"
          f"{inputs / secs:>10,.0f}   ({secs:.0f} s)")
    for r in reports:
        seen = set()
        for f in r.failures:
            if f.failure.key in seen:
                continue
            seen.add(f.failure.key)
            n = sum(1 for g in r.failures if g.failure.key == f.failure.key)
            print(f"\nFAIL {f.target} seed {f.seed} index {f.index} (x{n}): {f.failure}")
            if f.minimized is not None:
                print(f"  minimised: {f.minimized!r:.300}")
            if f.saved is not None:
                print(f"  saved: {f.saved}")
    return 1 if crashes or unanswered else 0


if __name__ == "__main__":
    sys.exit(main())
