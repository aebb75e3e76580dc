"""SNMP parser (v1 RFC 1157, v2c RFC 1901/3416, v3 RFC 3412/3414) over UDP.

Each datagram is one message and one transaction (as Suricata's SNMP parser keeps them),
read with app/der.py:

- v1/v2c: ``SEQUENCE { version, community OCTET STRING, PDU }``;
- v3: ``SEQUENCE { version 3, msgGlobalData, msgSecurityParameters OCTET STRING, msgData }``
  where the security parameters hold the USM ``SEQUENCE { engineID, boots, time,
  userName, authParams, privParams }`` (RFC 3414 2.4) and msgData is a ScopedPDU or,
  with privacy, an encrypted OCTET STRING (``pdu_type`` "encrypted", as Suricata logs it);
- the PDU ([0] GetRequest ... [8] Report, RFC 3416 3) gives its type and the variable
  bindings' names (OIDs, dotted).

Sticky buffers: ``snmp.community``, ``snmp.usm``; value keywords ``snmp.version`` and
``snmp.pdu_type`` (rules/keywords.py). Events (Suricata's names): ``malformed_data``,
``unknown_security_model`` (v3 with a model other than USM, 3), ``version_mismatch`` (a
message whose version differs from the flow's first).
"""

from __future__ import annotations

from typing import Any, Final

from appliance.core.app import ANOMALY, APP_TX, AppEvent, DatagramParser, der

PDU_TYPES: Final = ("get_request", "get_next_request", "response", "set_request", "trap_v1",
                    "get_bulk_request", "inform_request", "trap_v2", "report")
# Variable bindings listed per message (EVE vars); real PDUs carry a few.
MAX_VARS: Final = 128


def _oid(b: bytes) -> str | None:
    """X.690 8.19: the first byte is 40*X+Y, then base-128 arcs."""
    if not b or len(b) > 128:
        return None
    arcs: list[int] = []
    v = 0
    for c in b:
        v = (v << 7) | (c & 0x7F)
        if not c & 0x80:
            arcs.append(v)
            v = 0
    first = arcs[0] if arcs else 0
    x = min(first // 40, 2)
    return ".".join(str(a) for a in (x, first - 40 * x, *arcs[1:]))


class Tx:
    __slots__ = ("community", "pdu_type", "tx_id", "usm", "vars", "version")

    def __init__(self, tx_id: int, version: int) -> None:
        self.tx_id = tx_id
        self.version = version
        self.community: bytes | None = None
        self.usm: bytes | None = None
        self.pdu_type: int | None = None  # None: encrypted (v3 with privacy)
        self.vars: list[str] = []

    def buffers(self) -> dict[str, bytes | list[bytes]]:
        b: dict[str, bytes | list[bytes]] = {"snmp.version": str(self.version).encode()}
        if self.community is not None:
            b["snmp.community"] = self.community
        if self.usm is not None:
            b["snmp.usm"] = self.usm
        if self.pdu_type is not None:
            b["snmp.pdu_type"] = str(self.pdu_type).encode()
        return b

    def eve(self) -> dict[str, Any]:
        o: dict[str, Any] = {"version": self.version}
        if self.pdu_type is None:
            o["pdu_type"] = "encrypted"
        else:
            o["pdu_type"] = PDU_TYPES[self.pdu_type]
        if self.vars:
            o["vars"] = list(self.vars)
        if self.community is not None:
            o["community"] = self.community.decode("utf-8", "replace")
        if self.usm is not None:
            o["usm"] = self.usm.decode("utf-8", "replace")
        return o


class SnmpParser(DatagramParser):
    """SNMP for one UDP flow."""

    app_proto = "snmp"

    def __init__(self) -> None:
        self.next_id = 0
        self.version: int | None = None

    # (memuse 0: nothing is kept between datagrams; SNMP over TCP, RFC 3430, is not
    # parsed: feed returns nothing)

    def _datagram(self, d: bytes, to_server: bool, out: list[AppEvent]) -> None:
        top = der.read(d, 0, len(d))
        kids = der.children(d, top, 8) if top is not None and top.tag == der.SEQUENCE \
            else None
        version = der.integer(d, kids[0]) if kids else None
        if kids is None or version not in (0, 1, 3) or len(kids) < 3:
            out.append(AppEvent(ANOMALY, to_server, "malformed_data"))
            return
        assert version is not None
        if self.version is None:
            self.version = version
        elif version != self.version:
            out.append(AppEvent(ANOMALY, to_server, "version_mismatch"))
        tx = Tx(self.next_id, 1 if version == 0 else 2 if version == 1 else 3)
        self.next_id += 1
        if version in (0, 1):
            c = kids[1]
            if c.tag != der.OCTET_STRING or c.cls != der.UNIVERSAL:
                out.append(AppEvent(ANOMALY, to_server, "malformed_data"))
                return
            tx.community = der.value(d, c)
            if not self._pdu(d, kids[2], tx):
                out.append(AppEvent(ANOMALY, to_server, "malformed_data"))
                return
        else:
            if len(kids) < 4 or not self._v3(d, kids, tx, to_server, out):
                out.append(AppEvent(ANOMALY, to_server, "malformed_data"))
                return
        out.append(AppEvent(APP_TX, to_server, "snmp", tx.tx_id, {
            "buffers": tx.buffers(), "event_type": "snmp", "eve": tx.eve()}))

    def _v3(self, d: bytes, kids: list[der.Tlv], tx: Tx, to_server: bool,
            out: list[AppEvent]) -> bool:
        glob = der.children(d, kids[1], 8)
        if not glob or len(glob) < 4:
            return False
        model = der.integer(d, glob[3])
        if model != 3:
            out.append(AppEvent(ANOMALY, to_server, "unknown_security_model"))
        else:
            sec = kids[2]
            if sec.tag != der.OCTET_STRING:
                return False
            usm = der.read(d, sec.start, sec.end)
            fields = der.children(d, usm, 8) if usm is not None else None
            if not fields or len(fields) < 6:
                return False
            tx.usm = der.value(d, fields[3])
        data = kids[3]
        if data.cls == der.UNIVERSAL and data.tag == der.OCTET_STRING:
            return True  # encrypted scopedPDU (RFC 3414 1.6: privacy)
        scoped = der.children(d, data, 8)
        if not scoped or len(scoped) < 3:
            return False
        return self._pdu(d, scoped[2], tx)

    @staticmethod
    def _pdu(d: bytes, pdu: der.Tlv, tx: Tx) -> bool:
        if pdu.cls != der.CONTEXT or pdu.tag >= len(PDU_TYPES):
            return False
        tx.pdu_type = pdu.tag
        fields = der.children(d, pdu, 8)
        if not fields:
            return False
        binds = fields[5] if pdu.tag == 4 and len(fields) > 5 else fields[-1]
        for vb in der.children(d, binds, MAX_VARS) or ():
            name = der.read(d, vb.start, vb.end)
            if name is not None and name.tag == der.OID:
                oid = _oid(d[name.start : name.end])
                if oid is not None:
                    tx.vars.append(oid)
        return True


def probe_udp(data: bytes) -> bool:
    """A SEQUENCE starting with a version INTEGER 0, 1 or 3."""
    top = der.read(data, 0, len(data))
    if top is None or top.tag != der.SEQUENCE or not top.constructed:
        return False
    v = der.read(data, top.start, top.end)
    return der.integer(data, v) in (0, 1, 3)
