"""The appliance inline on the lab with the netlink transport (`--transport netlink`:
GSO super-packets, batch verdicts): the same contract as netfilterqueue's.

Traffic only flows between the lab's own namespaces; every loop is bounded.
"""

from __future__ import annotations

import time
from itertools import pairwise
from typing import Any

from appliance.lab import Lab
from tests.e2e.conftest import UdpProbe, control, kill_paused
from tests.e2e.test_inline import URL4, URL6, alerts, curl, queued

NETLINK = ("--transport", "netlink")


def test_netlink_benign_drop_reject_bypass_and_gso(lab: Lab, start_appliance: Any,
                                                   tmp_path: Any) -> None:
    pol = tmp_path / "policy.yaml"
    pol.write_text("guests: []\n")  # rules as written, no quarantine after the attack
    app = start_appliance("--policy", str(pol), *NETLINK)
    assert "transport netlink" in app.log.read_text()
    assert curl(lab, f"{URL4}/").stdout.startswith("200")
    assert curl(lab, f"{URL6}/").stdout.startswith("200")
    # Bypass: after the pass rule the connection leaves the queue (connmark from the
    # mark our verdict set).
    before = queued(lab)
    got = curl(lab, f"{URL4}/bulk/{20 * 1024 * 1024}", timeout=20)
    assert got.stdout == f"200 {20 * 1024 * 1024}", got
    assert queued(lab) - before < 200
    # Inspected throughout: arrives whole, its segments' partial checksums (offload)
    # taken as such, and handed over as GSO super-packets.
    got = curl(lab, f"{URL4}/text/{4 * 1024 * 1024}", timeout=20)
    assert got.stdout == f"200 {4 * 1024 * 1024}", got
    # A drop rule: the request never arrives, the client times out.
    blocked = curl(lab, f"{URL4}/../../etc/passwd", timeout=2)
    assert blocked.returncode == 28, blocked
    # A reject rule: a TCP reset at once (curl 56: recv failure, 52: empty reply).
    t0 = time.monotonic()
    reset = curl(lab, f"{URL4}/x;/bin/sh", timeout=4)
    assert reset.returncode in (52, 56), reset
    assert time.monotonic() - t0 < 2
    time.sleep(1.2)  # a worker report (once a second) after the last packets
    traffic = control(lab, "status")["traffic"]
    tr = traffic["transport"]
    print(f"netlink transport counters: {tr}")
    assert tr["gso"] > 0 and tr["batch_verdicts"] > 0
    assert tr["messages"] == traffic["packets"] and tr["malformed"] == 0
    assert traffic["verdicts"].get("reject") == 1 and traffic["errors"] == 0
    got_alerts = {a["alert"]["signature_id"]: a for a in alerts(app.eve)}
    assert got_alerts[9000001]["alert"]["action"] == "blocked"
    assert got_alerts[9000002]["alert"]["action"] == "blocked"
    log = app.stop()
    assert "chains removed" in log
    assert "APL-" not in app.iptables_rules()


def test_netlink_fail_open_killed_worker_and_held_download(
        lab: Lab, start_appliance: Any, tmp_path: Any) -> None:
    app = start_appliance("--fail-open", *NETLINK)
    (worker,) = app.workers()
    # Numbered datagrams every 5 ms for 2.5 s (curl --limit-rate does not hold a lab
    # download back: it finishes in well under a second); the worker dies at 0.5 s.
    probe = UdpProbe(lab, tmp_path, port=7011, seconds=20)
    try:
        sender = probe.send(0, 500, 0.005)
        time.sleep(0.5)
        # The supervisor is paused around the kill, so for 0.5 s no worker is bound:
        # what the kernel does then is fail-open's job (--queue-bypass), not a restart's.
        t_kill = kill_paused(app.proc.pid, worker)
        sender.wait(timeout=20)
        got = probe.received()
    finally:
        probe.close()
    unbound = [g for g in got if t_kill + 0.05 < g[1] < t_kill + 0.45]
    sent_after = sorted(g[0] for g in got if g[1] > t_kill + 1.0)
    arrivals = sorted(g[2] for g in got)
    gap = max(b - a for a, b in pairwise(arrivals))
    print(f"netlink, fail-open, worker killed: {len(got)} of 500 probes arrived, "
          f"longest gap {gap:.3f} s")
    # Within 1 s of the kill traffic flows again (queue-bypass while no worker is
    # bound, then the restarted worker), and nothing sent later is lost.
    assert gap < 1.0
    assert len(unbound) > 0.8 * 0.4 / 0.005, len(unbound)  # passed while none was bound
    assert sent_after and sent_after[-1] == 499
    assert len(sent_after) == sent_after[-1] - sent_after[0] + 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (not app.workers() or app.workers() == [worker]):
        time.sleep(0.1)
    assert app.workers() and app.workers() != [worker]
    # The restarted worker holds the packet completing EICAR for its scan and drops it
    # (the lab policy scans the desktop's downloads).
    rc = lab.run_in("desktop", "curl", "-s", "-m", "2", "-o", "/dev/null",
                    f"{URL4}/files/eicar.com", timeout=8).returncode
    assert rc == 28
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not any(
            a["alert"]["gid"] == 9003 for a in alerts(app.eve)):
        time.sleep(0.1)
    assert any(a["alert"]["gid"] == 9003 and a["alert"]["action"] == "blocked"
               for a in alerts(app.eve))
