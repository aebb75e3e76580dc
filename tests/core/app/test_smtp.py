"""SMTP and MIME: commands and replies (pipelining, BDAT, STARTTLS), DATA with
dot-unstuffing, the MIME decoder (nested multiparts, base64 / quoted-printable / 7bit,
attachments named by Content-Disposition or Content-Type, folded headers, encapsulated
messages), bounds on hostile input, and through the engine: smtp.* / email.* / file
keywords, Suricata's smtp event names, attachments scanned and dropped inline, STARTTLS
turning the flow into TLS, schema-valid EVE smtp / fileinfo records."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.app import ANOMALY, AppEvent, new_parser
from appliance.core.app.mime import MAX_DEPTH, MAX_HEADER_VALUE, MimeDecoder, header_params
from appliance.core.app.smtp import (
    FILE_DATA_WINDOW,
    MAX_DATA_LINE,
    MAX_HELD,
    MAX_LINE_BUF,
    SMTP_FILE,
    SMTP_STARTTLS,
    SMTP_TX,
    SMTP_UPDATE,
    SmtpParser,
    SmtpTx,
    split_addresses,
)
from appliance.core.commands import Log, VerdictKind
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import Shutdown
from appliance.rules.loader import load_detection
from tests.core.app.engine_run import ScanSession
from tests.core.app.test_tls import client_hello, record

PAYLOAD = bytes(range(256)) * 3 + b"MZ-tail"
TEXT = "caf\u00e9 = price; see http://Example.org/Path?x=1 and more text to wrap " * 3
LONG_QP_NAME = "r\u00e9sum\u00e9.pdf"


def qp(text: str) -> bytes:
    """Quoted-printable with soft line breaks every 60 characters (RFC 2045 6.7)."""
    lines = [b""]
    for c in text.encode("utf-8"):
        tok = bytes([c]) if 33 <= c <= 126 and c != 61 else b"=%02X" % c
        if len(lines[-1]) + len(tok) > 60:
            lines.append(b"")
        lines[-1] += tok
    return b"=\r\n".join(lines)


def message() -> bytes:
    """A multipart/mixed message: a multipart/alternative (7bit text with a dot-stuffed
    line, quoted-printable text), a base64 attachment named on a folded
    Content-Disposition line, and one named by Content-Type name= only."""
    b64 = base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n")
    return b"".join([
        b"From: \"Doe, Jane\" <jane@example.org>\r\n",
        b"To: <a@example.com>, \"B, b\" <b@example.com>\r\n",
        b"Subject: quarterly\r\n report\r\n",
        b"X-Mailer: tester 1.0\r\n",
        b"MIME-Version: 1.0\r\n",
        b"Content-Type: multipart/mixed;\r\n\tboundary=\"outer==\"\r\n",
        b"\r\n",
        b"preamble, ignored\r\n",
        b"--outer==\r\n",
        b"Content-Type: multipart/alternative; boundary=inner\r\n",
        b"\r\n",
        b"--inner\r\n",
        b"Content-Type: text/plain\r\n",
        b"Content-Transfer-Encoding: 7bit\r\n",
        b"\r\n",
        b"line one\r\n",
        b"..starts with a dot\r\n",  # dot-stuffed on the wire (RFC 5321 4.5.2)
        b"--inner\r\n",
        b"Content-Type: text/html\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"\r\n",
        qp(TEXT), b"\r\n",
        b"--inner--\r\n",
        b"--outer==\r\n",
        b"Content-Type: application/octet-stream\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Disposition: attachment;\r\n filename=\"payload.exe\"\r\n",
        b"\r\n",
        b64,
        b"--outer==\r\n",
        b"Content-Type: text/plain; name=\"notes.txt\"\r\n",
        b"\r\n",
        b"plain attachment\r\n",
        b"second line\r\n",
        b"--outer==--\r\n",
        b"epilogue\r\n",
    ])


CLIENT = [b"EHLO client.example\r\n", b"MAIL FROM: <jane@example.org> SIZE=1234\r\n",
          b"RCPT TO:<a@example.com>\r\n", b"RCPT TO: <b@example.com>\r\n", b"DATA\r\n",
          message() + b".\r\n", b"QUIT\r\n"]
SERVER = [b"220 mx.example ESMTP\r\n", b"250-mx.example\r\n250-SIZE 10000\r\n250 HELP\r\n",
          b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go ahead\r\n",
          b"250 queued\r\n", b"221 bye\r\n"]


def run(chunk: int, client: list[bytes] | None = None,
        server: list[bytes] | None = None) -> tuple[SmtpParser, list[AppEvent]]:
    """The greeting, then each command before its reply, in pieces of `chunk` bytes."""
    client = CLIENT if client is None else client
    server = SERVER if server is None else server
    p = SmtpParser()
    out: list[AppEvent] = []

    def feed(data: bytes, to_server: bool) -> None:
        for i in range(0, len(data), chunk):
            out.extend(p.feed(data[i:i + chunk], to_server))

    feed(server[0], False)
    for i, cmd in enumerate(client):
        feed(cmd, True)
        if i + 1 < len(server):
            feed(server[i + 1], False)
    out.extend(p.close())
    return p, out


def files(out: list[AppEvent]) -> list[Any]:
    return [e.data["file"] for e in out if e.kind == SMTP_FILE]


def anomalies(out: list[AppEvent]) -> list[str]:
    return [e.name for e in out if e.kind == ANOMALY]


def test_registry_builds_the_smtp_parser() -> None:
    p = new_parser("smtp")
    assert isinstance(p, SmtpParser) and p.app_proto == "smtp"


@pytest.mark.parametrize("chunk", [1, 7, 100000])
def test_session_envelope_message_and_attachments(chunk: int) -> None:
    p, out = run(chunk)
    assert anomalies(out) == []
    txs = [e.data["tx"] for e in out if e.kind == SMTP_TX]
    assert len(txs) == 1  # QUIT after the message opens no empty transaction
    tx: SmtpTx = txs[0]
    assert tx.helo == b"client.example"
    assert tx.mail_from == b"<jane@example.org>"  # ESMTP SIZE= is not part of it
    assert tx.rcpt_to == [b"<a@example.com>", b"<b@example.com>"]
    got = files(out)
    assert [f.filename for f in got] == [b"payload.exe", b"notes.txt"]
    assert all(f.state == "CLOSED" and f.to_server for f in got)
    assert got[0].size == len(PAYLOAD)
    assert got[0].sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert bytes(got[0].window) == PAYLOAD
    # 7bit: lines keep their CRLF, except the one before the delimiter (RFC 2046 5.1.1).
    assert bytes(got[1].window) == b"plain attachment\r\nsecond line"
    email = tx.eve_email()
    assert email == {"status": "PARSE_DONE", "from": "\"Doe, Jane\" <jane@example.org>",
                     "to": ["<a@example.com>", "\"B, b\" <b@example.com>"],
                     "attachment": ["payload.exe", "notes.txt"],
                     "url": ["example.org/path?x=1"]}
    assert tx.eve_smtp() == {"helo": "client.example", "mail_from": "<jane@example.org>",
                             "rcpt_to": ["<a@example.com>", "<b@example.com>"]}
    bufs = tx.request_buffers()
    assert bufs["email.subject"] == b"quarterly report"  # unfolded (RFC 5322 2.2.3)
    assert bufs["email.x_mailer"] == b"tester 1.0"
    # email.body_md5: the body after the headers as sent (dot-stuffing and encodings
    # kept), as Suricata computes it.
    raw = message()
    assert bufs["email.body_md5"] == hashlib.md5(raw[raw.index(b"\r\n\r\n") + 4:]
                                                 ).hexdigest().encode()
    assert p.memuse() < 4096


def test_body_parts_decode_dot_unstuffing_and_quoted_printable() -> None:
    seen: list[tuple[bytes, bytearray]] = []

    class Sink:
        def part_start(self, e: Any) -> None:
            seen.append((e.ctype, bytearray()))

        def part_data(self, e: Any, data: bytes) -> None:
            seen[-1][1].extend(data)

        def part_end(self, e: Any) -> None:
            pass

    m = MimeDecoder(Sink())
    p = SmtpParser()
    # Drive the decoder through the SMTP layer's own unstuffing.
    p.feed(b"220 hi\r\n", False)
    p.feed(b"EHLO x\r\n", True)
    p.feed(b"250 PIPELINING\r\n", False)
    p.feed(b"DATA\r\n", True)
    tx = p.tx
    assert tx is not None and tx.mime is not None
    tx.mime = m
    p.feed(message() + b".\r\n", True)
    assert m.done
    assert [c for c, _ in seen] == [b"text/plain", b"text/html", b"application/octet-stream",
                                    b"text/plain"]
    assert bytes(seen[0][1]) == b"line one\r\n.starts with a dot"
    assert bytes(seen[1][1]).decode("utf-8") == TEXT  # QP: soft breaks joined
    assert bytes(seen[2][1]) == PAYLOAD


def test_pipelining_enters_data_mode_without_waiting() -> None:
    p = SmtpParser()
    out = p.feed(b"220 hi\r\n", False)
    out += p.feed(b"EHLO x\r\n", True)
    out += p.feed(b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n", False)
    out += p.feed(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
                  b"Content-Disposition: attachment; filename=x.bin\r\n\r\nabc\r\n.\r\n"
                  b"QUIT\r\n", True)
    out += p.feed(b"250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n221 bye\r\n", False)
    assert [f.filename for f in files(out)] == [b"x.bin"]
    assert anomalies(out) == []  # every reply matched a command


def test_updates_inspect_only_the_attachments_that_progressed() -> None:
    p = SmtpParser()
    p.feed(b"220 hi\r\n", False)
    p.feed(b"EHLO x\r\n", True)
    p.feed(b"250 PIPELINING\r\n", False)
    head = (b"DATA\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Disposition: attachment; filename=one.txt\r\n\r\nfirst\r\n")

    def update(out: list[AppEvent]) -> dict[str, Any]:
        (ev,) = [e for e in out if e.kind == SMTP_UPDATE]
        return dict(ev.data["tx"].request_buffers())

    assert update(p.feed(head, True))["file.data"] == [b"first"]
    b = update(p.feed(b"--b\r\nContent-Disposition: attachment; filename=two.txt\r\n\r\n"
                      b"second\r\n", True))
    assert b["file.data"] == [b"first", b"second"]  # one.txt closed, two.txt started
    assert update(p.feed(b"more\r\n", True))["file.data"] == [b"second\r\nmore"]
    # two.txt closes: inspected once more (closed: size and hashes), one.txt not.
    assert update(p.feed(b"--b--\r\n", True))["file.data"] == [b"second\r\nmore"]
    b = update(p.feed(b".\r\n", True))  # the message ends; no attachment progressed
    assert "file.data" not in b and b["smtp.helo"] == b"x"


def test_without_pipelining_data_waits_for_354_and_a_rejection_keeps_commands() -> None:
    p = SmtpParser()
    out = p.feed(b"220 hi\r\n", False)
    out += p.feed(b"HELO x\r\nMAIL FROM:<a@b>\r\n", True)
    out += p.feed(b"250 hi\r\n250 ok\r\n", False)
    out += p.feed(b"DATA\r\n", True)
    out += p.feed(b"554 no valid recipients\r\n", False)
    out += p.feed(b"MAIL FROM:<evil@b>\r\n", True)  # a command again, not message text
    assert "DATA_COMMAND_REJECTED" in anomalies(out)
    assert p.tx is not None and p.tx.mail_from == b"<evil@b>"


def test_a_refused_pipelined_data_truncates_what_was_read_and_a_retry_starts_afresh() -> None:
    p = SmtpParser()
    out = p.feed(b"220 hi\r\n", False)
    out += p.feed(b"EHLO x\r\n", True)
    out += p.feed(b"250 PIPELINING\r\n", False)
    out += p.feed(b"MAIL FROM:<a@b>\r\nDATA\r\n"
                  b"Content-Disposition: attachment; filename=x.bin\r\n\r\nabc\r\n", True)
    out += p.feed(b"250 ok\r\n554 no recipients\r\n", False)
    assert [(f.filename, f.state) for f in files(out)] == [(b"x.bin", "TRUNCATED")]
    out = p.feed(b"RCPT TO:<c@d>\r\n", True)  # in clear command mode again
    out += p.feed(b"250 ok\r\n", False)
    out += p.feed(b"DATA\r\nContent-Type: text/plain; name=y.txt\r\n\r\nyes\r\n.\r\n",
                  True)
    (f,) = files(out)
    assert (f.filename, f.state, bytes(f.window)) == (b"y.txt", "CLOSED", b"yes")
    assert p.tx is not None and p.tx.rcpt_to == [b"<c@d>"] and p.tx.done


def test_bdat_chunks_carry_the_message_without_dot_stuffing() -> None:
    body = (b"Content-Type: text/plain; name=\"c.txt\"\r\n\r\n"
            b"first\r\n.\r\nstill the message\r\n..two dots\r\n")
    a, b = body[:30], body[30:]
    p = SmtpParser()
    out = p.feed(b"220 hi\r\n", False)
    out += p.feed(b"EHLO x\r\n", True)
    out += p.feed(b"250-mx\r\n250 CHUNKING\r\n", False)
    out += p.feed(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", True)
    out += p.feed(b"250 ok\r\n250 ok\r\n", False)
    out += p.feed(b"BDAT %d\r\n" % len(a) + a, True)
    out += p.feed(b"250 ok\r\n", False)
    out += p.feed(b"BDAT %d LAST\r\n" % len(b) + b + b"QUIT\r\n", True)
    out += p.feed(b"250 ok\r\n221 bye\r\n", False)
    (f,) = files(out)
    assert bytes(f.window) == b"first\r\n.\r\nstill the message\r\n..two dots"
    assert [e.data["tx"].tx_id for e in out if e.kind == SMTP_TX] == [0]
    assert anomalies(out) == []


def test_bdat_with_a_bad_size_is_an_event() -> None:
    p = SmtpParser()
    p.feed(b"220 hi\r\n", False)
    assert "BDAT_CHUNK_LEN_EXCEEDED" in anomalies(p.feed(b"BDAT lots\r\n", True))


def test_starttls_hands_over_and_holds_injected_commands() -> None:
    p = SmtpParser()
    p.feed(b"220 hi\r\n", False)
    p.feed(b"EHLO x\r\n", True)
    p.feed(b"250 STARTTLS\r\n", False)
    # A command pipelined behind STARTTLS is held until the reply says what it is.
    out = p.feed(b"STARTTLS\r\nMAIL FROM:<injected@x>\r\n", True)
    assert anomalies(out) == ["INVALID_PIPELINED_SEQUENCE"]
    assert p.tx is not None and p.tx.mail_from is None
    hello = record(22, client_hello())
    out = p.feed(b"220 go ahead\r\n" + hello[:5], False)
    (ev,) = [e for e in out if e.kind == SMTP_STARTTLS]
    # The injected clear text is not TLS: not handed over (a server must discard it).
    assert ev.data == {"ts": b"", "tc": hello[:5]}
    assert p.upgraded and p.feed(b"anything", True) == []


def test_rejected_starttls_goes_on_in_clear_text() -> None:
    p = SmtpParser()
    p.feed(b"220 hi\r\n", False)
    p.feed(b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<a@x>\r\n", True)
    out = p.feed(b"250 hi\r\n454 TLS not available\r\n", False)
    assert "TLS_REJECTED" in anomalies(out)
    assert not p.upgraded and p.tx is not None and p.tx.mail_from == b"<a@x>"


def test_held_bytes_are_bounded() -> None:
    p = SmtpParser()
    p.feed(b"220 hi\r\nSTARTTLS\r\n", True)
    for _ in range(40):
        p.feed(b"x" * 4096, True)
    assert p.memuse() <= MAX_HELD + 4096


def test_reply_anomalies() -> None:
    p = SmtpParser()
    out = p.feed(b"220 hi\r\n", False)
    out += p.feed(b"hello\r\n250 nobody asked\r\n", False)
    out += p.feed(b"NOOP\r\n", True)
    out += p.feed(b"2", False)
    out += p.feed(b"50 " + b"y" * 600 + b"\r\n", False)
    assert anomalies(out) == ["INVALID_REPLY", "UNABLE_TO_MATCH_REPLY_WITH_REQUEST",
                              "MAX_REPLY_LINE_LEN_EXCEEDED"]


def test_first_command_before_the_greeting() -> None:
    p = SmtpParser()
    assert anomalies(p.feed(b"EHLO x\r\n", True)) == ["NO_SERVER_WELCOME_MESSAGE"]


def test_long_lines_are_bounded() -> None:
    p = SmtpParser()
    p.feed(b"220 hi\r\n", False)
    out: list[AppEvent] = []
    for _ in range(50):
        out += p.feed(b"A" * 10000, True)
        assert p.memuse() <= MAX_LINE_BUF
    out += p.feed(b"\r\nHELO ok\r\n", True)
    assert anomalies(out) == ["MAX_COMMAND_LINE_LEN_EXCEEDED"]
    assert p.helo == b"ok"
    # A message line without end: passed on in pieces, never buffered whole.
    p.feed(b"500 too long\r\n250 hi\r\n", False)
    p.feed(b"MAIL FROM:<a@b>\r\n", True)
    p.feed(b"250 ok\r\n", False)
    p.feed(b"DATA\r\n", True)
    p.feed(b"354 go\r\n", False)
    p.feed(b"Content-Type: text/plain; name=big.txt\r\n\r\n", True)
    for _ in range(100):
        p.feed(b"B" * 10000, True)
        assert p.memuse() <= MAX_DATA_LINE + FILE_DATA_WINDOW + 4096
    out = p.feed(b"\r\n.\r\n", True)
    (f,) = files(out)
    assert f.size == 1_000_000 and len(f.window) == FILE_DATA_WINDOW


def test_mime_events_and_bounds() -> None:
    p = SmtpParser()
    p.feed(b"220 hi\r\n", False)
    p.feed(b"EHLO x\r\n", True)
    p.feed(b"250 PIPELINING\r\n", False)
    nested = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                      for i in range(MAX_DEPTH + 5))
    msg = (b"Subject: " + b"s" * (MAX_HEADER_VALUE + 500) + b"\r\n"
           b"Content-Type: multipart/mixed; boundary=top\r\n\r\n"
           b"--top\r\nContent-Transfer-Encoding: base64\r\n"
           b"Content-Disposition: attachment; filename=a.bin\r\n\r\n"
           b"QUJD!!RA==\r\n"
           b"--top\r\nContent-Transfer-Encoding: quoted-printable\r\n"
           b"Content-Disposition: attachment; filename=b.txt\r\n\r\n"
           b"bad =ZZ escape =41\r\n"
           b"--top\r\n" + nested + b"deep\r\n--top--\r\n")
    out = p.feed(b"DATA\r\n" + msg + b".\r\n", True)
    names = anomalies(out)
    for want in ("MIME_LONG_HEADER_VALUE", "MIME_INVALID_BASE64", "MIME_INVALID_QP",
                 "MIME_PARSE_FAILED"):
        assert want in names
    a, b = files(out)
    assert bytes(a.window) == b"ABCD" and bytes(b.window) == b"bad =ZZ escape A"
    tx = next(e.data["tx"] for e in out if e.kind == SMTP_TX)
    assert len(tx.request_buffers()["email.subject"]) == MAX_HEADER_VALUE
    assert tx.eve_email()["status"] == "PARSE_ERROR"  # too deep to decode


def test_encapsulated_message_resets_the_encoding() -> None:
    """message/rfc822 cannot be base64 (RFC 2046 5.2.1): its inner message is parsed with
    its own headers and encoding, as Suricata does (suricata-verify 8649-combined)."""
    msg = (b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n"
           b"Content-Disposition: attachment; filename=\"innocent.txt\"\r\n\r\n"
           b"Subject: Inner\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Disposition: attachment; filename=\"malware.exe\"\r\n\r\n"
           b"EICAR-LIKE-PAYLOAD\r\n")
    _, out = run(100000, client=[b"HELO x\r\n", b"DATA\r\n", msg + b".\r\n"],
                 server=[b"220 hi\r\n", b"250 hi\r\n", b"354 go\r\n", b"250 ok\r\n"])
    (f,) = files(out)
    assert f.filename == b"malware.exe" and bytes(f.window) == b"EICAR-LIKE-PAYLOAD"


def test_flow_end_truncates_an_unfinished_message() -> None:
    _, out = run(100000, client=[b"HELO x\r\n", b"DATA\r\n",
                                 b"Content-Type: text/plain; name=t.txt\r\n\r\nabc\r\n"],
                 server=[b"220 hi\r\n", b"250 hi\r\n", b"354 go\r\n"])
    (f,) = files(out)
    assert f.state == "TRUNCATED"
    (tx,) = [e.data["tx"] for e in out if e.kind == SMTP_TX]
    assert tx.eve_email()["status"] == "PARSE_ERROR"


def test_rset_ends_the_transaction_and_the_next_mail_opens_another() -> None:
    _, out = run(100000, client=[b"HELO x\r\n", b"MAIL FROM:<a@x>\r\n", b"RSET\r\n",
                                 b"MAIL FROM:<b@x>\r\n", b"QUIT\r\n"],
                 server=[b"220 hi\r\n", b"250 hi\r\n", b"250 ok\r\n", b"250 ok\r\n",
                         b"250 ok\r\n", b"221 bye\r\n"])
    txs = [e.data["tx"] for e in out if e.kind == SMTP_TX]
    assert [(t.tx_id, t.mail_from, t.helo) for t in txs] == [(0, b"<a@x>", b"x"),
                                                            (1, b"<b@x>", b"x")]


def test_header_helpers() -> None:
    assert header_params(b'attachment; FileName="a \\"b\\".txt"; size=3') == {
        b"filename": b'a "b".txt', b"size": b"3"}
    assert header_params(b"attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf") == {
        b"filename": LONG_QP_NAME.encode("utf-8")}
    assert split_addresses(b'"a, b" <a@x>, <c@y>,, d@z') == [b'"a, b" <a@x>', b"<c@y>",
                                                             b"d@z"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=12),
       st.sampled_from([b"", b"DATA\r\n", b"BDAT 40 LAST\r\n", b"STARTTLS\r\n"]))
def test_hostile_bytes_never_raise(chunks: list[tuple[bool, bytes]], start: bytes) -> None:
    p = SmtpParser()
    p.feed(b"220 hi\r\n", False)
    p.feed(b"EHLO x\r\n", True)
    p.feed(b"250 PIPELINING\r\n", False)
    p.feed(start, True)
    tokens = (b"\r\n.\r\n", b"--b\r\n", b"Content-Type: multipart/mixed; boundary=b\r\n\r\n",
              b"Content-Transfer-Encoding: base64\r\n", b"=\r\n", b"354 go\r\n")
    for i, (to_server, data) in enumerate(chunks):
        p.feed(data + tokens[i % len(tokens)], to_server)
        assert p.memuse() < 512 * 1024
    p.close()
    tx = p.tx
    if tx is not None:
        tx.request_buffers()
        tx.eve_smtp()
        tx.eve_email()


# --- through the engine -------------------------------------------------------------

C, S = "10.1.0.10", "10.1.0.25"


class Session(ScanSession):
    """TCP connections through the engine, with a scan verdict to give for files."""

    def session(self, client: list[bytes], server: list[bytes],
                port: int = 40000) -> list[VerdictKind]:
        c, s = (C, port), (S, 25)
        self.connect(c, s)
        verdicts = self.send(s, c, server[0])
        for i, cmd in enumerate(client):
            verdicts += self.send(c, s, cmd)
            if i + 1 < len(server):
                verdicts += self.send(s, c, server[i + 1])
        return verdicts


def test_rules_on_smtp_buffers_files_and_events(eve_validator: Any, tmp_path: Any) -> None:
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    (tmp_path / "md5.list").write_text(md5 + "\n")
    rules = tmp_path / "smtp.rules"
    rules.write_text("\n".join([
        'alert smtp any any -> any any (msg:"helo"; smtp.helo; content:"client.example"; '
        'sid:1;)',
        'alert smtp any any -> any any (msg:"from"; smtp.mail_from; content:"jane@"; sid:2;)',
        'alert smtp any any -> any any (msg:"rcpt"; smtp.rcpt_to; content:"<b@example.com>";'
        ' sid:3;)',
        'alert smtp any any -> any any (msg:"data"; flow:to_server; file_data; '
        'content:"MZ-tail"; sid:4;)',
        'alert smtp any any -> any any (msg:"exe"; fileext:"exe"; filesize:768<>800; '
        'sid:5;)',
        f'alert smtp any any -> any any (msg:"md5"; filemd5:{tmp_path / "md5.list"}; sid:6;)',
        'alert smtp any any -> any any (msg:"name"; filename:"notes.txt"; sid:7;)',
        'alert smtp any any -> any any (msg:"subject"; email.subject; '
        'content:"quarterly report"; sid:8;)',
        'alert smtp any any -> any any (msg:"html text not a file"; file_data; '
        'content:"caf"; sid:9;)',
        'alert smtp any any -> any any (msg:"bad reply"; '
        'app-layer-event:smtp.invalid_reply; sid:10;)',
        'alert smtp any any -> any any (msg:"nope"; smtp.mail_from; content:"mallory"; '
        'sid:11;)',
    ]) + "\n")
    det = load_detection([rules])
    assert det.failed == 0, det.compile_failures
    engine = Engine(EngineConfig(heuristics=None), detector=det.engine)
    s = Session(engine)
    server = [*SERVER[:-1], b"bogus reply\r\n"]
    s.session(CLIENT, server)
    s.logs += [c.record for c in engine.handle(Shutdown(200.0)) if isinstance(c, Log)]
    sids = sorted(r["alert"]["signature_id"] for r in s.records("alert"))
    assert sids == [1, 2, 3, 4, 5, 6, 7, 8, 10]
    smtp = s.records("smtp")
    assert len(smtp) == 1 and smtp[0]["tx_id"] == 0
    assert smtp[0]["smtp"]["rcpt_to"] == ["<a@example.com>", "<b@example.com>"]
    assert smtp[0]["email"]["attachment"] == ["payload.exe", "notes.txt"]
    fi = s.records("fileinfo")
    assert [(r["fileinfo"]["filename"], r["fileinfo"]["size"]) for r in fi] == [
        ("payload.exe", len(PAYLOAD)), ("notes.txt", 29)]
    assert fi[0]["app_proto"] == "smtp" and fi[0]["smtp"]["helo"] == "client.example"
    an = [r["anomaly"] for r in s.records("anomaly")]
    assert an == [{"app_proto": "smtp", "type": "applayer", "event": "INVALID_REPLY",
                   "layer": "proto_parser"}]
    for r in [*smtp, *fi, *s.records("alert"), *s.records("anomaly")]:
        assert not list(eve_validator.iter_errors(r)), r


def test_malicious_attachment_is_held_and_dropped_inline() -> None:
    engine = Engine(EngineConfig(mode="ips", scan_files=True, heuristics=None))
    s = Session(engine)
    s.verdict = "malicious"
    verdicts = s.session(CLIENT[:5], SERVER[:6])
    data = message() + b".\r\n"
    verdicts = s.send((C, 40000), (S, 25), data, seg=200)
    assert s.asked[0].filename == "payload.exe"
    assert s.asked[0].data == PAYLOAD  # the decoded attachment, kept whole in the budget
    # The packet that completed the attachment waited for the verdict and was dropped;
    # so is everything after it (the message never reaches its final dot).
    first = verdicts.index(VerdictKind.DROP)
    assert all(v is VerdictKind.ACCEPT for v in verdicts[:first])
    assert all(v is VerdictKind.DROP for v in verdicts[first:])
    assert engine.file_budget is not None and engine.file_budget.used == 0


def test_starttls_makes_the_flow_tls(tmp_path: Any) -> None:
    rules = tmp_path / "tls.rules"
    rules.write_text('alert tls any any -> any any (msg:"sni"; tls.sni; '
                     'content:"mail.example"; sid:1;)\n'
                     'alert smtp any any -> any any (msg:"injected"; smtp.mail_from; '
                     'content:"injected"; sid:2;)\n')
    det = load_detection([rules])
    engine = Engine(EngineConfig(heuristics=None), detector=det.engine)
    s = Session(engine)
    s.session([b"EHLO x\r\n", b"STARTTLS\r\nMAIL FROM:<injected@x>\r\n"],
              [b"220 hi\r\n", b"250-mx\r\n250 STARTTLS\r\n", b"220 go ahead\r\n"])
    s.send((C, 40000), (S, 25), record(22, client_hello(b"mail.example")))
    s.logs += [c.record for c in engine.handle(Shutdown(200.0)) if isinstance(c, Log)]
    sids = sorted(r["alert"]["signature_id"] for r in s.records("alert"))
    assert sids == [1]
    (flow,) = s.records("flow")
    assert flow["app_proto"] == "tls"
    assert len(s.records("smtp")) == 1  # the EHLO transaction, logged at the upgrade
