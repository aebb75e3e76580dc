"""A cheap small-UDP-packet sender and sink for bench/inline.py (run inside lab guests).

    python bench/udpblast.py send ADDR PORT RATE SECONDS [--size 64]
    python bench/udpblast.py sink ADDR PORT SECONDS

iperf3 pays a system call, a timer check and its own bookkeeping per datagram, and its
server reads every one: on a 2-core machine the two senders and two servers of the
small-packet test took most of the CPU the appliance's workers needed (~13 us of
harness per packet over the bare bridge). `send` hands the kernel 256 datagrams per
sendmmsg(2) call (ctypes, glibc), each with its own random 64-byte payload (drawn once;
the batch is resent), paced to RATE packets/s in 10 ms slices; it prints what it sent.
`sink` binds the port with the smallest receive buffer and never reads, so datagrams
that crossed the bridge cost the kernel one failed enqueue (counted in the namespace's
Udp InErrors / Udp6InErrors); bench/inline.py counts delivered packets from /proc/net/snmp
and /proc/net/snmp6 of the server's namespace. Both stop after SECONDS.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import time

BATCH = 256
SLICE = 0.01


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def send(addr: str, port: int, rate: int, seconds: float, size: int = 64) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    s = socket.socket(_family(addr), socket.SOCK_DGRAM)
    s.connect((addr, port))
    payloads = [ctypes.create_string_buffer(os.urandom(size), size) for _ in range(BATCH)]
    iovs = (_Iovec * BATCH)()
    msgs = (_Mmsghdr * BATCH)()
    for i, buf in enumerate(payloads):
        iovs[i].base = ctypes.addressof(buf)
        iovs[i].len = size
        msgs[i].hdr.iov = ctypes.pointer(iovs[i])
        msgs[i].hdr.iovlen = 1
    sendmmsg = libc.sendmmsg
    fd = s.fileno()
    sent = 0
    start = time.monotonic()
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start + SLICE) * rate) - sent
        while due > 0:
            n = sendmmsg(fd, msgs, min(due, BATCH), 0)
            if n <= 0:  # ENOBUFS/EAGAIN under pressure: the datagrams were not sent
                break
            sent += n
            due -= n
        time.sleep(max(0.0, start + (sent / rate if rate else 0) - time.monotonic())
                   if rate else 0)
    s.close()
    return sent


def sink(addr: str, port: int, seconds: float) -> None:
    s = socket.socket(_family(addr), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    s.bind((addr, port))
    time.sleep(seconds)
    s.close()


def main() -> None:
    cmd, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "send":
        size = int(sys.argv[7]) if len(sys.argv) > 7 and sys.argv[6] == "--size" else 64
        print(send(addr, port, int(sys.argv[4]), float(sys.argv[5]), size))
    elif cmd == "sink":
        sink(addr, port, float(sys.argv[4]))
    else:
        raise SystemExit(f"unknown command {cmd!r}: send or sink")


if __name__ == "__main__":
    main()
