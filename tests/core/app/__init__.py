"""Helpers for the app-layer tests: feeding a stream parser, in-order TCP payloads and UDP
payloads from a pcap.

Only for the real-traffic checks: a deliberately simple reassembly (in-order segments
per direction, retransmissions trimmed, out-of-order segments held until the gap
fills). The appliance's own stream reassembly lives in appliance/core/stream.py.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
PCAPS = SHARED / "pcaps"
ORACLE = SHARED / "oracle"

_SERVER_PORTS = {53, 80, 443, 8080, 8443, 5353, 25, 21, 22, 110, 143, 993, 995, 465, 587}

Key = tuple[bytes, int, bytes, int]


@dataclass
class TcpFlow:
    client: tuple[bytes, int]
    server: tuple[bytes, int]
    # (to_server, data) in capture order, each direction in sequence order
    chunks: list[tuple[bool, bytes]] = field(default_factory=list)
    syn_seen: bool = False


@dataclass
class _Dir:
    next_seq: int | None = None
    held: dict[int, bytes] = field(default_factory=dict)


def _iter_ip(path: Path) -> Iterator[Any]:
    import dpkt

    with path.open("rb") as fh:
        try:
            reader: Any = dpkt.pcap.Reader(fh)
        except ValueError:
            fh.seek(0)
            reader = dpkt.pcapng.Reader(fh)
        link = reader.datalink()
        for _ts, buf in reader:
            try:
                if link == dpkt.pcap.DLT_EN10MB:
                    ip = dpkt.ethernet.Ethernet(buf).data
                elif link == dpkt.pcap.DLT_LINUX_SLL:
                    ip = dpkt.sll.SLL(buf).data
                elif link in (dpkt.pcap.DLT_RAW, 101, 12, 14):
                    ip = dpkt.ip.IP(buf) if buf[0] >> 4 == 4 else dpkt.ip6.IP6(buf)
                else:
                    continue
            except Exception:
                continue
            if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                yield ip


def tcp_flows(path: Path) -> list[TcpFlow]:
    import dpkt

    flows: dict[Key, TcpFlow] = {}
    dirs: dict[Key, _Dir] = {}
    order: list[TcpFlow] = []
    for ip in _iter_ip(path):
        tcp = ip.data
        if not isinstance(tcp, dpkt.tcp.TCP):
            continue
        if isinstance(ip, dpkt.ip.IP) and (ip.mf or ip.offset):
            continue  # fragments: not for this simple helper
        k: Key = (bytes(ip.src), tcp.sport, bytes(ip.dst), tcp.dport)
        rk: Key = (k[2], k[3], k[0], k[1])
        syn = bool(tcp.flags & dpkt.tcp.TH_SYN)
        ack = bool(tcp.flags & dpkt.tcp.TH_ACK)
        if k in flows:
            f = flows[k]
        elif rk in flows:
            f = flows[rk]
        else:
            if syn and not ack:
                client, server = (k[0], k[1]), (k[2], k[3])
            elif syn and ack:
                client, server = (k[2], k[3]), (k[0], k[1])
            else:
                # midstream: oriented by the first payload below
                client, server = (b"", -1), (b"", -1)
            f = TcpFlow(client, server, syn_seen=syn)
            flows[k] = f
            order.append(f)
        d = dirs.setdefault(k, _Dir())
        seq = tcp.seq
        if syn:
            d.next_seq = (seq + 1) & 0xFFFFFFFF
            d.held.clear()
            continue
        data = bytes(tcp.data)
        if not data:
            continue
        if d.next_seq is None:
            d.next_seq = seq
        if f.client[1] == -1:
            a, b = (k[0], k[1]), (k[2], k[3])
            looks_server = data.startswith(b"HTTP/") or (
                data[:1] == b"\x16" and len(data) > 5 and data[5] == 2
            ) or (tcp.sport in _SERVER_PORTS and tcp.dport not in _SERVER_PORTS)
            f.client, f.server = (b, a) if looks_server else (a, b)
        to_server = (k[0], k[1]) == f.client
        d.held.setdefault(seq, data)
        # flush contiguous segments, trimming retransmitted overlap
        progressed = True
        while progressed and d.held:
            progressed = False
            for s in list(d.held):
                off = (d.next_seq - s) & 0xFFFFFFFF
                seg = d.held[s]
                if off < 0x80000000:  # s <= next_seq
                    del d.held[s]
                    if off < len(seg):
                        f.chunks.append((to_server, seg[off:]))
                        d.next_seq = (s + len(seg)) & 0xFFFFFFFF
                        progressed = True
            if len(d.held) > 256:  # a gap that never fills: skip it
                nxt = d.next_seq
                d.next_seq = min(d.held, key=lambda x: (x - nxt) & 0xFFFFFFFF)
                progressed = True
    return order


def udp_payloads(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(sport, dport, payload) for every UDP datagram (unfragmented)."""
    import dpkt

    for ip in _iter_ip(path):
        udp = ip.data
        if isinstance(udp, dpkt.udp.UDP):
            yield udp.sport, udp.dport, bytes(udp.data)


def oracle_events(name: str, event_type: str) -> list[dict[str, Any]]:
    out = []
    with gzip.open(ORACLE / name / "eve.json.gz", "rt") as fh:
        for line in fh:
            if f'"event_type":"{event_type}"' in line:
                out.append(json.loads(line))
    return out


def feed_all(parser: Any, chunks: list[tuple[bool, bytes]], step: int = 0) -> list[Any]:
    """The AppEvents of a stream parser fed ``chunks`` ((to_server, data), in order),
    each whole (step 0) or cut into step-byte pieces, then closed."""
    ev: list[Any] = []
    for to_server, data in chunks:
        if step:
            for i in range(0, len(data), step):
                ev += parser.feed(data[i : i + step], to_server)
        else:
            ev += parser.feed(data, to_server)
    ev += parser.close()
    return ev


def validate_eve(kind: str, obj: dict[str, Any]) -> None:
    """Validate an EVE sub-object (`http`, `dns`, `tls`, `fileinfo`) against Suricata 7's
    schema in ../shared/data/eve/schema.json."""
    import jsonschema
    import pytest

    path = SHARED / "eve" / "schema.json"
    if not path.exists():
        pytest.skip(f"{path} is not present (../shared/data is laid beside the checkout)")
    schema = json.loads(path.read_text())
    sub = dict(schema["properties"][kind])
    sub["$defs"] = schema.get("$defs", {})
    jsonschema.validate(obj, sub)
