"""SMTP (RFC 5321) with its message bodies decoded as MIME (app/mime.py).

One ``SmtpParser`` per flow; ``feed(data, to_server)`` takes in-order stream bytes of any
size. The client's side is read line by line as commands until DATA, then as message
lines until ``CRLF.CRLF`` (RFC 5321 4.5.2: a leading dot is removed from every other line,
"dot-unstuffing"); BDAT (RFC 3030 CHUNKING) carries exactly the announced number of
bytes, no dot-stuffing, its LAST chunk ending the message. Replies are matched with the
commands in order (RFC 2920 PIPELINING: a client may send several before the replies):
each final reply line (``NNN `` rather than ``NNN-``) answers the oldest command waiting.

As Suricata 7:
- DATA enters data mode at once when the server announced PIPELINING in its EHLO reply,
  otherwise at its 354 reply; another final reply to DATA is ``DATA_COMMAND_REJECTED``;
- a transaction holds HELO (inherited from the session), MAIL FROM, the RCPT TOs and one
  message; it ends with the message (its EVE ``smtp`` record is written then) and the
  next command opens another, except RSET/QUIT (Suricata 8.0.7's rule: no empty trailing
  transaction; 7.0.4 opened one for QUIT);
- MAIL FROM / RCPT TO / HELO keep the parameter up to the first space (ESMTP options
  such as SIZE= after it are not part of the address);
- STARTTLS answered by 220: the flow becomes TLS (``SMTP_STARTTLS`` event: applayer.py
  hands the rest of the stream to the TLS parser, and the engine may bypass once it is
  encrypted); answered otherwise: ``TLS_REJECTED``. Client bytes sent after STARTTLS and
  before its reply are held (bounded); clear text there is ``INVALID_PIPELINED_SEQUENCE``
  (commands injected behind STARTTLS, the CVE-2011-0411 class): after a 220 it is not
  parsed (neither TLS nor the session's commands), after a refusal it is parsed as
  commands;
- attachments (app/mime.py) are files of the transaction, to the server; their first
  FILE_DATA_WINDOW bytes are what ``file_data`` inspects; other body parts are not files.

Anomalies are Suricata's smtp event names (``INVALID_REPLY``,
``MAX_COMMAND_LINE_LEN_EXCEEDED``, ``MIME_INVALID_BASE64``...; rules say
``app-layer-event:smtp.invalid_reply``). Nothing here raises on hostile input; every
buffer has a bound below.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

from appliance.core.app import AppEvent, anomaly
from appliance.core.app.http import FileBudget, HttpFile
from appliance.core.app.mime import Entity, MimeDecoder

# Event kinds (engine: applayer.py).
SMTP_UPDATE: Final = "smtp_update"  # data["tx"]: its buffers changed (inspect them)
SMTP_FILE: Final = "smtp_file"  # data["file"], data["tx"]: an attachment ended
SMTP_TX: Final = "smtp_tx"  # data["tx"]: a transaction ended (EVE smtp record)
SMTP_STARTTLS: Final = "smtp_starttls"  # data["ts"], data["tc"]: the rest is TLS

# Limits (and why).
MAX_LINE_BUF: Final = 4096  # command/reply bytes buffered; the rest of the line skipped
MAX_COMMAND_LINE: Final = 510  # RFC 5321 4.5.3.1.4: 512 octets with CRLF (event beyond)
MAX_REPLY_LINE: Final = 510  # RFC 5321 4.5.3.1.5: 512 octets with CRLF (event beyond)
MAX_DATA_LINE: Final = 8192  # message bytes buffered before a line is passed on in pieces
MAX_PENDING: Final = 256  # commands waiting for a reply (pipelining)
MAX_RCPT: Final = 512  # recipients kept per transaction (RFC 5321 4.5.3.1.8 asks for 100)
MAX_FILES: Final = 256  # attachments tracked per transaction
FILE_DATA_WINDOW: Final = 100 * 1024  # bytes of an attachment kept for file_data rules
MAX_HELD: Final = 64 * 1024  # client bytes held while STARTTLS waits for its reply

# Suricata's smtp event names.
EV_INVALID_REPLY: Final = "INVALID_REPLY"
EV_UNMATCHED_REPLY: Final = "UNABLE_TO_MATCH_REPLY_WITH_REQUEST"
EV_COMMAND_TOO_LONG: Final = "MAX_COMMAND_LINE_LEN_EXCEEDED"
EV_REPLY_TOO_LONG: Final = "MAX_REPLY_LINE_LEN_EXCEEDED"
EV_BDAT_LEN: Final = "BDAT_CHUNK_LEN_EXCEEDED"
EV_NO_WELCOME: Final = "NO_SERVER_WELCOME_MESSAGE"
EV_TLS_REJECTED: Final = "TLS_REJECTED"
EV_DATA_REJECTED: Final = "DATA_COMMAND_REJECTED"
EV_PIPELINED: Final = "INVALID_PIPELINED_SEQUENCE"

_DATA_END: Final = b"<data end>"  # the pseudo-command the reply to a message answers


def _s(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _param(line: bytes, prefix: int) -> bytes:
    """The parameter after a command of `prefix` bytes (``MAIL FROM``): a colon, spaces,
    then up to the next space (RFC 1870: ESMTP options follow a space)."""
    rest = line[prefix:]
    if rest[:1] == b":":
        rest = rest[1:]
    rest = rest.lstrip(b" \t")
    return rest.split(b" ", 1)[0]


def split_addresses(value: bytes) -> list[bytes]:
    """An address-list header (To, Cc; RFC 5322 3.4) split at the commas that separate
    addresses: not those inside quotes or angle brackets."""
    out: list[bytes] = []
    cur = bytearray()
    quoted = False
    angle = 0
    for c in value:
        if c == 0x22:  # "
            quoted = not quoted
        elif not quoted and c == 0x3C:  # <
            angle += 1
        elif not quoted and c == 0x3E and angle:  # >
            angle -= 1
        elif c == 0x2C and not quoted and not angle:  # ,
            item = bytes(cur).strip()
            if item:
                out.append(item)
            cur.clear()
            continue
        cur.append(c)
    item = bytes(cur).strip()
    if item:
        out.append(item)
    return out


class SmtpFile(HttpFile):
    """An attachment. `download`: the engine's file scanning applies (a message
    delivered to the mail server is a file arriving, as a download is); `window`: the
    first FILE_DATA_WINDOW bytes, for file_data."""

    __slots__ = ("download", "window")

    def __init__(self, filename: bytes, tx_id: int) -> None:
        super().__init__(filename, True, tx_id)
        self.download = True
        self.window = bytearray()


class SmtpTx:
    """HELO/MAIL FROM/RCPT TO and one message."""

    __slots__ = ("done", "files", "fresh", "helo", "inspect_files", "logged", "mail_from",
                 "mime", "rcpt_to", "tx_id")

    def __init__(self, tx_id: int, helo: bytes) -> None:
        self.tx_id = tx_id
        self.helo = helo
        self.mail_from: bytes | None = None
        self.rcpt_to: list[bytes] = []
        self.mime: MimeDecoder | None = None
        self.files: list[SmtpFile] = []
        self.fresh: list[SmtpFile] = []  # files with new data since the last inspection
        self.inspect_files: list[SmtpFile] = []  # those of the inspection being made
        self.done = False
        self.logged = False

    def request_buffers(self) -> dict[str, bytes | list[bytes]]:
        b: dict[str, bytes | list[bytes]] = {}
        if self.helo:
            b["smtp.helo"] = self.helo
        if self.mail_from is not None:
            b["smtp.mail_from"] = self.mail_from
        if self.rcpt_to:
            b["smtp.rcpt_to"] = list(self.rcpt_to)
        # Only the attachments that progressed: a long message with many files is not
        # scanned again whole at every packet.
        wins = [bytes(f.window) for f in self.inspect_files if f.window]
        if wins:
            b["file.data"] = wins
        m = self.mime
        if m is not None and m.root.in_body:
            root = m.root
            for name, key in _EMAIL_HEADERS:
                v = root.header(name)
                if v is not None:
                    b[key] = v
            rec = root.all_headers(b"received")
            if rec:
                b["email.received"] = rec
            if m.urls:
                b["email.url"] = list(m.urls)
            if m.body_md5:
                b["email.body_md5"] = m.body_md5.encode()
        return b

    def response_buffers(self) -> dict[str, bytes | list[bytes]]:
        return {}

    def eve_smtp(self) -> dict[str, Any]:
        o: dict[str, Any] = {}
        if self.helo:
            o["helo"] = _s(self.helo)
        if self.mail_from is not None:
            o["mail_from"] = _s(self.mail_from)
        if self.rcpt_to:
            o["rcpt_to"] = [_s(r) for r in self.rcpt_to]
        return o

    def eve_email(self) -> dict[str, Any] | None:
        """The EVE ``email`` object (Suricata's default fields), once DATA started."""
        m = self.mime
        if m is None:
            return None
        o: dict[str, Any] = {"status": "PARSE_DONE" if m.done and not m.failed
                             else "PARSE_ERROR"}
        root = m.root
        v = root.header(b"from")
        if v is not None:
            o["from"] = _s(v)
        for name in (b"to", b"cc"):
            v = root.header(name)
            if v is not None:
                addrs = split_addresses(v)
                if addrs:
                    o[_s(name)] = [_s(a) for a in addrs]
        if m.attachments:
            o["attachment"] = [_s(a) for a in m.attachments]
        if m.urls:
            o["url"] = [_s(u) for u in m.urls]
        return o


# Message headers -> email.* buffers (Suricata 8 keywords).
_EMAIL_HEADERS: Final = (
    (b"from", "email.from"), (b"to", "email.to"), (b"cc", "email.cc"),
    (b"subject", "email.subject"), (b"date", "email.date"),
    (b"message-id", "email.message_id"), (b"x-mailer", "email.x_mailer"),
)


class SmtpParser:
    """SMTP for one flow."""

    app_proto = "smtp"

    def __init__(self) -> None:
        self.file_budget: FileBudget | None = None
        self.helo = b""
        self.tx: SmtpTx | None = None
        self.upgraded = False  # STARTTLS accepted: nothing more is SMTP
        self._next_id = 0
        self._tc_buf = bytearray()
        self._tc_skip = False
        self._ts_buf = bytearray()
        self._ts_skip = False
        self._ts_cont = False  # part of the current message line was passed on already
        self._pending: deque[bytes] = deque()  # commands waiting for their final reply
        self._data_mode = False
        self._bdat_left = 0
        self._bdat_last = False
        self._bdat_buf = bytearray()  # a BDAT message line split across chunks
        self._pipelining = False
        self._first_reply = False
        self._tls_wait = False
        self._held = bytearray()
        self._closing = False
        self._out: list[AppEvent] = []
        self._touched: dict[int, SmtpTx] = {}
        self._open: dict[int, SmtpFile] = {}  # id(entity) -> its attachment

    # -- API --------------------------------------------------------------------------

    def memuse(self) -> int:
        n = (len(self._tc_buf) + len(self._ts_buf) + len(self._bdat_buf) + len(self._held)
             + 16 * len(self._pending))
        tx = self.tx
        if tx is not None:
            n += sum(len(r) for r in tx.rcpt_to) + sum(len(f.window) for f in tx.files)
            if tx.mime is not None:
                n += tx.mime.memuse()
        return n

    def release_files(self) -> None:
        if self.tx is not None:
            for f in self.tx.files:
                f.release()

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]:
        if self.upgraded or not data:
            return []
        out: list[AppEvent] = []
        self._out = out
        if to_server:
            self._feed_ts(data)
        else:
            self._feed_tc(data)
        self._flush()
        return out

    def close(self) -> list[AppEvent]:
        """Flow end: an unfinished message ends here (its open attachments TRUNCATED);
        the transaction in progress is logged."""
        if self.upgraded:
            return []
        out: list[AppEvent] = []
        self._out = out
        tx = self.tx
        if tx is not None and not tx.logged:
            if tx.mime is not None and not tx.mime.done:
                self._closing = True
                tx.mime.end()
                tx.mime.failed = True  # the message never ended
            self._log(tx)
        self._flush()
        return out

    # -- client -----------------------------------------------------------------------

    def _feed_ts(self, data: bytes) -> None:
        pos = 0
        n = len(data)
        buf = self._ts_buf
        while pos < n:
            if self._tls_wait:
                if not self._held and data[pos:pos + 1] != b"\x16":
                    # Not a TLS record: commands pipelined behind STARTTLS (RFC 3207 4
                    # forbids it), as Suricata flags them.
                    self._event(EV_PIPELINED, True, self.tx.tx_id if self.tx else -1)
                room = MAX_HELD - len(self._held)
                self._held += data[pos:pos + max(room, 0)]
                return
            if self._bdat_left:
                take = min(self._bdat_left, n - pos)
                self._bdat_left -= take
                self._bdat_data(data[pos:pos + take])
                pos += take
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                if self._ts_skip:
                    return
                buf += data[pos:]
                if self._data_mode and len(buf) >= MAX_DATA_LINE:
                    self._data_piece(bytes(buf))
                    buf.clear()
                elif not self._data_mode and len(buf) >= MAX_LINE_BUF:
                    line = bytes(buf[:MAX_LINE_BUF])
                    buf.clear()
                    self._ts_skip = True
                    self._command(line, True)
                return
            piece = data[pos:nl]
            pos = nl + 1
            if self._ts_skip:
                self._ts_skip = False
                continue
            if buf:
                buf += piece
                line = bytes(buf)
                buf.clear()
            else:
                line = piece
            if line[-1:] == b"\r":
                line = line[:-1]
            if self._data_mode:
                self._data_line(line)
            else:
                if len(line) > MAX_LINE_BUF:
                    line = line[:MAX_LINE_BUF]
                    self._command(line, True)
                else:
                    self._command(line, False)

    def _new_tx(self) -> SmtpTx:
        tx = self.tx = SmtpTx(self._next_id, self.helo)
        self._next_id += 1
        return tx

    def _command(self, line: bytes, truncated: bool) -> None:
        if not self._first_reply and not self._pending:
            self._event(EV_NO_WELCOME, True)
        verb = line.split(b" ", 1)[0].upper()
        tx = self.tx
        if tx is None or (tx.done and verb not in (b"RSET", b"QUIT")):
            tx = self._new_tx()
        if truncated or len(line) > MAX_COMMAND_LINE:
            self._event(EV_COMMAND_TOO_LONG, True, tx.tx_id)
        up = line[:9].upper()
        if verb in (b"HELO", b"EHLO"):
            self.helo = tx.helo = _param(line, 4)
            self._touch(tx)
        elif up == b"MAIL FROM":
            tx.mail_from = _param(line, 9)
            self._touch(tx)
        elif up[:7] == b"RCPT TO":
            if len(tx.rcpt_to) < MAX_RCPT:
                tx.rcpt_to.append(_param(line, 7))
                self._touch(tx)
        elif verb == b"DATA":
            if tx.mime is None:
                tx.mime = MimeDecoder(self)
            if self._pipelining:
                self._data_mode = True  # the message follows without waiting (RFC 2920)
        elif verb == b"BDAT":
            self._bdat(line, tx)
        elif verb == b"STARTTLS":
            self._tls_wait = True
        elif verb == b"RSET" and not tx.done and (tx.mail_from is not None or tx.rcpt_to):
            tx.done = True  # the mail transaction is abandoned (RFC 5321 4.1.1.5)
            self._log(tx)
        self._push(verb[:16])

    def _push(self, verb: bytes) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()  # a client that never reads its replies
        self._pending.append(verb)

    def _bdat(self, line: bytes, tx: SmtpTx) -> None:
        """BDAT <size> [LAST] (RFC 3030 2): exactly <size> message bytes follow."""
        parts = line.split()
        size = parts[1] if len(parts) > 1 else b""
        if not size.isdigit() or len(size) > 12:
            self._event(EV_BDAT_LEN, True, tx.tx_id)
            return
        if tx.mime is None:
            tx.mime = MimeDecoder(self)
        self._bdat_left = int(size)
        self._bdat_last = len(parts) > 2 and parts[2].upper() == b"LAST"
        if self._bdat_left == 0 and self._bdat_last:
            self._bdat_data(b"")

    def _bdat_data(self, data: bytes) -> None:
        """Chunk bytes: split into lines for the MIME decoder (no dot-stuffing)."""
        tx = self.tx
        m = tx.mime if tx is not None else None
        if tx is None or m is None:
            return
        buf = self._bdat_buf
        pos = 0
        n = len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            if nl < 0:
                buf += data[pos:]
                if len(buf) >= MAX_DATA_LINE:
                    m.line(bytes(buf), False, not self._ts_cont)
                    self._ts_cont = True
                    buf.clear()
                break
            buf += data[pos:nl]
            pos = nl + 1
            line = bytes(buf)
            buf.clear()
            if line[-1:] == b"\r":
                line = line[:-1]
            m.line(line, True, not self._ts_cont)
            self._ts_cont = False
        self._touch(tx)
        if self._bdat_left == 0 and self._bdat_last:
            if buf:
                m.line(bytes(buf), False, not self._ts_cont)
                buf.clear()
            self._ts_cont = False
            self._bdat_last = False
            self._end_message(tx)

    def _data_piece(self, piece: bytes) -> None:
        """The first bytes of a message line too long to buffer whole."""
        tx = self.tx
        if tx is not None and tx.mime is not None:
            start = not self._ts_cont
            stuffed = start and piece[:1] == b"."
            tx.mime.line(piece[1:] if stuffed else piece, False, start, stuffed)
            self._touch(tx)
        self._ts_cont = True

    def _data_line(self, line: bytes) -> None:
        tx = self.tx
        if self._ts_cont:
            self._ts_cont = False
            if tx is not None and tx.mime is not None:
                tx.mime.line(line, True, False)
                self._touch(tx)
            return
        if line == b".":
            self._data_mode = False
            self._push(_DATA_END)
            if tx is not None:
                self._end_message(tx)
            return
        stuffed = line[:1] == b"."
        if stuffed:
            line = line[1:]  # RFC 5321 4.5.2 transparency
        if tx is not None and tx.mime is not None:
            tx.mime.line(line, True, True, stuffed)
            self._touch(tx)

    def _end_message(self, tx: SmtpTx) -> None:
        if tx.mime is not None:
            tx.mime.end()
        tx.done = True
        self._touch(tx)
        self._log(tx)

    # -- server -----------------------------------------------------------------------

    def _feed_tc(self, data: bytes) -> None:
        pos = 0
        n = len(data)
        buf = self._tc_buf
        while pos < n:
            nl = data.find(b"\n", pos)
            if nl < 0:
                if not self._tc_skip:
                    buf += data[pos:]
                    if len(buf) >= MAX_LINE_BUF:
                        line = bytes(buf[:MAX_LINE_BUF])
                        buf.clear()
                        self._tc_skip = True
                        self._reply(line, True)
                return
            piece = data[pos:nl]
            pos = nl + 1
            if self._tc_skip:
                self._tc_skip = False
                continue
            if buf:
                buf += piece
                line = bytes(buf[:MAX_LINE_BUF])
                truncated = len(buf) > MAX_LINE_BUF
                buf.clear()
            else:
                line = piece[:MAX_LINE_BUF]
                truncated = len(piece) > MAX_LINE_BUF
            if line[-1:] == b"\r":
                line = line[:-1]
            self._reply(line, truncated)
            if self.upgraded:
                self._upgrade(data[pos:])
                return

    def _reply(self, line: bytes, truncated: bool) -> None:
        tx_id = self.tx.tx_id if self.tx is not None else -1
        if truncated or len(line) > MAX_REPLY_LINE:
            self._event(EV_REPLY_TOO_LONG, False, tx_id)
        code = line[:3]
        if len(code) != 3 or not code.isdigit() or line[3:4] not in (b"", b" ", b"-"):
            self._event(EV_INVALID_REPLY, False, tx_id)
            return
        front = self._pending[0] if self._pending else None
        if front == b"EHLO" and line[4:14].upper() == b"PIPELINING":
            self._pipelining = True
        if line[3:4] == b"-":
            return  # a multi-line reply goes on (RFC 5321 4.2.1)
        if front is None:
            if not self._first_reply:
                self._first_reply = True  # the greeting (RFC 5321 3.1)
                if code != b"220":
                    self._event(EV_INVALID_REPLY, False, tx_id)
            else:
                self._event(EV_UNMATCHED_REPLY, False, tx_id)
            return
        # As Suricata: a reply while a command waits answers it, even the first one (a
        # greeting that arrives after the client spoke answers its first command).
        self._first_reply = True
        self._pending.popleft()
        if front == b"STARTTLS":
            self._tls_wait = False
            held = bytes(self._held)
            self._held.clear()
            if code == b"220":
                self.upgraded = True
                if held[:1] == b"\x16":
                    self._held += held  # a ClientHello sent early: TLS gets it
                # Anything else was sent in clear text before the handshake: a server
                # must discard it (RFC 3207 4, the CVE-2011-0411 class); it is neither
                # TLS nor this SMTP session's commands, so it is not parsed.
            else:
                self._event(EV_TLS_REJECTED, False, tx_id)
                if held:
                    self._feed_ts(held)  # the client went on in clear text
        elif front == b"DATA":
            if code == b"354":
                self._data_mode = True
            elif code[:1] in (b"4", b"5"):
                self._event(EV_DATA_REJECTED, False, tx_id)
                if self._data_mode:  # entered early (pipelining): it was not accepted
                    self._data_mode = False
                    self._ts_buf.clear()
                    self._ts_cont = False
                tx = self.tx
                if tx is not None and tx.mime is not None and not tx.mime.done:
                    # No message after all: what was read of it ends (its attachments
                    # TRUNCATED) and a later DATA starts a fresh one.
                    self._closing = True
                    tx.mime.end()
                    self._closing = False
                    tx.mime = None

    def _upgrade(self, rest_tc: bytes) -> None:
        """STARTTLS accepted: log the transaction in progress; the rest is TLS."""
        tx = self.tx
        if tx is not None and not tx.logged:
            self._log(tx)
        ts = bytes(self._held)
        self._held.clear()
        self._ts_buf.clear()
        self._out.append(AppEvent(SMTP_STARTTLS, False, "", -1,
                                  {"ts": ts, "tc": rest_tc}))

    # -- MIME sink --------------------------------------------------------------------

    def part_start(self, entity: Entity) -> None:
        tx = self.tx
        if tx is None or entity.filename is None or len(tx.files) >= MAX_FILES:
            return
        f = SmtpFile(entity.filename, tx.tx_id)
        if self.file_budget is not None:
            f.budget = self.file_budget
            f.data = bytearray()
        tx.files.append(f)
        self._open[id(entity)] = f
        self._fresh(tx, f)

    def part_data(self, entity: Entity, data: bytes) -> None:
        f = self._open.get(id(entity))
        if f is None or self.tx is None:
            return
        f.update(data)
        room = FILE_DATA_WINDOW - len(f.window)
        if room > 0:
            f.window += data[:room]
            self._fresh(self.tx, f)

    def part_end(self, entity: Entity) -> None:
        f = self._open.pop(id(entity), None)
        tx = self.tx
        if f is None or tx is None:
            return
        f.state = "TRUNCATED" if self._closing else "CLOSED"
        self._fresh(tx, f)
        self._out.append(AppEvent(SMTP_FILE, True, "", tx.tx_id, {"file": f, "tx": tx}))

    # -- helpers ----------------------------------------------------------------------

    def _fresh(self, tx: SmtpTx, f: SmtpFile) -> None:
        fresh = tx.fresh
        if not (fresh and fresh[-1] is f) and f not in fresh:
            fresh.append(f)
        self._touch(tx)

    def _touch(self, tx: SmtpTx) -> None:
        self._touched[tx.tx_id] = tx

    def _log(self, tx: SmtpTx) -> None:
        if not tx.logged:
            tx.logged = True
            self._out.append(AppEvent(SMTP_TX, True, "", tx.tx_id, {"tx": tx}))

    def _event(self, name: str, to_server: bool, tx_id: int = -1) -> None:
        self._out.append(anomaly(name, to_server, tx_id))

    def _flush(self) -> None:
        """This call's MIME anomalies, then one inspection per transaction that changed
        (after the events that ended files: their inspection sees them closed)."""
        out = self._out
        tx = self.tx
        if tx is not None and tx.mime is not None and tx.mime.events:
            for name in tx.mime.events:
                out.append(anomaly(name, True, tx.tx_id))
            tx.mime.events.clear()
        touched = self._touched
        if touched:
            for t in touched.values():
                t.inspect_files = t.fresh
                t.fresh = []
                out.append(AppEvent(SMTP_UPDATE, True, "", t.tx_id, {"tx": t}))
            self._touched = {}
        self._out = []


__all__ = ["SMTP_FILE", "SMTP_STARTTLS", "SMTP_TX", "SMTP_UPDATE", "SmtpFile",
           "SmtpParser", "SmtpTx", "split_addresses"]
