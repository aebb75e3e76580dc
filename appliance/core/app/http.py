"""HTTP/1.x parser for reassembled TCP streams, tolerant like libhtp (Suricata 7).

One ``HttpParser`` per flow. ``feed(data, to_server)`` takes in-order chunks of any
size (1 byte or 64 KiB) and returns ``AppEvent``s; state lives in ``transactions``:
a request and its response form one ``HttpTransaction``, matched in order so
pipelined requests (RFC 9112 section 9.3.2) pair with their responses.

Tolerance follows what servers and browsers accept (and what libhtp's "IDS"
personality does): bare LF line endings, folded header lines (RFC 9112 section 5.2,
obsolete but still parsed), duplicate headers joined with ", " (RFC 9110 section 5.3),
leading blank lines before a request/response line, garbage chunk extensions.

Evasions (the "HTTP Evader" cases of suricata-verify) are read the way libhtp reads
them, so the body inspected is the one the browser gets: a lone CR ends a response
line; folding works on whole lines; header names ignore NUL bytes and VT/FF around
them; any Transfer-Encoding holding "chunked" means chunked, and a "chunked" body that
is no chunk-size line is read as it is; chunk sizes ignore control bytes around them;
Content-Encoding is a token list whose layers pass data through when they cannot
decode it (gzip headers read leniently); 1xx/204/304 responses with framing get their
body; a junk line before a status line is skipped. Requests: the request line is a
progress point of its own (TX_REQUEST_LINE); a line without protocol is followed by
headers when they look like headers; lines after a request without framing that start
with no known method are its body; multipart uploads give one file per part.

Anything odd becomes an anomaly with Suricata's HTTP event name (its
``rules/http-events.rules``), never an exception.

Sticky buffers per transaction follow Suricata 7 "HTTP Keywords" semantics; see
``HttpTransaction.request_buffers`` / ``response_buffers``.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from appliance.core.app import (
    ANOMALY,
    FILE_CLOSED,
    TX_COMPLETE,
    TX_REQUEST,
    TX_REQUEST_LINE,
    TX_RESPONSE,
    AppEvent,
)

# --- limits -------------------------------------------------------------------------

# libhtp's hard field limit (HTP_FIELD_LIMIT_HARD): a request/status/header line longer
# than this is cut and REQUEST_FIELD_TOO_LONG / RESPONSE_FIELD_TOO_LONG raised. Real
# header lines stay far below; cookies of a few KiB are the largest seen in practice.
FIELD_LIMIT: Final = 18000
# Suricata 7's libhtp "headers-limit" default: more header lines than this in one
# message raise REQUEST_TOO_MANY_HEADERS and the extra lines are dropped. Bounds the
# per-transaction header table against header floods.
MAX_HEADERS: Final = 1024
# Total bytes of header lines kept per message: MAX_HEADERS lines of FIELD_LIMIT would
# be 18 MiB per transaction; real header blocks are a few KiB (servers such as nginx
# refuse more than 32 KiB). Lines past this are dropped like those past MAX_HEADERS.
MAX_HEADER_BYTES: Final = 256 * 1024
# Bytes of raw header block kept for http.header.raw: MAX_HEADERS lines of typical
# size; a flood of long lines is still parsed (bounded by MAX_HEADERS) but not copied.
RAW_HEADERS_LIMIT: Final = 64 * 1024
# libhtp raises *_HEADER_REPETITION only after this many repetitions of one header
# (HTP_MAX_HEADERS_REPETITIONS); repeated Set-Cookie is normal.
MAX_HEADER_REPETITIONS: Final = 64
# Suricata's default suricata.yaml: libhtp.default-config.request-body-limit: 100kb.
# Only this much of a request body is kept for http.request_body / file_data; the
# rest is still hashed for the file but not buffered.
REQUEST_BODY_LIMIT: Final = 100 * 1024
# Same for responses: response-body-limit: 100kb (http.response_body, file_data).
RESPONSE_BODY_LIMIT: Final = 100 * 1024
# libhtp's compression bomb guard (HTP_COMPRESSION_BOMB_LIMIT 1 MiB and
# HTP_COMPRESSION_BOMB_RATIO 2048): past 1 MiB of output, an output/input ratio above
# 2048 means a bomb: decompression stops and COMPRESSION_BOMB is raised.
COMPRESSION_BOMB_LIMIT: Final = 1024 * 1024
COMPRESSION_BOMB_RATIO: Final = 2048
# deflate cannot exceed ~1032:1 in one layer, so the ratio only catches nested bombs;
# a single-layer bomb (1 GiB of zeros in 1 MiB) is cut by size instead. Past 16 MiB of
# decompressed output hashing costs more than the inspection gains (only the first
# RESPONSE_BODY_LIMIT bytes are inspected anyway): COMPRESSION_BOMB, file truncated.
DECOMPRESSED_SIZE_LIMIT: Final = 16 * 1024 * 1024
# Compressed bytes remembered until the first output: if decompression fails at once,
# libhtp passes the body through raw, and so do we (whatever the chunking).
DECOMPRESS_PASSTHROUGH_HEAD: Final = 4096
# Output produced per zlib call: bounds the memory one call can allocate, so a 1 KiB
# segment of a bomb never expands into a gigabyte before the guard is checked.
DECOMPRESS_STEP: Final = 64 * 1024
# response-body-decompress-layer-limit: 2 (Suricata default): "gzip, gzip, gzip" stops
# being decoded after two layers with TOO_MANY_ENCODING_LAYERS.
DECOMPRESS_LAYER_LIMIT: Final = 2
# Requests waiting for a response (pipelining depth) plus finished transactions kept
# for the engine; older finished ones are dropped so a long keep-alive flow with
# thousands of requests keeps bounded state.
MAX_TRANSACTIONS_KEPT: Final = 256
# Bytes of a body kept to guess the file type (magic).
MAGIC_BYTES: Final = 64

# --- per-direction states -------------------------------------------------------------

_LINE: Final = 0  # request/status line
_HEADERS: Final = 1
_BODY_CL: Final = 2  # Content-Length body
_CHUNK_LEN: Final = 3
_CHUNK_DATA: Final = 4
_CHUNK_END: Final = 5  # CRLF after chunk data
_TRAILERS: Final = 6
_BODY_CLOSE: Final = 7  # body until the connection closes (responses)
_TUNNEL: Final = 8  # CONNECT / 101 Switching Protocols: no more HTTP
_MAYBE_BODY: Final = 9  # a 304 with Content-Length: a body only if no response follows
_PROBE09: Final = 9  # request line without protocol: do header lines follow?

_TOKEN_RE: Final = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# A chunk-size line as libhtp reads it: whitespace and control bytes (CR, VT, FF...)
# around it are ignored, then hex digits; what follows the digits is an extension
# (";name=value" by RFC 9112 section 7.1.1; anything at all is tolerated).
_CHUNK_WS: Final = b" \t\r\n\x0b\x0c"
_CHUNK_LEN_RE: Final = re.compile(rb"[ \t\r\n\x0b\x0c]*([0-9A-Fa-f]*)")
_HEXDIGITS: Final = frozenset(b"0123456789abcdefABCDEF")
_CHUNK_SKIP: Final = frozenset(b" \t\r\x0b\x0c")
# After a CR, these bytes keep it from ending a line on its own (see _read_line).
_NOT_AFTER_LONE_CR: Final = frozenset(b"\n\r \t")
_PCT_RE: Final = re.compile(rb"%(?:[uU]([0-9A-Fa-f]{4})|([0-9A-Fa-f]{2}))")
_SLASHES_RE: Final = re.compile(rb"/{2,}")
_CD_FILENAME_RE: Final = re.compile(rb"""filename\*?\s*=\s*(?:"([^"]*)"|([^;\s]*))""", re.I)


# --- URI normalisation (libhtp htp_normalize_parsed_uri, IDS personality) -------------


def _pct_sub(m: re.Match[bytes]) -> bytes:
    u = m.group(1)
    if u is not None:
        cp = int(u, 16)
        # %u decoding, best-fit to one byte like libhtp: ASCII range stays, fullwidth
        # forms U+FF01..U+FF5E map to ASCII (an IIS evasion), anything else is '?'.
        if cp < 0x100:
            return bytes((cp,))
        if 0xFF01 <= cp <= 0xFF5E:
            return bytes((cp - 0xFF00 + 0x20,))
        return b"?"
    return bytes((int(m.group(2), 16),))


def remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 section 5.2.4, as libhtp's htp_normalize_uri_path_inplace."""
    if b"." not in path:
        return path
    out: list[bytes] = []
    segs = path.split(b"/")
    absolute = path.startswith(b"/")
    if absolute:
        segs = segs[1:]
    last = len(segs) - 1
    trailing = False
    for i, s in enumerate(segs):
        if s == b".":
            trailing = i == last
            continue
        if s == b"..":
            if out:
                out.pop()
            trailing = i == last
            continue
        out.append(s)
        trailing = False
    res = b"/".join(out)
    if trailing and out:
        res += b"/"
    if absolute:
        res = b"/" + res
    return res


def normalize_path(path: bytes) -> bytes:
    """Decode %XX and %uXXXX, turn '\\' into '/', compress '//' and remove dot segments.

    Matches the libhtp IDS personality Suricata uses by default: the path is decoded
    once (double-decode-path: no), backslashes are separators, separators compressed.
    Invalid %-encodings are kept as they are (HTP_URL_DECODE_PRESERVE_PERCENT).
    """
    if b"%" in path:
        path = _PCT_RE.sub(_pct_sub, path)
    if b"\\" in path:
        path = path.replace(b"\\", b"/")
    if b"//" in path:
        path = _SLASHES_RE.sub(b"/", path)
    return remove_dot_segments(path)


@dataclass(slots=True)
class ParsedUri:
    raw: bytes
    scheme: bytes = b""
    authority: bytes = b""  # host[:port] from an absolute URI or CONNECT target
    path: bytes = b""
    query: bytes | None = None
    fragment: bytes | None = None


def parse_uri(raw: bytes, method: bytes) -> ParsedUri:
    u = ParsedUri(raw)
    rest = raw
    if method.upper() == b"CONNECT" and not rest.startswith(b"/"):
        # authority-form (RFC 9112 section 3.2.3)
        u.authority = rest
        return u
    if not rest.startswith(b"/"):
        i = rest.find(b"://")
        if 0 < i < 16 and _TOKEN_RE.match(rest[:i]):
            u.scheme = rest[:i].lower()
            rest = rest[i + 3 :]
            end = len(rest)
            for sep in (b"/", b"?", b"#"):
                j = rest.find(sep)
                if j != -1 and j < end:
                    end = j
            u.authority = rest[:end]
            at = u.authority.rfind(b"@")
            if at != -1:
                u.authority = u.authority[at + 1 :]
            rest = rest[end:]
    h = rest.find(b"#")
    if h != -1:
        u.fragment = rest[h + 1 :]
        rest = rest[:h]
    q = rest.find(b"?")
    if q != -1:
        u.query = rest[q + 1 :]
        rest = rest[:q]
    u.path = rest
    return u


def split_host_port(value: bytes) -> tuple[bytes, int | None]:
    """Host header / authority -> (normalised hostname, port or None).

    libhtp lowercases and drops trailing dots (htp_normalize_hostname_inplace);
    an IPv6 literal keeps its brackets.
    """
    v = value.strip(b" \t")
    port: int | None = None
    if v.startswith(b"["):
        e = v.find(b"]")
        host = v[: e + 1] if e != -1 else v
        rest = v[e + 1 :] if e != -1 else b""
        if rest.startswith(b":") and rest[1:].isdigit():
            port = int(rest[1:])
    else:
        c = v.rfind(b":")
        if c != -1:
            p = v[c + 1 :].strip(b" \t")
            host = v[:c]
            if p.isdigit() and len(p) <= 5:
                port = int(p)
        else:
            host = v
    return host.strip(b" \t").lower().rstrip(b"."), port


def _chunk_length(line: bytes) -> tuple[int | None, bool]:
    """(size, has extension) of a chunk-size line; size -1 for a blank line, None when
    there is no hex number (or one too large to be real)."""
    m = _CHUNK_LEN_RE.match(line)
    digits = m.group(1) if m else b""
    rest = line[m.end():].strip(_CHUNK_WS) if m else line
    if not digits:
        return (-1 if not rest else None), False
    if len(digits.lstrip(b"0")) > 15:  # leading zeros are no overflow ("000...0")
        return None, bool(rest)
    return int(digits, 16), bool(rest)


_AUTH_SCHEMES: Final = frozenset((b"basic", b"digest", b"bearer"))
# The methods libhtp knows (case-sensitive): after a request without framing, a line
# starting with one of them is the next request; any other line is body data.
_METHODS: Final = frozenset((
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE",
    b"PATCH", b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK",
    b"VERSION-CONTROL", b"CHECKOUT", b"UNCHECKOUT", b"CHECKIN", b"UPDATE", b"LABEL",
    b"REPORT", b"MKWORKSPACE", b"MKACTIVITY", b"BASELINE-CONTROL", b"MERGE", b"INVALID",
))


def _header_follows(buf: bytearray, pos: int) -> bool | None:
    """After a request line without protocol: whether the next bytes start a header line
    (a name, maybe blanks, then a colon), as libhtp probes; None when undecided yet."""
    blanks = False
    for i in range(pos, len(buf)):
        c = buf[i]
        if c == 0x3A:  # ':'
            return True
        if c in (0x20, 0x09):
            blanks = True
        elif blanks or c in (0x0A, 0x0D, 0x0B, 0x0C):
            return False
    # A "name" longer than any header line: no header (and no buffer growing unseen).
    return False if len(buf) - pos > FIELD_LIMIT else None


def _not_chunk_length(buf: bytearray, pos: int) -> bool:
    """Whether the line starting at pos already shows it is no chunk-size line: its
    first byte after blanks is neither a hex digit nor the end of the line."""
    n = len(buf)
    while pos < n and buf[pos] in _CHUNK_SKIP:
        pos += 1
    return pos < n and buf[pos] != 0x0A and buf[pos] not in _HEXDIGITS


# --- files ----------------------------------------------------------------------------

_MAGIC: Final = (
    (b"MZ", "PE32 executable (MS Windows)"),
    (b"\x7fELF", "ELF executable"),
    (b"%PDF-", "PDF document"),
    (b"PK\x03\x04", "Zip archive data"),
    (b"\x1f\x8b", "gzip compressed data"),
    (b"\x89PNG\r\n\x1a\n", "PNG image data"),
    (b"\xff\xd8\xff", "JPEG image data"),
    (b"GIF87a", "GIF image data"),
    (b"GIF89a", "GIF image data"),
    (b"RIFF", "RIFF data"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "Composite Document File V2 Document"),
    (b"Rar!\x1a\x07", "RAR archive data"),
    (b"7z\xbc\xaf\x27\x1c", "7-zip archive data"),
    (b"CWS", "Macromedia Flash data (compressed)"),
    (b"FWS", "Macromedia Flash data"),
    (b"\xca\xfe\xba\xbe", "compiled Java class data"),
    (b"{\\rtf", "Rich Text Format data"),
    (b"<?xml", "XML document text"),
)


def guess_magic(head: bytes) -> str:
    """A libmagic-like description from the first bytes (a small, fixed table)."""
    for sig, name in _MAGIC:
        if head.startswith(sig):
            return name
    low = head.lstrip()[:16].lower()
    if low.startswith((b"<!doctype html", b"<html", b"<head", b"<script")):
        return "HTML document text"
    if low.startswith((b"{", b"[")):
        return "JSON data"
    if not head:
        return "empty"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "ASCII text"
    return "data"


class FileBudget:
    """File content kept for scanning, across every flow of one engine: at most
    `per_file` bytes of one file and `cap` bytes in all. A file that does not fit stops
    being kept (its hash still goes to the scan cache; the scanners cannot see it)."""

    __slots__ = ("cap", "per_file", "used")

    def __init__(self, cap: int, per_file: int) -> None:
        self.cap = cap
        self.per_file = per_file
        self.used = 0


@dataclass(slots=True)
class HttpFile:
    """A body seen as a file: hashed as it streams, for the scan cache; its content
    kept (`data`) when the engine scans files and its FileBudget allows."""

    filename: bytes
    to_server: bool
    tx_id: int
    size: int = 0
    state: str = "OPEN"  # Suricata's EVE names: OPEN, CLOSED, TRUNCATED
    head: bytearray = field(default_factory=bytearray)
    _sha: Any = field(default_factory=hashlib.sha256)
    _md5: Any = field(default_factory=hashlib.md5)  # for filemd5 / filesha1 rules
    _sha1: Any = field(default_factory=hashlib.sha1)
    data: bytearray | None = None  # None: content not kept
    budget: FileBudget | None = None

    def update(self, data: bytes) -> None:
        if not data:
            return
        n = len(data)
        self.size += n
        self._sha.update(data)
        self._md5.update(data)
        self._sha1.update(data)
        if len(self.head) < MAGIC_BYTES:
            self.head += data[: MAGIC_BYTES - len(self.head)]
        kept = self.data
        if kept is not None and self.budget is not None:
            b = self.budget
            if len(kept) + n > b.per_file or b.used + n > b.cap:
                self.release()  # too big for the scanners, or no room left
            else:
                kept += data
                b.used += n

    def take_data(self) -> bytes | None:
        """The whole content, if it was kept, handed over (and out of the budget)."""
        kept = self.data
        if kept is None or len(kept) != self.size:
            self.release()
            return None
        self.release()
        return bytes(kept)

    def release(self) -> None:
        if self.data is not None:
            if self.budget is not None:
                self.budget.used -= len(self.data)
            self.data = None

    @property
    def sha256(self) -> str:
        return str(self._sha.hexdigest())

    @property
    def md5(self) -> str:
        return str(self._md5.hexdigest())

    @property
    def sha1(self) -> str:
        return str(self._sha1.hexdigest())

    @property
    def magic(self) -> str:
        return guess_magic(bytes(self.head))

    def eve(self) -> dict[str, Any]:
        return {
            "filename": self.filename.decode("utf-8", "replace"),
            "magic": self.magic,
            "gaps": False,
            "state": self.state,
            "sha256": self.sha256,
            "stored": False,
            "size": self.size,
            "tx_id": self.tx_id,
        }


def file_buffers(b: dict[str, Any], files: Sequence[HttpFile]) -> None:
    """The file keywords' buffers, one element per file of the inspected direction:
    file.name and file.magic while the file streams; file.size, file.md5, file.sha1 and
    file.sha256 once it is complete (Suricata matches sizes and hash lists on closed
    files). A truncated file has no size or hash here: Suricata would still test
    ``filesize:>N`` on it, this does not (a known gap). Shared by every protocol that
    carries files (HTTP/1, HTTP/2, SMTP through applayer.py; SMB; NFS)."""
    b["file.name"] = [f.filename for f in files]
    b["file.magic"] = [f.magic.encode() for f in files]
    done = [f for f in files if f.state == "CLOSED"]
    if done:
        b["file.size"] = [str(f.size).encode() for f in done]
        b["file.md5"] = [f.md5.encode() for f in done]
        b["file.sha1"] = [f.sha1.encode() for f in done]
        b["file.sha256"] = [f.sha256.encode() for f in done]


# --- multipart/form-data (uploads) ------------------------------------------------------

_BOUNDARY_RE: Final = re.compile(rb"""boundary\s*=\s*(?:"([^"]{1,200})"|([^\s;,"]{1,200}))""",
                                 re.I)
MULTIPART_HEADER_LIMIT: Final = 8 * 1024  # bytes of one part's header block kept


def multipart_boundary(content_type: bytes | None) -> bytes | None:
    """The boundary of a multipart/form-data body (RFC 7578, RFC 2046 section 5.1.1)."""
    if content_type is None or b"multipart/form-data" not in content_type.lower():
        return None
    m = _BOUNDARY_RE.search(content_type)
    if m is None:
        return None
    return m.group(1) if m.group(1) is not None else m.group(2)


class _Multipart:
    """A streaming multipart body splitter: ``feed`` returns ("start", header lines),
    ("data", bytes) and ("end", b"") items; the data are the same whatever the chunking.
    Lenient like the servers it protects: parts may be delimited by LF alone, text before
    the first delimiter and after the last one is ignored."""

    __slots__ = ("buf", "delim", "hdr", "state")

    _PRE, _HDR, _DATA, _DONE = range(4)

    def __init__(self, boundary: bytes) -> None:
        self.delim = b"--" + boundary
        self.buf = bytearray()
        self.state = self._PRE
        self.hdr: list[bytes] = []

    def feed(self, data: bytes) -> list[tuple[str, bytes | list[bytes]]]:
        out: list[tuple[str, bytes | list[bytes]]] = []
        buf = self.buf
        buf += data
        d = self.delim
        pos = 0
        while pos < len(buf) and self.state != self._DONE:
            if self.state == self._PRE:
                i = buf.find(d, pos)
                if i == -1:
                    pos = max(pos, len(buf) - len(d) + 1)
                    break
                nxt = self._after_delim(i + len(d))
                if nxt is None:
                    pos = i
                    break
                pos = i + 1 if nxt == -1 else nxt
            elif self.state == self._HDR:
                nl = buf.find(b"\n", pos)
                if nl == -1:
                    if len(buf) - pos > MULTIPART_HEADER_LIMIT:
                        pos = len(buf)  # a header line too long: dropped
                    break
                line = bytes(buf[pos:nl]).rstrip(b"\r")
                pos = nl + 1
                if line:
                    if sum(map(len, self.hdr)) < MULTIPART_HEADER_LIMIT:
                        self.hdr.append(line)
                    continue
                out.append(("start", self.hdr))
                self.hdr = []
                self.state = self._DATA
            else:  # _DATA: up to the next "\n--boundary"
                i = buf.find(b"\n" + d, pos)
                if i == -1:
                    keep = len(d) + 2  # a delimiter (and its CR) may be cut in two
                    if len(buf) - pos > keep:
                        out.append(("data", bytes(buf[pos : len(buf) - keep])))
                        pos = len(buf) - keep
                    break
                end = i - 1 if i > pos and buf[i - 1] == 0x0D else i
                after = self._after_delim(i + 1 + len(d))
                if after is None:
                    if end > pos:
                        out.append(("data", bytes(buf[pos:end])))
                    pos = end
                    break
                if after == -1:  # only looked like a delimiter: content
                    out.append(("data", bytes(buf[pos : i + 1])))
                    pos = i + 1
                    continue
                if end > pos:
                    out.append(("data", bytes(buf[pos:end])))
                out.append(("end", b""))
                pos = after
        del buf[:pos]
        if self.state == self._DONE:
            buf.clear()
        return out

    def finish(self) -> bytes:
        """The body ended: the bytes held back in a part (they were no delimiter)."""
        rest = bytes(self.buf) if self.state == self._DATA else b""
        self.buf.clear()
        self.state = self._DONE
        return rest

    def _after_delim(self, j: int) -> int | None:
        """After a delimiter at j: "--" ends the body; else the rest of the line is
        skipped and a part's headers follow. None: not enough data to say."""
        buf = self.buf
        if len(buf) < j + 2:
            return None
        if buf[j : j + 2] == b"--":
            self.state = self._DONE
            return len(buf)
        k = j
        while k < len(buf) and buf[k] in (0x20, 0x09):  # transport padding
            k += 1
        if k + 1 >= len(buf) and not (k < len(buf) and buf[k] == 0x0A):
            return None
        if buf[k] == 0x0A or buf[k : k + 2] == b"\r\n":
            self.state = self._HDR
            self.hdr = []
            return k + (1 if buf[k] == 0x0A else 2)
        return -1  # "--boundary" then more: content, not a delimiter


# --- decompression ----------------------------------------------------------------------


_GZIP_FEXTRA: Final = 0x04
_GZIP_FNAME: Final = 0x08
_GZIP_FCOMMENT: Final = 0x10
_GZIP_FHCRC: Final = 0x02


def _gzip_header_len(head: bytes) -> int:
    """Length of the gzip member header (RFC 1952 section 2.3) at the start of ``head``:
    0 when more bytes are needed, -1 when it is not gzip (no magic or method not deflate).

    Read leniently, as libhtp and browsers do: reserved flag bits are ignored and the
    header CRC is skipped, not checked (zlib's own gzip mode rejects both, and a server
    that sets them still delivers a body the browser decodes)."""
    if len(head) < 10:
        return 0 if head[:3] == b"\x1f\x8b\x08"[: len(head)] else -1
    if head[:3] != b"\x1f\x8b\x08":
        return -1
    flags = head[3]
    pos = 10
    if flags & _GZIP_FEXTRA:
        if len(head) < pos + 2:
            return 0
        pos += 2 + (head[pos] | head[pos + 1] << 8)
    for bit in (_GZIP_FNAME, _GZIP_FCOMMENT):
        if flags & bit:
            nul = head.find(b"\x00", pos)
            if nul == -1:
                return 0
            pos = nul + 1
    if flags & _GZIP_FHCRC:
        pos += 2
    return pos if len(head) >= pos else 0


class _Layer:
    """One gzip or deflate layer. The member header (gzip) or the first two bytes
    (deflate: zlib-wrapped or raw) are read first; then raw deflate data. A layer that
    cannot decode passes its input through unchanged from then on, as libhtp does: with
    "Content-Encoding: gzip, gzip" on a body gzipped once, the second layer fails and
    hands on what the first one decoded."""

    __slots__ = ("d", "gzip", "head", "passthrough", "pending", "produced")

    def __init__(self, gzip: bool) -> None:
        self.gzip = gzip
        self.d: Any = None
        self.pending = b""  # input held until the header is known
        self.head = b""  # input kept until the first output, for a late passthrough
        self.produced = 0
        self.passthrough = False


class _Decoder:
    """gzip/deflate layers for a response body with libhtp's bomb guard."""

    __slots__ = ("_layers", "bytes_in", "bytes_out", "failed", "stopped")

    def __init__(self, encodings: list[bytes]) -> None:
        # Content-Encoding lists codings in the order applied (RFC 9110 section 8.4):
        # decode from the last one.
        self._layers = [_Layer(enc in _GZIP) for enc in reversed(encodings)]
        self.bytes_in = 0
        self.bytes_out = 0
        self.failed = False  # some layer could not decode (it passes data through)
        self.stopped = False

    def decode(self, data: bytes, events: list[str]) -> bytes:
        """Decompressed output; a layer that fails passes its data through."""
        if self.stopped:
            return b""
        self.bytes_in += len(data)
        out = data
        for layer in self._layers:
            out = self._run(layer, out, events)
            if self.stopped:
                break
        self.bytes_out += len(out)
        return out

    def _fail(self, layer: _Layer, data: bytes, events: list[str]) -> bytes:
        events.append("GZIP_DECOMPRESSION_FAILED")
        self.failed = True
        layer.passthrough = True
        layer.d = None
        # Nothing came out yet: everything this layer took in goes on as it was.
        out = layer.head if layer.produced == 0 and layer.head else data
        layer.head = layer.pending = b""
        return out

    def _run(self, layer: _Layer, data: bytes, events: list[str]) -> bytes:
        if layer.passthrough or not data:
            return data
        if layer.produced == 0 and len(layer.head) < DECOMPRESS_PASSTHROUGH_HEAD:
            layer.head += data
        d = layer.d
        if d is None:
            head = layer.pending + data
            if layer.gzip:
                n = _gzip_header_len(head)
                if n < 0:
                    return self._fail(layer, data, events)
                if n == 0:
                    layer.pending = head
                    return b""
                d = zlib.decompressobj(-zlib.MAX_WBITS)
                data = head[n:]
            else:
                # "deflate" should be zlib-wrapped (RFC 9110 section 8.4.1.2) but
                # servers send raw deflate too; like libhtp and browsers, look at the
                # zlib header (RFC 1950: CM=8 and the check value divisible by 31).
                if len(head) < 2:
                    layer.pending = head
                    return b""
                zlib_hdr = head[0] & 0x0F == 8 and ((head[0] << 8) | head[1]) % 31 == 0
                d = zlib.decompressobj(zlib.MAX_WBITS if zlib_hdr else -zlib.MAX_WBITS)
                data = head
            layer.d = d
            layer.pending = b""
        parts: list[bytes] = []
        produced = 0
        buf = data
        while buf and not d.eof:
            try:
                chunk = d.decompress(buf, DECOMPRESS_STEP)
            except zlib.error:
                return self._fail(layer, data, events)
            parts.append(chunk)
            produced += len(chunk)
            total = self.bytes_out + produced
            if total > DECOMPRESSED_SIZE_LIMIT or (
                total > COMPRESSION_BOMB_LIMIT
                and total > COMPRESSION_BOMB_RATIO * max(self.bytes_in, 1)
            ):
                events.append("COMPRESSION_BOMB")
                self.stopped = True
                break  # keep what came out up to the limit, then nothing more
            buf = d.unconsumed_tail
        # After the end of the compressed stream (a gzip trailer, trailing bytes)
        # nothing more comes out of this layer.
        layer.produced += produced
        if produced:
            layer.head = b""
        return b"".join(parts)


# --- transactions ------------------------------------------------------------------------


# What libhtp trims around header names and values: C's isspace set, so a vertical tab
# or form feed next to the colon hides nothing ("Transfer-Encoding\x0b: chunked").
_WS: Final = b" \t\r\n\x0b\x0c"
_WS_SET: Final = frozenset(_WS)
_FOLD_FIRST: Final = frozenset(bytes([c]) for c in b" \t\x00\r\n\x0b\x0c")


def _is_continuation(line: bytes) -> bool:
    """An obs-fold line (RFC 9112 section 5.2): it starts with SP or HT, or with NUL
    (libhtp counts NUL as a folding character), or it is only whitespace (libhtp ends
    the header block only on an empty line)."""
    return line[:1] in (b" ", b"\t", b"\x00") or not line.strip(_WS)


def _name_key(name: bytes) -> bytes:
    """Header names compare case-insensitively and ignoring NUL bytes, as libhtp's
    lookups do ("Content\x00-Encoding" is Content-Encoding)."""
    k = name.lower()
    return k.replace(b"\x00", b"") if b"\x00" in k else k


class _HeaderTable(list[list[bytes]]):
    """[name, value] pairs; ``has_nul``: some name holds a NUL byte (lookups then ignore
    NUL bytes, the common case stays a plain comparison)."""

    has_nul = False


def _header_table(lines: list[bytes], to_server: bool, ev: list[str],
                  colon_folds_split: bool = False) -> list[list[bytes]]:
    """Raw header lines -> ordered [name, value] pairs, duplicates joined with ", ".

    ``colon_folds_split``: a folded line holding a colon, after a line that has one,
    starts a new field instead (libhtp does so in HTTP/1.1 responses, where
    " Transfer-Encoding: chunked" after "Connection: close" is a header of its own).
    """
    side = "REQUEST" if to_server else "RESPONSE"
    # Folding first, on whole lines, like libhtp: a continuation joins the line before it
    # before that line is split at its colon, so a folded colon ("Name\r\n :value") still
    # separates the name from the value.
    # (most header blocks have no line that could continue another: no pass for them)
    may_fold = any(ln[:1] in _FOLD_FIRST for ln in lines)
    fields: list[bytes] = [] if may_fold else lines
    for line in lines if may_fold else ():
        # _is_continuation, inlined (header lines are never empty here)
        f = line[0] if line else 0
        if f == 32 or f == 9 or f == 0 or (f in _WS_SET and not line.strip(_WS)):
            if fields and colon_folds_split and b":" in line and b":" in fields[-1]:
                ev.append(f"INVALID_{side}_FIELD_FOLDING")
                fields.append(line[1:])
                continue
            if fields:
                cont = line.strip(b" \t")
                if cont:
                    fields[-1] += b" " + cont
                continue
            ev.append(f"INVALID_{side}_FIELD_FOLDING")
            if not line.strip(_WS):
                continue
        fields.append(line)
    merged = _HeaderTable()
    index: dict[bytes, int] = {}
    reps: dict[bytes, int] = {}
    for line in fields:
        colon = line.find(b":")
        if colon == -1:
            # libhtp keeps such a line as a header name with an empty value.
            ev.append(f"{side}_FIELD_MISSING_COLON")
            name, value = line.strip(_WS), b""
        else:
            name, value = line[:colon], line[colon + 1 :].strip(_WS)
            stripped = name.strip(_WS)
            if stripped != name or not stripped or not _TOKEN_RE.match(stripped):
                ev.append(f"{side}_HEADER_INVALID")
            name = stripped
        key = name.lower()
        if b"\x00" in key:
            key = key.replace(b"\x00", b"")
            merged.has_nul = True
        j = index.get(key)
        if j is None:
            index[key] = len(merged)
            merged.append([name, value])
        else:
            prev = merged[j]
            if key == b"content-length":
                # Like libhtp, a repeated Content-Length is not appended: the first one
                # frames the body, a different value is reported.
                if value != prev[1]:
                    ev.append(f"DUPLICATE_CONTENT_LENGTH_FIELD_IN_{side}")
            else:
                prev[1] = prev[1] + b", " + value
            n = reps.get(key, 0) + 1
            reps[key] = n
            if n == MAX_HEADER_REPETITIONS + 1:
                ev.append(f"{side}_HEADER_REPETITION")
    return merged


# Sticky buffers of a transaction; a list is a multi-buffer (any element may match).
HttpBuffers = dict[str, bytes | list[bytes]]

_CODING_RE: Final = re.compile(rb"[A-Za-z0-9_-]+")
_GZIP: Final = (b"gzip", b"x-gzip")
_DEFLATE: Final = (b"deflate", b"x-deflate")


def _content_codings(value: bytes) -> tuple[list[bytes], bool]:
    """Content-Encoding -> (the gzip/deflate layers in the order applied, whether the
    value held anything else). Like libhtp, the value is read as a list of tokens: any
    separator counts (comma, whitespace, NUL, a stray colon or byte 0xA0) and a token
    that is not a known coding is skipped rather than disabling decompression, so
    "x gzip" or ": gzip" are still decoded. "identity" (and "none") means no layer."""
    encs: list[bytes] = []
    unknown = False
    for tok in _CODING_RE.findall(value.replace(b"\x00", b"")):
        t = tok.lower()
        if t in _GZIP or t in _DEFLATE:
            encs.append(t)
        elif t not in (b"identity", b"none"):
            unknown = True
    return encs, unknown


@dataclass(slots=True)
class HttpTransaction:
    """One request and its response with everything Suricata's HTTP keywords read."""

    tx_id: int
    # request
    request_line: bytes = b""
    method: bytes = b""
    uri_raw: bytes = b""
    uri: ParsedUri | None = None
    request_protocol: bytes = b""
    request_headers: list[list[bytes]] = field(default_factory=list)
    request_headers_raw: bytearray = field(default_factory=bytearray)
    request_body: bytearray = field(default_factory=bytearray)
    request_body_len: int = 0
    request_complete: bool = False
    request_seen: bool = False
    # response
    response_line: bytes = b""
    response_protocol: bytes = b""
    status_raw: bytes = b""
    status_msg: bytes = b""
    response_headers: list[list[bytes]] = field(default_factory=list)
    response_headers_raw: bytearray = field(default_factory=bytearray)
    response_body: bytearray = field(default_factory=bytearray)
    response_body_len: int = 0  # after dechunking, before decompression (EVE "length")
    response_complete: bool = False
    response_seen: bool = False
    files: list[HttpFile] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    logged: bool = False

    # header access
    def request_header(self, name: bytes) -> bytes | None:
        return _get(self.request_headers, name)

    def response_header(self, name: bytes) -> bytes | None:
        return _get(self.response_headers, name)

    @property
    def status(self) -> int | None:
        s = self.status_raw
        if len(s) == 3 and s.isdigit():
            return int(s)
        return None

    @property
    def host_raw(self) -> bytes | None:
        """http.host.raw: the Host header as sent, else the absolute URI's authority."""
        h = self.request_header(b"host")
        if h is not None:
            return h
        if self.uri is not None and self.uri.authority:
            return self.uri.authority
        return None

    @property
    def hostname(self) -> bytes | None:
        """libhtp's request_hostname: the absolute URI's host wins over Host."""
        if self.uri is not None and self.uri.authority:
            return split_host_port(self.uri.authority)[0]
        h = self.request_header(b"host")
        if h is None:
            return None
        return split_host_port(h)[0]

    @property
    def port(self) -> int | None:
        if self.uri is not None and self.uri.authority:
            return split_host_port(self.uri.authority)[1]
        h = self.request_header(b"host")
        return None if h is None else split_host_port(h)[1]

    @property
    def uri_normalized(self) -> bytes:
        """http.uri: decoded, normalised path; the query %-decoded too (Suricata has
        libhtp URL-decode the query: "?data=%7Dk" is inspected as "?data=}k"), its '+'
        kept (query-plusspace-decode is off by default)."""
        u = self.uri
        if u is None:
            return b""
        if not u.path and u.authority and not u.scheme:
            return u.raw  # CONNECT authority-form: nothing to normalise
        out = normalize_path(u.path)
        if u.query is not None:
            q = u.query
            out += b"?" + (_PCT_RE.sub(_pct_sub, q) if b"%" in q else q)
        if u.fragment is not None:
            out += b"#" + u.fragment
        return out

    def request_line_buffers(self) -> dict[str, bytes]:
        """The to-server buffers the request line alone fills (Suricata registers them
        at libhtp's request-line progress); the rest wait for the headers."""
        b: dict[str, bytes] = {}
        if not self.request_seen:
            return b
        b["http.method"] = self.method
        b["http.request_line"] = self.request_line
        b["http.uri.raw"] = self.uri_raw
        b["http.uri"] = self.uri_normalized
        if self.request_protocol:
            b["http.protocol"] = self.request_protocol
        return b

    def request_buffers(self) -> HttpBuffers:
        """To-server sticky buffers (only the ones that exist in this transaction)."""
        b: HttpBuffers = dict(self.request_line_buffers())
        if not b:
            return b
        host = self.hostname
        if host is not None:
            b["http.host"] = host
        hraw = self.host_raw
        if hraw is not None:
            b["http.host.raw"] = hraw
        _common_header_buffers(b, self.request_headers, self.request_headers_raw,
                               self.request_line, cookie=b"cookie",
                               each="http.request_header")
        for key, name in (
            ("http.user_agent", b"user-agent"),
            ("http.referer", b"referer"),
            ("http.accept", b"accept"),
            ("http.accept_enc", b"accept-encoding"),
            ("http.accept_lang", b"accept-language"),
        ):
            v = self.request_header(name)
            if v is not None:
                b[key] = v
        if self.request_body:
            body = bytes(self.request_body)
            b["http.request_body"] = body
            b["file_data"] = body
        return b

    def response_buffers(self) -> HttpBuffers:
        """To-client sticky buffers."""
        b: HttpBuffers = {}
        if not self.response_seen:
            return b
        b["http.response_line"] = self.response_line
        b["http.protocol"] = self.response_protocol
        b["http.stat_code"] = self.status_raw
        b["http.stat_msg"] = self.status_msg
        _common_header_buffers(b, self.response_headers, self.response_headers_raw,
                               self.response_line, cookie=b"set-cookie",
                               each="http.response_header")
        for key, name in (("http.server", b"server"), ("http.location", b"location")):
            v = self.response_header(name)
            if v is not None:
                b[key] = v
        if self.response_body:
            body = bytes(self.response_body)
            b["http.response_body"] = body
            b["file_data"] = body
        return b

    def eve(self) -> dict[str, Any]:
        """The EVE ``http`` object, fields in Suricata 7's order."""
        o: dict[str, Any] = {}
        host = self.hostname
        if host is not None and host:
            o["hostname"] = _s(host)
        port = self.port
        if port is not None:
            o["http_port"] = port
        if self.request_seen:
            o["url"] = _s(self.uri_raw)
        else:
            # libhtp's placeholder for a response that matched no request
            o["http_port"] = 0
            o["url"] = "/libhtp::request_uri_not_seen"
        eve_header_fields(o, self.request_header, self.response_header,
                          method=self.method or None,
                          protocol=self.request_protocol or self.response_protocol or None,
                          status=self.status, with_content_range=True)
        o["length"] = self.response_body_len
        return o


def eve_header_fields(o: dict[str, Any], request_header: Callable[[bytes], bytes | None],
                      response_header: Callable[[bytes], bytes | None], *,
                      method: bytes | None, protocol: bytes | None, status: int | None,
                      with_content_range: bool) -> None:
    """The EVE ``http`` fields from the user agent to the redirect, in Suricata 7's
    order, shared by HTTP/1 and HTTP/2 (which logs no content_range and no protocol:
    it passes with_content_range=False and protocol=None)."""
    ua = request_header(b"user-agent")
    if ua is not None:
        o["http_user_agent"] = _s(ua)
    ct = response_header(b"content-type")
    if ct is not None:
        o["http_content_type"] = _s(ct.split(b";", 1)[0].strip())
    if with_content_range:
        cr = response_header(b"content-range")
        if cr is not None:
            o["content_range"] = content_range(cr)
    ref = request_header(b"referer")
    if ref is not None:
        o["http_refer"] = _s(ref)
    if method is not None:
        o["http_method"] = _s(method)
    if protocol is not None:
        o["protocol"] = _s(protocol)
    if status is not None:
        o["status"] = status
    loc = response_header(b"location")
    if loc is not None:
        o["redirect"] = _s(loc)


_RANGE_RE: Final = re.compile(rb"^\s*bytes\s+(\d{1,18})-(\d{1,18})/(\d{1,18}|\*)\s*$", re.I)


def content_range(value: bytes) -> dict[str, Any]:
    """EVE ``content_range`` (RFC 9110 section 14.4): raw, and start/end/size when the
    value parses (Suricata omits what it cannot parse)."""
    o: dict[str, Any] = {"raw": _s(value)}
    m = _RANGE_RE.match(value)
    if m:
        o["start"] = int(m.group(1))
        o["end"] = int(m.group(2))
        if m.group(3) != b"*":
            o["size"] = int(m.group(3))
    return o


def _s(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _get(headers: list[list[bytes]], name: bytes) -> bytes | None:
    """The value of header ``name`` (given in lower case); NUL bytes in a header's name
    are ignored (see _name_key) when the table has such a name."""
    if isinstance(headers, _HeaderTable) and headers.has_nul:
        for n, v in headers:
            if _name_key(n) == name:
                return v
        return None
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def _common_header_buffers(b: HttpBuffers, headers: list[list[bytes]],
                           raw: bytearray, first_line: bytes, cookie: bytes,
                           each: str) -> None:
    # http.header: "Name: value\r\n" per (merged) header, without Cookie (requests) or
    # Set-Cookie (responses): those are only in http.cookie (Suricata's
    # detect-http-header.c skips them). Values are trimmed (libhtp trims LWS).
    parts: list[bytes] = []
    names: list[bytes] = [b""]
    start: list[bytes] = [first_line, b"\r\n"]
    for n, v in headers:
        line = n + b": " + v + b"\r\n"
        start.append(line)
        names.append(n)
        if n.lower() != cookie:
            parts.append(line)
    b["http.header"] = b"".join(parts)
    # http.request_header / http.response_header: a multi-buffer, one "Name: value" per
    # (merged) header, cookies included, no line end (Suricata 7 "HTTP Keywords").
    b[each] = [n + b": " + v for n, v in headers]
    b["http.header.raw"] = bytes(raw)
    # http.header_names: "\r\nName1\r\nName2\r\n\r\n" (Suricata docs).
    names.append(b"\r\n")
    b["http.header_names"] = b"\r\n".join(names)
    start.append(b"\r\n")
    b["http.start"] = b"".join(start)
    for key, name in (
        ("http.cookie", cookie),
        ("http.content_type", b"content-type"),
        ("http.content_len", b"content-length"),
        ("http.connection", b"connection"),
    ):
        hv = _get(headers, name)
        if hv is not None:
            b[key] = hv


# --- the parser ---------------------------------------------------------------------------


class _Side:
    """Parsing state of one direction."""

    __slots__ = ("bare_lf", "buf", "decoder", "file", "hdr_bytes", "hdr_lines", "line_end",
                 "line_start", "mp", "remaining", "skip_line", "state", "too_many", "tx",
                 "ub_inspected", "unframed")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.state = _LINE
        self.tx: HttpTransaction | None = None
        self.hdr_lines: list[bytes] = []
        self.hdr_bytes = 0
        self.too_many = False
        self.remaining = 0
        self.skip_line = False
        self.line_start = 0
        self.line_end = 0
        self.bare_lf = False  # the last line read ended with a LF alone
        # The last request, when it ended without framing (requests only): lines that
        # follow it and are no request line are its body.
        self.unframed: HttpTransaction | None = None
        self.ub_inspected = 0  # body length at its last inspection (see _unexpected_body)
        self.mp: _Multipart | None = None  # a multipart request body being split
        self.decoder: _Decoder | None = None
        self.file: HttpFile | None = None


def _upgrade_h2c(tx: HttpTransaction) -> bool:
    """A 101 switching to cleartext HTTP/2 (RFC 7540 3.2)."""
    up = tx.response_header(b"upgrade")
    return up is not None and up.strip().lower() == b"h2c"


class HttpParser:
    """HTTP/1.x for one flow; see the module docstring."""

    app_proto = "http"

    def __init__(self) -> None:
        self.transactions: list[HttpTransaction] = []
        self._next_tx_id = 0
        self._req = _Side()
        self._resp = _Side()
        self._resp_tx_index = 0  # index in transactions of the next tx to answer
        self._broken = False
        self._closing = False  # close() is flushing what is left in the buffers
        # Bytes of bodies and raw headers kept in self.transactions (for memuse()).
        self._tx_bytes = 0
        # Set by the engine when it scans files: downloads' content is kept within it.
        self.file_budget: FileBudget | None = None
        # h2c (RFC 7540 3.2): the request a 101 switched to HTTP/2, and the bytes that
        # followed the 101 (to the client): applayer.py hands them to app/http2.py.
        self.h2c: HttpTransaction | None = None
        self.h2c_rest = bytearray()

    # public API -------------------------------------------------------------------------

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]:
        out: list[AppEvent] = []
        if self._broken or not data:
            return out
        try:
            if to_server:
                self._feed_request(data, out)
            else:
                self._feed_response(data, out)
        except Exception:  # principle 7: a parser bug must not kill the flow's verdict
            self._broken = True
            out.append(AppEvent(ANOMALY, to_server, "PARSER_ERROR"))
        self._prune()
        return out

    def close(self) -> list[AppEvent]:
        """Flow end: a body read until close is complete; everything else truncated."""
        out: list[AppEvent] = []
        try:
            rs = self._resp
            rq = self._req
            if rq.state == _PROBE09 and rq.tx is not None:
                self._complete_09(rq.tx, out)
            self._end_unexpected_body(out)
            if rs.state == _LINE and rs.buf and not self._broken:
                # A last line held back to see what follows it: nothing follows.
                self._closing = True
                self._feed_response(b"", out)
            if rs.state == _BODY_CLOSE and rs.tx is not None:
                self._end_response(rs.tx, out, truncated=False)
            for side in (self._req, self._resp):
                if side.file is not None:
                    self._close_file(side, out, truncated=True)
            for tx in self.transactions:
                for f in tx.files:
                    if f.state == "OPEN":
                        f.state = "TRUNCATED"
                        out.append(AppEvent(FILE_CLOSED, f.to_server, "", tx.tx_id,
                                            {"file": f}))
                if not tx.logged:
                    tx.logged = True
                    out.append(AppEvent(TX_COMPLETE, False, "", tx.tx_id, {"tx": tx}))
        except Exception:
            out.append(AppEvent(ANOMALY, False, "PARSER_ERROR"))
        return out

    def memuse(self) -> int:
        return len(self._req.buf) + len(self._resp.buf) + self._tx_bytes

    def release_files(self) -> None:
        """Give back the file content kept for scanning (the flow ends or is no longer
        parsed)."""
        for tx in self.transactions:
            for f in tx.files:
                f.release()
        for side in (self._req, self._resp):
            if side.file is not None:
                side.file.release()

    def get_tx(self, tx_id: int) -> HttpTransaction | None:
        for tx in self.transactions:
            if tx.tx_id == tx_id:
                return tx
        return None

    # helpers ----------------------------------------------------------------------------

    def _prune(self) -> None:
        txs = self.transactions
        if len(txs) <= MAX_TRANSACTIONS_KEPT:
            return
        drop = 0
        limit = len(txs) - MAX_TRANSACTIONS_KEPT
        while drop < limit and drop < self._resp_tx_index and txs[drop].logged:
            drop += 1
        if drop:
            for tx in txs[:drop]:
                self._tx_bytes -= (len(tx.request_body) + len(tx.response_body)
                                   + len(tx.request_headers_raw)
                                   + len(tx.response_headers_raw))
            del txs[:drop]
            self._resp_tx_index -= drop

    def _anom(self, out: list[AppEvent], name: str, to_server: bool,
              tx: HttpTransaction | None) -> None:
        tx_id = -1
        if tx is not None:
            tx_id = tx.tx_id
            if len(tx.anomalies) < 32:
                tx.anomalies.append(name)
        out.append(AppEvent(ANOMALY, to_server, name, tx_id))

    def _new_tx(self) -> HttpTransaction:
        tx = HttpTransaction(self._next_tx_id)
        self._next_tx_id += 1
        self.transactions.append(tx)
        return tx

    def _header_step(self, side: _Side, pos: int, to_server: bool, out: list[AppEvent],
                     lone_cr: bool = False) -> tuple[int, bool]:
        """One header or trailer line from pos: (the new position, whether to wait for
        more data first)."""
        prev_lf = side.bare_lf
        line, npos = self._read_line(side, pos, to_server, out, lone_cr=lone_cr)
        if line is None:
            return npos, True
        if prev_lf and line:
            line = self._blank_line(side, line, npos, prev_lf)
            if line is None:
                return pos, True  # wait for the byte after this blank line
        self._header_line(side, line, to_server, out)
        return npos, False

    def _read_line(self, side: _Side, pos: int, to_server: bool,
                   out: list[AppEvent], lone_cr: bool = False) -> tuple[bytes | None, int]:
        """Next line (without CR/LF) from pos, or None when more data is needed.

        ``side.line_start`` / ``side.line_end`` are set to where the returned line and its
        terminator start and end in the buffer, ``side.bare_lf`` to whether it ended with
        a LF alone. With ``lone_cr`` a CR ends a line too unless LF, CR, SP or HT follows
        it: libhtp reads response status and header lines that way (a CR at the end of
        the data waits for the next byte to decide).
        """
        buf = side.buf
        while True:
            nl = buf.find(b"\n", pos)
            if side.skip_line:
                if nl == -1:
                    return None, len(buf)
                side.skip_line = False
                pos = nl + 1
                continue
            end = nl
            after = nl + 1
            if lone_cr:
                limit = len(buf) if nl == -1 else nl
                cr = buf.find(b"\r", pos, limit)
                if cr != -1 and cr == nl - 1:
                    cr = -1  # the usual CRLF: no lone CR before it (find gives the first)
                while cr != -1 and cr + 1 < len(buf) and buf[cr + 1] in _NOT_AFTER_LONE_CR:
                    cr = buf.find(b"\r", cr + 1, limit)
                if cr != -1:
                    if cr + 1 >= len(buf):
                        if not self._closing:
                            return None, pos  # CR last: is it CRLF or a lone CR?
                    else:
                        end, after = cr, cr + 1
            if end == -1 and self._closing and pos < len(buf):
                end = after = len(buf)  # the flow ends: the last line has no end
            if end == -1:
                if len(buf) - pos > FIELD_LIMIT:
                    side.skip_line = True
                    self._anom(out, ("REQUEST" if to_server else "RESPONSE")
                               + "_FIELD_TOO_LONG", to_server, side.tx)
                    return None, len(buf)
                return None, pos
            side.line_start = pos
            side.line_end = after
            cr_before = end > pos and buf[end - 1] == 0x0D
            side.bare_lf = end == nl and not cr_before
            if cr_before and (end == nl or end == len(buf)):
                end -= 1  # CRLF, or a CR the flow ended on
            line = bytes(buf[pos:end])
            if len(line) > FIELD_LIMIT:
                self._anom(out, ("REQUEST" if to_server else "RESPONSE")
                           + "_FIELD_TOO_LONG", to_server, side.tx)
                line = line[:FIELD_LIMIT]
            return line, after

    def _blank_line(self, side: _Side, line: bytes, npos: int,
                    prev_lf: bool) -> bytes | None:
        """A header line made only of whitespace ("\\r\\r\\n", " \\n") is a continuation,
        except where libhtp takes it for the end of the header block: right after a line
        ended by a LF alone, when no line end follows at once (after "Name: v\\n", the
        line " \\n" ends the block before a body but not before "\\r\\n", which does).
        Returns the line to use (b"" for the end of the block), or None when the next
        byte is not there yet."""
        if not line or not prev_lf or line.strip(_WS):
            return line
        buf = side.buf
        if npos >= len(buf):
            if not self._closing:
                side.bare_lf = prev_lf
                return None
            return b""
        return line if buf[npos] in (0x0A, 0x0D) else b""

    # request side -----------------------------------------------------------------------

    def _feed_request(self, data: bytes, out: list[AppEvent]) -> None:
        side = self._req
        if side.state == _TUNNEL:
            return
        side.buf += data
        pos = 0
        buf = side.buf
        while pos < len(buf):
            st = side.state
            if st == _LINE:
                line, npos = self._read_line(side, pos, True, out)
                if line is None:
                    pos = npos
                    break
                if not line.strip():
                    pos = npos
                    continue  # leading empty lines are ignored (libhtp, RFC 9112 2.2)
                ut = side.unframed
                if ut is not None and line.split(None, 1)[0] not in _METHODS:
                    self._unexpected_body(side, ut, bytes(buf[pos:npos]), out)
                    pos = npos
                    continue
                pos = npos
                self._end_unexpected_body(out)
                self._request_line(line, out)
            elif st == _PROBE09:
                follows = _header_follows(buf, pos)
                if follows is None:
                    break  # not decided by the bytes so far
                tx = side.tx
                if tx is None:
                    side.state = _LINE
                elif follows:
                    side.state = _HEADERS
                    side.hdr_lines = []
                    side.hdr_bytes = 0
                    side.too_many = False
                else:
                    self._complete_09(tx, out)
            elif st in (_HEADERS, _TRAILERS):
                pos, wait = self._header_step(side, pos, True, out)
                if wait:
                    break
            elif st == _TUNNEL:
                pos = len(buf)
            else:
                npos = self._body(side, pos, True, out)
                if npos == pos and side.state == st:
                    break  # need more data
                pos = npos
        if pos:
            del buf[:pos]

    def _request_line(self, line: bytes, out: list[AppEvent]) -> None:
        side = self._req
        tx = self._new_tx()
        side.tx = tx
        tx.request_seen = True
        if line[:1] in (b" ", b"\t"):
            self._anom(out, "REQUEST_LINE_LEADING_WHITESPACE", True, tx)
            line = line.lstrip(b" \t")
        tx.request_line = line
        parts = line.split()
        tx.method = parts[0] if parts else b""
        if len(parts) >= 3 and parts[-1].upper().startswith(b"HTTP"):
            # Method SP URI SP Protocol; a URI with spaces is accepted like servers do.
            tx.request_protocol = parts[-1]
            m_end = line.find(parts[0]) + len(parts[0])
            p_start = line.rfind(parts[-1])
            tx.uri_raw = line[m_end:p_start].strip(b" \t")
            if b" " in tx.uri_raw:
                self._anom(out, "URI_DELIM_NON_COMPLIANT", True, tx)
        elif len(parts) == 2:
            # HTTP/0.9 simple request: no headers, no body.
            tx.uri_raw = parts[1]
        elif len(parts) >= 3:
            tx.uri_raw = parts[1]
            tx.request_protocol = b" ".join(parts[2:])
        if not parts or not _TOKEN_RE.match(tx.method) or len(parts) < 2:
            self._anom(out, "REQUEST_LINE_INVALID", True, tx)
        tx.uri = parse_uri(tx.uri_raw, tx.method)
        if len(parts) == 2:
            # No protocol: an HTTP/0.9 simple request, unless header lines follow (libhtp
            # looks at what comes next; clients omitting the protocol still send them).
            self._anom(out, "REQUEST_LINE_MISSING_PROTOCOL", True, tx)
            side.state = _PROBE09
            out.append(AppEvent(TX_REQUEST_LINE, True, "", tx.tx_id, {"tx": tx}))
            return
        if len(parts) < 2:
            self._complete_09(tx, out)
            return
        side.state = _HEADERS
        side.hdr_lines = []
        side.hdr_bytes = 0
        side.too_many = False
        # The request line is a progress point of its own (libhtp's REQUEST_LINE): rules
        # on the method and URI run now, not only once the headers are complete.
        out.append(AppEvent(TX_REQUEST_LINE, True, "", tx.tx_id, {"tx": tx}))

    def _complete_09(self, tx: HttpTransaction, out: list[AppEvent]) -> None:
        """The request is its line alone (HTTP/0.9: no headers, no body)."""
        self._req.state = _LINE
        self._req.tx = None
        tx.request_complete = True
        out.append(AppEvent(TX_REQUEST, True, "", tx.tx_id, {"tx": tx}))
        self._maybe_done(tx, out)

    def _header_line(self, side: _Side, line: bytes, to_server: bool,
                     out: list[AppEvent]) -> None:
        tx = side.tx
        assert tx is not None
        prefix = "REQUEST" if to_server else "RESPONSE"
        raw = tx.request_headers_raw if to_server else tx.response_headers_raw
        if side.state == _HEADERS and len(raw) < RAW_HEADERS_LIMIT:
            n = len(raw)
            # the line as sent, with its terminator (cut like the line when too long)
            raw += side.buf[side.line_start : min(side.line_end,
                                                  side.line_start + len(line) + 2)]
            self._tx_bytes += len(raw) - n
        if line:
            side.hdr_bytes += len(line)
            if len(side.hdr_lines) >= MAX_HEADERS or side.hdr_bytes > MAX_HEADER_BYTES:
                if not side.too_many:
                    side.too_many = True
                    self._anom(out, f"{prefix}_TOO_MANY_HEADERS", to_server, tx)
                return
            side.hdr_lines.append(line)
            return
        # blank line: end of the header block (or of the trailers)
        ev: list[str] = []
        table = _header_table(side.hdr_lines, to_server, ev, colon_folds_split=(
            not to_server and tx.response_protocol.upper() == b"HTTP/1.1"))
        side.hdr_lines = []
        for name in ev:
            self._anom(out, name, to_server, tx)
        if side.state == _TRAILERS:
            # Trailer fields are added to the header table, like libhtp does.
            headers = tx.request_headers if to_server else tx.response_headers
            headers.extend(table)
            if to_server:
                self._end_request(tx, out)
            else:
                self._end_response(tx, out, truncated=False)
            return
        if to_server:
            tx.request_headers = table
            auth = _get(table, b"authorization")
            if auth is not None:
                scheme = auth.strip(_WS).split(None, 1)[:1]
                if not scheme or scheme[0].lower() not in _AUTH_SCHEMES:
                    # libhtp parses Basic, Digest and Bearer credentials only.
                    self._anom(out, "REQUEST_AUTH_UNRECOGNIZED", True, tx)
            out.append(AppEvent(TX_REQUEST, True, "", tx.tx_id, {"tx": tx}))
            self._request_body_start(tx, out)
        else:
            tx.response_headers = table
            self._response_body_start(tx, out)

    def _framing(self, headers: list[list[bytes]], to_server: bool,
                 tx: HttpTransaction, out: list[AppEvent]) -> tuple[str, int]:
        """('chunked'|'length'|'none'|'invalid', length) per RFC 9112 section 6.3."""
        side = "REQUEST" if to_server else "RESPONSE"
        te = _get(headers, b"transfer-encoding")
        if te is not None:
            # libhtp: any value containing "chunked" (case and NUL bytes ignored) means a
            # chunked body, whatever else the value or a Content-Length says.
            if b"chunked" in _name_key(te):
                return "chunked", 0
            self._anom(out, f"INVALID_TRANSFER_ENCODING_VALUE_IN_{side}", to_server, tx)
        cl = _get(headers, b"content-length")
        if cl is not None:
            # A decimal number within whitespace (or a list of one number repeated);
            # anything else ("34 68", "68A") is invalid and the body then runs until the
            # connection closes: that reads at least what the client reads.
            vals = {v.strip(_WS) for v in cl.split(b",")}
            if len(vals) == 1:
                v = vals.pop()
                if v.isdigit() and len(v.lstrip(b"0")) <= 18:
                    return "length", int(v)
            self._anom(out, f"INVALID_CONTENT_LENGTH_FIELD_IN_{side}", to_server, tx)
            return "invalid", 0
        return "none", 0

    def _request_body_start(self, tx: HttpTransaction, out: list[AppEvent]) -> None:
        side = self._req
        kind, length = self._framing(tx.request_headers, True, tx, out)
        if tx.method.upper() == b"CONNECT":
            # The request side waits: after a 2xx the flow is a tunnel (RFC 9110 9.3.6).
            tx.request_complete = True
            side.state = _LINE
            self._maybe_done(tx, out)
            return
        if kind == "chunked":
            side.state = _CHUNK_LEN
            self._open_request_files(side, tx)
        elif kind == "length" and length > 0:
            side.state = _BODY_CL
            side.remaining = length
            self._open_request_files(side, tx)
        else:
            # A request without framing has no body (RFC 9112 section 6.3 item 7), but
            # libhtp reads lines that follow it and do not start with a known method as
            # its body (REQUEST_BODY_UNEXPECTED): see _unexpected_body.
            self._end_request(tx, out)
            side.unframed = tx
            side.ub_inspected = 0

    def _open_request_files(self, side: _Side, tx: HttpTransaction) -> None:
        """A request body is one file, or for multipart/form-data one file per part that
        names a file (an upload), as Suricata: form fields are no files."""
        boundary = multipart_boundary(tx.request_header(b"content-type"))
        if boundary is None:
            self._open_file(side, tx, True)
        else:
            side.mp = _Multipart(boundary)

    def _multipart_data(self, side: _Side, tx: HttpTransaction, data: bytes,
                        out: list[AppEvent]) -> None:
        mp = side.mp
        if mp is None:
            return
        for kind, item in mp.feed(data):
            if kind == "start" and isinstance(item, list):
                name = None
                for line in item:
                    if line[:20].lower().startswith(b"content-disposition"):
                        m = _CD_FILENAME_RE.search(line)
                        if m:
                            name = m.group(1) if m.group(1) is not None else m.group(2)
                if name is not None:
                    side.file = HttpFile(name, True, tx.tx_id)
                    tx.files.append(side.file)
            elif kind == "data" and side.file is not None and isinstance(item, bytes):
                side.file.update(item)
            elif kind == "end":
                self._close_file(side, out, truncated=False)

    def _unexpected_body(self, side: _Side, tx: HttpTransaction, data: bytes,
                         out: list[AppEvent]) -> None:
        """A line after a request without framing, not starting with a known method:
        libhtp takes it for body data of that request (a client sending a body without
        Content-Length), so http.request_body / file_data see it."""
        if "REQUEST_BODY_UNEXPECTED" not in tx.anomalies:
            self._anom(out, "REQUEST_BODY_UNEXPECTED", True, tx)
        if side.file is None:
            self._open_file(side, tx, True)
        side.tx = tx
        self._body_data(side, data, True, out)
        side.tx = None
        # The request's buffers changed: inspect them again (alerts stay one per tx),
        # each time the kept body has doubled, so that a body sent a byte at a time costs
        # no more than twice its size to inspect; the file's end inspects the rest.
        n = len(tx.request_body)
        if n >= 2 * side.ub_inspected:
            side.ub_inspected = max(n, 1)
            out.append(AppEvent(TX_REQUEST, True, "", tx.tx_id, {"tx": tx}))

    def _end_unexpected_body(self, out: list[AppEvent]) -> None:
        side = self._req
        tx = side.unframed
        side.unframed = None
        if tx is not None and side.file is not None:
            side.tx = tx
            self._close_file(side, out, truncated=False)
            side.tx = None

    def _end_request(self, tx: HttpTransaction, out: list[AppEvent]) -> None:
        side = self._req
        # (a multipart part still open when the body ends was cut short)
        if side.mp is not None and side.file is not None:
            side.file.update(side.mp.finish())
        self._close_file(side, out, truncated=side.mp is not None)
        side.mp = None
        tx.request_complete = True
        side.state = _LINE
        side.tx = None
        self._maybe_done(tx, out)

    # response side ----------------------------------------------------------------------

    def _feed_response(self, data: bytes, out: list[AppEvent]) -> None:
        side = self._resp
        if side.state == _TUNNEL:
            return
        side.buf += data
        pos = 0
        buf = side.buf
        while pos < len(buf):
            st = side.state
            if st == _LINE:
                line, npos = self._read_line(side, pos, False, out, lone_cr=True)
                if line is None:
                    pos = npos
                    break
                if not line.strip():
                    pos = npos
                    continue
                if not line.lstrip().upper().startswith(b"HTTP"):
                    if npos >= len(buf) and not self._closing:
                        break  # is the next line a status line? wait and see
                    if npos < len(buf) and buf[npos] == 0x48:  # 'H'
                        # libhtp skips a junk line followed by one starting with 'H'
                        # (what comes next is taken for the status line).
                        pos = npos
                        continue
                    # Not a status line: libhtp treats the data as a body read until
                    # the connection closes (an HTTP/0.9-style response).
                    tx = self._response_tx(out)
                    tx.response_seen = True
                    side.tx = tx
                    side.state = _BODY_CLOSE
                    self._open_file(side, tx, False)
                    continue
                pos = npos
                self._status_line(line, out)
            elif st in (_HEADERS, _TRAILERS):
                pos, wait = self._header_step(side, pos, False, out, lone_cr=True)
                if wait:
                    break
            elif st == _TUNNEL:
                if self.h2c is not None and len(self.h2c_rest) < 65536:
                    self.h2c_rest += buf[pos:pos + 65536 - len(self.h2c_rest)]
                pos = len(buf)
            elif st == _MAYBE_BODY:
                head = bytes(buf[pos:pos + 5]).upper()
                if len(head) < 5 and b"HTTP/".startswith(head) and not self._closing:
                    break  # a status line may be starting: wait and see
                held = side.tx
                assert held is not None
                if head.startswith(b"HTTP/"):
                    self._end_response(held, out, truncated=False)
                else:
                    self._anom(out, "RESPONSE_BODY_UNEXPECTED", False, held)
                    self._response_body(held, "length", side.remaining, out)
            else:
                npos = self._body(side, pos, False, out)
                if npos == pos and side.state == st:
                    break  # need more data
                pos = npos
        if pos:
            del buf[:pos]

    def _response_tx(self, out: list[AppEvent]) -> HttpTransaction:
        if self._resp_tx_index < len(self.transactions):
            return self.transactions[self._resp_tx_index]
        # A response with no request left to answer (libhtp:
        # "Unable to match response to request").
        tx = self._new_tx()
        tx.request_complete = True
        self._resp_tx_index = len(self.transactions) - 1
        self._anom(out, "UNABLE_TO_MATCH_RESPONSE_TO_REQUEST", False, tx)
        return tx

    def _status_line(self, line: bytes, out: list[AppEvent]) -> None:
        side = self._resp
        tx = self._response_tx(out)
        side.tx = tx
        tx.response_seen = True
        line = line.lstrip(b" \t")
        tx.response_line = line
        parts = line.split(None, 2)
        tx.response_protocol = parts[0] if parts else b""
        tx.status_raw = parts[1] if len(parts) > 1 else b""
        tx.status_msg = parts[2].strip(b" \t") if len(parts) > 2 else b""
        # a new status line replaces an interim (1xx) one's headers
        tx.response_headers = []
        self._tx_bytes -= len(tx.response_headers_raw)
        tx.response_headers_raw = bytearray()
        if tx.status is None:
            self._anom(out, "RESPONSE_INVALID_STATUS", False, tx)
        side.state = _HEADERS
        side.hdr_lines = []
        side.hdr_bytes = 0
        side.too_many = False

    def _response_body_start(self, tx: HttpTransaction, out: list[AppEvent]) -> None:
        side = self._resp
        st = tx.status
        out.append(AppEvent(TX_RESPONSE, False, "", tx.tx_id, {"tx": tx}))
        # Like libhtp, a status that has no body (1xx, 204, 304) still gets the body its
        # Transfer-Encoding or Content-Length announce: browsers read it, so must we.
        framed = (_get(tx.response_headers, b"transfer-encoding") is not None
                  or _get(tx.response_headers, b"content-length") is not None)
        if st is not None and 100 <= st < 200 and st != 101 and not framed:
            # Interim response (RFC 9110 section 15.2): the final one follows.
            side.state = _LINE
            return
        if (st == 101 and not framed) or (tx.method.upper() == b"CONNECT" and st is not None
                                          and 200 <= st < 300):
            # Switching protocols / CONNECT tunnel: the rest is not HTTP.
            if st == 101 and _upgrade_h2c(tx):
                self.h2c = tx
            self._end_response(tx, out, truncated=False)
            side.state = _TUNNEL
            self._req.state = _TUNNEL
            return
        kind, length = self._framing(tx.response_headers, False, tx, out)
        if tx.method.upper() == b"HEAD":
            # No body whatever the headers say (RFC 9110 section 9.3.2).
            self._end_response(tx, out, truncated=False)
            return
        if st == 304 and kind == "length" and length:
            # A 304's Content-Length usually describes the cached representation, not a
            # body (RFC 9110 section 15.4.5), and servers send it on keep-alive
            # connections, where reading it as a body would swallow the next response.
            # libhtp reads the body, and an evasion puts a file there: decide on what
            # follows (another status line: no body).
            side.state = _MAYBE_BODY
            side.remaining = length
            return
        if st is not None and (100 <= st < 200 or st in (204, 304)):
            if not framed:
                # No body (RFC 9110 sections 15.3.5, 15.4.5).
                self._end_response(tx, out, truncated=False)
                return
            self._anom(out, "RESPONSE_BODY_UNEXPECTED", False, tx)
        self._response_body(tx, kind, length, out)

    def _response_body(self, tx: HttpTransaction, kind: str, length: int,
                       out: list[AppEvent]) -> None:
        side = self._resp
        side.decoder = None
        ce = tx.response_header(b"content-encoding")
        if ce is not None:
            encs, unknown = _content_codings(ce)
            if len(encs) > DECOMPRESS_LAYER_LIMIT:
                self._anom(out, "TOO_MANY_ENCODING_LAYERS", False, tx)
                encs = encs[-DECOMPRESS_LAYER_LIMIT:]
            if unknown:
                self._anom(out, "ABNORMAL_CE_HEADER", False, tx)
            if encs:
                side.decoder = _Decoder(encs)
        if kind == "chunked":
            side.state = _CHUNK_LEN
        elif kind == "length":
            if length == 0:
                self._end_response(tx, out, truncated=False)
                return
            side.state = _BODY_CL
            side.remaining = length
        else:
            side.state = _BODY_CLOSE
        self._open_file(side, tx, False)

    def _end_response(self, tx: HttpTransaction, out: list[AppEvent], truncated: bool) -> None:
        side = self._resp
        self._close_file(side, out, truncated=truncated)
        side.decoder = None
        tx.response_complete = True
        side.state = _LINE
        side.tx = None
        if self._resp_tx_index < len(self.transactions) and \
                self.transactions[self._resp_tx_index] is tx:
            self._resp_tx_index += 1
        self._maybe_done(tx, out)

    def _maybe_done(self, tx: HttpTransaction, out: list[AppEvent]) -> None:
        if tx.request_complete and tx.response_complete and not tx.logged:
            tx.logged = True
            out.append(AppEvent(TX_COMPLETE, False, "", tx.tx_id, {"tx": tx}))

    # bodies ------------------------------------------------------------------------------

    def _open_file(self, side: _Side, tx: HttpTransaction, to_server: bool) -> None:
        name = b""
        hdr = tx.request_header if to_server else tx.response_header
        cd = hdr(b"content-disposition")
        if cd is not None:
            m = _CD_FILENAME_RE.search(cd)
            if m:
                name = m.group(1) if m.group(1) is not None else (m.group(2) or b"")
        if not name and tx.uri is not None:
            name = normalize_path(tx.uri.path)
        side.file = HttpFile(name, to_server, tx.tx_id)
        if self.file_budget is not None and not to_server:
            side.file.data = bytearray()  # a download: kept for the scanners
            side.file.budget = self.file_budget
        tx.files.append(side.file)

    def _close_file(self, side: _Side, out: list[AppEvent], truncated: bool) -> None:
        f = side.file
        side.file = None
        if f is None:
            return
        tx = side.tx
        if f.size == 0:
            # no data, no file (Suricata opens files on the first body byte)
            if tx is not None and f in tx.files:
                tx.files.remove(f)
            return
        f.state = "TRUNCATED" if truncated else "CLOSED"
        out.append(AppEvent(FILE_CLOSED, f.to_server, "", f.tx_id, {"file": f}))

    def _body_data(self, side: _Side, data: bytes, to_server: bool,
                   out: list[AppEvent]) -> None:
        tx = side.tx
        if tx is None or not data:
            return
        if to_server:
            tx.request_body_len += len(data)
            room = REQUEST_BODY_LIMIT - len(tx.request_body)
            if room > 0:
                n = len(tx.request_body)
                tx.request_body += data[:room]
                self._tx_bytes += len(tx.request_body) - n
            if side.mp is not None:
                self._multipart_data(side, tx, data, out)
                return
        else:
            tx.response_body_len += len(data)
            if side.decoder is not None:
                ev: list[str] = []
                data = side.decoder.decode(data, ev)
                for name in ev:
                    self._anom(out, name, False, tx)
                    if name == "COMPRESSION_BOMB" and side.file is not None:
                        # The file can no longer be hashed completely.
                        f = side.file
                        f.state = "TRUNCATED"
                        side.file = None
                        out.append(AppEvent(FILE_CLOSED, False, "", tx.tx_id, {"file": f}))
            room = RESPONSE_BODY_LIMIT - len(tx.response_body)
            if room > 0 and data:
                n = len(tx.response_body)
                tx.response_body += data[:room]
                self._tx_bytes += len(tx.response_body) - n
        if side.file is not None:
            side.file.update(data)

    def _body(self, side: _Side, pos: int, to_server: bool, out: list[AppEvent]) -> int:
        """Consume body bytes from side.buf[pos:]; return the new position."""
        buf = side.buf
        st = side.state
        tx = side.tx
        prefix = "REQUEST" if to_server else "RESPONSE"
        if tx is None:
            side.state = _LINE
            return pos
        if st == _BODY_CL or st == _CHUNK_DATA:
            n = min(side.remaining, len(buf) - pos)
            self._body_data(side, bytes(buf[pos : pos + n]), to_server, out)
            side.remaining -= n
            pos += n
            if side.remaining == 0:
                if st == _CHUNK_DATA:
                    side.state = _CHUNK_END
                elif to_server:
                    self._end_request(tx, out)
                else:
                    self._end_response(tx, out, truncated=False)
            return pos
        if st == _BODY_CLOSE:
            self._body_data(side, bytes(buf[pos:]), to_server, out)
            return len(buf)
        if st == _CHUNK_END:
            line, npos = self._read_line(side, pos, to_server, out)
            if line is None:
                return npos
            side.state = _CHUNK_LEN
            if line.strip(b" \t"):
                # data after the chunk: treat this line as the next chunk length
                return pos
            return npos
        if st == _CHUNK_LEN:
            if not to_server and _not_chunk_length(buf, pos):
                # libhtp looks at a response's chunk-size line as it arrives: a first
                # byte (after whitespace) that is no hex digit means the body was not
                # chunked after all ("Transfer-Encoding: chunked" over a plain body).
                self._anom(out, f"INVALID_{prefix}_CHUNK_LEN", to_server, tx)
                side.state = _BODY_CLOSE
                return pos
            line, npos = self._read_line(side, pos, to_server, out)
            if line is None:
                return npos
            size, ext = _chunk_length(line)
            if size == -1:
                return npos  # stray empty line between chunks: tolerated like libhtp
            if ext and to_server:
                self._anom(out, "REQUEST_CHUNK_EXTENSION", True, tx)
            if size is None:
                self._anom(out, f"INVALID_{prefix}_CHUNK_LEN", to_server, tx)
                # libhtp gives up on chunking and treats the rest as plain body.
                side.state = _BODY_CLOSE
                return pos
            if size == 0:
                side.state = _TRAILERS
                side.hdr_lines = []
                side.hdr_bytes = 0
                side.too_many = False
                return npos
            side.state = _CHUNK_DATA
            side.remaining = size
            return npos
        side.state = _LINE
        return pos
