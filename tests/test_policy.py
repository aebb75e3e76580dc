"""Policy files and roles: parsing with line-numbered errors, guest resolution, decisions."""

from __future__ import annotations

import ipaddress

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.errors import ConfigError
from appliance.policy_file import builtin_roles, load_policy, policy_from_text
from tests.conftest import REPO, SHARED_DATA


def ip(s: str) -> bytes:
    return ipaddress.ip_address(s).packed


def test_builtin_roles_and_lab_policy() -> None:
    roles = builtin_roles()
    assert set(roles) == {"desktop", "caching-proxy", "server", "default"}
    pol = load_policy(REPO / "rules" / "lab-policy.yaml")
    g, client = pol.resolve(ip("10.203.0.20"), ip("203.0.113.10"), "proxy", "gateway")
    assert (g and g.name, client) == ("proxy", True)
    # Inbound to a guest: the guest on the server side.
    g, client = pol.resolve(ip("203.0.113.10"), ip("10.203.0.10"), "gateway", "desktop")
    assert (g and g.name, client) == ("desktop", False)
    # By address when the port is unknown (replay has no ports).
    g, _ = pol.resolve(ip("10.203.0.10"), ip("203.0.113.10"), None, None)
    assert g is not None and g.role == "desktop"
    # Unknown guest: role default.
    g, _ = pol.resolve(ip("10.203.0.77"), ip("203.0.113.10"), "other", None)
    assert g is None and pol.role("nosuch").name == "default"
    assert pol.allowlisted(ip("10.203.0.1")) and not pol.allowlisted(ip("10.203.0.10"))


def test_role_decisions() -> None:
    roles = builtin_roles()
    proxy = roles["caching-proxy"]
    assert proxy.egress_allowed(6, ip("203.0.113.10"), 443)
    assert not proxy.egress_allowed(6, ip("203.0.113.10"), 22)  # no SSH out
    assert proxy.ingress_allowed(6, ip("10.203.0.10"), 3128)
    assert not proxy.ingress_allowed(6, ip("203.0.113.10"), 3128)  # not from outside
    desktop = roles["desktop"]
    assert desktop.action_for("alert", 1, "trojan-activity", 1) == "drop"
    assert desktop.action_for("alert", 1, "policy-violation", 1) == "alert"
    assert not desktop.ingress_allowed(6, ip("203.0.113.10"), 22)
    assert desktop.on_detection.action == "quarantine"
    assert desktop.on_detection.duration == 600
    assert roles["default"].egress is None and roles["default"].overrides == ()
    sel = proxy.rules
    assert not sel.selects(1, "policy-violation", {}, None)
    assert sel.selects(2, "trojan-activity", {}, None)


@pytest.mark.parametrize("text,where", [
    ("guests:\n  - name: a\n    role: nope\n", ":3: guests[0].role: unknown role 'nope'"),
    ("guests:\n  - {name: a, role: desktop, addresses: [10.0.0.300/8]}\n",
     ":2: guests[0].addresses: not an address or CIDR"),
    ("roles:\n  r1:\n    overrides:\n      - {action: explode}\n",
     ":4: roles.r1.overrides[0].action: expected one of"),
    ("roles:\n  r1:\n    on-detection: {action: quarantine, duration: soon}\n",
     ":3: roles.r1.on-detection.duration: expected a duration"),
    ("roles:\n  r1:\n    egress: [{proto: gre}]\n", ":3: roles.r1.egress[0].proto"),
    ("guestz: []\n", ":1: guestz: unknown field"),
    ("guests:\n  - {name: a, role: desktop}\n  - {name: a, role: server}\n",
     ":3: guests[1].name: guest 'a' is defined twice"),
    ("guests: [\n", "invalid YAML"),
])
def test_errors_name_line_and_field(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        policy_from_text(text, "p.yaml")
    assert where in str(e.value)
    assert str(e.value).startswith("p.yaml")


def test_policy_check_cli_against_etopen(tmp_path: object) -> None:
    et = SHARED_DATA / "rules" / "etopen-2024-04-21"
    if not et.exists():
        pytest.skip("ET Open not present")
    r = CliRunner().invoke(main, ["policy", "check", str(REPO / "rules" / "lab-policy.yaml"),
                                  "--rules", str(et)])
    assert r.exit_code == 0, r.output
    assert "3 guests" in r.output
    bad = CliRunner().invoke(main, ["policy", "check", "/nonexistent.yaml"])
    assert bad.exit_code == 2


def test_explain_names_guest_role_rule_and_why(tmp_path: object) -> None:
    from pathlib import Path

    tmp = Path(str(tmp_path))
    rules = tmp / "t.rules"
    rules.write_text('alert http any any -> any any (msg:"explain me"; http.method; '
                     'content:"GET"; classtype:trojan-activity; sid:4242; rev:1;)\n')
    pol = tmp / "p.yaml"
    pol.write_text("guests:\n  - {name: ws, role: desktop, addresses: [192.0.2.10/32]}\n")
    r = CliRunner().invoke(main, ["explain", "--ips", "--rules", str(rules), "--policy",
                                  str(pol), str(REPO / "pcaps" / "linktype-eth.pcap")])
    assert r.exit_code == 0, r.output
    assert "guest ws, role desktop" in r.output
    assert "[blocked] 1:4242:1 explain me" in r.output
    assert "why: rule action alert; role desktop turns it into drop" in r.output
    assert "verdict drop" in r.output


def test_unknown_rule_set_is_an_error_with_its_line(tmp_path: object) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "p.yaml"
    p.write_text("roles:\n  r:\n    rules:\n      files: [emerging-nope.rules]\n")
    r = CliRunner().invoke(main, ["policy", "check", str(p), "--rules",
                                  str(REPO / "rules")])
    assert r.exit_code == 1
    assert f"{p}:4: roles.r.rules.files: unknown rule set 'emerging-nope.rules'" in r.output
    r = CliRunner().invoke(main, ["replay", "-q", "--rules", str(REPO / "rules"),
                                  "--policy", str(p), str(REPO / "pcaps" / "icmp.pcap")])
    assert r.exit_code == 2 and "unknown rule set" in r.output
