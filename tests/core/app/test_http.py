"""HTTP/1.x parser: exact buffers, chunking independence, hostile input, real traffic."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.app import ANOMALY, FILE_CLOSED, TX_COMPLETE, AppEvent
from appliance.core.app.detect import ProtoDetector
from appliance.core.app.http import (
    COMPRESSION_BOMB_LIMIT,
    DECOMPRESSED_SIZE_LIMIT,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    RESPONSE_BODY_LIMIT,
    HttpParser,
    normalize_path,
    split_host_port,
)
from tests.core.app import PCAPS, feed_all, oracle_events, tcp_flows, validate_eve

Chunks = list[tuple[bool, bytes]]


def run(chunks: Chunks, step: int = 0) -> tuple[HttpParser, list[AppEvent]]:
    """Feed chunks whole (step 0) or cut into step-byte pieces."""
    p = HttpParser()
    return p, feed_all(p, chunks, step)


def summary(p: HttpParser, ev: list[AppEvent]) -> Any:
    return (
        [(e.kind, e.name, e.tx_id) for e in ev if e.kind in (ANOMALY, TX_COMPLETE, FILE_CLOSED)],
        [(t.request_buffers(), t.response_buffers(), t.eve(),
          [(f.filename, f.size, f.sha256, f.state) for f in t.files]) for t in p.transactions],
    )


def check_all_chunkings(chunks: Chunks) -> tuple[HttpParser, list[AppEvent]]:
    p, ev = run(chunks)
    ref = summary(p, ev)
    for step in (1, 7):
        p2, ev2 = run(chunks, step)
        assert summary(p2, ev2) == ref, f"different result with {step}-byte chunks"
    return p, ev


def names(ev: list[AppEvent]) -> list[str]:
    return [e.name for e in ev if e.kind == ANOMALY]


REQ = (
    b"GET /a/./b/../c%41//d%u0041?x=%41&y=1 HTTP/1.1\r\n"
    b"Host: WWW.Example.COM:8080\r\n"
    b"User-Agent: curl/8.0\r\n"
    b"Accept: */*\r\n"
    b"Accept-Encoding: gzip\r\n"
    b"Accept-Language: en\r\n"
    b"Referer: http://ref/\r\n"
    b"Cookie: a=1\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)
RESP = (
    b"HTTP/1.1 302 Found\r\n"
    b"Server: nginx\r\n"
    b"Location: http://elsewhere/\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Set-Cookie: s=2\r\n"
    b"Content-Length: 5\r\n"
    b"\r\n"
    b"hello"
)


def test_simple_transaction_buffers_exact() -> None:
    p, ev = check_all_chunkings([(True, REQ), (False, RESP)])
    assert names(ev) == []
    (tx,) = p.transactions
    rq = tx.request_buffers()
    assert rq == {
        "http.method": b"GET",
        "http.request_line": b"GET /a/./b/../c%41//d%u0041?x=%41&y=1 HTTP/1.1",
        "http.uri.raw": b"/a/./b/../c%41//d%u0041?x=%41&y=1",
        "http.uri": b"/a/cA/dA?x=A&y=1",
        "http.protocol": b"HTTP/1.1",
        "http.host": b"www.example.com",
        "http.host.raw": b"WWW.Example.COM:8080",
        "http.header": (
            b"Host: WWW.Example.COM:8080\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n"
            b"Accept-Encoding: gzip\r\nAccept-Language: en\r\nReferer: http://ref/\r\n"
            b"Connection: keep-alive\r\n"
        ),
        "http.header.raw": REQ[REQ.index(b"\r\n") + 2 :],
        "http.header_names": (
            b"\r\nHost\r\nUser-Agent\r\nAccept\r\nAccept-Encoding\r\nAccept-Language"
            b"\r\nReferer\r\nCookie\r\nConnection\r\n\r\n"
        ),
        "http.start": REQ,
        "http.cookie": b"a=1",
        "http.connection": b"keep-alive",
        "http.user_agent": b"curl/8.0",
        "http.referer": b"http://ref/",
        "http.accept": b"*/*",
        "http.accept_enc": b"gzip",
        "http.accept_lang": b"en",
        "http.request_header": [
            b"Host: WWW.Example.COM:8080", b"User-Agent: curl/8.0", b"Accept: */*",
            b"Accept-Encoding: gzip", b"Accept-Language: en", b"Referer: http://ref/",
            b"Cookie: a=1", b"Connection: keep-alive"],
    }
    rs = tx.response_buffers()
    assert rs["http.response_header"] == [
        b"Server: nginx", b"Location: http://elsewhere/",
        b"Content-Type: text/html; charset=utf-8", b"Set-Cookie: s=2", b"Content-Length: 5"]
    assert rs["http.response_line"] == b"HTTP/1.1 302 Found"
    assert rs["http.stat_code"] == b"302"
    assert rs["http.stat_msg"] == b"Found"
    assert rs["http.protocol"] == b"HTTP/1.1"
    assert rs["http.server"] == b"nginx"
    assert rs["http.location"] == b"http://elsewhere/"
    assert rs["http.content_type"] == b"text/html; charset=utf-8"
    assert rs["http.content_len"] == b"5"
    assert rs["http.cookie"] == b"s=2"
    assert b"Set-Cookie" not in rs["http.header"]
    assert rs["http.response_body"] == rs["file_data"] == b"hello"
    assert tx.eve() == {
        "hostname": "www.example.com",
        "http_port": 8080,
        "url": "/a/./b/../c%41//d%u0041?x=%41&y=1",
        "http_user_agent": "curl/8.0",
        "http_content_type": "text/html",
        "http_refer": "http://ref/",
        "http_method": "GET",
        "protocol": "HTTP/1.1",
        "status": 302,
        "redirect": "http://elsewhere/",
        "length": 5,
    }
    validate_eve("http", tx.eve())
    (f,) = tx.files
    validate_eve("fileinfo", f.eve())
    assert (f.filename, f.size, f.state) == (b"/a/cA/dA", 5, "CLOSED")
    assert f.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert [e.kind for e in ev if e.kind == TX_COMPLETE] == [TX_COMPLETE]


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        (b"/", b"/"),
        (b"/a/../../b", b"/b"),
        (b"/a/./b/.", b"/a/b/"),
        (b"/a/b/..", b"/a/"),
        (b"/a\\b\\..\\c", b"/a/c"),
        (b"//a///b", b"/a/b"),
        (b"/%2e%2e/etc/passwd", b"/etc/passwd"),
        (b"/%zz%4", b"/%zz%4"),
        (b"/%uFF0E%uFF0E/x", b"/x"),
        (b"/%u4e2d", b"/?"),
        (b"/a%2fb", b"/a/b"),
    ],
)
def test_path_normalisation(raw: bytes, norm: bytes) -> None:
    assert normalize_path(raw) == norm


def test_host_normalisation() -> None:
    assert split_host_port(b"Example.COM.:80") == (b"example.com", 80)
    assert split_host_port(b"[::1]:8443") == (b"[::1]", 8443)
    assert split_host_port(b" host ") == (b"host", None)


def test_absolute_uri_host_wins() -> None:
    req = b"GET http://Proxy.Example:3128/p?q HTTP/1.1\r\nHost: other\r\n\r\n"
    p, _ = check_all_chunkings([(True, req)])
    b = p.transactions[0].request_buffers()
    assert b["http.host"] == b"proxy.example"
    assert b["http.host.raw"] == b"other"
    assert b["http.uri"] == b"/p?q"
    assert b["http.uri.raw"] == b"http://Proxy.Example:3128/p?q"


def test_pipelining_matches_in_order() -> None:
    reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(3))
    resps = b"".join(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % i for i in range(3))
    p, ev = check_all_chunkings([(True, reqs), (False, resps)])
    assert [(t.uri_raw, bytes(t.response_body)) for t in p.transactions] == [
        (b"/0", b"0"), (b"/1", b"1"), (b"/2", b"2")]
    assert [e.tx_id for e in ev if e.kind == TX_COMPLETE] == [0, 1, 2]


def test_chunked_with_extensions_and_trailers() -> None:
    resp = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    p, ev = check_all_chunkings([(True, b"GET / HTTP/1.1\r\n\r\n"), (False, resp)])
    tx = p.transactions[0]
    assert bytes(tx.response_body) == b"hello world"
    assert tx.response_body_len == 11
    assert tx.response_header(b"x-trailer") == b"t"
    assert tx.response_complete and names(ev) == []


def test_gzip_and_deflate_bodies() -> None:
    body = b"<html>" + b"x" * 5000 + b"</html>"
    for enc, comp in (
        (b"gzip", gzip.compress(body)),
        (b"deflate", zlib.compress(body)),
        (b"deflate", zlib.compress(body)[2:-4]),  # raw deflate, as some servers send
        (b"gzip, gzip", gzip.compress(gzip.compress(body))),
    ):
        resp = (b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
                % (enc, len(comp)) + comp)
        p, ev = check_all_chunkings([(True, b"GET /x.html HTTP/1.1\r\n\r\n"), (False, resp)])
        tx = p.transactions[0]
        assert bytes(tx.response_body) == body, enc
        assert tx.response_body_len == len(comp)
        assert tx.files[0].sha256 == hashlib.sha256(body).hexdigest()
        assert tx.files[0].magic == "HTML document text"
        assert names(ev) == []


def test_bad_gzip_passes_through_with_anomaly() -> None:
    resp = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\nnot-gzip!!"
    _p, ev = check_all_chunkings([(True, b"GET / HTTP/1.1\r\n\r\n"), (False, resp)])
    assert "GZIP_DECOMPRESSION_FAILED" in names(ev)


def test_interim_head_304_and_close_delimited() -> None:
    reqs = (b"POST /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"
            b"HEAD /h HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\nGET /c HTTP/1.0\r\n\r\n")
    resps = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
             b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"
             b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"
             b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
    p, ev = check_all_chunkings([(True, reqs), (False, resps)])
    assert [t.status for t in p.transactions] == [201, 200, 304, 200]
    assert bytes(p.transactions[0].request_body) == b"abc"
    assert p.transactions[0].request_buffers()["file_data"] == b"abc"
    assert bytes(p.transactions[3].response_body) == b"until the end"
    assert p.transactions[3].files[0].state == "CLOSED"
    assert names(ev) == []


def test_tolerated_oddities() -> None:
    req = (b"\r\nGET /x HTTP/1.1\nHost: h\nX-Fold: a\n\t b\nX-Dup: 1\nx-dup: 2\n"
           b"Bad Name: v\nnocolon\n\n")
    p, ev = check_all_chunkings([(True, req)])
    tx = p.transactions[0]
    assert tx.request_header(b"x-fold") == b"a b"
    assert tx.request_header(b"x-dup") == b"1, 2"
    assert tx.request_buffers()["http.header"] == (
        b"Host: h\r\nX-Fold: a b\r\nX-Dup: 1, 2\r\nBad Name: v\r\nnocolon: \r\n")
    assert names(ev) == ["REQUEST_HEADER_INVALID", "REQUEST_FIELD_MISSING_COLON"]


def test_unmatched_response() -> None:
    p, ev = check_all_chunkings([(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")])
    assert names(ev) == ["UNABLE_TO_MATCH_RESPONSE_TO_REQUEST"]
    assert p.transactions[0].eve()["url"] == "/libhtp::request_uri_not_seen"


def test_connect_tunnel_stops_parsing() -> None:
    p, ev = check_all_chunkings([
        (True, b"CONNECT apache.org:443 HTTP/1.1\r\nHost: apache.org:443\r\n\r\n"),
        (False, b"HTTP/1.1 200 Connection established\r\n\r\n"),
        (True, b"\x16\x03\x01\x00\x05hello"),
        (False, b"\x16\x03\x03garbage"),
    ])
    assert len(p.transactions) == 1
    assert p.transactions[0].eve()["url"] == "apache.org:443"
    assert names(ev) == []


def test_partial_content_range_in_eve() -> None:
    resp = (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-898/32468335\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\n\r\nabc")
    p, _ = check_all_chunkings([(True, b"GET /?o=1 HTTP/1.1\r\nHost: 1.2.3.4\r\n\r\n"),
                                (False, resp)])
    assert p.transactions[0].eve() == {
        "hostname": "1.2.3.4", "url": "/?o=1",
        "http_content_type": "application/octet-stream",
        "content_range": {"raw": "bytes 0-898/32468335", "start": 0, "end": 898,
                          "size": 32468335},
        "http_method": "GET", "protocol": "HTTP/1.1", "status": 206, "length": 3,
    }


def test_content_disposition_filename_and_truncation() -> None:
    resp = (b"HTTP/1.1 200 OK\r\nContent-Disposition: attachment; filename=\"evil.exe\"\r\n"
            b"Content-Length: 100\r\n\r\nMZ\x90\x00")
    p, _ev = check_all_chunkings([(True, b"GET /dl?id=1 HTTP/1.1\r\n\r\n"), (False, resp)])
    (f,) = p.transactions[0].files
    assert (f.filename, f.size, f.state, f.magic) == (
        b"evil.exe", 4, "TRUNCATED", "PE32 executable (MS Windows)")
    assert f.eve()["sha256"] == hashlib.sha256(b"MZ\x90\x00").hexdigest()


# --- hostile input ------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True])
def test_decompression_bomb_is_cut(nested: bool) -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), 9)  # 64 MiB from ~64 KiB
    limit = DECOMPRESSED_SIZE_LIMIT
    if nested:  # a second layer: ~200 bytes, the ratio guard fires past 1 MiB
        bomb = gzip.compress(bomb, 9)
        limit = COMPRESSION_BOMB_LIMIT
    enc = b"gzip, gzip" if nested else b"gzip"
    resp = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n" % (
        enc, len(bomb)) + bomb
    p = HttpParser()
    ev = p.feed(b"GET / HTTP/1.1\r\n\r\n", True)
    for i in range(0, len(resp), 1460):
        ev += p.feed(resp[i : i + 1460], False)
    tx = p.transactions[0]
    assert "COMPRESSION_BOMB" in names(ev)
    assert len(tx.response_body) == RESPONSE_BODY_LIMIT
    assert tx.files[0].state == "TRUNCATED"
    assert tx.files[0].size <= limit + 64 * 1024
    assert tx.response_complete


def test_header_flood_and_long_lines() -> None:
    flood = b"GET / HTTP/1.1\r\n" + b"".join(
        b"X-%d: b\r\n" % i for i in range(MAX_HEADERS + 500)) + b"\r\n"
    p, ev = run([(True, flood)])
    assert names(ev) == ["REQUEST_TOO_MANY_HEADERS"]
    assert len(p.transactions[0].request_headers) == MAX_HEADERS
    big = b"GET / HTTP/1.1\r\n" + b"".join(
        b"X-%d: " % i + b"v" * 10_000 + b"\r\n" for i in range(100)) + b"\r\n"
    p, ev = run([(True, big)])
    assert names(ev) == ["REQUEST_TOO_MANY_HEADERS"]  # byte budget, not line count
    assert sum(len(v) for _, v in p.transactions[0].request_headers) <= MAX_HEADER_BYTES
    same = b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 100 + b"\r\n"
    p, ev = run([(True, same)])
    assert names(ev) == ["REQUEST_HEADER_REPETITION"]  # past 64 repetitions, like libhtp
    assert p.transactions[0].request_header(b"x-a") == b", ".join([b"b"] * 100)
    p, ev = run([(True, b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 100_000 + b"\r\nHost: h\r\n\r\n")])
    assert "REQUEST_FIELD_TOO_LONG" in names(ev)
    assert p.transactions[0].request_header(b"host") == b"h"


def test_endless_chunked_body_is_bounded() -> None:
    p = HttpParser()
    p.feed(b"GET / HTTP/1.1\r\n\r\n", True)
    p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", False)
    chunk = b"400\r\n" + b"z" * 0x400 + b"\r\n"
    for _ in range(500):
        p.feed(chunk * 10, False)
    tx = p.transactions[0]
    assert len(tx.response_body) == RESPONSE_BODY_LIMIT
    assert tx.response_body_len == 500 * 10 * 0x400
    assert len(p._resp.buf) < 64  # nothing piles up in the stream buffer


def test_bad_chunk_length_and_content_length() -> None:
    p, ev = check_all_chunkings([
        (True, b"GET / HTTP/1.1\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nrest"),
    ])
    assert names(ev) == ["INVALID_RESPONSE_CHUNK_LEN"]
    assert bytes(p.transactions[0].response_body) == b"zz\r\nrest"
    _, ev = check_all_chunkings([(True, b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n")])
    assert names(ev) == ["INVALID_CONTENT_LENGTH_FIELD_IN_REQUEST"]


# --- evasions libhtp sees through (the "HTTP Evader" captures of suricata-verify) ----------

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GET = (True, b"GET /eicar.txt HTTP/1.1\r\nHost: h\r\n\r\n")


def body_of(resp: bytes) -> tuple[bytes, list[str], HttpParser]:
    """The response body (decoded) and the anomalies, the same for every chunking."""
    p, ev = check_all_chunkings([GET, (False, resp)])
    tx = p.transactions[0]
    if tx.files:
        assert tx.files[0].sha256 == hashlib.sha256(bytes(tx.response_body)).hexdigest()
        assert tx.files[0].size == len(tx.response_body)
    return bytes(tx.response_body), names(ev), p


def chunked(data: bytes, size_line: bytes = b"%x\r\n", n: int = 15) -> bytes:
    parts = [data[i : i + n] for i in range(0, len(data), n)]
    return b"".join((size_line % len(c)) + c + b"\r\n" for c in parts) + b"0\r\n\r\n"


TE = b"HTTP/1.1 200 ok\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("size_line", [b"%x\r\r\n", b"%x\x0b\r\n", b"%x\x0c\r\n",
                                       b"\x0b%x\r\n", b" %x\t\r\n", b"%x junk\r\n",
                                       b"0%x\n"])
def test_chunk_size_lines_read_like_libhtp(size_line: bytes) -> None:
    # Whitespace and control bytes around the hex number are ignored; what follows the
    # number is an extension.
    body, anomalies, _ = body_of(TE + chunked(EICAR, size_line))
    assert body == EICAR
    assert "INVALID_RESPONSE_CHUNK_LEN" not in anomalies


@pytest.mark.parametrize("te", [b"chunked", b"chunked x", b"x chunked", b"lalala, chunked",
                                b": chunked", b"CHUN\x00KED"])
def test_chunked_announced_over_a_plain_body(te: bytes) -> None:
    # Any Transfer-Encoding value holding "chunked" means chunked (also next to a
    # Content-Length); a body that is no chunk-size line is then read as it is, even
    # without a line end anywhere in it.
    resp = (b"HTTP/1.0 200 ok\r\nTransfer-Encoding: " + te
            + b"\r\nContent-Length: 68\r\n\r\n" + EICAR)
    body, anomalies, p = body_of(resp)
    assert body == EICAR
    assert anomalies == ["INVALID_RESPONSE_CHUNK_LEN"]
    assert p.transactions[0].files[0].state == "CLOSED"


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 ok\r\nX: 1\rTransfer-Encoding: chunked\r\n\r\n",  # lone CR ends a line
    b"HTTP/1.1 200\rTransfer-Encoding: chunked\r\n\r\n",  # also the status line
    b"HTTP/1.1 200 ok\rX: 1\rTransfer-Encoding: chunked\rY: 2\r\n\n",
    b"HTTP/1.1 200 ok\r\nX: 1\r\n\r\r\nTransfer-Encoding: chunked\r\n\r\n",  # CR CR: no end
    b"HTTP/1.1 200 ok\r\nX: 1\r\n\r\rTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 ok\r\nX: 1\r\n\r \rTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 ok\r\nTransfer-Encoding: chunked\r\nY: 2\n\r\r\n",  # LF, then CR CR LF
    b"HTTP/1.1 200 ok\r\nTransfer-Encoding: chunked\r\nY: 2\n \n",  # LF, then SP LF
    b"HTTP/1.1 200 ok\r\nTransfer-Encoding: chunked\r\nY: 2\n\r\r\n\r\n",
    b"foobar\r\nHTTP/1.1 200 ok\r\nTransfer-Encoding: chunked\r\n\r\n",  # junk line skipped
])
def test_response_line_ends_like_libhtp(head: bytes) -> None:
    body, _, p = body_of(head + chunked(EICAR, n=4))
    assert body == EICAR
    assert p.transactions[0].status == 200


def test_blank_line_ends_headers_only_before_a_body() -> None:
    # After a line ended by LF alone, "\r\r\n" or " \n" end the headers when no other
    # line end follows at once; else the next empty line does.
    gz = gzip.compress(EICAR)
    for sep in (b"\n\r\r\n", b"\n \n", b"\n\r\r\n\r\n", b"\n \n\n", b"\r\n\t\r\n\r\n"):
        resp = (b"HTTP/1.1 200 ok\r\nContent-Encoding: gzip\r\nContent-Length: %d" % len(gz)
                + sep + gz)
        body, anomalies, _ = body_of(resp)
        assert (body, anomalies) == (EICAR, []), sep
    # After CRLF lines a whitespace line is a continuation, not the end.
    p, _ = check_all_chunkings([GET, (False, b"HTTP/1.1 200 ok\r\nA: 1\r\n\t\r\nB: 2\r\n\r\n")])
    assert p.transactions[0].response_headers == [[b"A", b"1"], [b"B", b"2"]]


@pytest.mark.parametrize("ce", [
    b"Content-Encoding:\r\n \r\n gzip",  # folded value
    b"Content-Encoding\r\n :gzip",  # folded colon
    b"Content-Encoding\r\n :\r\n gzip",
    b"Content-Encoding\x0b:gzip",  # VT / FF around the name or value are trimmed
    b"Content-Encoding:\x0cgzip",
    b"Content\x00-Encoding: gzip",  # NUL bytes in a name are ignored
    b"Content-Encoding:\n\x00gzip",  # NUL folds a line
    b"Content-Encoding:\x00gzip",
    b"Content-Encoding:\xa0gzip",  # a value is read as a list of tokens
    b"Content-Encoding: x gzip",
    b"Content-Encoding: gzip x",
    b"Content-Encoding:: gzip",
    b"Content-Encoding : gzip",
])
def test_content_encoding_found_like_libhtp(ce: bytes) -> None:
    gz = gzip.compress(EICAR)
    resp = b"HTTP/1.1 200 ok\r\n" + ce + b"\r\nContent-Length: %d\r\n\r\n" % len(gz) + gz
    body, anomalies, _ = body_of(resp)
    assert body == EICAR
    assert "GZIP_DECOMPRESSION_FAILED" not in anomalies


def test_folded_colon_line_is_a_new_header_in_http11_responses() -> None:
    resp = b"HTTP/1.1 200 ok\r\nConnection: close\r\n Transfer-Encoding: chunked\r\n\r\n"
    body, anomalies, p = body_of(resp + chunked(EICAR, n=4))
    assert body == EICAR
    assert anomalies == ["INVALID_RESPONSE_FIELD_FOLDING"]
    assert p.transactions[0].response_header(b"connection") == b"close"
    # HTTP/1.0 (and requests): the line continues the value before it.
    p, _ = check_all_chunkings([GET, (False, b"HTTP/1.0 200 ok\r\nA: b\r\n c: d\r\n\r\n")])
    assert p.transactions[0].response_headers == [[b"A", b"b c: d"]]


def _gzip_with(flags: int, extra: bytes) -> bytes:
    raw = zlib.compress(EICAR)[2:-4]  # raw deflate
    return b"\x1f\x8b\x08" + bytes((flags,)) + b"\0\0\0\0\0\x03" + extra + raw + b"\0" * 8


@pytest.mark.parametrize("enc, comp", [
    (b"gzip, gzip", gzip.compress(EICAR)),  # a layer that cannot decode passes through
    (b"gzip, deflate", gzip.compress(EICAR)),
    (b"deflate, gzip", zlib.compress(EICAR)[2:-4]),
    (b"deflate, deflate", zlib.compress(zlib.compress(EICAR)[2:-4])[2:-4]),
    (b"gzip", _gzip_with(0x02, b"\0\0")),  # header CRC present and wrong
    (b"gzip", _gzip_with(0x20, b"")),  # reserved flag bits
    (b"gzip", _gzip_with(0x80, b"")),
    (b"gzip", _gzip_with(0x04, b"\x03\0abc")),  # FEXTRA
    (b"gzip", _gzip_with(0x18, b"name\0comment\0")),  # FNAME, FCOMMENT
], ids=["gzip-gzip", "gzip-deflate", "deflate-gzip", "deflate-deflate", "fhcrc", "flag20",
        "flag80", "fextra", "fname-fcomment"])
def test_compression_layers_decode_leniently(enc: bytes, comp: bytes) -> None:
    resp = (b"HTTP/1.1 200 ok\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
            % (enc, len(comp)) + comp)
    body, _, p = body_of(resp)
    assert body == EICAR
    assert p.transactions[0].response_body_len == len(comp)


def test_last_chunk_with_many_zeros_ends_the_body() -> None:
    body, anomalies, p = body_of(TE + chunked(EICAR)[:-5] + b"00000000000000000000\r\n\r\n")
    assert (body, anomalies) == (EICAR, [])
    assert p.transactions[0].response_complete


@pytest.mark.parametrize("cl, framed", [
    (b"068", True), (b" 68\x0b", True), (b"68, 68", True),
    (b"68A", False), (b"68.9", False), (b"34 68", False), (b"34\r\n 68", False),
])
def test_content_length_values(cl: bytes, framed: bool) -> None:
    # A number within whitespace frames the body; anything else is invalid and the body
    # runs until the connection closes (a folded "34\r\n 68" must not cut it at 34).
    resp = b"HTTP/1.1 200 ok\r\nContent-Length: " + cl + b"\r\n\r\n" + EICAR + b"XXXX"
    p, ev = check_all_chunkings([GET, (False, resp)])
    tx = p.transactions[0]
    assert bytes(tx.response_body) == (EICAR if framed else EICAR + b"XXXX")
    assert ("INVALID_CONTENT_LENGTH_FIELD_IN_RESPONSE" in names(ev)) is not framed


def test_repeated_content_length_keeps_the_first() -> None:
    resp = (b"HTTP/1.1 200 ok\r\nContent-Length: 68\r\nContent-Length: 136\r\n\r\n"
            + EICAR + b"X" * 68)
    p, ev = check_all_chunkings([GET, (False, resp)])
    tx = p.transactions[0]
    assert bytes(tx.response_body) == EICAR
    assert tx.response_buffers()["http.content_len"] == b"68"
    assert "DUPLICATE_CONTENT_LENGTH_FIELD_IN_RESPONSE" in names(ev)
    # The same value twice is no conflict.
    p, ev = check_all_chunkings([GET, (False, resp.replace(b"136", b"68"))])
    assert "DUPLICATE_CONTENT_LENGTH_FIELD_IN_RESPONSE" not in names(ev)


def test_unknown_coding_is_reported_and_body_kept() -> None:
    resp = b"HTTP/1.1 200 ok\r\nContent-Encoding: br\r\nContent-Length: 68\r\n\r\n" + EICAR
    body, anomalies, _ = body_of(resp)
    assert (body, anomalies) == (EICAR, ["ABNORMAL_CE_HEADER"])


@pytest.mark.parametrize("status", [b"101", b"102", b"204", b"304"])
def test_bodyless_status_with_framing_gets_its_body(status: bytes) -> None:
    # libhtp reads the body a Content-Length announces even where none is allowed, as
    # browsers do: an evasion otherwise.
    resp = b"HTTP/1.1 " + status + b" ok\r\nContent-Length: 68\r\n\r\n" + EICAR
    body, anomalies, p = body_of(resp)
    assert body == EICAR
    assert anomalies == ["RESPONSE_BODY_UNEXPECTED"]
    assert p.transactions[0].response_complete


def test_http09_response_without_line_end_is_the_body() -> None:
    body, anomalies, p = body_of(EICAR)
    assert body == EICAR
    assert p.transactions[0].files[0].state == "CLOSED"
    assert anomalies == []


def test_many_pipelined_requests_keep_bounded_state() -> None:
    p = HttpParser()
    for _ in range(2000):
        p.feed(b"GET / HTTP/1.1\r\n\r\n", True)
        p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False)
    assert len(p.transactions) <= 257
    assert p.transactions[-1].tx_id == 1999


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=8))
def test_fuzz_random_bytes_never_raise(chunks: Chunks) -> None:
    _, ev = run(chunks)
    assert "PARSER_ERROR" not in names(ev)


_line = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"G\x00T", b""]),
    uri=_line,
    headers=st.lists(st.tuples(_line, _line), max_size=6),
    body=st.binary(max_size=200),
    te=st.sampled_from([b"", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 7\r\n"]),
    cuts=st.integers(min_value=1, max_value=9),
)
def test_fuzz_structured_messages_are_chunking_independent(
    method: bytes, uri: bytes, headers: list[tuple[bytes, bytes]], body: bytes, te: bytes,
    cuts: int,
) -> None:
    head = b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    req = method + b" /" + uri + b" HTTP/1.1\r\n" + head + te + b"\r\n" + body
    resp = b"HTTP/1.1 200 OK\r\n" + te + head + b"\r\n" + body
    chunks: Chunks = [(True, req), (False, resp)]
    p, ev = run(chunks)
    assert "PARSER_ERROR" not in names(ev)
    p2, ev2 = run(chunks, cuts)
    assert summary(p, ev) == summary(p2, ev2)


# --- real traffic -------------------------------------------------------------------------


def _http_pairs(pcap: str) -> tuple[set[tuple[str | None, str | None]], int, int]:
    pairs: set[tuple[str | None, str | None]] = set()
    anomalies = 0
    parsed = 0
    for f in tcp_flows(PCAPS / f"{pcap}.pcap"):
        det = ProtoDetector(f.client[1], f.server[1])
        proto = None
        for to_server, data in f.chunks:
            proto = det.feed(data, to_server)
            if proto is not None:
                break
        if proto != "http":
            continue
        p = HttpParser()
        ev: list[AppEvent] = []
        for to_server, data in f.chunks:
            ev += p.feed(data, to_server)
        ev += p.close()
        assert "PARSER_ERROR" not in names(ev)
        anomalies += len(names(ev))
        for tx in p.transactions:
            e = tx.eve()
            pairs.add((e.get("hostname"), e.get("url")))
            parsed += 1
    return pairs, parsed, anomalies


@pytest.mark.parametrize("pcap", ["netflix", "ndpi-mixed"])
def test_real_traffic_hostnames_and_urls_match_oracle(pcap: str) -> None:
    if not (PCAPS / f"{pcap}.pcap").exists():
        pytest.skip("shared pcaps not available")
    ours, _, _ = _http_pairs(pcap)
    oracle = {(r["http"].get("hostname"), r["http"].get("url"))
              for r in oracle_events(pcap, "http")}
    ratio = len(oracle & ours) / len(oracle)
    print(f"{pcap}: http (hostname, url) {len(oracle & ours)}/{len(oracle)} = {ratio:.1%}")
    assert ratio >= 0.95


def test_real_traffic_http_packets_parses_cleanly() -> None:
    # Suricata logged no http events for this capture (its flows start midstream, so
    # the oracle has nothing to compare); check that every flow parses without anomalies.
    if not (PCAPS / "http-packets.pcap").exists():
        pytest.skip("shared pcaps not available")
    pairs, parsed, anomalies = _http_pairs("http-packets")
    print(f"http-packets: {parsed} transactions, {len(pairs)} distinct (host, url), "
          f"{anomalies} anomalies")
    assert parsed >= 100
    assert anomalies == 0


# --- the request line as a progress point ----------------------------------------------------


def test_request_line_is_inspected_before_the_headers_end() -> None:
    from tests.core.test_signatures import CLIENT, SERVER, Run, tcp

    r = Run('alert http any any -> any any (http.uri; content:"/now_this"; sid:1;)',
            'alert http any any -> any any (http.method; content:"POST"; '
            'http.uri; content:"is_big"; sid:2;)',
            'alert http any any -> any any (http.header; content:"Mozilla"; sid:3;)',
            'alert http any any -> any any (http.uri; content:"/now"; '
            'http.user_agent; content:"Mozilla"; sid:4;)',
            'alert http any any -> any any (http.header; content:!"Evil"; sid:5;)')
    r.handshake()
    seg = b"POST /now_this_is_big HTTP/1.0\r\nUser-Agent: Mozilla/1.0\r\n"
    # Only the request line's buffers exist yet: no header rule runs (not even a negated
    # one on an empty header buffer).
    assert sorted(r.sids(tcp(CLIENT, SERVER, 40000, 80, "PA", 101, 501, seg))) == [1, 2]
    # The headers end: the header rules run; the URI rules do not alert twice.
    end = tcp(CLIENT, SERVER, 40000, 80, "PA", 101 + len(seg), 501, b"Evil: no\r\n\r\n")
    assert sorted(r.sids(end)) == [3, 4]


def test_request_line_progress_event_only_when_headers_follow() -> None:
    from appliance.core.app import TX_REQUEST, TX_REQUEST_LINE

    p = HttpParser()
    ev = p.feed(b"GET /a?b HTTP/1.1\r\nHost: x\r\n", True)
    assert [(e.kind, e.tx_id) for e in ev] == [(TX_REQUEST_LINE, 0)]
    assert p.transactions[0].request_line_buffers() == {
        "http.method": b"GET", "http.request_line": b"GET /a?b HTTP/1.1",
        "http.uri.raw": b"/a?b", "http.uri": b"/a?b", "http.protocol": b"HTTP/1.1"}
    ev = p.feed(b"\r\n", True)
    assert [e.kind for e in ev] == [TX_REQUEST]
    # A request line without protocol: an HTTP/0.9 request, or do headers follow?
    # Its line is inspected at once; what comes next decides.
    p = HttpParser()
    ev = p.feed(b"GET /x\r\n", True)
    assert [e.kind for e in ev if e.kind != ANOMALY] == [TX_REQUEST_LINE]
    ev = p.feed(b"\r\n", True)
    assert [e.kind for e in ev] == [TX_REQUEST]
    assert p.transactions[0].request_complete


@pytest.mark.parametrize("after, headers", [
    (b"Host: h\r\nUser-Agent: u\r\n\r\n", [[b"Host", b"h"], [b"User-Agent", b"u"]]),
    (b"Host : h\r\n\r\n", [[b"Host", b"h"]]),
    (b"\r\n", []),
    (b"GET /y HTTP/1.1\r\n\r\n", []),  # a second request, not a header
    (b"", []),  # nothing more: complete when the flow ends
])
def test_request_line_without_protocol(after: bytes, headers: list[list[bytes]]) -> None:
    p, ev = check_all_chunkings([(True, b"GET /gen.php?x=1\r\n" + after)])
    tx = p.transactions[0]
    assert (tx.method, tx.uri_raw, tx.request_protocol) == (b"GET", b"/gen.php?x=1", b"")
    assert tx.request_headers == headers
    assert tx.request_complete
    assert names(ev)[0] == "REQUEST_LINE_MISSING_PROTOCOL"
    assert len(p.transactions) == (2 if after.startswith(b"GET") else 1)


def test_body_after_request_without_framing() -> None:
    # A POST without Content-Length whose body follows: libhtp reads lines that do not
    # start with a known method as that request's body (REQUEST_BODY_UNEXPECTED); a line
    # starting with a method is the next request.
    req = (b"POST /login HTTP/1.1\r\nHost: h\r\n\r\nlogin=foo&password=bar\r\nmore\r\n"
           b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    p, ev = check_all_chunkings([(True, req)])
    first, second = p.transactions
    assert bytes(first.request_body) == b"login=foo&password=bar\r\nmore\r\n"
    assert first.request_buffers()["http.request_body"] == bytes(first.request_body)
    assert second.uri_raw == b"/next"
    assert names(ev) == ["REQUEST_BODY_UNEXPECTED"]
    (f,) = first.files
    assert (f.size, f.state) == (30, "CLOSED")
    # With a Content-Length, what follows the body is the next request as before.
    req = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nabXYZ / HTTP/1.1\r\n\r\n"
    p, ev = check_all_chunkings([(True, req)])
    assert [t.method for t in p.transactions] == [b"POST", b"XYZ"]
    assert names(ev) == []


@pytest.mark.parametrize("auth, unrecognized", [
    (b"Basic dXNlcjpwYXNz", False), (b"digest username=x", False), (b"Bearer t", False),
    (b"Turbo customAuthDataHere", True), (b"", True),
])
def test_authorization_scheme(auth: bytes, unrecognized: bool) -> None:
    _, ev = check_all_chunkings([(True, b"GET / HTTP/1.1\r\nAuthorization: " + auth
                                  + b"\r\n\r\n")])
    assert ("REQUEST_AUTH_UNRECOGNIZED" in names(ev)) is unrecognized


def test_query_is_url_decoded_in_http_uri() -> None:
    p, _ = check_all_chunkings([(True, b"GET /get?data=%7Dk%BB%8C+x%zz&q=%u0041 HTTP/1.1\r\n\r\n")])
    b = p.transactions[0].request_buffers()
    assert b["http.uri"] == b"/get?data=}k\xbb\x8c+x%zz&q=A"
    assert b["http.uri.raw"] == b"/get?data=%7Dk%BB%8C+x%zz&q=%u0041"


def test_unexpected_body_sent_line_by_line_is_inspected_a_bounded_number_of_times() -> None:
    from appliance.core.app import TX_REQUEST

    p = HttpParser()
    ev = p.feed(b"POST / HTTP/1.1\r\nHost: h\r\n\r\n", True)
    for i in range(1000):
        ev += p.feed(b"x=%d\r\n" % i, True)
    tx = p.transactions[0]
    assert tx.request_body_len == sum(len(b"x=%d\r\n" % i) for i in range(1000))
    # the headers' inspection, then one each time the body doubled: not one per line
    assert 2 <= sum(e.kind == TX_REQUEST and e.tx_id == 0 for e in ev) <= 16
    ev = p.feed(b"GET /next HTTP/1.1\r\n\r\n", True)
    assert [(e.kind, e.tx_id) for e in ev if e.kind == FILE_CLOSED] == [(FILE_CLOSED, 0)]
    assert tx.files[0].size == tx.request_body_len


def test_request_without_protocol_then_endless_name_is_bounded() -> None:
    p = HttpParser()
    p.feed(b"GET /x\r\n", True)
    for _ in range(40):
        p.feed(b"a" * 1000, True)
    assert p.transactions[0].request_complete  # decided: no header follows
    assert len(p._req.buf) <= 2 * 18000


MP_BODY = (b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nfield\r\n"
           b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"one.jpg\"\r\n"
           b"Content-Type: image/jpeg\r\n\r\nfirst\r\n--XyZ-not-a-delimiter\r\n"
           b"--XyZ\nContent-Disposition: form-data; name=\"g\"; filename=two.txt\n\n"
           b"second\n--XyZ--\r\nepilogue")


def test_multipart_upload_files_are_its_parts() -> None:
    req = (b"POST /upload.cgi HTTP/1.1\r\nContent-Type: multipart/form-data; "
           b"boundary=XyZ\r\nContent-Length: %d\r\n\r\n" % len(MP_BODY) + MP_BODY)
    p, ev = check_all_chunkings([(True, req)])
    tx = p.transactions[0]
    # One file per part that names one (not the form field, not the whole body),
    # delimited by CRLF or LF alone; what only looks like a delimiter is content.
    assert [(f.filename, f.size, f.state) for f in tx.files] == [
        (b"one.jpg", len(b"first\r\n--XyZ-not-a-delimiter"), "CLOSED"),
        (b"two.txt", 6, "CLOSED")]
    assert tx.files[0].sha256 == hashlib.sha256(b"first\r\n--XyZ-not-a-delimiter").hexdigest()
    assert tx.files[1].sha256 == hashlib.sha256(b"second").hexdigest()
    assert bytes(tx.request_body) == MP_BODY  # the body buffers stay the whole body
    assert [e.tx_id for e in ev if e.kind == FILE_CLOSED] == [0, 0]


def test_multipart_part_cut_short_is_truncated() -> None:
    body = b"--b\r\nContent-Disposition: form-data; name=f; filename=\"x.exe\"\r\n\r\nMZ..."
    req = (b"POST / HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=\"b\"\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body) + body)
    p, _ = check_all_chunkings([(True, req)])
    (f,) = p.transactions[0].files
    assert (f.filename, f.size, f.state) == (b"x.exe", 5, "TRUNCATED")


def test_304_with_content_length_on_keep_alive_has_no_body() -> None:
    """Servers put the cached representation's size in a 304's Content-Length; the next
    response on the connection must not be read as its body."""
    reqs = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    resps = (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5000\r\n\r\n"
             b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    p, ev = check_all_chunkings([(True, reqs), (False, resps)])
    assert [t.status for t in p.transactions] == [304, 200]
    assert bytes(p.transactions[0].response_body) == b""
    assert bytes(p.transactions[1].response_body) == b"hello"
    assert "RESPONSE_BODY_UNEXPECTED" not in names(ev)


def test_304_with_content_length_and_a_body_is_read_as_libhtp_does() -> None:
    """The evasion: a file behind a 304 (what follows is no status line)."""
    resps = (b"HTTP/1.1 304 ok\r\nConnection: close\r\nContent-Length: 11\r\n\r\n"
             b"hello world")
    p, ev = check_all_chunkings([(True, b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n"),
                                 (False, resps)])
    assert bytes(p.transactions[0].response_body) == b"hello world"
    assert p.transactions[0].files[0].size == 11
    assert "RESPONSE_BODY_UNEXPECTED" in names(ev)


def test_body_read_until_close_is_inspected_when_the_connection_closes() -> None:
    """A response without a status line is a body read until the connection closes
    (libhtp's HTTP/0.9-style response). When both sides have closed, the engine
    inspects it with the closing packet, as Suricata does at the end of the stream:
    the file_data rule drops that packet (IPS) and its alert is in EVE."""
    from appliance.core.commands import Log, Verdict, VerdictKind
    from appliance.core.engine import EngineConfig
    from tests.core.app.engine_run import alert_sids, engine_run

    rules = ['drop http any any -> any any (file_data; content:"EICAR-STANDARD"; sid:1;)']
    convo = [(True, b"GET /eicar.txt HTTP/1.1\r\nHost: h\r\n\r\n"),
             (False, b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!")]
    cmds: list[Any] = []
    recs = engine_run(rules, convo, 80, config=EngineConfig(mode="ips"), commands=cmds,
                      close=True)
    assert alert_sids(recs) == [1]
    verdicts = [c.kind for c in cmds if isinstance(c, Verdict)]
    # The last three packets are the FINs and the last ACK: the one that closes the
    # connection is the one the alert comes with.
    alert_at = next(i for i, c in enumerate(cmds) if isinstance(c, Log)
                    and c.record["event_type"] == "alert")
    assert sum(isinstance(c, Verdict) for c in cmds[:alert_at]) >= len(verdicts) - 3
    assert VerdictKind.DROP in verdicts[-3:]
    # Without the close, the body is never complete while packets flow: no alert from
    # a packet; the flow's end (here the end of input) inspects it on a pseudo packet.
    cmds = []
    recs = engine_run(rules, convo, 80, config=EngineConfig(mode="ips"), commands=cmds)
    assert not [c for c in cmds if isinstance(c, Log) and c.record["event_type"] == "alert"]
    (a,) = [r for r in recs if r["event_type"] == "alert"]
    assert a["alert"]["signature_id"] == 1 and a["pkt_src"] == "stream (flow timeout)"
    assert a["direction"] == "to_client" and a["src_port"] == 80 and "pcap_cnt" not in a


def test_payload_content_of_an_http_rule_is_matched_on_the_delivered_stream() -> None:
    """A rule mixing a payload content with file_data (suricata-verify bug-2576-04): the
    packet that hands a response to the app layer need not carry the bytes that match
    (here the segment filling a hole delivers the held one too; in the suricata-verify
    capture, the client's ACK); the payload content is matched on the stream bytes the
    packet delivered, as Suricata matches it on the raw stream."""
    from appliance.core.commands import Log
    from appliance.core.engine import Engine, EngineConfig
    from appliance.core.events import LINKTYPE_ETHERNET, PacketIn
    from appliance.rules.loader import detection_from_text

    loaded = detection_from_text([
        'alert http any any -> any any (content:"IE=Edge"; file_data; '
        'content:"IE=Edge"; sid:1;)',
        'alert http any any -> any any (content:"not-there"; file_data; '
        'content:"IE=Edge"; sid:2;)'])
    eng = Engine(EngineConfig(), loaded.engine)
    body = b"<meta content=IE=Edge>"
    req = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    c, srv = ("10.0.0.1", 40000), ("10.0.0.2", 80)
    seg = _seg

    cut = len(resp) - len(body) + 6  # the second part holds "IE=Edge"
    ack = 101 + len(req)
    pkts = [seg(c, srv, "S", 100, 0), seg(srv, c, "SA", 500, 101),
            seg(c, srv, "A", 101, 501), seg(c, srv, "PA", 101, 501, req),
            seg(srv, c, "PA", 501 + cut, ack, resp[cut:]),  # out of order: held
            seg(srv, c, "A", 501, ack, resp[:cut]),  # fills the hole: both delivered
            seg(c, srv, "A", ack, 501 + len(resp))]
    sids = []
    for i, data in enumerate(pkts):
        for cmd in eng.handle(PacketIn(i + 1, 10.0 + i, data, LINKTYPE_ETHERNET)):
            if isinstance(cmd, Log) and cmd.record["event_type"] == "alert":
                sids.append((i, cmd.record["alert"]["signature_id"]))
    assert sids == [(5, 1)]  # with the segment that delivered the whole response


def _seg(src: tuple[str, int], dst: tuple[str, int], flags: str, seq: int, ack: int,
         data: bytes = b"", ttl: int = 64) -> bytes:
    from scapy.layers.inet import IP, TCP, Ether

    return bytes(Ether() / IP(src=src[0], dst=dst[0], ttl=ttl) / TCP(
        sport=src[1], dport=dst[1], flags=flags, seq=seq, ack=ack) / data)


def _held_response_alerts(rules: list[str], released_by: bytes
                          ) -> list[tuple[int, int, str, str]]:
    """A request, then its response with a lower TTL than its direction has shown, so
    held until the client acknowledges it (core/stream.py, TTL-expiring chaff); the
    client's acknowledging packet carries `released_by`. Alerts as (packet index, sid,
    source address, direction)."""
    from appliance.core.commands import Log
    from appliance.core.engine import Engine, EngineConfig
    from appliance.core.events import LINKTYPE_ETHERNET, PacketIn
    from appliance.rules.loader import detection_from_text

    eng = Engine(EngineConfig(), detection_from_text(rules).engine)
    body = b"<meta content=IE=Edge>"
    req = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    c, srv = ("192.168.1.10", 40000), ("203.0.113.5", 80)
    ack = 101 + len(req)
    pkts = [_seg(c, srv, "S", 100, 0), _seg(srv, c, "SA", 500, 101),
            _seg(c, srv, "A", 101, 501), _seg(c, srv, "PA", 101, 501, req),
            _seg(srv, c, "PA", 501, ack, resp, ttl=10),  # held: lower TTL
            _seg(c, srv, "PA" if released_by else "A", ack, 501 + len(resp), released_by)]
    got = []
    for i, data in enumerate(pkts):
        for cmd in eng.handle(PacketIn(i + 1, 10.0 + i, data, LINKTYPE_ETHERNET)):
            if isinstance(cmd, Log) and cmd.record["event_type"] == "alert":
                r = cmd.record
                got.append((i, r["alert"]["signature_id"], r["src_ip"], r["direction"]))
    return got


def test_response_delivered_by_the_clients_ack_is_judged_in_its_own_direction() -> None:
    """The client's ACK delivers the held response to the app layer. Its transaction is
    judged and reported in the response's direction: a rule written `$EXTERNAL_NET any
    -> $HOME_NET any` with flow:to_client matches, and the alert's source is the server."""
    rules = ['alert http $EXTERNAL_NET any -> $HOME_NET any (flow:established,to_client; '
             'file_data; content:"IE=Edge"; sid:1;)']
    assert _held_response_alerts(rules, b"") == [(5, 1, "203.0.113.5", "to_client")]


def test_a_held_response_is_not_matched_on_the_bytes_of_the_packet_that_released_it(
        ) -> None:
    """The client's next request acknowledges the held response and so delivers it: a
    payload content of a to_client rule must not match what the client sent in it."""
    rules = ['alert http any any -> any any (flow:established,to_client; content:"SECOND-REQ";'
             ' file_data; content:"IE=Edge"; sid:1;)',
             'alert http any any -> any any (flow:established,to_client; content:"IE=Edge";'
             ' file_data; content:"IE=Edge"; sid:2;)']
    got = _held_response_alerts(rules, b"GET /SECOND-REQ HTTP/1.1\r\nHost: h\r\n\r\n")
    assert got == [(5, 2, "203.0.113.5", "to_client")]  # the response's own bytes only
