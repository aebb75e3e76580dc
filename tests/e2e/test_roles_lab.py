"""Roles on the lab: the same exploit is dropped for the desktop and only alerted for an
alert-only role; the caching proxy's SSH out is refused by its egress allowlist while its
HTTP works; an unknown guest gets the default role."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from appliance.lab import Lab

POLICY = """
roles:
  watch-only:
    description: alert-only, for the test
    overrides:
      - {action: alert, classtypes: [web-application-attack, attempted-recon]}
guests:
  - {name: desktop, role: desktop, ports: [desktop], addresses: [10.203.0.10/32]}
  - {name: proxy, role: watch-only, ports: [proxy], addresses: [10.203.0.20/32]}
allowlist: [10.203.0.1/32]
"""

PROXY_ONLY = """
guests:
  - {name: proxy, role: caching-proxy, ports: [proxy], addresses: [10.203.0.20/32]}
"""


def curl(lab: Lab, guest: str, url: str, timeout: float = 2) -> str:
    cp = lab.run_in(guest, "curl", "-s", "--path-as-is", "-m", str(timeout), "-o",
                    "/dev/null", "-w", "%{http_code}", url, timeout=timeout + 5)
    return cp.stdout.strip() if cp.returncode == 0 else f"rc{cp.returncode}"


def alerts(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if '"event_type":"alert"' in x]


def test_same_exploit_dropped_for_desktop_alerted_for_alert_only_role(
        lab: Lab, start_appliance: Any, tmp_path: Path) -> None:
    pol = tmp_path / "policy.yaml"
    pol.write_text(POLICY)
    app = start_appliance("--policy", str(pol))
    attack = "http://203.0.113.10/../../etc/passwd"
    assert curl(lab, "proxy", attack) == "200"  # alert-only: it goes through
    assert curl(lab, "desktop", attack) == "rc28"  # dropped for the desktop
    time.sleep(0.5)
    got = {(a["src_ip"], a["alert"]["action"]) for a in alerts(app.eve)
           if a["alert"]["signature_id"] == 9000001}
    assert got == {("10.203.0.20", "allowed"), ("10.203.0.10", "blocked")}
    roles = {a["src_ip"]: a["alert"]["metadata"]["role"][0] for a in alerts(app.eve)
             if a["alert"]["signature_id"] == 9000001}
    assert roles == {"10.203.0.20": "watch-only", "10.203.0.10": "desktop"}


def test_proxy_egress_allowlist_and_unknown_guest(lab: Lab, start_appliance: Any,
                                                  tmp_path: Path) -> None:
    pol = tmp_path / "policy.yaml"
    pol.write_text(PROXY_ONLY)
    app = start_appliance("--policy", str(pol))
    assert curl(lab, "proxy", "http://203.0.113.10/") == "200"  # HTTP out: allowed
    ssh = lab.run_in("proxy", "curl", "-s", "-m", "2", "telnet://203.0.113.10:22",
                     timeout=10)
    assert ssh.returncode == 28  # SSH out: the SYN is dropped by the allowlist
    # The desktop is not in this policy: default role, rules as written (drop drops).
    assert curl(lab, "desktop", "http://203.0.113.10/../../etc/passwd") == "rc28"
    time.sleep(0.5)
    by_sid = {}
    for a in alerts(app.eve):
        by_sid.setdefault(a["alert"]["signature_id"], a)
    assert by_sid[9002001]["alert"]["metadata"]["role"] == ["caching-proxy"]
    assert by_sid[9000001]["alert"]["metadata"]["role"] == ["default"]


def test_policy_reload_keeps_the_old_one_on_errors(lab: Lab, start_appliance: Any,
                                                   tmp_path: Path) -> None:
    import subprocess
    import sys

    strict = """
roles:
  strict:
    description: drops web attacks, takes no action against the guest (for the test)
    overrides: [{action: drop, classtypes: [web-application-attack]}]
  watch-only:
    description: alert-only
    overrides: [{action: alert, classtypes: [web-application-attack]}]
guests:
  - {name: desktop, role: strict, ports: [desktop], addresses: [10.203.0.10/32]}
"""
    pol = tmp_path / "policy.yaml"
    pol.write_text(strict)  # the desktop's exploit is dropped
    app = start_appliance("--policy", str(pol))
    attack = "http://203.0.113.10/../../etc/passwd"
    assert curl(lab, "desktop", attack) == "rc28"

    def reload(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "appliance.cli", "policy", "reload",
                               str(path), "--socket", str(lab.state / "control.sock")],
                              capture_output=True, text=True, timeout=120)

    bad = tmp_path / "bad.yaml"
    bad.write_text("guests:\n  - {name: desktop, role: nosuch}\n")
    r = reload(bad)
    assert r.returncode == 1 and "bad.yaml:2" in r.stderr and "previous one stays" in r.stderr
    assert curl(lab, "desktop", attack) == "rc28"  # still the old policy
    alert_only = tmp_path / "alert-only.yaml"
    alert_only.write_text(strict.replace("role: strict", "role: watch-only"))
    r = reload(alert_only)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if curl(lab, "desktop", attack, timeout=1) == "200":
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the new policy did not take effect: " + app.log.read_text())


def test_explain_live_through_the_control_socket(lab: Lab, start_appliance: Any,
                                                 tmp_path: Path) -> None:
    import subprocess
    import sys

    pol = tmp_path / "policy.yaml"
    pol.write_text(POLICY)
    start_appliance("--policy", str(pol))
    assert curl(lab, "proxy", "http://203.0.113.10/../../etc/passwd") == "200"
    out = ""
    deadline = time.monotonic() + 5  # workers report once a second
    while time.monotonic() < deadline and "9000001" not in out:
        time.sleep(0.5)
        out = subprocess.run([sys.executable, "-m", "appliance.cli", "explain", "--live",
                              "--address", "10.203.0.20", "--socket",
                              str(lab.state / "control.sock")],
                             capture_output=True, text=True, timeout=30).stdout
    assert "guest proxy, role watch-only" in out, out
    assert "[allowed] 1:9000001:1" in out
    assert "role watch-only turns it into alert" in out
