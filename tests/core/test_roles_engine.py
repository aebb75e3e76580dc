"""Roles in the engine: overrides, allowlists, on-detection requests, unknown guests."""

from __future__ import annotations

from typing import Any

from scapy.layers.inet import IP, TCP, UDP, Ether

from appliance.core.commands import ActionRequest, Log, Verdict, VerdictKind
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import LINKTYPE_ETHERNET, PacketIn
from appliance.policy_file import policy_from_text
from appliance.rules.loader import detection_from_text, role_detectors

POLICY = """
guests:
  - {name: desktop, role: desktop, ports: [desktop], addresses: [10.203.0.10/32]}
  - {name: proxy, role: caching-proxy, ports: [proxy], addresses: [10.203.0.20/32]}
allowlist: [10.203.0.1/32]
"""
RULES = [
    'alert tcp any any -> any 80 (msg:"trojan beacon"; flow:established,to_server; '
    'content:"beacon"; classtype:trojan-activity; priority:1; sid:100; rev:1;)',
    'alert tcp any any -> any 80 (msg:"policy thing"; flow:established,to_server; '
    'content:"torrent"; classtype:policy-violation; sid:101; rev:1;)',
]
SERVER = "203.0.113.10"


class Lab:
    def __init__(self, mode: str = "ips") -> None:
        pol = policy_from_text(POLICY, "test")
        loaded = detection_from_text(RULES)
        self.engine = Engine(EngineConfig(mode=mode), loaded.engine, pol,
                             role_detectors(loaded, pol))
        self.n = 0

    def send(self, pkt: Any, in_port: str | None = None,
             out_port: str | None = None) -> tuple[VerdictKind, list[Any]]:
        self.n += 1
        cmds = self.engine.handle(PacketIn(self.n, 100.0 + self.n / 100, bytes(pkt),
                                           LINKTYPE_ETHERNET, in_port, out_port))
        (v,) = [c for c in cmds if isinstance(c, Verdict)]
        return v.kind, [c for c in cmds if not isinstance(c, Verdict)]

    def connect(self, src: str, sport: int, dport: int, port: str) -> None:
        self.send(Ether() / IP(src=src, dst=SERVER) / TCP(sport=sport, dport=dport, flags="S",
                                                          seq=1), port, "gateway")
        self.send(Ether() / IP(src=SERVER, dst=src) / TCP(sport=dport, dport=sport, flags="SA",
                                                          seq=9, ack=2), "gateway", port)
        self.send(Ether() / IP(src=src, dst=SERVER) / TCP(sport=sport, dport=dport, flags="A",
                                                          seq=2, ack=10), port, "gateway")

    def data(self, src: str, sport: int, dport: int, port: str, payload: bytes
             ) -> tuple[VerdictKind, list[Any]]:
        return self.send(Ether() / IP(src=src, dst=SERVER) / TCP(
            sport=sport, dport=dport, flags="PA", seq=2, ack=10) / payload, port, "gateway")


def alerts(cmds: list[Any]) -> list[dict[str, Any]]:
    return [c.record for c in cmds if isinstance(c, Log) and c.record["event_type"] == "alert"]


def test_desktop_role_turns_trojan_alert_into_drop_and_quarantine() -> None:
    lab = Lab()
    lab.connect("10.203.0.10", 40000, 80, "desktop")
    kind, cmds = lab.data("10.203.0.10", 40000, 80, "desktop", b"GET /beacon")
    assert kind is VerdictKind.DROP
    (a,) = alerts(cmds)
    assert a["alert"]["action"] == "blocked"
    assert a["alert"]["metadata"]["role"] == ["desktop"]
    assert "turns it into drop" in a["alert"]["metadata"]["explain"][0]
    (req,) = [c for c in cmds if isinstance(c, ActionRequest)]
    assert (req.kind, req.target, req.port, req.sid) == ("quarantine", "desktop", "desktop", 100)
    assert req.established
    # A policy-violation stays an alert for the desktop, and asks for nothing.
    lab.connect("10.203.0.10", 40001, 80, "desktop")
    kind, cmds = lab.data("10.203.0.10", 40001, 80, "desktop", b"GET /torrent")
    assert kind is VerdictKind.ACCEPT
    assert [a["alert"]["action"] for a in alerts(cmds)] == ["allowed"]


def test_spoofed_packet_without_handshake_requests_nothing() -> None:
    lab = Lab()
    _kind, cmds = lab.data("10.203.0.10", 40002, 80, "desktop", b"GET /beacon")
    assert alerts(cmds) == []  # flow:established does not hold
    assert [c for c in cmds if isinstance(c, ActionRequest)] == []


def test_proxy_egress_allowlist_blocks_ssh_but_not_http() -> None:
    lab = Lab()
    kind, cmds = lab.send(Ether() / IP(src="10.203.0.20", dst=SERVER) /
                          TCP(sport=40100, dport=22, flags="S"), "proxy", "gateway")
    assert kind is VerdictKind.DROP
    (a,) = alerts(cmds)
    assert (a["alert"]["gid"], a["alert"]["signature_id"]) == (9002, 9002001)
    assert a["alert"]["metadata"]["role"] == ["caching-proxy"]
    kind, _ = lab.send(Ether() / IP(src="10.203.0.20", dst=SERVER) /
                       TCP(sport=40101, dport=80, flags="S"), "proxy", "gateway")
    assert kind is VerdictKind.ACCEPT


def test_unknown_guest_gets_default_role_and_ids_mode_only_alerts() -> None:
    lab = Lab(mode="ids")
    lab.connect("10.203.0.77", 40200, 80, "other")
    kind, cmds = lab.data("10.203.0.77", 40200, 80, "other", b"GET /beacon")
    assert kind is VerdictKind.ACCEPT
    (a,) = alerts(cmds)
    assert a["alert"]["metadata"]["role"] == ["default"]
    assert a["alert"]["metadata"]["guest"] == ["unknown"]
    # Inbound to the desktop: its ingress allowlist only admits ICMP.
    kind, cmds = lab.send(Ether() / IP(src=SERVER, dst="10.203.0.10") / UDP(sport=5, dport=53),
                          "gateway", "desktop")
    assert [a["alert"]["signature_id"] for a in alerts(cmds)] == [9002002]


def test_midstream_pickup_does_not_judge_allowlists() -> None:
    """After a worker restart the first packet seen may be a reply: not an inbound open."""
    lab = Lab()
    kind, cmds = lab.send(Ether() / IP(src=SERVER, dst="10.203.0.10") /
                          TCP(sport=80, dport=40300, flags="PA", seq=5, ack=5) / b"data",
                          "gateway", "desktop")
    assert kind is VerdictKind.ACCEPT and alerts(cmds) == []


def test_role_heuristic_thresholds_pick_the_role_detectors() -> None:
    from appliance.core.engine import Engine, EngineConfig
    from appliance.policy_file import policy_from_text

    pol = policy_from_text("roles:\n  quiet:\n    heuristics: {scan: {vertical_ports: 3}}\n"
                           "guests:\n  - {name: q, role: quiet, addresses: [10.9.0.1/32]}\n")
    e = Engine(EngineConfig(), policy=pol)
    assert e.role_heuristics["quiet"].config.scan.vertical_ports == 3
    assert e.heuristics is not None and e.heuristics.config.scan.vertical_ports == 20
    import pytest

    from appliance.errors import ConfigError

    with pytest.raises(ConfigError, match=r":3: roles.r.heuristics"):
        policy_from_text("roles:\n  r:\n    heuristics: {nope: {a: 1}}\n", "p.yaml")


def test_guest_found_by_mac_address() -> None:
    from appliance.core.engine import Engine, EngineConfig
    from appliance.policy_file import policy_from_text

    pol = policy_from_text("guests:\n  - {name: lap, role: caching-proxy, "
                           "macs: ['02:00:00:00:00:42']}\n")
    e = Engine(EngineConfig(mode="ips"), policy=pol)
    pkt = Ether(src="02:00:00:00:00:42") / IP(src="10.9.9.9", dst=SERVER) / \
        TCP(sport=40500, dport=22, flags="S")
    cmds = e.handle(PacketIn(1, 1.0, bytes(pkt), LINKTYPE_ETHERNET))
    (v,) = [c for c in cmds if isinstance(c, Verdict)]
    assert v.kind is VerdictKind.DROP  # the proxy role may not open SSH
    assert alerts(cmds)[0]["alert"]["metadata"]["guest"] == ["lap"]


def test_proxy_may_not_tunnel_ssh_over_443() -> None:
    lab = Lab()
    lab.connect("10.203.0.20", 40600, 443, "proxy")
    kind, cmds = lab.data("10.203.0.20", 40600, 443, "proxy", b"SSH-2.0-OpenSSH_9.2\r\n")
    assert kind is VerdictKind.DROP
    (a,) = [x for x in alerts(cmds) if x["alert"]["gid"] == 9002]  # the policy's alert
    assert a["alert"]["signature_id"] == 9002003
    assert "ssh" in a["alert"]["signature"]
    # (the protocol/port mismatch heuristic, gid 9001, also reports it)
    # TLS on 443 is fine.
    lab.connect("10.203.0.20", 40601, 443, "proxy")
    hello = bytes.fromhex("160301002f0100002b0303") + b"\x00" * 32 + bytes.fromhex(
        "000002002f0100")
    kind, cmds = lab.data("10.203.0.20", 40601, 443, "proxy", hello)
    assert kind is VerdictKind.ACCEPT and alerts(cmds) == []


def test_proxy_http_service_carries_http2_too() -> None:
    """The caching proxy's web service names `http`: any HTTP version, as a rule's
    app-layer-protocol:http (HTTP/2 with prior knowledge on port 80 passes); a service
    naming `http1` takes HTTP/1 only."""
    from appliance.core.policy import Service

    lab = Lab()
    lab.connect("10.203.0.20", 40700, 80, "proxy")
    kind, cmds = lab.data("10.203.0.20", 40700, 80, "proxy",
                          b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9))
    assert kind is VerdictKind.ACCEPT
    assert not [a for a in alerts(cmds) if a["alert"]["gid"] == 9002]
    web1 = Service("tcp", frozenset({80}), (), frozenset({"http1"}))
    assert web1.allows_app(6, bytes(4), 80, "http")
    assert not web1.allows_app(6, bytes(4), 80, "http2")
    assert not web1.allows_app(6, bytes(4), 80, None)  # decided "failed": not HTTP


def test_role_fail_mode_decides_after_an_internal_error() -> None:
    """An error inside the engine still gives a verdict: the guest role's fail mode."""
    lab = Lab()
    lab.connect("10.203.0.10", 40700, 80, "desktop")  # desktop: fail-open false

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("detector bug")

    lab.engine.heuristics.on_packet = boom  # type: ignore[union-attr,method-assign]
    kind, _ = lab.data("10.203.0.10", 40700, 80, "desktop", b"GET / HTTP/1.0\r\n\r\n")
    assert kind is VerdictKind.DROP and lab.engine.stats.errors == 1
    from appliance.core.policy import Role

    lab.engine.policy.roles["desktop"] = Role("desktop", fail_open=True)  # type: ignore[union-attr,index]
    kind, _ = lab.data("10.203.0.10", 40700, 80, "desktop", b"GET / HTTP/1.0\r\n\r\n")
    assert kind is VerdictKind.ACCEPT and lab.engine.stats.errors == 2


def test_rule_metadata_asks_for_an_action_itself() -> None:
    from appliance.core.engine import Engine, EngineConfig
    from appliance.policy_file import policy_from_text
    from appliance.rules.loader import detection_from_text, role_detectors

    pol = policy_from_text(POLICY, "test")
    loaded = detection_from_text([
        'alert tcp any any -> any 80 (msg:"block that server"; flow:established,to_server; '
        'content:"evil-cnc"; metadata:appliance_action block; priority:3; sid:300; rev:1;)'])
    lab = Lab()
    lab.engine = Engine(EngineConfig(mode="ips"), loaded.engine, pol,
                        role_detectors(loaded, pol))
    lab.connect("10.203.0.10", 40800, 80, "desktop")
    _kind, cmds = lab.data("10.203.0.10", 40800, 80, "desktop", b"GET /evil-cnc")
    (req,) = [c for c in cmds if isinstance(c, ActionRequest)]
    # The desktop role would quarantine only at severity 1; the rule asks for a block.
    assert (req.kind, req.target, req.sid) == ("block", SERVER, 300)
