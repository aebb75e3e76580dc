"""SMB parser: SMB1 and SMB2/3 over TCP (445, or 139 after a NetBIOS session request).

One ``SmbParser`` per flow. ``feed(data, to_server)`` takes in-order stream bytes of any
size per direction. Framing is the NetBIOS session service (RFC 1002 section 4.3.1, as
"direct TCP" SMB uses it, MS-SMB2 2.1): a 4-byte header (type, 24-bit length) per
record. Session messages (type 0) carry one SMB1 (``\\xffSMB``, MS-CIFS 2.2.3.1) or
SMB2 (``\\xfeSMB``, MS-SMB2 2.2.1) message, SMB2 ones possibly compounded
(``NextCommand``), SMB1 ones possibly AndX-chained (MS-CIFS 2.2.3.4). Other NetBIOS
record types (session request/response, keep-alive) are skipped; encrypted SMB3
(``\\xfdSMB``) and compressed (``\\xfcSMB``) messages are skipped too.

A record up to ``MAX_RECORD_BUFFERED`` bytes is buffered whole and parsed; a larger one
(a big WRITE request or READ response) has its first ``PREFIX_LEN`` bytes parsed, and
its data part is streamed to the file (or named pipe) it belongs to without being
buffered: memory stays bounded whatever the record length.

What it extracts, as Suricata's SMB parser does for its keywords:

- transactions: a request and its response (SMB2 MessageId, SMB1 MID/PID) with
  command, status, session and tree ids; an EVE ``smb`` record each;
- ``smb.share`` / ``smb.named_pipe``: the path of a TREE_CONNECT, in UTF-8, as a share or
  as a named pipe once the response says what it is (SMB2 ShareType pipe, SMB1 service
  ``IPC``);
- ``smb.ntlmssp_user`` / ``smb.ntlmssp_domain``: from the NTLMSSP AUTHENTICATE message
  (MS-NLMP 2.2.1.3) in a SESSION_SETUP security blob;
- files: WRITE requests (to the server) and READ responses (to the client) on a file
  opened by CREATE / NT_CREATE_ANDX are a file per (file id, direction), named by the
  CREATE, hashed as they stream (app/http.py ``HttpFile``), kept for the scanners in
  the engine's FileBudget, closed by CLOSE (or truncated at flow end). Out-of-order
  chunks are held in a bounded reorder buffer; a hole left at close makes the file
  TRUNCATED. ``file.data`` is the file's first ``FILE_DATA_WINDOW`` bytes;
- named pipes (files opened on an IPC$ tree): WRITE/READ data, SMB2 IOCTL
  FSCTL_PIPE_TRANSCEIVE and SMB1 TRANS TransactNmPipe data are a DCERPC byte stream per
  direction, parsed by app/dcerpc.py (one association per pipe) whose events (calls
  with their ``dcerpc.*`` buffers) go to the engine as they are.

Malformed input never raises: it becomes an anomaly named as Suricata's SMB app-layer
event ``MALFORMED_DATA`` (a bad NetBIOS record type, an SMB header that is too short or
not SMB, a response in the request direction, an AndX chain going backwards). Not done:
Suricata's finer events (``RECORD_OVERFLOW``, ``NEGOTIATE_MALFORMED_DIALECTS``...), SMB1
TRANS2/NT_TRANS, multi-part TRANS (secondary requests), SMB3 decryption, frames.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

from appliance.core.app import ANOMALY, FILE_CLOSED, AppEvent
from appliance.core.app.dcerpc import DceRpcConnection
from appliance.core.app.http import FileBudget, HttpFile, file_buffers

# Event kinds (engine: applayer.py).
SMB_INSPECT: Final = "smb_inspect"  # data["buffers"]: sticky buffers of tx ``tx_id``
SMB_RECORD: Final = "smb_record"  # data["record"]: an EVE body (smb, ...)

# Records up to this size are buffered whole. SMB2 negotiates MaxTransactSize (often
# 64 KiB-8 MiB); everything but READ/WRITE data fits in far less. 64 KiB covers the
# control messages of every real client (session setup blobs are a few KiB).
MAX_RECORD_BUFFERED: Final = 64 * 1024
# Bytes of a larger record parsed before its data is streamed: the SMB header, the
# command's fixed part and whatever AndX/compound headers precede the data.
PREFIX_LEN: Final = 4096
# NetBIOS lengths are 24 bits (MS-SMB2 2.1): no record is larger.
MAX_RECORD: Final = 0xFFFFFF
# Outstanding requests waiting for their response (SMB2 credits allow hundreds).
MAX_PENDING: Final = 512
# Open file ids remembered (name, pipe or not) and files being written/read at once.
MAX_FIDS: Final = 1024
MAX_FILES: Final = 64
MAX_TREES: Final = 256
# Out-of-order file chunks held until the hole before them is filled: at most this many
# bytes for the whole flow (SMB2 clients keep a few READs of 64 KiB-1 MiB in flight) and
# this many chunks per file.
MAX_REORDER_BYTES: Final = 1024 * 1024
MAX_REORDER_CHUNKS: Final = 64
# Bytes of a file kept for file_data rules (the same window as ftp-data's).
FILE_DATA_WINDOW: Final = 100 * 1024
# Names (paths, shares, users) are cut here: Windows paths are at most 32767 UTF-16 units.
MAX_NAME: Final = 1024
# Pipe data of one message handed to the DCERPC layer (DCERPC fragments are <= 64 KiB
# in practice: max_xmit_frag of real stacks is 4280-65535).
MAX_PIPE_DATA: Final = 64 * 1024
# Named pipes with a DCERPC association kept at once (clients open a handful).
MAX_PIPES: Final = 64
# SMB1 AndX hops followed in one message and SMB2 compounded commands per record.
MAX_CHAIN: Final = 16

# SMB2 commands (MS-SMB2 2.2.1.2).
SMB2_COMMANDS: Final = (
    "NEGOTIATE", "SESSION_SETUP", "LOGOFF", "TREE_CONNECT", "TREE_DISCONNECT", "CREATE",
    "CLOSE", "FLUSH", "READ", "WRITE", "LOCK", "IOCTL", "CANCEL", "ECHO",
    "QUERY_DIRECTORY", "CHANGE_NOTIFY", "QUERY_INFO", "SET_INFO", "OPLOCK_BREAK",
)
S2_NEGOTIATE: Final = 0
S2_SESSION_SETUP: Final = 1
S2_TREE_CONNECT: Final = 3
S2_CREATE: Final = 5
S2_CLOSE: Final = 6
S2_READ: Final = 8
S2_WRITE: Final = 9
S2_IOCTL: Final = 11
FSCTL_PIPE_TRANSCEIVE: Final = 0x0011C017

# SMB1 commands (MS-CIFS 2.2.2.1) that this parser reads, and names for the others.
S1_CLOSE: Final = 0x04
S1_TRANS: Final = 0x25
S1_READ_ANDX: Final = 0x2E
S1_WRITE_ANDX: Final = 0x2F
S1_NEGOTIATE: Final = 0x72
S1_SESSION_SETUP_ANDX: Final = 0x73
S1_TREE_CONNECT_ANDX: Final = 0x75
S1_NT_CREATE_ANDX: Final = 0xA2
SMB1_NAMES: Final = {
    0x00: "CREATE_DIRECTORY", 0x01: "DELETE_DIRECTORY", 0x02: "OPEN", 0x03: "CREATE",
    0x04: "CLOSE", 0x05: "FLUSH", 0x06: "DELETE", 0x07: "RENAME",
    0x08: "QUERY_INFORMATION", 0x09: "SET_INFORMATION", 0x0A: "READ", 0x0B: "WRITE",
    0x10: "CHECK_DIRECTORY", 0x24: "LOCKING_ANDX", 0x25: "TRANS", 0x26: "TRANS_SECONDARY",
    0x2B: "ECHO", 0x2D: "OPEN_ANDX", 0x2E: "READ_ANDX", 0x2F: "WRITE_ANDX",
    0x32: "TRANS2", 0x33: "TRANS2_SECONDARY", 0x34: "FIND_CLOSE2", 0x70: "TREE_CONNECT",
    0x71: "TREE_DISCONNECT", 0x72: "NEGOTIATE", 0x73: "SESSION_SETUP_ANDX",
    0x74: "LOGOFF_ANDX", 0x75: "TREE_CONNECT_ANDX", 0xA0: "NT_TRANS",
    0xA1: "NT_TRANS_SECONDARY", 0xA2: "NT_CREATE_ANDX", 0xA4: "NT_CANCEL",
}
# SMB1 commands that carry an AndX block (MS-CIFS 2.2.3.4).
SMB1_ANDX: Final = frozenset({0x24, 0x2D, 0x2E, 0x2F, 0x73, 0x74, 0x75, 0xA2})

# NT status codes (MS-ERREF 2.3.1) Suricata names in its records; others print as hex.
NT_STATUS: Final = {
    0x00000000: "STATUS_SUCCESS", 0x00000103: "STATUS_PENDING",
    0x80000005: "STATUS_BUFFER_OVERFLOW", 0x80000006: "STATUS_NO_MORE_FILES",
    0xC0000001: "STATUS_UNSUCCESSFUL", 0xC0000002: "STATUS_NOT_IMPLEMENTED",
    0xC0000003: "STATUS_INVALID_INFO_CLASS", 0xC0000008: "STATUS_INVALID_HANDLE",
    0xC000000D: "STATUS_INVALID_PARAMETER", 0xC000000F: "STATUS_NO_SUCH_FILE",
    0xC0000010: "STATUS_INVALID_DEVICE_REQUEST", 0xC0000011: "STATUS_END_OF_FILE",
    0xC0000016: "STATUS_MORE_PROCESSING_REQUIRED", 0xC0000022: "STATUS_ACCESS_DENIED",
    0xC0000023: "STATUS_BUFFER_TOO_SMALL", 0xC0000033: "STATUS_OBJECT_NAME_INVALID",
    0xC0000034: "STATUS_OBJECT_NAME_NOT_FOUND", 0xC0000035: "STATUS_OBJECT_NAME_COLLISION",
    0xC000003A: "STATUS_OBJECT_PATH_NOT_FOUND", 0xC0000043: "STATUS_SHARING_VIOLATION",
    0xC000006D: "STATUS_LOGON_FAILURE", 0xC00000BA: "STATUS_FILE_IS_A_DIRECTORY",
    0xC00000BB: "STATUS_NOT_SUPPORTED", 0xC00000CC: "STATUS_BAD_NETWORK_NAME",
    0xC0000101: "STATUS_DIRECTORY_NOT_EMPTY", 0xC0000120: "STATUS_CANCELLED",
    0xC0000128: "STATUS_FILE_CLOSED", 0xC000014B: "STATUS_PIPE_BROKEN",
    0xC0000225: "STATUS_NOT_FOUND", 0xC000009A: "STATUS_INSUFFICIENT_RESOURCES",
    0xC00000B0: "STATUS_PIPE_DISCONNECTED", 0xC00000B5: "STATUS_IO_TIMEOUT",
    0xC00000C9: "STATUS_NETWORK_NAME_DELETED", 0xC000020C: "STATUS_CONNECTION_DISCONNECTED",
    0xC0000203: "STATUS_USER_SESSION_DELETED", 0xC000035C: "STATUS_NETWORK_SESSION_EXPIRED",
    0xC0000184: "STATUS_INVALID_DEVICE_STATE", 0xC00000D0: "STATUS_REQUEST_NOT_ACCEPTED",
}
# SMB2 CREATE dispositions (MS-SMB2 2.2.13), as Suricata's EVE spells them.
DISPOSITIONS: Final = ("FILE_SUPERSEDE", "FILE_OPEN", "FILE_CREATE", "FILE_OPEN_IF",
                       "FILE_OVERWRITE", "FILE_OVERWRITE_IF")
SMB2_DIALECTS: Final = {0x0202: "2.02", 0x0210: "2.10", 0x0222: "2.22", 0x0224: "2.24",
                        0x0300: "3.00", 0x0302: "3.02", 0x0310: "3.10", 0x0311: "3.11",
                        0x02FF: "2.??"}

_HDR: Final = 0  # reading a NetBIOS header
_BODY: Final = 1  # buffering a record (whole, or its prefix when large)
_STREAM: Final = 2  # a large record's remainder: data to a sink, the rest skipped
_DONE: Final = 3  # the direction is not SMB any more

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _u16(b: bytes, o: int) -> int:
    return int(_U16.unpack_from(b, o)[0]) if o + 2 <= len(b) else 0


def _u32(b: bytes, o: int) -> int:
    return int(_U32.unpack_from(b, o)[0]) if o + 4 <= len(b) else 0


def _u64(b: bytes, o: int) -> int:
    return int(_U64.unpack_from(b, o)[0]) if o + 8 <= len(b) else 0


def utf16(b: bytes) -> bytes:
    """UTF-16LE text (up to a NUL) as UTF-8 bytes, cut at MAX_NAME."""
    b = b[: 2 * MAX_NAME]
    end = 0
    while end + 1 < len(b) and (b[end] or b[end + 1]):
        end += 2
    return b[:end].decode("utf-16-le", "replace").encode("utf-8", "replace")


def ascii_z(b: bytes) -> bytes:
    """A NUL-terminated 8-bit string, cut at MAX_NAME."""
    b = b[:MAX_NAME]
    z = b.find(b"\0")
    return b if z < 0 else b[:z]


def _status_name(code: int) -> str:
    return NT_STATUS.get(code, f"0x{code:x}")


def fuid(fid: bytes) -> str:
    """An SMB2 FileId as Suricata's EVE prints it: GUID-like groups, the first four
    little-endian (u32, u16, u16, u16), the last six bytes as they are."""
    if len(fid) != 16:
        return fid.hex()
    a, b, c, d = struct.unpack_from("<IHHH", fid)
    return f"{a:08x}-{b:04x}-{c:04x}-{d:04x}-{fid[10:].hex()}"


# --- NTLMSSP (MS-NLMP) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NtlmAuth:
    user: bytes
    domain: bytes
    host: bytes


def ntlmssp_auth(blob: bytes) -> NtlmAuth | None:
    """The user, domain and workstation of an NTLMSSP AUTHENTICATE message found in a
    security blob (raw, or inside SPNEGO's DER: the message is located by its
    signature, MS-NLMP 2.2.1.3). None when there is none or it is malformed."""
    i = blob.find(b"NTLMSSP\0")
    if i < 0:
        return None
    m = blob[i:]
    if len(m) < 64 or _u32(m, 8) != 3:
        return None
    flags = _u32(m, 60)
    unicode = bool(flags & 1)  # NTLMSSP_NEGOTIATE_UNICODE

    def field_at(o: int) -> bytes | None:
        ln = _u16(m, o)
        off = _u32(m, o + 4)
        if off + ln > len(m):
            return None
        v = m[off : off + ln]
        return utf16(v) if unicode else v[:MAX_NAME]

    domain = field_at(28)
    user = field_at(36)
    host = field_at(44)
    if domain is None or user is None or host is None:
        return None
    return NtlmAuth(user, domain, host)


# --- state ---------------------------------------------------------------------------------


@dataclass(slots=True)
class SmbTx:
    """One request and its response."""

    tx_id: int
    version: int  # 1 or 2
    command: int
    key: tuple[int, ...] = ()
    status: int | None = None
    session_id: int = 0
    tree_id: int = 0
    request_done: bool = False
    response_done: bool = False
    share: bytes | None = None
    share_type: str | None = None  # FILE, PIPE, PRINT
    filename: bytes | None = None
    fid: bytes | None = None
    disposition: int | None = None
    ntlm: NtlmAuth | None = None
    dialect: str | None = None
    dialects: list[bytes] = field(default_factory=list)
    # READ: which file and where (the response has neither).
    read_fid: bytes | None = None
    read_offset: int = 0
    pipe: bool = False  # a READ/IOCTL/TRANS on a named pipe


class SmbFile(HttpFile):
    """A file seen through WRITE (to the server) or READ (to the client) requests."""

    __slots__ = ("gaps", "next_off", "pending", "pending_bytes", "window")

    def __init__(self, filename: bytes, to_server: bool, tx_id: int) -> None:
        super().__init__(filename, to_server, tx_id)
        self.next_off = 0  # file offset the next in-order chunk starts at
        self.pending: dict[int, bytes] = {}  # out-of-order chunks by offset
        self.pending_bytes = 0
        self.gaps = False
        self.window = bytearray()

    def eve(self) -> dict[str, Any]:
        d = super().eve()
        d["gaps"] = self.gaps
        return d


@dataclass(slots=True)
class _Fid:
    name: bytes
    pipe: bool
    tree_id: int = 0


class _Side:
    __slots__ = ("buf", "hdr", "rec_len", "sink", "sink_end", "sink_pos", "sink_start", "skip",
                 "state")

    def __init__(self) -> None:
        self.state = _HDR
        self.hdr = bytearray()
        self.buf = bytearray()
        self.rec_len = 0  # length of the record being read
        self.skip = 0  # bytes of a non-message record (or a record's tail) to skip
        # Streaming a large record: bytes [sink_pos, sink_end) of the record go to sink.
        self.sink: Any = None
        self.sink_pos = 0
        self.sink_start = 0
        self.sink_end = 0


class SmbParser:
    """SMB1/SMB2/SMB3 for one flow; see the module docstring."""

    app_proto = "smb"

    def __init__(self) -> None:
        self._sides = (_Side(), _Side())  # to_client, to_server
        self._next_tx_id = 0
        self._pending: OrderedDict[tuple[int, ...], SmbTx] = OrderedDict()
        self._trees: dict[tuple[int, int], bool] = {}  # (version, tree id) -> is a pipe
        self._fids: OrderedDict[tuple[int, bytes], _Fid] = OrderedDict()
        self._files: OrderedDict[tuple[int, bytes, bool], SmbFile] = OrderedDict()
        self._smb1_dialects: list[bytes] = []
        self.dialect: str | None = None
        self.file_budget: FileBudget | None = None
        # DCERPC over named pipes: one association per pipe (version, file id).
        self._pipes: dict[tuple[int, bytes], DceRpcConnection] = {}
        self._broken = False

    # public API ----------------------------------------------------------------------------

    def memuse(self) -> int:
        n = sum(len(s.buf) + len(s.hdr) for s in self._sides)
        for f in self._files.values():
            n += len(f.window) + f.pending_bytes
        for c in self._pipes.values():
            n += c.memuse()
        return n

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]:
        out: list[AppEvent] = []
        s = self._sides[1 if to_server else 0]
        if s.state == _DONE or not data or self._broken:
            return out
        try:
            self._feed(s, data, to_server, out)
        except Exception:  # principle 7: a parser bug must not escape into the engine
            self._broken = True
            out.append(AppEvent(ANOMALY, to_server, "MALFORMED_DATA"))
        return out

    def close(self) -> list[AppEvent]:
        """Flow end: open files are truncated, unanswered requests logged."""
        out: list[AppEvent] = []
        try:
            for f in list(self._files.values()):
                self._close_file(f, out, truncated=True)
            self._files.clear()
            for tx in list(self._pending.values()):
                self._log_tx(tx, tx.request_done, out)
            self._pending.clear()
            for c in self._pipes.values():
                out.extend(c.close())
            self._pipes.clear()
        except Exception:
            out.append(AppEvent(ANOMALY, False, "MALFORMED_DATA"))
        return out

    def release_files(self) -> None:
        for f in self._files.values():
            f.release()

    # framing -------------------------------------------------------------------------------

    def _feed(self, s: _Side, data: bytes, to_server: bool, out: list[AppEvent]) -> None:
        pos = 0
        n = len(data)
        while pos < n and s.state != _DONE:
            if s.skip:
                take = min(s.skip, n - pos)
                s.skip -= take
                pos += take
                continue
            if s.state == _HDR:
                need = 4 - len(s.hdr)
                s.hdr += data[pos : pos + need]
                pos += min(need, n - pos)
                if len(s.hdr) < 4:
                    return
                typ = s.hdr[0]
                ln = int.from_bytes(s.hdr[1:4], "big")
                s.hdr.clear()
                if typ != 0:
                    # Session request/response, keep-alive (RFC 1002 4.3): not SMB.
                    if typ not in (0x81, 0x82, 0x83, 0x84, 0x85):
                        out.append(AppEvent(ANOMALY, to_server, "MALFORMED_DATA"))
                        self._stop(s)
                        return
                    s.skip = ln
                    continue
                if ln == 0:
                    continue
                s.rec_len = ln
                s.state = _BODY
            elif s.state == _BODY:
                target = s.rec_len if s.rec_len <= MAX_RECORD_BUFFERED else PREFIX_LEN
                want = target - len(s.buf)
                s.buf += data[pos : pos + want]
                pos += min(want, n - pos)
                if len(s.buf) < target:
                    return
                rec = bytes(s.buf)
                s.buf.clear()
                s.state = _HDR
                if not self._record(s, rec, to_server, out):
                    self._stop(s)
                    return
                rest = s.rec_len - len(rec)
                if rest > 0:
                    if s.sink is not None and s.sink_end > len(rec):
                        s.state = _STREAM
                        s.sink_pos = len(rec)
                        s.sink_start = max(s.sink_start, len(rec))
                    else:
                        s.sink = None
                        s.skip = rest
            else:  # _STREAM: record bytes [sink_pos, ...) arrive; the sink's range goes
                take = min(s.rec_len - s.sink_pos, n - pos)
                lo = max(s.sink_pos, s.sink_start)
                hi = min(s.sink_pos + take, s.sink_end)
                if hi > lo:
                    a = pos + lo - s.sink_pos
                    s.sink(data[a : a + hi - lo], out)
                s.sink_pos += take
                pos += take
                if s.sink_pos >= s.rec_len:
                    s.state = _HDR
                    s.sink = None

    def _stop(self, s: _Side) -> None:
        s.state = _DONE
        s.buf.clear()
        s.hdr.clear()
        s.sink = None

    def _record(self, s: _Side, rec: bytes, to_server: bool, out: list[AppEvent]) -> bool:
        """One NetBIOS session message (whole, or a large one's prefix). False when the
        direction cannot be parsed any further."""
        s.sink = None
        partial = len(rec) < s.rec_len
        magic = rec[:4]
        if magic == b"\xfeSMB":
            off = 0
            for _ in range(MAX_CHAIN):
                nxt = self._smb2(s, rec, off, partial, to_server, out)
                if nxt <= 0 or s.sink is not None:
                    break
                if off + nxt + 64 > len(rec):
                    if not partial:
                        out.append(AppEvent(ANOMALY, to_server, "MALFORMED_DATA"))
                    break
                off += nxt
            return True
        if magic == b"\xffSMB":
            self._smb1(s, rec, partial, to_server, out)
            return True
        if magic in (b"\xfdSMB", b"\xfcSMB"):
            return True  # SMB3 encrypted / compressed: nothing readable
        out.append(AppEvent(ANOMALY, to_server, "MALFORMED_DATA"))
        return False

    # transactions --------------------------------------------------------------------------

    def _tx_for(self, key: tuple[int, ...], version: int, command: int, session_id: int,
                tree_id: int) -> SmbTx:
        """A new transaction for a request, with its session and tree ids."""
        tx = SmbTx(self._next_tx_id, version, command, key)
        self._next_tx_id += 1
        tx.session_id = session_id
        tx.tree_id = tree_id
        return tx

    def _request(self, tx: SmbTx, out: list[AppEvent]) -> None:
        tx.request_done = True
        old = self._pending.pop(tx.key, None)
        if old is not None and old is not tx:
            self._log_tx(old, False, out)
        self._pending[tx.key] = tx
        while len(self._pending) > MAX_PENDING:
            _, stale = self._pending.popitem(last=False)
            self._log_tx(stale, False, out)

    def _response(self, key: tuple[int, ...], version: int, command: int, status: int,
                  session_id: int, tree_id: int) -> SmbTx:
        """The transaction a response answers (a new one when its request was not seen),
        with the response's status; its session and tree ids when not zero."""
        tx = self._pending.get(key)
        if tx is None or tx.command != command:
            tx = SmbTx(self._next_tx_id, version, command, key)
            self._next_tx_id += 1
        else:
            del self._pending[key]
        tx.response_done = True
        tx.status = status
        if session_id:
            tx.session_id = session_id
        if tree_id:
            tx.tree_id = tree_id
        return tx

    def _log_response(self, tx: SmbTx, file_data: bool, out: list[AppEvent]) -> None:
        """Log an answered transaction, unless it is a successful READ/WRITE of a file
        (``file_data``): its file's fileinfo record says it."""
        if not (file_data and tx.fid is not None and not tx.pipe and tx.status == 0):
            self._log_tx(tx, False, out)

    def _inspect(self, tx_id: int, to_server: bool, bufs: dict[str, Any],
                 out: list[AppEvent]) -> None:
        out.append(AppEvent(SMB_INSPECT, to_server, "", tx_id, {"buffers": bufs}))

    def _log_tx(self, tx: SmbTx, to_server: bool, out: list[AppEvent]) -> None:
        out.append(AppEvent(SMB_RECORD, to_server, "", tx.tx_id,
                            {"record": {"event_type": "smb", "tx_id": tx.tx_id,
                                        "smb": self.eve(tx)}}))

    def eve(self, tx: SmbTx) -> dict[str, Any]:
        """The EVE ``smb`` object of a transaction, with the fields Suricata 7 writes."""
        d: dict[str, Any] = {"id": tx.tx_id}
        dialect = tx.dialect or self.dialect
        d["dialect"] = dialect if dialect is not None else "unknown"
        if tx.version == 2:
            name = SMB2_COMMANDS[tx.command] if tx.command < len(SMB2_COMMANDS) else \
                str(tx.command)
            d["command"] = f"SMB2_COMMAND_{name}"
        else:
            d["command"] = f"SMB1_COMMAND_{SMB1_NAMES.get(tx.command, str(tx.command))}"
        if tx.status is not None:
            d["status"] = _status_name(tx.status)
            d["status_code"] = f"0x{tx.status:x}"
        d["session_id"] = tx.session_id
        d["tree_id"] = tx.tree_id
        if tx.ntlm is not None:
            d["ntlmssp"] = {"domain": _s(tx.ntlm.domain), "user": _s(tx.ntlm.user),
                            "host": _s(tx.ntlm.host)}
        if tx.share is not None:
            if tx.share_type == "PIPE":
                d["named_pipe"] = _s(tx.share)
            else:
                d["share"] = _s(tx.share)
            if tx.share_type is not None:
                d["share_type"] = tx.share_type
        if tx.filename is not None:
            d["filename"] = _s(tx.filename)
        if tx.disposition is not None and tx.disposition < len(DISPOSITIONS):
            d["disposition"] = DISPOSITIONS[tx.disposition]
        if tx.fid is not None:
            d["fuid"] = fuid(tx.fid) if tx.version == 2 else tx.fid.hex()
        if tx.dialects:
            d["client_dialects"] = [_s(x) for x in tx.dialects]
        d["request_done"] = tx.request_done
        d["response_done"] = tx.response_done
        return d

    # files and pipes -----------------------------------------------------------------------

    def _fid_info(self, version: int, fid: bytes) -> _Fid | None:
        return self._fids.get((version, fid))

    def _use_fid(self, tx: SmbTx, version: int, fid: bytes) -> bool:
        """A READ/WRITE names ``fid``: the transaction takes it, its file name and
        whether it is a pipe (remembered with the fid, else from the tree); returns
        that."""
        tx.fid = fid
        info = self._fid_info(version, fid)
        pipe = info.pipe if info is not None else self._is_pipe_tree(version, tx.tree_id)
        tx.pipe = pipe
        if info is not None:
            tx.filename = info.name
        return pipe

    def _remember_fid(self, version: int, fid: bytes, name: bytes, pipe: bool,
                      tree_id: int) -> None:
        key = (version, fid)
        self._fids.pop(key, None)
        self._fids[key] = _Fid(name, pipe, tree_id)
        while len(self._fids) > MAX_FIDS:
            self._fids.popitem(last=False)

    def _is_pipe_tree(self, version: int, tree_id: int) -> bool:
        return self._trees.get((version, tree_id), False)

    def _file_data(self, version: int, fid: bytes, offset: int, data: bytes,
                   to_server: bool, out: list[AppEvent]) -> None:
        """File content at ``offset`` of the file ``fid``, written (to_server) or read."""
        key = (version, fid, to_server)
        f = self._files.get(key)
        if f is None:
            info = self._fid_info(version, fid)
            name = info.name if info is not None else b""
            f = SmbFile(name, to_server, self._next_tx_id)
            self._next_tx_id += 1
            if self.file_budget is not None and not to_server:
                # A READ is a download: its content is kept for the scanners (as HTTP
                # responses are); WRITEs (uploads) are hashed only.
                f.budget = self.file_budget
                f.data = bytearray()
            # Files start at offset 0: a first chunk further on waits (reordered READ
            # responses) until the reorder bound turns the hole into a gap.
            self._files[key] = f
            while len(self._files) > MAX_FILES:
                _, old = self._files.popitem(last=False)
                self._close_file(old, out, truncated=True)
        if offset + len(data) <= f.next_off:
            return  # already seen (a retransmitted or repeated READ)
        if offset < f.next_off:
            data = data[f.next_off - offset :]
            offset = f.next_off
        if offset > f.next_off:
            if (len(f.pending) >= MAX_REORDER_CHUNKS
                    or self._reorder_bytes() + len(data) > MAX_REORDER_BYTES):
                # Too far out of order: the hole stays a gap.
                f.gaps = True
                self._flush_pending(f, out, force=True)
                if offset < f.next_off:
                    return
                f.next_off = offset
            else:
                if offset not in f.pending:
                    f.pending[offset] = data
                    f.pending_bytes += len(data)
                return
        self._append(f, data, out)
        self._flush_pending(f, out, force=False)

    def _reorder_bytes(self) -> int:
        return sum(f.pending_bytes for f in self._files.values())

    def _append(self, f: SmbFile, data: bytes, out: list[AppEvent]) -> None:
        f.update(data)
        f.next_off += len(data)
        room = FILE_DATA_WINDOW - len(f.window)
        if room > 0 and data:
            f.window += data[:room]
            self._inspect(f.tx_id, f.to_server, self._file_buffers(f), out)

    def _flush_pending(self, f: SmbFile, out: list[AppEvent], force: bool) -> None:
        while f.pending:
            if f.next_off in f.pending:
                chunk = f.pending.pop(f.next_off)
                f.pending_bytes -= len(chunk)
                self._append(f, chunk, out)
                continue
            later = [o for o in f.pending if o > f.next_off]
            for o in [o for o in f.pending if o < f.next_off]:
                chunk = f.pending.pop(o)
                f.pending_bytes -= len(chunk)
                if o + len(chunk) > f.next_off:
                    f.pending[f.next_off] = chunk[f.next_off - o :]
                    f.pending_bytes += len(chunk) - (f.next_off - o)
            if f.next_off in f.pending:
                continue
            if not force or not later:
                return
            f.gaps = True
            f.next_off = min(o for o in f.pending)

    @staticmethod
    def _file_buffers(f: SmbFile) -> dict[str, Any]:
        b: dict[str, Any] = {"file.data": bytes(f.window)}
        file_buffers(b, [f])
        return b

    def _close_fid(self, version: int, fid: bytes, out: list[AppEvent]) -> None:
        for d in (True, False):
            f = self._files.pop((version, fid, d), None)
            if f is not None:
                self._close_file(f, out, truncated=False)

    def _close_file(self, f: SmbFile, out: list[AppEvent], truncated: bool) -> None:
        if f.pending:
            self._flush_pending(f, out, force=True)
        if f.size == 0 and not f.gaps:
            f.release()
            return  # nothing was transferred: no file (as HTTP's empty bodies)
        f.state = "TRUNCATED" if truncated or f.gaps else "CLOSED"
        # Last inspection: size and hashes of a complete file (filesize, filemd5...).
        self._inspect(f.tx_id, f.to_server, self._file_buffers(f), out)
        out.append(AppEvent(FILE_CLOSED, f.to_server, "", f.tx_id, {"file": f}))

    def _pipe(self, version: int, fid: bytes, data: bytes, to_server: bool,
              tx: SmbTx | None, out: list[AppEvent]) -> None:
        """Named-pipe data: a DCERPC byte stream per pipe (app/dcerpc.py), whose events
        (calls with their dcerpc.* buffers) go to the engine as they are."""
        if not data:
            return
        key = (version, fid)
        conn = self._pipes.get(key)
        if conn is None:
            conn = self._pipes[key] = DceRpcConnection(self._alloc_id)
            while len(self._pipes) > MAX_PIPES:
                del self._pipes[next(iter(self._pipes))]
        out.extend(conn.feed(data[:MAX_PIPE_DATA], to_server))

    def _alloc_id(self) -> int:
        """The next transaction id (SMB transactions, files and DCERPC calls share it)."""
        n = self._next_tx_id
        self._next_tx_id += 1
        return n

    def _data_sink(self, s: _Side, rec: bytes, start: int, length: int, version: int,
                   fid: bytes, offset: int, pipe: bool, to_server: bool,
                   tx: SmbTx | None, out: list[AppEvent]) -> None:
        """Data at [start, start+length) of the record: what the buffered part holds goes
        now; the rest streams from the framing loop (a large record)."""
        if length <= 0 or start < 0:
            return
        end = min(start + length, s.rec_len)  # a length past the record is cut there
        if end <= start:
            return
        have = rec[start:end] if start < len(rec) else b""
        if pipe:
            if end > len(rec) and len(have) < MAX_PIPE_DATA:
                # A large pipe message: collect it (bounded) and deliver at its end.
                acc = bytearray(have)
                left = [min(end, start + MAX_PIPE_DATA) - start - len(have)]

                def pipe_part(chunk: bytes, o: list[AppEvent]) -> None:
                    if left[0] > 0:
                        acc.extend(chunk[: left[0]])
                        left[0] -= len(chunk[: left[0]])
                        if left[0] <= 0:
                            self._pipe(version, fid, bytes(acc), to_server, tx, o)

                s.sink = pipe_part
                s.sink_start = start
                s.sink_end = end
                return
            self._pipe(version, fid, have, to_server, tx, out)
            return
        if have:
            self._file_data(version, fid, offset, have, to_server, out)
        if end > len(rec):
            pos = [offset + len(have)]

            def file_part(chunk: bytes, o: list[AppEvent]) -> None:
                self._file_data(version, fid, pos[0], chunk, to_server, o)
                pos[0] += len(chunk)

            s.sink = file_part
            s.sink_start = start
            s.sink_end = end

    # SMB2 ----------------------------------------------------------------------------------

    def _smb2(self, s: _Side, rec: bytes, off: int, partial: bool, to_server: bool,
              out: list[AppEvent]) -> int:
        """One SMB2 message at ``off``; returns its NextCommand (0: the last)."""
        h = rec[off:]
        if len(h) < 64 or h[:4] != b"\xfeSMB" or _u16(h, 4) != 64:
            out.append(AppEvent(ANOMALY, to_server, "MALFORMED_DATA"))
            return 0
        status = _u32(h, 8)
        cmd = _u16(h, 12)
        flags = _u32(h, 16)
        nxt = _u32(h, 20)
        msg_id = _u64(h, 24)
        async_ = bool(flags & 2)
        tree_id = 0 if async_ else _u32(h, 36)
        session_id = _u64(h, 40)
        response = bool(flags & 1)
        body = 64  # body offset within h; offsets in the body are from h's start
        key = (2, msg_id)
        if response != (not to_server):
            out.append(AppEvent(ANOMALY, to_server, "MALFORMED_DATA"))
            return nxt
        if cmd >= len(SMB2_COMMANDS):
            out.append(AppEvent(ANOMALY, to_server, "MALFORMED_DATA"))
            return nxt
        if not response:
            tx = self._tx_for(key, 2, cmd, session_id, tree_id)
            self._smb2_request(s, tx, h, off, rec, body, cmd, partial, out)
            self._request(tx, out)
            return nxt
        if status == 0x103 and async_:
            return nxt  # STATUS_PENDING interim response: the real one follows
        tx = self._response(key, 2, cmd, status, session_id, tree_id)
        self._smb2_response(s, tx, h, off, rec, body, cmd, status, partial, out)
        self._log_response(tx, cmd in (S2_READ, S2_WRITE), out)
        return nxt

    def _smb2_request(self, s: _Side, tx: SmbTx, h: bytes, off: int, rec: bytes,
                      body: int, cmd: int, partial: bool, out: list[AppEvent]) -> None:
        if cmd == S2_SESSION_SETUP:
            bo = _u16(h, body + 12)
            bl = _u16(h, body + 14)
            auth = ntlmssp_auth(h[bo : bo + bl]) if bo >= 64 else None
            if auth is not None:
                tx.ntlm = auth
                self._inspect(tx.tx_id, True, {"smb.ntlmssp_user": auth.user,
                                                "smb.ntlmssp_domain": auth.domain}, out)
        elif cmd == S2_TREE_CONNECT:
            po = _u16(h, body + 4)
            pl = _u16(h, body + 6)
            if po >= 64 and po + pl <= len(h):
                tx.share = utf16(h[po : po + pl])
                # Before the response says what the tree is, an SMB2 path is a share
                # (Suricata 7 matches smb.share on the request: suricata-verify
                # smb-filename counts SMB2 IPC$ requests there). The response's
                # inspection of the same transaction may then say named pipe.
                self._inspect(tx.tx_id, True, {"smb.share": tx.share}, out)
        elif cmd == S2_CREATE:
            tx.disposition = _u32(h, body + 36)
            no = _u16(h, body + 44)
            nl = _u16(h, body + 46)
            if no >= 64 and no + nl <= len(h):
                tx.filename = utf16(h[no : no + nl])
            elif nl == 0:
                tx.filename = b""
        elif cmd == S2_CLOSE:
            fid = h[body + 8 : body + 24]
            if len(fid) == 16:
                tx.fid = fid
                info = self._fid_info(2, fid)
                if info is not None:
                    tx.filename = info.name
                self._close_fid(2, fid, out)
        elif cmd == S2_READ:
            fid = h[body + 16 : body + 32]
            if len(fid) == 16:
                tx.read_fid = fid
                tx.fid = fid
                tx.read_offset = _u64(h, body + 8)
                info = self._fid_info(2, fid)
                if info is not None:
                    tx.filename = info.name
                    tx.pipe = info.pipe
        elif cmd == S2_WRITE:
            do = _u16(h, body + 2)
            ln = _u32(h, body + 4)
            fo = _u64(h, body + 8)
            fid = h[body + 16 : body + 32]
            if len(fid) == 16:
                pipe = self._use_fid(tx, 2, fid)
                if do >= 64:
                    self._data_sink(s, rec, off + do, ln, 2, fid, fo, pipe, True, tx, out)
        elif cmd == S2_IOCTL:
            ctl = _u32(h, body + 4)
            fid = h[body + 8 : body + 24]
            io = _u32(h, body + 24)
            ic = _u32(h, body + 28)
            if ctl == FSCTL_PIPE_TRANSCEIVE and len(fid) == 16 and io >= 64:
                tx.fid = fid
                tx.pipe = True
                self._data_sink(s, rec, off + io, ic, 2, fid, 0, True, True, tx, out)

    def _smb2_response(self, s: _Side, tx: SmbTx, h: bytes, off: int, rec: bytes,
                       body: int, cmd: int, status: int, partial: bool,
                       out: list[AppEvent]) -> None:
        ok = status == 0
        if cmd == S2_NEGOTIATE and ok:
            rev = _u16(h, body + 4)
            self.dialect = SMB2_DIALECTS.get(rev, f"{rev >> 8}.{rev & 0xFF:02x}")
            tx.dialect = self.dialect
        elif cmd == S2_TREE_CONNECT:
            if ok:
                st = h[body + 2] if len(h) > body + 2 else 0
                pipe = st == 2
                tx.share_type = {1: "FILE", 2: "PIPE", 3: "PRINT"}.get(st, "UNKNOWN")
                self._trees[(2, tx.tree_id)] = pipe
                while len(self._trees) > MAX_TREES:
                    del self._trees[next(iter(self._trees))]
            if tx.share is not None:
                self._tree_inspect(tx, out)
        elif cmd == S2_CREATE and ok:
            fid = h[body + 64 : body + 80]
            if len(fid) == 16:
                tx.fid = fid
                name = tx.filename or b""
                self._remember_fid(2, fid, name, self._is_pipe_tree(2, tx.tree_id),
                                   tx.tree_id)
        elif cmd == S2_READ and ok and tx.read_fid is not None:
            do = h[body + 2] if len(h) > body + 2 else 0
            ln = _u32(h, body + 4)
            if do >= 64:
                self._data_sink(s, rec, off + do, ln, 2, tx.read_fid, tx.read_offset,
                                tx.pipe, False, tx, out)
        elif cmd == S2_IOCTL and (ok or status == 0x80000005):
            ctl = _u32(h, body + 4)
            fid = h[body + 8 : body + 24]
            oo = _u32(h, body + 32)
            oc = _u32(h, body + 36)
            if ctl == FSCTL_PIPE_TRANSCEIVE and len(fid) == 16 and oo >= 64:
                tx.fid = fid
                self._data_sink(s, rec, off + oo, oc, 2, fid, 0, True, False, tx, out)

    def _tree_inspect(self, tx: SmbTx, out: list[AppEvent]) -> None:
        """A TREE_CONNECT's path: smb.named_pipe on an IPC share, smb.share otherwise
        (as Suricata's keywords, the path as the client wrote it, in UTF-8)."""
        if tx.share is None:
            return
        name = "smb.named_pipe" if tx.share_type == "PIPE" else "smb.share"
        self._inspect(tx.tx_id, False, {name: tx.share}, out)

    # SMB1 ----------------------------------------------------------------------------------

    def _smb1(self, s: _Side, rec: bytes, partial: bool, to_server: bool,
              out: list[AppEvent]) -> None:
        if len(rec) < 33:
            out.append(AppEvent(ANOMALY, to_server, "MALFORMED_DATA"))
            return
        cmd = rec[4]
        status = _u32(rec, 5)
        flags = rec[9]
        flags2 = _u16(rec, 10)
        tid = _u16(rec, 24)
        pid = _u16(rec, 26) | (_u16(rec, 12) << 16)
        uid = _u16(rec, 28)
        mid = _u16(rec, 30)
        response = bool(flags & 0x80)
        unicode = bool(flags2 & 0x8000)
        if response != (not to_server):
            out.append(AppEvent(ANOMALY, to_server, "MALFORMED_DATA"))
            return
        key = (1, mid, pid)  # the response's UID may be new (SESSION_SETUP)
        off = 32
        seen: set[int] = set()
        for _ in range(MAX_CHAIN):
            if off + 1 > len(rec):
                if not partial:
                    out.append(AppEvent(ANOMALY, to_server, "MALFORMED_DATA"))
                return
            wc = rec[off]
            words = rec[off + 1 : off + 1 + 2 * wc]
            bc_off = off + 1 + 2 * wc
            bc = _u16(rec, bc_off)
            bytes_off = bc_off + 2
            data = rec[bytes_off : bytes_off + bc]
            ckey = (*key, cmd)
            if not response:
                tx = self._tx_for(ckey, 1, cmd, uid, tid)
                self._smb1_request(s, tx, cmd, rec, words, data, bytes_off, unicode, out)
                self._request(tx, out)
            elif status == 0x103:
                return
            else:
                tx = self._response(ckey, 1, cmd, status, uid, tid)
                self._smb1_response(s, tx, cmd, rec, words, data, bytes_off, unicode, out)
                self._log_response(tx, cmd in (S1_READ_ANDX, S1_WRITE_ANDX), out)
            if cmd not in SMB1_ANDX or len(words) < 4 or s.sink is not None:
                return
            nxt_cmd = words[0]
            nxt_off = _u16(words, 2)
            if nxt_cmd == 0xFF or nxt_off == 0:
                return
            if nxt_off <= off or nxt_off in seen:
                # AndX offsets must move forward (MS-CIFS 2.2.3.4): a loop is malformed.
                out.append(AppEvent(ANOMALY, to_server, "MALFORMED_DATA"))
                return
            off = nxt_off  # AndX offsets count from the start of the SMB header
            seen.add(off)
            cmd = nxt_cmd

    def _smb1_request(self, s: _Side, tx: SmbTx, cmd: int, rec: bytes, words: bytes,
                      data: bytes, bytes_off: int, unicode: bool,
                      out: list[AppEvent]) -> None:
        if cmd == S1_NEGOTIATE:
            # Dialect strings: 0x02 "name" NUL, repeated (MS-CIFS 2.2.4.52.1).
            names = [ascii_z(x) for x in data.split(b"\x02")[1:]][:64]
            tx.dialects = names
            self._smb1_dialects = names
        elif cmd == S1_SESSION_SETUP_ANDX and len(words) >= 24:
            bl = _u16(words, 14)  # SecurityBlobLength (extended security form)
            auth = ntlmssp_auth(data[:bl])
            if auth is not None:
                tx.ntlm = auth
                self._inspect(tx.tx_id, True, {"smb.ntlmssp_user": auth.user,
                                                "smb.ntlmssp_domain": auth.domain}, out)
        elif cmd == S1_TREE_CONNECT_ANDX and len(words) >= 8:
            pl = _u16(words, 6)
            p = bytes_off + pl
            if unicode:
                if p % 2:
                    p += 1  # UTF-16 strings align to 2 bytes from the SMB header
                tx.share = utf16(rec[p:])
            else:
                tx.share = ascii_z(rec[p:])
        elif cmd == S1_NT_CREATE_ANDX and len(words) >= 48:
            nl = _u16(words, 5)
            tx.disposition = _u32(words, 35) if len(words) >= 39 else None
            p = bytes_off
            if unicode:
                if p % 2:
                    p += 1
                tx.filename = utf16(rec[p : p + nl])
            else:
                tx.filename = ascii_z(rec[p : p + nl])
        elif cmd == S1_CLOSE and len(words) >= 2:
            fid = words[0:2]
            tx.fid = fid
            info = self._fid_info(1, fid)
            if info is not None:
                tx.filename = info.name
            self._close_fid(1, fid, out)
        elif cmd == S1_WRITE_ANDX and len(words) >= 24:
            fid = words[4:6]
            fo = _u32(words, 6)
            if len(words) >= 28:
                fo |= _u32(words, 24) << 32
            dl = _u16(words, 20) | (_u16(words, 18) << 16)
            do = _u16(words, 22)
            pipe = self._use_fid(tx, 1, fid)
            self._data_sink(s, rec, do, dl, 1, fid, fo, pipe, True, tx, out)
        elif cmd == S1_READ_ANDX and len(words) >= 20:
            fid = words[4:6]
            tx.read_fid = fid
            tx.read_offset = _u32(words, 6)
            if len(words) >= 24:
                tx.read_offset |= _u32(words, 20) << 32
            self._use_fid(tx, 1, fid)
        elif cmd == S1_TRANS and len(words) >= 28:
            dc = _u16(words, 22)
            do = _u16(words, 24)
            sc = words[26]
            setup = words[28 : 28 + 2 * sc]
            # TransactNmPipe (0x26) / WriteNmPipe: setup[1] is the pipe's FID.
            if len(setup) >= 4 and _u16(setup, 0) in (0x26, 0x37):
                fid = setup[2:4]
                tx.fid = fid
                tx.pipe = True
                tx.read_fid = fid
                self._data_sink(s, rec, do, dc, 1, fid, 0, True, True, tx, out)

    def _smb1_response(self, s: _Side, tx: SmbTx, cmd: int, rec: bytes, words: bytes,
                       data: bytes, bytes_off: int, unicode: bool,
                       out: list[AppEvent]) -> None:
        ok = tx.status == 0
        if cmd == S1_NEGOTIATE and len(words) >= 2:
            idx = _u16(words, 0)
            names = tx.dialects or self._smb1_dialects
            if idx < len(names):
                self.dialect = names[idx].decode("ascii", "replace")
                tx.dialect = self.dialect
        elif cmd == S1_TREE_CONNECT_ANDX:
            if ok:
                service = ascii_z(data)
                pipe = service.startswith(b"IPC")
                tx.share_type = "PIPE" if pipe else ("PRINT" if service.startswith(b"LPT")
                                                     else "FILE")
                self._trees[(1, tx.tree_id)] = pipe
                while len(self._trees) > MAX_TREES:
                    del self._trees[next(iter(self._trees))]
            if tx.share is not None:
                self._tree_inspect(tx, out)
        elif cmd == S1_NT_CREATE_ANDX and ok and len(words) >= 7:
            fid = words[5:7]
            tx.fid = fid
            self._remember_fid(1, fid, tx.filename or b"",
                               self._is_pipe_tree(1, tx.tree_id), tx.tree_id)
        elif cmd == S1_READ_ANDX and ok and tx.read_fid is not None and len(words) >= 14:
            dl = _u16(words, 10)
            do = _u16(words, 12)
            if len(words) >= 16:
                dl |= _u16(words, 14) << 16
            self._data_sink(s, rec, do, dl, 1, tx.read_fid, tx.read_offset, tx.pipe,
                            False, tx, out)
        elif cmd == S1_TRANS and (ok or tx.status == 0x80000005) and len(words) >= 20 \
                and tx.pipe and tx.read_fid is not None:
            dc = _u16(words, 12)
            do = _u16(words, 14)
            self._data_sink(s, rec, do, dc, 1, tx.read_fid, 0, True, False, tx, out)


def _s(b: bytes) -> str:
    return b.decode("utf-8", "replace")


__all__ = ["SMB_INSPECT", "SMB_RECORD", "NtlmAuth", "SmbFile", "SmbParser", "SmbTx",
           "ntlmssp_auth"]
