"""HPACK (RFC 7541): the header compression of HTTP/2, decoding side only, bounded.

One ``Decoder`` per direction of a connection (each endpoint compresses what it sends
with its own dynamic table). ``decode(block)`` takes one complete header block (HEADERS
or PUSH_PROMISE plus its CONTINUATION frames) and returns the header list, the dynamic
table size updates it carried and the problems found. It never raises on hostile input:

- integers (section 5.1) longer than ``MAX_INT_OCTETS`` continuation octets, or larger
  than ``MAX_INT``, are ``header_integer_overflow`` (Suricata's event name);
- an index outside the static and dynamic tables, a string running past the block, bad
  Huffman data (section 5.2: padding longer than 7 bits or not the EOS prefix, or the
  EOS symbol itself) are ``invalid_header``; decoding stops at the first one, since the
  rest of the block and the dynamic table can no longer be trusted;
- a size update above ``MAX_TABLE_SIZE`` is clamped to it (the table may then be
  smaller than the encoder believes: later indexes into evicted entries fail as above);
- the decoded list is bounded by ``MAX_HEADER_LIST`` bytes (name + value + 32 per
  field, the section 4.1 size): fields beyond it are dropped (``header_list_too_large``).

The Huffman code (Appendix B) is canonical: codes of one length are consecutive and
ordered by symbol, shorter lengths first. Only the code lengths are kept here; the codes
are derived from them and checked by the tests against values printed in the RFC.
"""

from __future__ import annotations

from typing import Final

# RFC 7541 Appendix A: the static table (index 1..61).
STATIC_TABLE: Final[tuple[tuple[bytes, bytes], ...]] = (
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"), (b":path", b"/"),
    (b":path", b"/index.html"), (b":scheme", b"http"), (b":scheme", b"https"),
    (b":status", b"200"), (b":status", b"204"), (b":status", b"206"), (b":status", b"304"),
    (b":status", b"400"), (b":status", b"404"), (b":status", b"500"),
    (b"accept-charset", b""), (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""), (b"accept-ranges", b""), (b"accept", b""),
    (b"access-control-allow-origin", b""), (b"age", b""), (b"allow", b""),
    (b"authorization", b""), (b"cache-control", b""), (b"content-disposition", b""),
    (b"content-encoding", b""), (b"content-language", b""), (b"content-length", b""),
    (b"content-location", b""), (b"content-range", b""), (b"content-type", b""),
    (b"cookie", b""), (b"date", b""), (b"etag", b""), (b"expect", b""), (b"expires", b""),
    (b"from", b""), (b"host", b""), (b"if-match", b""), (b"if-modified-since", b""),
    (b"if-none-match", b""), (b"if-range", b""), (b"if-unmodified-since", b""),
    (b"last-modified", b""), (b"link", b""), (b"location", b""), (b"max-forwards", b""),
    (b"proxy-authenticate", b""), (b"proxy-authorization", b""), (b"range", b""),
    (b"referer", b""), (b"refresh", b""), (b"retry-after", b""), (b"server", b""),
    (b"set-cookie", b""), (b"strict-transport-security", b""),
    (b"transfer-encoding", b""), (b"user-agent", b""), (b"vary", b""), (b"via", b""),
    (b"www-authenticate", b""),
)

# SETTINGS_HEADER_TABLE_SIZE's initial value (RFC 7540 6.5.2).
DEFAULT_TABLE_SIZE: Final = 4096
# The largest dynamic table kept, whatever the peer announces: 64 KiB covers every
# common implementation's setting (nghttp2, browsers: 4-64 KiB) while bounding memory.
MAX_TABLE_SIZE: Final = 64 * 1024
# Bytes of decoded header list kept per block (RFC 7541 4.1 sizes). Suricata bounds
# decoded headers too; 256 KiB is far above real requests (browsers send < 16 KiB).
MAX_HEADER_LIST: Final = 256 * 1024
# An integer needs at most 5 continuation octets to reach 2^32 (7 bits each).
MAX_INT_OCTETS: Final = 5
MAX_INT: Final = (1 << 32) - 1

# Appendix B: code length of each symbol 0..127 and of EOS (256), run-length coded as
# (length, count) pairs in symbol order.
_LENGTH_RUNS: Final = (
    (13, 1), (23, 1), (28, 7), (24, 1), (30, 1), (28, 2), (30, 1), (28, 8), (30, 1),
    (28, 9),
    # 32 ' ' .. 47 '/'
    (6, 1), (10, 2), (12, 1), (13, 1), (6, 1), (8, 1), (11, 1), (10, 2), (8, 1), (11, 1),
    (8, 1), (6, 3),
    # 48 '0' .. 64 '@'
    (5, 3), (6, 7), (7, 1), (8, 1), (15, 1), (6, 1), (12, 1), (10, 1), (13, 1),
    # 65 'A' .. 96 '`'
    (6, 1), (7, 22), (8, 1), (7, 1), (8, 1), (13, 1), (19, 1), (13, 1), (14, 1), (6, 1),
    (15, 1),
    # 97 'a' .. 127
    (5, 1), (6, 1), (5, 1), (6, 1), (5, 1), (6, 3), (5, 1), (7, 2), (6, 3), (5, 1),
    (6, 1), (7, 1), (6, 1), (5, 2), (6, 1), (7, 5), (15, 1), (11, 1), (14, 1), (13, 1),
    (28, 1),
    # EOS
    (30, 1),
)
# Symbols 128..255 (the same appendix), one length each.
_HIGH_LENGTHS: Final = bytes((
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,  # 128
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,  # 144
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,  # 160
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,  # 176
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,  # 192
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,  # 208
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,  # 224
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,  # 240
))
EOS: Final = 256


def code_lengths() -> list[int]:
    out: list[int] = []
    for length, count in _LENGTH_RUNS[:-1]:
        out.extend([length] * count)
    out.extend(_HIGH_LENGTHS)
    out.append(_LENGTH_RUNS[-1][0])  # EOS
    return out


def canonical_codes(lengths: list[int]) -> list[int]:
    """The canonical code of each symbol from its length (shorter first, then by
    symbol), as Appendix B's table is built."""
    order = sorted(range(len(lengths)), key=lambda s: (lengths[s], s))
    codes = [0] * len(lengths)
    code = 0
    prev = lengths[order[0]]
    for i, sym in enumerate(order):
        ln = lengths[sym]
        if i:
            code = (code + 1) << (ln - prev)
        codes[sym] = code
        prev = ln
    return codes


def _build_fsm() -> tuple[list[int], list[int], list[bool]]:
    """A decoding automaton reading 4 bits at a time. States are the inner nodes of
    the code tree (0 = root). ``step[state*16 + nibble]`` is the next state, or -1 for
    an error (the EOS symbol); ``emit[...]`` the symbol completed within the nibble, or
    -1 (codes are at least 5 bits long: at most one per nibble); ``accept[state]``: the
    bits since the last symbol are a valid padding (at most 7 bits, all ones)."""
    lengths = code_lengths()
    codes = canonical_codes(lengths)
    # tree: children[node] = [left, right]; a leaf is stored as -(symbol + 1)
    children: list[list[int]] = [[0, 0]]
    depth = [0]
    ones = [True]
    for sym, (ln, code) in enumerate(zip(lengths, codes, strict=True)):
        node = 0
        for i in range(ln - 1, -1, -1):
            bit = (code >> i) & 1
            if i == 0:
                children[node][bit] = -(sym + 1)
                break
            nxt = children[node][bit]
            if nxt <= 0:
                nxt = len(children)
                children.append([0, 0])
                depth.append(depth[node] + 1)
                ones.append(ones[node] and bit == 1)
                children[node][bit] = nxt
            node = nxt
    n = len(children)
    step = [-1] * (n * 16)
    emit = [-1] * (n * 16)
    for state in range(n):
        for nib in range(16):
            node = state
            sym = -1
            ok = True
            for i in (3, 2, 1, 0):
                c = children[node][(nib >> i) & 1]
                if c < 0:
                    s = -c - 1
                    if s == EOS:
                        ok = False
                        break
                    sym = s
                    node = 0
                else:
                    node = c
            if ok:
                step[state * 16 + nib] = node
                emit[state * 16 + nib] = sym
    accept = [depth[s] <= 7 and ones[s] for s in range(n)]
    return step, emit, accept


_STEP, _EMIT, _ACCEPT = _build_fsm()


def huffman_decode(data: bytes) -> bytes | None:
    """Decode a Huffman-coded string literal; None when it is invalid (section 5.2)."""
    step = _STEP
    emit = _EMIT
    out = bytearray()
    state = 0
    for b in data:
        i = state * 16 + (b >> 4)
        state = step[i]
        if state < 0:
            return None
        s = emit[i]
        if s >= 0:
            out.append(s)
        i = state * 16 + (b & 0x0F)
        state = step[i]
        if state < 0:
            return None
        s = emit[i]
        if s >= 0:
            out.append(s)
    if not _ACCEPT[state]:
        return None
    return bytes(out)


class HpackError(Exception):
    """A header block that cannot be decoded (carries Suricata's event name)."""

    def __init__(self, event: str) -> None:
        super().__init__(event)
        self.event = event


class DecodedBlock:
    __slots__ = ("dropped", "error", "headers", "size_updates")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.size_updates: list[int] = []
        self.error: str | None = None  # the event that stopped decoding, if any
        self.dropped = False  # fields dropped past MAX_HEADER_LIST


class Decoder:
    """The decoding context of one direction: its dynamic table (section 2.3.2)."""

    __slots__ = ("_dyn", "_size", "max_size")

    def __init__(self, max_size: int = DEFAULT_TABLE_SIZE) -> None:
        self._dyn: list[tuple[bytes, bytes]] = []  # newest first
        self._size = 0
        self.max_size = min(max_size, MAX_TABLE_SIZE)

    @property
    def table_size(self) -> int:
        return self._size

    def memuse(self) -> int:
        return self._size

    def _evict(self, limit: int) -> None:
        dyn = self._dyn
        while self._size > limit and dyn:
            n, v = dyn.pop()
            self._size -= len(n) + len(v) + 32

    def _add(self, name: bytes, value: bytes) -> None:
        # Section 4.4: an entry larger than the table empties it and is not added.
        size = len(name) + len(value) + 32
        self._evict(self.max_size - size)
        if size <= self.max_size:
            self._dyn.insert(0, (name, value))
            self._size += size

    def _lookup(self, index: int) -> tuple[bytes, bytes]:
        if 1 <= index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        i = index - len(STATIC_TABLE) - 1
        if 0 <= i < len(self._dyn):
            return self._dyn[i]
        raise HpackError("invalid_header")

    def decode(self, block: bytes) -> DecodedBlock:
        out = DecodedBlock()
        listed = 0
        pos = 0
        n = len(block)
        try:
            while pos < n:
                b = block[pos]
                if b & 0x80:  # 6.1 indexed header field
                    index, pos = _integer(block, pos, 7)
                    if index == 0:
                        raise HpackError("invalid_header")
                    name, value = self._lookup(index)
                elif b & 0x40:  # 6.2.1 literal with incremental indexing
                    name, value, pos = self._literal(block, pos, 6)
                    self._add(name, value)
                elif b & 0x20:  # 6.3 dynamic table size update
                    size, pos = _integer(block, pos, 5)
                    out.size_updates.append(size)
                    self.max_size = min(size, MAX_TABLE_SIZE)
                    self._evict(self.max_size)
                    continue
                else:  # 6.2.2 without indexing / 6.2.3 never indexed
                    name, value, pos = self._literal(block, pos, 4)
                size = len(name) + len(value) + 32
                if listed + size > MAX_HEADER_LIST:
                    out.dropped = True
                    continue
                listed += size
                out.headers.append((name, value))
        except HpackError as e:
            out.error = e.event
        return out

    def _literal(self, block: bytes, pos: int, prefix: int) -> tuple[bytes, bytes, int]:
        index, pos = _integer(block, pos, prefix)
        if index:
            name = self._lookup(index)[0]
        else:
            name, pos = _string(block, pos)
        value, pos = _string(block, pos)
        return name, value, pos


def _integer(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """Section 5.1: an integer with an N-bit prefix starting at block[pos]."""
    mask = (1 << prefix) - 1
    v = block[pos] & mask
    pos += 1
    if v < mask:
        return v, pos
    shift = 0
    for _ in range(MAX_INT_OCTETS):
        if pos >= len(block):
            raise HpackError("invalid_header")
        b = block[pos]
        pos += 1
        v += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            if v > MAX_INT:
                raise HpackError("header_integer_overflow")
            return v, pos
    raise HpackError("header_integer_overflow")


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    """Section 5.2: a string literal (Huffman-coded when its first bit is set)."""
    if pos >= len(block):
        raise HpackError("invalid_header")
    huff = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise HpackError("invalid_header")
    raw = block[pos:end]
    if huff:
        dec = huffman_decode(raw)
        if dec is None:
            raise HpackError("invalid_header")
        return dec, end
    return raw, end
