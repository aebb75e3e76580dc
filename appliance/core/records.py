"""Shaping EVE records (pure functions: packet time in, dicts out).

Formats follow Suricata 7's EVE output so existing tooling reads ours unchanged:
timestamps `%Y-%m-%dT%H:%M:%S.%f%z` in UTC, IPv6 addresses written out in full
(Suricata prints every group with four digits), protocol names from its table.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from appliance.core.decode import Packet
from appliance.core.flows import Flow
from appliance.core.stream import FLOW_BYPASSED, FLOW_CLOSED, FLOW_ESTABLISHED, STATE_NAMES

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

PROTO_NAMES: Final = {
    1: "ICMP", 2: "IGMP", 4: "IPIP", 6: "TCP", 17: "UDP", 41: "IPv6", 47: "GRE",
    50: "ESP", 51: "AH", 58: "IPv6-ICMP", 89: "OSPF", 103: "PIM", 112: "VRRP", 132: "SCTP",
}

_STATE_NAME: Final = {0: "new", FLOW_ESTABLISHED: "established", FLOW_CLOSED: "closed",
                      FLOW_BYPASSED: "bypassed"}


# Whole seconds already formatted (records of one stretch of traffic share few of them):
# strftime is most of format_ts' cost. Bounded: cleared when full.
_SECONDS: dict[int, str] = {}
_SECONDS_MAX: Final = 4096


def format_ts(ts: float) -> str:
    """Packet time as Suricata's EVE timestamp, e.g. 2024-05-04T20:36:33.342168+0000."""
    sec, usec = divmod(round(ts * 1_000_000), 1_000_000)
    head = _SECONDS.get(sec)
    if head is None:
        head = (_EPOCH + timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%S")
        if len(_SECONDS) >= _SECONDS_MAX:
            _SECONDS.clear()
        _SECONDS[sec] = head
    return f"{head}.{usec:06d}+0000"


def format_ip(addr: bytes) -> str:
    if len(addr) == 4:
        return f"{addr[0]}.{addr[1]}.{addr[2]}.{addr[3]}"
    h = addr.hex()
    return ":".join(h[i:i + 4] for i in range(0, 32, 4))


def proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto))


def _has_ports(proto: int) -> bool:
    return proto in (6, 17, 132)


def _tcp_object(f: Flow) -> dict[str, Any]:
    allf = f.flags_ts | f.flags_tc
    o: dict[str, Any] = {
        "tcp_flags": f"{allf:02x}",
        "tcp_flags_ts": f"{f.flags_ts:02x}",
        "tcp_flags_tc": f"{f.flags_tc:02x}",
    }
    for bit, name in ((0x02, "syn"), (0x01, "fin"), (0x04, "rst"), (0x08, "psh"),
                      (0x10, "ack"), (0x20, "urg"), (0x40, "ecn"), (0x80, "cwr")):
        if allf & bit:
            o[name] = True
    if f.tcp is not None:
        o["state"] = STATE_NAMES[f.tcp.state]
    return o


def _flow_head(f: Flow, ts: float, event_type: str) -> dict[str, Any]:
    """The head of a flow-level EVE event: time, flow id, the flow's 5-tuple client to
    server (Suricata's order of keys)."""
    r: dict[str, Any] = {"timestamp": format_ts(ts), "flow_id": f.flow_id,
                         "event_type": event_type}
    if f.vlan:
        r["vlan"] = list(f.vlan)
    r["src_ip"] = format_ip(f.src)
    if _has_ports(f.proto):
        r["src_port"] = f.sp
    r["dest_ip"] = format_ip(f.dst)
    if _has_ports(f.proto):
        r["dest_port"] = f.dp
    r["proto"] = proto_name(f.proto)
    return r


def flow_record(f: Flow, now: float) -> dict[str, Any]:
    """The EVE `flow` event for a flow that ended at packet time `now`."""
    r = _flow_head(f, now, "flow")
    if f.app_proto:
        r["app_proto"] = f.app_proto
    if f.icmp_ts is not None:
        r["icmp_type"], r["icmp_code"] = f.icmp_ts
    if f.icmp_tc is not None:
        r["response_icmp_type"], r["response_icmp_code"] = f.icmp_tc
    if f.spi >= 0:
        r["spi"] = f.spi
    r["flow"] = {
        "pkts_toserver": f.ts_pkts,
        "pkts_toclient": f.tc_pkts,
        "bytes_toserver": f.ts_bytes,
        "bytes_toclient": f.tc_bytes,
        "start": format_ts(f.start),
        "end": format_ts(f.last),
        "age": int(f.last - f.start),
        "state": _STATE_NAME[f.state],
        "reason": f.end_reason,
        "alerted": f.alerted,
    }
    if f.proto == 6:
        r["tcp"] = _tcp_object(f)
    return r


def packet_header(p: Packet, flow: Flow | None, event_type: str) -> dict[str, Any]:
    """The common head of a per-packet EVE event (anomaly, alert)."""
    r: dict[str, Any] = {"timestamp": format_ts(p.ts)}
    if flow is not None:
        r["flow_id"] = flow.flow_id
    r["event_type"] = event_type
    if p.vlan:
        r["vlan"] = list(p.vlan)
    if p.ipver:
        r["src_ip"] = format_ip(p.src)
        if p.has_l4 and _has_ports(p.proto):
            r["src_port"] = p.sp
        r["dest_ip"] = format_ip(p.dst)
        if p.has_l4 and _has_ports(p.proto):
            r["dest_port"] = p.dp
        r["proto"] = proto_name(p.proto)
    return r


def anomaly_record(p: Packet, flow: Flow | None, event: str, pcap_cnt: int | None,
                   pkt_src: str, kind: str = "decode") -> dict[str, Any]:
    """EVE `anomaly` for a decoder or stream event (Suricata's types "decode", "stream")."""
    r = packet_header(p, flow, "anomaly")
    if pcap_cnt is not None:
        r["pcap_cnt"] = pcap_cnt
    r["pkt_src"] = pkt_src
    r["anomaly"] = {"type": kind, "event": event}
    return r


# App-layer protocols that Suricata's stats name per transport (dns_tcp, dns_udp...).
_PER_TRANSPORT: Final = frozenset({"dns", "dcerpc", "enip", "krb5", "nfs"})


def app_stats_name(app_proto: str, proto: int) -> str:
    """The name of an app-layer protocol in Suricata's stats.app_layer objects."""
    if app_proto in _PER_TRANSPORT or app_proto == "failed":
        return f"{app_proto}_{'tcp' if proto == 6 else 'udp'}"
    return app_proto


def stats_record(now: float, uptime: int, decoder: dict[str, Any],
                 flow: dict[str, Any]) -> dict[str, Any]:
    return {
        "timestamp": format_ts(now),
        "event_type": "stats",
        "stats": {"uptime": uptime, "decoder": decoder, "flow": flow},
    }


def alert_record(p: Packet, flow: Flow | None, pcap_cnt: int | None, pkt_src: str, *,
                 action: str, gid: int, sid: int, rev: int, signature: str, category: str,
                 severity: int, metadata: dict[str, list[str]], tx_id: int | None,
                 to_server: bool) -> dict[str, Any]:
    """EVE `alert`, as Suricata 7 writes it: the packet's 5-tuple, the rule, the flow."""
    r = packet_header(p, flow, "alert")
    if pcap_cnt is not None:
        r["pcap_cnt"] = pcap_cnt
    r["pkt_src"] = pkt_src
    if tx_id is not None:
        r["tx_id"] = tx_id
    a: dict[str, Any] = {
        "action": action, "gid": gid, "signature_id": sid, "rev": rev,
        "signature": signature, "category": category, "severity": severity,
    }
    if metadata:
        a["metadata"] = metadata
    r["alert"] = a
    if flow is not None:
        if flow.app_proto:
            r["app_proto"] = flow.app_proto
        r["direction"] = "to_server" if to_server else "to_client"
        r["flow"] = {
            "pkts_toserver": flow.ts_pkts, "pkts_toclient": flow.tc_pkts,
            "bytes_toserver": flow.ts_bytes, "bytes_toclient": flow.tc_bytes,
            "start": format_ts(flow.start),
            "src_ip": format_ip(flow.src), "dest_ip": format_ip(flow.dst),
        }
        if _has_ports(flow.proto):
            r["flow"]["src_port"] = flow.sp
            r["flow"]["dest_port"] = flow.dp
    return r


def app_record(f: Flow, ts: float, body: dict[str, Any], pkt_src: str | None = None
               ) -> dict[str, Any]:
    """An app-layer EVE record (http, dns, tls, fileinfo) on the flow's 5-tuple, client
    to server, as Suricata's transaction loggers write them."""
    r = _flow_head(f, ts, body["event_type"])
    if pkt_src is not None:
        r["pkt_src"] = pkt_src
    for k, v in body.items():
        if k != "event_type":
            r[k] = v
    if f.app_proto and body["event_type"] in ("fileinfo", "anomaly"):
        r["app_proto"] = f.app_proto
    return r


def heuristic_record(hit: Any, flow: Flow | None, action: str) -> dict[str, Any]:
    """EVE `alert` for a heuristic detection (gid 9001): offender -> victim."""
    r: dict[str, Any] = {"timestamp": format_ts(hit.ts)}
    if flow is not None:
        r["flow_id"] = flow.flow_id
    r["event_type"] = "alert"
    r["src_ip"] = format_ip(hit.offender)
    r["dest_ip"] = format_ip(hit.victim)
    if hit.victim_port and hit.proto in (6, 17):
        r["dest_port"] = hit.victim_port
    if hit.proto:
        r["proto"] = proto_name(hit.proto)
    r["alert"] = {
        "action": action, "gid": hit.gid, "signature_id": hit.sid, "rev": hit.rev,
        "signature": hit.msg, "category": hit.category, "severity": hit.severity,
        "metadata": dict(hit.evidence),
    }
    return r
