"""MQTT parser (MQTT 3.1, 3.1.1 and 5.0 over TCP): messages, transactions, events.

One ``MqttParser`` per flow; ``feed(data, to_server)`` takes in-order stream bytes of
any size. Each direction is a sequence of control packets (MQTT 5.0 section 2.1): a
fixed header (type and flags in one byte, then the "remaining length" as a variable
byte integer of at most four bytes, section 1.5.5) and that many bytes of variable
header and payload, which are parsed per type with the protocol level the CONNECT
announced (5 adds properties, section 2.2.2).

Transactions and events follow Suricata's MQTT parser as its documentation describes
them (names as its ``mqtt.*`` app-layer events, lower case as it logs them):

- CONNECT opens a transaction that CONNACK completes (the session is then "connected");
  a CONNACK without one is ``missing_connect``, a second CONNECT ``double_connect``;
- PUBLISH with QoS 1/2, SUBSCRIBE and UNSUBSCRIBE wait for their acknowledgement by
  message id; an acknowledgement nobody waits for is ``missing_publish``,
  ``missing_subscribe`` or ``missing_unsubscribe``; QoS 3 is ``invalid_qos_level``;
  QoS > 0 without a message id ``missing_msg_id``;
- PUBLISH/SUBSCRIBE/UNSUBSCRIBE before the session is connected: ``unintroduced_message``;
- message type 0: ``unassigned_msg_type``;
- a message that cannot be parsed (bad remaining length, a field running past the
  message, an unknown MQTT 5 property, a property length beyond the message):
  ``malformed_traffic``, and the flow is not parsed any more (Suricata's parser
  returns an error then);
- more than ``MAX_OPEN_TX`` transactions waiting: ``too_many_transactions`` (the oldest
  is dropped).

A message longer than ``MAX_MSG_LEN`` is not buffered: it becomes a transaction marked
truncated and its bytes are skipped (Suricata's ``max-msg-length``, 1 MiB by default).

Each transaction is inspected when a message joins it (sticky buffers below) and its EVE
``mqtt`` record is written once it completes, or at flow end.
"""

from __future__ import annotations

from typing import Any, Final

from appliance.core.app import ANOMALY, APP_TX, AppEvent

# Suricata's app-layer.protocols.mqtt.max-msg-length default (1 MiB): a longer message
# is skipped, not kept, so one flow holds at most this much per direction.
MAX_MSG_LEN: Final = 1024 * 1024
# Transactions waiting for an acknowledgement (Suricata's mqtt max-tx defaults to 4096;
# a smaller bound keeps a hostile client's per-flow state small).
MAX_OPEN_TX: Final = 1024
# Bytes of a PUBLISH payload / will message kept for buffers and EVE (the rest is only
# counted): rules on mqtt.publish.message look at its start.
MAX_KEPT: Final = 64 * 1024
# Entries of a SUBSCRIBE/UNSUBSCRIBE topic list or MQTT 5 property list parsed.
MAX_LIST: Final = 1024

TYPE_NAMES: Final = ("unassigned", "connect", "connack", "publish", "puback", "pubrec",
                     "pubrel", "pubcomp", "subscribe", "suback", "unsubscribe", "unsuback",
                     "pingreq", "pingresp", "disconnect", "auth")
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
_CONNECT_ID: Final = -1  # the message id a CONNECT transaction waits under

# MQTT 5.0 section 2.2.2.2: property identifier -> value type.
_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
PROPERTIES: Final = {
    1: ("payload_format_indicator", _BYTE), 2: ("message_expiry_interval", _U32),
    3: ("content_type", _STR), 8: ("response_topic", _STR), 9: ("correlation_data", _BIN),
    11: ("subscription_identifier", _VARINT), 17: ("session_expiry_interval", _U32),
    18: ("assigned_client_identifier", _STR), 19: ("server_keep_alive", _U16),
    21: ("authentication_method", _STR), 22: ("authentication_data", _BIN),
    23: ("request_problem_information", _BYTE), 24: ("will_delay_interval", _U32),
    25: ("request_response_information", _BYTE), 26: ("response_information", _STR),
    28: ("server_reference", _STR), 31: ("reason_string", _STR),
    33: ("receive_maximum", _U16), 34: ("topic_alias_maximum", _U16),
    35: ("topic_alias", _U16), 36: ("maximum_qos", _BYTE), 37: ("retain_available", _BYTE),
    38: ("user_property", _PAIR), 39: ("maximum_packet_size", _U32),
    40: ("wildcard_subscription_available", _BYTE),
    41: ("subscription_identifier_available", _BYTE),
    42: ("shared_subscription_available", _BYTE),
}


class _Bad(Exception):
    """A field runs past its message or holds an impossible value (caught in feed)."""


class _Reader:
    __slots__ = ("d", "end", "pos")

    def __init__(self, d: bytes) -> None:
        self.d = d
        self.pos = 0
        self.end = len(d)

    def left(self) -> int:
        return self.end - self.pos

    def u8(self) -> int:
        if self.pos >= self.end:
            raise _Bad
        self.pos += 1
        return self.d[self.pos - 1]

    def u16(self) -> int:
        return (self.u8() << 8) | self.u8()

    def u32(self) -> int:
        return (self.u16() << 16) | self.u16()

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise _Bad
        self.pos += n
        return self.d[self.pos - n : self.pos]

    def binary(self) -> bytes:
        return self.take(self.u16())

    def varint(self) -> int:
        """MQTT 5.0 1.5.5: 7 bits a byte, at most four bytes."""
        v = 0
        for i in range(4):
            b = self.u8()
            v |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                return v
        raise _Bad

    def properties(self) -> dict[str, Any]:
        n = self.varint()
        if n > self.left():
            raise _Bad  # a property length beyond the message (mqtt5-excessiveproplen)
        end = self.pos + n
        saved, self.end = self.end, end
        props: dict[str, Any] = {}
        count = 0
        while self.pos < end:
            count += 1
            if count > MAX_LIST:
                raise _Bad
            pid = self.varint()
            spec = PROPERTIES.get(pid)
            if spec is None:
                raise _Bad  # section 2.2.2.2: an unknown identifier is malformed
            name, kind = spec
            value: Any
            if kind == _BYTE:
                value = self.u8()
            elif kind == _U16:
                value = self.u16()
            elif kind == _U32:
                value = self.u32()
            elif kind == _VARINT:
                value = self.varint()
            elif kind == _STR or kind == _BIN:
                value = _text(self.binary())
            else:
                k = _text(self.binary())
                value = {k: _text(self.binary())}
            if name == "user_property" and name in props:
                props[name].update(value)
            else:
                props[name] = value
        self.end = saved
        return props


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


class Message:
    """One parsed control packet."""

    __slots__ = ("dup", "fields", "msg_id", "qos", "retain", "truncated", "type")

    def __init__(self, mtype: int, flags: int) -> None:
        self.type = mtype
        self.dup = bool(flags & 8)
        self.qos = (flags >> 1) & 3
        self.retain = bool(flags & 1)
        self.msg_id: int | None = None
        self.truncated = 0  # skipped length of a message over MAX_MSG_LEN
        self.fields: dict[str, Any] = {}

    def eve(self) -> dict[str, Any]:
        o: dict[str, Any] = {"qos": self.qos, "retain": self.retain, "dup": self.dup}
        if self.msg_id is not None and self.type not in (CONNECT, CONNACK):
            o["message_id"] = self.msg_id
        if self.truncated:
            o["truncated"] = True
            o["skipped_length"] = self.truncated
        for k, v in self.fields.items():
            o[k] = _text(v) if isinstance(v, bytes) else v
        return o


class Tx:
    __slots__ = ("complete", "events", "logged", "msgs", "tx_id", "wait_id")

    def __init__(self, tx_id: int) -> None:
        self.tx_id = tx_id
        self.msgs: list[Message] = []
        self.complete = False
        self.wait_id: int | None = None  # message id an acknowledgement must carry
        self.events: list[str] = []
        self.logged = False

    def buffers(self) -> dict[str, bytes | list[bytes]]:
        """Suricata's mqtt sticky buffers, from this transaction's messages."""
        b: dict[str, bytes | list[bytes]] = {}
        types: list[bytes] = []
        for m in self.msgs:
            f = m.fields
            types.append(TYPE_NAMES[m.type].encode())
            if m.type == CONNECT:
                for key, name in (("client_id", "mqtt.connect.clientid"),
                                  ("username", "mqtt.connect.username"),
                                  ("password", "mqtt.connect.password")):
                    if key in f:
                        b[name] = f[key]
                will = f.get("will")
                if isinstance(will, dict):
                    if "topic_raw" in will:
                        b["mqtt.connect.willtopic"] = will["topic_raw"]
                    if "message_raw" in will:
                        b["mqtt.connect.willmessage"] = will["message_raw"]
            elif m.type == PUBLISH:
                if "topic" in f:
                    b["mqtt.publish.topic"] = f["topic"]
                if "message" in f:
                    b["mqtt.publish.message"] = f["message"]
            elif m.type in (SUBSCRIBE, UNSUBSCRIBE):
                topics = f.get("topics") or []
                name = "mqtt.subscribe.topic" if m.type == SUBSCRIBE else \
                    "mqtt.unsubscribe.topic"
                b[name] = [(t["topic"] if isinstance(t, dict) else t).encode()
                           for t in topics]
        b["mqtt.type"] = types
        return b

    def eve(self) -> dict[str, Any]:
        o: dict[str, Any] = {}
        for m in self.msgs:
            e = m.eve()
            will = e.get("will")
            if isinstance(will, dict):
                e["will"] = {k: v for k, v in will.items() if not k.endswith("_raw")}
            for k in ("client_id", "username", "password", "topic", "message"):
                if isinstance(e.get(k), bytes):
                    e[k] = _text(e[k])
            o[TYPE_NAMES[m.type]] = e
        return o


class _Dir:
    __slots__ = ("buf", "need", "skip")

    def __init__(self) -> None:
        self.buf = bytearray()  # an incomplete message (at most MAX_MSG_LEN + 5 bytes)
        self.need = 0  # its whole length once its fixed header is known
        self.skip = 0  # bytes of a too-long message still to skip


class MqttParser:
    """MQTT for one flow."""

    app_proto = "mqtt"

    def __init__(self) -> None:
        self._dirs = (_Dir(), _Dir())  # to_client, to_server
        self.failed = False
        self.connected = False
        self.protocol_version = 0
        self.open: list[Tx] = []  # transactions waiting for an acknowledgement
        self.next_id = 0

    def memuse(self) -> int:
        return sum(len(d.buf) for d in self._dirs) + 256 * len(self.open)

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]:
        out: list[AppEvent] = []
        if self.failed or not data:
            return out
        d = self._dirs[1 if to_server else 0]
        try:
            self._feed(d, data, to_server, out)
        except Exception:  # principle 7: a bug must not escape into the engine
            self._fail(to_server, out)
        return out

    def close(self) -> list[AppEvent]:
        """Flow end: the transactions still waiting are logged as they are."""
        out: list[AppEvent] = []
        for tx in self.open:
            self._emit(tx, tx.msgs[-1] if tx.msgs else None, True, out, log=True)
        self.open = []
        return out

    # parsing ---------------------------------------------------------------------------

    def _fail(self, to_server: bool, out: list[AppEvent]) -> None:
        out.append(AppEvent(ANOMALY, to_server, "malformed_traffic"))
        self.failed = True
        for d in self._dirs:
            d.buf = bytearray()
        self.open = []

    def _feed(self, d: _Dir, data: bytes, to_server: bool, out: list[AppEvent]) -> None:
        if d.skip:  # the rest of a message over MAX_MSG_LEN
            take = min(d.skip, len(data))
            d.skip -= take
            data = data[take:]
        if not data:
            return
        if d.buf and len(d.buf) + len(data) < d.need:
            d.buf += data  # still inside one message: no re-parse (no quadratic cost)
            return
        buf = bytes(d.buf) + data if d.buf else data
        d.buf = bytearray()
        d.need = 0
        used = self._messages(d, buf, to_server, out)
        if not self.failed and used < len(buf):
            d.buf = bytearray(buf[used:])

    def _messages(self, d: _Dir, buf: bytes, to_server: bool, out: list[AppEvent]) -> int:
        """Parse whole messages from ``buf``; returns the bytes used."""
        pos = 0
        n = len(buf)
        while pos < n:
            if n - pos < 2:
                return pos
            # Remaining length: up to four bytes (section 2.1.4).
            rl = 0
            i = pos + 1
            for shift in (0, 7, 14, 21):
                if i >= n:
                    return pos  # the length is not complete yet
                b = buf[i]
                i += 1
                rl |= (b & 0x7F) << shift
                if not b & 0x80:
                    break
            else:
                self._fail(to_server, out)  # a fifth length byte
                return n
            mtype, flags = buf[pos] >> 4, buf[pos] & 0x0F
            if rl > MAX_MSG_LEN:
                m = Message(mtype, flags)
                m.truncated = (i - pos) + rl
                self._handle(m, to_server, out)
                avail = n - i
                if avail >= rl:
                    pos = i + rl
                    continue
                d.skip = rl - avail
                return n
            if n - i < rl:
                d.need = (i - pos) + rl
                return pos
            body = buf[i : i + rl]
            try:
                m = self._parse(mtype, flags, body)
            except _Bad:
                self._fail(to_server, out)
                return n
            pos = i + rl
            self._handle(m, to_server, out)
        return pos

    def _parse(self, mtype: int, flags: int, body: bytes) -> Message:
        m = Message(mtype, flags)
        r = _Reader(body)
        f = m.fields
        v5 = self.protocol_version == 5
        if mtype == CONNECT:
            f["protocol_string"] = _text(r.binary())
            level = r.u8()
            f["protocol_version"] = level
            cflags = r.u8()
            r.u16()  # keep alive
            f["flags"] = {"username": bool(cflags & 0x80), "password": bool(cflags & 0x40),
                          "will_retain": bool(cflags & 0x20), "will": bool(cflags & 0x04),
                          "clean_session": bool(cflags & 0x02)}
            if level == 5:
                f["properties"] = r.properties()
            f["client_id"] = r.binary()
            if cflags & 0x04:
                will: dict[str, Any] = {}
                if level == 5:
                    will["properties"] = r.properties()
                will["topic_raw"] = r.binary()
                will["message_raw"] = r.binary()[:MAX_KEPT]
                will["topic"] = _text(will["topic_raw"])
                will["message"] = _text(will["message_raw"])
                f["will"] = will
            if cflags & 0x80:
                f["username"] = r.binary()
            if cflags & 0x40:
                f["password"] = r.binary()
            if cflags & 0x01:
                raise _Bad  # 3.1.2.3: the reserved flag must be 0
            self.protocol_version = level
        elif mtype == CONNACK:
            f["session_present"] = bool(r.u8() & 1)
            f["return_code"] = r.u8()
            if v5 and r.left():
                f["properties"] = r.properties()
        elif mtype == PUBLISH:
            f["topic"] = r.binary()
            if m.qos in (1, 2):
                m.msg_id = r.u16()
            if v5:
                f["properties"] = r.properties()
            f["message"] = r.take(r.left())[:MAX_KEPT]
        elif mtype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            m.msg_id = r.u16()
            if v5 and r.left():
                f["reason_code"] = r.u8()
                if r.left():
                    r.properties()
        elif mtype in (SUBSCRIBE, UNSUBSCRIBE):
            m.msg_id = r.u16()
            if v5:
                r.properties()
            topics: list[Any] = []
            while r.left():
                if len(topics) >= MAX_LIST:
                    raise _Bad
                t = _text(r.binary())
                topics.append({"topic": t, "qos": r.u8() & 3} if mtype == SUBSCRIBE else t)
            if topics:
                f["topics"] = topics
        elif mtype in (SUBACK, UNSUBACK):
            m.msg_id = r.u16()
            if v5:
                r.properties()
            codes = list(r.take(min(r.left(), MAX_LIST)))
            if codes and (mtype == SUBACK or v5):
                f["qos_granted" if mtype == SUBACK else "reason_codes"] = codes
        elif mtype in (14, 15) and v5 and r.left():  # DISCONNECT, AUTH
            f["reason_code"] = r.u8()
            if r.left():
                f["properties"] = r.properties()
        return m

    # transactions ----------------------------------------------------------------------

    def _new(self, m: Message) -> Tx:
        tx = Tx(self.next_id)
        self.next_id += 1
        tx.msgs.append(m)
        return tx

    def _find(self, msg_id: int | None) -> Tx | None:
        if msg_id is None:
            return None
        for tx in self.open:
            if tx.wait_id == msg_id:
                return tx
        return None

    def _wait(self, tx: Tx, msg_id: int, to_server: bool, out: list[AppEvent]) -> None:
        tx.wait_id = msg_id
        if len(self.open) >= MAX_OPEN_TX:
            old = self.open.pop(0)
            out.append(AppEvent(ANOMALY, to_server, "too_many_transactions", old.tx_id))
            self._emit(old, None, to_server, out, log=True)
        self.open.append(tx)

    def _handle(self, m: Message, to_server: bool, out: list[AppEvent]) -> None:
        t = m.type
        if m.truncated:
            self._emit(self._new(m), m, to_server, out, log=True)
            return
        if t == 0:
            tx = self._new(m)
            tx.events.append("unassigned_msg_type")
            self._emit(tx, m, to_server, out, log=True)
        elif t == CONNECT:
            tx = self._new(m)
            if self.connected:
                tx.events.append("double_connect")
            self._wait(tx, _CONNECT_ID, to_server, out)
            self._emit(tx, m, to_server, out, log=False)
        elif t == CONNACK:
            found = self._find(_CONNECT_ID)
            if found is not None:
                self._ack(found, m, to_server, out)
                self.connected = True
            else:
                tx = self._new(m)
                tx.events.append("missing_connect")
                self._emit(tx, m, to_server, out, log=True)
        elif t == PUBLISH:
            tx = self._new(m)
            if not self.connected:
                tx.events.append("unintroduced_message")
            if m.qos == 0:
                self._emit(tx, m, to_server, out, log=True)
            elif m.qos == 3:
                tx.events.append("invalid_qos_level")
                self._emit(tx, m, to_server, out, log=True)
            elif m.msg_id is None:
                tx.events.append("missing_msg_id")
                self._emit(tx, m, to_server, out, log=True)
            else:
                self._wait(tx, m.msg_id, to_server, out)
                self._emit(tx, m, to_server, out, log=False)
        elif t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            found = self._find(m.msg_id)
            if found is None:
                tx = self._new(m)
                tx.events.append("missing_publish")
                if not self.connected:
                    tx.events.append("unintroduced_message")
                self._emit(tx, m, to_server, out, log=True)
            elif t in (PUBREC, PUBREL):  # QoS 2: PUBCOMP ends the exchange
                found.msgs.append(m)
                self._emit(found, m, to_server, out, log=False)
            else:
                self._ack(found, m, to_server, out)
        elif t in (SUBSCRIBE, UNSUBSCRIBE):
            tx = self._new(m)
            if not self.connected:
                tx.events.append("unintroduced_message")
            if m.msg_id is None:  # (always parsed; kept for symmetry with PUBLISH)
                self._emit(tx, m, to_server, out, log=True)
            else:
                self._wait(tx, m.msg_id, to_server, out)
                self._emit(tx, m, to_server, out, log=False)
        elif t in (SUBACK, UNSUBACK):
            found = self._find(m.msg_id)
            if found is None or found.msgs[0].type != t - 1:
                tx = self._new(m)
                tx.events.append("missing_subscribe" if t == SUBACK else
                                 "missing_unsubscribe")
                self._emit(tx, m, to_server, out, log=True)
            else:
                self._ack(found, m, to_server, out)
        else:  # PINGREQ, PINGRESP, DISCONNECT, AUTH: one message, one transaction
            tx = self._new(m)
            self._emit(tx, m, to_server, out, log=True)

    def _ack(self, tx: Tx, m: Message, to_server: bool, out: list[AppEvent]) -> None:
        tx.msgs.append(m)
        tx.wait_id = None
        if tx in self.open:
            self.open.remove(tx)
        self._emit(tx, m, to_server, out, log=True)

    def _emit(self, tx: Tx, m: Message | None, to_server: bool, out: list[AppEvent],
              log: bool) -> None:
        """Events of a transaction that a message changed: its anomalies (once), an
        inspection of its buffers, and its EVE record once complete."""
        for name in tx.events:
            out.append(AppEvent(ANOMALY, to_server, name, tx.tx_id))
        tx.events = []
        data: dict[str, Any] = {"buffers": tx.buffers()}
        if log and not tx.logged:
            tx.complete = tx.logged = True
            data["event_type"] = "mqtt"
            data["eve"] = tx.eve()
        out.append(AppEvent(APP_TX, to_server, "mqtt", tx.tx_id, data))


def probe(data: bytes) -> bool | None:
    """Suricata's MQTT probe: a fixed header of an assigned type with a valid QoS.
    None: not enough bytes yet."""
    if len(data) < 2:
        return None
    if data[0] >> 4 == 0 or (data[0] >> 1) & 3 == 3:
        return False
    for i in range(1, 5):
        if i >= len(data):
            return None
        if not data[i] & 0x80:
            return True
    return False
