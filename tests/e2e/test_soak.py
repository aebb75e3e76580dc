"""The soak bench (bench/soak.py) for 15 s: mixed traffic from two guests through the
appliance. No legitimate request fails, the kernel queue drops nothing, every probe is
blocked, the workers give verdicts of every kind the traffic calls for, and memory does
not run away (the bench's 10-minute run prints the figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.lab import Lab
from tests.e2e.conftest import load_bench

# Growth allowed per process over the short run: flows and their stream buffers stay
# until their timeouts (60 s after a TCP close), longer than the run, so the worker
# grows while the flow table fills; a leak per packet would exceed this.
RSS_DRIFT_MIB = 96


def test_soak_short(lab: Lab, start_appliance: Any, tmp_path: Path) -> None:
    soak = load_bench("soak")
    fig = soak.run_soak(lab, start_appliance, tmp_path, 15)
    print(soak.report(fig))
    out = fig["outcomes"]
    assert not [k for k in out if "FAILED" in k or "PASSED" in k], out
    assert out["http ok"] > 0 and out["dns ok"] > 0 and out["ping ok"] > 0
    assert out["probe blocked"] > 0 and out["alerting ok"] > 0
    assert fig["queue_drops"] == 0
    assert fig["worker_restarts"] == 0 and fig["errors"] == 0
    v = fig["verdicts"]
    assert v["accept"] > 0 and v["bypass"] > 0
    assert v["reject"] == out["probe blocked"]
    assert fig["alerts"] >= out["probe blocked"] + out["alerting ok"]
    for name, start in fig["rss_start_mib"].items():
        assert fig["rss_end_mib"][name] - start < RSS_DRIFT_MIB, (name, fig)
