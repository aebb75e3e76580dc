"""Rules -> compiled detection program (load time; DESIGN.md principle 10).

A CompiledRule holds everything the matcher needs as ready objects: header matchers,
packet checks, one inspection chain per (buffer, transforms), flowbits, thresholds and
its fast pattern. Rules are ordered as Suricata evaluates them: by action (pass, drop,
reject, alert: Suricata's default action-order), then flowbit setters before the rules
that test those bits, then by priority and sid.

A rule that uses a keyword the matcher does not implement fails here with the exact
keyword (lenient import, strict check: DESIGN.md principle 8).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, overload

import regex

from appliance.rules.keywords import (
    APP_VALUE_KEYWORDS,
    NO_EFFECT,
    UNSUPPORTED,
    Base64Decode,
    Bsize,
    ByteExtract,
    ByteJump,
    ByteMath,
    ByteTest,
    Dataset,
    DatasetOp,
    FileSize,
    FlagsCheck,
    FlowInt,
    FlowOpt,
    HashList,
    IsDataAt,
    KeywordError,
    NumCheck,
    StreamSize,
    Threshold,
    Xbit,
    dcerpc_iface_regex,
    dcerpc_opnum_regex,
    parse_app_value,
    parse_base64_decode,
    parse_bsize,
    parse_byte_extract,
    parse_byte_jump,
    parse_byte_math,
    parse_byte_test,
    parse_dataset,
    parse_filesize,
    parse_flags,
    parse_flow,
    parse_flowint,
    parse_hash_list,
    parse_ipopts,
    parse_isdataat,
    parse_num,
    parse_stream_size,
    parse_threshold,
    parse_xbits,
)
from appliance.rules.parser import (
    FRAME_BUFFERS,
    BufferOption,
    Classification,
    Content,
    Flowbit,
    Pcre,
    Rule,
    parse_rule,
)
from appliance.rules.pcre import PcreError, translate_pcre
from appliance.rules.variables import AddressSet, PortSet, Variables

ACTION_ORDER: Final = {"pass": 0, "drop": 1, "reject": 2, "rejectsrc": 2, "rejectdst": 2,
                       "rejectboth": 2, "alert": 3}

# Rule protocol -> IP protocol number (None: any IP protocol).
IP_PROTOS: Final[dict[str, int | None]] = {
    "ip": None, "ipv4": None, "ip4": None, "ipv6": None, "ip6": None, "pkthdr": None,
    "tcp": 6, "tcp-pkt": 6, "tcp-stream": 6, "udp": 17, "icmp": 1, "icmpv4": 1,
    "icmpv6": 58, "sctp": 132,
}
# App-layer protocol names as a rule header may give them -> the app_proto they require.
APP_ALIASES: Final = {"http1": "http", "ssl": "tls", "ikev2": "ike"}
# App protocols over UDP (the rest ride on TCP).
UDP_APPS: Final = frozenset({"dns", "dhcp", "snmp", "sip", "tftp", "ntp", "ike", "quic",
                             "bittorrent-dht", "krb5", "nfs"})

# App protocols parsed over both (app/krb5.py: UDP and TCP port 88).
TCP_UDP_APPS: Final = frozenset({"krb5"})

# Buffers the engine produces and which app protocol produces them.
BUFFER_APP: Final = {
    "http.uri": "http", "http.uri.raw": "http", "http.method": "http",
    "http.request_line": "http", "http.protocol": "http", "http.host": "http",
    "http.host.raw": "http", "http.header": "http", "http.header.raw": "http",
    "http.header_names": "http", "http.user_agent": "http", "http.cookie": "http",
    "http.referer": "http", "http.accept": "http", "http.accept_enc": "http",
    "http.accept_lang": "http", "http.content_type": "http", "http.content_len": "http",
    "http.connection": "http", "http.start": "http", "http.request_body": "http",
    "http.response_line": "http", "http.stat_code": "http", "http.stat_msg": "http",
    "http.server": "http", "http.location": "http", "http.response_body": "http",
    "http.request_header": "http", "http.response_header": "http",
    "file.data": None,  # HTTP bodies (and later SMTP/FTP files)
    # Files of the transaction in the inspected direction (applayer.py): name and magic
    # as soon as the file is seen; size and hashes once it is complete.
    "file.name": None, "file.magic": None,
    "dns.query": "dns",
    # HTTP/2 (app/http2.py): header names and "name: value" per field, per direction.
    "http2.header_name": "http2", "http2.header": "http2",
    # DCERPC calls (app/dcerpc.py), over TCP, UDP or SMB pipes: no app_proto needed, the
    # buffer exists only where a DCERPC call is parsed (Suricata's dcerpc keywords
    # match DCERPC over SMB too).
    "dcerpc.stub_data": None,
    # SMB (app/smb.py): a TREE_CONNECT's path, as a share or as a named pipe once the
    # response says which; the NTLMSSP AUTHENTICATE's user and domain.
    "smb.share": "smb", "smb.named_pipe": "smb", "smb.ntlmssp_user": "smb",
    "smb.ntlmssp_domain": "smb",
    # FTP (applayer.py): the data connection's command (retr/stor...), and a
    # PORT/EPRT transaction naming another host than the client.
    "ftpdata_command": "ftp-data", "ftpbounce": "ftp",
    "tls.sni": "tls", "tls.cert_subject": "tls", "tls.cert_issuer": "tls",
    "tls.cert_serial": "tls", "tls.cert_fingerprint": "tls", "tls.certs": "tls",
    "ja3.hash": "tls", "ja3.string": "tls", "ja3s.hash": "tls", "ja3s.string": "tls",
    "tls.subjectaltname": "tls", "tls.version": "tls", "dns.opcode": "dns",
    "ssh.proto": "ssh", "ssh.software": "ssh", "ssh.hassh": "ssh", "ssh.hassh.string": "ssh",
    "ssh.hassh.server": "ssh", "ssh.hassh.server.string": "ssh",
    # SMTP (app/smtp.py): the session's HELO and the transaction's envelope; the
    # message's headers and URLs (Suricata 8's email.* keywords).
    "smtp.helo": "smtp", "smtp.mail_from": "smtp", "smtp.rcpt_to": "smtp",
    "email.from": "smtp", "email.to": "smtp", "email.cc": "smtp", "email.subject": "smtp",
    "email.date": "smtp", "email.message_id": "smtp", "email.x_mailer": "smtp",
    "email.received": "smtp", "email.url": "smtp", "email.body_md5": "smtp",
    # QUIC (app/quic.py); ja3.*/ja3s.* above are also the QUIC hellos'. quic.ua and
    # quic.cyu.* (Google QUIC) are not produced.
    "quic.sni": "quic", "quic.version": "quic",
    # app/mqtt.py (mqtt.type: the message type names of the transaction, for mqtt.type)
    "mqtt.connect.clientid": "mqtt", "mqtt.connect.username": "mqtt",
    "mqtt.connect.password": "mqtt", "mqtt.connect.willtopic": "mqtt",
    "mqtt.connect.willmessage": "mqtt", "mqtt.publish.topic": "mqtt",
    "mqtt.publish.message": "mqtt", "mqtt.subscribe.topic": "mqtt",
    "mqtt.unsubscribe.topic": "mqtt", "mqtt.type": "mqtt",
    "krb5_cname": "krb5", "krb5_sname": "krb5", "sip.method": "sip", "sip.uri": "sip",
    "sip.request_line": "sip", "sip.protocol": "sip", "sip.stat_code": "sip",
    "sip.stat_msg": "sip", "sip.response_line": "sip", "snmp.usm": "snmp",
    # Suricata's SIP frames (app/sip.py FRAMES), named by the parser's `frame` keyword.
    **{f"frame:{f}": "sip" for f in FRAME_BUFFERS},
    "snmp.community": "snmp",
}
PACKET_BUFFERS: Final = frozenset({"pkt_data", "ipv4.hdr", "ipv6.hdr", "tcp.hdr", "udp.hdr",
                                    "icmpv4.hdr", "icmpv6.hdr", "ip.src", "ip.dst"})
# Packet buffers that hold a protocol header rather than the payload: the prefilter does
# not scan them (their rules are found by protocol/address/port; see matcher.py).
HEADER_BUFFERS: Final = PACKET_BUFFERS - {"pkt_data"}
TRANSFORMS_IMPLEMENTED: Final = frozenset({
    "dotprefix", "to_lowercase", "to_uppercase", "strip_whitespace", "compress_whitespace",
    "to_md5", "to_sha1", "to_sha256", "url_decode", "header_lowercase", "xor", "pcrexform",
})


class CompileError(ValueError):
    pass


# -- inspection items -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CContent:
    pattern: bytes  # lowered when nocase
    nocase: bool
    negated: bool
    depth: int | str | None
    offset: int | str | None
    distance: int | str | None
    within: int | str | None
    startswith: bool
    endswith: bool
    relative: bool


@dataclass(frozen=True, slots=True)
class CPcre:
    regex: Any  # a compiled `regex` pattern (supports a per-call timeout)
    relative: bool
    negated: bool
    source: str


Item = (CContent | CPcre | ByteTest | ByteJump | ByteExtract | ByteMath | IsDataAt | Bsize
        | HashList | FileSize | Base64Decode | DatasetOp)

# Pseudo-buffers of a transaction's complete files (applayer.py): their size (decimal
# text) and hashes (lower-case hex), one element per file.
FILE_HASH_BUFFERS: Final = {"filemd5": "file.md5", "filesha1": "file.sha1",
                            "filesha256": "file.sha256"}

BufferKey = tuple[str, tuple[tuple[str, str | None], ...]]  # (buffer, transforms)


@dataclass(frozen=True, slots=True)
class Chain:
    key: BufferKey
    items: tuple[Item, ...]


@dataclass(slots=True)
class CompiledRule:
    order: int
    rule: Rule
    action: str
    ipproto: int | None
    app_proto: str | None
    src: AddressSet
    src_ports: PortSet
    dst: AddressSet
    dst_ports: PortSet
    bidir: bool
    flow: FlowOpt | None
    chains: tuple[Chain, ...]
    app: bool  # inspects app-layer buffers (alerts once per transaction)
    fast: tuple[BufferKey, bytes, bool] | None  # (buffer, pattern, nocase)
    dsize: NumCheck | None = None
    itype: NumCheck | None = None
    icode: NumCheck | None = None
    icmp_id: int | None = None
    icmp_seq: int | None = None
    ttl: NumCheck | None = None
    ip_proto: NumCheck | None = None
    flags: FlagsCheck | None = None
    seq: int | None = None
    ack: int | None = None
    window: NumCheck | None = None
    tcp_mss: NumCheck | None = None  # the SYN's MSS option (no option: no match)
    ipopts: int | None = None  # an IPv4 option type the header must carry (-1: any)
    ip_id: int | None = None
    tos: NumCheck | None = None
    fragbits: tuple[str, int] | None = None
    sameip: bool = False
    urilen: tuple[NumCheck, bool] | None = None  # (check, raw)
    stream_size: StreamSize | None = None
    app_layer_protocol: tuple[str, bool] | None = None  # (proto, negated)
    # Suricata's protocol-detection-only rule (set once compiled, see is_pd_only).
    pd_only: bool = False
    # tls.version / ssl_version: the accepted EVE names of the negotiated version, and
    # whether the list is negated.
    tls_versions: tuple[frozenset[bytes], bool] | None = None
    dns_opcode: NumCheck | None = None  # dns.opcode (Suricata 7)
    dns_rrtype: NumCheck | None = None  # dns.rrtype: any question's type
    flowbit_checks: tuple[Flowbit, ...] = ()
    flowbit_sets: tuple[Flowbit, ...] = ()
    flowints: tuple[FlowInt, ...] = ()
    # xbits / hostbits: checks (isset, isnotset) and changes (set, unset, toggle).
    xbit_checks: tuple[Xbit, ...] = ()
    xbit_sets: tuple[Xbit, ...] = ()
    noalert: bool = False
    threshold: Threshold | None = None
    detection_filter: Threshold | None = None
    # decode-event / stream-event / app-layer-event: anomaly events the packet must carry
    # (all of them), named as signatures.packet_events names them.
    events: tuple[str, ...] = ()
    severity: int = 3
    category: str = ""
    metadata: dict[str, list[str]] = field(default_factory=dict)


    @property
    def first_key(self) -> BufferKey | None:
        if self.app:
            # An app-layer rule is found through its app-layer buffers (its payload
            # chains, if any, are checked on the packet that completes the inspection).
            for ch in self.chains:
                if ch.key[0] not in PACKET_BUFFERS:
                    return ch.key
        return self.chains[0].key if self.chains else None

    @property
    def inspects_payload(self) -> bool:
        """A content/pcre chain on the packet's payload (pkt_data)."""
        return any(ch.key[0] == "pkt_data" for ch in self.chains)

    @property
    def ip_only(self) -> bool:
        """Suricata's IP-only rule: it looks at addresses (and the IP protocol) only, no
        ports, payload, flow state or other header field. Its drop acts on the whole
        flow even where a payload rule's drop acts on the packet only."""
        return (self.src_ports.is_any and self.dst_ports.is_any
                and self.app_layer_protocol is None and self._no_packet_keywords())

    def is_pd_only(self) -> bool:
        """Suricata's protocol-detection-only rule: app-layer-protocol and nothing else
        but addresses and ports. It matches once, on the packet whose protocol detection
        decided the flow's protocol, not on every later packet."""
        return self.app_layer_protocol is not None and self._no_packet_keywords()

    def _no_packet_keywords(self) -> bool:
        return (not self.chains and not self.app and self.app_proto is None
                and self.flow is None
                and not self.flowbit_checks and not self.flowints and not self.sameip
                and not self.xbit_checks
                and not self.events
                and all(v is None for v in (
                    self.dsize, self.itype, self.icode, self.icmp_id, self.icmp_seq,
                    self.ttl, self.ip_proto, self.flags, self.seq, self.ack, self.window,
                    self.ip_id, self.tos, self.fragbits, self.urilen, self.stream_size,
                    self.tcp_mss, self.ipopts, self.tls_versions, self.dns_opcode,
                    self.dns_rrtype)))

    def info(self) -> RuleInfo:
        r = self.rule
        return RuleInfo(self.order, self.fast, self.first_key, self.ipproto, self.bidir,
                        self.src, self.dst, self.src_ports, self.dst_ports, r.raw,
                        r.file, r.line, r.sid, r.classtype,
                        tuple((k, tuple(v)) for k, v in r.metadata.items()), self.events,
                        self.stream_capable, self.stream_only)

    @property
    def stream_capable(self) -> bool:
        """Can this rule match reassembled TCP stream data? Payload rules on TCP (or any
        IP protocol) whose buffers are all pkt_data, unless they are packet-only:
        `tcp-pkt`, flow:no_stream, or a packet-level keyword (dsize, flags, seq, ttl...),
        as Suricata (a rule with such a keyword inspects packets only)."""
        if self.app or not self.chains or self.ipproto not in (None, 6):
            return False
        if self.rule.proto == "tcp-pkt" or (self.flow is not None and self.flow.no_stream):
            return False
        if any(ch.key[0] != "pkt_data" for ch in self.chains):
            return False
        return all(v is None for v in (
            self.dsize, self.flags, self.seq, self.ack, self.window, self.ttl, self.ip_id,
            self.tos, self.fragbits, self.itype, self.icode, self.icmp_id, self.icmp_seq,
            self.tcp_mss, self.ipopts)) and not self.sameip

    @property
    def stream_only(self) -> bool:
        """`tcp-stream` / flow:only_stream: the reassembled stream only, not packets."""
        return not self.app and (self.rule.proto == "tcp-stream" or (
            self.flow is not None and self.flow.only_stream))


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """What the prefilter needs of a compiled rule, as plain picklable data: the warm
    start keeps these and compiles the rule itself only when it first becomes a
    candidate."""

    order: int
    fast: tuple[BufferKey, bytes, bool] | None
    first_key: BufferKey | None
    ipproto: int | None
    bidir: bool
    src: AddressSet
    dst: AddressSet
    src_ports: PortSet
    dst_ports: PortSet
    raw: str
    file: str | None
    line: int | None
    # For role rule selection (policy RuleSelector).
    sid: int = 0
    classtype: str | None = None
    metadata: tuple[tuple[str, tuple[str, ...]], ...] = ()
    events: tuple[str, ...] = ()  # the prefilter finds event rules by their first event
    # Which views of TCP payload the rule sees (CompiledRule.stream_capable/stream_only).
    stream_ok: bool = False
    stream_only: bool = False


@dataclass(frozen=True, slots=True)
class CompileFailure:
    rule: Rule
    reason: str


# -- compiling one rule -------------------------------------------------------------------------


def _regex_of(p: Pcre) -> Any:
    flags = p.regex.flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE)
    try:
        return regex.compile(p.pattern, flags)
    except regex.error as e:
        raise CompileError(f"pcre {p.source!r} does not compile: {e}") from None


def _content(c: Content) -> CContent:
    pat = c.pattern.lower() if c.nocase else c.pattern
    return CContent(pat, c.nocase, c.negated, c.depth, c.offset, c.distance, c.within,
                    c.startswith, c.endswith, c.relative)


def _rule_dir(rule: Rule) -> str | None:
    """Where files a rule names (hash lists, datasets) are read from: its rule file's
    directory. They are read at load time (the warm start compiles such rules eagerly:
    loader._load_cached)."""
    return str(Path(rule.file).parent) if rule.file and rule.file != "<text>" else None


# Buffer keywords whose value alone makes their item.
_BUFFER_ITEM_PARSERS: Final[dict[str, Callable[[str | None], Item]]] = {
    "byte_test": parse_byte_test,
    "byte_jump": parse_byte_jump,
    "byte_extract": parse_byte_extract,
    "byte_math": parse_byte_math,
    "isdataat": parse_isdataat,
    "bsize": parse_bsize,
    "base64_decode": parse_base64_decode,
}


def _buffer_item(b: BufferOption, rule: Rule, datasets: dict[str, Dataset]) -> Item:
    k = b.keyword
    if k in ("dataset", "datarep"):
        return parse_dataset(k, b.value, _rule_dir(rule), datasets)
    parse = _BUFFER_ITEM_PARSERS.get(k)
    if parse is None:
        raise CompileError(f"unsupported keyword '{k}'")
    return parse(b.value)


def _fast_pattern(rule: Rule) -> tuple[BufferKey, bytes, bool] | None:
    """Suricata's choice: the content marked fast_pattern, else the longest positive
    content (ties: the first). `fast_pattern:only` and `fast_pattern:o,l` chops apply."""
    best: Content | None = None
    # A rule with app-layer buffers is prefiltered on one of them: it is inspected per
    # transaction, where a payload content is checked but not scanned.
    app = any(c.buffer not in PACKET_BUFFERS and c.buffer != "base64_data"
              for c in rule.contents if not c.negated)
    for c in rule.contents:
        if c.negated or c.buffer == "base64_data":  # decoded data: nothing to prefilter
            continue
        if app and c.buffer in PACKET_BUFFERS:
            continue
        if c.fast_pattern:
            best = c
            break
        if best is None or len(c.pattern) > len(best.pattern):
            best = c
    if best is None:
        return None
    pat = best.pattern
    arg = best.fast_pattern_arg
    if arg and arg != "only":
        try:
            off, ln = (int(x) for x in arg.split(","))
            pat = pat[off:off + ln] or pat
        except ValueError:
            pass
    return ((best.buffer, best.transforms), pat, best.nocase)


def _flowbits(rule: Rule) -> tuple[tuple[Flowbit, ...], tuple[Flowbit, ...], bool]:
    checks = tuple(f for f in rule.flowbits if f.command in ("isset", "isnotset"))
    sets = tuple(f for f in rule.flowbits if f.command in ("set", "unset", "toggle"))
    noalert = any(f.command == "noalert" for f in rule.flowbits)
    return checks, sets, noalert


def compile_rule(rule: Rule, order: int, classifications: Mapping[str, Classification],
                 datasets: dict[str, Dataset] | None = None) -> CompiledRule:
    """``datasets``: the ruleset's named datasets, shared by the rules that name them
    (a fresh registry when not given)."""
    if datasets is None:
        datasets = {}
    proto = APP_ALIASES.get(rule.proto, rule.proto)
    if proto in IP_PROTOS:
        ipproto = IP_PROTOS[proto]
        app_proto = None
    else:
        # "http" is HTTP/1 or HTTP/2 in Suricata 7, "http1" HTTP/1 only (signatures.py)
        app_proto = "http1" if rule.proto == "http1" else proto
        ipproto = None if proto in TCP_UDP_APPS else 17 if proto in UDP_APPS else 6
    if proto == "dcerpc":
        ipproto = None  # connection-oriented over TCP, connectionless over UDP
    chains: dict[BufferKey, list[Item]] = {}
    app = False
    seen_b64 = False
    for m in rule.matches:
        buf = m.buffer
        if isinstance(m, BufferOption) and m.keyword == "base64_decode":
            seen_b64 = True
        transforms = m.transforms
        for t, targ in transforms:
            if t not in TRANSFORMS_IMPLEMENTED:
                raise CompileError(f"unsupported transform '{t}'")
            if t == "pcrexform":
                _check_pcrexform(targ)
        if buf == "base64_data":
            # What the last base64_decode of the rule decoded (signatures.py hands it to
            # this chain); it needs one before it, as Suricata's.
            if not seen_b64:
                raise CompileError("'base64_data' needs a 'base64_decode' before it")
        elif buf not in PACKET_BUFFERS:
            if buf not in BUFFER_APP:
                raise CompileError(f"unsupported buffer '{buf}'")
            app = True
            need = BUFFER_APP[buf]
            if need is not None and app_proto is None:
                app_proto = need
        item: Item
        if isinstance(m, Content):
            item = _content(m)
        elif isinstance(m, Pcre):
            item = CPcre(_regex_of(m), m.relative, m.negated, m.source)
        else:
            item = _buffer_item(m, rule, datasets)
        chains.setdefault((buf, transforms), []).append(item)
    cls = classifications.get(rule.classtype or "")
    cr = CompiledRule(
        order=order, rule=rule, action=rule.action, ipproto=ipproto, app_proto=app_proto,
        src=rule.src, src_ports=rule.src_ports, dst=rule.dst, dst_ports=rule.dst_ports,
        bidir=rule.bidirectional, flow=None,
        chains=tuple(Chain(k, tuple(v)) for k, v in chains.items()),
        app=app, fast=_fast_pattern(rule),
        severity=rule.priority,
        category=(cls.description if cls else (rule.category or "")),
        metadata={k: list(v) for k, v in rule.metadata.items()},
    )
    cr.flowbit_checks, cr.flowbit_sets, cr.noalert = _flowbits(rule)
    flowints: list[FlowInt] = []
    xbits: list[Xbit] = []
    events: list[str] = []
    legacy: list[Chain] = []
    for kw, value in rule.options:
        if kw in UNSUPPORTED:
            raise CompileError(f"unsupported keyword '{kw}'")
        if kw == "flow":
            cr.flow = parse_flow(value)
        elif kw == "dsize":
            cr.dsize = parse_num(kw, value)
        elif kw == "itype":
            cr.itype = parse_num(kw, value)
        elif kw == "icode":
            cr.icode = parse_num(kw, value)
        elif kw == "icmp_id":
            cr.icmp_id = parse_num(kw, value).a
        elif kw == "icmp_seq":
            cr.icmp_seq = parse_num(kw, value).a
        elif kw == "ttl":
            cr.ttl = parse_num(kw, value)
        elif kw == "ip_proto":
            cr.ip_proto = _ip_proto(value)
        elif kw in ("flags", "tcp.flags"):
            cr.flags = parse_flags(value)
        elif kw == "seq":
            cr.seq = parse_num(kw, value).a
        elif kw == "ack":
            cr.ack = parse_num(kw, value).a
        elif kw == "window":
            cr.window = parse_num(kw, value)
        elif kw == "id":
            cr.ip_id = parse_num(kw, value).a
        elif kw == "tcp.mss":
            cr.tcp_mss = parse_num(kw, value)
        elif kw == "ipopts":
            cr.ipopts = parse_ipopts(value)
        elif kw == "tos":
            cr.tos = parse_num(kw, value)
        elif kw == "fragbits":
            cr.fragbits = _fragbits(value)
        elif kw == "sameip":
            cr.sameip = True
        elif kw == "urilen":
            parts = (value or "").split(",")
            cr.urilen = (parse_num(kw, parts[0]), len(parts) > 1 and parts[1].strip() == "raw")
        elif kw == "stream_size":
            cr.stream_size = parse_stream_size(value)
        elif kw == "app-layer-protocol":
            v = (value or "").strip()
            neg = v.startswith("!")
            name = v.lstrip("!").strip()
            if not name or "," in name or "|" in name:
                # Modes (",final") and lists ("tls|http") are Suricata 8's; taken as a
                # protocol name, a negated one would match every flow.
                raise CompileError(f"app-layer-protocol {v!r}: one protocol name, "
                                   "optionally negated (Suricata 7 syntax)")
            # "http1" stays itself: HTTP/1 only, where "http" is any HTTP (flows.py).
            cr.app_layer_protocol = (
                name if name == "http1" else APP_ALIASES.get(name, name), neg)
        elif kw == "dns.opcode":
            cr.dns_opcode = parse_num(kw, value)
        elif kw == "dns.rrtype":
            cr.dns_rrtype = parse_num(kw, _rrtype_number(value))
        elif kw in ("tls.version", "ssl_version"):
            cr.tls_versions = _tls_versions(kw, value)
        elif kw == "threshold":
            cr.threshold = parse_threshold(kw, value)
        elif kw == "detection_filter":
            cr.detection_filter = parse_threshold(kw, value)
        elif kw == "flowint":
            flowints.append(parse_flowint(value))
        elif kw in ("xbits", "hostbits"):
            xb = parse_xbits(kw, value)
            if xb is None:
                cr.noalert = True
            else:
                xbits.append(xb)
        elif kw == "noalert":
            cr.noalert = True
        elif kw in _TLS_LEGACY:
            legacy.append(_tls_legacy(kw, value))
        elif kw == "ftpdata_command":
            v = (value or "").strip().lower()
            if v not in ("retr", "stor"):
                raise CompileError(f"'ftpdata_command' takes retr or stor, not {value!r}")
            legacy.append(Chain(("ftpdata_command", ()), (CContent(
                v.encode(), True, False, None, None, None, None, True, True, False),)))
        elif kw in _DCERPC_KEYWORDS:
            legacy.append(_dcerpc_chain(kw, value))
        elif kw == "ftpbounce":
            legacy.append(Chain(("ftpbounce", ()), ()))
        elif kw.startswith("http2.") and kw in _HTTP2_KEYWORDS:
            legacy.append(_http2_chain(kw, value))
            cr.app_proto = cr.app_proto or "http2"
        elif kw in ("ssh.protoversion", "ssh.softwareversion"):
            legacy.append(_ssh_legacy(kw, value))
        elif kw in APP_VALUE_KEYWORDS:  # mqtt.type, krb5_*, snmp.version/pdu_type
            vbuf, vproto, vitem = parse_app_value(kw, value)
            legacy.append(Chain((vbuf, ()), (vitem,)))
            cr.app_proto = cr.app_proto or vproto
        elif kw in ("decode-event", "stream-event", "app-layer-event", "engine-event"):
            ev_name, ev_proto = _event_name(kw, value)
            events.append(ev_name)
            if ev_proto is not None and cr.app_proto is None:
                cr.app_proto = ev_proto
        elif kw in FILE_HASH_BUFFERS:
            legacy.append(Chain((FILE_HASH_BUFFERS[kw], ()),
                                (parse_hash_list(kw, value, _rule_dir(rule)),)))
            cr.app = True
        elif kw == "filesize":
            legacy.append(Chain(("file.size", ()), (FileSize(parse_filesize(value)),)))
            cr.app = True
        elif kw == "filestore":
            # Needs a file, as Suricata's filestore; an empty chain on file.name makes
            # the rule a candidate when a transaction has one. Not stored (NO_EFFECT).
            if not any(ch.key[0] == "file.name" for ch in (*cr.chains, *legacy)):
                legacy.append(Chain(("file.name", ()), ()))
            cr.app = True
        elif kw in NO_EFFECT:
            pass
    cr.flowints = tuple(flowints)
    cr.xbit_checks = tuple(x for x in xbits if x.check)
    cr.xbit_sets = tuple(x for x in xbits if not x.check)
    cr.events = tuple(events)
    if legacy:
        cr.chains = (*cr.chains, *legacy)
        cr.app = True
        if cr.fast is not None and cr.fast[0][0] in PACKET_BUFFERS:
            # Now an app-layer rule (dcerpc.opnum with a payload content, as the
            # zerologon rules): it is found through its app-layer buffers, its payload
            # content checked on the packet that completes the transaction.
            cr.fast = None
        if cr.app_proto is None and any(ch.key[0].startswith("tls.") for ch in legacy):
            cr.app_proto = "tls"
        if cr.app_proto is None and any(ch.key[0].startswith("ssh.") for ch in legacy):
            cr.app_proto = "ssh"
    if cr.dns_opcode is not None or cr.dns_rrtype is not None:
        # Checked on the DNS transaction (see signatures.py): an app-layer rule.
        cr.chains = (*cr.chains, Chain(("dns.opcode", ()), ()))
        cr.app = True
        if cr.app_proto is None:
            cr.app_proto = "dns"
    if cr.urilen is not None:
        # urilen is checked on the HTTP request's URI (normalized, or raw with ",raw"): a
        # rule with urilen is an app-layer rule even without a URI content; an empty
        # chain on that buffer makes it a candidate whenever a request is inspected.
        buf = "http.uri.raw" if cr.urilen[1] else "http.uri"
        if not any(ch.key[0] == buf for ch in cr.chains):
            cr.chains = (*cr.chains, Chain((buf, ()), ()))
        cr.app = True
        if cr.app_proto is None:
            cr.app_proto = "http"
    if cr.tls_versions is not None:
        # The version is checked on the TLS buffers: an empty chain on a "tls.version"
        # pseudo-buffer makes the rule an app-layer rule that needs the ServerHello.
        cr.chains = (*cr.chains, Chain(("tls.version", ()), ()))
        cr.app = True
        if cr.app_proto is None:
            cr.app_proto = "tls"
    cr.pd_only = cr.is_pd_only()  # decided here, read per candidate packet
    return cr


# Suricata's legacy TLS keywords with a value: (buffer, exact). tls.subject/tls.issuerdn
# match when the value occurs in the certificate's subject/issuer (case-sensitive);
# tls.fingerprint when it equals the SHA-1 fingerprint (hex case ignored). "!" negates.
_TLS_LEGACY: Final = {
    "tls.subject": ("tls.cert_subject", False),
    "tls.issuerdn": ("tls.cert_issuer", False),
    "tls.fingerprint": ("tls.cert_fingerprint", True),
}


_HTTP2_KEYWORDS: Final = frozenset({"http2.frametype", "http2.errorcode", "http2.priority",
                                    "http2.window", "http2.size_update", "http2.settings"})


def _http2_chain(kw: str, value: str | None) -> Chain:
    """Suricata 7's http2.* frame keywords as a chain on the pseudo-buffer app/http2.py
    fills per direction: frame type and error code names (a name or its number; exact
    match), priority weights, window increments and table size updates (decimal text,
    Suricata's integer syntax), and ``http2.settings:NAME[op value]`` on the
    ``http2.settings.NAME`` buffer of that setting's values."""
    from appliance.core.app.http2 import ERROR_NAMES, FRAME_NAMES, SETTINGS_NAMES

    v = (value or "").strip()
    if kw in ("http2.frametype", "http2.errorcode"):
        names = FRAME_NAMES if kw == "http2.frametype" else ERROR_NAMES
        name = v.upper()
        if v.isdigit() and int(v) < len(names):
            name = names[int(v)]
        if name not in names:
            raise CompileError(f"'{kw}': unknown name {value!r}")
        return Chain((kw, ()), (CContent(name.encode(), False, False, None, None, None, None,
                                         True, True, False),))
    if kw == "http2.settings":
        m = re.match(r"^([A-Za-z0-9_]+)\s*(.*)$", v)
        known = set(SETTINGS_NAMES.values())
        if m is None or m.group(1).upper() not in known:
            raise CompileError(f"'http2.settings': unknown setting {value!r}")
        buf = "http2.settings." + m.group(1).upper()
        rest = m.group(2).strip()
        items: tuple[Item, ...] = (FileSize(parse_num(kw, rest)),) if rest else ()
        return Chain((buf, ()), items)
    return Chain((kw, ()), (FileSize(parse_num(kw, v)),))


def _check_pcrexform(arg: str | None) -> None:
    """pcrexform needs a regex that compiles (the same translation as pcre's)."""
    src = (arg or "").strip()
    if len(src) >= 2 and src[0] == src[-1] == '"':
        src = src[1:-1]
    if not src:
        raise CompileError("'pcrexform' needs a regular expression")
    try:
        regex.compile(translate_pcre(src).encode("utf-8", "surrogateescape"))
    except (regex.error, PcreError, ValueError) as e:
        raise CompileError(f"pcrexform {src!r} does not compile: {e}") from None


def _tls_legacy(kw: str, value: str | None) -> Chain:
    v = (value or "").strip()
    negated = v.startswith("!")
    v = v.lstrip("!").strip()
    if len(v) >= 2 and v[0] == v[-1] == '"':
        v = v[1:-1]
    if not v:
        raise CompileError(f"'{kw}' needs a value")
    buf, exact = _TLS_LEGACY[kw]
    pat = v.encode("utf-8", "surrogateescape")
    if exact:
        pat = pat.lower()
    item = CContent(pat, exact, negated, None, None, None, None, exact, exact, False)
    return Chain((buf, ()), (item,))


# dcerpc.iface / dcerpc.opnum and their legacy names -> the call's pseudo-buffer they
# test (app/dcerpc.py DceRpcConnection.buffers; keywords.py builds the regexes).
_DCERPC_KEYWORDS: Final = {"dcerpc.iface": "dcerpc.iface", "dce_iface": "dcerpc.iface",
                           "dcerpc.opnum": "dcerpc.opnum", "dce_opnum": "dcerpc.opnum"}


def _dcerpc_chain(kw: str, value: str | None) -> Chain:
    buf = _DCERPC_KEYWORDS[kw]
    make = dcerpc_iface_regex if buf == "dcerpc.iface" else dcerpc_opnum_regex
    src = make(kw, value)
    return Chain((buf, ()), (CPcre(regex.compile(src.encode()), False, False,
                                   f"{kw}:{value}"),))


def _ssh_legacy(kw: str, value: str | None) -> Chain:
    """Suricata's older SSH value keywords, on the banner buffers of the inspected side:
    ssh.protoversion:2_compat matches protocol 2.x or 1.99, any other value matches the
    protocol version exactly (``1.10`` is 1.10 only); ssh.softwareversion:"X" (deprecated
    for ssh.software) matches a software version that starts with X (the docs only say
    it matches the software string: prefix is this implementation's reading)."""
    v = (value or "").strip()
    if len(v) >= 2 and v[0] == v[-1] == '"':
        v = v[1:-1]
    if not v:
        raise CompileError(f"'{kw}' needs a value")
    pat = v.encode("utf-8", "surrogateescape")
    if kw == "ssh.softwareversion":
        return Chain(("ssh.software", ()), (CContent(pat, False, False, None, None, None,
                                                      None, True, False, False),))
    if v == "2_compat":
        rx = regex.compile(rb"\A(?:2|1\.99\Z)")
        return Chain(("ssh.proto", ()), (CPcre(rx, False, False, r"/^(?:2|1\.99$)/"),))
    if not re.fullmatch(r"[0-9](\.[0-9]+)?", v):
        raise CompileError(f"'{kw}' takes a version such as 2.0 or 2_compat, not {value!r}")
    return Chain(("ssh.proto", ()), (CContent(pat, False, False, None, None, None, None,
                                              True, True, False),))


_EVENT_NAME = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")


def _event_name(kw: str, value: str | None) -> tuple[str, str | None]:
    """The event a decode-/stream-/app-layer-event keyword asks for, as
    signatures.packet_events names it, and the app protocol it implies (if any).

    Names are not checked against a list: one our decoder, stream or parsers never raise
    loads and never matches (Suricata would refuse a name it does not know)."""
    v = (value or "").strip().lower()
    if not v or not _EVENT_NAME.match(v):
        raise CompileError(f"'{kw}' needs an event name, not {value!r}")
    if kw == "engine-event":
        # Suricata's engine-event names any decoder or stream event by its full name
        # (decoder.ipv4.trunc_pkt, stream.3whs_syn_resend_diff_seq...); a bare name is
        # a decoder event, as decode-event's.
        if v.startswith("stream."):
            return (v, None)
        kw = "decode-event"
    if kw == "decode-event":
        return ("decoder." + v.removeprefix("decoder."), None)
    if kw == "stream-event":
        return ("stream." + v.removeprefix("stream."), None)
    proto, dot, event = v.partition(".")
    if not dot:
        return ("app:" + v, None)  # a generic app-layer event (applayer_...)
    proto = APP_ALIASES.get(proto, proto)
    return (f"app:{proto}.{event}", proto)


_RRTYPES: Final = {"a": 1, "ns": 2, "cname": 5, "soa": 6, "null": 10, "ptr": 12, "mx": 15,
                   "txt": 16, "aaaa": 28, "srv": 33, "any": 255, "https": 65, "svcb": 64}


def _rrtype_number(value: str | None) -> str | None:
    """dns.rrtype takes a number or a type name (Suricata 8 accepts both)."""
    v = (value or "").strip()
    neg = v.startswith("!")
    name = v.lstrip("!").strip().lower()
    if name in _RRTYPES:
        return ("!" if neg else "") + str(_RRTYPES[name])
    return value


# Suricata's version words (detect-tls-version.c, detect-ssl-version.c) -> the TLS
# parser's names for the negotiated version.
_TLS_NAMES: Final = {
    "1.0": b"TLSv1", "tls1.0": b"TLSv1", "tls1": b"TLSv1", "1.1": b"TLS 1.1",
    "tls1.1": b"TLS 1.1", "1.2": b"TLS 1.2", "tls1.2": b"TLS 1.2", "1.3": b"TLS 1.3",
    "tls1.3": b"TLS 1.3", "sslv2": b"SSLv2", "sslv3": b"SSLv3", "3.0": b"SSLv3",
}


def _tls_versions(kw: str, value: str | None) -> tuple[frozenset[bytes], bool]:
    text = (value or "").strip().lower()
    negated = text.startswith("!")
    names = set()
    for word in text.lstrip("!").split(","):
        w = word.strip().lstrip("!")
        if w not in _TLS_NAMES:
            raise CompileError(f"'{kw}': unknown version {word.strip()!r}")
        names.add(_TLS_NAMES[w])
    return frozenset(names), negated


def _ip_proto(value: str | None) -> NumCheck:
    names = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58, "gre": 47,
             "esp": 50, "ah": 51, "igmp": 2, "sctp": 132, "ipip": 4, "ipv6": 41}
    v = (value or "").strip().lower()
    for name, num in names.items():
        if v.lstrip("!<>= ") == name:
            v = v.replace(name, str(num))
            break
    return parse_num("ip_proto", v)


def _fragbits(value: str | None) -> tuple[str, int]:
    v = (value or "").strip()
    mode = "="
    if v and v[0] in "!*+":
        mode, v = v[0], v[1:]
    bits = 0
    for ch in v.upper():
        # IPv4 flags: M more fragments 0x2000, D don't fragment 0x4000, R reserved 0x8000
        b = {"M": 0x2000, "D": 0x4000, "R": 0x8000}.get(ch)
        if b is None:
            raise KeywordError(f"'fragbits': invalid flag {ch!r}")
        bits |= b
    return mode, bits


# -- the whole ruleset -------------------------------------------------------------------------


class LazyRules(Sequence[CompiledRule]):
    """Compiled rules made on first use from their text (a warm start from the cache):
    most rules never become a candidate, so most are never compiled."""

    def __init__(self, infos: list[RuleInfo], variables: Variables,
                 classifications: Mapping[str, Classification]) -> None:
        self._infos = infos
        self._done: list[CompiledRule | None] = [None] * len(infos)
        self._variables = variables
        self._classes = classifications
        self._datasets: dict[str, Dataset] = {}

    def __len__(self) -> int:
        return len(self._infos)

    @overload
    def __getitem__(self, i: int) -> CompiledRule: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[CompiledRule]: ...

    def __getitem__(self, i: int | slice) -> CompiledRule | Sequence[CompiledRule]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        got = self._done[i]
        if got is None:
            info = self._infos[i]
            rule = parse_rule(info.raw, self._variables, self._classes, file=info.file,
                              line=info.line)
            try:
                got = compile_rule(rule, info.order, self._classes, self._datasets)
            except (CompileError, KeywordError):
                # It compiled when the cache was written; what it reads beside the rules
                # (a hash list) has changed since. It must not stop the packet: it never
                # matches (a chain on a buffer no inspection has).
                got = compile_rule(replace(rule, options=(), matches=()), info.order,
                                   self._classes)
                got.chains = (Chain(("<unavailable>", ()), ()),)
                got.app = True
            self._done[i] = got
        return got

    @property
    def compiled(self) -> int:
        return sum(1 for c in self._done if c is not None)


@dataclass
class Program:
    """Every compiled rule in evaluation order, plus what could not be compiled.
    `infos` is what the prefilter is built from (one per rule, same order)."""

    rules: Sequence[CompiledRule]
    failures: list[CompileFailure]
    infos: list[RuleInfo] = field(default_factory=list)


def _sort_key(r: Rule, setters_first: dict[str, int]) -> tuple[int, int, int, int]:
    # Rules that set flowbits are evaluated before rules that test them (Suricata orders
    # signatures by flowbit dependencies, detect-engine-sigorder.c).
    sets = any(f.command in ("set", "unset", "toggle") for f in r.flowbits)
    reads = any(f.command in ("isset", "isnotset") for f in r.flowbits)
    for kw, value in r.options:  # xbits / hostbits order the same way
        if kw in ("xbits", "hostbits") and value:
            cmd = value.split(",", 1)[0].strip().lower()
            sets = sets or cmd in ("set", "unset", "toggle")
            reads = reads or cmd in ("isset", "isnotset")
    fb = 0 if sets and not reads else (1 if sets else (2 if reads else 1))
    return (ACTION_ORDER.get(r.action, 3), fb, r.priority, r.sid)


def compile_rules(rules: Iterable[Rule],
                  classifications: Mapping[str, Classification] | None = None) -> Program:
    classes = classifications or {}
    ordered = sorted(rules, key=lambda r: _sort_key(r, {}))
    out: list[CompiledRule] = []
    failures: list[CompileFailure] = []
    datasets: dict[str, Dataset] = {}
    for r in ordered:
        try:
            out.append(compile_rule(r, len(out), classes, datasets))
        except (CompileError, KeywordError) as e:
            failures.append(CompileFailure(r, str(e)))
    return Program(out, failures, [r.info() for r in out])
