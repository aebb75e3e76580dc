"""Load rule files, compile them and build the prefilter: what `--rules` does.

All file reading happens here, at load time; the resulting SignatureEngine does no I/O.

Cold load parses and compiles every rule (ET Open: ~4 s here), then writes a cache keyed
by the rule files' bytes, the variables and this code's version: per rule the plain data
the prefilter needs (RuleInfo) plus the failures. A warm load reads that cache, builds
the prefilter (hyperscan databases come from their own cache) and compiles each rule
only when it first becomes a candidate (LazyRules).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from appliance import __version__
from appliance.core.detect.signatures import SignatureEngine
from appliance.core.policy import Policy, RuleSelector
from appliance.rules.compiler import CompileFailure, LazyRules, Program, RuleInfo, compile_rules
from appliance.rules.matcher import build_prefilters
from appliance.rules.parser import Classification
from appliance.rules.store import RuleFailure, load_rules, rule_files
from appliance.rules.thresholds import ThresholdConfig, beside, load_threshold_file
from appliance.rules.variables import DEFAULT_ADDRESS_GROUPS, DEFAULT_PORT_GROUPS, Variables

# Bump when RuleInfo, the compiler's ordering or the parser's output changes shape.
CACHE_FORMAT: Final = 6


@dataclass
class LoadedRules:
    program: Program
    engine: SignatureEngine
    parsed: int  # rules that parsed
    parse_failures: tuple[RuleFailure, ...]
    disabled: int
    from_cache: bool = False
    # threshold.config entries in force (None: no file); its bad lines are in failures.
    thresholds: ThresholdConfig | None = None

    @property
    def compile_failures(self) -> list[CompileFailure]:
        return self.program.failures

    @property
    def active(self) -> int:
        return len(self.program.infos)

    @property
    def threshold_failures(self) -> list[RuleFailure]:
        return list(self.thresholds.failures) if self.thresholds is not None else []

    @property
    def failed(self) -> int:
        return (len(self.parse_failures) + len(self.program.failures)
                + len(self.threshold_failures))

    def failure_records(self) -> list[RuleFailure]:
        """Every rule (or threshold.config line) not loaded, parse and compile failures
        alike (file, line, reason)."""
        out = list(self.parse_failures)
        for f in self.program.failures:
            out.append(RuleFailure(f.rule.file or "<text>", f.rule.line or 0, f.rule.sid,
                                   f.reason))
        out.extend(self.threshold_failures)
        return out


def variables_from(address_groups: Mapping[str, str] | None = None,
                   port_groups: Mapping[str, str] | None = None) -> Variables:
    addr = dict(DEFAULT_ADDRESS_GROUPS)
    addr.update(address_groups or {})
    ports = dict(DEFAULT_PORT_GROUPS)
    ports.update(port_groups or {})
    return Variables(address_groups=addr, port_groups=ports)


def _code_fingerprint() -> bytes:
    """The rule parser's and compiler's own source: what a cached compile depends on
    besides the rules (a new keyword, a changed RuleInfo), so that changing the code
    never reuses a cache written by the old one."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(f.name.encode())
    return h.digest()


def _cache_key(paths: list[Path], variables: Variables) -> str:
    h = hashlib.sha256()
    h.update(f"{__version__}:{CACHE_FORMAT}".encode())
    h.update(_code_fingerprint())
    h.update(repr(sorted(variables.address_groups.items())).encode())
    h.update(repr(sorted(variables.port_groups.items())).encode())
    files = rule_files(paths)
    dirs = {p if p.is_dir() else p.parent for p in paths}
    for f in [*files, *sorted(d / "classification.config" for d in dirs)]:
        h.update(str(f).encode())
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"<absent>")
    return h.hexdigest()[:40]


def load_thresholds(paths: Iterable[Path], variables: Variables,
                    threshold_file: Path | str | None = None) -> ThresholdConfig | None:
    """The threshold.config in force: the file given, else any found beside the rules
    (as classification.config); None when there is none. A given file that cannot be
    read raises InputError; bad lines in it are failures, never an exception."""
    files = [Path(threshold_file)] if threshold_file is not None else beside(paths)
    if not files:
        return None
    conf = ThresholdConfig()
    for f in files:
        load_threshold_file(f, variables, conf)
    return conf


def load_detection(paths: Iterable[Path | str], variables: Variables | None = None,
                   cache_dir: Path | None = None,
                   threshold_file: Path | str | None = None) -> LoadedRules:
    """Parse (lenient), compile (lenient) and build the prefilter databases.
    threshold.config is read every time (it is small; not part of the cache)."""
    given = [Path(p) for p in paths]
    variables = variables if variables is not None else Variables()
    thresholds = load_thresholds(given, variables, threshold_file)
    key = _cache_key(given, variables) if cache_dir is not None else ""
    if cache_dir is not None:
        warm = _load_cached(cache_dir / f"rules-{key}.pickle", variables, thresholds)
        if warm is not None:
            return warm
    ruleset = load_rules(given, variables)
    program = compile_rules(ruleset.rules, ruleset.classifications)
    loaded = LoadedRules(program, SignatureEngine(program, build_prefilters(program, cache_dir),
                                                  thresholds),
                         ruleset.loaded, ruleset.failures, ruleset.disabled_count,
                         thresholds=thresholds)
    if cache_dir is not None:
        _store(cache_dir / f"rules-{key}.pickle", loaded, ruleset.classifications)
    return loaded


def _store(path: Path, loaded: LoadedRules, classes: dict[str, Classification]) -> None:
    blob: dict[str, Any] = {
        "infos": loaded.program.infos,
        "compile_failures": [(f.rule.raw, f.rule.file, f.rule.line, f.reason)
                             for f in loaded.program.failures],
        "parse_failures": loaded.parse_failures,
        "parsed": loaded.parsed,
        "disabled": loaded.disabled,
        "classifications": classes,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL))
        tmp.replace(path)
    except OSError:
        pass  # no cache: the next start is a cold one


def _load_cached(path: Path, variables: Variables,
                 thresholds: ThresholdConfig | None) -> LoadedRules | None:
    try:
        blob = pickle.loads(path.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
        return None
    from appliance.rules.parser import parse_rule

    classes = blob["classifications"]
    failures = []
    for raw, file, line, reason in blob["compile_failures"]:
        failures.append(CompileFailure(parse_rule(raw, variables, classes, file=file,
                                                  line=line), reason))
    infos = blob["infos"]
    lazy = LazyRules(infos, variables, classes)
    for i, info in enumerate(infos):
        if any(w in info.raw for w in ("filemd5", "filesha", "dataset", "datarep")):
            # Rules with hash lists or datasets read them when compiled: now, at load
            # time, not on their first packet (the engine does no I/O).
            lazy[i]  # a list gone missing since the cache was written: never matches
    program = Program(lazy, failures, infos)
    engine = SignatureEngine(program, build_prefilters(program, path.parent), thresholds)
    return LoadedRules(program, engine, blob["parsed"], blob["parse_failures"],
                       blob["disabled"], from_cache=True, thresholds=thresholds)


def detection_from_text(lines: Iterable[str], variables: Variables | None = None,
                        thresholds: ThresholdConfig | None = None) -> LoadedRules:
    """Build detection from rule text (tests, one-off checks); bad rules are skipped and
    reported in the result like file-loaded ones."""
    from appliance.rules.parser import RuleParseError, parse_rule

    rules = []
    failures = []
    for n, text in enumerate(lines, 1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            rules.append(parse_rule(text, variables, file="<text>", line=n))
        except RuleParseError as e:
            failures.append(RuleFailure("<text>", n, e.sid, e.reason))
    program = compile_rules(rules, {})
    return LoadedRules(program, SignatureEngine(program, build_prefilters(program), thresholds),
                       len(rules), tuple(failures), 0, thresholds=thresholds)


def role_detectors(loaded: LoadedRules, policy: Policy,
                   cache_dir: Path | None = None) -> dict[str, SignatureEngine]:
    """One SignatureEngine per role over the rules the role selects; roles that select
    the same rules share one (same prefilter databases, same compiled rules)."""
    program = loaded.program
    by_selection: dict[frozenset[int], SignatureEngine] = {}
    out: dict[str, SignatureEngine] = {}
    for name, role in policy.roles.items():
        sel = role.rules

        def keep(info: RuleInfo, sel: RuleSelector = sel) -> bool:
            return sel.selects(info.sid, info.classtype, dict(info.metadata), info.file)

        chosen = frozenset(i.order for i in program.infos if keep(i))
        eng = by_selection.get(chosen)
        if eng is None:
            if len(chosen) == len(program.infos):
                eng = loaded.engine
            else:
                eng = SignatureEngine(program, build_prefilters(program, cache_dir,
                                                                select=keep),
                                      loaded.thresholds)
            by_selection[chosen] = eng
        out[name] = eng
    return out
