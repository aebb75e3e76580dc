"""Config loading: Suricata-named keys, clear errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import config_from_dict, load_config, parse_size
from appliance.core.flows import PC_TCP, PC_UDP
from appliance.errors import ConfigError


def test_defaults_match_suricata() -> None:
    cfg = load_config(None)
    fl = cfg.engine.flow
    assert fl.memcap == 128 * 1024 * 1024
    assert fl.emergency_recovery == 30
    assert fl.timeouts[PC_TCP][0].established == 600
    assert fl.timeouts[PC_UDP][1].new == 10
    assert fl.midstream is False


def test_sizes() -> None:
    assert parse_size("128mb", "x") == 128 * 1024**2
    assert parse_size("64kb", "x") == 64 * 1024
    assert parse_size("1gb", "x") == 1024**3
    assert parse_size(4096, "x") == 4096
    with pytest.raises(ConfigError, match=r"flow\.memcap"):
        parse_size("lots", "flow.memcap")


def test_yaml_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("flow:\n  memcap: 1mb\nflow-timeouts:\n  udp:\n    new: 5\n"
                 "    emergency-new: 1\nstream:\n  midstream: true\n")
    cfg = load_config(f)
    assert cfg.engine.flow.memcap == 1024**2
    assert cfg.engine.flow.timeouts[PC_UDP][0].new == 5
    assert cfg.engine.flow.timeouts[PC_UDP][0].established == 300  # untouched
    assert cfg.engine.flow.timeouts[PC_UDP][1].new == 1
    assert cfg.engine.flow.midstream is True


@pytest.mark.parametrize("doc,match", [
    ({"flw": {}}, "unknown key 'flw'"),
    ({"flow": {"memcap": "big"}}, "flow.memcap"),
    ({"flow": {"emergency-recovery": 130}}, "percentage"),
    ({"flow-timeouts": {"udp": {"new": -1}}}, "flow-timeouts.udp.new"),
    ({"flow-timeouts": {"sctp": {}}}, "unknown key 'sctp'"),
    ({"stream": {"midstream": "yes please"}}, "stream.midstream"),
    ({"flow": [1, 2]}, "expected a mapping"),
])
def test_bad_config_names_the_key(doc: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_dict(doc, "t.yaml")


def test_bad_yaml_gives_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("flow:\n  memcap: [1\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: invalid YAML"):
        load_config(f)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("/nonexistent/appliance.yaml")


def test_stream_section(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("stream:\n  depth: 2mb\n  checksum-validation: no\n  async-oneside: true\n"
                 "  host-os-policy:\n    windows: [10.0.0.0/8]\n    linux: ['fd00::/8']\n")
    sc = load_config(f).engine.flow.stream
    assert sc.depth == 2 * 1024 * 1024
    assert sc.checksum_validation == "no"
    assert sc.async_oneside is True
    assert sc.host_os_policy == (("windows", ("10.0.0.0/8",)), ("linux", ("fd00::/8",)))
    with pytest.raises(ConfigError, match="unknown policy"):
        config_from_dict({"stream": {"host-os-policy": {"beos": ["1.2.3.0/24"]}}})
    with pytest.raises(ConfigError, match="bad CIDR"):
        config_from_dict({"stream": {"host-os-policy": {"linux": ["1.2.3.0/33"]}}})


def test_heuristics_thresholds_from_config() -> None:
    cfg = config_from_dict({"heuristics": {"scan": {"vertical_ports": 50},
                                           "beacon": {"enabled": False}}})
    h = cfg.engine.heuristics
    assert h is not None and h.scan.vertical_ports == 50 and h.beacon.enabled is False
    assert config_from_dict({"heuristics": {"enabled": False}}).engine.heuristics is None
    with pytest.raises(ConfigError, match="unknown heuristic 'scna'"):
        config_from_dict({"heuristics": {"scna": {"x": 1}}})
    with pytest.raises(ConfigError, match="has no setting 'ports'"):
        config_from_dict({"heuristics": {"scan": {"ports": 1}}})


def test_example_config_loads_and_states_the_defaults() -> None:
    """rules/appliance.yaml documents every section with the default values."""
    from dataclasses import replace

    from appliance.config import Config

    path = Path(__file__).resolve().parents[1] / "rules" / "appliance.yaml"
    cfg = load_config(path)
    base = Config().engine
    eng = cfg.engine
    assert eng.flow.memcap == base.flow.memcap
    assert eng.flow.stream.depth == base.flow.stream.depth
    assert eng.flow.stream.reassembly_memcap == base.flow.stream.reassembly_memcap
    assert eng.defrag.memcap == base.defrag.memcap
    assert eng.app_layer_memcap == base.app_layer_memcap
    assert eng.exception_policy == base.exception_policy
    assert eng.flow.stream.host_os_policy == (("linux", ("10.203.0.0/24",)),)
    assert replace(eng, flow=base.flow) == base  # nothing else differs from the defaults


def test_bypassed_timeouts_are_read() -> None:
    cfg = config_from_dict({"flow-timeouts": {"tcp": {"bypassed": 30,
                                                      "emergency-bypassed": 7}}})
    norm, emerg = cfg.engine.flow.timeouts[PC_TCP]
    assert (norm.bypassed, emerg.bypassed) == (30, 7)
    assert norm.established == 600  # the others keep their defaults
