"""Application layer in the engine: detection, parsers, inspection points, EVE records.

Per flow: a ProtoDetector until the protocol is known, then that protocol's parser.
TCP flows are fed the in-order bytes reassembly delivers; UDP flows their payloads.
What the parsers report becomes:
- inspection points: a transaction's sticky buffers, in the direction that progressed
  (request buffers to the server; request and response buffers to the client, the
  response's winning where both have one, as Suricata's per-direction buffers do);
- EVE records: `http` when a transaction completes, `dns` per query/answer, `tls` once
  the handshake is done, `ssh` once both sides are encrypted (or at flow end),
  `ftp` per control transaction, `ftp_data` per data connection, `fileinfo` per file,
  `anomaly` (type applayer) per parser event;
- FTP data connections: a control channel's announcements go to the engine's
  expectation table (`AppResult.expected`); a new flow matching one is ftp-data from its
  first byte (`ftp_data_flow`), its bytes one file, ended by the announced size or the
  sender's FIN (`ftp_data_fin`);
- SMTP (app/smtp.py): each transaction's buffers when they change (smtp.helo/mail_from/
  rcpt_to, email.*, file_data of its attachments), `fileinfo` per attachment and an `smtp`
  record per transaction (both with Suricata's `smtp` and `email` objects); an accepted
  STARTTLS turns the flow into TLS (its parser gets the rest of the stream);
- DCERPC (app/dcerpc.py, over TCP, UDP or SMB pipes): each call's buffers per direction
  (request stub, opnum and bound interface to the server; response stub to the client,
  under its own transaction id), a `dcerpc` record per call and per bind on DCERPC flows;
- `encrypted`: nothing left to inspect in a TLS or SSH flow (inline, the engine may
  bypass it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from appliance.core.app import (
    ANOMALY,
    APP_PROTO_FAILED,
    APP_TX,
    DNS_ANSWER,
    DNS_QUERY,
    FILE_CLOSED,
    TLS_ENCRYPTED,
    TLS_HANDSHAKE,
    TX_COMPLETE,
    TX_REQUEST,
    TX_REQUEST_LINE,
    TX_RESPONSE,
    AppEvent,
    new_parser,
)
from appliance.core.app.dcerpc import DCERPC_BIND, DCERPC_TX
from appliance.core.app.detect import ProtoDetector, detect_udp
from appliance.core.app.http import file_buffers
from appliance.core.app.http2 import H2_DONE, H2_FILE, H2_INSPECT
from appliance.core.app.quic import QUIC_TX, looks_like_quic
from appliance.core.app.smb import SMB_INSPECT, SMB_RECORD
from appliance.core.app.smtp import SMTP_FILE, SMTP_STARTTLS, SMTP_TX, SMTP_UPDATE
from appliance.core.app.ssh import SSH_ENCRYPTED, SSH_UPDATE
from appliance.core.decode import PROTO_TCP, PROTO_UDP, Packet
from appliance.core.flows import Flow

# Parser names of buffers -> the rule language's canonical names (rules/parser.py).
_RENAME: Final = {"file_data": "file.data"}
Buffers = dict[str, bytes | list[bytes]]


@dataclass
class Inspection:
    """Buffers of one transaction to run app-layer rules on."""

    to_server: bool
    tx_id: int
    buffers: Buffers


@dataclass
class AppResult:
    inspections: list[Inspection] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # EVE bodies, see below
    anomalies: list[tuple[str, bool, int]] = field(default_factory=list)
    encrypted: bool = False
    files: list[Any] = field(default_factory=list)
    # For the heuristics: DNS questions asked (name, qtype) and HTTP statuses answered.
    dns_questions: list[tuple[bytes, int]] = field(default_factory=list)
    http_statuses: list[int] = field(default_factory=list)
    proto_decided: bool = False  # this call decided the flow's app_proto
    # FTP data connections announced by this call: (server address, Expectation); the
    # engine keeps them in its app/ftp.py Expectations table.
    expected: list[tuple[bytes, Any]] = field(default_factory=list)


class AppState:
    """Per-flow app-layer state (lives on the Flow as `flow.app`)."""

    __slots__ = ("detector", "file_budget", "mem", "parser", "tls_logged")

    def __init__(self, flow: Flow, file_budget: Any = None) -> None:
        self.detector: ProtoDetector | None = ProtoDetector(flow.sp, flow.dp)
        self.parser: Any = None
        self.tls_logged = False
        self.mem = 0  # memuse() when the engine last counted it
        # The engine's FileBudget when it scans files: a parser with files keeps their
        # content within it (app/http.py).
        self.file_budget = file_budget

    def memuse(self) -> int:
        if self.parser is not None:
            n: int = self.parser.memuse()
            return n
        return self.detector.memuse() if self.detector is not None else 0

    def abandon(self) -> None:
        """Free the parser and detection state: the flow is not parsed any more (the
        app layer's memcap was hit)."""
        self.release_files()
        self.parser = None
        self.detector = None

    def release_files(self) -> None:
        release = getattr(self.parser, "release_files", None)
        if release is not None:
            release()


def _buffers(tx: Any, to_server: bool) -> Buffers:
    req = tx.request_buffers()
    b: Buffers = dict(req)
    if not to_server:
        b.update(tx.response_buffers())
    for old, new in _RENAME.items():
        if old in b:
            b[new] = b.pop(old)
    files = [f for f in getattr(tx, "files", ()) if f.to_server == to_server]
    if files:
        file_buffers(b, files)
    return b


def feed_tcp(flow: Flow, data: bytes, to_server: bool, res: AppResult) -> None:
    """In-order stream bytes of one direction."""
    st: AppState | None = flow.app
    if st is None:
        st = flow.app = AppState(flow)
    if st.parser is None:
        det = st.detector
        if det is None:
            return
        kept = len(det.early(to_server))
        proto = det.feed(data, to_server)
        if proto is None:
            return
        st.detector = None
        flow.app_proto = proto
        res.proto_decided = True
        if proto == APP_PROTO_FAILED:
            return
        st.parser = new_parser(proto)
        if st.parser is None:
            return
        if st.file_budget is not None and hasattr(st.parser, "file_budget"):
            st.parser.file_budget = st.file_budget
        # The detector kept the first bytes of each direction: replay them to the parser.
        for side in (True, False):
            if side == to_server:
                continue
            early = det.early(side)
            if early:
                _events(flow, st, st.parser.feed(early, side), res)
        # This direction: what the detector kept, plus what did not fit in it.
        early = det.early(to_server)
        rest = data[len(early) - kept:] if len(early) - kept < len(data) else b""
        _events(flow, st, st.parser.feed(early + rest, to_server), res)
    else:
        _events(flow, st, st.parser.feed(data, to_server), res)
    if getattr(st.parser, "h2c", None) is not None:
        _h2c_upgrade(flow, st, res)  # a 101 to "Upgrade: h2c": the rest is HTTP/2


def ftp_data_flow(flow: Flow, table: Any, now: float, file_budget: Any) -> bool:
    """A new TCP flow that an FTP control channel announced (app/ftp.py Expectations):
    parsed as ftp-data from its first byte, no detection. True when it is one."""
    if not len(table):
        return False
    exp = table.take(flow.src, flow.dst, flow.dp, now)
    if exp is None:
        return False
    from appliance.core.app.ftp import FtpDataParser

    st = flow.app = AppState(flow, file_budget)
    st.detector = None
    st.parser = FtpDataParser(exp, file_budget)
    flow.app_proto = "ftp-data"
    return True


def ftp_data_fin(flow: Flow, to_server: bool, res: AppResult) -> None:
    """A FIN on an ftp-data flow: when it comes from the file's sender after every byte
    was delivered, the file is complete (this packet can wait for the scan verdict)."""
    st: AppState | None = flow.app
    parser = st.parser if st is not None else None
    f = getattr(parser, "file", None)
    tcp = flow.tcp
    if st is None or f is None or f.to_server != to_server or tcp is None:
        return
    half = tcp.cli if to_server else tcp.srv
    if half.fin_seq >= 0 and half.nxt_seq == half.fin_seq:
        _events(flow, st, st.parser.close(), res)


def feed_udp(flow: Flow, p: Packet, to_server: bool, res: AppResult) -> None:
    st: AppState | None = flow.app
    if st is None:
        st = flow.app = AppState(flow)
        st.detector = None
        proto = detect_udp(p.payload, p.sp, p.dp) if p.payload else None
        if proto is None and p.payload and looks_like_quic(p.payload, p.sp, p.dp):
            proto = "quic"
        flow.app_proto = proto or APP_PROTO_FAILED
        res.proto_decided = True
        if proto is not None:
            st.parser = new_parser(proto)
    parser = st.parser
    if parser is None or not p.payload:
        return
    parse = getattr(parser, "parse_datagram", None)
    if parse is None:
        return
    _events(flow, st, parse(p.payload, to_server), res)


def close(flow: Flow, res: AppResult) -> None:
    """Flow end: the parser's last words (truncated files, unmatched transactions)."""
    st: AppState | None = flow.app
    if st is not None and st.parser is not None:
        _events(flow, st, st.parser.close(), res)
        _tls_record(flow, st, res)
        _ssh_record(flow, st, res)


def _events(flow: Flow, st: AppState, events: list[AppEvent], res: AppResult) -> None:
    full: set[int] | None = None  # transactions whose headers this call parsed
    for ev in events:
        k = ev.kind
        if k == ANOMALY:
            res.anomalies.append((ev.name, ev.to_server, ev.tx_id))
        elif k == TX_REQUEST_LINE:
            # The request line alone: its buffers are inspected now, unless the headers
            # were parsed in this same call (the full inspection covers them then).
            if full is None:
                full = {e.tx_id for e in events if e.kind == TX_REQUEST}
            tx = ev.data.get("tx")
            if tx is not None and ev.tx_id not in full:
                res.inspections.append(Inspection(True, tx.tx_id,
                                                  dict(tx.request_line_buffers())))
        elif k == TX_REQUEST or k == TX_RESPONSE:
            tx = ev.data.get("tx")
            if tx is not None and k == TX_RESPONSE and tx.status is not None:
                res.http_statuses.append(tx.status)
            if tx is not None:
                res.inspections.append(Inspection(ev.to_server, tx.tx_id,
                                                  _buffers(tx, ev.to_server)))
        elif k == TX_COMPLETE:
            tx = ev.data.get("tx")
            if tx is not None:
                res.inspections.append(Inspection(False, tx.tx_id, _buffers(tx, False)))
                res.records.append({"event_type": "http", "tx_id": tx.tx_id,
                                    "http": tx.eve()})
        elif k == FILE_CLOSED:
            f = ev.data.get("file")
            if f is not None:
                res.files.append(f)
                tx = st.parser.get_tx(f.tx_id) if hasattr(st.parser, "get_tx") else None
                if tx is not None:
                    res.inspections.append(Inspection(f.to_server, tx.tx_id,
                                                      _buffers(tx, f.to_server)))
                rec: dict[str, Any] = {"event_type": "fileinfo", "tx_id": f.tx_id,
                                       "fileinfo": f.eve()}
                if tx is not None:
                    rec["http"] = tx.eve()
                res.records.append(rec)
        elif k == DNS_QUERY or k == DNS_ANSWER:
            tx = ev.data.get("tx")
            if tx is not None:
                # dns.query is a request buffer (Suricata 7 inspects it to the server
                # only): an answer repeating the question must not match it again.
                bufs: Buffers = dict(tx.buffers()) if k == DNS_QUERY else {}
                if k == DNS_QUERY:
                    # dns.opcode / dns.rrtype keywords read these (as text numbers).
                    bufs["dns.opcode"] = str(tx.opcode).encode()
                    bufs["dns.rrtype"] = [str(t).encode() for t in tx.rrtypes]
                    res.dns_questions.extend((q.name, q.qtype) for q in tx.questions)
                if bufs:
                    res.inspections.append(Inspection(ev.to_server, tx.tx_id, bufs))
                for d in tx.eve():
                    res.records.append({"event_type": "dns", "tx_id": tx.tx_id, "dns": d})
        elif k.startswith("ftp_"):
            _ftp_event(flow, ev, res)
        elif k.startswith("h2_"):
            _h2_event(ev, res)
        elif k.startswith("smtp_"):
            _smtp_event(flow, st, ev, res)
        elif k == SMB_INSPECT:
            # app/smb.py: a transaction's (or a file's) sticky buffers, per direction.
            res.inspections.append(Inspection(ev.to_server, ev.tx_id, ev.data["buffers"]))
        elif k == SMB_RECORD:
            res.records.append(ev.data["record"])
        elif k == TLS_HANDSHAKE:
            res.inspections.append(Inspection(ev.to_server, 0,
                                              dict(st.parser.buffers(ev.to_server))))
        elif k == QUIC_TX:
            # app/quic.py: a hello (or the version) of one direction became known.
            res.inspections.append(Inspection(ev.to_server, ev.tx_id,
                                              st.parser.buffers(ev.to_server)))
        elif k == TLS_ENCRYPTED:
            res.encrypted = True
            _tls_record(flow, st, res)
        elif k == SSH_UPDATE:
            # One SSH transaction, inspected per direction (the client's banner and
            # HASSH to the server, the server's to the client): Suricata alerts once per
            # direction, so the server side gets its own id for the once-per-tx rule.
            # (Known gap: its alerts then say tx_id 1 where Suricata says 0.)
            res.inspections.append(Inspection(ev.to_server, 0 if ev.to_server else 1,
                                              dict(st.parser.buffers(ev.to_server))))
        elif k == SSH_ENCRYPTED:
            res.encrypted = True
            _ssh_record(flow, st, res)
        elif k == DCERPC_TX or k == DCERPC_BIND:
            _dcerpc_event(flow, ev, res)
        elif k == APP_TX:
            # mqtt, sip, krb5, snmp, nfs: a transaction's buffers, its record once done.
            d = ev.data
            tb = d.get("buffers")
            if tb:
                res.inspections.append(Inspection(ev.to_server, ev.tx_id, dict(tb)))
            if "eve" in d:
                et = d["event_type"]
                res.records.append({"event_type": et, "tx_id": ev.tx_id, et: d["eve"],
                                    **d.get("extra", {})})
            if "file" in d:
                res.files.append(d["file"])
            if "fileinfo" in d:
                res.records.append({"event_type": "fileinfo", "tx_id": ev.tx_id,
                                    "fileinfo": d["fileinfo"]})


def _ftp_event(flow: Flow, ev: AppEvent, res: AppResult) -> None:
    """app/ftp.py's events: control transactions, announced data connections, data."""
    k = ev.kind
    if k == "ftp_tx":
        tx = ev.data["tx"]
        if tx.bounce_ip is not None and tx.bounce_ip != flow.src:
            # PORT/EPRT naming another host than the client: the ftpbounce keyword.
            res.inspections.append(Inspection(True, tx.tx_id, {"ftpbounce": b"1"}))
        res.records.append({"event_type": "ftp", "tx_id": tx.tx_id, "ftp": tx.eve()})
    elif k == "ftp_expect":
        exp = ev.data["expect"]
        if exp.active:  # the server connects to the announced address
            exp.peer = flow.dst
            res.expected.append((exp.ip, exp))
        else:  # the client connects to the server
            exp.peer = flow.src
            res.expected.append((flow.dst, exp))
    elif k == "ftp_data":
        parser = ev.data["parser"]
        cmd = parser.command.lower()
        res.inspections.append(Inspection(ev.to_server, 0, {
            "file.data": bytes(parser.window), "ftpdata_command": cmd}))
        if not parser.logged:
            # ftpdata_command holds in both directions of the data connection (as
            # Suricata's): the other one is inspected once, at the first data.
            parser.logged = True
            res.inspections.append(Inspection(not ev.to_server, 0,
                                              {"ftpdata_command": cmd}))
    elif k == "ftp_data_done":
        res.records.append({"event_type": "ftp_data", "ftp_data": ev.data["parser"].eve()})


def _dcerpc_event(flow: Flow, ev: AppEvent, res: AppResult) -> None:
    """app/dcerpc.py (over TCP, UDP, or an SMB pipe): a call's buffers in the direction
    that progressed (request stub to the server, response stub to the client); its
    `dcerpc` record once both sides are done, on DCERPC flows only (Suricata logs
    DCERPC over SMB inside the smb record)."""
    tx = ev.data["tx"]
    conn = ev.data["conn"]
    if ev.kind == DCERPC_TX and not ev.data.get("final"):
        bufs = conn.buffers(tx, ev.to_server)
        if bufs:
            res.inspections.append(Inspection(ev.to_server,
                                              conn.inspect_id(tx, ev.to_server), bufs))
    if tx.done and not tx.logged and flow.app_proto == "dcerpc":
        tx.logged = True
        res.records.append({"event_type": "dcerpc", "tx_id": tx.tx_id,
                            "dcerpc": conn.eve(tx)})


def _smtp_event(flow: Flow, st: AppState, ev: AppEvent, res: AppResult) -> None:
    """app/smtp.py's events: inspections, attachments, transaction records, STARTTLS."""
    k = ev.kind
    if k == SMTP_UPDATE:
        tx = ev.data["tx"]
        res.inspections.append(Inspection(True, tx.tx_id, _buffers(tx, True)))
    elif k == SMTP_FILE or k == SMTP_TX:
        tx = ev.data["tx"]
        rec: dict[str, Any] = {"event_type": "smtp", "tx_id": tx.tx_id}
        if k == SMTP_FILE:
            f = ev.data["file"]
            res.files.append(f)
            rec = {"event_type": "fileinfo", "tx_id": tx.tx_id, "fileinfo": f.eve()}
        smtp = tx.eve_smtp()
        if smtp:
            rec["smtp"] = smtp
        email = tx.eve_email()
        if email:
            rec["email"] = email
        res.records.append(rec)
    elif k == SMTP_STARTTLS:
        # The server accepted STARTTLS (RFC 3207): the rest of the flow is TLS, as
        # Suricata's protocol upgrade makes it.
        tls = new_parser("tls")
        st.parser = tls
        flow.app_proto = "tls"
        if tls is not None:
            for side in (False, True):
                data = ev.data["ts" if side else "tc"]
                if data:
                    _events(flow, st, tls.feed(data, side), res)


def _h2_event(ev: AppEvent, res: AppResult) -> None:
    """app/http2.py: a stream's (or a stream 0 frame's) transaction changed in one
    direction, a file of it ended, or it is complete (its `http` record, with the
    `http2` object as Suricata 7 logs it)."""
    k = ev.kind
    tx = ev.data["tx"]
    if k == H2_INSPECT:
        res.inspections.append(Inspection(ev.to_server, tx.tx_id,
                                          _h2_buffers(tx, ev.to_server)))
        if ev.data.get("status") and tx.status is not None:
            res.http_statuses.append(tx.status)
    elif k == H2_FILE:
        f = ev.data["file"]
        res.files.append(f)
        res.inspections.append(Inspection(f.to_server, tx.tx_id, _h2_buffers(tx, f.to_server)))
        res.records.append({"event_type": "fileinfo", "tx_id": tx.tx_id,
                            "fileinfo": f.eve(), "http": tx.eve()})
    elif k == H2_DONE:
        res.records.append({"event_type": "http", "tx_id": tx.tx_id, "http": tx.eve()})


def _h2_buffers(tx: Any, to_server: bool) -> Buffers:
    b: Buffers = tx.buffers(to_server)
    files = [f for f in tx.files if f.to_server == to_server]
    if files:
        file_buffers(b, files)
    return b


def _h2c_upgrade(flow: Flow, st: AppState, res: AppResult) -> None:
    """A 101 answered an HTTP/1 request's "Upgrade: h2c" (RFC 7540 3.2): the flow is
    HTTP/2 from the byte after the 101, its request stream 1's (app/http2.py), as
    Suricata switches such a flow to http2."""
    from appliance.core.app.http2 import Http2Parser

    old = st.parser
    h1 = old.h2c
    old.h2c = None
    parser = Http2Parser(first_tx_id=max(tx.tx_id for tx in old.transactions) + 1)
    parser.file_budget = old.file_budget
    old.release_files()
    st.parser = parser
    flow.app_proto = "http2"
    out: list[AppEvent] = []
    parser.upgrade(h1.method, h1.uri_raw, h1.request_headers, out)
    _events(flow, st, out, res)
    rest = bytes(old.h2c_rest)
    if rest:
        _events(flow, st, parser.feed(rest, False), res)


def _tls_record(flow: Flow, st: AppState, res: AppResult) -> None:
    if flow.app_proto == "tls" and not st.tls_logged and st.parser is not None:
        eve = st.parser.eve()
        if eve:
            st.tls_logged = True
            res.records.append({"event_type": "tls", "tls": eve})


def _ssh_record(flow: Flow, st: AppState, res: AppResult) -> None:
    """The `ssh` record: once, when both sides are encrypted or at flow end."""
    if flow.app_proto == "ssh" and not st.tls_logged and st.parser is not None:
        eve = st.parser.eve()
        if eve:
            st.tls_logged = True  # (the flag means "the handshake record is logged")
            res.records.append({"event_type": "ssh", "tx_id": 0, "ssh": eve})


def wants(flow: Flow, proto: int) -> bool:
    """Whether this flow's protocol has anything for the app layer."""
    return proto == PROTO_TCP or proto == PROTO_UDP
