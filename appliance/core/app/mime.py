"""A bounded, streaming MIME decoder for e-mail messages (RFC 5322, RFC 2045-2047).

It takes a message one line at a time (as SMTP DATA/BDAT carries it, after the SMTP
layer removed dot-stuffing) and keeps a stack of entities: the message itself, the parts
of a multipart body (RFC 2046 5.1, nested boundaries), and messages encapsulated in a
message/rfc822 part (whose own headers are parsed again, their encoding starting afresh,
as Suricata does). Leaf bodies are decoded by their Content-Transfer-Encoding (base64,
quoted-printable; 7bit/8bit/binary/anything else as is) and handed to a `MimeSink`: a part
named by Content-Disposition ``filename=`` or Content-Type ``name=`` is an attachment
(Suricata's rule: only those become files).

As Suricata's decoder: the line break before a boundary delimiter (and before the end of
the message) belongs to the delimiter, not to the body (RFC 2046 5.1.1), so the last
line of a body carries no CRLF; a quoted-printable soft line break (``=`` at the end)
joins lines.

Bounds, each named with its reason below: header names and values, the headers kept per
entity, nesting depth, boundary and file name lengths, the decoder's carry-over between
lines. Malformed input raises Suricata's MIME event names (``MIME_INVALID_BASE64``,
``MIME_LONG_LINE``...), collected in `events`; nothing here raises on hostile input.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from typing import Any, Final, Protocol
from urllib.parse import unquote_to_bytes

# Limits (and why).
MAX_LINE: Final = 998  # RFC 5322 2.1.1: a line is at most 998 characters (MIME_LONG_LINE)
MAX_ENC_LINE: Final = 76  # RFC 2045 6.7/6.8: encoded lines are at most 76 characters
MAX_HEADER_NAME: Final = 75  # Suricata's MAX_HEADER_NAME (MIME_LONG_HEADER_NAME)
MAX_HEADER_VALUE: Final = 2000  # Suricata's default smtp mime header-value-depth
MAX_HEADERS: Final = 100  # headers kept per entity: enough for real mail, bounded memory
MAX_DEPTH: Final = 16  # nested entities; deeper parts are not decoded (MIME_PARSE_FAILED)
MAX_BOUNDARY: Final = 254  # RFC 2046 allows 70; Suricata's buffer holds 254 (longer: event)
MAX_FILENAME: Final = 255  # NAME_MAX, Suricata's limit (MIME_LONG_FILENAME, name cut)
MAX_URLS: Final = 64  # URLs kept per message for email.url
MAX_URL_TAIL: Final = 2048  # text kept to read a URL cut across lines or packets

# Suricata's MIME event names (app-layer-event:smtp.<lowercase name>).
EV_INVALID_BASE64: Final = "MIME_INVALID_BASE64"
EV_INVALID_QP: Final = "MIME_INVALID_QP"
EV_LONG_LINE: Final = "MIME_LONG_LINE"
EV_LONG_ENC_LINE: Final = "MIME_LONG_ENC_LINE"
EV_LONG_HEADER_NAME: Final = "MIME_LONG_HEADER_NAME"
EV_LONG_HEADER_VALUE: Final = "MIME_LONG_HEADER_VALUE"
EV_BOUNDARY_TOO_LONG: Final = "MIME_BOUNDARY_TOO_LONG"
EV_LONG_FILENAME: Final = "MIME_LONG_FILENAME"
EV_PARSE_FAILED: Final = "MIME_PARSE_FAILED"

_B64_JUNK: Final = re.compile(rb"[^A-Za-z0-9+/=]")
_QP_ESC: Final = re.compile(rb"=([0-9A-Fa-f]{2})?")
_PARAM: Final = re.compile(
    rb""";\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;\s]*)""")
_URL: Final = re.compile(rb"(?i)\b(?:https?|ftp)://([^\s\"'<>()\[\]{}]{1,1024})")
_WS: Final = b" \t"


def header_params(value: bytes) -> dict[bytes, bytes]:
    """The ``; name=value`` parameters of a structured header (RFC 2045 5.1), names
    lowercased, quotes removed. RFC 2231 ``name*=charset'lang'%XX`` values are
    percent-decoded under the plain name when it is not given too."""
    out: dict[bytes, bytes] = {}
    for m in _PARAM.finditer(value):
        name = m.group(1).lower()
        v = m.group(2)
        if v[:1] == b'"':
            v = v[1:-1] if len(v) > 1 and v[-1:] == b'"' else v[1:]
            v = re.sub(rb"\\(.)", rb"\1", v)
        if name.endswith(b"*"):
            base = name.rstrip(b"*").split(b"*")[0]
            parts = v.split(b"'", 2)
            v = unquote_to_bytes(parts[2] if len(parts) == 3 else v)
            if base not in out:
                out[base] = v
            continue
        out.setdefault(name, v)
    return out


class MimeSink(Protocol):
    """Where decoded leaf bodies go."""

    def part_start(self, entity: Entity) -> None: ...

    def part_data(self, entity: Entity, data: bytes) -> None: ...

    def part_end(self, entity: Entity) -> None: ...


class Entity:
    """One MIME entity: its headers, then its body."""

    __slots__ = (
        "_name",
        "_value",
        "_value_cut",
        "b64",
        "boundary",
        "closed",
        "ctype",
        "encap",
        "encoding",
        "events_seen",
        "filename",
        "headers",
        "in_body",
        "pending_crlf",
        "sink_open",
        "url_tail",
    )

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []  # (lowercased name, unfolded value)
        self.in_body = False
        self.ctype = b"text/plain"  # RFC 2045 5.2 default
        self.boundary: bytes | None = None
        self.encoding = b""
        self.filename: bytes | None = None
        self.encap = False  # message/rfc822: the body is another message
        self.closed = False  # a multipart whose closing delimiter was seen (epilogue)
        self.pending_crlf = False  # the last body line's break, owed if another follows
        self.b64 = b""  # base64 characters carried to the next line (< 4)
        self.sink_open = False
        self.url_tail = b""  # the end of the text read so far, after its last whitespace
        self.events_seen: set[str] = set()
        self._name: bytes | None = None  # the header being read (folding)
        self._value = bytearray()
        self._value_cut = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (name lowercased)."""
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def all_headers(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]

    @property
    def is_attachment(self) -> bool:
        return self.filename is not None


class MimeDecoder:
    """One message. `line(content, eol, start)`: `start` False when `content` continues
    a line the SMTP layer had to cut (too long to buffer); `eol` whether a line break
    followed it. `body_md5` (once ended): the MD5 of the body after the top-level
    headers, as sent (not decoded), each line with its CRLF."""

    def __init__(self, sink: MimeSink) -> None:
        self.sink = sink
        self.root = Entity()
        self._stack: list[Entity] = [self.root]
        self.events: list[str] = []
        self.urls: list[bytes] = []
        self.attachments: list[bytes] = []
        self.done = False
        self.failed = False  # something was too deep to decode (status PARSE_ERROR)
        self._line_len = 0  # length of the body/header line in progress (MIME_LONG_LINE)
        # MD5 of the message body as sent (after the top-level headers, not decoded, each
        # line with its CRLF): Suricata's email.body_md5.
        self._md5: Any = None
        self.body_md5 = ""  # its hex digest, once the message ended

    def memuse(self) -> int:
        n = 0
        for e in self._stack:
            n += len(e._value) + len(e.b64) + len(e.url_tail) + sum(len(a) + len(b) for a, b in e.headers)
        return n + sum(len(u) for u in self.urls)

    def _event(self, e: Entity, name: str) -> None:
        """An event once per entity (a long base64 body is one anomaly, not thousands)."""
        if name not in e.events_seen:
            e.events_seen.add(name)
            self.events.append(name)

    # -- input -----------------------------------------------------------------------

    def line(self, content: bytes, eol: bool = True, start: bool = True,
             stuffed: bool = False) -> None:
        """`stuffed`: SMTP removed a leading dot from this line (the body MD5 is of the
        body as sent, as Suricata's, which does not unstuff)."""
        if self.done:
            return
        if self._md5 is not None:
            if stuffed:
                self._md5.update(b".")
            self._md5.update(content + b"\r\n" if eol else content)
        top = self._stack[-1]
        if start:
            self._line_len = 0
        self._line_len += len(content)
        if self._line_len > MAX_LINE:
            self._event(top, EV_LONG_LINE)
        if start and content[:2] == b"--" and self._boundary(content):
            return
        top = self._stack[-1]
        if not top.in_body:
            self._header_line(top, content, start)
            return
        if top.boundary is not None or top.encap:
            return  # a multipart's preamble or epilogue: not part of any body
        self._body_line(top, content, eol, start)

    def end(self) -> None:
        """The message ended (SMTP end of data): every open entity ends with it."""
        if self.done:
            return
        while self._stack:
            e = self._stack.pop()
            if not e.in_body:
                self._end_headers(e, push=False)
            self._close(e)
        self.done = True
        if self._md5 is not None:
            self.body_md5 = self._md5.hexdigest()
            self._md5 = None

    # -- boundaries -------------------------------------------------------------------

    def _boundary(self, content: bytes) -> bool:
        """A delimiter line of some enclosing multipart (innermost first, a prefix test
        as Suricata's): ends the entities inside it and opens the next part, or closes
        the multipart at ``--boundary--``."""
        stack = self._stack
        for i in range(len(stack) - 1, -1, -1):
            e = stack[i]
            b = e.boundary
            if b is None or not e.in_body:
                continue
            if not content.startswith(b, 2):
                continue
            while len(stack) > i + 1:
                inner = stack.pop()
                if not inner.in_body:
                    self._end_headers(inner, push=False)
                self._close(inner)
            if content[2 + len(b):4 + len(b)] == b"--":
                e.closed = True
                return True
            e.closed = False
            if len(stack) >= MAX_DEPTH:
                self.failed = True
                self._event(e, EV_PARSE_FAILED)
                e.closed = True  # ignore this part: too deep to decode
                return True
            stack.append(Entity())
            return True
        return False

    # -- headers ----------------------------------------------------------------------

    def _header_line(self, e: Entity, content: bytes, start: bool) -> None:
        if not start:
            self._append_value(e, content)  # the rest of a line too long to buffer
            return
        if not content.strip(b" \t\r"):
            self._end_headers(e, push=True)
            return
        if content[:1] in (b" ", b"\t"):
            if e._name is not None:
                self._append_value(e, content)  # folded (RFC 5322 2.2.3): unfold
            return
        name, colon, value = content.partition(b":")
        if not colon or not name.strip():
            # Not a header: a message without a header block (or a broken one). Its
            # body starts here, as mail readers take it.
            self._end_headers(e, push=True)
            if e is self.root and self._md5 is not None:
                self._md5.update(content + b"\r\n")  # this line is the body's first
            top = self._stack[-1]
            if top.in_body and top.boundary is None and not top.encap:
                self._body_line(top, content, True, True)
            return
        self._flush_header(e)
        name = name.strip()
        if len(name) > MAX_HEADER_NAME:
            self._event(e, EV_LONG_HEADER_NAME)
            name = name[:MAX_HEADER_NAME]
        e._name = name.lower()
        e._value = bytearray()
        e._value_cut = False
        self._append_value(e, value.lstrip(_WS))

    def _append_value(self, e: Entity, data: bytes) -> None:
        if e._name is None:
            return
        room = MAX_HEADER_VALUE - len(e._value)
        if len(data) > room:
            if not e._value_cut:
                e._value_cut = True
                self._event(e, EV_LONG_HEADER_VALUE)
            data = data[:max(room, 0)]
        e._value += data

    def _flush_header(self, e: Entity) -> None:
        if e._name is not None:
            if len(e.headers) < MAX_HEADERS:
                e.headers.append((e._name, bytes(e._value).rstrip(b" \t\r")))
            e._name = None
            e._value = bytearray()

    def _end_headers(self, e: Entity, push: bool) -> None:
        """The header block is over: what the body is (RFC 2045, RFC 2046, RFC 2183)."""
        self._flush_header(e)
        e.in_body = True
        if e is self.root:
            self._md5 = hashlib.md5()
        ct = e.header(b"content-type")
        if ct is not None:
            typ = ct.split(b";", 1)[0].strip().lower()
            if typ:
                e.ctype = typ
            params = header_params(ct)
            if typ.startswith(b"multipart/"):
                b = params.get(b"boundary")
                if b:
                    if len(b) > MAX_BOUNDARY:
                        self._event(e, EV_BOUNDARY_TOO_LONG)
                    else:
                        e.boundary = b
            elif typ == b"message/rfc822":
                e.encap = True
            name = params.get(b"name")
        else:
            name = None
        cte = e.header(b"content-transfer-encoding")
        # Encapsulated messages and multiparts have no encoding of their own (RFC 2046
        # 5.2.1 allows 7bit/8bit/binary only): their inner bodies say theirs.
        if cte is not None and e.boundary is None and not e.encap:
            e.encoding = cte.strip().lower()
        cd = e.header(b"content-disposition")
        fname = header_params(cd).get(b"filename") if cd is not None else None
        if not fname:
            fname = name
        if fname and e.boundary is None and not e.encap:
            if len(fname) > MAX_FILENAME:
                self._event(e, EV_LONG_FILENAME)
                fname = fname[:MAX_FILENAME]
            e.filename = fname
            self.attachments.append(fname)
        if e.boundary is not None or e.encap:
            if e.encap and push:
                if len(self._stack) >= MAX_DEPTH:
                    self.failed = True
                    self._event(e, EV_PARSE_FAILED)
                    e.closed = True
                else:
                    self._stack.append(Entity())
            return
        self.sink.part_start(e)
        e.sink_open = True

    # -- bodies -----------------------------------------------------------------------

    def _body_line(self, e: Entity, content: bytes, eol: bool, start: bool) -> None:
        enc = e.encoding
        if enc == b"base64":
            if start and len(content) > MAX_ENC_LINE:
                self._event(e, EV_LONG_ENC_LINE)
            self._emit(e, self._base64(e, content))
            return
        if enc == b"quoted-printable":
            if start and len(content) > MAX_ENC_LINE:
                self._event(e, EV_LONG_ENC_LINE)
            soft = False
            if eol:
                content = content.rstrip(_WS + b"\r")  # RFC 2045 6.7 rule 3
                if content.endswith(b"="):
                    content = content[:-1]
                    soft = True
            data = self._qp(e, content)
            if start and e.pending_crlf:
                data = b"\r\n" + data
            e.pending_crlf = eol and not soft
            self._emit(e, data)
            return
        data = content
        if start and e.pending_crlf:
            data = b"\r\n" + data
        e.pending_crlf = eol
        self._emit(e, data)

    def _emit(self, e: Entity, data: bytes) -> None:
        if not data:
            return
        if e.filename is None and e.ctype in (b"text/plain", b"text/html") and \
                len(self.urls) < MAX_URLS:
            self._urls(e, data, False)
        self.sink.part_data(e, data)

    def _urls(self, e: Entity, data: bytes, final: bool) -> None:
        """URLs of a text body (scheme removed, lowercased: Suricata's email.url), read
        up to the last whitespace: a URL cut by a soft line break or a packet is read
        whole with the next data (at most MAX_URL_TAIL bytes wait)."""
        text = e.url_tail + data
        cut = len(text) if final else max(text.rfind(b" "), text.rfind(b"\n"),
                                          text.rfind(b"\t"))
        if cut < 0:
            if len(text) <= MAX_URL_TAIL:
                e.url_tail = text
                return
            cut = len(text)
        e.url_tail = text[cut:][-MAX_URL_TAIL:]
        for m in _URL.finditer(text, 0, cut):
            if len(self.urls) >= MAX_URLS:
                break
            u = m.group(1).rstrip(b".,;:!?").lower()
            if u and u not in self.urls:
                self.urls.append(u)

    def _base64(self, e: Entity, content: bytes) -> bytes:
        chars = content.translate(None, b" \t\r\n")
        clean = _B64_JUNK.sub(b"", chars)
        if len(clean) != len(chars):
            self._event(e, EV_INVALID_BASE64)
        buf = e.b64 + clean
        out = bytearray()
        while True:
            eq = buf.find(b"=")
            if eq < 0:
                n = len(buf) - len(buf) % 4
                out += binascii.a2b_base64(buf[:n])
                e.b64 = buf[n:]
                return bytes(out)
            g = eq - eq % 4
            out += binascii.a2b_base64(buf[:g])
            grp = buf[g:eq]
            if len(grp) >= 2:
                out += binascii.a2b_base64(grp + b"=" * (4 - len(grp)))
            elif grp:
                self._event(e, EV_INVALID_BASE64)  # one character cannot make a byte
            j = eq
            while j < len(buf) and buf[j:j + 1] == b"=":
                j += 1
            buf = buf[j:]

    def _qp(self, e: Entity, content: bytes) -> bytes:
        if b"=" not in content:
            return content
        bad = False

        def sub(m: re.Match[bytes]) -> bytes:
            nonlocal bad
            h = m.group(1)
            if h is None:
                bad = True
                return b"="
            return bytes((int(h, 16),))

        out = _QP_ESC.sub(sub, content)
        if bad:
            self._event(e, EV_INVALID_QP)
        return out

    def _close(self, e: Entity) -> None:
        if e.url_tail:
            self._urls(e, b"", True)
        if e.sink_open:
            if e.encoding == b"base64" and e.b64:
                # Leftover characters without their padding: decode what they hold.
                rest = e.b64
                e.b64 = b""
                if len(rest) >= 2:
                    self._emit(e, binascii.a2b_base64(rest + b"=" * (-len(rest) % 4)))
                else:
                    self._event(e, EV_INVALID_BASE64)
            e.sink_open = False
            self.sink.part_end(e)


__all__ = ["Entity", "MimeDecoder", "MimeSink", "header_params"]
