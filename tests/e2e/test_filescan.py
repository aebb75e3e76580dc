"""Files in traffic on the lab: two guests fetching the same file cost one scan and one
cache hit; the EICAR test file is stopped before the download completes, with an alert
that names it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from appliance.lab import Lab
from appliance.lab_services import SHARED_FILE


def fetch(lab: Lab, guest: str, path: str, timeout: float = 3) -> tuple[int, str]:
    cp = lab.run_in(guest, "curl", "-s", "-m", str(timeout), "-o", "/dev/null", "-w",
                    "%{http_code} %{size_download}", f"http://203.0.113.10{path}",
                    timeout=timeout + 5)
    return cp.returncode, cp.stdout.strip()


def cache_stats(db: Path) -> dict[str, Any]:
    cp = subprocess.run([sys.executable, "-m", "appliance.cli", "cache", "--db", str(db),
                         "stats", "--json"], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    return dict(json.loads(cp.stdout))


def test_shared_file_scanned_once_and_eicar_blocked(lab: Lab, start_appliance: Any) -> None:
    app = start_appliance()  # the lab policy: desktop and proxy scan files
    db = lab.state / "state" / "scancache.db"
    assert fetch(lab, "desktop", "/files/shared.txt") == (0, f"200 {len(SHARED_FILE)}")
    assert fetch(lab, "proxy", "/files/shared.txt") == (0, f"200 {len(SHARED_FILE)}")
    s = cache_stats(db)
    print(f"scan cache after two guests fetched one file: {s}")
    assert s["scans"] == 1 and s["hits"] >= 1
    rc, out = fetch(lab, "desktop", "/files/eicar.com", timeout=2)
    assert rc == 28, (rc, out)  # the packet completing the download was dropped
    time.sleep(0.5)
    alerts = [json.loads(x) for x in app.eve.read_text().splitlines()
              if '"event_type":"alert"' in x]
    files = [a for a in alerts if a["alert"]["gid"] == 9003]
    assert files, alerts
    assert "EICAR" in files[0]["alert"]["signature"]
    assert files[0]["alert"]["action"] == "blocked"
