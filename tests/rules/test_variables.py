"""Address and port groups: Suricata's defaults and list/negation semantics."""

from __future__ import annotations

import ipaddress

import pytest

from appliance.rules.variables import (
    DEFAULT_ADDRESS_GROUPS,
    DEFAULT_PORT_GROUPS,
    AddressSet,
    VariableError,
    Variables,
)


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


@pytest.fixture
def variables() -> Variables:
    return Variables()


def test_defaults_match_suricata_7_yaml() -> None:
    assert DEFAULT_ADDRESS_GROUPS["HOME_NET"] == "[192.168.0.0/16,10.0.0.0/8,172.16.0.0/12]"
    assert DEFAULT_ADDRESS_GROUPS["EXTERNAL_NET"] == "!$HOME_NET"
    assert DEFAULT_ADDRESS_GROUPS["AIM_SERVERS"] == "$EXTERNAL_NET"
    assert DEFAULT_ADDRESS_GROUPS["HTTP_SERVERS"] == "$HOME_NET"
    assert len(DEFAULT_ADDRESS_GROUPS) == 15
    assert DEFAULT_PORT_GROUPS == {
        "HTTP_PORTS": "80",
        "SHELLCODE_PORTS": "!80",
        "ORACLE_PORTS": "1521",
        "SSH_PORTS": "22",
        "DNP3_PORTS": "20000",
        "MODBUS_PORTS": "502",
        "FILE_DATA_PORTS": "[$HTTP_PORTS,110,143]",
        "FTP_PORTS": "21",
        "GENEVE_PORTS": "6081",
        "VXLAN_PORTS": "4789",
        "TEREDO_PORTS": "3544",
    }


def test_home_net_ranges(variables: Variables) -> None:
    home = variables.address("$HOME_NET")
    assert home.v4 == (
        (int(ipaddress.ip_address("10.0.0.0")), int(ipaddress.ip_address("10.255.255.255"))),
        (int(ipaddress.ip_address("172.16.0.0")), int(ipaddress.ip_address("172.31.255.255"))),
        (int(ipaddress.ip_address("192.168.0.0")), int(ipaddress.ip_address("192.168.255.255"))),
    )
    assert home.v6 == ()
    assert home.contains(ip("10.1.2.3"))
    assert home.contains(ip("172.31.255.255"))
    assert not home.contains(ip("172.32.0.0"))
    assert not home.contains(ip("8.8.8.8"))
    assert not home.contains(ip("::1"))


def test_external_net_is_complement_including_ipv6(variables: Variables) -> None:
    ext = variables.address("$EXTERNAL_NET")
    assert ext.contains(ip("8.8.8.8"))
    assert ext.contains(ip("0.0.0.0"))
    assert ext.contains(ip("255.255.255.255"))
    assert not ext.contains(ip("192.168.1.1"))
    assert not ext.contains(ip("10.0.0.0"))
    assert ext.contains(ip("2001:db8::1"))
    assert not ext.is_any


def test_list_with_negated_host_inside_positive_network(variables: Variables) -> None:
    s = variables.address("[1.2.3.0/24,!1.2.3.4]")
    assert s.contains(ip("1.2.3.3"))
    assert not s.contains(ip("1.2.3.4"))
    assert s.contains(ip("1.2.3.5"))
    assert not s.contains(ip("1.2.4.1"))
    assert s.v4 == ((0x01020300, 0x01020303), (0x01020305, 0x010203FF))


def test_only_negations_means_any_except(variables: Variables) -> None:
    s = variables.address("[!1.2.3.4, !10.0.0.0/8]")
    assert not s.contains(ip("1.2.3.4"))
    assert not s.contains(ip("10.9.9.9"))
    assert s.contains(ip("1.2.3.5"))
    assert s.contains(ip("fe80::1"))


def test_nested_negated_list(variables: Variables) -> None:
    # ![1.2.3.0/24,!1.2.3.4]: everything except (the /24 minus .4), so .4 is back in.
    s = variables.address("![1.2.3.0/24,!1.2.3.4]")
    assert s.contains(ip("1.2.3.4"))
    assert not s.contains(ip("1.2.3.9"))
    assert s.contains(ip("9.9.9.9"))


def test_ipv6_cidr_any_and_wrong_length(variables: Variables) -> None:
    s = variables.address("[2001:db8::/32, 192.0.2.1]")
    assert s.contains(ip("2001:db8:ffff::1"))
    assert not s.contains(ip("2001:db9::1"))
    assert s.contains(ip("192.0.2.1"))
    assert not s.contains(b"\x01\x02")
    anything = variables.address("any")
    assert anything.is_any
    assert anything.contains(ip("::")) and anything.contains(ip("1.1.1.1"))


def test_netmask_range_and_host_bits(variables: Variables) -> None:
    assert variables.address("10.0.0.0/255.255.0.0").v4 == ((0x0A000000, 0x0A00FFFF),)
    assert variables.address("1.2.3.4-1.2.3.9").v4 == ((0x01020304, 0x01020309),)
    # Suricata accepts a CIDR with host bits set and uses the network.
    assert variables.address("1.2.3.4/24").v4 == ((0x01020300, 0x010203FF),)


def test_address_errors(variables: Variables) -> None:
    with pytest.raises(VariableError, match=r"undefined address variable '\$NOPE'"):
        variables.address("$NOPE")
    with pytest.raises(VariableError, match=r"port variable '\$HTTP_PORTS' used as an address"):
        variables.address("$HTTP_PORTS")
    with pytest.raises(VariableError, match="'!any'"):
        variables.address("!any")
    with pytest.raises(VariableError, match="matches no address"):
        variables.address("[1.2.3.4,!1.2.3.4]")
    with pytest.raises(VariableError, match=r"invalid address '1\.2\.3\.256'"):
        variables.address("1.2.3.256")
    with pytest.raises(VariableError, match="unbalanced"):
        variables.address("[1.2.3.4")


def test_cycle_detection() -> None:
    v = Variables(address_groups={"A": "[1.1.1.1,$B]", "B": "$A"}, port_groups={"P": "$P"})
    with pytest.raises(VariableError, match=r"variable cycle \$A -> \$B -> \$A"):
        v.address("$A")
    with pytest.raises(VariableError, match=r"variable cycle \$P -> \$P"):
        v.port("$P")


def test_compiled_sets_are_cached(variables: Variables) -> None:
    first = variables.address("$HOME_NET")
    assert variables.address("$HOME_NET") is first
    assert isinstance(first, AddressSet)
    assert first.spec == "$HOME_NET"


def test_ports(variables: Variables) -> None:
    assert variables.port("any").is_any
    p80 = variables.port("80")
    assert p80.contains(80) and not p80.contains(81)
    lst = variables.port("[80,443, 8000:8080]")
    assert lst.ranges == ((80, 80), (443, 443), (8000, 8080))
    assert lst.contains(8080) and lst.contains(443) and not lst.contains(8081)
    high = variables.port("1024:")
    assert high.ranges == ((1024, 65535),)
    assert high.contains(65535) and not high.contains(1023)
    low = variables.port(":1023")
    assert low.ranges == ((0, 1023),)
    shell = variables.port("$SHELLCODE_PORTS")
    assert shell.ranges == ((0, 79), (81, 65535))
    assert not shell.contains(80) and shell.contains(0) and shell.contains(65535)
    fdp = variables.port("$FILE_DATA_PORTS")
    assert fdp.ranges == ((80, 80), (110, 110), (143, 143))
    assert variables.port("[1:100,!50]").ranges == ((1, 49), (51, 100))
    assert variables.port("[!80,!443]").ranges == ((0, 79), (81, 442), (444, 65535))


def test_port_errors(variables: Variables) -> None:
    with pytest.raises(VariableError, match="port 70000 out of range"):
        variables.port("70000")
    with pytest.raises(VariableError, match="low end above its high end"):
        variables.port("2000:1000")
    with pytest.raises(VariableError, match=r"undefined port variable '\$X'"):
        variables.port("$X")
    with pytest.raises(VariableError, match=r"address variable '\$HOME_NET' used as a port"):
        variables.port("$HOME_NET")
    with pytest.raises(VariableError, match="invalid port 'http'"):
        variables.port("http")
    with pytest.raises(VariableError, match="matches no port"):
        variables.port("[80,!80]")
