"""NFS over RPC/UDP: v2 and v3 calls and replies, names from LOOKUP/CREATE, files from
READ replies and v3 WRITE calls, hostile bytes, nfs keywords and filestore rules."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.app import ANOMALY, APP_TX, AppEvent
from appliance.core.app.detect import detect_udp
from appliance.core.app.nfs import MAX_PENDING, NfsParser
from tests.core.app import SHARED, udp_payloads
from tests.core.app.engine_run import alert_sids, engine_run

FH = b"\x01" * 24
DIR = b"\x02" * 24


def u32(*v: int) -> bytes:
    return struct.pack(f"!{len(v)}I", *v)


def opaque(b: bytes) -> bytes:
    return u32(len(b)) + b + b"\0" * (-len(b) % 4)


def call(xid: int, proc: int, args: bytes, version: int = 3) -> bytes:
    return u32(xid, 0, 2, 100003, version, proc, 0, 0, 0, 0) + args


def reply(xid: int, result: bytes, status: int = 0) -> bytes:
    return u32(xid, 1, 0, 0, 0, 0, status) + result


def lookup(xid: int, name: bytes) -> list[tuple[bool, bytes]]:
    return [(True, call(xid, 3, opaque(DIR) + opaque(name))),
            (False, reply(xid, opaque(FH) + u32(0) + u32(0)))]


def read3(xid: int, offset: int, data: bytes, eof: bool) -> list[tuple[bool, bytes]]:
    return [(True, call(xid, 6, opaque(FH) + struct.pack("!QI", offset, 4096))),
            (False, reply(xid, u32(0, len(data), int(eof)) + opaque(data)))]


def write3(xid: int, offset: int, data: bytes, stable: int) -> list[tuple[bool, bytes]]:
    return [(True, call(xid, 7, opaque(FH) + struct.pack("!QII", offset, len(data), stable)
                        + opaque(data))),
            (False, reply(xid, u32(0, 0) + u32(len(data), stable) + b"\0" * 8))]


def run(msgs: list[tuple[bool, bytes]]) -> tuple[list[AppEvent], NfsParser]:
    p = NfsParser()
    out: list[AppEvent] = []
    for ts, m in msgs:
        out += p.parse_datagram(m, ts)
    out += p.close()
    return out, p


def files(ev: list[AppEvent]) -> list[dict[str, Any]]:
    return [e.data["fileinfo"] for e in ev if e.kind == APP_TX and "fileinfo" in e.data]


def test_v3_read_file_named_by_lookup() -> None:
    ev, _ = run(lookup(1, b"secret.txt") + read3(2, 0, b"hello ", False)
                + read3(3, 6, b"world", True))
    (f,) = files(ev)
    assert f["filename"] == "secret.txt" and f["size"] == 11 and f["state"] == "CLOSED"
    assert f["sha256"] == hashlib.sha256(b"hello world").hexdigest()
    recs = [e.data["eve"] for e in ev if e.kind == APP_TX and "eve" in e.data]
    assert [r["procedure"] for r in recs] == ["LOOKUP", "READ", "READ"]
    assert recs[1]["filename"] == "secret.txt" and recs[1]["status"] == "OK"
    assert [e for e in ev if e.kind == ANOMALY] == []


def test_v3_write_file_closed_at_flow_end() -> None:
    ev, p = run(lookup(1, b"up.bin") + write3(2, 0, b"abc", 0) + write3(3, 3, b"def", 0))
    (f,) = files(ev)
    assert f["filename"] == "up.bin" and f["size"] == 6
    assert p.files == {}


def test_errors_and_unknown_xids() -> None:
    ev, _ = run([(True, call(1, 3, opaque(DIR) + opaque(b"nope"))),
                 (False, reply(1, b"", status=2)), (False, reply(99, b""))])
    recs = [e.data["eve"] for e in ev if e.kind == APP_TX]
    assert recs == [{"version": 3, "procedure": "LOOKUP", "status": "NOENT", "id": 0,
                     "filename": "nope", "hhash": recs[0]["hhash"]}]


def test_truncated_message_is_malformed_and_pending_is_bounded() -> None:
    p = NfsParser()
    assert [e.name for e in p.parse_datagram(call(1, 6, b"\0\0"), True)] == ["malformed_data"]
    for i in range(MAX_PENDING + 10):
        p.parse_datagram(call(i, 1, opaque(FH)), True)
    assert len(p.pending) == MAX_PENDING


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 100), st.booleans())
def test_hostile_bytes_never_raise(junk: bytes, cut: int, to_server: bool) -> None:
    p = NfsParser()
    for ts, m in read3(5, 0, b"data", False):
        p.parse_datagram(m[:cut] + junk + m[cut + len(junk):] if ts == to_server else m, ts)
    for e in p.close():
        assert e.kind in (ANOMALY, APP_TX)


def test_detection() -> None:
    m = call(1, 0, b"")
    assert detect_udp(m, 800, 2049) == "nfs"
    assert detect_udp(m, 800, 2050) is None
    assert detect_udp(b"\0" * 30, 800, 2049) is None


def test_nfsv2_capture_reads_one_file() -> None:
    """suricata-verify issue-3277-nfsv2-filestore: one READ of file "b"."""
    p = NfsParser()
    ev: list[AppEvent] = []
    for sport, dport, data in udp_payloads(SHARED / "suricata-verify" / "tests" /
                                           "issue-3277-nfsv2-filestore" / "nfsv2.pcap"):
        if 2049 in (sport, dport):
            ev += p.parse_datagram(data, dport == 2049)
    ev += p.close()
    (f,) = files(ev)
    assert f["filename"] == "b" and f["size"] == 11
    assert [e for e in ev if e.kind == ANOMALY] == []


def test_keywords_filestore_and_schema_valid_records(eve_validator: Any) -> None:
    rules = [
        "alert nfs any any -> any any (filestore; sid:1;)",
        "alert nfs any any -> any any (nfs_procedure:6; sid:2;)",
        "alert nfs any any -> any any (nfs.version:2; sid:3;)",
        'alert nfs any any -> any any (file.name; content:"secret"; sid:4;)',
        "alert nfs any any -> any any (filesize:11; sid:5;)",
    ]
    msgs = lookup(1, b"secret.txt") + read3(2, 0, b"hello ", False) + \
        read3(3, 6, b"world", True)
    recs = engine_run(rules, msgs, 2049, udp=True)
    # sid 2 on each READ transaction; the file is one transaction (sids 1, 4, 5 once).
    assert alert_sids(recs) == [1, 2, 2, 4, 5]
    kinds = [r["event_type"] for r in recs]
    assert kinds.count("nfs") == 3 and kinds.count("fileinfo") == 1
    for r in recs:
        errors = list(eve_validator.iter_errors(r))
        assert not errors, (r["event_type"], errors[0].message)
