"""A port scan from the lab's internet namespace against the desktop raises the scan
alert, and the desktop role's policy blocks the scanner."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from appliance.lab import Lab

POLICY = """
roles:
  desktop:
    description: desktop whose detections block outside offenders
    on-detection: {action: block, min-severity: 2, duration: 30s}
guests:
  - {name: desktop, role: desktop, ports: [desktop], addresses: [10.203.0.10/32]}
allowlist: [10.203.0.1/32]
"""

# Connect to 40 closed ports of the desktop (it answers RST): a vertical scan. Bounded:
# 40 attempts, 0.5 s timeout each.
SCAN = """
import socket
for port in range(2000, 2040):
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect(("10.203.0.10", port))
    except OSError:
        pass
    finally:
        s.close()
"""


def test_scan_from_outside_is_alerted_and_the_scanner_blocked(lab: Lab, start_appliance: Any,
                                                              tmp_path: Path) -> None:
    pol = tmp_path / "policy.yaml"
    pol.write_text(POLICY)
    app = start_appliance("--policy", str(pol))
    ok = lab.run_in("desktop", "curl", "-s", "-m", "3", "-o", "/dev/null", "-w",
                    "%{http_code}", "http://203.0.113.10/")
    assert ok.stdout == "200"
    import sys

    lab.run_in("internet", sys.executable, "-c", SCAN, timeout=60)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "block 203.0.113.10" not in app.log.read_text():
        time.sleep(0.2)
    alerts = [json.loads(x) for x in app.eve.read_text().splitlines()
              if '"event_type":"alert"' in x]
    scans = [a for a in alerts if a["alert"]["gid"] == 9001]
    assert scans, alerts
    assert scans[0]["src_ip"] == "203.0.113.10"
    assert scans[0]["alert"]["signature_id"] == 9001002  # vertical TCP scan
    assert "block 203.0.113.10" in app.log.read_text(), app.log.read_text()
    blocked = lab.run_in("desktop", "curl", "-s", "-m", "2", "-o", "/dev/null", "-w",
                         "%{http_code}", "http://203.0.113.10/")
    assert blocked.returncode == 28  # the scanner's address is blocked both ways
