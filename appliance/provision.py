"""One provisioning code path for the lab (network namespaces) and the Vagrant VMs.

The lab and the VMs are the same network; only the cabling differs (veth pairs made by
`appliance.lab`, NICs made by the hypervisor). Given a role and which interface plays
which part, `configure()` sets the addresses, routes, bridge and sysctls of one host,
in the current network namespace or in a named one:

    role       interfaces           what it does
    appliance  any names -> ports   bridge br0 (no STP, no forward delay) over every port
    desktop    lan                  10.203.0.10/24 fd00:203::10/64, routes via the gateway
    proxy      lan                  10.203.0.20/24 fd00:203::20/64, routes via the gateway
    sinkhole   lan                  10.203.0.99/24 fd00:203::99/64, routes via the gateway
    gateway    lan, wan             10.203.0.1 / 203.0.113.1 (and IPv6), forwarding on
    internet   wan                  203.0.113.10 2001:db8:113::10, routes back via 203.0.113.1
    edge       lan                  gateway and internet in one host (the `internet` VM):
                                    10.203.0.1 on lan; 203.0.113.1 and .10 on lo

An interface is named by its name or by its MAC address (what Vagrant can pin for both
providers; names differ between boxes). Every step is idempotent (`replace`, not `add`),
so `vagrant provision` can run again.

`install_appliance()` is the rest of the appliance VM's provisioning: the package in a
venv, the `appliance` user, the bundled rules and the lab policy in /etc/appliance, the
br_netfilter module and sysctls, and the systemd unit, enabled and started. It is only
run on a VM (Debian); `--dry-run` prints what it would do.

This module uses the standard library only: the VMs run it from the synced folder
(deploy/provision.sh) before the package and its dependencies are installed.

    python -m appliance.provision net ROLE [--netns NS] --if lan=eth1 ...
    python -m appliance.provision install [--source DIR] [--dry-run]
    python -m appliance.provision services [--source DIR] [--dry-run]
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from appliance.errors import ApplianceError

BRIDGE: Final = "br0"
LAN_V4: Final = "10.203.0.0/24"
LAN_V6: Final = "fd00:203::/64"
UPSTREAM_V4: Final = "203.0.113.0/24"
UPSTREAM_V6: Final = "2001:db8:113::/64"


@dataclass(frozen=True)
class Addr:
    v4: str
    v6: str


# The topology's addresses (documentation and ULA ranges only). appliance.lab uses the same.
GUEST_ADDRS: Final = {
    "desktop": Addr("10.203.0.10", "fd00:203::10"),
    "proxy": Addr("10.203.0.20", "fd00:203::20"),
    "sinkhole": Addr("10.203.0.99", "fd00:203::99"),
}
GATEWAY_LAN: Final = Addr("10.203.0.1", "fd00:203::1")
GATEWAY_UP: Final = Addr("203.0.113.1", "2001:db8:113::1")
INTERNET: Final = Addr("203.0.113.10", "2001:db8:113::10")
ROLES: Final = ("appliance", *GUEST_ADDRS, "gateway", "internet", "edge")
# Which interfaces each role needs (the appliance takes any number of bridge ports).
NEEDS: Final[dict[str, tuple[str, ...]]] = {
    **{g: ("lan",) for g in GUEST_ADDRS},
    "gateway": ("lan", "wan"),
    "internet": ("wan",),
    "edge": ("lan",),
}
_MAC: Final = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", re.IGNORECASE)
_IFNAME: Final = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.:-]{0,14}$")


class ProvisionError(ApplianceError):
    pass


@dataclass(frozen=True)
class Step:
    """`ip ARGS` or `sysctl KEY=VALUE`, in the host's network namespace."""

    tool: str  # "ip" or "sysctl"
    args: tuple[str, ...]
    # An `ip link add` of something that may exist already: done when it does.
    exists_ok: bool = False

    def argv(self, netns: str | None) -> list[str]:
        if self.tool == "ip":
            return ["ip", *(("-n", netns) if netns else ()), *self.args]
        pre = ["ip", "netns", "exec", netns] if netns else []
        return [*pre, "sysctl", "-qw", *self.args]

    def __str__(self) -> str:
        return shlex.join(self.argv(None))


def _ip(*args: str, exists_ok: bool = False) -> Step:
    return Step("ip", args, exists_ok)


def _addr(dev: str, a: Addr, plen4: int = 24, plen6: int = 64) -> list[Step]:
    # nodad: a duplicate address check would hold the address back ~1 s after boot/up.
    return [_ip("addr", "replace", f"{a.v4}/{plen4}", "dev", dev),
            _ip("-6", "addr", "replace", f"{a.v6}/{plen6}", "dev", dev, "nodad")]


def _up(dev: str) -> Step:
    return _ip("link", "set", dev, "up")


def plan(role: str, interfaces: Mapping[str, str], *,
         upstream_only: bool = False) -> list[Step]:
    """The steps that configure one host of the topology (pure: nothing is run).

    `interfaces` maps the role's parts (see NEEDS) to interface names already resolved.
    `upstream_only`: guests route only the upstream prefixes via the gateway instead of
    taking it as their default route (VMs keep the hypervisor's NAT for package mirrors).
    """
    if role not in ROLES:
        raise ProvisionError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    for name in interfaces.values():
        if not _IFNAME.match(name):
            raise ProvisionError(f"{name!r} is not an interface name")
    need = NEEDS.get(role, ())
    missing = [n for n in need if n not in interfaces]
    extra = [n for n in interfaces if need and n not in need]
    if missing or extra:
        raise ProvisionError(f"role {role} needs interfaces {', '.join(need)} "
                             f"(missing: {', '.join(missing) or '-'}; "
                             f"unknown: {', '.join(extra) or '-'})")
    steps: list[Step] = []
    if role == "appliance":
        if not interfaces:
            raise ProvisionError("role appliance needs at least one bridge port")
        steps += [
            _ip("link", "add", BRIDGE, "type", "bridge", exists_ok=True),
            # No STP delays, no forwarding delay: guests talk as soon as the ports are up.
            _ip("link", "set", BRIDGE, "type", "bridge", "forward_delay", "0",
                "stp_state", "0"),
            _up(BRIDGE),
        ]
        for dev in interfaces.values():
            # A bridge port carries no address of its own (the appliance is invisible).
            steps += [_ip("addr", "flush", "dev", dev),
                      _ip("link", "set", dev, "master", BRIDGE, "up")]
    elif role in GUEST_ADDRS:
        lan = interfaces["lan"]
        steps += [*_addr(lan, GUEST_ADDRS[role]), _up(lan)]
        v4_dests = (UPSTREAM_V4,) if upstream_only else ("default",)
        v6_dests = (UPSTREAM_V6,) if upstream_only else ("default",)
        steps += [_ip("route", "replace", d, "via", GATEWAY_LAN.v4) for d in v4_dests]
        steps += [_ip("-6", "route", "replace", d, "via", GATEWAY_LAN.v6) for d in v6_dests]
    elif role == "gateway":
        lan, wan = interfaces["lan"], interfaces["wan"]
        steps += [*_addr(lan, GATEWAY_LAN), _up(lan), *_addr(wan, GATEWAY_UP), _up(wan)]
        steps += _forwarding()
    elif role == "internet":
        wan = interfaces["wan"]
        steps += [*_addr(wan, INTERNET), _up(wan),
                  _ip("route", "replace", LAN_V4, "via", GATEWAY_UP.v4),
                  _ip("-6", "route", "replace", LAN_V6, "via", GATEWAY_UP.v6)]
    else:  # edge: the gateway's LAN side on its NIC, the upstream addresses on lo
        lan = interfaces["lan"]
        steps += [*_addr(lan, GATEWAY_LAN), _up(lan), _up("lo")]
        for a in (GATEWAY_UP, INTERNET):
            steps += _addr("lo", a, 32, 128)
        steps += _forwarding()
    return steps


def _forwarding() -> list[Step]:
    return [Step("sysctl", ("net.ipv4.ip_forward=1",)),
            Step("sysctl", ("net.ipv6.conf.all.forwarding=1",))]


# -- running -----------------------------------------------------------------------------

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ProvisionError(f"{argv[0]} not found (install iproute2 and procps)") from None
    except subprocess.TimeoutExpired:
        raise ProvisionError(f"{shlex.join(argv)}: no answer in {timeout} s") from None


def resolve(interfaces: Mapping[str, str], netns: str | None = None,
            run: Runner = _run) -> dict[str, str]:
    """Interface names for a mapping whose values are names or MAC addresses."""
    if not any(_MAC.match(v) for v in interfaces.values()):
        return dict(interfaces)
    cp = run(["ip", *(("-n", netns) if netns else ()), "-o", "link", "show"])
    by_mac: dict[str, str] = {}
    for line in cp.stdout.splitlines():
        # "3: eth1: <BROADCAST,...> mtu 1500 ... link/ether 52:54:00:..."
        m = re.match(r"^\d+:\s+([^:@\s]+)[@:].*\blink/ether\s+([0-9a-f:]{17})", line)
        if m:
            by_mac.setdefault(m.group(2).lower(), m.group(1))
    out = {}
    for part, v in interfaces.items():
        if _MAC.match(v):
            if v.lower() not in by_mac:
                raise ProvisionError(f"{part}: no interface has MAC address {v}")
            out[part] = by_mac[v.lower()]
        else:
            out[part] = v
    return out


def apply(steps: Sequence[Step], netns: str | None = None, run: Runner = _run) -> None:
    for st in steps:
        if st.exists_ok:
            show = run(["ip", *(("-n", netns) if netns else ()), "link", "show", st.args[2]])
            if show.returncode == 0:
                continue
        cp = run(st.argv(netns))
        if cp.returncode != 0:
            where = f" (in {netns})" if netns else ""
            raise ProvisionError(f"{st}{where}: {cp.stderr.strip() or cp.stdout.strip()}")


def configure(role: str, interfaces: Mapping[str, str], *, netns: str | None = None,
              upstream_only: bool = False, run: Runner = _run) -> list[Step]:
    """Configure one host for `role`; returns the steps it ran."""
    steps = plan(role, resolve(interfaces, netns, run), upstream_only=upstream_only)
    apply(steps, netns, run)
    return steps


# -- the lab's cabling -------------------------------------------------------------------

LAB_PORTS: Final = (*GUEST_ADDRS, "gateway")


def cable_lab(ns: Callable[[str], str], run: Runner = _run) -> list[Step]:
    """Wire the lab's namespaces (which must exist) as the hypervisor wires the VMs: one
    veth per guest from the host's bridge port PORT to the guest's eth0, and gateway eth1
    to internet eth0. Returns the steps, run in the host namespace ns('host')."""
    steps = [_ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
                 ns(port)) for port in LAB_PORTS]
    apply(steps, ns("host"), run)
    up = [_ip("link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns",
              ns("internet"))]
    apply(up, ns("gateway"), run)
    return steps + up


def build_lab(ns: Callable[[str], str], run: Runner = _run) -> None:
    """Cable and configure the lab: what `Lab._build` does after creating the namespaces
    (host, desktop, proxy, sinkhole, gateway, internet) and before starting services."""
    cable_lab(ns, run)
    configure("appliance", {p: p for p in LAB_PORTS}, netns=ns("host"), run=run)
    for g in GUEST_ADDRS:
        configure(g, {"lan": "eth0"}, netns=ns(g), run=run)
    configure("gateway", {"lan": "eth0", "wan": "eth1"}, netns=ns("gateway"), run=run)
    configure("internet", {"wan": "eth0"}, netns=ns("internet"), run=run)


# -- the appliance VM: package, user, files, service --------------------------------------

APT_PACKAGES: Final = ("python3-venv", "python3-dev", "gcc", "libnetfilter-queue-dev",
                       "libnfnetlink-dev", "iptables", "ipset", "ebtables", "iproute2",
                       "kmod", "procps")
PREFIX: Final = Path("/opt/appliance")
ETC: Final = Path("/etc/appliance")
BRIDGE_SYSCTLS: Final = ("net.bridge.bridge-nf-call-iptables",
                         "net.bridge.bridge-nf-call-ip6tables",
                         "net.bridge.bridge-nf-filter-vlan-tagged")


def install_steps(source: Path, user: str = "appliance",
                  policy: str = "rules/lab-policy.yaml") -> list[list[str]]:
    """The commands that install and start the appliance service on a Debian VM."""
    sh = "/bin/sh"
    defaults = (f"APPLIANCE_BRIDGE={BRIDGE}\n"
                f"APPLIANCE_OPTS=--rules {ETC}/rules --policy {ETC}/policy.yaml --queues 1\n")
    sysctls = "".join(f"{k} = 1\n" for k in BRIDGE_SYSCTLS)
    return [
        ["apt-get", "update", "-qq"],
        ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq",
         "--no-install-recommends", *APT_PACKAGES],
        [sh, "-c", f"test -x {PREFIX}/bin/python || python3 -m venv {PREFIX}"],
        [f"{PREFIX}/bin/pip", "install", "-q", "--upgrade", f"{source}[live]"],
        ["ln", "-sf", f"{PREFIX}/bin/appliance", "/usr/local/bin/appliance"],
        [sh, "-c", f"id -u {user} >/dev/null 2>&1 || useradd --system --no-create-home "
                   f"--home-dir /var/lib/{user} --shell /usr/sbin/nologin {user}"],
        ["install", "-d", "-m", "0755", str(ETC)],
        ["rm", "-rf", f"{ETC}/rules"],
        ["cp", "-r", str(source / "rules"), f"{ETC}/rules"],
        ["install", "-m", "0644", str(source / policy), f"{ETC}/policy.yaml"],
        [sh, "-c", f"test -e /etc/default/appliance || printf '%s' {shlex.quote(defaults)}"
                   " > /etc/default/appliance"],
        # br_netfilter hands bridged packets to iptables; loaded and set at every boot, so
        # the service needs neither CAP_SYS_MODULE nor write access to /proc/sys.
        [sh, "-c", "echo br_netfilter > /etc/modules-load.d/appliance.conf"],
        ["modprobe", "br_netfilter"],
        [sh, "-c", f"printf '%s' {shlex.quote(sysctls)} > /etc/sysctl.d/60-appliance.conf"],
        ["sysctl", "-q", "-p", "/etc/sysctl.d/60-appliance.conf"],
        ["install", "-m", "0644", str(source / "deploy" / "appliance.service"),
         "/etc/systemd/system/appliance.service"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "appliance.service"],
        ["systemctl", "restart", "appliance.service"],
    ]


def install_appliance(source: Path, dry_run: bool = False,
                      log: Callable[[str], None] = print) -> None:
    _run_all(install_steps(source), dry_run, log)


def services_steps(source: Path) -> list[list[str]]:
    """The internet VM's HTTP and DNS services (appliance.lab_services, stdlib only), as
    systemd units that run them from the synced checkout."""
    steps: list[list[str]] = []
    for svc in ("http", "dns"):
        unit = (f"[Unit]\nDescription=appliance lab {svc} service\nAfter=network.target\n\n"
                f"[Service]\nEnvironment=PYTHONPATH={source}\n"
                f"ExecStart=/usr/bin/python3 -m appliance.lab_services {svc}\n"
                "DynamicUser=yes\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n"
                "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\nRestart=always\n\n"
                "[Install]\nWantedBy=multi-user.target\n")
        path = f"/etc/systemd/system/appliance-lab-{svc}.service"
        steps.append(["/bin/sh", "-c", f"printf '%s' {shlex.quote(unit)} > {path}"])
    steps += [["systemctl", "daemon-reload"],
              ["systemctl", "enable", "--now", "appliance-lab-http.service",
               "appliance-lab-dns.service"]]
    return steps


def _run_all(steps: list[list[str]], dry_run: bool, log: Callable[[str], None]) -> None:
    for argv in steps:
        log(f"+ {shlex.join(argv)}")
        if dry_run:
            continue
        cp = subprocess.run(argv, text=True, capture_output=True, timeout=1800)
        if cp.returncode != 0:
            raise ProvisionError(f"{shlex.join(argv)}: {cp.stderr.strip() or cp.stdout}")


# -- command line ------------------------------------------------------------------------


def _mapping(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for it in items:
        part, sep, dev = it.partition("=")
        if not sep or not part or not dev:
            raise ProvisionError(f"--if {it!r}: expected PART=IFNAME or PART=MAC")
        out[part] = dev
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="provision", description=__doc__.split("\n\n")[0]
                                 if __doc__ else None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    net = sub.add_parser("net", help="configure one host's addresses, routes and bridge")
    net.add_argument("role", choices=ROLES)
    net.add_argument("--if", dest="ifs", action="append", default=[], metavar="PART=DEV",
                     help="which interface (name or MAC) plays PART: lan, wan, or a "
                          "bridge port name for the appliance (repeatable)")
    net.add_argument("--netns", default=None, help="configure this network namespace")
    net.add_argument("--upstream-only", action="store_true",
                     help="guests: route only the upstream prefixes via the gateway")
    net.add_argument("--dry-run", action="store_true", help="print the steps only")
    ins = sub.add_parser("install", help="install and start the appliance service (VM)")
    ins.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1],
                     help="the project's checkout (default: this one)")
    ins.add_argument("--dry-run", action="store_true", help="print the commands only")
    svc = sub.add_parser("services", help="run the internet's HTTP and DNS services (VM)")
    svc.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1])
    svc.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "net":
            ifs = _mapping(a.ifs)
            if a.dry_run:
                for st in plan(a.role, ifs, upstream_only=a.upstream_only):
                    print(shlex.join(st.argv(a.netns)))
            else:
                configure(a.role, ifs, netns=a.netns, upstream_only=a.upstream_only)
                print(f"provision: {a.role} configured"
                      f"{f' in {a.netns}' if a.netns else ''}")
        elif a.cmd == "install":
            install_appliance(a.source, a.dry_run)
        else:
            _run_all(services_steps(a.source), a.dry_run, print)
    except ProvisionError as e:
        print(f"provision: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
