"""FTP (RFC 959, RFC 2428): the control channel and the data connections it announces.

The control channel is parsed line by line in each direction. A command and the
replies to it are one transaction; a transaction is complete at its final reply (a
reply whose code is not 1xx, the last line of a multi-line reply). PORT/EPRT (active)
and 227/229 replies to PASV/EPSV (passive) announce the next data connection; the
transfer command after them (RETR, STOR, LIST...) makes it expected: an `Expectation`
the engine keeps in an `Expectations` table, so that the new TCP flow to that address
and port is parsed as ftp-data of this control channel (its bytes are a file).

Bounds: a line is kept up to MAX_LINE bytes (the rest is skipped, the transaction says
``command_truncated`` / ``reply_truncated`` and an anomaly is raised, as Suricata's
``request_command_too_long`` / ``response_command_too_long``); at most MAX_TXS
transactions wait for replies; each transaction keeps at most MAX_REPLIES reply lines.
Nothing here raises on hostile input.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Final

from appliance.core.app import ANOMALY, AppEvent, anomaly
from appliance.core.app.http import FileBudget, HttpFile

MAX_LINE: Final = 4096  # Suricata's ftp max-line-length default (4 KiB)
MAX_TXS: Final = 256  # commands waiting for a reply
MAX_REPLIES: Final = 64  # reply lines kept per transaction
FILE_DATA_WINDOW: Final = 100 * 1024  # bytes of a data connection kept for file_data rules

# Event kinds of this module (handled in applayer.py).
FTP_TX: Final = "ftp_tx"  # a control transaction is complete (or flushed at close)
FTP_EXPECT: Final = "ftp_expect"  # a data connection is announced: data["expect"]
FTP_DATA: Final = "ftp_data"  # new bytes on a data connection: data["parser"]
FTP_DATA_DONE: Final = "ftp_data_done"  # the data connection ended: ftp_data record

# Commands that open a data connection; those whose data goes to the client.
TRANSFER_COMMANDS: Final = frozenset({b"RETR", b"STOR", b"STOU", b"APPE", b"LIST",
                                      b"NLST", b"MLSD"})
DOWNLOAD_COMMANDS: Final = frozenset({b"RETR", b"LIST", b"NLST", b"MLSD"})

_PORT_RE: Final = re.compile(rb"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})")
_EPSV_RE: Final = re.compile(rb"\(([!-~])\1\1(\d{1,5})\1\)")
_SIZE_RE: Final = re.compile(rb"\((\d{1,15}) bytes\)")


def _port_args(data: bytes) -> tuple[bytes, int] | None:
    """h1,h2,h3,h4,p1,p2 (PORT argument, 227 reply) -> (packed IPv4, port)."""
    m = _PORT_RE.search(data)
    if m is None:
        return None
    n = [int(x) for x in m.groups()]
    if any(x > 255 for x in n):
        return None
    port = n[4] * 256 + n[5]
    return (bytes(n[:4]), port) if port else None


def _eprt_args(data: bytes) -> tuple[bytes, int] | None:
    """|af|address|port| (RFC 2428) -> (packed address, port)."""
    data = data.strip()
    if len(data) < 7:
        return None
    d = data[:1]
    parts = data.split(d)
    if len(parts) != 5 or parts[0] or parts[4]:
        return None
    af, addr, port = parts[1], parts[2], parts[3]
    if af not in (b"1", b"2") or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    try:
        ip = ipaddress.ip_address(addr.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if ip.version != (4 if af == b"1" else 6):
        return None
    return ip.packed, int(port)


def _s(b: bytes) -> str:
    return b.decode("utf-8", "replace")


@dataclass(slots=True)
class Expectation:
    """A data connection a control channel announced. `ip` None: the control server's
    address (EPSV, or PASV whose address is taken from the flow, NAT-proof).
    `size`: the size a 150 reply announced, when one did (the file closes there)."""

    ip: bytes | None
    port: int
    active: bool
    command: bytes = b""
    filename: bytes = b""
    size: int | None = None
    peer: bytes | None = None  # the data connection's expected client (set by applayer)

    @property
    def download(self) -> bool:
        return self.command in DOWNLOAD_COMMANDS


@dataclass(slots=True)
class FtpTx:
    tx_id: int
    command: bytes = b""
    command_data: bytes = b""
    command_truncated: bool = False
    replies: list[bytes] = field(default_factory=list)
    codes: list[bytes] = field(default_factory=list)
    reply_truncated: bool = False
    reply_received: bool = False
    dynamic_port: int | None = None
    mode: str | None = None  # "active" / "passive"
    bounce_ip: bytes | None = None  # PORT/EPRT address (applayer compares with the client)

    def eve(self) -> dict[str, Any]:
        """The EVE ``ftp`` object as Suricata 7 writes it."""
        o: dict[str, Any] = {}
        if self.command:
            o["command"] = _s(self.command)
        if self.command_data:
            o["command_data"] = _s(self.command_data)
        if self.command_truncated:
            o["command_truncated"] = True
        if self.replies:
            o["reply"] = [_s(r) for r in self.replies]
        if self.codes:
            o["completion_code"] = [_s(c) for c in self.codes]
        if self.reply_truncated:
            o["reply_truncated"] = True
        if self.dynamic_port is not None:
            o["dynamic_port"] = self.dynamic_port
        if self.mode is not None:
            o["mode"] = self.mode
        o["reply_received"] = "yes" if self.reply_received else "no"
        return o


class _Lines:
    """Bounded line splitting for one direction: whole lines out, a line longer than
    MAX_LINE cut there (the flag says so) and the rest of it skipped."""

    __slots__ = ("buf", "skipping")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.skipping = False

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        out: list[tuple[bytes, bool]] = []
        pos = 0
        n = len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            end = n if nl < 0 else nl
            if self.skipping:
                if nl >= 0:
                    self.skipping = False
                pos = end + 1
                continue
            room = MAX_LINE - len(self.buf)
            piece = data[pos:end]
            if len(piece) > room:
                self.buf += piece[:room]
                out.append((bytes(self.buf).rstrip(b"\r"), True))
                self.buf.clear()
                self.skipping = nl < 0
                pos = end + 1
                continue
            self.buf += piece
            if nl < 0:
                if len(self.buf) >= MAX_LINE:
                    out.append((bytes(self.buf).rstrip(b"\r"), True))
                    self.buf.clear()
                    self.skipping = True
                break
            out.append((bytes(self.buf).rstrip(b"\r"), False))
            self.buf.clear()
            pos = nl + 1
        return out


class FtpParser:
    """The FTP control channel of one flow."""

    app_proto = "ftp"

    def __init__(self) -> None:
        self._lines = (_Lines(), _Lines())  # to client, to server
        self._pending: list[FtpTx] = []  # commands waiting for their final reply
        self._next_id = 0
        self._multi: bytes | None = None  # code of a multi-line reply in progress
        self._announced: Expectation | None = None  # the next data connection
        self._current: Expectation | None = None  # the transfer in progress (150 size)
        self.txs_seen = 0

    def memuse(self) -> int:
        return sum(len(lp.buf) for lp in self._lines) + sum(
            len(t.command_data) + sum(len(r) for r in t.replies) for t in self._pending)

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]:
        out: list[AppEvent] = []
        for line, truncated in self._lines[to_server].feed(data):
            if to_server:
                self._request(line, truncated, out)
            else:
                self._reply(line, truncated, out)
        return out

    def close(self) -> list[AppEvent]:
        out: list[AppEvent] = []
        for tx in self._pending:
            out.append(AppEvent(FTP_TX, False, "", tx.tx_id, {"tx": tx}))
        self._pending.clear()
        return out

    def _new_tx(self) -> FtpTx:
        tx = FtpTx(self._next_id)
        self._next_id += 1
        return tx

    def _request(self, line: bytes, truncated: bool, out: list[AppEvent]) -> None:
        tx = self._new_tx()
        if truncated:
            tx.command_truncated = True
            out.append(anomaly("request_command_too_long", True, tx.tx_id))
        cmd, _, arg = line.partition(b" ")
        tx.command = cmd.upper()[:64]
        tx.command_data = arg
        if len(self._pending) >= MAX_TXS:
            # A client that never waits for replies: the oldest goes out unanswered.
            old = self._pending.pop(0)
            out.append(AppEvent(FTP_TX, True, "", old.tx_id, {"tx": old}))
        self._pending.append(tx)
        c = tx.command
        if c == b"PORT" or c == b"EPRT":
            got = _port_args(arg) if c == b"PORT" else _eprt_args(arg)
            if got is None:
                out.append(anomaly("invalid_port_argument", True, tx.tx_id))
            else:
                tx.dynamic_port, tx.mode, tx.bounce_ip = got[1], "active", got[0]
                self._announced = Expectation(got[0], got[1], True)
        elif c in TRANSFER_COMMANDS and self._announced is not None:
            a = self._announced
            self._announced = None
            exp = Expectation(a.ip, a.port, a.active, c, arg.strip())
            self._current = exp
            out.append(AppEvent(FTP_EXPECT, True, "", tx.tx_id, {"expect": exp, "tx": tx}))

    def _reply(self, line: bytes, truncated: bool, out: list[AppEvent]) -> None:
        code = line[:3]
        valid = len(code) == 3 and code.isdigit()
        new_reply = self._multi is None  # not a continuation of a multi-line reply
        if self._multi is not None:
            # Inside a multi-line reply: it ends at "<same code> ".
            final = line[:3] == self._multi and line[3:4] != b"-"
            text = line[4:] if line[:3] == self._multi else line
        elif valid:
            final = line[3:4] != b"-"
            text = line[4:]
            if not final:
                self._multi = code
        else:
            out.append(anomaly("invalid_response", False))
            return
        if not self._pending:
            # A reply nobody asked for (the banner, or more than one reply): its own tx.
            self._pending.append(self._new_tx())
        tx = self._pending[0]
        if truncated:
            if not tx.reply_truncated:
                out.append(anomaly("response_command_too_long", False, tx.tx_id))
            tx.reply_truncated = True
        if len(tx.replies) < MAX_REPLIES:
            tx.replies.append(text)
            if new_reply:
                tx.codes.append(code)
        tx.reply_received = True
        if not final:
            return
        self._multi = None
        self._on_final(tx, code, text)
        if code[:1] == b"1":
            return  # preliminary (150 ...): the transaction waits for its last reply
        self._pending.pop(0)
        out.append(AppEvent(FTP_TX, False, "", tx.tx_id, {"tx": tx}))

    def _on_final(self, tx: FtpTx, code: bytes, text: bytes) -> None:
        if code == b"227":
            got = _port_args(text)
            if got is not None:
                tx.dynamic_port, tx.mode = got[1], "passive"
                # The flow's server address, not the announced one (NAT): ip None.
                self._announced = Expectation(None, got[1], False)
        elif code == b"229":
            m = _EPSV_RE.search(text)
            if m is not None and 0 < int(m.group(2)) < 65536:
                tx.dynamic_port, tx.mode = int(m.group(2)), "passive"
                self._announced = Expectation(None, int(m.group(2)), False)
        elif code == b"150" and self._current is not None:
            m = _SIZE_RE.search(text)
            if m is not None:
                self._current.size = int(m.group(1))


class FtpFile(HttpFile):
    """The file of an ftp-data connection; `download` (RETR) decides whether the
    engine's download scanning applies, whatever the data connection's direction."""

    __slots__ = ("download",)

    def __init__(self, filename: bytes, to_server: bool, download: bool) -> None:
        super().__init__(filename, to_server, 0)
        self.download = download


class FtpDataParser:
    """One data connection: its bytes (first direction to send) are one file."""

    app_proto = "ftp-data"

    def __init__(self, exp: Expectation, file_budget: FileBudget | None = None) -> None:
        self.exp = exp
        self.file_budget = file_budget
        self.file: FtpFile | None = None
        self.window = bytearray()  # the first FILE_DATA_WINDOW bytes, for file_data
        self.done = False
        self.logged = False

    @property
    def command(self) -> bytes:
        return self.exp.command

    def memuse(self) -> int:
        # The file content kept for the scanners counts against the FileBudget, not
        # here (as app/http.py's files).
        return len(self.window)

    def get_tx(self, tx_id: int) -> None:
        return None  # no HTTP-like transaction; see applayer.py

    def release_files(self) -> None:
        if self.file is not None:
            self.file.release()

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]:
        out: list[AppEvent] = []
        if not data or self.done:
            return out
        f = self.file
        if f is None:
            f = self.file = FtpFile(self.exp.filename, to_server, self.exp.download)
            if self.file_budget is not None:
                f.budget = self.file_budget
                f.data = bytearray()
        elif f.to_server != to_server:
            out.append(anomaly("data_in_both_directions", to_server, 0))
            return out
        size = self.exp.size
        if size is not None and f.size + len(data) > size:
            data = data[:max(0, size - f.size)]
        f.update(data)
        room = FILE_DATA_WINDOW - len(self.window)
        if room > 0:
            self.window += data[:room]
        out.append(AppEvent(FTP_DATA, to_server, "", 0, {"parser": self}))
        if size is not None and f.size >= size:
            out.extend(self._finish("CLOSED"))
        return out

    def close(self) -> list[AppEvent]:
        if self.done:
            return []
        # No announced size: the file ends with the connection (complete as far as
        # anyone can tell: Suricata closes it there too).
        return self._finish("CLOSED")

    def _finish(self, state: str) -> list[AppEvent]:
        self.done = True
        out: list[AppEvent] = []
        f = self.file
        if f is not None:
            f.state = state
            out.append(AppEvent("file", f.to_server, "", 0, {"file": f}))
        out.append(AppEvent(FTP_DATA_DONE, f.to_server if f else True, "", 0,
                            {"parser": self}))
        return out

    def eve(self) -> dict[str, Any]:
        o: dict[str, Any] = {}
        if self.exp.filename:
            o["filename"] = _s(self.exp.filename)
        if self.exp.command:
            o["command"] = _s(self.exp.command)
        return o


class Expectations:
    """Data connections announced on control channels, until their TCP flow shows up:
    keyed by (server address, port), expiring after TTL seconds of packet time, at most
    CAP entries (the oldest go first)."""

    TTL: Final = 120.0
    CAP: Final = 4096

    def __init__(self) -> None:
        self._map: dict[tuple[bytes, int], tuple[float, Expectation]] = {}

    def __len__(self) -> int:
        return len(self._map)

    def add(self, ip: bytes, exp: Expectation, now: float) -> None:
        key = (ip, exp.port)
        self._map.pop(key, None)
        if len(self._map) >= self.CAP:
            for k in [k for k, (t, _) in self._map.items() if t < now]:
                del self._map[k]
            while len(self._map) >= self.CAP:
                del self._map[next(iter(self._map))]
        self._map[key] = (now + self.TTL, exp)

    def take(self, src: bytes, dst: bytes, dp: int, now: float) -> Expectation | None:
        """The expectation a new flow src -> dst:dp fulfils (removed), if any."""
        got = self._map.get((dst, dp))
        if got is None:
            return None
        expires, exp = got
        if expires < now:
            del self._map[(dst, dp)]
            return None
        if exp.peer is not None and exp.peer != src:
            return None
        del self._map[(dst, dp)]
        return exp


__all__ = ["ANOMALY", "Expectation", "Expectations", "FtpDataParser", "FtpParser", "FtpTx"]
