"""Suricata rule text -> ``Rule``: the header, the options, and the structure a matcher needs.

What is matched from Suricata 7 (detect-parse.c and the keyword modules):

- header: ``action proto src sport dir dst dport`` where lists in brackets may hold spaces;
  ``dir`` is ``->`` or ``<>`` (``<-`` is rejected, as by Suricata);
- options: ``(name[:value]; ...)``; an option ends at the next ``;`` that is not escaped with
  a backslash, whether or not it sits between quotes (Suricata does not track quotes, so a
  ``;`` inside a quoted value must be written ``\\;``, and a lone ``"`` inside a pcre is fine);
  every option, the last included, must end with ``;``; names are case-insensitive;
- ``content``: ``[!]"..."`` with ``|41 42|`` hex blocks and the escapes ``\\" \\; \\: \\\\``
  only (any other escape is an error, as in DetectContentDataParse);
- content modifiers (nocase, depth, offset, distance, within, fast_pattern, startswith,
  endswith, rawbytes) apply to the last content of the active sticky buffer, or to the last
  content of the rule when no sticky buffer is active;
- sticky buffers (``http.uri``, ``file.data``, ``dns.query``, ``pkt_data``...) set the buffer for
  what follows; legacy modifiers (``http_uri``...) move the *preceding* content into their
  buffer and are refused while a sticky buffer is active;
- transforms (``dotprefix``, ``to_lowercase``...) attach to the active sticky buffer.

Every keyword of the ET Open 2024-04-21 ruleset is known. A keyword outside the registries
below makes the rule fail with ``unsupported keyword 'name'``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from appliance.rules.pcre import PcreError, PcreSpec, parse_pcre_value
from appliance.rules.variables import AddressSet, PortSet, VariableError, Variables

ACTIONS = frozenset({"alert", "pass", "drop", "reject", "rejectsrc", "rejectdst", "rejectboth"})

# Suricata 7 protocol names for the rule header: decoder-level protocols, then app-layer ones.
PROTOCOLS = frozenset(
    {
        "ip", "ipv4", "ip4", "ipv6", "ip6", "tcp", "udp", "icmp", "icmpv4", "icmpv6", "sctp",
        "tcp-pkt", "tcp-stream", "pkthdr",
        "http", "http1", "http2", "dns", "tls", "ssl", "ssh", "smb", "ftp", "ftp-data", "smtp",
        "dcerpc", "dhcp", "krb5", "snmp", "sip", "rfb", "mqtt", "nfs", "ntp", "tftp", "ike",
        "ikev2", "rdp", "modbus", "dnp3", "enip", "quic", "pgsql", "bittorrent-dht", "telnet",
        "imap", "pop3", "websocket", "ldap",
    }
)

# Sticky buffer keyword (and Suricata alias) -> canonical buffer name.
# The frames the `frame` keyword may name (app/sip.py FRAMES; no other parser has any).
FRAME_BUFFERS: Final = frozenset({
    "sip.pdu", "sip.request.line", "sip.request.headers", "sip.request.body",
    "sip.response.line", "sip.response.headers", "sip.response.body"})

STICKY_BUFFERS: dict[str, str] = {
    "pkt_data": "pkt_data",
    "file.data": "file.data",
    "file_data": "file.data",
    "file.name": "file.name",
    "file.magic": "file.magic",
    "base64_data": "base64_data",
    "dce_stub_data": "dcerpc.stub_data",
    "dcerpc.stub_data": "dcerpc.stub_data",
    "tcp.hdr": "tcp.hdr",
    "udp.hdr": "udp.hdr",
    "ipv4.hdr": "ipv4.hdr",
    "ipv6.hdr": "ipv6.hdr",
    "icmpv4.hdr": "icmpv4.hdr",
    "icmpv6.hdr": "icmpv6.hdr",
    "ip.src": "ip.src",  # the packet's source / destination address (4 or 16 bytes)
    "ip.dst": "ip.dst",
    "dns.query": "dns.query",
    "dns_query": "dns.query",
    "smb.named_pipe": "smb.named_pipe",
    "smb_named_pipe": "smb.named_pipe",
    "smb.share": "smb.share",
    "smb_share": "smb.share",
    "smb.ntlmssp_user": "smb.ntlmssp_user",
    "smb.ntlmssp_domain": "smb.ntlmssp_domain",
    "krb5_cname": "krb5_cname",
    "krb5_sname": "krb5_sname",
    "snmp.community": "snmp.community",
    "snmp.usm": "snmp.usm",
    "rfb.name": "rfb.name",
    "quic.sni": "quic.sni",
    "quic.ua": "quic.ua",
    "quic.version": "quic.version",
    "quic.cyu.hash": "quic.cyu.hash",
    "quic.cyu.string": "quic.cyu.string",
    "ike.vendor": "ike.vendor",
    "ike.init_spi": "ike.init_spi",
    "ike.resp_spi": "ike.resp_spi",
    "ike.key_exchange_payload": "ike.key_exchange_payload",
    "ike.nonce_payload": "ike.nonce_payload",
    "http2.header_name": "http2.header_name",
    "http2.header": "http2.header",
}
# Suricata 7 inspects http.response_body (and legacy http_server_body) through the file_data
# buffer (detect-http-server-body.c registers them on g_file_data_buffer_id), so they are the
# same buffer here: a pcre with /Q after http.response_body is valid, as Suricata accepts it.
STICKY_BUFFERS["http.response_body"] = "file.data"
for _name in (
    "http.uri", "http.uri.raw", "http.method", "http.request_body",
    "http.header", "http.header.raw", "http.cookie", "http.user_agent", "http.host",
    "http.host.raw", "http.stat_code", "http.stat_msg", "http.request_header",
    "http.response_header",
):
    STICKY_BUFFERS[_name] = _name
# Buffers whose legacy underscore name is also a sticky buffer in Suricata 7.
for _name in (
    "http.request_line", "http.response_line", "http.header_names", "http.accept",
    "http.accept_enc", "http.accept_lang", "http.connection", "http.content_type",
    "http.content_len", "http.location", "http.referer", "http.server", "http.protocol",
    "http.start", "tls.sni", "tls.cert_issuer", "tls.cert_subject", "tls.cert_serial",
    "tls.cert_fingerprint", "ja3.hash", "ja3.string", "ja3s.hash", "ja3s.string", "ssh.proto",
    "ssh.software",
):
    STICKY_BUFFERS[_name] = _name
    STICKY_BUFFERS[_name.replace(".", "_")] = _name
for _name in (
    "tls.certs", "tls.subjectaltname", "tls.random", "tls.random_time", "tls.random_bytes",
    "ssh.hassh", "ssh.hassh.server", "ssh.hassh.string", "ssh.hassh.server.string",
    "sip.method", "sip.uri", "sip.request_line", "sip.stat_code", "sip.stat_msg",
    "sip.response_line", "sip.protocol",
    "smtp.helo", "smtp.mail_from", "smtp.rcpt_to", "email.from", "email.to", "email.cc",
    "email.subject", "email.date", "email.message_id", "email.x_mailer", "email.received",
    "email.url", "email.body_md5",
    "mqtt.connect.clientid", "mqtt.connect.username", "mqtt.connect.password",
    "mqtt.connect.willtopic", "mqtt.connect.willmessage", "mqtt.publish.topic",
    "mqtt.publish.message", "mqtt.subscribe.topic", "mqtt.unsubscribe.topic",
):
    STICKY_BUFFERS[_name] = _name

# Legacy content modifiers: they move the preceding content into this buffer.
LEGACY_MODIFIERS: dict[str, str] = {
    "http_uri": "http.uri",
    "http_raw_uri": "http.uri.raw",
    "http_method": "http.method",
    "http_client_body": "http.request_body",
    "http_server_body": "file.data",
    "http_header": "http.header",
    "http_raw_header": "http.header.raw",
    "http_cookie": "http.cookie",
    "http_user_agent": "http.user_agent",
    "http_host": "http.host",
    "http_raw_host": "http.host.raw",
    "http_stat_code": "http.stat_code",
    "http_stat_msg": "http.stat_msg",
}

# Transforms (Suricata 7 "transformations"): they modify the active sticky buffer.
TRANSFORMS = frozenset(
    {
        "dotprefix", "strip_whitespace", "compress_whitespace", "to_lowercase", "to_uppercase",
        "to_md5", "to_sha1", "to_sha256", "url_decode", "xor", "pcrexform", "header_lowercase",
        "strip_pseudo_headers", "from_base64",
    }
)

# File keywords that are a content on a file buffer (see _file_content).
FILE_CONTENT_KEYWORDS = frozenset({"filename", "fileext", "filemagic"})

CONTENT_FLAG_MODIFIERS = frozenset({"nocase", "startswith", "endswith", "rawbytes"})
CONTENT_VALUE_MODIFIERS = frozenset({"depth", "offset", "distance", "within"})

# Keywords that inspect the active buffer (kept in order, with the buffer, for the matcher).
BUFFER_KEYWORDS = frozenset(
    {
        "isdataat", "byte_test", "byte_jump", "byte_extract", "byte_math", "bsize",
        "base64_decode", "asn1", "dataset", "datarep", "entropy",
    }
)

# Other keywords known to the parser, kept as generic (keyword, value) options.
GENERIC_KEYWORDS = frozenset(
    {
        # rule metadata and alert control
        "target", "noalert", "threshold", "detection_filter", "tag", "config", "requires",
        "prefilter", "bypass",
        # flow and state
        "flow", "flowbits", "xbits", "hostbits", "flowint", "flowvar", "pktvar", "stream_size",
        "app-layer-protocol", "app-layer-event", "decode-event", "stream-event",
        "engine-event", "iprep", "geoip", "lua", "luajit",
        # packet header
        "dsize", "itype", "icode", "icmp_id", "icmp_seq", "flags", "tcp.flags", "fragbits",
        "fragoffset",
        "ttl", "tos", "ip_proto", "ipopts", "id", "seq", "ack", "window", "sameip", "tcp.mss",
        "icmpv6.mtu", "rpc", "replace",
        # app-layer keywords with values
        "urilen", "ftpbounce", "ftpdata_command", "tls.version", "ssl_version", "ssl_state",
        "tls_cert_notbefore", "tls_cert_notafter", "tls_cert_expired", "tls_cert_valid",
        "tls.store", "tls_store", "tls.subject", "tls.issuerdn", "tls.fingerprint",
        "ssh.protoversion", "ssh.softwareversion", "dns.opcode",
        "dns.rrtype",
        "dcerpc.iface", "dcerpc.opnum",
        "dce_iface", "dce_opnum", "krb5_msg_type", "krb5_err_code", "nfs_procedure",
        "nfs.version", "snmp.version", "snmp.pdu_type", "krb5.ticket_encryption",
        "mqtt.type", "modbus", "dnp3_func", "dnp3_ind",
        "dnp3_obj", "enip_command", "cip_service", "http2.frametype", "http2.errorcode",
        "http2.priority", "http2.window", "http2.size_update", "http2.settings",
        "filestore", "filemd5", "filesha1", "filesha256", "filesize",
    }
)

FLOWBIT_COMMANDS = frozenset({"set", "isset", "isnotset", "unset", "toggle", "noalert"})

_META_KEYWORDS = frozenset(
    {"msg", "sid", "rev", "gid", "classtype", "priority", "reference", "metadata"}
)

DEFAULT_PRIORITY = 3  # Suricata's priority for a rule with neither priority nor classtype

# One option: text up to an unescaped ';' (possessive so an unterminated tail fails fast).
_OPTION_RE = re.compile(r"((?:[^;\\]++|\\.)*+);", re.DOTALL)
_INT_RE = re.compile(r"-?\d+")
_VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_HEX_PAIR_SPACE = re.compile(r"[0-9A-Fa-f ]*")


class RuleParseError(ValueError):
    """A rule is invalid; ``reason`` says exactly why, ``sid`` is set when it was found."""

    def __init__(self, reason: str, sid: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sid = sid


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True, slots=True)
class Content:
    """A ``content`` match with its modifiers and the buffer it inspects."""

    pattern: bytes
    negated: bool = False
    nocase: bool = False
    depth: int | str | None = None  # a str is a byte_extract/byte_math variable name
    offset: int | str | None = None
    distance: int | str | None = None
    within: int | str | None = None
    fast_pattern: bool = False
    fast_pattern_arg: str | None = None  # "only" or "offset,length" when given
    startswith: bool = False
    endswith: bool = False
    rawbytes: bool = False
    buffer: str = "pkt_data"
    transforms: tuple[tuple[str, str | None], ...] = ()
    replace: bytes | None = None

    @property
    def relative(self) -> bool:
        return self.distance is not None or self.within is not None


@dataclass(frozen=True, slots=True)
class Pcre:
    """A ``pcre`` match: Suricata's flags, the translated Python pattern, and its buffer."""

    source: str
    flags: str
    negated: bool
    relative: bool
    anchored: bool
    rawbytes: bool
    buffer: str
    pattern: bytes
    regex: re.Pattern[bytes]
    captures: str | None = None
    transforms: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True, slots=True)
class BufferOption:
    """Another keyword that inspects the active buffer (isdataat, byte_test, bsize...)."""

    keyword: str
    value: str | None
    buffer: str
    transforms: tuple[tuple[str, str | None], ...] = ()


Match = Content | Pcre | BufferOption


@dataclass(frozen=True, slots=True)
class Flowbit:
    command: str
    names: tuple[str, ...]  # isset a|b lists alternatives; a&b is kept as one expression
    expression: str | None


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed rule; immutable, shared by every packet that is checked against it."""

    action: str
    proto: str
    src: AddressSet
    src_ports: PortSet
    direction: str  # "->" or "<>"
    dst: AddressSet
    dst_ports: PortSet
    options: tuple[tuple[str, str | None], ...]
    matches: tuple[Match, ...]
    sid: int
    gid: int = 1
    rev: int = 0
    msg: str = ""
    classtype: str | None = None
    category: str | None = None
    priority: int = DEFAULT_PRIORITY
    metadata: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    references: tuple[tuple[str, str], ...] = ()
    flowbits: tuple[Flowbit, ...] = ()
    buffers: frozenset[str] = frozenset()
    raw: str = ""
    file: str | None = None
    line: int | None = None

    def __hash__(self) -> int:
        # metadata is a dict, so the generated field-wise hash would fail; a rule is
        # identified by gid:sid:rev and its text.
        return hash((self.gid, self.sid, self.rev, self.raw))

    @property
    def bidirectional(self) -> bool:
        return self.direction == "<>"

    @property
    def contents(self) -> tuple[Content, ...]:
        return tuple(m for m in self.matches if isinstance(m, Content))

    @property
    def pcres(self) -> tuple[Pcre, ...]:
        return tuple(m for m in self.matches if isinstance(m, Pcre))

    def option(self, keyword: str) -> str | None:
        """The value of the first option with this keyword (None if absent or valueless)."""
        for name, value in self.options:
            if name == keyword:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Classification:
    """One ``config classification: name,description,priority`` line."""

    name: str
    description: str
    priority: int


# --------------------------------------------------------------------------- value helpers


def unquote(value: str) -> str:
    """Strip the surrounding double quotes of a value and resolve backslash escapes.

    Matches Suricata's msg handling: any escaped character stands for itself.
    """
    text = value.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_content(value: str) -> bytes:
    """Decode a content value (``"a|42 43|d"``, optionally ``!``-negated) to bytes.

    Raises ValueError with the reason. The negation is not part of the bytes: use
    ``split_negation`` or ``Content.negated``.
    """
    return _decode_content(split_negation(value)[1])


def split_negation(value: str) -> tuple[bool, str]:
    """Split a leading ``!`` (with optional blanks) from a value."""
    text = value.strip()
    if text.startswith("!"):
        return True, text[1:].lstrip()
    return False, text


def _decode_content(text: str) -> bytes:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise ValueError("content value must be double quoted")
    body = text[1:-1]
    if not body:
        raise ValueError("content is empty")
    if "|" not in body and "\\" not in body:
        return body.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    n = len(body)
    while i < n:
        ch = body[i]
        if ch == "|":
            end = body.find("|", i + 1)
            if end < 0:
                raise ValueError("unterminated hex block '|' in content")
            hex_text = body[i + 1 : end]
            if _HEX_PAIR_SPACE.fullmatch(hex_text) is None:
                bad = next(c for c in hex_text if c not in "0123456789abcdefABCDEF ")
                raise ValueError(f"invalid hex character {bad!r} in content")
            digits = hex_text.replace(" ", "")
            if len(digits) % 2:
                raise ValueError(f"odd number of hex digits in content |{hex_text}|")
            out += bytes.fromhex(digits)
            i = end + 1
        elif ch == "\\":
            if i + 1 >= n:
                raise ValueError("content ends with a lone backslash")
            nxt = body[i + 1]
            if nxt not in '";:\\':
                raise ValueError(f"invalid escape '\\{nxt}' in content")
            out += nxt.encode()
            i += 2
        else:
            j = i
            while j < n and body[j] not in "|\\":
                j += 1
            out += body[i:j].encode("utf-8", "surrogateescape")
            i = j
    return bytes(out)


def _int_or_var(keyword: str, value: str | None) -> int | str:
    if value is None or not value.strip():
        raise RuleParseError(f"'{keyword}' needs a value")
    text = value.strip()
    if _INT_RE.fullmatch(text):
        return int(text)
    if _VAR_NAME_RE.fullmatch(text):
        return text  # byte_extract / byte_math variable
    raise RuleParseError(f"invalid value {text!r} for '{keyword}'")


def parse_metadata(value: str) -> dict[str, list[str]]:
    """``key value, key value`` -> {key: [values]} (Suricata splits on commas, then a space)."""
    out: dict[str, list[str]] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, val = item.partition(" ")
        out.setdefault(key, []).append(val.strip())
    return out


# --------------------------------------------------------------------------- header


def _split_header(header: str) -> list[str]:
    """Split on whitespace outside brackets (Suricata allows ``[1.2.3.4, 5.6.7.8]``)."""
    tokens: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in header:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch.isspace() and depth <= 0:
            if current:
                tokens.append("".join(current))
                current = []
            continue
        current.append(ch)
    if current:
        tokens.append("".join(current))
    return tokens


# --------------------------------------------------------------------------- the parser


@dataclass
class _ContentBuilder:
    pattern: bytes
    negated: bool
    buffer: str
    transforms: tuple[tuple[str, str | None], ...]
    fields: dict[str, object] = field(default_factory=dict)

    def build(self) -> Content:
        return Content(
            pattern=self.pattern,
            negated=self.negated,
            buffer=self.buffer,
            transforms=self.transforms,
            **self.fields,  # type: ignore[arg-type]
        )


class _RuleBuilder:
    """Mutable parse state for one rule: the active buffer and the matches seen so far."""

    __slots__ = ("buffer_transforms", "matches", "sticky")

    def __init__(self) -> None:
        self.sticky: str | None = None  # active sticky buffer, None when unset
        self.buffer_transforms: list[tuple[str, str | None]] = []
        self.matches: list[_ContentBuilder | Pcre | BufferOption] = []

    @property
    def buffer(self) -> str:
        return self.sticky or "pkt_data"

    def content_for_modifier(self, keyword: str) -> _ContentBuilder:
        """The content a modifier applies to (DetectGetLastSMFromLists semantics)."""
        for item in reversed(self.matches):
            if isinstance(item, _ContentBuilder) and (
                self.sticky is None or item.buffer == self.sticky
            ):
                return item
        raise RuleParseError(f"'{keyword}' needs a preceding content")


def parse_rule(
    text: str,
    variables: Variables | None = None,
    classifications: Mapping[str, Classification] | None = None,
    *,
    file: str | None = None,
    line: int | None = None,
) -> Rule:
    """Parse one rule; raise RuleParseError with a precise reason (and the sid if found)."""
    variables = variables if variables is not None else _default_variables()
    raw = text.strip()
    sid_hint = _find_sid(raw)
    try:
        return _parse(raw, variables, classifications, file, line)
    except RuleParseError as exc:
        if exc.sid is None:
            exc.sid = sid_hint
        raise


_SID_RE = re.compile(r"[(;]\s*sid\s*:\s*(\d+)\s*;", re.IGNORECASE)


def _find_sid(raw: str) -> int | None:
    m = _SID_RE.search(raw)
    return int(m.group(1)) if m else None


_DEFAULTS: list[Variables] = []


def _default_variables() -> Variables:
    if not _DEFAULTS:
        _DEFAULTS.append(Variables())
    return _DEFAULTS[0]


def _parse(
    raw: str,
    variables: Variables,
    classifications: Mapping[str, Classification] | None,
    file: str | None,
    line: int | None,
) -> Rule:
    open_at = raw.find("(")
    if open_at < 0:
        raise RuleParseError("no option list '(...)' in rule")
    close_at = raw.rfind(")")
    if close_at < open_at:
        raise RuleParseError("option list is not closed with ')'")
    if raw[close_at + 1 :].strip():
        raise RuleParseError("text after the closing ')' of the option list")
    header = _split_header(raw[:open_at])
    if len(header) != 7:
        raise RuleParseError(
            f"rule header needs 7 fields (action proto src sport dir dst dport), got {len(header)}"
        )
    action, proto, src_text, sp_text, direction, dst_text, dp_text = header
    action = action.lower()
    proto = proto.lower()
    if action not in ACTIONS:
        raise RuleParseError(f"unknown action '{action}'")
    if proto not in PROTOCOLS:
        raise RuleParseError(f"unknown protocol '{proto}'")
    if direction not in ("->", "<>"):
        raise RuleParseError(f"invalid direction '{direction}' (expected '->' or '<>')")
    try:
        src = variables.address(src_text)
        dst = variables.address(dst_text)
        src_ports = variables.port(sp_text)
        dst_ports = variables.port(dp_text)
    except VariableError as exc:
        raise RuleParseError(str(exc)) from None

    options = _split_options(raw[open_at + 1 : close_at])
    return _interpret(
        options, action, proto, src, src_ports, direction, dst, dst_ports, raw,
        classifications, file, line,
    )


def _split_options(body: str) -> list[tuple[str, str | None]]:
    options: list[tuple[str, str | None]] = []
    pos = 0
    for m in _OPTION_RE.finditer(body):
        if m.start() != pos:
            break
        pos = m.end()
        item = m.group(1).strip()
        if not item:
            if options:
                continue
            raise RuleParseError("empty option")
        name, sep, value = item.partition(":")
        name = name.strip().lower()
        if not name or any(c.isspace() for c in name):
            raise RuleParseError(f"malformed option {item[:40]!r}")
        options.append((name, value.strip() if sep else None))
    if body[pos:].strip():
        raise RuleParseError(f"option {body[pos:].strip()[:40]!r} is not terminated by ';'")
    if not options:
        raise RuleParseError("rule has no options")
    return options


def _interpret(
    options: list[tuple[str, str | None]],
    action: str,
    proto: str,
    src: AddressSet,
    src_ports: PortSet,
    direction: str,
    dst: AddressSet,
    dst_ports: PortSet,
    raw: str,
    classifications: Mapping[str, Classification] | None,
    file: str | None,
    line: int | None,
) -> Rule:
    state = _RuleBuilder()
    sid: int | None = None
    gid = 1
    rev = 0
    msg = ""
    classtype: str | None = None
    priority: int | None = None
    metadata: dict[str, list[str]] = {}
    references: list[tuple[str, str]] = []
    flowbits: list[Flowbit] = []

    for keyword, value in options:
        if keyword == "content" or keyword == "uricontent":
            negated, pattern = _content_value(keyword, value)
            # uricontent is Suricata's deprecated spelling of content + http_uri.
            buf = "http.uri" if keyword == "uricontent" else state.buffer
            if keyword == "uricontent" and state.sticky is not None:
                raise RuleParseError("'uricontent' seen with a sticky buffer still set")
            builder = _ContentBuilder(
                pattern, negated, buf, tuple(state.buffer_transforms) if state.sticky else ()
            )
            state.matches.append(builder)
        elif keyword in FILE_CONTENT_KEYWORDS:
            state.matches.append(_file_content(keyword, value))
        elif keyword in CONTENT_FLAG_MODIFIERS:
            if value is not None:
                raise RuleParseError(f"'{keyword}' takes no value")
            target = state.content_for_modifier(keyword)
            if keyword == "rawbytes" and target.buffer != "pkt_data":
                raise RuleParseError("'rawbytes' cannot be used with an app-layer buffer")
            target.fields[keyword] = True
        elif keyword in CONTENT_VALUE_MODIFIERS:
            target = state.content_for_modifier(keyword)
            number = _int_or_var(keyword, value)
            if keyword in target.fields:
                raise RuleParseError(f"'{keyword}' given twice for one content")
            target.fields[keyword] = number
        elif keyword == "fast_pattern":
            target = state.content_for_modifier(keyword)
            target.fields["fast_pattern"] = True
            if value is not None:
                target.fields["fast_pattern_arg"] = value
        elif keyword == "replace":
            target = state.content_for_modifier(keyword)
            try:
                target.fields["replace"] = _decode_content(value or "")
            except ValueError as exc:
                raise RuleParseError(f"replace: {exc}") from None
        elif keyword == "pcre":
            if value is None:
                raise RuleParseError("'pcre' needs a value")
            try:
                spec = parse_pcre_value(value)
            except PcreError as exc:
                raise RuleParseError(str(exc)) from None
            state.matches.append(_pcre_match(spec, state))
        elif keyword == "frame":
            # Suricata's frames: a name without its protocol takes the rule's.
            name = (value or "").strip()
            full = name if name in FRAME_BUFFERS else f"{proto}.{name}"
            if full not in FRAME_BUFFERS:
                raise RuleParseError(f"frame '{name}' (protocol {proto}) is not supported: "
                                     f"only SIP's frames are")
            state.sticky = f"frame:{full}"
            state.buffer_transforms = []
        elif keyword in STICKY_BUFFERS:
            if value is not None:
                raise RuleParseError(f"sticky buffer '{keyword}' takes no value")
            buf = STICKY_BUFFERS[keyword]
            state.sticky = None if buf == "pkt_data" else buf
            state.buffer_transforms = []
        elif keyword in LEGACY_MODIFIERS:
            if value is not None:
                raise RuleParseError(f"'{keyword}' takes no value")
            if state.sticky is not None:
                raise RuleParseError(
                    f"'{keyword}' seen with sticky buffer '{state.sticky}' still set"
                )
            target = state.content_for_modifier(keyword)
            if target.fields.get("rawbytes"):
                raise RuleParseError(f"'{keyword}' cannot be used with 'rawbytes'")
            if target.buffer != "pkt_data":
                raise RuleParseError(
                    f"'{keyword}' on a content already in buffer '{target.buffer}'"
                )
            target.buffer = LEGACY_MODIFIERS[keyword]
        elif keyword in TRANSFORMS:
            if state.sticky is None:
                raise RuleParseError(f"transform '{keyword}' needs a sticky buffer before it")
            state.buffer_transforms.append((keyword, value))
        elif keyword in BUFFER_KEYWORDS:
            # A relative one with no sticky buffer set inspects the last match's buffer
            # (Suricata attaches it to the previous match's list, so
            # ``uricontent:"a"; isdataat:4,relative;`` checks the URI).
            buf = state.buffer
            tf = tuple(state.buffer_transforms) if state.sticky else ()
            if state.sticky is None and _is_relative(value) and state.matches:
                last = state.matches[-1]
                buf, tf = last.buffer, last.transforms
            state.matches.append(BufferOption(keyword, value, buf, tf))
        elif keyword == "sid":
            sid = _positive_int("sid", value)
        elif keyword == "gid":
            gid = _positive_int("gid", value)
        elif keyword == "rev":
            rev = _non_negative_int("rev", value)
        elif keyword == "priority":
            priority = _positive_int("priority", value)
        elif keyword == "msg":
            if value is None:
                raise RuleParseError("'msg' needs a value")
            msg = unquote(value)
        elif keyword == "classtype":
            if not value:
                raise RuleParseError("'classtype' needs a value")
            classtype = value.strip()
        elif keyword == "reference":
            if not value or "," not in value:
                raise RuleParseError("'reference' needs 'type,value'")
            ref_type, _, ref_value = value.partition(",")
            references.append((ref_type.strip(), ref_value.strip()))
        elif keyword == "metadata":
            if value is None:
                raise RuleParseError("'metadata' needs a value")
            for key, vals in parse_metadata(value).items():
                metadata.setdefault(key, []).extend(vals)
        elif keyword == "flowbits":
            flowbits.append(_parse_flowbits(value))
        elif keyword in GENERIC_KEYWORDS:
            pass
        else:
            raise RuleParseError(f"unsupported keyword '{keyword}'")

    if sid is None:
        raise RuleParseError("rule has no sid")
    category: str | None = None
    if classtype is not None and classifications is not None:
        found = classifications.get(classtype)
        if found is None:
            raise RuleParseError(f"unknown classtype '{classtype}'", sid)
        category = found.description
        if priority is None:
            priority = found.priority

    matches: list[Match] = [
        m.build() if isinstance(m, _ContentBuilder) else m for m in state.matches
    ]
    return Rule(
        action=action,
        proto=proto,
        src=src,
        src_ports=src_ports,
        direction=direction,
        dst=dst,
        dst_ports=dst_ports,
        options=tuple(options),
        matches=tuple(matches),
        sid=sid,
        gid=gid,
        rev=rev,
        msg=msg,
        classtype=classtype,
        category=category,
        priority=priority if priority is not None else DEFAULT_PRIORITY,
        metadata={k: tuple(v) for k, v in metadata.items()},
        references=tuple(references),
        flowbits=tuple(flowbits),
        buffers=frozenset(m.buffer for m in matches),
        raw=raw,
        file=file,
        line=line,
    )


def _content_value(keyword: str, value: str | None) -> tuple[bool, bytes]:
    """A content-like keyword's value: (negated, the bytes), or a RuleParseError."""
    if value is None:
        raise RuleParseError(f"'{keyword}' needs a value")
    negated, text = split_negation(value)
    try:
        return negated, _decode_content(text)
    except ValueError as exc:
        raise RuleParseError(f"{keyword}: {exc}") from None


def _file_content(keyword: str, value: str | None) -> _ContentBuilder:
    """filename / fileext / filemagic as the content they stand for (Suricata 7's file
    keywords docs): ``filename:"x"`` is ``file.name; content:"x"; nocase;``,
    ``fileext:"pdf"`` is ``file.name; content:".pdf"; nocase; endswith;`` and
    ``filemagic:"x"`` is ``file.magic; content:"x"; nocase;``. ``!`` negates."""
    negated, pattern = _content_value(keyword, value)
    buf = "file.magic" if keyword == "filemagic" else "file.name"
    b = _ContentBuilder(pattern, negated, buf, ())
    b.fields["nocase"] = True
    if keyword == "fileext":
        b.pattern = b"." + pattern
        b.fields["endswith"] = True
    return b


def _is_relative(value: str | None) -> bool:
    return any(p.strip().lower() == "relative" for p in (value or "").split(","))


def _pcre_match(spec: PcreSpec, state: _RuleBuilder) -> Pcre:
    buffer = state.buffer
    if spec.buffer_flag_buffer is not None:
        if state.sticky is not None and state.sticky != spec.buffer_flag_buffer:
            # Suricata: "pcre found with http_* flag(s) and sticky buffer set".
            raise RuleParseError(
                f"pcre modifier selects '{spec.buffer_flag_buffer}' while sticky buffer "
                f"'{state.sticky}' is set"
            )
        buffer = spec.buffer_flag_buffer
    return Pcre(
        source=spec.source,
        flags=spec.flags,
        negated=spec.negated,
        relative=spec.relative,
        anchored=spec.anchored,
        rawbytes=spec.rawbytes,
        buffer=buffer,
        pattern=spec.pattern,
        regex=spec.regex,
        captures=spec.captures,
        transforms=tuple(state.buffer_transforms) if state.sticky else (),
    )


def _parse_flowbits(value: str | None) -> Flowbit:
    if not value:
        raise RuleParseError("'flowbits' needs a value")
    command, _, names = value.partition(",")
    command = command.strip().lower()
    names = names.strip()
    if command not in FLOWBIT_COMMANDS:
        raise RuleParseError(f"unknown flowbits command '{command}'")
    if command == "noalert":
        if names:
            raise RuleParseError("'flowbits:noalert' takes no name")
        return Flowbit(command, (), None)
    if not names:
        raise RuleParseError(f"'flowbits:{command}' needs a name")
    parts = tuple(p.strip() for p in re.split(r"[|&]", names))
    if any(not p or any(c.isspace() for c in p) for p in parts):
        raise RuleParseError(f"invalid flowbit name in {names!r}")
    return Flowbit(command, parts, names)


def _positive_int(keyword: str, value: str | None) -> int:
    number = _non_negative_int(keyword, value)
    if number == 0:
        raise RuleParseError(f"'{keyword}' must be greater than 0")
    return number


def _non_negative_int(keyword: str, value: str | None) -> int:
    if value is None or not value.strip().isdigit():
        raise RuleParseError(f"'{keyword}' needs a non-negative integer, got {value!r}")
    return int(value.strip())


def parse_classification_line(text: str) -> Classification | None:
    """``config classification: name,description,priority`` -> Classification (None if not one)."""
    stripped = text.strip()
    prefix = "config classification:"
    if not stripped.lower().startswith(prefix):
        return None
    parts = [p.strip() for p in stripped[len(prefix) :].split(",")]
    if len(parts) != 3 or not parts[0] or not parts[2].isdigit():
        raise ValueError(f"malformed classification line {stripped!r}")
    return Classification(parts[0], parts[1], int(parts[2]))
