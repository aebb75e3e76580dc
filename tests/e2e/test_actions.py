"""Actions on the lab's bridge with real traffic: quarantine, redirect, block, expiry, restore.

The backend runs in this (root) test process and reaches the lab's host namespace with
pyroute2 (IPRoute(netns=...)) and `ip netns exec` for iptables/ebtables/ipset: the same
code path as the daemon, which runs inside that namespace with netns=None.

The sinkhole serves a page on port 80 and is set up to accept redirected traffic: a
redirect at L2 delivers the desktop's frames unchanged (destination MAC of the gateway,
destination IP of the internet server), and this kernel has no tc pedit/skbedit to
rewrite them, so the sinkhole takes them itself: a macvlan in passthru mode over its NIC
(every unicast frame becomes addressed to it) and 203.0.113.10 on its loopback (the
packets are then local).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.actions import ActionManager, Policy
from appliance.io.actions import NetlinkBackend
from appliance.lab import Lab

INTERNET = "http://203.0.113.10/"
SINKHOLE = "http://10.203.0.99/"
PROXY = "http://10.203.0.20/"
SINKHOLE6 = "http://[fd00:203::99]/"
INTERNET6 = "http://[2001:db8:113::10]/"
SINK_IPS = ["10.203.0.99", "fd00:203::99"]


def get(lab: Lab, url: str) -> str | None:
    """The page the desktop gets for url, or None (short timeouts: bounded)."""
    cp = lab.run_in("desktop", "curl", "-s", "-g", "--connect-timeout", "2", "-m", "3", url,
                    timeout=10)
    return cp.stdout if cp.returncode == 0 else None


def reachable_again(lab: Lab, url: str = INTERNET, tries: int = 5) -> str | None:
    """After a release: a neighbour entry that failed while the guest was cut off makes
    the first connect fail at once (EHOSTUNREACH) and resolution starts over; a guest
    retries, so do we (bounded)."""
    for _ in range(tries):
        page = get(lab, url)
        if page is not None:
            return page
        time.sleep(0.3)
    return None


def serve(lab: Lab, name: str, page: str, root: Path) -> subprocess.Popen[bytes]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text(page)
    proc = subprocess.Popen(
        lab.exec_argv(name, [sys.executable, "-m", "http.server", "80", "--bind", "::",
                             "--directory", str(root)]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ok = lab.run_in(name, "curl", "-s", "-m", "1", "http://127.0.0.1/", timeout=5)
        if ok.returncode == 0:
            return proc
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"http server in {name} did not start")


@pytest.fixture
def web(lab: Lab, tmp_path: Path) -> Iterator[Lab]:
    """Pages on the sinkhole and the proxy; the sinkhole accepts redirected traffic."""
    sh = lab.ipns
    sh("sinkhole", "link", "add", "sink0", "link", "eth0", "type", "macvlan", "mode",
       "passthru")
    sh("sinkhole", "addr", "flush", "dev", "eth0")
    sh("sinkhole", "addr", "add", "10.203.0.99/24", "dev", "sink0")
    sh("sinkhole", "-6", "addr", "add", "fd00:203::99/64", "dev", "sink0", "nodad")
    sh("sinkhole", "link", "set", "sink0", "up")
    sh("sinkhole", "route", "replace", "default", "via", "10.203.0.1")
    sh("sinkhole", "addr", "add", "203.0.113.10/32", "dev", "lo")
    procs = [serve(lab, "sinkhole", "SINKHOLE PAGE\n", tmp_path / "sink"),
             serve(lab, "proxy", "PROXY PAGE\n", tmp_path / "proxy")]
    try:
        yield lab
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=5)


@pytest.fixture
def backend(lab: Lab) -> Iterator[NetlinkBackend]:
    b = NetlinkBackend("br0", netns=lab.host_ns)
    try:
        yield b
    finally:
        b.cleanup()


def kernel_state(lab: Lab) -> str:
    """Everything an action could leave, as the tools list it."""
    out = ""
    for tool in ("iptables", "ip6tables"):
        out += lab.run_in("host", tool, "-S").stdout
    out += lab.run_in("host", "ebtables", "-L").stdout
    out += lab.run_in("host", "ipset", "list", "-n").stdout
    for port in ("desktop", "proxy", "sinkhole", "gateway"):
        out += lab.run_in("host", "tc", "qdisc", "show", "dev", port, "ingress").stdout
    return out


def test_quarantine_reaches_only_the_sinkhole(web: Lab, backend: NetlinkBackend) -> None:
    lab = web
    assert "Hello from the lab internet" in (get(lab, INTERNET) or "")
    assert get(lab, PROXY) == "PROXY PAGE\n"
    backend.quarantine("desktop", SINK_IPS)
    backend.quarantine("desktop", SINK_IPS)  # idempotent
    assert backend.active()["quarantine"] == {"desktop": ["10.203.0.99/32",
                                                          "fd00:203::99/128"]}
    assert get(lab, INTERNET) is None
    assert get(lab, INTERNET6) is None
    assert get(lab, PROXY) is None
    assert get(lab, SINKHOLE) == "SINKHOLE PAGE\n"
    assert get(lab, SINKHOLE6) == "SINKHOLE PAGE\n"
    # The other guests are untouched.
    cp = lab.run_in("proxy", "curl", "-s", "-m", "3", INTERNET, timeout=10)
    assert "Hello from the lab internet" in cp.stdout
    backend.release_quarantine("desktop")
    backend.release_quarantine("desktop")
    assert backend.active()["quarantine"] == {}
    assert "Hello from the lab internet" in (reachable_again(lab) or "")
    assert reachable_again(lab, PROXY) == "PROXY PAGE\n"


def test_redirect_sends_http_to_the_sinkhole(web: Lab, backend: NetlinkBackend) -> None:
    lab = web
    assert "Hello from the lab internet" in (get(lab, INTERNET) or "")
    backend.redirect("desktop", "sinkhole")
    backend.redirect("desktop", "sinkhole")
    assert backend.active()["redirect"] == {"desktop": "sinkhole"}
    assert get(lab, INTERNET) == "SINKHOLE PAGE\n"
    backend.release_redirect("desktop")
    assert backend.active()["redirect"] == {}
    assert "Hello from the lab internet" in (get(lab, INTERNET) or "")


def test_block_drops_an_external_address(web: Lab, backend: NetlinkBackend) -> None:
    lab = web
    backend.block("203.0.113.10")
    backend.block("203.0.113.10/32")
    backend.block("2001:db8:113::10")
    assert backend.active()["block"] == ["2001:db8:113::10/128", "203.0.113.10/32"]
    assert get(lab, INTERNET) is None
    assert get(lab, INTERNET6) is None
    assert get(lab, SINKHOLE) == "SINKHOLE PAGE\n"
    backend.unblock("203.0.113.10")
    backend.unblock("2001:db8:113::10")
    assert "Hello from the lab internet" in (get(lab, INTERNET) or "")
    assert "Hello from the lab internet" in (get(lab, INTERNET6) or "")


def test_cleanup_leaves_nothing(web: Lab, backend: NetlinkBackend) -> None:
    lab = web
    before = kernel_state(lab)
    backend.quarantine("desktop", SINK_IPS)
    backend.redirect("proxy", "sinkhole")
    backend.block("198.51.100.0/24")
    during = kernel_state(lab)
    for what in ("APL-ACT", "apl-block", "apl-block6", "ingress"):
        assert what in during
    backend.cleanup()
    backend.cleanup()
    assert backend.installed() == []
    assert kernel_state(lab) == before
    assert "Hello from the lab internet" in (get(lab, INTERNET) or "")


def test_port_isolation_alone_cannot_quarantine(web: Lab) -> None:
    """Why quarantine filters instead: an isolated port still reaches non-isolated ones."""
    lab = web
    lab.ipns("host", "link", "set", "dev", "desktop", "type", "bridge_slave", "isolated", "on")
    try:
        assert get(lab, PROXY) == "PROXY PAGE\n"
        assert "Hello from the lab internet" in (get(lab, INTERNET) or "")
    finally:
        lab.ipns("host", "link", "set", "dev", "desktop", "type", "bridge_slave", "isolated",
                 "off")


def _manager(lab: Lab, backend: NetlinkBackend, tmp_path: Path) -> ActionManager:
    policy = Policy(allowlist=("10.203.0.1", "gateway"),
                    guests={"10.203.0.10": "desktop"}, sinkhole_ips=tuple(SINK_IPS))
    return ActionManager(backend, tmp_path / "actions.db", tmp_path / "audit.json", policy)


def test_manager_quarantine_expires(web: Lab, backend: NetlinkBackend, tmp_path: Path) -> None:
    lab = web
    m = _manager(lab, backend, tmp_path)
    r = m.request("quarantine", "10.203.0.10", "test", duration=2.0, established=True)
    assert r.applied, r.reason
    assert get(lab, INTERNET) is None
    assert get(lab, SINKHOLE) == "SINKHOLE PAGE\n"
    deadline = time.monotonic() + 15
    while m.active() and time.monotonic() < deadline:
        m.tick()
        time.sleep(0.2)
    assert m.active() == []
    assert backend.active()["quarantine"] == {}
    assert "Hello from the lab internet" in (reachable_again(lab) or "")
    events = (tmp_path / "audit.json").read_text().splitlines()
    assert len(events) == 2 and '"release_reason": "expired"' in events[1]


def test_manager_restores_after_restart(web: Lab, backend: NetlinkBackend,
                                        tmp_path: Path) -> None:
    lab = web
    m = _manager(lab, backend, tmp_path)
    assert m.request("quarantine", "10.203.0.10", "test", duration=600,
                     established=True).applied
    m.close()
    # The daemon dies and its rules with it (a reboot, a flush): nothing is enforced...
    backend.cleanup()
    assert "Hello from the lab internet" in (get(lab, INTERNET) or "")
    # ...until a new manager restores the state from SQLite.
    m2 = _manager(lab, NetlinkBackend("br0", netns=lab.host_ns), tmp_path)
    results = m2.restore()
    assert [r.applied for r in results] == [True]
    assert get(lab, INTERNET) is None
    assert get(lab, SINKHOLE) == "SINKHOLE PAGE\n"
    assert m2.release("quarantine", "10.203.0.10").applied
    assert "Hello from the lab internet" in (reachable_again(lab) or "")
