"""One flow redirected to the sinkhole: a rule asks for it (metadata appliance_action
redirect-flow); afterwards the guest's HTTP to that server reaches the sinkhole's page,
while its other traffic to the same server (DNS) still goes through."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from appliance.lab import Lab

REPO = Path(__file__).resolve().parents[2]
RULE = ('alert tcp $HOME_NET any -> $EXTERNAL_NET 80 (msg:"TEST redirect this flow"; '
        'flow:established,to_server; content:"GET /phish"; depth:10; '
        'metadata:appliance_action redirect-flow; classtype:attempted-recon; sid:9200001; '
        'rev:1;)\n')
POLICY = """
roles:
  plain: {description: no actions of its own}
guests:
  - {name: desktop, role: plain, ports: [desktop], addresses: [10.203.0.10/32]}
  - {name: sinkhole, role: plain, ports: [sinkhole], addresses: [10.203.0.99/32]}
"""


def get(lab: Lab, url: str) -> str | None:
    cp = lab.run_in("desktop", "curl", "-s", "-m", "2", url, timeout=10)
    return cp.stdout if cp.returncode == 0 else None


def test_rule_redirects_one_flow_to_the_sinkhole(lab: Lab, start_appliance: Any,
                                                 tmp_path: Path) -> None:
    sh = lab.ipns
    # The sinkhole accepts frames addressed to others (the redirect does not rewrite
    # them): a passthru macvlan, and the internet server's address on its loopback.
    sh("sinkhole", "link", "add", "sink0", "link", "eth0", "type", "macvlan", "mode",
       "passthru")
    sh("sinkhole", "addr", "flush", "dev", "eth0")
    sh("sinkhole", "addr", "add", "10.203.0.99/24", "dev", "sink0")
    sh("sinkhole", "link", "set", "sink0", "up")
    sh("sinkhole", "route", "replace", "default", "via", "10.203.0.1")
    sh("sinkhole", "addr", "add", "203.0.113.10/32", "dev", "lo")
    root = tmp_path / "sink"
    root.mkdir()
    (root / "index.html").write_text("SINKHOLE PAGE\n")
    web = subprocess.Popen(lab.exec_argv("sinkhole", [
        sys.executable, "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory",
        str(root)]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("roles", "yara"))
    (rules / "appliance.rules").write_text((rules / "appliance.rules").read_text() + RULE)
    pol = tmp_path / "policy.yaml"
    pol.write_text(POLICY)
    try:
        app = start_appliance("--rules", str(rules), "--policy", str(pol))
        assert "Hello from the lab internet" in (get(lab, "http://203.0.113.10/") or "")
        get(lab, "http://203.0.113.10/phish")  # the rule fires and asks for the redirect
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and "redirect desktop>" not in app.log.read_text():
            time.sleep(0.1)
        assert "redirect desktop>203.0.113.10:80" in app.log.read_text(), app.log.read_text()
        pages = [get(lab, "http://203.0.113.10/") for _ in range(3)]
        assert "SINKHOLE PAGE\n" in pages, pages
        # Other traffic of the guest to the same server is untouched: DNS answers.
        dns = lab.run_in("desktop", "dig", "+short", "+time=2", "+tries=1",
                         "@203.0.113.10", "www.example.test", timeout=10)
        assert dns.stdout.strip() == "203.0.113.10", dns
        tc = lab.run_in("host", "tc", "filter", "show", "dev", "desktop", "ingress").stdout
        assert "mirred" in tc
    finally:
        web.kill()
        web.wait(timeout=5)
