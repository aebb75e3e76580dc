"""Kerberos 5 parser (RFC 4120) over UDP and TCP port 88: message types, principals,
encryption types, errors.

One ``Krb5Parser`` per flow. Over UDP each datagram is one message
(``parse_datagram``); over TCP each message has a 4-byte big-endian length before it
(RFC 4120 7.2.2; the high bit is reserved and must be 0), and ``feed`` collects records
of at most ``MAX_RECORD`` bytes.

Messages (DER, RFC 4120 section 5, read with app/der.py): AS-REQ [APPLICATION 10],
AS-REP [11], TGS-REQ [12], TGS-REP [13], AP-REQ [14] and KRB-ERROR [30]. Each request
and each response is one transaction, as Suricata's krb5 parser keeps them:

- requests: msg_type, the client name (AS-REQ), realm, service name;
- replies: msg_type, the client name and realm, the ticket's service name, the
  encryption type of the ticket (``ticket_encryption``) and of the reply
  (``encryption``); a weak reply encryption is the ``weak_encryption`` event;
- KRB-ERROR: the error code, the request type that failed (the last request seen).

Sticky buffers: ``krb5_cname`` and ``krb5_sname`` (one element per name component,
as Suricata's multi-buffers); value keywords (rules/keywords.py): ``krb5_msg_type``,
``krb5_err_code``, ``krb5.ticket_encryption``. A message that does not parse is the
``malformed_data`` event (names as Suricata's krb5 app-layer events).
"""

from __future__ import annotations

from typing import Any, Final

from appliance.core.app import ANOMALY, APP_TX, AppEvent, DatagramParser, der

# A Kerberos message over TCP: tickets with large PACs reach tens of KiB; beyond this
# the record is taken as garbage (and never buffered).
MAX_RECORD: Final = 256 * 1024
# Name components kept per principal (real ones have 1-3).
MAX_COMPONENTS: Final = 16

MSG_TYPES: Final = {10: "KRB_AS_REQ", 11: "KRB_AS_REP", 12: "KRB_TGS_REQ",
                    13: "KRB_TGS_REP", 14: "KRB_AP_REQ", 15: "KRB_AP_REP",
                    30: "KRB_ERROR"}
# RFC 3961 / 4757 / 8009 / 6803 encryption type numbers and names (as Suricata logs them).
ETYPES: Final = {
    1: "des-cbc-crc", 2: "des-cbc-md4", 3: "des-cbc-md5", 5: "des3-cbc-md5",
    7: "des3-cbc-sha1", 16: "des3-cbc-sha1-kd", 17: "aes128-cts-hmac-sha1-96",
    18: "aes256-cts-hmac-sha1-96", 19: "aes128-cts-hmac-sha256-128",
    20: "aes256-cts-hmac-sha384-192", 23: "rc4-hmac", 24: "rc4-hmac-exp",
    25: "camellia128-cts-cmac", 26: "camellia256-cts-cmac",
}
# Suricata calls every other type weak.
STRONG_ETYPES: Final = frozenset({17, 18, 19, 20, 25, 26})
# RFC 4120 7.5.9 error codes Suricata names (the rest are logged as numbers).
ERRORS: Final = {
    6: "KDC_ERR_C_PRINCIPAL_UNKNOWN", 7: "KDC_ERR_S_PRINCIPAL_UNKNOWN",
    14: "KDC_ERR_ETYPE_NOSUPP", 18: "KDC_ERR_CLIENT_REVOKED", 23: "KDC_ERR_KEY_EXPIRED",
    24: "KDC_ERR_PREAUTH_FAILED", 25: "KDC_ERR_PREAUTH_REQUIRED", 31: "KRB_AP_ERR_BAD_INTEGRITY",
    32: "KRB_AP_ERR_TKT_EXPIRED", 37: "KRB_AP_ERR_SKEW", 41: "KRB_AP_ERR_MODIFIED",
    52: "KRB_ERR_RESPONSE_TOO_BIG", 60: "KRB_ERR_GENERIC", 68: "KDC_ERR_WRONG_REALM",
}


def etype_name(e: int) -> str:
    return ETYPES.get(e, f"UNKNOWN({e})")


class Tx:
    __slots__ = ("cname", "error_code", "etype", "failed_request", "msg_type", "realm",
                 "sname", "ticket_etype", "tx_id")

    def __init__(self, tx_id: int, msg_type: int) -> None:
        self.tx_id = tx_id
        self.msg_type = msg_type
        self.cname: list[bytes] = []
        self.sname: list[bytes] = []
        self.realm: bytes | None = None
        self.etype: int | None = None
        self.ticket_etype: int | None = None
        self.error_code: int | None = None
        self.failed_request: int | None = None

    def buffers(self) -> dict[str, bytes | list[bytes]]:
        b: dict[str, bytes | list[bytes]] = {"krb5_msg_type": str(self.msg_type).encode()}
        if self.cname:
            b["krb5_cname"] = list(self.cname)
        if self.sname:
            b["krb5_sname"] = list(self.sname)
        if self.error_code is not None:
            b["krb5_err_code"] = str(self.error_code).encode()
        if self.ticket_etype is not None:
            b["krb5.ticket_encryption"] = str(self.ticket_etype).encode()
        return b

    def eve(self) -> dict[str, Any]:
        o: dict[str, Any] = {"msg_type": MSG_TYPES.get(self.msg_type,
                                                       f"UNKNOWN({self.msg_type})")}
        if self.failed_request is not None:
            o["failed_request"] = MSG_TYPES.get(self.failed_request, "UNKNOWN")
            code = self.error_code if self.error_code is not None else -1
            o["error_code"] = ERRORS.get(code, f"UNKNOWN({code})")
        o["cname"] = "/".join(_text(c) for c in self.cname) if self.cname else "<empty>"
        o["realm"] = _text(self.realm) if self.realm is not None else "<empty>"
        o["sname"] = "/".join(_text(c) for c in self.sname) if self.sname else "<empty>"
        if self.etype is not None:
            o["encryption"] = etype_name(self.etype)
            o["weak_encryption"] = self.etype not in STRONG_ETYPES
        if self.ticket_etype is not None:
            o["ticket_encryption"] = etype_name(self.ticket_etype)
            o["ticket_weak_encryption"] = self.ticket_etype not in STRONG_ETYPES
        return o


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _principal(d: bytes, t: der.Tlv | None) -> list[bytes]:
    """PrincipalName ::= SEQUENCE { name-type [0] Int32, name-string [1] SEQUENCE OF
    KerberosString } -> its components."""
    seq = der.inner(d, t)
    if seq is None:
        return []
    f = der.context(d, seq)
    names = der.inner(d, f.get(1)) if f else None
    if names is None:
        return []
    kids = der.children(d, names, MAX_COMPONENTS) or []
    return [d[k.start : k.end] for k in kids]


def _int(d: bytes, t: der.Tlv | None) -> int | None:
    return der.integer(d, der.inner(d, t))


def _string(d: bytes, t: der.Tlv | None) -> bytes | None:
    return der.value(d, der.inner(d, t))


def _etype(d: bytes, t: der.Tlv | None) -> int | None:
    """EncryptedData ::= SEQUENCE { etype [0] Int32, kvno [1] OPTIONAL, cipher [2] }."""
    seq = der.inner(d, t)
    f = der.context(d, seq) if seq is not None else None
    return _int(d, f.get(0)) if f else None


class Krb5Parser(DatagramParser):
    """Kerberos 5 for one flow (UDP datagrams or TCP records)."""

    app_proto = "krb5"

    def __init__(self) -> None:
        self._buf = (bytearray(), bytearray())  # TCP, to_client / to_server
        self._skip = [0, 0]
        self.next_id = 0
        self.last_request: int | None = None

    def memuse(self) -> int:
        return len(self._buf[0]) + len(self._buf[1])

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]:
        out: list[AppEvent] = []
        i = 1 if to_server else 0
        try:
            self._feed(i, data, to_server, out)
        except Exception:  # principle 7
            self._buf[i].clear()
            out.append(AppEvent(ANOMALY, to_server, "malformed_data"))
        return out

    def _feed(self, i: int, data: bytes, to_server: bool, out: list[AppEvent]) -> None:
        if self._skip[i]:
            take = min(self._skip[i], len(data))
            self._skip[i] -= take
            data = data[take:]
        buf = self._buf[i]
        buf += data
        while len(buf) >= 4:
            n = int.from_bytes(buf[:4], "big")
            if n & 0x80000000 or n > MAX_RECORD:
                # Reserved bit set, or a record we will not hold: skip it whole.
                out.append(AppEvent(ANOMALY, to_server, "malformed_data"))
                n &= 0x7FFFFFFF
                have = len(buf) - 4
                self._skip[i] = max(0, n - have)
                del buf[: 4 + min(n, have)]
                continue
            if len(buf) < 4 + n:
                return
            msg = bytes(buf[4 : 4 + n])
            del buf[: 4 + n]
            self._datagram(msg, to_server, out)

    def _datagram(self, d: bytes, to_server: bool, out: list[AppEvent]) -> None:
        """One Kerberos message (a UDP payload, or a TCP record without its length)."""
        top = der.read(d, 0, len(d))
        if top is None or top.cls != der.APPLICATION or top.tag not in MSG_TYPES:
            out.append(AppEvent(ANOMALY, to_server, "malformed_data"))
            return
        seq = der.read(d, top.start, top.end)
        f = der.context(d, seq) if seq is not None else None
        if f is None:
            out.append(AppEvent(ANOMALY, to_server, "malformed_data"))
            return
        kind = top.tag
        if kind in (15,):  # AP-REP: nothing Suricata logs
            return
        tx = Tx(self.next_id, kind)
        self.next_id += 1
        if kind in (10, 12):  # KDC-REQ: pvno [1], msg-type [2], padata [3], req-body [4]
            self.last_request = kind
            body = der.inner(d, f.get(4))
            bf = der.context(d, body) if body is not None else None
            if bf:
                tx.cname = _principal(d, bf.get(1))
                tx.realm = _string(d, bf.get(2))
                tx.sname = _principal(d, bf.get(3))
        elif kind == 14:  # AP-REQ: ticket [3]
            self.last_request = kind
            self._ticket(d, f.get(3), tx)
        elif kind in (11, 13):  # KDC-REP: crealm [3], cname [4], ticket [5], enc-part [6]
            tx.realm = _string(d, f.get(3))
            tx.cname = _principal(d, f.get(4))
            self._ticket(d, f.get(5), tx)
            tx.etype = _etype(d, f.get(6))
            if tx.etype is not None and tx.etype not in STRONG_ETYPES:
                out.append(AppEvent(ANOMALY, to_server, "weak_encryption", tx.tx_id))
        else:  # KRB-ERROR: error-code [6], crealm [7], cname [8], realm [9], sname [10]
            tx.error_code = _int(d, f.get(6))
            tx.failed_request = self.last_request if self.last_request is not None else 0
            tx.cname = _principal(d, f.get(8))
            tx.realm = _string(d, f.get(9))
            tx.sname = _principal(d, f.get(10))
        out.append(AppEvent(APP_TX, to_server, "krb5", tx.tx_id, {
            "buffers": tx.buffers(), "event_type": "krb5", "eve": tx.eve()}))

    @staticmethod
    def _ticket(d: bytes, t: der.Tlv | None, tx: Tx) -> None:
        """Ticket ::= [APPLICATION 1] SEQUENCE { tkt-vno [0], realm [1], sname [2],
        enc-part [3] }."""
        app = der.inner(d, t)
        seq = der.inner(d, app) if app is not None else None
        f = der.context(d, seq) if seq is not None else None
        if not f:
            return
        tx.sname = _principal(d, f.get(2))
        tx.ticket_etype = _etype(d, f.get(3))


def probe_tcp(data: bytes) -> bool | None:
    """A record length then a Kerberos application tag."""
    if len(data) < 5:
        return None
    n = int.from_bytes(data[:4], "big")
    return not n & 0x80000000 and n <= MAX_RECORD and _krb_tag(data[4])


def probe_udp(data: bytes) -> bool:
    return len(data) > 2 and _krb_tag(data[0])


def _krb_tag(b: int) -> bool:
    return b >> 5 == 3 and (b & 0x1F) in MSG_TYPES  # [APPLICATION n], constructed
