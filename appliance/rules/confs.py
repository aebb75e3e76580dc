"""enable.conf, disable.conf, drop.conf and modify.conf as suricata-update reads them.

suricata-update (main.py, matchers.py) reads one matcher per line:

- ``2019401`` or ``1:2019401`` (gid:sid), or several of them separated by commas;
- ``group:emerging-dns.rules`` (fnmatch on the source file's name, with or without
  ``.rules``), or a bare ``emerging-dns.rules``; ``filename:...`` the same on the path;
- ``re:PATTERN`` (case-insensitive search in the rule text), ``metadata:KEY VALUE``, ``*``;
- blank lines and ``#`` comments are skipped; text after `` #`` on a line is a comment.

modify.conf lines are ``MATCHER "FROM" "TO"`` split with shlex (a regex substitution).

It applies disable.conf, then enable.conf (so an enable wins over a disable), then drop.conf
(the action becomes ``drop``; the rule keeps its enabled state, and rules with ``noalert``
are skipped), then modify.conf. Edits here keep every other line, comment and the order
as they were, and go to disk atomically.

The catalog is the active merged ruleset (suricata-update writes disabled rules there as
``# alert ...`` lines), read with regexes only: ``rules list`` on ET Open stays fast.
"""

from __future__ import annotations

import re
import shlex
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from appliance.errors import ApplianceError, ConfigError, InputError
from appliance.rules.parser import ACTIONS
from appliance.rules.store import iter_rule_lines

ENABLE: Final = "enable.conf"
DISABLE: Final = "disable.conf"
DROP: Final = "drop.conf"
MODIFY: Final = "modify.conf"
CONF_FILES: Final = (ENABLE, DISABLE, DROP, MODIFY)

_SID_LIST_RE = re.compile(r"^\s*(?:\d+\s*:\s*)?\d+\s*(?:,\s*(?:\d+\s*:\s*)?\d+\s*)*$")
_RULE_RE = re.compile(
    r"^(?P<disabled>#+\s*)?(?P<action>" + "|".join(sorted(ACTIONS, key=len, reverse=True))
    + r")\s+\S+\s.*\(.*\)\s*$", re.DOTALL)
_OPT_SID = re.compile(r"[(;]\s*sid\s*:\s*(\d+)\s*;")
_OPT_GID = re.compile(r"[(;]\s*gid\s*:\s*(\d+)\s*;")
_OPT_REV = re.compile(r"[(;]\s*rev\s*:\s*(\d+)\s*;")
_OPT_MSG = re.compile(r"[(;]\s*msg\s*:\s*\"((?:[^\"\\]|\\.)*)\"\s*;")
_NOALERT = re.compile(r"[(;]\s*(?:noalert|flowbits\s*:\s*noalert)\s*;")
_FLOWBITS = re.compile(r"[(;]\s*flowbits\s*:\s*(set|isset|isnotset|unset|toggle)\s*,\s*([^;]+);")


class Refused(ApplianceError):
    """The change was understood and refused; the message says why and what to do."""


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True, slots=True)
class Target:
    """What a conf line matches: ``sid`` (gid:sid pairs), ``group``, ``re`` or ``other``."""

    kind: str
    line: str  # the canonical line written to the conf file
    sids: tuple[tuple[int, int], ...] = ()

    @property
    def single_sid(self) -> tuple[int, int] | None:
        return self.sids[0] if self.kind == "sid" and len(self.sids) == 1 else None


def parse_target(text: str) -> Target:
    """A SID (``2019401``, ``1:2019401``, comma lists), ``group:NAME`` (or ``NAME.rules``),
    ``re:PATTERN``, ``filename:``, ``metadata:`` or ``*``; ConfigError otherwise."""
    t = text.strip()
    if not t:
        raise ConfigError("empty rule selector")
    if _SID_LIST_RE.match(t):
        pairs: list[tuple[int, int]] = []
        for part in t.split(","):
            bits = [b.strip() for b in part.split(":")]
            gid, sid = (int(bits[0]), int(bits[1])) if len(bits) == 2 else (1, int(bits[0]))
            pairs.append((gid, sid))
        line = ",".join(f"{g}:{s}" if g != 1 else str(s) for g, s in pairs)
        return Target("sid", line, tuple(pairs))
    if t.startswith("group:") or (t.endswith(".rules") and ":" not in t and " " not in t):
        name = t.split(":", 1)[1].strip() if t.startswith("group:") else t
        if not name:
            raise ConfigError(f"{text!r}: the group needs a name (group:emerging-dns.rules)")
        return Target("group", f"group:{name}")
    if t.startswith("re:"):
        pattern = t.split(":", 1)[1].strip()
        try:
            re.compile(pattern, re.I)
        except re.error as e:
            raise ConfigError(f"{text!r}: not a valid regular expression: {e}") from None
        return Target("re", f"re:{pattern}")
    if t == "*" or t.startswith(("filename:", "metadata:")):
        return Target("other", t)
    raise ConfigError(f"{text!r}: use a SID (2019401 or 1:2019401), group:FILE.rules, "
                      "re:PATTERN, filename:GLOB or metadata:KEY VALUE")


def _matcher_part(line: str) -> str:
    """The matcher of a conf line (suricata-update cuts the text after ' #')."""
    return line.strip().split(" #", 1)[0].strip()


def _line_sids(line: str) -> list[tuple[int, int]] | None:
    m = _matcher_part(line)
    if not m or m.startswith("#") or not _SID_LIST_RE.match(m):
        return None
    return list(parse_target(m).sids)


# --------------------------------------------------------------------------- conf files


class ConfFile:
    """One matcher conf file, kept line by line so that comments and order survive."""

    def __init__(self, path: Path, lines: list[str]) -> None:
        self.path = path
        self.lines = lines

    @classmethod
    def load(cls, path: Path | str) -> ConfFile:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(p, [])
        except OSError as e:
            raise InputError(f"{p}: cannot read: {e.strerror}") from None
        return cls(p, text.splitlines())

    def entries(self) -> list[str]:
        """The active matcher lines (comments and blanks left out)."""
        out = []
        for line in self.lines:
            s = line.strip()
            if s and not s.startswith("#"):
                out.append(_matcher_part(s))
        return out

    def _matches(self, line: str, target: Target) -> bool:
        s = line.strip()
        if not s or s.startswith("#"):
            return False
        if target.kind == "sid":
            have = _line_sids(s)
            return have is not None and set(target.sids) <= set(have)
        return parse_target_or_none(_matcher_part(s)) == target

    def contains(self, target: Target) -> bool:
        return any(self._matches(line, target) for line in self.lines)

    def add(self, target: Target, comment: str | None = None) -> bool:
        """Append the target's line unless an equivalent one is there; True if changed."""
        if self.contains(target):
            return False
        self.lines.append(target.line + (f"  # {comment}" if comment else ""))
        return True

    def remove(self, target: Target) -> bool:
        """Remove the target from the file: whole lines for groups and patterns, one
        element of a comma list of SIDs (the rest of that line stays). True if changed."""
        changed = False
        out: list[str] = []
        drop = set(target.sids)
        for line in self.lines:
            if target.kind == "sid":
                have = _line_sids(line)
                if have is not None and drop & set(have):
                    changed = True
                    rest = [p for p in have if p not in drop]
                    if rest:
                        tail = line.split(" #", 1)[1] if " #" in line else None
                        new = ",".join(f"{g}:{s}" if g != 1 else str(s) for g, s in rest)
                        out.append(new + (f" #{tail}" if tail is not None else ""))
                    continue
            elif self._matches(line, target):
                changed = True
                continue
            out.append(line)
        self.lines = out
        return changed

    def save(self) -> None:
        _atomic_write(self.path, "".join(f"{line}\n" for line in self.lines))


def parse_target_or_none(text: str) -> Target | None:
    try:
        return parse_target(text)
    except ConfigError:
        return None


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent,
                                     prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
        name = tmp.name
    try:
        if path.exists():
            Path(name).chmod(path.stat().st_mode & 0o777)
        Path(name).replace(path)
    except OSError:
        Path(name).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- modify.conf


@dataclass(frozen=True, slots=True)
class Modify:
    target: Target
    find: str
    replace: str

    @property
    def line(self) -> str:
        return f"{self.target.line} {shlex.quote(self.find)} {shlex.quote(self.replace)}"


def read_modify(path: Path | str) -> list[Modify]:
    """modify.conf's filters (ConfigError for a line suricata-update would refuse)."""
    out = []
    for line in ConfFile.load(path).entries():
        if line.startswith("metadata-add"):
            continue
        try:
            tokens = shlex.split(line)
        except ValueError as e:
            raise ConfigError(f"{path}: {line!r}: {e}") from None
        if len(tokens) == 3:
            matcher, find, repl = tokens
        elif len(tokens) > 3 and tokens[0] == "modifysid":
            matcher, find, repl = tokens[1], tokens[2], tokens[4]
        else:
            raise ConfigError(f"{path}: {line!r}: use MATCHER \"FROM\" \"TO\"")
        out.append(Modify(parse_target(matcher), find, repl))
    return out


def add_modify(conf_dir: Path, selector: str, find: str, replace: str) -> bool:
    """Add a modify.conf filter (a regex substitution on the rule text)."""
    try:
        re.compile(find)
    except re.error as e:
        raise ConfigError(f"{find!r}: not a valid regular expression: {e}") from None
    conf = ConfFile.load(conf_dir / MODIFY)
    mod = Modify(parse_target(selector), find, replace)
    if mod.line in (line.strip() for line in conf.lines):
        return False
    conf.lines.append(mod.line)
    conf.save()
    return True


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One rule of the active ruleset as listed, enabled or commented out."""

    gid: int
    sid: int
    rev: int
    action: str
    msg: str
    enabled: bool
    noalert: bool
    text: str  # the rule without the leading '#'
    file: str
    line: int
    sets: tuple[str, ...] = ()  # flowbits this rule sets
    checks: tuple[str, ...] = ()  # flowbits this rule tests (isset/isnotset)


@dataclass
class Catalog:
    entries: dict[tuple[int, int], CatalogEntry] = field(default_factory=dict)

    def get(self, gid: int, sid: int) -> CatalogEntry | None:
        return self.entries.get((gid, sid))

    def matching(self, target: Target) -> list[CatalogEntry]:
        """The rules a target selects, where that can be told from the text (SIDs,
        re: patterns, ``*``); groups need the source file names, which the merged file
        does not keep: those give []."""
        if target.kind == "sid":
            return [e for k in target.sids if (e := self.entries.get(k)) is not None]
        if target.kind == "re":
            rx = re.compile(target.line[3:], re.I)
            return [e for e in self.entries.values() if rx.search(e.text)]
        if target.line == "*":
            return list(self.entries.values())
        return []

    def dependents(self, entry: CatalogEntry) -> list[CatalogEntry]:
        """Enabled rules that test a flowbit this rule sets."""
        names = set(entry.sets)
        return [e for e in self.entries.values()
                if e.enabled and names & set(e.checks) and e is not entry]


def _flowbit_names(value: str) -> list[str]:
    return [n.strip() for n in re.split(r"[|&]", value) if n.strip()]


def read_catalog(paths: Iterable[Path | str]) -> Catalog:
    """Every rule (enabled or commented out) in these rule files, by (gid, sid)."""
    cat = Catalog()
    for given in paths:
        p = Path(given)
        files = sorted(p.glob("*.rules")) if p.is_dir() else [p]
        for f in files:
            try:
                handle = f.open(encoding="utf-8", errors="surrogateescape")
            except OSError as e:
                raise InputError(f"{f}: cannot read: {e.strerror}") from None
            with handle:
                for number, text in iter_rule_lines(handle):
                    entry = _entry(text.strip(), str(f), number)
                    if entry is not None:
                        key = (entry.gid, entry.sid)
                        old = cat.entries.get(key)
                        # An enabled copy wins over a commented one, then the higher rev.
                        if old is None or (entry.enabled, entry.rev) > (old.enabled, old.rev):
                            cat.entries[key] = entry
    return cat


def _entry(text: str, file: str, line: int) -> CatalogEntry | None:
    m = _RULE_RE.match(text)
    if m is None:
        return None
    body = text.lstrip("#").strip()
    sid = _OPT_SID.search(body)
    if sid is None:
        return None
    gid = _OPT_GID.search(body)
    rev = _OPT_REV.search(body)
    msg = _OPT_MSG.search(body)
    sets: list[str] = []
    checks: list[str] = []
    for cmd, value in _FLOWBITS.findall(body):
        (sets if cmd in ("set", "unset", "toggle") else checks).extend(_flowbit_names(value))
    return CatalogEntry(
        gid=int(gid.group(1)) if gid else 1, sid=int(sid.group(1)),
        rev=int(rev.group(1)) if rev else 0, action=m.group("action"),
        msg=msg.group(1).replace('\\"', '"') if msg else "",
        enabled=m.group("disabled") is None, noalert=_NOALERT.search(body) is not None,
        text=body, file=file, line=line, sets=tuple(sets), checks=tuple(checks))


# --------------------------------------------------------------------------- edits


@dataclass
class Change:
    """What an edit did: the files it changed and what the operator should know."""

    changed: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _save(conf: ConfFile, change: Change) -> None:
    conf.save()
    if conf.path not in change.changed:
        change.changed.append(conf.path)


def _selector_lines(conf: ConfFile) -> list[str]:
    return [e for e in conf.entries() if _line_sids(e) is None]


def enable(conf_dir: Path, selector: str, catalog: Catalog | None = None) -> Change:
    """Enable: take the target out of disable.conf and put it in enable.conf."""
    target = parse_target(selector)
    change = Change()
    dis = ConfFile.load(conf_dir / DISABLE)
    if dis.remove(target):
        _save(dis, change)
    en = ConfFile.load(conf_dir / ENABLE)
    if en.add(target):
        _save(en, change)
    if catalog is not None and target.kind == "sid":
        for key in target.sids:
            if catalog.get(*key) is None:
                change.notes.append(f"{key[0]}:{key[1]}: not in the active ruleset; the line "
                                    "takes effect if a source ships that rule")
    if not change.changed:
        change.notes.append(f"{target.line}: already enabled in {conf_dir / ENABLE}")
    return change


def disable(conf_dir: Path, selector: str, catalog: Catalog | None = None) -> Change:
    """Disable: take the target out of enable.conf (an enable line would win: suricata-update
    applies enable.conf after disable.conf) and put it in disable.conf."""
    target = parse_target(selector)
    change = Change()
    en = ConfFile.load(conf_dir / ENABLE)
    if en.remove(target):
        _save(en, change)
    dis = ConfFile.load(conf_dir / DISABLE)
    if dis.add(target):
        _save(dis, change)
    others = _selector_lines(en)
    if others and target.kind == "sid":
        change.notes.append(
            f"{conf_dir / ENABLE} also has {', '.join(others)}: suricata-update applies "
            "enable.conf after disable.conf, so a line there that matches this rule keeps "
            "it enabled")
    if catalog is not None:
        for e in catalog.matching(target):
            deps = catalog.dependents(e)
            if deps:
                change.notes.append(
                    f"{e.gid}:{e.sid} sets flowbits {', '.join(e.sets)} used by "
                    f"{len(deps)} enabled rule(s) (e.g. {deps[0].sid}): suricata-update "
                    "re-enables it as noalert so those rules keep working")
    if not change.changed:
        change.notes.append(f"{target.line}: already disabled in {conf_dir / DISABLE}")
    return change


def drop(conf_dir: Path, selector: str, catalog: Catalog | None = None,
         force: bool = False) -> Change:
    """Switch to drop (drop.conf). A single SID is checked against the active ruleset:
    flowbit-only ``noalert`` rules and disabled rules are refused unless ``force``."""
    target = parse_target(selector)
    change = Change()
    problems: list[str] = []
    if catalog is not None and catalog.entries:
        for key in target.sids:
            e = catalog.get(*key)
            if e is None:
                problems.append(
                    f"{key[0]}:{key[1]}: no such rule in the active ruleset (a typo? "
                    "`appliance rules list --search` finds rules)")
                continue
            problems.extend(_drop_problems(e, catalog))
        if target.kind != "sid":
            hits = catalog.matching(target)
            noalert = [e for e in hits if e.noalert]
            off = [e for e in hits if not e.enabled]
            if hits and len(noalert) + len(off) >= len(hits) and not any(
                    e.enabled and not e.noalert for e in hits):
                problems.append(f"{target.line}: every rule it matches is noalert or "
                                "disabled, so the drop would change nothing")
            elif noalert or off:
                change.notes.append(
                    f"{target.line}: {len(noalert)} noalert rule(s) keep their action "
                    f"(suricata-update skips them) and {len(off)} disabled rule(s) stay "
                    "disabled")
    elif target.kind == "sid":
        change.notes.append("no active ruleset to check the rule against; run "
                            "`appliance rules update` and check `appliance rules show`")
    if problems and not force:
        raise Refused("\n".join([*problems, "pass --force to write the drop line anyway"]))
    change.notes.extend(f"forced: {p}" for p in problems)
    conf = ConfFile.load(conf_dir / DROP)
    if conf.add(target):
        _save(conf, change)
    else:
        change.notes.append(f"{target.line}: already in {conf_dir / DROP}")
    return change


def _drop_problems(e: CatalogEntry, catalog: Catalog) -> list[str]:
    out = []
    if e.noalert:
        deps = catalog.dependents(e)
        hint = (f"; drop the rule(s) that test the flowbit instead: "
                f"{', '.join(str(d.sid) for d in deps[:5])}" if deps else "")
        out.append(
            f"{e.sid} ({e.msg or 'no msg'}) is a flowbit-only noalert rule: it only "
            f"records state ({', '.join(e.sets) or 'flowbits'}) for other rules, often on "
            "the first packets of ordinary sessions, so as a drop rule it would block "
            "traffic that is not an attack; suricata-update's drop filter skips noalert "
            f"rules too{hint}")
    if not e.enabled:
        out.append(
            f"{e.sid} ({e.msg or 'no msg'}) is disabled in the active ruleset (it ships "
            "disabled, usually because it is noisy, slow or obsolete, or disable.conf "
            "matches it): drop.conf changes only the action, so it would stay disabled; "
            f"enable it first (`appliance rules enable {e.sid}`) if you mean it")
    return out
