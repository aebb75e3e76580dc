"""DCERPC (DCE 1.1 RPC, MS-RPCE): connection-oriented PDUs over any byte stream, and
connectionless PDUs over UDP. Transport-independent: TCP (port 135 and dynamic ports,
recognised by the PDU header) and SMB named pipes feed the same state machine.

API (also used by app/smb.py for DCERPC over named pipes)
---------------------------------------------------------

``DceRpcConnection(tx_ids=None)`` is one DCERPC association (connection-oriented,
DCE 1.1 chapter 12.6). Feed it the bytes of one direction with
``feed(data, to_server) -> list[AppEvent]``: any chunking, in order (for SMB: the
data of WRITE/TRANSACT requests to the server, READ/TRANSACT responses to the client,
in the order they appear). ``tx_ids`` is a callable giving the next transaction id
(SMB passes its own allocator so DCERPC and SMB transactions of a flow never share an
id; without it ids count from 0). A call takes two ids (see ``inspect_id``).

It returns ``AppEvent``s:

- ``DCERPC_TX`` (``data={"tx": DceTx, "conn": DceRpcConnection}``): a REQUEST or
  RESPONSE fragment updated transaction ``tx`` in direction ``to_server``. Its
  inspection buffers are ``conn.buffers(tx, to_server)``, to inspect under the id
  ``conn.inspect_id(tx, to_server)`` (each direction of a call has its own, as
  Suricata alerts once per transaction and direction); ``tx.done`` says both sides
  are complete (then ``conn.eve(tx)`` is its EVE ``dcerpc`` object). ``close()``
  reports the calls still open with ``data["final"]`` set: log them, do not inspect;
- ``DCERPC_BIND``: a BIND/ALTER_CONTEXT (to server) or its ack/nak (to client) was
  parsed (``data={"tx": DceTx, "conn": ...}``; a bind transaction, EVE only);
- ``ANOMALY`` with a name (``DCERPC_MALFORMED``, ``DCERPC_STUB_TRUNCATED``,
  ``DCERPC_TOO_MANY_TXS``): malformed input. A header whose version is not 5.0/5.1
  (or an impossible fragment length) loses the PDU boundaries: what this direction
  holds and the rest of the chunk are dropped and parsing resumes at the next chunk
  that starts with a header (Suricata 7 likewise skips the data it was given; a PDU
  usually starts a segment or a pipe message). After MAX_RESYNC chunks in a row
  without a header, both directions stop (``failed``): it is not DCERPC.

State the keywords need:

- ``conn.interfaces``: ctx id -> ``Interface`` (uuid text, version, ack ``result``:
  0 accepted, None while unacknowledged) from BIND/ALTER_CONTEXT and their acks;
- ``conn.buffers(tx, to_server)``: ``dcerpc.stub_data`` (the request's stub to the
  server, the response's to the client, reassembled across fragments up to
  MAX_STUB), ``dcerpc.opnum`` (the request's opnum as decimal text) and
  ``dcerpc.iface`` (one element per accepted interface bound to the request's context
  id: ``b"<uuid> <major version> F|-"``, F when the request's latest fragment was its
  first; the rule compiler turns ``dcerpc.iface`` / ``dcerpc.opnum`` values into
  regexes on these texts).

Stub data follows what Suricata 7 exposes (suricata-verify dcerpc-dce-iface-02 and
truncate-applayer-test-01 show it): a request's stub is everything after its 24-byte
header (an object UUID and an auth verifier stay in it), a response's everything
after the 16-byte common header.

``DcerpcParser`` is the flow parser (app_proto "dcerpc"): TCP bytes go to one
connection; UDP payloads are connectionless PDUs (DCE 1.1 chapter 12.5: 80-byte
header, the interface and opnum in every request). ``looks_like_dcerpc(data, to_server)``
and ``looks_like_dcerpc_udp(data)`` are the detection probes.

Note for SMB: a rule's app_proto "dcerpc" must also apply to an SMB flow carrying
DCERPC (Suricata treats them alike); that equivalence lives in the signature engine.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from appliance.core.app import ANOMALY, AppEvent, DatagramParser

# Event kinds (engine: applayer.py).
DCERPC_TX: Final = "dcerpc_tx"
DCERPC_BIND: Final = "dcerpc_bind"

# Bounds. A fragment's length is a u16 (DCE 1.1 12.6.3.1 frag_length), so one PDU is
# at most 64 KiB: it is buffered whole. Reassembled stub data is kept up to MAX_STUB
# per transaction and direction (Windows' default max RPC request size is 4 MiB but
# rules look at the first bytes); what is beyond is counted, not kept.
MAX_STUB: Final = 1024 * 1024
# Open transactions (requests waiting for a response) per association: Suricata's
# dcerpc max-tx default is 1024.
MAX_TXS: Final = 1024
# Chunks in a row that do not start with a PDU header before parsing gives up.
MAX_RESYNC: Final = 64
# Contexts per association (p_context_id is a u16; real binds present a handful).
MAX_CONTEXTS: Final = 256
# Contexts read from one BIND (n_context_elem is a u8).
MAX_CONTEXT_ELEMS: Final = 255

HDR_LEN: Final = 16
CL_HDR_LEN: Final = 80

# PDU types (DCE 1.1 12.6.4 / 12.5.3; 20 = RTS of MS-RPCH).
PTYPE_NAMES: Final = {
    0: "REQUEST", 1: "PING", 2: "RESPONSE", 3: "FAULT", 4: "WORKING", 5: "NOCALL",
    6: "REJECT", 7: "ACK", 8: "CL_CANCEL", 9: "FACK", 10: "CANCEL_ACK", 11: "BIND",
    12: "BINDACK", 13: "BINDNAK", 14: "ALTER_CONTEXT", 15: "ALTER_CONTEXT_RESP",
    16: "AUTH3", 17: "SHUTDOWN", 18: "CO_CANCEL", 19: "ORPHANED", 20: "RTS",
}
REQUEST: Final = 0
RESPONSE: Final = 2
FAULT: Final = 3
BIND: Final = 11
BIND_ACK: Final = 12
BIND_NAK: Final = 13
ALTER_CONTEXT: Final = 14
ALTER_CONTEXT_RESP: Final = 15

PFC_FIRST_FRAG: Final = 0x01
PFC_LAST_FRAG: Final = 0x02
# Connectionless flags1 (12.5.3.3).
CL_LASTFRAG: Final = 0x02
CL_FRAG: Final = 0x04


def uuid_text(b: bytes, little: bool) -> str:
    """A 16-byte UUID as text; its first three fields are in the sender's integer
    representation (DCE 1.1 appendix A, NDR)."""
    order: Any = "little" if little else "big"
    a = int.from_bytes(b[0:4], order)
    c = int.from_bytes(b[4:6], order)
    d = int.from_bytes(b[6:8], order)
    return f"{a:08x}-{c:04x}-{d:04x}-{b[8:10].hex()}-{b[10:16].hex()}"


# PDU types that open a direction of a connection-oriented association: a client
# binds (or, picked up midstream, sends requests); a server acks or answers.
_FIRST_TO_SERVER: Final = frozenset({BIND, ALTER_CONTEXT, REQUEST})
_FIRST_TO_CLIENT: Final = frozenset({BIND_ACK, BIND_NAK, ALTER_CONTEXT_RESP, RESPONSE, FAULT})


def looks_like_dcerpc(data: bytes, to_server: bool) -> bool | None:
    """A connection-oriented PDU header opening this direction? None while the bytes
    so far (fewer than 16) say nothing against it. Version 5.0/5.1, a PDU type that
    can open the direction, a data representation with integer and character codes
    0/1 and zero reserved bytes, a fragment length holding at least the header and
    the auth verifier."""
    first = _FIRST_TO_SERVER if to_server else _FIRST_TO_CLIENT
    checks = ((0, lambda b: b == 5), (1, lambda b: b in (0, 1)), (2, lambda b: b in first),
              (4, lambda b: not b & 0xEE), (5, lambda b: b <= 3), (6, lambda b: b == 0),
              (7, lambda b: b == 0))
    for i, ok in checks:
        if i >= len(data):
            return None
        if not ok(data[i]):
            return False
    if len(data) < HDR_LEN:
        return None
    order: Any = "little" if data[4] & 0x10 else "big"
    flen = int.from_bytes(data[8:10], order)
    alen = int.from_bytes(data[10:12], order)
    return flen >= HDR_LEN + alen


def looks_like_dcerpc_udp(data: bytes) -> bool:
    """A connectionless PDU: version 4, a CL PDU type, and a body length that is the
    datagram's rest exactly."""
    if (len(data) < CL_HDR_LEN or data[0] != 4 or data[1] > 10 or data[4] & 0xEE
            or data[6] != 0):
        return False
    little = bool(data[4] & 0x10)
    ln = int.from_bytes(data[74:76], "little" if little else "big")
    return CL_HDR_LEN + ln == len(data)


class StubData(bytes):
    """A stub data buffer that knows the byte order of its data representation, for
    byte_test/byte_jump/byte_extract's ``dce`` option (detect/inspect.py reads
    ``dce_little``)."""

    dce_little: bool = True

    @classmethod
    def of(cls, data: bytes | bytearray, little: bool) -> StubData:
        b = cls(data)
        b.dce_little = little
        return b


@dataclass(slots=True)
class Interface:
    """One presentation context of an association."""

    ctx_id: int
    uuid: str
    version: int  # major
    version_minor: int
    result: int | None = None  # 0 acceptance, 1 user rejection, 2 provider rejection


@dataclass(slots=True)
class DceTx:
    """A call (request and response with one call_id), or a bind (EVE only)."""

    tx_id: int  # EVE records and to-server inspections
    call_id: int
    # To-client inspections: Suricata keeps detection state per transaction and
    # direction (dcerpc.iface / dcerpc.opnum match both ways), the engine's
    # once-per-transaction bookkeeping is per id: the response side gets its own.
    resp_id: int = -1
    req_type: int | None = None  # REQUEST, BIND, ALTER_CONTEXT... (None: request lost)
    resp_type: int | None = None
    opnum: int = 0
    ctx_id: int = 0
    req_stub: bytearray = field(default_factory=bytearray)
    resp_stub: bytearray = field(default_factory=bytearray)
    req_size: int = 0  # stub bytes seen, also beyond MAX_STUB
    resp_size: int = 0
    req_frags: int = 0
    resp_frags: int = 0
    req_first: bool = False  # the request's latest fragment had PFC_FIRST_FRAG
    req_done: bool = False
    resp_done: bool = False
    bind: list[Interface] = field(default_factory=list)  # a bind's contexts
    logged: bool = False
    rpc_version: str = "5.0"
    req_little: bool = True  # data representation of the latest request / response
    resp_little: bool = True
    # Connectionless: activity UUID, sequence number and the interface of the header.
    activity: str | None = None
    seqnum: int = 0
    cl_iface: Interface | None = None

    @property
    def done(self) -> bool:
        return self.req_done and self.resp_done

    def memuse(self) -> int:
        return len(self.req_stub) + len(self.resp_stub) + 64 * len(self.bind)


class _Side:
    __slots__ = ("bad", "buf")

    def __init__(self) -> None:
        self.buf = bytearray()  # an incomplete PDU (at most 64 KiB)
        self.bad = 0  # chunks in a row without a valid header (resynchronising)


def _counter() -> Callable[[], int]:
    c = itertools.count()
    return lambda: next(c)


class DceRpcConnection:
    """The DCERPC state of one association: both directions of its byte stream."""

    def __init__(self, tx_ids: Callable[[], int] | None = None) -> None:
        self._next_id = tx_ids or _counter()
        self.client = _Side()
        self.server = _Side()
        self.interfaces: dict[int, Interface] = {}
        self._pending: list[Interface] = []  # contexts of the last BIND/ALTER_CONTEXT
        self.txs: list[DceTx] = []  # open transactions, oldest first
        self._bind_tx: DceTx | None = None
        self.failed = False

    # public API ------------------------------------------------------------------------

    def memuse(self) -> int:
        return (len(self.client.buf) + len(self.server.buf)
                + sum(t.memuse() for t in self.txs) + 64 * len(self.interfaces))

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]:
        out: list[AppEvent] = []
        if self.failed or not data:
            return out
        try:
            self._feed(self.client if to_server else self.server, data, to_server, out)
        except Exception:  # principle 7: a bug must not escape into the engine
            self._fail(to_server, out)
        return out

    def close(self) -> list[AppEvent]:
        """Flow end: open transactions are reported once more for their EVE records."""
        out = []
        for t in self.txs:
            t.req_done = t.resp_done = True
            if not t.logged:
                out.append(AppEvent(DCERPC_TX, True, tx_id=t.tx_id,
                                    data={"tx": t, "conn": self, "final": True}))
        self.txs.clear()
        return out

    def get_tx(self, tx_id: int) -> DceTx | None:
        for t in self.txs:
            if t.tx_id == tx_id:
                return t
        return None

    def iface_elements(self, tx: DceTx) -> list[bytes]:
        """The ``dcerpc.iface`` elements of a request: the accepted interfaces bound to
        its context id (connectionless: the header's interface)."""
        flag = b"F" if tx.req_first else b"-"
        if tx.cl_iface is not None:
            i = tx.cl_iface
            return [f"{i.uuid} {i.version} ".encode() + flag]
        i2 = self.interfaces.get(tx.ctx_id)
        if i2 is None or i2.result != 0:
            return []
        return [f"{i2.uuid} {i2.version} ".encode() + flag]

    @staticmethod
    def inspect_id(tx: DceTx, to_server: bool) -> int:
        """The transaction id to inspect one direction of a call with."""
        return tx.tx_id if to_server or tx.resp_id < 0 else tx.resp_id

    def buffers(self, tx: DceTx, to_server: bool) -> dict[str, bytes | list[bytes]]:
        b: dict[str, bytes | list[bytes]] = {}
        if tx.req_type not in (REQUEST, None) and tx.cl_iface is None:
            return b  # a bind: nothing for the keywords
        stub = tx.req_stub if to_server else tx.resp_stub
        if (tx.req_frags if to_server else tx.resp_frags):
            b["dcerpc.stub_data"] = StubData.of(
                stub, tx.req_little if to_server else tx.resp_little)
        if tx.req_type is not None:
            b["dcerpc.opnum"] = str(tx.opnum).encode()
        b["dcerpc.iface"] = self.iface_elements(tx)
        return b

    def eve(self, tx: DceTx) -> dict[str, Any]:
        """The EVE ``dcerpc`` object as Suricata 7 writes it."""
        o: dict[str, Any] = {
            "request": (PTYPE_NAMES.get(tx.req_type, str(tx.req_type))
                        if tx.req_type is not None else "REQUEST_LOST"),
            "response": (PTYPE_NAMES.get(tx.resp_type, str(tx.resp_type))
                         if tx.resp_type is not None else "UNREPLIED"),
        }
        if tx.req_type in (BIND, ALTER_CONTEXT):
            if tx.bind:
                o["interfaces"] = [
                    {"uuid": i.uuid, "version": f"{i.version}.{i.version_minor}",
                     "ack_result": i.result if i.result is not None else 0}
                    for i in tx.bind]
        elif tx.req_type == REQUEST:
            o["req"] = {"opnum": tx.opnum, "frag_cnt": tx.req_frags,
                        "stub_data_size": tx.req_size}
        if tx.resp_type == RESPONSE:
            o["res"] = {"frag_cnt": tx.resp_frags, "stub_data_size": tx.resp_size}
        if tx.activity is not None:
            o["activityuuid"] = tx.activity
            o["seqnum"] = tx.seqnum
        else:
            o["call_id"] = tx.call_id
        o["rpc_version"] = tx.rpc_version
        return o

    # parsing ---------------------------------------------------------------------------

    def _fail(self, to_server: bool, out: list[AppEvent]) -> None:
        out.append(AppEvent(ANOMALY, to_server, "DCERPC_MALFORMED"))
        self.failed = True
        self.client.buf.clear()
        self.server.buf.clear()

    def _feed(self, s: _Side, data: bytes, to_server: bool, out: list[AppEvent]) -> None:
        buf = s.buf
        buf += data
        pos = 0
        n = len(buf)
        while n - pos >= HDR_LEN and not self.failed:
            little = bool(buf[pos + 4] & 0x10)
            flen = int.from_bytes(buf[pos + 8 : pos + 10], "little" if little else "big")
            if (buf[pos] != 5 or buf[pos + 1] not in (0, 1) or buf[pos + 4] & 0xEE
                    or flen < HDR_LEN):
                self._resync(s, to_server, out)
                return
            if n - pos < flen:
                break
            self._pdu(bytes(buf[pos : pos + flen]), little, to_server, out)
            s.bad = 0
            pos += flen
        if pos:
            del buf[:pos]

    def _resync(self, s: _Side, to_server: bool, out: list[AppEvent]) -> None:
        """Not at a PDU header: drop this direction's bytes up to the next chunk."""
        s.buf.clear()
        s.bad += 1
        if s.bad == 1:
            out.append(AppEvent(ANOMALY, to_server, "DCERPC_MALFORMED"))
        if s.bad > MAX_RESYNC:
            self.failed = True
            self.client.buf.clear()
            self.server.buf.clear()

    def _pdu(self, pdu: bytes, little: bool, to_server: bool, out: list[AppEvent]) -> None:
        order: Any = "little" if little else "big"
        ptype = pdu[2]
        flags = pdu[3]
        call_id = int.from_bytes(pdu[12:16], order)
        version = f"{pdu[0]}.{pdu[1]}"
        if ptype == REQUEST and to_server:
            if len(pdu) < 24:
                out.append(AppEvent(ANOMALY, to_server, "DCERPC_MALFORMED"))
                return
            ctx_id = int.from_bytes(pdu[20:22], order)
            opnum = int.from_bytes(pdu[22:24], order)
            tx = self._find(call_id, True, flags & PFC_FIRST_FRAG != 0, out)
            if tx.req_type is None:
                tx.req_type = REQUEST
                tx.ctx_id = ctx_id
                tx.opnum = opnum
            tx.rpc_version = version
            tx.req_little = little
            tx.req_frags += 1
            tx.req_first = bool(flags & PFC_FIRST_FRAG)
            self.add_stub(tx, pdu[24:], True, out)
            if flags & PFC_LAST_FRAG:
                tx.req_done = True
            out.append(AppEvent(DCERPC_TX, True, tx_id=tx.tx_id,
                                data={"tx": tx, "conn": self}))
            self.retire(tx)
        elif ptype in (RESPONSE, FAULT) and not to_server:
            tx = self._find(call_id, False, True, out)
            tx.resp_type = ptype
            tx.resp_little = little
            if tx.req_type is None and len(pdu) >= 22:
                tx.ctx_id = int.from_bytes(pdu[20:22], order)
            tx.resp_frags += 1
            if ptype == RESPONSE:
                self.add_stub(tx, pdu[HDR_LEN:], False, out)
            if flags & PFC_LAST_FRAG or ptype == FAULT:
                tx.resp_done = True
            if tx.req_type is not None:
                # The response ends the call: a request still "open" (no last
                # fragment seen) will not get more fragments.
                tx.req_done = True
            else:
                tx.req_done = tx.resp_done  # request lost: the response alone
            out.append(AppEvent(DCERPC_TX, False, tx_id=tx.tx_id,
                                data={"tx": tx, "conn": self}))
            self.retire(tx)
        elif ptype in (BIND, ALTER_CONTEXT) and to_server:
            self._bind(pdu, order, ptype, call_id, version, out)
        elif ptype in (BIND_ACK, ALTER_CONTEXT_RESP, BIND_NAK) and not to_server:
            self._bind_ack(pdu, order, ptype, out)
        # Other PDUs (AUTH3, SHUTDOWN, CO_CANCEL, ORPHANED, RTS...) carry nothing the
        # keywords read.

    def _find(self, call_id: int, request: bool, first: bool,
              out: list[AppEvent]) -> DceTx:
        """The open call with this id (a request fragment continues the call whose
        request is not complete, unless it is a new first fragment; a response answers
        the oldest call without a complete response), or a new transaction."""
        for t in self.txs:
            if t.call_id != call_id or t.activity is not None:
                continue
            if request:
                if t.req_type == REQUEST and not t.req_done and not (first and t.req_frags):
                    return t
            elif not t.resp_done and (t.req_type == REQUEST or t.resp_frags):
                return t
        return self.new_tx(call_id, request, out)

    def new_tx(self, call_id: int, to_server: bool, out: list[AppEvent]) -> DceTx:
        """A new open transaction; the oldest is dropped (and reported for its EVE
        record) when MAX_TXS are open."""
        if len(self.txs) >= MAX_TXS:
            out.append(AppEvent(ANOMALY, to_server, "DCERPC_TOO_MANY_TXS"))
            old = self.txs.pop(0)
            old.req_done = old.resp_done = True
            if not old.logged:
                out.append(AppEvent(DCERPC_TX, to_server, tx_id=old.tx_id,
                                    data={"tx": old, "conn": self}))
        tx = DceTx(self._next_id(), call_id)
        tx.resp_id = self._next_id()
        self.txs.append(tx)
        return tx

    def retire(self, tx: DceTx) -> None:
        """A finished transaction leaves the open list (the engine logs it from the
        event that finished it)."""
        if tx.done and tx in self.txs:
            self.txs.remove(tx)

    @staticmethod
    def add_stub(tx: DceTx, data: bytes, to_server: bool, out: list[AppEvent]) -> None:
        stub = tx.req_stub if to_server else tx.resp_stub
        if to_server:
            tx.req_size += len(data)
        else:
            tx.resp_size += len(data)
        room = MAX_STUB - len(stub)
        if len(data) > room:
            if room > 0:
                out.append(AppEvent(ANOMALY, to_server, "DCERPC_STUB_TRUNCATED",
                                    tx.tx_id))
            data = data[:max(room, 0)]
        stub += data

    def _bind(self, pdu: bytes, order: Any, ptype: int, call_id: int, version: str,
              out: list[AppEvent]) -> None:
        # 12.6.4.3: max_xmit_frag, max_recv_frag, assoc_group_id, then the
        # p_context_elem list: n_context_elem (u8), 3 reserved bytes, and per context
        # p_cont_id (u16), n_transfer_syn (u8), reserved, abstract syntax (UUID + u32
        # version: major u16, minor u16), n_transfer_syn transfer syntaxes of 20 bytes.
        if len(pdu) < 28:
            out.append(AppEvent(ANOMALY, True, "DCERPC_MALFORMED"))
            return
        n = pdu[24]
        pos = 28
        ctxs: list[Interface] = []
        little = order == "little"
        for _ in range(min(n, MAX_CONTEXT_ELEMS)):
            if pos + 24 > len(pdu):
                out.append(AppEvent(ANOMALY, True, "DCERPC_MALFORMED"))
                break
            ctx_id = int.from_bytes(pdu[pos : pos + 2], order)
            ntrans = pdu[pos + 2]
            uuid = uuid_text(pdu[pos + 4 : pos + 20], little)
            major = int.from_bytes(pdu[pos + 20 : pos + 22], order)
            minor = int.from_bytes(pdu[pos + 22 : pos + 24], order)
            ctxs.append(Interface(ctx_id, uuid, major, minor))
            pos += 24 + 20 * ntrans
        self._pending = ctxs
        tx = DceTx(self._next_id(), call_id, req_type=ptype, req_frags=1, req_first=True,
                   bind=ctxs, rpc_version=version)
        self._bind_tx = tx
        out.append(AppEvent(DCERPC_BIND, True, tx_id=tx.tx_id, data={"tx": tx, "conn": self}))

    def _bind_ack(self, pdu: bytes, order: Any, ptype: int, out: list[AppEvent]) -> None:
        # 12.6.4.4: max_xmit_frag, max_recv_frag, assoc_group_id, secondary address
        # (u16 length + string), padding to a 4-byte boundary, p_result_list:
        # n_results (u8), 3 reserved bytes, per result: result (u16), reason (u16),
        # transfer syntax (20 bytes). The i-th result answers the i-th presented context.
        tx = self._bind_tx
        self._bind_tx = None
        pending = self._pending
        self._pending = []
        if ptype == BIND_NAK:
            for i in pending:
                i.result = 2
        elif len(pdu) < 26:
            out.append(AppEvent(ANOMALY, False, "DCERPC_MALFORMED"))
        else:
            alen = int.from_bytes(pdu[24:26], order)
            pos = 26 + alen
            pos += (-pos) % 4
            if pos + 4 > len(pdu):
                out.append(AppEvent(ANOMALY, False, "DCERPC_MALFORMED"))
            else:
                n = pdu[pos]
                pos += 4
                for k in range(n):
                    if pos + 24 > len(pdu):
                        out.append(AppEvent(ANOMALY, False, "DCERPC_MALFORMED"))
                        break
                    result = int.from_bytes(pdu[pos : pos + 2], order)
                    pos += 24
                    if k < len(pending):
                        pending[k].result = result
                        self._add_interface(pending[k])
        if tx is not None:
            tx.resp_type = ptype
            tx.resp_frags = 1
            tx.req_done = tx.resp_done = True
            out.append(AppEvent(DCERPC_BIND, False, tx_id=tx.tx_id,
                                data={"tx": tx, "conn": self}))

    def _add_interface(self, i: Interface) -> None:
        if i.ctx_id not in self.interfaces and len(self.interfaces) >= MAX_CONTEXTS:
            return  # bounded: further contexts are not tracked
        self.interfaces[i.ctx_id] = i


class DcerpcParser(DatagramParser):
    """DCERPC for one flow: ``feed`` takes TCP stream bytes (connection-oriented
    PDUs), ``parse_datagram`` one UDP payload (a connectionless PDU, DCE 1.1 12.5:
    every request names its interface (if_id, if_vers) and opnum in its 80-byte
    header; a call is keyed by activity UUID and sequence number; fragments (flags1
    FRAG/LASTFRAG, fragnum) are appended in arrival order)."""

    app_proto = "dcerpc"
    MALFORMED = "DCERPC_MALFORMED"  # a parser bug (DatagramParser.parse_datagram)

    def __init__(self) -> None:
        self.conn = DceRpcConnection()

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]:
        return self.conn.feed(data, to_server)

    def close(self) -> list[AppEvent]:
        return self.conn.close()

    def memuse(self) -> int:
        return self.conn.memuse()

    def _datagram(self, d: bytes, to_server: bool, out: list[AppEvent]) -> None:
        d = bytes(d)
        if len(d) < CL_HDR_LEN or d[0] != 4 or d[4] & 0xEE:
            out.append(AppEvent(ANOMALY, to_server, "DCERPC_MALFORMED"))
            return
        little = bool(d[4] & 0x10)
        order: Any = "little" if little else "big"
        ptype = d[1]
        flags1 = d[2]
        act = uuid_text(d[40:56], little)
        seq = int.from_bytes(d[64:68], order)
        ln = int.from_bytes(d[74:76], order)
        fragnum = int.from_bytes(d[76:78], order)
        body = d[CL_HDR_LEN : CL_HDR_LEN + ln]
        last = not (flags1 & CL_FRAG) or bool(flags1 & CL_LASTFRAG)
        conn = self.conn
        tx = None
        for t in conn.txs:
            if t.activity == act and t.seqnum == seq:
                tx = t
                break
        if ptype == REQUEST:
            if tx is None or tx.req_done:
                tx = conn.new_tx(-1, True, out)
                tx.activity, tx.seqnum, tx.req_type = act, seq, REQUEST
                tx.rpc_version = "4.0"
                tx.opnum = int.from_bytes(d[68:70], order)
                vers = int.from_bytes(d[60:64], order)
                tx.cl_iface = Interface(0, uuid_text(d[24:40], little), vers & 0xFFFF,
                                        vers >> 16, 0)
            tx.req_frags += 1
            tx.req_little = little
            tx.req_first = fragnum == 0
            conn.add_stub(tx, body, True, out)
            tx.req_done = last
            out.append(AppEvent(DCERPC_TX, True, tx_id=tx.tx_id,
                                data={"tx": tx, "conn": conn}))
        elif ptype in (RESPONSE, FAULT, 6):  # 6: REJECT also ends the call
            if tx is None:
                return  # an answer to nothing seen: nothing to inspect
            tx.resp_type = ptype
            tx.resp_little = little
            tx.resp_frags += 1
            if ptype == RESPONSE:
                conn.add_stub(tx, body, False, out)
            tx.resp_done = last or ptype != RESPONSE
            tx.req_done = True
            out.append(AppEvent(DCERPC_TX, False, tx_id=tx.tx_id,
                                data={"tx": tx, "conn": conn}))
        else:
            return
        conn.retire(tx)
