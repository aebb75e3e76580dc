"""Rule files: multi-line rules, disabled rules, lenient failures, classification, ET Open."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from appliance.errors import InputError
from appliance.rules.store import (
    DisabledRule,
    RuleFailure,
    iter_rule_lines,
    load_rules,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ETOPEN = SHARED_DATA / "rules" / "etopen-2024-04-21"

RULES_TEXT = """\
# a comment
alert tcp any any -> any 80 (msg:"one"; content:"a"; classtype:bad-unknown; sid:1; rev:1;)

# alert tcp any any -> any any (msg:"disabled"; sid:2; rev:1;)
#alert udp any any -> any 53 (msg:"disabled too"; sid:3;)
# this is prose, not a rule (sid:4;)
alert http any any -> any any (msg:"multi"; \\
    content:"b"; \\
    sid:5; rev:1;)
alert tcp any any -> any any (msg:"bad"; frobnicate; sid:6;)
alert tcp any any -> any any (msg:"no sid";)
alert tcp any any -> any any (msg:"dup low rev"; sid:1; rev:0;)
alert tcp any any -> any any (msg:"unknown class"; classtype:nope; sid:7;)
"""

CLASSIFICATION = """\
# classification
config classification: bad-unknown,Potentially Bad Traffic, 2
config classification: broken-line
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    (tmp_path / "b.rules").write_text(RULES_TEXT)
    (tmp_path / "a.rules").write_text('alert ip any any -> any any (msg:"first"; sid:100;)\n')
    (tmp_path / "ignored.txt").write_text("alert ip any any -> any any (sid:999;)\n")
    (tmp_path / "classification.config").write_text(CLASSIFICATION)
    return tmp_path


def test_iter_rule_lines_joins_continuations() -> None:
    # Suricata drops the backslash and appends the next line as is (no space added).
    lines = ["a \\\n", "b\\\n", "c\n", "d\n"]
    assert list(iter_rule_lines(lines)) == [(1, "a bc"), (4, "d")]


def test_load_directory(rules_dir: Path) -> None:
    rs = load_rules([rules_dir])
    a = str(rules_dir / "a.rules")
    b = str(rules_dir / "b.rules")
    assert rs.files == (a, b)  # sorted, *.rules only
    assert [r.sid for r in rs.rules] == [100, 1, 5]
    assert rs.loaded == 3
    one = rs.rules[1]
    assert (one.category, one.priority, one.line, one.file) == (
        "Potentially Bad Traffic", 2, 2, b,
    )
    multi = rs.rules[2]
    assert multi.line == 7
    assert multi.contents[0].pattern == b"b"
    assert rs.disabled == (DisabledRule(b, 4, 2), DisabledRule(b, 5, 3))
    assert rs.disabled_count == 2
    classification = str(rules_dir / "classification.config")
    assert rs.failures == (
        RuleFailure(
            classification, 3, None,
            "malformed classification line 'config classification: broken-line'",
        ),
        RuleFailure(b, 10, 6, "unsupported keyword 'frobnicate'"),
        RuleFailure(b, 11, None, "rule has no sid"),
        RuleFailure(b, 12, 1, f"duplicate sid 1 (gid 1, rev 0); kept rev 1 from {b}:2"),
        RuleFailure(b, 13, 7, "unknown classtype 'nope'"),
    )
    assert set(rs.classifications) == {"bad-unknown"}


def test_higher_rev_replaces_earlier_rule(tmp_path: Path) -> None:
    f = tmp_path / "x.rules"
    f.write_text(
        'alert ip any any -> any any (msg:"old"; sid:1; rev:1;)\n'
        'alert ip any any -> any any (msg:"new"; sid:1; rev:2;)\n'
    )
    rs = load_rules([f])
    assert [r.msg for r in rs.rules] == ["new"]
    assert rs.failures == (
        RuleFailure(str(f), 1, 1, f"duplicate sid 1 (gid 1, rev 1); kept rev 2 from {f}:2"),
    )


def test_single_file_without_classification(tmp_path: Path) -> None:
    f = tmp_path / "x.rules"
    f.write_text('alert ip any any -> any any (classtype:anything; sid:1;)\n')
    rs = load_rules([f])
    assert rs.loaded == 1 and rs.failed == 0
    assert rs.rules[0].category is None and rs.rules[0].priority == 3


def test_missing_path_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such rule file or directory"):
        load_rules([tmp_path / "missing.rules"])


@pytest.mark.skipif(not ETOPEN.is_dir(), reason=f"ET Open ruleset not present at {ETOPEN}")
def test_load_et_open(capsys: pytest.CaptureFixture[str]) -> None:
    rs = load_rules([ETOPEN])
    reasons = Counter(f.reason for f in rs.failures)
    with capsys.disabled():
        print(f"\nET Open: loaded {rs.loaded}, failed {rs.failed}, disabled {rs.disabled_count}")
        for reason, count in reasons.most_common():
            print(f"  {count:5d}  {reason}")
    assert len(rs.files) == 51
    assert rs.loaded >= 24_000
    assert rs.loaded + rs.failed == 24_827
    assert rs.disabled_count == 10_023
    assert len(rs.classifications) >= 30
    for failure in rs.failures:
        assert failure.file.endswith(".rules") and failure.line > 0 and failure.reason
    # Spot-check a rule the loader must resolve fully (sid 2029732: unescaped quote in pcre).
    by_sid = {r.sid: r for r in rs.rules}
    phishing = by_sid[2029732]
    assert phishing.pcres[0].source == "^[\"']?post"
    assert phishing.category == "Possible Social Engineering Attempted"
