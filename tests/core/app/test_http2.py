"""HTTP/2: HPACK (static/dynamic tables, Huffman, bounds), frames in any chunking, streams as
transactions, files, hostile input; http2.* keywords, the HTTP/1 sticky buffers on HTTP/2,
h2c upgrade and the EVE records through the engine."""

from __future__ import annotations

import gzip
import hashlib
import struct
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.app import ANOMALY, AppEvent, new_parser
from appliance.core.app.hpack import (
    MAX_HEADER_LIST,
    MAX_TABLE_SIZE,
    Decoder,
    canonical_codes,
    code_lengths,
    huffman_decode,
)
from appliance.core.app.http import FileBudget
from appliance.core.app.http2 import (
    H2_DONE,
    H2_FILE,
    H2_INSPECT,
    MAX_FRAME_BUFFER,
    MAX_HEADER_BLOCK,
    MAX_STREAMS,
    PREFACE,
    Http2Parser,
    Http2Transaction,
)
from tests.core.app.engine_run import alert_sids, engine_run

# --- builders ------------------------------------------------------------------------------


def frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack("!I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(
        "!I", stream) + payload


def hint(value: int, prefix: int, first: int = 0) -> bytes:
    """RFC 7541 5.1 integer with an N-bit prefix (``first``: the bits above it)."""
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes([first | value])
    out = bytearray([first | mask])
    value -= mask
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hstr(s: bytes) -> bytes:
    return hint(len(s), 7) + s


def lit(name: bytes, value: bytes, index: bool = False) -> bytes:
    """A literal field with a literal name (6.2.1 when ``index``, else 6.2.2)."""
    return (b"\x40" if index else b"\x00") + hstr(name) + hstr(value)


def block(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(lit(n, v) for n, v in headers)


REQ = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/files/evil.exe?x=1"),
       (b":authority", b"www.example.com:8080"), (b"user-agent", b"h2-test/1.0"),
       (b"cookie", b"a=1"), (b"cookie", b"b=2")]
RESP = [(b":status", b"200"), (b"content-type", b"application/octet-stream"),
        (b"server", b"h2srv")]
BODY = b"MZ" + bytes(range(256)) * 40

CLIENT = (PREFACE + frame(4, 0, 0, struct.pack("!HI", 1, 4096) + struct.pack("!HI", 4, 65535))
          + frame(1, 0x4 | 0x1, 1, block(REQ)) + frame(8, 0, 0, struct.pack("!I", 34634))
          + frame(4, 1, 0, b"") + frame(7, 0, 0, struct.pack("!II", 1, 1)))
SERVER = (frame(4, 0, 0, struct.pack("!HI", 3, 100)) + frame(4, 1, 0, b"")
          + frame(1, 0x4, 1, block(RESP)) + frame(0, 0, 1, BODY[:1000])
          + frame(0, 0x8, 1, bytes([5]) + BODY[1000:3000] + b"\0" * 5)
          + frame(0, 0x1, 1, BODY[3000:]))


def feed_chunks(p: Http2Parser, data: bytes, to_server: bool, size: int) -> list[AppEvent]:
    out: list[AppEvent] = []
    for i in range(0, len(data), size):
        out += p.feed(data[i:i + size], to_server)
    return out


def run(client: bytes, server: bytes, size: int = 1 << 20,
        parser: Http2Parser | None = None) -> tuple[Http2Parser, list[AppEvent]]:
    p = parser or Http2Parser()
    ev = feed_chunks(p, client, True, size)
    ev += feed_chunks(p, server, False, size)
    ev += p.close()
    return p, ev


def anomalies(events: list[AppEvent]) -> list[str]:
    return [e.name for e in events if e.kind == ANOMALY]


def stream_tx(p: Http2Parser, sid: int) -> Http2Transaction:
    return next(tx for tx in p.transactions if tx.stream_id == sid)


# --- HPACK ---------------------------------------------------------------------------------


def test_huffman_code_is_the_rfcs() -> None:
    lengths = code_lengths()
    assert len(lengths) == 257
    assert sum(Fraction(1, 2 ** n) for n in lengths) == 1  # a complete prefix code
    codes = canonical_codes(lengths)
    # (symbol, code as hex, length) as printed in RFC 7541 Appendix B
    for sym, code, ln in ((0, 0x1FF8, 13), (1, 0x7FFFD8, 23), (10, 0x3FFFFFFC, 30),
                          (32, 0x14, 6), (48, 0x0, 5), (88, 0xFC, 8), (92, 0x7FFF0, 19),
                          (127, 0xFFFFFFC, 28), (128, 0xFFFE6, 20), (203, 0x7FFFFDE, 27),
                          (220, 0xFFFFFFD, 28), (255, 0x3FFFFEE, 26), (256, 0x3FFFFFFF, 30)):
        assert (codes[sym], lengths[sym]) == (code, ln), sym


def test_huffman_rfc_examples_and_invalid_padding() -> None:
    # RFC 7541 C.4.1-C.4.3
    assert huffman_decode(bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff")) == b"www.example.com"
    assert huffman_decode(bytes.fromhex("a8eb10649cbf")) == b"no-cache"
    assert huffman_decode(bytes.fromhex("25a849e95bb8e8b4bf")) == b"custom-value"
    assert huffman_decode(b"") == b""
    # 5.2: padding longer than 7 bits, padding of zeros, and EOS itself are errors
    assert huffman_decode(bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ffff")) is None
    assert huffman_decode(b"\x00") is None  # "0" (5 bits) then 000 padding
    assert huffman_decode(b"\xff\xff\xff\xff") is None  # EOS (30 ones)
    assert huffman_decode(b"\x07") == b"0"  # "00000" + "111" padding


def test_rfc_request_sequence_updates_the_dynamic_table() -> None:
    d = Decoder()
    # RFC 7541 C.3.1 - C.3.3 (no Huffman), then C.4.3 (Huffman) on a fresh decoder
    b1 = d.decode(bytes.fromhex("828684410f7777772e6578616d706c652e636f6d"))
    assert b1.headers == [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                          (b":authority", b"www.example.com")]
    assert d.table_size == 57
    b2 = d.decode(bytes.fromhex("828684be58086e6f2d6361636865"))
    assert b2.headers[-2:] == [(b":authority", b"www.example.com"),
                               (b"cache-control", b"no-cache")]
    assert d.table_size == 110
    b3 = d.decode(bytes.fromhex("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"))
    assert b3.headers == [(b":method", b"GET"), (b":scheme", b"https"),
                          (b":path", b"/index.html"), (b":authority", b"www.example.com"),
                          (b"custom-key", b"custom-value")]
    assert d.table_size == 164
    h = Decoder().decode(bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff"))
    assert h.headers[-1] == (b":authority", b"www.example.com") and h.error is None


def test_dynamic_table_evicts_and_size_updates_are_bounded() -> None:
    d = Decoder(max_size=100)
    d.decode(lit(b"aaaa", b"1" * 20, index=True))  # 56 bytes
    d.decode(lit(b"bbbb", b"2" * 20, index=True))  # 56: evicts the first
    assert d.table_size == 56
    assert d.decode(b"\xbe").headers == [(b"bbbb", b"2" * 20)]  # index 62: the newest
    assert d.decode(b"\xbf").error == "invalid_header"  # 63: evicted
    # a size update to 0 empties the table; one above the cap is clamped
    out = d.decode(hint(0, 5, 0x20) + hint(1 << 30, 5, 0x20))
    assert out.size_updates == [0, 1 << 30]
    assert d.table_size == 0 and d.max_size == MAX_TABLE_SIZE
    # an entry larger than the whole table is not added (RFC 7541 4.4)
    d2 = Decoder(max_size=64)
    d2.decode(lit(b"x", b"y" * 100, index=True))
    assert d2.table_size == 0


def test_hpack_hostile_blocks() -> None:
    d = Decoder()
    assert d.decode(b"\x80").error == "invalid_header"  # index 0
    assert d.decode(b"\xff\x80").error == "invalid_header"  # integer cut short
    assert d.decode(b"\xff" + b"\xff" * 8 + b"\x01").error == "header_integer_overflow"
    assert d.decode(b"\x00\x05ab").error == "invalid_header"  # string past the block
    assert d.decode(b"\x00\x81\x00\x00").error == "invalid_header"  # bad Huffman name
    big = lit(b"x-big", b"v" * 60_000)
    out = d.decode(big * 6)
    assert out.dropped and sum(len(n) + len(v) + 32 for n, v in out.headers) <= MAX_HEADER_LIST


# --- frames and streams --------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 7, 100, 1 << 20])
def test_exchange_in_any_chunking(size: int) -> None:
    p, ev = run(CLIENT, SERVER, size)
    assert not anomalies(ev)
    tx = stream_tx(p, 1)
    assert tx.method == b"GET" and tx.hostname == b"www.example.com" and tx.port == 8080
    assert tx.status == 200 and tx.resp.body_len == len(BODY)
    f = tx.files[0]
    assert (f.state, f.size, f.filename) == ("CLOSED", len(BODY), b"/files/evil.exe")
    assert f.sha256 == hashlib.sha256(BODY).hexdigest()
    assert [e.kind for e in ev].count(H2_DONE) == len(p.transactions)
    assert [e.kind for e in ev].count(H2_FILE) == 1
    # stream 0: one transaction per frame, as Suricata's global transactions
    g = [t for t in p.transactions if t.stream_id == 0]
    assert [(t.req.frames, t.resp.frames) for t in g] == [
        (["SETTINGS"], []), (["WINDOW_UPDATE"], []), (["SETTINGS"], []), (["GOAWAY"], []),
        ([], ["SETTINGS"]), ([], ["SETTINGS"])]


def test_buffers_per_direction() -> None:
    p, _ = run(CLIENT, SERVER)
    tx = stream_tx(p, 1)
    ts = tx.buffers(True)
    assert ts["http.method"] == b"GET"
    assert ts["http.uri"] == b"/files/evil.exe?x=1"
    assert ts["http.host"] == b"www.example.com"
    assert ts["http.host.raw"] == b"www.example.com:8080"
    assert ts["http.user_agent"] == b"h2-test/1.0"
    assert ts["http.cookie"] == b"a=1; b=2"
    assert b":authority: www.example.com:8080" in ts["http.request_header"]
    assert b"cookie" not in ts["http.header"] and b":method: GET\r\n" in ts["http.header"]
    assert ts["http2.header_name"][:2] == [b":method", b":scheme"]
    assert ts["http2.frametype"] == [b"HEADERS"]
    assert "http.stat_code" not in ts and "file.data" not in ts
    tc = tx.buffers(False)
    assert tc["http.stat_code"] == b"200" and tc["http.server"] == b"h2srv"
    assert tc["file.data"] == BODY and tc["http.method"] == b"GET"
    assert tc["http2.frametype"] == [b"HEADERS", b"DATA", b"DATA", b"DATA"]
    assert b"content-type: application/octet-stream\r\n" in tc["http.header"]
    g = [t for t in p.transactions if t.stream_id == 0]
    assert g[0].buffers(True)["http2.settings.SETTINGS_INITIAL_WINDOW_SIZE"] == [b"65535"]
    assert g[1].buffers(True)["http2.window"] == [b"34634"]
    assert g[3].buffers(True)["http2.errorcode"] == [b"PROTOCOL_ERROR"]
    assert "http2.window" not in g[1].buffers(False)


def test_eve_record_is_schema_valid(eve_validator: Any) -> None:
    p, _ = run(CLIENT, SERVER)
    for tx in p.transactions:
        rec = {"timestamp": "2024-01-01T00:00:00.000000+0000", "event_type": "http",
               "src_ip": "10.0.0.1", "dest_ip": "10.0.0.2", "proto": "TCP",
               "http": tx.eve()}
        errors = list(eve_validator.iter_errors(rec))
        assert not errors, errors[0].message
    e = stream_tx(p, 1).eve()
    assert e["version"] == "2" and e["http2"]["stream_id"] == 1 and e["length"] == len(BODY)
    assert e["request_headers"][0] == {"name": ":method", "value": "GET"}
    g = [t for t in p.transactions if t.stream_id == 0]
    assert g[4].eve()["http2"]["response"]["settings"] == [
        {"settings_id": "SETTINGSMAXCONCURRENTSTREAMS", "settings_value": 100}]
    assert g[3].eve()["http2"]["request"]["error_code"] == "PROTOCOLERROR"


def test_continuation_priority_padding_and_trailers() -> None:
    blk = block(REQ)
    hdr = frame(1, 0x8 | 0x20, 3, bytes([3]) + struct.pack("!IB", 0, 200) + blk[:10] + b"\0" * 3)
    c1 = frame(9, 0, 3, blk[10:20])
    c2 = frame(9, 0x4, 3, blk[20:])
    trailers = frame(1, 0x4 | 0x1, 3, block([(b"x-trailer", b"t")]))
    p, ev = run(PREFACE + hdr + c1 + c2 + frame(0, 0, 3, b"upload") + trailers,
                frame(1, 0x4 | 0x1, 3, block(RESP)))
    assert not anomalies(ev)
    tx = stream_tx(p, 3)
    assert tx.req.headers[-1] == (b"x-trailer", b"t") and tx.path == b"/files/evil.exe?x=1"
    assert tx.req.priorities == [200]
    assert tx.req.frames == ["HEADERS", "CONTINUATION", "CONTINUATION", "DATA", "HEADERS"]
    b = tx.buffers(True)
    assert b["file.data"] == b"upload" == b["http.request_body"]
    assert tx.done and tx.logged


def test_gzip_response_is_decoded() -> None:
    body = b"<html>" + b"A" * 5000 + b"</html>"
    z = gzip.compress(body)
    srv = frame(1, 0x4, 1, block([*RESP, (b"content-encoding", b"gzip")])) + frame(0, 1, 1, z)
    p, ev = run(PREFACE + frame(1, 5, 1, block(REQ)), srv, size=50)
    tx = stream_tx(p, 1)
    assert tx.buffers(False)["file.data"] == body
    assert tx.resp.body_len == len(z) and tx.files[0].size == len(body)
    assert not anomalies(ev)


def test_rst_stream_ends_the_transaction_and_late_frames_join_it() -> None:
    cli = PREFACE + frame(1, 5, 1, block(REQ)) + frame(3, 0, 1, struct.pack("!I", 8))
    srv = frame(1, 0x4, 1, block(RESP)) + frame(0, 1, 1, b"late")
    p = Http2Parser()
    ev = feed_chunks(p, cli, True, 1 << 20)
    ev += feed_chunks(p, srv, False, 1 << 20)
    tx = stream_tx(p, 1)
    assert tx.req.errors == ["CANCEL"] and tx.reset and tx.logged
    assert len([t for t in p.transactions if t.stream_id == 1]) == 1
    assert "stream_id_reuse" not in anomalies(ev)
    assert [e.kind for e in ev].count(H2_DONE) == 1


def test_push_promise_is_a_transaction_of_the_promised_stream() -> None:
    pp = frame(5, 0x4, 1, struct.pack("!I", 2) + block([(b":method", b"GET"),
                                                          (b":path", b"/pushed.js")]))
    srv = pp + frame(1, 0x4, 1, block(RESP)) + frame(0, 1, 1, b"x") + frame(
        1, 0x4, 2, block(RESP)) + frame(0, 1, 2, b"pushed-body")
    p, ev = run(PREFACE + frame(1, 5, 1, block(REQ)), srv)
    assert not anomalies(ev)
    pushed = stream_tx(p, 2)
    assert pushed.path == b"/pushed.js" and pushed.buffers(False)["file.data"] == b"pushed-body"
    assert stream_tx(p, 1).resp.frames[0] == "PUSH_PROMISE"


def test_h2c_upgrade_request_becomes_stream_one() -> None:
    p = Http2Parser(first_tx_id=5)
    out: list[AppEvent] = []
    tx = p.upgrade(b"GET", b"/robots.txt", [[b"Host", b"nghttp2.org"],
                                            [b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA"]],
                   out)
    assert tx.tx_id == 5 and tx.stream_id == 1 and tx.hostname == b"nghttp2.org"
    g = [t for t in p.transactions if t.stream_id == 0]
    assert g[0].req.settings == [(3, 100), (4, 1 << 30), (2, 0)]
    ev = p.feed(PREFACE + frame(4, 0, 0, b""), True)
    ev += p.feed(frame(1, 0x4, 1, block(RESP)) + frame(0, 1, 1, b"Sitemap"), False)
    assert not anomalies(ev) and tx.logged and tx.buffers(False)["file.data"] == b"Sitemap"
    bad: list[AppEvent] = []
    Http2Parser().upgrade(b"GET", b"/", [[b"HTTP2-Settings", b"AAM"]], bad)
    assert anomalies(bad) == ["invalid_http1_settings"]


def test_userinfo_and_authority_host_mismatch_events() -> None:
    hdrs = [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"user:pw@good.example"),
            (b"host", b"evil.example")]
    p, ev = run(PREFACE + frame(1, 5, 1, block(hdrs)), b"")
    assert anomalies(ev) == ["userinfo_in_uri", "authority_host_mismatch"]
    tx = stream_tx(p, 1)
    assert tx.hostname == b"good.example"
    assert tx.buffers(True)["http.host"] == b"good.example"


# --- hostile input -------------------------------------------------------------------------


def test_bad_preface_stops_the_client_side() -> None:
    p = Http2Parser()
    ev = p.feed(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + frame(1, 5, 1, block(REQ)), True)
    assert anomalies(ev) == ["invalid_client_magic"]
    assert p.feed(frame(1, 5, 3, block(REQ)), True) == [] and not p.transactions


def test_long_frames_are_streamed_or_skipped_not_buffered() -> None:
    big = b"X" * (MAX_FRAME_BUFFER + 10)
    srv = frame(1, 4, 1, block(RESP)) + frame(0, 1, 1, big)  # DATA: long but streamed
    cli = PREFACE + frame(1, 5, 1, block(REQ)) + frame(6, 0, 0, big)  # PING: skipped
    p = Http2Parser()
    ev = feed_chunks(p, cli, True, 4096)
    assert p.memuse() < 64 * 1024
    ev += feed_chunks(p, srv, False, 4096)
    assert p.memuse() < 256 * 1024
    assert anomalies(ev).count("long_frame_data") == 2
    assert stream_tx(p, 1).resp.body_len == len(big)


def test_continuation_flood_is_bounded() -> None:
    p = Http2Parser()
    ev = p.feed(PREFACE + frame(1, 0, 1, b"\x82"), True)
    for _ in range(MAX_HEADER_BLOCK // 16000 + 2):
        ev += p.feed(frame(9, 0, 1, b"\x00" * 16000), True)
        assert p.memuse() < MAX_HEADER_BLOCK + 100_000
    assert "reassembly_limit_reached" in anomalies(ev)


def test_too_many_streams() -> None:
    p = Http2Parser()
    data = PREFACE + b"".join(frame(1, 4, 2 * i + 1, b"\x82\x84")
                              for i in range(MAX_STREAMS + 3))
    ev = p.feed(data, True)
    assert anomalies(ev).count("too_many_streams") == 3
    assert len(p._streams) == MAX_STREAMS


def test_frame_errors_are_events() -> None:
    cli = (PREFACE + frame(8, 0, 0, b"\x00\x01") + frame(1, 5, 0, b"\x82")
           + frame(9, 4, 1, b"\x82") + frame(4, 0, 0, b"\x00\x05\x00\x00\x00\x01"))
    _, ev = run(cli, b"")
    assert anomalies(ev) == ["invalid_frame_length", "invalid_frame_header",
                             "invalid_frame_header", "invalid_frame_data"]


def test_parser_registry_and_files_in_the_budget() -> None:
    p = new_parser("http2")
    assert isinstance(p, Http2Parser)
    budget = FileBudget(cap=1 << 20, per_file=1 << 20)
    p.file_budget = budget
    run(CLIENT, SERVER, parser=p)
    f = stream_tx(p, 1).files[0]
    assert f.data is not None and bytes(f.data) == BODY and budget.used == len(BODY)
    p.release_files()
    assert budget.used == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=12))
def test_hostile_bytes_never_raise_and_stay_bounded(chunks: list[tuple[bool, bytes]]) -> None:
    p = Http2Parser()
    p.feed(PREFACE, True)
    for ts, data in chunks:
        for e in p.feed(data, ts):
            assert e.kind in (ANOMALY, H2_INSPECT, H2_FILE, H2_DONE)
            assert e.name != "invalid_frame_data" or e.kind == ANOMALY
        assert p.memuse() < 2 * 1024 * 1024
    p.close()
    for tx in p.transactions:
        tx.eve()
        tx.buffers(True)
        tx.buffers(False)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(CLIENT) - 1), st.integers(0, 255))
def test_mutated_exchange_never_raises(pos: int, byte: int) -> None:
    cli = CLIENT[:pos] + bytes([byte]) + CLIENT[pos + 1:]
    p, _ = run(cli, SERVER, size=13)
    for tx in p.transactions:
        tx.eve()


# --- through the engine --------------------------------------------------------------------


def _engine_run(rules: list[str], convo: list[tuple[bool, bytes]], dport: int = 80,
                config: Any = None, commands: list[Any] | None = None) -> list[dict[str, Any]]:
    return engine_run(rules, convo, dport, segment=1400, config=config, commands=commands)


_sids = alert_sids


def test_http2_keywords_and_http_buffers_through_the_engine(eve_validator: Any) -> None:
    rules = [
        'alert http2 any any -> any any (http2.frametype:GOAWAY; sid:1;)',
        'alert http2 any any -> any any (http2.frametype:7; flow:to_client; sid:2;)',
        'alert http2 any any -> any any (http2.errorcode:PROTOCOL_ERROR; sid:3;)',
        'alert http2 any any -> any any (http2.window:>30000; sid:4;)',
        'alert http2 any any -> any any (http2.settings:SETTINGS_HEADER_TABLE_SIZE>1000;'
        ' sid:5;)',
        'alert http2 any any -> any any (http2.settings:SETTINGS_MAX_CONCURRENT_STREAMS;'
        ' flow:to_client; sid:6;)',
        'alert http any any -> any any (http.uri; content:"/evil.exe"; sid:7;)',
        'alert http1 any any -> any any (http.uri; content:"/evil.exe"; sid:8;)',
        'alert tcp any any -> any any (http.host; content:"www.example.com"; bsize:15;'
        ' sid:9;)',
        'alert http2 any any -> any any (file.data; content:"MZ"; startswith; sid:10;)',
        'alert http2 any any -> any any (filesize:>10000; sid:11;)',
        'alert http2 any any -> any any (http2.header_name; content:"user-agent"; sid:12;)',
        'alert http2 any any -> any any (http.stat_code; content:"200"; sid:13;)',
        'alert http2 any any -> any any (http2.priority:>0; sid:14;)',
    ]
    recs = _engine_run(rules, [(True, CLIENT[:200]), (False, SERVER), (True, CLIENT[200:])])
    assert _sids(recs) == [1, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13]
    http = [r for r in recs if r["event_type"] == "http"]
    assert any(r["http"].get("http2", {}).get("stream_id") == 1 for r in http)
    files = [r for r in recs if r["event_type"] == "fileinfo"]
    assert len(files) == 1 and files[0]["fileinfo"]["size"] == len(BODY)
    assert files[0]["app_proto"] == "http2"
    for r in recs:
        errors = list(eve_validator.iter_errors(r))
        assert not errors, (r["event_type"], errors[0].message)


def test_h2c_upgrade_through_the_engine() -> None:
    rules = ['alert http2 any any -> any any (http.response_header; content:"server: h2srv";'
             ' sid:1;)',
             'alert http any any -> any any (http.stat_code; content:"101"; sid:2;)',
             'alert http1 any any -> any any (http.stat_code; content:"200"; sid:3;)',
             'alert http2 any any -> any any (file.data; content:"MZ"; sid:4;)']
    upgrade = (b"GET /robots.txt HTTP/1.1\r\nHost: h.example\r\nConnection: Upgrade, "
               b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    switched = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    srv = frame(4, 0, 0, b"") + frame(1, 4, 1, block(RESP)) + frame(0, 1, 1, BODY)
    recs = _engine_run(rules, [(True, upgrade), (False, switched + srv[:30]),
                               (True, PREFACE + frame(4, 0, 0, b"")), (False, srv[30:])])
    assert _sids(recs) == [1, 2, 4]
    http = [r["http"] for r in recs if r["event_type"] == "http"]
    assert http[0]["status"] == 101 and "http2" not in http[0]
    assert any(h.get("http2", {}).get("stream_id") == 1 and h.get("status") == 200
               for h in http)
    assert not [r for r in recs if r["event_type"] == "anomaly"]


def test_app_layer_event_rule() -> None:
    rules = ['alert http2 any any -> any any (app-layer-event:http2.userinfo_in_uri; sid:1;)',
             'alert http2 any any -> any any (app-layer-event:http2.too_many_streams; sid:2;)']
    hdrs = [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"u@h.example")]
    recs = _engine_run(rules, [(True, PREFACE + frame(1, 5, 1, block(hdrs)))])
    assert _sids(recs) == [1]
    an = [r["anomaly"] for r in recs if r["event_type"] == "anomaly"]
    assert an == [{"app_proto": "http2", "type": "applayer", "event": "userinfo_in_uri",
                   "layer": "proto_parser"}]


def test_keyword_errors() -> None:
    from appliance.rules.loader import detection_from_text

    for bad in ("http2.frametype:NOPE", "http2.errorcode:99", "http2.settings:SETTINGS_NO",
                "http2.window:abc"):
        loaded = detection_from_text([f"alert http2 any any -> any any ({bad}; sid:1;)"])
        assert loaded.failure_records(), bad


def test_detection_by_the_preface_whoever_speaks_first() -> None:
    from appliance.core.app.detect import ProtoDetector, detect_stream

    assert detect_stream(PREFACE, True) == "http2"
    assert detect_stream(PREFACE[:10], True) is None  # wait for the rest
    assert detect_stream(PREFACE, False) != "http2"  # the client's preface only
    det = ProtoDetector(40000, 80)
    assert det.feed(SERVER[:20], False) is None  # the server's SETTINGS first
    assert det.feed(CLIENT[:30], True) == "http2"


def test_a_refused_streams_block_still_updates_the_hpack_table() -> None:
    p = Http2Parser()
    data = PREFACE + b"".join(frame(1, 4, 2 * i + 1, b"\x82\x84") for i in range(MAX_STREAMS))
    refused = frame(1, 4, 2 * MAX_STREAMS + 1, b"\x82\x84" + lit(b"x-a", b"1", index=True))
    ev = p.feed(data + refused + frame(3, 0, 1, struct.pack("!I", 8)), True)
    assert anomalies(ev) == ["too_many_streams"]
    p.feed(frame(1, 5, 2 * MAX_STREAMS + 3, b"\x82\x84\xbe"), True)  # 62: x-a
    tx = stream_tx(p, 2 * MAX_STREAMS + 3)
    assert tx.req.headers[-1] == (b"x-a", b"1")


def test_a_full_body_is_inspected_before_the_stream_ends() -> None:
    from appliance.core.app.http2 import BODY_LIMIT

    p = Http2Parser()
    p.feed(PREFACE + frame(1, 5, 1, block(REQ)), True)
    p.feed(frame(1, 4, 1, block(RESP)), False)
    chunk = frame(0, 0, 1, b"a" * 16384)  # SETTINGS_MAX_FRAME_SIZE's default
    ev = p.feed(chunk * (BODY_LIMIT // 16384), False)
    assert [e.kind for e in ev] == []
    ev = p.feed(chunk * 2, False)
    assert [(e.kind, e.to_server) for e in ev] == [(H2_INSPECT, False)]
    assert len(stream_tx(p, 1).buffers(False)["file.data"]) == BODY_LIMIT


def test_size_update_and_priority_buffers() -> None:
    blk = hint(1024, 5, 0x20) + block(REQ)  # a dynamic table size update, then fields
    hdr = frame(1, 0x4 | 0x1 | 0x20, 1, struct.pack("!IB", 0x80000003, 41) + blk)
    p, ev = run(PREFACE + hdr + frame(2, 0, 1, struct.pack("!IB", 0, 7)), b"")
    assert not anomalies(ev)
    b = stream_tx(p, 1).buffers(True)
    assert b["http2.size_update"] == [b"1024"]
    assert b["http2.priority"] == [b"41", b"7"]
    assert b["http2.frametype"] == [b"HEADERS", b"PRIORITY"]


@pytest.mark.parametrize("memcap", [1 << 20, 1000])
def test_downloads_go_to_the_scanners(memcap: int) -> None:
    """A finished HTTP/2 download is a ScanRequest with its content: kept in the
    FileBudget, or (no room there) the body kept for detection, as HTTP/1's."""
    from dataclasses import replace

    from appliance.core.commands import ScanRequest
    from appliance.core.engine import EngineConfig

    cfg = replace(EngineConfig(), scan_files=True, file_memcap=memcap)
    cmds: list[Any] = []
    _engine_run([], [(True, CLIENT), (False, SERVER)], config=cfg, commands=cmds)
    scans = [c for c in cmds if isinstance(c, ScanRequest)]
    assert len(scans) == 1
    assert scans[0].data == BODY and scans[0].size == len(BODY)
    assert scans[0].sha256 == hashlib.sha256(BODY).hexdigest()
    assert scans[0].filename == "/files/evil.exe"


def test_app_layer_protocol_http_is_any_http_http1_is_http1_only() -> None:
    """As Suricata 7: `app-layer-protocol:http` names any HTTP version, `http1` only
    HTTP/1, `http2` only HTTP/2; a negated name does not match the versions it covers,
    nor a flow whose protocol is not decided yet. The same on an HTTP/1 flow."""
    rules = ['alert tcp any any -> any any (app-layer-protocol:http; sid:1;)',
             'alert tcp any any -> any any (app-layer-protocol:http1; sid:2;)',
             'alert tcp any any -> any any (app-layer-protocol:http2; sid:3;)',
             'alert tcp any any -> any any (app-layer-protocol:!http; sid:4;)',
             'alert tcp any any -> any any (app-layer-protocol:!http1; sid:5;)']
    h2 = _engine_run(rules, [(True, CLIENT[:200]), (False, SERVER), (True, CLIENT[200:])])
    assert _sids(h2) == [1, 3, 5]
    h1 = _engine_run(rules, [(True, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
                             (False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")])
    assert _sids(h1) == [1, 2]


def test_app_layer_protocol_modes_and_lists_are_not_loaded() -> None:
    from appliance.rules.loader import detection_from_text

    loaded = detection_from_text([
        'alert tcp any any -> any any (app-layer-protocol:!http,final; sid:1;)',
        'alert tcp any any -> any any (app-layer-protocol:tls|http; sid:2;)',
        'alert tcp any any -> any any (app-layer-protocol:tls; sid:3;)'])
    assert [f.rule.sid for f in loaded.program.failures] == [1, 2]
    assert all("Suricata 7 syntax" in f.reason for f in loaded.program.failures)
    assert loaded.active == 1
