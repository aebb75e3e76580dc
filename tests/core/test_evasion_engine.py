"""Every evasion capture (pcaps/evasion/, pcaps/EVASION.md) replayed through the whole
Engine with rules on the bytes the receiver gets: the HTTP parser (http.uri), the
reassembled stream (tcp-stream) and a plain tcp rule (both views) must alert on the
receiver's bytes and the stream rules must stay silent on the decoy bytes it never gets.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from appliance.core.commands import Log
from appliance.core.defrag import DefragConfig
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import PacketIn, Shutdown
from appliance.core.flows import FlowConfig
from appliance.core.stream import StreamConfig
from appliance.io.pcap import PcapReader
from appliance.rules.loader import detection_from_text
from tests.conftest import PCAPS
from tests.core.test_stream import BUILD

EVIL_URI, EVIL_STREAM, EVIL_TCP, EVIL_HTTP_TCP = 1, 2, 3, 4
DECOY_URI, DECOY_STREAM = 11, 12
RULES = [
    'alert http any any -> any any (msg:"evil uri"; http.uri; content:"/evil.exe"; sid:1;)',
    'alert tcp-stream any any -> any any (msg:"evil stream"; flow:to_server; '
    'content:"GET /evil.exe HTTP/1.0"; sid:2;)',
    # Plain tcp: packets and stream alike; the request is split over segments (or
    # fragments, or urgent data) in most cases, so only the stream view can see it.
    'alert tcp any any -> any 80 (msg:"evil tcp"; flow:to_server; content:"/evil.exe"; '
    'sid:3;)',
    'alert tcp any any -> any any (msg:"evil request line"; flow:to_server,established; '
    'content:"GET"; depth:3; content:"/evil.exe"; distance:1; within:9; sid:4;)',
    'alert http any any -> any any (msg:"decoy uri"; http.uri; content:"/good.exe"; sid:11;)',
    'alert tcp-stream any any -> any any (msg:"decoy stream"; content:"/good.exe"; sid:12;)',
]


def replay(path: Path, stream: StreamConfig, rules: list[str] = RULES,
           defrag: DefragConfig | None = None) -> tuple[list[int], list[str]]:
    """The alerted sids (one entry per alert) and the anomaly events of a replay."""
    loaded = detection_from_text(rules)
    assert not loaded.parse_failures and not loaded.program.failures
    cfg = EngineConfig(flow=FlowConfig(stream=stream), defrag=defrag or DefragConfig())
    eng = Engine(cfg, loaded.engine)
    recs: list[dict[str, Any]] = []
    with PcapReader(path) as r:
        for ev in r:
            cmds = eng.handle(PacketIn(ev.id, ev.ts, ev.data, ev.linktype))
            recs += [c.record for c in cmds if isinstance(c, Log)]
    recs += [c.record for c in eng.handle(Shutdown()) if isinstance(c, Log)]
    assert eng.stats.errors == 0
    sids = [r["alert"]["signature_id"] for r in recs if r["event_type"] == "alert"]
    anomalies = [r["anomaly"].get("event", "") for r in recs if r["event_type"] == "anomaly"]
    return sids, anomalies


def _policy_for(case: Any) -> tuple[str, bytes]:
    """A host OS policy under which the receiver gets the evil request, if any (else the
    default policy): the one the test replays with, and the bytes the receiver gets."""
    for pol in BUILD.ALL_POLICIES:
        if case.expected.get(pol, case.expected["*"]) == BUILD.REQ:
            return pol, BUILD.REQ
    return "bsd", case.expected.get("bsd", case.expected["*"])


CASES = [(c.name, v) for c in BUILD.CASES for v in c.versions]


@pytest.mark.parametrize(("name", "ipver"), CASES)
def test_evasion_case_is_detected_through_the_engine(name: str, ipver: int) -> None:
    case = next(c for c in BUILD.CASES if c.name == name)
    policy, got = _policy_for(case)
    stream = replace(StreamConfig(default_policy=policy), **case.config)
    sids, anomalies = replay(PCAPS / "evasion" / f"{name}-v{ipver}.pcap", stream)
    event = case.event_v6 if ipver == 6 and case.event_v6 else case.event
    if event is not None:
        assert event in anomalies, anomalies
    if got == BUILD.REQ:
        # The receiver's request: every view alerts, once; the decoys never reach it.
        for sid in (EVIL_URI, EVIL_STREAM, EVIL_TCP, EVIL_HTTP_TCP):
            assert sids.count(sid) == 1, (sid, sids)
        assert DECOY_URI not in sids and DECOY_STREAM not in sids, sids
    else:
        # retransmit-different: every receiver keeps 'GET /good.exe'. The stream and the
        # HTTP parser see that; the differing copy is still visible in the packet view.
        assert got.startswith(b"GET /good.exe"), got
        assert sids.count(DECOY_URI) == 1 and sids.count(DECOY_STREAM) == 1, sids
        assert EVIL_URI not in sids and EVIL_STREAM not in sids, sids
        assert sids.count(EVIL_TCP) == 1, sids


@pytest.mark.parametrize("name", ["overlap-same-start-longer", "overlap-starts-before"])
@pytest.mark.parametrize("ipver", [4, 6])
def test_overlap_cases_follow_the_receivers_policy(name: str, ipver: int) -> None:
    # Under "first" the receiver keeps the decoy bytes: the stream says so, not evil.
    case = next(c for c in BUILD.CASES if c.name == name)
    assert case.expected.get("first", case.expected["*"]) != BUILD.REQ
    sids, anomalies = replay(PCAPS / "evasion" / f"{name}-v{ipver}.pcap",
                             StreamConfig(default_policy="first"))
    assert EVIL_STREAM not in sids and EVIL_URI not in sids, sids
    assert "stream.reassembly_overlap_different_data" in anomalies


def test_urgent_byte_inline_policy_hides_the_uri_as_the_receiver_would() -> None:
    # With SO_OOBINLINE receivers the X stays in the URI: then /evil.exe is not there.
    sids, _ = replay(PCAPS / "evasion" / "urgent-pointer-v4.pcap",
                     StreamConfig(urgent_policy="inline"),
                     [*RULES, 'alert http any any -> any any (http.uri; '
                      'content:"/evXil.exe"; sid:21;)'])
    assert 21 in sids and EVIL_URI not in sids and EVIL_STREAM not in sids


# Novak's fragments: one rule per distinct payload a policy rebuilds.
NOVAK_RULES = [
    f'alert udp any any -> any 5300 (msg:"{p}"; content:"{BUILD.NOVAK.expected[p].decode()}"; '
    f'sid:{100 + i};)' for i, p in enumerate(["first", "bsd", "linux", "last"])]
NOVAK_SID = {"first": 100, "windows": 100, "solaris": 100, "bsd": 101, "linux": 102,
             "last": 103}


@pytest.mark.parametrize("policy", sorted(NOVAK_SID))
def test_novak_fragments_alert_on_what_the_policy_rebuilds(policy: str) -> None:
    sids, anomalies = replay(PCAPS / "evasion" / "frag-overlap-novak-v4.pcap",
                             StreamConfig(), NOVAK_RULES, DefragConfig(policy=policy))
    assert sids == [NOVAK_SID[policy]]
    assert "decoder.ipv4.frag_overlap" in anomalies


def test_novak_fragments_over_ipv6_are_dropped_not_inspected() -> None:
    sids, anomalies = replay(PCAPS / "evasion" / "frag-overlap-novak-v6.pcap",
                             StreamConfig(), NOVAK_RULES, DefragConfig(policy="last"))
    assert sids == []
    assert anomalies.count("decoder.ipv6.frag_overlap") == 1


# -- the two views of TCP payload (issue 3 item 5) -------------------------------------------

VIEW_RULES = [
    'alert tcp any any -> any any (msg:"plain"; content:"split-me"; sid:31;)',
    'alert tcp-pkt any any -> any any (msg:"pkt"; content:"split-me"; sid:32;)',
    'alert tcp-stream any any -> any any (msg:"stream"; content:"split-me"; sid:33;)',
    'alert tcp any any -> any any (msg:"no_stream"; flow:no_stream; content:"split-me"; '
    'sid:34;)',
    'alert tcp any any -> any any (msg:"only_stream"; flow:only_stream; content:"split-me"; '
    'sid:35;)',
    'alert tcp any any -> any any (msg:"dsize makes it packet-only"; dsize:>0; '
    'content:"split-me"; sid:36;)',
]


def _conn(chunks: list[bytes]) -> list[bytes]:
    from scapy.layers.inet import IP, TCP, Ether
    c, s = "192.0.2.10", "198.51.100.20"
    out = [Ether() / IP(src=c, dst=s) / TCP(sport=40000, dport=7000, flags="S", seq=99),
           Ether() / IP(src=s, dst=c) / TCP(sport=7000, dport=40000, flags="SA", seq=499,
                                            ack=100),
           Ether() / IP(src=c, dst=s) / TCP(sport=40000, dport=7000, flags="A", seq=100,
                                            ack=500)]
    seq = 100
    for ch in chunks:
        out.append(Ether() / IP(src=c, dst=s) / TCP(sport=40000, dport=7000, flags="PA",
                                                     seq=seq, ack=500) / ch)
        seq += len(ch)
    return [bytes(p) for p in out]


def _run_frames(frames: list[bytes], rules: list[str]) -> list[int]:
    loaded = detection_from_text(rules)
    assert not loaded.parse_failures and not loaded.program.failures
    eng = Engine(EngineConfig(), loaded.engine)
    sids = []
    for i, fr in enumerate(frames, 1):
        for c in eng.handle(PacketIn(i, 1000.0 + i / 100, fr, 1)):
            if isinstance(c, Log) and c.record["event_type"] == "alert":
                sids.append(c.record["alert"]["signature_id"])
    return sids


def test_content_split_over_two_segments_matches_on_the_stream_only() -> None:
    sids = _run_frames(_conn([b"xx split", b"-me yy"]), VIEW_RULES)
    assert sorted(sids) == [31, 33, 35]


def test_content_in_one_segment_alerts_once_per_rule() -> None:
    sids = _run_frames(_conn([b"a split-me b", b"more bytes"]), VIEW_RULES)
    assert sorted(sids) == [31, 32, 33, 34, 35, 36]


def test_stream_match_is_not_reported_again_by_later_chunks() -> None:
    from appliance.core.detect.signatures import STREAM_TAIL
    pad = b"." * STREAM_TAIL
    sids = _run_frames(_conn([b"split", b"-me", b"x", b"y", pad, b"spl", b"it-me"]),
                       VIEW_RULES)
    # Once for the first occurrence (not again while it is in the inspected tail), once
    # for the second, which no single packet holds.
    assert sorted(sids) == [31, 31, 33, 33, 35, 35]


def test_a_second_occurrence_near_the_first_is_left_to_the_packet_view() -> None:
    # Documented limit (signatures.STREAM_TAIL): a stream match also possible within
    # the already inspected tail is not new; a second occurrence within STREAM_TAIL
    # bytes of the first is seen by the packet view only when one packet holds it.
    sids = _run_frames(_conn([b"split", b"-me", b"x", b"y", b" split-me"]), VIEW_RULES)
    assert sorted(sids) == [31, 31, 32, 33, 34, 35, 36]


def test_tfo_data_matched_on_the_syn_is_not_reported_again_from_the_stream() -> None:
    from scapy.layers.inet import IP, TCP, Ether
    c, s = "192.0.2.10", "198.51.100.20"
    frames = [bytes(p) for p in (
        Ether() / IP(src=c, dst=s) / TCP(sport=40000, dport=7000, flags="S", seq=99)
        / b"a split-me b",
        Ether() / IP(src=s, dst=c) / TCP(sport=7000, dport=40000, flags="SA", seq=499,
                                         ack=100 + 12),
        Ether() / IP(src=c, dst=s) / TCP(sport=40000, dport=7000, flags="A", seq=112,
                                         ack=500))]
    sids = _run_frames(frames, VIEW_RULES)
    # the SYN's payload (packet view: every packet rule), then the SYN/ACK delivers the
    # same bytes to the stream: only the stream-only rules report them there
    assert sorted(sids) == [31, 32, 33, 34, 35, 36]


def test_data_held_behind_a_hole_is_inspected_when_an_rst_ends_the_session() -> None:
    # suricata-verify tcp-rst-unacked-stream-07: the request's second line is split over
    # two segments held behind a hole (bytes 16-31 never seen); the server resets. Stream
    # rules see the held bytes on the RST; the HTTP parser never does (it cannot cross a
    # hole nobody acknowledged), and no gap anomaly is raised.
    from scapy.layers.inet import IP, TCP, Ether
    c, s = "192.0.2.10", "198.51.100.20"
    frames = _conn([b"GET / HTTP/1.0\r\n"])
    for seq, data in ((132, b"User-Agent: "), (144, b"Mozilla\r\n\r\n")):
        frames.append(bytes(Ether() / IP(src=c, dst=s) / TCP(
            sport=40000, dport=7000, flags="A", seq=seq, ack=500) / data))
    rst = bytes(Ether() / IP(src=s, dst=c) / TCP(sport=7000, dport=40000, flags="RA",
                                                 seq=500, ack=116))
    rules = ['alert tcp any any -> any any (msg:"raw"; content:"User-Agent: Mozilla"; sid:1;)',
             'alert http any any -> any any (msg:"app"; http.user_agent; content:"Mozilla"; '
             'sid:2;)',
             'alert tcp any any -> any any (msg:"gap"; stream-event:reassembly_seq_gap; '
             'sid:3;)']
    assert _run_frames(frames, rules) == []
    assert _run_frames([*frames, rst], rules) == [1]


def test_data_held_behind_a_hole_is_inspected_when_the_flow_ends() -> None:
    # No RST: the flow simply ends (here: the end of the replay). Its held bytes are
    # judged once, on a pseudo packet, as Suricata does at flow timeout.
    from scapy.layers.inet import IP, TCP, Ether
    c, s = "192.0.2.10", "198.51.100.20"
    frames = _conn([b"GET / HTTP/1.0\r\n"])
    for seq, data in ((132, b"User-Agent: "), (144, b"Mozilla\r\n\r\n")):
        frames.append(bytes(Ether() / IP(src=c, dst=s) / TCP(
            sport=40000, dport=7000, flags="A", seq=seq, ack=500) / data))
    loaded = detection_from_text(
        ['alert tcp any any -> any any (msg:"raw"; flow:to_server; '
         'content:"User-Agent: Mozilla"; sid:1;)'])
    eng = Engine(EngineConfig(), loaded.engine)
    recs = []
    for i, fr in enumerate(frames, 1):
        recs += [c.record for c in eng.handle(PacketIn(i, 1000.0 + i / 100, fr, 1))
                 if isinstance(c, Log)]
    assert [r for r in recs if r["event_type"] == "alert"] == []
    assert eng.flows.stream.reassembly_memuse > 0
    end = [c.record for c in eng.handle(Shutdown()) if isinstance(c, Log)]
    (alert,) = [r for r in end if r["event_type"] == "alert"]
    assert alert["alert"]["signature_id"] == 1
    assert (alert["src_ip"], alert["dest_port"]) == (c, 7000)
    assert alert["pkt_src"] == "stream (flow timeout)" and "pcap_cnt" not in alert
    assert eng.flows.stream.reassembly_memuse == 0
    # The flow record follows its alert, marked alerted.
    (flow,) = [r for r in end if r["event_type"] == "flow"]
    assert flow["flow"]["alerted"] is True
