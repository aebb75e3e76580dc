"""Reading and writing the fuzz corpus's small file formats (tests/fuzz/corpus/).

- `*.pcap`: packet sequences for the engine, decoder and pcap-reader targets (classic
  pcap, microsecond timestamps, one link type per file).
- `*.conv`: one application-layer conversation: chunks of `>` (to server) or `<` (to
  client), a 4-byte big-endian length, the bytes. Stream parsers get the chunks in
  order; the DNS, DCERPC and Kerberos targets also take each chunk as one datagram, the
  SIP, SNMP, NFS and QUIC targets only as datagrams (QUIC also as an Initial's plaintext).
- `*.rules`, `*.yaml`, `*.ctl`: text seeds (one rule per line, one policy per file, one
  control-socket byte stream per file).
"""

from __future__ import annotations

import struct
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"

Frame = tuple[int, float, bytes]  # linktype, timestamp, data
Chunk = tuple[bool, bytes]  # to_server, data


def write_pcap(path: Path, frames: list[Frame]) -> None:
    linktype = frames[0][0] if frames else 1
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)]
    for lt, ts, data in frames:
        assert lt == linktype, "one link type per file"
        sec = int(ts)
        usec = min(999_999, round((ts - sec) * 1e6))
        out.append(struct.pack("<IIII", sec, usec, len(data), len(data)) + data)
    path.write_bytes(b"".join(out))


def pcap_bytes_frames(raw: bytes) -> list[Frame]:
    """Frames of a classic little-endian pcap as write_pcap writes them (corpus files
    only: the appliance's own reader is appliance/io/pcap.py)."""
    if len(raw) < 24:
        return []
    linktype = struct.unpack_from("<I", raw, 20)[0]
    off = 24
    frames: list[Frame] = []
    while off + 16 <= len(raw):
        sec, usec, incl, _orig = struct.unpack_from("<IIII", raw, off)
        off += 16
        frames.append((linktype, sec + usec / 1e6, raw[off:off + incl]))
        off += incl
    return frames


def write_conv(path: Path, chunks: list[Chunk]) -> None:
    path.write_bytes(b"".join((b">" if ts else b"<") + struct.pack("!I", len(d)) + d
                              for ts, d in chunks))


def read_conv(raw: bytes) -> list[Chunk]:
    chunks: list[Chunk] = []
    off = 0
    while off + 5 <= len(raw):
        ln = struct.unpack_from("!I", raw, off + 1)[0]
        chunks.append((raw[off:off + 1] == b">", raw[off + 5:off + 5 + ln]))
        off += 5 + ln
    return chunks


def write_pcapng(path: Path, frames: list[Frame]) -> None:
    """The same frames as pcapng: a section header, one interface, enhanced packet
    blocks (microsecond timestamps)."""
    linktype = frames[0][0] if frames else 1

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = 12 + len(body)
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
           block(1, struct.pack("<HHI", linktype, 0, 65535))]
    for _lt, ts, data in frames:
        t = round(ts * 1e6)
        out.append(block(6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(data),
                                        len(data)) + data))
    path.write_bytes(b"".join(out))
