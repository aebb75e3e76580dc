"""DNS over UDP and TCP (RFC 1035), tolerant, with Suricata 7's EVE `dns` records.

``DnsParser.parse_datagram(data, to_server)`` takes one UDP payload;
``feed(data, to_server)`` takes TCP bytes: each message has a 2-byte length prefix
(RFC 1035 section 4.2.2, RFC 7766), several may share a segment and one may span
many. Every message becomes a ``DnsTransaction`` (Suricata 7 numbers requests and
responses as separate transactions) exposing the ``dns.query`` buffer (the query
names), the opcode and rrtypes, and the EVE records in "version 2" format:
one ``{"type": "query", ...}`` per question, one ``{"type": "answer", ...}`` per
response with ``answers``, ``grouped`` and ``authorities``.

Malformed input never raises: it becomes Suricata's DNS event names
(``MALFORMED_DATA``, ``NOT_A_REQUEST``, ``NOT_A_RESPONSE``, ``Z_FLAG_SET``,
``FLOODED``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

from appliance.core.app import ANOMALY, DNS_ANSWER, DNS_QUERY, AppEvent

# --- limits ----------------------------------------------------------------------------

# RFC 1035 section 2.3.4 allows 255 octets, but tunnels and malware send longer names
# and Suricata still logs them (its DNS parser accepts up to 1025 bytes): keep them
# visible to dns.query; past this the name is malformed. Bounds work per name.
MAX_NAME_LEN: Final = 1025
# Compression pointers one name may follow. A legal name has at most 127 labels, so
# more jumps than that can only be a loop (RFC 1035 section 4.1.4 pointers).
MAX_POINTER_JUMPS: Final = 128
# Records parsed per section: a 64 KiB message cannot hold more than ~5000 minimal
# records; beyond this we stop (bounded time per message), keeping what was parsed.
MAX_RECORDS: Final = 1024
# Suricata's dns "request-flood" default: this many requests without a response
# raise FLOODED (once).
REQUEST_FLOOD: Final = 500
# Transactions kept per flow for the engine; older ones are dropped.
MAX_TRANSACTIONS_KEPT: Final = 256
# A TCP DNS message is at most 65535 bytes (2-byte length): the per-direction buffer
# never needs more than one message plus its prefix.
MAX_TCP_BUFFER: Final = 65535 + 2

RRTYPES: Final = {
    1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR",
    10: "NULL", 11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT",
    17: "RP", 18: "AFSDB", 19: "X25", 20: "ISDN", 21: "RT", 22: "NSAP", 23: "NSAPPTR",
    24: "SIG", 25: "KEY", 26: "PX", 27: "GPOS", 28: "AAAA", 29: "LOC", 30: "NXT",
    33: "SRV", 34: "ATMA", 35: "NAPTR", 36: "KX", 37: "CERT", 38: "A6", 39: "DNAME",
    41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG",
    47: "NSEC", 48: "DNSKEY", 49: "DHCID", 50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA",
    55: "HIP", 59: "CDS", 60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD",
    64: "SVCB", 65: "HTTPS", 99: "SPF", 249: "TKEY", 250: "TSIG", 251: "IXFR",
    252: "AXFR", 253: "MAILB", 254: "MAILA", 255: "ANY", 256: "URI", 257: "CAA",
}
RCODES: Final = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE",
    16: "BADVERS", 17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME",
    21: "BADALG", 22: "BADTRUNC",
}

# Types Suricata 7 groups under "grouped" (its EVE schema allows exactly these); other
# answers only appear in "answers".
GROUPED_TYPES: Final = frozenset({"A", "AAAA", "CNAME", "MX", "NULL", "PTR", "SRV", "TXT"})

_NAME_TYPES: Final = {2, 5, 12, 39}  # NS, CNAME, PTR, DNAME: rdata is one name
_HDR: Final = struct.Struct("!HHHHHH")
_RR: Final = struct.Struct("!HHIH")


class DnsError(Exception):
    """Internal: a message is malformed (never escapes the parser)."""


def rrtype_name(t: int) -> str:
    return RRTYPES.get(t, str(t))


def rcode_name(r: int) -> str:
    return RCODES.get(r, str(r))


def escape_bytes(b: bytes) -> str:
    """Bytes as Suricata prints names and rdata: UTF-8 if valid, else \\xNN for bytes
    >= 0x80 (ASCII, control characters included, stays as it is)."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(chr(c) if c < 0x80 else f"\\x{c:02x}" for c in b)


def read_name(msg: bytes, off: int) -> tuple[bytes, int]:
    """Decompress the name at ``off``; return (dotted name, offset after it).

    Pointer loops, forward-jump games and over-long names raise DnsError; the
    number of jumps and the output length are both bounded.
    """
    labels: list[bytes] = []
    total = 0
    jumps = 0
    end = -1
    n = len(msg)
    while True:
        if off >= n:
            raise DnsError("name runs past the message")
        ln = msg[off]
        kind = ln & 0xC0
        if kind == 0xC0:
            if off + 1 >= n:
                raise DnsError("truncated pointer")
            ptr = ((ln & 0x3F) << 8) | msg[off + 1]
            if end == -1:
                end = off + 2
            jumps += 1
            if jumps > MAX_POINTER_JUMPS or ptr >= n:
                raise DnsError("pointer loop")
            off = ptr
            continue
        if kind != 0:
            # 0x40 / 0x80: extended and binary labels (RFC 6891 obsoleted them).
            raise DnsError("unsupported label type")
        if ln == 0:
            off += 1
            break
        off += 1
        if off + ln > n:
            raise DnsError("label runs past the message")
        total += ln + 1
        if total > MAX_NAME_LEN:
            raise DnsError("name too long")
        labels.append(msg[off : off + ln])
        off += ln
    return b".".join(labels), (end if end != -1 else off)


@dataclass(slots=True)
class DnsRecord:
    name: bytes
    rrtype: int
    rrclass: int
    ttl: int
    rdata: bytes
    value: Any  # str for most types, dict for SOA/SRV, None when unparsed

    def eve(self) -> dict[str, Any]:
        o: dict[str, Any] = {
            "rrname": escape_bytes(self.name),
            "rrtype": rrtype_name(self.rrtype),
            "ttl": self.ttl,
        }
        if self.rrtype == 6 and isinstance(self.value, dict):
            o["soa"] = self.value
        elif self.rrtype == 33 and isinstance(self.value, dict):
            o["srv"] = self.value
        elif self.value is not None:
            o["rdata"] = self.value
        return o


@dataclass(slots=True)
class DnsQuestion:
    name: bytes
    qtype: int
    qclass: int


@dataclass(slots=True)
class DnsTransaction:
    tx_id: int
    to_server: bool
    id: int = 0
    flags: int = 0
    questions: list[DnsQuestion] = field(default_factory=list)
    answers: list[DnsRecord] = field(default_factory=list)
    authorities: list[DnsRecord] = field(default_factory=list)
    additionals: list[DnsRecord] = field(default_factory=list)
    malformed: bool = False

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @property
    def queries(self) -> list[bytes]:
        """The dns.query buffer: one entry per question name (a multi-buffer)."""
        return [q.name for q in self.questions]

    def buffers(self) -> dict[str, list[bytes]]:
        return {"dns.query": self.queries}

    @property
    def rrtypes(self) -> list[int]:
        """dns.rrtype: the query types (Suricata matches it on the questions)."""
        return [q.qtype for q in self.questions]

    def eve(self) -> list[dict[str, Any]]:
        """EVE `dns` objects in Suricata 7 version 2 format."""
        if not self.is_response:
            out: list[dict[str, Any]] = []
            for q in self.questions:
                r: dict[str, Any] = {
                    "type": "query",
                    "id": self.id,
                    "rrname": escape_bytes(q.name),
                    "rrtype": rrtype_name(q.qtype),
                    "tx_id": self.tx_id,
                    "opcode": self.opcode,
                }
                if self.flags & 0x0040:
                    r["z"] = True
                out.append(r)
            return out
        a: dict[str, Any] = {
            "version": 2,
            "type": "answer",
            "id": self.id,
            "flags": f"{self.flags:x}",
            "qr": True,
        }
        for bit, name in ((0x0400, "aa"), (0x0200, "tc"), (0x0100, "rd"), (0x0080, "ra"),
                          (0x0040, "z")):
            if self.flags & bit:
                a[name] = True
        a["opcode"] = self.opcode
        if self.questions:
            a["rrname"] = escape_bytes(self.questions[0].name)
            a["rrtype"] = rrtype_name(self.questions[0].qtype)
        a["rcode"] = rcode_name(self.rcode)
        if self.answers:
            a["answers"] = [r.eve() for r in self.answers]
            grouped: dict[str, list[Any]] = {}
            for rec in self.answers:
                if rec.value is None or rrtype_name(rec.rrtype) not in GROUPED_TYPES:
                    continue
                if rec.rrtype == 33 and not isinstance(rec.value, dict):
                    continue  # an SRV that did not parse has no structured form to group
                grouped.setdefault(rrtype_name(rec.rrtype), []).append(rec.value)
            a["grouped"] = grouped  # Suricata writes {} when nothing is groupable
        if self.authorities:
            a["authorities"] = [r.eve() for r in self.authorities]
        return [a]


def _rdata_value(msg: bytes, rtype: int, start: int, rdlen: int) -> Any:
    rd = msg[start : start + rdlen]
    if rtype == 1:
        if rdlen != 4:
            raise DnsError("bad A")
        return f"{rd[0]}.{rd[1]}.{rd[2]}.{rd[3]}"
    if rtype == 28:
        if rdlen != 16:
            raise DnsError("bad AAAA")
        h = rd.hex()
        # Suricata prints every group with four digits, no "::" compression.
        return ":".join(h[i : i + 4] for i in range(0, 32, 4))
    if rtype in _NAME_TYPES:
        return escape_bytes(read_name(msg, start)[0])
    if rtype == 15:  # MX: preference + exchange; Suricata logs the exchange
        if rdlen < 3:
            raise DnsError("bad MX")
        return escape_bytes(read_name(msg, start + 2)[0])
    if rtype == 6:  # SOA
        mname, off = read_name(msg, start)
        rname, off = read_name(msg, off)
        if off + 20 > start + rdlen:
            raise DnsError("bad SOA")
        serial, refresh, retry, expire, minimum = struct.unpack_from("!IIIII", msg, off)
        return {"mname": escape_bytes(mname), "rname": escape_bytes(rname),
                "serial": serial, "refresh": refresh, "retry": retry,
                "expire": expire, "minimum": minimum}
    if rtype == 33:  # SRV (RFC 2782)
        if rdlen < 7:
            raise DnsError("bad SRV")
        prio, weight, port = struct.unpack_from("!HHH", msg, start)
        name = read_name(msg, start + 6)[0]
        return {"priority": prio, "weight": weight, "port": port,
                "name": escape_bytes(name)}
    if rtype == 16:  # TXT: character-strings, concatenated
        parts: list[bytes] = []
        i = 0
        while i < rdlen:
            ln = rd[i]
            parts.append(rd[i + 1 : i + 1 + ln])
            i += 1 + ln
        return escape_bytes(b"".join(parts))
    if rtype == 10:  # NULL: opaque bytes, shown escaped (DNS tunnels live here)
        return escape_bytes(rd)
    # Other types (OPT, DNSKEY, RRSIG, NSEC, ...): Suricata 7 logs no rdata for them.
    return None


def parse_message(msg: bytes, tx: DnsTransaction) -> list[str]:
    """Fill ``tx`` from one DNS message; return anomaly names (never raises)."""
    ev: list[str] = []
    if len(msg) < 12:
        tx.malformed = True
        return ["MALFORMED_DATA"]
    tx.id, tx.flags, qd, an, ns, ar = _HDR.unpack_from(msg, 0)
    off = 12
    try:
        for _ in range(min(qd, MAX_RECORDS)):
            name, off = read_name(msg, off)
            if off + 4 > len(msg):
                raise DnsError("truncated question")
            qtype, qclass = struct.unpack_from("!HH", msg, off)
            off += 4
            tx.questions.append(DnsQuestion(name, qtype, qclass))
        for count, dest in ((an, tx.answers), (ns, tx.authorities), (ar, tx.additionals)):
            for _ in range(min(count, MAX_RECORDS)):
                name, off = read_name(msg, off)
                if off + 10 > len(msg):
                    raise DnsError("truncated record")
                rtype, rclass, ttl, rdlen = _RR.unpack_from(msg, off)
                off += 10
                if off + rdlen > len(msg):
                    raise DnsError("rdata runs past the message")
                try:
                    value = _rdata_value(msg, rtype, off, rdlen)
                except DnsError:
                    # a bad rdata is logged raw, the rest of the message still parses
                    value = escape_bytes(msg[off : off + rdlen])
                dest.append(DnsRecord(name, rtype, rclass, ttl, msg[off : off + rdlen],
                                      value))
                off += rdlen
    except (DnsError, struct.error, IndexError):
        tx.malformed = True
        ev.append("MALFORMED_DATA")
    if tx.flags & 0x0040:
        ev.append("Z_FLAG_SET")
    return ev


class DnsParser:
    """DNS for one flow (UDP datagrams or a TCP stream)."""

    app_proto = "dns"

    def __init__(self) -> None:
        self.transactions: list[DnsTransaction] = []
        self._next_tx_id = 0
        self._bufs = (bytearray(), bytearray())  # TCP: to_client, to_server
        self._unreplied = 0
        self._flooded = False

    def memuse(self) -> int:
        return len(self._bufs[0]) + len(self._bufs[1])

    def parse_datagram(self, data: bytes, to_server: bool) -> list[AppEvent]:
        """One UDP payload = one DNS message (RFC 1035 section 4.2.1)."""
        try:
            return self._message(bytes(data), to_server)
        except Exception:  # principle 7: never let a parser bug escape
            return [AppEvent(ANOMALY, to_server, "MALFORMED_DATA")]

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]:
        """TCP bytes, in order, any chunking: 2-byte length-prefixed messages."""
        out: list[AppEvent] = []
        buf = self._bufs[1 if to_server else 0]
        buf += data
        pos = 0
        try:
            while len(buf) - pos >= 2:
                ln = (buf[pos] << 8) | buf[pos + 1]
                if ln == 0:
                    out.append(AppEvent(ANOMALY, to_server, "MALFORMED_DATA"))
                    pos += 2
                    continue
                if len(buf) - pos - 2 < ln:
                    break
                out.extend(self._message(bytes(buf[pos + 2 : pos + 2 + ln]), to_server))
                pos += 2 + ln
        except Exception:
            out.append(AppEvent(ANOMALY, to_server, "MALFORMED_DATA"))
            pos = len(buf)
        if pos:
            del buf[:pos]
        return out

    def close(self) -> list[AppEvent]:
        out: list[AppEvent] = []
        for i, buf in enumerate(self._bufs):
            if buf:
                # a message cut by the end of the flow
                out.append(AppEvent(ANOMALY, bool(i), "MALFORMED_DATA"))
                buf.clear()
        return out

    def _message(self, msg: bytes, to_server: bool) -> list[AppEvent]:
        tx = DnsTransaction(self._next_tx_id, to_server)
        names = parse_message(msg, tx)
        out = [AppEvent(ANOMALY, to_server, n, tx.tx_id) for n in names]
        if len(msg) < 12:
            return out
        self._next_tx_id += 1
        self.transactions.append(tx)
        if len(self.transactions) > MAX_TRANSACTIONS_KEPT:
            del self.transactions[: len(self.transactions) - MAX_TRANSACTIONS_KEPT]
        if tx.is_response:
            if to_server:
                out.append(AppEvent(ANOMALY, to_server, "NOT_A_REQUEST", tx.tx_id))
            self._unreplied = max(0, self._unreplied - 1)
            out.append(AppEvent(DNS_ANSWER, to_server, "", tx.tx_id, {"tx": tx}))
        else:
            if not to_server:
                out.append(AppEvent(ANOMALY, to_server, "NOT_A_RESPONSE", tx.tx_id))
            self._unreplied += 1
            if self._unreplied > REQUEST_FLOOD and not self._flooded:
                self._flooded = True
                out.append(AppEvent(ANOMALY, to_server, "FLOODED", tx.tx_id))
            out.append(AppEvent(DNS_QUERY, to_server, "", tx.tx_id, {"tx": tx}))
        return out


def looks_like_dns(data: bytes, tcp: bool = False) -> bool:
    """Header sanity for protocol detection (Suricata's DNS probing parser idea).

    A plausible message: full header, opcode 0-5, at least one question for a query,
    counts that fit in the message, and the first question name parses.
    """
    if tcp:
        if len(data) < 2 + 12:
            return False
        ln = (data[0] << 8) | data[1]
        if ln < 12:
            return False
        data = data[2 : 2 + ln]
    if len(data) < 12:
        return False
    _id, flags, qd, an, ns, ar = _HDR.unpack_from(data, 0)
    if (flags >> 11) & 0xF > 5:
        return False
    if qd == 0 or qd > 16:
        return False
    if an + ns + ar > 256:
        return False
    # each question takes at least 5 bytes, each record 11 (RFC 1035 4.1.2, 4.1.3)
    if not tcp and qd * 5 + (an + ns + ar) * 11 > len(data) - 12:
        return False
    try:
        _name, off = read_name(data, 12)
    except DnsError:
        return False
    return off + 4 <= len(data) or tcp
