"""Memory and load-time cost of per-role rule groups over the full ruleset.

    .venv/bin/python bench/roles.py [RULES_DIR]

Loads ET Open once, then builds per-role detection for one role (the default: shares the
full ruleset's prefilter) and for the three built-in roles that differ (desktop, server,
caching-proxy; the proxy excludes policy-violation rules, so it gets its own databases),
and prints the extra time and RSS each costs, in the same run.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

from appliance.policy_file import policy_from_text
from appliance.rules.loader import load_detection, role_detectors

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    rules = Path(sys.argv[1]) if len(sys.argv) > 1 else SHARED / "rules/etopen-2024-04-21"
    cache = Path(tempfile.mkdtemp(prefix="bench-roles-"))
    loaded = load_detection([rules], cache_dir=cache)
    base = rss_mib()
    print(f"ruleset: {loaded.active} rules; RSS after load {base:.0f} MiB")
    for name, text in (
        ("one role (default)", "include-builtin-roles: false\n"),
        ("three roles (desktop, server, caching-proxy) + default", ""),
    ):
        pol = policy_from_text(text, name)
        before = rss_mib()
        t0 = time.perf_counter()
        dets = role_detectors(loaded, pol, cache)
        secs = time.perf_counter() - t0
        distinct = len({id(d) for d in dets.values()})
        print(f"{name:55s} {secs:6.2f} s, +{rss_mib() - before:6.1f} MiB, "
              f"{distinct} distinct rule group set(s) for {len(dets)} role(s)")


if __name__ == "__main__":
    main()
