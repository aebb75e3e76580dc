"""TLS handshake parser (RFC 5246, RFC 8446) with JA3/JA3S and a small X.509 reader.

One ``TlsParser`` per flow. ``feed(data, to_server)`` takes in-order stream bytes of
any size: records (RFC 8446 section 5.1) may be split across segments or coalesced,
and handshake messages may span records (section 5.1: "handshake messages may be
fragmented across several records"). It extracts what Suricata's TLS keywords read:
SNI, version, the server certificate (subject, issuer, serial, validity, SAN, SHA-1
fingerprint), JA3 and JA3S (https://github.com/salesforce/ja3: GREASE values, RFC
8701, are skipped). Once both sides switched to encrypted records nothing more can be
inspected: ``encrypted`` becomes True and a ``TLS_ENCRYPTED`` event tells the engine it
may bypass the flow.

Malformed input becomes Suricata's TLS app-layer event names (the ``tls.<name>`` of
``app-layer-event``, Suricata's tls-events.rules), each with a trigger:

- record layer: ``INVALID_RECORD_TYPE`` (content type not 20-24),
  ``INVALID_RECORD_VERSION`` (major version not 3), ``INVALID_RECORD_LENGTH`` (longer
  than RFC 8446 5.2 allows), ``TOO_MANY_RECORDS_IN_PACKET`` (more than
  MAX_RECORDS_PER_CHUNK records in one delivery);
- handshake: ``HANDSHAKE_INVALID_LENGTH`` (a message longer than MAX_HANDSHAKE_LEN),
  ``INVALID_HANDSHAKE_MESSAGE`` (a hello or certificate message that does not parse),
  ``MULTIPLE_SNI_EXTENSIONS``, ``INVALID_SNI_TYPE``, ``INVALID_SNI_LENGTH``;
- certificates (either side's): ``CERTIFICATE_INVALID_LENGTH`` (a length that runs past
  the message, or a DER header cut short), ``INVALID_CERTIFICATE`` (DER that does not
  parse: a value running past its container, wrong tags, bad times),
  ``CERTIFICATE_MISSING_ELEMENT`` (tbsCertificate without its mandatory fields),
  ``CERTIFICATE_UNKNOWN_ELEMENT`` (a tbsCertificate field X.509 v3 does not define);
- heartbeats (RFC 6520): ``HEARTBEAT_MESSAGE`` (any), ``INVALID_HEARTBEAT_MESSAGE``
  (clear text, type not request/response or too short), ``OVERFLOW_HEARTBEAT_MESSAGE``
  (clear text, payload_length beyond the record: Heartbleed, CVE-2014-0160),
  ``DATALEAK_HEARTBEAT_MISMATCH`` (encrypted: the answer's record is longer than the
  request's, what a Heartbleed answer looks like);
- ``INVALID_SSL_RECORD``: a parser bug caught (never expected).

Not raised (no parser for what triggers them here): ``INVALID_SSLV2_HEADER`` and
``ERROR_MESSAGE_ENCOUNTERED`` (SSLv2 records are recognised, not parsed),
``INVALID_TLS_HEADER``, ``CERTIFICATE_INVALID_STRING``.

After the handshake, records are still framed (header only, payload skipped without
buffering) to see encrypted heartbeats; a header that does not parse there ends parsing
of that direction without an event, since reassembly does not tell the parser about gaps
and a capture's missing segment would desynchronise the framing.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any, Final

from appliance.core.app import ANOMALY, TLS_ENCRYPTED, TLS_HANDSHAKE, AppEvent

# --- limits ----------------------------------------------------------------------------

# RFC 8446 section 5.2: a record is at most 2^14 + 256 bytes (2^14 + 2048 in TLS 1.2
# for ciphertext, RFC 5246 6.2.3). Longer means not TLS or an attack:
# INVALID_RECORD_LENGTH and the direction stops being parsed.
MAX_RECORD_LEN: Final = 2**14 + 2048
# One handshake message (a certificate chain is the biggest: usually 3-10 KiB; the
# 24-bit length allows 16 MiB). Beyond this, HANDSHAKE_INVALID_LENGTH and the message is
# skipped, so a peer cannot make us buffer megabytes.
MAX_HANDSHAKE_LEN: Final = 256 * 1024
# Certificates parsed per chain: real chains have 2-4.
MAX_CERTS: Final = 16
# DER nesting depth walked when reading names and extensions.
MAX_DER_DEPTH: Final = 16
# Records in one delivery of stream bytes before TOO_MANY_RECORDS_IN_PACKET (Suricata's
# limit is 255 records per packet): thousands of empty records in one segment are a
# parser-exhaustion attempt, not TLS.
MAX_RECORDS_PER_CHUNK: Final = 255
# RFC 6520 section 4: a HeartbeatMessage is type (1) + payload_length (2) + payload +
# at least 16 bytes of padding.
_HB_MIN_PADDING: Final = 16

_CT_CCS: Final = 20
_CT_ALERT: Final = 21
_CT_HANDSHAKE: Final = 22
_CT_APPDATA: Final = 23
_CT_HEARTBEAT: Final = 24

_HS_CLIENT_HELLO: Final = 1
_HS_SERVER_HELLO: Final = 2
_HS_CERTIFICATE: Final = 11

_REC: Final = struct.Struct("!BHH")


def is_grease(v: int) -> bool:
    """RFC 8701 GREASE values: 0x0a0a, 0x1a1a, ... 0xfafa."""
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def version_name(v: int) -> str:
    """Suricata's names for protocol versions in EVE."""
    names = {0x0200: "SSLv2", 0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLS 1.1",
             0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}
    if v in names:
        return names[v]
    if (v >> 8) == 0x7F:
        return f"TLS 1.3 draft-{v & 0xFF}"
    if (v >> 8) == 0xFB:  # Facebook's fizz drafts: 0xfb1a is draft 26
        return f"TLS 1.3 draft-{v & 0xFF}-fb"
    return "UNDETERMINED"


# --- a minimal, tolerant DER reader ---------------------------------------------------


# Suricata's certificate event names (app-layer-event:tls.<lowercase>).
CERT_INVALID: Final = "INVALID_CERTIFICATE"
CERT_INVALID_LENGTH: Final = "CERTIFICATE_INVALID_LENGTH"
CERT_MISSING_ELEMENT: Final = "CERTIFICATE_MISSING_ELEMENT"
CERT_UNKNOWN_ELEMENT: Final = "CERTIFICATE_UNKNOWN_ELEMENT"


class DerError(Exception):
    """Malformed DER; ``event`` is the TLS event it raises."""

    def __init__(self, msg: str, event: str = CERT_INVALID) -> None:
        super().__init__(msg)
        self.event = event


def der_read(buf: bytes, off: int, end: int) -> tuple[int, int, int]:
    """TLV at ``off``: (tag, value start, value end). Raises DerError if malformed: a
    header cut short is CERTIFICATE_INVALID_LENGTH, a value running past its container
    INVALID_CERTIFICATE (the two cases of suricata-verify bug-1450-04 and -05)."""
    if off + 2 > end:
        raise DerError("truncated TLV", CERT_INVALID_LENGTH)
    tag = buf[off]
    if tag & 0x1F == 0x1F:
        raise DerError("high tag numbers are not used in X.509")
    ln = buf[off + 1]
    off += 2
    if ln & 0x80:
        n = ln & 0x7F
        if n == 0 or n > 4:
            raise DerError("bad length")
        if off + n > end:
            raise DerError("truncated length", CERT_INVALID_LENGTH)
        ln = int.from_bytes(buf[off : off + n], "big")
        off += n
    if off + ln > end:
        raise DerError("value runs past its container")
    return tag, off, off + ln


def der_children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    off = start
    while off < end:
        t, s, e = der_read(buf, off, end)
        out.append((t, s, e))
        off = e
    return out


def oid_str(b: bytes) -> str:
    if not b:
        return ""
    parts = [str(b[0] // 40), str(b[0] % 40)] if b[0] < 80 else ["2", str(b[0] - 80)]
    v = 0
    for c in b[1:]:
        v = (v << 7) | (c & 0x7F)
        if not c & 0x80:
            parts.append(str(v))
            v = 0
    return ".".join(parts)


# Attribute short names as Suricata prints them (its Rust x509 parser's table).
_ATTR: Final = {
    "2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O",
    "2.5.4.11": "OU", "2.5.4.5": "serialNumber", "2.5.4.9": "streetAddress",
    "2.5.4.12": "title", "2.5.4.4": "SN", "2.5.4.42": "GN", "2.5.4.17": "postalCode",
    "2.5.4.15": "businessCategory", "2.5.4.46": "dnQualifier",
    "2.5.4.65": "pseudonym", "2.5.4.43": "initials", "2.5.4.44": "generationQualifier",
    "1.2.840.113549.1.9.1": "Email", "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
    "1.3.6.1.4.1.311.60.2.1.3": "msJurisdictionCountry",
    "1.3.6.1.4.1.311.60.2.1.2": "msJurisdictionStateOrProvince",
    "1.3.6.1.4.1.311.60.2.1.1": "msJurisdictionLocality",
    "2.5.4.41": "name", "2.5.4.13": "description", "2.5.4.97": "organizationIdentifier",
}


def _der_string(tag: int, v: bytes) -> str:
    if tag == 0x1E:  # BMPString: UTF-16BE
        return v.decode("utf-16-be", "replace")
    if tag == 0x1C:  # UniversalString: UTF-32BE
        return v.decode("utf-32-be", "replace")
    if tag == 0x14:  # T61String: treat as Latin-1 like most decoders
        return v.decode("latin-1")
    return v.decode("utf-8", "replace")


def der_name(buf: bytes, start: int, end: int) -> str:
    """An X.501 Name as "C=US, O=Org, CN=host" (RDNs in encoded order)."""
    rdns: list[str] = []
    for t, s, e in der_children(buf, start, end):
        if t != 0x31:
            raise DerError("RDN is not a SET")
        atvs: list[str] = []
        for t2, s2, e2 in der_children(buf, s, e):
            if t2 != 0x30:
                raise DerError("ATV is not a SEQUENCE")
            kids = der_children(buf, s2, e2)
            if len(kids) < 2 or kids[0][0] != 0x06:
                raise DerError("bad ATV")
            oid = oid_str(buf[kids[0][1] : kids[0][2]])
            vt, vs, ve = kids[1]
            atvs.append(f"{_ATTR.get(oid, oid)}={_der_string(vt, buf[vs:ve])}")
        rdns.append(" + ".join(atvs))
    return ", ".join(rdns)


def der_time(tag: int, v: bytes) -> str:
    """UTCTime/GeneralizedTime (RFC 5280 4.1.2.5) as Suricata's "YYYY-MM-DDTHH:MM:SS"."""
    s = v.decode("ascii", "replace").rstrip("Z")
    if tag == 0x17:  # UTCTime YYMMDDHHMM[SS]: YY >= 50 is 19YY
        if len(s) < 10:
            raise DerError("bad UTCTime")
        yy = int(s[:2])
        s = ("19" if yy >= 50 else "20") + s
    if len(s) < 12 or not s[:12].isdigit():
        raise DerError("bad time")
    sec = s[12:14] if len(s) >= 14 and s[12:14].isdigit() else "00"
    return f"{s[0:4]}-{s[4:6]}-{s[6:8]}T{s[8:10]}:{s[10:12]}:{sec}"


@dataclass(slots=True)
class Certificate:
    der: bytes
    subject: str = ""
    issuer: str = ""
    serial: str = ""
    not_before: str = ""
    not_after: str = ""
    san: list[str] = field(default_factory=list)
    # Events of a certificate that parsed anyway (CERTIFICATE_UNKNOWN_ELEMENT).
    events: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        """SHA-1 of the DER, lowercase, colon separated (Suricata's format)."""
        h = hashlib.sha1(self.der).hexdigest()  # a fingerprint, not security
        return ":".join(h[i : i + 2] for i in range(0, 40, 2))


def parse_certificate(der: bytes) -> Certificate:
    """Read what EVE and the tls.cert_* keywords need; raises DerError if malformed."""
    c = Certificate(der)
    t, s, e = der_read(der, 0, len(der))
    if t != 0x30:
        raise DerError("certificate is not a SEQUENCE")
    t, s, e = der_read(der, s, e)
    if t != 0x30:
        raise DerError("tbsCertificate is not a SEQUENCE")
    kids = der_children(der, s, e)
    i = 0
    if kids and kids[0][0] == 0xA0:  # [0] EXPLICIT version
        i = 1
    if len(kids) < i + 6:
        raise DerError("tbsCertificate too short", CERT_MISSING_ELEMENT)
    st, ss, se = kids[i]
    if st != 0x02:
        raise DerError("serial is not an INTEGER")
    c.serial = ":".join(f"{b:02X}" for b in der[ss:se])
    _, ss, se = kids[i + 2]
    c.issuer = der_name(der, ss, se)
    _vt, vs, ve = kids[i + 3]
    times = der_children(der, vs, ve)
    if len(times) >= 2:
        c.not_before = der_time(times[0][0], der[times[0][1] : times[0][2]])
        c.not_after = der_time(times[1][0], der[times[1][1] : times[1][2]])
    _, ss, se = kids[i + 4]
    c.subject = der_name(der, ss, se)
    for t2, s2, e2 in kids[i + 6 :]:
        if t2 not in (0xA1, 0xA2, 0xA3) and CERT_UNKNOWN_ELEMENT not in c.events:
            # Only issuerUniqueID [1], subjectUniqueID [2] and extensions [3] may follow
            # subjectPublicKeyInfo (RFC 5280 4.1).
            c.events.append(CERT_UNKNOWN_ELEMENT)
        if t2 != 0xA3:  # [3] extensions
            continue
        seq = der_children(der, s2, e2)
        if not seq:
            continue
        for _t, xs, xe in der_children(der, seq[0][1], seq[0][2]):
            parts = der_children(der, xs, xe)
            if not parts or parts[0][0] != 0x06:
                continue
            if oid_str(der[parts[0][1] : parts[0][2]]) != "2.5.29.17":
                continue
            _t3, os_, oe = parts[-1]  # extnValue OCTET STRING
            _t4, gs, ge = der_read(der, os_, oe)
            for gt, n_s, n_e in der_children(der, gs, ge):
                if gt == 0x82:  # dNSName
                    c.san.append(der[n_s:n_e].decode("ascii", "replace"))
    return c


# --- ClientHello / ServerHello -----------------------------------------------------------


@dataclass(slots=True)
class Hello:
    version: int = 0
    ciphers: list[int] = field(default_factory=list)
    extensions: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    point_formats: list[int] = field(default_factory=list)
    sni: bytes | None = None
    alpn: list[bytes] = field(default_factory=list)
    supported_versions: list[int] = field(default_factory=list)
    session_id: bytes = b""


class _Malformed(Exception):
    pass


def _take(b: bytes, off: int, n: int) -> tuple[bytes, int]:
    if off + n > len(b):
        raise _Malformed("truncated")
    return b[off : off + n], off + n


def parse_hello(body: bytes, client: bool, ev: list[str]) -> Hello:
    """ClientHello (RFC 8446 4.1.2) or ServerHello (4.1.3) body."""
    h = Hello()
    v, off = _take(body, 0, 2)
    h.version = (v[0] << 8) | v[1]
    _rand, off = _take(body, off, 32)
    sl, off = _take(body, off, 1)
    h.session_id, off = _take(body, off, sl[0])
    if client:
        cl, off = _take(body, off, 2)
        cs, off = _take(body, off, (cl[0] << 8) | cl[1])
        h.ciphers = [(cs[i] << 8) | cs[i + 1] for i in range(0, len(cs) - 1, 2)]
        ml, off = _take(body, off, 1)
        _comp, off = _take(body, off, ml[0])
    else:
        cs, off = _take(body, off, 2)
        h.ciphers = [(cs[0] << 8) | cs[1]]
        _comp, off = _take(body, off, 1)
    if off + 2 > len(body):
        return h  # no extensions (allowed before TLS 1.2)
    el, off = _take(body, off, 2)
    exts, off = _take(body, off, (el[0] << 8) | el[1])
    i = 0
    while i + 4 <= len(exts):
        et = (exts[i] << 8) | exts[i + 1]
        ln = (exts[i + 2] << 8) | exts[i + 3]
        data = exts[i + 4 : i + 4 + ln]
        if len(data) < ln:
            raise _Malformed("extension runs past the list")
        i += 4 + ln
        h.extensions.append(et)
        if et == 0 and client and len(data) >= 5:  # server_name (RFC 6066 section 3)
            if h.sni is not None:
                ev.append("MULTIPLE_SNI_EXTENSIONS")
            if data[2] != 0:
                ev.append("INVALID_SNI_TYPE")
            nl = (data[3] << 8) | data[4]
            if 5 + nl > len(data):
                ev.append("INVALID_SNI_LENGTH")
            else:
                h.sni = data[5 : 5 + nl]
        elif et == 10 and len(data) >= 2:  # supported_groups
            gl = (data[0] << 8) | data[1]
            g = data[2 : 2 + gl]
            h.groups = [(g[j] << 8) | g[j + 1] for j in range(0, len(g) - 1, 2)]
        elif et == 11 and len(data) >= 1:  # ec_point_formats
            h.point_formats = list(data[1 : 1 + data[0]])
        elif et == 16 and len(data) >= 2:  # ALPN (RFC 7301)
            j = 2
            while j < len(data):
                n = data[j]
                h.alpn.append(data[j + 1 : j + 1 + n])
                j += 1 + n
        elif et == 43:  # supported_versions (RFC 8446 4.2.1)
            if client and data:
                vs = data[1 : 1 + data[0]]
                h.supported_versions = [(vs[j] << 8) | vs[j + 1]
                                        for j in range(0, len(vs) - 1, 2)]
            elif len(data) >= 2:
                h.supported_versions = [(data[0] << 8) | data[1]]
    return h


def _dash(vals: list[int]) -> str:
    return "-".join(str(v) for v in vals if not is_grease(v))


def ja3_string(h: Hello) -> str:
    """SSLVersion,Ciphers,Extensions,EllipticCurves,EllipticCurvePointFormats."""
    return ",".join((str(h.version), _dash(h.ciphers), _dash(h.extensions),
                     _dash(h.groups), _dash(h.point_formats)))


def ja3s_string(h: Hello) -> str:
    """SSLVersion,Cipher,SSLExtension (JA3S)."""
    return ",".join((str(h.version), _dash(h.ciphers), _dash(h.extensions)))


def md5_hex(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()  # JA3 is defined on MD5


# --- the parser -----------------------------------------------------------------------------


class _Dir:
    __slots__ = ("broken", "buf", "ccs", "hb_len", "hs", "skip")

    def __init__(self) -> None:
        self.buf = bytearray()  # record bytes not yet complete
        self.hs = bytearray()  # handshake bytes not yet a complete message
        self.ccs = False  # sent ChangeCipherSpec / encrypted records
        self.broken = False
        self.skip = 0  # payload bytes of an encrypted record still to pass over
        self.hb_len = -1  # record length of this side's encrypted heartbeat in flight


class TlsParser:
    """TLS for one flow."""

    app_proto = "tls"

    def __init__(self) -> None:
        self.client_hello: Hello | None = None
        self.server_hello: Hello | None = None
        self.certs: list[Certificate] = []
        self.certs_der: list[bytes] = []
        # The client's own certificate chain (mutual TLS, RFC 5246 7.4.6): what the
        # tls.cert_* keywords read to the server, as Suricata 7.
        self.client_certs: list[Certificate] = []
        self.client_certs_der: list[bytes] = []
        self.encrypted = False
        self.alerts = 0
        self._ts = _Dir()
        self._tc = _Dir()
        self._tls13 = False

    # public API ------------------------------------------------------------------------

    def memuse(self) -> int:
        ts, tc = self._ts, self._tc
        return (len(ts.buf) + len(ts.hs) + len(tc.buf) + len(tc.hs)
                + sum(len(c) for c in self.certs_der)
                + sum(len(c) for c in self.client_certs_der))

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]:
        out: list[AppEvent] = []
        d = self._ts if to_server else self._tc
        if d.broken or not data:
            return out
        try:
            self._feed(d, data, to_server, out)
        except Exception:  # principle 7: a bug must not escape into the engine
            d.broken = True
            d.buf.clear()
            d.hs.clear()
            out.append(AppEvent(ANOMALY, to_server, "INVALID_SSL_RECORD"))
        return out

    def close(self) -> list[AppEvent]:
        return []

    @property
    def sni(self) -> bytes | None:
        return None if self.client_hello is None else self.client_hello.sni

    @property
    def session_resumed(self) -> bool:
        """The server echoed the client's session id: an abbreviated handshake
        (RFC 5246 section 7.3)."""
        ch, sh = self.client_hello, self.server_hello
        return bool(ch is not None and sh is not None and ch.session_id
                    and sh.session_id == ch.session_id)

    @property
    def version(self) -> int:
        """The negotiated version (supported_versions wins, RFC 8446 4.2.1); 0 if none."""
        sh = self.server_hello
        if sh is None:
            return 0
        if sh.supported_versions:
            return sh.supported_versions[0]
        return sh.version

    def buffers(self, to_server: bool | None = None) -> dict[str, Any]:
        """Sticky buffers: bytes, except tls.certs (a list: one entry per certificate).

        The certificate buffers (tls.cert_*, tls.certs) are the server's chain, except
        to the server (``to_server`` True), where they are the client's own chain, as
        Suricata 7 inspects them per direction."""
        b: dict[str, Any] = {}
        ch = self.client_hello
        if ch is not None:
            if ch.sni is not None:
                b["tls.sni"] = ch.sni
            s = ja3_string(ch)
            b["ja3.string"] = s.encode()
            b["ja3.hash"] = md5_hex(s).encode()
        sh = self.server_hello
        if sh is not None:
            s = ja3s_string(sh)
            b["ja3s.string"] = s.encode()
            b["ja3s.hash"] = md5_hex(s).encode()
            b["tls.version"] = version_name(self.version).encode()
        certs, ders = ((self.client_certs, self.client_certs_der) if to_server
                       else (self.certs, self.certs_der))
        if certs:
            c = certs[0]
            b["tls.cert_subject"] = c.subject.encode()
            b["tls.cert_issuer"] = c.issuer.encode()
            b["tls.cert_serial"] = c.serial.encode()
            b["tls.cert_fingerprint"] = c.fingerprint.encode()
        if ders:
            b["tls.certs"] = list(ders)
        return b

    def eve(self) -> dict[str, Any]:
        """The EVE `tls` object in Suricata 7's field order (the server's certificate;
        client certificates are not logged, as Suricata's default tls log)."""
        o: dict[str, Any] = {}
        if self.session_resumed and not self.certs:
            # Suricata logs it only for abbreviated handshakes (no certificate seen).
            o["session_resumed"] = True
        if self.certs:
            c = self.certs[0]
            o["subject"] = c.subject
            o["issuerdn"] = c.issuer
            o["serial"] = c.serial
            o["fingerprint"] = c.fingerprint
        ch = self.client_hello
        if ch is not None and ch.sni is not None:
            o["sni"] = ch.sni.decode("utf-8", "replace")
        o["version"] = version_name(self.version)
        if self.certs:
            if self.certs[0].not_before:
                o["notbefore"] = self.certs[0].not_before
            if self.certs[0].not_after:
                o["notafter"] = self.certs[0].not_after
        if ch is not None:
            s = ja3_string(ch)
            o["ja3"] = {"hash": md5_hex(s), "string": s}
        sh = self.server_hello
        if sh is not None:
            s = ja3s_string(sh)
            o["ja3s"] = {"hash": md5_hex(s), "string": s}
        return o

    # records -----------------------------------------------------------------------------

    def _stop(self, d: _Dir) -> None:
        d.broken = True
        d.buf.clear()
        d.hs.clear()

    def _feed(self, d: _Dir, data: bytes, to_server: bool, out: list[AppEvent]) -> None:
        if d.skip:
            # The rest of an encrypted record: passed over, never buffered.
            if len(data) <= d.skip:
                d.skip -= len(data)
                return
            data = data[d.skip:]
            d.skip = 0
        d.buf += data
        buf = d.buf
        pos = 0
        n = len(buf)
        records = 0
        while n - pos >= 5:
            ctype, ver, ln = _REC.unpack_from(buf, pos)
            bad = ""
            if ctype < _CT_CCS or ctype > _CT_HEARTBEAT:
                if (pos == 0 and self.client_hello is None and buf[0] & 0x80
                        and buf[2] == 1 and buf[3] in (0, 3)):
                    # SSLv2-compatible ClientHello: recognised, not parsed further.
                    self._stop(d)
                    return
                bad = "INVALID_RECORD_TYPE"
            elif (ver >> 8) != 0x03 and ver != 0x0200:
                bad = "INVALID_RECORD_VERSION"
            elif ln > MAX_RECORD_LEN:
                bad = "INVALID_RECORD_LENGTH"
            if bad:
                if not d.ccs:
                    # After the handshake this is more likely a gap than an attack
                    # (module docstring): the direction just stops being parsed.
                    out.append(AppEvent(ANOMALY, to_server, bad))
                self._stop(d)
                return
            records += 1
            if records > MAX_RECORDS_PER_CHUNK:
                out.append(AppEvent(ANOMALY, to_server, "TOO_MANY_RECORDS_IN_PACKET"))
                self._stop(d)
                return
            # Clear-text handshake and heartbeat records are read whole; the rest only
            # by their header.
            whole = (ctype == _CT_HANDSHAKE or ctype == _CT_HEARTBEAT) and not d.ccs
            avail = n - pos - 5
            if whole and avail < ln:
                break
            if ctype == _CT_HANDSHAKE and not d.ccs:
                self._handshake(d, bytes(buf[pos + 5 : pos + 5 + ln]), to_server, out)
            elif ctype == _CT_CCS or ctype == _CT_APPDATA:
                # ChangeCipherSpec, or application data (TLS 1.3 may skip the
                # compatibility CCS): this direction is encrypted from here on.
                if not d.ccs:
                    d.ccs = True
                    d.hs.clear()
                    self._check_encrypted(out, to_server)
            elif ctype == _CT_ALERT:
                self.alerts += 1
            elif ctype == _CT_HEARTBEAT:
                self._heartbeat(d, ln, bytes(buf[pos + 5 : pos + 5 + ln]) if whole else b"",
                                to_server, out)
            if d.broken:
                self._stop(d)
                return
            if avail < ln:
                d.skip = ln - avail
                pos = n
                break
            pos += 5 + ln
        if pos:
            del buf[:pos]

    def _heartbeat(self, d: _Dir, ln: int, body: bytes, to_server: bool,
                   out: list[AppEvent]) -> None:
        """RFC 6520 heartbeats: in clear text the message is checked; encrypted, only
        the record lengths of a request and its answer can be compared."""
        out.append(AppEvent(ANOMALY, to_server, "HEARTBEAT_MESSAGE"))
        if not d.ccs:
            if len(body) < 3 or body[0] not in (1, 2):  # heartbeat_request/_response
                out.append(AppEvent(ANOMALY, to_server, "INVALID_HEARTBEAT_MESSAGE"))
            elif 3 + ((body[1] << 8) | body[2]) + _HB_MIN_PADDING > len(body):
                # The payload it claims (and asks to have echoed) is not in the record.
                out.append(AppEvent(ANOMALY, to_server, "OVERFLOW_HEARTBEAT_MESSAGE"))
            return
        peer = self._tc if to_server else self._ts
        if peer.hb_len >= 0:
            # The answer to the peer's request: it echoes the same payload, so a longer
            # record carries memory that was never sent (Heartbleed's answer).
            if ln > peer.hb_len:
                out.append(AppEvent(ANOMALY, to_server, "DATALEAK_HEARTBEAT_MISMATCH"))
            peer.hb_len = -1
        else:
            d.hb_len = ln

    def _check_encrypted(self, out: list[AppEvent], to_server: bool) -> None:
        if not self.encrypted and self._ts.ccs and self._tc.ccs:
            self.encrypted = True
            out.append(AppEvent(TLS_ENCRYPTED, to_server))

    def _handshake(self, d: _Dir, payload: bytes, to_server: bool,
                   out: list[AppEvent]) -> None:
        hs = d.hs
        hs += payload
        pos = 0
        while len(hs) - pos >= 4 and not d.ccs and not d.broken:
            mtype = hs[pos]
            mlen = (hs[pos + 1] << 16) | (hs[pos + 2] << 8) | hs[pos + 3]
            if mlen > MAX_HANDSHAKE_LEN:
                out.append(AppEvent(ANOMALY, to_server, "HANDSHAKE_INVALID_LENGTH"))
                self._stop(d)
                return
            if len(hs) - pos - 4 < mlen:
                break
            body = bytes(hs[pos + 4 : pos + 4 + mlen])
            pos += 4 + mlen
            self._message(d, mtype, body, to_server, out)
        if d.broken:
            hs.clear()
        elif pos:
            del hs[:pos]

    def _message(self, d: _Dir, mtype: int, body: bytes, to_server: bool,
                 out: list[AppEvent]) -> None:
        ev: list[str] = []
        name = ""
        try:
            if mtype == _HS_CLIENT_HELLO and to_server:
                self.client_hello = parse_hello(body, True, ev)
                name = "client_hello"
            elif mtype == _HS_SERVER_HELLO and not to_server:
                self.server_hello = parse_hello(body, False, ev)
                name = "server_hello"
                if self.version == 0x0304 or (self.version >> 8) in (0x7F, 0xFB):
                    # TLS 1.3: everything after ServerHello is encrypted (RFC 8446 2).
                    self._tls13 = True
                    self._tc.ccs = True
                    self._check_encrypted(out, to_server)
            elif mtype == _HS_CERTIFICATE and not self._tls13:
                name = "certificate"
                if not self._certificates(body, to_server, ev):
                    # A certificate message that does not parse is an invalid handshake
                    # message and, as Suricata's parser error, ends this direction.
                    ev.append("INVALID_HANDSHAKE_MESSAGE")
                    d.broken = True
        except _Malformed:
            ev.append("INVALID_HANDSHAKE_MESSAGE")
        for e in ev:
            out.append(AppEvent(ANOMALY, to_server, e))
        if name:
            out.append(AppEvent(TLS_HANDSHAKE, to_server, name))

    def _certificates(self, body: bytes, to_server: bool, ev: list[str]) -> bool:
        """A Certificate message (RFC 5246 7.4.2) of either side; False when it does not
        parse (its events in ``ev``). Certificates read before a bad one are kept."""
        if len(body) < 3:
            ev.append(CERT_INVALID_LENGTH)
            return False
        total = (body[0] << 16) | (body[1] << 8) | body[2]
        if total + 3 > len(body):
            ev.append(CERT_INVALID_LENGTH)
            return False
        off = 3
        end = 3 + total
        ders: list[bytes] = []
        certs: list[Certificate] = []
        ok = True
        while off + 3 <= end and len(ders) < MAX_CERTS:
            cl = (body[off] << 16) | (body[off + 1] << 8) | body[off + 2]
            off += 3
            if off + cl > end:
                ev.append(CERT_INVALID_LENGTH)
                ok = False
                break
            der = body[off : off + cl]
            off += cl
            try:
                c = parse_certificate(der)
            except DerError as e:
                ev.append(e.event)
                ok = False
                break
            except (ValueError, IndexError):
                ev.append(CERT_INVALID)
                ok = False
                break
            ders.append(der)
            certs.append(c)
            ev.extend(e for e in c.events if e not in ev)
        if to_server:
            self.client_certs_der, self.client_certs = ders, certs
        else:
            self.certs_der, self.certs = ders, certs
        return ok


def looks_like_tls(data: bytes) -> bool | None:
    """Detection: a handshake record (0x16 0x03 0x00-0x04) carrying a Client or
    Server Hello with a plausible length. None when more bytes are needed."""
    if len(data) < 6:
        if data and data[0] != 0x16:
            return False
        if len(data) >= 2 and data[1] != 0x03:
            return False
        if len(data) >= 3 and data[2] > 0x04:
            return False
        return None
    if data[0] != 0x16 or data[1] != 0x03 or data[2] > 0x04:
        return False
    ln = (data[3] << 8) | data[4]
    if ln < 4 or ln > MAX_RECORD_LEN:
        return False
    return data[5] in (_HS_CLIENT_HELLO, _HS_SERVER_HELLO)
