"""Build the TCP evasion captures in pcaps/evasion/ (run: .venv/bin/python pcaps/build_evasion.py).

Each case is one TCP connection from a client to a server that tries to make an IDS see
different bytes than the receiving host: overlapping segments with different data,
out-of-order delivery, tiny segments, a retransmission with a different payload, data
outside the receiver's window, chaff with a bad checksum, and a few more. Every case is
written twice, over IPv4 (192.0.2.10 -> 198.51.100.20) and IPv6 (2001:db8::10 ->
2001:db8::20): documentation addresses only (RFC 5737, RFC 3849), locally administered
MACs, fixed timestamps (T0 = 1700000000 plus 1 ms per record), no randomness, so
rebuilding gives byte-identical files. Nothing is ever sent: these are files.

`CASES` is also what tests/core/test_stream.py checks: for each case, the client->server
bytes the receiver reassembles under each host OS policy (`expected`, with "*" for every
policy not listed). pcaps/EVASION.md describes the cases.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

logging.getLogger("scapy").setLevel(logging.ERROR)

from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Packet, Raw  # noqa: E402
from scapy.utils import PcapWriter  # noqa: E402

OUT = Path(__file__).resolve().parent / "evasion"
T0 = Decimal(1_700_000_000)
CMAC, SMAC = "02:00:00:00:00:0a", "02:00:00:00:00:14"
ADDRS = {4: ("192.0.2.10", "198.51.100.20"), 6: ("2001:db8::10", "2001:db8::20")}
CPORT, SPORT = 40000, 80
CISN, SISN = 1000, 5000  # initial sequence numbers of client and server
LT_ETHERNET = 1


@dataclass(frozen=True)
class Seg:
    """One packet of a case. `off` is the stream offset of the first data byte (0 = the
    byte after the SYN); for the server it counts in the server's stream."""

    client: bool
    flags: str
    off: int = 0
    data: bytes = b""
    win: int = 65535
    chksum: int | None = None  # a fixed (bad) TCP checksum
    ts: tuple[int, int] | None = None  # TCP timestamps option (tsval, tsecr)
    ack_off: int | None = None  # ACK as a stream offset of the other side (default: all)


@dataclass(frozen=True)
class Case:
    name: str
    about: str
    segs: Sequence[Seg]
    # policy -> client->server bytes the receiver reassembles; "*" for the others.
    expected: dict[str, bytes]
    # StreamConfig fields the case needs (e.g. checksum validation).
    config: dict[str, object] = field(default_factory=dict)
    # The anomaly every policy must raise (Suricata event name), if any.
    event: str | None = None


def handshake(win: int = 65535, ts: bool = False) -> list[Seg]:
    t = (100, 0) if ts else None
    return [Seg(True, "S", -1, ts=t, win=win), Seg(False, "SA", -1, ts=(500, 100) if ts else None,
                                                    win=win),
            Seg(True, "A", 0, ts=(101, 500) if ts else None, win=win)]


def server_ack(upto: int, win: int = 65535) -> Seg:
    return Seg(False, "A", 0, ack_off=upto, win=win)


REQ = b"GET /evil.exe HTTP/1.0\r\n\r\n"
_NEW_SAME_START_LONGER = {"last", "linux", "old-linux", "solaris", "hpux11"}
_NEW_BEFORE_COVERS = {"last", "bsd", "hpux10", "irix", "macos", "windows", "windows2k3",
                      "linux", "old-linux", "solaris", "hpux11"}
ALL_POLICIES = ("first", "last", "bsd", "linux", "old-linux", "windows", "windows2k3",
                "vista", "solaris", "hpux10", "hpux11", "irix", "macos")

CASES: list[Case] = [
    Case("tiny-segments", "the request in 1-byte segments",
         [*handshake(), *(Seg(True, "PA", i, REQ[i:i + 1]) for i in range(len(REQ))),
          server_ack(len(REQ))],
         {"*": REQ}),
    Case("out-of-order", "the request in 4 segments sent last first",
         [*handshake(), Seg(True, "PA", 18, REQ[18:]), Seg(True, "PA", 12, REQ[12:18]),
          Seg(True, "PA", 5, REQ[5:12]), Seg(True, "PA", 0, REQ[:5]), server_ack(len(REQ))],
         {"*": REQ}),
    Case("overlap-same-start-longer",
         "held 'good' at 5, then 'evil.exe' at 5 (same start, longer), then 'GET /' fills the "
         "hole: Linux, old Linux, Solaris, HP-UX 11 and 'last' take the new bytes",
         [*handshake(), Seg(True, "PA", 5, b"good"), Seg(True, "PA", 5, b"evil.exe"),
          Seg(True, "PA", 13, REQ[13:]), Seg(True, "PA", 0, b"GET /"), server_ack(len(REQ))],
         {**{p: REQ for p in _NEW_SAME_START_LONGER}, "*": b"GET /good.exe" + REQ[13:]},
         event="stream.reassembly_overlap_different_data"),
    Case("overlap-starts-before",
         "held 'XXXX' at 9, then 'evil.exe' at 5 covering it, then 'GET /': every policy but "
         "first and Vista takes the new bytes",
         [*handshake(), Seg(True, "PA", 9, b"XXXX"), Seg(True, "PA", 5, b"evil.exe"),
          Seg(True, "PA", 13, REQ[13:]), Seg(True, "PA", 0, b"GET /"), server_ack(len(REQ))],
         {**{p: REQ for p in _NEW_BEFORE_COVERS}, "*": b"GET /evilXXXX" + REQ[13:]},
         event="stream.reassembly_overlap_different_data"),
    Case("retransmit-different",
         "'GET /good.exe' delivered in order, then the same sequence numbers again with "
         "'GET /evil.exe': the receiver keeps its first copy",
         [*handshake(), Seg(True, "PA", 0, b"GET /good.exe"), Seg(True, "PA", 0, b"GET /evil.exe"),
          Seg(True, "PA", 13, REQ[13:]), server_ack(len(REQ))],
         {"*": b"GET /good.exe" + REQ[13:]},
         event="stream.reassembly_overlap_different_data"),
    Case("out-of-window",
         "the server advertises an 8-byte window; 'evil' is sent at offset 8 before the "
         "window opens (every receiver drops it), then the real bytes",
         [*handshake(win=8), Seg(True, "PA", 8, b"XXXXXXXX", win=8),
          Seg(True, "PA", 0, REQ[:8], win=8), server_ack(8, win=65535),
          Seg(True, "PA", 8, REQ[8:]), server_ack(len(REQ))],
         {"*": REQ}, event="stream.est_packet_out_of_window"),
    Case("bad-checksum",
         "'GET /good.exe' with a bad TCP checksum first (the receiver drops it), then the "
         "real 'GET /evil.exe'",
         [*handshake(), Seg(True, "PA", 0, b"GET /good.exe", chksum=0xBAD0),
          Seg(True, "PA", 0, REQ[:13]), Seg(True, "PA", 13, REQ[13:]), server_ack(len(REQ))],
         {"*": REQ}, config={"checksum_validation": "yes"}, event="stream.invalid_checksum"),
    Case("no-ack-chaff",
         "'GET /good.exe' without the ACK flag (dropped by a synchronized receiver, RFC 9293 "
         "3.10.7.4), then the real bytes",
         [*handshake(), Seg(True, "P", 0, b"GET /good.exe"), Seg(True, "PA", 0, REQ[:13]),
          Seg(True, "PA", 13, REQ[13:]), server_ack(len(REQ))],
         {"*": REQ}, event="stream.pkt_without_ack"),
    Case("paws-chaff",
         "timestamps negotiated; 'GET /good.exe' with an old timestamp (PAWS drops it, RFC "
         "7323 5), then the real bytes with a current one",
         [*handshake(ts=True), Seg(True, "PA", 0, b"GET /good.exe", ts=(50, 500)),
          Seg(True, "PA", 0, REQ[:13], ts=(102, 500)), Seg(True, "PA", 13, REQ[13:], ts=(103, 500)),
          server_ack(len(REQ))],
         {"*": REQ}, event="stream.pkt_invalid_timestamp"),
    Case("rst-out-of-window",
         "a RST far outside the window (ignored: the connection lives on), then the request",
         [*handshake(), Seg(True, "R", 400_000), Seg(True, "PA", 0, REQ), server_ack(len(REQ))],
         {"*": REQ}, event="stream.rst_invalid"),
    Case("syn-with-data-tfo",
         "TCP Fast Open: the SYN carries 'GET /' and the SYN/ACK acknowledges it, then the rest",
         [Seg(True, "S", -1, b"GET /"), Seg(False, "SA", -1, ack_off=5),
          Seg(True, "A", 5), Seg(True, "PA", 5, REQ[5:]), server_ack(len(REQ))],
         {"*": REQ}),
]


def _seq(isn: int, off: int) -> int:
    return (isn + 1 + off) & 0xFFFFFFFF


def build_packets(case: Case, ipver: int) -> list[Packet]:
    cli, srv = ADDRS[ipver]
    pkts: list[Packet] = []
    sent_c = 0  # highest client stream offset sent, for the server's default ACK
    syn_data = 0
    for s in case.segs:
        if s.client:
            ip = IP(src=cli, dst=srv) if ipver == 4 else IPv6(src=cli, dst=srv)
            seq = (CISN if s.off < 0 else _seq(CISN, s.off))
            ack = 0 if s.flags in ("S", "R", "P") and "A" not in s.flags else _seq(SISN, 0)
            tcp = TCP(sport=CPORT, dport=SPORT, flags=s.flags, seq=seq, ack=ack, window=s.win)
            if s.flags == "S":
                syn_data = len(s.data)
            sent_c = max(sent_c, s.off + len(s.data))
            eth = Ether(src=CMAC, dst=SMAC)
        else:
            ip = IP(src=srv, dst=cli) if ipver == 4 else IPv6(src=srv, dst=cli)
            seq = SISN if s.off < 0 else _seq(SISN, s.off)
            if s.flags == "SA":
                # Acknowledges the SYN, and the SYN's data when ack_off says so (TFO).
                ack = (CISN + 1 + (s.ack_off or 0 if syn_data else 0)) & 0xFFFFFFFF
            else:
                ack = _seq(CISN, s.ack_off if s.ack_off is not None else sent_c)
            tcp = TCP(sport=SPORT, dport=CPORT, flags=s.flags, seq=seq, ack=ack, window=s.win)
            eth = Ether(src=SMAC, dst=CMAC)
        if s.ts is not None:
            tcp.options = [("Timestamp", s.ts)]
        if s.chksum is not None:
            tcp.chksum = s.chksum
        p = eth / ip / tcp
        if s.data:
            p = p / Raw(s.data)
        pkts.append(p)
    return pkts


def write_case(case: Case, ipver: int, out: Path = OUT) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{case.name}-v{ipver}.pcap"
    with PcapWriter(str(path), linktype=LT_ETHERNET, sync=True) as w:
        for i, p in enumerate(build_packets(case, ipver)):
            p.time = T0 + Decimal(i) / 1000
            w.write(p)
    return path


def main(out: Path = OUT) -> list[Path]:
    return [write_case(c, v, out) for c in CASES for v in (4, 6)]


if __name__ == "__main__":
    for path in main():
        print(path)
