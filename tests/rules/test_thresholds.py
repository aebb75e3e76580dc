"""threshold.config: parsing (errors with file:line) and its effect on alerts and actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from scapy.layers.inet import IP, UDP, Ether
from scapy.utils import wrpcap

from appliance.cli import main
from appliance.core.commands import Log, Verdict, VerdictKind
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import LINKTYPE_ETHERNET, PacketIn
from appliance.errors import InputError
from appliance.rules.loader import detection_from_text, load_detection
from appliance.rules.thresholds import (
    RateFilter,
    Suppress,
    ThresholdConfig,
    load_threshold_file,
    parse_threshold_lines,
)
from appliance.rules.variables import Variables

A, B, C = "192.168.1.10", "192.168.1.20", "203.0.113.5"


class Run:
    def __init__(self, rules: list[str], conf: str, mode: str = "ids") -> None:
        self.conf = parse_threshold_lines(conf.splitlines(), source="t.config")
        assert not self.conf.failures, self.conf.failures
        self.loaded = detection_from_text(rules, thresholds=self.conf)
        assert not self.loaded.failure_records()
        self.engine = Engine(EngineConfig(mode=mode), self.loaded.engine)
        self.n = 0
        self.ts = 1000.0

    def send(self, src: str, data: bytes, dst: str = C, sp: int = 5000,
             dt: float = 0.01) -> tuple[VerdictKind, list[dict[str, Any]]]:
        self.n += 1
        self.ts += dt
        pkt = Ether() / IP(src=src, dst=dst) / UDP(sport=sp, dport=9999) / data
        cmds = self.engine.handle(PacketIn(self.n, self.ts, bytes(pkt), LINKTYPE_ETHERNET))
        alerts = [c.record for c in cmds
                  if isinstance(c, Log) and c.record["event_type"] == "alert"]
        (v,) = [c for c in cmds if isinstance(c, Verdict)]
        return v.kind, alerts

    def sids(self, src: str, data: bytes, **kw: Any) -> list[int]:
        return [a["alert"]["signature_id"] for a in self.send(src, data, **kw)[1]]


# -- parsing ----------------------------------------------------------------------------


def test_parses_every_entry_kind_with_continuations_lists_and_variables() -> None:
    text = """
# comment
threshold gen_id 1, sig_id 10, type limit, track by_src, count 2, seconds 60
event_filter gen_id 1, sig_id 11, type both, track by_flow, count 3, seconds 5
suppress gen_id 1, sig_id 12
suppress gen_id 1, sig_id 12, track by_either, ip [10.0.0.0/8, 192.0.2.1]
suppress gen_id 0, sig_id 0, track by_dst, ip $HOME_NET
rate_filter gen_id 1, sig_id 13, track by_rule, count 5, seconds 10, \\
    new_action drop, timeout 30
rate_filter gen_id 1, sig_id 14, track by_both, count 1, seconds 1, new_action sdrop, timeout 1
"""
    conf = parse_threshold_lines(text.splitlines(), Variables(), "x.config")
    assert conf.failures == []
    assert conf.entries == 7
    assert conf.thresholds[(1, 10)].kind == "limit"
    assert conf.thresholds[(1, 11)].track == "by_flow"
    plain, listed = conf.suppress[(1, 12)]
    assert plain == Suppress(None, None)
    assert listed.track == "by_either"
    assert listed.suppresses(bytes([10, 1, 2, 3]), bytes([8, 8, 8, 8]))
    assert listed.suppresses(bytes([8, 8, 8, 8]), bytes([192, 0, 2, 1]))
    assert not listed.suppresses(bytes([8, 8, 8, 8]), bytes([192, 0, 2, 2]))
    (home,) = conf.suppress[(0, 0)]
    assert home.suppresses(b"\x08\x08\x08\x08", bytes([172, 16, 0, 1]))  # $HOME_NET
    assert conf.rate_filters[(1, 13)] == [RateFilter("by_rule", 5, 10, "drop", 30)]
    # sdrop parses (as Suricata's parser) but keeps the rule's action.
    assert conf.rate_filters[(1, 14)][0].new_action is None


@pytest.mark.parametrize(("line", "reason"), [
    ("threshold gen_id 1, sig_id 1, type often, track by_src, count 1, seconds 1",
     "invalid type 'often'"),
    ("threshold gen_id 1, sig_id 1, type limit, track by_host, count 1, seconds 1",
     "invalid track 'by_host'"),
    ("threshold gen_id 1, sig_id 1, type limit, track by_src, count 0, seconds 1",
     "count 0 out of range"),
    ("threshold gen_id 1, sig_id 1, type limit, track by_src, seconds 1", "missing count"),
    ("suppress gen_id 1, sig_id x", "sig_id must be a number"),
    ("suppress gen_id 1, sig_id 2, track by_src", "needs an ip"),
    ("suppress gen_id 1, sig_id 2, track by_src, ip $NOPE", "ip '$NOPE'"),
    ("suppress gen_id 1, sig_id 2, track by_rule, ip 1.2.3.4", "invalid track 'by_rule'"),
    ("suppress gen_id 0, sig_id 5", "gen_id 0 needs sig_id 0"),
    ("rate_filter gen_id 1, sig_id 1, track by_src, count 1, seconds 1, new_action block, "
     "timeout 1", "invalid new_action 'block'"),
    ("rate_filter gen_id 1, sig_id 1, track by_src, count 1, seconds 1, new_action drop",
     "missing timeout"),
    ("suppress gen_id 1, sig_id 1, colour blue", "unknown field 'colour'"),
    ("limit gen_id 1, sig_id 1", "unknown entry 'limit'"),
    ("suppress gen_id 1,, sig_id 1", "stray comma"),
])
def test_bad_lines_are_reported_with_file_and_line_and_skipped(line: str, reason: str) -> None:
    text = ["suppress gen_id 1, sig_id 7", "", line, "suppress gen_id 1, sig_id 8"]
    conf = parse_threshold_lines(text, source="bad.config")
    (f,) = conf.failures
    assert (f.file, f.line) == ("bad.config", 3)
    assert reason in f.reason
    assert set(conf.suppress) == {(1, 7), (1, 8)}  # the lines around it still load


def test_unreadable_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read threshold file"):
        load_threshold_file(tmp_path / "missing.config")
    bin_file = tmp_path / "bin.config"
    bin_file.write_bytes(b"\xff\xfe\x00garbage\n")
    conf = load_threshold_file(bin_file)  # nonsense bytes: a failure, not a crash
    assert len(conf.failures) == 1 and conf.failures[0].line == 1


# -- effect on detection --------------------------------------------------------------------


def test_suppress_keeps_the_match_but_not_the_alert() -> None:
    r = Run(['alert udp any any -> any any (msg:"set"; content:"login"; flowbits:set,in; '
             'sid:1;)',
             'alert udp any any -> any any (msg:"chk"; content:"cmd"; flowbits:isset,in; '
             'sid:2;)'],
            "suppress gen_id 1, sig_id 1")
    assert r.sids(A, b"login") == []  # suppressed...
    assert r.sids(A, b"cmd") == [2]  # ...but its flowbit was set


def test_suppress_by_src_and_by_dst_with_addresses() -> None:
    rule = ['alert udp any any -> any any (msg:"x"; content:"x"; sid:1;)']
    r = Run(rule, "suppress gen_id 1, sig_id 1, track by_src, ip [192.168.1.10,10.0.0.0/8]")
    assert r.sids(A, b"x") == []
    assert r.sids(B, b"x") == [1]
    r = Run(rule, "suppress gen_id 1, sig_id 1, track by_dst, ip 203.0.113.0/24")
    assert r.sids(A, b"x") == []
    assert r.sids(A, b"x", dst=B) == [1]


def test_suppressed_drop_rule_still_drops_inline() -> None:
    r = Run(['drop udp any any -> any any (msg:"x"; content:"x"; sid:1;)'],
            "suppress gen_id 1, sig_id 1", mode="ips")
    assert r.send(A, b"x") == (VerdictKind.DROP, [])


def test_config_threshold_replaces_the_rules_own() -> None:
    rules = ['alert udp any any -> any any (msg:"x"; content:"x"; '
             'threshold:type limit, track by_src, count 1, seconds 60; sid:1;)']
    r = Run(rules, "")
    assert [len(r.sids(A, b"x")) for _ in range(4)] == [1, 0, 0, 0]
    r = Run(rules, "threshold gen_id 1, sig_id 1, type limit, track by_src, count 3, "
                   "seconds 60")
    assert [len(r.sids(A, b"x")) for _ in range(5)] == [1, 1, 1, 0, 0]


def test_global_threshold_skips_rules_with_their_own() -> None:
    r = Run(['alert udp any any -> any any (msg:"own"; content:"o"; '
             'threshold:type limit, track by_src, count 2, seconds 60; sid:1;)',
             'alert udp any any -> any any (msg:"plain"; content:"p"; sid:2;)'],
            "threshold gen_id 0, sig_id 0, type threshold, track by_rule, count 3, seconds 60")
    # sid 2 alerts on every third match (type threshold, count 3) ...
    assert [len(r.sids(A, b"p")) for _ in range(6)] == [0, 0, 1, 0, 0, 1]
    # ... sid 1 keeps its own limit of 2.
    assert [len(r.sids(A, b"o")) for _ in range(4)] == [1, 1, 0, 0]


def test_threshold_decides_the_alert_not_the_action_inline() -> None:
    # Suricata 7: drop/reject apply to every match; the threshold only gates the alert.
    r = Run(['drop udp any any -> any any (msg:"x"; content:"x"; sid:1;)'],
            "threshold gen_id 1, sig_id 1, type threshold, track by_src, count 3, seconds 60",
            mode="ips")
    got = [r.send(A, b"x", sp=5000 + i) for i in range(3)]
    assert [k for k, _ in got] == [VerdictKind.DROP] * 3
    assert [len(a) for _, a in got] == [0, 0, 1]


def test_backoff_threshold_alerts_on_count_then_each_multiple() -> None:
    r = Run(['alert udp any any -> any any (msg:"x"; content:"x"; '
             'threshold:type backoff, track by_flow, count 2, multiplier 3; sid:1;)'], "")
    alerted = [n for n in range(1, 20) if r.sids(A, b"x")]
    assert alerted == [2, 6, 18]
    other = [n for n in range(1, 4) if r.sids(A, b"x", sp=5001)]  # per flow
    assert other == [2]


def test_rate_filter_changes_the_action_for_its_timeout() -> None:
    r = Run(['alert udp any any -> any any (msg:"x"; content:"x"; sid:1;)'],
            "rate_filter gen_id 1, sig_id 1, track by_src, count 2, seconds 10, "
            "new_action drop, timeout 5", mode="ips")
    # Distinct flows (source ports), so a drop does not carry over through the flow.
    seen = [r.send(A, b"x", sp=6000 + i) for i in range(4)]
    assert [k for k, _ in seen] == [VerdictKind.ACCEPT, VerdictKind.ACCEPT,
                                    VerdictKind.DROP, VerdictKind.DROP]
    assert [a[0]["alert"]["action"] for _, a in seen] == ["allowed", "allowed", "blocked",
                                                          "blocked"]
    # Another source has its own count.
    assert r.send(B, b"x", sp=7000)[0] is VerdictKind.ACCEPT
    # After the timeout the rule's own action is back.
    kind, alerts = r.send(A, b"x", sp=6100, dt=6.0)
    assert kind is VerdictKind.ACCEPT and alerts[0]["alert"]["action"] == "allowed"


def test_rate_filter_to_pass_stops_alerting() -> None:
    r = Run(['alert udp any any -> any any (msg:"x"; content:"x"; sid:1;)'],
            "rate_filter gen_id 1, sig_id 1, track by_rule, count 1, seconds 60, "
            "new_action pass, timeout 60")
    assert [len(r.sids(A, b"x", sp=8000 + i)) for i in range(3)] == [1, 0, 0]


def test_drop_rule_in_ids_mode_ends_the_flow_only_when_ip_only() -> None:
    # A payload rule's drop concerns its packet: IDS mode goes on alerting on the flow.
    r = Run(['drop udp any any -> any any (msg:"x"; content:"x"; sid:1;)'], "")
    assert [len(r.sids(A, b"x")) for _ in range(3)] == [1, 1, 1]
    # An IP-only rule's drop is the flow's: no more inspection, as Suricata 7.
    r = Run(['drop udp 192.168.1.10 any -> any any (msg:"ip"; sid:2;)'], "")
    assert [len(r.sids(A, b"x")) for _ in range(3)] == [1, 0, 0]


# -- where the file comes from --------------------------------------------------------------


def _rules_dir(tmp_path: Path, config: str | None) -> Path:
    d = tmp_path / "rules"
    d.mkdir(parents=True)
    (d / "a.rules").write_text('alert udp any any -> any any (msg:"x"; content:"x"; sid:1;)\n')
    if config is not None:
        (d / "threshold.config").write_text(config)
    return d


def test_threshold_config_beside_the_rules_is_used(tmp_path: Path) -> None:
    d = _rules_dir(tmp_path, "suppress gen_id 1, sig_id 1\nbogus line\n")
    loaded = load_detection([d])
    assert loaded.thresholds is not None and loaded.thresholds.entries == 1
    (bad,) = loaded.threshold_failures
    assert bad.file == str(d / "threshold.config") and bad.line == 2
    assert bad in loaded.failure_records()
    other = tmp_path / "other.config"
    other.write_text("rate_filter gen_id 1, sig_id 1, track by_rule, count 1, seconds 1, "
                     "new_action drop, timeout 1\n")
    given = load_detection([d], threshold_file=other)  # the given file, not the one beside
    assert given.thresholds is not None
    assert given.thresholds.sources == [str(other)] and not given.thresholds.suppress
    assert load_detection([_rules_dir(tmp_path / "n", None)]).thresholds is None


def test_replay_threshold_file_option(tmp_path: Path) -> None:
    d = _rules_dir(tmp_path, None)
    pcap = tmp_path / "x.pcap"
    wrpcap(str(pcap), [Ether() / IP(src=A, dst=C) / UDP(sport=1, dport=2) / b"x"] * 3)
    conf = tmp_path / "t.config"
    conf.write_text("threshold gen_id 1, sig_id 1, type limit, track by_rule, count 2, "
                    "seconds 60\nsuppress gen_id 1\n")
    eve = tmp_path / "eve.json"
    res = CliRunner().invoke(main, ["replay", "--rules", str(d), "--threshold-file", str(conf),
                                    "--eve", str(eve), str(pcap)])
    assert res.exit_code == 0, res.output
    assert f"{conf}:2: threshold.config: missing sig_id" in res.output
    assert eve.read_text().count('"event_type":"alert"') == 2
    res = CliRunner().invoke(main, ["replay", "--rules", str(d), "--threshold-file",
                                    str(tmp_path / "nope"), str(pcap)])
    assert res.exit_code == 2 and "cannot read threshold file" in res.output


def test_config_without_entries_changes_nothing() -> None:
    conf = ThresholdConfig()
    assert conf.limits(1, 5, (None, None)).empty


def test_rules_check_reports_threshold_lines(tmp_path: Path) -> None:
    d = _rules_dir(tmp_path, "suppress gen_id 1, sig_id 1\n"
                             "rate_filter gen_id 1, sig_id 1, track by_src\n")
    res = CliRunner().invoke(main, ["rules", "check", "--json", "--strict", str(d)])
    assert res.exit_code == 1
    import json
    out = json.loads(res.output)
    assert out["thresholds"] == 1 and out["loaded"] == 1
    (f,) = out["failures"]
    assert f["file"] == str(d / "threshold.config") and f["line"] == 2
    assert "missing count" in f["reason"]
