"""QUIC (RFC 9000) over UDP: the version of long-header packets, and the TLS 1.3
ClientHello and ServerHello that Initial packets carry (RFC 9001), for SNI and JA3/JA3S.

Initial packets are encrypted with keys anyone can derive from the client's first
Destination Connection ID (RFC 9001 section 5.2): HKDF-Extract with the version's salt,
then HKDF-Expand-Label "client in" / "server in", "quic key", "quic iv", "quic hp". A
datagram is read as follows, each step bounded:

1. long-header packets one after the other (coalesced, RFC 9000 section 12.2), each
   ended by its Length field; a short-header (1-RTT) packet ends the datagram;
2. Initial packets only: header protection removed (AES-ECB mask over a 16-byte sample,
   RFC 9001 5.4), the payload decrypted with AES-128-GCM (nonce = IV xor the packet
   number, AAD = the unprotected header, 5.3);
3. frames read (PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE are all an Initial may
   hold, RFC 9000 12.4): CRYPTO data is put back in order per direction;
4. the first handshake message of each direction is parsed with the TLS parser's hello
   reader (app/tls.py): SNI and JA3 from the ClientHello, JA3S from the ServerHello.

Versions decrypted: 1 (RFC 9000) and IETF drafts 23-32 (their salts); any other
version (QUIC v2, Google QUIC "Qxxx", Facebook's mvfst) is recognised and its version
reported, its payload not read. Not done: Google QUIC's CHLO (quic.ua, quic.cyu stay
empty), and an EVE ``quic`` record.

Events: ``failed_decrypt`` (Suricata's name) when an Initial of a known version does not
authenticate with the derived keys.

The AES primitives come from the ``cryptography`` package; without it versions are still
reported, nothing is decrypted (``HAVE_AES`` False).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any, Final

from appliance.core.app import ANOMALY, AppEvent, DatagramParser
from appliance.core.app.tls import Hello, _Malformed, ja3_string, ja3s_string, md5_hex, parse_hello

try:  # an ordinary dependency (pyproject.toml); guarded so a bare install still runs
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    HAVE_AES = True
except ImportError:  # pragma: no cover - the dependency is installed with the package
    HAVE_AES = False

# The event kind a datagram reports when it changed what rules can see in its direction;
# the engine inspects ``parser.buffers(to_server)`` under ``tx_id``: one transaction per
# direction (0 to the server, 1 to the client), so a rule alerts once per direction.
QUIC_TX: Final = "quic_tx"

# --- limits ----------------------------------------------------------------------------

# CRYPTO bytes kept per direction: a ClientHello is 250 B - 2 KiB (a few KiB with
# post-quantum key shares); the ServerHello comes first in the server's stream. Past
# this nothing more is gathered.
MAX_CRYPTO: Final = 16 * 1024
# CRYPTO frames held out of order per direction before the gap is given up.
MAX_FRAGMENTS: Final = 32
# Long-header packets read in one datagram (a server's first flight coalesces 2-3).
MAX_PACKETS_PER_DATAGRAM: Final = 8
# Client Initial packets decrypted per flow once the hellos are known or not: a client
# hello spanning several packets needs a few; a flood of Initials gets no more work.
MAX_INITIALS: Final = 16
# Frames read per decrypted packet (PADDING runs count as one).
MAX_FRAMES: Final = 64
# RFC 9000 section 17.2: connection IDs are at most 20 bytes in QUIC v1.
MAX_CID: Final = 20

# RFC 9001 section 5.2 and the drafts' salts (draft-23..28, draft-29..32).
_SALT_V1: Final = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_SALT_D29: Final = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
_SALT_D23: Final = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")


def initial_salt(version: int) -> bytes | None:
    """The Initial salt of a version this parser decrypts, else None."""
    if version == 1:
        return _SALT_V1
    if 0xFF00001D <= version <= 0xFF000020:
        return _SALT_D29
    if 0xFF000017 <= version <= 0xFF00001C:
        return _SALT_D23
    return None


def version_text(version: int) -> str:
    """The version as Suricata logs it: Google's "Qxxx"/"Txxx" tags as text, the rest
    as lowercase hex without leading zeros ("1", "ff00001d")."""
    raw = version.to_bytes(4, "big")
    if raw[:1] in (b"Q", b"T") and raw[1:].isdigit():
        return raw.decode()
    return f"{version:x}"


# --- key schedule (RFC 5869 HKDF, RFC 8446 7.1 HKDF-Expand-Label) ------------------------


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label(secret, label, "", length) with SHA-256."""
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    out = b""
    t = b""
    i = 1
    while len(out) < length:
        t = hmac.new(secret, t + info + bytes((i,)), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


class Keys:
    """One direction's Initial keys: AEAD key, IV, header-protection key."""

    __slots__ = ("aead", "hp", "iv", "key")

    def __init__(self, secret: bytes) -> None:
        self.key = hkdf_expand_label(secret, b"quic key", 16)
        self.iv = hkdf_expand_label(secret, b"quic iv", 12)
        self.hp = hkdf_expand_label(secret, b"quic hp", 16)
        self.aead: Any = AESGCM(self.key) if HAVE_AES else None

    def mask(self, sample: bytes) -> bytes:
        enc = Cipher(algorithms.AES(self.hp), modes.ECB()).encryptor()
        return enc.update(sample) + enc.finalize()


def initial_keys(version: int, dcid: bytes) -> tuple[Keys, Keys] | None:
    """(client keys, server keys) for the client's first Destination Connection ID."""
    salt = initial_salt(version)
    if salt is None or not HAVE_AES:
        return None
    secret = hkdf_extract(salt, dcid)
    return (Keys(hkdf_expand_label(secret, b"client in", 32)),
            Keys(hkdf_expand_label(secret, b"server in", 32)))


# --- wire helpers ----------------------------------------------------------------------------


class _Short(Exception):
    """A packet or frame runs past its datagram."""


def varint(b: bytes, off: int) -> tuple[int, int]:
    """RFC 9000 section 16: (value, next offset)."""
    if off >= len(b):
        raise _Short("varint")
    first = b[off]
    n = 1 << (first >> 6)
    if off + n > len(b):
        raise _Short("varint")
    v = first & 0x3F
    for i in range(1, n):
        v = (v << 8) | b[off + i]
    return v, off + n


def decode_pn(largest: int, truncated: int, nbits: int) -> int:
    """RFC 9000 appendix A.3: the full packet number nearest the next expected one."""
    expected = largest + 1
    win = 1 << nbits
    hwin = win // 2
    candidate = (expected & ~(win - 1)) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


def looks_like_quic(data: bytes, sport: int, dport: int) -> bool:
    """Detection on UDP ports 443 and 80 (where Suricata 7 probes for QUIC): a long
    header (form and fixed bits, RFC 9000 17.2) with sane connection-ID lengths, or a
    Google QUIC public header announcing a "Qxxx" version."""
    if not ({sport, dport} & {443, 80}) or len(data) < 7:
        return False
    first = data[0]
    if first & 0x80:
        if data[1:2] in (b"Q", b"T") and data[2:5].isdigit():
            return True  # Google QUIC Q046+ (its connection-ID lengths are nibbles)
        dl = data[5]
        if dl > MAX_CID or len(data) < 7 + dl:
            return False
        sl = data[6 + dl]
        return sl <= MAX_CID and len(data) >= 7 + dl + sl
    # gQUIC (Q043 and older) public header: version flag, 8-byte connection ID, version.
    return bool(first & 0x01) and len(data) >= 13 and data[9:10] == b"Q"


# --- the parser -----------------------------------------------------------------------------


class _Side:
    __slots__ = ("crypto", "frags", "hello_done", "largest_pn", "version")

    def __init__(self) -> None:
        self.crypto = bytearray()  # in-order CRYPTO bytes from offset 0
        self.frags: dict[int, bytes] = {}  # out-of-order CRYPTO frames by offset
        self.largest_pn = -1
        self.hello_done = False
        self.version = -1  # the version last inspected in this direction


class QuicParser(DatagramParser):
    """QUIC for one UDP flow: ``parse_datagram`` per payload."""

    app_proto = "quic"
    MALFORMED = "error_on_data"  # a parser bug (DatagramParser.parse_datagram)

    def __init__(self) -> None:
        self.version: int | None = None
        self.client_hello: Hello | None = None
        self.server_hello: Hello | None = None
        self._keys: tuple[Keys, Keys] | None = None
        self._odcid = b""  # the client's first Destination Connection ID
        self._initials = 0
        self._sides = (_Side(), _Side())  # to_client, to_server

    # StreamParser protocol (QUIC is datagrams only: feed and close return nothing) ------

    def memuse(self) -> int:
        return sum(len(s.crypto) + sum(len(f) for f in s.frags.values()) for s in self._sides)

    # public -------------------------------------------------------------------------------------

    def parse_datagram(self, data: bytes, to_server: bool) -> list[AppEvent]:
        out = super().parse_datagram(data, to_server)
        if any(e.kind == QUIC_TX for e in out):
            # One inspection of the direction's transaction per datagram.
            out = [e for e in out if e.kind != QUIC_TX]
            out.append(AppEvent(QUIC_TX, to_server, "", 0 if to_server else 1))
        return out

    @property
    def sni(self) -> bytes | None:
        return None if self.client_hello is None else self.client_hello.sni

    def buffers(self, to_server: bool) -> dict[str, Any]:
        """quic.version (the 4 wire bytes), quic.sni and ja3.* to the server, ja3s.* to
        the client (as the TLS parser's per-direction buffers)."""
        b: dict[str, Any] = {}
        if self.version is not None:
            b["quic.version"] = self.version.to_bytes(4, "big")
        if to_server:
            ch = self.client_hello
            if ch is not None:
                if ch.sni is not None:
                    b["quic.sni"] = ch.sni
                s = ja3_string(ch)
                b["ja3.string"] = s.encode()
                b["ja3.hash"] = md5_hex(s).encode()
        else:
            sh = self.server_hello
            if sh is not None:
                s = ja3s_string(sh)
                b["ja3s.string"] = s.encode()
                b["ja3s.hash"] = md5_hex(s).encode()
        return b

    # datagrams ----------------------------------------------------------------------------------

    def _datagram(self, data: bytes, to_server: bool, out: list[AppEvent]) -> None:
        off = 0
        for _ in range(MAX_PACKETS_PER_DATAGRAM):
            if len(data) - off < 7 or not data[off] & 0x80:
                return  # short header (1-RTT, keys unknown), or padding after packets
            try:
                off = self._long_packet(data, off, to_server, out)
            except _Short:
                return

    def _long_packet(self, data: bytes, off: int, to_server: bool,
                     out: list[AppEvent]) -> int:
        """One long-header packet at ``off``; returns where the next one starts (the end
        of the datagram when the packet type has no Length field)."""
        first = data[off]
        version = int.from_bytes(data[off + 1 : off + 5], "big")
        if version == 0:
            return len(data)  # Version Negotiation (RFC 9000 17.2.1): no Length
        self.version = version
        side = self._sides[1 if to_server else 0]
        if side.version != version:
            side.version = version
            out.append(AppEvent(QUIC_TX, to_server))
        salt = initial_salt(version)
        if salt is None:
            return len(data)  # another version's layout: not read further
        p = off + 5
        dl = data[p]
        if dl > MAX_CID or p + 1 + dl >= len(data):
            raise _Short("dcid")
        dcid = data[p + 1 : p + 1 + dl]
        p += 1 + dl
        sl = data[p]
        if sl > MAX_CID:
            raise _Short("scid")
        p += 1 + sl
        ptype = (first & 0x30) >> 4
        if ptype == 3:
            # Retry (17.2.5): the client starts over with a new Destination CID.
            if not to_server:
                self._keys = None
                self._odcid = b""
            return len(data)
        if ptype == 0:  # Initial: a token first
            tlen, p = varint(data, p)
            p += tlen
        length, p = varint(data, p)
        end = p + length
        if end > len(data):
            raise _Short("length")
        if ptype == 0:
            self._initial(data, off, p, end, version, dcid, to_server, out)
        return end

    def _initial(self, data: bytes, start: int, pn_off: int, end: int, version: int,
                 dcid: bytes, to_server: bool, out: list[AppEvent]) -> None:
        side = self._sides[1 if to_server else 0]
        if side.hello_done or self._initials >= MAX_INITIALS:
            return
        if to_server and self._keys is None:
            self._keys = initial_keys(version, dcid)
            self._odcid = dcid
        keys = self._keys
        if keys is None:
            return
        self._initials += 1
        plain = self._decrypt(data, start, pn_off, end, keys[0 if to_server else 1], side)
        if plain is None and to_server and dcid != self._odcid:
            # A client Initial to another DCID than the first one (after a Retry the
            # first was never seen): its own DCID gives the keys.
            alt = initial_keys(version, dcid)
            if alt is not None:
                plain = self._decrypt(data, start, pn_off, end, alt[0], side)
                if plain is not None:
                    self._keys, self._odcid = alt, dcid
        if plain is None:
            out.append(AppEvent(ANOMALY, to_server, "failed_decrypt"))
            return
        self._frames(plain, side)
        self._hello(side, to_server, out)

    def _decrypt(self, data: bytes, start: int, pn_off: int, end: int, keys: Keys,
                 side: _Side) -> bytes | None:
        """Remove header protection and open the AEAD (RFC 9001 5.3, 5.4)."""
        sample_off = pn_off + 4
        if sample_off + 16 > end:
            return None
        mask = keys.mask(bytes(data[sample_off : sample_off + 16]))
        first = data[start] ^ (mask[0] & 0x0F)
        pn_len = (first & 0x03) + 1
        header = bytearray(data[start : pn_off + pn_len])
        header[0] = first
        truncated = 0
        for i in range(pn_len):
            b = data[pn_off + i] ^ mask[1 + i]
            header[pn_off - start + i] = b
            truncated = (truncated << 8) | b
        pn = decode_pn(side.largest_pn, truncated, 8 * pn_len)
        nonce = bytes(a ^ b for a, b in zip(keys.iv, pn.to_bytes(12, "big"), strict=True))
        try:
            plain: bytes = keys.aead.decrypt(nonce, bytes(data[pn_off + pn_len : end]),
                                             bytes(header))
        except (InvalidTag, ValueError):
            return None
        side.largest_pn = max(side.largest_pn, pn)
        return plain

    def _frames(self, plain: bytes, side: _Side) -> None:
        """The frames an Initial may carry; CRYPTO data goes to ``side``."""
        off = 0
        n = len(plain)
        for _ in range(MAX_FRAMES):
            while off < n and plain[off] == 0:  # PADDING
                off += 1
            if off >= n:
                return
            ftype, off = varint(plain, off)
            if ftype == 0x01:  # PING
                continue
            if ftype in (0x02, 0x03):  # ACK: largest, delay, range count, first range
                _largest, off = varint(plain, off)
                _delay, off = varint(plain, off)
                count, off = varint(plain, off)
                _first, off = varint(plain, off)
                for _ in range(min(count, 256)):
                    _gap, off = varint(plain, off)
                    _rng, off = varint(plain, off)
                if ftype == 0x03:  # ECN counts
                    for _ in range(3):
                        _c, off = varint(plain, off)
                continue
            if ftype == 0x06:  # CRYPTO
                coff, off = varint(plain, off)
                clen, off = varint(plain, off)
                if off + clen > n:
                    raise _Short("crypto")
                self._crypto(side, coff, plain[off : off + clen])
                off += clen
                continue
            return  # CONNECTION_CLOSE or a frame an Initial must not carry: stop

    @staticmethod
    def _crypto(side: _Side, coff: int, chunk: bytes) -> None:
        have = len(side.crypto)
        if coff + len(chunk) <= have or coff >= MAX_CRYPTO:
            return  # old (retransmitted) or beyond what is kept
        if coff > have:
            if len(side.frags) < MAX_FRAGMENTS:
                side.frags[coff] = chunk[: MAX_CRYPTO - coff]
            return
        side.crypto += chunk[have - coff : MAX_CRYPTO - coff]
        while side.frags:  # frames that arrived early and now follow on
            have = len(side.crypto)
            nxt = [o for o in side.frags if o <= have]
            if not nxt:
                break
            for o in nxt:
                frag = side.frags.pop(o)
                if o + len(frag) > have:
                    side.crypto += frag[have - o : MAX_CRYPTO - o]
                    have = len(side.crypto)

    def _hello(self, side: _Side, to_server: bool, out: list[AppEvent]) -> None:
        """The first handshake message of the direction once it is whole."""
        c = side.crypto
        if len(c) < 4:
            return
        mlen = (c[1] << 16) | (c[2] << 8) | c[3]
        if 4 + mlen > len(c):
            if 4 + mlen > MAX_CRYPTO:
                side.hello_done = True  # will never fit: give up
                side.crypto.clear()
                side.frags.clear()
            return
        body = bytes(c[4 : 4 + mlen])
        mtype = c[0]
        side.hello_done = True
        side.crypto.clear()
        side.frags.clear()
        ev: list[str] = []
        try:
            if to_server and mtype == 1:
                self.client_hello = parse_hello(body, True, ev)
            elif not to_server and mtype == 2:
                self.server_hello = parse_hello(body, False, ev)
            else:
                return
        except _Malformed:
            return
        out.append(AppEvent(QUIC_TX, to_server))
