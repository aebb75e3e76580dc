"""Typed values of the keywords the matcher implements (parsed once, at load time).

Each parser raises KeywordError with a reason naming the keyword; the compiler turns it
into a rule failure (file:line, reason), never an exception at packet time. Syntax and
semantics follow Suricata 7's keyword documentation and detect-*.c parsers.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final


class KeywordError(ValueError):
    pass


# Keywords the parser knows but the matcher does not implement yet: a rule using one
# fails to compile with "unsupported keyword 'x'" (reported by `rules check`), rather
# than silently matching differently from Suricata.
UNSUPPORTED: Final = frozenset({
    "iprep", "geoip", "lua", "luajit", "asn1", "rpc",
    "entropy",
    "ssl_state", "tls_cert_notbefore", "tls_cert_notafter",
    "tls_cert_expired", "tls_cert_valid",
    "modbus",
    "dnp3_func", "dnp3_ind", "dnp3_obj", "enip_command", "cip_service",
    "flowvar", "pktvar", "icmpv6.mtu",
    "tls.store", "tls_store", "fragoffset",
})

# Keywords accepted without effect on matching, with the reason.
NO_EFFECT: Final = {
    "target": "only changes which side EVE calls source and target",
    "tag": "tags extra packets for logging; alerts are unaffected",
    "prefilter": "a prefilter hint; every rule here is prefiltered on its fast pattern",
    "config": "per-rule logging configuration",
    "requires": "feature requirements, all met or the rule fails on its keywords",
    "bypass": "asks for bypass after a match; the engine bypasses on its own rules",
    "replace": "payload rewriting in IPS mode is not implemented; the rule still alerts",
    "noalert": "handled with flowbits:noalert",
    # filestore is accepted and makes the rule need a file (as Suricata's), but files are
    # not written to disk here: the EVE fileinfo record says "stored": false.
    "filestore": "files are not stored to disk; the rule matches and alerts on files",
}


# -- numbers -------------------------------------------------------------------------------

_NUM = re.compile(r"^\s*(!)?\s*(<=|>=|<|>|=|!=)?\s*(-?(?:0x[0-9a-fA-F]+|\d+))\s*"
                  r"(?:(<>|-)\s*(-?(?:0x[0-9a-fA-F]+|\d+)))?\s*$")


@dataclass(frozen=True, slots=True)
class NumCheck:
    """Suricata's integer syntax: N, !N, <N, >N, <=N, >=N, N<>M (exclusive), N-M."""

    op: str
    a: int
    b: int = 0
    negated: bool = False

    def test(self, v: int) -> bool:
        op = self.op
        if op == "=":
            r = v == self.a
        elif op == "<":
            r = v < self.a
        elif op == ">":
            r = v > self.a
        elif op == "<=":
            r = v <= self.a
        elif op == ">=":
            r = v >= self.a
        elif op == "!=":
            r = v != self.a
        else:  # range, exclusive as Suricata's "<>"
            r = self.a < v < self.b
        return r != self.negated


def parse_num(keyword: str, value: str | None) -> NumCheck:
    if value is None:
        raise KeywordError(f"'{keyword}' needs a value")
    m = _NUM.match(value)
    if not m:
        raise KeywordError(f"invalid value {value!r} for '{keyword}'")
    neg, op, a, rng, b = m.groups()
    av = int(a, 0)
    if rng:
        return NumCheck("<>", av, int(b, 0), bool(neg))
    return NumCheck(op or "=", av, 0, bool(neg))


# -- flow ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowOpt:
    established: bool | None = None  # True: established, False: not_established
    to_server: bool | None = None
    only_stream: bool = False
    no_stream: bool = False
    stateless: bool = False


def parse_flow(value: str | None) -> FlowOpt:
    if not value:
        raise KeywordError("'flow' needs a value")
    est: bool | None = None
    ts: bool | None = None
    only = no = stateless = False
    for raw in value.split(","):
        w = raw.strip().lower()
        if w == "established":
            est = True
        elif w == "not_established":
            est = False
        elif w in ("to_server", "from_client"):
            ts = True
        elif w in ("to_client", "from_server"):
            ts = False
        elif w == "only_stream":
            only = True
        elif w == "no_stream":
            no = True
        elif w == "stateless":
            stateless = True
        elif w in ("only_frag", "no_frag"):
            raise KeywordError(f"unsupported flow option '{w}'")
        elif w:
            raise KeywordError(f"invalid flow option '{w}'")
    return FlowOpt(est, ts, only, no, stateless)


# -- threshold / detection_filter --------------------------------------------------------

TRACKS: Final = frozenset({"by_src", "by_dst", "by_rule", "by_both", "by_flow"})


@dataclass(frozen=True, slots=True)
class Threshold:
    kind: str  # limit, threshold, both, backoff, detection_filter
    track: str
    count: int
    seconds: int
    multiplier: int = 0  # backoff only


def parse_threshold(keyword: str, value: str | None) -> Threshold:
    if not value:
        raise KeywordError(f"'{keyword}' needs a value")
    fields: dict[str, str] = {}
    for part in value.split(","):
        k, _, v = part.strip().partition(" ")
        if not k:
            continue
        fields[k.strip().lower()] = v.strip()
    kind = "detection_filter" if keyword == "detection_filter" else fields.get("type", "")
    if kind not in ("limit", "threshold", "both", "backoff", "detection_filter"):
        raise KeywordError(f"'{keyword}': invalid type {fields.get('type')!r}")
    track = fields.get("track", "")
    if track not in TRACKS:
        raise KeywordError(f"'{keyword}': invalid track {track!r}")
    if kind == "backoff":
        # Suricata: alert on the count-th match, then count*multiplier, count*multiplier^2...
        # per flow only.
        if track != "by_flow":
            raise KeywordError(f"'{keyword}': type backoff needs track by_flow")
        try:
            count = int(fields["count"])
            mult = int(fields["multiplier"])
        except (KeyError, ValueError):
            raise KeywordError(f"'{keyword}': backoff needs numeric count and multiplier"
                               ) from None
        if count < 1 or mult < 2:
            raise KeywordError(f"'{keyword}': backoff needs count >= 1 and multiplier >= 2")
        return Threshold(kind, track, count, 0, mult)
    try:
        count = int(fields["count"])
        seconds = int(fields["seconds"])
    except (KeyError, ValueError):
        raise KeywordError(f"'{keyword}' needs numeric count and seconds") from None
    if count < 1 or seconds < 0:
        raise KeywordError(f"'{keyword}': count must be >= 1 and seconds >= 0")
    return Threshold(kind, track, count, seconds)


# -- tcp flags -------------------------------------------------------------------------------

_FLAG_BITS: Final = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20,
                     "E": 0x40, "C": 0x80, "1": 0x80, "2": 0x40}


@dataclass(frozen=True, slots=True)
class FlagsCheck:
    """`flags:[!|*|+]FSRPAUEC0[,mask]` (Suricata detect-tcp-flags.c)."""

    mode: str  # "=" exact, "+" all of and any others, "*" any of, "!" none of
    bits: int
    ignore: int = 0

    def test(self, flags: int) -> bool:
        f = flags & ~self.ignore & 0xFF
        if self.mode == "=":
            return f == self.bits
        if self.mode == "+":
            return f & self.bits == self.bits
        if self.mode == "*":
            return bool(f & self.bits) or self.bits == 0
        return f & self.bits == 0


def parse_flags(value: str | None) -> FlagsCheck:
    if not value:
        raise KeywordError("'flags' needs a value")
    main, _, mask = value.replace(" ", "").partition(",")
    mode = "="
    if main and main[0] in "!*+":
        mode = main[0]
        main = main[1:]
    if main.endswith("+"):
        mode = "+"
        main = main[:-1]
    elif main.endswith("*"):
        mode = "*"
        main = main[:-1]
    bits = 0
    for ch in main.upper():
        if ch == "0":
            continue
        if ch not in _FLAG_BITS:
            raise KeywordError(f"'flags': invalid flag {ch!r}")
        bits |= _FLAG_BITS[ch]
    ignore = 0
    for ch in mask.upper():
        if ch not in _FLAG_BITS:
            raise KeywordError(f"'flags': invalid mask flag {ch!r}")
        ignore |= _FLAG_BITS[ch]
    return FlagsCheck(mode, bits, ignore)


# -- byte_* and isdataat ----------------------------------------------------------------------

Value = int | str  # a str names a byte_extract / byte_math variable


@dataclass(frozen=True, slots=True)
class ByteRead:
    """How to read a number from the buffer (shared by byte_test/jump/extract/math)."""

    nbytes: Value  # a count, or a byte_extract/byte_math variable (checked 1..8 when read)
    offset: Value
    relative: bool = False
    little: bool = False
    string: str | None = None  # "dec", "hex", "oct" when the bytes are ASCII digits
    bitmask: int | None = None
    dce: bool = False


@dataclass(frozen=True, slots=True)
class ByteTest:
    read: ByteRead
    op: str
    value: Value
    negated: bool


@dataclass(frozen=True, slots=True)
class ByteJump:
    read: ByteRead
    multiplier: int = 1
    align: bool = False
    from_beginning: bool = False
    from_end: bool = False
    post_offset: int = 0


@dataclass(frozen=True, slots=True)
class ByteExtract:
    read: ByteRead
    name: str
    multiplier: int = 1
    align: int = 0


@dataclass(frozen=True, slots=True)
class ByteMath:
    read: ByteRead
    oper: str
    rvalue: Value
    result: str


@dataclass(frozen=True, slots=True)
class IsDataAt:
    n: Value
    relative: bool
    negated: bool


@dataclass(frozen=True, slots=True)
class Bsize:
    check: NumCheck


def _value(keyword: str, text: str) -> Value:
    t = text.strip()
    try:
        return int(t, 0)
    except ValueError:
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", t):
            return t
        raise KeywordError(f"invalid value {t!r} for '{keyword}'") from None


def _byte_flags(keyword: str, parts: list[str]) -> tuple[dict[str, str | None], list[str]]:
    flags: dict[str, str | None] = {}
    rest: list[str] = []
    for p in parts:
        w = p.strip()
        lw = w.lower()
        if lw in ("relative", "big", "little", "dce", "align", "from_beginning", "from_end",
                  "string", "hex", "dec", "oct"):
            flags[lw] = None
        elif lw.startswith(("bitmask ", "multiplier ", "post_offset ", "endian ",
                            "string ", "oper ", "rvalue ", "result ", "offset ", "bytes ")):
            k, _, v = w.partition(" ")
            flags[k.lower()] = v.strip()
        elif w:
            rest.append(w)
    return flags, rest


def _read(keyword: str, nbytes_text: str, offset_text: str,
          flags: dict[str, str | None]) -> ByteRead:
    text = nbytes_text.strip()
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        # A variable set by an earlier byte_extract/byte_math (Suricata 7 accepts one for
        # byte_test, byte_jump and byte_math); its value is checked when read.
        return ByteRead(text, _value(keyword, offset_text), "relative" in flags,
                        "little" in flags or flags.get("endian") == "little", None,
                        _bitmask(flags), "dce" in flags)
    try:
        nbytes = int(text, 0)
    except ValueError:
        raise KeywordError(f"'{keyword}': invalid byte count {nbytes_text!r}") from None
    string = None
    if "string" in flags:
        string = (flags["string"] or next((b for b in ("hex", "dec", "oct") if b in flags),
                                          "dec"))
        if string not in ("hex", "dec", "oct"):
            raise KeywordError(f"'{keyword}': invalid string base {string!r}")
        # 0 with string: the number is the rest of the buffer (Suricata 7, used on
        # http.content_len); otherwise at most 23 digits fit a 64-bit value.
        if not 0 <= nbytes <= 23:
            raise KeywordError(f"'{keyword}': string reads take 0 to 23 bytes")
    elif not (1 if keyword != "byte_jump" else 0) <= nbytes <= 8:
        # byte_jump may read 0 bytes: a jump of post_offset from the current position.
        raise KeywordError(f"'{keyword}': byte count must be 1 to 8")
    little = "little" in flags or flags.get("endian") == "little"
    return ByteRead(nbytes, _value(keyword, offset_text), "relative" in flags, little,
                    string, _bitmask(flags), "dce" in flags)


def _bitmask(flags: dict[str, str | None]) -> int | None:
    b = flags.get("bitmask")
    if not b:
        return None
    try:
        return int(b, 0)
    except ValueError:
        raise KeywordError(f"invalid bitmask {b!r}") from None


def parse_byte_test(value: str | None) -> ByteTest:
    parts = (value or "").split(",")
    if len(parts) < 4:
        raise KeywordError("'byte_test' needs bytes, operator, value, offset")
    flags, _ = _byte_flags("byte_test", parts[4:])
    op = parts[1].strip()
    negated = op.startswith("!")
    if negated:
        op = op[1:].strip() or "="
    if op not in ("<", ">", "=", "<=", ">=", "&", "^"):
        raise KeywordError(f"'byte_test': invalid operator {parts[1].strip()!r}")
    return ByteTest(_read("byte_test", parts[0], parts[3], flags), op,
                    _value("byte_test", parts[2]), negated)


def parse_byte_jump(value: str | None) -> ByteJump:
    parts = (value or "").split(",")
    if len(parts) < 2:
        raise KeywordError("'byte_jump' needs bytes and offset")
    flags, _ = _byte_flags("byte_jump", parts[2:])
    return ByteJump(
        _read("byte_jump", parts[0], parts[1], flags),
        int(str(flags.get("multiplier") or 1), 0),
        "align" in flags,
        "from_beginning" in flags,
        "from_end" in flags,
        int(str(flags.get("post_offset") or 0), 0),
    )


def parse_byte_extract(value: str | None) -> ByteExtract:
    parts = (value or "").split(",")
    if len(parts) < 3:
        raise KeywordError("'byte_extract' needs bytes, offset and a name")
    flags, _ = _byte_flags("byte_extract", parts[3:])
    return ByteExtract(_read("byte_extract", parts[0], parts[1], flags), parts[2].strip(),
                       int(str(flags.get("multiplier") or 1), 0),
                       int(str(flags.get("align") or 0), 0) if flags.get("align") else 0)


def parse_byte_math(value: str | None) -> ByteMath:
    flags, _ = _byte_flags("byte_math", (value or "").split(","))
    try:
        read = _read("byte_math", str(flags["bytes"]), str(flags["offset"]), flags)
        oper = str(flags["oper"])
        rvalue = _value("byte_math", str(flags["rvalue"]))
        result = str(flags["result"])
    except KeyError as e:
        raise KeywordError(f"'byte_math' needs {e.args[0]}") from None
    if oper not in ("+", "-", "*", "/", "<<", ">>"):
        raise KeywordError(f"'byte_math': invalid oper {oper!r}")
    return ByteMath(read, oper, rvalue, result)


def parse_isdataat(value: str | None) -> IsDataAt:
    parts = [p.strip() for p in (value or "").split(",")]
    if not parts or not parts[0]:
        raise KeywordError("'isdataat' needs a value")
    first = parts[0]
    negated = first.startswith("!")
    if negated:
        first = first[1:].strip()
    return IsDataAt(_value("isdataat", first), "relative" in parts, negated)


def parse_bsize(value: str | None) -> Bsize:
    return Bsize(parse_num("bsize", value))


# -- flowint ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowInt:
    name: str
    op: str  # "=", "+", "-", "==", "!=", "<", ">", "<=", ">=", "isset", "notset"
    value: Value | None


def parse_flowint(value: str | None) -> FlowInt:
    parts = [p.strip() for p in (value or "").split(",")]
    if len(parts) < 2:
        raise KeywordError("'flowint' needs a name and an operation")
    name, op = parts[0], parts[1]
    if op in ("isset", "notset", "isnotset"):
        return FlowInt(name, "notset" if op != "isset" else "isset", None)
    if op not in ("=", "+", "-", "==", "!=", "<", ">", "<=", ">=") or len(parts) < 3:
        raise KeywordError(f"'flowint': invalid operation {op!r}")
    return FlowInt(name, op, _value("flowint", parts[2]))


# -- stream_size -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamSize:
    side: str  # client, server, both, either
    check: NumCheck


def parse_stream_size(value: str | None) -> StreamSize:
    parts = [p.strip() for p in (value or "").split(",")]
    if len(parts) != 3 or parts[0] not in ("client", "server", "both", "either"):
        raise KeywordError(f"invalid value {value!r} for 'stream_size'")
    op = parts[1]
    if op not in ("<", ">", "=", "!=", "<=", ">="):
        raise KeywordError(f"'stream_size': invalid operator {op!r}")
    return StreamSize(parts[0], NumCheck(op, int(parts[2], 0)))


# -- file keywords ----------------------------------------------------------------------------

_SIZE_UNITS: Final = {"kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3}
_FILESIZE: Final = re.compile(r"^\s*(!)?\s*(<=|>=|<|>)?\s*(\d+)\s*([kmg]b)?\s*"
                              r"(?:<>\s*(\d+)\s*([kmg]b)?)?\s*$", re.IGNORECASE)


def parse_filesize(value: str | None) -> NumCheck:
    """``filesize:[<|>]N[KB|MB|GB]`` or ``N<>M`` (Suricata's file-keywords docs)."""
    m = _FILESIZE.match(value or "")
    if not m:
        raise KeywordError(f"invalid value {value!r} for 'filesize'")
    neg, op, a, ua, b, ub = m.groups()
    av = int(a) * _SIZE_UNITS.get((ua or "").lower(), 1)
    if b is not None:
        if op:
            raise KeywordError(f"invalid value {value!r} for 'filesize'")
        return NumCheck("<>", av, int(b) * _SIZE_UNITS.get((ub or "").lower(), 1), bool(neg))
    return NumCheck(op or "=", av, 0, bool(neg))


_HASH_HEX_LEN: Final = {"filemd5": 32, "filesha1": 40, "filesha256": 64}


@dataclass(frozen=True, slots=True)
class HashList:
    """filemd5 / filesha1 / filesha256: a file's hash (lower-case hex) in a list loaded
    from a file beside the rules; ``negated`` (``!name``) matches hashes not in it."""

    keyword: str
    hashes: frozenset[bytes]
    negated: bool


def parse_hash_list(keyword: str, value: str | None, rule_dir: str | None) -> HashList:
    """Load the list named by ``value`` (relative names are taken from the rule file's
    directory, as Suricata expands them from its rule directory). One hash per line, at
    the start of the line, in hex; the rest of the line is ignored (md5sum output works);
    blank lines and '#' comments are skipped. A bad line or a missing file fails the rule."""
    text = (value or "").strip()
    negated = text.startswith("!")
    name = text.lstrip("!").strip().strip('"')
    if not name:
        raise KeywordError(f"'{keyword}' needs a file name")
    path = Path(name)
    if not path.is_absolute() and rule_dir is not None:
        path = Path(rule_dir) / path
    want = _HASH_HEX_LEN[keyword]
    hashes: set[bytes] = set()
    try:
        with path.open("rb") as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line or line.startswith(b"#"):
                    continue
                h = line.split()[0].lower()
                if len(h) != want or not all(c in b"0123456789abcdef" for c in h):
                    raise KeywordError(f"'{keyword}': {name}:{n} is not a {want}-digit hash")
                hashes.add(h)
    except OSError as e:
        raise KeywordError(f"'{keyword}': cannot read {name}: {e.strerror}") from None
    return HashList(keyword, frozenset(hashes), negated)


@dataclass(frozen=True, slots=True)
class FileSize:
    check: NumCheck


# -- xbits / hostbits ---------------------------------------------------------------------------

XBITS_EXPIRE_DEFAULT: Final = 30  # seconds a bit lives without `expire` (Suricata's default)
_XBIT_COMMANDS: Final = frozenset({"set", "unset", "toggle", "isset", "isnotset"})
_HOSTBIT_DIRS: Final = {"src": "ip_src", "dst": "ip_dst", "both": "both"}


@dataclass(frozen=True, slots=True)
class Xbit:
    """One xbits/hostbits operation: a named bit kept per host (``ip_src``/``ip_dst`` of
    the packet, or ``both`` hosts for hostbits) or per address pair (``ip_pair``, either
    direction), living ``expire`` seconds of packet time after it was last set."""

    command: str  # set, unset, toggle, isset, isnotset
    name: str
    track: str  # ip_src, ip_dst, ip_pair, both
    expire: int = XBITS_EXPIRE_DEFAULT

    @property
    def check(self) -> bool:
        return self.command in ("isset", "isnotset")


def parse_xbits(keyword: str, value: str | None) -> Xbit | None:
    """``xbits:<cmd>,<name>,track <ip_src|ip_dst|ip_pair>[,expire <s>]`` and
    ``hostbits:<cmd>,<name>[,<src|dst|both>]`` (Suricata's xbits docs); None for
    ``<keyword>:noalert`` (the caller turns the alert off)."""
    parts = [p.strip() for p in (value or "").split(",")]
    cmd = parts[0].lower()
    if cmd == "noalert" and len(parts) == 1:
        return None
    if cmd not in _XBIT_COMMANDS:
        raise KeywordError(f"'{keyword}': unknown command {parts[0]!r}")
    if len(parts) < 2 or not parts[1] or any(c.isspace() for c in parts[1]):
        raise KeywordError(f"'{keyword}:{cmd}' needs a name")
    name = parts[1]
    track = "ip_src"
    expire = XBITS_EXPIRE_DEFAULT
    rest = parts[2:]
    if keyword == "xbits":
        if not rest:
            raise KeywordError("'xbits' needs 'track ip_src|ip_dst|ip_pair'")
        for p in rest:
            k, _, v = p.partition(" ")
            v = v.strip()
            if k == "track" and v in ("ip_src", "ip_dst", "ip_pair"):
                track = v
            elif k == "expire" and v.isdigit() and int(v) > 0:
                expire = int(v)
            else:
                raise KeywordError(f"'xbits': invalid option {p!r}")
    else:
        if len(rest) > 1 or (rest and rest[0].lower() not in _HOSTBIT_DIRS):
            raise KeywordError(f"'hostbits': invalid direction {','.join(rest)!r}")
        if rest:
            track = _HOSTBIT_DIRS[rest[0].lower()]
    return Xbit(cmd, name, track, expire)


# -- base64_decode ------------------------------------------------------------------------------

BASE64_MAX: Final = 65535  # bytes decoded at most (Suricata limits `bytes` to 64 KiB)


@dataclass(frozen=True, slots=True)
class Base64Decode:
    """``base64_decode[:bytes N][, offset N][, relative]``: decode base64 from the active
    buffer (at ``offset``, from the previous match's end when ``relative``) for the
    ``base64_data`` sticky buffer; ``nbytes`` 0 decodes to the end of the buffer."""

    nbytes: int = 0
    offset: int = 0
    relative: bool = False


def parse_base64_decode(value: str | None) -> Base64Decode:
    nbytes = offset = 0
    relative = False
    for raw in (value or "").split(","):
        w = raw.strip()
        if not w:
            continue
        k, _, v = w.partition(" ")
        k = k.lower()
        v = v.strip()
        if k == "relative" and not v:
            relative = True
        elif k in ("bytes", "offset") and v.isdigit():
            n = int(v)
            if k == "bytes":
                if not 0 < n <= BASE64_MAX:
                    raise KeywordError(f"'base64_decode': bytes must be 1 to {BASE64_MAX}")
                nbytes = n
            else:
                if n > BASE64_MAX:
                    raise KeywordError(f"'base64_decode': offset above {BASE64_MAX}")
                offset = n
        else:
            raise KeywordError(f"'base64_decode': invalid option {w!r}")
    return Base64Decode(nbytes, offset, relative)


# -- ipopts ----------------------------------------------------------------------------------

# IPv4 option names (Suricata's ipopts keyword) -> option type byte; "any": any option.
IPOPTS: Final = {"eol": 0x00, "nop": 0x01, "rr": 0x07, "ts": 0x44, "sec": 0x82,
                 "esec": 0x85, "lsrr": 0x83, "ssrr": 0x89, "satid": 0x88, "any": -1}


def parse_ipopts(value: str | None) -> int:
    v = (value or "").strip().lower()
    if v not in IPOPTS:
        raise KeywordError(f"'ipopts': unknown option {value!r}")
    return IPOPTS[v]


# -- dataset / datarep -------------------------------------------------------------------------

DATASET_TYPES: Final = frozenset({"string", "md5", "sha256", "ipv4", "ip"})
# Entries one dataset holds at most: `dataset:set` adds no more beyond it (and does not
# match), so traffic cannot grow it without bound. Suricata bounds it with memcap.
DATASET_MAX_ENTRIES: Final = 1_000_000


@dataclass(slots=True, eq=False)
class Dataset:
    """One named set (dataset) or value -> reputation map (datarep) of the ruleset,
    shared by every rule that names it (Suricata's datasets are global). Values are kept
    as the buffer holds them: raw strings, raw md5/sha256 digests, 4-byte IPv4 or 16-byte
    IPv6 addresses (``ip`` maps IPv4 into ::ffff:0:0/96)."""

    name: str
    type: str
    values: set[bytes] = field(default_factory=set)
    reps: dict[bytes, int] = field(default_factory=dict)

    def key(self, buf: bytes) -> bytes | None:
        """The buffer as this set stores it, None when it cannot be one of its values."""
        t = self.type
        if t == "string":
            return buf
        if t == "md5":
            return buf if len(buf) == 16 else None
        if t == "sha256":
            return buf if len(buf) == 32 else None
        if t == "ipv4":
            return buf if len(buf) == 4 else None
        if len(buf) == 4:  # ip
            return b"\x00" * 10 + b"\xff\xff" + buf
        return buf if len(buf) == 16 else None


def _dataset_value(ds: Dataset, text: str) -> bytes:
    t = ds.type
    if t == "string":
        return base64.b64decode(text, validate=True)
    if t in ("md5", "sha256"):
        v = bytes.fromhex(text)
        if len(v) != (16 if t == "md5" else 32):
            raise ValueError(f"not a {t} hash")
        return v
    addr = ipaddress.ip_address(text)
    if t == "ipv4":
        if addr.version != 4:
            raise ValueError("not an IPv4 address")
        return addr.packed
    got = ds.key(addr.packed)
    assert got is not None
    return got


def load_dataset(ds: Dataset, path: Path, rep: bool) -> None:
    """Fill ``ds`` from a file: one value per line in the type's text form (base64 for
    strings, hex for hashes, addresses for ipv4/ip); for datarep ``value,reputation``.
    A bad line fails the rule that loads it (KeywordError with file:line)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise KeywordError(f"cannot read {path.name}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        text, _, rv = line.partition(",")
        try:
            v = _dataset_value(ds, text.strip())
            if rep:
                ds.reps[v] = int(rv.strip())
            else:
                ds.values.add(v)
        except (ValueError, binascii.Error):
            raise KeywordError(f"{path.name}:{n}: not a valid {ds.type} value"
                               + (" with a reputation" if rep else "")) from None


@dataclass(frozen=True, slots=True)
class DatasetOp:
    """``dataset:<set|isset|isnotset>,<name>,type <t>[,load <file>]...`` or
    ``datarep:<name>,<op>,<value>,type <t>,load <file>`` on the active buffer."""

    command: str  # set, isset, isnotset, rep
    dataset: Dataset
    op: str = ""  # datarep: >, <, >=, <=, ==
    value: int = 0

    def test(self, buf: bytes) -> bool:
        ds = self.dataset
        k = ds.key(buf)
        if k is None:
            return self.command == "isnotset"
        cmd = self.command
        if cmd == "isset":
            return k in ds.values
        if cmd == "isnotset":
            return k not in ds.values
        if cmd == "set":  # matches when the value is new to the set
            if k in ds.values or len(ds.values) >= DATASET_MAX_ENTRIES:
                return False
            ds.values.add(k)
            return True
        rep = ds.reps.get(k)
        if rep is None:
            return False
        op, v = self.op, self.value
        return (rep > v if op == ">" else rep < v if op == "<" else rep >= v if op == ">="
                else rep <= v if op == "<=" else rep == v)


def parse_dataset(keyword: str, value: str | None, rule_dir: str | None,
                  registry: dict[str, Dataset]) -> DatasetOp:
    """A dataset/datarep keyword, its set taken from (or added to) ``registry`` by name.
    ``save``/``state`` are accepted but nothing is written (the engine does no I/O);
    ``memcap``/``hashsize`` are accepted (DATASET_MAX_ENTRIES bounds a set)."""
    parts = [p.strip() for p in (value or "").split(",")]
    if keyword == "dataset":
        if len(parts) < 2 or parts[0] not in ("set", "isset", "isnotset"):
            raise KeywordError(f"'dataset': invalid command in {value!r}")
        cmd, name, opts = parts[0], parts[1], parts[2:]
        op, num = "", 0
    else:
        if len(parts) < 3 or parts[1] not in (">", "<", ">=", "<=", "=="):
            raise KeywordError(f"'datarep' needs name, operator, value in {value!r}")
        if not parts[2].isdigit():
            raise KeywordError(f"'datarep': invalid value {parts[2]!r}")
        cmd, name, opts = "rep", parts[0], parts[3:]
        op, num = parts[1], int(parts[2])
    if not name or any(c.isspace() for c in name):
        raise KeywordError(f"'{keyword}': invalid name {name!r}")
    kind = ""
    load = None
    for o in opts:
        k, _, v = o.partition(" ")
        v = v.strip()
        if k == "type" and v in DATASET_TYPES:
            kind = v
        elif k == "load" and v:
            load = v
        elif k in ("save", "state", "memcap", "hashsize") and v:
            pass
        else:
            raise KeywordError(f"'{keyword}': invalid option {o!r}")
    if not kind:
        raise KeywordError(f"'{keyword}' needs 'type string|md5|sha256|ipv4|ip'")
    if keyword == "datarep" and load is None:
        raise KeywordError("'datarep' needs 'load <file>'")
    reg_key = f"{keyword}:{name}"
    ds = registry.get(reg_key)
    if ds is None:
        ds = Dataset(name, kind)
        if load is not None:
            path = Path(load)
            if not path.is_absolute() and rule_dir is not None:
                path = Path(rule_dir) / path
            try:
                load_dataset(ds, path, keyword == "datarep")
            except KeywordError as e:
                raise KeywordError(f"'{keyword}': {e}") from None
        registry[reg_key] = ds
    elif ds.type != kind:
        raise KeywordError(f"'{keyword}': {name} is of type {ds.type}, not {kind}")
    return DatasetOp(cmd, ds, op, num)


# -- value keywords of the smaller app-layer parsers (app/mqtt.py, krb5.py, snmp.py) ----------

# keyword -> (the buffer the parser fills, app_proto, kind). "num": the buffer holds one
# decimal number per element, tested with Suricata's integer syntax; "set": the value is
# a comma-separated list of names or numbers, the buffer one name per element.
APP_VALUE_KEYWORDS: Final = {
    "mqtt.type": ("mqtt.type", "mqtt", "set"),
    "krb5.ticket_encryption": ("krb5.ticket_encryption", "krb5", "set"),
    "krb5_msg_type": ("krb5_msg_type", "krb5", "num"),
    "krb5_err_code": ("krb5_err_code", "krb5", "num"),
    "snmp.version": ("snmp.version", "snmp", "num"),
    "snmp.pdu_type": ("snmp.pdu_type", "snmp", "num"),
    "nfs_procedure": ("nfs_procedure", "nfs", "num"),
    "nfs.version": ("nfs.version", "nfs", "num"),
}


def parse_app_value(keyword: str, value: str | None) -> tuple[str, str, FileSize | HashList]:
    """(buffer, app_proto, item) for one of APP_VALUE_KEYWORDS. The item is a number
    check (FileSize's, on decimal text) or a set membership (HashList's)."""
    buf, proto, kind = APP_VALUE_KEYWORDS[keyword]
    if kind == "num":
        return buf, proto, FileSize(parse_num(keyword, value))
    text = (value or "").strip()
    negated = text.startswith("!")
    names = [v.strip().lower() for v in text.lstrip("!").split(",") if v.strip()]
    if not names:
        raise KeywordError(f"'{keyword}' needs a value")
    if keyword == "mqtt.type":
        from appliance.core.app.mqtt import TYPE_NAMES

        got: set[bytes] = set()
        for n in names:
            if n.isdigit() and 0 < int(n) < len(TYPE_NAMES):
                n = TYPE_NAMES[int(n)]
            if n not in TYPE_NAMES[1:]:
                raise KeywordError(f"unknown MQTT message type {n!r} for 'mqtt.type'")
            got.add(n.encode())
        return buf, proto, HashList(keyword, frozenset(got), negated)
    from appliance.core.app.krb5 import ETYPES, STRONG_ETYPES

    if names == ["weak"]:
        # Suricata's "weak": every encryption type but the AES and Camellia ones.
        strong = frozenset(str(e).encode() for e in STRONG_ETYPES)
        return buf, proto, HashList(keyword, strong, not negated)
    numbers: set[bytes] = set()
    by_name = {v: k for k, v in ETYPES.items()}
    for n in names:
        if n.lstrip("-").isdigit():
            numbers.add(str(int(n)).encode())
        elif n in by_name:
            numbers.add(str(by_name[n]).encode())
        else:
            raise KeywordError(f"unknown encryption type {n!r} for '{keyword}'")
    return buf, proto, HashList(keyword, frozenset(numbers), negated)


# -- dcerpc ---------------------------------------------------------------------------------
# dcerpc.iface / dcerpc.opnum (and dce_iface / dce_opnum) are matched as regexes on the
# texts app/dcerpc.py gives a call: "dcerpc.opnum" is the opnum in decimal, each
# "dcerpc.iface" element "<uuid> <major version> F|-" (F: the request's latest fragment
# was its first). Opnums and versions are u16 (DCE 1.1 12.6.4.9, 12.6.3.1).

U16_MAX: Final = 0xFFFF
_UUID_RE: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _fixed_width_range(a: str, b: str) -> str:
    """A regex for the digit strings of len(a) == len(b) from a to b (a <= b)."""
    if not a:
        return ""
    if a[0] == b[0]:
        return re.escape(a[0]) + _fixed_width_range(a[1:], b[1:])
    n = len(a) - 1
    if a[1:] == "0" * n and b[1:] == "9" * n:
        return f"[{a[0]}-{b[0]}]" + (rf"\d{{{n}}}" if n else "")
    parts = [a[0] + _fixed_width_range(a[1:], "9" * n)]
    lo, hi = int(a[0]) + 1, int(b[0]) - 1
    if lo <= hi:
        parts.append(f"[{lo}-{hi}]" + (rf"\d{{{n}}}" if n else ""))
    parts.append(b[0] + _fixed_width_range("0" * n, b[1:]))
    return "(?:" + "|".join(parts) + ")"


def number_range_regex(lo: int, hi: int) -> str:
    """A regex matching exactly the decimal numbers lo..hi (no leading zeros)."""
    if lo > hi:
        return "(?!)"
    parts = []
    while lo <= hi:
        width_top = 10 ** len(str(lo)) - 1  # the largest number with lo's digit count
        top = min(hi, width_top)
        parts.append(_fixed_width_range(str(lo), str(top)))
        lo = top + 1
    return "(?:" + "|".join(parts) + ")"


def _u16(keyword: str, text: str) -> int:
    t = text.strip()
    if not t.isdigit() or int(t) > U16_MAX:
        raise KeywordError(f"'{keyword}': {t!r} is not a number from 0 to {U16_MAX}")
    return int(t)


def dcerpc_opnum_regex(keyword: str, value: str | None) -> str:
    """``dcerpc.opnum:12``, ``12,24``, ``12-14,26`` (ranges inclusive), ``>3``, ``<3``
    -> a regex on the opnum's decimal text."""
    v = (value or "").strip()
    if not v:
        raise KeywordError(f"'{keyword}' needs a value")
    alts = []
    for part in v.split(","):
        p = part.strip()
        if p.startswith(("<", ">")):
            n = _u16(keyword, p[1:].lstrip("="))
            inclusive = p[1:2] == "="
            if p[0] == "<":
                lo, hi = 0, n if inclusive else n - 1
            else:
                lo, hi = (n if inclusive else n + 1), U16_MAX
        elif "-" in p:
            a, _, b = p.partition("-")
            lo, hi = _u16(keyword, a), _u16(keyword, b)
            if lo > hi:
                raise KeywordError(f"'{keyword}': empty range {p!r}")
        else:
            lo = hi = _u16(keyword, p)
        alts.append(number_range_regex(lo, hi))
    return r"\A(?:" + "|".join(alts) + r")\Z"


def dcerpc_iface_regex(keyword: str, value: str | None) -> str:
    """``dcerpc.iface:<uuid>[,<op><version>][,any_frag]`` (op: <, >, =, !) -> a regex
    on the call's interface elements. Without any_frag only a request's first
    fragment matches, as Suricata's."""
    parts = [p.strip() for p in (value or "").split(",")]
    uuid = parts[0].lower()
    if not _UUID_RE.fullmatch(uuid):
        raise KeywordError(f"'{keyword}': invalid interface UUID {parts[0]!r}")
    version = r"\d+"
    any_frag = False
    rest = parts[1:]
    if rest and rest[-1].lower() == "any_frag":
        any_frag = True
        rest = rest[:-1]
    if len(rest) > 1:
        raise KeywordError(f"'{keyword}': too many options in {value!r}")
    if rest:
        m = re.fullmatch(r"(<|>|=|!=?)\s*(\d+)", rest[0])
        if m is None:
            raise KeywordError(f"'{keyword}': invalid version {rest[0]!r}")
        op, n = m.group(1), _u16(keyword, m.group(2))
        if op == "=":
            version = str(n)
        elif op == "<":
            version = number_range_regex(0, n - 1)
        elif op == ">":
            version = number_range_regex(n + 1, U16_MAX)
        else:
            version = (f"(?:{number_range_regex(0, n - 1)}|"
                       f"{number_range_regex(n + 1, U16_MAX)})")
    return r"\A" + re.escape(uuid) + " " + version + " " + ("[F-]" if any_frag else "F") + r"\Z"
