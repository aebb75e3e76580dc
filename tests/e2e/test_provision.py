"""The provisioning code path (deploy/provision.sh -> appliance/provision.py) builds the
lab's topology in namespaces this test creates, and the topology works: ping and HTTP
from the guests across the bridge to the internet, IPv4 and IPv6.

Two cablings, one configuration code:
- the lab's (one veth per guest into the appliance's bridge), configured through the
  shell wrapper exactly as a VM runs it, then again through `build_lab` (what lab.py
  calls);
- the Vagrantfile's (a guest switch and an upstream switch, the appliance bridging its
  two NICs between them, the `internet` VM as the edge), with interfaces named by MAC
  as the Vagrantfile names them.

Every namespace has this test's own prefix and is deleted at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance import provision as pv

REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "deploy" / "provision.sh"
HOSTS = ("host", "desktop", "proxy", "sinkhole", "gateway", "internet")


class Namespaces:
    def __init__(self, names: tuple[str, ...]) -> None:
        self.prefix = f"pv{uuid.uuid4().hex[:4]}-"
        self.names = names
        self.procs: list[subprocess.Popen[bytes]] = []
        for n in names:
            subprocess.run(["ip", "netns", "add", self.ns(n)], check=True, timeout=10)
            subprocess.run(["ip", "-n", self.ns(n), "link", "set", "lo", "up"], check=True,
                           timeout=10)

    def ns(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def run(self, name: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns(name), *argv],
                              capture_output=True, text=True, timeout=timeout)

    def serve_http(self, name: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(name), sys.executable, "-m",
                              "appliance.lab_services", "http"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        self.procs.append(p)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cp = self.run(name, "curl", "-s", "-o", "/dev/null", "-m", "1",
                          f"http://{pv.INTERNET.v4}/")
            if cp.returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError("the HTTP service did not start")

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)
        for n in self.names:
            subprocess.run(["ip", "netns", "del", self.ns(n)], timeout=10)


@pytest.fixture
def netns() -> Iterator[Callable[[tuple[str, ...]], Namespaces]]:
    made: list[Namespaces] = []

    def make(names: tuple[str, ...]) -> Namespaces:
        made.append(Namespaces(names))
        return made[-1]

    try:
        yield make
    finally:
        for m in made:
            m.close()


def wrapper(*args: str) -> None:
    cp = subprocess.run([str(WRAPPER), *args], capture_output=True, text=True, timeout=60,
                        env=dict(os.environ, APPLIANCE_SOURCE=str(REPO)))
    assert cp.returncode == 0, cp.stderr


def check_topology(n: Namespaces, guests: tuple[str, ...]) -> None:
    n.serve_http("internet")
    for g in guests:
        for dst in (pv.INTERNET.v4, pv.INTERNET.v6, pv.GATEWAY_LAN.v4):
            # Up to 3 echoes: the first IPv6 one can go while link-local addresses are
            # still tentative (DAD) and neighbour discovery cannot answer yet.
            cp = n.run(g, "ping", "-c", "3", "-i", "0.2", "-W", "2", dst)
            assert cp.returncode == 0, (g, dst, cp.stdout, cp.stderr)
        for url in (f"http://{pv.INTERNET.v4}/", f"http://[{pv.INTERNET.v6}]/"):
            cp = n.run(g, "curl", "-s", "-m", "5", url)
            assert cp.returncode == 0 and "lab internet" in cp.stdout, (g, url, cp.stderr)
    # Guest to guest across the bridge.
    cp = n.run(guests[0], "ping", "-c", "1", "-W", "2", pv.GUEST_ADDRS[guests[1]].v4)
    assert cp.returncode == 0, cp.stdout
    # The guests' source addresses are what the lab's policy knows them by.
    src = n.run("internet", "ip", "route", "get", pv.GUEST_ADDRS[guests[0]].v4).stdout
    assert "10.203.0." in src


def test_wrapper_builds_the_lab_topology(netns: Callable[[tuple[str, ...]], Namespaces]
                                         ) -> None:
    n = netns(HOSTS)
    pv.cable_lab(n.ns)
    wrapper("net", "appliance", "--netns", n.ns("host"),
            *(a for p in pv.LAB_PORTS for a in ("--if", f"{p}={p}")))
    for g in pv.GUEST_ADDRS:
        wrapper("net", g, "--netns", n.ns(g), "--if", "lan=eth0")
    wrapper("net", "gateway", "--netns", n.ns("gateway"), "--if", "lan=eth0", "--if",
            "wan=eth1")
    wrapper("net", "internet", "--netns", n.ns("internet"), "--if", "wan=eth0")
    ports = n.run("host", "ip", "-br", "link", "show", "master", pv.BRIDGE).stdout
    assert sorted(ln.split("@")[0].split()[0] for ln in ports.splitlines()) == sorted(
        pv.LAB_PORTS)
    check_topology(n, ("desktop", "proxy", "sinkhole"))
    # Idempotent: provisioning again (vagrant provision, run: "always") changes nothing.
    wrapper("net", "desktop", "--netns", n.ns("desktop"), "--if", "lan=eth0")
    wrapper("net", "appliance", "--netns", n.ns("host"), "--if", "desktop=desktop")
    cp = n.run("desktop", "ping", "-c", "1", "-W", "2", pv.INTERNET.v4)
    assert cp.returncode == 0


def test_build_lab_is_what_lab_py_calls(netns: Callable[[tuple[str, ...]], Namespaces]
                                        ) -> None:
    n = netns(HOSTS)
    pv.build_lab(n.ns)
    check_topology(n, ("desktop", "proxy"))


# The Vagrantfile's MACs (locally administered), so the test names NICs as the VMs do.
VM_MACS = {
    ("appliance", "guests"): "02:20:30:00:00:a1",
    ("appliance", "upstream"): "02:20:30:00:00:a2",
    ("desktop", "lan"): "02:20:30:00:00:10",
    ("proxy", "lan"): "02:20:30:00:00:20",
    ("internet", "lan"): "02:20:30:00:01:10",
}


def test_vagrant_topology_in_namespaces(netns: Callable[[tuple[str, ...]], Namespaces]
                                        ) -> None:
    """The VMs' wiring: NICs on two switches, the appliance bridging between them."""
    n = netns(("guestnet", "upnet", "appliance", "desktop", "proxy", "internet"))
    vagrantfile = (REPO / "Vagrantfile").read_text()
    for i, ((vm, part), mac) in enumerate(VM_MACS.items()):
        assert mac in vagrantfile, f"{vm} {part}: {mac} is not the Vagrantfile's"
        switch = "upnet" if (vm, part) in (("appliance", "upstream"),
                                           ("internet", "lan")) else "guestnet"
        swport = f"sw{i}"
        subprocess.run(["ip", "-n", n.ns(switch), "link", "add", swport, "type", "veth",
                        "peer", "name", f"nic{i}", "netns", n.ns(vm)], check=True,
                       timeout=10)
        subprocess.run(["ip", "-n", n.ns(vm), "link", "set", f"nic{i}", "address", mac],
                       check=True, timeout=10)
    for sw in ("guestnet", "upnet"):  # the hypervisor's networks: plain bridges
        ports = n.run(sw, "ip", "-br", "link").stdout.split()
        pv.configure("appliance", {p.split("@")[0]: p.split("@")[0] for p in ports
                                   if p.startswith("sw")}, netns=n.ns(sw))
    m = VM_MACS
    wrapper("net", "appliance", "--netns", n.ns("appliance"),
            "--if", f"guests={m['appliance', 'guests']}",
            "--if", f"upstream={m['appliance', 'upstream']}")
    for g in ("desktop", "proxy"):
        wrapper("net", g, "--netns", n.ns(g), "--if", f"lan={m[g, 'lan']}",
                "--upstream-only")
    wrapper("net", "edge", "--netns", n.ns("internet"), "--if",
            f"lan={m['internet', 'lan']}")
    check_topology(n, ("desktop", "proxy"))
    # Only the upstream prefixes go via the gateway; the default route stays the VM's.
    routes = n.run("desktop", "ip", "route").stdout
    assert "default" not in routes and "203.0.113.0/24 via 10.203.0.1" in routes
