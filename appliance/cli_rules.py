"""``appliance rules``: rule-file commands (lenient load, strict check; DESIGN.md principle 8)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import click

from appliance.errors import InputError
from appliance.rules.compiler import compile_rules
from appliance.rules.loader import load_thresholds
from appliance.rules.store import RuleFailure, Ruleset, load_rules
from appliance.rules.variables import Variables

# How many example failures to print per reason in the text summary: enough to find the
# pattern, few enough that one noisy reason does not bury the others.
EXAMPLES_PER_REASON = 3


class _InputFailure(click.ClickException):
    """A missing or unreadable input: one ``Error: ...`` line on stderr, exit status 2."""

    exit_code = 2


@click.group(name="rules")
def rules() -> None:
    """Suricata rule files: check and inspect."""


@rules.command(name="check")
@click.option("--strict", is_flag=True, help="Exit 1 if any rule failed to load.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--threshold-file", type=click.Path(path_type=Path), default=None,
              help="Also check this threshold.config [the one beside the rules, if any].")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def check(strict: bool, as_json: bool, threshold_file: Path | None,
          paths: tuple[Path, ...]) -> None:
    """Load rule files or directories and report what loaded, failed or is disabled
    (threshold.config lines included)."""
    try:
        parsed = load_rules(paths)
        thresholds = load_thresholds(paths, Variables(), threshold_file)
    except InputError as exc:
        raise _InputFailure(str(exc)) from None
    # Parse failures and rules the matcher cannot run (unsupported keywords) alike.
    program = compile_rules(parsed.rules, parsed.classifications)
    bad = {id(f.rule) for f in program.failures}
    ruleset = replace(
        parsed,
        rules=tuple(r for r in parsed.rules if id(r) not in bad),
        failures=parsed.failures + tuple(
            RuleFailure(f.rule.file or "?", f.rule.line or 0, f.rule.sid, f.reason)
            for f in program.failures) + tuple(thresholds.failures if thresholds else ()),
    )
    entries = thresholds.entries if thresholds is not None else 0
    if as_json:
        click.echo(json.dumps(_summary(ruleset) | {"thresholds": entries}, sort_keys=True))
    else:
        if thresholds is not None:
            click.echo(f"thresholds: {entries} entries from {', '.join(thresholds.sources)}")
        _print_text(ruleset)
    if strict and ruleset.failures:
        raise SystemExit(1)


def _failure_dict(failure: RuleFailure) -> dict[str, object]:
    return {
        "file": failure.file,
        "line": failure.line,
        "sid": failure.sid,
        "reason": failure.reason,
    }


def _summary(ruleset: Ruleset) -> dict[str, object]:
    reasons = Counter(f.reason for f in ruleset.failures)
    return {
        "files": len(ruleset.files),
        "loaded": ruleset.loaded,
        "failed": ruleset.failed,
        "disabled": ruleset.disabled_count,
        "classifications": len(ruleset.classifications),
        "reasons": dict(reasons.most_common()),
        "failures": [_failure_dict(f) for f in ruleset.failures],
    }


def _print_text(ruleset: Ruleset) -> None:
    click.echo(
        f"files: {len(ruleset.files)}  loaded: {ruleset.loaded}  failed: {ruleset.failed}  "
        f"disabled: {ruleset.disabled_count}"
    )
    if not ruleset.failures:
        return
    by_reason: dict[str, list[RuleFailure]] = defaultdict(list)
    for failure in ruleset.failures:
        by_reason[failure.reason].append(failure)
    click.echo("failures by reason:")
    for reason, items in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        click.echo(f"  {len(items):6d}  {reason}")
        for failure in items[:EXAMPLES_PER_REASON]:
            sid = f" sid {failure.sid}" if failure.sid is not None else ""
            click.echo(f"            {failure.file}:{failure.line}{sid}")
