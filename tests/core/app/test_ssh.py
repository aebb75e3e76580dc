"""SSH parser: banners, KEXINIT and HASSH, NEWKEYS, any chunking, hostile input; the ssh
sticky buffers and the EVE `ssh` record through the engine."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.app import ANOMALY, AppEvent, new_parser
from appliance.core.app.ssh import (
    MAX_BANNER_LEN,
    MAX_KEX_LEN,
    SSH_ENCRYPTED,
    SSH_UPDATE,
    SshParser,
    hassh_string,
)
from tests.core.app import PCAPS, oracle_events, tcp_flows, validate_eve
from tests.core.app.engine_run import engine_run

# --- builders ------------------------------------------------------------------------------

KEX = b"curve25519-sha256,diffie-hellman-group14-sha256"
HOSTKEY = b"ssh-ed25519,rsa-sha2-512"
ENC_CS = b"aes128-ctr,aes256-gcm@openssh.com"
ENC_SC = b"chacha20-poly1305@openssh.com,aes128-ctr"
MAC_CS = b"hmac-sha2-256,hmac-sha1"
MAC_SC = b"umac-64@openssh.com"
COMP_CS = b"none"
COMP_SC = b"none,zlib@openssh.com"

CLIENT_HASSH = "curve25519-sha256,diffie-hellman-group14-sha256;aes128-ctr,aes256-gcm@openssh.com;" \
    "hmac-sha2-256,hmac-sha1;none"
SERVER_HASSH = "curve25519-sha256,diffie-hellman-group14-sha256;" \
    "chacha20-poly1305@openssh.com,aes128-ctr;umac-64@openssh.com;none,zlib@openssh.com"


def name_list(b: bytes) -> bytes:
    return struct.pack("!I", len(b)) + b


def packet(payload: bytes, pad: int = 4) -> bytes:
    """An unencrypted binary packet (RFC 4253 section 6)."""
    return struct.pack("!IB", len(payload) + pad + 1, pad) + payload + b"\0" * pad


def kexinit() -> bytes:
    body = b"\x14" + b"C" * 16 + b"".join(name_list(x) for x in (
        KEX, HOSTKEY, ENC_CS, ENC_SC, MAC_CS, MAC_SC, COMP_CS, COMP_SC, b"", b""))
    return packet(body + b"\0" + b"\0\0\0\0")


NEWKEYS = packet(b"\x15", pad=10)
CLIENT = b"SSH-2.0-OpenSSH_9.6 Ubuntu-3\r\n" + kexinit() + packet(b"\x1e" + b"k" * 40) + NEWKEYS
SERVER = (b"SSH-1.99-Cisco_server-1.24\r\n" + kexinit() + packet(b"\x1f" + b"r" * 300)
          + NEWKEYS + b"\xde\xad" * 50)


def feed_chunks(p: SshParser, data: bytes, to_server: bool, size: int) -> list[AppEvent]:
    out: list[AppEvent] = []
    for i in range(0, len(data), size):
        out += p.feed(data[i : i + size], to_server)
    return out


# --- banners and KEXINIT -------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 7, 100000])
def test_whole_exchange_in_any_chunking(size: int) -> None:
    p = SshParser()
    ev_c = feed_chunks(p, CLIENT, True, size)
    ev_s = feed_chunks(p, SERVER, False, size)
    assert [e.name for e in ev_c if e.kind == SSH_UPDATE] == ["banner", "kexinit"]
    assert [e.name for e in ev_s if e.kind == SSH_UPDATE] == ["banner", "kexinit"]
    assert not [e for e in ev_c + ev_s if e.kind == ANOMALY]
    assert [e.kind for e in ev_s if e.kind == SSH_ENCRYPTED] == [SSH_ENCRYPTED]
    assert p.encrypted
    assert p.buffers(True) == {
        "ssh.proto": b"2.0", "ssh.software": b"OpenSSH_9.6",
        "ssh.hassh": hashlib.md5(CLIENT_HASSH.encode()).hexdigest().encode(),
        "ssh.hassh.string": CLIENT_HASSH.encode()}
    assert p.buffers(False) == {
        "ssh.proto": b"1.99", "ssh.software": b"Cisco_server-1.24",
        "ssh.hassh.server": hashlib.md5(SERVER_HASSH.encode()).hexdigest().encode(),
        "ssh.hassh.server.string": SERVER_HASSH.encode()}
    assert p.memuse() == 0  # nothing buffered once both sides are encrypted


def test_eve_record_is_schema_valid() -> None:
    p = SshParser()
    p.feed(CLIENT, True)
    p.feed(SERVER, False)
    eve = p.eve()
    assert eve == {
        "client": {"proto_version": "2.0", "software_version": "OpenSSH_9.6",
                   "hassh": {"hash": hashlib.md5(CLIENT_HASSH.encode()).hexdigest(),
                             "string": CLIENT_HASSH}},
        "server": {"proto_version": "1.99", "software_version": "Cisco_server-1.24",
                   "hassh": {"hash": hashlib.md5(SERVER_HASSH.encode()).hexdigest(),
                             "string": SERVER_HASSH}}}
    validate_eve("ssh", eve)


def test_banner_only_and_lf_line_end() -> None:
    p = SshParser()
    p.feed(b"SSH-2.0-PuTTY_Release_0.80\n", True)
    assert p.buffers(True) == {"ssh.proto": b"2.0", "ssh.software": b"PuTTY_Release_0.80"}
    assert p.buffers(False) == {}
    assert p.eve() == {"client": {"proto_version": "2.0",
                                  "software_version": "PuTTY_Release_0.80"}}
    assert not p.encrypted


def test_server_lines_before_its_identification_are_skipped() -> None:
    p = SshParser()
    ev = p.feed(b"Welcome\r\nno soup for you\r\nSSH-2.0-dropbear\r\n", False)
    assert [e.kind for e in ev] == [SSH_UPDATE]
    assert p.buffers(False)["ssh.software"] == b"dropbear"


def test_client_garbage_is_an_invalid_banner_and_stops_the_direction() -> None:
    p = SshParser()
    ev = p.feed(b"GET / HTTP/1.1\r\n", True)
    assert [(e.kind, e.name) for e in ev] == [(ANOMALY, "INVALID_BANNER")]
    assert p.feed(b"SSH-2.0-late\r\n", True) == []
    assert p.buffers(True) == {}


def test_banner_without_software_dash_is_invalid() -> None:
    p = SshParser()
    assert [e.name for e in p.feed(b"SSH-2.0\r\n", True)] == ["INVALID_BANNER"]


def test_long_banner_is_bounded_and_reported() -> None:
    p = SshParser()
    long_line = b"SSH-2.0-" + b"A" * 5000 + b"\r\n"
    ev = feed_chunks(p, long_line + kexinit(), True, 7)
    assert [e.name for e in ev if e.kind == ANOMALY] == ["LONG_BANNER"]
    sw = p.buffers(True)["ssh.software"]
    assert sw == b"A" * (MAX_BANNER_LEN - len(b"SSH-2.0-"))
    assert "ssh.hassh" in p.buffers(True)  # the packets after the long line are read
    assert p.memuse() == 0


def test_endless_line_is_dropped_not_buffered() -> None:
    p = SshParser()
    for _ in range(200):
        p.feed(b"SSH-2.0-" + b"B" * 1000, True)
        assert p.memuse() <= MAX_BANNER_LEN
    assert p.feed(b"x" * 1000, True) == []  # gave up on the direction


def test_ssh1_banner_only() -> None:
    p = SshParser()
    ev = p.feed(b"SSH-1.5-1.2.26\n" + b"\x00\x00\x01\x04binary ssh1", True)
    assert [e.kind for e in ev] == [SSH_UPDATE]
    assert p.buffers(True) == {"ssh.proto": b"1.5", "ssh.software": b"1.2.26"}


def test_invalid_packet_length() -> None:
    p = SshParser()
    ev = p.feed(b"SSH-2.0-x\r\n" + b"\xff\xff\xff\xff\x04\x14" + b"z" * 100, True)
    assert [e.name for e in ev if e.kind == ANOMALY] == ["INVALID_RECORD"]
    assert p.memuse() == 0


def test_long_kexinit_is_skipped_without_buffering() -> None:
    p = SshParser()
    big = packet(b"\x14" + b"C" * 16 + name_list(b"k" * (MAX_KEX_LEN + 10)))
    ev = feed_chunks(p, b"SSH-2.0-x\r\n" + big + kexinit(), True, 4096)
    assert [e.name for e in ev if e.kind == ANOMALY] == ["LONG_KEX_RECORD"]
    assert p.memuse() <= 6
    # The next KEXINIT is still read (a client may only send one; this one is legal).
    assert p.buffers(True)["ssh.hassh.string"] == CLIENT_HASSH.encode()


def test_truncated_kexinit_lists_are_an_anomaly() -> None:
    p = SshParser()
    bad = packet(b"\x14" + b"C" * 16 + struct.pack("!I", 500) + b"short")
    ev = p.feed(b"SSH-2.0-x\r\n" + bad, True)
    assert [e.name for e in ev if e.kind == ANOMALY] == ["INVALID_RECORD"]
    assert "ssh.hassh" not in p.buffers(True)


def test_hassh_string_picks_each_sides_lists() -> None:
    body = kexinit()[6:]  # after length, padding length and message code
    assert hassh_string(body, True) == CLIENT_HASSH
    assert hassh_string(body, False) == SERVER_HASSH
    assert hassh_string(body[:30], True) is None


def test_one_side_newkeys_is_not_encrypted() -> None:
    p = SshParser()
    p.feed(CLIENT, True)
    assert not p.encrypted
    assert new_parser("ssh").__class__ is SshParser


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=3000), st.booleans(), st.integers(1, 64))
def test_hostile_bytes_never_raise_and_stay_bounded(data: bytes, to_server: bool,
                                                    size: int) -> None:
    p = SshParser()
    feed_chunks(p, b"SSH-2.0-fuzz\r\n" + data, to_server, size)
    feed_chunks(p, data, not to_server, size)
    assert p.memuse() <= MAX_BANNER_LEN + MAX_KEX_LEN + 12
    validate_eve("ssh", p.eve())


# --- real traffic --------------------------------------------------------------------------


def test_real_ssh_flows_match_suricatas_records() -> None:
    pcap = PCAPS / "ndpi-mixed.pcap"
    if not pcap.exists():
        pytest.skip(f"{pcap} is not present")
    theirs = {(r["ssh"]["client"].get("software_version"),
               r["ssh"]["server"].get("software_version"))
              for r in oracle_events("ndpi-mixed", "ssh")
              if "client" in r["ssh"] and "server" in r["ssh"]}
    ours = set()
    for f in tcp_flows(pcap):
        if not any(d.startswith(b"SSH-") for _side, d in f.chunks[:2]):
            continue
        p = SshParser()
        for to_server, d in f.chunks:
            p.feed(d, to_server)
        eve = p.eve()
        validate_eve("ssh", eve)
        if "client" in eve and "server" in eve:
            ours.add((eve["client"].get("software_version"),
                      eve["server"].get("software_version")))
    print(f"ndpi-mixed: ssh client/server software pairs {len(theirs & ours)}/{len(theirs)}")
    assert theirs and theirs <= ours


# --- rules and EVE through the engine ------------------------------------------------------


def _engine_run(rules: list[str], client: bytes, server: bytes) -> list[dict[str, Any]]:
    """Port 22; the two sides in turns of 500-byte segments, the server's first."""
    msgs: list[tuple[bool, bytes]] = []
    for i in range(0, max(len(client), len(server)), 500):
        if i < len(server):
            msgs.append((False, server[i : i + 500]))
        if i < len(client):
            msgs.append((True, client[i : i + 500]))
    return engine_run(rules, msgs, 22)


def test_ssh_keywords_alert_per_direction_and_eve_record(eve_validator: Any) -> None:
    client_hash = hashlib.md5(CLIENT_HASSH.encode()).hexdigest()
    rules = [
        'alert ssh any any -> any any (ssh.proto; content:"2.0"; sid:1;)',
        'alert ssh any any -> any any (ssh.proto; content:"1.99"; sid:2;)',
        'alert ssh any any -> any any (ssh.software; content:"openssh"; nocase; sid:3;)',
        'alert ssh any any -> any any (ssh_software; content:"Cisco_server"; sid:4;)',
        f'alert ssh any any -> any any (ssh.hassh; content:"{client_hash}"; sid:5;)',
        'alert ssh any any -> any any (ssh.hassh.server.string; content:"zlib@openssh.com";'
        ' endswith; sid:6;)',
        'alert ssh any any -> any any (ssh.hassh.string; content:"umac-64"; sid:7;)',
        'alert ssh any any -> any any (ssh.software; content:"nothing-like-it"; sid:8;)',
        'alert ssh any any -> any any (ssh.hassh.server; content:"ffff"; sid:9;)',
        'alert ssh any any -> any any (ssh.proto; content:"2"; sid:10;)',
    ]
    recs = _engine_run(rules, CLIENT, SERVER)
    sids = sorted(r["alert"]["signature_id"] for r in recs if r["event_type"] == "alert")
    # sid 10 matches "2.0" to the server; "1.99" has no "2", so once.
    assert sids == [1, 2, 3, 4, 5, 6, 10]
    ssh = [r for r in recs if r["event_type"] == "ssh"]
    assert len(ssh) == 1
    assert ssh[0]["ssh"]["client"]["software_version"] == "OpenSSH_9.6"
    assert ssh[0]["ssh"]["server"]["proto_version"] == "1.99"
    for r in recs:
        errors = list(eve_validator.iter_errors(r))
        assert not errors, (r["event_type"], errors[0].message)


def test_same_rule_alerts_once_in_each_direction() -> None:
    rules = ['alert ssh any any -> any any (ssh.software; content:"OpenSSH"; sid:1;)']
    srv = b"SSH-2.0-OpenSSH_7.4\r\n" + kexinit()
    recs = _engine_run(rules, CLIENT, srv)
    sids = [r["alert"]["signature_id"] for r in recs if r["event_type"] == "alert"]
    assert sids == [1, 1]


def test_legacy_value_keywords() -> None:
    rules = [
        'alert ssh any any -> any any (ssh.protoversion:2_compat; sid:1;)',
        'alert ssh any any -> any any (ssh.protoversion:2.0; sid:2;)',
        'alert ssh any any -> any any (ssh.protoversion:1.99; sid:3;)',
        'alert ssh any any -> any any (ssh.protoversion:1.9; sid:4;)',
        'alert ssh any any -> any any (ssh.softwareversion:"Cisco_"; sid:5;)',
        'alert ssh any any -> any any (ssh.softwareversion:"server"; sid:6;)',
    ]
    recs = _engine_run(rules, CLIENT, SERVER)
    alerts = sorted((r["alert"]["signature_id"], r["src_port"]) for r in recs
                    if r["event_type"] == "alert")
    # 2_compat: the client's 2.0 and the server's 1.99; exact versions; software prefix.
    assert alerts == [(1, 22), (1, 40000), (2, 40000), (3, 22), (5, 22)]


def test_legacy_value_keyword_errors() -> None:
    from appliance.rules.loader import detection_from_text

    loaded = detection_from_text(['alert ssh any any -> any any (ssh.protoversion:two; sid:1;)',
                                  'alert ssh any any -> any any (ssh.softwareversion:""; sid:2;)'])
    reasons = [f.reason for f in loaded.failure_records()]
    assert reasons == ["'ssh.protoversion' takes a version such as 2.0 or 2_compat, not 'two'",
                       "'ssh.softwareversion' needs a value"]
