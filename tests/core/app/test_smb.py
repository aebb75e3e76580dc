"""SMB parser: NetBIOS framing in any chunking, SMB2 and SMB1 transactions, files written
and read (in and out of order, streamed when large), tree connects as share or named
pipe, NTLMSSP user/domain, DCERPC over a named pipe, hostile input; the engine on a real
capture (alert, schema-valid smb and fileinfo records)."""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.app import ANOMALY, FILE_CLOSED, AppEvent, new_parser
from appliance.core.app.dcerpc import DCERPC_TX
from appliance.core.app.detect import detect_stream, looks_like_smb
from appliance.core.app.smb import (
    MAX_RECORD_BUFFERED,
    PREFIX_LEN,
    SMB_INSPECT,
    SMB_RECORD,
    SmbParser,
    fuid,
    ntlmssp_auth,
)
from tests.core.app import SHARED, validate_eve

# --- builders ------------------------------------------------------------------------------

FID = bytes(range(16))
PIPE_FID = bytes(range(16, 32))


def nbss(msg: bytes) -> bytes:
    return struct.pack(">I", len(msg)) + msg


def smb2(cmd: int, body: bytes, msg_id: int, response: bool = False, status: int = 0,
         tree_id: int = 7, session_id: int = 0x1122) -> bytes:
    hdr = (b"\xfeSMB" + struct.pack("<HHIHHIIQII", 64, 1, status, cmd, 1, 1 if response else 0,
                                    0, msg_id, 0, tree_id)
           + struct.pack("<Q", session_id) + b"\0" * 16)
    assert len(hdr) == 64
    return hdr + body


def u16le(s: str) -> bytes:
    return s.encode("utf-16-le")


def tree_connect(msg_id: int, path: str, share_type: int) -> tuple[bytes, bytes]:
    p = u16le(path)
    req = smb2(3, struct.pack("<HHHH", 9, 0, 64 + 8, len(p)) + p, msg_id, tree_id=0)
    resp = smb2(3, struct.pack("<HBBIII", 16, share_type, 0, 0, 0, 0x1F01FF), msg_id, True)
    return nbss(req), nbss(resp)


def create(msg_id: int, name: str, fid: bytes, disposition: int = 2) -> tuple[bytes, bytes]:
    n = u16le(name)
    body = (struct.pack("<HBBIQQIIIII", 57, 0, 0, 2, 0, 0, 0x12019F, 0x80, 7, disposition,
                        0x40) + struct.pack("<HHII", 64 + 56, len(n), 0, 0))
    assert len(body) == 56
    req = smb2(5, body + n, msg_id)
    rbody = struct.pack("<HBBI", 89, 0, 0, 2) + b"\0" * 48 + struct.pack("<II", 0x80, 0) + fid
    resp = smb2(5, rbody + b"\0" * 8, msg_id, True)
    return nbss(req), nbss(resp)


def write(msg_id: int, fid: bytes, offset: int, data: bytes) -> bytes:
    body = struct.pack("<HHIQ", 49, 64 + 48, len(data), offset) + fid + b"\0" * 16
    assert len(body) == 48
    return nbss(smb2(9, body + data, msg_id))


def read_req(msg_id: int, fid: bytes, offset: int, length: int) -> bytes:
    body = struct.pack("<HBBIQ", 49, 0, 0, length, offset) + fid + b"\0" * 17
    return nbss(smb2(8, body, msg_id))


def read_resp(msg_id: int, data: bytes) -> bytes:
    body = struct.pack("<HBBIII", 17, 64 + 16, 0, len(data), 0, 0)
    return nbss(smb2(8, body + data, msg_id, True))


def close(msg_id: int, fid: bytes) -> bytes:
    return nbss(smb2(6, struct.pack("<HHI", 24, 0, 0) + fid, msg_id))


def ioctl(msg_id: int, fid: bytes, data: bytes, response: bool) -> bytes:
    if response:  # MS-SMB2 2.2.32: 48 bytes before the buffer
        off = 64 + 48
        body = (struct.pack("<HHI", 49, 0, 0x0011C017) + fid
                + struct.pack("<IIIIII", off, 0, off, len(data), 0, 0))
    else:  # 2.2.31: 56 bytes
        off = 64 + 56
        body = (struct.pack("<HHI", 57, 0, 0x0011C017) + fid
                + struct.pack("<IIIIIIII", off, len(data), 0, 0, 0, 1024, 1, 0))
    assert len(body) == off - 64
    return nbss(smb2(11, body + data, msg_id, response))


def ntlm_auth_msg(user: str, domain: str, host: str) -> bytes:
    fields = [b"", b"", u16le(domain), u16le(user), u16le(host), b""]
    off = 72
    hdr = b"NTLMSSP\0" + struct.pack("<I", 3)
    payload = b""
    for f in fields:
        hdr += struct.pack("<HHI", len(f), len(f), off + len(payload))
        payload += f
    hdr += struct.pack("<I", 0x1 | 0x200)  # UNICODE | NTLM
    hdr += b"\0" * (off - len(hdr))
    return hdr + payload


def session_setup(msg_id: int, blob: bytes) -> bytes:
    body = struct.pack("<HBBIIHHQ", 25, 0, 1, 0, 0, 64 + 24, len(blob), 0)
    return nbss(smb2(1, body + blob, msg_id, tree_id=0))


def feed_all(p: SmbParser, chunks: list[tuple[bool, bytes]], size: int | None = None,
             rng: random.Random | None = None) -> list[AppEvent]:
    """Feed each direction's bytes in pieces of ``size`` bytes (or random sizes)."""
    out: list[AppEvent] = []
    for to_server, data in chunks:
        pos = 0
        while pos < len(data):
            n = size or (rng.randint(1, 300) if rng else len(data))
            out += p.feed(data[pos : pos + n], to_server)
            pos += n
    return out


def inspected(evs: list[AppEvent], name: str) -> list[Any]:
    return [e.data["buffers"][name] for e in evs
            if e.kind == SMB_INSPECT and name in e.data["buffers"]]


def files(evs: list[AppEvent]) -> list[Any]:
    return [e.data["file"] for e in evs if e.kind == FILE_CLOSED]


FILE_BODY = bytes(random.Random(7).randrange(256) for _ in range(5000))


def upload_session() -> list[tuple[bool, bytes]]:
    tc_req, tc_resp = tree_connect(2, "\\\\srv\\data", 1)
    cr_req, cr_resp = create(3, "dir\\report.pdf", FID)
    return [
        (True, session_setup(1, b"\x60\x48" + ntlm_auth_msg("alice", "CORP", "WS01"))),
        (False, nbss(smb2(1, struct.pack("<HHHH", 9, 0, 0, 0), 1, True))),
        (True, tc_req), (False, tc_resp), (True, cr_req), (False, cr_resp),
        (True, write(4, FID, 0, FILE_BODY[:3000]) + write(5, FID, 3000, FILE_BODY[3000:])),
        (True, close(6, FID)),
    ]


# --- SMB2 ---------------------------------------------------------------------------------


def test_smb2_upload_named_file_hashed_in_any_chunking() -> None:
    want = hashlib.sha256(FILE_BODY).hexdigest()
    for size in (None, 1, 7, 64):
        p = SmbParser()
        evs = feed_all(p, upload_session(), size)
        fs = files(evs)
        assert len(fs) == 1, size
        f = fs[0]
        assert (f.filename, f.size, f.sha256, f.state, f.to_server) == (
            b"dir\\report.pdf", 5000, want, "CLOSED", True)
        assert not [e for e in evs if e.kind == ANOMALY]
        # file.data is the file from its first byte; the last inspection has its size.
        datas = inspected(evs, "file.data")
        assert datas[-1] == FILE_BODY
        assert inspected(evs, "file.size")[-1] == [b"5000"]
        assert inspected(evs, "smb.share") == [b"\\\\srv\\data", b"\\\\srv\\data"]
        assert inspected(evs, "smb.ntlmssp_user") == [b"alice"]
        assert inspected(evs, "smb.ntlmssp_domain") == [b"CORP"]
        assert p.memuse() == 0  # nothing held once the file is closed


def test_smb2_random_segmentation_same_result() -> None:
    rng = random.Random(3)
    for _ in range(20):
        p = SmbParser()
        fs = files(feed_all(p, upload_session(), rng=rng))
        assert [(f.size, f.sha256) for f in fs] == [
            (5000, hashlib.sha256(FILE_BODY).hexdigest())]


def test_ipc_tree_is_named_pipe_after_response() -> None:
    req, resp = tree_connect(2, "\\\\srv\\IPC$", 2)
    p = SmbParser()
    evs = p.feed(req, True)
    # Before the response an SMB2 path is a share (as Suricata matches it)
    assert inspected(evs, "smb.share") == [b"\\\\srv\\IPC$"]
    evs = p.feed(resp, False)
    assert inspected(evs, "smb.named_pipe") == [b"\\\\srv\\IPC$"]
    assert inspected(evs, "smb.share") == []
    recs = [e.data["record"]["smb"] for e in evs if e.kind == SMB_RECORD]
    assert recs[0]["named_pipe"] == "\\\\srv\\IPC$" and recs[0]["share_type"] == "PIPE"
    validate_eve("smb", recs[0])


def test_large_write_is_streamed_not_buffered() -> None:
    tc_req, tc_resp = tree_connect(2, "\\\\srv\\data", 1)
    cr_req, cr_resp = create(3, "big.bin", FID)
    body = bytes(random.Random(1).randrange(256) for _ in range(3 * MAX_RECORD_BUFFERED))
    p = SmbParser()
    feed_all(p, [(True, tc_req), (False, tc_resp), (True, cr_req), (False, cr_resp)])
    rec = write(4, FID, 0, body)
    peak = 0
    evs: list[AppEvent] = []
    for i in range(0, len(rec), 1460):
        evs += p.feed(rec[i : i + 1460], True)
        peak = max(peak, p.memuse())
    evs += p.feed(close(5, FID), True)
    f = files(evs)[0]
    assert f.size == len(body) and f.sha256 == hashlib.sha256(body).hexdigest()
    # The parser held at most the record prefix and the file_data window.
    assert peak <= PREFIX_LEN + 100 * 1024


def test_reads_out_of_order_are_reassembled_and_a_hole_truncates() -> None:
    cr_req, cr_resp = create(3, "down.exe", FID, disposition=1)
    data = b"MZ" + bytes(range(256)) * 20
    parts = [(0, data[:2000]), (2000, data[2000:4000]), (4000, data[4000:])]
    conv: list[tuple[bool, bytes]] = [(True, cr_req), (False, cr_resp)]
    for i, (off, chunk) in enumerate(parts):
        conv.append((True, read_req(10 + i, FID, off, len(chunk))))
    # Responses come back last-first.
    for i in (2, 0, 1):
        conv.append((False, read_resp(10 + i, parts[i][1])))
    conv.append((True, close(20, FID)))
    fs = files(feed_all(SmbParser(), conv))
    assert len(fs) == 1
    assert (fs[0].size, fs[0].sha256, fs[0].to_server, fs[0].state) == (
        len(data), hashlib.sha256(data).hexdigest(), False, "CLOSED")
    assert fs[0].magic.startswith("PE32") or fs[0].magic  # magic is computed from the head
    # Without the middle part the file ends with a gap: TRUNCATED, gaps true.
    conv2 = [c for c in conv if c[1] != read_resp(11, parts[1][1])]
    fs2 = files(feed_all(SmbParser(), conv2))
    assert fs2[0].state == "TRUNCATED" and fs2[0].eve()["gaps"] is True


def test_downloads_kept_for_scanning_uploads_hashed_only() -> None:
    from appliance.core.app.http import FileBudget

    budget = FileBudget(1 << 20, 1 << 20)
    cr_req, cr_resp = create(3, "tool.exe", FID, disposition=1)
    data = b"MZ" + b"\x90" * 3000
    p = SmbParser()
    p.file_budget = budget
    evs = feed_all(p, [(True, cr_req), (False, cr_resp),
                       (True, read_req(4, FID, 0, len(data))), (False, read_resp(4, data))])
    assert budget.used == len(data)  # held while the file is open
    evs += feed_all(p, [(True, close(5, FID))])
    (down,) = files(evs)
    assert down.take_data() == data and budget.used == 0
    q = SmbParser()
    q.file_budget = budget
    (up,) = files(feed_all(q, upload_session()))
    assert up.data is None and budget.used == 0 and up.size == len(FILE_BODY)


def test_file_open_at_flow_end_is_truncated() -> None:
    conv = upload_session()[:-1]  # no CLOSE
    p = SmbParser()
    feed_all(p, conv)
    fs = files(p.close())
    assert [(f.state, f.size) for f in fs] == [("TRUNCATED", 5000)]


def test_dcerpc_over_pipe_ioctl() -> None:
    """An IOCTL FSCTL_PIPE_TRANSCEIVE on a pipe carries DCERPC: bind, bind_ack, then a
    request whose call has the bound interface and opnum."""
    uuid = bytes.fromhex("78563412341234121234123456789abc")  # little-endian fields
    bind = (struct.pack("<BBBBIHHI", 5, 0, 11, 3, 0x10, 72, 0, 1)
            + struct.pack("<HHIBBH", 4280, 4280, 0, 1, 0, 0)
            + struct.pack("<HBB", 0, 1, 0) + uuid + struct.pack("<HH", 1, 0)
            + bytes.fromhex("045d888aeb1cc9119fe808002b104860") + struct.pack("<I", 2))
    ack = (struct.pack("<BBBBIHHI", 5, 0, 12, 3, 0x10, 60, 0, 1)
           + struct.pack("<HHIH", 4280, 4280, 0x1234, 4) + b"135\0" + b"\0\0"
           + struct.pack("<BBH", 1, 0, 0) + struct.pack("<HH", 0, 0)
           + bytes.fromhex("045d888aeb1cc9119fe808002b104860") + struct.pack("<I", 2))
    stub = b"STUBDATA"
    req = struct.pack("<BBBBIHHI", 5, 0, 0, 3, 0x10, 24 + len(stub), 0, 2) + struct.pack(
        "<IHH", len(stub), 0, 9) + stub
    tc_req, tc_resp = tree_connect(2, "\\\\srv\\IPC$", 2)
    cr_req, cr_resp = create(3, "spoolss", PIPE_FID, disposition=1)
    conv = [(True, tc_req), (False, tc_resp), (True, cr_req), (False, cr_resp),
            (True, ioctl(4, PIPE_FID, bind, False)), (False, ioctl(4, PIPE_FID, ack, True)),
            (True, write(5, PIPE_FID, 0, req))]
    for size in (None, 5):
        evs = feed_all(SmbParser(), conv, size)
        calls = [e for e in evs if e.kind == DCERPC_TX and e.to_server]
        assert calls, size
        conn = calls[-1].data["conn"]
        bufs = conn.buffers(calls[-1].data["tx"], True)
        assert bufs["dcerpc.opnum"] == b"9"
        assert bufs["dcerpc.stub_data"] == stub
        assert bufs["dcerpc.iface"][0].startswith(b"12345678-1234-1234-1234-123456789abc")
        assert not files(evs)  # pipe data is not a file


# --- SMB1 ---------------------------------------------------------------------------------


def smb1(cmd: int, words: bytes, data: bytes, mid: int, response: bool = False,
         tid: int = 1, flags2: int = 0xC807) -> bytes:
    hdr = (b"\xffSMB" + struct.pack("<BIBH", cmd, 0, 0x98 if response else 0x18, flags2)
           + b"\0" * 12 + struct.pack("<HHHH", tid, 100, 200, mid))
    assert len(hdr) == 32
    return hdr + bytes([len(words) // 2]) + words + struct.pack("<H", len(data)) + data


def test_smb1_tree_connect_andx_named_pipe_and_write_andx_file() -> None:
    # TREE_CONNECT_ANDX, unicode path (aligned to 2 bytes from the header).
    words = struct.pack("<BBHHH", 0xFF, 0, 0, 0, 1)
    pre = 32 + 1 + len(words) + 2 + 1  # header, word count, words, byte count, password
    pad = b"\0" if pre % 2 else b""
    tc = smb1(0x75, words, b"\0" + pad + u16le("\\\\HOST\\IPC$") + b"\0\0" + b"?????\0", 1)
    tc_resp = smb1(0x75, struct.pack("<BBHH", 0xFF, 0, 0, 1), b"IPC\0", 1, True)
    p = SmbParser()
    p.feed(nbss(tc), True)
    evs = p.feed(nbss(tc_resp), False)
    assert inspected(evs, "smb.named_pipe") == [b"\\\\HOST\\IPC$"]
    # NT_CREATE_ANDX on a disk tree (tid 2), then WRITE_ANDX (wc 14), then CLOSE.
    name = u16le("\\eicar")
    cw = (struct.pack("<BBHBHIIIQIIIIIB", 0xFF, 0, 0, 0, len(name), 0, 0, 0x2019F, 0, 0x80,
                      7, 5, 0x44, 2, 0))
    assert len(cw) == 48
    pre = 32 + 1 + 48 + 2
    cr = smb1(0xA2, cw, (b"\0" if pre % 2 else b"") + name, 2, tid=2)
    crw = struct.pack("<BBHBH", 0xFF, 0, 0, 0, 0x4001) + b"\0" * 61
    cr_resp = smb1(0xA2, crw, b"", 2, True, tid=2)
    eicar = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    data_off = 32 + 1 + 28 + 2 + 1
    ww = struct.pack("<BBHHIIHHHHHI", 0xFF, 0, 0, 0x4001, 0, 0, 0, 0, 0, len(eicar), data_off,
                     0)
    wr = smb1(0x2F, ww, b"\0" + eicar, 3, tid=2)
    cl = smb1(0x04, struct.pack("<HI", 0x4001, 0), b"", 4, tid=2)
    evs = []
    for m, d in ((cr, True), (cr_resp, False), (wr, True), (cl, True)):
        evs += feed_all(p, [(d, nbss(m))], 3)
    fs = files(evs)
    assert [(f.filename, f.size, f.to_server) for f in fs] == [(b"\\eicar", 68, True)]
    assert fs[0].sha256 == hashlib.sha256(eicar).hexdigest()
    assert inspected(evs, "file.data")[0] == eicar


def test_smb1_andx_loop_is_an_anomaly() -> None:
    # A SESSION_SETUP_ANDX whose AndX offset points back at itself.
    words = struct.pack("<BBH", 0x73, 0, 32) + b"\0" * 20
    evs = SmbParser().feed(nbss(smb1(0x73, words, b"", 1)), True)
    assert [e.name for e in evs if e.kind == ANOMALY] == ["MALFORMED_DATA"]


# --- detection, NTLMSSP, hostile input ----------------------------------------------------


def test_detection_by_header() -> None:
    tc_req, _ = tree_connect(1, "\\\\a\\b", 1)
    assert looks_like_smb(tc_req) is True
    assert looks_like_smb(tc_req[:5]) is None
    assert looks_like_smb(b"\x00\x00\x00\x10GET ") is False
    assert looks_like_smb(b"\x81\x00\x00\x44", 40000, 139) is True
    assert looks_like_smb(b"\x81\x00\x00\x44", 40000, 80) is False
    assert detect_stream(tc_req, True, 40000, 445) == "smb"
    assert detect_stream(tc_req, True, 40000, 8080) == "smb"  # the port is only a hint
    p = new_parser("smb")
    assert p is not None and p.app_proto == "smb"


def test_ntlmssp_auth_parsing() -> None:
    a = ntlmssp_auth(b"\xa1\x82\x01\x00" + ntlm_auth_msg("bob", "DOM", "H"))
    assert a is not None and (a.user, a.domain, a.host) == (b"bob", b"DOM", b"H")
    assert ntlmssp_auth(b"NTLMSSP\0" + struct.pack("<I", 1) + b"\0" * 60) is None  # NEGOTIATE
    bad = bytearray(ntlm_auth_msg("bob", "DOM", "H"))
    bad[40:44] = struct.pack("<I", 10_000)  # user offset past the end
    assert ntlmssp_auth(bytes(bad)) is None


def test_fuid_format() -> None:
    fid = struct.pack("<QQ", 0x4D, 0xFFFFFFFF00000009)
    assert fuid(fid) == "0000004d-0000-0000-0009-0000ffffffff"


def test_hostile_framing_is_bounded() -> None:
    p = SmbParser()
    # A NetBIOS record claiming 16 MiB of garbage: skipped after the prefix, never held.
    evs = p.feed(b"\x00\xff\xff\xff" + b"\xfeSMB" + b"A" * 100_000, True)
    assert p.memuse() <= PREFIX_LEN
    assert [e.name for e in evs if e.kind == ANOMALY] == ["MALFORMED_DATA"]
    # An unknown NetBIOS type stops the direction; the other one goes on.
    q = SmbParser()
    assert [e.name for e in q.feed(b"\x42\x00\x00\x01x", True)] == ["MALFORMED_DATA"]
    assert q.feed(b"more", True) == []
    _, resp = tree_connect(1, "\\\\a\\b", 1)
    assert not [e for e in q.feed(resp, False) if e.kind == ANOMALY]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=200)), max_size=12))
def test_any_bytes_never_raise(chunks: list[tuple[bool, bytes]]) -> None:
    p = SmbParser()
    for to_server, data in chunks:
        # Mostly framed as NetBIOS messages with an SMB magic, to reach the parsers.
        msg = (b"\xfeSMB" if to_server else b"\xffSMB") + data
        for ev in p.feed(nbss(msg) if data[:1] != b"\x00" else data, to_server):
            assert ev.kind != ANOMALY or ev.name == "MALFORMED_DATA"
    p.close()
    assert p.memuse() <= MAX_RECORD_BUFFERED + PREFIX_LEN


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 400))
def test_mutated_session_never_raises(seed: int, flips: int) -> None:
    rng = random.Random(seed)
    raw = bytearray(b"".join(d for _, d in upload_session()))
    for _ in range(flips % 40):
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    p = SmbParser()
    for i in range(0, len(raw), 97):
        p.feed(bytes(raw[i : i + 97]), True)
    p.close()


# --- the engine on a real capture ---------------------------------------------------------


def _replay(pcap: Path, rules: list[str]) -> list[dict[str, Any]]:
    from appliance.core.commands import Log
    from appliance.core.engine import Engine, EngineConfig
    from appliance.core.events import Shutdown
    from appliance.io.pcap import PcapReader
    from appliance.rules.loader import detection_from_text

    loaded = detection_from_text(rules)
    assert not loaded.failure_records(), loaded.failure_records()
    eng = Engine(EngineConfig(), loaded.engine)
    recs: list[dict[str, Any]] = []
    ts = 0.0
    with PcapReader(pcap) as reader:
        for pkt in reader:
            ts = pkt.ts
            recs += [c.record for c in eng.handle(pkt) if isinstance(c, Log)]
    recs += [c.record for c in eng.handle(Shutdown(ts + 1)) if isinstance(c, Log)]
    return recs


def test_engine_eicar_over_smb1_alerts_and_logs(eve_validator: Any) -> None:
    pcap = SHARED / "suricata-verify" / "tests" / "smb-eicar-file" / "input.pcap"
    if not pcap.exists():
        import pytest

        pytest.skip(f"{pcap} is not present")
    rules = [
        'alert smb any any -> any any (file_data; content:"EICAR-STANDARD"; sid:1;)',
        'alert smb any any -> any any (filename:"eicar"; sid:2;)',
        'alert smb any any -> any any (file_data; content:"not in the file"; sid:3;)',
        'alert tcp any any -> any any (filesize:68; sid:4;)',
    ]
    recs = _replay(pcap, rules)
    sids = sorted(r["alert"]["signature_id"] for r in recs if r["event_type"] == "alert")
    assert sids == [1, 2, 4]
    fi = [r for r in recs if r["event_type"] == "fileinfo"]
    assert [(r["fileinfo"]["filename"], r["fileinfo"]["size"], r["fileinfo"]["state"])
            for r in fi] == [("\\eicar", 68, "CLOSED")]
    smb = [r for r in recs if r["event_type"] == "smb"]
    assert any(r["smb"]["command"] == "SMB1_COMMAND_NT_CREATE_ANDX"
               and r["smb"].get("filename") == "\\eicar" for r in smb)
    for r in recs:
        errors = list(eve_validator.iter_errors(r))
        assert not errors, (r["event_type"], errors[0].message)


def test_engine_dcerpc_over_smb_pipe_both_directions() -> None:
    """A DCERPC call over an SMB2 named pipe: ``alert dcerpc`` rules apply to the SMB
    flow (as Suricata's dcerpc/smb equivalence), request and response alert once each."""
    pcap = SHARED / "suricata-verify" / "tests" / "dcerpc" / "dcerpc-smb-ctxid" / "input.pcap"
    if not pcap.exists():
        import pytest

        pytest.skip(f"{pcap} is not present")
    iface = "1ff70682-0a51-30e8-076d-740be8cee98b"
    rules = [
        f"alert dcerpc any any -> any any (dcerpc.iface:{iface}; dcerpc.opnum:0; sid:1;)",
        f"alert smb any any -> any any (dcerpc.iface:{iface}; dcerpc.opnum:1; sid:2;)",
        f"alert smb any any -> any any (dcerpc.iface:{iface}; sid:3;)",
        "alert smb any any -> any any (smb.named_pipe; content:\"IPC$\"; sid:4;)",
    ]
    recs = _replay(pcap, rules)
    sids = sorted(r["alert"]["signature_id"] for r in recs if r["event_type"] == "alert")
    assert sids == [1, 1, 3, 3, 4]
    assert {r["app_proto"] for r in recs if r["event_type"] == "alert"} == {"smb"}
