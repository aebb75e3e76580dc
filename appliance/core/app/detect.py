"""Application protocol detection by content, the port only as a hint.

Like Suricata's protocol detection (pattern matching on the first bytes of each
direction plus probing parsers), a ``ProtoDetector`` per TCP flow is fed the first
in-order bytes of either direction and answers:

- an app_proto name (Suricata's spelling: "http", "tls", "dns", "ssh", "smtp", "ftp",
  "imap", "pop3") as soon as the bytes identify one,
- ``None`` while more bytes are needed (a 1-byte chunk "G" may become "GET "),
- ``"failed"`` once enough bytes were seen without a match (Suricata's EVE shows
  app_proto "failed" for such flows).

``detect_udp`` is the stateless variant for one UDP payload.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from appliance.core.app import APP_PROTO_FAILED, krb5, mqtt, nfs, sip, snmp
from appliance.core.app.dcerpc import looks_like_dcerpc, looks_like_dcerpc_udp
from appliance.core.app.dns import looks_like_dns
from appliance.core.app.tls import looks_like_tls

# Bytes per direction inspected before giving up. Suricata's pattern-based detection
# looks at the start of the stream (its patterns have depths of a few bytes; probing
# parsers read the first message). A request line or a TLS record header is always in
# the first few hundred bytes; 2 KiB leaves room for leading junk like blank lines.
DETECT_DEPTH: Final = 2048
# Port hints for DNS (Suricata's default dns detection ports; mDNS uses 5353).
DNS_PORTS: Final = frozenset({53, 5353})

# Request methods Suricata's HTTP detection knows (app-layer-htp.c registers these
# patterns, each followed by a space or tab), plus WebDAV ones.
HTTP_METHODS: Final = (
    b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"TRACE",
    b"PATCH", b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK",
    b"UNLOCK", b"CHECKOUT", b"UNCHECKOUT", b"CHECKIN", b"UPDATE", b"LABEL", b"REPORT",
    b"MKWORKSPACE", b"MKACTIVITY", b"MERGE", b"INVALID", b"VERSION-CONTROL",
    b"BASELINE-CONTROL", b"SEARCH", b"SUBSCRIBE", b"UNSUBSCRIBE", b"NOTIFY", b"POLL",
    b"BMOVE", b"BDELETE", b"BPROPFIND", b"BPROPPATCH", b"BCOPY", b"ACL",
)
_HTTP_PATTERNS: Final = tuple(m + b" " for m in HTTP_METHODS) + tuple(
    m + b"\t" for m in HTTP_METHODS
)

# (direction, prefix, app_proto). Direction: True = to server, False = to client,
# None = either. Checked in order; the first full match wins.
_PATTERNS: Final[tuple[tuple[bool | None, bytes, str], ...]] = (
    (False, b"HTTP/1.", "http"),
    (True, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http2"),  # RFC 9113 3.4 preface
    (None, b"SSH-", "ssh"),
    (True, b"EHLO ", "smtp"),
    (True, b"HELO ", "smtp"),
    (True, b"EHLO\r\n", "smtp"),
    (True, b"USER ", "ftp"),
    (False, b"* OK", "imap"),
    (False, b"+OK", "pop3"),
)


def _prefix_state(data: bytes, pattern: bytes, nocase: bool) -> int:
    """1: data starts with pattern; 0: data is a prefix of pattern; -1: no match."""
    n = min(len(data), len(pattern))
    a, b = data[:n], pattern[:n]
    if nocase:
        a = a.upper()
    if a != b:
        return -1
    return 1 if len(data) >= len(pattern) else 0


def _banner_220(data: bytes) -> str | None:
    """A "220" greeting names its service often enough (RFC 5321 4.2, RFC 959 5.4)."""
    line_end = data.find(b"\n")
    line = data if line_end == -1 else data[:line_end]
    up = line.upper()
    if b"FTP" in up:
        return "ftp"
    if b"SMTP" in up or b"MAIL" in up or b"POSTFIX" in up or b"EXIM" in up:
        return "smtp"
    return None


def detect_stream(data: bytes, to_server: bool, sport: int = 0, dport: int = 0,
                  other: bytes = b"") -> str | None:
    """Detect from the first bytes of one direction (``other``: the other direction's
    first bytes, used for 220 banners). ``None`` = undecided."""
    if not data:
        return None
    undecided = False
    # HTTP requests: a method followed by a space (case-insensitive like Suricata's
    # "nocase" patterns), leading blank lines tolerated as libhtp does.
    if to_server:
        d = data.lstrip(b"\r\n")
        if not d:
            undecided = len(data) < DETECT_DEPTH
        else:
            for p in _HTTP_PATTERNS:
                st = _prefix_state(d, p, nocase=True)
                if st == 1:
                    return "http"
                if st == 0:
                    undecided = True
    tls = looks_like_tls(data)
    if tls:
        return "tls"
    if tls is None:
        undecided = True
    smb = looks_like_smb(data, sport, dport)
    if smb:
        return "smb"
    if smb is None:
        undecided = True
    for direction, pat, proto in _PATTERNS:
        if direction is not None and direction != to_server:
            continue
        st = _prefix_state(data, pat, nocase=False)
        if st == 1:
            return proto
        if st == 0:
            undecided = True
    if not to_server:
        st = _prefix_state(data, b"220", nocase=False)
        if st == 1 and len(data) > 3 and data[3:4] in (b" ", b"-"):
            name = _banner_220(data)
            if name is not None:
                return name
            if other:
                # The client's first command tells SMTP from FTP.
                o = other.upper()
                if o.startswith((b"EHLO", b"HELO")):
                    return "smtp"
                if o.startswith((b"USER", b"AUTH", b"FEAT", b"SYST")):
                    return "ftp"
            else:
                undecided = True  # wait for the client's first command
        elif st == 0 or (st == 1 and len(data) == 3):
            undecided = True
    # Protocols Suricata probes on their ports only (its default detection ports).
    for port, name, probe in _TCP_PORT_PROBES:
        if port == dport or port == sport:
            r = probe(data)
            if r:
                return name
            if r is None:
                undecided = True
    # DCERPC (connection-oriented) on any port: its 16-byte PDU header, as Suricata
    # detects it on dynamic RPC ports (app/dcerpc.py looks_like_dcerpc).
    dce = looks_like_dcerpc(data, to_server)
    if dce:
        return "dcerpc"
    if dce is None:
        undecided = True
    # DNS over TCP: a 2-byte length then a sane header and question (RFC 7766).
    # Without the port hint the whole first message must be there and parse.
    hint = dport in DNS_PORTS or sport in DNS_PORTS
    if len(data) < 2:
        undecided = True
    else:
        ln = (data[0] << 8) | data[1]
        if ln >= 12:
            if len(data) >= ln + 2:
                if looks_like_dns(data[: 2 + ln], tcp=True):
                    return "dns"
            elif (len(data) < 14 or _dns_header_sane(data[2:14])) and (
                hint or ln + 2 <= DETECT_DEPTH
            ):
                undecided = True
    if undecided and len(data) < DETECT_DEPTH:
        return None
    return APP_PROTO_FAILED


_SMB_MAGICS: Final = (b"\xffSMB", b"\xfeSMB", b"\xfdSMB")


def looks_like_smb(data: bytes, sport: int = 0, dport: int = 0) -> bool | None:
    """SMB by its header: a NetBIOS session message (type 0, 24-bit length) holding an
    SMB1/SMB2/SMB3 header (``\\xffSMB``, ``\\xfeSMB``, ``\\xfdSMB`` encrypted), as
    Suricata's SMB probing does; on port 139 also a NetBIOS session request, response
    or keep-alive (RFC 1002 4.3), which precede the SMB messages there. None: too few
    bytes to tell."""
    if not data:
        return None
    t = data[0]
    if t == 0:
        if len(data) < 8:
            tail = data[4:]
            return None if any(m.startswith(tail) for m in _SMB_MAGICS) else False
        return data[4:8] in _SMB_MAGICS
    if t in (0x81, 0x82, 0x85) and 139 in (sport, dport):
        if len(data) < 4:
            return None
        return data[1] & 0xFE == 0  # RFC 1002 flags: only the length extension bit
    return False


# (port, app_proto, probe): probe says True (it is), False (it is not), None (need more).
_TCP_PORT_PROBES: Final[tuple[tuple[int, str, Callable[[bytes], bool | None]], ...]] = (
    (1883, "mqtt", mqtt.probe),
    (88, "krb5", krb5.probe_tcp),
)
# The same for UDP payloads (Suricata's default ports for sip, krb5, snmp).
_UDP_PORT_PROBES: Final[tuple[tuple[int, str, Callable[[bytes], bool]], ...]] = (
    (5060, "sip", sip.probe_udp),
    (88, "krb5", krb5.probe_udp),
    (161, "snmp", snmp.probe_udp),
    (162, "snmp", snmp.probe_udp),
    (2049, "nfs", nfs.probe_udp),
)


def _dns_header_sane(h: bytes) -> bool:
    """RFC 1035 4.1.1 header: opcode 0-5, 1-16 questions, a modest record count."""
    flags = (h[2] << 8) | h[3]
    qd = (h[4] << 8) | h[5]
    others = ((h[6] << 8) | h[7]) + ((h[8] << 8) | h[9]) + ((h[10] << 8) | h[11])
    return (flags >> 11) & 0xF <= 5 and 1 <= qd <= 16 and others <= 256


def detect_udp(data: bytes, sport: int, dport: int) -> str | None:
    """One UDP payload: DNS when a DNS port (53, 5353) is involved and the header is
    sane. Like Suricata 7, which probes for DNS over UDP on its DNS ports only: on other
    ports DNS-shaped payloads are too common (QUIC, NetBIOS, games) to guess. None means
    "not DNS": the engine records app_proto "failed" for such a UDP flow, as Suricata.
    """
    if dport in DNS_PORTS or sport in DNS_PORTS:
        return "dns" if looks_like_dns(data) else None
    if looks_like_dcerpc_udp(data):
        return "dcerpc"  # connectionless DCERPC: its 80-byte header sized to the datagram
    for port, name, probe in _UDP_PORT_PROBES:
        if (port == dport or port == sport) and probe(data):
            return name
    return None


class ProtoDetector:
    """Per-flow detection state for a TCP flow: first bytes of each direction."""

    __slots__ = ("_buf", "_done", "dport", "result", "sport")

    def __init__(self, sport: int = 0, dport: int = 0) -> None:
        self.sport = sport
        self.dport = dport
        self._buf = (bytearray(), bytearray())  # to_client, to_server
        self._done = [False, False]
        self.result: str | None = None

    def memuse(self) -> int:
        return len(self._buf[0]) + len(self._buf[1])

    def early(self, to_server: bool) -> bytes:
        """The first bytes seen in one direction (up to DETECT_DEPTH): what a parser
        chosen by this detection must be fed first."""
        return bytes(self._buf[1 if to_server else 0])

    def feed(self, data: bytes, to_server: bool) -> str | None:
        """Returns the app_proto, ``"failed"``, or None (undecided yet)."""
        if self.result is not None:
            return self.result
        i = 1 if to_server else 0
        buf = self._buf[i]
        room = DETECT_DEPTH - len(buf)
        if room > 0:
            buf += data[:room]
        if not self._done[i]:
            r = detect_stream(bytes(buf), to_server, self.sport, self.dport,
                              bytes(self._buf[1 - i]))
            if r is None:
                return None
            if r != APP_PROTO_FAILED:
                self.result = r
                return r
            self._done[i] = True
        # The flow fails once both directions failed, or when this one failed with a
        # full detection depth while the other never spoke.
        other_silent = len(self._buf[1 - i]) == 0
        if self._done[1 - i] or (other_silent and len(buf) >= DETECT_DEPTH):
            self.result = APP_PROTO_FAILED
        return self.result
