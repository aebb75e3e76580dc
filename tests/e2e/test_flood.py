"""A spoofed SYN flood on the lab (the short version of bench/flood.py): 20,000 sources
against a 1 MiB flow memcap (1,497 flows). The flow table stays within its memcap,
enters emergency mode and leaves it once the flood's half-open flows time out, the
busy worker is not taken for a hung one, and a new connection during the flood gets
through. Paced at 5,000 SYN/s, which one worker keeps up with, so what is tested is the
flow table, not the kernel queue (the bench floods at full speed and prints what that
does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.core.flows import FLOW_COST_BYTES
from appliance.lab import Lab
from tests.e2e.conftest import load_bench

MEMCAP = 1024 * 1024


def test_syn_flood_respects_the_memcap_and_recovers(lab: Lab, start_appliance: Any,
                                                    tmp_path: Path) -> None:
    flood = load_bench("flood")
    fig = flood.run_flood(lab, start_appliance, tmp_path, sources=20_000, rate=5000,
                          memcap="1mb", recover_timeout=15)
    print(flood.report(fig))
    assert fig["sent"] == 20_000
    assert fig["memcap"] == MEMCAP
    assert fig["memuse_samples"], "no status sample during the flood"
    assert all(m <= MEMCAP for m in fig["memuse_samples"])
    assert all(a <= MEMCAP // FLOW_COST_BYTES for a in fig["active_samples"])
    # The flood filled the table up to its limit: the memcap was what held it.
    assert fig["max_flows_seen"] >= 0.9 * (MEMCAP // FLOW_COST_BYTES)
    assert fig["emergency_entered"] >= 1
    assert fig["emergency_left"] >= 1
    assert fig["emergency_left_after_flood"] is not None
    # A legitimate client retries a lost SYN after 1 s and again after 3 s; within 3 s
    # means at worst one SYN was lost (a liveness bound, not a speed figure).
    assert fig["new_connection_code"] == "200"
    assert fig["new_connection_seconds"] <= 3.0
    assert fig["worker_restarts"] == 0
