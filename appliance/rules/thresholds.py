"""``threshold.config``: thresholds, suppressions and rate filters set on the sensor.

The file format and meaning follow Suricata's "Global-Thresholds" documentation:

- ``threshold``/``event_filter gen_id G, sig_id S, type limit|threshold|both,
  track by_src|by_dst|by_rule|by_both|by_flow, count N, seconds T``: for one rule it
  *replaces* the rule's own ``threshold``/``detection_filter``; with ``sig_id 0`` (all rules
  of gid G, or of every gid when G is 0) it applies only to rules that set neither, the
  way Suricata refuses to override a rule's own threshold with a global one.
- ``suppress gen_id G, sig_id S[, track by_src|by_dst|by_either, ip SPEC]``: no alert for
  the rule (or only when the packet's source/destination/either address is in SPEC: an
  address, a CIDR, a ``[list]`` or a ``$VARIABLE``). The match still happens: flowbits are
  set and the rule's action still applies, as Suricata (a suppressed alert is not logged).
- ``rate_filter gen_id G, sig_id S, track by_src|by_dst|by_rule|by_both|by_flow, count C,
  seconds T, new_action alert|drop|pass|reject|rejectsrc|rejectdst|rejectboth, timeout N``:
  once the rule matched more than C times within T seconds for the tracked key, its
  action becomes ``new_action`` for N seconds. ``sdrop`` and ``log`` are accepted, as
  Suricata's parser does, and change nothing (Suricata does not implement them either).

Lines continue with a trailing backslash; ``#`` starts a comment. A bad line is reported
with file:line and skipped; loading never stops at one (DESIGN principle 8).

The state these entries need (counters per tracked key) lives in the SignatureEngine,
shared with the rules' own ``threshold``/``detection_filter``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from appliance.errors import InputError
from appliance.rules.keywords import TRACKS, Threshold
from appliance.rules.store import RuleFailure, iter_rule_lines
from appliance.rules.variables import AddressSet, VariableError, Variables

THRESHOLD_FILE: Final = "threshold.config"

SUPPRESS_TRACKS: Final = frozenset({"by_src", "by_dst", "by_either"})
# new_action values; sdrop/log parse but keep the rule's action (see the module doc).
RATE_ACTIONS: Final = frozenset(
    {"alert", "drop", "pass", "reject", "rejectsrc", "rejectdst", "rejectboth", "sdrop",
     "log"})
_NO_EFFECT_ACTIONS: Final = frozenset({"sdrop", "log"})
_THRESHOLD_TYPES: Final = frozenset({"limit", "threshold", "both"})
# A gid/sid is a 32-bit unsigned number in Suricata.
_ID_MAX: Final = 0xFFFFFFFF


class ThresholdConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Suppress:
    track: str | None  # None: every match of the rule; else by_src, by_dst, by_either
    addresses: AddressSet | None

    def suppresses(self, src: bytes, dst: bytes) -> bool:
        a = self.addresses
        if self.track is None or a is None:
            return True
        if self.track == "by_src":
            return a.contains(src)
        if self.track == "by_dst":
            return a.contains(dst)
        return a.contains(src) or a.contains(dst)


@dataclass(frozen=True, slots=True)
class RateFilter:
    track: str
    count: int
    seconds: int
    new_action: str | None  # None: sdrop/log, which keep the rule's action
    timeout: int


@dataclass(frozen=True, slots=True)
class RuleLimits:
    """What applies to one rule: its suppressions, its thresholds (its own or the config's)
    in evaluation order, and its rate filters."""

    suppress: tuple[Suppress, ...] = ()
    thresholds: tuple[Threshold, ...] = ()
    rate_filters: tuple[RateFilter, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.suppress or self.thresholds or self.rate_filters)


NO_LIMITS: Final = RuleLimits()

_Id = tuple[int, int]  # (gid, sid); sid 0 = every rule of gid, (0, 0) = every rule


@dataclass
class ThresholdConfig:
    thresholds: dict[_Id, Threshold] = field(default_factory=dict)
    suppress: dict[_Id, list[Suppress]] = field(default_factory=dict)
    rate_filters: dict[_Id, list[RateFilter]] = field(default_factory=dict)
    failures: list[RuleFailure] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @property
    def entries(self) -> int:
        return (len(self.thresholds) + sum(map(len, self.suppress.values()))
                + sum(map(len, self.rate_filters.values())))

    def limits(self, gid: int, sid: int, own: Iterable[Threshold | None]) -> RuleLimits:
        """The limits of rule gid:sid, whose own threshold/detection_filter are ``own``."""
        own_t = tuple(t for t in own if t is not None)
        keys = ((gid, sid), (gid, 0), (0, 0))
        sup: list[Suppress] = []
        rates: list[RateFilter] = []
        for k in keys:
            sup.extend(self.suppress.get(k, ()))
            rates.extend(self.rate_filters.get(k, ()))
        specific = self.thresholds.get((gid, sid))
        if specific is not None:
            ths: tuple[Threshold, ...] = (specific,)
        elif own_t:
            ths = own_t
        else:
            glob = self.thresholds.get((gid, 0)) or self.thresholds.get((0, 0))
            ths = (glob,) if glob is not None else ()
        return RuleLimits(tuple(sup), ths, tuple(rates))


def _split_fields(text: str) -> list[str]:
    """Split on commas outside brackets (``ip [1.2.3.4,5.6.7.8]`` is one field)."""
    out: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth <= 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [f.strip() for f in out]


def _fields(rest: str, allowed: frozenset[str]) -> dict[str, str]:
    got: dict[str, str] = {}
    for part in _split_fields(rest):
        if not part:
            raise ThresholdConfigError("empty field (stray comma)")
        key, _, value = part.partition(" ")
        key = key.strip().lower()
        value = value.strip()
        if key not in allowed:
            raise ThresholdConfigError(f"unknown field {key!r}")
        if key in got:
            raise ThresholdConfigError(f"field {key!r} given twice")
        if not value:
            raise ThresholdConfigError(f"field {key!r} needs a value")
        got[key] = value
    return got


def _number(fields: Mapping[str, str], key: str, low: int = 0, high: int = _ID_MAX) -> int:
    if key not in fields:
        raise ThresholdConfigError(f"missing {key}")
    text = fields[key]
    if not text.isdigit():
        raise ThresholdConfigError(f"{key} must be a number, not {text!r}")
    n = int(text)
    if not low <= n <= high:
        raise ThresholdConfigError(f"{key} {n} out of range {low}..{high}")
    return n


def _ids(fields: Mapping[str, str]) -> _Id:
    gid = _number(fields, "gen_id")
    sid = _number(fields, "sig_id")
    if gid == 0 and sid != 0:
        raise ThresholdConfigError("gen_id 0 needs sig_id 0 (every rule)")
    return gid, sid


def _track(fields: Mapping[str, str], allowed: frozenset[str]) -> str:
    t = fields.get("track")
    if t is None:
        raise ThresholdConfigError("missing track")
    if t not in allowed:
        raise ThresholdConfigError(f"invalid track {t!r} (one of {', '.join(sorted(allowed))})")
    return t


_THRESHOLD_FIELDS: Final = frozenset({"gen_id", "sig_id", "type", "track", "count", "seconds"})
_SUPPRESS_FIELDS: Final = frozenset({"gen_id", "sig_id", "track", "ip"})
_RATE_FIELDS: Final = frozenset(
    {"gen_id", "sig_id", "track", "count", "seconds", "new_action", "timeout"})


def parse_line(text: str, conf: ThresholdConfig, variables: Variables) -> None:
    """Add one logical line to ``conf``; raises ThresholdConfigError with the reason."""
    word, _, rest = text.strip().partition(" ")
    word = word.lower()
    if word in ("threshold", "event_filter"):
        f = _fields(rest, _THRESHOLD_FIELDS)
        ident = _ids(f)
        kind = f.get("type")
        if kind not in _THRESHOLD_TYPES:
            raise ThresholdConfigError(f"invalid type {kind!r} (limit, threshold or both)")
        th = Threshold(kind, _track(f, TRACKS), _number(f, "count", 1),
                       _number(f, "seconds"))
        conf.thresholds[ident] = th  # a later line for the same rule replaces it
    elif word == "suppress":
        f = _fields(rest, _SUPPRESS_FIELDS)
        ident = _ids(f)
        if "track" in f or "ip" in f:
            track = _track(f, SUPPRESS_TRACKS)
            if "ip" not in f:
                raise ThresholdConfigError("suppress with track needs an ip")
            try:
                addrs = variables.address(f["ip"])
            except VariableError as e:
                raise ThresholdConfigError(f"ip {f['ip']!r}: {e}") from None
            sup = Suppress(track, addrs)
        else:
            sup = Suppress(None, None)
        conf.suppress.setdefault(ident, []).append(sup)
    elif word == "rate_filter":
        f = _fields(rest, _RATE_FIELDS)
        ident = _ids(f)
        track = _track(f, TRACKS)
        count, seconds = _number(f, "count", 1), _number(f, "seconds")
        action = f.get("new_action")
        if action is None:
            raise ThresholdConfigError("missing new_action")
        if action not in RATE_ACTIONS:
            raise ThresholdConfigError(
                f"invalid new_action {action!r} (one of {', '.join(sorted(RATE_ACTIONS))})")
        rf = RateFilter(track, count, seconds,
                        None if action in _NO_EFFECT_ACTIONS else action,
                        _number(f, "timeout"))
        conf.rate_filters.setdefault(ident, []).append(rf)
    else:
        raise ThresholdConfigError(
            f"unknown entry {word!r} (threshold, event_filter, suppress or rate_filter)")


def parse_threshold_lines(lines: Iterable[str], variables: Variables | None = None,
                          source: str = "<text>",
                          conf: ThresholdConfig | None = None) -> ThresholdConfig:
    """Parse threshold.config text leniently: bad lines become failures (source:line)."""
    conf = conf if conf is not None else ThresholdConfig()
    variables = variables if variables is not None else Variables()
    conf.sources.append(source)
    for number, text in iter_rule_lines(lines):
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            parse_line(stripped, conf, variables)
        except ThresholdConfigError as e:
            conf.failures.append(RuleFailure(source, number, None, f"threshold.config: {e}"))
    return conf


def load_threshold_file(path: Path | str, variables: Variables | None = None,
                        conf: ThresholdConfig | None = None) -> ThresholdConfig:
    """Read one threshold.config; InputError when it cannot be read at all."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise InputError(f"cannot read threshold file {p}: {e.strerror or e}") from None
    return parse_threshold_lines(text.splitlines(), variables, str(p), conf)


def beside(paths: Iterable[Path]) -> list[Path]:
    """The threshold.config files found beside the given rule files/directories (as for
    classification.config)."""
    found: list[Path] = []
    for path in paths:
        candidate = (path if path.is_dir() else path.parent) / THRESHOLD_FILE
        if candidate.is_file() and candidate not in found:
            found.append(candidate)
    return found
