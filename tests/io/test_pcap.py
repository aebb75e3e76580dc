"""pcap / pcapng reader: formats, byte orders, timestamp resolutions, truncation, errors.

Files built in tmp_path are written byte by byte with `struct`, so each test states the
exact header the reader must understand.
"""

from __future__ import annotations

import filecmp
import importlib.util
import struct
from pathlib import Path

import pytest

from appliance.core.events import LINKTYPE_ETHERNET, LINKTYPE_RAW, PacketIn
from appliance.errors import InputError
from appliance.io.pcap import PcapReader

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
T0_US = 1_700_000_000_000_000  # the captures' epoch in microseconds

# Record times of the linktype-* captures: microseconds after T0 (pcap keeps these,
# rounded from the nanosecond times the pcapng file keeps whole).
EXCHANGE_US = [0, 250, 512, 1024, 1300, 2001, 2210, 2500, 2700, 5000, 5300]
EXCHANGE_NS = [123, 250_256, 512_000, 1_024_007, 1_300_000, 2_000_999, 2_210_000,
               2_500_000, 2_700_000, 5_000_000, 5_300_000]

IP4_UDP = bytes.fromhex("4500001c000100004011f9c90a0000010a000002") + bytes.fromhex(
    "04d2162e00080000")


def read(path: Path) -> tuple[PcapReader, list[PacketIn]]:
    r = PcapReader(path)
    with r:
        pkts = list(r)
    return r, pkts


# -- the captures in pcaps/ --------------------------------------------------------------

@pytest.mark.parametrize(("name", "linktype"), [
    ("linktype-eth.pcap", 1), ("linktype-raw.pcap", 101), ("linktype-sll.pcap", 113),
    ("linktype-sll2.pcap", 276)])
def test_pcap_link_types_counts_and_microsecond_timestamps(name: str, linktype: int) -> None:
    r, pkts = read(PCAPS / name)
    assert r.format == "pcap"
    assert r.count == 11
    assert r.truncated_at is None and r.truncated_reason == ""
    assert [p.id for p in pkts] == list(range(1, 12))
    assert {p.linktype for p in pkts} == {linktype}
    assert [round(p.ts * 1e6) - T0_US for p in pkts] == EXCHANGE_US
    assert all(p.in_port is None and p.out_port is None and p.mark == 0 for p in pkts)


def test_the_same_packets_in_every_link_type() -> None:
    # SLL/SLL2/Ethernet headers are 16/20/14 bytes in front of the same IP packets
    _, raw = read(PCAPS / "linktype-raw.pcap")
    for name, hdr in [("linktype-eth.pcap", 14), ("linktype-sll.pcap", 16),
                      ("linktype-sll2.pcap", 20), ("linktype-eth.pcapng", 14)]:
        _, pkts = read(PCAPS / name)
        assert [bytes(p.data[hdr:]) for p in pkts] == [bytes(p.data) for p in raw], name


def test_pcapng_with_nanosecond_interface_resolution() -> None:
    r, pkts = read(PCAPS / "linktype-eth.pcapng")
    assert r.format == "pcapng"
    assert r.count == 11
    assert r.truncated_at is None
    assert {p.linktype for p in pkts} == {LINKTYPE_ETHERNET}
    # A float holds ~2.4e-7 s at this epoch: the nanosecond times come back to within
    # that, and to the microsecond after rounding.
    for p, ns in zip(pkts, EXCHANGE_NS, strict=True):
        assert abs(p.ts - (1_700_000_000 + ns / 1e9)) < 5e-7
    assert [round(p.ts * 1e6) - T0_US for p in pkts] == EXCHANGE_US
    _, eth = read(PCAPS / "linktype-eth.pcap")
    assert [bytes(p.data) for p in pkts] == [bytes(p.data) for p in eth]


def test_count_is_set_once_iteration_ends() -> None:
    r = PcapReader(PCAPS / "vlan.pcap")
    with r:
        it = iter(r)
        next(it)
        assert r.count == 0
        rest = list(it)
    assert len(rest) == 5
    assert r.count == 6


def test_truncated_capture_delivers_every_complete_packet() -> None:
    r, pkts = read(PCAPS / "truncated.pcap")
    assert len(pkts) == 9
    assert r.count == 9
    # 24-byte file header, then 9 records of 16 + 59 bytes: the 10th header is at 699
    assert r.truncated_at == 699
    assert r.truncated_reason == "packet data cut short"
    assert bytes(pkts[-1].data).endswith(b"record 09 payload")
    assert (PCAPS / "truncated.pcap").stat().st_size == 699 + 16 + 59 - 10


def test_the_captures_rebuild_byte_identical(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("pcaps_build", PCAPS / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build.OUT = tmp_path
    build.main()
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == sorted(p.name for p in PCAPS.iterdir()
                           if p.suffix in (".pcap", ".pcapng", ".bin"))
    for name in built:
        assert filecmp.cmp(tmp_path / name, PCAPS / name, shallow=False), name


# -- hand-made pcap files --------------------------------------------------------------------

def pcap_bytes(records: list[tuple[int, int, bytes]], *, endian: str = "<",
               magic: int = 0xA1B2C3D4, linktype: int = LINKTYPE_RAW) -> bytes:
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, data in records:
        out += struct.pack(endian + "IIII", sec, frac, len(data), len(data)) + data
    return out


@pytest.mark.parametrize("endian", ["<", ">"])
def test_microsecond_pcap_in_both_byte_orders(tmp_path: Path, endian: str) -> None:
    f = tmp_path / "us.pcap"
    f.write_bytes(pcap_bytes([(1_700_000_000, 123_456, IP4_UDP),
                              (1_700_000_001, 999_999, IP4_UDP[:20])], endian=endian))
    r, pkts = read(f)
    assert r.format == "pcap" and r.count == 2 and r.truncated_at is None
    assert [round(p.ts * 1e6) for p in pkts] == [1_700_000_000_123_456, 1_700_000_001_999_999]
    assert [bytes(p.data) for p in pkts] == [IP4_UDP, IP4_UDP[:20]]
    assert [p.linktype for p in pkts] == [LINKTYPE_RAW, LINKTYPE_RAW]


@pytest.mark.parametrize("endian", ["<", ">"])
def test_nanosecond_magic_pcap(tmp_path: Path, endian: str) -> None:
    f = tmp_path / "ns.pcap"
    # small seconds so that a float keeps every nanosecond
    f.write_bytes(pcap_bytes([(1, 123_456_789, IP4_UDP), (2, 1, IP4_UDP)], endian=endian,
                             magic=0xA1B23C4D))
    r, pkts = read(f)
    assert r.count == 2
    assert abs(pkts[0].ts - 1.123456789) < 1e-12
    assert abs(pkts[1].ts - 2.000000001) < 1e-12
    assert [round(p.ts * 1e9) for p in pkts] == [1_123_456_789, 2_000_000_001]


def test_link_type_field_keeps_only_the_link_type_bits(tmp_path: Path) -> None:
    # the upper 4 bits of the field may carry FCS information (pcap spec, LinkType)
    f = tmp_path / "fcs.pcap"
    f.write_bytes(pcap_bytes([(1, 0, IP4_UDP)], linktype=0x10000000 | LINKTYPE_RAW))
    _, pkts = read(f)
    assert pkts[0].linktype == LINKTYPE_RAW


def test_header_only_pcap_has_no_packets(tmp_path: Path) -> None:
    f = tmp_path / "header-only.pcap"
    f.write_bytes(pcap_bytes([]))
    r, pkts = read(f)
    assert pkts == []
    assert r.count == 0
    assert r.truncated_at is None


@pytest.mark.parametrize(("cut", "at", "reason"), [
    (-10, 24 + 16 + 28, "packet data cut short"),  # inside the 2nd record's data
    (24 + 16 + 28 + 8, 24 + 16 + 28, "record header cut short"),  # inside its header
    (20, 0, "file header cut short"),
])
def test_truncated_pcap_variants(tmp_path: Path, cut: int, at: int, reason: str) -> None:
    data = pcap_bytes([(1, 0, IP4_UDP), (2, 0, IP4_UDP)])
    f = tmp_path / "cut.pcap"
    f.write_bytes(data[:cut])
    r, pkts = read(f)
    assert r.truncated_at == at
    assert r.truncated_reason == reason
    assert len(pkts) == r.count == (0 if at == 0 else 1)


def test_implausible_record_length_stops_the_file(tmp_path: Path) -> None:
    data = pcap_bytes([(1, 0, IP4_UDP)]) + struct.pack("<IIII", 2, 0, 0x7FFFFFFF, 60)
    f = tmp_path / "huge.pcap"
    f.write_bytes(data + b"\x00" * 64)
    r, pkts = read(f)
    assert len(pkts) == 1
    assert r.truncated_at == 24 + 16 + 28
    assert r.truncated_reason == f"record length {0x7FFFFFFF} is not plausible"


# -- hand-made pcapng files -------------------------------------------------------------------

def block(btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def shb() -> bytes:
    return block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(linktype: int, tsresol: int | None = None) -> bytes:
    opts = b""
    if tsresol is not None:
        opts = struct.pack("<HHB3x", 9, 1, tsresol) + struct.pack("<HH", 0, 0)
    return block(1, struct.pack("<HHI", linktype, 0, 65535) + opts)


def epb(ifid: int, ticks: int, data: bytes) -> bytes:
    return block(6, struct.pack("<IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(data),
                                len(data)) + data)


def test_pcapng_interfaces_each_with_their_link_type_and_resolution(tmp_path: Path) -> None:
    eth = b"\x02" * 12 + b"\x08\x00" + IP4_UDP
    f = tmp_path / "multi.pcapng"
    f.write_bytes(shb() + idb(LINKTYPE_ETHERNET) + idb(LINKTYPE_RAW, tsresol=9)
                  + idb(LINKTYPE_RAW, tsresol=0x80 | 10)  # 2^-10 s
                  + epb(0, 1_500_000, eth)  # 1.5 s in microseconds (the default)
                  + epb(1, 2_000_000_007, IP4_UDP)  # 2.000000007 s in nanoseconds
                  + epb(2, 3 * 1024 + 512, IP4_UDP)  # 3.5 s in 1/1024 s
                  + block(3, struct.pack("<I", len(IP4_UDP)) + IP4_UDP))  # simple block
    r, pkts = read(f)
    assert r.format == "pcapng"
    assert r.count == 4
    assert r.truncated_at is None
    assert [p.linktype for p in pkts] == [LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_RAW,
                                          LINKTYPE_ETHERNET]  # SPBs belong to interface 0
    assert abs(pkts[0].ts - 1.5) < 1e-12
    assert abs(pkts[1].ts - 2.000000007) < 1e-12
    assert abs(pkts[2].ts - 3.5) < 1e-12
    assert pkts[3].ts == 0.0  # simple packet blocks carry no time
    assert [bytes(p.data) for p in pkts] == [eth, IP4_UDP, IP4_UDP, IP4_UDP]


def test_pcapng_truncated_block(tmp_path: Path) -> None:
    head = shb() + idb(LINKTYPE_RAW)
    good = epb(0, 1, IP4_UDP)
    f = tmp_path / "cut.pcapng"
    f.write_bytes(head + good + epb(0, 2, IP4_UDP)[:-6])
    r, pkts = read(f)
    assert len(pkts) == r.count == 1
    assert r.truncated_at == len(head) + len(good)
    assert r.truncated_reason == "block cut short"


def test_pcapng_packet_before_any_interface_is_inconsistent(tmp_path: Path) -> None:
    f = tmp_path / "noif.pcapng"
    f.write_bytes(shb() + epb(0, 1, IP4_UDP))
    r, pkts = read(f)
    assert pkts == []
    assert r.truncated_at == len(shb())
    assert r.truncated_reason == "packet block inconsistent"


# -- errors ------------------------------------------------------------------------------------

def test_not_a_pcap_is_an_input_error_naming_the_file() -> None:
    path = PCAPS / "not-a-pcap.bin"
    with pytest.raises(InputError) as e:
        PcapReader(path)
    # the first 4 bytes, "This", as hex
    assert str(e.value) == f"{path}: not a pcap or pcapng file (magic 54686973)"


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.pcap"
    with pytest.raises(InputError) as e:
        PcapReader(path)
    assert str(e.value) == f"{path}: no such file"


def test_directory_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        PcapReader(tmp_path)
    assert str(e.value) == f"{tmp_path}: is a directory, not a capture file"


def test_empty_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    with pytest.raises(InputError) as e:
        PcapReader(path)
    assert str(e.value) == f"{path}: not a pcap or pcapng file (too short)"
