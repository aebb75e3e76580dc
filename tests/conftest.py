"""Shared test helpers: where the real test data lives, and small packet builders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PCAPS = REPO / "pcaps"


def shared_pcap(name: str) -> Path:
    p = SHARED_DATA / "pcaps" / name
    if not p.exists():
        pytest.skip(f"{p} is not present (../shared/data is laid beside the checkout)")
    return p


@pytest.fixture(scope="session")
def eve_validator():  # type: ignore[no-untyped-def]
    """A jsonschema validator for Suricata 7's EVE schema."""
    jsonschema = pytest.importorskip("jsonschema")
    path = SHARED_DATA / "eve" / "schema.json"
    if not path.exists():
        pytest.skip(f"{path} is not present")
    schema = json.loads(path.read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)
