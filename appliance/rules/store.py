"""Rule files -> ``Ruleset``: lenient import, every failure kept with file, line and reason.

Loading follows Suricata and suricata-update (DESIGN.md principle 8):

- a directory contributes every ``*.rules`` file in it, in sorted order;
- blank lines and comments are skipped; a line ending with a backslash continues on the next
  line (Suricata's multi-line rules), and the rule is reported at its first line;
- a comment whose text is a rule (``# alert http ... (... sid:1; ...)``) is a *disabled* rule,
  the way suricata-update disables rules: it is counted and listed, never loaded;
- a rule that fails to parse is recorded as a failure and loading goes on;
- a second rule with the same gid:sid replaces the first only when its rev is higher, as in
  Suricata's duplicate-signature check; otherwise it is the one reported;
- ``classification.config`` beside the rules fills each rule's category and default priority.

Files are read here, at load time only; the inspection core never touches files afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import InputError
from appliance.rules.parser import (
    ACTIONS,
    Classification,
    Rule,
    RuleParseError,
    parse_classification_line,
    parse_rule,
)
from appliance.rules.variables import Variables

CLASSIFICATION_FILE = "classification.config"

_DISABLED_RE = re.compile(
    r"#+\s*(?:" + "|".join(sorted(ACTIONS, key=len, reverse=True)) + r")\s+\S+\s.*\(.*\)\s*$",
    re.DOTALL,
)
_SID_RE = re.compile(r"[(;]\s*sid\s*:\s*(\d+)\s*;", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RuleFailure:
    """A rule (or config line) that was not loaded, and exactly why."""

    file: str
    line: int
    sid: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class DisabledRule:
    """A commented-out rule: present in the file, deliberately not loaded."""

    file: str
    line: int
    sid: int | None


@dataclass(frozen=True, slots=True)
class Ruleset:
    rules: tuple[Rule, ...]
    failures: tuple[RuleFailure, ...] = ()
    disabled: tuple[DisabledRule, ...] = ()
    classifications: dict[str, Classification] = field(default_factory=dict)
    files: tuple[str, ...] = ()

    @property
    def loaded(self) -> int:
        return len(self.rules)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def disabled_count(self) -> int:
        return len(self.disabled)


def rule_files(paths: Iterable[Path | str]) -> list[Path]:
    """Expand the given files and directories into the rule files to read, in order."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files.extend(sorted(p for p in path.glob("*.rules") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"no such rule file or directory: {path}")
    return files


def load_classifications(path: Path) -> tuple[dict[str, Classification], list[RuleFailure]]:
    """Read a classification.config; malformed lines come back as failures."""
    result: dict[str, Classification] = {}
    failures: list[RuleFailure] = []
    with path.open(encoding="utf-8", errors="surrogateescape") as handle:
        for number, text in enumerate(handle, 1):
            stripped = text.strip()
            if not stripped or stripped.startswith("#"):
                continue
            try:
                found = parse_classification_line(stripped)
            except ValueError as exc:
                failures.append(RuleFailure(str(path), number, None, str(exc)))
                continue
            if found is not None:
                result[found.name] = found
    return result, failures


def iter_rule_lines(text_lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """Yield (first line number, logical line), joining backslash-continued lines."""
    pending: list[str] = []
    start = 0
    number = 0
    for number, text in enumerate(text_lines, 1):
        line = text.rstrip("\r\n")
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        pending.append(line)
        yield start, "".join(pending)
        pending = []
    if pending:
        yield start, "".join(pending)


def load_rules(
    paths: Iterable[Path | str],
    variables: Variables | None = None,
    classification_path: Path | str | None = None,
) -> Ruleset:
    """Load rule files and directories leniently; raise InputError for a missing path."""
    given = [Path(p) for p in paths]
    files = rule_files(given)
    variables = variables if variables is not None else Variables()
    failures: list[RuleFailure] = []

    classifications: dict[str, Classification] = {}
    class_files: list[Path] = []
    if classification_path is not None:
        class_files.append(Path(classification_path))
    else:
        for path in given:
            candidate = (path if path.is_dir() else path.parent) / CLASSIFICATION_FILE
            if candidate.is_file() and candidate not in class_files:
                class_files.append(candidate)
    for class_file in class_files:
        if not class_file.is_file():
            raise InputError(f"no such classification file: {class_file}")
        found, bad = load_classifications(class_file)
        classifications.update(found)
        failures.extend(bad)

    rules: dict[tuple[int, int], Rule] = {}
    disabled: list[DisabledRule] = []
    for path in files:
        name = str(path)
        with path.open(encoding="utf-8", errors="surrogateescape") as handle:
            for number, text in iter_rule_lines(handle):
                stripped = text.strip()
                if not stripped:
                    continue
                if stripped.startswith("#"):
                    if _DISABLED_RE.match(stripped):
                        m = _SID_RE.search(stripped)
                        disabled.append(DisabledRule(name, number, int(m.group(1)) if m else None))
                    continue
                try:
                    rule = parse_rule(
                        stripped,
                        variables,
                        classifications if class_files else None,
                        file=name,
                        line=number,
                    )
                except RuleParseError as exc:
                    failures.append(RuleFailure(name, number, exc.sid, exc.reason))
                    continue
                key = (rule.gid, rule.sid)
                previous = rules.get(key)
                if previous is None:
                    rules[key] = rule
                elif rule.rev > previous.rev:
                    rules[key] = rule
                    failures.append(_duplicate(previous, rule))
                else:
                    failures.append(_duplicate(rule, previous))
    return Ruleset(
        rules=tuple(rules.values()),
        failures=tuple(failures),
        disabled=tuple(disabled),
        classifications=classifications,
        files=tuple(str(p) for p in files),
    )


def _duplicate(dropped: Rule, kept: Rule) -> RuleFailure:
    return RuleFailure(
        dropped.file or "",
        dropped.line or 0,
        dropped.sid,
        f"duplicate sid {dropped.sid} (gid {dropped.gid}, rev {dropped.rev}); "
        f"kept rev {kept.rev} from {kept.file}:{kept.line}",
    )
