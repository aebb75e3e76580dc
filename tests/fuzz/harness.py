"""Fuzz harness: mutational and structured inputs for every parser the appliance exposes
to hostile bytes, with the invariants each must keep.

A target turns a deterministic `random.Random` into one input (a corpus seed mutated
with bit flips, truncation, splicing, length-field tweaks..., or a structured generator),
runs it, and raises `Failure` when an invariant breaks. `run_target` counts inputs,
failures and packets left without a verdict; a failure is minimised and can be written
to the corpus as a regression case (`crash-*` files, replayed by tests/fuzz/test_fuzz.py).

Invariants:
- nothing raises out of the code under test except the errors it documents (RuleParseError,
  ConfigError, InputError...); the catch-all nets inside the engine and the HTTP parser
  (principle 7) do not count as "no crash": `Engine.stats.errors` growing or an HTTP
  `PARSER_ERROR` event is a failure too, reported with the exception that was caught;
- every PacketIn yields exactly one Verdict, or one Hold that the FileScanned answering it
  resolves into exactly one Verdict;
- every EVE record the engine returns encodes (as appliance/io/eve.py writes it) to one
  line of valid UTF-8 JSON that parses back to the same record;
- the control server answers every complete request line with one JSON reply, and the
  stream with an error when it cannot be framed.

Reproduce: a (target, seed, index) triple regenerates the same input; `bench/fuzz.py`
prints them for each failure.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import random
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.core.commands import Hold, Log, ScanRequest, Verdict
from appliance.core.decode import Decoder
from appliance.core.defrag import Defragmenter
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import LINKTYPE_RAW, FileScanned, PacketIn, Shutdown, Tick
from tests.fuzz.corpus_io import (
    CORPUS,
    Chunk,
    Frame,
    pcap_bytes_frames,
    read_conv,
    write_conv,
    write_pcap,
)

ROOT = Path(__file__).resolve().parents[2]
# The same encoder EveWriter uses (compact, UTF-8 kept as is).
_EVE_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Failure(Exception):
    """An invariant broke. `key` identifies the bug (kind + where) for minimisation."""

    def __init__(self, kind: str, detail: str, where: str = "", count: int = 0) -> None:
        super().__init__(f"{kind}: {detail}" + (f" at {where}" if where else ""))
        self.kind = kind
        self.detail = detail
        self.where = where
        self.count = count  # packets without exactly one verdict (kind "verdicts")

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.where


def _where(tb: Any) -> str:
    """The innermost frame of the appliance's code in a traceback: file:line."""
    last = ""
    for fs in traceback.extract_tb(tb):
        if "/appliance/" in fs.filename:
            last = f"{Path(fs.filename).relative_to(ROOT)}:{fs.lineno}"
    return last


def crash(e: BaseException) -> Failure:
    return Failure(f"crash {type(e).__name__}", str(e)[:200], _where(e.__traceback__))


@contextlib.contextmanager
def crashes_as_failures() -> Iterator[None]:
    """An exception out of the block, other than a Failure, becomes the Failure that
    names the crash (its type, message and innermost appliance frame)."""
    try:
        yield
    except Failure:
        raise
    except Exception as e:
        raise crash(e) from e


@contextlib.contextmanager
def caught_inside(frame_names: set[str]) -> Iterator[list[BaseException]]:
    """Record the exceptions that reach a function named in `frame_names` (the frames
    whose `except Exception` nets would swallow them): for diagnosing masked crashes
    only, as tracing is slow."""
    seen: list[BaseException] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if event == "exception" and frame.f_code.co_name in frame_names and \
                "/appliance/" in frame.f_code.co_filename:
            seen.append(arg[1])
        return tracer

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield seen
    finally:
        sys.settrace(old)


# -- mutations ----------------------------------------------------------------------------

INTERESTING_8 = (0, 1, 0x7F, 0x80, 0xFF)
INTERESTING_16 = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF)
INTERESTING_32 = (0, 1, 4, 8, 12, 16, 20, 28, 32, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF,
                  0x10000)


def mutate_bytes(rng: random.Random, data: bytes, other: bytes = b"",
                 tokens: tuple[bytes, ...] = ()) -> bytes:
    """1-4 stacked byte-level mutations (AFL's havoc, simplified)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(11 if tokens else 10)
        n = len(b)
        if op == 0 and n:  # bit flip
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # interesting byte
            b[rng.randrange(n)] = rng.choice(INTERESTING_8)
        elif op == 2 and n:  # random byte
            b[rng.randrange(n)] = rng.randrange(256)
        elif op == 3:  # truncate
            del b[rng.randint(0, n):]
        elif op == 4 and n:  # delete a range
            i = rng.randrange(n)
            del b[i:i + rng.randint(1, max(1, min(64, n - i)))]
        elif op == 5:  # insert random bytes
            i = rng.randint(0, n)
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 6 and n:  # duplicate a range
            i = rng.randrange(n)
            j = min(n, i + rng.randint(1, 128))
            k = rng.randint(0, n)
            b[k:k] = b[i:j]
        elif op == 7 and other:  # splice: our head, the other's tail
            i = rng.randint(0, n)
            j = rng.randint(0, len(other))
            b = b[:i] + bytearray(other[j:])
        elif op == 8 and n >= 2:  # 16-bit length field tweak, either byte order
            i = rng.randrange(n - 1)
            v = rng.choice((*INTERESTING_16, n - i, n - i + 1, max(0, n - i - 1)))
            b[i:i + 2] = struct.pack(rng.choice("<>") + "H", v & 0xFFFF)
        elif op == 9 and n >= 4:  # 32-bit length field tweak
            i = rng.randrange(n - 3)
            v = rng.choice((*INTERESTING_32, n - i, n - i + 4))
            b[i:i + 4] = struct.pack(rng.choice("<>") + "I", v & 0xFFFFFFFF)
        elif op == 10:  # a token of the format
            i = rng.randint(0, n)
            t = rng.choice(tokens)
            if rng.random() < 0.5 and n:
                b[i:i + len(t)] = t
            else:
                b[i:i] = t
    return bytes(b)


def ddmin(items: list[Any], fails: Callable[[list[Any]], bool], budget: list[int]) -> list[Any]:
    """Delta debugging over a list: the smallest sub-list (by chunk removal) that still
    fails. `budget` (a one-element list) bounds the number of runs."""
    n = 2
    while len(items) >= 2 and budget[0] > 0:
        size = max(1, len(items) // n)
        reduced = False
        for i in range(0, len(items), size):
            if budget[0] <= 0:
                break
            cand = items[:i] + items[i + size:]
            budget[0] -= 1
            if cand and fails(cand):
                items = cand
                n = max(n - 1, 2)
                reduced = True
                break
        if not reduced:
            if size == 1:
                break
            n = min(len(items), n * 2)
    return items


def shrink_bytes(data: bytes, fails: Callable[[bytes], bool], budget: list[int]) -> bytes:
    return bytes(ddmin(list(data), lambda xs: fails(bytes(xs)), budget)) if data else data


# -- the engine: packet sequences ---------------------------------------------------------

Packets = list[Frame]


def check_record(rec: Any) -> None:
    """One EVE record -> one line of valid UTF-8 JSON that reads back as the record."""
    try:
        line = _EVE_DUMPS(rec)
        line.encode("utf-8")
    except (TypeError, ValueError, UnicodeError) as e:
        raise Failure("bad-eve", f"{type(e).__name__}: {e}"[:200]) from None
    if "\n" in line or "\r" in line:
        raise Failure("bad-eve", "raw line break in an EVE line")
    if not isinstance(rec, dict) or "event_type" not in rec:
        raise Failure("bad-eve", "record without event_type")
    if json.loads(line) != json.loads(json.dumps(rec)):
        raise Failure("bad-eve", "record does not read back as written")


@dataclass
class EngineRun:
    """Counters of one engine input: packets in, packets without exactly one verdict."""

    packets: int = 0
    unanswered: int = 0


class EngineHarness:
    """Engines to drive: IDS with a small ruleset, and IPS with the lab policy, file
    scanning (Hold/FileScanned) and bypass. Built once: the rules' prefilter costs ms."""

    def __init__(self) -> None:
        from appliance.policy_file import load_policy
        from appliance.rules.loader import detection_from_text

        lines = (CORPUS / "rules" / "seeds.rules").read_text(encoding="utf-8").splitlines()
        self.detection = detection_from_text(lines[:80])
        self.policy = load_policy(ROOT / "rules" / "lab-policy.yaml")
        self.configs = [
            EngineConfig(),
            EngineConfig(mode="ips", scan_files=True, log_pcap_cnt=False),
        ]

    def engine(self, variant: int) -> Engine:
        cfg = self.configs[variant % len(self.configs)]
        if variant % 2:
            return Engine(cfg, detector=self.detection.engine, policy=self.policy)
        return Engine(cfg, detector=self.detection.engine)

    def run(self, frames: Packets, variant: int, rng_seed: int = 0) -> EngineRun:
        eng = self.engine(variant)
        res = EngineRun()
        answers: dict[int, int] = {}  # packet id -> verdicts seen
        held: dict[int, int] = {}  # token -> packet id
        verdicts = ("clean", "malicious", "unknown")
        last_ts = 0.0

        def take(cmds: list[Any]) -> None:
            for c in cmds:
                t = type(c)
                if t is Verdict:
                    answers[c.packet_id] = answers.get(c.packet_id, 0) + 1
                elif t is Log:
                    check_record(c.record)
                elif t is Hold:
                    held[c.token] = c.packet_id
                elif t is ScanRequest and not isinstance(c.sha256, str):
                    raise Failure("bad-scan-request", repr(c)[:200])

        errors = 0
        for i, (lt, ts, data) in enumerate(frames, 1):
            last_ts = ts
            with crashes_as_failures():
                take(eng.handle(PacketIn(i, ts, data, lt)))
                # the runtime answers held files (here: at once, verdict by the seed)
                while held:
                    token, _pid = held.popitem()
                    v = verdicts[(rng_seed + token) % 3]
                    take(eng.handle(FileScanned(token, v, ("X",) if v == "malicious" else (),
                                                "timeout" if v == "unknown" else "scan",
                                                ts)))
            res.packets += 1
            if eng.stats.errors != errors:
                raise self._masked(frames[:i], variant, rng_seed)
        with crashes_as_failures():
            take(eng.handle(Tick(last_ts + 400.0)))
            take(eng.handle(Shutdown()))
        if eng.stats.errors:
            raise self._masked(frames, variant, rng_seed)
        for i in range(1, len(frames) + 1):
            if answers.get(i, 0) != 1:
                res.unanswered += 1
        if res.unanswered:
            bad = [i for i in range(1, len(frames) + 1) if answers.get(i, 0) != 1]
            raise Failure("verdicts", f"packets {bad[:5]} got "
                          f"{[answers.get(i, 0) for i in bad[:5]]} verdicts",
                          count=res.unanswered)
        return res

    def _masked(self, frames: Packets, variant: int, rng_seed: int) -> Failure:
        """Engine.stats.errors grew: replay under a tracer to name the swallowed exception."""
        eng = self.engine(variant)
        with caught_inside({"_packet", "_app_close", "_file_scanned"}) as seen:
            for i, (lt, ts, data) in enumerate(frames, 1):
                with contextlib.suppress(Exception):
                    eng.handle(PacketIn(i, ts, data, lt))
            with contextlib.suppress(Exception):
                eng.handle(Shutdown())
        if not seen:
            return Failure("engine-error", "Engine.stats.errors grew (exception not traced)")
        e = seen[-1]
        return Failure(f"engine-error {type(e).__name__}", str(e)[:200], _where(e.__traceback__))


# -- targets -------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    generate: Callable[[random.Random], Any]
    check: Callable[[Any], int]  # runs one input; returns packets decided (0: not a packet target)
    dump: Callable[[Any], tuple[str, bytes]]  # (corpus dir/extension, bytes) of an input
    shrink: Callable[[Any, Callable[[Any], bool], list[int]], Any]
    weight: int = 1  # share of the bench's inputs
    seeds: list[Any] = field(default_factory=list)


def _files(sub: str, pattern: str) -> list[Path]:
    return sorted((CORPUS / sub).glob(pattern))


def _pcap_seeds() -> list[Packets]:
    out = []
    for f in _files("packets", "*.pcap"):
        frames = pcap_bytes_frames(f.read_bytes())
        if frames:
            out.append(frames)
    return out


def _conv_seeds(proto: str) -> list[list[Chunk]]:
    return [read_conv(f.read_bytes()) for f in _files(proto, "*.conv")]


def _shrink_packets(frames: Packets, fails: Callable[[Packets], bool],
                    budget: list[int]) -> Packets:
    frames = ddmin(frames, fails, budget)
    for i in range(len(frames)):
        lt, ts, data = frames[i]

        def one(d: bytes, i: int = i, lt: int = lt, ts: float = ts) -> bool:
            return fails([*frames[:i], (lt, ts, d), *frames[i + 1:]])

        frames[i] = (lt, ts, shrink_bytes(data, one, budget))
    return frames


def _shrink_chunks(chunks: list[Chunk], fails: Callable[[list[Chunk]], bool],
                   budget: list[int]) -> list[Chunk]:
    chunks = ddmin(chunks, fails, budget)
    for i in range(len(chunks)):
        ts, data = chunks[i]

        def one(d: bytes, i: int = i, ts: bool = ts) -> bool:
            return fails([*chunks[:i], (ts, d), *chunks[i + 1:]])

        chunks[i] = (ts, shrink_bytes(data, one, budget))
    return chunks


def _dump_packets(frames: Packets) -> tuple[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.pcap"
        lt = frames[0][0] if frames else 1
        write_pcap(p, [(lt, ts, data) for _lt, ts, data in frames])
        return "packets/.pcap", p.read_bytes()


def _dump_conv(proto: str) -> Callable[[list[Chunk]], tuple[str, bytes]]:
    def dump(chunks: list[Chunk]) -> tuple[str, bytes]:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "x.conv"
            write_conv(p, chunks)
            return f"{proto}/.conv", p.read_bytes()
    return dump


# ---- packets: mutated corpus sequences, TCP streams, fragments


def mutate_packets(rng: random.Random, seeds: list[Packets]) -> Packets:
    frames = list(rng.choice(seeds))
    if len(frames) > 24:  # a window of the sequence: more inputs per second
        i = rng.randrange(len(frames) - 23)
        frames = frames[i:i + 24]
    other = rng.choice(seeds)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(8)
        if not frames:
            frames = list(other[:4])
            continue
        i = rng.randrange(len(frames))
        lt, ts, data = frames[i]
        if op <= 3:  # mutate a packet's bytes (most often)
            frames[i] = (lt, ts, mutate_bytes(rng, data, rng.choice(other)[2]))
        elif op == 4:  # drop a packet
            del frames[i]
        elif op == 5:  # duplicate or reorder
            j = rng.randrange(len(frames))
            if rng.random() < 0.5:
                frames.insert(j, frames[i])
            else:
                frames[i], frames[j] = frames[j], frames[i]
        elif op == 6:  # time jumps: forward past timeouts, or backwards
            dt = rng.choice((-5.0, 0.0, 61.0, 3601.0, 1e9))
            frames[i:] = [(a, max(0.0, t + dt), d) for a, t, d in frames[i:]]
        elif op == 7:  # a packet of another capture, put behind this link type
            frames.insert(i, rng.choice(other))
    # one link type per input (the corpus format): others' frames keep theirs only if same
    lt0 = frames[0][0] if frames else 1
    return [f for f in frames if f[0] == lt0]


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_packet(src: bytes, dst: bytes, proto: int, l4: bytes, ident: int = 0,
              frag: tuple[int, bool] | None = None, ttl: int = 64) -> bytes:
    """An IPv4 (4-byte addresses) or IPv6 (16) packet; frag (offset, more) adds the
    IPv4 flags/offset or an IPv6 fragment header."""
    if len(src) == 4:
        fo = 0 if frag is None else (frag[0] // 8) | (0x2000 if frag[1] else 0)
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident & 0xFFFF, fo, ttl,
                        proto, 0, src, dst)
        return h[:10] + struct.pack("!H", _csum(h)) + h[12:] + l4
    nh = proto
    if frag is not None:
        l4 = struct.pack("!BBHI", proto, 0, (frag[0] // 8) << 3 | int(frag[1]), ident) + l4
        nh = 44
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), nh, ttl, src, dst) + l4


def tcp_segment(src: bytes, dst: bytes, sp: int, dp: int, seq: int, ack: int, flags: int,
                payload: bytes, win: int = 65535, bad_sum: bool = False) -> bytes:
    h = struct.pack("!HHIIBBHHH", sp, dp, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                    win, 0, 0)
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(h) + len(payload))
    else:
        pseudo = src + dst + struct.pack("!I3xB", len(h) + len(payload), 6)
    s = _csum(pseudo + h + payload) ^ (0x5A5A if bad_sum else 0)
    return ip_packet(src, dst, 6, h[:16] + struct.pack("!H", s) + h[18:] + payload)


FIN, SYN, RST, PSH, ACK, URG = 1, 2, 4, 8, 16, 32
_PORTS = {"http": 80, "http2": 80, "tls": 443, "dns": 53, "smtp": 25, "dcerpc": 135,
          "mqtt": 1883, "krb5": 88}


def gen_stream(rng: random.Random, convs: dict[str, list[list[Chunk]]]) -> Packets:
    """A TCP conversation carrying a corpus conversation (mutated), segmented at random,
    with retransmissions, conflicting overlaps, gaps, reordering, RST/FIN, bad checksums,
    zero windows and sequence numbers near the wrap."""
    proto = rng.choice(sorted(convs))
    chunks = [(ts, d) for ts, d in rng.choice(convs[proto])]
    if chunks and rng.random() < 0.7:
        i = rng.randrange(len(chunks))
        chunks[i] = (chunks[i][0], mutate_bytes(rng, chunks[i][1]))
    v6 = rng.random() < 0.25
    cli = bytes([0xFD] + [0] * 14 + [1]) if v6 else b"\x0a\x00\x00\x01"
    srv = bytes([0xFD] + [0] * 14 + [2]) if v6 else b"\x0a\x00\x00\x02"
    cp = rng.randint(1024, 65535)
    sp = _PORTS[proto] if rng.random() < 0.8 else rng.choice((8080, 21, 1234, 443, 80))
    nxt = {True: rng.choice((rng.getrandbits(32), 0xFFFFFF00, 0)),
           False: rng.getrandbits(32)}
    ts = 1_700_000_000.0 + rng.random()
    out: Packets = []

    def send(to_server: bool, flags: int, payload: bytes = b"", seq: int | None = None,
             win: int = 65535) -> None:
        nonlocal ts
        ts += rng.choice((0.0001, 0.001, 0.01)) if rng.random() < 0.97 else 130.0
        s = nxt[to_server] if seq is None else seq
        a, b, pa, pb = (cli, srv, cp, sp) if to_server else (srv, cli, sp, cp)
        out.append((LINKTYPE_RAW, ts, tcp_segment(
            a, b, pa, pb, s, nxt[not to_server], flags, payload, win,
            bad_sum=rng.random() < 0.03)))

    if rng.random() < 0.9:  # handshake (else picked up midstream)
        send(True, SYN)
        nxt[True] += 1
        send(False, SYN | ACK)
        nxt[False] += 1
        send(True, ACK)
    for to_server, data in chunks:
        pos = 0
        while pos < len(data):
            n = rng.choice((1, 7, 100, 536, 1460, len(data)))
            seg = data[pos:pos + n]
            r = rng.random()
            flags = ACK | PSH if r < 0.9 else rng.choice((ACK, ACK | URG, ACK | FIN,
                                                         rng.randrange(256)))
            if r < 0.06:  # a gap: this segment comes later (or never)
                later = (nxt[to_server], seg)
                nxt[to_server] += len(seg)
                pos += len(seg)
                if rng.random() < 0.7:
                    send(to_server, flags)
                    send(to_server, flags, later[1], seq=later[0])
                continue
            if r < 0.12:  # an overlap with other bytes first (the inline trap)
                send(to_server, flags, bytes(len(seg)) if rng.random() < 0.5 else seg[::-1])
            send(to_server, flags, seg, win=0 if r > 0.98 else 65535)
            if r > 0.95:  # retransmission, maybe shifted
                send(to_server, flags, seg, seq=nxt[to_server] - rng.randint(0, 3))
            nxt[to_server] += len(seg)
            pos += len(seg)
            if rng.random() < 0.3:
                send(not to_server, ACK)
    end = rng.random()
    if end < 0.5:
        send(True, FIN | ACK)
        nxt[True] += 1
        send(False, FIN | ACK)
        nxt[False] += 1
        send(True, ACK)
    elif end < 0.7:
        send(rng.random() < 0.5, RST | (ACK if rng.random() < 0.5 else 0))
    return out


def gen_fragments(rng: random.Random) -> tuple[Packets, bytes | None]:
    """An IPv4 or IPv6 datagram cut into fragments; sometimes overlapping, duplicated,
    reordered, oversized or with a flipped header bit. The second item is the datagram's
    payload when the cut is clean (defrag must rebuild exactly that), else None."""
    v6 = rng.random() < 0.3
    src = bytes([0xFD] + [0] * 14 + [1]) if v6 else b"\x0a\x00\x00\x01"
    dst = bytes([0xFD] + [0] * 14 + [2]) if v6 else b"\x0a\x00\x00\x02"
    body = rng.randbytes(rng.choice((8, 100, 1500, 3000, 9000)))
    proto = rng.choice((17, 6, 1 if not v6 else 58))
    if proto == 17:
        l4 = struct.pack("!HHHH", 1234, 53, 8 + len(body), 0) + body
    elif proto == 6:
        l4 = struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 0x50, SYN, 1024, 0, 0) + body
    else:
        l4 = struct.pack("!BBHHH", 8 if not v6 else 128, 0, 0, 1, 1) + body
    size = rng.choice((8, 16, 64, 512, 1480))
    pieces = [(off, l4[off:off + size]) for off in range(0, len(l4), size)]
    clean = True
    frags = [(off, data, off + len(data) < len(l4)) for off, data in pieces]
    for _ in range(rng.choice((0, 0, 1, 2, 3))):
        clean = False
        op = rng.randrange(5)
        i = rng.randrange(len(frags))
        off, data, more = frags[i]
        if op == 0:  # overlap with different bytes
            frags.insert(rng.randint(0, len(frags)),
                         (max(0, off - 8 * rng.randint(0, 2)), rng.randbytes(len(data) + 8),
                          True))
        elif op == 1:  # duplicate
            frags.insert(rng.randint(0, len(frags)), frags[i])
        elif op == 2:  # a fragment past 64 KiB, or at a nonsense offset
            frags.append((rng.choice((65528, 65000, 8 * rng.randrange(8192))),
                          rng.randbytes(rng.choice((8, 600))), rng.random() < 0.5))
        elif op == 3:  # MF on the last, or off on a middle one
            frags[i] = (off, data, not more)
        else:  # a tiny fragment
            frags[i] = (off, data[:rng.choice((0, 1, 7))], more)
    if rng.random() < 0.5:
        rng.shuffle(frags)
    ident = rng.getrandbits(16 if not v6 else 32)
    ts = 1_700_000_000.0
    out: Packets = []
    for off, data, more in frags:
        ts += 0.001 if clean or rng.random() < 0.98 else 61.0  # past defrag's timeout
        pkt = ip_packet(src, dst, proto, data, ident, (off, more))
        if not clean and rng.random() < 0.1:
            pkt = mutate_bytes(rng, pkt)
        out.append((LINKTYPE_RAW, ts, pkt))
    return out, (l4 if clean and len(frags) > 1 else None)


def check_defrag_rebuilds(frames: Packets, payload: bytes) -> None:
    """A clean cut (no overlap, no loss), in any order: exactly one rebuilt datagram
    whose payload is the original."""
    d = Decoder()
    df = Defragmenter()
    rebuilt = []
    for lt, ts, data in frames:
        p = d.decode(data, lt, ts)
        if p.frag is None:
            raise Failure("defrag", "a fragment decoded as a whole packet")
        r = df.add(p)
        if r is not None:
            rebuilt.append(r)
    if len(rebuilt) != 1:
        raise Failure("defrag", f"{len(rebuilt)} datagrams rebuilt from a clean cut")
    q = d.decode(rebuilt[0], LINKTYPE_RAW, 0.0)
    got = rebuilt[0][q.l4_off:] if q.l4_off >= 0 else b""
    if got != payload:
        raise Failure("defrag", f"rebuilt payload differs ({len(got)} vs {len(payload)} bytes)")


# ---- app-layer parsers, directly


def mutate_conv(rng: random.Random, seeds: list[list[Chunk]],
                tokens: tuple[bytes, ...]) -> list[Chunk]:
    chunks = list(rng.choice(seeds))
    other = rng.choice(seeds)
    for _ in range(rng.randint(1, 3)):
        if not chunks:
            chunks = list(other)
            continue
        op = rng.randrange(6)
        i = rng.randrange(len(chunks))
        ts, data = chunks[i]
        if op <= 2:
            od = rng.choice(other)[1] if other else b""
            chunks[i] = (ts, mutate_bytes(rng, data, od, tokens))
        elif op == 3 and data:  # re-cut a chunk (chunking must not matter)
            j = rng.randint(0, len(data))
            chunks[i:i + 1] = [(ts, data[:j]), (ts, data[j:])]
        elif op == 4:  # the other direction
            chunks[i] = (not ts, data)
        else:
            chunks.insert(i, rng.choice(other) if other else (ts, b""))
    return chunks


HTTP_TOKENS = (b"\r\n", b"\n", b"\r\n\r\n", b": ", b"Content-Length: ", b"Transfer-Encoding: "
               b"chunked\r\n", b"Content-Encoding: gzip\r\n", b"0\r\n\r\n", b"ffffffff\r\n",
               b"-1", b"HTTP/1.1 ", b"GET ", b"%", b"%u", b"\x00", b"\x1b[", b"\xff\xfe",
               b"\xc3\x28", b"Range: bytes=0-", b"Content-Disposition: attachment; filename=",
               b"Upgrade: h2c\r\n", b"Connection: close\r\n", b"100 Continue\r\n")


def check_http(chunks: list[Chunk]) -> int:
    from appliance.core.app.http import HttpParser

    p = HttpParser()
    events = []
    with crashes_as_failures():
        for ts, data in chunks:
            events += p.feed(data, ts)
        events += p.close()
        for tx in p.transactions:
            rec = {"event_type": "http", "http": tx.eve()}
            check_record(rec)
            for f in tx.files:
                check_record({"event_type": "fileinfo", "fileinfo": f.eve()})
            tx.request_buffers()
            tx.response_buffers()
    if any(ev.name == "PARSER_ERROR" for ev in events):
        p = HttpParser()
        with caught_inside({"feed", "close"}) as seen:
            for ts, data in chunks:
                p.feed(data, ts)
            p.close()
        e = seen[-1] if seen else None
        raise Failure(f"parser-error {type(e).__name__}", str(e)[:200],
                      _where(e.__traceback__) if e else "")
    return 0


TLS_TOKENS = (b"\x16\x03\x01", b"\x16\x03\x03", b"\x14\x03\x03\x00\x01\x01", b"\x17\x03\x03",
              b"\x15\x03\x03\x00\x02", b"\x00\x00", b"\xff\xff", b"\x30\x82", b"\x06\x03\x55\x04")


def check_tls(chunks: list[Chunk]) -> int:
    from appliance.core.app import ANOMALY
    from appliance.core.app.tls import TlsParser

    p = TlsParser()
    with crashes_as_failures():
        for ts, data in chunks:
            # TlsParser.feed without its catch-all (principle 7's net hides bugs here)
            d = p._ts if ts else p._tc
            if d.broken or not data or p.encrypted:
                continue
            out: list[Any] = []
            p._feed(d, data, ts, out)
            if any(ev.kind != ANOMALY and ev.kind not in ("tls_handshake", "tls_encrypted")
                   for ev in out):
                raise Failure("tls-event", f"unknown event kind {out[0].kind}")
        p.close()
        check_record({"event_type": "tls", "tls": p.eve()})
        p.buffers()
    return 0


DNS_TOKENS = (b"\xc0\x0c", b"\xc0\x00", b"\xc0\xff", b"\x3f", b"\x00\x00\x29", b"\x00\x10",
              b"\x00\xff", b"\x00\x00\x00\x00")


def check_dns(chunks: list[Chunk]) -> int:
    from appliance.core.app.dns import DnsParser

    with crashes_as_failures():
        p = DnsParser()
        for ts, data in chunks:
            # each chunk a datagram, parsed without parse_datagram's catch-all
            p._message(bytes(data), ts)
        for tx in p.transactions:
            for rec in tx.eve():
                check_record({"event_type": "dns", "dns": rec})
            tx.buffers()
        q = DnsParser()  # the same bytes as DNS over TCP, each with its length prefix
        stream = {True: b"", False: b""}
        for ts, data in chunks:
            stream[ts] += struct.pack("!H", len(data) & 0xFFFF) + data
        for ts, data in stream.items():
            q.feed(data, ts)
        q.close()
    return 0


DCERPC_TOKENS = (b"\x05\x00\x0b\x03\x10\x00\x00\x00", b"\x05\x00\x00\x03\x10\x00\x00\x00",
                 b"\x05\x00\x02\x03\x10\x00\x00\x00", b"\x05\x00\x0c\x03\x00\x00\x00\x00",
                 b"\xff\xff", b"\x00\x00", b"\x10\x00", b"\x01", b"\x02", b"\x80",
                 b"\x04\x00\x00\x00\x10\x00\x00\x00")


def check_dcerpc(chunks: list[Chunk]) -> int:
    """Both directions of a connection-oriented association, and each chunk as a
    connectionless datagram, without the parser's catch-all nets."""
    from appliance.core.app import ANOMALY
    from appliance.core.app.dcerpc import DCERPC_BIND, DCERPC_TX, DcerpcParser

    p = DcerpcParser()
    q = DcerpcParser()
    c = p.conn
    with crashes_as_failures():
        for ts, data in chunks:
            out: list[Any] = []
            if not c.failed and data:
                c._feed(c.client if ts else c.server, bytes(data), ts, out)
            q._datagram(bytes(data), ts, out)
            for ev in out:
                if ev.kind not in (ANOMALY, DCERPC_TX, DCERPC_BIND):
                    raise Failure("dcerpc-event", f"unknown event kind {ev.kind}")
                tx = ev.data.get("tx")
                if tx is not None:
                    conn = ev.data["conn"]
                    conn.buffers(tx, ev.to_server)
                    check_record({"event_type": "dcerpc", "dcerpc": conn.eve(tx)})
            if p.memuse() > 4 * 65536 + 64 * 1024 * 1024:
                raise Failure("dcerpc-memuse", f"{p.memuse()} bytes held")
        for ev in p.close() + q.close():
            check_record({"event_type": "dcerpc", "dcerpc": ev.data["conn"].eve(ev.data["tx"])})
    return 0


HTTP2_TOKENS = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
                b"\x01\x05\x00\x00\x00\x01", b"\x09\x04\x00\x00\x00\x01",
                b"\x00\x01\x00\x00\x00\x01", b"\x3f\xe1\x1f", b"\xff\xff\xff\x7f",
                b"\x88", b"\xbe", b"\x40\x0a", b"\x00\x08\x00\x00\x00\x00", b"\xff")


def check_http2(chunks: list[Chunk]) -> int:
    """Both directions of an HTTP/2 connection without the parser's catch-all net:
    every event known, memory bounded, records schema-valid."""
    from appliance.core.app import ANOMALY
    from appliance.core.app.http2 import H2_DONE, H2_FILE, H2_INSPECT, Http2Parser

    p = Http2Parser()
    with crashes_as_failures():
        for ts, data in chunks:
            side = p._cli if ts else p._srv
            if not data or side.state == 6:  # _DEAD
                continue
            out: list[Any] = []
            p._feed(side, bytes(data), ts, out)
            p._prune()
            for ev in out:
                if ev.kind not in (ANOMALY, H2_INSPECT, H2_FILE, H2_DONE):
                    raise Failure("http2-event", f"unknown event kind {ev.kind}")
                tx = ev.data.get("tx")
                if tx is not None:
                    tx.buffers(ev.to_server)
            if p.memuse() > 4 * 1024 * 1024:
                raise Failure("http2-memuse", f"{p.memuse()} bytes held")
        p.close()
        for tx in p.transactions:
            check_record({"event_type": "http", "http": tx.eve()})
            for f in tx.files:
                check_record({"event_type": "fileinfo", "fileinfo": f.eve()})
    return 0


SMTP_TOKENS = (b"\r\n.\r\n", b"\r\n..", b"DATA\r\n", b"BDAT 10 LAST\r\n", b"354 go\r\n",
               b"250-PIPELINING\r\n", b"STARTTLS\r\n", b"220 ", b"--b\r\n", b"--b--\r\n",
               b"Content-Transfer-Encoding: base64\r\n", b"boundary=b\r\n", b"=\r\n",
               b"=ZZ", b"\r\n\t", b"\x16\x03\x01")


def check_smtp(chunks: list[Chunk]) -> int:
    """A session, its transactions' buffers and EVE objects; memory stays bounded."""
    from appliance.core.app import ANOMALY, smtp

    kinds = (ANOMALY, smtp.SMTP_FILE, smtp.SMTP_STARTTLS, smtp.SMTP_TX, smtp.SMTP_UPDATE)
    p = smtp.SmtpParser()
    with crashes_as_failures():
        for ts, data in chunks:
            for ev in p.feed(bytes(data), ts):
                if ev.kind not in kinds:
                    raise Failure("smtp-event", f"unknown event kind {ev.kind}")
                tx = ev.data.get("tx")
                if tx is not None:
                    tx.request_buffers()
                    check_record({"event_type": "smtp", "smtp": tx.eve_smtp(),
                                  "email": tx.eve_email() or {}})
                if ev.kind == smtp.SMTP_FILE:
                    check_record({"event_type": "fileinfo", "fileinfo": ev.data["file"].eve()})
            if p.memuse() > smtp.MAX_HELD + 512 * 1024:
                raise Failure("smtp-memuse", f"{p.memuse()} bytes held")
        p.close()
    return 0


def _check_app_events(out: list[Any], kinds: tuple[str, ...], proto: str) -> None:
    """The events of the APP_TX parsers (mqtt, sip, krb5, snmp, nfs) as the engine
    takes them (applayer._events): every kind known, buffers of bytes, and the EVE
    records it would write (the parser's object under its event type, fileinfo)."""
    from appliance.core.app import APP_TX

    for ev in out:
        if ev.kind not in kinds:
            raise Failure(f"{proto}-event", f"unknown event kind {ev.kind}")
        if ev.kind != APP_TX:
            continue
        d = ev.data
        for name, buf in (d.get("buffers") or {}).items():
            if not all(isinstance(b, bytes) for b in (buf if isinstance(buf, list) else [buf])):
                raise Failure(f"{proto}-buffer", f"{name} holds {type(buf).__name__}")
        if "eve" in d:
            et = d["event_type"]
            check_record({"event_type": et, "tx_id": ev.tx_id, et: d["eve"],
                          **d.get("extra", {})})
        if "fileinfo" in d:
            check_record({"event_type": "fileinfo", "tx_id": ev.tx_id,
                          "fileinfo": d["fileinfo"]})


MQTT_TOKENS = (b"\x10", b"\x00\x04MQTT\x04", b"\x00\x04MQTT\x05", b"\x00\x06MQIsdp\x03",
               b"\x20\x02\x00\x00", b"\x30", b"\x32", b"\x34", b"\x36", b"\x40\x02\x00\x01",
               b"\x62\x02\x00\x01", b"\x82", b"\x90\x03\x00\x01\x00", b"\xa2", b"\xc0\x00",
               b"\xe0\x00", b"\xf0", b"\xff\xff\xff\x7f", b"\x80\x80\x80\x80\x01",
               b"\x26\x00\x01a\x00\x01b", b"\x0b\x80\x01", b"\x00\x00", b"\xff\xff")


def check_mqtt(chunks: list[Chunk]) -> int:
    """Both directions of an MQTT session without the parser's catch-all net: events
    known, buffers and records valid, memory bounded."""
    from appliance.core.app import ANOMALY, APP_TX, mqtt

    p = mqtt.MqttParser()
    bound = 2 * (mqtt.MAX_MSG_LEN + 5) + 256 * mqtt.MAX_OPEN_TX
    with crashes_as_failures():
        for ts, data in chunks:
            if p.failed or not data:
                continue
            out: list[Any] = []
            p._feed(p._dirs[1 if ts else 0], bytes(data), ts, out)
            _check_app_events(out, (ANOMALY, APP_TX), "mqtt")
            if p.memuse() > bound or len(p.open) > mqtt.MAX_OPEN_TX:
                raise Failure("mqtt-memuse", f"{p.memuse()} bytes, {len(p.open)} open")
        _check_app_events(p.close(), (ANOMALY, APP_TX), "mqtt")
    return 0


SIP_TOKENS = (b"\r\n", b"\r\n\r\n", b"INVITE ", b"REGISTER ", b" SIP/2.0", b"SIP/2.0 ",
              b"SIP/2.0 200 OK\r\n", b"sip:a@b", b"Via: ", b"Content-Length: ", b"v: ",
              b" ", b"\t", b":", b"\x00", b"\xff", b"\xc3\x28")


def _check_stateless_datagrams(p: Any, chunks: list[Chunk], name: str) -> int:
    """Each chunk a datagram to a parser that keeps nothing between datagrams, parsed
    without parse_datagram's catch-all: events known, records valid, nothing held."""
    from appliance.core.app import ANOMALY, APP_TX

    with crashes_as_failures():
        for ts, data in chunks:
            if not data:
                continue  # (the engine offers no empty payload)
            out: list[Any] = []
            p._datagram(bytes(data), ts, out)
            _check_app_events(out, (ANOMALY, APP_TX), name)
            if p.memuse():
                raise Failure(f"{name}-memuse", f"{p.memuse()} bytes held")
        _check_app_events(p.close(), (ANOMALY, APP_TX), name)
    return 0


def check_sip(chunks: list[Chunk]) -> int:
    from appliance.core.app.sip import SipParser

    return _check_stateless_datagrams(SipParser(), chunks, "sip")


KRB5_TOKENS = (b"\x6a\x82", b"\x6b\x82", b"\x6c\x82", b"\x6d\x82", b"\x6e\x82",
               b"\x6f", b"\x7e\x81", b"\x61\x82", b"\xa0\x03\x02\x01\x05",
               b"\xa1\x03\x02\x01", b"\x30\x82", b"\x30\x80", b"\x1b\x0bEXAMPLE.COM",
               b"\x02\x01\x17", b"\x02\x01\x12", b"\x84\xff\xff\xff\xff", b"\x83\x7f\xff\xff",
               b"\x00\x00\x00\x00", b"\x80\x00\x00\x10", b"\x00\x04\x00\x01")


def check_krb5(chunks: list[Chunk]) -> int:
    """Each chunk as a UDP datagram, and the chunks as the two directions of a TCP
    stream (record marking and all), without the parser's catch-all nets: events
    known, records valid, buffered records bounded."""
    from appliance.core.app import ANOMALY, APP_TX, krb5

    udp = krb5.Krb5Parser()
    tcp = krb5.Krb5Parser()
    kinds = (ANOMALY, APP_TX)
    with crashes_as_failures():
        for ts, data in chunks:
            out: list[Any] = []
            if data:
                udp._datagram(bytes(data), ts, out)
            tcp._feed(1 if ts else 0, bytes(data), ts, out)
            _check_app_events(out, kinds, "krb5")
            if tcp.memuse() > 2 * (krb5.MAX_RECORD + 4) or udp.memuse():
                raise Failure("krb5-memuse", f"{tcp.memuse()} + {udp.memuse()} bytes held")
        _check_app_events(udp.close() + tcp.close(), kinds, "krb5")
    return 0


SNMP_TOKENS = (b"\x30\x82", b"\x30\x81", b"\x30\x80", b"\x02\x01\x00", b"\x02\x01\x01",
               b"\x02\x01\x03", b"\x04\x06public", b"\x04\x00", b"\xa0", b"\xa1", b"\xa2",
               b"\xa4", b"\xa5", b"\xa7", b"\xa8", b"\xa9", b"\x06\x08\x2b\x06\x01\x02",
               b"\x06\x00", b"\x05\x00", b"\x81\xff", b"\x84\x7f\xff\xff\xff", b"\x80",
               b"\x02\x01\x03\x04\x01\x07")


def check_snmp(chunks: list[Chunk]) -> int:
    from appliance.core.app.snmp import SnmpParser

    return _check_stateless_datagrams(SnmpParser(), chunks, "snmp")


NFS_TOKENS = (b"\x00\x01\x86\xa3", b"\x00\x00\x00\x00\x00\x00\x00\x02", b"\x00\x00\x00\x01",
              b"\x00\x00\x00\x02", b"\x00\x00\x00\x03", b"\x00\x00\x00\x04",
              b"\x00\x00\x00\x06", b"\x00\x00\x00\x07", b"\x00\x00\x00\x08",
              b"\x00\x00\x00\x20", b"\x00\x00\x00\x40", b"\x00\x00\x01\x90",
              b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x10\x00")


def check_nfs(chunks: list[Chunk]) -> int:
    """Each chunk a datagram (calls to the server, replies to the client) without
    parse_datagram's catch-all (its documented "field past the end" is fine), files
    kept under a FileBudget as the engine's: events known, records valid, memory
    bounded."""
    from appliance.core.app import ANOMALY, APP_TX, nfs
    from appliance.core.app.http import FileBudget

    p = nfs.NfsParser()
    budget = FileBudget(1 << 20, 256 * 1024)
    p.file_budget = budget
    bound = (64 * nfs.MAX_PENDING + nfs.MAX_NAMES * (nfs.MAX_FH + 1024) + budget.cap
             + nfs.MAX_FILES * budget.per_file)
    with crashes_as_failures():
        for ts, data in chunks:
            if not data:
                continue
            out: list[Any] = []
            with contextlib.suppress(nfs._Bad):
                p._datagram(bytes(data), ts, out)
            _check_app_events(out, (ANOMALY, APP_TX), "nfs")
            if p.memuse() > bound or len(p.files) > nfs.MAX_FILES:
                raise Failure("nfs-memuse", f"{p.memuse()} bytes held")
        _check_app_events(p.close(), (ANOMALY, APP_TX), "nfs")
        p.release_files()
    return 0


QUIC_TOKENS = (b"\xc0\x00\x00\x00\x01", b"\xc3\x00\x00\x00\x01", b"\xe0\x00\x00\x00\x01",
               b"\xf0\x00\x00\x00\x01", b"\xc0\xff\x00\x00\x1d", b"\x80\x00\x00\x00\x00",
               b"\x08", b"\x14", b"\x00", b"\x06\x00", b"\x06\x40\x00", b"\x02\x00\x00\x00",
               b"\x03", b"\x1c", b"\x41\x00", b"\x80\x00\x40\x00", b"\xc0\x00\x00\x00",
               b"\xff", b"\x01\x00\x01\xfc\x03\x03", b"\x02\x00\x00\x56\x03\x03",
               b"\x00\x00\x00\x0e", b"\x00\x2b\x00\x03")


def check_quic(chunks: list[Chunk]) -> int:
    """Each chunk as a datagram (long-header packets, Initials decrypted), and each chunk
    as the plaintext of an Initial (frames, CRYPTO reassembly, the hello): mutated
    ciphertext never authenticates, so the second path is how the code behind the AEAD
    is fuzzed. No catch-all; events known, buffers built, memory bounded."""
    from appliance.core.app import ANOMALY, quic

    p = quic.QuicParser()
    q = quic.QuicParser()
    bound = 2 * quic.MAX_CRYPTO * (1 + quic.MAX_FRAGMENTS)
    with crashes_as_failures():
        for ts, data in chunks:
            if not data:
                continue
            out: list[Any] = []
            p._datagram(bytes(data), ts, out)
            side = q._sides[1 if ts else 0]
            if not side.hello_done:
                with contextlib.suppress(quic._Short):  # (what _datagram catches)
                    q._frames(bytes(data), side)
                q._hello(side, ts, out)
            for ev in out:
                if ev.kind not in (ANOMALY, quic.QUIC_TX):
                    raise Failure("quic-event", f"unknown event kind {ev.kind}")
            for par in (p, q):
                for d in (True, False):
                    for name, buf in par.buffers(d).items():
                        if not isinstance(buf, bytes):
                            raise Failure("quic-buffer", f"{name}: {type(buf).__name__}")
                if par.memuse() > bound:
                    raise Failure("quic-memuse", f"{par.memuse()} bytes held")
        p.close()
        q.close()
    return 0


# ---- rules, policies, control messages, pcap files


RULE_TOKENS = tuple(t.encode() for t in (
    ";", ")", "(", '"', "\\", "|", ":", ",", "!", "$HOME_NET", "[", "]", "any", "->", "<>",
    "content:\"", "pcre:\"/", "/R\"", "byte_test:", "byte_jump:", "byte_extract:",
    "byte_math:", "isdataat:", "depth:", "offset:", "distance:", "within:", "nocase;",
    "flowbits:", "threshold:", "dsize:", "http.uri;", "tls.sni;", "dns.query;",
    "4294967296", "-1", "0", "65536", "relative", "fast_pattern;", "to_lowercase;",
    "metadata:", "classtype:", "sid:", "rev:", "flow:", "established,to_server",
    "urilen:", "bsize:", "base64_decode;", "|00|", "(a+)+$", "\\x", "{1,99999}",
))
_SAMPLE_BUFS = (b"", b"a" * 40 + b"b", b"GET /admin HTTP/1.1\r\nHost: example.com\r\n",
                bytes(range(64)), b"\xff" * 16)


def check_rule(line: str) -> int:
    from appliance.core.detect.inspect import apply_transforms, match_chain
    from appliance.rules.compiler import CompileError, compile_rule
    from appliance.rules.keywords import KeywordError
    from appliance.rules.parser import RuleParseError, parse_rule

    try:
        rule = parse_rule(line, file="fuzz.rules", line=1)
    except RuleParseError as e:
        if not str(e):
            raise Failure("rule-error", "RuleParseError without a reason") from None
        return 0
    except Exception as e:
        raise crash(e) from e
    try:
        cr = compile_rule(rule, 0, {})
    except (CompileError, KeywordError):
        return 0
    except Exception as e:
        raise crash(e) from e
    try:
        cr.info()
        for ch in cr.chains:
            for buf in _SAMPLE_BUFS:
                match_chain(ch, apply_transforms(buf, ch.key[1]), {})
    except Exception as e:
        raise crash(e) from e
    return 0


POLICY_VALUES = ("", "~", "-1", "0", "nan", ".nan", ".inf", "-.inf", "inf", "1e999",
                 "99999999999999999999", "[a]", "{a: b}", "[]", "{}", "yes", "null", "0x10",
                 "10.0.0.0/33", "::/129", "'\\x00'", "drop", "quarantine", "10m", "1e3s",
                 "-5m", "'02:00:00:00:00:0g'")
# Nesting deeper than PyYAML's recursion: slow to parse (~0.1 s), so used sparingly.
POLICY_DEEP = ("[" * 600 + "]" * 600, "{a: " * 600 + "1" + "}" * 600)
POLICY_KEYS = ("min-severity", "duration", "ports", "networks", "addresses", "macs", "role",
               "name", "action", "proto", "heuristics", "rules", "files", "sids", "egress",
               "fail-open", "scan-files", "roles", "guests", "allowlist", "unknown-key")


@functools.lru_cache(maxsize=256)  # called on seeds: the same few texts
def _scalars(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, is_key) of every scalar of a YAML text; [] when it does not parse."""
    import yaml

    try:
        root = yaml.compose(text)
    except (yaml.YAMLError, RecursionError):
        return []
    out: list[tuple[int, int, bool]] = []
    stack = [(root, False)] if root is not None else []
    seen: set[int] = set()  # aliases make the node graph a DAG, or even a cycle
    while stack:
        node, is_key = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            out.append((node.start_mark.index, node.end_mark.index, is_key))
        elif isinstance(node, yaml.SequenceNode):
            stack += [(n, False) for n in node.value]
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack += [(k, True), (v, False)]
    return out


def mutate_policy(rng: random.Random, seeds: list[str]) -> str:
    """Mostly YAML-aware: one to three scalars (values or keys) replaced by hostile ones,
    so the text still parses and the loader's own checks are what is fuzzed; sometimes a
    byte-level mutation of the text."""
    text = rng.choice(seeds)
    if rng.random() < 0.75:
        spans = _scalars(text)
        if spans:
            for start, end, is_key in sorted(rng.sample(spans, min(len(spans),
                                                                   rng.randint(1, 3))),
                                             reverse=True):
                new = rng.choice(POLICY_KEYS if is_key and rng.random() < 0.7
                                 else POLICY_DEEP if rng.random() < 0.005
                                 else POLICY_VALUES)
                text = text[:start] + new + text[end:]
            return text
    raw = mutate_bytes(rng, text.encode(), rng.choice(seeds).encode(),
                       tuple(v.encode() for v in POLICY_VALUES[:24]))
    return raw.decode("utf-8", "replace")


def check_policy(text: str) -> int:
    from appliance.errors import ConfigError
    from appliance.policy_file import policy_from_text

    try:
        pol = policy_from_text(text, "fuzz.yaml")
    except ConfigError as e:
        if not str(e).startswith("fuzz.yaml"):
            raise Failure("policy-error", f"error does not name the file: {e}") from None
        return 0
    except RecursionError as e:  # a clear error is expected, not a stack overflow
        raise crash(e) from e
    except Exception as e:
        raise crash(e) from e
    try:
        for g in pol.guests[:4]:
            pol.role(g.role)
        pol.resolve(b"\x0a\xcb\x00\x0a", b"\xcb\x00\x71\x0a", "desktop", None, None)
    except Exception as e:
        raise crash(e) from e
    return 0


CONTROL_TOKENS = (b"\n", b'{"command": "status"}', b'"args": ', b"{", b"}", b"[", b"\\u0000",
                  b"\\ud800", b"1e999", b"NaN", b'"command"', b"\xff", b"\x00")


class ControlHarness:
    """A ControlServer's framing and dispatch on one end of a socketpair (no thread, no
    socket file): what the server does with each client stream."""

    LIMIT = 4096

    def __init__(self) -> None:
        from appliance.io.control import ControlServer, Refused

        def refuse(_a: dict[str, Any]) -> Any:
            raise Refused("no")

        def boom(_a: dict[str, Any]) -> Any:
            raise RuntimeError("handler bug")

        self.server = ControlServer(Path("/nonexistent/fuzz.sock"),
                                    {"status": lambda a: {"up": 1}, "echo": lambda a: a,
                                     "refuse": refuse, "boom": boom},
                                    max_request=self.LIMIT, read_timeout=1.0)

    def check(self, data: bytes) -> int:
        a, b = socket.socketpair()
        try:
            a.settimeout(2.0)
            b.settimeout(1.0)
            a.sendall(data)
            a.shutdown(socket.SHUT_WR)
            try:
                self.server._lines(b)
            except OSError:
                pass  # the client went away: the real server does the same
            except Exception as e:
                raise crash(e) from e
            b.close()
            buf = b""
            while chunk := a.recv(65536):
                buf += chunk
        finally:
            a.close()
            b.close()
        replies = buf.split(b"\n")
        if replies[-1] != b"":
            raise Failure("control", "reply not terminated by a newline")
        for r in replies[:-1]:
            try:
                obj = json.loads(r)
            except ValueError:
                raise Failure("control", f"reply is not JSON: {r[:80]!r}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool) or (
                    not obj["ok"] and not isinstance(obj.get("error"), str)):
                raise Failure("control", f"reply of the wrong shape: {r[:80]!r}")
        # Expected: one reply per non-blank complete line until one is too long; one
        # error for a stream that ends inside a request or runs past the limit.
        lines = data.split(b"\n")
        tail = lines.pop()
        want = 0
        for ln in lines:
            if len(ln) > self.LIMIT:
                want += 1
                break
            want += bool(ln.strip())
        else:
            if tail.strip():
                want += 1
        if len(replies) - 1 != want:
            raise Failure("control", f"{len(replies) - 1} replies to {want} requests")
        return 0


def mutate_capture(rng: random.Random, raw: bytes, other: bytes) -> bytes:
    """Half the time a byte-level mutation; else one field of one record (pcap) or block
    (pcapng) set to a boundary value: lengths, block types, interface ids."""
    if rng.random() < 0.5 or len(raw) < 28:
        return mutate_bytes(rng, raw, other)
    b = bytearray(raw)
    fields: list[int] = []  # offsets of 32-bit fields worth breaking
    if raw[:4] == b"\x0a\x0d\x0d\x0a":
        off = 0
        while off + 12 <= len(b):
            fields += [off, off + 4] + ([off + 8, off + 20] if raw[off] == 6 else [])
            blen = struct.unpack_from("<I", b, off + 4)[0]
            if blen < 12:
                break
            off += blen
    else:
        off = 24
        fields.append(20)  # the link type
        while off + 16 <= len(b):
            fields += [off + 8, off + 12]
            off += 16 + struct.unpack_from("<I", b, off + 8)[0]
    at = rng.choice(fields)
    if at + 4 > len(b):
        return bytes(b)
    cur = struct.unpack_from("<I", b, at)[0]
    v = rng.choice((*INTERESTING_32, cur + 4, max(0, cur - 4), cur * 2, 2, 3, 5, 6,
                    0x0A0D0D0A, rng.getrandbits(32)))
    struct.pack_into("<I", b, at, v & 0xFFFFFFFF)
    if rng.random() < 0.3:
        del b[rng.randint(at, len(b)):]  # and the file cut after it
    return bytes(b)


def check_pcap(raw: bytes) -> int:
    from appliance.errors import InputError
    from appliance.io.pcap import PcapReader

    with tempfile.NamedTemporaryFile(suffix=".pcap", dir=_TMP) as f:
        f.write(raw)
        f.flush()
        try:
            r = PcapReader(f.name)
        except InputError:
            return 0
        except Exception as e:
            raise crash(e) from e
        try:
            n = 0
            for p in r:
                n += 1
                if p.id != n or len(p.data) > len(raw):
                    raise Failure("pcap", f"record {n}: id {p.id}, {len(p.data)} bytes")
            if r.count != n:
                raise Failure("pcap", f"count {r.count} after {n} records")
        except Failure:
            raise
        except Exception as e:
            raise crash(e) from e
        finally:
            r.close()
    return 0


_TMP = "/dev/shm" if Path("/dev/shm").is_dir() else None


# -- the registry ----------------------------------------------------------------------------


def _conv_target(convs: dict[str, list[list[Chunk]]], name: str, tokens: tuple[bytes, ...],
                 check: Callable[[list[Chunk]], int], weight: int) -> Target:
    """A parser's target: its seed conversations mutated with its tokens."""
    return Target(name, lambda rng: mutate_conv(rng, convs[name], tokens), check,
                  _dump_conv(name), _shrink_chunks, weight=weight, seeds=convs[name])


def targets() -> list[Target]:
    """Every target, each with its seeds loaded from the corpus."""
    packets = _pcap_seeds()
    frames1 = [[f] for seq in packets for f in seq]
    convs = {p: _conv_seeds(p) for p in ("http", "http2", "tls", "dns", "dcerpc", "smtp",
                                         "mqtt", "sip", "krb5", "snmp", "nfs", "quic")}
    # the stream target carries the TCP protocols' conversations (not the UDP-only ones)
    tcp_convs = {p: c for p, c in convs.items() if p in _PORTS}
    rules = [ln for f in _files("rules", "*.rules")
             for ln in f.read_text(encoding="utf-8", errors="replace").splitlines() if ln]
    policies = [f.read_text(encoding="utf-8", errors="replace")
                for f in _files("policy", "*.yaml")]
    controls = [f.read_bytes() for f in _files("control", "*.ctl")]
    pcaps = [f.read_bytes() for f in [*_files("packets", "*.pcap"), *_files("pcap", "*")]]
    eng = EngineHarness()
    ctl = ControlHarness()
    counter = [0]

    def engine_check(frames: Packets) -> int:
        counter[0] += 1
        return eng.run(frames, counter[0], counter[0]).packets

    def fragments_check(item: tuple[Packets, bytes | None]) -> int:
        frames, clean = item
        if clean is not None:
            check_defrag_rebuilds(frames, clean)
        return engine_check(frames)

    def decode_check(frames: Packets) -> int:
        d = Decoder()
        for lt, ts, data in frames:
            try:
                p = d.decode(data, lt, ts)
            except Exception as e:
                raise crash(e) from e
            if "decoder.malformed" in (p.events or []):
                raise Failure("decoder-malformed", "the decoder's catch-all net fired")
        return 0

    def text_dump(sub: str, ext: str) -> Callable[[Any], tuple[str, bytes]]:
        return lambda x: (f"{sub}/{ext}", x.encode("utf-8", "surrogateescape")
                          if isinstance(x, str) else x)

    def shrink_text(x: str, fails: Callable[[str], bool], budget: list[int]) -> str:
        return "".join(ddmin(list(x), lambda cs: fails("".join(cs)), budget))

    def shrink_raw(x: bytes, fails: Callable[[bytes], bool], budget: list[int]) -> bytes:
        return shrink_bytes(x, fails, budget)

    def shrink_frags(item: tuple[Packets, bytes | None],
                     fails: Callable[[tuple[Packets, bytes | None]], bool],
                     budget: list[int]) -> tuple[Packets, bytes | None]:
        frames = _shrink_packets(item[0], lambda fr: fails((fr, None)), budget)
        return frames, None

    return [
        Target("decoder", lambda rng: [(lambda f: (f[0], f[1], mutate_bytes(
            rng, f[2], rng.choice(rng.choice(frames1))[2])))(rng.choice(rng.choice(frames1)))],
            decode_check, _dump_packets, _shrink_packets, weight=3, seeds=frames1),
        Target("engine", lambda rng: mutate_packets(rng, packets), engine_check,
               _dump_packets, _shrink_packets, weight=2, seeds=packets),
        Target("stream", lambda rng: gen_stream(rng, tcp_convs), engine_check, _dump_packets,
               _shrink_packets, weight=1),
        Target("defrag", gen_fragments, fragments_check,
               lambda item: _dump_packets(item[0]), shrink_frags, weight=1),
        *(_conv_target(convs, name, tokens, check, weight) for name, tokens, check, weight in (
            ("http", HTTP_TOKENS, check_http, 3),
            ("tls", TLS_TOKENS, check_tls, 3),
            ("dns", DNS_TOKENS, check_dns, 3),
            ("http2", HTTP2_TOKENS, check_http2, 2),
            ("dcerpc", DCERPC_TOKENS, check_dcerpc, 2),
            ("smtp", SMTP_TOKENS, check_smtp, 2),
            ("mqtt", MQTT_TOKENS, check_mqtt, 2),
            ("sip", SIP_TOKENS, check_sip, 1),
            ("krb5", KRB5_TOKENS, check_krb5, 2),
            ("snmp", SNMP_TOKENS, check_snmp, 1),
            ("nfs", NFS_TOKENS, check_nfs, 2),
            ("quic", QUIC_TOKENS, check_quic, 2),
        )),
        Target("rules", lambda rng: mutate_bytes(
            rng, rng.choice(rules).encode(), rng.choice(rules).encode(), RULE_TOKENS).decode(
            "utf-8", "replace"), check_rule, text_dump("rules", ".rules"), shrink_text,
            weight=2, seeds=rules),
        Target("policy", lambda rng: mutate_policy(rng, policies), check_policy,
               text_dump("policy", ".yaml"), shrink_text, weight=1, seeds=policies),
        Target("control", lambda rng: mutate_bytes(rng, rng.choice(controls),
                                                   rng.choice(controls), CONTROL_TOKENS),
               ctl.check, text_dump("control", ".ctl"), shrink_raw, weight=3, seeds=controls),
        Target("pcap", lambda rng: mutate_capture(rng, rng.choice(pcaps), rng.choice(pcaps)),
               check_pcap, text_dump("pcap", ".bin"), shrink_raw, weight=2, seeds=pcaps),
    ]


# -- running -------------------------------------------------------------------------------


@dataclass
class Found:
    target: str
    seed: int
    index: int
    failure: Failure
    minimized: Any = None
    saved: Path | None = None


@dataclass
class Report:
    target: str
    inputs: int = 0
    packets: int = 0
    failures: list[Found] = field(default_factory=list)
    unanswered: int = 0  # packets without exactly one verdict
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def input_rng(seed: int, target: str, index: int) -> random.Random:
    """The generator of input `index` of `target` under `seed`: any input can be
    regenerated alone."""
    h = hashlib.sha256(f"{seed}:{target}:{index}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def run_one(t: Target, x: Any) -> tuple[int, Failure | None]:
    try:
        return t.check(x), None
    except Failure as f:
        return 0, f


def minimize(t: Target, x: Any, failure: Failure, budget: int = 1500) -> Any:
    def fails(y: Any) -> bool:
        _n, f = run_one(t, y)
        return f is not None and f.key == failure.key

    return t.shrink(x, fails, [budget])


def save_case(t: Target, x: Any) -> Path:
    """Write a failing input to the corpus as a regression case (crash-TARGET-HASH)."""
    where, data = t.dump(x)
    sub, ext = where.split("/")
    d = CORPUS / sub
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"crash-{t.name}-{hashlib.sha256(data).hexdigest()[:12]}{ext}"
    path.write_bytes(data)
    return path


def run_target(t: Target, n: int, seed: int, *, start: int = 0, shrink: bool = True,
               save: bool = False, max_failures: int = 5,
               deadline: float | None = None) -> Report:
    rep = Report(t.name)
    keys: set[tuple[str, str]] = set()
    t0 = time.perf_counter()
    for i in range(start, start + n):
        if deadline is not None and time.perf_counter() > deadline:
            break
        x = t.generate(input_rng(seed, t.name, i))
        rep.inputs += 1
        pk, f = run_one(t, x)
        rep.packets += pk
        if f is None:
            continue
        if f.kind == "verdicts":
            rep.unanswered += f.count
        if f.key not in keys and len(keys) < max_failures:  # a new bug: minimise it
            keys.add(f.key)
            found = Found(t.name, seed, i, f)
            if shrink:
                found.minimized = minimize(t, x, f)
            if save:
                found.saved = save_case(t, found.minimized if shrink else x)
            rep.failures.append(found)
        elif len(rep.failures) < 10_000:
            rep.failures.append(Found(t.name, seed, i, f))
    rep.seconds = time.perf_counter() - t0
    return rep


def corpus_cases(t: Target) -> list[tuple[Path, Any]]:
    """The regression cases saved for this target, loaded as inputs."""
    out: list[tuple[Path, Any]] = []
    for path in sorted(CORPUS.rglob(f"crash-{t.name}-*")):
        raw = path.read_bytes()
        if path.suffix == ".pcap":
            frames = pcap_bytes_frames(raw)
            out.append((path, (frames, None) if t.name == "defrag" else frames))
        elif path.suffix == ".conv":
            out.append((path, read_conv(raw)))
        elif path.suffix in (".rules", ".yaml"):
            out.append((path, raw.decode("utf-8", "surrogateescape")))
        else:
            out.append((path, raw))
    return out
