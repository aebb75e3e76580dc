"""`appliance replay` end to end on the captures of pcaps/ (click's CliRunner, no I/O
beyond the files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from appliance.cli import main
from appliance.core.decode import Decoder
from appliance.io.pcap import PcapReader

PCAPS = Path(__file__).resolve().parents[1] / "pcaps"


def replay(*args: str) -> Result:
    return CliRunner().invoke(main, ["replay", *args])


def lines(text: str) -> list[str]:
    return text.splitlines()


def eve_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_replay_of_a_good_pcap_prints_a_summary() -> None:
    r = replay(str(PCAPS / "linktype-eth.pcap"))
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    err = lines(r.stderr)
    assert len(err) == 1
    assert err[0].startswith("packets: 11  flows: 2  alerts: 0  anomalies: 0  actions: 0  "
                             "seconds: ")


def test_quiet_prints_nothing() -> None:
    r = replay("-q", str(PCAPS / "linktype-eth.pcap"))
    assert r.exit_code == 0
    assert (r.stdout, r.stderr) == ("", "")


def test_eve_dash_writes_json_lines_to_stdout() -> None:
    r = replay("--eve", "-", str(PCAPS / "linktype-sll2.pcap"))
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in lines(r.stdout)]
    # The TCP exchange is an HTTP request and response: its http record, then the flows.
    assert [x["event_type"] for x in recs] == ["http", "flow", "flow", "stats"]
    assert recs[0]["http"]["http_method"] == "GET"
    assert sorted(x["proto"] for x in recs[1:3]) == ["TCP", "UDP"]
    assert recs[-1]["stats"]["decoder"]["pkts"] == 11
    assert recs[-1]["stats"]["decoder"]["sll"] == 11
    assert "packets: 11" in r.stderr


def test_several_pcaps_are_replayed_through_one_engine(tmp_path: Path) -> None:
    eve = tmp_path / "eve.json"
    r = replay("--eve", str(eve), str(PCAPS / "linktype-eth.pcap"),
               str(PCAPS / "linktype-raw.pcap"))
    assert r.exit_code == 0, r.output
    assert lines(r.stderr)[0].startswith("packets: 22  flows: 3  ")
    flows = [x for x in eve_records(eve) if x["event_type"] == "flow"]
    got = sorted((f["proto"], f["flow"]["pkts_toserver"], f["flow"]["pkts_toclient"],
                  f["flow"]["reason"]) for f in flows)
    # the second file's SYN reuses the first file's closed connection: a new TCP flow;
    # the UDP pair of both files is one flow
    assert got == [("TCP", 5, 4, "shutdown"), ("TCP", 5, 4, "timeout"),
                   ("UDP", 2, 2, "shutdown")]


def test_anomalies_of_malformed_pcap_are_logged(tmp_path: Path) -> None:
    eve = tmp_path / "eve.json"
    r = replay("--eve", str(eve), str(PCAPS / "malformed.pcap"))
    assert r.exit_code == 0, r.output
    every = [x for x in eve_records(eve) if x["event_type"] == "anomaly"]
    anomalies = [x for x in every if x["anomaly"]["type"] == "decode"]
    # one anomaly record per decoder event, tagged with its record number (the TCP ones
    # crafted byte by byte also carry bad checksums: stream anomalies, counted too)
    d = Decoder()
    with PcapReader(PCAPS / "malformed.pcap") as rd:
        expected = [(p.id, e) for p in rd for e in d.decode(p.data, p.linktype, p.ts).events or []]
    assert [(x["pcap_cnt"], x["anomaly"]["event"]) for x in anomalies] == expected
    assert len(expected) >= 20  # see tests/core/test_decode.py for each record's event
    assert anomalies[0]["anomaly"] == {"type": "decode",
                                       "event": "decoder.ethernet.pkt_too_small"}
    assert f"anomalies: {len(every)}  " in r.stderr


def _one_error_line(r: Result) -> str:
    assert r.exit_code == 2
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    err = lines(r.stderr)
    assert len(err) == 1, r.stderr
    return err[0]


def test_missing_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "absent.pcap"
    assert _one_error_line(replay(str(path))) == f"appliance: error: {path}: no such file"


def test_non_pcap_exits_2_with_one_line() -> None:
    path = PCAPS / "not-a-pcap.bin"
    assert _one_error_line(replay(str(path))) == (
        f"appliance: error: {path}: not a pcap or pcapng file (magic 54686973)")


def test_missing_file_among_good_ones_processes_nothing(tmp_path: Path) -> None:
    eve = tmp_path / "eve.json"
    r = replay("--eve", str(eve), str(PCAPS / "linktype-eth.pcap"), str(tmp_path / "x.pcap"))
    assert _one_error_line(r) == f"appliance: error: {tmp_path / 'x.pcap'}: no such file"
    assert not eve.exists()


def test_unwritable_eve_path_exits_2(tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "eve.json"
    line = _one_error_line(replay("--eve", str(target), str(PCAPS / "linktype-eth.pcap")))
    assert line.startswith(f"appliance: error: {target}: cannot write EVE output: ")


def test_bad_option_exits_2_without_traceback() -> None:
    r = replay("--no-such-option", str(PCAPS / "linktype-eth.pcap"))
    assert r.exit_code == 2
    assert "Traceback" not in r.output
    assert r.stdout == ""
    errors = [x for x in lines(r.stderr) if x.startswith("Error:")]
    assert errors == ["Error: No such option '--no-such-option'."]


def test_no_pcap_argument_is_a_usage_error() -> None:
    r = replay()
    assert r.exit_code == 2
    assert [x for x in lines(r.stderr) if x.startswith("Error:")] == [
        "Error: Missing argument 'PCAPS...'."]


def test_truncated_pcap_exits_0_processes_every_complete_packet_and_warns(
        tmp_path: Path) -> None:
    eve = tmp_path / "eve.json"
    path = PCAPS / "truncated.pcap"
    r = replay("--eve", str(eve), str(path))
    assert r.exit_code == 0, r.output
    err = lines(r.stderr)
    assert err[0] == (f"appliance: warning: {path}: truncated at byte 699 after 9 complete "
                      "packets (packet data cut short)")
    assert err[1].startswith("packets: 9  flows: 1  ")
    assert len(err) == 2
    recs = eve_records(eve)
    (flow,) = [x for x in recs if x["event_type"] == "flow"]
    assert (flow["flow"]["pkts_toserver"], flow["flow"]["pkts_toclient"]) == (9, 0)
    assert recs[-1]["stats"]["decoder"]["pkts"] == 9


def test_flow_timeouts_split_udp_by_timeout_and_tcp_by_reuse(tmp_path: Path) -> None:
    eve = tmp_path / "eve.json"
    r = replay("--eve", str(eve), str(PCAPS / "flow-timeouts.pcap"))
    assert r.exit_code == 0, r.output
    recs = eve_records(eve)
    flows = [x for x in recs if x["event_type"] == "flow"]
    got = sorted(
        (f["flow"]["start"], f["proto"], f["src_ip"], f["src_port"], f["dest_port"],
         f["flow"]["pkts_toserver"], f["flow"]["pkts_toclient"], f["flow"]["state"],
         f["flow"]["reason"], f.get("tcp", {}).get("state"), f["timestamp"])
        for f in flows)
    t = "2023-11-14T22:"
    assert got == [
        # UDP, then 400 s of silence: the established UDP timeout (300 s) ends it when
        # the same 5-tuple comes back
        (t + "13:20.000000+0000", "UDP", "192.168.10.1", 7000, 7001, 1, 1, "established",
         "timeout", None, t + "20:00.000000+0000"),
        # TCP closed by FIN/FIN; a new SYN on the same ports ends it (session reuse).
        # Suricata 8 names this reason "tcp_reuse"; this engine logs "timeout".
        (t + "13:21.000000+0000", "TCP", "192.168.20.1", 42000, 8080, 5, 4, "closed",
         "timeout", "closed", t + "13:22.000000+0000"),
        (t + "13:22.000000+0000", "TCP", "192.168.20.1", 42000, 8080, 3, 2, "established",
         "shutdown", "established", t + "20:00.100000+0000"),
        # midstream: no SYN, so no TCP session is tracked (stream.midstream is off) and
        # the flow stays new; the TCP new timeout (60 s) ends it
        (t + "13:23.000000+0000", "TCP", "192.168.30.1", 43000, 9090, 2, 1, "new",
         "timeout", None, t + "20:00.000000+0000"),
        (t + "20:00.000000+0000", "UDP", "192.168.10.1", 7000, 7001, 1, 1, "established",
         "shutdown", None, t + "20:00.100000+0000"),
    ]
    stats = recs[-1]["stats"]
    assert stats["flow"]["total"] == 5
    assert stats["flow"]["tcp_reuse"] == 1
    assert "packets: 21  flows: 5  " in r.stderr
