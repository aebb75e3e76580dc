"""One frozen Config, loaded from YAML (keys named as in suricata.yaml where they exist).

Unknown keys and wrong types are errors that name the key: a typo in a memcap must not
silently fall back to a default on a machine that sits in everybody's traffic path.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from appliance.core.detect.heuristics import HeuristicsConfig, with_overrides
from appliance.core.engine import EngineConfig
from appliance.core.exception_policy import POLICY_NAMES, ExceptionPolicies
from appliance.core.flows import PC_DEFAULT, PC_ICMP, PC_TCP, PC_UDP, FlowConfig, Timeouts
from appliance.core.stream import POLICIES
from appliance.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_PCLASS = {"default": PC_DEFAULT, "tcp": PC_TCP, "udp": PC_UDP, "icmp": PC_ICMP}


def parse_size(value: object, where: str) -> int:
    """Suricata-style sizes: 128mb, 64kb, 1gb or a plain number of bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a size such as 128mb, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{where}: size must not be negative")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ConfigError(f"{where}: expected a size such as 128mb, got {value!r}")
    unit = (m.group(2) or "")[:1].lower()
    return int(m.group(1)) * _UNITS[unit]


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where}: expected a non-negative number, got {value!r}")
    return float(value)


def _mapping(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _policy(d: dict[str, Any], key: str, where: str) -> str:
    """An exception policy value (core/exception_policy.py); absent: auto."""
    v = d.get(key, "auto")
    if v not in ("auto", *POLICY_NAMES):
        raise ConfigError(f"{where}.{key}: unknown exception policy {v!r} (one of auto, "
                          f"{', '.join(POLICY_NAMES)})")
    return str(v)


def _check_keys(d: dict[str, Any], allowed: set[str], where: str) -> None:
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{where}: unknown key {k!r} (allowed: {', '.join(sorted(allowed))})")


@dataclass(frozen=True, slots=True)
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    address_groups: dict[str, str] = field(default_factory=dict)
    port_groups: dict[str, str] = field(default_factory=dict)
    source: str = "<defaults>"


def load_config(path: str | Path | None) -> Config:
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    return config_from_dict(_mapping(doc, str(path)), str(path))


def config_from_dict(doc: dict[str, Any], source: str = "<dict>") -> Config:
    _check_keys(doc, {"vars", "flow", "flow-timeouts", "stream", "anomaly", "heuristics",
                      "exception-policy", "defrag", "app-layer"}, source)
    flow = FlowConfig()
    fl = _mapping(doc.get("flow"), f"{source}: flow")
    _check_keys(fl, {"memcap", "emergency-recovery", "memcap-policy"}, f"{source}: flow")
    if "memcap" in fl:
        flow = replace(flow, memcap=parse_size(fl["memcap"], f"{source}: flow.memcap"))
    if "emergency-recovery" in fl:
        r = _number(fl["emergency-recovery"], f"{source}: flow.emergency-recovery")
        if r > 100:
            raise ConfigError(f"{source}: flow.emergency-recovery: a percentage, got {r}")
        flow = replace(flow, emergency_recovery=int(r))
    ft = _mapping(doc.get("flow-timeouts"), f"{source}: flow-timeouts")
    _check_keys(ft, set(_PCLASS), f"{source}: flow-timeouts")
    if ft:
        tmo = dict(flow.timeouts)
        for name, val in ft.items():
            where = f"{source}: flow-timeouts.{name}"
            d = _mapping(val, where)
            keys = {"new", "established", "closed", "emergency-new", "emergency-established",
                    "emergency-closed", "bypassed", "emergency-bypassed"}
            _check_keys(d, keys, where)
            pc = _PCLASS[name]
            norm, emerg = tmo[pc]

            def pick(t: Timeouts, prefix: str, d: dict[str, Any] = d,
                     where: str = where) -> Timeouts:
                vals = {}
                for st in ("new", "established", "closed", "bypassed"):
                    k = prefix + st
                    vals[st] = (_number(d[k], f"{where}.{k}") if k in d
                                else getattr(t, st))
                return Timeouts(**vals)

            tmo[pc] = (pick(norm, ""), pick(emerg, "emergency-"))
        flow = replace(flow, timeouts=tmo)
    stream = _mapping(doc.get("stream"), f"{source}: stream")
    _check_keys(stream, {"midstream", "bypass", "bypass-per-direction", "async-oneside",
                         "depth", "memcap",
                         "reassembly-memcap", "checksum-validation", "host-os-policy",
                         "memcap-policy", "reassembly-memcap-policy"},
                f"{source}: stream")
    for key in ("midstream", "bypass", "bypass-per-direction", "async-oneside"):
        if key in stream and not isinstance(stream[key], bool):
            raise ConfigError(f"{source}: stream.{key}: expected true or false")
    sc = flow.stream
    if "midstream" in stream:
        flow = replace(flow, midstream=stream["midstream"])
        sc = replace(sc, midstream=stream["midstream"])
    if "async-oneside" in stream:
        sc = replace(sc, async_oneside=stream["async-oneside"])
    if "depth" in stream:
        sc = replace(sc, depth=parse_size(stream["depth"], f"{source}: stream.depth"))
    if "memcap" in stream:
        sc = replace(sc, memcap=parse_size(stream["memcap"], f"{source}: stream.memcap"))
    if "reassembly-memcap" in stream:
        sc = replace(sc, reassembly_memcap=parse_size(stream["reassembly-memcap"],
                                                      f"{source}: stream.reassembly-memcap"))
    if "checksum-validation" in stream:
        cv = str(stream["checksum-validation"]).lower()
        cv = {"true": "yes", "false": "no"}.get(cv, cv)
        if cv not in ("auto", "yes", "no"):
            raise ConfigError(f"{source}: stream.checksum-validation: auto, yes or no")
        sc = replace(sc, checksum_validation=cv)
    if "host-os-policy" in stream:
        hop = _mapping(stream["host-os-policy"], f"{source}: stream.host-os-policy")
        pairs = []
        for pol, nets in hop.items():
            if pol not in POLICIES:
                raise ConfigError(f"{source}: stream.host-os-policy.{pol}: unknown policy "
                                  f"(one of {', '.join(POLICIES)})")
            if not isinstance(nets, list):
                raise ConfigError(f"{source}: stream.host-os-policy.{pol}: a list of CIDRs")
            for n in nets:
                try:
                    ipaddress.ip_network(str(n), strict=False)
                except ValueError:
                    raise ConfigError(f"{source}: stream.host-os-policy.{pol}: bad CIDR "
                                      f"{n!r}") from None
            pairs.append((str(pol), tuple(str(n) for n in nets)))
        sc = replace(sc, host_os_policy=tuple(pairs))
    flow = replace(flow, stream=sc)
    anomaly = _mapping(doc.get("anomaly"), f"{source}: anomaly")
    _check_keys(anomaly, {"decode"}, f"{source}: anomaly")
    defrag = _mapping(doc.get("defrag"), f"{source}: defrag")
    _check_keys(defrag, {"memcap", "memcap-policy"}, f"{source}: defrag")
    app_layer = _mapping(doc.get("app-layer"), f"{source}: app-layer")
    _check_keys(app_layer, {"memcap", "memcap-policy"}, f"{source}: app-layer")
    eng = EngineConfig(flow=flow, exception_policy=ExceptionPolicies(
        master=_policy(doc, "exception-policy", source),
        flow_memcap=_policy(fl, "memcap-policy", f"{source}: flow"),
        stream_memcap=_policy(stream, "memcap-policy", f"{source}: stream"),
        reassembly_memcap=_policy(stream, "reassembly-memcap-policy", f"{source}: stream"),
        defrag_memcap=_policy(defrag, "memcap-policy", f"{source}: defrag"),
        applayer_memcap=_policy(app_layer, "memcap-policy", f"{source}: app-layer")))
    if "memcap" in defrag:
        eng = replace(eng, defrag=replace(eng.defrag, memcap=parse_size(
            defrag["memcap"], f"{source}: defrag.memcap")))
    if "memcap" in app_layer:
        eng = replace(eng, app_layer_memcap=parse_size(app_layer["memcap"],
                                                       f"{source}: app-layer.memcap"))
    if "bypass" in stream:
        eng = replace(eng, bypass=stream["bypass"])
    if "bypass-per-direction" in stream:
        eng = replace(eng, bypass_per_direction=stream["bypass-per-direction"])
    if "decode" in anomaly:
        if not isinstance(anomaly["decode"], bool):
            raise ConfigError(f"{source}: anomaly.decode: expected true or false")
        eng = replace(eng, log_decode_anomalies=anomaly["decode"])
    heur = _mapping(doc.get("heuristics"), f"{source}: heuristics")
    if heur.get("enabled") is False:
        eng = replace(eng, heuristics=None)
    elif heur:
        base = eng.heuristics or HeuristicsConfig()
        try:
            eng = replace(eng, heuristics=with_overrides(
                base, {k: _mapping(v, f"{source}: heuristics.{k}")
                       for k, v in heur.items() if k != "enabled"}))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{source}: heuristics: {e}") from None
    vars_ = _mapping(doc.get("vars"), f"{source}: vars")
    _check_keys(vars_, {"address-groups", "port-groups"}, f"{source}: vars")
    addr = {str(k): str(v) for k, v in _mapping(vars_.get("address-groups"),
                                                 f"{source}: vars.address-groups").items()}
    ports = {str(k): str(v) for k, v in _mapping(vars_.get("port-groups"),
                                                  f"{source}: vars.port-groups").items()}
    return Config(engine=eng, address_groups=addr, port_groups=ports, source=source)
