"""Build the positive captures of the heuristic detectors into pcaps/heuristics/.

Run: .venv/bin/python pcaps/build_heuristics.py

Each file is one behaviour (a scan, a flood, a brute force, a DNS tunnel, a beacon,
HTTP on port 443) that one detector of appliance/core/detect/heuristics.py must report,
with the sid listed in pcaps/heuristics/README.md and `EXPECTED` below (the tests replay
every file and compare). As pcaps/build.py: fixed timestamps, fixed addresses and ports,
no randomness (the "random" parts come from a seeded counter hash), so rebuilds are
byte-identical; documentation (RFC 5737) and private (RFC 1918) addresses only; raw-IP
link type. Nothing is ever sent.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

logging.getLogger("scapy").setLevel(logging.ERROR)

from scapy.layers.dns import DNS, DNSQR  # noqa: E402
from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.packet import Packet, Raw  # noqa: E402
from scapy.utils import PcapWriter  # noqa: E402

OUT = Path(__file__).resolve().parent / "heuristics"
LT_RAW = 101
T0 = Decimal(1_700_000_000)  # 2023-11-14T22:13:20Z, as pcaps/build.py

SCANNER = "203.0.113.50"  # "the internet"
GUEST_NET = "10.20.0."  # guests behind the bridge
VICTIM = "10.20.0.10"

# file -> {sid: number of hits} the detectors must produce, nothing else.
EXPECTED: dict[str, dict[int, int]] = {
    "scan-horizontal-syn.pcap": {9001001: 1},
    "scan-vertical-syn.pcap": {9001002: 1},
    "scan-fin.pcap": {9001004: 1},
    "scan-null.pcap": {9001005: 1},
    "scan-xmas.pcap": {9001006: 1},
    "scan-udp.pcap": {9001008: 1},
    "syn-flood.pcap": {9001003: 1},
    "ssh-bruteforce.pcap": {9001010: 1},
    "dns-tunnel.pcap": {9001020: 1, 9001021: 1, 9001022: 1, 9001023: 1},
    "beacon.pcap": {9001030: 1},
    "http-on-443.pcap": {9001041: 1},
}

Record = tuple[Decimal, Packet]


def _det(tag: str, n: int) -> bytes:
    """Deterministic pseudo-random bytes."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{tag}:{i}".encode()).digest()
        i += 1
    return out[:n]


def write(name: str, records: Iterable[Record]) -> Path:
    OUT.mkdir(exist_ok=True)
    path = OUT / name
    with PcapWriter(str(path), linktype=LT_RAW, endianness="<") as w:
        for t, pkt in sorted(records, key=lambda r: r[0]):
            rec = Raw(load=bytes(pkt))
            rec.time = t  # type: ignore[assignment]  # scapy keeps the Decimal exact
            w.write(rec)
    return path


def ms(t: int) -> Decimal:
    """T0 + t milliseconds."""
    return T0 + Decimal(t) / 1000


def tcp(src: str, dst: str, sp: int, dp: int, flags: str, seq: int = 0, ack: int = 0,
        data: bytes = b"") -> Packet:
    p = IP(src=src, dst=dst, id=1, ttl=64) / TCP(sport=sp, dport=dp, flags=flags, seq=seq,
                                                  ack=ack, window=64240)
    return p / Raw(load=data) if data else p


def session(t: int, cli: str, srv: str, sp: int, dp: int, exchange: list[tuple[bool, bytes]],
            step_ms: int = 20) -> list[Record]:
    """A complete TCP connection: handshake, the (to_server, data) exchange, FIN both
    ways. Sequence numbers are exact so the stream tracker follows every byte."""
    cs, ss = 1000 + sp, 5000 + dp
    out: list[Record] = [
        (ms(t), tcp(cli, srv, sp, dp, "S", cs)),
        (ms(t + step_ms), tcp(srv, cli, dp, sp, "SA", ss, cs + 1)),
        (ms(t + 2 * step_ms), tcp(cli, srv, sp, dp, "A", cs + 1, ss + 1)),
    ]
    cs += 1
    ss += 1
    k = 3
    for to_server, data in exchange:
        if to_server:
            out.append((ms(t + k * step_ms), tcp(cli, srv, sp, dp, "PA", cs, ss, data)))
            cs += len(data)
        else:
            out.append((ms(t + k * step_ms), tcp(srv, cli, dp, sp, "PA", ss, cs, data)))
            ss += len(data)
        k += 1
    out += [
        (ms(t + k * step_ms), tcp(cli, srv, sp, dp, "FA", cs, ss)),
        (ms(t + (k + 1) * step_ms), tcp(srv, cli, dp, sp, "FA", ss, cs + 1)),
        (ms(t + (k + 2) * step_ms), tcp(cli, srv, sp, dp, "A", cs + 1, ss + 1)),
    ]
    return out


# -- scans -----------------------------------------------------------------------------


def build_scan_horizontal() -> None:
    """SYN sweep of 30 guests on port 22: odd hosts reset (port closed), even hosts are
    silent (filtered: counted when the attempt times out), 10.20.0.5 is open and the
    scanner resets the half-open connection as nmap does."""
    recs: list[Record] = []
    for i in range(1, 31):
        host = GUEST_NET + str(i)
        t = i * 50
        sp = 41000 + i
        recs.append((ms(t), tcp(SCANNER, host, sp, 22, "S", 7000)))
        if i == 5:
            recs.append((ms(t + 5), tcp(host, SCANNER, 22, sp, "SA", 9000, 7001)))
            recs.append((ms(t + 6), tcp(SCANNER, host, sp, 22, "R", 7001)))
        elif i % 2:
            recs.append((ms(t + 5), tcp(host, SCANNER, 22, sp, "RA", 0, 7001)))
    write("scan-horizontal-syn.pcap", recs)


def build_scan_vertical() -> None:
    """SYN scan of ports 1-100 on one guest: closed ports reset, 22 and 80 are open
    (SYN-ACK, then the scanner's RST)."""
    recs: list[Record] = []
    for port in range(1, 101):
        t = port * 10
        sp = 45000
        recs.append((ms(t), tcp(SCANNER, VICTIM, sp, port, "S", 7000)))
        if port in (22, 80):
            recs.append((ms(t + 2), tcp(VICTIM, SCANNER, port, sp, "SA", 9000, 7001)))
            recs.append((ms(t + 3), tcp(SCANNER, VICTIM, sp, port, "R", 7001)))
        else:
            recs.append((ms(t + 2), tcp(VICTIM, SCANNER, port, sp, "RA", 0, 7001)))
    write("scan-vertical-syn.pcap", recs)


def build_scan_stealth(name: str, flags: str) -> None:
    """FIN / NULL / Xmas probes to 10 ports: closed ports answer RST-ACK (RFC 9293
    3.10.7.1), open ports (22, 80) stay silent."""
    recs: list[Record] = []
    for n, port in enumerate((21, 22, 23, 25, 53, 80, 110, 135, 139, 445)):
        t = n * 20
        recs.append((ms(t), tcp(SCANNER, VICTIM, 46000, port, flags, 7000)))
        if port not in (22, 80):
            recs.append((ms(t + 2), tcp(VICTIM, SCANNER, port, 46000, "RA", 0, 7001)))
    write(name, recs)


def build_scan_udp() -> None:
    """UDP probes to ports 1-30 on one guest, each answered by ICMP port unreachable
    (3/3) quoting the probe (RFC 792)."""
    recs: list[Record] = []
    for port in range(1, 31):
        t = port * 30
        probe = IP(src=SCANNER, dst=VICTIM, id=1, ttl=64) / UDP(sport=47000, dport=port)
        recs.append((ms(t), probe))
        err = IP(src=VICTIM, dst=SCANNER, id=2, ttl=64) / ICMP(type=3, code=3) / bytes(probe)
        recs.append((ms(t + 1), err))
    write("scan-udp.pcap", recs)


# -- flood and brute force -------------------------------------------------------------


def build_syn_flood() -> None:
    """300 SYNs in 3 s to 10.20.0.10:80 from 250 spoofed sources; the guest answers
    each with a SYN-ACK that nobody completes. Two real clients complete their
    connections in the middle of it."""
    recs: list[Record] = []
    for i in range(300):
        src = f"198.51.100.{1 + i % 250}" if i % 2 else f"203.0.113.{1 + i % 250}"
        sp = 1024 + (i * 7919) % 60000
        t = i * 10
        recs.append((ms(t), tcp(src, VICTIM, sp, 80, "S", 100000 + i)))
        recs.append((ms(t + 1), tcp(VICTIM, src, 80, sp, "SA", 900000 + i, 100001 + i)))
    for j, t in enumerate((1000, 2000)):
        recs += session(t + 3, f"192.168.7.{j + 1}", VICTIM, 50000 + j, 80,
                        [(True, b"GET / HTTP/1.1\r\nHost: guest.test\r\n\r\n"),
                         (False, b"HTTP/1.1 204 No Content\r\n\r\n")], step_ms=2)
    write("syn-flood.pcap", recs)


def build_ssh_bruteforce() -> None:
    """15 short SSH connections from one client to one guest, one every 3 s: banners,
    ~1.2 KB of key exchange each way, a failed password, the server closes."""
    recs: list[Record] = []
    attacker = "203.0.113.77"
    server = "10.20.0.22"
    for i in range(15):
        kex_c = b"\x00\x00\x04\xac\x0a\x14" + _det(f"kexc{i}", 1190)
        kex_s = b"\x00\x00\x04\xbc\x0a\x14" + _det(f"kexs{i}", 1210)
        auth = _det(f"auth{i}", 96)
        recs += session(i * 3000, attacker, server, 52000 + i, 22, [
            (False, b"SSH-2.0-OpenSSH_9.6\r\n"),
            (True, b"SSH-2.0-libssh_0.10.6\r\n"),
            (True, kex_c), (False, kex_s), (True, auth), (False, auth[:64]),
        ], step_ms=100)
    write("ssh-bruteforce.pcap", recs)


# -- DNS tunnel ----------------------------------------------------------------------------


def build_dns_tunnel() -> None:
    """160 TXT queries in 40 s from one guest to its resolver, each name two 52-char
    base32 labels of "data" under tunnel.example, answered NXDOMAIN."""
    recs: list[Record] = []
    client, resolver = "10.20.0.30", "10.20.0.53"
    for i in range(160):
        data = base64.b32encode(_det(f"exfil{i}", 65)).decode().rstrip("=").lower()
        name = f"{data[:52]}.{data[52:104]}.tunnel.example"
        sp = 30000 + i
        q = DNS(id=i + 1, rd=1, qd=DNSQR(qname=name, qtype="TXT"))
        r = DNS(id=i + 1, qr=1, rd=1, ra=1, rcode=3, qd=DNSQR(qname=name, qtype="TXT"))
        recs.append((ms(i * 250), IP(src=client, dst=resolver, id=1, ttl=64)
                     / UDP(sport=sp, dport=53) / q))
        recs.append((ms(i * 250 + 3), IP(src=resolver, dst=client, id=1, ttl=64)
                     / UDP(sport=53, dport=sp) / r))
    write("dns-tunnel.pcap", recs)


# -- beacon and mismatch -------------------------------------------------------------------

# Jitter of the beacon, in ms, within +-1 s (a fixed sequence: deterministic).
_JITTER = (0, 800, -500, 1000, -1000, 300, -200, 700, -800, 100,
           -600, 900, -300, 500, -900, 200, -100, 600, -400, 0)


def build_beacon() -> None:
    """20 connections from a guest to 198.51.100.80:443, one every 60 s +- 1 s, each a
    short exchange of opaque bytes (an implant checking in)."""
    recs: list[Record] = []
    for i in range(20):
        t = i * 60_000 + _JITTER[i]
        recs += session(t, "10.20.0.40", "198.51.100.80", 49000 + i, 443, [
            (True, b"\x00\x01" + _det(f"beacon{i}", 118)),
            (False, b"\x00\x02" + _det(f"task{i}", 30)),
        ])
    write("beacon.pcap", recs)


def build_http_on_443() -> None:
    """Plain HTTP (a request and its response) to port 443."""
    recs = session(0, "10.20.0.50", "198.51.100.90", 50000, 443, [
        (True, b"GET /c2/poll HTTP/1.1\r\nHost: 198.51.100.90:443\r\nUser-Agent: x\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    write("http-on-443.pcap", recs)


def main() -> None:
    build_scan_horizontal()
    build_scan_vertical()
    build_scan_stealth("scan-fin.pcap", "F")
    build_scan_stealth("scan-null.pcap", "")
    build_scan_stealth("scan-xmas.pcap", "FPU")
    build_scan_udp()
    build_syn_flood()
    build_ssh_bruteforce()
    build_dns_tunnel()
    build_beacon()
    build_http_on_443()
    for name in sorted(EXPECTED):
        print(OUT / name)


if __name__ == "__main__":
    main()
