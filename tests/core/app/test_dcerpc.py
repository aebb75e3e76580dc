"""DCERPC (app/dcerpc.py): PDUs built here from DCE 1.1 chapter 12's layouts, fed in any
chunking and both byte orders; keyword regexes; rules through the engine (TCP on a
dynamic port, connectionless over UDP)."""

from __future__ import annotations

import random
import re
import struct
import uuid as uuidlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.app import ANOMALY, AppEvent, new_parser
from appliance.core.app.dcerpc import (
    BIND,
    DCERPC_BIND,
    DCERPC_TX,
    DceRpcConnection,
    DcerpcParser,
    StubData,
    looks_like_dcerpc,
    looks_like_dcerpc_udp,
    uuid_text,
)
from appliance.core.app.detect import detect_stream, detect_udp
from appliance.rules.keywords import (
    KeywordError,
    dcerpc_iface_regex,
    dcerpc_opnum_regex,
    number_range_regex,
)
from tests.core.app.engine_run import alert_sids, engine_run

SVCCTL = "367abb81-9844-35f1-ad32-98f038001003"
NETLOGON = "12345678-1234-abcd-ef00-01234567cffb"
NDR = "8a885d04-1ceb-11c9-9fe8-08002b104860"


def uuid_bytes(text: str, little: bool) -> bytes:
    u = uuidlib.UUID(text)
    return u.bytes_le if little else u.bytes


def pdu(ptype: int, body: bytes, call_id: int, flags: int = 3, little: bool = True,
        auth_len: int = 0, minor: int = 0) -> bytes:
    """Common header (12.6.3.1): version 5.minor, type, flags, drep, frag_length,
    auth_length, call_id."""
    e = "<" if little else ">"
    drep = bytes([0x10 if little else 0x00, 0, 0, 0])
    return (bytes([5, minor, ptype, flags]) + drep
            + struct.pack(e + "HHI", 16 + len(body), auth_len, call_id) + body)


def bind(ctxs: list[tuple[int, str, int, int]], call_id: int = 1, little: bool = True,
         ptype: int = 11) -> bytes:
    e = "<" if little else ">"
    body = struct.pack(e + "HHI", 4280, 4280, 0) + bytes([len(ctxs), 0, 0, 0])
    for ctx_id, u, major, minor in ctxs:
        body += struct.pack(e + "HBB", ctx_id, 1, 0) + uuid_bytes(u, little)
        body += struct.pack(e + "HH", major, minor)
        body += uuid_bytes(NDR, little) + struct.pack(e + "I", 2)
    return pdu(ptype, body, call_id, little=little)


def bind_ack(results: list[int], call_id: int = 1, little: bool = True,
             sec_addr: bytes = b"49700\x00", ptype: int = 12) -> bytes:
    e = "<" if little else ">"
    body = struct.pack(e + "HHI", 4280, 4280, 0x1234) + struct.pack(e + "H", len(sec_addr))
    body += sec_addr
    body += b"\x00" * ((-(16 + len(body))) % 4)  # align the result list (12.6.4.4)
    body += bytes([len(results), 0, 0, 0])
    for r in results:
        body += struct.pack(e + "HH", r, 0) + (uuid_bytes(NDR, little) if r == 0
                                               else b"\x00" * 16) + struct.pack(e + "I", 2)
    return pdu(ptype, body, call_id, little=little)


def request(opnum: int, stub: bytes, call_id: int, ctx_id: int = 0, flags: int = 3,
            little: bool = True) -> bytes:
    e = "<" if little else ">"
    return pdu(0, struct.pack(e + "IHH", len(stub), ctx_id, opnum) + stub, call_id, flags,
               little)


def response(stub: bytes, call_id: int, ctx_id: int = 0, flags: int = 3,
             little: bool = True) -> bytes:
    e = "<" if little else ">"
    return pdu(2, struct.pack(e + "IHBB", len(stub), ctx_id, 0, 0) + stub, call_id, flags,
               little)


def feed_chunks(p: DcerpcParser | DceRpcConnection, data: bytes, to_server: bool,
                size: int) -> list[AppEvent]:
    out: list[AppEvent] = []
    for i in range(0, len(data), size):
        out += p.feed(data[i : i + size], to_server)
    return out


def tx_events(evs: list[AppEvent]) -> list[AppEvent]:
    return [e for e in evs if e.kind == DCERPC_TX]


# -- the state machine -----------------------------------------------------------------------


@pytest.mark.parametrize("little", [True, False])
@pytest.mark.parametrize("size", [1, 7, 16, 100000])
def test_bind_request_response_in_any_chunking_and_byte_order(little: bool,
                                                              size: int) -> None:
    c = DceRpcConnection()
    evs = feed_chunks(c, bind([(0, SVCCTL, 2, 0), (1, NETLOGON, 1, 0)], 7, little), True,
                      size)
    assert [e.kind for e in evs] == [DCERPC_BIND]
    assert c.interfaces == {}  # nothing is bound before the ack
    evs = feed_chunks(c, bind_ack([0, 2], 7, little), False, size)
    assert [e.kind for e in evs] == [DCERPC_BIND]
    assert c.interfaces[0].uuid == SVCCTL and c.interfaces[0].result == 0
    assert c.interfaces[0].version == 2
    assert c.interfaces[1].result == 2  # provider rejection
    bind_tx = evs[0].data["tx"]
    assert c.eve(bind_tx)["interfaces"] == [
        {"uuid": SVCCTL, "version": "2.0", "ack_result": 0},
        {"uuid": NETLOGON, "version": "1.0", "ack_result": 2}]

    stub = b"\x01\x02\x03\x04" * 10
    evs = feed_chunks(c, request(15, stub, 8, 0, little=little), True, size)
    (ev,) = tx_events(evs)
    tx = ev.data["tx"]
    b = c.buffers(tx, True)
    assert b["dcerpc.stub_data"] == stub
    assert b["dcerpc.opnum"] == b"15"
    assert b["dcerpc.iface"] == [f"{SVCCTL} 2 F".encode()]
    stub_buf = b["dcerpc.stub_data"]
    assert isinstance(stub_buf, StubData) and stub_buf.dce_little is little
    (ev,) = tx_events(feed_chunks(c, response(b"ok" * 8, 8, 0, little=little), False, size))
    assert ev.data["tx"] is tx and tx.done
    rb = c.buffers(tx, False)
    # The response's stub is all that follows its 16-byte header, as Suricata's.
    assert rb["dcerpc.stub_data"] == struct.pack("<IHBB" if little else ">IHBB", 16, 0, 0,
                                                 0) + b"ok" * 8
    assert c.inspect_id(tx, True) != c.inspect_id(tx, False)
    assert c.eve(tx) == {"request": "REQUEST", "response": "RESPONSE",
                         "req": {"opnum": 15, "frag_cnt": 1, "stub_data_size": 40},
                         "res": {"frag_cnt": 1, "stub_data_size": 24}, "call_id": 8,
                         "rpc_version": "5.0"}
    assert c.txs == []  # the finished call is not kept


def test_rejected_or_unknown_context_gives_no_interface() -> None:
    c = DceRpcConnection()
    c.feed(bind([(0, SVCCTL, 2, 0), (1, NETLOGON, 1, 0)]), True)
    c.feed(bind_ack([0, 2]), False)
    tx = tx_events(c.feed(request(1, b"x", 2, ctx_id=1), True))[0].data["tx"]
    assert c.buffers(tx, True)["dcerpc.iface"] == []
    tx = tx_events(c.feed(request(1, b"x", 3, ctx_id=9), True))[0].data["tx"]
    assert c.buffers(tx, True)["dcerpc.iface"] == []


def test_alter_context_adds_contexts_and_nak_binds_nothing() -> None:
    c = DceRpcConnection()
    c.feed(bind([(0, SVCCTL, 2, 0)]), True)
    c.feed(bind_ack([0]), False)
    c.feed(bind([(1, NETLOGON, 1, 0)], ptype=14), True)
    c.feed(bind_ack([0], ptype=15, sec_addr=b""), False)
    assert sorted(c.interfaces) == [0, 1]
    c.feed(bind([(2, NETLOGON, 3, 0)], call_id=5), True)
    evs = c.feed(pdu(13, b"\x00\x00", 5), False)  # BIND_NAK
    assert 2 not in c.interfaces
    assert c.eve(evs[0].data["tx"])["response"] == "BINDNAK"


def test_fragmented_request_is_reassembled_and_first_frag_flagged() -> None:
    c = DceRpcConnection()
    c.feed(bind([(1, SVCCTL, 2, 0)]), True)
    c.feed(bind_ack([0]), False)
    parts = [b"A" * 100, b"B" * 100, b"C" * 50]
    flags = [0x01, 0x00, 0x02]
    seen = []
    for part, fl in zip(parts, flags, strict=True):
        (ev,) = tx_events(c.feed(request(9, part, 44, 1, fl), True))
        tx = ev.data["tx"]
        seen.append((bytes(c.buffers(tx, True)["dcerpc.stub_data"]),
                     c.buffers(tx, True)["dcerpc.iface"], tx.req_done))
    assert seen[0] == (parts[0], [f"{SVCCTL} 2 F".encode()], False)
    assert seen[1] == (parts[0] + parts[1], [f"{SVCCTL} 2 -".encode()], False)
    assert seen[2] == (b"".join(parts), [f"{SVCCTL} 2 -".encode()], True)
    assert c.eve(tx)["req"] == {"opnum": 9, "frag_cnt": 3, "stub_data_size": 250}


def test_new_first_fragment_with_the_same_call_id_is_a_new_call() -> None:
    c = DceRpcConnection()
    a = tx_events(c.feed(request(1, b"a", 5, flags=0x01), True))[0].data["tx"]
    b = tx_events(c.feed(request(1, b"b", 5, flags=0x03), True))[0].data["tx"]
    assert a is not b


def test_response_without_request_is_request_lost_and_fault_ends_a_call() -> None:
    c = DceRpcConnection()
    (ev,) = tx_events(c.feed(response(b"zz", 77), False))
    assert c.eve(ev.data["tx"])["request"] == "REQUEST_LOST"
    tx = tx_events(c.feed(request(3, b"q", 78), True))[0].data["tx"]
    c.feed(pdu(3, b"\x00" * 16, 78), False)  # FAULT
    assert tx.done and c.eve(tx)["response"] == "FAULT"


def test_unanswered_call_is_reported_at_close() -> None:
    c = DceRpcConnection()
    tx = tx_events(c.feed(request(3, b"q", 1), True))[0].data["tx"]
    (ev,) = c.close()
    assert ev.data["tx"] is tx and ev.data["final"] and tx.done
    assert c.eve(tx)["response"] == "UNREPLIED"


def test_object_uuid_and_auth_verifier_stay_in_the_request_stub() -> None:
    # Suricata 7's request stub is everything after the 24-byte request header
    # (suricata-verify dcerpc-dce-iface-02: 24 bytes with a 16-byte object UUID).
    c = DceRpcConnection()
    obj = uuid_bytes(SVCCTL, True)
    tx = tx_events(c.feed(request(4, obj + b"\x09\x00", 1, flags=0x83), True))[0].data["tx"]
    assert c.buffers(tx, True)["dcerpc.stub_data"] == obj + b"\x09\x00"


@pytest.mark.parametrize("bad", [
    b"\x04\x00\x0b\x03\x10\x00\x00\x00\x10\x00\x00\x00\x01\x00\x00\x00",  # version 4 on TCP
    b"\x05\x02\x0b\x03\x10\x00\x00\x00\x10\x00\x00\x00\x01\x00\x00\x00",  # minor 2
    b"\x05\x00\x0b\x03\x10\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00",  # frag_length 8
    b"\x05\x00\x0b\x03\x33\x00\x00\x00\x10\x00\x00\x00\x01\x00\x00\x00",  # drep
])
def test_malformed_header_resyncs_at_the_next_chunk(bad: bytes) -> None:
    c = DceRpcConnection()
    c.feed(request(1, b"a", 1), True)
    evs = c.feed(bad + request(2, b"lost with its chunk", 2), True)
    assert [(e.kind, e.name) for e in evs] == [(ANOMALY, "DCERPC_MALFORMED")]
    assert not c.failed
    # Another chunk without a header: dropped too, not reported again.
    assert c.feed(b"\x00" * 40, True) == []
    (ev,) = c.feed(request(3, b"found again", 3), True)
    assert ev.data["tx"].call_id == 3
    # The other direction was never affected.
    assert tx_events(c.feed(response(b"x", 1), False))[0].data["tx"].done


def test_endless_garbage_stops_the_association() -> None:
    from appliance.core.app.dcerpc import MAX_RESYNC

    c = DceRpcConnection()
    for _ in range(MAX_RESYNC + 1):
        c.feed(b"\x16\x03\x01" + b"\x00" * 20, True)
    assert c.failed
    assert c.feed(request(1, b"x", 1), True) == []
    assert c.feed(response(b"x", 1), False) == []


def test_short_bind_and_ack_bodies_are_anomalies_not_errors() -> None:
    c = DceRpcConnection()
    evs = c.feed(pdu(BIND, b"\x00" * 4, 1), True)
    assert (ANOMALY, "DCERPC_MALFORMED") in [(e.kind, e.name) for e in evs]
    body = struct.pack("<HHI", 1, 1, 0) + bytes([3, 0, 0, 0]) + b"\x00" * 10  # 3 ctxs, none
    evs = c.feed(pdu(BIND, body, 2), True)
    assert (ANOMALY, "DCERPC_MALFORMED") in [(e.kind, e.name) for e in evs]
    evs = c.feed(pdu(12, b"\x00" * 8 + b"\xff\xff", 2), False)  # sec_addr past the end
    assert (ANOMALY, "DCERPC_MALFORMED") in [(e.kind, e.name) for e in evs]
    assert not c.failed


def test_stub_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.core.app.dcerpc as mod

    monkeypatch.setattr(mod, "MAX_STUB", 150)
    c = DceRpcConnection()
    c.feed(request(1, b"a" * 100, 1, flags=0x01), True)
    evs = c.feed(request(1, b"b" * 100, 1, flags=0x02), True)
    assert (ANOMALY, "DCERPC_STUB_TRUNCATED") in [(e.kind, e.name) for e in evs]
    tx = tx_events(evs)[0].data["tx"]
    assert len(tx.req_stub) == 150 and tx.req_size == 200


def test_open_calls_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.core.app.dcerpc as mod

    monkeypatch.setattr(mod, "MAX_TXS", 4)
    c = DceRpcConnection()
    names = []
    for i in range(10):
        names += [e.name for e in c.feed(request(1, b"x", i), True)]
    assert len(c.txs) == 4
    assert names.count("DCERPC_TOO_MANY_TXS") == 6


def test_shared_transaction_id_allocator() -> None:
    ids = iter(range(100, 200))
    c = DceRpcConnection(tx_ids=lambda: next(ids))
    tx = tx_events(c.feed(request(1, b"x", 1), True))[0].data["tx"]
    assert (tx.tx_id, tx.resp_id) == (100, 101)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=12))
def test_hostile_bytes_never_raise_and_stay_bounded(chunks: list[tuple[bool, bytes]]) -> None:
    p = DcerpcParser()
    for ts, data in chunks:
        for ev in p.feed(b"\x05\x00" + data, ts):
            assert ev.kind in (ANOMALY, DCERPC_TX, DCERPC_BIND)
        assert p.memuse() < 200_000
        p.parse_datagram(b"\x04" + data, ts)
    p.close()


def test_random_pdu_splices_keep_the_invariants() -> None:
    rng = random.Random(7)
    good = [bind([(0, SVCCTL, 2, 0)]), request(1, b"x" * 30, 1), request(2, b"y", 2, 0, 1)]
    for _ in range(300):
        data = bytearray(b"".join(rng.choice(good) for _ in range(3)))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        c = DceRpcConnection()
        for ev in feed_chunks(c, bytes(data), True, rng.randint(1, 40)):
            if ev.kind == DCERPC_TX:
                c.buffers(ev.data["tx"], True)
                c.eve(ev.data["tx"])


# -- connectionless (UDP) ------------------------------------------------------------------


def cl_pdu(ptype: int, body: bytes, opnum: int = 5, seq: int = 1, flags1: int = 0,
           fragnum: int = 0, little: bool = True, act: str = NDR) -> bytes:
    """The 80-byte connectionless header (12.5.3.1)."""
    e = "<" if little else ">"
    h = bytes([4, ptype, flags1, 0, 0x10 if little else 0, 0, 0, 0])
    h += b"\x00" * 16 + uuid_bytes(NETLOGON, little) + uuid_bytes(act, little)
    h += struct.pack(e + "IIIHHHHH", 0, 0x00020001, seq, opnum, 0xFFFF, 0xFFFF, len(body),
                     fragnum) + bytes([0, 0])
    assert len(h) == 80
    return h + body


@pytest.mark.parametrize("little", [True, False])
def test_connectionless_request_and_response(little: bool) -> None:
    p = DcerpcParser()
    (ev,) = p.parse_datagram(cl_pdu(0, b"part1", flags1=0x04, little=little), True)
    tx = ev.data["tx"]
    assert not tx.req_done
    (ev,) = p.parse_datagram(cl_pdu(0, b"part2", flags1=0x06, fragnum=1, little=little),
                             True)
    assert ev.data["tx"] is tx and tx.req_done
    b = p.conn.buffers(tx, True)
    assert b["dcerpc.stub_data"] == b"part1part2"
    assert b["dcerpc.opnum"] == b"5"
    assert b["dcerpc.iface"] == [f"{NETLOGON} 1 -".encode()]  # not the first fragment
    (ev,) = p.parse_datagram(cl_pdu(2, b"answer", little=little), False)
    assert tx.done and p.conn.buffers(tx, False)["dcerpc.stub_data"] == b"answer"
    eve = p.conn.eve(tx)
    assert eve["activityuuid"] == NDR and eve["seqnum"] == 1 and eve["rpc_version"] == "4.0"
    assert p.parse_datagram(cl_pdu(2, b"?", seq=9), False) == []  # answers nothing seen
    assert [e.name for e in p.parse_datagram(b"\x04\x00", True)] == ["DCERPC_MALFORMED"]


# -- detection -----------------------------------------------------------------------------


def test_detection_by_header_in_either_direction() -> None:
    b = bind([(0, SVCCTL, 2, 0)])
    assert looks_like_dcerpc(b, True) is True
    assert detect_stream(b, True, 50000, 49700) == "dcerpc"
    assert detect_stream(bind_ack([0]), False, 49700, 50000) == "dcerpc"
    assert looks_like_dcerpc(b[:5], True) is None  # too short to tell
    assert detect_stream(b[:5], True, 50000, 49700) is None
    assert looks_like_dcerpc(b, False) is False  # a client's PDU from the server
    assert looks_like_dcerpc(b"\x05\x01\x00", True) is None
    assert looks_like_dcerpc(b"\x05\x01\x00\x03\x01\x02\x03\x04" + b"\x00" * 8, True) is False
    assert detect_stream(b"GET / HTTP/1.1\r\n", True, 50000, 135) == "http"
    cl = cl_pdu(0, b"abc")
    assert looks_like_dcerpc_udp(cl)
    assert detect_udp(cl, 50000, 40000) == "dcerpc"
    assert detect_udp(cl + b"x", 50000, 40000) is None  # length must fit exactly
    assert new_parser("dcerpc") is not None


def test_uuid_text_in_both_byte_orders() -> None:
    assert uuid_text(uuid_bytes(SVCCTL, True), True) == SVCCTL
    assert uuid_text(uuid_bytes(SVCCTL, False), False) == SVCCTL


# -- keyword regexes -----------------------------------------------------------------------


def test_number_range_regex_is_exact() -> None:
    rng = random.Random(3)
    spans = [(0, 0), (0, 9), (5, 5), (9, 10), (0, 65535), (99, 1000), (1, 65534)]
    spans += [tuple(sorted((rng.randrange(70000), rng.randrange(70000)))) for _ in range(40)]
    for lo, hi in spans:
        rx = re.compile(r"\A" + number_range_regex(lo, hi) + r"\Z")
        for v in {0, 1, lo - 1, lo, lo + 1, hi - 1, hi, hi + 1, 65535, 99999,
                  *(rng.randrange(100000) for _ in range(200))}:
            if v >= 0:
                assert bool(rx.match(str(v))) == (lo <= v <= hi), (lo, hi, v)
        assert not rx.match("0" + str(lo))  # no leading zeros
    assert not re.match(number_range_regex(5, 4), "4")


def test_opnum_values() -> None:
    def ok(value: str, n: int) -> bool:
        return bool(re.match(dcerpc_opnum_regex("dcerpc.opnum", value), str(n)))

    assert ok("15", 15) and not ok("15", 150) and not ok("15", 1)
    assert ok("12,24", 24) and not ok("12,24", 13)
    assert ok("12-14,26", 13) and ok("12-14,26", 26) and not ok("12-14,26", 15)
    assert ok(">3", 4) and not ok(">3", 3) and ok("<3", 2) and not ok("<3", 3)
    for bad in ("", "x", "70000", "5-2", "1,,2"):
        with pytest.raises(KeywordError):
            dcerpc_opnum_regex("dcerpc.opnum", bad)


def test_iface_values() -> None:
    def ok(value: str, elem: str) -> bool:
        return bool(re.match(dcerpc_iface_regex("dcerpc.iface", value), elem))

    assert ok(SVCCTL, f"{SVCCTL} 2 F")
    assert ok(SVCCTL.upper(), f"{SVCCTL} 2 F")
    assert not ok(SVCCTL, f"{SVCCTL} 2 -")  # not the first fragment
    assert ok(SVCCTL + ",any_frag", f"{SVCCTL} 2 -")
    assert ok(SVCCTL + ",=2", f"{SVCCTL} 2 F") and not ok(SVCCTL + ",=1", f"{SVCCTL} 2 F")
    assert ok(SVCCTL + ",>1,any_frag", f"{SVCCTL} 2 -")
    assert not ok(SVCCTL + ",>2", f"{SVCCTL} 2 F")
    assert ok(SVCCTL + ",<3", f"{SVCCTL} 2 F") and ok(SVCCTL + ",!1", f"{SVCCTL} 2 F")
    assert not ok(SVCCTL + ",!2", f"{SVCCTL} 2 F")
    assert not ok(SVCCTL, f"{NETLOGON} 2 F")
    for bad in ("nope", SVCCTL + ",~2", SVCCTL + ",=2,=3", SVCCTL + ",=99999"):
        with pytest.raises(KeywordError):
            dcerpc_iface_regex("dcerpc.iface", bad)


# -- rules through the engine --------------------------------------------------------------


def _tcp_run(rules: list[str], convo: list[tuple[bool, bytes]],
             dport: int = 49700) -> list[dict[str, Any]]:
    return engine_run(rules, convo, dport)


_alerts = alert_sids


def test_keywords_through_the_engine(eve_validator: Any) -> None:
    rules = [
        # Both ways, first fragments only: call 2's response follows its last fragment.
        f"alert dcerpc any any -> any any (dcerpc.iface:{SVCCTL}; sid:1;)",
        f"alert tcp any any -> any any (flow:to_server; dce_iface:{SVCCTL},=2; dce_opnum:15;"
        " sid:2;)",
        f"alert tcp any any -> any any (dcerpc.iface:{SVCCTL},=1; sid:3;)",
        "alert dcerpc any any -> any any (flow:to_server; dcerpc.stub_data;"
        ' content:"BBBB"; sid:4;)',  # in the second fragment only
        "alert tcp any any -> any any (flow:to_client; dcerpc.stub_data;"
        ' content:"reply"; sid:5;)',
        "alert tcp any any -> any any (flow:to_server; dce_stub_data;"
        ' content:"reply"; sid:6;)',
        "alert tcp any any -> any any (dcerpc.opnum:10-20; sid:7;)",  # both ways
        "alert tcp any any -> any any (dcerpc.stub_data; content:\"|5c 00 5c 00|\";"
        " byte_test:2,=,46,0,relative,dce; sid:8;)",
        "alert dcerpc any any -> any any (flow:to_server; dcerpc.opnum:15;"
        ' content:"BBBB"; endswith; sid:9;)',  # a payload content on the PDU's packet
        f"alert tcp any any -> any any (dcerpc.iface:{NETLOGON}; sid:10;)",
    ]
    convo = [
        (True, bind([(0, SVCCTL, 2, 0), (1, NETLOGON, 1, 0)])),
        (False, bind_ack([0, 2])),
        (True, request(15, b"\\\x00\\\x00\x2e\x00" + b"A" * 20, 2, 0, 0x01)),
        (True, request(15, b"BBBB", 2, 0, 0x02)),
        (False, response(b"reply", 2)),
        (True, request(16, b"single", 3, 0)),
        (False, response(b"done", 3)),
    ]
    recs = _tcp_run(rules, convo)
    assert _alerts(recs) == [1, 1, 1, 2, 4, 5, 7, 7, 7, 7, 8, 9]
    dce = [r for r in recs if r["event_type"] == "dcerpc"]
    assert [d["dcerpc"]["request"] for d in dce] == ["BIND", "REQUEST", "REQUEST"]
    assert dce[1]["dcerpc"]["req"] == {"opnum": 15, "frag_cnt": 2, "stub_data_size": 30}
    flows = [r for r in recs if r["event_type"] == "flow"]
    assert flows and flows[0]["app_proto"] == "dcerpc"
    for r in recs:
        errors = list(eve_validator.iter_errors(r))
        assert not errors, (r["event_type"], errors[0].message)


def test_big_endian_dce_byte_order_through_the_engine() -> None:
    rules = ["alert tcp any any -> any any (dcerpc.stub_data; content:\"|5c 00|\";"
             " byte_test:2,=,46,0,relative,dce; sid:1;)",
             "alert tcp any any -> any any (dcerpc.stub_data; content:\"|5c 00|\";"
             " byte_test:2,=,11776,0,relative,dce; sid:2;)"]
    convo = [(True, bind([(0, SVCCTL, 2, 0)], little=False)),
             (False, bind_ack([0], little=False)),
             (True, request(1, b"\\\x00\x2e\x00", 2, little=False))]
    assert _alerts(_tcp_run(rules, convo)) == [2]


def test_connectionless_through_the_engine() -> None:
    rules = [f"alert dcerpc any any -> any any (dcerpc.iface:{NETLOGON}; dcerpc.opnum:5;"
             " sid:1;)",
             "alert udp any any -> any any (flow:to_server; dcerpc.stub_data;"
             ' content:"hello"; sid:2;)',
             "alert tcp any any -> any any (dcerpc.stub_data; content:\"hello\"; sid:3;)"]
    recs = engine_run(rules, [(True, cl_pdu(0, b"hello")), (False, cl_pdu(2, b"world"))],
                      34567, udp=True)
    assert _alerts(recs) == [1, 1, 2]
