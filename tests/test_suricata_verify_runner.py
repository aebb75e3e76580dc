"""The suricata-verify runner (bench/suricata_verify.py) on a handful of real tests.

The verdicts are printed, not asserted, for tests whose outcome depends on work still in
progress (stream reassembly, app-layer parsers): the runner is what is under test here,
and the pass rate is what bench/suricata_verify.py reports.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REPO, SHARED_DATA

SV_DATA = SHARED_DATA / "suricata-verify"

# simple=yes tests that Suricata 7.0.4 passes the simple way, whose rules are plain
# tcp/ip content (or header) rules: no app-layer parser is involved.
PACKET_LEVEL = [
    "bug-4503",  # ip rules, threshold limit by_rule
    "bug-1045",  # tcp content + flowbits
    "bug-5162",  # tcp content chains with distance/within and a relative pcre
    "tcp-fastopen-06",  # tcp content in a TFO SYN
    "util-action-tests/util-action-04",  # tcp content with alert/pass/drop actions
    "tcp-split-handshake-01-4whs",  # tcp content over a four-way handshake
]
# Its only expected sid is a lua rule, which the engine does not support.
UNSUPPORTED = "issue-7847-01"


def _load_runner() -> ModuleType:
    path = REPO / "bench" / "suricata_verify.py"
    spec = importlib.util.spec_from_file_location("suricata_verify", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sv() -> ModuleType:
    if not (SV_DATA / "index.tsv").exists():
        pytest.skip(f"{SV_DATA} is not present")
    return _load_runner()


@pytest.fixture(scope="module")
def index(sv: ModuleType) -> dict[str, Any]:
    return {t.name: t for t in sv.load_index(SV_DATA)}


def test_packet_level_tests_get_well_formed_verdicts(sv: ModuleType,
                                                     index: dict[str, Any]) -> None:
    for name in PACKET_LEVEL:
        test = index[name]
        assert test.simple and test.suricata == "pass", name
        r = sv.run_test(test, SV_DATA, time_limit=20.0)
        print(f"{name}: {r.status} {r.reason} packets={r.packets} alerts={r.alerts}")
        assert r.name == name
        assert r.status in ("pass", "fail")
        assert r.category not in ("error", "time limit", "pcap missing"), r.reason
        assert r.packets > 0
        assert all(isinstance(s, int) and n > 0 for s, n in r.alerts.items())
        if r.status == "pass":
            assert r.reason == "" and r.details == []
        else:
            assert r.reason and r.category
            assert r.reason.startswith(("rule not loaded: ", "missing alert sid ",
                                        "extra alerts sid ", "unexpected alert sid "))


def test_unsupported_keyword_is_reported_as_rule_not_loaded(sv: ModuleType,
                                                           index: dict[str, Any]) -> None:
    r = sv.run_test(index[UNSUPPORTED], SV_DATA)
    print(f"{UNSUPPORTED}: {r.status} {r.reason}")
    assert r.status == "fail"
    assert r.category == "rule not loaded"
    assert r.reason.startswith("rule not loaded: ")
    assert "lua" in r.reason


def test_compare_counts_and_absent_sids(sv: ModuleType) -> None:
    test = sv.SvTest(name="t", pcap="", rules=(), expected={1: 2, 2: 1}, absent=(3,),
                     keywords=(), protocols=(), min_version="", max_version="", notes="",
                     simple=True, suricata="pass")
    assert sv.compare(test, {1: 2, 2: 1, 4: 9}) == []  # unlisted sids are not checked
    got = sv.compare(test, {1: 1, 2: 3, 3: 1})
    assert [c for c, _ in got] == ["missing alert", "extra alerts", "unexpected alert"]
    assert got[0][1] == "missing alert sid 1 (got 1, want 2)"


def test_missing_pcap_and_version_skip(sv: ModuleType, index: dict[str, Any]) -> None:
    missing = next(t for t in index.values() if not t.pcap)
    assert sv.run_test(missing, SV_DATA).reason == "pcap missing"
    newer = next(t for t in index.values()
                 if t.min_version.startswith("9")
                 and t.suricata != "pass")
    r = sv.run_test(newer, SV_DATA)
    assert r.status == "skip" and "min_version" in r.reason


def test_test_args_and_threshold_config_beside_the_rules(sv: ModuleType,
                                                         index: dict[str, Any]) -> None:
    cfg = sv.engine_config(["-k", "none", "--simulate-ips"])
    assert cfg.flow.stream.checksum_validation == "no" and cfg.mode == "ips"
    plain = sv.engine_config(["--set", "x=1"])
    assert plain.flow.stream.checksum_validation == "auto" and plain.mode == "ids"
    assert not plain.flow.stream.midstream and not plain.flow.stream.async_oneside
    both = sv.engine_config(["--set", "stream.midstream=true", "--set",
                             "stream.async-oneside=true"])
    assert both.flow.stream.midstream and both.flow.stream.async_oneside
    assert not sv.engine_config(["--set", "stream.midstream=false"]).flow.stream.midstream
    test = index["threshold-config-byrule"]
    assert sv.test_args(test, SV_DATA)[:2] == ["--set", "threshold-file=${TEST_DIR}/"
                                                          "threshold.config"]
    # Its threshold.config (limit 3 by_rule) is beside its rules: 3 alerts, not 30.
    r = sv.run_test(test, SV_DATA, time_limit=20.0)
    assert r.status == "pass" and r.alerts == {1000001: 3}, (r.reason, r.alerts)
    listing = sv.list_failures([r, sv.Result("x", "fail", "missing alert sid 1",
                                             "missing alert")])
    assert listing.splitlines() == ["missing alert (1):", "  x  missing alert sid 1"]
