"""SMTP + MIME parsing speed and memory: one message with a base64 attachment and a
quoted-printable text part, fed in 1460-byte segments through app/smtp.py.

Prints MB/s of wire bytes, the largest memuse() seen, and the attachment's decoded size.

Run: .venv/bin/python bench/smtp.py [--mib N] [--repeat R]
"""

from __future__ import annotations

import argparse
import base64
import os
import time

from appliance.core.app.smtp import SMTP_FILE, SmtpParser


def message(size: int) -> bytes:
    raw = os.urandom(size)
    b64 = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    text = (b"Hello =C3=A9 see http://example.org/x and more text here =\r\nsoft\r\n") * 2000
    return b"".join([
        b"From: a <a@example.org>\r\nTo: b@example.com\r\nSubject: bench\r\n",
        b"Content-Type: multipart/mixed; boundary=BB\r\n\r\n--BB\r\n",
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
        text, b"--BB\r\nContent-Type: application/octet-stream\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Disposition: attachment; filename=\"big.bin\"\r\n\r\n", b64, b"--BB--\r\n",
    ])


def run(msg: bytes) -> tuple[float, int, int]:
    p = SmtpParser()
    p.feed(b"220 mx ESMTP\r\n", False)
    p.feed(b"EHLO c\r\n", True)
    p.feed(b"250-mx\r\n250 PIPELINING\r\n", False)
    wire = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n" + msg + \
        b".\r\nQUIT\r\n"
    peak = 0
    size = 0
    t0 = time.perf_counter()
    for i in range(0, len(wire), 1460):
        for ev in p.feed(wire[i:i + 1460], True):
            if ev.kind == SMTP_FILE:
                size = ev.data["file"].size
        m = p.memuse()
        if m > peak:
            peak = m
    dt = time.perf_counter() - t0
    return len(wire) / dt / 1e6, peak, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=8, help="attachment size in MiB")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    msg = message(a.mib << 20)
    best = 0.0
    for _ in range(a.repeat):
        rate, peak, size = run(msg)
        best = max(best, rate)
    print(f"smtp+mime: {len(msg) / 1e6:.1f} MB message, best of {a.repeat}: {best:.1f} MB/s; "
          f"peak memuse {peak} bytes; attachment decoded {size} bytes")


if __name__ == "__main__":
    main()
