"""QUIC Initial packets: key derivation (RFC 9001 appendix A), header protection,
AES-128-GCM, CRYPTO reassembly, the hellos inside, detection; hostile datagrams; real
traffic against Suricata's records."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.app import ANOMALY, AppEvent
from appliance.core.app.quic import (
    HAVE_AES,
    MAX_CRYPTO,
    QUIC_TX,
    QuicParser,
    decode_pn,
    initial_keys,
    looks_like_quic,
    varint,
    version_text,
)
from tests.core.app import PCAPS, SHARED, _iter_ip, oracle_events
from tests.core.app.test_tls import JA3, client_hello, server_hello

pytestmark = pytest.mark.skipif(not HAVE_AES, reason="the cryptography package is missing")

# RFC 9001 appendix A: the client's Destination Connection ID of the sample packets.
RFC_DCID = bytes.fromhex("8394c8f03e515708")


def test_initial_keys_match_rfc9001_appendix_a() -> None:
    keys = initial_keys(1, RFC_DCID)
    assert keys is not None
    client, server = keys
    assert client.key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert client.iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert client.hp.hex() == "9f50449e04a0e810283a1e9933adedd2"
    assert server.key.hex() == "cf3a5331653c364c88f0f379b6067e37"
    assert server.iv.hex() == "0ac1493ca1905853b0bba03e"
    assert server.hp.hex() == "c206b8d9b9f0f37644430b490eeaa314"
    # RFC 9001 A.2: the client's header-protection mask for its sample.
    assert client.mask(bytes.fromhex("d1b1c98dd7689fb8ec11d242b123dc9b"))[:5].hex() == (
        "437b9aec36")
    assert initial_keys(0x6B3343CF, RFC_DCID) is None  # QUIC v2: not decrypted


def test_varint_and_packet_numbers() -> None:
    # RFC 9000 appendix A.1 examples.
    assert varint(bytes.fromhex("c2197c5eff14e88c"), 0) == (151288809941952652, 8)
    assert varint(bytes.fromhex("9d7f3e7d"), 0) == (494878333, 4)
    assert varint(bytes.fromhex("7bbd"), 0) == (15293, 2)
    assert varint(bytes.fromhex("25"), 0) == (37, 1)
    # RFC 9000 A.3: largest 0xa82f30ea, truncated 0x9b32 on 16 bits -> 0xa82f9b32.
    assert decode_pn(0xA82F30EA, 0x9B32, 16) == 0xA82F9B32
    assert decode_pn(-1, 0, 8) == 0
    assert version_text(1) == "1" and version_text(0xFF00001D) == "ff00001d"
    assert version_text(int.from_bytes(b"Q046", "big")) == "Q046"


# --- a test-side encoder: what a QUIC stack sends -----------------------------------------


def _v(n: int) -> bytes:
    """A 2-byte varint (RFC 9000 16)."""
    return struct.pack("!H", 0x4000 | n)


def crypto(offset: int, data: bytes) -> bytes:
    return b"\x06" + _v(offset) + _v(len(data)) + data


def initial(frames: bytes, pn: int, *, server: bool = False, dcid: bytes = RFC_DCID,
            key_dcid: bytes | None = None, version: int = 1, pad_to: int = 0) -> bytes:
    """One protected Initial packet (RFC 9001 5.3, 5.4) carrying ``frames``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    keys = initial_keys(version, key_dcid or dcid)
    assert keys is not None
    k = keys[1 if server else 0]
    payload = frames + b"\x00" * max(0, pad_to - len(frames))
    head = (bytes((0xC1,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid
            + b"\x04scid" + (b"" if server else b"\x00"))  # token length 0 (client)
    if server:
        head += b"\x00"
    pn_off = len(head) + 2
    header = head + _v(2 + len(payload) + 16) + struct.pack("!H", pn)
    nonce = bytes(a ^ b for a, b in zip(k.iv, pn.to_bytes(12, "big"), strict=True))
    pkt = bytearray(header + AESGCM(k.key).encrypt(nonce, payload, header))
    mask = k.mask(bytes(pkt[pn_off + 4 : pn_off + 20]))
    pkt[0] ^= mask[0] & 0x0F
    pkt[pn_off] ^= mask[1]
    pkt[pn_off + 1] ^= mask[2]
    return bytes(pkt)


CH = client_hello(b"quic.example")
SH = server_hello(tls13=True)


def run(datagrams: list[tuple[bool, bytes]]) -> tuple[QuicParser, list[AppEvent]]:
    p = QuicParser()
    ev: list[AppEvent] = []
    for to_server, d in datagrams:
        ev += p.parse_datagram(d, to_server)
    return p, ev


def test_client_and_server_hello_are_read() -> None:
    p, ev = run([(True, initial(crypto(0, CH), 0, pad_to=1200)),
                 (False, initial(b"\x02" + bytes(4) + crypto(0, SH), 0, server=True)
                  + b"\xe0" + bytes(40))])  # a coalesced Handshake-looking tail
    assert [e for e in ev if e.kind == ANOMALY] == []
    assert [(e.kind, e.to_server, e.tx_id) for e in ev] == [(QUIC_TX, True, 0),
                                                           (QUIC_TX, False, 1)]
    assert p.sni == b"quic.example" and p.version == 1
    to_server, to_client = p.buffers(True), p.buffers(False)
    assert to_server["quic.sni"] == b"quic.example"
    assert to_server["quic.version"] == b"\x00\x00\x00\x01"
    assert to_server["ja3.string"] == JA3.encode()
    assert to_server["ja3.hash"] == hashlib.md5(JA3.encode()).hexdigest().encode()
    assert "ja3s.string" not in to_server and "ja3.string" not in to_client
    assert to_client["ja3s.string"] == b"771,4865,43-51"


def test_client_hello_split_over_packets_and_frames_out_of_order() -> None:
    a, b, c = CH[:100], CH[100:180], CH[180:]
    p, ev = run([(True, initial(crypto(180, c) + b"\x01", 0)),
                 (True, initial(crypto(0, a), 1)),
                 (True, initial(crypto(100, b) + crypto(0, a[:50]), 2))])
    assert p.sni == b"quic.example"
    assert [e.kind for e in ev] == [QUIC_TX, QUIC_TX]  # the version, then the hello
    assert p.memuse() == 0  # the CRYPTO bytes are dropped once the hello is read


def test_wrong_keys_are_failed_decrypt_and_retry_dcid_is_tried() -> None:
    bad = bytearray(initial(crypto(0, CH), 0))
    bad[-1] ^= 1  # the AEAD tag no longer authenticates
    p, ev = run([(True, bytes(bad))])
    assert [e.name for e in ev if e.kind == ANOMALY] == ["failed_decrypt"]
    assert p.client_hello is None
    # After a Retry the client's Initial goes to a new DCID, keyed by it.
    retry = bytes((0xF0,)) + (1).to_bytes(4, "big") + b"\x04scid\x08" + b"n" * 8 + b"tok"
    p, ev = run([(True, initial(b"\x01", 0, pad_to=40)), (False, retry),
                 (True, initial(crypto(0, CH), 1, dcid=b"n" * 8))])
    assert p.sni == b"quic.example"
    assert [e.name for e in ev if e.kind == ANOMALY] == []


def test_other_versions_reported_not_read() -> None:
    q046 = bytes((0xC3,)) + b"Q046" + b"\x50" + bytes(8) + b"\x00\x00\x00\x01" + bytes(40)
    p, ev = run([(True, q046)])
    assert p.version == int.from_bytes(b"Q046", "big") and p.client_hello is None
    assert [e.kind for e in ev] == [QUIC_TX]
    assert p.buffers(True) == {"quic.version": b"Q046"}
    # IETF draft-29 uses its own salt.
    p, _ = run([(True, initial(crypto(0, CH), 0, version=0xFF00001D))])
    assert p.sni == b"quic.example"


def test_detection() -> None:
    pkt = initial(crypto(0, CH), 0)
    assert looks_like_quic(pkt, 50000, 443) and looks_like_quic(pkt, 443, 50000)
    assert not looks_like_quic(pkt, 50000, 4433)  # Suricata probes 443 and 80 only
    assert not looks_like_quic(b"\xc0\x00\x00\x00\x01\x30" + bytes(60), 1, 443)  # DCID 48
    assert not looks_like_quic(b"\x40abc", 1, 443)  # a short header says nothing
    assert looks_like_quic(b"\x0d" + bytes(8) + b"Q043" + bytes(20), 1, 443)  # gQUIC


def test_crypto_buffer_is_bounded() -> None:
    huge = bytes((1,)) + (MAX_CRYPTO * 4).to_bytes(3, "big") + bytes(900)
    p = QuicParser()
    for i in range(0, 40):
        p.parse_datagram(initial(crypto(min(i * 900, 16000), huge[:900]), i), True)
        assert p.memuse() <= MAX_CRYPTO
    assert p.client_hello is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=200)), max_size=5))
def test_fuzz_random_datagrams(datagrams: list[tuple[bool, bytes]]) -> None:
    _, ev = run(datagrams)
    assert not [e for e in ev if e.name == "error_on_data"]  # no internal errors


VALID = initial(crypto(0, CH), 0)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(VALID) - 1), st.binary(min_size=1, max_size=4))
def test_fuzz_mutated_initial(pos: int, junk: bytes) -> None:
    data = VALID[:pos] + junk + VALID[pos + len(junk) :]
    _, ev = run([(True, data), (True, data[:pos])])
    assert not [e for e in ev if e.name == "error_on_data"]


# --- real traffic -------------------------------------------------------------------------


def _quic_flows(pcap: Path) -> list[tuple[tuple[int, int], QuicParser]]:
    import dpkt

    flows: dict[tuple[bytes, int, bytes, int], QuicParser | None] = {}
    for ip in _iter_ip(pcap):
        u = ip.data
        if not isinstance(u, dpkt.udp.UDP):
            continue
        fwd = (bytes(ip.src), u.sport, bytes(ip.dst), u.dport)
        rev = (fwd[2], fwd[3], fwd[0], fwd[1])
        key, to_server = (rev, False) if rev in flows else (fwd, True)
        if key not in flows:
            flows[key] = QuicParser() if looks_like_quic(bytes(u.data), u.sport,
                                                         u.dport) else None
        p = flows[key]
        if p is not None:
            p.parse_datagram(bytes(u.data), to_server)
    return [((k[1], k[3]), p) for k, p in flows.items() if p is not None]


def test_suricata_verify_quic_ietf_pcap() -> None:
    pcap = SHARED / "suricata-verify" / "tests" / "quic-ietf-ja3" / "input.pcap"
    if not pcap.exists():
        pytest.skip("suricata-verify data not available")
    [(_ports, p)] = _quic_flows(pcap)
    b: dict[str, Any] = p.buffers(False)
    assert b["ja3s.string"].startswith(b"771,4866,43-51-41")  # the test's rule
    assert p.version == 1 and p.client_hello is not None


def test_real_traffic_ndpi_quic_matches_oracle() -> None:
    if not (PCAPS / "ndpi-mixed.pcap").exists():
        pytest.skip("shared pcaps not available")
    from appliance.core.app.tls import ja3_string

    ours = _quic_flows(PCAPS / "ndpi-mixed.pcap")
    mine = {(a, b, p.sni.decode(), ja3_string(p.client_hello))
            for (a, b), p in ours if p.sni and p.client_hello is not None}
    oracle = {(r["src_port"], r["dest_port"], r["quic"]["sni"], r["quic"]["ja3"]["string"])
              for r in oracle_events("ndpi-mixed", "quic")
              if "sni" in r["quic"] and "ja3" in r["quic"]}
    same = len(mine & oracle)
    print(f"ndpi-mixed: quic sni+ja3 identical to Suricata's {same}/{len(oracle)}, "
          f"{len(mine - oracle)} not in Suricata's")
    assert same >= 0.95 * len(oracle)
    assert not mine - oracle
