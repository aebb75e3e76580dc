"""NFS over ONC RPC (RFC 5531) on UDP: NFSv2 (RFC 1094) and NFSv3 (RFC 1813) calls and
replies, file names, and the files READ and WRITE move.

One ``NfsParser`` per UDP flow; each datagram is one RPC message (over UDP there is no
record marking). A call (to the server) is remembered by its xid (at most
``MAX_PENDING``) until its reply; each call/reply pair is one transaction with an EVE
``nfs`` record (version, procedure, status, the file name when known).

File names: LOOKUP and CREATE name a file in a directory; their replies give its file
handle, which the parser maps to that name (at most ``MAX_NAMES`` handles). Files:

- READ replies carry file data (to the client): one file per file handle, fed in the
  order the replies arrive, closed by a short read (v2: fewer bytes than asked) or the
  reply's EOF flag (v3), or at flow end;
- v3 WRITE calls carry file data (to the server), closed by a FILE_SYNC write shorter
  than the ones before, or at flow end. NFSv2 WRITE data is not made a file (as
  Suricata 7, which only follows v2 READs).

A file is a transaction of its own (its ``file.*`` buffers and ``fileinfo`` record), so a
``filestore`` or ``filemd5`` rule sees it once, as in Suricata. Events (Suricata's nfs
event names): ``malformed_data`` for a message that does not parse. Not done: NFS over
TCP (record marking), NFSv4 compounds, READDIR/READDIRPLUS names, RENAME logging.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from appliance.core.app import APP_TX, AppEvent, DatagramParser
from appliance.core.app.http import FileBudget, HttpFile, file_buffers

NFS_PROGRAM: Final = 100003
# Calls waiting for their reply; names of file handles; files open at once.
MAX_PENDING: Final = 1024
MAX_NAMES: Final = 4096
MAX_FILES: Final = 64
# RFC 1813: file handles are at most 64 bytes (NFSv2: exactly 32).
MAX_FH: Final = 64

V2_PROCS: Final = ("NULL", "GETATTR", "SETATTR", "ROOT", "LOOKUP", "READLINK", "READ",
                   "WRITECACHE", "WRITE", "CREATE", "REMOVE", "RENAME", "LINK", "SYMLINK",
                   "MKDIR", "RMDIR", "READDIR", "STATFS")
V3_PROCS: Final = ("NULL", "GETATTR", "SETATTR", "LOOKUP", "ACCESS", "READLINK", "READ",
                   "WRITE", "CREATE", "MKDIR", "SYMLINK", "MKNOD", "REMOVE", "RMDIR",
                   "RENAME", "LINK", "READDIR", "READDIRPLUS", "FSSTAT", "FSINFO",
                   "PATHCONF", "COMMIT")
_V2 = {name: i for i, name in enumerate(V2_PROCS)}
_V3 = {name: i for i, name in enumerate(V3_PROCS)}
# NFS status codes (RFC 1813 2.6) as Suricata logs them.
STATUS: Final = {0: "OK", 1: "PERM", 2: "NOENT", 5: "IO", 6: "NXIO", 13: "ACCES",
                 17: "EXIST", 18: "XDEV", 19: "NODEV", 20: "NOTDIR", 21: "ISDIR",
                 22: "INVAL", 27: "FBIG", 28: "NOSPC", 30: "ROFS", 31: "MLINK",
                 63: "NAMETOOLONG", 66: "NOTEMPTY", 69: "DQUOT", 70: "STALE"}


class _Bad(Exception):
    """An XDR field runs past the message (caught in parse_datagram)."""


class _Xdr:
    __slots__ = ("d", "pos")

    def __init__(self, d: bytes, pos: int = 0) -> None:
        self.d = d
        self.pos = pos

    def u32(self) -> int:
        if self.pos + 4 > len(self.d):
            raise _Bad
        self.pos += 4
        v: int = struct.unpack_from("!I", self.d, self.pos - 4)[0]
        return v

    def u64(self) -> int:
        return (self.u32() << 32) | self.u32()

    def fixed(self, n: int) -> bytes:
        """n bytes, padded to a multiple of 4 (RFC 4506 4.9)."""
        end = self.pos + n
        if n < 0 or end > len(self.d):
            raise _Bad
        b = self.d[self.pos : end]
        self.pos = end + (-n % 4)
        return b

    def opaque(self, limit: int = 1 << 30) -> bytes:
        n = self.u32()
        if n > limit:
            raise _Bad
        return self.fixed(n)

    def skip(self, n: int) -> None:
        self.fixed(n)


class NfsFile(HttpFile):
    """A file moved by READ replies or WRITE calls (hashed and kept as HTTP files)."""

    __slots__ = ("fh", "next_offset")

    def __init__(self, name: bytes, to_server: bool, tx_id: int, fh: bytes) -> None:
        super().__init__(name, to_server, tx_id)
        self.fh = fh
        self.next_offset = 0


class Call:
    __slots__ = ("count", "fh", "name", "proc", "tx_id", "version")

    def __init__(self, version: int, proc: int, tx_id: int) -> None:
        self.version = version
        self.proc = proc
        self.tx_id = tx_id
        self.fh = b""
        self.name: bytes | None = None
        self.count = 0  # READ: bytes asked for


def _file_buffers(f: NfsFile) -> dict[str, bytes | list[bytes]]:
    b: dict[str, bytes | list[bytes]] = {}
    file_buffers(b, [f])
    return b


class NfsParser(DatagramParser):
    """NFS v2/v3 for one UDP flow."""

    app_proto = "nfs"

    def __init__(self) -> None:
        self.pending: dict[int, Call] = {}
        self.names: dict[bytes, bytes] = {}
        self.files: dict[tuple[bytes, bool], NfsFile] = {}
        self.next_id = 0
        self.file_budget: FileBudget | None = None

    def memuse(self) -> int:
        return (64 * len(self.pending) + sum(len(k) + len(v) for k, v in self.names.items())
                + sum(len(f.data or b"") for f in self.files.values()))

    # (NFS over TCP is not parsed: detection offers UDP flows only; feed returns nothing)

    def release_files(self) -> None:
        for f in self.files.values():
            f.release()

    def close(self) -> list[AppEvent]:
        out: list[AppEvent] = []
        for f in list(self.files.values()):
            self._close_file(f, f.to_server, out)
        return out

    def _datagram(self, data: bytes, to_server: bool, out: list[AppEvent]) -> None:
        # An XDR field past the end (_Bad) or a bug: "malformed_data" (DatagramParser).
        if to_server:
            self._call(_Xdr(data), to_server, out)
        else:
            self._reply(_Xdr(data), to_server, out)

    # calls -----------------------------------------------------------------------------

    def _call(self, x: _Xdr, to_server: bool, out: list[AppEvent]) -> None:
        xid = x.u32()
        if x.u32() != 0 or x.u32() != 2:  # CALL, RPC version 2 (RFC 5531 9)
            raise _Bad
        prog, version, proc = x.u32(), x.u32(), x.u32()
        x.u32()
        x.opaque(400)  # credentials (RFC 5531 8.2: at most 400 bytes)
        x.u32()
        x.opaque(400)  # verifier
        if prog != NFS_PROGRAM or version not in (2, 3):
            return  # another RPC program (mount, portmap...) or NFSv4: not followed
        procs = V2_PROCS if version == 2 else V3_PROCS
        if proc >= len(procs):
            raise _Bad
        c = Call(version, proc, self.next_id)
        self.next_id += 1
        name = procs[proc]
        if name != "NULL":
            c.fh = x.fixed(32) if version == 2 else x.opaque(MAX_FH)
        if name in ("LOOKUP", "CREATE", "MKDIR", "REMOVE", "RMDIR", "RENAME"):
            c.name = x.opaque(1024)
        elif name == "READ":
            if version == 2:
                x.u32()
                c.count = x.u32()
            else:
                x.u64()
                c.count = x.u32()
        elif name == "WRITE" and version == 3:
            offset = x.u64()
            x.u32()  # count
            stable = x.u32()
            self._data(c.fh, True, offset, x.opaque(1 << 24), stable == 2, c.tx_id, out)
        if len(self.pending) >= MAX_PENDING:
            self.pending.pop(next(iter(self.pending)))  # the oldest unanswered call
        self.pending[xid] = c

    # replies ---------------------------------------------------------------------------

    def _reply(self, x: _Xdr, to_server: bool, out: list[AppEvent]) -> None:
        xid = x.u32()
        if x.u32() != 1:
            raise _Bad  # not a REPLY
        c = self.pending.pop(xid, None)
        if c is None:
            return  # an answer to a call not seen (or not NFS)
        status = "REJECTED"
        if x.u32() == 0:  # MSG_ACCEPTED
            x.u32()
            x.opaque(400)  # verifier
            if x.u32() != 0:  # not SUCCESS
                status = "RPC_ERROR"
            elif c.proc == 0:
                status = "OK"  # NULL: no result
            else:
                st = x.u32()
                status = STATUS.get(st, str(st))
                if st == 0:
                    self._result(c, x, out)
        self._record(c, status, to_server, out)

    def _result(self, c: Call, x: _Xdr, out: list[AppEvent]) -> None:
        name = (V2_PROCS if c.version == 2 else V3_PROCS)[c.proc]
        if name in ("LOOKUP", "CREATE", "MKDIR") and c.name is not None:
            if c.version == 2:
                fh = x.fixed(32)
            else:
                if name != "LOOKUP" and not x.u32():  # post_op_fh3 absent
                    return
                fh = x.opaque(MAX_FH)
            if fh not in self.names and len(self.names) >= MAX_NAMES:
                self.names.pop(next(iter(self.names)))
            self.names[fh] = c.name
        elif name == "READ":
            if c.version == 2:
                x.skip(68)  # fattr (RFC 1094 2.3.5): 17 words
                data = x.opaque(1 << 24)
                eof = len(data) < c.count
            else:
                if x.u32():
                    x.skip(84)  # post_op_attr: fattr3 (RFC 1813 2.6)
                x.u32()  # count
                eof = bool(x.u32())
                data = x.opaque(1 << 24)
            self._data(c.fh, False, -1, data, eof, c.tx_id, out)

    def _record(self, c: Call, status: str, to_server: bool, out: list[AppEvent]) -> None:
        procs = V2_PROCS if c.version == 2 else V3_PROCS
        eve: dict[str, Any] = {"version": c.version, "procedure": procs[c.proc],
                               "status": status, "id": c.tx_id}
        fname = c.name if c.name is not None else self.names.get(c.fh)
        if fname is not None:
            eve["filename"] = fname.decode("utf-8", "replace")
        if c.fh:
            eve["hhash"] = f"{_crc(c.fh):x}"
        out.append(AppEvent(APP_TX, to_server, "nfs", c.tx_id, {
            "buffers": {"nfs_procedure": str(c.proc).encode(),
                        "nfs.version": str(c.version).encode()},
            "event_type": "nfs", "eve": eve}))

    # files -----------------------------------------------------------------------------

    def _data(self, fh: bytes, to_server: bool, offset: int, data: bytes, last: bool,
              tx_id: int, out: list[AppEvent]) -> None:
        key = (fh, to_server)
        f = self.files.get(key)
        if f is None:
            if len(self.files) >= MAX_FILES:
                old = next(iter(self.files.values()))
                self._close_file(old, old.to_server, out)
            f = NfsFile(self.names.get(fh, b""), to_server, self.next_id, fh)
            self.next_id += 1
            if self.file_budget is not None:
                f.budget = self.file_budget
                f.data = bytearray()
            self.files[key] = f
        if offset < 0 or offset == f.next_offset:
            f.update(data)
            f.next_offset += len(data)
        # (an out-of-order or repeated chunk is not added: the hash stays that of the
        # bytes seen in order)
        if last:
            self._close_file(f, to_server, out)
        else:
            out.append(AppEvent(APP_TX, to_server, "nfs-file", f.tx_id,
                                {"buffers": _file_buffers(f)}))

    def _close_file(self, f: NfsFile, to_server: bool, out: list[AppEvent]) -> None:
        self.files.pop((f.fh, f.to_server), None)
        f.state = "CLOSED"
        out.append(AppEvent(APP_TX, f.to_server, "nfs-file", f.tx_id, {
            "buffers": _file_buffers(f), "file": f,
            "fileinfo": f.eve()}))


def _crc(b: bytes) -> int:
    import zlib

    return zlib.crc32(b) & 0xFFFFFFFF


def probe_udp(data: bytes) -> bool:
    """An ONC RPC call to the NFS program (v2/v3), or a reply."""
    if len(data) < 24:
        return len(data) >= 12 and data[4:8] == b"\0\0\0\1"
    mtype, rpcvers, prog = struct.unpack_from("!III", data, 4)
    return bool(mtype == 1 or (mtype == 0 and rpcvers == 2 and prog == NFS_PROGRAM))
