"""The daemon's Prometheus endpoint on the lab (inside the lab's host namespace)."""

from __future__ import annotations

import time
from typing import Any

from appliance.lab import Lab


def test_metrics_count_packets_and_verdicts(lab: Lab, start_appliance: Any) -> None:
    start_appliance("--metrics", "127.0.0.1:9797")
    ok = lab.run_in("desktop", "curl", "-s", "-m", "3", "-o", "/dev/null", "-w",
                    "%{http_code}", "http://203.0.113.10/")
    assert ok.stdout == "200"
    text = ""
    deadline = time.monotonic() + 5  # workers report once a second
    while time.monotonic() < deadline:
        text = lab.run_in("host", "curl", "-s", "-m", "2",
                          "http://127.0.0.1:9797/metrics").stdout
        if 'appliance_verdicts_total{verdict="accept"}' in text and \
                "appliance_packets_total 0.0" not in text:
            break
        time.sleep(0.5)
    print("\n".join(ln for ln in text.splitlines() if ln.startswith("appliance_")))
    assert 'appliance_verdicts_total{verdict="accept"}' in text
    packets = [ln for ln in text.splitlines() if ln.startswith("appliance_packets_total ")]
    assert packets and float(packets[0].split()[1]) > 0
