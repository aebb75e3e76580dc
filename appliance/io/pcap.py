"""pcap and pcapng reader producing PacketIn events.

Written on `struct` over a memory map rather than dpkt's reader: it is the first stage of
every replayed packet and costs ~0.3 us a record this way. It handles both byte orders,
microsecond and nanosecond pcap, pcapng with several interfaces (each with its own link
type and timestamp resolution), and stops cleanly at a truncated record: every complete
packet is delivered, then `truncated_at` says where the file was cut.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from appliance.core.events import PacketIn
from appliance.errors import InputError

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D

# pcapng block types (draft-ietf-opsawg-pcapng)
_IDB = 0x00000001
_PB = 0x00000002  # obsolete Packet Block
_SPB = 0x00000003
_EPB = 0x00000006


class PcapReader:
    """Iterate a capture file's packets as PacketIn (id = 1-based record number, as
    Suricata's pcap_cnt)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.truncated_at: int | None = None  # byte offset of an incomplete record
        self.truncated_reason = ""
        self.count = 0
        try:
            self._f: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise InputError(f"{path}: is a directory, not a capture file") from None
        except OSError as e:
            raise InputError(f"{path}: cannot open: {e.strerror}") from None
        try:
            size = self.path.stat().st_size
            self._buf: bytes | mmap.mmap = (
                mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            )
        except (OSError, ValueError):
            self._buf = self._f.read()
        head = bytes(self._buf[:4])
        if len(head) < 4:
            self.close()
            raise InputError(f"{path}: not a pcap or pcapng file (too short)")
        magic_le = struct.unpack("<I", head)[0]
        magic_be = struct.unpack(">I", head)[0]
        if magic_le == PCAPNG_SHB:
            self.format = "pcapng"
        elif PCAP_MAGIC_US in (magic_le, magic_be) or PCAP_MAGIC_NS in (magic_le, magic_be):
            self.format = "pcap"
        else:
            self.close()
            raise InputError(f"{path}: not a pcap or pcapng file (magic {head.hex()})")

    def close(self) -> None:
        if isinstance(self._buf, mmap.mmap):
            self._buf.close()
        self._f.close()

    def __enter__(self) -> PcapReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[PacketIn]:
        if self.format == "pcap":
            return self._pcap()
        return self._pcapng()

    def _truncated(self, off: int, why: str) -> None:
        self.truncated_at = off
        self.truncated_reason = why

    def _pcap(self) -> Iterator[PacketIn]:
        buf = self._buf
        n = len(buf)
        if n < 24:
            self._truncated(0, "file header cut short")
            return
        magic = struct.unpack_from("<I", buf, 0)[0]
        e = "<" if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
        nano = magic == PCAP_MAGIC_NS or struct.unpack_from(">I", buf, 0)[0] == PCAP_MAGIC_NS
        linktype = struct.unpack_from(e + "I", buf, 20)[0] & 0x0FFFFFFF
        rec = struct.Struct(e + "IIII")
        unpack = rec.unpack_from
        div = 1e9 if nano else 1e6
        off = 24
        cnt = 0
        while off < n:
            if n - off < 16:
                self._truncated(off, "record header cut short")
                break
            sec, frac, incl, _orig = unpack(buf, off)
            off += 16
            end = off + incl
            if incl > 0x4000000:  # 64 MiB: no link layer has frames this big
                self._truncated(off - 16, f"record length {incl} is not plausible")
                break
            if end > n:
                self._truncated(off - 16, "packet data cut short")
                break
            cnt += 1
            yield PacketIn(cnt, sec + frac / div, buf[off:end], linktype)
            off = end
        self.count = cnt

    def _pcapng(self) -> Iterator[PacketIn]:
        buf = self._buf
        n = len(buf)
        off = 0
        cnt = 0
        e = "<"
        ifaces: list[tuple[int, float]] = []  # (linktype, seconds per tick)
        while off < n:
            if n - off < 12:
                self._truncated(off, "block header cut short")
                break
            btype = struct.unpack_from(e + "I", buf, off)[0]
            if btype == PCAPNG_SHB:
                bom = struct.unpack_from("<I", buf, off + 8)[0]
                e = "<" if bom == PCAPNG_BOM else ">"
                if struct.unpack_from(e + "I", buf, off + 8)[0] != PCAPNG_BOM:
                    self._truncated(off, "bad section header byte-order magic")
                    break
                ifaces = []  # interface ids are per section
            blen = struct.unpack_from(e + "I", buf, off + 4)[0]
            if blen < 12 or blen % 4:
                self._truncated(off, f"block length {blen} is invalid")
                break
            if off + blen > n:
                self._truncated(off, "block cut short")
                break
            body = off + 8
            if btype == _IDB:
                linktype = struct.unpack_from(e + "H", buf, body)[0]
                ifaces.append((linktype, _if_tsresol(buf, body + 8, off + blen - 4, e)))
            elif btype == _EPB or btype == _PB:
                if blen < 32:  # header, the 20 bytes of fields, trailing length
                    self._truncated(off, "packet block inconsistent")
                    break
                if btype == _EPB:
                    ifid, hi, lo, incl = struct.unpack_from(e + "IIII", buf, body)
                else:
                    ifid, hi, lo, incl = struct.unpack_from(e + "HxxIII", buf, body)
                data_off = body + 20
                if data_off + incl > off + blen - 4 or ifid >= len(ifaces):
                    self._truncated(off, "packet block inconsistent")
                    break
                lt, res = ifaces[ifid]
                cnt += 1
                yield PacketIn(cnt, ((hi << 32) | lo) * res, buf[data_off:data_off + incl], lt)
            elif btype == _SPB:
                if not ifaces:
                    self._truncated(off, "simple packet block before any interface")
                    break
                orig = struct.unpack_from(e + "I", buf, body)[0]
                incl = min(orig, blen - 16)
                lt, _res = ifaces[0]
                cnt += 1
                # Simple packet blocks carry no timestamp.
                yield PacketIn(cnt, 0.0, buf[body + 4:body + 4 + incl], lt)
            off += blen
        self.count = cnt


def _if_tsresol(buf: bytes | mmap.mmap, pos: int, end: int, e: str) -> float:
    """Seconds per timestamp unit from an IDB's if_tsresol option (default 10^-6)."""
    while pos + 4 <= end:
        code, ln = struct.unpack_from(e + "HH", buf, pos)
        if code == 0:
            break
        if code == 9 and ln >= 1:
            v = buf[pos + 4]
            return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
        pos += 4 + ((ln + 3) & ~3)
    return 1e-6
