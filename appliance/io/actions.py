"""Actions on guests' bridge ports: quarantine, redirect to the sinkhole, block an address.

`ActionBackend` is the edge; `RecordingBackend` is its fake for tests of logic;
`NetlinkBackend` is the real one. What it installs, and why (each choice was checked with
real traffic in the lab on a kernel with br_netfilter, ipset, u32 + mirred, no 802.1Q):

quarantine PORT
    Filtering, not bridge port isolation. Isolation (IFLA_BRPORT_ISOLATED) only stops
    traffic between two *isolated* ports: isolating the guest alone changes nothing, and
    isolating every other port as well would also cut the healthy guests from each other.
    So the guest is fenced by netfilter on the bridge (br_netfilter):
      iptables/ip6tables filter APL-ACT (jumped to from FORWARD before the queue chain):
        -m physdev --physdev-in PORT  -d SINKHOLE -j RETURN      (then inspected as usual)
        -m physdev --physdev-out PORT -s SINKHOLE -j RETURN
        ip6tables only: ICMPv6 neighbour solicitation/advertisement RETURN (else the guest
        cannot resolve the sinkhole's IPv6 address)
        -m physdev --physdev-in PORT -j DROP; -m physdev --physdev-out PORT -j DROP
      ebtables filter APL-ACT (from FORWARD): what iptables never sees, non-IP frames:
        ARP only about the sinkhole's addresses, any other ethertype dropped, so a
        quarantined guest cannot ARP-spoof the gateway or speak raw L2 to its neighbours.
    Everything to or from the sinkhole, DNS included, stays allowed.

redirect PORT -> TO_PORT
    tc ingress qdisc on PORT with u32 filters whose action is mirred egress redirect to
    TO_PORT (this kernel has no matchall classifier; u32 "match all" does the same). Only
    IPv4/IPv6 is redirected, and ICMPv6 neighbour discovery passes: address resolution keeps
    going through the bridge, so the guest learns its real peers' MACs and its frames reach
    the sinkhole unchanged: destination MAC of the gateway, destination IP of the real
    server. The sinkhole therefore has to accept frames and packets that are not addressed
    to it (this kernel has no pedit/skbedit to rewrite them here): e.g. a macvlan in
    passthru mode over its NIC (frames for any MAC become PACKET_HOST) and a local route
    for the addresses it impersonates. Redirected frames bypass the bridge and its
    netfilter hooks; the sinkhole's replies cross the bridge normally.

block ADDR
    ipset hash:net sets `apl-block` (IPv4) and `apl-block6` (IPv6) matched as source or
    destination by DROP rules at the top of APL-ACT.

Every operation is idempotent, `active()` reads the kernel (so it is right after a
restart), and `cleanup()` removes every rule, chain, set and qdisc of ours.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, Final, Protocol

from appliance.errors import ActionError

CHAIN: Final = "APL-ACT"
SET4: Final = "apl-block"
SET6: Final = "apl-block6"
# A bridge port name becomes an argv element of iptables/ebtables: allow only what an
# interface name may hold (IFNAMSIZ 16 with NUL) and never a leading '-'.
_IFNAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.:@-]{0,14}$")
# tc: the ingress qdisc handle, our filters' priorities and a dummy classid.
INGRESS: Final = 0xFFFF0000
_ND_TYPES: Final = (133, 134, 135, 136)  # RS, RA, NS, NA (RFC 4861)
_PRIO_ND: Final = 1  # 1..4: neighbour discovery passes
_PRIO_V4: Final = 10
_PRIO_V6: Final = 11
_PRIO_FLOW: Final = 100  # 100..30099: per-flow redirects
_CLASSID: Final = 0x10001
ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
_REDIRECT_EGRESS: Final = 1  # TCA_EGRESS_REDIR (tc_mirred.h)
_TIMEOUT: Final = 30.0


class ActionBackend(Protocol):
    """What the ActionManager needs from the network."""

    def quarantine(self, port: str, allow_ips: list[str]) -> None: ...

    def release_quarantine(self, port: str) -> None: ...

    def redirect(self, port: str, to_port: str) -> None: ...

    def release_redirect(self, port: str) -> None: ...

    def redirect_flow(self, port: str, to_port: str, dst: str, dport: int | None) -> None: ...

    def release_redirect_flow(self, port: str, dst: str, dport: int | None) -> None: ...

    def block(self, addr: str) -> None: ...

    def unblock(self, addr: str) -> None: ...

    def active(self) -> dict[str, Any]: ...

    def cleanup(self) -> None: ...


def _check_port(port: str) -> str:
    if not isinstance(port, str) or not _IFNAME.match(port):
        raise ActionError(f"{port!r} is not a valid interface name")
    return port


def _check_addr(addr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(addr, strict=False)
    except (ValueError, TypeError):
        raise ActionError(f"{addr!r} is not an IP address or network") from None


class RecordingBackend:
    """The fake: records calls and keeps the state a real backend would have."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.quarantined: dict[str, list[str]] = {}
        self.redirected: dict[str, str] = {}
        self.blocked: set[str] = set()
        self.fail = fail

    def _rec(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if self.fail:
            raise ActionError(f"{name}: recording backend told to fail")

    def quarantine(self, port: str, allow_ips: list[str]) -> None:
        self._rec("quarantine", port, list(allow_ips))
        self.quarantined[_check_port(port)] = list(allow_ips)

    def release_quarantine(self, port: str) -> None:
        self._rec("release_quarantine", port)
        self.quarantined.pop(port, None)

    def redirect(self, port: str, to_port: str) -> None:
        self._rec("redirect", port, to_port)
        self.redirected[_check_port(port)] = _check_port(to_port)

    def release_redirect(self, port: str) -> None:
        self._rec("release_redirect", port)
        self.redirected.pop(port, None)

    def redirect_flow(self, port: str, to_port: str, dst: str, dport: int | None) -> None:
        self._rec("redirect_flow", port, to_port, dst, dport)

    def release_redirect_flow(self, port: str, dst: str, dport: int | None) -> None:
        self._rec("release_redirect_flow", port, dst, dport)

    def block(self, addr: str) -> None:
        self._rec("block", addr)
        self.blocked.add(str(_check_addr(addr)))

    def unblock(self, addr: str) -> None:
        self._rec("unblock", addr)
        self.blocked.discard(str(_check_addr(addr)))

    def active(self) -> dict[str, Any]:
        return {"quarantine": dict(self.quarantined), "redirect": dict(self.redirected),
                "block": sorted(self.blocked)}

    def cleanup(self) -> None:
        self._rec("cleanup")
        self.quarantined.clear()
        self.redirected.clear()
        self.blocked.clear()


class NetlinkBackend:
    """pyroute2 for links and tc; iptables/ip6tables/ebtables/ipset for filtering.

    `netns` names a network namespace (as `ip netns` knows it) holding the bridge; None
    means the caller's own. Call `install()` after the inline chains are installed (and
    whenever they are reinstalled): it puts the jump to APL-ACT back at the top of FORWARD
    so that actions win over the queue chain. Every action does it as well.
    """

    def __init__(self, bridge: str, netns: str | None = None) -> None:
        self.bridge = _check_port(bridge)
        self.netns = netns

    # -- plumbing ------------------------------------------------------------------------

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        try:
            cp = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT)
        except FileNotFoundError:
            raise ActionError(f"{cmd[0]} not found (install iproute2, iptables, ipset)") \
                from None
        except subprocess.TimeoutExpired:
            raise ActionError(f"{' '.join(argv)}: no answer in {_TIMEOUT:.0f} s") from None
        if check and cp.returncode != 0:
            raise ActionError(f"{' '.join(argv)}: {cp.stderr.strip() or cp.stdout.strip()}")
        return cp

    def _ipt(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(tool, "-w", "5", *args, check=check)

    def _ebt(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("ebtables", "--concurrent", *args, check=check)

    @contextmanager
    def _ipr(self) -> Iterator[Any]:
        from pyroute2 import IPRoute  # the import is slow; only the real backend needs it

        try:
            ipr = IPRoute(netns=self.netns) if self.netns is not None else IPRoute()
        except OSError as e:
            raise ActionError(f"netlink in {self.netns or 'this namespace'}: {e}") from None
        try:
            yield ipr
        finally:
            ipr.close()

    def _ports(self, ipr: Any) -> dict[str, int]:
        """The bridge's ports, name -> ifindex."""
        found = ipr.link_lookup(ifname=self.bridge)
        if not found:
            raise ActionError(f"{self.bridge}: no such bridge"
                              f"{' in ' + self.netns if self.netns else ''}")
        br = found[0]
        ports = {}
        for link in ipr.get_links():
            if link.get_attr("IFLA_MASTER") == br:
                ports[link.get_attr("IFLA_IFNAME")] = link["index"]
        return dict(ports)

    def _port_index(self, ipr: Any, port: str) -> int:
        ports = self._ports(ipr)
        if _check_port(port) not in ports:
            raise ActionError(f"{port}: not a port of bridge {self.bridge} "
                              f"(ports: {', '.join(sorted(ports)) or 'none'})")
        return ports[port]

    def _sysctls(self) -> None:
        # br_netfilter's switches are per network namespace: without them bridged
        # packets never reach iptables and a quarantine would silently do nothing.
        for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
            self._run("sysctl", "-qw", f"net.bridge.{name}=1")

    def _jump(self) -> list[str]:
        return ["-i", self.bridge, "-o", self.bridge, "-m", "physdev",
                "--physdev-is-bridged", "-j", CHAIN]

    def _top_of_forward(self, tool: str) -> None:
        """Our jump as rule 1 of FORWARD, exactly once, never absent in between."""
        want = "-A FORWARD " + " ".join(self._jump())
        rules = [ln for ln in self._ipt(tool, "-S", "FORWARD").stdout.splitlines()
                 if ln.startswith("-A ")]
        where = [i + 1 for i, ln in enumerate(rules) if ln == want]
        if where == [1]:
            return
        self._ipt(tool, "-I", "FORWARD", "1", *self._jump())
        for pos in reversed(where):
            self._ipt(tool, "-D", "FORWARD", str(pos + 1))

    def install(self) -> None:
        """Sets, chains and jumps (idempotent; keeps existing actions)."""
        self._sysctls()
        for name, family in ((SET4, "inet"), (SET6, "inet6")):
            self._run("ipset", "create", name, "hash:net", "family", family, "-exist")
        for tool, name in (("iptables", SET4), ("ip6tables", SET6)):
            if self._ipt(tool, "-n", "-L", CHAIN, check=False).returncode != 0:
                self._ipt(tool, "-N", CHAIN)
                for d in ("src", "dst"):
                    self._ipt(tool, "-A", CHAIN, "-m", "set", "--match-set", name, d,
                              "-j", "DROP")
            self._top_of_forward(tool)
        if self._ebt("-L", CHAIN, check=False).returncode != 0:
            self._ebt("-N", CHAIN, "-P", "RETURN")
        fwd = self._ebt("-L", "FORWARD").stdout
        if f"-j {CHAIN}" not in fwd:
            self._ebt("-I", "FORWARD", "1", "-j", CHAIN)

    # -- quarantine ------------------------------------------------------------------------

    @staticmethod
    def _tag(port: str) -> str:
        return f"apl-q:{port}"

    def _q_rules(self, port: str, allow: list[str]) -> dict[str, list[list[str]]]:
        nets = [_check_addr(a) for a in allow]
        tag = ["-m", "comment", "--comment", self._tag(port)]
        pin = ["-m", "physdev", "--physdev-in", port]
        pout = ["-m", "physdev", "--physdev-out", port]
        out: dict[str, list[list[str]]] = {"iptables": [], "ip6tables": []}
        for tool, version in (("iptables", 4), ("ip6tables", 6)):
            rules = out[tool]
            for n in nets:
                if n.version == version:
                    rules.append([*pin, "-d", str(n), *tag, "-j", "RETURN"])
                    rules.append([*pout, "-s", str(n), *tag, "-j", "RETURN"])
            if version == 6:
                for t in _ND_TYPES[2:]:
                    for p in (pin, pout):
                        rules.append([*p, "-p", "ipv6-icmp", "--icmpv6-type", str(t),
                                      *tag, "-j", "RETURN"])
            rules.append([*pin, *tag, "-j", "DROP"])
            rules.append([*pout, *tag, "-j", "DROP"])
        return out

    def _ebt_rules(self, port: str, allow: list[str]) -> list[list[str]]:
        v4 = [str(n.network_address) for n in map(_check_addr, allow)
              if n.version == 4 and n.prefixlen == 32]
        rules: list[list[str]] = []
        for flag, arp in (("-i", "--arp-ip-dst"), ("-o", "--arp-ip-src")):
            rules.append([flag, port, "-p", "IPv4", "-j", "RETURN"])
            rules.append([flag, port, "-p", "IPv6", "-j", "RETURN"])
            for a in v4:
                rules.append([flag, port, "-p", "ARP", arp, a, "-j", "RETURN"])
            rules.append([flag, port, "-j", "DROP"])
        return rules

    def _q_installed(self) -> dict[str, dict[str, list[str]]]:
        """port -> tool -> rule specs (as -S prints them) tagged for that port."""
        found: dict[str, dict[str, list[str]]] = {}
        pat = re.compile(r'--comment "?apl-q:([^" ]+)"?')
        for tool in ("iptables", "ip6tables"):
            cp = self._ipt(tool, "-S", CHAIN, check=False)
            for ln in cp.stdout.splitlines():
                m = pat.search(ln)
                if m and ln.startswith(f"-A {CHAIN} "):
                    found.setdefault(m.group(1), {}).setdefault(tool, []).append(ln)
        return found

    def _ebt_installed(self, port: str) -> list[list[str]]:
        cp = self._ebt("-L", CHAIN, check=False)
        out = []
        for ln in cp.stdout.splitlines():
            argv = shlex.split(ln)
            for flag in ("-i", "-o"):
                if flag in argv and argv.index(flag) + 1 < len(argv) \
                        and argv[argv.index(flag) + 1] == port:
                    out.append(argv)
                    break
        return out

    def quarantine(self, port: str, allow_ips: list[str]) -> None:
        with self._ipr() as ipr:
            self._port_index(ipr, port)
        want = self._q_rules(port, allow_ips)
        self.install()
        have = self._q_installed().get(port, {})
        norm = sorted(str(_check_addr(a)) for a in allow_ips)
        now = sorted(self._allowed(have.get("iptables", []))
                     + self._allowed(have.get("ip6tables", [])))
        if now == norm and all(len(have.get(t, [])) == len(r) for t, r in want.items()):
            return
        # New rules first (appended after any old ones: the old DROPs keep the guest
        # fenced meanwhile), then the old ones go.
        old_ebt = self._ebt_installed(port)
        for tool, rules in want.items():
            for r in rules:
                self._ipt(tool, "-A", CHAIN, *r)
        for r in self._ebt_rules(port, allow_ips):
            self._ebt("-A", CHAIN, *r)
        for tool, lines in have.items():
            for ln in lines:
                self._ipt(tool, *shlex.split(ln.replace("-A ", "-D ", 1)), check=False)
        for argv in old_ebt:
            self._ebt("-D", CHAIN, *argv, check=False)

    @staticmethod
    def _allowed(lines: list[str]) -> list[str]:
        ips = []
        for ln in lines:
            argv = shlex.split(ln)
            if "--physdev-in" in argv and "-d" in argv:
                ips.append(str(_check_addr(argv[argv.index("-d") + 1])))
        return sorted(ips)

    def release_quarantine(self, port: str) -> None:
        _check_port(port)
        for tool, lines in self._q_installed().get(port, {}).items():
            for ln in lines:
                self._ipt(tool, *shlex.split(ln.replace("-A ", "-D ", 1)), check=False)
        for argv in self._ebt_installed(port):
            self._ebt("-D", CHAIN, *argv, check=False)

    # -- redirect ----------------------------------------------------------------------------

    def _redirects(self, ipr: Any) -> dict[str, str]:
        """port -> port its IP traffic is redirected to (from the kernel's tc filters)."""
        ports = self._ports(ipr)
        names = {i: n for n, i in ports.items()}
        out = {}
        for name, idx in ports.items():
            target = self._mirred_target(ipr, idx)
            if target is not None:
                out[name] = names.get(target, f"ifindex {target}")
        return out

    @staticmethod
    def _mirred_target(ipr: Any, idx: int) -> int | None:
        try:
            filters = ipr.get_filters(idx, parent=INGRESS)
        except Exception:  # no ingress qdisc (or the port went away): nothing redirected
            return None
        for f in filters:
            opts = f.get_attr("TCA_OPTIONS")
            if opts is None:
                continue
            act = opts.get_attr("TCA_U32_ACT")
            if act is None:
                continue
            for _, prio in act["attrs"]:
                if prio.get_attr("TCA_ACT_KIND") != "mirred":
                    continue
                parms = prio.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_MIRRED_PARMS")
                if parms["eaction"] == _REDIRECT_EGRESS:
                    return int(parms["ifindex"])
        return None

    @staticmethod
    def _has_ingress(ipr: Any, idx: int) -> bool:
        return any(q.get_attr("TCA_KIND") == "ingress" for q in ipr.get_qdiscs(idx))

    def redirect(self, port: str, to_port: str) -> None:
        if port == to_port:
            raise ActionError(f"cannot redirect {port} to itself")
        with self._ipr() as ipr:
            idx = self._port_index(ipr, port)
            to_idx = self._port_index(ipr, to_port)
            if self._mirred_target(ipr, idx) == to_idx:
                return
            if self._has_ingress(ipr, idx):
                ipr.tc("del", "ingress", idx, INGRESS)
            ipr.tc("add", "ingress", idx, INGRESS)
            # u32 keys: IPv6 next header is byte 6, the ICMPv6 type byte 40 (RFC 8200,
            # 4443; no extension headers in neighbour discovery, RFC 4861 section 6.1).
            for i, t in enumerate(_ND_TYPES):
                ipr.tc("add-filter", "u32", idx, parent=INGRESS, prio=_PRIO_ND + i,
                       protocol=ETH_P_IPV6, target=_CLASSID,
                       keys=["0x00003a00/0x0000ff00+4", f"0x{t:02x}000000/0xff000000+40"])
            action = {"kind": "mirred", "direction": "egress", "action": "redirect",
                      "ifindex": to_idx}
            for prio, proto in ((_PRIO_V4, ETH_P_IP), (_PRIO_V6, ETH_P_IPV6)):
                ipr.tc("add-filter", "u32", idx, parent=INGRESS, prio=prio, protocol=proto,
                       target=_CLASSID, keys=["0x0/0x0+0"], action=action)

    def release_redirect(self, port: str) -> None:
        with self._ipr() as ipr:
            ports = self._ports(ipr)
            idx = ports.get(_check_port(port))
            if idx is not None and self._has_ingress(ipr, idx):
                ipr.tc("del", "ingress", idx, INGRESS)

    # One flow (destination address, optionally its port) rather than the whole guest:
    # a u32 filter of its own on the guest port's ingress. Offsets assume no IPv4 options
    # and no IPv6 extension headers (the destination port at 20+2 / 40+2), which is what
    # a guest's ordinary TCP/UDP traffic looks like; other packets are not redirected.

    @staticmethod
    def _flow_filter(dst: str, dport: int | None) -> tuple[int, int, list[str]]:
        ip = ipaddress.ip_address(dst)
        import zlib

        # A stable priority per flow so release finds the same filter (above the
        # whole-port filters' priorities).
        prio = _PRIO_FLOW + zlib.crc32(f"{ip}:{dport}".encode()) % 30000
        if ip.version == 4:
            keys = [f"0x{int(ip):08x}/0xffffffff+16"]
            if dport:
                keys.append(f"0x{dport:08x}/0x0000ffff+20")
            return prio, ETH_P_IP, keys
        words = ip.packed
        keys = [f"0x{int.from_bytes(words[i:i + 4], 'big'):08x}/0xffffffff+{24 + i}"
                for i in range(0, 16, 4)]
        if dport:
            keys.append(f"0x{dport:08x}/0x0000ffff+40")
        return prio, ETH_P_IPV6, keys

    def redirect_flow(self, port: str, to_port: str, dst: str, dport: int | None) -> None:
        if port == to_port:
            raise ActionError(f"cannot redirect {port} to itself")
        try:
            prio, proto, keys = self._flow_filter(dst, dport)
        except ValueError:
            raise ActionError(f"not an IP address: {dst!r}") from None
        with self._ipr() as ipr:
            idx = self._port_index(ipr, port)
            to_idx = self._port_index(ipr, to_port)
            if not self._has_ingress(ipr, idx):
                ipr.tc("add", "ingress", idx, INGRESS)
            action = {"kind": "mirred", "direction": "egress", "action": "redirect",
                      "ifindex": to_idx}
            with suppress(Exception):  # not there yet: the add below stays idempotent
                ipr.tc("del-filter", "u32", idx, parent=INGRESS, prio=prio, protocol=proto,
                       target=_CLASSID, keys=keys)
            ipr.tc("add-filter", "u32", idx, parent=INGRESS, prio=prio, protocol=proto,
                   target=_CLASSID, keys=keys, action=action)

    def release_redirect_flow(self, port: str, dst: str, dport: int | None) -> None:
        prio, proto, keys = self._flow_filter(dst, dport)
        with self._ipr() as ipr:
            idx = self._ports(ipr).get(_check_port(port))
            if idx is None or not self._has_ingress(ipr, idx):
                return
            with suppress(Exception):  # already gone
                ipr.tc("del-filter", "u32", idx, parent=INGRESS, prio=prio, protocol=proto,
                       target=_CLASSID, keys=keys)

    # -- block -------------------------------------------------------------------------------

    def block(self, addr: str) -> None:
        net = _check_addr(addr)
        self.install()
        self._run("ipset", "add", SET4 if net.version == 4 else SET6, str(net), "-exist")

    def unblock(self, addr: str) -> None:
        net = _check_addr(addr)
        name = SET4 if net.version == 4 else SET6
        if self._run("ipset", "list", "-n", name, check=False).returncode == 0:
            self._run("ipset", "del", name, str(net), "-exist")

    def _blocked(self) -> list[str]:
        out = []
        for name in (SET4, SET6):
            cp = self._run("ipset", "list", name, check=False)
            if cp.returncode != 0:
                continue
            lines = cp.stdout.splitlines()
            if "Members:" in lines:
                for ln in lines[lines.index("Members:") + 1:]:
                    if ln.strip():
                        out.append(str(_check_addr(ln.split()[0])))
        return sorted(out)

    # -- state -------------------------------------------------------------------------------

    def active(self) -> dict[str, Any]:
        with self._ipr() as ipr:
            redirects = self._redirects(ipr)
        quarantine = {}
        for port, by_tool in self._q_installed().items():
            quarantine[port] = (self._allowed(by_tool.get("iptables", []))
                                + self._allowed(by_tool.get("ip6tables", [])))
        return {"quarantine": quarantine, "redirect": redirects, "block": self._blocked()}

    def installed(self) -> list[str]:
        """Everything of ours the kernel holds, one line each (empty when clean)."""
        out = []
        for tool in ("iptables", "ip6tables"):
            for ln in self._ipt(tool, "-S", check=False).stdout.splitlines():
                if CHAIN in ln:
                    out.append(f"{tool} {ln}")
        for ln in self._ebt("-L", check=False).stdout.splitlines():
            if CHAIN in ln:
                out.append(f"ebtables {ln}")
        for name in (SET4, SET6):
            if self._run("ipset", "list", "-n", name, check=False).returncode == 0:
                out.append(f"ipset {name}")
        with self._ipr() as ipr:
            for name, idx in self._ports(ipr).items():
                if self._has_ingress(ipr, idx):
                    out.append(f"tc ingress qdisc on {name}")
        return out

    def cleanup(self) -> None:
        """Remove every rule, chain, set and ingress qdisc of ours (idempotent)."""
        try:
            with self._ipr() as ipr:
                for idx in self._ports(ipr).values():
                    if self._mirred_target(ipr, idx) is not None:
                        ipr.tc("del", "ingress", idx, INGRESS)
        except ActionError:
            pass  # the bridge is gone, and its ports' qdiscs with it
        for tool in ("iptables", "ip6tables"):
            while self._ipt(tool, "-D", "FORWARD", *self._jump(), check=False).returncode == 0:
                pass
            self._ipt(tool, "-F", CHAIN, check=False)
            self._ipt(tool, "-X", CHAIN, check=False)
        while self._ebt("-D", "FORWARD", "-j", CHAIN, check=False).returncode == 0:
            pass
        self._ebt("-F", CHAIN, check=False)
        self._ebt("-X", CHAIN, check=False)
        for name in (SET4, SET6):
            self._run("ipset", "destroy", name, check=False)
        left = [ln for ln in self.installed() if not ln.startswith("tc ")]
        if left:
            raise ActionError("cleanup left: " + "; ".join(left))


def default_backend(bridge: str) -> NetlinkBackend:
    """The backend `appliance run` uses: the bridge in the daemon's own namespace."""
    if os.geteuid() != 0:
        raise ActionError("actions need root (CAP_NET_ADMIN)")
    return NetlinkBackend(bridge)
