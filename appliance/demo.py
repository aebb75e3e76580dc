"""`make demo`: the appliance inline on a lab bridge, stopping an attack.

It brings the lab up (network namespaces: a bridge with guests, a gateway and an
"internet" server), runs `appliance run` on the bridge with the bundled rules, and from
the desktop guest fetches a page (passes), sends a path-traversal request (dropped, alert
"blocked"), and a command-injection probe (reset). Then it prints what happened and
takes everything down. Without root it says why and replays the bundled captures instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from appliance.core.engine import Engine
from appliance.io.eve import RecordingEve
from appliance.io.pcap import PcapReader
from appliance.lab import Lab
from appliance.runtime import Runtime

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps"
RULES = REPO / "rules"
SERVER = "203.0.113.10"


def _curl(lab: Lab, url: str, timeout: int = 3, guest: str = "desktop") -> tuple[int, str]:
    cp = lab.run_in(guest, "curl", "-s", "-g", "--path-as-is", "-m", str(timeout), "-o",
                    "/dev/null", "-w", "%{http_code}", url, timeout=timeout + 5)
    return cp.returncode, cp.stdout.strip()


def _cache_stats(db: Path) -> dict[str, int]:
    cp = subprocess.run([sys.executable, "-m", "appliance.cli", "cache", "--db", str(db),
                         "stats", "--json"], capture_output=True, text=True, timeout=30)
    if cp.returncode != 0:
        return {"scans": 0, "hits": 0}  # no cache yet: nothing scanned
    got = json.loads(cp.stdout)
    return {"scans": int(got["scans"]), "hits": int(got["hits"])}


def _outcome(rc: int, code: str) -> str:
    if rc == 0:
        return f"passed (HTTP {code})"
    if rc == 28:
        return "dropped (no answer: it never reached the server)"
    if rc in (52, 56):
        return "reset (the appliance sent a TCP RST)"
    return f"failed (curl exit {rc})"


DEMO_POLICY = """
roles:
  desktop:
    description: the lab desktop; a short quarantine so the demo can show the release
    overrides:
      - {action: drop, classtypes: [web-application-attack, trojan-activity]}
    ingress: [{proto: icmp}]
    on-detection: {action: quarantine, min-severity: 1, duration: 8s}
    scan-files: true
guests:
  - {name: desktop, role: desktop, ports: [desktop], addresses: [10.203.0.10/32]}
  - {name: proxy, role: caching-proxy, ports: [proxy], addresses: [10.203.0.20/32]}
  - {name: sinkhole, role: server, ports: [sinkhole], addresses: [10.203.0.99/32]}
allowlist: [10.203.0.1/32]
"""


def inline_demo() -> int:
    lab = Lab("demo-")
    work = Path(tempfile.mkdtemp(prefix="appliance-demo-"))
    eve = work / "eve.json"
    log = work / "appliance.log"
    policy = work / "policy.yaml"
    policy.write_text(DEMO_POLICY)
    print("Building the lab: a bridge with desktop, proxy, sinkhole and gateway guests ...")
    lab.up()
    proc = sink = None
    try:
        sink = subprocess.Popen(lab.exec_argv("sinkhole", [
            sys.executable, "-m", "http.server", "80", "--bind", "10.203.0.99"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "appliance.cli", "lab", "--prefix", lab.prefix, "run",
                 "--rules", str(RULES), "--eve", str(eve), "--policy", str(policy)],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while "inline on" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                print(log.read_text(errors="replace"))
                print("the appliance did not start")
                return 1
            time.sleep(0.1)
        print("The appliance is inline on the lab bridge (NFQUEUE, fail-closed); the "
              "desktop guest has the desktop role.\n")

        def step(what: str, url: str, retries: int = 1, guest: str = "desktop") -> None:
            rc, code = _curl(lab, url, guest=guest)
            for _ in range(retries - 1):
                if rc == 0:
                    break
                rc, code = _curl(lab, url, guest=guest)
            print(f"  {what:44s} {url:38s} -> {_outcome(rc, code)}")

        step("proxy (caching-proxy role) fetches a page", f"http://{SERVER}/", guest="proxy")
        step("proxy opens SSH to the internet", f"telnet://{SERVER}:22", guest="proxy")
        step("desktop fetches a page", f"http://{SERVER}/")
        step("desktop fetches a page over IPv6", "http://[2001:db8:113::10]/")
        step("desktop sends a command-injection probe", f"http://{SERVER}/cgi;/bin/sh")
        step("desktop sends a path traversal (severity 1)", f"http://{SERVER}/../../etc/passwd")
        time.sleep(0.5)
        print("\n  ... the desktop role quarantines the guest for 8 s:")
        step("quarantined desktop fetches the page", f"http://{SERVER}/")
        step("quarantined desktop reaches the sinkhole", "http://10.203.0.99/", retries=3)
        print("\n  ... waiting for the automatic release:")
        time.sleep(8.5)
        step("released desktop fetches the page", f"http://{SERVER}/", retries=5)
        print("\n  ... files are scanned once at the host and the verdict is shared:")
        db = lab.state / "state" / "scancache.db"
        before = _cache_stats(db)  # the pages fetched above were files too
        step("desktop downloads a file", f"http://{SERVER}/files/shared.txt")
        step("proxy downloads the same file", f"http://{SERVER}/files/shared.txt",
             guest="proxy")
        after = _cache_stats(db)
        print("  scan cache for these two downloads: "
              f"{after['scans'] - before['scans']} scan, "
              f"{after['hits'] - before['hits']} cache hit")
        step("desktop downloads the EICAR test file", f"http://{SERVER}/files/eicar.com")
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if sink is not None:
            sink.terminate()
        lab.down()
    records = [json.loads(x) for x in eve.read_text().splitlines()] if eve.exists() else []
    alerts = [r for r in records if r["event_type"] == "alert"]
    print(f"\nEVE alerts written to {eve}:")
    for a in alerts:
        al = a["alert"]
        why = "; ".join(al.get("metadata", {}).get("explain", []))
        print(f"  [{al['action']}] {al['signature']} (sid {al['signature_id']}) "
              f"{a['src_ip']}:{a.get('src_port')} -> {a['dest_ip']}:{a.get('dest_port')}"
              + (f"\n      why: {why}" if why else ""))
    lines = [ln for ln in log.read_text(errors="replace").splitlines()
             if "quarantine" in ln or "release" in ln or "stopped" in ln]
    print("\nFrom the appliance's log:\n  " + "\n  ".join(lines[-5:]))
    print("\nThe lab is down again; nothing is left behind.")
    return 0 if len(alerts) >= 2 else 1


def replay_demo() -> int:
    captures = sorted(p for p in PCAPS.glob("*.pcap*") if p.is_file())
    print(f"{'capture':28s} {'packets':>8s} {'flows':>6s} {'anomalies':>9s}")
    seen: Counter[str] = Counter()
    for cap in captures:
        eve = RecordingEve()
        rt = Runtime(Engine(), eve)
        with PcapReader(cap) as r:
            rt.run(r)
        s = rt.finish()
        seen.update(a["anomaly"]["event"] for a in eve.of_type("anomaly"))
        print(f"{cap.name:28s} {s.packets:8d} {s.flows:6d} {s.anomalies:9d}")
    print(f"\nDistinct decoder anomalies seen: {len(seen)}")
    return 0


def main() -> int:
    if os.geteuid() != 0 or not Path("/proc/sys/net/bridge").exists():
        print("The inline demo needs root and br_netfilter (network namespaces, a bridge, "
              "iptables); replaying the bundled captures instead.\n")
        return replay_demo()
    return inline_demo()


if __name__ == "__main__":
    sys.exit(main())
