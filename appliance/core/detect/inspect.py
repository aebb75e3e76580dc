"""Content inspection of one buffer against one rule chain (Suricata's
detect-engine-content-inspection.c semantics).

- An absolute content is searched in [offset, offset + depth).
- A relative content (distance/within) starts at the previous match's end + distance and
  must end within `within` bytes of (previous end + distance).
- When a later relative item fails, the previous content is retried at its next
  occurrence (Suricata's recursion), so `content:"a"; content:"b"; within:1;` finds "ab"
  in "a_ab".
- Negated items succeed when their window holds no match, and never backtrack.
- pcre runs through the `regex` module with a per-call timeout so that no pattern can
  hang the engine; a timeout counts as no match of the whole chain and is counted.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import re
from typing import Any, Final
from urllib.parse import unquote_to_bytes

import regex

from appliance.rules.compiler import CContent, Chain, CPcre
from appliance.rules.keywords import (
    Base64Decode,
    Bsize,
    ByteExtract,
    ByteJump,
    ByteMath,
    ByteRead,
    ByteTest,
    DatasetOp,
    FileSize,
    HashList,
    IsDataAt,
)
from appliance.rules.pcre import PcreError, translate_pcre

# Seconds one pcre call may run: far above any sane pattern on a 64 KiB buffer
# (microseconds), far below what would stall a queue. A pattern that needs more on
# crafted input is a ReDoS, and the packet is treated as not matching.
PCRE_TIMEOUT: Final = 0.05
# Recursion budget per chain evaluation: bounds backtracking over many occurrences of a
# short first content (Suricata has an equivalent inspection recursion limit).
MAX_STEPS: Final = 3000
# What one retry of a pcre at its next match costs of that budget: a pcre call is far
# dearer than a content search, so a chain retries a pcre at most 30 times.
PCRE_RETRY_COST: Final = 100


class InspectStats:
    __slots__ = ("pcre_timeouts", "step_limit_hits")

    def __init__(self) -> None:
        self.pcre_timeouts = 0
        self.step_limit_hits = 0


STATS = InspectStats()


class MatchEnv(dict[str, int]):
    """The variables of one rule evaluation (byte_extract/byte_math names), plus what
    its last base64_decode decoded (for the base64_data chain)."""

    b64: bytes | None = None


_B64_RUN: Final = re.compile(rb"[A-Za-z0-9+/]*")


def base64_decode(d: Base64Decode, buf: bytes, prev_end: int) -> bytes:
    """Suricata's base64_decode: from ``offset`` (after the previous match when
    relative), at most ``nbytes`` input bytes (0: the rest), RFC 4648 strict: decoding
    stops at the first byte outside the base64 alphabet ('=' padding included); a last
    incomplete group gives the whole bytes it holds."""
    start = (prev_end if d.relative else 0) + d.offset
    if start >= len(buf):
        return b""
    end = start + d.nbytes if d.nbytes else len(buf)
    m = _B64_RUN.match(buf, start, min(end, len(buf)))
    text = m.group(0) if m else b""
    full = len(text) - len(text) % 4
    out = binascii.a2b_base64(text[:full]) if full else b""
    rem = len(text) - full
    if rem >= 2:
        out += binascii.a2b_base64(text[full:] + b"=" * (4 - rem))[:rem - 1]
    return out


def _var(v: int | str | None, env: dict[str, int]) -> int | None:
    if v is None or isinstance(v, int):
        return v
    return env.get(v)


class _Budget:
    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_STEPS


def match_chain(chain: Chain, buf: bytes, env: dict[str, int]) -> bool:
    """True when every item of the chain matches `buf` (env holds byte_extract vars)."""
    lowered: list[bytes | None] = [None]
    return _match(chain.items, 0, buf, lowered, 0, env, _Budget())


def _lower(buf: bytes, cache: list[bytes | None]) -> bytes:
    lb = cache[0]
    if lb is None:
        lb = cache[0] = buf.lower()
    return lb


def _match(items: tuple[Any, ...], i: int, buf: bytes, lcache: list[bytes | None],
           prev_end: int, env: dict[str, int], budget: _Budget) -> bool:
    n = len(items)
    while i < n:
        budget.left -= 1
        if budget.left <= 0:
            STATS.step_limit_hits += 1
            return False
        it = items[i]
        t = type(it)
        if t is CContent:
            return _content(items, i, it, buf, lcache, prev_end, env, budget)
        if t is CPcre:
            if not it.negated:
                return _pcre(items, i, it, buf, lcache, prev_end, env, budget)
            # A relative pcre sees the buffer from the previous match on, so `^` anchors
            # there (Suricata passes the pointer past the match to PCRE).
            start = prev_end if it.relative else 0
            try:
                m = None if start > len(buf) else it.regex.search(
                    buf[start:] if start else buf, timeout=PCRE_TIMEOUT)
            except TimeoutError:
                STATS.pcre_timeouts += 1
                budget.left = 0
                return False
            if m is not None:
                return False
        elif t is ByteTest:
            if not _byte_test(it, buf, prev_end, env):
                return False
        elif t is ByteJump:
            pos = _byte_jump(it, buf, prev_end, env)
            if pos is None:
                return False
            prev_end = pos
        elif t is ByteExtract:
            pos = _byte_extract(it, buf, prev_end, env)
            if pos is None:
                return False
            prev_end = pos
        elif t is ByteMath:
            if not _byte_math(it, buf, prev_end, env):
                return False
        elif t is IsDataAt:
            nv = _var(it.n, env)
            if nv is None:
                return False
            # Suricata (detect-isdataat.c): relative means prev_end + N <= length;
            # absolute means N < length.
            ok = prev_end + nv <= len(buf) if it.relative else nv < len(buf)
            if ok == it.negated:
                return False
        elif t is Bsize and not it.check.test(len(buf)):
            return False
        elif t is Base64Decode:
            if isinstance(env, MatchEnv):
                env.b64 = base64_decode(it, buf, prev_end)
        elif t is DatasetOp:
            if not it.test(buf):
                return False
        elif t is HashList:
            # file.md5/.sha1/.sha256: one file's hash as lower-case hex.
            if (buf in it.hashes) == it.negated:
                return False
        elif t is FileSize and (not buf.isdigit() or not it.check.test(int(buf))):
            # file.size: one complete file's size as decimal text.
            return False
        i += 1
    return True


def _content(items: tuple[Any, ...], i: int, c: CContent, buf: bytes,
             lcache: list[bytes | None], prev_end: int, env: dict[str, int],
             budget: _Budget) -> bool:
    hay = _lower(buf, lcache) if c.nocase else buf
    blen = len(buf)
    plen = len(c.pattern)
    if c.relative:
        dist = _var(c.distance, env) or 0
        start = prev_end + dist
        if start < 0:
            start = 0
        within = _var(c.within, env)
        end = blen if within is None else min(blen, prev_end + dist + within)
    else:
        off = _var(c.offset, env) or 0
        start = off
        depth = _var(c.depth, env)
        end = blen if depth is None else min(blen, off + depth)
        if c.startswith:
            end = min(blen, start + plen)
    if c.endswith:
        # The match must end at the end of the buffer.
        pos = blen - plen
        found = pos >= start and blen <= end and hay.startswith(c.pattern, pos)
        if c.negated:
            return not found and _match(items, i + 1, buf, lcache, prev_end, env, budget)
        return found and _match(items, i + 1, buf, lcache, blen, env, budget)
    pos = hay.find(c.pattern, start, end)
    if c.negated:
        if pos >= 0:
            return False
        return _match(items, i + 1, buf, lcache, prev_end, env, budget)
    while pos >= 0:
        if _match(items, i + 1, buf, lcache, pos + plen, env, budget):
            return True
        if budget.left <= 0:
            return False
        # Retry at the next occurrence only if a later item depends on this position.
        if not _later_relative(items, i + 1):
            return False
        pos = hay.find(c.pattern, pos + 1, end)
    return False


def _pcre(items: tuple[Any, ...], i: int, p: CPcre, buf: bytes,
          lcache: list[bytes | None], prev_end: int, env: dict[str, int],
          budget: _Budget) -> bool:
    """A positive pcre, retried one byte past its last match start while a later
    relative item fails (Suricata's inspection recursion does the same for pcre), so
    ``pcre:/super/; content:"nova"; within:7;`` finds the second "super"."""
    # A relative pcre sees the buffer from the previous match on, so `^` anchors there
    # (Suricata passes the pointer past the match to PCRE).
    start = prev_end if p.relative else 0
    if start > len(buf):
        return False
    hay = buf[start:] if start else buf
    pos = 0
    while pos <= len(hay):
        try:
            m = p.regex.search(hay, pos, timeout=PCRE_TIMEOUT)
        except TimeoutError:
            # A ReDoS: the rule does not match, and the chain is not retried at the
            # next occurrence of an earlier content (each retry would cost another
            # timeout: 3,000 of them on a long run of 'a's held one packet 150 s).
            STATS.pcre_timeouts += 1
            budget.left = 0
            return False
        if m is None:
            return False
        if _match(items, i + 1, buf, lcache, start + m.end(), env, budget):
            return True
        if budget.left <= 0 or not _later_relative(items, i + 1):
            return False
        budget.left -= PCRE_RETRY_COST
        pos = m.start() + 1
    return False


def _later_relative(items: tuple[Any, ...], j: int) -> bool:
    if j >= len(items):
        return False
    it = items[j]
    t = type(it)
    if t is CContent:
        return bool(it.relative)
    if t is CPcre:
        return bool(it.relative)
    rd = getattr(it, "read", None)
    if rd is not None:
        return bool(rd.relative)
    if t is IsDataAt:
        return bool(it.relative)
    return False


# -- byte keywords ----------------------------------------------------------------------------


def _read(r: ByteRead, buf: bytes, prev_end: int, env: dict[str, int]) -> tuple[int, int] | None:
    """(value, position after the bytes) or None when out of bounds / not a number."""
    off = _var(r.offset, env)
    if off is None:
        return None
    pos = (prev_end if r.relative else 0) + off
    nb = r.nbytes
    if isinstance(nb, str):  # a byte_extract/byte_math variable: 0 to 8 bytes
        got = env.get(nb)
        if got is None or not 0 <= got <= 8:
            return None
        n = got
    else:
        n = nb
    if n == 0 and r.string is None:  # byte_jump:0 reads nothing
        return (0, pos) if 0 <= pos <= len(buf) else None
    end = pos + n if n else len(buf)
    if pos < 0 or end > len(buf):
        return None
    raw = buf[pos:end]
    if r.string is not None:
        base = {"dec": 10, "hex": 16, "oct": 8}[r.string]
        try:
            v = int(raw.decode("ascii").strip() or "x", base)
        except (ValueError, UnicodeDecodeError):
            return None
    else:
        little = r.little
        if r.dce:
            # dce: the byte order of the DCERPC data representation (a stub buffer
            # carries it, app/dcerpc.py StubData); little-endian, NDR's usual, elsewhere.
            little = getattr(buf, "dce_little", True)
        v = int.from_bytes(raw, "little" if little else "big")
    if r.bitmask is not None:
        mask = r.bitmask
        v &= mask
        if mask:
            while not mask & 1:  # Suricata shifts the result right past the mask's zeros
                mask >>= 1
                v >>= 1
    return v, end


def _byte_test(bt: ByteTest, buf: bytes, prev_end: int, env: dict[str, int]) -> bool:
    got = _read(bt.read, buf, prev_end, env)
    if got is None:
        return False
    v = got[0]
    want = _var(bt.value, env)
    if want is None:
        return False
    op = bt.op
    if op == "<":
        r = v < want
    elif op == ">":
        r = v > want
    elif op == "=":
        r = v == want
    elif op == "<=":
        r = v <= want
    elif op == ">=":
        r = v >= want
    elif op == "&":
        r = bool(v & want)
    else:  # "^"
        r = bool(v ^ want)
    return r != bt.negated


def _byte_jump(bj: ByteJump, buf: bytes, prev_end: int, env: dict[str, int]) -> int | None:
    got = _read(bj.read, buf, prev_end, env)
    if got is None:
        return None
    v, after = got
    jump = v * bj.multiplier
    if bj.align and jump % 4:
        jump += 4 - jump % 4
    if bj.from_beginning:
        pos = jump + bj.post_offset
    elif bj.from_end:
        pos = len(buf) + jump + bj.post_offset
    else:
        pos = after + jump + bj.post_offset
    if pos < 0:
        # A (negative) post_offset before the buffer's start stops at the start, as
        # Suricata (suricata-verify detect-bytejump-05).
        pos = 0
    if pos > len(buf):
        return None
    return pos


def _byte_extract(be: ByteExtract, buf: bytes, prev_end: int, env: dict[str, int]) -> int | None:
    got = _read(be.read, buf, prev_end, env)
    if got is None:
        return None
    v, after = got
    v *= be.multiplier
    if be.align and v % be.align:
        v += be.align - v % be.align
    env[be.name] = v
    return after


def _byte_math(bm: ByteMath, buf: bytes, prev_end: int, env: dict[str, int]) -> bool:
    got = _read(bm.read, buf, prev_end, env)
    rv = _var(bm.rvalue, env)
    if got is None or rv is None:
        return False
    v = got[0]
    op = bm.oper
    if op == "+":
        res = v + rv
    elif op == "-":
        res = v - rv
    elif op == "*":
        res = v * rv
    elif op == "/":
        if rv == 0:
            return False
        res = v // rv
    elif op == "<<":
        res = v << min(rv, 64)
    else:
        res = v >> min(rv, 64)
    # Suricata keeps byte_math results as unsigned 64-bit numbers: 0 - 1 wraps around.
    env[bm.result] = res & 0xFFFF_FFFF_FFFF_FFFF
    return True


# -- transforms (Suricata 7 transformations) ---------------------------------------------------


@functools.lru_cache(maxsize=1024)
def pcrexform_regex(arg: str) -> Any:
    """The compiled regex of a pcrexform argument (a quoted PCRE without delimiters), or
    None when it does not compile (the compiler refuses such rules first)."""
    src = arg.strip()
    if len(src) >= 2 and src[0] == src[-1] == '"':
        src = src[1:-1]
    try:
        return regex.compile(translate_pcre(src).encode("utf-8", "surrogateescape"))
    except (regex.error, PcreError, ValueError):
        return None


def apply_transforms(buf: bytes, transforms: tuple[tuple[str, str | None], ...]) -> bytes:
    for name, arg in transforms:
        if name == "dotprefix":
            buf = b"." + buf
        elif name == "to_lowercase":
            buf = buf.lower()
        elif name == "to_uppercase":
            buf = buf.upper()
        elif name == "strip_whitespace":
            buf = b"".join(buf.split())
        elif name == "compress_whitespace":
            buf = b" ".join(buf.split()) if buf.strip() else buf[:1] if buf else buf
        elif name == "to_md5":
            buf = hashlib.md5(buf).digest()
        elif name == "to_sha1":
            buf = hashlib.sha1(buf).digest()
        elif name == "to_sha256":
            buf = hashlib.sha256(buf).digest()
        elif name == "url_decode":
            buf = unquote_to_bytes(buf.replace(b"+", b" "))
        elif name == "header_lowercase":
            buf = b"\r\n".join(
                (ln.split(b":", 1)[0].lower() + b":" + ln.split(b":", 1)[1]) if b":" in ln
                else ln for ln in buf.split(b"\r\n"))
        elif name == "pcrexform" and arg:
            # The buffer becomes the regex's first capture (the whole match without a
            # group); without a match it is left as it is (Suricata's pcrexform).
            rx = pcrexform_regex(arg)
            if rx is not None:
                try:
                    m = rx.search(buf, timeout=PCRE_TIMEOUT)
                except TimeoutError:
                    STATS.pcre_timeouts += 1
                    m = None
                if m is not None:
                    buf = m.group(1) if rx.groups else m.group(0)
        elif name == "xor" and arg:
            key = bytes.fromhex(arg.strip().strip('"'))
            if key:
                buf = bytes(b ^ key[i % len(key)] for i, b in enumerate(buf))
    return buf
