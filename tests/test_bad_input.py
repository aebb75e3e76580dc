"""Bad input, end to end: each gets a clear error or an anomaly, and the appliance keeps
working (issue 13, item 5). What other test files already cover is not repeated here:
`rules check` file:line output (tests/rules/test_cli_rules.py), policy errors with line
and field (tests/test_policy.py), truncated pcaps and non-pcaps in replay
(tests/test_cli_replay.py, tests/io/test_pcap.py), malformed and oversized control
requests (tests/io/test_control.py).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.core.commands import Log, Verdict
from appliance.core.detect import inspect
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import LINKTYPE_ETHERNET, LINKTYPE_RAW, PacketIn, Shutdown
from appliance.errors import ConfigError
from appliance.io.control import ControlServer, control_call
from appliance.io.eve import EveWriter
from appliance.io.pcap import PcapReader
from appliance.policy_file import policy_from_text
from appliance.rules.loader import detection_from_text, load_detection
from tests.fuzz.corpus_io import Frame, write_pcap
from tests.fuzz.harness import ACK, PSH, SYN, tcp_segment
from tests.io.test_control import raw

CLI = Path(__file__).resolve().parents[1] / "pcaps"
C, S = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"


def conversation(request: bytes, response: bytes = b"", port: int = 80) -> list[Frame]:
    """A TCP handshake, one request and one response, as raw IPv4 frames."""
    c0, s0 = 1000, 5000
    pk = [(SYN, True, b""), (SYN | ACK, False, b""), (ACK, True, b""),
          (ACK | PSH, True, request)]
    if response:
        pk.append((ACK | PSH, False, response))
    out: list[Frame] = []
    sent = {True: 0, False: 0}
    for i, (flags, to_server, data) in enumerate(pk):
        seq = (c0 if to_server else s0) + sent[to_server]
        ack = (s0 if to_server else c0) + sent[not to_server]
        a, b, pa, pb = (C, S, 40000, port) if to_server else (S, C, port, 40000)
        out.append((LINKTYPE_RAW, 1_700_000_000.0 + i * 0.01,
                    tcp_segment(a, b, pa, pb, seq, ack if flags != SYN else 0, flags, data)))
        sent[to_server] += len(data) + (1 if flags & SYN else 0)
    return out


def run_engine(eng: Engine, frames: list[Frame]) -> list[Any]:
    """Every command; each packet must get exactly one Verdict."""
    cmds: list[Any] = []
    for i, (lt, ts, data) in enumerate(frames, 1):
        out = eng.handle(PacketIn(i, ts, data, lt))
        assert [c.packet_id for c in out if isinstance(c, Verdict)] == [i]
        cmds += out
    cmds += eng.handle(Shutdown())
    assert eng.stats.errors == 0
    return cmds


# -- a ruleset with broken rules --------------------------------------------------------------

BROKEN_RULES = [
    (b'alert tcp any any -> any any (msg:"good"; content:"evil"; sid:2; rev:1;)', None),
    (b'alert tcp any any -> any any (msg:"u"; content:"unterminated; sid:3;)', "sid 3"),
    (b'alert tcp any any -> any any (msg:"no close"; content:"x"; sid:4;', "not closed"),
    (b'alert tcp any any -> any any (msg:"kw"; frobnicate:1; sid:5;)', "frobnicate"),
    (b'alert tcp any any -> any any (msg:"pcre"; pcre:"/(unclosed/"; sid:6;)', "pcre"),
    (b'alert tcp any any -> any any (msg:"no sid"; content:"x";)', "no sid"),
    (b'alert tcp any any -> any any (msg:"\xff\xfe bad utf-8"; content:"|zz|"; sid:7;)',
     "hex"),
    (b"\x00\x01\x02 binary garbage", "no option list"),
    (b'alert tcp any any -> any any (msg:"' + b"A" * 200_000 + b'"; content:"x"; sid:8; '
     b"byte_test:99,=,1,0;)", "byte_test"),
    (b'alert tcp [1.2.3.4,!1.2.3.4 -> any any (msg:"addr"; sid:9;)', "sid 9"),
]


def test_broken_rules_are_skipped_with_file_and_line_and_the_good_ones_load(
        tmp_path: Path) -> None:
    f = tmp_path / "broken.rules"
    f.write_bytes(b"\n".join(r for r, _ in BROKEN_RULES) + b"\n")
    loaded = load_detection([f])
    assert loaded.active == 1
    fails = {r.line: r for r in loaded.failure_records()}
    for n, (_raw, want) in enumerate(BROKEN_RULES, 1):
        if want is None:
            assert n not in fails
            continue
        assert n in fails, f"line {n} was not reported"
        rec = fails[n]
        assert rec.file == str(f)
        text = f"{rec.reason} sid {rec.sid}"
        assert want in text, (n, text)
        assert len(rec.reason) < 300  # a reason, not the rule echoed back


def test_replay_with_broken_rules_runs_and_alerts_on_the_good_one(tmp_path: Path) -> None:
    rules = tmp_path / "broken.rules"
    rules.write_bytes(b"\n".join(r for r, _ in BROKEN_RULES) + b"\n")
    pcap = tmp_path / "evil.pcap"
    write_pcap(pcap, conversation(b"GET /evil HTTP/1.1\r\nHost: x\r\n\r\n"))
    eve = tmp_path / "eve.json"
    r = CliRunner().invoke(main, ["replay", "--rules", str(rules), "--eve", str(eve),
                                  str(pcap)])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    failed = len(BROKEN_RULES) - 1
    assert f"rules: 1 active, {failed} failed" in r.stderr
    alerts = [json.loads(ln) for ln in eve.read_text().splitlines()
              if '"event_type":"alert"' in ln]
    assert [a["alert"]["signature_id"] for a in alerts] == [2]


# -- a policy with errors -----------------------------------------------------------------------

BAD_POLICIES = [
    # numbers that are not numbers (once crashed with ValueError/OverflowError)
    ("roles:\n  r:\n    on-detection: {action: block, min-severity: nan}\n",
     "p.yaml:3: roles.r.on-detection.min-severity: expected a finite number"),
    ("roles:\n  r:\n    overrides: [{action: drop, min-severity: 1e999}]\n",
     "p.yaml:3: roles.r.overrides[0].min-severity: expected a finite number"),
    # nesting deeper than PyYAML's recursion (once crashed with RecursionError)
    ("guests: " + "[" * 1000 + "]" * 1000 + "\n", "p.yaml: invalid YAML: nested too deeply"),
    ("\x00\x01\x02", "p.yaml: invalid YAML"),
    ("guests:\n  - {name: a, role: desktop}\n---\nguests: []\n", "p.yaml:3: invalid YAML"),
    # a billion-laughs alias tree: rejected by shape, never expanded
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "guests: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n", "p.yaml:1: a: unknown field"),
    ("guests:\n  - {name: a, role: desktop, macs: ['02:00:00:00:00:0g']}\n",
     "p.yaml:2: guests[0].macs: not a MAC address"),
]


@pytest.mark.parametrize("text,error", BAD_POLICIES)
def test_policy_errors_are_clear(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as e:
        policy_from_text(text, "p.yaml")
    assert str(e.value).startswith(error), str(e.value)


def test_policy_check_cli_gives_one_line_and_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(BAD_POLICIES[0][0])
    r = CliRunner().invoke(main, ["policy", "check", str(f)])
    assert r.exit_code == 2
    assert "Traceback" not in r.output
    assert f"{f}:3: roles.r.on-detection.min-severity: expected a finite number" in r.output
    f.write_bytes(b"\xff\xfe not utf-8")
    r = CliRunner().invoke(main, ["policy", "check", str(f)])
    assert r.exit_code == 2 and "cannot read policy" in r.output


# -- a corrupt pcap ---------------------------------------------------------------------------


def _pcapng(blocks: list[bytes]) -> bytes:
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    idb = struct.pack("<IIHHI", 1, 20, LINKTYPE_ETHERNET, 0, 65535) + struct.pack("<I", 20)
    return shb + idb + b"".join(blocks)


def _epb(data: bytes) -> bytes:
    pad = data + b"\0" * (-len(data) % 4)
    blen = 32 + len(pad)
    return struct.pack("<IIIIIII", 6, blen, 0, 0, 1, len(data), len(data)) + pad + \
        struct.pack("<I", blen)


def test_pcapng_with_a_too_short_packet_block_stops_there(tmp_path: Path) -> None:
    frame = (b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" +
             conversation(b"x")[0][2])
    good = _epb(frame)
    # a packet block whose length (12) leaves no room for its fields: once struct.error
    bad = struct.pack("<III", 6, 12, 12)
    path = tmp_path / "bad.pcapng"
    path.write_bytes(_pcapng([good, good, bad, good]))
    with PcapReader(path) as r:
        assert len(list(r)) == 2
        assert r.truncated_reason == "packet block inconsistent"
        assert r.truncated_at == 28 + 20 + 2 * len(good)
    eve = tmp_path / "eve.json"
    res = CliRunner().invoke(main, ["replay", "--eve", str(eve), str(path)])
    assert res.exit_code == 0, res.output
    assert f"{path}: truncated at byte {28 + 20 + 2 * len(good)} after 2 complete packets " \
           "(packet block inconsistent)" in res.stderr
    assert json.loads(eve.read_text().splitlines()[-1])["stats"]["decoder"]["pkts"] == 2


def test_pcap_with_an_implausible_record_in_the_middle(tmp_path: Path) -> None:
    frames = conversation(b"GET / HTTP/1.1\r\n\r\n")
    path = tmp_path / "mid.pcap"
    write_pcap(path, frames)
    raw = bytearray(path.read_bytes())
    # the third record's captured length: 2 GiB
    off = 24
    for _ in range(2):
        off += 16 + struct.unpack_from("<I", raw, off + 8)[0]
    struct.pack_into("<I", raw, off + 8, 0x7FFFFFFF)
    path.write_bytes(bytes(raw))
    res = CliRunner().invoke(main, ["replay", str(path)])
    assert res.exit_code == 0, res.output
    assert "after 2 complete packets (record length 2147483647 is not plausible)" in res.stderr
    assert "packets: 2 " in res.stderr


# -- truncated and oversized control messages ---------------------------------------------------


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlServer]:
    srv = ControlServer(tmp_path / "run" / "control.sock", {"status": lambda a: {"up": 1}},
                        max_request=4096, read_timeout=2.0,
                        allowed_uids=(os.geteuid(),)).start()
    try:
        yield srv
    finally:
        srv.stop()




def test_truncated_control_request_gets_an_error_and_the_server_serves_on(
        control: ControlServer) -> None:
    # a request cut by the end of the stream (once: the connection closed without a word)
    replies = raw(control.path, b'{"command": "status"}\n{"command": "sta')
    assert replies[0] == {"ok": True, "result": {"up": 1}}
    assert replies[1]["ok"] is False and "truncated request" in replies[1]["error"]
    assert len(replies) == 2
    # a multi-byte character cut in half, then the end
    replies = raw(control.path, '{"command": "stätus'.encode()[:-4])
    assert len(replies) == 1 and "truncated request" in replies[0]["error"]
    assert control_call(control.path, "status") == {"ok": True, "result": {"up": 1}}
    assert control.errors == 2


def test_oversized_control_request_then_the_next_client(control: ControlServer) -> None:
    huge = b'{"command": "status", "args": {"x": "' + b"a" * 1_000_000 + b'"}}\n'
    replies = raw(control.path, huge)
    assert len(replies) == 1 and "too large (limit 4096 bytes)" in replies[0]["error"]
    assert control_call(control.path, "status")["ok"] is True


# -- log injection through HTTP headers -----------------------------------------------------------

HOSTILE_REQUEST = (
    b"GET /a\x1b[2Jb%0a HTTP/1.1\r\n"
    b"Host: evil.example\rX\r\n"
    b"User-Agent: \x1b[31mred\x1b[0m \xff\xfe\xc3\x28 \x00 \xc2\x9b \"}\n"
    b'{"event_type":"alert"} \\\r\n'
    b"Referer: line1\r\n folded\r\n"
    b"\r\n")
HOSTILE_RESPONSE = (b"HTTP/1.1 200 \x1b]0;title\x07\r\nContent-Type: text/\xe2\x80\xa8html\r\n"
                    b"Location: /\r\x0b\x0c\r\nContent-Length: 2\r\n\r\nok")
# C0 controls (ESC, NUL, CR, LF...) and DEL never appear raw in an EVE line: JSON escapes
# the C0 range. (C1 controls such as U+009B arrive as valid UTF-8 and are written as
# UTF-8, as Suricata's JSON does: they are one character of valid JSON.)
RAW_CONTROL = {chr(c) for c in range(0x20)}


def _eve_lines(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8")  # valid UTF-8 throughout
    assert text.endswith("\n")
    return text[:-1].split("\n")


def test_hostile_http_headers_each_give_one_valid_json_line(tmp_path: Path) -> None:
    pcap = tmp_path / "hostile.pcap"
    write_pcap(pcap, conversation(HOSTILE_REQUEST, HOSTILE_RESPONSE))
    eve = tmp_path / "eve.json"
    res = CliRunner().invoke(main, ["replay", "--eve", str(eve), str(pcap)])
    assert res.exit_code == 0, res.output
    lines = _eve_lines(eve)
    records = [json.loads(ln) for ln in lines]  # each line is exactly one JSON object
    assert all(isinstance(r, dict) and "event_type" in r for r in records)
    for ln in lines:
        assert not RAW_CONTROL & set(ln), ln
    (http,) = [r["http"] for r in records if r["event_type"] == "http"]
    ua = http["http_user_agent"]
    assert "\x1b[31mred\x1b[0m" in ua  # kept, as escaped JSON text
    assert "\ufffd" in ua  # invalid UTF-8 replaced, not dropped or passed through
    assert http["url"].startswith("/a\x1b[2Jb")
    # the injected '{"event_type":"alert"}' stayed inside a string: no alert record
    assert not [r for r in records if r["event_type"] == "alert"]


def test_inline_writer_keeps_hostile_records_on_one_line_each(tmp_path: Path) -> None:
    """The daemon's EVE writer (append mode: one write(2) per record) with the records
    the engine made from the same hostile conversation."""
    cmds = run_engine(Engine(EngineConfig(mode="ips")),
                      conversation(HOSTILE_REQUEST, HOSTILE_RESPONSE))
    recs = [c.record for c in cmds if isinstance(c, Log)]
    assert any(r["event_type"] == "http" for r in recs)
    out = tmp_path / "eve.json"
    w = EveWriter(out, append=True)
    for r in recs:
        w.write(r)
    w.close()
    lines = _eve_lines(out)
    assert len(lines) == len(recs)
    assert [json.loads(ln) for ln in lines] == json.loads(json.dumps(recs))


# -- ReDoS-prone pcre -----------------------------------------------------------------------------


def test_redos_pcre_is_bounded_counted_and_the_packet_gets_its_verdict() -> None:
    loaded = detection_from_text([
        'alert tcp any any -> any any (msg:"redos"; content:"a"; pcre:"/(a+)+$/"; sid:1;)',
        # relative to every occurrence of "a": once a timeout for each of them (3,000 x
        # PCRE_TIMEOUT held the packet 150 s), now one per rule
        'alert tcp any any -> any any (msg:"redos rel"; content:"a"; pcre:"/(a|aa)+$/R"; '
        "sid:2;)",
        'alert tcp any any -> any any (msg:"after"; content:"ab"; sid:3;)',
    ])
    assert loaded.active == 3
    eng = Engine(EngineConfig(mode="ips"), detector=loaded.engine)
    before = inspect.STATS.pcre_timeouts
    cmds = run_engine(eng, conversation(b"a" * 3000 + b"b"))
    timeouts = inspect.STATS.pcre_timeouts - before
    # the counter shows it: at most one timeout per rule and buffer (two rules; the
    # packet's payload and the reassembled stream)
    assert 1 <= timeouts <= 4
    sids = [c.record["alert"]["signature_id"] for c in cmds
            if isinstance(c, Log) and c.record["event_type"] == "alert"]
    assert sids == [3]  # the ReDoS rules do not match; detection went on with the next
