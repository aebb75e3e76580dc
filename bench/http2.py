"""HTTP/2 parser figures: bytes/s through Http2Parser for a connection of many streams
(HEADERS, DATA in 16 KiB frames, WINDOW_UPDATEs), HPACK blocks/s (Huffman-coded
browser-like request headers, dynamic table hits), and the parser's memuse.

Run: .venv/bin/python bench/http2.py [--streams N] [--body BYTES]
"""

from __future__ import annotations

import argparse
import struct
import time

from appliance.core.app.hpack import Decoder
from appliance.core.app.http2 import PREFACE, Http2Parser


def frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack("!I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(
        "!I", stream) + payload


def literal(name: bytes, value: bytes) -> bytes:
    def s(b: bytes) -> bytes:
        return bytes([len(b)]) + b if len(b) < 127 else b"\x7f" + bytes([len(b) - 127]) + b
    return b"\x40" + s(name) + s(value)  # incremental indexing, raw strings


# The first block adds these to the dynamic table; later ones index them (62..).
_FIELDS = [(b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) bench/1.0"),
           (b"accept", b"text/html,application/xhtml+xml,*/*;q=0.8"),
           (b"accept-language", b"en-US,en;q=0.5"), (b"cookie", b"session=" + b"a" * 40)]
# RFC 7541 C.4.1: :method GET, :scheme http, :path /, :authority www.example.com (Huffman)
_HUFF = bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff")


def build(streams: int, body: int) -> tuple[bytes, bytes]:
    first = _HUFF + b"".join(literal(n, v) for n, v in _FIELDS)
    again = _HUFF + bytes(0x80 | (62 + i) for i in range(len(_FIELDS)))
    cli = [PREFACE, frame(4, 0, 0, b"")]
    srv = [frame(4, 0, 0, struct.pack("!HI", 3, 100))]
    chunk = b"x" * 16384
    for i in range(streams):
        sid = 2 * i + 1
        cli.append(frame(1, 5, sid, first if i == 0 else again))
        srv.append(frame(1, 4, sid, b"\x88"))
        left = body
        while left > 0:
            n = min(left, len(chunk))
            left -= n
            srv.append(frame(0, 1 if left == 0 else 0, sid, chunk[:n]))
            cli.append(frame(8, 0, 0, struct.pack("!I", n)))
    return b"".join(cli), b"".join(srv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=500)
    ap.add_argument("--body", type=int, default=64 * 1024)
    args = ap.parse_args()
    cli, srv = build(args.streams, args.body)
    p = Http2Parser()
    peak = 0
    t0 = time.perf_counter()
    events = 0
    step = 1460  # one TCP segment at a time, as reassembly hands them over
    ci = si = 0
    while ci < len(cli) or si < len(srv):
        if ci < len(cli):
            events += len(p.feed(cli[ci:ci + step], True))
            ci += step
        if si < len(srv):
            events += len(p.feed(srv[si:si + step], False))
            si += step
        peak = max(peak, p.memuse())
    events += len(p.close())
    dt = time.perf_counter() - t0
    total = len(cli) + len(srv)
    print(f"parser: {total / 1e6:.1f} MB in {dt:.2f} s = {total / dt / 1e6:.1f} MB/s, "
          f"{args.streams} streams, {events} events, peak memuse {peak / 1024:.0f} KiB")
    d = Decoder()
    first = _HUFF + b"".join(literal(n, v) for n, v in _FIELDS)
    again = _HUFF + bytes(0x80 | (62 + i) for i in range(len(_FIELDS)))
    d.decode(first)
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        d.decode(again)
    dt = time.perf_counter() - t0
    print(f"hpack: {n / dt:,.0f} blocks/s (8 fields, 4 Huffman-coded, 4 dynamic hits)")
    t0 = time.perf_counter()
    for _ in range(n // 10):
        Decoder().decode(first)
    dt = time.perf_counter() - t0
    print(f"hpack: {n // 10 / dt:,.0f} first blocks/s (4 literals added to the table)")


if __name__ == "__main__":
    main()
