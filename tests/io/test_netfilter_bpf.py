"""The pure-ACK BPF programs our chains load (xt_bpf), run by a small classic-BPF
interpreter on real packet bytes: what they let skip the queue."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from appliance.io.netfilter import PURE_ACK_V4, PURE_ACK_V6


def run_bpf(bytecode: str, pkt: bytes) -> int:
    """Classic BPF as the kernel runs it, for the instructions our programs use; an
    out-of-bounds load returns 0 (the kernel's answer)."""
    n, *rest = bytecode.split(",")
    prog = [tuple(int(x) for x in ins.split()) for ins in rest]
    assert len(prog) == int(n)
    a = x = 0
    mem = [0] * 16
    pc = 0
    for _ in range(len(prog) + 1):  # no backward jumps: each instruction at most once
        code, jt, jf, k = prog[pc]
        pc += 1

        def load(off: int, size: int) -> int | None:
            if off < 0 or off + size > len(pkt):
                return None
            return int.from_bytes(pkt[off:off + size], "big")

        if code in (0x30, 0x28, 0x50):  # ldb/ldh abs, ldb ind
            off = k + (x if code == 0x50 else 0)
            v = load(off, 1 if code in (0x30, 0x50) else 2)
            if v is None:
                return 0
            a = v
        elif code == 0xB1:  # ldxb 4*([k]&0xf)
            v = load(k, 1)
            if v is None:
                return 0
            x = (v & 0xF) * 4
        elif code == 0x54:
            a &= k
        elif code == 0x74:
            a >>= k
        elif code == 0x0C:
            a = (a + x) & 0xFFFFFFFF
        elif code == 0x02:
            mem[k] = a
        elif code == 0x61:
            x = mem[k]
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x1D:
            pc += jt if a == x else jf
        elif code == 0x45:
            pc += jt if a & k else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"instruction {code:#x} not interpreted")
    raise AssertionError("ran off the program")


C4, S4, C6, S6 = "10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"


@pytest.mark.parametrize(("pkt", "want"), [
    (IP(src=C4, dst=S4) / TCP(flags="A"), True),
    (IP(src=C4, dst=S4) / TCP(flags="A", options=[("Timestamp", (1, 2))]), True),
    (IP(src=C4, dst=S4, options=b"\x01\x01\x01\x00") / TCP(flags="A"), True),
    (IP(src=C4, dst=S4) / TCP(flags="PA"), True),  # PSH without bytes: nothing to see
    (IP(src=C4, dst=S4) / TCP(flags="A") / Raw(b"x"), False),
    (IP(src=C4, dst=S4) / TCP(flags="A", options=[("Timestamp", (1, 2))]) / Raw(b"x" * 12),
     False),
    (IP(src=C4, dst=S4) / TCP(flags="FA"), False),
    (IP(src=C4, dst=S4) / TCP(flags="RA"), False),
    (IP(src=C4, dst=S4) / TCP(flags="S"), False),
    (IP(src=C4, dst=S4) / TCP(flags="SA"), False),
    (IP(src=C4, dst=S4) / TCP(flags="UA"), False),
    (IP(src=C4, dst=S4) / UDP(), False),
    (IP(src=C4, dst=S4, frag=10, proto=6) / Raw(bytes(20)), False),
])
def test_pure_ack_v4(pkt: IP, want: bool) -> None:
    assert bool(run_bpf(PURE_ACK_V4, bytes(pkt))) is want


@pytest.mark.parametrize(("pkt", "want"), [
    (IPv6(src=C6, dst=S6) / TCP(flags="A"), True),
    (IPv6(src=C6, dst=S6) / TCP(flags="A", options=[("Timestamp", (1, 2))]), True),
    (IPv6(src=C6, dst=S6) / TCP(flags="A") / Raw(b"x"), False),
    (IPv6(src=C6, dst=S6) / TCP(flags="FA"), False),
    (IPv6(src=C6, dst=S6) / TCP(flags="S"), False),
    (IPv6(src=C6, dst=S6) / UDP(), False),
])
def test_pure_ack_v6(pkt: IPv6, want: bool) -> None:
    assert bool(run_bpf(PURE_ACK_V6, bytes(pkt))) is want


def test_a_truncated_packet_is_not_a_pure_ack() -> None:
    raw = bytes(IP(src=C4, dst=S4) / TCP(flags="A"))
    assert run_bpf(PURE_ACK_V4, raw[:30]) == 0
    # A lying total length (shorter than the headers) is no match either.
    bad = raw[:2] + struct.pack(">H", 20) + raw[4:]
    assert run_bpf(PURE_ACK_V4, bad) == 0
