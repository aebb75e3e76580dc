"""Application-layer protocol detection and parsers (sans-I/O: bytes in, events out).

Every parser is one object per flow. Stream protocols take in-order byte chunks of
any size per direction through ``feed(data, to_server)``; datagram protocols take one
UDP payload through ``parse_datagram(data, to_server)``. ``close()`` is called at flow
end. None of them raises on hostile input: malformed data becomes an ``AppEvent`` of
kind ``"anomaly"`` named as Suricata names the event (``REQUEST_HEADER_INVALID``,
``MALFORMED_DATA``, ...), so the engine can log it and apply policy.

The registry is an explicit list (DESIGN.md principle 6); protocol names are
Suricata's ``app_proto`` names so rule headers (``alert http ...``) and
``app-layer-protocol`` use the same words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

# Event kinds a parser can return.
ANOMALY: Final = "anomaly"
TX_REQUEST_LINE: Final = "request_line"  # a request line is parsed, headers to follow
TX_REQUEST: Final = "request"  # request line + headers of a transaction are parsed
TX_RESPONSE: Final = "response"  # response line + headers are parsed
TX_COMPLETE: Final = "tx_complete"  # both sides of a transaction are done
FILE_CLOSED: Final = "file"  # a file (HTTP body) ended: complete or truncated
DNS_QUERY: Final = "dns_query"
DNS_ANSWER: Final = "dns_answer"
TLS_HANDSHAKE: Final = "tls_handshake"  # a handshake message changed the TLS buffers
TLS_ENCRYPTED: Final = "tls_encrypted"  # both sides sent ChangeCipherSpec: nothing left to parse
# A transaction of the smaller parsers (mqtt, sip, krb5, snmp, nfs) progressed: ``data``
# holds its sticky "buffers" to inspect and, once it is to be logged, "event_type" and
# "eve" (its EVE object).
APP_TX: Final = "app_tx"


@dataclass(frozen=True, slots=True)
class AppEvent:
    """Something a parser saw. ``tx_id`` is -1 when no transaction applies."""

    kind: str
    to_server: bool
    name: str = ""
    tx_id: int = -1
    data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def anomaly(name: str, to_server: bool, tx_id: int = -1) -> AppEvent:
    return AppEvent(ANOMALY, to_server, name, tx_id)


class StreamParser(Protocol):
    """A parser for a byte stream (TCP): chunks arrive in order per direction."""

    app_proto: str

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]: ...

    def close(self) -> list[AppEvent]: ...

    def memuse(self) -> int:
        """Bytes of traffic this parser holds (buffers, kept bodies and headers): what
        counts against the app layer's memcap."""
        ...


class DatagramParser:
    """Base of the parsers that take UDP payloads (``parse_datagram``): it runs
    ``_datagram`` and turns any exception it raises into one ``ANOMALY`` named
    ``MALFORMED`` (DESIGN.md principle 7: a parser bug must not escape into the engine),
    keeping the events emitted before it. ``feed``/``close``/``memuse`` default to a
    parser that reads no stream and keeps nothing; subclasses override what they do."""

    app_proto: str
    MALFORMED: str = "malformed_data"

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]:
        return []

    def close(self) -> list[AppEvent]:
        return []

    def memuse(self) -> int:
        return 0

    def parse_datagram(self, data: bytes, to_server: bool) -> list[AppEvent]:
        out: list[AppEvent] = []
        try:
            self._datagram(data, to_server, out)
        except Exception:  # principle 7
            out.append(AppEvent(ANOMALY, to_server, self.MALFORMED))
        return out

    def _datagram(self, data: bytes, to_server: bool, out: list[AppEvent]) -> None:
        """Parse one UDP payload, appending its events to ``out``."""
        raise NotImplementedError


def _http() -> StreamParser:
    from appliance.core.app.http import HttpParser

    return HttpParser()


def _http2() -> StreamParser:
    from appliance.core.app.http2 import Http2Parser

    return Http2Parser()


def _tls() -> StreamParser:
    from appliance.core.app.tls import TlsParser

    return TlsParser()


def _ssh() -> StreamParser:
    from appliance.core.app.ssh import SshParser

    return SshParser()


def _dns() -> StreamParser:
    from appliance.core.app.dns import DnsParser

    return DnsParser()


def _ftp() -> StreamParser:
    from appliance.core.app.ftp import FtpParser

    return FtpParser()


def _smtp() -> StreamParser:
    from appliance.core.app.smtp import SmtpParser

    return SmtpParser()


def _dcerpc() -> StreamParser:
    from appliance.core.app.dcerpc import DcerpcParser

    return DcerpcParser()  # TCP (connection-oriented) and UDP (connectionless)


def _mqtt() -> StreamParser:
    from appliance.core.app.mqtt import MqttParser

    return MqttParser()


def _krb5() -> StreamParser:
    from appliance.core.app.krb5 import Krb5Parser

    return Krb5Parser()


def _sip() -> StreamParser:
    from appliance.core.app.sip import SipParser

    return SipParser()


def _snmp() -> StreamParser:
    from appliance.core.app.snmp import SnmpParser

    return SnmpParser()


def _nfs() -> StreamParser:
    from appliance.core.app.nfs import NfsParser

    return NfsParser()


def _smb() -> StreamParser:
    from appliance.core.app.smb import SmbParser

    return SmbParser()


def _quic() -> StreamParser:
    from appliance.core.app.quic import QuicParser

    return QuicParser()  # UDP only: parse_datagram


# app_proto -> parser factory. Protocols that detection recognises but that have no
# parser here (imap, pop3) are still recorded as the flow's app_proto.
PARSERS: Final[list[tuple[str, Callable[[], StreamParser]]]] = [
    ("http", _http),
    ("http2", _http2),  # prior knowledge; h2c upgrades start as http (applayer.py)
    ("tls", _tls),
    ("dns", _dns),
    ("ssh", _ssh),
    ("ftp", _ftp),  # its ftp-data flows start from its expectations (applayer.py)
    ("smtp", _smtp),  # an accepted STARTTLS hands the flow to TLS (applayer.py)
    ("dcerpc", _dcerpc),
    ("quic", _quic),
    ("smb", _smb),
    ("mqtt", _mqtt),
    ("krb5", _krb5),  # UDP datagrams and TCP records
    ("sip", _sip),  # UDP only
    ("snmp", _snmp),  # UDP only
    ("nfs", _nfs),  # UDP only
]

# Every name detection may return, in Suricata's spelling.
APP_PROTOS: Final = ("http", "http2", "tls", "dns", "ssh", "smtp", "ftp", "imap", "pop3", "dcerpc", "smb",
                    "mqtt", "krb5", "sip", "snmp", "nfs")
APP_PROTO_FAILED: Final = "failed"


def new_parser(app_proto: str) -> StreamParser | None:
    """A fresh parser for one flow, or None when the protocol has no parser."""
    for name, factory in PARSERS:
        if name == app_proto:
            return factory()
    return None


__all__ = [
    "ANOMALY",
    "APP_PROTOS",
    "APP_PROTO_FAILED",
    "APP_TX",
    "DNS_ANSWER",
    "DNS_QUERY",
    "FILE_CLOSED",
    "PARSERS",
    "TLS_ENCRYPTED",
    "TLS_HANDSHAKE",
    "TX_COMPLETE",
    "TX_REQUEST",
    "TX_REQUEST_LINE",
    "TX_RESPONSE",
    "AppEvent",
    "StreamParser",
    "anomaly",
    "new_parser",
]
