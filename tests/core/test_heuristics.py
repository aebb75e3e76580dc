"""Heuristic detectors: positive captures fire their exact sids, benign captures and busy
clients fire nothing, state stays bounded under a source spray, failures are contained.

The detectors are driven here by `Replay`, a small loop doing what the engine does per
packet (decode, defrag, flow lookup, TCP tracking) plus protocol detection, DNS and HTTP
parsing for the app-layer hooks, and `on_flow_end` for every retired flow.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from appliance.core.app import DNS_QUERY, TX_RESPONSE
from appliance.core.app.detect import ProtoDetector, detect_udp
from appliance.core.app.dns import DnsParser
from appliance.core.app.http import HttpParser
from appliance.core.decode import PROTO_ICMP, PROTO_TCP, PROTO_UDP, TH_FIN, Packet
from appliance.core.detect import heuristics as H
from appliance.core.detect.heuristics import (
    DEFAULT_DETECTORS,
    SIGNATURES,
    BeaconConfig,
    BruteForceConfig,
    DnsTunnelConfig,
    FloodConfig,
    HeuristicHit,
    HeuristicsConfig,
    HeuristicsEngine,
    ScanConfig,
    shannon_entropy,
    split_base_domain,
)
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import LINKTYPE_RAW
from appliance.core.flows import Flow, FlowConfig, flow_key, protocol_class
from appliance.core.records import format_ip
from appliance.io.pcap import PcapReader

ROOT = Path(__file__).resolve().parents[2]
HEUR_PCAPS = ROOT / "pcaps" / "heuristics"
SHARED = ROOT.parent / "shared" / "data" / "pcaps"
BENIGN = ("http-packets", "tls2", "netflix", "ip-frag")


def _load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_heuristics", ROOT / "pcaps" / "build_heuristics.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["build_heuristics"] = mod
    spec.loader.exec_module(mod)
    return mod


B = _load_builder()


class Replay:
    """Packets -> detectors, the way the engine will call them."""

    def __init__(self, heur: HeuristicsEngine | None = None, midstream: bool = False) -> None:
        self.engine = Engine(EngineConfig(flow=FlowConfig(midstream=midstream)))
        self.h = heur or HeuristicsEngine()
        self.hits: list[HeuristicHit] = []
        self._detect: dict[int, ProtoDetector] = {}
        self._dns: dict[int, DnsParser] = {}
        self._http: dict[int, HttpParser] = {}

    def packet(self, p: Packet) -> None:
        e = self.engine
        if not p.ipver:
            return
        if p.frag is not None:
            rebuilt = e.defrag.add(p)
            if rebuilt is None:
                return
            p = e.decoder.decode_rebuilt(rebuilt, p.l3_off, p.ipver, p.vlan, p.ts)
            if not p.ipver:
                return
        f, to_server, upd = e._flow_update(p)  # the engine's own flow bookkeeping
        if f is None:
            self.hits += self.h.on_packet(p, None, True, False)
            return
        new_flow = f.ts_pkts + f.tc_pkts == 1  # this packet opened it
        self.hits += self.h.on_packet(p, f, to_server, new_flow)
        if p.proto == PROTO_UDP and p.payload:
            self._udp_app(p, f, to_server)
        elif upd is not None:
            for data, ts in ((upd.to_server, True), (upd.to_client, False)):
                if data:
                    self._tcp_app(p, f, data, ts)
        for ended in e.flows.drain():
            self.hits += self.h.on_flow_end(ended)

    def _udp_app(self, p: Packet, f: Flow, to_server: bool) -> None:
        if f.app_proto is None:
            r = detect_udp(p.payload, p.sp, p.dp)
            if r is not None:
                f.app_proto = r
                self.hits += self.h.on_app_proto(f, p.ts)
        if f.app_proto == "dns":
            parser = self._dns.setdefault(f.flow_id, DnsParser())
            for ev in parser.parse_datagram(p.payload, to_server):
                if ev.kind == DNS_QUERY:
                    for q in ev.data["tx"].questions:
                        self.hits += self.h.on_dns_query(p, f, q.name, q.qtype)

    def _tcp_app(self, p: Packet, f: Flow, data: bytes, to_server: bool) -> None:
        if f.app_proto is None:
            det = self._detect.setdefault(f.flow_id, ProtoDetector(f.sp, f.dp))
            r = det.feed(data, to_server)
            if r is not None:
                f.app_proto = r
                self.hits += self.h.on_app_proto(f, p.ts)
                if r == "http":
                    self._http[f.flow_id] = HttpParser()
        hp = self._http.get(f.flow_id)
        if hp is not None:
            for ev in hp.feed(data, to_server):
                if ev.kind == TX_RESPONSE:
                    status = ev.data["tx"].status
                    if status is not None:
                        self.hits += self.h.on_http_status(p, f, status)

    def records(self, recs: Iterable[tuple[float, bytes, int]]) -> list[HeuristicHit]:
        dec = self.engine.decoder
        for ts, data, linktype in recs:
            p = dec.decode(data, linktype, ts)
            self.packet(p)
            inner = p.inner
            while inner is not None:
                self.packet(inner)
                inner = inner.inner
        for f in self.engine.flows.shutdown():
            self.hits += self.h.on_flow_end(f)
        return self.hits

    def pcap(self, path: Path) -> list[HeuristicHit]:
        reader = PcapReader(path)
        try:
            return self.records((ev.ts, ev.data, ev.linktype) for ev in reader)
        finally:
            reader.close()


def scripted(recs: Iterable[tuple[Decimal, Any]]) -> list[tuple[float, bytes, int]]:
    """build_heuristics (Decimal time, scapy packet) records -> raw-IP records, in order."""
    out = [(float(t), bytes(pkt), LINKTYPE_RAW) for t, pkt in recs]
    out.sort(key=lambda r: r[0])
    return out


def sids(hits: list[HeuristicHit]) -> dict[int, int]:
    return dict(Counter(h.sid for h in hits))


def show(hits: list[HeuristicHit]) -> str:
    return "; ".join(f"{h.sid} {format_ip(h.offender)}->{format_ip(h.victim)} {h.evidence}"
                     for h in hits)


# -- positive captures ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(B.EXPECTED))
def test_positive_capture_fires_exactly_its_sids(name: str) -> None:
    path = HEUR_PCAPS / name
    assert path.exists(), "run: .venv/bin/python pcaps/build_heuristics.py"
    hits = Replay().pcap(path)
    print(name, sids(hits))
    assert sids(hits) == B.EXPECTED[name], show(hits)
    for h in hits:
        msg, sev = SIGNATURES[h.sid]
        assert (h.gid, h.rev, h.msg, h.severity, h.category) == (9001, 1, msg, sev, "heuristic")
        assert h.msg.startswith("APPLIANCE HEURISTIC ")
        # EVE alert.metadata: arrays of strings only
        assert all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                   for v in h.evidence.values())
        assert h.evidence["heuristic"] == [h.detector]


def test_positive_captures_fire_with_midstream_pickup_too() -> None:
    for name, expected in B.EXPECTED.items():
        assert sids(Replay(midstream=True).pcap(HEUR_PCAPS / name)) == expected, name


def test_positive_captures_rebuild_byte_identical(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(B, "OUT", tmp_path)
    B.main()
    for name in B.EXPECTED:
        assert (tmp_path / name).read_bytes() == (HEUR_PCAPS / name).read_bytes(), name


def test_scan_hits_name_the_scanner_the_port_and_the_targets() -> None:
    (hit,) = Replay().pcap(HEUR_PCAPS / "scan-horizontal-syn.pcap")
    assert format_ip(hit.offender) == "203.0.113.50"
    assert hit.evidence["port"] == ["22"]
    assert hit.evidence["technique"] == ["syn"]
    assert hit.evidence["hosts"] == ["20"]
    (hit,) = Replay().pcap(HEUR_PCAPS / "scan-vertical-syn.pcap")
    assert (format_ip(hit.offender), format_ip(hit.victim)) == ("203.0.113.50", "10.20.0.10")
    # open ports 22 and 80 count too: the scanner reset them before completing
    assert hit.evidence["ports"] == ["20"]
    assert hit.evidence["targets"][-1] == "20"


def test_flood_evidence_counts_the_spoofed_sources() -> None:
    (hit,) = Replay().pcap(HEUR_PCAPS / "syn-flood.pcap")
    assert format_ip(hit.victim) == "10.20.0.10" and hit.victim_port == 80
    assert hit.evidence["half_open"] == ["200"]
    assert int(hit.evidence["sources"][0]) == 200


# -- benign captures ----------------------------------------------------------------------


@pytest.mark.parametrize("midstream", [False, True], ids=["default", "midstream"])
@pytest.mark.parametrize("name", BENIGN)
def test_benign_capture_raises_nothing(name: str, midstream: bool) -> None:
    path = SHARED / f"{name}.pcap"
    if not path.exists():
        pytest.skip(f"{path} not present")
    r = Replay(midstream=midstream)
    hits = r.pcap(path)
    print(f"{name} (midstream={midstream}): {len(hits)} hits {sids(hits)}; "
          f"tables {r.h.table_sizes()}")
    assert hits == [], show(hits)
    assert r.h.stats.errors == {}


def test_ndpi_mixed_hits_are_printed_for_information() -> None:
    path = SHARED / "ndpi-mixed.pcap"
    if not path.exists():
        pytest.skip(f"{path} not present")
    r = Replay(midstream=True)
    hits = r.pcap(path)
    print(f"ndpi-mixed: {len(hits)} hits {sids(hits)}")
    for h in hits:
        print(f"  {h.sid} {h.msg}: {format_ip(h.offender)} -> {format_ip(h.victim)} "
              f"{ {k: v for k, v in h.evidence.items() if k != 'example'} }")
    assert r.h.stats.errors == {}


# -- busy but legitimate clients ------------------------------------------------------------


def test_busy_client_connecting_to_many_hosts_is_not_a_scanner() -> None:
    """100 completed HTTPS connections to 100 hosts in 10 s, 40 to one host in 2 s, and
    a few refused connections: no scan, flood, beacon or brute force."""
    recs = []
    for i in range(100):
        recs += B.session(i * 100, "10.20.0.60", f"198.51.100.{i + 1}", 40000 + i, 443,
                          [(True, b"\x16\x03\x01" + bytes(60)), (False, bytes(900))], step_ms=3)
    for i in range(40):
        recs += B.session(20_000 + i * 50, "10.20.0.60", "203.0.113.9", 41000 + i, 443,
                          [(True, b"\x16\x03\x01" + bytes(60)), (False, bytes(900))], step_ms=3)
    for i in range(5):  # a handful of refused connections is not a scan
        recs.append((B.ms(30_000 + i * 10), B.tcp("10.20.0.60", f"198.51.100.{i + 1}",
                                                  42000 + i, 8443, "S", 1)))
        recs.append((B.ms(30_000 + i * 10 + 1), B.tcp(f"198.51.100.{i + 1}", "10.20.0.60",
                                                      8443, 42000 + i, "RA", 0, 2)))
    hits = Replay().records(scripted(recs))
    assert hits == [], show(hits)


def test_page_load_and_fast_polling_are_not_beacons() -> None:
    recs = []
    # a page load: 12 connections to one server at irregular sub-second gaps
    t = 0
    for i, gap in enumerate((0, 30, 45, 200, 10, 350, 80, 15, 600, 40, 900, 25)):
        t += gap
        recs += B.session(t, "10.20.0.61", "198.51.100.7", 43000 + i, 443,
                          [(True, bytes(50)), (False, bytes(500))], step_ms=2)
    # a poller every 2 s exactly: regular, but under min_interval_s
    for i in range(15):
        recs += B.session(10_000 + i * 2000, "10.20.0.61", "198.51.100.8", 44000 + i, 8080,
                          [(True, b"GET /poll HTTP/1.1\r\n\r\n"),
                           (False, b"HTTP/1.1 204 No Content\r\n\r\n")], step_ms=2)
    # NTP every 64 s is regular by design
    for i in range(12):
        ntp = B.IP(src="10.20.0.61", dst="198.51.100.123", id=1) / B.UDP(sport=50000 + i,
                                                                          dport=123)
        recs.append((B.ms(i * 64_000), ntp / bytes(48)))
    hits = Replay().records(scripted(recs))
    assert hits == [], show(hits)


def test_beacon_with_jitter_over_the_cv_limit_is_not_reported() -> None:
    recs = []
    for i in range(20):  # 60 s +- 30 s: CV ~0.3
        t = i * 60_000 + (30_000 if i % 2 else -30_000 if i % 3 else 0)
        recs += B.session(max(t, 0), "10.20.0.62", "198.51.100.80", 49000 + i, 443,
                          [(True, bytes(20))])
    assert Replay().records(scripted(recs)) == []


# -- brute force by replies -----------------------------------------------------------------


def test_ftp_530_replies_are_counted_on_the_control_connection() -> None:
    exchange: list[tuple[bool, bytes]] = [(False, b"220 FTP server ready\r\n")]
    for i in range(12):
        exchange += [(True, f"USER admin{i}\r\n".encode()), (False, b"331 Password\r\n"),
                     (True, b"PASS guess\r\n"), (False, b"530 Login incorrect.\r\n")]
    recs = B.session(0, "203.0.113.78", "10.20.0.21", 53000, 21, exchange, step_ms=200)
    hits = Replay().records(scripted(recs))
    assert sids(hits) == {H.SID_BRUTE_FTP_LOGIN: 1}, show(hits)
    assert hits[0].evidence["failures"] == ["10"]


def test_http_401_replies_count_per_client_and_server() -> None:
    recs = []
    for i in range(10):
        recs += B.session(i * 1000, "203.0.113.79", "10.20.0.80", 54000 + i, 80, [
            (True, b"GET /admin HTTP/1.1\r\nHost: guest.test\r\n"
                   b"Authorization: Basic YWRtaW46eA==\r\n\r\n"),
            (False, b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")], step_ms=5)
    hits = Replay().records(scripted(recs))
    assert sids(hits) == {H.SID_BRUTE_HTTP_AUTH: 1}, show(hits)
    # nine are not enough
    assert Replay().records(scripted(recs[: 9 * len(recs) // 10])) == []


def test_long_ssh_sessions_are_not_brute_force() -> None:
    recs = []
    for i in range(12):  # 12 connections, each 40 s long: over max_duration_s
        recs += B.session(i * 1000, "10.20.0.63", "10.20.0.22", 55000 + i, 22,
                          [(False, b"SSH-2.0-x\r\n"), (True, b"SSH-2.0-y\r\n")],
                          step_ms=8000)
    assert Replay().records(scripted(recs)) == []


# -- DNS ---------------------------------------------------------------------------------------


def _dns_query(i: int, name: str, qtype: str = "A",
               src: str = "10.20.0.31") -> tuple[Decimal, Any]:
    q = B.DNS(id=i + 1, rd=1, qd=B.DNSQR(qname=name, qtype=qtype))
    return (B.ms(i * 100), B.IP(src=src, dst="10.20.0.53", id=1)
            / B.UDP(sport=20000 + i % 30000, dport=53) / q)


def test_resolver_retries_of_one_long_name_do_not_count() -> None:
    name = "a" * 50 + ".b" + "c" * 45 + ".example.com"
    recs = [_dns_query(i, name, "TXT") for i in range(40)]
    assert Replay().records(scripted(recs)) == []


def test_ordinary_browsing_names_are_not_a_tunnel() -> None:
    names = [f"{w}.example.com" for w in ("www", "static", "img", "api", "cdn", "login")]
    names += [f"r{i}---sn-4g5e6nz7.googlevideo.example" for i in range(20)]
    names += ["1.0.0.10.in-addr.arpa", "_ipp._tcp.local"] * 20
    recs = [_dns_query(i, n) for i, n in enumerate(names)]
    assert Replay().records(scripted(recs)) == []


def test_base_domain_and_entropy() -> None:
    assert split_base_domain(b"a.b.example.com") == (b"example.com", [b"a", b"b"])
    assert split_base_domain(b"x.bbc.co.uk.") == (b"bbc.co.uk", [b"x"])
    assert split_base_domain(b"WWW.Example.COM") == (b"example.com", [b"www"])
    assert split_base_domain(b"example.com") == (b"example.com", [])
    assert shannon_entropy(b"") == 0.0
    assert shannon_entropy(b"aaaa") == 0.0
    assert shannon_entropy(bytes(range(16))) == pytest.approx(4.0)


# -- protocol / port mismatch -------------------------------------------------------------------


@pytest.mark.parametrize(("port", "first", "expected"), [
    (80, (False, b"SSH-2.0-OpenSSH_9.6\r\n"), {H.SID_MISMATCH_HTTP: 1}),
    (443, (True, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), {H.SID_MISMATCH_TLS: 1}),
    (53, (True, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), {H.SID_MISMATCH_DNS: 1}),
    (8080, (True, b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"), {}),  # allowlisted
    (80, (True, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), {}),
    (443, (True, bytes(3000)), {}),  # undetected ("failed") is not judged
])
def test_protocol_port_mismatch(port: int, first: tuple[bool, bytes],
                                expected: dict[int, int]) -> None:
    recs = B.session(0, "10.20.0.64", "198.51.100.44", 56000, port, [first])
    hits = Replay().records(scripted(recs))
    assert sids(hits) == expected, show(hits)


# -- suppression, failures, registry ---------------------------------------------------------


def test_a_scan_alerts_once_per_suppression_window_then_again() -> None:
    cfg = HeuristicsConfig(scan=ScanConfig(suppress_s=100.0))
    recs = []
    for rnd, base in enumerate((0, 30_000, 150_000)):
        for port in range(1, 41):
            t = base + port * 10
            sp = 45000 + rnd
            recs.append((B.ms(t), B.tcp(B.SCANNER, B.VICTIM, sp, port, "S", 7000)))
            recs.append((B.ms(t + 2), B.tcp(B.VICTIM, B.SCANNER, port, sp, "RA", 0, 7001)))
    r = Replay(HeuristicsEngine(cfg))
    hits = r.records(scripted(recs))
    assert [round(h.ts - 1_700_000_000) for h in hits] == [0, 150]
    assert r.h.suppressor.suppressed > 0


def test_a_failing_detector_is_counted_and_the_others_still_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object) -> None:
        raise RuntimeError("detector bug")

    monkeypatch.setattr(H.SynFloodDetector, "on_packet", boom)
    r = Replay()
    hits = r.pcap(HEUR_PCAPS / "scan-fin.pcap")
    assert sids(hits) == {H.SID_SCAN_FIN: 1}
    assert r.h.stats.errors["syn_flood"] > 0
    assert r.h.stats.hits == {H.SID_SCAN_FIN: 1}


def test_registry_is_explicit_and_detectors_can_be_disabled() -> None:
    names = [d.name for d in DEFAULT_DETECTORS]
    assert names == ["port_scan", "syn_flood", "brute_force", "dns_tunnel", "beacon",
                     "port_mismatch"]
    assert all(str(s).startswith("9001") for s in SIGNATURES)
    assert all(m.startswith("APPLIANCE HEURISTIC ") for m, _ in SIGNATURES.values())
    eng = HeuristicsEngine(HeuristicsConfig(scan=ScanConfig(enabled=False)))
    assert "port_scan" not in [d.name for d in eng.detectors]
    assert Replay(eng).pcap(HEUR_PCAPS / "scan-fin.pcap") == []
    only = HeuristicsEngine(detectors=[H.BeaconDetector])
    assert [d.name for d in only.detectors] == ["beacon"]
    assert only.on_packet(Packet(0.0, b""), None, True, True) == []


# -- bounded memory ----------------------------------------------------------------------------


def _pkt(ts: float, src: bytes, dst: bytes, proto: int, sp: int = 0, dp: int = 0,
         flags: int = -1) -> Packet:
    p = Packet(ts, b"")
    p.ipver = 4
    p.src, p.dst, p.proto, p.sp, p.dp, p.tcp_flags = src, dst, proto, sp, dp, flags
    p.l4_off = 20
    return p


def _addr(i: int) -> bytes:
    return (0x0A000000 + i).to_bytes(4, "big")


def test_spraying_200k_sources_keeps_the_scan_tables_at_their_cap() -> None:
    """FIN probes and ICMP-refused UDP probes from 200,000 spoofed sources: every scan
    table stops at ScanConfig.max_entries; the oldest sources are evicted."""
    eng = HeuristicsEngine(detectors=[H.ScanDetector])
    scan = eng.detectors[0]
    assert isinstance(scan, H.ScanDetector)
    cap = ScanConfig().max_entries
    victim = b"\xc0\x00\x02\x01"
    for i in range(200_000):
        src = _addr(i)
        ts = i * 1e-4
        eng.on_packet(_pkt(ts, src, victim, PROTO_TCP, 40000, 80, TH_FIN), None, True, True)
        icmp = _pkt(ts, victim, src, PROTO_ICMP)
        icmp.icmp_type, icmp.icmp_code = 3, 3
        icmp.icmp_inner = (PROTO_UDP, src, 40000, victim, 53)
        eng.on_packet(icmp, None, False, False)
    sizes = eng.table_sizes()
    print("table sizes after 200,000 sources:", sizes)
    assert sizes["scan.stealth"] == cap
    assert sizes["scan.by_port"] == cap
    assert sizes["scan.by_host"] == cap
    assert scan.stealth.evicted == 200_000 - cap
    assert _addr(0) not in {k[0] for k in scan.stealth._d}
    assert eng.stats.hits == {}  # one probe per source: nothing to report


def test_every_table_is_bounded() -> None:
    cfg = HeuristicsConfig(
        flood=FloodConfig(max_entries=64, half_open=10**6),
        brute=BruteForceConfig(max_entries=64),
        dns=DnsTunnelConfig(max_entries=64, max_names=128),
        beacon=BeaconConfig(max_entries=64),
        suppress_max_entries=32,
    )
    eng = HeuristicsEngine(cfg)
    fe = Engine()
    for i in range(5_000):
        src = _addr(i)
        dst = _addr(1_000_000 + i)
        syn = _pkt(float(i), src, dst, PROTO_TCP, 40000, 22, 0x02)
        f = Flow(flow_key(syn), syn, protocol_class(PROTO_TCP))
        f.ts_pkts = 1
        eng.on_packet(syn, f, True, True)
        f.flags_ts, f.flags_tc, f.last = 0x12, 0x12, float(i) + 1
        eng.on_flow_end(f)
        q = _pkt(float(i), src, b"\x0a\x00\x00\x35", PROTO_UDP, 30000, 53)
        eng.on_dns_query(q, None, f"x{i}.d{i}.example".encode(), 16)
        eng.on_http_status(q, f, 401)
    del fe
    for s in range(5_000):  # distinct suppression keys
        eng.suppressor.allow(("k", s), 0.0, 10.0)
    sizes = eng.table_sizes()
    print(sizes)
    assert sizes["flood.victims"] == 64
    assert sizes["brute.conns"] == 64
    assert sizes["brute.failures"] == 64
    assert sizes["dns.domains"] == 64
    assert sizes["dns.names"] == 128
    assert sizes["beacon.pairs"] == 64
    assert sizes["suppress"] == 32
