"""Services of the lab's `internet` namespace: a small HTTP server and a DNS responder.

Run by `appliance.lab` inside the namespace (`python -m appliance.lab_services http|dns`).
They listen on the lab's documentation addresses only and stop when the lab goes down.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

V4: Final = "203.0.113.10"
V6: Final = "2001:db8:113::10"
PAGE: Final = b"<html><body><h1>Hello from the lab internet</h1></body></html>\n"
# The EICAR antivirus test file (a harmless string every scanner flags), assembled so
# that this source file itself is not flagged by scanners on the machine.
EICAR: Final = (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!"
                + b"$H+H*")
# A benign download every guest fetches the same (for the shared scan cache).
SHARED_FILE: Final = b"".join(b"line %06d of the lab's shared file\n" % i for i in range(2000))
# A download far larger than the 100 KiB of body kept for detection, with a marker at its
# end: tests scan it with a YARA rule of their own to prove the scanners see all of it.
LARGE_MARKER: Final = b"APPLIANCE-LAB-LARGE-FILE-MARKER"
LARGE_FILE: Final = bytes(range(256)) * 2400 + LARGE_MARKER + b"\n"


class Handler(BaseHTTPRequestHandler):
    server_version = "lab-httpd/1.0"

    def _send(self, body: bytes, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/files/eicar.com":
            self._send(EICAR, "application/x-msdos-program")
            return
        if self.path == "/files/shared.txt":
            self._send(SHARED_FILE, "text/plain")
            return
        if self.path == "/files/large.bin":
            self._send(LARGE_FILE, "application/octet-stream")
            return
        # /bulk/N: N bytes as a download (the bundled pass rule bypasses these);
        # /text/N: N bytes of text (inspected throughout).
        if self.path.startswith(("/bulk/", "/text/")):
            try:
                size = min(int(self.path.rsplit("/", 1)[1]), 1 << 30)
            except ValueError:
                size = 1 << 20
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream"
                             if self.path.startswith("/bulk/") else "text/plain")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk = (b"\0" if self.path.startswith("/bulk/") else b"a") * 65536
            left = size
            while left > 0:
                n = min(left, len(chunk))
                self.wfile.write(chunk[:n])
                left -= n
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


class V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def serve_http() -> None:
    servers = [ThreadingHTTPServer((V4, 80), Handler), V6Server((V6, 80), Handler)]
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    servers[0].serve_forever()


def dns_answer(query: bytes) -> bytes | None:
    """Answer A/AAAA for any name with the lab server's address (RFC 1035 wire format)."""
    if len(query) < 12:
        return None
    tid, flags, qd = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qd != 1:
        return None
    pos = 12
    while pos < len(query) and query[pos]:
        pos += query[pos] + 1
    if pos + 5 > len(query):
        return None
    qtype = struct.unpack("!H", query[pos + 1:pos + 3])[0]
    question = query[12:pos + 5]
    answers = b""
    count = 0
    if qtype == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(V4)
        count = 1
    elif qtype == 28:
        answers = (b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, 60, 16)
                   + socket.inet_pton(socket.AF_INET6, V6))
        count = 1
    hdr = struct.pack("!HHHHHH", tid, 0x8180, 1, count, 0, 0)
    return hdr + question + answers


def serve_dns() -> None:
    socks = []
    for fam, addr in ((socket.AF_INET, V4), (socket.AF_INET6, V6)):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((addr, 53))
        socks.append(s)

    def loop(s: socket.socket) -> None:
        while True:
            data, peer = s.recvfrom(4096)
            ans = dns_answer(data)
            if ans is not None:
                s.sendto(ans, peer)

    threading.Thread(target=loop, args=(socks[1],), daemon=True).start()
    loop(socks[0])


if __name__ == "__main__":
    {"http": serve_http, "dns": serve_dns}[sys.argv[1]]()
