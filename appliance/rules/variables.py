"""Suricata address and port groups: the defaults, and their compilation into fast matchers.

Grammar matched (Suricata 7, detect-engine-address.c / detect-engine-port.c):

- an address is ``any``, an IPv4/IPv6 address, a CIDR (``10.0.0.0/8``, ``2001:db8::/32``),
  an IPv4 netmask (``10.0.0.0/255.0.0.0``), a range (``1.2.3.4-1.2.3.9``), a ``$VAR``, or a
  bracketed list ``[a,b,...]`` of those; any element may be negated with ``!``;
- a port is ``any``, ``80``, a range ``1000:2000``, an open range ``1024:`` or ``:1023``, a
  ``$VAR``, or a list, with the same negation rule.

List semantics follow Suricata: the positive elements are joined, then the negated ones are
removed; a list made only of negations starts from "any" (``[!1.2.3.4]`` is every address but
that one), so ``[1.2.3.0/24,!1.2.3.4]`` is the /24 without that host. Negation of a variable
holding only IPv4 networks yields all of IPv6 too (``!$HOME_NET`` matches any IPv6 address),
as Suricata's address negation works over the whole address space. A specification that
matches nothing (``!any``, ``[1.2.3.4,!1.2.3.4]``) is an error, as in Suricata.

The compiled matchers are built once at rule-load time and shared between rules with the same
text (DESIGN.md principle 10); ``contains`` is the per-packet call and does a set lookup or
one bisection.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field

# Suricata 7.0's shipped suricata.yaml, ``vars: address-groups`` (commented alternatives left out).
DEFAULT_ADDRESS_GROUPS: dict[str, str] = {
    "HOME_NET": "[192.168.0.0/16,10.0.0.0/8,172.16.0.0/12]",
    "EXTERNAL_NET": "!$HOME_NET",
    "HTTP_SERVERS": "$HOME_NET",
    "SMTP_SERVERS": "$HOME_NET",
    "SQL_SERVERS": "$HOME_NET",
    "DNS_SERVERS": "$HOME_NET",
    "TELNET_SERVERS": "$HOME_NET",
    "AIM_SERVERS": "$EXTERNAL_NET",
    "DC_SERVERS": "$HOME_NET",
    "DNP3_SERVER": "$HOME_NET",
    "DNP3_CLIENT": "$HOME_NET",
    "MODBUS_CLIENT": "$HOME_NET",
    "MODBUS_SERVER": "$HOME_NET",
    "ENIP_CLIENT": "$HOME_NET",
    "ENIP_SERVER": "$HOME_NET",
}

# Suricata 7.0's shipped suricata.yaml, ``vars: port-groups``.
DEFAULT_PORT_GROUPS: dict[str, str] = {
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

V4_MAX = (1 << 32) - 1
V6_MAX = (1 << 128) - 1
PORT_MAX = 65535

# A variable may reference another; Suricata has no fixed depth, but a chain deeper than this
# is certainly a mistake and the limit keeps a pathological config from recursing for long.
MAX_VARIABLE_DEPTH = 64

# Port sets up to this many ports are matched with a frozenset (one hash lookup); larger ones
# (``1024:``, ``!80``) with a bisection over their few ranges, to keep memory small.
SMALL_PORT_SET = 4096

Ranges = tuple[tuple[int, int], ...]


class VariableError(ValueError):
    """An address or port specification is invalid; the message is the precise reason."""


# --------------------------------------------------------------------------- range algebra


def _normalize(ranges: list[tuple[int, int]]) -> Ranges:
    """Sort and merge inclusive ranges, joining ranges that overlap or touch."""
    if not ranges:
        return ()
    ranges.sort()
    out: list[tuple[int, int]] = [ranges[0]]
    for lo, hi in ranges[1:]:
        plo, phi = out[-1]
        if lo <= phi + 1:
            if hi > phi:
                out[-1] = (plo, hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def _complement(ranges: Ranges, maximum: int) -> Ranges:
    out: list[tuple[int, int]] = []
    nxt = 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= maximum:
        out.append((nxt, maximum))
    return tuple(out)


def _subtract(ranges: Ranges, removed: Ranges, maximum: int) -> Ranges:
    if not removed:
        return ranges
    keep = _complement(removed, maximum)
    return _intersect(ranges, keep)


def _intersect(a: Ranges, b: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo = max(a[i][0], b[j][0])
        hi = min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def _union(a: Ranges, b: Ranges) -> Ranges:
    return _normalize(list(a) + list(b))


# --------------------------------------------------------------------------- matchers


@dataclass(frozen=True, slots=True)
class AddressSet:
    """A compiled address specification: inclusive integer ranges for IPv4 and for IPv6."""

    spec: str
    v4: Ranges
    v6: Ranges
    _v4_starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _v6_starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    is_any: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_v4_starts", tuple(lo for lo, _ in self.v4))
        object.__setattr__(self, "_v6_starts", tuple(lo for lo, _ in self.v6))
        object.__setattr__(
            self, "is_any", self.v4 == ((0, V4_MAX),) and self.v6 == ((0, V6_MAX),)
        )

    def contains(self, ip_bytes: bytes) -> bool:
        """Whether the address (4 or 16 raw network-order bytes) is in the set."""
        if self.is_any:
            return True
        n = len(ip_bytes)
        if n == 4:
            starts, ranges = self._v4_starts, self.v4
        elif n == 16:
            starts, ranges = self._v6_starts, self.v6
        else:
            return False
        value = int.from_bytes(ip_bytes, "big")
        i = bisect_right(starts, value) - 1
        return i >= 0 and value <= ranges[i][1]


@dataclass(frozen=True, slots=True)
class PortSet:
    """A compiled port specification: inclusive ranges, plus a frozenset when small."""

    spec: str
    ranges: Ranges
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _small: frozenset[int] | None = field(init=False, repr=False, compare=False)
    is_any: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(lo for lo, _ in self.ranges))
        count = sum(hi - lo + 1 for lo, hi in self.ranges)
        small = (
            frozenset(p for lo, hi in self.ranges for p in range(lo, hi + 1))
            if count <= SMALL_PORT_SET
            else None
        )
        object.__setattr__(self, "_small", small)
        object.__setattr__(self, "is_any", self.ranges == ((0, PORT_MAX),))

    def contains(self, port: int) -> bool:
        """Whether the port is in the set."""
        if self.is_any:
            return True
        small = self._small
        if small is not None:
            return port in small
        i = bisect_right(self._starts, port) - 1
        return i >= 0 and port <= self.ranges[i][1]


# --------------------------------------------------------------------------- list splitting


def _split_list(text: str, spec: str) -> list[str]:
    """Split the inside of a ``[...]`` list at top-level commas."""
    items: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise VariableError(f"unbalanced ']' in {spec!r}")
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    if depth != 0:
        raise VariableError(f"unbalanced '[' in {spec!r}")
    items.append(text[start:].strip())
    if any(not item for item in items):
        raise VariableError(f"empty element in list {spec!r}")
    return items


def _strip_brackets(text: str, spec: str) -> str | None:
    """Return the inside of a list if ``text`` is exactly one bracketed list, else None."""
    if not text.startswith("["):
        return None
    if not text.endswith("]"):
        raise VariableError(f"unbalanced '[' in {spec!r}")
    return text[1:-1]


# --------------------------------------------------------------------------- address parsing


def _parse_address_atom(text: str) -> tuple[Ranges, Ranges]:
    """One address, CIDR, netmask or range -> (v4 ranges, v6 ranges)."""
    if "-" in text and "/" not in text:
        lo_text, _, hi_text = text.partition("-")
        try:
            lo = ipaddress.ip_address(lo_text.strip())
            hi = ipaddress.ip_address(hi_text.strip())
        except ValueError:
            raise VariableError(f"invalid address range {text!r}") from None
        if lo.version != hi.version or int(lo) > int(hi):
            raise VariableError(f"invalid address range {text!r}")
        rng = ((int(lo), int(hi)),)
        return (rng, ()) if lo.version == 4 else ((), rng)
    try:
        # strict=False: Suricata accepts host bits set in a CIDR (1.2.3.4/24 is 1.2.3.0/24).
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise VariableError(f"invalid address {text!r}") from None
    rng = ((int(net.network_address), int(net.broadcast_address)),)
    return (rng, ()) if net.version == 4 else ((), rng)


@dataclass
class Variables:
    """Address and port groups, with caches of compiled specifications.

    One instance serves a whole ruleset load: ET Open writes the same few specifications
    (``$HOME_NET``, ``$EXTERNAL_NET``, ``any``) tens of thousands of times.
    """

    address_groups: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ADDRESS_GROUPS))
    port_groups: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PORT_GROUPS))
    _address_cache: dict[str, AddressSet] = field(default_factory=dict, repr=False)
    _port_cache: dict[str, PortSet] = field(default_factory=dict, repr=False)

    # ---- addresses

    def address(self, spec: str) -> AddressSet:
        """Compile an address specification; raises VariableError with the reason."""
        cached = self._address_cache.get(spec)
        if cached is not None:
            return cached
        v4, v6 = self._address_expr(spec.strip(), spec, ())
        if not v4 and not v6:
            raise VariableError(f"address specification {spec!r} matches no address")
        result = AddressSet(spec, v4, v6)
        self._address_cache[spec] = result
        return result

    def _address_expr(
        self, text: str, spec: str, stack: tuple[str, ...]
    ) -> tuple[Ranges, Ranges]:
        if not text:
            raise VariableError(f"empty address in {spec!r}")
        if text.startswith("!"):
            inner = text[1:].strip()
            if inner.lower() == "any":
                raise VariableError(f"'!any' negates the whole address space in {spec!r}")
            v4, v6 = self._address_expr(inner, spec, stack)
            return _complement(v4, V4_MAX), _complement(v6, V6_MAX)
        inside = _strip_brackets(text, spec)
        if inside is not None:
            pos4: Ranges = ()
            pos6: Ranges = ()
            neg4: Ranges = ()
            neg6: Ranges = ()
            has_positive = False
            for item in _split_list(inside, spec):
                if item.startswith("!"):
                    n4, n6 = self._address_expr(item[1:].strip(), spec, stack)
                    neg4, neg6 = _union(neg4, n4), _union(neg6, n6)
                else:
                    has_positive = True
                    p4, p6 = self._address_expr(item, spec, stack)
                    pos4, pos6 = _union(pos4, p4), _union(pos6, p6)
            if not has_positive:
                # Suricata: a list of only negations means "any except these".
                pos4, pos6 = ((0, V4_MAX),), ((0, V6_MAX),)
            return _subtract(pos4, neg4, V4_MAX), _subtract(pos6, neg6, V6_MAX)
        if text.startswith("$"):
            name = text[1:]
            value = self._variable(name, stack, self.address_groups, self.port_groups,
                                   "address", "port variable '${}' used as an address")
            return self._address_expr(value, spec, (*stack, name))
        if text.lower() == "any":
            return ((0, V4_MAX),), ((0, V6_MAX),)
        return _parse_address_atom(text)

    @staticmethod
    def _variable(name: str, stack: tuple[str, ...], own: Mapping[str, object],
                  other: Mapping[str, object], kind: str, misuse: str) -> str:
        """The value of `$name` among `own` (address or port groups): cycles, nesting
        depth, a variable of the other kind and an undefined one are errors."""
        if name in stack:
            chain = " -> ".join("$" + n for n in (*stack, name))
            raise VariableError(f"variable cycle {chain}")
        if len(stack) >= MAX_VARIABLE_DEPTH:
            raise VariableError(f"variable nesting deeper than {MAX_VARIABLE_DEPTH} at ${name}")
        value = own.get(name)
        if value is None:
            if name in other:
                raise VariableError(misuse.format(name))
            raise VariableError(f"undefined {kind} variable '${name}'")
        return str(value).strip()

    # ---- ports

    def port(self, spec: str) -> PortSet:
        """Compile a port specification; raises VariableError with the reason."""
        cached = self._port_cache.get(spec)
        if cached is not None:
            return cached
        ranges = self._port_expr(spec.strip(), spec, ())
        if not ranges:
            raise VariableError(f"port specification {spec!r} matches no port")
        result = PortSet(spec, ranges)
        self._port_cache[spec] = result
        return result

    def _port_expr(self, text: str, spec: str, stack: tuple[str, ...]) -> Ranges:
        if not text:
            raise VariableError(f"empty port in {spec!r}")
        if text.startswith("!"):
            inner = text[1:].strip()
            if inner.lower() == "any":
                raise VariableError(f"'!any' negates every port in {spec!r}")
            return _complement(self._port_expr(inner, spec, stack), PORT_MAX)
        inside = _strip_brackets(text, spec)
        if inside is not None:
            pos: Ranges = ()
            neg: Ranges = ()
            has_positive = False
            for item in _split_list(inside, spec):
                if item.startswith("!"):
                    neg = _union(neg, self._port_expr(item[1:].strip(), spec, stack))
                else:
                    has_positive = True
                    pos = _union(pos, self._port_expr(item, spec, stack))
            if not has_positive:
                pos = ((0, PORT_MAX),)
            return _subtract(pos, neg, PORT_MAX)
        if text.startswith("$"):
            name = text[1:]
            value = self._variable(name, stack, self.port_groups, self.address_groups,
                                   "port", "address variable '${}' used as a port")
            return self._port_expr(value, spec, (*stack, name))
        if text.lower() == "any":
            return ((0, PORT_MAX),)
        if ":" in text:
            lo_text, _, hi_text = text.partition(":")
            lo = _port_number(lo_text.strip(), spec) if lo_text.strip() else 0
            hi = _port_number(hi_text.strip(), spec) if hi_text.strip() else PORT_MAX
            if lo > hi:
                raise VariableError(f"port range {text!r} has its low end above its high end")
            return ((lo, hi),)
        number = _port_number(text, spec)
        return ((number, number),)


def _port_number(text: str, spec: str) -> int:
    if not text.isdigit():
        raise VariableError(f"invalid port {text!r} in {spec!r}")
    value = int(text)
    if value > PORT_MAX:
        raise VariableError(f"port {value} out of range in {spec!r}")
    return value
