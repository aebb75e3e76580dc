"""HTTP/2 parser (RFC 9113) for cleartext connections: prior knowledge or h2c upgrade.

One ``Http2Parser`` per flow; ``feed(data, to_server)`` takes in-order stream bytes of
any size per direction. HTTP/2 inside TLS is not visible to the appliance.

Per direction it checks the client's connection preface (section 3.4) and then reads
frames (section 4.1: 24-bit length, type, flags, 31-bit stream id):

- DATA payloads are streamed, never buffered whole: they feed the stream's body (kept up
  to ``BODY_LIMIT`` for ``file.data``/``http.request_body``, decompressed when the
  response says ``Content-Encoding: gzip``/``deflate``, through app/http.py's decoder
  and its bomb limits) and its file (hashed, kept within the engine's FileBudget, as
  HTTP/1 downloads are);
- other frames are buffered up to ``MAX_FRAME_BUFFER``; a longer one is skipped
  (``long_frame_data``); a header block (HEADERS or PUSH_PROMISE plus CONTINUATION) is
  reassembled up to ``MAX_HEADER_BLOCK`` (``reassembly_limit_reached`` beyond) and
  decoded by app/hpack.py with the direction's dynamic table;
- SETTINGS, WINDOW_UPDATE, PRIORITY, RST_STREAM, PING, GOAWAY are recorded on their
  transaction for the ``http2.*`` keywords and the EVE record.

Transactions are as Suricata's: one per stream (request and response), and one per frame
on stream 0 (the connection's SETTINGS, PING, GOAWAY, WINDOW_UPDATE: a "global"
transaction that is complete at once). A stream's transaction completes when both sides
ended it (END_STREAM), on RST_STREAM, or at flow end. At most ``MAX_STREAMS`` streams
are open at once (``too_many_streams``); frames for more are not parsed.

Events (``AppEvent`` kinds, turned into inspections and records by applayer.py):
``h2_insp`` (a transaction's buffers changed in one direction), ``h2_file`` (a file
ended), ``h2_done`` (the transaction is complete: its EVE ``http`` record). Anomalies
carry Suricata's http2 app-layer event names (lower case, as Suricata logs them):
invalid_client_magic, invalid_frame_header, invalid_frame_length, invalid_frame_data,
invalid_header, header_integer_overflow, long_frame_data, reassembly_limit_reached,
too_many_streams, stream_id_reuse, authority_host_mismatch, userinfo_in_uri,
invalid_http1_settings, failed_decompression.

Not implemented: flow-control accounting (windows are recorded, not enforced), stream
priorities beyond recording the weight, server push bodies beyond treating the promised
stream as a transaction, ``frame:`` keywords (Suricata 8).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final

from appliance.core.app import ANOMALY, AppEvent
from appliance.core.app.hpack import DecodedBlock, Decoder
from appliance.core.app.http import (
    FileBudget,
    HttpFile,
    ParsedUri,
    _content_codings,
    _Decoder,
    eve_header_fields,
    normalize_path,
    parse_uri,
    split_host_port,
)

# Event kinds (applayer.py).
H2_INSPECT: Final = "h2_insp"
H2_FILE: Final = "h2_file"
H2_DONE: Final = "h2_done"

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA: Final = 0
HEADERS: Final = 1
PRIORITY: Final = 2
RST_STREAM: Final = 3
SETTINGS: Final = 4
PUSH_PROMISE: Final = 5
PING: Final = 6
GOAWAY: Final = 7
WINDOW_UPDATE: Final = 8
CONTINUATION: Final = 9
FRAME_NAMES: Final = ("DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS",
                      "PUSH_PROMISE", "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION")

FLAG_END_STREAM: Final = 0x1
FLAG_ACK: Final = 0x1
FLAG_END_HEADERS: Final = 0x4
FLAG_PADDED: Final = 0x8
FLAG_PRIORITY: Final = 0x20

# Section 7 error codes, as the http2.errorcode keyword names them.
ERROR_NAMES: Final = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
                      "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR",
                      "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR",
                      "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")
# Section 6.5.2 settings (8: RFC 8441), as the http2.settings keyword names them.
SETTINGS_NAMES: Final = {1: "SETTINGS_HEADER_TABLE_SIZE", 2: "SETTINGS_ENABLE_PUSH",
                         3: "SETTINGS_MAX_CONCURRENT_STREAMS",
                         4: "SETTINGS_INITIAL_WINDOW_SIZE", 5: "SETTINGS_MAX_FRAME_SIZE",
                         6: "SETTINGS_MAX_HEADER_LIST_SIZE",
                         8: "SETTINGS_ENABLE_CONNECT_PROTOCOL"}


def error_name(code: int) -> str:
    return ERROR_NAMES[code] if 0 <= code < len(ERROR_NAMES) else str(code)


def eve_name(name: str) -> str:
    """Suricata's EVE spells these names without underscores (NOERROR,
    SETTINGSMAXCONCURRENTSTREAMS)."""
    return name.replace("_", "")


# Section 4.2: SETTINGS_MAX_FRAME_SIZE starts at 2^14.
DEFAULT_MAX_FRAME: Final = 16384
# Non-DATA frames are buffered whole up to this size. Real HEADERS/SETTINGS frames are
# far smaller; peers may announce up to 16 MiB frames, which are skipped (not buffered).
MAX_FRAME_BUFFER: Final = 64 * 1024
# A header block reassembled from HEADERS + CONTINUATION frames (the CONTINUATION flood
# of 2024, CVE-2024-27316 and relatives, sends endless CONTINUATION frames).
MAX_HEADER_BLOCK: Final = 256 * 1024
# Header bytes kept per transaction direction (trailers and repeated blocks included).
MAX_TX_HEADER_BYTES: Final = 256 * 1024
# Streams open at once (Suricata's app-layer.protocols.http2.max-streams default).
MAX_STREAMS: Final = 4096
# Body bytes kept per direction for file.data / http.request_body (as HTTP/1's limits).
BODY_LIMIT: Final = 100 * 1024
# Header and body bytes kept for all the streams of one connection: with MAX_STREAMS
# open, the per-stream limits alone would allow gigabytes.
MAX_FLOW_KEPT: Final = 8 * 1024 * 1024
# Frame facts (types, windows, settings...) kept per transaction direction.
MAX_FRAME_FACTS: Final = 256
# Completed transactions kept for get_tx (as HTTP/1's MAX_TRANSACTIONS_KEPT).
MAX_TRANSACTIONS_KEPT: Final = 256
# Bytes of the upgrade request's HTTP2-Settings header decoded (RFC 7540 3.2.1).
MAX_H1_SETTINGS: Final = 1024

_HDR: Final = 0  # reading a frame header
_PAYLOAD: Final = 1  # buffering a frame's payload
_DATA_PAD: Final = 2  # a padded DATA frame's pad length byte
_DATA: Final = 3  # streaming DATA payload
_SKIP: Final = 4  # discarding bytes (padding, a frame too long to buffer)
_MAGIC: Final = 5  # the client's preface
_DEAD: Final = 6  # nothing more is parsed in this direction


class _Dir:
    """What one direction of a transaction carried."""

    __slots__ = ("body", "body_len", "decoder", "ended", "errors", "file", "frames",
                 "header_bytes", "headers", "priorities", "settings", "size_updates",
                 "windows")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.frames: list[str] = []  # frame type names
        self.errors: list[str] = []  # RST_STREAM / GOAWAY error codes
        self.priorities: list[int] = []  # weights (PRIORITY, HEADERS with PRIORITY)
        self.windows: list[int] = []  # WINDOW_UPDATE increments
        self.size_updates: list[int] = []  # HPACK dynamic table size updates
        self.settings: list[tuple[int, int]] = []
        self.body = bytearray()
        self.body_len = 0  # DATA payload bytes (before decompression)
        self.decoder: _Decoder | None = None
        self.file: HttpFile | None = None
        self.ended = False

    def fact(self, lst: list[Any], v: Any) -> None:
        if len(lst) < MAX_FRAME_FACTS:
            lst.append(v)

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


class Http2Transaction:
    """One stream (request and response), or one frame of stream 0."""

    __slots__ = (
        "anomalies",
        "files",
        "logged",
        "req",
        "reset",
        "resp",
        "stream_id",
        "tx_id",
        "upgraded",
    )

    def __init__(self, tx_id: int, stream_id: int) -> None:
        self.tx_id = tx_id
        self.stream_id = stream_id
        self.req = _Dir()
        self.resp = _Dir()
        self.files: list[HttpFile] = []
        self.logged = False
        self.anomalies: list[str] = []
        self.upgraded = False  # the request came as HTTP/1 (h2c upgrade)
        self.reset = False  # ended by RST_STREAM

    def side(self, to_server: bool) -> _Dir:
        return self.req if to_server else self.resp

    @property
    def done(self) -> bool:
        return self.req.ended and self.resp.ended

    # request fields ---------------------------------------------------------------------

    @property
    def method(self) -> bytes | None:
        return self.req.header(b":method")

    @property
    def path(self) -> bytes | None:
        return self.req.header(b":path")

    @property
    def authority(self) -> bytes | None:
        return self.req.header(b":authority")

    @property
    def uri(self) -> ParsedUri | None:
        p = self.path
        return None if p is None else parse_uri(p, self.method or b"GET")

    @property
    def host_raw(self) -> bytes | None:
        """:authority (Suricata maps it to the Host of HTTP/1), else a host header."""
        a = self.authority
        return a if a is not None else self.req.header(b"host")

    @property
    def hostname(self) -> bytes | None:
        """The host part of the authority: no userinfo (RFC 3986 3.2.1: what precedes
        the last '@'), no port, lower case."""
        a = self.host_raw
        if a is None:
            return None
        a = a.rpartition(b"@")[2]
        return split_host_port(a)[0].lower()

    @property
    def port(self) -> int | None:
        a = self.host_raw
        return None if a is None else split_host_port(a.rpartition(b"@")[2])[1]

    @property
    def response_body(self) -> bytes:
        """The response body kept for detection (the engine scans it when the file's
        content was not kept whole in the FileBudget, as for HTTP/1)."""
        return bytes(self.resp.body)

    @property
    def status(self) -> int | None:
        s = self.resp.header(b":status")
        if s is not None and len(s) == 3 and s.isdigit():
            return int(s)
        return None

    # inspection buffers ----------------------------------------------------------------

    def buffers(self, to_server: bool) -> dict[str, Any]:
        """The sticky buffers of one direction. To the server: the request's (the HTTP/1
        keywords on their HTTP/2 counterparts, as Suricata 7 maps them) and the client's
        frames; to the client: the request's http.* buffers too (as HTTP/1's, for rules
        mixing request and response keywords), the response's, and the server's frames.
        The http2.* frame buffers are strictly per direction."""
        b: dict[str, Any] = {}
        req = self.req
        if req.headers:
            self._request_buffers(b)
        if not to_server and self.resp.headers:
            self._response_buffers(b)
        d = self.side(to_server)
        if d.headers:
            b["http2.header_name"] = [n for n, _v in d.headers]
            b["http2.header"] = [n + b": " + v for n, v in d.headers]
        if d.body:
            b["file.data"] = bytes(d.body)
            if to_server:
                b["http.request_body"] = b["file.data"]
        if d.frames:
            b["http2.frametype"] = [f.encode() for f in d.frames]
        if d.errors:
            b["http2.errorcode"] = [e.encode() for e in d.errors]
        if d.priorities:
            b["http2.priority"] = [str(v).encode() for v in d.priorities]
        if d.windows:
            b["http2.window"] = [str(v).encode() for v in d.windows]
        if d.size_updates:
            b["http2.size_update"] = [str(v).encode() for v in d.size_updates]
        for sid, value in d.settings:
            name = "http2.settings." + SETTINGS_NAMES.get(sid, str(sid))
            b.setdefault(name, []).append(str(value).encode())
        return b

    def _request_buffers(self, b: dict[str, Any]) -> None:
        hdrs = self.req.headers
        method = self.method
        path = self.path
        if method is not None:
            b["http.method"] = method
        if path is not None:
            # Suricata 7 gives HTTP/2 rules the :path as sent for both (no libhtp
            # normalisation on HTTP/2).
            b["http.uri.raw"] = path
            b["http.uri"] = path
        if method is not None or path is not None:
            b["http.request_line"] = (method or b"") + b" " + (path or b"") + b" HTTP/2"
            b["http.protocol"] = b"HTTP/2"
        host = self.hostname
        if host is not None:
            b["http.host"] = host
        hraw = self.host_raw
        if hraw is not None:
            b["http.host.raw"] = hraw
        _header_buffers(b, hdrs, b"cookie", "http.request_header")
        for key, name in (
            ("http.user_agent", b"user-agent"), ("http.referer", b"referer"),
            ("http.accept", b"accept"), ("http.accept_enc", b"accept-encoding"),
            ("http.accept_lang", b"accept-language"),
        ):
            v = self.req.header(name)
            if v is not None:
                b[key] = v

    def _response_buffers(self, b: dict[str, Any]) -> None:
        hdrs = self.resp.headers
        st = self.resp.header(b":status")
        if st is not None:
            b["http.stat_code"] = st
            b["http.response_line"] = b"HTTP/2 " + st
            b["http.protocol"] = b"HTTP/2"
        _header_buffers(b, hdrs, b"set-cookie", "http.response_header")
        for key, name in (("http.server", b"server"), ("http.location", b"location")):
            v = self.resp.header(name)
            if v is not None:
                b[key] = v

    # EVE ---------------------------------------------------------------------------------

    def eve(self) -> dict[str, Any]:
        """The EVE ``http`` object as Suricata 7 logs an HTTP/2 transaction."""
        o: dict[str, Any] = {}
        req, resp = self.req, self.resp
        host = self.hostname
        if host:
            o["hostname"] = _s(host)
        port = self.port
        if port is not None:
            o["http_port"] = port
        if self.path is not None:
            o["url"] = _s(self.path)
        eve_header_fields(o, req.header, resp.header, method=self.method, protocol=None,
                          status=self.status, with_content_range=False)
        if self.stream_id:
            o["length"] = resp.body_len
        o["version"] = "2"
        if req.headers:
            o["request_headers"] = [{"name": _s(n), "value": _s(v)} for n, v in req.headers]
        if resp.headers:
            o["response_headers"] = [{"name": _s(n), "value": _s(v)}
                                     for n, v in resp.headers]
        o["http2"] = {"stream_id": self.stream_id, "request": _eve_side(req, True),
                      "response": _eve_side(resp, False)}
        return o


def _eve_side(d: _Dir, request: bool) -> dict[str, Any]:
    o: dict[str, Any] = {}
    if d.settings:
        o["settings"] = [{"settings_id": eve_name(SETTINGS_NAMES.get(i, str(i))),
                          "settings_value": v} for i, v in d.settings]
    if d.errors:
        o["error_code"] = eve_name(d.errors[-1])
    if request and d.priorities:
        o["priority"] = d.priorities[-1]
    return o


def _s(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _header_buffers(b: dict[str, Any], headers: list[tuple[bytes, bytes]], cookie: bytes,
                    each: str) -> None:
    """http.header ("name: value\\r\\n" per field, pseudo-headers included as Suricata 7
    lists them, cookies only in http.cookie), http.header.raw, http.header_names, the
    per-field multi-buffer, and the single-header buffers."""
    parts = [n + b": " + v + b"\r\n" for n, v in headers if n != cookie]
    b["http.header"] = b"".join(parts)
    b["http.header.raw"] = b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    b[each] = [n + b": " + v for n, v in headers]
    b["http.header_names"] = b"\r\n" + b"".join(n + b"\r\n" for n, _v in headers) + b"\r\n"
    cookies = [v for n, v in headers if n == cookie]
    if cookies:
        # RFC 9113 8.2.3: split cookie fields are joined with "; ".
        b["http.cookie"] = b"; ".join(cookies)
    for key, name in (("http.content_type", b"content-type"),
                      ("http.content_len", b"content-length"),
                      ("http.connection", b"connection")):
        for n, v in headers:
            if n == name:
                b[key] = v
                break


class _Side:
    """Frame reading state of one direction."""

    __slots__ = (
        "block",
        "block_flags",
        "block_kind",
        "block_promised",
        "block_stream",
        "block_tx",
        "buf",
        "data_flags",
        "data_stream",
        "flags",
        "hpack",
        "length",
        "magic",
        "max_frame",
        "remaining",
        "skip_after",
        "state",
        "stream",
        "type",
    )

    def __init__(self, client: bool) -> None:
        self.state = _MAGIC if client else _HDR
        self.magic = 0  # preface bytes matched so far
        self.buf = bytearray()
        self.length = 0
        self.type = 0
        self.flags = 0
        self.stream = 0
        self.remaining = 0  # payload bytes of the current frame still to come
        self.skip_after = 0  # padding to discard after a DATA payload
        self.data_stream = 0
        self.data_flags = 0
        self.hpack = Decoder()
        # The receiver's SETTINGS_MAX_FRAME_SIZE (what this side may send).
        self.max_frame = DEFAULT_MAX_FRAME
        # A header block waiting for CONTINUATION frames.
        self.block: bytearray | None = None
        self.block_tx: Http2Transaction | None = None
        self.block_stream = 0
        self.block_kind = HEADERS
        self.block_flags = 0
        self.block_promised = 0

    def memuse(self) -> int:
        return len(self.buf) + len(self.block or b"") + self.hpack.memuse()


class Http2Parser:
    """HTTP/2 for one flow; see the module docstring."""

    app_proto = "http2"

    def __init__(self, first_tx_id: int = 0) -> None:
        self._cli = _Side(True)
        self._srv = _Side(False)
        self.transactions: list[Http2Transaction] = []
        self._streams: dict[int, Http2Transaction] = {}
        self._next_tx_id = first_tx_id
        self._max_stream = (0, 0)  # highest stream id opened by (client, server)
        self._tx_bytes = 0
        # Transactions completed by the last call: their bodies are freed at the next
        # one (the engine reads their buffers between the two).
        self._done: list[Http2Transaction] = []
        self.file_budget: FileBudget | None = None

    # public API -------------------------------------------------------------------------

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]:
        out: list[AppEvent] = []
        side = self._cli if to_server else self._srv
        if not data or side.state == _DEAD:
            return out
        if self._done:
            self._release_done()
        try:
            self._feed(side, data, to_server, out)
        except Exception:  # principle 7: a parser bug must not take the verdict down
            side.state = _DEAD
            side.buf.clear()
            side.block = None
            out.append(AppEvent(ANOMALY, to_server, "invalid_frame_data"))
        self._prune()
        return out

    def close(self) -> list[AppEvent]:
        """Flow end: open files are truncated, unfinished transactions logged."""
        out: list[AppEvent] = []
        try:
            for tx in list(self._streams.values()):
                for to_server in (True, False):
                    d = tx.side(to_server)
                    self._close_file(tx, d, out, truncated=not d.ended)
                self._finish(tx, out)
            self._streams.clear()
        except Exception:
            out.append(AppEvent(ANOMALY, False, "invalid_frame_data"))
        return out

    def memuse(self) -> int:
        return self._cli.memuse() + self._srv.memuse() + self._tx_bytes

    def release_files(self) -> None:
        for tx in self.transactions:
            for f in tx.files:
                f.release()

    def get_tx(self, tx_id: int) -> Http2Transaction | None:
        for tx in self.transactions:
            if tx.tx_id == tx_id:
                return tx
        return None

    def upgrade(self, method: bytes, uri: bytes, headers: list[list[bytes]],
                out: list[AppEvent]) -> Http2Transaction:
        """An h2c upgrade (RFC 7540 3.2): the HTTP/1 request becomes stream 1's request
        (its body, if any, stays with the HTTP/1 parser), and its HTTP2-Settings header
        the client's first SETTINGS."""
        tx = self._stream_tx(1, True, out)
        assert tx is not None  # the first stream always fits
        tx.upgraded = True
        hdrs: list[tuple[bytes, bytes]] = [(b":method", method), (b":path", uri)]
        for n, v in headers:
            low = n.lower()
            if low == b"host":
                hdrs.insert(0, (b":authority", v))
            else:
                hdrs.append((low, v))
        tx.req.headers = hdrs
        tx.req.header_bytes = sum(len(n) + len(v) for n, v in hdrs)
        self._tx_bytes += tx.req.header_bytes
        tx.req.ended = True
        settings = next((v for n, v in headers if n.lower() == b"http2-settings"), None)
        if settings is not None:
            self._h1_settings(settings, out)
        return tx

    # frames -----------------------------------------------------------------------------

    def _feed(self, side: _Side, data: bytes, to_server: bool, out: list[AppEvent]) -> None:
        pos = 0
        n = len(data)
        while pos < n and side.state != _DEAD:
            st = side.state
            if st == _MAGIC:
                take = min(len(PREFACE) - side.magic, n - pos)
                if data[pos:pos + take] != PREFACE[side.magic:side.magic + take]:
                    out.append(AppEvent(ANOMALY, to_server, "invalid_client_magic"))
                    side.state = _DEAD
                    return
                side.magic += take
                pos += take
                if side.magic == len(PREFACE):
                    side.state = _HDR
            elif st == _HDR:
                take = min(9 - len(side.buf), n - pos)
                side.buf += data[pos:pos + take]
                pos += take
                if len(side.buf) == 9:
                    self._header(side, to_server, out)
            elif st == _PAYLOAD:
                take = min(side.remaining, n - pos)
                side.buf += data[pos:pos + take]
                side.remaining -= take
                pos += take
                if not side.remaining:
                    payload = bytes(side.buf)
                    side.buf.clear()
                    side.state = _HDR
                    self._frame(side, to_server, payload, out)
            elif st == _DATA_PAD:
                pad = data[pos]
                pos += 1
                side.remaining -= 1
                if pad > side.remaining:
                    # Section 6.1: padding as long as the payload is a PROTOCOL_ERROR.
                    out.append(AppEvent(ANOMALY, to_server, "invalid_frame_length"))
                    pad = side.remaining
                side.skip_after = pad
                side.remaining -= pad
                self._data_start(side, to_server)
                if not side.remaining:
                    self._data_end(side, to_server, out)
            elif st == _DATA:
                take = min(side.remaining, n - pos)
                if take:
                    self._data(side, to_server, data[pos:pos + take], out)
                side.remaining -= take
                pos += take
                if not side.remaining:
                    self._data_end(side, to_server, out)
            else:  # _SKIP
                take = min(side.remaining, n - pos)
                side.remaining -= take
                pos += take
                if not side.remaining:
                    side.state = _HDR

    def _header(self, side: _Side, to_server: bool, out: list[AppEvent]) -> None:
        h = side.buf
        length = (h[0] << 16) | (h[1] << 8) | h[2]
        side.type = ftype = h[3]
        side.flags = h[4]
        side.stream = int.from_bytes(h[5:9], "big") & 0x7FFFFFFF
        side.length = length
        side.remaining = length
        side.buf.clear()
        if length > side.max_frame:
            # Section 4.2: larger than the receiver allows (a FRAME_SIZE_ERROR). Still
            # read: evasion would otherwise be one oversized frame away.
            out.append(AppEvent(ANOMALY, to_server, "long_frame_data"))
        if side.block is not None and (ftype != CONTINUATION
                                       or side.stream != side.block_stream):
            # Section 6.10: only CONTINUATION frames of that stream may follow.
            out.append(AppEvent(ANOMALY, to_server, "invalid_frame_header"))
            side.block = None
        if ftype == DATA:
            side.data_stream = side.stream
            side.data_flags = side.flags
            side.skip_after = 0
            if side.flags & FLAG_PADDED:
                if not length:
                    out.append(AppEvent(ANOMALY, to_server, "invalid_frame_length"))
                    self._data_start(side, to_server)
                    self._data_end(side, to_server, out)
                    return
                side.state = _DATA_PAD
                return
            self._data_start(side, to_server)
            if not length:
                self._data_end(side, to_server, out)
            return
        if length > MAX_FRAME_BUFFER:
            if side.length <= side.max_frame:
                out.append(AppEvent(ANOMALY, to_server, "long_frame_data"))
            if ftype in (HEADERS, CONTINUATION, PUSH_PROMISE):
                side.block = None  # the header block is lost (and the HPACK context)
            side.state = _SKIP
            return
        if not length:
            side.state = _HDR
            self._frame(side, to_server, b"", out)
            return
        side.state = _PAYLOAD

    def _frame(self, side: _Side, to_server: bool, p: bytes, out: list[AppEvent]) -> None:
        ftype, flags, sid = side.type, side.flags, side.stream
        if ftype > CONTINUATION:
            return  # section 5.5: unknown frame types are ignored
        if sid == 0 and ftype in (HEADERS, PRIORITY, RST_STREAM, PUSH_PROMISE,
                                  CONTINUATION):
            out.append(AppEvent(ANOMALY, to_server, "invalid_frame_header"))
            return
        if sid != 0 and ftype in (SETTINGS, PING, GOAWAY):
            out.append(AppEvent(ANOMALY, to_server, "invalid_frame_header"))
            return
        if ftype == CONTINUATION:
            self._continuation(side, to_server, p, flags, out)
            return
        if sid == 0:
            tx = self._global_tx()
        else:
            opt = self._stream_tx(sid, ftype == HEADERS and to_server, out,
                                  fresh=ftype == HEADERS)
            if opt is None:
                if ftype in (HEADERS, PUSH_PROMISE):
                    # No transaction for it, but its block must still be decoded: the
                    # HPACK dynamic table is the connection's.
                    self._header_block_frame(side, None, sid, ftype, to_server, p, flags,
                                             out)
                return
            tx = opt
        d = tx.side(to_server)
        d.fact(d.frames, FRAME_NAMES[ftype])
        if ftype in (HEADERS, PUSH_PROMISE):
            self._header_block_frame(side, tx, sid, ftype, to_server, p, flags, out)
            return
        if ftype == SETTINGS:
            self._settings(side, tx, to_server, p, flags, out)
        elif ftype == WINDOW_UPDATE:
            if len(p) != 4:
                out.append(AppEvent(ANOMALY, to_server, "invalid_frame_length"))
            else:
                d.fact(d.windows, int.from_bytes(p, "big") & 0x7FFFFFFF)
        elif ftype == PRIORITY:
            if len(p) != 5:
                out.append(AppEvent(ANOMALY, to_server, "invalid_frame_length"))
            else:
                d.fact(d.priorities, p[4])
        elif ftype == RST_STREAM:
            if len(p) != 4:
                out.append(AppEvent(ANOMALY, to_server, "invalid_frame_length"))
            else:
                d.fact(d.errors, error_name(int.from_bytes(p, "big")))
        elif ftype == PING:
            if len(p) != 8:
                out.append(AppEvent(ANOMALY, to_server, "invalid_frame_length"))
        elif ftype == GOAWAY:
            if len(p) < 8:
                out.append(AppEvent(ANOMALY, to_server, "invalid_frame_length"))
            else:
                d.fact(d.errors, error_name(int.from_bytes(p[4:8], "big")))
        out.append(AppEvent(H2_INSPECT, to_server, "", tx.tx_id, {"tx": tx}))
        if sid == 0:
            tx.req.ended = tx.resp.ended = True
            self._finish(tx, out)
        elif ftype == RST_STREAM:
            # The stream is over for both sides (section 6.4).
            tx.reset = True
            for ts in (True, False):
                dd = tx.side(ts)
                self._close_file(tx, dd, out, truncated=not dd.ended)
                dd.ended = True
            self._finish(tx, out)

    # transactions -----------------------------------------------------------------------

    def _new_tx(self, stream_id: int) -> Http2Transaction:
        tx = Http2Transaction(self._next_tx_id, stream_id)
        self._next_tx_id += 1
        self.transactions.append(tx)
        return tx

    def _global_tx(self) -> Http2Transaction:
        return self._new_tx(0)

    def _stream_tx(self, sid: int, opens: bool, out: list[AppEvent],
                   fresh: bool = True) -> Http2Transaction | None:
        tx = self._streams.get(sid)
        if tx is not None:
            return tx
        for old in reversed(self.transactions):
            if old.stream_id == sid:
                # A closed stream's late frames (the server answering a request the
                # client reset, WINDOW_UPDATEs after the end): its transaction takes
                # them; HEADERS on a stream that ended normally is a reuse.
                if not fresh or old.reset:
                    return old
                break
        if not fresh:
            # WINDOW_UPDATE, PRIORITY, RST_STREAM... for a stream not open (any more):
            # late frames of a closed stream, or PRIORITY for an idle one (legal):
            # nothing to attach them to.
            return None
        if len(self._streams) >= MAX_STREAMS:
            out.append(AppEvent(ANOMALY, opens, "too_many_streams"))
            return None
        client = sid & 1 == 1
        hi = self._max_stream[0 if client else 1]
        if sid <= hi:
            out.append(AppEvent(ANOMALY, opens, "stream_id_reuse"))
        self._max_stream = ((max(hi, sid), self._max_stream[1]) if client
                            else (self._max_stream[0], max(hi, sid)))
        tx = self._new_tx(sid)
        self._streams[sid] = tx
        return tx

    def _finish(self, tx: Http2Transaction, out: list[AppEvent]) -> None:
        if tx.logged:
            return
        tx.logged = True
        if tx.stream_id:
            self._streams.pop(tx.stream_id, None)
            self._done.append(tx)
        out.append(AppEvent(H2_DONE, False, "", tx.tx_id, {"tx": tx}))

    def _end_side(self, tx: Http2Transaction, to_server: bool, out: list[AppEvent]) -> None:
        d = tx.side(to_server)
        if d.ended:
            return
        d.ended = True
        self._close_file(tx, d, out, truncated=False)
        if tx.done:
            self._finish(tx, out)

    def _release_done(self) -> None:
        for tx in self._done:
            for d in (tx.req, tx.resp):
                self._tx_bytes -= len(d.body)
                d.body = bytearray()
                d.decoder = None
        self._done.clear()

    def _prune(self) -> None:
        txs = self.transactions
        if len(txs) <= MAX_TRANSACTIONS_KEPT:
            return
        keep: list[Http2Transaction] = []
        excess = len(txs) - MAX_TRANSACTIONS_KEPT
        for tx in txs:
            if excess and tx.logged:
                excess -= 1
                self._tx_bytes -= (tx.req.header_bytes + tx.resp.header_bytes
                                   + len(tx.req.body) + len(tx.resp.body))
                for f in tx.files:
                    f.release()
                continue
            keep.append(tx)
        self.transactions = keep

    # header blocks ----------------------------------------------------------------------

    def _header_block_frame(self, side: _Side, tx: Http2Transaction | None, sid: int,
                            ftype: int, to_server: bool, p: bytes, flags: int,
                            out: list[AppEvent]) -> None:
        """HEADERS (section 6.2) or PUSH_PROMISE (6.6): padding, the priority fields or
        the promised stream id, then the first fragment of a header block."""
        pos, end = 0, len(p)
        if flags & FLAG_PADDED:
            if not p or p[0] >= len(p):
                out.append(AppEvent(ANOMALY, to_server, "invalid_frame_length"))
                return
            end -= p[0]
            pos = 1
        promised = 0
        if ftype == PUSH_PROMISE:
            if end - pos < 4:
                out.append(AppEvent(ANOMALY, to_server, "invalid_frame_length"))
                return
            promised = int.from_bytes(p[pos:pos + 4], "big") & 0x7FFFFFFF
            pos += 4
        elif flags & FLAG_PRIORITY:
            if end - pos < 5:
                out.append(AppEvent(ANOMALY, to_server, "invalid_frame_length"))
                return
            if tx is not None:
                d = tx.side(to_server)
                d.fact(d.priorities, p[pos + 4])
            pos += 5
        side.block = bytearray(p[pos:end])
        side.block_tx = tx
        side.block_stream = sid
        side.block_kind = ftype
        side.block_flags = flags
        side.block_promised = promised
        if flags & FLAG_END_HEADERS:
            self._block_end(side, to_server, out)

    def _continuation(self, side: _Side, to_server: bool, p: bytes, flags: int,
                      out: list[AppEvent]) -> None:
        if side.block is None:
            # Section 6.10: a CONTINUATION must follow a header block frame.
            out.append(AppEvent(ANOMALY, to_server, "invalid_frame_header"))
            return
        tx = side.block_tx
        if tx is not None:
            tx.side(to_server).fact(tx.side(to_server).frames, "CONTINUATION")
        if len(side.block) + len(p) > MAX_HEADER_BLOCK:
            out.append(AppEvent(ANOMALY, to_server, "reassembly_limit_reached"))
            side.block = None
            return
        side.block += p
        if flags & FLAG_END_HEADERS:
            self._block_end(side, to_server, out)

    def _block_end(self, side: _Side, to_server: bool, out: list[AppEvent]) -> None:
        block = bytes(side.block or b"")
        side.block = None
        dec = side.hpack.decode(block)
        tx = side.block_tx
        side.block_tx = None
        if side.block_kind == PUSH_PROMISE:
            # The promised request (section 8.4): a transaction of its own whose request
            # the server wrote; its response comes on the promised stream.
            if tx is not None:
                self._record_block(tx.side(to_server), dec, to_server, tx, out, store=False)
            if side.block_promised == 0 or side.block_promised & 1:
                out.append(AppEvent(ANOMALY, to_server, "invalid_frame_data"))
                return
            ptx = self._stream_tx(side.block_promised, False, out)
            if ptx is None:
                return
            self._record_block(ptx.req, dec, to_server, ptx, out)
            ptx.req.ended = True
            out.append(AppEvent(H2_INSPECT, to_server, "", ptx.tx_id, {"tx": ptx}))
            return
        if tx is None:
            return
        d = tx.side(to_server)
        self._record_block(d, dec, to_server, tx, out)
        if to_server and d is tx.req:
            self._check_authority(tx, out)
        if not to_server and d.decoder is None:
            ce = d.header(b"content-encoding")
            if ce is not None:
                encs, _unknown = _content_codings(ce)
                if encs:
                    d.decoder = _Decoder(encs)
        out.append(AppEvent(H2_INSPECT, to_server, "", tx.tx_id,
                            {"tx": tx, "status": not to_server}))
        if side.block_flags & FLAG_END_STREAM:
            self._end_side(tx, to_server, out)

    def _record_block(self, d: _Dir, dec: DecodedBlock, to_server: bool,
                      tx: Http2Transaction, out: list[AppEvent], store: bool = True) -> None:
        for size in dec.size_updates:
            d.fact(d.size_updates, size)
        if dec.error is not None:
            self._anom(tx, dec.error, to_server, out)
        if dec.dropped:
            self._anom(tx, "reassembly_limit_reached", to_server, out)
        if not store:
            return
        for n, v in dec.headers:
            size = len(n) + len(v)
            if (d.header_bytes + size > MAX_TX_HEADER_BYTES
                    or self._tx_bytes + size > MAX_FLOW_KEPT):
                self._anom(tx, "reassembly_limit_reached", to_server, out)
                break
            d.header_bytes += size
            self._tx_bytes += size
            d.headers.append((n, v))

    def _check_authority(self, tx: Http2Transaction, out: list[AppEvent]) -> None:
        auth = tx.authority
        if auth is None:
            return
        if b"@" in auth:
            # RFC 9113 8.3.1: ":authority MUST NOT include the deprecated userinfo".
            self._anom(tx, "userinfo_in_uri", True, out)
        host = tx.req.header(b"host")
        if host is not None and host.lower() != auth.rpartition(b"@")[2].lower():
            self._anom(tx, "authority_host_mismatch", True, out)

    def _anom(self, tx: Http2Transaction | None, name: str, to_server: bool,
              out: list[AppEvent]) -> None:
        tx_id = -1
        if tx is not None:
            tx_id = tx.tx_id
            if len(tx.anomalies) < 32:
                tx.anomalies.append(name)
        out.append(AppEvent(ANOMALY, to_server, name, tx_id))

    # settings ---------------------------------------------------------------------------

    def _settings(self, side: _Side, tx: Http2Transaction, to_server: bool, p: bytes,
                  flags: int, out: list[AppEvent]) -> None:
        if flags & FLAG_ACK:
            if p:
                out.append(AppEvent(ANOMALY, to_server, "invalid_frame_length"))
            return
        if len(p) % 6:
            out.append(AppEvent(ANOMALY, to_server, "invalid_frame_length"))
        d = tx.side(to_server)
        for i in range(0, len(p) - len(p) % 6, 6):
            ident = (p[i] << 8) | p[i + 1]
            value = int.from_bytes(p[i + 2:i + 6], "big")
            d.fact(d.settings, (ident, value))
            self._apply_setting(to_server, ident, value, out)

    def _apply_setting(self, to_server: bool, ident: int, value: int,
                       out: list[AppEvent]) -> None:
        # A setting constrains what the *other* side sends (section 6.5).
        other = self._srv if to_server else self._cli
        if ident == 5:
            if not 16384 <= value <= 16777215:
                out.append(AppEvent(ANOMALY, to_server, "invalid_frame_data"))
            else:
                other.max_frame = value
        # SETTINGS_HEADER_TABLE_SIZE bounds the table the other side's encoder may use;
        # the encoder announces the size it picks with a size update (RFC 7541 6.3),
        # which the decoder follows (hpack.py clamps it).

    def _h1_settings(self, value: bytes, out: list[AppEvent]) -> None:
        """The upgrade request's HTTP2-Settings: base64url SETTINGS payload (RFC 7540
        3.2.1), recorded as the client's first SETTINGS (a stream 0 transaction)."""
        v = value.strip()[:MAX_H1_SETTINGS]
        try:
            raw = base64.urlsafe_b64decode(v + b"=" * (-len(v) % 4))
        except (binascii.Error, ValueError):
            out.append(AppEvent(ANOMALY, True, "invalid_http1_settings"))
            return
        if len(raw) % 6:
            out.append(AppEvent(ANOMALY, True, "invalid_http1_settings"))
            return
        tx = self._global_tx()
        tx.req.fact(tx.req.frames, "SETTINGS")
        for i in range(0, len(raw), 6):
            ident = (raw[i] << 8) | raw[i + 1]
            val = int.from_bytes(raw[i + 2:i + 6], "big")
            tx.req.fact(tx.req.settings, (ident, val))
            self._apply_setting(True, ident, val, out)
        out.append(AppEvent(H2_INSPECT, True, "", tx.tx_id, {"tx": tx}))
        tx.req.ended = tx.resp.ended = True
        self._finish(tx, out)

    # DATA -------------------------------------------------------------------------------

    def _data_start(self, side: _Side, to_server: bool) -> None:
        side.state = _DATA

    def _data(self, side: _Side, to_server: bool, chunk: bytes, out: list[AppEvent]) -> None:
        tx = self._streams.get(side.data_stream)
        if tx is None:
            return
        d = tx.side(to_server)
        if d.ended:
            return  # DATA after END_STREAM (section 5.1: STREAM_CLOSED)
        d.body_len += len(chunk)
        if d.decoder is not None:
            ev: list[str] = []
            chunk = d.decoder.decode(chunk, ev)
            for name in ev:
                self._anom(tx, "failed_decompression", to_server, out)
                if name == "COMPRESSION_BOMB" and d.file is not None:
                    self._close_file(tx, d, out, truncated=True)
        room = min(BODY_LIMIT - len(d.body), MAX_FLOW_KEPT - self._tx_bytes)
        if room > 0 and chunk:
            before = len(d.body)
            d.body += chunk[:room]
            self._tx_bytes += len(d.body) - before
            if len(d.body) >= BODY_LIMIT > before:
                # The body buffers are as full as they get: inspect them now rather
                # than at the end of a long download.
                out.append(AppEvent(H2_INSPECT, to_server, "", tx.tx_id, {"tx": tx}))
        if chunk and d.file is None and not any(f.to_server == to_server
                                                for f in tx.files):
            self._open_file(tx, d, to_server)
        if d.file is not None:
            d.file.update(chunk)

    def _data_end(self, side: _Side, to_server: bool, out: list[AppEvent]) -> None:
        side.state = _SKIP if side.skip_after else _HDR
        side.remaining = side.skip_after
        side.skip_after = 0
        tx = self._streams.get(side.data_stream)
        if tx is None:
            if side.data_stream == 0:
                out.append(AppEvent(ANOMALY, to_server, "invalid_frame_header"))
            return
        d = tx.side(to_server)
        d.fact(d.frames, "DATA")
        if side.data_flags & FLAG_END_STREAM:
            out.append(AppEvent(H2_INSPECT, to_server, "", tx.tx_id, {"tx": tx}))
            self._end_side(tx, to_server, out)

    def _open_file(self, tx: Http2Transaction, d: _Dir, to_server: bool) -> None:
        u = tx.uri
        name = normalize_path(u.path) if u is not None else b""
        f = HttpFile(name, to_server, tx.tx_id)
        if self.file_budget is not None and not to_server:
            f.data = bytearray()  # a download: kept for the scanners
            f.budget = self.file_budget
        d.file = f
        tx.files.append(f)

    def _close_file(self, tx: Http2Transaction, d: _Dir, out: list[AppEvent],
                    truncated: bool) -> None:
        f = d.file
        d.file = None
        if f is None:
            return
        f.state = "TRUNCATED" if truncated else "CLOSED"
        out.append(AppEvent(H2_FILE, f.to_server, "", tx.tx_id, {"file": f, "tx": tx}))
