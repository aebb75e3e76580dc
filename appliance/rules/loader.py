"""Load rule files, compile them and build the prefilter: what `--rules` does.

All file reading happens here, at load time (the hyperscan cache included); the
resulting SignatureEngine does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.core.detect.signatures import SignatureEngine
from appliance.rules.compiler import CompileFailure, Program, compile_rules
from appliance.rules.matcher import build_prefilters
from appliance.rules.store import Ruleset, load_rules
from appliance.rules.variables import DEFAULT_ADDRESS_GROUPS, DEFAULT_PORT_GROUPS, Variables


@dataclass
class LoadedRules:
    ruleset: Ruleset
    program: Program
    engine: SignatureEngine

    @property
    def compile_failures(self) -> list[CompileFailure]:
        return self.program.failures

    @property
    def active(self) -> int:
        return len(self.program.rules)


def variables_from(address_groups: Mapping[str, str] | None = None,
                   port_groups: Mapping[str, str] | None = None) -> Variables:
    addr = dict(DEFAULT_ADDRESS_GROUPS)
    addr.update(address_groups or {})
    ports = dict(DEFAULT_PORT_GROUPS)
    ports.update(port_groups or {})
    return Variables(address_groups=addr, port_groups=ports)


def load_detection(paths: Iterable[Path | str], variables: Variables | None = None,
                   cache_dir: Path | None = None) -> LoadedRules:
    """Parse (lenient), compile (lenient) and build the prefilter databases."""
    ruleset = load_rules(paths, variables)
    program = compile_rules(ruleset.rules, ruleset.classifications)
    prefilters = build_prefilters(program, cache_dir)
    return LoadedRules(ruleset, program, SignatureEngine(program, prefilters))


def detection_from_text(lines: Iterable[str], variables: Variables | None = None) -> LoadedRules:
    """Build detection from rule text (tests, one-off checks); bad rules are skipped and
    reported in the result like file-loaded ones."""
    from appliance.rules.parser import RuleParseError, parse_rule
    from appliance.rules.store import RuleFailure

    rules = []
    failures = []
    for n, text in enumerate(lines, 1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            rules.append(parse_rule(text, variables, file="<text>", line=n))
        except RuleParseError as e:
            failures.append(RuleFailure("<text>", n, e.sid, e.reason))
    ruleset = Ruleset(tuple(rules), tuple(failures))
    program = compile_rules(ruleset.rules, {})
    return LoadedRules(ruleset, program, SignatureEngine(program, build_prefilters(program)))
