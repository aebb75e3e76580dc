"""File keywords (filename, fileext, filemagic, filesize, filemd5/filesha1/filesha256,
filestore) on HTTP transfers: parsed as Suricata 7's file-keywords docs say, matched on
the transaction's files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, Ether

from appliance.rules.keywords import KeywordError, NumCheck, parse_filesize, parse_hash_list
from appliance.rules.loader import LoadedRules, detection_from_text, load_detection
from appliance.rules.parser import Content, parse_rule
from tests.rules.test_header_buffers import alert_sids

C, S = "192.168.1.10", "203.0.113.5"
BODY = b"MZ\x90\x00 this is the downloaded program body"
REQ = b"GET /dl/Setup.EXE HTTP/1.1\r\nHost: example.com\r\n\r\n"
RESP = (b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(BODY)).encode()
        + b"\r\nContent-Type: application/octet-stream\r\n\r\n" + BODY)


def download_alerts(loaded: LoadedRules) -> list[int]:
    """Replay one HTTP download (handshake, GET, 200 with BODY, FIN) and return the sids."""
    sp, dp = 41000, 80

    def t(src: str, dst: str, s: int, d: int, flags: str, seq: int, ack: int,
          data: bytes = b"") -> Any:
        return Ether() / IP(src=src, dst=dst) / TCP(sport=s, dport=d, flags=flags, seq=seq,
                                                    ack=ack) / data

    pkts = [
        t(C, S, sp, dp, "S", 100, 0),
        t(S, C, dp, sp, "SA", 500, 101),
        t(C, S, sp, dp, "A", 101, 501),
        t(C, S, sp, dp, "PA", 101, 501, REQ),
        t(S, C, dp, sp, "A", 501, 101 + len(REQ)),
        t(S, C, dp, sp, "PA", 501, 101 + len(REQ), RESP),
        t(C, S, sp, dp, "A", 101 + len(REQ), 501 + len(RESP)),
        t(C, S, sp, dp, "FA", 101 + len(REQ), 501 + len(RESP)),
        t(S, C, dp, sp, "FA", 501 + len(RESP), 102 + len(REQ)),
        t(C, S, sp, dp, "A", 102 + len(REQ), 502 + len(RESP)),
    ]
    return alert_sids(loaded, pkts)


def test_filename_fileext_filemagic_are_contents_on_file_buffers() -> None:
    r = parse_rule('alert http any any -> any any (filename:"setup"; fileext:!"exe"; '
                   'filemagic:"PE32"; sid:1;)')
    assert r.contents == (
        Content(b"setup", buffer="file.name", nocase=True),
        Content(b".exe", buffer="file.name", nocase=True, endswith=True, negated=True),
        Content(b"PE32", buffer="file.magic", nocase=True),
    )


def test_file_name_ext_magic_size_and_filestore_on_a_download() -> None:
    rules = [
        'alert http any any -> any any (msg:"name"; filename:"setup.exe"; sid:1;)',
        'alert http any any -> any any (msg:"ext"; fileext:"exe"; sid:2;)',
        'alert http any any -> any any (msg:"not ext"; fileext:!"exe"; sid:3;)',
        'alert http any any -> any any (msg:"name sticky"; file.name; '
        'content:"/dl/Setup.EXE"; startswith; endswith; sid:4;)',
        'alert http any any -> any any (msg:"magic"; filemagic:"pe32 executable"; sid:5;)',
        f'alert http any any -> any any (msg:"size"; filesize:{len(BODY)}; sid:6;)',
        'alert http any any -> any any (msg:"size big"; filesize:>1KB; sid:7;)',
        'alert http any any -> any any (msg:"store"; filestore; sid:8;)',
        'alert http any any -> any any (msg:"store get"; content:"POST"; http_method; '
        'filestore; sid:9;)',
    ]
    assert download_alerts(detection_from_text(rules)) == [1, 2, 4, 5, 6, 8]


def test_hash_lists_are_loaded_beside_the_rules(tmp_path: Path) -> None:
    md5 = hashlib.md5(BODY).hexdigest()
    sha1 = hashlib.sha1(BODY).hexdigest()
    sha256 = hashlib.sha256(BODY).hexdigest()
    (tmp_path / "bad.md5").write_text(f"# known bad\n{md5.upper()}  setup.exe\n\n"
                                      f"{'0' * 32}\n")
    (tmp_path / "other.md5").write_text("0" * 32 + "\n")
    (tmp_path / "bad.sha1").write_text(sha1 + "\n")
    (tmp_path / "bad.sha256").write_text(sha256 + "\n")
    (tmp_path / "t.rules").write_text("\n".join([
        'alert http any any -> any any (msg:"md5"; filemd5:bad.md5; sid:1;)',
        'alert http any any -> any any (msg:"md5 other"; filemd5:other.md5; sid:2;)',
        'alert http any any -> any any (msg:"md5 not in"; filemd5:!other.md5; sid:3;)',
        'alert http any any -> any any (msg:"md5 allow"; filemd5:!bad.md5; sid:4;)',
        'alert http any any -> any any (msg:"sha1"; filesha1:bad.sha1; sid:5;)',
        'alert ip any any -> any any (msg:"sha256"; filesha256:bad.sha256; sid:6;)',
    ]) + "\n")
    assert download_alerts(load_detection([tmp_path / "t.rules"])) == [1, 3, 5, 6]
    # Warm start from the cache: the same, and a list removed since never matches.
    cache = tmp_path / "cache"
    assert download_alerts(load_detection([tmp_path / "t.rules"], cache_dir=cache)) == [
        1, 3, 5, 6]
    (tmp_path / "bad.sha1").unlink()
    warm = load_detection([tmp_path / "t.rules"], cache_dir=cache)
    assert warm.from_cache
    assert download_alerts(warm) == [1, 3, 6]


def test_bad_hash_list_fails_the_rule_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "bad.md5").write_text("not-a-hash\n")
    (tmp_path / "t.rules").write_text(
        'alert http any any -> any any (filemd5:bad.md5; sid:1;)\n'
        'alert http any any -> any any (filesha1:missing.sha1; sid:2;)\n')
    loaded = load_detection([tmp_path / "t.rules"])
    reasons = sorted(f.reason for f in loaded.program.failures)
    assert reasons[0] == "'filemd5': bad.md5:1 is not a 32-digit hash"
    assert reasons[1].startswith("'filesha1': cannot read missing.sha1")
    with pytest.raises(KeywordError):
        parse_hash_list("filemd5", "!", None)


@pytest.mark.parametrize("value,expected", [
    ("100", NumCheck("=", 100)),
    ("<2KB", NumCheck("<", 2048)),
    (">1mb", NumCheck(">", 1024 ** 2)),
    ("100<>200", NumCheck("<>", 100, 200)),
    ("1KB<>1MB", NumCheck("<>", 1024, 1024 ** 2)),
])
def test_filesize_values(value: str, expected: NumCheck) -> None:
    assert parse_filesize(value) == expected


@pytest.mark.parametrize("value", ["", "x", ">1TB", "<1<>2"])
def test_filesize_errors(value: str) -> None:
    with pytest.raises(KeywordError):
        parse_filesize(value)
