"""SIP parser (RFC 3261) over UDP: each datagram one message, each message one
transaction (as Suricata's SIP parser keeps them).

The start line is read as RFC 3261 section 7.1/7.2 define it:

- a request ``Method SP Request-URI SP SIP-Version CRLF`` in the to-server direction,
- a response ``SIP-Version SP Status-Code SP Reason-Phrase CRLF`` in the to-client
  direction,

then the header fields up to the empty line (section 7.3; the body is not parsed).
Suricata parses requests in the to-server direction and responses in the other, so a
message of the other kind (or a keep-alive of blanks) is ``invalid_data``; a message whose
headers do not end is ``incomplete_data`` (Suricata's SIP event names).

Sticky buffers: requests ``sip.method``, ``sip.uri``, ``sip.request_line``,
``sip.protocol``; responses ``sip.stat_code``, ``sip.stat_msg``, ``sip.response_line``,
``sip.protocol``; and Suricata's SIP frames (``frame:pdu``, ``frame:request.line`` ...,
see FRAMES). EVE ``sip`` records as Suricata's: method, uri, version, request_line or
version, code, reason, response_line.
"""

from __future__ import annotations

import re
from typing import Any, Final

from appliance.core.app import ANOMALY, APP_TX, AppEvent, DatagramParser

# A SIP message over UDP fits a datagram (RFC 3261 18.1.1 asks for TCP above ~1300 bytes);
# header lines beyond this count are not read.
MAX_HEADERS: Final = 256

# RFC 3261 25.1: Method = token; SIP-Version = "SIP/" 1*DIGIT "." 1*DIGIT.
_REQUEST: Final = re.compile(rb"([A-Za-z]+) ([^ \x00-\x1f\x7f]+) (SIP/[0-9]+\.[0-9]+)")
_RESPONSE: Final = re.compile(rb"(SIP/[0-9]+\.[0-9]+) ([0-9]{3}) ([^\x00-\x08\x0a-\x1f\x7f]*)")


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


# Suricata's SIP frames (the `frame` keyword), as sticky buffers of the message: the
# whole datagram, the start line with its CRLF, the header fields (each with its CRLF,
# not the empty line) and the body after the empty line; a frame with no bytes is absent.
FRAMES: Final = ("sip.pdu", "sip.request.line", "sip.request.headers", "sip.request.body",
                 "sip.response.line", "sip.response.headers", "sip.response.body")


class Message:
    __slots__ = ("body_at", "data", "fields", "headers_end", "line", "request")

    def __init__(self, request: bool, line: bytes, fields: tuple[bytes, ...],
                 data: bytes = b"", headers_end: int = 0, body_at: int = 0) -> None:
        self.request = request
        self.line = line
        self.fields = fields
        self.data = data
        self.headers_end = headers_end  # where the empty line starts
        self.body_at = body_at  # just after the empty line

    def frames(self) -> dict[str, bytes | list[bytes]]:
        kind = "request" if self.request else "response"
        line_end = len(self.line) + 2
        parts = {"sip.pdu": self.data,
                 f"sip.{kind}.line": self.data[:line_end],
                 f"sip.{kind}.headers": self.data[line_end:self.headers_end],
                 f"sip.{kind}.body": self.data[self.body_at:]}
        return {f"frame:{name}": b for name, b in parts.items() if b}

    def buffers(self) -> dict[str, bytes | list[bytes]]:
        if self.request:
            method, uri, version = self.fields
            return {"sip.method": method, "sip.uri": uri, "sip.protocol": version,
                    "sip.request_line": self.line, **self.frames()}
        version, code, reason = self.fields
        return {"sip.protocol": version, "sip.stat_code": code, "sip.stat_msg": reason,
                "sip.response_line": self.line, **self.frames()}

    def eve(self) -> dict[str, Any]:
        if self.request:
            method, uri, version = self.fields
            return {"method": _text(method), "uri": _text(uri), "version": _text(version),
                    "request_line": _text(self.line)}
        version, code, reason = self.fields
        return {"version": _text(version), "code": _text(code), "reason": _text(reason),
                "response_line": _text(self.line)}


def parse_message(data: bytes, request: bool) -> Message | str:
    """The message, or the name of the event it raises."""
    end = data.find(b"\r\n")
    if end < 0:
        return "incomplete_data" if data.startswith(b"SIP/") or _REQUEST.match(data) \
            else "invalid_data"
    line = data[:end]
    m = (_REQUEST if request else _RESPONSE).fullmatch(line)
    if m is None:
        return "invalid_data"
    # Header fields up to the empty line (RFC 3261 7.3): "name: value" each.
    pos = end + 2
    for _ in range(MAX_HEADERS):
        nl = data.find(b"\r\n", pos)
        if nl < 0:
            return "incomplete_data"
        if nl == pos:
            break
        if b":" not in data[pos:nl] and data[pos : pos + 1] not in (b" ", b"\t"):
            return "invalid_data"
        pos = nl + 2
    else:
        # More header lines than MAX_HEADERS: the rest is not read as headers or body.
        return Message(request, line, (m.group(1), m.group(2), m.group(3)), data, pos,
                       len(data))
    return Message(request, line, (m.group(1), m.group(2), m.group(3)), data, pos, pos + 2)


class SipParser(DatagramParser):
    """SIP for one UDP flow."""

    app_proto = "sip"
    MALFORMED = "invalid_data"  # a parser bug (DatagramParser.parse_datagram)

    def __init__(self) -> None:
        self.next_id = 0

    # (memuse 0: nothing is kept between datagrams; SIP over TCP is not parsed, detection
    # only offers UDP flows to this parser: feed returns nothing)

    def _datagram(self, data: bytes, to_server: bool, out: list[AppEvent]) -> None:
        r = parse_message(data, to_server)
        if isinstance(r, str):
            out.append(AppEvent(ANOMALY, to_server, r))
            return
        tx_id = self.next_id
        self.next_id += 1
        out.append(AppEvent(APP_TX, to_server, "sip", tx_id, {
            "buffers": r.buffers(), "event_type": "sip", "eve": r.eve()}))


def probe_udp(data: bytes) -> bool:
    """A SIP start line (either kind)."""
    end = data.find(b"\r\n", 0, 2048)
    if end < 0:
        return False
    line = data[:end]
    return bool(_REQUEST.fullmatch(line) or _RESPONSE.fullmatch(line))
