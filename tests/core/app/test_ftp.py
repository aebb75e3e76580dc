"""FTP: the control channel (commands and replies as transactions, any chunking, hostile
input bounded), the data connections it announces, and through the engine: ftp-data
flows as files (a malicious RETR held and dropped), ftpdata_command / ftpbounce rules and
schema-valid EVE ftp / ftp_data records."""

from __future__ import annotations

from typing import Any

import pytest
from scapy.layers.inet import IP, TCP

from appliance.core.app import ANOMALY, AppEvent, new_parser
from appliance.core.app.ftp import (
    FTP_EXPECT,
    FTP_TX,
    MAX_LINE,
    MAX_TXS,
    Expectation,
    Expectations,
    FtpDataParser,
    FtpParser,
)
from appliance.core.app.http import FileBudget
from appliance.core.commands import Log, VerdictKind
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import Shutdown
from appliance.rules.loader import load_detection
from tests.core.app import validate_eve
from tests.core.app.engine_run import ScanSession

CLIENT = [
    b"USER anonymous\r\n",
    b"PASS x@y\r\n",
    b"PORT 10,0,0,5,195,80\r\n",
    b"RETR pub/a.txt\r\n",
    b"EPSV\r\n",
    b"STOR up.bin\r\n",
    b"EPRT |2|2001:db8::5|6000|\r\n",
    b"LIST\r\n",
    b"QUIT\r\n",
]
SERVER = [
    b"220-Welcome\r\n220-to the\r\n220 server\r\n",
    b"331 Password please\r\n",
    b"230 Logged in\r\n",
    b"200 PORT ok\r\n",
    b"150 Opening BINARY mode data connection for pub/a.txt (1234 bytes).\r\n226 Done\r\n",
    b"229 Entering Extended Passive Mode (|||40001|)\r\n",
    b"150 Ok to send data.\r\n226 Done\r\n",
    b"200 EPRT ok\r\n",
    b"150 Here it comes\r\n226 Done\r\n",
    b"221 Bye\r\n",
]


def run(chunk: int) -> tuple[FtpParser, list[AppEvent]]:
    """The session above, the client's commands each before their replies, fed in
    pieces of `chunk` bytes."""
    p = FtpParser()
    out: list[AppEvent] = []

    def feed(data: bytes, to_server: bool) -> None:
        for i in range(0, len(data), chunk):
            out.extend(p.feed(data[i:i + chunk], to_server))

    feed(SERVER[0], False)
    for cmd, reply in zip(CLIENT, SERVER[1:], strict=True):
        feed(cmd, True)
        feed(reply, False)
    out.extend(p.close())
    return p, out


@pytest.mark.parametrize("chunk", [1, 7, 100000])
def test_session_transactions_and_expectations(chunk: int) -> None:
    p, events = run(chunk)
    assert not [e for e in events if e.kind == ANOMALY]
    txs = [e.data["tx"] for e in events if e.kind == FTP_TX]
    assert [t.command for t in txs] == [b"", b"USER", b"PASS", b"PORT", b"RETR", b"EPSV",
                                        b"STOR", b"EPRT", b"LIST", b"QUIT"]
    banner = txs[0].eve()
    assert banner == {"reply": ["Welcome", "to the", "server"], "completion_code": ["220"],
                      "reply_received": "yes"}
    retr = txs[4].eve()
    assert retr["command_data"] == "pub/a.txt"
    assert retr["completion_code"] == ["150", "226"]
    assert txs[3].eve()["dynamic_port"] == 195 * 256 + 80
    assert txs[3].eve()["mode"] == "active"
    assert txs[5].eve()["dynamic_port"] == 40001 and txs[5].eve()["mode"] == "passive"
    for t in txs:
        validate_eve("ftp", t.eve())
    exps: list[Expectation] = [e.data["expect"] for e in events if e.kind == FTP_EXPECT]
    assert [(x.ip, x.port, x.active, x.command, x.filename) for x in exps] == [
        (bytes([10, 0, 0, 5]), 195 * 256 + 80, True, b"RETR", b"pub/a.txt"),
        (None, 40001, False, b"STOR", b"up.bin"),
        (bytes.fromhex("20010db8000000000000000000000005"), 6000, True, b"LIST", b""),
    ]
    assert exps[0].size == 1234 and exps[1].size is None  # from the 150 reply
    assert exps[0].download and not exps[1].download and exps[2].download
    assert p.memuse() == 0


def test_registered_and_unanswered_command_flushed_at_close() -> None:
    p = new_parser("ftp")
    assert isinstance(p, FtpParser)
    p.feed(b"NOOP\r\n", True)
    ev = p.close()
    assert [e.data["tx"].eve() for e in ev] == [{"command": "NOOP", "reply_received": "no"}]


def test_long_lines_are_cut_flagged_and_bounded() -> None:
    p = FtpParser()
    ev = []
    for _ in range(50):  # 50 * 1000 bytes of one command line, then its end
        ev += p.feed(b"A" * 1000, True)
        assert p.memuse() <= MAX_LINE
    ev += p.feed(b"B\r\nNOOP\r\n", True)
    assert [e.name for e in ev if e.kind == ANOMALY] == ["request_command_too_long"]
    ev += p.feed(b"227 " + b"C" * 10000 + b"\r\n200 ok\r\n", False)
    assert [e.name for e in ev if e.kind == ANOMALY] == ["request_command_too_long",
                                                         "response_command_too_long"]
    txs = [e.data["tx"] for e in ev if e.kind == FTP_TX]
    assert txs[0].command_truncated and len(txs[0].command) <= 64
    assert txs[0].reply_truncated and len(txs[0].replies[0]) <= MAX_LINE
    assert txs[1].command == b"NOOP" and txs[1].codes == [b"200"]
    for t in txs:
        validate_eve("ftp", t.eve())


def test_commands_without_replies_are_bounded() -> None:
    p = FtpParser()
    ev = p.feed(b"NOOP\r\n" * (MAX_TXS + 10), True)
    assert len([e for e in ev if e.kind == FTP_TX]) == 10  # the oldest go out unanswered
    assert len(p._pending) == MAX_TXS


@pytest.mark.parametrize("data", [
    b"PORT 999,1,1,1,1,1\r\nPORT 1,2,3\r\nEPRT |9|x|1|\r\nEPRT |1|::1|21|\r\nEPRT\r\n",
    b"\x00\xff\r\n" * 100 + b"\n\n\r\r\n",
    bytes(range(256)) * 40,
])
def test_hostile_commands_do_not_raise(data: bytes) -> None:
    p = FtpParser()
    for chunk in (1, 7, 4096):
        for i in range(0, len(data), chunk):
            p.feed(data[i:i + chunk], True)
            p.feed(data[i:i + chunk], False)
    for e in p.close():
        validate_eve("ftp", e.data["tx"].eve())
    assert p.memuse() <= 2 * MAX_LINE + MAX_TXS * 3 * MAX_LINE


def test_bad_port_arguments_are_anomalies_and_announce_nothing() -> None:
    p = FtpParser()
    ev = p.feed(b"PORT 999,1,1,1,1,1\r\nEPRT |1|::1|21|\r\nRETR x\r\n", True)
    assert [e.name for e in ev if e.kind == ANOMALY] == ["invalid_port_argument"] * 2
    assert not [e for e in ev if e.kind == FTP_EXPECT]
    # A reply without a code is an anomaly too, not a transaction.
    assert [e.name for e in p.feed(b"hello\r\n", False)] == ["invalid_response"]


def test_data_parser_is_one_file_closed_at_the_announced_size() -> None:
    budget = FileBudget(1 << 20, 1 << 20)
    exp = Expectation(None, 1, False, b"RETR", b"f.bin", size=10)
    d = FtpDataParser(exp, budget)
    assert [e.kind for e in d.feed(b"01234", False)] == ["ftp_data"]
    assert budget.used == 5
    ev = d.feed(b"56789extra", False)
    assert [e.kind for e in ev] == ["ftp_data", "file", "ftp_data_done"]
    f = ev[1].data["file"]
    assert f.size == 10 and f.state == "CLOSED" and f.download and not f.to_server
    assert f.take_data() == b"0123456789" and budget.used == 0
    assert d.close() == [] and d.feed(b"more", False) == []
    validate_eve("ftp_data", d.eve())
    assert d.eve() == {"filename": "f.bin", "command": "RETR"}


def test_data_parser_without_size_closes_with_the_connection() -> None:
    d = FtpDataParser(Expectation(None, 1, True, b"STOR", b"u"))
    d.feed(b"abc", True)
    assert [e.name for e in d.feed(b"x", False)] == ["data_in_both_directions"]
    ev = d.close()
    f = ev[0].data["file"]
    assert f.size == 3 and f.to_server and not f.download and f.data is None


def test_expectations_expire_are_capped_and_check_the_peer() -> None:
    t = Expectations()
    a, b, c = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", b"\x0a\x00\x00\x03"
    e = Expectation(None, 2000, False, b"RETR", peer=a)
    t.add(b, e, 10.0)
    assert t.take(c, b, 2000, 11.0) is None  # not from the control channel's client
    assert t.take(a, b, 2001, 11.0) is None
    assert t.take(a, b, 2000, 11.0) is e and len(t) == 0
    t.add(b, e, 10.0)
    assert t.take(a, b, 2000, 10.0 + Expectations.TTL + 1) is None and len(t) == 0
    for port in range(Expectations.CAP + 50):
        t.add(b, Expectation(None, port, False), 20.0)
    assert len(t) == Expectations.CAP
    assert t.take(a, b, 0, 21.0) is None  # the oldest went first
    assert t.take(a, b, Expectations.CAP + 49, 21.0) is not None


# --- through the engine -------------------------------------------------------------

C, S = "10.203.0.10", "203.0.113.21"
EICARISH = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-like test body " * 200


class Session(ScanSession):
    """An FTP session through the engine: a control connection and data connections."""

    window = 65535
    sig = "yara:test:Eicarish"


def passive_retr(s: Session, body: bytes, name: bytes = b"eicar.com",
                 size: bool = True, fin: bool = False) -> list[VerdictKind]:
    ctl_c, ctl_s = (C, 5000), (S, 21)
    s.connect(ctl_c, ctl_s)
    s.send(ctl_s, ctl_c, b"220 hi\r\n")
    s.send(ctl_c, ctl_s, b"USER a\r\n")
    s.send(ctl_s, ctl_c, b"230 ok\r\n")
    s.send(ctl_c, ctl_s, b"PASV\r\n")
    s.send(ctl_s, ctl_c, b"227 Entering Passive Mode (203,0,113,21,156,64).\r\n")
    s.send(ctl_c, ctl_s, b"RETR " + name + b"\r\n")
    s.send(ctl_s, ctl_c, b"150 Opening BINARY mode data connection (%d bytes).\r\n"
           % len(body) if size else b"150 Here it comes.\r\n")
    data_c, data_s = (C, 5001), (S, 156 * 256 + 64)
    s.connect(data_c, data_s)
    verdicts = s.send(data_s, data_c, body)
    if fin:  # the server's FIN after the data
        seq, ack = s.seq[(S, data_s[1], C, 5001)], s.seq[(C, 5001, S, data_s[1])]
        verdicts.append(s._send(IP(src=S, dst=C) / TCP(
            sport=data_s[1], dport=5001, flags="FA", seq=seq, ack=ack, window=65535)))
    s.send(ctl_s, ctl_c, b"226 Transfer complete.\r\n")
    return verdicts


def test_malicious_retr_is_held_and_dropped() -> None:
    engine = Engine(EngineConfig(mode="ips", scan_files=True, heuristics=None))
    s = Session(engine)
    s.verdict = "malicious"
    verdicts = passive_retr(s, EICARISH)
    assert len(s.asked) == 1
    r = s.asked[0]
    assert r.data == EICARISH and r.filename == "eicar.com"  # kept whole in the budget
    assert verdicts[-1] is VerdictKind.DROP  # the last data packet waited for the verdict
    assert all(v is VerdictKind.ACCEPT for v in verdicts[:-1])
    fi = s.records("fileinfo")
    assert len(fi) == 1 and fi[0]["app_proto"] == "ftp-data"
    assert fi[0]["fileinfo"]["size"] == len(EICARISH)
    assert engine.file_budget is not None and engine.file_budget.used == 0


def test_without_an_announced_size_the_senders_fin_ends_the_file() -> None:
    engine = Engine(EngineConfig(mode="ips", scan_files=True, heuristics=None))
    s = Session(engine)
    s.verdict = "malicious"
    verdicts = passive_retr(s, EICARISH, size=False, fin=True)
    assert [r.data for r in s.asked] == [EICARISH]
    assert verdicts[-1] is VerdictKind.DROP  # the FIN waited for the verdict and went
    assert all(v is VerdictKind.ACCEPT for v in verdicts[:-1])


def test_clean_retr_passes_and_uploads_are_not_scanned() -> None:
    engine = Engine(EngineConfig(mode="ips", scan_files=True, heuristics=None))
    s = Session(engine)
    verdicts = passive_retr(s, b"hello world\n" * 10, b"ok.txt")
    assert [r.filename for r in s.asked] == ["ok.txt"] and verdicts[-1] is VerdictKind.ACCEPT
    # Active STOR: the server connects from port 20; the client sends the file.
    ctl_c, ctl_s = (C, 5000), (S, 21)
    s.send(ctl_c, ctl_s, b"PORT 10,203,0,10,31,64\r\n")
    s.send(ctl_s, ctl_c, b"200 ok\r\n")
    s.send(ctl_c, ctl_s, b"STOR up.bin\r\n")
    s.connect((S, 20), (C, 31 * 256 + 64))
    s.send((C, 31 * 256 + 64), (S, 20), b"upload " * 100)
    s.engine.handle(Shutdown(200.0))
    assert [r.filename for r in s.asked] == ["ok.txt"]


def test_ftp_rules_and_eve_records(eve_validator: Any, tmp_path: Any) -> None:
    rules = tmp_path / "ftp.rules"
    rules.write_text("\n".join([
        'alert ftp-data any any -> any any (msg:"retr"; flow:to_client; '
        'ftpdata_command:retr; sid:1;)',
        'alert ftp-data any any -> any any (msg:"stor"; ftpdata_command:stor; sid:2;)',
        'alert ftp-data any any -> any any (msg:"data"; file_data; content:"world"; sid:3;)',
        'alert ftp any any -> any any (msg:"bounce"; ftpbounce; sid:4;)',
    ]) + "\n")
    det = load_detection([rules])
    engine = Engine(EngineConfig(heuristics=None), detector=det.engine)
    s = Session(engine)
    passive_retr(s, b"hello world\n", b"w.txt")
    s.send((C, 5000), (S, 21), b"PORT 192,0,2,99,4,1\r\n")  # another host: a bounce
    s.send((S, 21), (C, 5000), b"200 ok\r\n")
    s.send((C, 5000), (S, 21), b"QUIT\r\n")  # acknowledges the reply
    s.logs += [c.record for c in engine.handle(Shutdown(200.0)) if isinstance(c, Log)]
    sids = sorted(r["alert"]["signature_id"] for r in s.records("alert"))
    assert sids == [1, 3, 4]
    ftp = s.records("ftp")
    assert [r["ftp"].get("command") for r in ftp] == [None, "USER", "PASV", "RETR", "PORT",
                                                      "QUIT"]
    assert ftp[-1]["ftp"]["reply_received"] == "no"  # flushed unanswered at the end
    data = s.records("ftp_data")
    assert [r["ftp_data"] for r in data] == [{"filename": "w.txt", "command": "RETR"}]
    assert (data[0]["src_ip"], data[0]["dest_port"]) == (C, 156 * 256 + 64)
    for r in [*ftp, *data, *s.records("alert"), *s.records("fileinfo")]:
        assert not list(eve_validator.iter_errors(r)), r


def test_bad_ftpdata_command_fails_with_a_reason(tmp_path: Any) -> None:
    rules = tmp_path / "bad.rules"
    rules.write_text('alert ftp-data any any -> any any (ftpdata_command:dele; sid:9;)\n'
                     'alert ftp-data any any -> any any (ftpdata_command:stor; sid:8;)\n')
    det = load_detection([rules])
    assert det.failed == 1 and det.active == 1
    assert "retr or stor" in det.compile_failures[0].reason
