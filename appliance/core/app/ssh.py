"""SSH parser (RFC 4253): version banners, the clear-text packets up to NEWKEYS, HASSH.

One ``SshParser`` per flow. ``feed(data, to_server)`` takes in-order stream bytes of any
size. Per direction it reads:

1. the identification line ``SSH-protoversion-softwareversion SP comments CR LF``
   (RFC 4253 section 4.2; LF alone is accepted too, as real servers send it). A server
   may send other lines first (section 4.2: "other lines of data"): up to
   ``MAX_PRE_LINES`` of them are skipped. A line longer than ``MAX_BANNER_LEN`` is
   ``LONG_BANNER``: its first bytes are kept, the rest is discarded up to the LF;
   a client line that is not an identification is ``INVALID_BANNER``;
2. then the binary packets (section 6: uint32 packet_length, byte padding_length,
   payload whose first byte is the message code). Only SSH_MSG_KEXINIT (20) is kept
   and parsed (section 7.1: cookie and ten name-lists) to compute HASSH: the MD5 of
   ``kex;encryption;mac;compression`` with the client-to-server lists for the client
   (``ssh.hassh``) and the server-to-client lists for the server (``ssh.hassh.server``),
   as Suricata's ssh keywords document it. Other packets are skipped without being
   buffered. A KEXINIT longer than ``MAX_KEX_LEN`` is ``LONG_KEX_RECORD`` (skipped, no
   HASSH); an impossible packet length is ``INVALID_RECORD`` and the direction stops.
3. SSH_MSG_NEWKEYS (21) ends a direction: everything after it is encrypted. Once both
   sides sent it, ``encrypted`` is True and an ``SSH_ENCRYPTED`` event tells the engine
   it may bypass the flow (as TLS does).

SSH 1.x (protoversion ``1.x`` other than ``1.99``) has another binary protocol: only its
banner is read. Anomaly names are Suricata's ssh app-layer events (``ssh.invalid_banner``,
``ssh.long_banner``, ``ssh.invalid_record``, ``ssh.long_kex_record``) in upper case, as
the other parsers report theirs.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from appliance.core.app import ANOMALY, AppEvent

# Event kinds (engine: applayer.py).
SSH_UPDATE: Final = "ssh_update"  # a banner or a KEXINIT changed this direction's buffers
SSH_ENCRYPTED: Final = "ssh_encrypted"  # both sides sent NEWKEYS: nothing left to parse

# RFC 4253 4.2: "The maximum length of the string is 255 characters, including the
# Carriage Return and Line Feed."
MAX_BANNER_LEN: Final = 255
# Bytes of an over-long line discarded while looking for its end before giving up.
MAX_BANNER_SKIP: Final = 64 * 1024
# Lines a server may send before its identification (RFC 4253 4.2).
MAX_PRE_LINES: Final = 32
# RFC 4253 6.1: implementations must handle packets of 35000 bytes; larger ones exist
# ("MAY"). Beyond this bound the length is taken as garbage.
MAX_PACKET_LEN: Final = 256 * 1024
# A KEXINIT is kept whole to compute HASSH: real ones are 1-2 KiB.
MAX_KEX_LEN: Final = 64 * 1024

MSG_KEXINIT: Final = 20
MSG_NEWKEYS: Final = 21

_BANNER: Final = 0  # reading the identification line
_BANNER_SKIP: Final = 1  # discarding the rest of an over-long line
_RECORDS: Final = 2  # binary packets
_DONE: Final = 3  # encrypted, SSH 1, or broken: nothing more is parsed


class _Side:
    __slots__ = ("hassh_string", "hdr", "kex", "kex_need", "line", "newkeys", "pre_lines",
                 "proto", "skip", "skipped", "software", "state")

    def __init__(self) -> None:
        self.state = _BANNER
        self.line = bytearray()  # the identification line so far
        self.pre_lines = 0
        self.skipped = 0  # bytes of an over-long banner discarded so far
        self.proto: bytes | None = None
        self.software: bytes | None = None
        self.hdr = bytearray()  # a packet header (6 bytes) not yet complete
        self.skip = 0  # bytes of the current packet still to skip
        self.kex = bytearray()  # the KEXINIT being collected
        self.kex_need = 0  # bytes of it still to come
        self.hassh_string: str | None = None
        self.newkeys = False

    def memuse(self) -> int:
        return len(self.line) + len(self.hdr) + len(self.kex)


def hassh_string(payload: bytes, client: bool) -> str | None:
    """The HASSH algorithm string of a KEXINIT payload (after the message code: the
    16-byte cookie, then the name-lists), or None if it is malformed."""
    off = 16
    lists: list[bytes] = []
    for _ in range(8):  # kex, host key, enc c2s, enc s2c, mac c2s, mac s2c, comp c2s/s2c
        if off + 4 > len(payload):
            return None
        n = int.from_bytes(payload[off : off + 4], "big")
        off += 4
        if off + n > len(payload):
            return None
        lists.append(payload[off : off + n])
        off += n
    kex, _hostkey, enc_cs, enc_sc, mac_cs, mac_sc, comp_cs, comp_sc = lists
    parts = (kex, enc_cs, mac_cs, comp_cs) if client else (kex, enc_sc, mac_sc, comp_sc)
    return ";".join(p.decode("ascii", "replace") for p in parts)


def md5_hex(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()  # HASSH is defined on MD5


class SshParser:
    """SSH for one flow."""

    app_proto = "ssh"

    def __init__(self) -> None:
        self.client = _Side()
        self.server = _Side()
        self.encrypted = False

    # public API ------------------------------------------------------------------------

    def memuse(self) -> int:
        return self.client.memuse() + self.server.memuse()

    def feed(self, data: bytes, to_server: bool) -> list[AppEvent]:
        out: list[AppEvent] = []
        s = self.client if to_server else self.server
        if s.state == _DONE or not data:
            return out
        try:
            self._feed(s, data, to_server, out)
        except Exception:  # principle 7: a bug must not escape into the engine
            self._stop(s)
            out.append(AppEvent(ANOMALY, to_server, "INVALID_RECORD"))
        return out

    def close(self) -> list[AppEvent]:
        return []

    def buffers(self, to_server: bool) -> dict[str, Any]:
        """Sticky buffers of one direction: the client's to the server, the server's to
        the client (as Suricata registers them)."""
        s = self.client if to_server else self.server
        b: dict[str, Any] = {}
        if s.proto is not None:
            b["ssh.proto"] = s.proto
        if s.software is not None:
            b["ssh.software"] = s.software
        if s.hassh_string is not None:
            name = "ssh.hassh" if to_server else "ssh.hassh.server"
            b[name] = md5_hex(s.hassh_string).encode()
            b[name + ".string"] = s.hassh_string.encode()
        return b

    def eve(self) -> dict[str, Any]:
        """The EVE `ssh` object as Suricata 7 writes it (hassh when it was computed)."""
        o: dict[str, Any] = {}
        for key, s in (("client", self.client), ("server", self.server)):
            if s.proto is None:
                continue
            d: dict[str, Any] = {"proto_version": s.proto.decode("utf-8", "replace")}
            if s.software is not None:
                d["software_version"] = s.software.decode("utf-8", "replace")
            if s.hassh_string is not None:
                d["hassh"] = {"hash": md5_hex(s.hassh_string), "string": s.hassh_string}
            o[key] = d
        return o

    # parsing ---------------------------------------------------------------------------

    @staticmethod
    def _stop(s: _Side) -> None:
        s.state = _DONE
        s.line.clear()
        s.hdr.clear()
        s.kex.clear()

    def _feed(self, s: _Side, data: bytes, to_server: bool, out: list[AppEvent]) -> None:
        pos = 0
        n = len(data)
        while pos < n and s.state != _DONE:
            if s.state == _BANNER:
                pos = self._banner(s, data, pos, to_server, out)
            elif s.state == _BANNER_SKIP:
                lf = data.find(b"\n", pos)
                end = n if lf < 0 else lf + 1
                s.skipped += end - pos
                pos = end
                if lf >= 0:
                    self._identification(s, bytes(s.line), to_server, out)
                    s.line.clear()
                elif s.skipped > MAX_BANNER_SKIP:
                    self._stop(s)  # no end of line in sight: not SSH any more
            else:
                pos = self._record(s, data, pos, to_server, out)

    def _banner(self, s: _Side, data: bytes, pos: int, to_server: bool,
                out: list[AppEvent]) -> int:
        lf = data.find(b"\n", pos)
        end = len(data) if lf < 0 else lf
        room = MAX_BANNER_LEN - len(s.line)
        if end - pos > room:
            # Longer than RFC 4253 allows: keep its start, drop the rest of the line.
            s.line += data[pos : pos + room]
            out.append(AppEvent(ANOMALY, to_server, "LONG_BANNER"))
            s.state = _BANNER_SKIP
            s.skipped = 0
            return pos + room
        s.line += data[pos:end]
        if lf < 0:
            return len(data)
        line = bytes(s.line)
        s.line.clear()
        self._identification(s, line, to_server, out)
        return lf + 1

    def _identification(self, s: _Side, line: bytes, to_server: bool,
                        out: list[AppEvent]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.startswith(b"SSH-"):
            if not to_server and s.pre_lines < MAX_PRE_LINES:
                s.pre_lines += 1  # a server's line before its identification
                s.state = _BANNER
                return
            out.append(AppEvent(ANOMALY, to_server, "INVALID_BANNER"))
            self._stop(s)
            return
        proto, sep, rest = line[4:].partition(b"-")
        if not sep or not proto:
            out.append(AppEvent(ANOMALY, to_server, "INVALID_BANNER"))
            self._stop(s)
            return
        s.proto = proto
        s.software = rest.split(b" ", 1)[0]
        out.append(AppEvent(SSH_UPDATE, to_server, "banner"))
        if proto.startswith(b"1.") and proto != b"1.99":
            self._stop(s)  # SSH 1: another packet format, not parsed
        else:
            s.state = _RECORDS

    def _record(self, s: _Side, data: bytes, pos: int, to_server: bool,
                out: list[AppEvent]) -> int:
        n = len(data)
        if s.skip:
            take = min(s.skip, n - pos)
            if s.kex_need:
                s.kex += data[pos : pos + take]
                s.kex_need -= take
                if not s.kex_need:
                    self._kexinit(s, to_server, out)
            s.skip -= take
            return pos + take
        need = 6 - len(s.hdr)
        s.hdr += data[pos : pos + need]
        pos += min(need, n - pos)
        if len(s.hdr) < 6:
            return pos
        plen = int.from_bytes(s.hdr[0:4], "big")
        padlen = s.hdr[4]
        code = s.hdr[5]
        s.hdr.clear()
        if plen < 2 or plen > MAX_PACKET_LEN or padlen + 1 >= plen:
            out.append(AppEvent(ANOMALY, to_server, "INVALID_RECORD"))
            self._stop(s)
            return n
        s.skip = plen - 2  # the rest of the payload and the padding
        if code == MSG_KEXINIT and s.hassh_string is None:
            if plen - 2 > MAX_KEX_LEN:
                out.append(AppEvent(ANOMALY, to_server, "LONG_KEX_RECORD"))
            else:
                s.kex_need = s.skip
                if not s.kex_need:
                    self._kexinit(s, to_server, out)
        elif code == MSG_NEWKEYS:
            self._stop(s)  # what follows in this direction is encrypted
            s.newkeys = True
            if self.client.newkeys and self.server.newkeys and not self.encrypted:
                self.encrypted = True
                out.append(AppEvent(SSH_ENCRYPTED, to_server))
            return n
        return pos

    def _kexinit(self, s: _Side, to_server: bool, out: list[AppEvent]) -> None:
        payload = bytes(s.kex)
        s.kex.clear()
        s.kex_need = 0
        h = hassh_string(payload, to_server)
        if h is None:
            out.append(AppEvent(ANOMALY, to_server, "INVALID_RECORD"))
            return
        s.hassh_string = h
        out.append(AppEvent(SSH_UPDATE, to_server, "kexinit"))
