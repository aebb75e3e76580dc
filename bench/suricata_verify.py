"""Run the suricata-verify tests against the appliance's signature engine.

Each test of ``../shared/data/suricata-verify/index.tsv`` is replayed the "simple" way
(its pcap, its rule files, default variables, no per-test suricata.yaml), the way
``suricata-7.0.4-results.tsv`` records Suricata 7.0.4 itself doing. A test passes when
every expected sid alerts exactly the expected number of times and no must-not-alert sid
alerts; sids the test does not list are not checked (suricata-verify's own checks only look
at the sids they name).

Versions: a test whose min/max version excludes 7.0.4 is skipped, unless Suricata 7.0.4
passes it anyway (then the expectation holds for 7.0.4 and it belongs to the issue's goal
of the 583 tests Suricata passes); ``--strict-versions`` skips those too.

With ``--test-args`` the replay also honours the command-line arguments a test's
test.yaml gives Suricata that the engine has a setting for: ``-k none`` (no checksum
validation), ``--simulate-ips`` (inline semantics), ``--set stream.midstream=`` and
``--set stream.async-oneside=``. A threshold.config beside a test's rules is always used (the tests that
ship one pass it with ``--set threshold-file``).

``--list-failures`` prints every failing test under its reason category.

Run: .venv/bin/python bench/suricata_verify.py [-j N] [--filter S] [--simple]
     [--only-suricata-passes] [--test-args] [--list-failures] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import multiprocessing
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType

import yaml

from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import Event
from appliance.io.eve import RecordingEve
from appliance.io.pcap import PcapReader
from appliance.rules.loader import LoadedRules, load_detection
from appliance.runtime import Runtime

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "suricata-verify"
INDEX = "index.tsv"
RESULTS = "suricata-7.0.4-results.tsv"
OUR_VERSION = (7, 0, 4)
# Wall time per test, checked between packets; the alarm is a backstop for one packet (or a
# rule load) that never returns, at a multiple of the limit so the soft check normally wins.
TIME_LIMIT = 60.0
HARD_LIMIT_FACTOR = 3
# Keywords every rule carries; they say nothing about what a failing test needs.
META_KEYWORDS = frozenset(
    {"msg", "sid", "rev", "gid", "classtype", "priority", "metadata", "reference", "alert",
     "target"}
)
_UNSUPPORTED_RE = re.compile(r"unsupported ([a-z_ -]+?) '([^']+)'")


# -- the test list ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SvTest:
    """One row of index.tsv, joined with Suricata 7.0.4's own result for it."""

    name: str
    pcap: str
    rules: tuple[str, ...]
    expected: dict[int, int]
    absent: tuple[int, ...]
    keywords: tuple[str, ...]
    protocols: tuple[str, ...]
    min_version: str
    max_version: str
    notes: str
    simple: bool
    suricata: str  # "pass", "fail", "missing-data" or "" when the results file lacks it


def _sid_counts(text: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        sid, _, count = item.partition(":")
        out[int(sid)] = int(count) if count else 1
    return out


def _sids(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.replace(";", ",").split(",") if s.strip())


def load_index(data_dir: Path = DEFAULT_DATA) -> list[SvTest]:
    suricata: dict[str, str] = {}
    results = data_dir / RESULTS
    if results.exists():
        with results.open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                suricata[row["test"]] = row["suricata_7.0.4"]
    tests: list[SvTest] = []
    with (data_dir / INDEX).open(newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            tests.append(SvTest(
                name=row["test"],
                pcap=row["pcap"],
                rules=tuple(r for r in row["rules"].split(";") if r.strip()),
                expected=_sid_counts(row["expected_sids(sid:count)"]),
                absent=_sids(row["absent_sids(count0)"]),
                keywords=tuple(row["keywords"].split()),
                protocols=tuple(row["rule_protocols"].split()),
                min_version=row["min_version"].strip(),
                max_version=row["max_version"].strip(),
                notes=row["notes"],
                simple=row["simple"].strip() == "yes",
                suricata=suricata.get(row["test"], ""),
            ))
    return tests


def _version(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def version_skip(test: SvTest) -> str | None:
    """Why the test's expectation does not hold for 7.0.4, or None when it does."""
    if test.max_version:
        # "max-version: 6" means every 6.x; compare on as many parts as given.
        given = len(re.findall(r"\d+", test.max_version))
        if OUR_VERSION[:given] > _version(test.max_version)[:given]:
            return f"max_version {test.max_version} < 7.0.4"
    if test.min_version and _version(test.min_version) > OUR_VERSION:
        return f"min_version {test.min_version} > 7.0.4"
    return None


# -- one test ---------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    status: str  # "pass", "fail" or "skip"
    reason: str = ""
    category: str = ""  # the reason without its particulars, for grouping
    details: list[str] = field(default_factory=list)  # every mismatch, not only the first
    alerts: dict[int, int] = field(default_factory=dict)
    load_failures: list[str] = field(default_factory=list)
    packets: int = 0
    seconds: float = 0.0
    suricata: str = ""
    simple: bool = False
    keywords: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()


class TimeLimitExceeded(Exception):
    pass


def _limited(events: Iterable[Event], deadline: float) -> Iterator[Event]:
    for n, ev in enumerate(events):
        if time.perf_counter() > deadline:
            raise TimeLimitExceeded(f"time limit exceeded after {n} packets")
        yield ev


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise TimeLimitExceeded("hard time limit exceeded (stuck in one packet or in loading)")


def compare(test: SvTest, alerts: dict[int, int]) -> list[tuple[str, str]]:
    """Mismatches as (category, reason), in the order the test lists its sids."""
    out: list[tuple[str, str]] = []
    for sid, want in test.expected.items():
        got = alerts.get(sid, 0)
        if got < want:
            out.append(("missing alert", f"missing alert sid {sid} (got {got}, want {want})"))
        elif got > want:
            out.append(("extra alerts", f"extra alerts sid {sid} (got {got}, want {want})"))
    for sid in test.absent:
        if alerts.get(sid, 0):
            out.append(("unexpected alert",
                        f"unexpected alert sid {sid} (got {alerts[sid]}, want 0)"))
    return out


def _failure_texts(loaded: LoadedRules) -> list[tuple[int | None, str]]:
    found: list[tuple[int | None, str]] = [(f.sid, f.reason) for f in loaded.parse_failures]
    found += [(f.rule.sid, f.reason) for f in loaded.program.failures]
    return found


def test_args(test: SvTest, data_dir: Path = DEFAULT_DATA) -> list[str]:
    """The command-line arguments the test's test.yaml gives Suricata (split on spaces)."""
    try:
        doc = yaml.safe_load((data_dir / "tests" / test.name / "test.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    args = doc.get("args") if isinstance(doc, dict) else None
    return [w for a in args or [] for w in str(a).split()]


def engine_config(args: Sequence[str]) -> EngineConfig:
    """What ``-k none``, ``--simulate-ips`` and ``--set stream.midstream=`` /
    ``stream.async-oneside=`` among ``args`` ask of the engine."""
    cfg = EngineConfig()
    if any(a == "-k" and b == "none" for a, b in itertools.pairwise(args)):
        flow = cfg.flow
        cfg = replace(cfg, flow=replace(flow, stream=replace(flow.stream,
                                                             checksum_validation="no")))
    if "--simulate-ips" in args:
        cfg = replace(cfg, mode="ips")
    stream = cfg.flow.stream
    for a, b in itertools.pairwise(args):
        # The stream settings the stream-async and tunnel tests set on the command line.
        if a == "--set" and b.split("=", 1)[0] in _STREAM_SETS:
            key, _, value = b.partition("=")
            stream = replace(stream, **{_STREAM_SETS[key]: value.lower() in ("true", "yes")})
    if stream != cfg.flow.stream:
        cfg = replace(cfg, flow=replace(cfg.flow, stream=stream))
    return cfg


_STREAM_SETS: dict[str, str] = {"stream.midstream": "midstream",
                                "stream.async-oneside": "async_oneside"}


def run_test(test: SvTest, data_dir: Path = DEFAULT_DATA, time_limit: float = TIME_LIMIT,
             cache_dir: Path | None = None, strict_versions: bool = False,
             use_args: bool = False) -> Result:
    """Replay one test and judge it; never raises."""
    res = Result(test.name, "fail", suricata=test.suricata, simple=test.simple,
                 keywords=test.keywords, protocols=test.protocols)
    skip = version_skip(test)
    if skip is not None and (strict_versions or test.suricata != "pass"):
        res.status, res.reason, res.category = "skip", skip, "version"
        return res
    if not test.pcap or not (data_dir / test.pcap).is_file():
        res.reason = res.category = "pcap missing"
        return res
    start = time.perf_counter()
    use_alarm = threading.current_thread() is threading.main_thread()
    previous = None
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, time_limit * HARD_LIMIT_FACTOR)
    try:
        loaded = load_detection([data_dir / r for r in test.rules], cache_dir=cache_dir)
        failures = _failure_texts(loaded)
        res.load_failures = [f"sid {sid}: {reason}" for sid, reason in failures]
        eve = RecordingEve()
        cfg = engine_config(test_args(test, data_dir)) if use_args else EngineConfig()
        rt = Runtime(Engine(cfg, detector=loaded.engine), eve)
        with PcapReader(data_dir / test.pcap) as reader:
            summary = rt.run(_limited(reader, start + time_limit))
        rt.finish()
        res.packets = summary.packets
        alerts: Counter[int] = Counter(
            int(a["alert"]["signature_id"]) for a in eve.of_type("alert"))
        res.alerts = dict(sorted(alerts.items()))
        mismatches = compare(test, res.alerts)
        res.details = [m[1] for m in mismatches]
        checked = set(test.expected) | set(test.absent)
        implicated = {sid for sid, _ in failures if sid in checked}
        if failures and (mismatches or implicated):
            # A checked sid whose rule did not load, or any mismatch while some rule did
            # not load (a flowbit setter, say): the load failure is the reason to report.
            mismatched = {int(s) for m in mismatches for s in re.findall(r"sid (\d+)", m[1])}
            first = next((r for sid, r in failures if sid in mismatched), None)
            first = first or next((r for sid, r in failures if sid in checked), failures[0][1])
            res.category, res.reason = "rule not loaded", f"rule not loaded: {first}"
        elif mismatches:
            res.category, res.reason = mismatches[0]
            if len(mismatches) > 1:
                res.reason += f" (+{len(mismatches) - 1} more)"
        else:
            res.status = "pass"
    except TimeLimitExceeded as e:
        res.category, res.reason = "time limit", f"error: {e}"
    except Exception as e:  # one broken test must not stop the run
        res.category, res.reason = "error", f"error: {type(e).__name__}: {e}"
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        res.seconds = round(time.perf_counter() - start, 3)
    return res


# -- the whole run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    test: SvTest
    data_dir: Path
    time_limit: float
    strict_versions: bool
    use_args: bool = False


def _run_job(job: _Job) -> Result:
    return run_test(job.test, job.data_dir, job.time_limit, None, job.strict_versions,
                    job.use_args)


def select(tests: Sequence[SvTest], substr: str | None = None, simple: bool = False,
           only_suricata_passes: bool = False) -> list[SvTest]:
    return [t for t in tests
            if (substr is None or substr in t.name)
            and (not simple or t.simple)
            and (not only_suricata_passes or t.suricata == "pass")]


def run_all(tests: Sequence[SvTest], data_dir: Path, jobs: int, time_limit: float,
            strict_versions: bool = False, progress: bool = True,
            use_args: bool = False) -> list[Result]:
    work = [_Job(t, data_dir, time_limit, strict_versions, use_args) for t in tests]
    results: list[Result] = []
    if jobs <= 1:
        iterator: Iterable[Result] = map(_run_job, work)
        results = _collect(iterator, len(work), progress)
    else:
        # Fresh workers now and then: a test that leaks memory does not weigh on the rest.
        with multiprocessing.get_context("fork").Pool(jobs, maxtasksperchild=50) as pool:
            results = _collect(pool.imap_unordered(_run_job, work, chunksize=1),
                               len(work), progress)
    order = {t.name: i for i, t in enumerate(tests)}
    results.sort(key=lambda r: order[r.name])
    return results


def _collect(results: Iterable[Result], total: int, progress: bool) -> list[Result]:
    out: list[Result] = []
    for r in results:
        out.append(r)
        if progress:
            mark = {"pass": "ok", "skip": "--"}.get(r.status, "FAIL")
            print(f"[{len(out):4}/{total}] {mark:4} {r.seconds:6.2f}s {r.name}"
                  + (f"  {r.reason}" if r.reason else ""), flush=True)
    return out


def _rate(n: int, d: int) -> str:
    return f"{n}/{d} = {100.0 * n / d:.1f}%" if d else f"{n}/0"


def report(results: Sequence[Result], top: int = 20) -> str:
    lines: list[str] = []
    ran = [r for r in results if r.status != "skip"]
    passed = [r for r in ran if r.status == "pass"]
    failed = [r for r in ran if r.status == "fail"]
    skipped = [r for r in results if r.status == "skip"]
    lines.append(f"total {len(results)}  passed {len(passed)}  failed {len(failed)}  "
                 f"skipped {len(skipped)}")
    lines.append(f"pass rate (of tests run): {_rate(len(passed), len(ran))}")
    sp = [r for r in results if r.suricata == "pass"]
    sp_pass = sum(r.status == "pass" for r in sp)
    lines.append(f"pass rate on the tests Suricata 7.0.4 passes the simple way: "
                 f"{_rate(sp_pass, len(sp))}  (goal >= 95%)")
    simple = [r for r in ran if r.simple]
    lines.append(f"pass rate on simple=yes tests run: "
                 f"{_rate(sum(r.status == 'pass' for r in simple), len(simple))}")
    if skipped:
        lines.append("skipped: " + ", ".join(
            f"{k} {v}" for k, v in Counter(r.reason for r in skipped).most_common()))

    lines.append("")
    lines.append("failures by category (all / among tests Suricata passes):")
    cats = Counter(r.category for r in failed)
    cats_sp = Counter(r.category for r in failed if r.suricata == "pass")
    for cat, n in cats.most_common():
        lines.append(f"  {n:5} / {cats_sp.get(cat, 0):4}  {cat}")

    unsupported: Counter[str] = Counter()
    unsupported_sp: Counter[str] = Counter()
    for r in failed:
        if r.category != "rule not loaded":
            continue
        seen = {f"{m.group(1)} '{m.group(2)}'"
                for text in r.load_failures for m in _UNSUPPORTED_RE.finditer(text)}
        if not seen:
            seen = {re.sub(r"^sid \S+: ", "", text) for text in r.load_failures[:1]}
        unsupported.update(seen)
        if r.suricata == "pass":
            unsupported_sp.update(seen)
    lines.append("")
    lines.append(f"top {top} reasons rules did not load (tests failing; all / Suricata passes):")
    for what, n in unsupported.most_common(top):
        lines.append(f"  {n:5} / {unsupported_sp.get(what, 0):4}  {what}")

    used_by_pass: Counter[str] = Counter()
    for r in passed:
        used_by_pass.update(set(r.keywords) | {f"proto:{p}" for p in r.protocols})
    missing: Counter[str] = Counter()
    missing_sp: Counter[str] = Counter()
    for r in failed:
        if r.category not in ("missing alert", "extra alerts", "unexpected alert"):
            continue
        used = {k for k in r.keywords if k not in META_KEYWORDS}
        used |= {f"proto:{p}" for p in r.protocols}
        missing.update(used)
        if r.suricata == "pass":
            missing_sp.update(used)
    lines.append("")
    lines.append(f"top {top} keywords/protocols of tests failing on alerts "
                 f"(failing all / failing Suricata-passes / used by passing tests):")
    for what, n in missing.most_common(top):
        lines.append(f"  {n:5} / {missing_sp.get(what, 0):4} / {used_by_pass.get(what, 0):4}  "
                     f"{what}")
    return "\n".join(lines)


def list_failures(results: Sequence[Result]) -> str:
    """Every failing test, grouped under its category (largest first), with its reason."""
    by_cat: dict[str, list[Result]] = {}
    for r in results:
        if r.status == "fail":
            by_cat.setdefault(r.category, []).append(r)
    lines: list[str] = []
    for cat, items in sorted(by_cat.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"{cat} ({len(items)}):")
        lines.extend(f"  {r.name}  {r.reason}" for r in items)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="the suricata-verify directory (index.tsv, tests/)")
    ap.add_argument("--filter", metavar="SUBSTR", help="only tests whose name contains SUBSTR")
    ap.add_argument("--only-suricata-passes", action="store_true",
                    help="only the tests Suricata 7.0.4 passes the simple way")
    ap.add_argument("--simple", action="store_true", help="only tests marked simple=yes")
    ap.add_argument("--strict-versions", action="store_true",
                    help="skip every test whose versions exclude 7.0.4, even if Suricata passes it")
    ap.add_argument("--json", metavar="OUT", type=Path, help="write per-test results here")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--time-limit", type=float, default=TIME_LIMIT,
                    help=f"wall seconds per test (default {TIME_LIMIT:g})")
    ap.add_argument("--quiet", action="store_true", help="no per-test progress lines")
    ap.add_argument("--top", type=int, default=20, help="how many keywords to list")
    ap.add_argument("--test-args", action="store_true",
                    help="honour the test's -k none, --simulate-ips and --set "
                         "stream.midstream/async-oneside arguments")
    ap.add_argument("--list-failures", action="store_true",
                    help="print every failing test under its reason category")
    a = ap.parse_args(argv)

    tests = select(load_index(a.data), a.filter, a.simple, a.only_suricata_passes)
    if not tests:
        print("no test selected", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results = run_all(tests, a.data, a.jobs, a.time_limit, a.strict_versions, not a.quiet,
                      a.test_args)
    elapsed = time.perf_counter() - t0
    if a.json:
        a.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    print()
    if a.list_failures:
        print(list_failures(results))
        print()
    print(report(results, a.top))
    print(f"\n{len(results)} tests in {elapsed:.1f} s with {a.jobs} worker(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
