"""Roles: which rules apply to a guest, how its matches are acted on, what it may talk to.

Pure data and decisions (no I/O): the policy file is read by appliance/policy_file.py.
A guest is found by its bridge port (NFQUEUE's physical in/out device), its MAC, or its
address; each guest has a role; unknown guests get the role `default`.

A flow belongs to the guest on its client side when that side is a guest (what a guest
does is judged by its own role: a desktop that attacks is quarantined as a desktop),
else to the guest on the server side (what reaches a server is judged by the server's
role).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from appliance.core.commands import ActionRequest
from appliance.core.decode import Packet
from appliance.core.flows import Flow, app_proto_matches
from appliance.core.stream import FLOW_ESTABLISHED, TcpState

ACTIONS_ON_DETECTION: Final = ("none", "quarantine", "redirect", "block")
# The appliance's own alerts for policy decisions (EVE gid/sid; stable).
POLICY_GID: Final = 9002
POLICY_SID_EGRESS: Final = 9002001
POLICY_SID_INGRESS: Final = 9002002
POLICY_SID_APP: Final = 9002003


@dataclass(frozen=True, slots=True)
class RuleSelector:
    """Which rules a role runs. Empty fields select everything; `exclude_*` remove."""

    classtypes: frozenset[str] = frozenset()
    sids: frozenset[int] = frozenset()
    exclude_sids: frozenset[int] = frozenset()
    exclude_classtypes: frozenset[str] = frozenset()
    # metadata key -> accepted values (e.g. signature_severity: [Major, Critical])
    metadata: Mapping[str, frozenset[str]] = field(default_factory=dict)
    files: frozenset[str] = frozenset()  # rule file names (basename), e.g. emerging-dns.rules

    def selects(self, sid: int, classtype: str | None, metadata: Mapping[str, tuple[str, ...]],
                file: str | None) -> bool:
        if sid in self.exclude_sids or (classtype or "") in self.exclude_classtypes:
            return False
        if self.sids and sid in self.sids:
            return True
        if self.classtypes and (classtype or "") not in self.classtypes:
            return False
        if self.files and (file or "").rsplit("/", 1)[-1] not in self.files:
            return False
        for key, values in self.metadata.items():
            if not values & set(metadata.get(key, ())):
                return False
        return not self.sids or bool(self.classtypes or self.files or self.metadata)


@dataclass(frozen=True, slots=True)
class ActionOverride:
    """Turn matching rules' action into `action` (alert, drop, reject, pass)."""

    action: str
    classtypes: frozenset[str] = frozenset()
    sids: frozenset[int] = frozenset()
    min_severity: int | None = None  # severity 1 is the most severe (Suricata priority)

    def applies(self, sid: int, classtype: str | None, severity: int) -> bool:
        if self.sids and sid in self.sids:
            return True
        if self.classtypes and (classtype or "") not in self.classtypes:
            return False
        if self.min_severity is not None and severity > self.min_severity:
            return False
        return bool(self.classtypes or self.min_severity is not None)


@dataclass(frozen=True, slots=True)
class Service:
    """An allowed conversation: protocol, peer networks, ports (None: any)."""

    proto: str  # tcp, udp, icmp, any
    ports: frozenset[int] | None = None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # The application protocols this service may carry (None: any): judged once the app
    # layer has decided the flow's protocol, e.g. only http/tls on a proxy's port 443.
    app_protos: frozenset[str] | None = None

    def allows_app(self, proto: int, peer: bytes, port: int, app_proto: str | None) -> bool:
        return self.allows(proto, peer, port) and (
            self.app_protos is None
            or any(app_proto_matches(a, app_proto or "failed") for a in self.app_protos))

    def allows(self, proto: int, peer: bytes, port: int) -> bool:
        if self.proto != "any" and {"tcp": 6, "udp": 17, "icmp": 1}.get(self.proto) != proto \
                and not (self.proto == "icmp" and proto == 58):
            return False
        if self.ports is not None and port not in self.ports:
            return False
        if self.networks:
            ip = ipaddress.ip_address(peer)
            return any(ip.version == n.version and ip in n for n in self.networks)
        return True


@dataclass(frozen=True, slots=True)
class OnDetection:
    """What happens to the guest when one of its flows matches a rule or heuristic."""

    action: str = "none"  # none, quarantine, redirect, block (the remote peer)
    min_severity: int = 1  # act on alerts of this severity or more severe
    duration: float = 600.0  # seconds; repeat offenders escalate (ActionManager)


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    description: str = ""
    rules: RuleSelector = field(default_factory=RuleSelector)
    overrides: tuple[ActionOverride, ...] = ()
    # None: anything allowed; otherwise only these (new flows outside them are dropped).
    egress: tuple[Service, ...] | None = None
    ingress: tuple[Service, ...] | None = None
    on_detection: OnDetection = field(default_factory=OnDetection)
    scan_files: bool = True
    fail_open: bool = False
    heuristics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # Where fields came from ("file:line" by field), for errors found later (a rule set
    # named by the role but absent from the ruleset loaded with it).
    where: Mapping[str, str] = field(default_factory=dict)

    def action_for(self, action: str, sid: int, classtype: str | None, severity: int) -> str:
        for o in self.overrides:
            if o.applies(sid, classtype, severity):
                if o.action == "drop" and action.startswith("reject"):
                    return action  # already blocking, and it tells the client at once
                return o.action
        return action

    def egress_allowed(self, proto: int, peer: bytes, port: int) -> bool:
        return self.egress is None or any(s.allows(proto, peer, port) for s in self.egress)

    def ingress_allowed(self, proto: int, peer: bytes, port: int) -> bool:
        return self.ingress is None or any(s.allows(proto, peer, port) for s in self.ingress)

    def app_allowed(self, client: bool, proto: int, peer: bytes, port: int,
                    app_proto: str | None) -> bool:
        """Whether the flow's decided application protocol is allowed on its service."""
        services = self.egress if client else self.ingress
        return services is None or any(
            s.allows_app(proto, peer, port, app_proto) for s in services)


DEFAULT_ROLE: Final = Role("default", "unknown guests: the ruleset as written, no actions")


@dataclass(frozen=True, slots=True)
class Guest:
    name: str
    role: str
    ports: frozenset[str] = frozenset()
    macs: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class Policy:
    roles: Mapping[str, Role]
    guests: tuple[Guest, ...] = ()
    # Never acted on (gateway, DNS, the appliance itself), whatever a rule says.
    allowlist: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    source: str = "<built-in>"

    def role(self, name: str) -> Role:
        return self.roles.get(name) or self.roles.get("default") or DEFAULT_ROLE

    def guest_by_port(self, port: str | None) -> Guest | None:
        if port:
            for g in self.guests:
                if port in g.ports:
                    return g
        return None

    def guest_by_mac(self, mac: bytes | None) -> Guest | None:
        if mac:
            text = ":".join(f"{b:02x}" for b in mac[:6])
            for g in self.guests:
                if text in g.macs:
                    return g
        return None

    def guest_by_addr(self, addr: bytes) -> Guest | None:
        if not addr:
            return None
        ip = ipaddress.ip_address(addr)
        for g in self.guests:
            if any(ip.version == n.version and ip in n for n in g.networks):
                return g
        return None

    def resolve(self, src: bytes, dst: bytes, in_port: str | None,
                out_port: str | None, src_mac: bytes | None = None
                ) -> tuple[Guest | None, bool]:
        """The guest a new flow belongs to, and whether it is the client side: by the
        bridge port it came in on, its source MAC, then its source address; else the
        same for the destination (port it leaves by, address)."""
        g = (self.guest_by_port(in_port) or self.guest_by_mac(src_mac)
             or self.guest_by_addr(src))
        if g is not None:
            return g, True
        g = self.guest_by_port(out_port) or self.guest_by_addr(dst)
        return g, False

    def allowlisted(self, addr: bytes) -> bool:
        ip = ipaddress.ip_address(addr)
        return any(ip.version == n.version and ip in n for n in self.allowlist)


def single_role_policy() -> Policy:
    return Policy({"default": DEFAULT_ROLE})


def flow_established(flow: Flow) -> bool:
    """Evidence that both sides took part (TCP handshake done, or replies seen): a
    spoofed packet alone never gets this far."""
    if flow.proto == 6:
        return flow.tcp is not None and flow.tcp.state >= TcpState.ESTABLISHED
    return flow.state == FLOW_ESTABLISHED


def explain(rec: dict[str, Any], flow: Flow, rule_action: str, action: str) -> None:
    """Why this verdict, in the alert's metadata (EVE metadata values are string lists)."""
    meta = rec["alert"].setdefault("metadata", {})
    meta["guest"] = [flow.guest or "unknown"]
    meta["role"] = [flow.role]
    why = f"rule action {rule_action}"
    if action != rule_action:
        why += f"; role {flow.role} turns it into {action}"
    meta["explain"] = [why]


def on_detection(policy: Policy | None, role: Role, flow: Flow, p: Packet, severity: int,
                 sid: int, alert: dict[str, Any],
                 rule_action: str | None = None) -> ActionRequest | None:
    """The action the role asks for after an alert, if any and if safe to take. A rule
    may ask for one itself (metadata `appliance_action quarantine|redirect|block`): that
    wins over the role's choice and threshold, never over the safety checks."""
    od = role.on_detection
    if rule_action in ("quarantine", "redirect", "block", "redirect-flow"):
        od = OnDetection(rule_action, 3, od.duration)
    if policy is None or od.action == "none" or severity > od.min_severity:
        return None
    if not flow_established(flow):
        return None  # evidence must come from a real two-way conversation
    if od.action == "block":
        # Block the remote side of the conversation, never a guest or allowlisted host.
        remote = flow.dst if flow.guest_client else flow.src
        if policy.allowlisted(remote) or policy.guest_by_addr(remote) is not None:
            return None
        target = str(ipaddress.ip_address(remote))
        port = None
    else:
        # Quarantine/redirect the guest only for what it did itself (its own flows).
        if flow.guest is None or not flow.guest_client:
            return None
        guest_addr = flow.src
        if policy.allowlisted(guest_addr):
            return None
        target, port = flow.guest, flow.guest_port
        if od.action == "redirect-flow":
            # Only this conversation goes to the sinkhole: GUEST>SERVER:PORT.
            server = str(ipaddress.ip_address(flow.dst))
            server = f"[{server}]" if ":" in server else server
            target = f"{flow.guest}>{server}" + (f":{flow.dp}" if flow.dp else "")
            alert["alert"].setdefault("metadata", {}).setdefault("explain", []).append(
                f"the rule asks to redirect {target}")
            return ActionRequest("redirect", target, port, f"sid {sid}: "
                                 f"{alert['alert']['signature']}", sid, od.duration, True,
                                 alert)
    alert["alert"].setdefault("metadata", {}).setdefault("explain", []).append(
        f"role {role.name} asks to {od.action} {target}")
    return ActionRequest(od.action, target, port, f"sid {sid}: {alert['alert']['signature']}",
                         sid, od.duration, True, alert)


def heuristic_action(policy: Policy, hit: Any, alert: dict[str, Any]) -> ActionRequest | None:
    """What a heuristic hit asks for. An offender outside the guests is blocked when the
    victim guest's role takes actions at all (a scan from outside blocks the scanner);
    an offending guest is handled by its own role (quarantine, redirect), since its port,
    not its address, identifies it. Never an allowlisted host, never below the role's
    severity threshold."""
    offender = policy.guest_by_addr(hit.offender)
    if offender is not None:
        role = policy.role(offender.role)
        od = role.on_detection
        if od.action not in ("quarantine", "redirect") or hit.severity > od.min_severity:
            return None
        if policy.allowlisted(hit.offender):
            return None
        port = next(iter(sorted(offender.ports)), None)
        return ActionRequest(od.action, offender.name, port,
                             f"heuristic sid {hit.sid}: {hit.msg}", hit.sid, od.duration,
                             True, alert)
    victim = policy.guest_by_addr(hit.victim)
    if victim is None or policy.allowlisted(hit.offender):
        return None
    od = policy.role(victim.role).on_detection
    if od.action == "none" or hit.severity > max(od.min_severity, 2):
        return None
    # Blocking an outside address only affects that address and expires; a spoofed
    # scan can at worst block the spoofed address for a while, never cut off a guest.
    return ActionRequest("block", str(ipaddress.ip_address(hit.offender)), None,
                         f"heuristic sid {hit.sid}: {hit.msg}", hit.sid, od.duration,
                         True, alert)
