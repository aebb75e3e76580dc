"""Downloads handed to the scanners whole (beyond the 100 KiB kept for detection), within
the file memcap, and their EVE fileinfo logged with the verdict."""

from __future__ import annotations

import hashlib
from typing import Any

from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from appliance.core.commands import Log, ScanRequest, Verdict, VerdictKind
from appliance.core.engine import FILE_SID_MALICIOUS, Engine, EngineConfig
from appliance.core.events import LINKTYPE_RAW, PacketIn, Shutdown
from appliance.filescan import resolve

C, S = "10.203.0.10", "203.0.113.10"
MARKER = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR"


class Download:
    """One HTTP download over TCP, sent in 1400-byte segments."""

    def __init__(self, engine: Engine, sport: int = 4000) -> None:
        self.engine = engine
        self.sport = sport
        self.n = 0
        self.asked: list[ScanRequest] = []
        self.logs: list[dict[str, Any]] = []
        self.verdicts: list[VerdictKind] = []

    def _send(self, pkt: Any, verdict: str = "clean") -> None:
        self.n += 1

        def scan(r: ScanRequest) -> tuple[str, tuple[str, ...], str]:
            self.asked.append(r)
            return verdict, (("yara:test:Marker",) if verdict == "malicious" else ()), "scan"

        cmds = self.engine.handle(
            PacketIn(self.n, 100.0 + self.n * 0.001, bytes(pkt), LINKTYPE_RAW)
        )
        for x in resolve(self.engine, cmds, scan):
            if isinstance(x, Verdict):
                self.verdicts.append(x.kind)
            elif isinstance(x, Log):
                self.logs.append(x.record)

    def run(self, body: bytes, verdict: str = "clean", announce: int | None = None) -> None:
        """The download; `announce`: the Content-Length sent (more than the body: the
        transfer is left unfinished)."""
        sp = self.sport
        req = b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        self._send(IP(src=C, dst=S) / TCP(sport=sp, dport=80, flags="S", seq=0, window=65535))
        self._send(IP(src=S, dst=C) / TCP(sport=80, dport=sp, flags="SA", seq=0, ack=1))
        self._send(
            IP(src=C, dst=S) / TCP(sport=sp, dport=80, flags="A", seq=1, ack=1, window=65535)
        )
        self._send(
            IP(src=C, dst=S)
            / TCP(sport=sp, dport=80, flags="PA", seq=1, ack=1, window=65535)
            / Raw(req)
        )
        resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (announce or len(body)) + body
        ack = 1 + len(req)
        for off in range(0, len(resp), 1400):
            self._send(
                IP(src=S, dst=C)
                / TCP(sport=80, dport=sp, flags="PA", seq=1 + off, ack=ack)
                / Raw(resp[off : off + 1400]),
                verdict,
            )
            if off % 14000 == 0:  # the client acknowledges now and then
                self._send(
                    IP(src=C, dst=S)
                    / TCP(sport=sp, dport=80, flags="A", seq=ack, window=65535, ack=1 + off + 1400)
                )

    def fileinfo(self) -> list[dict[str, Any]]:
        return [r for r in self.logs if r.get("event_type") == "fileinfo"]


def _big(size: int) -> bytes:
    """`size` bytes with the marker past the first 100 KiB (beyond the detection body)."""
    head = bytes(range(256)) * (150 * 1024 // 256)
    return (head + MARKER + b"\0" * size)[:size]


def test_a_large_download_reaches_the_scanners_whole(eve_validator: Any) -> None:
    engine = Engine(EngineConfig(mode="ips", scan_files=True, heuristics=None))
    d = Download(engine)
    body = _big(300 * 1024)
    d.run(body, verdict="malicious")
    (r,) = d.asked
    assert r.size == len(body) and r.data == body  # all of it, not the first 100 KiB
    assert MARKER in r.data and body.index(MARKER) > 100 * 1024
    assert d.verdicts[-1] is VerdictKind.DROP  # the last packet waited for the verdict
    (fi,) = d.fileinfo()
    # Logged after the verdict, naming the appliance's file rule.
    assert fi["fileinfo"]["sid"] == [FILE_SID_MALICIOUS]
    assert fi["fileinfo"]["size"] == len(body) and fi["fileinfo"]["state"] == "CLOSED"
    assert fi["metadata"]["flowvars"] == [
        {"key": "file_verdict", "value": "malicious"},
        {"key": "file_verdict_source", "value": "scan"},
        {"key": "file_signature", "value": "yara:test:Marker"}]
    alert = next(x for x in d.logs if x.get("event_type") == "alert")
    assert d.logs.index(fi) < d.logs.index(alert)
    assert not list(eve_validator.iter_errors(fi))
    assert engine.file_budget is not None and engine.file_budget.used == 0


def test_a_clean_file_logs_fileinfo_without_sid() -> None:
    d = Download(Engine(EngineConfig(mode="ips", scan_files=True, heuristics=None)))
    d.run(b"hello" * 1000)
    (fi,) = d.fileinfo()
    assert "sid" not in fi["fileinfo"] and d.verdicts[-1] is VerdictKind.ACCEPT
    assert {"key": "file_verdict", "value": "clean"} in fi["metadata"]["flowvars"]


def test_file_memcap_bounds_kept_content_and_the_hash_still_goes() -> None:
    """An unfinished download holds 200 KiB; with room for 250 KiB in all, a second
    download of 150 KiB (more than the 100 KiB body kept for detection, which would
    do) is decided by its hash alone; flow ends give everything back."""
    cfg = EngineConfig(mode="ips", scan_files=True, heuristics=None, file_memcap=250 * 1024)
    engine = Engine(cfg)
    budget = engine.file_budget
    assert budget is not None
    a, b = Download(engine, 4001), Download(engine, 4002)
    a.run(_big(200 * 1024), announce=300 * 1024)  # still open: its content is kept
    assert not a.asked and budget.used == 200 * 1024
    body = _big(150 * 1024)
    b.run(body)
    (r,) = b.asked
    assert r.data is None and r.size == len(body)  # no room left: the hash alone
    assert r.sha256 == hashlib.sha256(body).hexdigest()
    assert budget.used == 200 * 1024  # b's partial content was given back
    assert b.verdicts[-1] is VerdictKind.ACCEPT  # its verdict: the scan service's
    engine.handle(Shutdown())  # a's flow ends unfinished
    assert budget.used == 0
