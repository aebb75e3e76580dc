"""Hot reload on the lab: a new rule takes effect within 2 s while an inspected transfer
keeps running through the same worker, and a broken ruleset leaves the old rules in force."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from appliance.lab import Lab

REPO = Path(__file__).resolve().parents[2]
NEW_RULE = ('drop tcp $HOME_NET any -> $EXTERNAL_NET $HTTP_PORTS (msg:"TEST reload secret"; '
            'flow:established,to_server; content:"GET /secret"; depth:11; '
            'classtype:attempted-recon; sid:9100001; rev:1;)\n')


def curl(lab: Lab, url: str, timeout: float = 2) -> str:
    cp = lab.run_in("desktop", "curl", "-s", "-m", str(timeout), "-o", "/dev/null", "-w",
                    "%{http_code}", url, timeout=timeout + 5)
    return cp.stdout.strip() if cp.returncode == 0 else f"rc{cp.returncode}"


def reload(lab: Lab) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", "rules", "reload",
                           "--socket", str(lab.state / "control.sock"), "--timeout", "60"],
                          capture_output=True, text=True, timeout=90)


def test_reload_new_rule_while_a_transfer_runs(lab: Lab, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("roles", "yara"))
    log = tmp_path / "app.log"
    pol = tmp_path / "policy.yaml"
    pol.write_text("guests: []\n")
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "lab", "--prefix",
                             lab.prefix, "run", "--rules", str(rules), "--policy", str(pol)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    try:
        deadline = time.monotonic() + 30
        while "inline on" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert curl(lab, "http://203.0.113.10/secret") == "200"
        size = 1024 * 1024
        transfer = subprocess.Popen(lab.exec_argv("desktop", [
            "curl", "-s", "-m", "20", "--limit-rate", "256K", "-o", "/dev/null", "-w",
            "%{http_code} %{size_download}", f"http://203.0.113.10/text/{size}"]),
            stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        (rules / "appliance.rules").write_text((rules / "appliance.rules").read_text()
                                               + NEW_RULE)
        t0 = time.monotonic()
        r = reload(lab)
        assert r.returncode == 0, r.stdout + r.stderr
        assert time.monotonic() - t0 < 30
        deadline = time.monotonic() + 2
        while curl(lab, "http://203.0.113.10/secret", timeout=1) == "200":
            assert time.monotonic() < deadline, "new rule not in force within 2 s"
        out, _ = transfer.communicate(timeout=30)
        assert out.split()[:2] == ["200", str(size)], out  # no stall, nothing lost
        # A broken ruleset is refused and the rules in force stay.
        (rules / "appliance.rules").write_text("this is not a rule\n" * 3)
        bad = reload(lab)
        assert bad.returncode != 0
        assert curl(lab, "http://203.0.113.10/secret", timeout=1) != "200"
        assert curl(lab, "http://203.0.113.10/") == "200"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
