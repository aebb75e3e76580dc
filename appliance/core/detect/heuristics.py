"""Heuristic detectors: behaviour that signatures miss.

Port scans, SYN floods, brute force, DNS tunnelling, beaconing and protocol/port
mismatch. Like the rest of the core this module is sans-I/O (DESIGN.md principle 1):
time is the packet's timestamp (or a flow's), nothing reads a clock, a socket or a file.

Shape (mitmproxy-style addons): each detector is a small class with a frozen config,
listed in `DEFAULT_DETECTORS` (principle 6). `HeuristicsEngine` instantiates them and
routes the engine's hooks to the detectors that implement them:

- `on_packet(p, flow, to_server, new_flow)` for every decoded packet (after the flow
  update). Established TCP data packets leave at the first test (`_skip`), so the
  common path costs a handful of attribute reads;
- `on_flow_end(flow)` for every flow the flow table retires (brute force counts short
  completed connections, the scan detector counts attempts that never completed);
- `on_app_proto(flow, ts)` once the app layer decided a flow's protocol;
- `on_dns_query(p, flow, qname, qtype)` per DNS question, `on_http_status(p, flow,
  status)` per HTTP response, wired from the app-layer parsers.

Each returns a list of `HeuristicHit` (gid 9001, one stable sid per detector variant,
`SIGNATURES`); a hit fires at most once per (sid, offender, victim) per suppression
window, so a long scan is one alert, not thousands. A detector that raises is counted
in `stats.errors` and the others still run (principle 7).

Memory is bounded: every per-source (or per-victim) table is an `LruTable` with a cap in
entries; a full table drops its least recently used entry. Each entry holds at most a
threshold's worth of items. An attacker spraying a million spoofed sources only churns
the tables (bench/heuristics_memory.py measures it).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, ClassVar, Final, Generic, TypeVar

from appliance.core.decode import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TH_ACK,
    TH_FIN,
    TH_PUSH,
    TH_RST,
    TH_SYN,
    TH_URG,
    Packet,
)
from appliance.core.flows import Flow
from appliance.core.records import format_ip
from appliance.core.stream import FLOW_ESTABLISHED

GID: Final = 9001
# alert.category of every heuristic alert (a classtype of its own, so policy and
# dashboards can tell behaviour from signature matches).
CATEGORY: Final = "heuristic"

SID_SCAN_HORIZONTAL: Final = 9001001
SID_SCAN_VERTICAL: Final = 9001002
SID_SYN_FLOOD: Final = 9001003
SID_SCAN_FIN: Final = 9001004
SID_SCAN_NULL: Final = 9001005
SID_SCAN_XMAS: Final = 9001006
SID_SCAN_UDP_HORIZONTAL: Final = 9001007
SID_SCAN_UDP_VERTICAL: Final = 9001008
SID_BRUTE_SSH: Final = 9001010
SID_BRUTE_RDP: Final = 9001011
SID_BRUTE_FTP: Final = 9001012
SID_BRUTE_HTTP_AUTH: Final = 9001014
SID_BRUTE_FTP_LOGIN: Final = 9001015
SID_DNS_LONG_LABEL: Final = 9001020
SID_DNS_HIGH_ENTROPY: Final = 9001021
SID_DNS_MANY_SUBDOMAINS: Final = 9001022
SID_DNS_UNUSUAL_QTYPE: Final = 9001023
SID_BEACON: Final = 9001030
SID_MISMATCH_HTTP: Final = 9001040
SID_MISMATCH_TLS: Final = 9001041
SID_MISMATCH_DNS: Final = 9001042

# sid -> (msg, severity). Severity as Suricata's classification priorities: 1 high.
SIGNATURES: Final[dict[int, tuple[str, int]]] = {
    SID_SCAN_HORIZONTAL: ("APPLIANCE HEURISTIC horizontal TCP port scan", 2),
    SID_SCAN_VERTICAL: ("APPLIANCE HEURISTIC vertical TCP port scan", 2),
    SID_SYN_FLOOD: ("APPLIANCE HEURISTIC TCP SYN flood (half-open surge)", 1),
    SID_SCAN_FIN: ("APPLIANCE HEURISTIC TCP FIN scan", 2),
    SID_SCAN_NULL: ("APPLIANCE HEURISTIC TCP NULL scan", 2),
    SID_SCAN_XMAS: ("APPLIANCE HEURISTIC TCP Xmas scan", 2),
    SID_SCAN_UDP_HORIZONTAL: ("APPLIANCE HEURISTIC horizontal UDP port scan", 2),
    SID_SCAN_UDP_VERTICAL: ("APPLIANCE HEURISTIC vertical UDP port scan", 2),
    SID_BRUTE_SSH: ("APPLIANCE HEURISTIC SSH brute force (many short connections)", 1),
    SID_BRUTE_RDP: ("APPLIANCE HEURISTIC RDP brute force (many short connections)", 1),
    SID_BRUTE_FTP: ("APPLIANCE HEURISTIC FTP brute force (many short connections)", 1),
    SID_BRUTE_HTTP_AUTH: ("APPLIANCE HEURISTIC HTTP authentication brute force (401/407)", 1),
    SID_BRUTE_FTP_LOGIN: ("APPLIANCE HEURISTIC FTP login brute force (530 replies)", 1),
    SID_DNS_LONG_LABEL: ("APPLIANCE HEURISTIC DNS tunnel: long labels", 2),
    SID_DNS_HIGH_ENTROPY: ("APPLIANCE HEURISTIC DNS tunnel: high-entropy subdomains", 2),
    SID_DNS_MANY_SUBDOMAINS: ("APPLIANCE HEURISTIC DNS tunnel: many distinct subdomains", 2),
    SID_DNS_UNUSUAL_QTYPE: ("APPLIANCE HEURISTIC DNS tunnel: unusual query types", 2),
    SID_BEACON: ("APPLIANCE HEURISTIC beaconing: connections at regular intervals", 2),
    SID_MISMATCH_HTTP: ("APPLIANCE HEURISTIC non-HTTP protocol on an HTTP port", 3),
    SID_MISMATCH_TLS: ("APPLIANCE HEURISTIC non-TLS protocol on a TLS port", 3),
    SID_MISMATCH_DNS: ("APPLIANCE HEURISTIC non-DNS protocol on a DNS port", 3),
}

_SYN_ACK_RST: Final = TH_SYN | TH_ACK | TH_RST
_SCAN_FLAG_MASK: Final = TH_FIN | TH_SYN | TH_RST | TH_PUSH | TH_ACK | TH_URG  # not ECE/CWR
_XMAS: Final = TH_FIN | TH_PUSH | TH_URG


@dataclass(frozen=True, slots=True)
class HeuristicHit:
    """One heuristic detection, ready for an EVE alert (alert.metadata = evidence).

    `offender` is the address behaving badly (scanner, flooder, client); `victim` the
    host it targets (for a horizontal scan: the last host probed). `victim_port` is 0
    where no single port applies. `ts` is packet time (a flow's last packet for hits
    raised at flow end)."""

    sid: int
    msg: str
    severity: int
    ts: float
    offender: bytes
    victim: bytes
    evidence: dict[str, list[str]] = field(hash=False)
    proto: int = 0
    victim_port: int = 0
    detector: str = ""
    gid: int = GID
    rev: int = 1
    category: str = CATEGORY


# -- bounded state ---------------------------------------------------------------------

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
H = TypeVar("H", bound=Hashable)


class LruTable(Generic[K, V]):
    """A dict with a cap in entries; a full table drops its least recently used entry.
    Every operation is O(1) (OrderedDict keeps the recency order as a linked list)."""

    __slots__ = ("_d", "_factory", "cap", "evicted")

    def __init__(self, cap: int, factory: Callable[[], V]) -> None:
        self.cap = max(1, cap)
        self._factory = factory
        self._d: OrderedDict[K, V] = OrderedDict()
        self.evicted = 0

    def touch(self, key: K) -> V:
        """The entry for `key`, created if missing, now the most recently used."""
        d = self._d
        v = d.get(key)
        if v is None:
            v = self._factory()
            d[key] = v
            if len(d) > self.cap:
                d.popitem(last=False)
                self.evicted += 1
        else:
            d.move_to_end(key)
        return v

    def get(self, key: K) -> V | None:
        return self._d.get(key)

    def pop(self, key: K) -> None:
        self._d.pop(key, None)

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d


class Distinct(Generic[H]):
    """Distinct items seen within a sliding window, the `cap` most recent at most.

    Items sit in insertion order (re-adding moves one to the end), so expiry pops from
    the front while the front is older than the window. Times from flow ends may come a
    little out of order; such an item is expired late, never early, and the cap still
    bounds the entry."""

    __slots__ = ("items", "newest")

    def __init__(self) -> None:
        self.items: dict[H, float] = {}
        self.newest = -math.inf

    def add(self, item: H, ts: float, window: float, cap: int) -> int:
        items = self.items
        if item in items:
            del items[item]
        items[item] = ts
        if ts > self.newest:
            self.newest = ts
        limit = self.newest - window
        while items:
            first = next(iter(items))
            if items[first] >= limit and len(items) <= cap:
                break
            del items[first]
        return len(items)


def _rate(times: list[float], ts: float, n: int, window: float) -> bool:
    """Record an event; True when the last `n` events fit in `window` seconds. `times`
    keeps at most n entries, so a check costs O(n) with n a small threshold."""
    times.append(ts)
    if len(times) > n:
        del times[0]
    return len(times) >= n and max(times) - min(times) <= window


def _ip(a: bytes) -> str:
    return format_ip(a) if a else ""


def _completed(flow: Flow) -> bool:
    """The three-way handshake completed: the server sent a SYN and the client an ACK.
    A SYN scanner answers a SYN-ACK with a bare RST (nmap, the Linux stack alike), so
    its attempts never complete; legitimate clients always do."""
    return bool(flow.flags_tc & TH_SYN) and bool(flow.flags_ts & TH_ACK)


def _is_multicast_or_broadcast(a: bytes) -> bool:
    if len(a) == 4:
        return a[0] >= 224 or a == b"\xff\xff\xff\xff"
    return a[:1] == b"\xff"


# -- suppression -------------------------------------------------------------------------


class Suppressor:
    """At most one hit per key per window. Bounded like every table here: when full, the
    entry closest to the least recently fired goes (that key may then fire again)."""

    __slots__ = ("_until", "cap", "suppressed")

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self._until: OrderedDict[Hashable, float] = OrderedDict()
        self.suppressed = 0

    def allow(self, key: Hashable, ts: float, window: float) -> bool:
        d = self._until
        until = d.get(key)
        if until is not None and ts < until:
            self.suppressed += 1
            return False
        d[key] = ts + window
        d.move_to_end(key)
        if len(d) > self.cap:
            d.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._until)


# -- configuration -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanConfig:
    enabled: bool = True
    # nmap's default timing (-T3) probes 1,000 ports in seconds; slow scans (-T1/-T2)
    # send one probe every 15 s / 0.4 s. A 60 s window catches -T2 and faster while a
    # client's occasional failed connections (a dead link, a closed port) stay far apart.
    window_s: float = 60.0
    # Distinct hosts on one port whose connection attempts failed (RST, ICMP unreachable,
    # no answer): 20 failures to 20 different hosts in a minute is not something a
    # browser or a backup job does; worm-style sweeps probe hundreds.
    horizontal_hosts: int = 20
    # Distinct failed ports on one host: 20 closed ports in a minute is a scan (nmap's
    # fast scan tries 100), while a client retrying one service re-uses one port.
    vertical_ports: int = 20
    # FIN-only, NULL and Xmas probes to distinct (host, port): a legitimate stack never
    # sends these flag sets, so a handful is enough.
    stealth_targets: int = 5
    # Count UDP flows that got no answer at all as failed probes (next to ICMP
    # unreachables). Multicast/broadcast destinations are never counted.
    udp_unanswered: bool = True
    max_entries: int = 32_768  # per table (by port, by host, stealth)
    suppress_s: float = 600.0


@dataclass(frozen=True, slots=True)
class FloodConfig:
    enabled: bool = True
    # Half-open connections (SYN seen, neither completed nor reset) towards one host
    # within the window. Linux starts SYN cookies at a backlog of a few hundred
    # (net.ipv4.tcp_max_syn_backlog defaults to 128-1024); 200 half-open in 10 s from a
    # busy client population would need a server that stopped answering, which is
    # worth an alert too. A handshake completes in one RTT, so real clients leave
    # almost nothing pending.
    half_open: int = 200
    window_s: float = 10.0
    max_entries: int = 1_024  # (victim, port) pairs; each holds at most `half_open` flows
    suppress_s: float = 300.0


# Service port -> (name, sid) for short-connection brute force.
BRUTE_SERVICES: Final[dict[int, tuple[str, int]]] = {
    22: ("ssh", SID_BRUTE_SSH),
    3389: ("rdp", SID_BRUTE_RDP),
    21: ("ftp", SID_BRUTE_FTP),
}


@dataclass(frozen=True, slots=True)
class BruteForceConfig:
    enabled: bool = True
    ports: frozenset[int] = frozenset(BRUTE_SERVICES)
    # Completed connections to one service on one server that lasted at most
    # `max_duration_s` and carried at most `max_payload` bytes (both directions):
    # a failed SSH login closes within seconds after a ~3-5 KB key exchange; an
    # interactive session or a file copy is longer or bigger. Tools such as hydra
    # open 4-16 connections in parallel and several per second.
    short_connections: int = 10
    max_duration_s: float = 30.0
    max_payload: int = 20_000
    # HTTP 401/407 and FTP 530 replies from one server to one client: a person
    # mistypes a password a few times, not ten times a minute.
    failed_logins: int = 10
    window_s: float = 60.0
    ftp_ports: frozenset[int] = frozenset({21})
    max_entries: int = 32_768
    suppress_s: float = 600.0


@dataclass(frozen=True, slots=True)
class DnsTunnelConfig:
    enabled: bool = True
    window_s: float = 60.0
    # RFC 1035 allows 63-byte labels; ordinary names rarely pass 30 characters per label
    # while iodine, dnscat2 and DNSExfiltrator fill labels to 50-63 bytes.
    long_label: int = 40
    long_label_queries: int = 5
    # Shannon entropy (bits per character) of the subdomain part (labels left of the base
    # domain, dots removed), measured when it is at least `entropy_min_len` long: words
    # and host names stay near 3-3.5, base32/base64 payloads reach 4.2-5.5.
    entropy_bits: float = 4.0
    entropy_min_len: int = 24
    entropy_queries: int = 10
    # Distinct names under one base domain from one source: a web page touches tens of
    # names of one site; a tunnel needs a fresh name per message (hundreds a minute).
    distinct_subdomains: int = 150
    # TXT, NULL (10) and ANY (255): the carriers of tunnel replies (iodine prefers NULL,
    # dnscat2 TXT). Mail servers query TXT (SPF, DKIM) but over many domains, not ten
    # times a minute under one.
    unusual_qtypes: frozenset[int] = frozenset({10, 16, 255})
    unusual_queries: int = 10
    # Base domains never considered (e.g. anti-virus reputation services that encode
    # hashes in names). Lowercase, without trailing dot.
    allow_domains: frozenset[bytes] = frozenset()
    # Top-level labels never considered: mDNS/DNS-SD service names under .local
    # (RFC 6762; instance names embed device ids and ANY queries are the norm) and
    # reverse lookups under .arpa (a mail or log server resolves thousands of PTRs).
    ignore_tlds: frozenset[bytes] = frozenset({b"local", b"arpa"})
    max_entries: int = 16_384  # (source, base domain) pairs
    max_names: int = 65_536  # (source, name) pairs remembered to count distinct names
    suppress_s: float = 600.0


@dataclass(frozen=True, slots=True)
class BeaconConfig:
    enabled: bool = True
    # Connections from one source to one destination ip:port whose start-to-start gaps
    # have a coefficient of variation (stdev / mean) at most `max_cv` over the last
    # `connections` starts. Implants sleep a fixed period with 0-20 % jitter; a person
    # browsing is bursty (CV well above 1). 10 connections makes a chance match of an
    # irregular pattern unlikely while a 60 s beacon shows within ten minutes.
    connections: int = 10
    max_cv: float = 0.1
    # Mean gap bounds: below 10 s regularity is mostly keepalives, retries and polling
    # loops of the application itself; above 1 h the history outlives the entry.
    min_interval_s: float = 10.0
    max_interval_s: float = 3600.0
    # Protocols that are periodic by design: NTP, DNS, mDNS, NetBIOS, SSDP, DHCP.
    ignore_udp_ports: frozenset[int] = frozenset({53, 67, 68, 123, 137, 138, 1900, 5353})
    max_entries: int = 32_768
    # A beacon keeps beaconing: once a day per (source, destination) is enough.
    suppress_s: float = 86_400.0


def _default_expected() -> dict[tuple[int, int], str]:
    return {
        (PROTO_TCP, 80): "http",
        (PROTO_TCP, 8080): "http",
        (PROTO_TCP, 443): "tls",
        (PROTO_TCP, 53): "dns",
        (PROTO_UDP, 53): "dns",
    }


@dataclass(frozen=True, slots=True)
class MismatchConfig:
    enabled: bool = True
    # (ip protocol, server port) -> the app_proto expected there. UDP/443 is left out on
    # purpose: it is QUIC, which the app layer does not name.
    expected: dict[tuple[int, int], str] = field(default_factory=_default_expected)
    # (ip protocol, port, app_proto) seen in ordinary networks: TLS on 8080 (admin
    # consoles, proxies' TLS ports).
    allow: frozenset[tuple[int, int, str]] = frozenset({(PROTO_TCP, 8080, "tls")})
    suppress_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class HeuristicsConfig:
    scan: ScanConfig = field(default_factory=ScanConfig)
    flood: FloodConfig = field(default_factory=FloodConfig)
    brute: BruteForceConfig = field(default_factory=BruteForceConfig)
    dns: DnsTunnelConfig = field(default_factory=DnsTunnelConfig)
    beacon: BeaconConfig = field(default_factory=BeaconConfig)
    mismatch: MismatchConfig = field(default_factory=MismatchConfig)
    # Suppression keys remembered (one per alerting offender/victim pair).
    suppress_max_entries: int = 65_536


# -- detectors ---------------------------------------------------------------------------


class Detector:
    """Base of the detectors: no-op hooks plus `fire()`. A subclass overrides only the
    hooks it needs; the engine calls only those."""

    name: ClassVar[str] = ""

    def __init__(self, config: HeuristicsConfig, suppressor: Suppressor) -> None:
        self._sup = suppressor

    @property
    def enabled(self) -> bool:
        return True

    def on_packet(self, p: Packet, flow: Flow | None, to_server: bool, new_flow: bool,
                  out: list[HeuristicHit]) -> None:
        return None

    def on_flow_end(self, flow: Flow, out: list[HeuristicHit]) -> None:
        return None

    def on_app_proto(self, flow: Flow, ts: float, out: list[HeuristicHit]) -> None:
        return None

    def on_dns_query(self, p: Packet, flow: Flow | None, qname: bytes, qtype: int,
                     out: list[HeuristicHit]) -> None:
        return None

    def on_http_status(self, p: Packet, flow: Flow, status: int,
                       out: list[HeuristicHit]) -> None:
        return None

    def tables(self) -> dict[str, int]:
        """Entries per table, for stats and the memory bench."""
        return {}

    def fire(self, out: list[HeuristicHit], sid: int, ts: float, offender: bytes,
             victim: bytes, key: Hashable, window: float, evidence: dict[str, list[str]],
             proto: int = 0, port: int = 0) -> bool:
        if not self._sup.allow((sid, key), ts, window):
            return False
        msg, severity = SIGNATURES[sid]
        ev = {"heuristic": [self.name], **evidence}
        out.append(HeuristicHit(sid, msg, severity, ts, offender, victim, ev, proto, port,
                                self.name))
        return True


_STEALTH_SID: Final = {"fin": SID_SCAN_FIN, "null": SID_SCAN_NULL, "xmas": SID_SCAN_XMAS}
# Evidence lists are capped: metadata must stay a readable size.
_EVIDENCE_MAX: Final = 16


def _stealth_kind(flags: int) -> str | None:
    f = flags & _SCAN_FLAG_MASK
    if f == TH_FIN:
        return "fin"
    if f == 0:
        return "null"
    if f == _XMAS:
        return "xmas"
    return None


class ScanDetector(Detector):
    """Horizontal (one port, many hosts) and vertical (one host, many ports) scans by TCP
    SYN and UDP, and FIN/NULL/Xmas probes, by source inside a sliding window.

    Only failed attempts count, so a busy client is never a scanner: a TCP attempt fails
    when it is reset before the handshake completed or never completes (counted at flow
    end); a UDP probe when an ICMP unreachable quotes it or no answer ever came. FIN,
    NULL and Xmas probes count as sent: no legitimate stack sends those flag sets."""

    name = "port_scan"

    def __init__(self, config: HeuristicsConfig, suppressor: Suppressor) -> None:
        super().__init__(config, suppressor)
        c = self.cfg = config.scan
        self.by_port: LruTable[tuple[bytes, int, int], Distinct[bytes]] = LruTable(
            c.max_entries, Distinct[bytes])
        self.by_host: LruTable[tuple[bytes, bytes, int], Distinct[int]] = LruTable(
            c.max_entries, Distinct[int])
        self.stealth: LruTable[tuple[bytes, str], Distinct[tuple[bytes, int]]] = LruTable(
            c.max_entries, Distinct[tuple[bytes, int]])

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def tables(self) -> dict[str, int]:
        return {"scan.by_port": len(self.by_port), "scan.by_host": len(self.by_host),
                "scan.stealth": len(self.stealth)}

    def on_packet(self, p: Packet, flow: Flow | None, to_server: bool, new_flow: bool,
                  out: list[HeuristicHit]) -> None:
        proto = p.proto
        if proto == PROTO_TCP:
            fl = p.tcp_flags
            if not fl & _SYN_ACK_RST:
                kind = _stealth_kind(fl)
                if kind is not None:
                    self._stealth(p, kind, out)
            elif fl & TH_RST and flow is not None and flow.flags_ts & TH_SYN \
                    and not _completed(flow):
                self._failed(flow.src, flow.dst, flow.dp, PROTO_TCP, p.ts, out)
        elif proto == PROTO_ICMP or proto == PROTO_ICMPV6:
            inner = p.icmp_inner
            # Destination unreachable: ICMPv4 type 3 (RFC 792), ICMPv6 type 1 (RFC 4443).
            if inner is not None and p.icmp_type == (3 if proto == PROTO_ICMP else 1):
                iproto, isrc, _isp, idst, idp = inner
                if iproto == PROTO_TCP or iproto == PROTO_UDP:
                    self._failed(isrc, idst, idp, iproto, p.ts, out)

    def on_flow_end(self, flow: Flow, out: list[HeuristicHit]) -> None:
        if flow.proto == PROTO_TCP:
            if flow.flags_ts & TH_SYN and not _completed(flow) and not flow.flags_tc & TH_RST \
                    and not flow.flags_ts & TH_RST:
                # Never answered (resets were counted when they passed).
                self._failed(flow.src, flow.dst, flow.dp, PROTO_TCP, flow.last, out)
        elif flow.proto == PROTO_UDP and self.cfg.udp_unanswered and flow.ts_pkts \
                and not flow.tc_pkts and not _is_multicast_or_broadcast(flow.dst):
            self._failed(flow.src, flow.dst, flow.dp, PROTO_UDP, flow.last, out)

    def _failed(self, src: bytes, dst: bytes, port: int, proto: int, ts: float,
                out: list[HeuristicHit]) -> None:
        c = self.cfg
        w = c.window_s
        tcp = proto == PROTO_TCP
        h = self.by_port.touch((src, port, proto))
        n = h.add(dst, ts, w, c.horizontal_hosts)
        if n >= c.horizontal_hosts:
            hosts = [_ip(x) for x in h.items][-_EVIDENCE_MAX:]
            self.fire(out, SID_SCAN_HORIZONTAL if tcp else SID_SCAN_UDP_HORIZONTAL, ts, src,
                      dst, src, c.suppress_s,
                      {"technique": ["syn" if tcp else "udp"], "shape": ["horizontal"],
                       "port": [str(port)], "hosts": [str(n)], "window_s": [f"{w:g}"],
                       "targets": hosts}, proto, port)
        v = self.by_host.touch((src, dst, proto))
        n = v.add(port, ts, w, c.vertical_ports)
        if n >= c.vertical_ports:
            ports = [str(x) for x in v.items][-_EVIDENCE_MAX:]
            self.fire(out, SID_SCAN_VERTICAL if tcp else SID_SCAN_UDP_VERTICAL, ts, src, dst,
                      (src, dst), c.suppress_s,
                      {"technique": ["syn" if tcp else "udp"], "shape": ["vertical"],
                       "ports": [str(n)], "window_s": [f"{w:g}"], "targets": ports},
                      proto, 0)

    def _stealth(self, p: Packet, kind: str, out: list[HeuristicHit]) -> None:
        c = self.cfg
        d = self.stealth.touch((p.src, kind))
        n = d.add((p.dst, p.dp), p.ts, c.window_s, c.stealth_targets)
        if n >= c.stealth_targets:
            targets = [f"{_ip(a)}:{pt}" for a, pt in d.items]
            self.fire(out, _STEALTH_SID[kind], p.ts, p.src, p.dst, p.src, c.suppress_s,
                      {"technique": [kind], "probes": [str(n)],
                       "window_s": [f"{c.window_s:g}"], "targets": targets[-_EVIDENCE_MAX:]},
                      PROTO_TCP, p.dp)


class _Pending:
    __slots__ = ("flows", "quiet_until")

    def __init__(self) -> None:
        self.flows: dict[int, tuple[float, bytes]] = {}  # flow_id -> (SYN time, source)
        self.quiet_until = -math.inf


class SynFloodDetector(Detector):
    """Half-open connections towards one service (host and port): SYNs whose handshake
    neither completed (client ACK) nor was reset, within a window. Keyed by victim,
    since flood sources are usually spoofed (the evidence counts them), and by port, so
    a scan of many filtered ports is a scan (ScanDetector), not a flood."""

    name = "syn_flood"

    def __init__(self, config: HeuristicsConfig, suppressor: Suppressor) -> None:
        super().__init__(config, suppressor)
        self.cfg = config.flood
        self.victims: LruTable[tuple[bytes, int], _Pending] = LruTable(
            self.cfg.max_entries, _Pending)

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def tables(self) -> dict[str, int]:
        return {"flood.victims": len(self.victims)}

    def on_packet(self, p: Packet, flow: Flow | None, to_server: bool, new_flow: bool,
                  out: list[HeuristicHit]) -> None:
        if p.proto != PROTO_TCP or flow is None:
            return
        fl = p.tcp_flags
        if new_flow:
            if to_server and fl & _SYN_ACK_RST == TH_SYN:
                self._syn(p, flow, out)
            return
        if fl & TH_RST or (to_server and fl & TH_ACK and flow.ts_pkts <= 3):
            # Completed (the client's ACK is its 2nd or 3rd packet with one SYN
            # retransmission) or reset: the server holds no half-open state for it.
            e = self.victims.get((flow.dst, flow.dp))
            if e is not None:
                e.flows.pop(flow.flow_id, None)

    def _syn(self, p: Packet, flow: Flow, out: list[HeuristicHit]) -> None:
        c = self.cfg
        e = self.victims.touch((p.dst, p.dp))
        ts = p.ts
        if ts < e.quiet_until:
            return  # already reported: stop tracking this flood until it is over
        flows = e.flows
        flows[flow.flow_id] = (ts, p.src)
        limit = ts - c.window_s
        while flows:
            first = next(iter(flows))
            if flows[first][0] >= limit and len(flows) <= c.half_open:
                break
            del flows[first]
        if len(flows) >= c.half_open:
            srcs = Counter(s for _t, s in flows.values())
            top = [f"{_ip(a)}={n}" for a, n in srcs.most_common(5)]
            if self.fire(out, SID_SYN_FLOOD, ts, p.src, p.dst, (p.dst, p.dp), c.suppress_s,
                         {"half_open": [str(len(flows))], "sources": [str(len(srcs))],
                          "top_sources": top, "port": [str(p.dp)],
                          "window_s": [f"{c.window_s:g}"]}, PROTO_TCP, p.dp):
                e.quiet_until = ts + c.suppress_s
                flows.clear()


class BruteForceDetector(Detector):
    """Many short completed connections from one client to SSH, RDP or FTP on one
    server (at flow end), many HTTP 401/407 replies (on_http_status) and many FTP 530
    replies (sniffed on the FTP control connection)."""

    name = "brute_force"

    def __init__(self, config: HeuristicsConfig, suppressor: Suppressor) -> None:
        super().__init__(config, suppressor)
        c = self.cfg = config.brute
        self.conns: LruTable[tuple[bytes, bytes, int], list[float]] = LruTable(
            c.max_entries, list)
        self.failures: LruTable[tuple[bytes, bytes, str], list[float]] = LruTable(
            c.max_entries, list)

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def tables(self) -> dict[str, int]:
        return {"brute.conns": len(self.conns), "brute.failures": len(self.failures)}

    def on_flow_end(self, flow: Flow, out: list[HeuristicHit]) -> None:
        c = self.cfg
        if flow.proto != PROTO_TCP or flow.dp not in c.ports or not _completed(flow):
            return
        if flow.last - flow.start > c.max_duration_s \
                or flow.ts_payload + flow.tc_payload > c.max_payload:
            return
        times = self.conns.touch((flow.src, flow.dst, flow.dp))
        if _rate(times, flow.start, c.short_connections, c.window_s):
            svc, sid = BRUTE_SERVICES.get(flow.dp, (str(flow.dp), SID_BRUTE_SSH))
            self.fire(out, sid, flow.last, flow.src, flow.dst, (flow.src, flow.dst, flow.dp),
                      c.suppress_s,
                      {"service": [svc], "port": [str(flow.dp)],
                       "short_connections": [str(len(times))],
                       "window_s": [f"{c.window_s:g}"]}, PROTO_TCP, flow.dp)

    def on_packet(self, p: Packet, flow: Flow | None, to_server: bool, new_flow: bool,
                  out: list[HeuristicHit]) -> None:
        # RFC 959: "530 Not logged in." answers a rejected USER/PASS.
        if not to_server and flow is not None and p.proto == PROTO_TCP \
                and flow.dp in self.cfg.ftp_ports and p.payload[:4] in (b"530 ", b"530-"):
            self._failure(p.ts, flow, "ftp", SID_BRUTE_FTP_LOGIN, "530", out)

    def on_http_status(self, p: Packet, flow: Flow, status: int,
                       out: list[HeuristicHit]) -> None:
        if status == 401 or status == 407:
            self._failure(p.ts, flow, "http", SID_BRUTE_HTTP_AUTH, str(status), out)

    def _failure(self, ts: float, flow: Flow, svc: str, sid: int, code: str,
                 out: list[HeuristicHit]) -> None:
        c = self.cfg
        times = self.failures.touch((flow.src, flow.dst, svc))
        if _rate(times, ts, c.failed_logins, c.window_s):
            self.fire(out, sid, ts, flow.src, flow.dst, (flow.src, flow.dst, svc), c.suppress_s,
                      {"service": [svc], "reply": [code], "failures": [str(len(times))],
                       "port": [str(flow.dp)], "window_s": [f"{c.window_s:g}"]},
                      flow.proto, flow.dp)


def split_base_domain(name: bytes) -> tuple[bytes, list[bytes]]:
    """(base domain, labels left of it) for a query name, lowercased.

    The base is the registrable domain approximated without a public-suffix list: the
    last two labels, or three when the top level is a two-letter country code and the
    second level is short (co.uk, com.au, ac.jp). A few names split wrong (x.t.co keeps
    t.co's sibling as base); that only moves counting one level, never loses it."""
    labels = name.rstrip(b".").lower().split(b".")
    k = 3 if len(labels) >= 3 and len(labels[-1]) == 2 and len(labels[-2]) <= 3 else 2
    if len(labels) <= k:
        return b".".join(labels), []
    return b".".join(labels[-k:]), labels[:-k]


def shannon_entropy(data: bytes) -> float:
    """Bits per byte of `data`'s byte distribution."""
    n = len(data)
    if not n:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(data).values())


class _DnsEntry:
    __slots__ = ("entropy", "last", "long", "names", "qtypes")

    def __init__(self) -> None:
        self.long: list[float] = []
        self.entropy: list[float] = []
        self.names: list[float] = []
        self.qtypes: list[float] = []
        self.last = b""


class DnsTunnelDetector(Detector):
    """DNS tunnelling and exfiltration, per (source, base domain): new names (not asked
    recently by the same source) with long labels, with high-entropy subdomains, in
    large numbers, or of unusual query types."""

    name = "dns_tunnel"

    def __init__(self, config: HeuristicsConfig, suppressor: Suppressor) -> None:
        super().__init__(config, suppressor)
        c = self.cfg = config.dns
        self.domains: LruTable[tuple[bytes, bytes], _DnsEntry] = LruTable(
            c.max_entries, _DnsEntry)
        # Names seen recently, to count only new names towards `distinct_subdomains`;
        # the key is a hash so an entry costs one int whatever the name's length.
        self.seen: OrderedDict[int, None] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def tables(self) -> dict[str, int]:
        return {"dns.domains": len(self.domains), "dns.names": len(self.seen)}

    def on_dns_query(self, p: Packet, flow: Flow | None, qname: bytes, qtype: int,
                     out: list[HeuristicHit]) -> None:
        c = self.cfg
        name = qname.rstrip(b".").lower()
        if name.rsplit(b".", 1)[-1] in c.ignore_tlds:
            return
        src = p.src
        # Only names this source has not asked recently count: resolvers retry, apps
        # re-resolve, and a tunnel needs a fresh name per message (caching would
        # otherwise swallow its data), so repeats carry no signal.
        h = hash((src, name))
        seen = self.seen
        if h in seen:
            seen.move_to_end(h)
            return
        seen[h] = None
        if len(seen) > c.max_names:
            seen.popitem(last=False)
        base, sub = split_base_domain(name)
        if base in c.allow_domains:
            return
        ts = p.ts
        e = self.domains.touch((src, base))
        e.last = name[:255]
        w = c.window_s
        if sub:
            longest = max(len(x) for x in sub)
            if longest > c.long_label and _rate(e.long, ts, c.long_label_queries, w):
                self._fire(out, SID_DNS_LONG_LABEL, p, base, e,
                           {"queries": [str(len(e.long))], "longest_label": [str(longest)]})
            joined = b"".join(sub)
            if len(joined) >= c.entropy_min_len:
                ent = shannon_entropy(joined)
                if ent >= c.entropy_bits and _rate(e.entropy, ts, c.entropy_queries, w):
                    self._fire(out, SID_DNS_HIGH_ENTROPY, p, base, e,
                               {"queries": [str(len(e.entropy))], "entropy": [f"{ent:.2f}"]})
            if _rate(e.names, ts, c.distinct_subdomains, w):
                self._fire(out, SID_DNS_MANY_SUBDOMAINS, p, base, e,
                           {"distinct_names": [str(len(e.names))]})
        if qtype in c.unusual_qtypes and _rate(e.qtypes, ts, c.unusual_queries, w):
            self._fire(out, SID_DNS_UNUSUAL_QTYPE, p, base, e,
                       {"queries": [str(len(e.qtypes))], "qtype": [str(qtype)]})

    def _fire(self, out: list[HeuristicHit], sid: int, p: Packet, base: bytes, e: _DnsEntry,
              extra: dict[str, list[str]]) -> None:
        c = self.cfg
        ev = {"domain": [base.decode("ascii", "backslashreplace")],
              "example": [e.last.decode("ascii", "backslashreplace")],
              "window_s": [f"{c.window_s:g}"], **extra}
        self.fire(out, sid, p.ts, p.src, p.dst, (p.src, base), c.suppress_s, ev, p.proto,
                  p.dp)


class BeaconDetector(Detector):
    """A source opening connections to one destination ip:port at regular intervals:
    the coefficient of variation of the gaps between connection starts is small."""

    name = "beacon"

    def __init__(self, config: HeuristicsConfig, suppressor: Suppressor) -> None:
        super().__init__(config, suppressor)
        c = self.cfg = config.beacon
        self.pairs: LruTable[tuple[bytes, bytes, int, int], list[float]] = LruTable(
            c.max_entries, list)

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def tables(self) -> dict[str, int]:
        return {"beacon.pairs": len(self.pairs)}

    def on_packet(self, p: Packet, flow: Flow | None, to_server: bool, new_flow: bool,
                  out: list[HeuristicHit]) -> None:
        if not new_flow or not to_server:
            return
        proto = p.proto
        if proto == PROTO_TCP:
            if p.tcp_flags & _SYN_ACK_RST != TH_SYN:
                return
        elif proto != PROTO_UDP or p.dp in self.cfg.ignore_udp_ports \
                or _is_multicast_or_broadcast(p.dst):
            return
        c = self.cfg
        starts = self.pairs.touch((p.src, p.dst, p.dp, proto))
        starts.append(p.ts)
        n = c.connections
        if len(starts) > n:
            del starts[0]
        if len(starts) < n:
            return
        gaps = [b - a for a, b in pairwise(starts)]
        mean = sum(gaps) / len(gaps)
        if not c.min_interval_s <= mean <= c.max_interval_s:
            return
        sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
        cv = sd / mean
        if cv <= c.max_cv:
            self.fire(out, SID_BEACON, p.ts, p.src, p.dst, (p.src, p.dst, p.dp, proto),
                      c.suppress_s,
                      {"connections": [str(n)], "mean_interval_s": [f"{mean:.1f}"],
                       "stdev_s": [f"{sd:.2f}"], "cv": [f"{cv:.4f}"],
                       "port": [str(p.dp)]}, proto, p.dp)


_MISMATCH_SID: Final = {"http": SID_MISMATCH_HTTP, "tls": SID_MISMATCH_TLS,
                        "dns": SID_MISMATCH_DNS}


class PortMismatchDetector(Detector):
    """A protocol the app layer identified, other than the one its server port implies:
    SSH or HTTP on 443, TLS on 80, anything but DNS on 53 (tunnels, C2 hiding on an
    open port). Undetected protocols ("failed") are not judged."""

    name = "port_mismatch"

    def __init__(self, config: HeuristicsConfig, suppressor: Suppressor) -> None:
        super().__init__(config, suppressor)
        self.cfg = config.mismatch

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def on_app_proto(self, flow: Flow, ts: float, out: list[HeuristicHit]) -> None:
        ap = flow.app_proto
        if ap is None or ap == "failed":
            return
        c = self.cfg
        want = c.expected.get((flow.proto, flow.dp))
        if want is None or ap == want or (flow.proto, flow.dp, ap) in c.allow or (
                want == "http" and ap == "http2"):  # h2c: prior knowledge or upgrade
            return
        self.fire(out, _MISMATCH_SID.get(want, SID_MISMATCH_HTTP), ts, flow.src, flow.dst,
                  (flow.src, flow.dst, flow.dp, flow.proto), c.suppress_s,
                  {"port": [str(flow.dp)], "expected": [want], "app_proto": [ap]},
                  flow.proto, flow.dp)

    def on_flow_end(self, flow: Flow, out: list[HeuristicHit]) -> None:
        self.on_app_proto(flow, flow.last, out)


# The registry (DESIGN.md principle 6): an explicit list, in calling order.
DEFAULT_DETECTORS: Final[tuple[type[Detector], ...]] = (
    ScanDetector,
    SynFloodDetector,
    BruteForceDetector,
    DnsTunnelDetector,
    BeaconDetector,
    PortMismatchDetector,
)

_HOOKS: Final = ("on_packet", "on_flow_end", "on_app_proto", "on_dns_query", "on_http_status")


class HeuristicsStats:
    __slots__ = ("errors", "hits")

    def __init__(self) -> None:
        self.hits: dict[int, int] = {}
        self.errors: dict[str, int] = {}


class HeuristicsEngine:
    """Runs the detectors. Each hook returns the hits it raised (often none)."""

    def __init__(self, config: HeuristicsConfig | None = None,
                 detectors: Iterable[type[Detector]] = DEFAULT_DETECTORS) -> None:
        self.config = config or HeuristicsConfig()
        self.suppressor = Suppressor(self.config.suppress_max_entries)
        self.detectors: list[Detector] = [
            d for d in (cls(self.config, self.suppressor) for cls in detectors) if d.enabled
        ]
        self.stats = HeuristicsStats()
        # Per hook, only the detectors that override it.
        self._hooks: dict[str, list[Detector]] = {
            h: [d for d in self.detectors if getattr(type(d), h) is not getattr(Detector, h)]
            for h in _HOOKS
        }
        self._pkt = self._hooks["on_packet"]
        # Server ports whose established traffic a detector still reads (FTP replies).
        brute = self.config.brute
        self._payload_ports: frozenset[int] = brute.ftp_ports if brute.enabled else frozenset()

    def table_sizes(self) -> dict[str, int]:
        out = {"suppress": len(self.suppressor)}
        for d in self.detectors:
            out.update(d.tables())
        return out

    # -- hooks ---------------------------------------------------------------------------

    def on_packet(self, p: Packet, flow: Flow | None, to_server: bool,
                  new_flow: bool) -> list[HeuristicHit]:
        out: list[HeuristicHit] = []
        if self._skip(p, flow, new_flow):
            return out
        for d in self._pkt:
            try:
                d.on_packet(p, flow, to_server, new_flow, out)
            except Exception:  # principle 7: count it; the other detectors still run
                self._error(d)
        self._count(out)
        return out

    def _skip(self, p: Packet, flow: Flow | None, new_flow: bool) -> bool:
        """True for packets no detector needs: established TCP data (no RST, past the
        handshake, not on a port whose replies are sniffed), non-first UDP packets,
        ICMP other than errors, and other protocols. The hot path ends here."""
        proto = p.proto
        if proto == PROTO_TCP:
            return (not new_flow and flow is not None and flow.state == FLOW_ESTABLISHED
                    and flow.ts_pkts > 3 and not p.tcp_flags & TH_RST
                    and flow.dp not in self._payload_ports)
        if proto == PROTO_UDP:
            return not new_flow
        if proto == PROTO_ICMP or proto == PROTO_ICMPV6:
            return p.icmp_inner is None
        return True

    def on_flow_end(self, flow: Flow) -> list[HeuristicHit]:
        out: list[HeuristicHit] = []
        for d in self._hooks["on_flow_end"]:
            try:
                d.on_flow_end(flow, out)
            except Exception:
                self._error(d)
        self._count(out)
        return out

    def on_app_proto(self, flow: Flow, ts: float) -> list[HeuristicHit]:
        """Call once the app layer has decided `flow.app_proto`."""
        out: list[HeuristicHit] = []
        for d in self._hooks["on_app_proto"]:
            try:
                d.on_app_proto(flow, ts, out)
            except Exception:
                self._error(d)
        self._count(out)
        return out

    def on_dns_query(self, p: Packet, flow: Flow | None, qname: bytes,
                     qtype: int) -> list[HeuristicHit]:
        """One question of a DNS query (name as the parser gives it: dotted, no root)."""
        out: list[HeuristicHit] = []
        for d in self._hooks["on_dns_query"]:
            try:
                d.on_dns_query(p, flow, qname, qtype, out)
            except Exception:
                self._error(d)
        self._count(out)
        return out

    def on_http_status(self, p: Packet, flow: Flow, status: int) -> list[HeuristicHit]:
        """One HTTP response's status code (p: the packet that completed the headers)."""
        out: list[HeuristicHit] = []
        for d in self._hooks["on_http_status"]:
            try:
                d.on_http_status(p, flow, status, out)
            except Exception:
                self._error(d)
        self._count(out)
        return out

    def _error(self, d: Detector) -> None:
        e = self.stats.errors
        e[d.name] = e.get(d.name, 0) + 1

    def _count(self, out: list[HeuristicHit]) -> None:
        if out:
            h = self.stats.hits
            for hit in out:
                h[hit.sid] = h.get(hit.sid, 0) + 1


__all__ = [
    "CATEGORY",
    "DEFAULT_DETECTORS",
    "GID",
    "SIGNATURES",
    "BeaconConfig",
    "BeaconDetector",
    "BruteForceConfig",
    "BruteForceDetector",
    "Detector",
    "Distinct",
    "DnsTunnelConfig",
    "DnsTunnelDetector",
    "FloodConfig",
    "HeuristicHit",
    "HeuristicsConfig",
    "HeuristicsEngine",
    "LruTable",
    "MismatchConfig",
    "PortMismatchDetector",
    "ScanConfig",
    "ScanDetector",
    "Suppressor",
    "SynFloodDetector",
    "shannon_entropy",
    "split_base_domain",
]


def with_overrides(base: HeuristicsConfig,
                   overrides: Mapping[str, Mapping[str, float | bool]]) -> HeuristicsConfig:
    """`base` with some thresholds changed: {detector: {field: value}}, detectors named as
    HeuristicsConfig's fields (scan, flood, brute, dns, beacon, mismatch). Unknown names
    raise ValueError naming them (the config and policy loaders report it)."""
    import dataclasses

    changes: dict[str, Any] = {}
    for det, params in overrides.items():
        sub: Any = getattr(base, det, None)
        if sub is None or not dataclasses.is_dataclass(sub) or det == "suppress_max_entries":
            names = [f.name for f in dataclasses.fields(base) if f.name != "suppress_max_entries"]
            raise ValueError(f"unknown heuristic {det!r} (one of {', '.join(names)})")
        inst: Any = sub  # a detector's config dataclass (is_dataclass narrowed the type)
        fields = {f.name: f for f in dataclasses.fields(inst)}
        upd: dict[str, Any] = {}
        for k, v in params.items():
            if k not in fields:
                raise ValueError(f"heuristic {det!r} has no setting {k!r} "
                                 f"(settings: {', '.join(sorted(fields))})")
            cur = getattr(inst, k)
            upd[k] = bool(v) if isinstance(cur, bool) else type(cur)(v) \
                if isinstance(cur, int | float) else v
        changes[det] = dataclasses.replace(inst, **upd)
    return dataclasses.replace(base, **changes)
