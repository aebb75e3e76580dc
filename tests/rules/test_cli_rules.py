"""``rules check``: text and JSON summaries, --strict, missing paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli_rules import rules

GOOD = 'alert tcp any any -> any 80 (msg:"ok"; content:"a"; sid:1; rev:1;)\n'
BAD = 'alert tcp any any -> any 80 (msg:"bad"; frobnicate; sid:2;)\n'
DISABLED = '# alert tcp any any -> any 80 (msg:"off"; sid:3;)\n'


@pytest.fixture
def ruleset_file(tmp_path: Path) -> Path:
    f = tmp_path / "local.rules"
    f.write_text(GOOD + BAD + DISABLED + BAD.replace("sid:2", "sid:4"))
    return f


def test_check_text_summary(ruleset_file: Path) -> None:
    result = CliRunner().invoke(rules, ["check", str(ruleset_file)])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "files: 1  loaded: 1  failed: 2  disabled: 1"
    assert lines[1] == "failures by reason:"
    assert lines[2] == "       2  unsupported keyword 'frobnicate'"
    assert lines[3].strip() == f"{ruleset_file}:2 sid 2"
    assert lines[4].strip() == f"{ruleset_file}:4 sid 4"


def test_check_json(ruleset_file: Path) -> None:
    result = CliRunner().invoke(rules, ["check", "--json", str(ruleset_file)])
    assert result.exit_code == 0
    data = json.loads(result.output)  # exactly one JSON object
    assert data["loaded"] == 1 and data["failed"] == 2 and data["disabled"] == 1
    assert data["failures"] == [
        {"file": str(ruleset_file), "line": 2, "sid": 2,
         "reason": "unsupported keyword 'frobnicate'"},
        {"file": str(ruleset_file), "line": 4, "sid": 4,
         "reason": "unsupported keyword 'frobnicate'"},
    ]
    assert data["reasons"] == {"unsupported keyword 'frobnicate'": 2}


def test_strict_exit_status(ruleset_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(rules, ["check", "--strict", str(ruleset_file)]).exit_code == 1
    clean = tmp_path / "clean.rules"
    clean.write_text(GOOD)
    ok = runner.invoke(rules, ["check", "--strict", "--json", str(clean)])
    assert ok.exit_code == 0
    assert json.loads(ok.output)["failures"] == []


def test_missing_path_is_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.rules"
    result = CliRunner().invoke(rules, ["check", str(missing)])
    assert result.exit_code == 2
    assert result.output == f"Error: no such rule file or directory: {missing}\n"
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_paths_required() -> None:
    result = CliRunner().invoke(rules, ["check"])
    assert result.exit_code == 2
    assert "Missing argument 'PATHS...'" in result.output
