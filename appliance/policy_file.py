"""Reading and validating policy files (YAML), with errors that name the line and field.

    include-builtin-roles: true          # rules/roles/*.yaml (desktop, caching-proxy, ...)
    roles: {NAME: ROLE, ...}             # more roles, or replacements of built-in ones
    guests:
      - {name: desktop, role: desktop, ports: [desktop], addresses: [10.203.0.10/32]}
    allowlist: [10.203.0.1/32]           # never quarantined, redirected or blocked

A role (see rules/roles/*.yaml for documented examples):

    description: TEXT
    rules: {classtypes: [..], exclude-classtypes: [..], sids: [..], exclude-sids: [..],
            metadata: {KEY: [VALUES]}, files: [NAME.rules]}
    overrides: [{action: drop|alert|reject|pass, classtypes: [..], sids: [..],
                 min-severity: N}]
    egress:  [{proto: tcp|udp|icmp|any, ports: [..], networks: [CIDR..]}]   (absent: any)
    ingress: [...]                                                          (absent: any)
    on-detection: {action: none|quarantine|redirect|block, min-severity: N, duration: 10m}
    scan-files: BOOL
    fail-open: BOOL
    heuristics: {DETECTOR: {PARAM: NUMBER}}
"""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path

import yaml

from appliance.core.policy import (
    ACTIONS_ON_DETECTION,
    ActionOverride,
    Guest,
    OnDetection,
    Policy,
    Role,
    RuleSelector,
    Service,
)
from appliance.errors import ConfigError

ROLES_DIR = Path(__file__).resolve().parents[1] / "rules" / "roles"
RULE_ACTIONS = ("alert", "drop", "reject", "rejectsrc", "rejectdst", "rejectboth", "pass")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


class _Doc:
    """YAML values with the line each came from (yaml.compose keeps the marks)."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        try:
            self.root = yaml.compose(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark is not None else source
            raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
        except RecursionError:  # PyYAML composes nested collections recursively
            raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None

    def err(self, node: yaml.Node | None, field: str, msg: str) -> ConfigError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return ConfigError(f"{self.source}{line}: {field}: {msg}")

    def mapping(self, node: yaml.Node | None, field: str,
                allowed: set[str] | None = None) -> dict[str, yaml.Node]:
        if node is None or (isinstance(node, yaml.ScalarNode) and node.value in ("", "~")):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.err(node, field, "expected a mapping")
        out: dict[str, yaml.Node] = {}
        for k, v in node.value:
            key = str(k.value)
            if allowed is not None and key not in allowed:
                raise self.err(k, f"{field}.{key}" if field else key,
                               f"unknown field (allowed: {', '.join(sorted(allowed))})")
            out[key] = v
        return out

    def seq(self, node: yaml.Node | None, field: str) -> list[yaml.Node]:
        if node is None:
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.err(node, field, "expected a list")
        return list(node.value)

    def scalar(self, node: yaml.Node, field: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.err(node, field, "expected a single value")
        return str(node.value)

    def strings(self, node: yaml.Node | None, field: str) -> frozenset[str]:
        return frozenset(self.scalar(n, field) for n in self.seq(node, field))

    def ints(self, node: yaml.Node | None, field: str) -> frozenset[int]:
        out = set()
        for n in self.seq(node, field):
            v = self.scalar(n, field)
            if not v.isdigit():
                raise self.err(n, field, f"expected a number, got {v!r}")
            out.add(int(v))
        return frozenset(out)

    def boolean(self, node: yaml.Node, field: str) -> bool:
        v = self.scalar(node, field).lower()
        if v in ("true", "yes", "on"):
            return True
        if v in ("false", "no", "off"):
            return False
        raise self.err(node, field, f"expected true or false, got {v!r}")

    def number(self, node: yaml.Node, field: str) -> float:
        v = self.scalar(node, field)
        try:
            x = float(v)
        except ValueError:
            raise self.err(node, field, f"expected a number, got {v!r}") from None
        if not math.isfinite(x):  # nan/inf: int() of it would raise past ConfigError
            raise self.err(node, field, f"expected a finite number, got {v!r}")
        return x

    def networks(self, node: yaml.Node | None,
                 field: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        out = []
        for n in self.seq(node, field):
            v = self.scalar(n, field)
            try:
                out.append(ipaddress.ip_network(v, strict=False))
            except ValueError:
                raise self.err(n, field, f"not an address or CIDR: {v!r}") from None
        return tuple(out)

    def duration(self, node: yaml.Node, field: str) -> float:
        v = self.scalar(node, field)
        m = _DURATION.match(v)
        if not m:
            raise self.err(node, field, f"expected a duration such as 90s, 10m, 1h: {v!r}")
        return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _services(d: _Doc, node: yaml.Node | None, field: str) -> tuple[Service, ...]:
    out = []
    for i, n in enumerate(d.seq(node, field)):
        f = f"{field}[{i}]"
        m = d.mapping(n, f, {"proto", "ports", "networks", "app-proto"})
        proto = d.scalar(m["proto"], f"{f}.proto") if "proto" in m else "any"
        if proto not in ("tcp", "udp", "icmp", "any"):
            raise d.err(m.get("proto"), f"{f}.proto", f"expected tcp, udp, icmp or any: {proto!r}")
        ports = d.ints(m["ports"], f"{f}.ports") if "ports" in m else None
        apps = d.strings(m["app-proto"], f"{f}.app-proto") if "app-proto" in m else None
        out.append(Service(proto, ports, d.networks(m.get("networks"), f"{f}.networks"),
                           apps))
    return tuple(out)


def _role(d: _Doc, name: str, node: yaml.Node) -> Role:
    f = f"roles.{name}"
    m = d.mapping(node, f, {"name", "description", "rules", "overrides", "egress", "ingress",
                            "on-detection", "scan-files", "fail-open", "heuristics"})
    r = d.mapping(m.get("rules"), f"{f}.rules",
                  {"classtypes", "exclude-classtypes", "sids", "exclude-sids", "metadata",
                   "files"})
    meta = {k: d.strings(v, f"{f}.rules.metadata.{k}")
            for k, v in d.mapping(r.get("metadata"), f"{f}.rules.metadata").items()}
    selector = RuleSelector(
        classtypes=d.strings(r.get("classtypes"), f"{f}.rules.classtypes"),
        sids=d.ints(r.get("sids"), f"{f}.rules.sids"),
        exclude_sids=d.ints(r.get("exclude-sids"), f"{f}.rules.exclude-sids"),
        exclude_classtypes=d.strings(r.get("exclude-classtypes"),
                                     f"{f}.rules.exclude-classtypes"),
        metadata=meta,
        files=d.strings(r.get("files"), f"{f}.rules.files"),
    )
    overrides = []
    for i, o in enumerate(d.seq(m.get("overrides"), f"{f}.overrides")):
        of = f"{f}.overrides[{i}]"
        om = d.mapping(o, of, {"action", "classtypes", "sids", "min-severity"})
        if "action" not in om:
            raise d.err(o, of, "missing field 'action'")
        act = d.scalar(om["action"], f"{of}.action")
        if act not in RULE_ACTIONS:
            raise d.err(om["action"], f"{of}.action", f"expected one of {', '.join(RULE_ACTIONS)}")
        overrides.append(ActionOverride(
            act, d.strings(om.get("classtypes"), f"{of}.classtypes"),
            d.ints(om.get("sids"), f"{of}.sids"),
            int(d.number(om["min-severity"], f"{of}.min-severity")) if "min-severity" in om
            else None))
    od = d.mapping(m.get("on-detection"), f"{f}.on-detection",
                   {"action", "min-severity", "duration"})
    action = d.scalar(od["action"], f"{f}.on-detection.action") if "action" in od else "none"
    if action not in ACTIONS_ON_DETECTION:
        raise d.err(od.get("action"), f"{f}.on-detection.action",
                    f"expected one of {', '.join(ACTIONS_ON_DETECTION)}")
    on = OnDetection(
        action,
        int(d.number(od["min-severity"], f"{f}.on-detection.min-severity"))
        if "min-severity" in od else 1,
        d.duration(od["duration"], f"{f}.on-detection.duration") if "duration" in od else 600.0)
    heur = {k: {pk: d.number(pv, f"{f}.heuristics.{k}.{pk}")
                for pk, pv in d.mapping(v, f"{f}.heuristics.{k}").items()}
            for k, v in d.mapping(m.get("heuristics"), f"{f}.heuristics").items()}
    if heur:
        from appliance.core.detect.heuristics import HeuristicsConfig, with_overrides

        try:
            with_overrides(HeuristicsConfig(), heur)
        except (ValueError, TypeError) as e:
            raise d.err(m.get("heuristics"), f"{f}.heuristics", str(e)) from None
    return Role(
        name=name,
        description=d.scalar(m["description"], f"{f}.description") if "description" in m
        else "",
        rules=selector,
        overrides=tuple(overrides),
        egress=_services(d, m["egress"], f"{f}.egress") if "egress" in m else None,
        ingress=_services(d, m["ingress"], f"{f}.ingress") if "ingress" in m else None,
        on_detection=on,
        scan_files=d.boolean(m["scan-files"], f"{f}.scan-files") if "scan-files" in m
        else True,
        fail_open=d.boolean(m["fail-open"], f"{f}.fail-open") if "fail-open" in m else False,
        heuristics=heur,
        where=({"rules.files": f"{d.source}:{r['files'].start_mark.line + 1}"}
               if "files" in r else {}),
    )


def load_role_file(path: Path) -> Role:
    d = _Doc(str(path), path.read_text(encoding="utf-8"))
    return _role(d, path.stem, d.root) if d.root is not None else Role(path.stem)


def builtin_roles() -> dict[str, Role]:
    return {p.stem: load_role_file(p) for p in sorted(ROLES_DIR.glob("*.yaml"))}


def load_policy(path: str | Path | None) -> Policy:
    if path is None:
        return Policy(builtin_roles(), source="<built-in roles>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such policy file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read policy: {e}") from None
    return policy_from_text(text, str(p))


def policy_from_text(text: str, source: str = "<policy>") -> Policy:
    d = _Doc(source, text)
    top = d.mapping(d.root, "", {"include-builtin-roles", "roles", "guests", "allowlist"})
    roles: dict[str, Role] = {}
    if "include-builtin-roles" not in top or d.boolean(top["include-builtin-roles"],
                                                       "include-builtin-roles"):
        roles.update(builtin_roles())
    for name, node in d.mapping(top.get("roles"), "roles").items():
        roles[name] = _role(d, name, node)
    if "default" not in roles:
        roles["default"] = Role("default")
    guests = []
    seen: set[str] = set()
    for i, g in enumerate(d.seq(top.get("guests"), "guests")):
        f = f"guests[{i}]"
        gm = d.mapping(g, f, {"name", "role", "ports", "macs", "addresses"})
        for req in ("name", "role"):
            if req not in gm:
                raise d.err(g, f, f"missing field '{req}'")
        name = d.scalar(gm["name"], f"{f}.name")
        role = d.scalar(gm["role"], f"{f}.role")
        if role not in roles:
            raise d.err(gm["role"], f"{f}.role",
                        f"unknown role {role!r} (roles: {', '.join(sorted(roles))})")
        if name in seen:
            raise d.err(gm["name"], f"{f}.name", f"guest {name!r} is defined twice")
        seen.add(name)
        macs = d.strings(gm.get("macs"), f"{f}.macs")
        for mac_node in d.seq(gm.get("macs"), f"{f}.macs"):
            if not re.fullmatch(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", d.scalar(mac_node, "")):
                raise d.err(mac_node, f"{f}.macs", f"not a MAC address: {mac_node.value!r}")
        guests.append(Guest(name, role, d.strings(gm.get("ports"), f"{f}.ports"),
                            frozenset(x.lower() for x in macs),
                            d.networks(gm.get("addresses"), f"{f}.addresses")))
    return Policy(roles, tuple(guests), d.networks(top.get("allowlist"), "allowlist"), source)
