"""File scanners and the service that answers "is this file malicious?" once per file.

    engine (sans-I/O) --ScanRequest(sha256, data, guest)--> FileVerdictService.submit
        cache hit (same scanner identity) -> Decision at once (source "cache")
        miss -> ScanPool (threads, off the packet path; size and time limits)
             -> Scanner (YARA, clamd, both) -> cache.put -> Decision (source "scan")
        same file already being scanned -> waits for that scan (source "shared")
    Decisions reach the packet loop through a VerdictInbox (a queue with a pollable fd).

Threads rather than processes: yara-python and the clamd socket both release the GIL
while they work, and threads share the compiled rules without copying them.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import importlib
import itertools
import logging
import math
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appliance.io.cache import FileVerdict, ScanCache, ScanResult, check_sha256

log = logging.getLogger(__name__)

# Defaults. The size limit bounds memory held per file and scan time; 32 MiB covers
# installers and documents, and stays under clamd's default StreamMaxLength (25 MB is
# clamd's own; it answers "size limit exceeded", which we map to unknown).
MAX_FILE_SIZE = 32 * 1024 * 1024
# A YARA pass over 32 MiB with a sane ruleset takes well under a second; 5 s marks a
# pathological rule/file pair, which must not hold a worker (or a held packet) longer.
SCAN_TIMEOUT = 5.0
# Scans waiting for a worker. Beyond this a file gets unknown/"busy" at once: a flood of
# distinct files must not queue unbounded memory or unbounded delay.
MAX_PENDING = 256
# clamd's INSTREAM chunk size; any size works, 64 KiB keeps syscalls few.
CLAMD_CHUNK = 64 * 1024

TOO_LARGE = "too large"
TIMEOUT = "timeout"
BUSY = "busy"
NOT_RETAINED = "not retained"


def unknown(detail: str) -> ScanResult:
    return ScanResult(FileVerdict.UNKNOWN, (), detail)


class ScannerError(Exception):
    """A scanner cannot be built (no rules, rules do not compile, no daemon)."""


class Scanner(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def identity(self) -> str:
        """Engine + rules version: a verdict cached under another identity is stale."""
        ...

    def scan(self, data: bytes, timeout: float) -> ScanResult:
        """Judge the bytes; must return within about `timeout` seconds."""
        ...


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        # Length-prefixed so ("ab", "c") and ("a", "bc") differ.
        h.update(struct.pack(">Q", len(p)))
        h.update(p)
    return h.hexdigest()[:16]


# --- YARA --------------------------------------------------------------------------------


class YaraScanner:
    """Every *.yar / *.yara file under `rules_dir`, compiled together.

    Each file is its own namespace (its path without the suffix), so two files may use
    the same rule name. Signatures are reported as "yara:<namespace>:<rule>".
    """

    SUFFIXES = (".yar", ".yara")

    def __init__(self, rules_dir: str | Path) -> None:
        # Imported here (only hosts that scan need yara-python), and untyped: it ships
        # no stubs, and Any keeps mypy strict without a per-module override.
        self._yara: Any = importlib.import_module("yara")
        self.rules_dir = Path(rules_dir)
        self._rules: Any = None
        self._identity = ""
        self.reload()

    @property
    def name(self) -> str:
        return "yara"

    @property
    def identity(self) -> str:
        return self._identity

    def _sources(self) -> dict[str, str]:
        if not self.rules_dir.is_dir():
            raise ScannerError(f"{self.rules_dir}: no such YARA rules directory")
        files = sorted(p for p in self.rules_dir.rglob("*")
                       if p.suffix in self.SUFFIXES and p.is_file())
        if not files:
            raise ScannerError(f"{self.rules_dir}: no *.yar or *.yara files")
        out = {}
        for p in files:
            ns = str(p.relative_to(self.rules_dir).with_suffix(""))
            try:
                out[ns] = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ScannerError(f"{p}: {e}") from None
        return out

    def reload(self) -> bool:
        """Recompile when the rule files changed; True when the identity changed.

        On any error the previous rules stay in force (and ScannerError says why), so a
        bad edit never leaves the host without scanning.
        """
        sources = self._sources()
        yara = self._yara
        parts = [f"yara-python {yara.__version__} libyara {yara.YARA_VERSION}".encode()]
        for ns, text in sources.items():
            parts += [ns.encode(), text.encode()]
        identity = "yara:" + _digest(*parts)
        if identity == self._identity:
            return False
        try:
            rules = yara.compile(sources=sources)
        except yara.Error as e:
            raise ScannerError(self._locate(sources, e)) from None
        # One assignment each: a concurrent scan sees the old pair or the new rules
        # with at worst the old identity (a verdict then stored under the old identity
        # is simply re-scanned later).
        self._rules = rules
        self._identity = identity
        return True

    def _locate(self, sources: dict[str, str], error: Exception) -> str:
        """libyara's message has the line but not the file: find the file that fails
        alone, so the operator reads "file:line: message"."""
        for ns, text in sources.items():
            try:
                self._yara.compile(source=text)
            except self._yara.Error as e:
                suffix = next(p.suffix for p in self.rules_dir.glob(f"{ns}.*")
                              if p.suffix in self.SUFFIXES)
                msg = str(e).removeprefix("line ")
                return f"{self.rules_dir / ns}{suffix}:{msg}"
        return f"YARA rules in {self.rules_dir}: {error}"  # only fails together

    def scan(self, data: bytes, timeout: float) -> ScanResult:
        rules = self._rules
        yara = self._yara
        try:
            # libyara counts whole seconds; 0 would mean "no limit".
            matches = rules.match(data=data, timeout=max(1, math.ceil(timeout)))
        except yara.TimeoutError:
            return unknown(TIMEOUT)
        except yara.Error as e:
            return unknown(f"error: yara: {e}")
        if not matches:
            return ScanResult(FileVerdict.CLEAN)
        sigs = tuple(sorted(f"yara:{m.namespace}:{m.rule}" for m in matches))
        return ScanResult(FileVerdict.MALICIOUS, sigs)


# --- clamd -------------------------------------------------------------------------------


class ClamdScanner:
    """ClamAV's daemon over its unix socket, INSTREAM protocol (clamd(8)).

    Identity is clamd's VERSION answer, which names the engine and the signature
    database version, so a freshclam update re-scans files on next use.
    """

    def __init__(self, socket_path: str | Path, connect_timeout: float = 1.0) -> None:
        self.socket_path = str(socket_path)
        self.connect_timeout = connect_timeout
        self._identity = ""
        self.refresh()

    @classmethod
    def if_available(cls, socket_path: str | Path) -> ClamdScanner | None:
        """The scanner when a clamd answers on the socket, else None (no ClamAV here)."""
        if not Path(socket_path).exists():
            return None
        try:
            return cls(socket_path)
        except ScannerError as e:
            log.info("clamd at %s not used: %s", socket_path, e)
            return None

    @property
    def name(self) -> str:
        return "clamd"

    @property
    def identity(self) -> str:
        return self._identity

    def _call(self, command: bytes, payload: bytes | None, timeout: float) -> str:
        # "z" prefix: NUL-terminated command and reply (clamd's recommended framing).
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.connect_timeout)
            s.connect(self.socket_path)
            s.settimeout(timeout)
            s.sendall(b"z" + command + b"\0")
            if payload is not None:
                view = memoryview(payload)
                for i in range(0, len(view), CLAMD_CHUNK):
                    chunk = view[i:i + CLAMD_CHUNK]
                    s.sendall(struct.pack(">I", len(chunk)) + chunk)
                s.sendall(struct.pack(">I", 0))  # zero-length chunk ends the stream
            reply = bytearray()
            while not reply.endswith(b"\0"):
                got = s.recv(4096)
                if not got:
                    break
                reply += got
                if len(reply) > 65536:  # a reply is one line; refuse a runaway peer
                    break
        return reply.rstrip(b"\0").decode("utf-8", "replace").strip()

    def refresh(self) -> bool:
        """Re-read clamd's version (after freshclam); True when the identity changed."""
        try:
            version = self._call(b"VERSION", None, self.connect_timeout)
        except OSError as e:
            raise ScannerError(f"clamd at {self.socket_path}: {e}") from None
        if not version.startswith("ClamAV"):
            raise ScannerError(f"clamd at {self.socket_path}: unexpected {version[:80]!r}")
        identity = "clamd:" + _digest(version.encode())
        changed = identity != self._identity
        self._identity = identity
        return changed

    def scan(self, data: bytes, timeout: float) -> ScanResult:
        try:
            reply = self._call(b"INSTREAM", data, timeout)
        except TimeoutError:
            return unknown(TIMEOUT)
        except OSError as e:
            return unknown(f"error: clamd: {e}")
        # "stream: OK" | "stream: <Name> FOUND" | "<message> ERROR"
        if reply.endswith(" FOUND"):
            name = reply.removeprefix("stream:").removesuffix(" FOUND").strip()
            return ScanResult(FileVerdict.MALICIOUS, (f"clamav:{name}",))
        if reply == "stream: OK":
            return ScanResult(FileVerdict.CLEAN)
        return unknown(f"error: clamd: {reply[:200]}")


# --- several scanners --------------------------------------------------------------------


class MultiScanner:
    """Runs every scanner within one time budget: malicious if any says so (all their
    signatures), else unknown if any could not decide, else clean."""

    def __init__(self, scanners: Sequence[Scanner]) -> None:
        if not scanners:
            raise ScannerError("MultiScanner needs at least one scanner")
        self.scanners = tuple(scanners)

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.scanners)

    @property
    def identity(self) -> str:
        return "+".join(s.identity for s in self.scanners)

    def scan(self, data: bytes, timeout: float) -> ScanResult:
        deadline = time.monotonic() + timeout
        sigs: list[str] = []
        undecided: list[str] = []
        for s in self.scanners:
            left = deadline - time.monotonic()
            if left <= 0:
                undecided.append(f"{s.name}: {TIMEOUT}")
                continue
            r = s.scan(data, left)
            if r.verdict is FileVerdict.MALICIOUS:
                sigs += r.signatures
            elif r.verdict is FileVerdict.UNKNOWN:
                undecided.append(f"{s.name}: {r.detail}")
        if sigs:
            return ScanResult(FileVerdict.MALICIOUS, tuple(sigs))
        if undecided:
            return unknown("; ".join(undecided))
        return ScanResult(FileVerdict.CLEAN)


# --- the pool ----------------------------------------------------------------------------


@dataclass
class PoolStats:
    scans: int = 0
    too_large: int = 0
    timeouts: int = 0
    busy: int = 0
    errors: int = 0
    mismatches: int = 0


def _settle(fut: Future[ScanResult], result: ScanResult) -> bool:
    """First answer wins (the scan or the deadline); False if already answered."""
    try:
        fut.set_result(result)
    except InvalidStateError:
        return False
    return True


class _Deadlines:
    """One thread that answers "unknown/timeout" for scans running past their limit."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Future[ScanResult]]] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self.expired = 0
        self._thread = threading.Thread(target=self._run, name="scan-deadlines",
                                        daemon=True)
        self._thread.start()

    def add(self, at: float, fut: Future[ScanResult]) -> None:
        with self._cv:
            heapq.heappush(self._heap, (at, next(self._seq), fut))
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                if self._closed:
                    return
                if not self._heap:
                    self._cv.wait()
                    continue
                at, _, fut = self._heap[0]
                now = time.monotonic()
                if at > now and not fut.done():
                    self._cv.wait(at - now)
                    continue
                heapq.heappop(self._heap)
            # Outside the lock: settling runs the waiters' callbacks.
            if not fut.done() and _settle(fut, unknown(TIMEOUT)):
                self.expired += 1

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=2)


class ScanPool:
    """Scans off the packet path with a size limit, a time limit and a bounded queue.

    `submit` never blocks: too large -> unknown/"too large", queue full -> unknown/"busy",
    both at once. A scan past `timeout` is answered unknown/"timeout" at the limit; its
    worker stays busy until the scanner itself gives up (YARA's whole-second timeout,
    clamd's socket timeout), so a pathological file costs at most ~ceil(timeout).
    """

    def __init__(self, scanner: Scanner, *, workers: int = 2,
                 max_size: int = MAX_FILE_SIZE, timeout: float = SCAN_TIMEOUT,
                 max_pending: int = MAX_PENDING) -> None:
        self.scanner = scanner
        self.max_size = max_size
        self.timeout = timeout
        self.max_pending = max_pending
        self.stats = PoolStats()
        self._pending = 0
        self._lock = threading.Lock()
        self._exec = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scan")
        self._deadlines = _Deadlines()

    def submit(self, data: bytes | None, sha256: str | None = None) -> Future[ScanResult]:
        """Scan `data` (the whole file; None when the producer did not keep it).

        With `sha256`, the bytes are checked against it first: a verdict is only ever
        stored under the digest of the bytes actually scanned.
        """
        fut: Future[ScanResult] = Future()
        if data is None or len(data) > self.max_size:
            with self._lock:
                self.stats.too_large += 1
            _settle(fut, unknown(TOO_LARGE if data is not None else NOT_RETAINED))
            return fut
        with self._lock:
            if self._pending >= self.max_pending:
                self.stats.busy += 1
                _settle(fut, unknown(BUSY))
                return fut
            self._pending += 1
        self._exec.submit(self._work, data, sha256, fut)
        return fut

    def _work(self, data: bytes, sha256: str | None, fut: Future[ScanResult]) -> None:
        try:
            if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
                with self._lock:
                    self.stats.mismatches += 1
                _settle(fut, unknown("error: sha256 mismatch"))
                return
            # The clock starts when a worker takes the file, not while it queues.
            self._deadlines.add(time.monotonic() + self.timeout, fut)
            try:
                result = self.scanner.scan(data, self.timeout)
            except Exception as e:  # a scanner bug must not lose the answer
                log.exception("scanner %s failed", self.scanner.name)
                with self._lock:
                    self.stats.errors += 1
                result = unknown(f"error: {type(e).__name__}: {e}")
            with self._lock:
                self.stats.scans += 1
                if result.detail == TIMEOUT:
                    self.stats.timeouts += 1
            if not _settle(fut, result):
                with self._lock:
                    self.stats.timeouts += 1  # the deadline answered first
        finally:
            with self._lock:
                self._pending -= 1

    def close(self, wait: bool = True) -> None:
        self._exec.shutdown(wait=wait, cancel_futures=True)
        self._deadlines.close()


# --- the service -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one fetch of one file by one guest."""

    sha256: str
    result: ScanResult
    # "cache": answered from the cache; "scan": this fetch was scanned; "shared": joined
    # a scan already running for the same file; "limit": too large / busy, not scanned.
    source: str
    identity: str
    guest: str | None
    token: Any = None  # the caller's correlation value (e.g. flow and packet ids)

    @property
    def verdict(self) -> FileVerdict:
        return self.result.verdict


@dataclass
class ServiceStats:
    submitted: int = 0
    cache_hits: int = 0
    shared: int = 0
    scans: int = 0
    malicious: int = 0
    unknown: int = 0
    cache_errors: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


class FileVerdictService:
    """Cache first, then scan once, then remember. Thread-safe.

    The cache lookup happens in `submit` (a cache hit decides at once, the callback runs
    before `submit` returns); scanning and storing run on the pool's threads, and a hit's
    bookkeeping write on a writer thread, so the caller's loop pays one read. A cache
    that fails (Redis down) is logged and counted and treated as a miss: files are still
    scanned, verdicts still delivered.
    """

    def __init__(self, cache: ScanCache, pool: ScanPool) -> None:
        self.cache = cache
        self.pool = pool
        self.stats = ServiceStats()
        self._lock = threading.Lock()
        # (sha256, identity) -> the futures of fetches waiting on that scan.
        self._inflight: dict[tuple[str, str], list[tuple[Future[Decision], str | None,
                                                          Any]]] = {}
        # One thread: hits are bookkeeping (counters, last seen, guests), never on the
        # decision path, and one writer keeps SQLite's write lock uncontended.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-cache")

    @property
    def identity(self) -> str:
        return self.pool.scanner.identity

    def _count(self, **inc: int) -> None:
        with self._lock:
            for k, v in inc.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    def _cache_call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:
            log.exception("scan cache %s failed", what)
            self._count(cache_errors=1)
            return None

    def _hit(self, sha: str, guest: str | None) -> None:
        self._cache_call("record_hit", lambda: self.cache.record_hit(sha, guest))

    def lookup(self, sha256: str) -> Any:
        """The current-identity host verdict (an Entry) or None; no counters touched."""
        sha = check_sha256(sha256)
        return self._cache_call("get", lambda: self.cache.get(sha, self.identity))

    def submit(self, sha256: str, data: bytes | None, guest: str | None = None,
               callback: Callable[[Decision], None] | None = None,
               token: Any = None) -> Future[Decision]:
        """Decide on a finished file. `data` is the whole file, or None when the producer
        did not keep it (too large to hold): then only a cached verdict can decide."""
        sha = check_sha256(sha256)
        identity = self.identity
        out: Future[Decision] = Future()
        if callback is not None:
            out.add_done_callback(lambda f: callback(f.result()))
        self._count(submitted=1)
        entry = self._cache_call("get", lambda: self.cache.get(sha, identity))
        if entry is not None:
            self._writer.submit(self._hit, sha, guest)
            self._count(cache_hits=1, malicious=int(entry.verdict is FileVerdict.MALICIOUS))
            out.set_result(Decision(sha, entry.result, "cache", identity, guest, token))
            return out
        key = (sha, identity)
        with self._lock:
            waiting = self._inflight.get(key)
            if waiting is not None:
                waiting.append((out, guest, token))
                self.stats.shared += 1
                return out
            self._inflight[key] = [(out, guest, token)]
        scan = self.pool.submit(data, sha)
        scan.add_done_callback(lambda f: self._scanned(key, f.result()))
        return out

    def _scanned(self, key: tuple[str, str], result: ScanResult) -> None:
        sha, identity = key
        with self._lock:
            waiters = self._inflight.pop(key, [])
        first_guest = waiters[0][1] if waiters else None
        scanned = result.detail not in (TOO_LARGE, NOT_RETAINED, BUSY)
        # Only definite verdicts are stored: unknown (timeout, error, busy) is transient
        # or depends on limits that may change, so the next fetch tries again.
        if result.verdict is not FileVerdict.UNKNOWN:
            self._cache_call("put", lambda: self.cache.put(sha, identity, result,
                                                           first_guest))
        self._count(scans=int(scanned),
                    malicious=len(waiters) * int(result.verdict is FileVerdict.MALICIOUS),
                    unknown=len(waiters) * int(result.verdict is FileVerdict.UNKNOWN))
        for i, (fut, guest, token) in enumerate(waiters):
            if i > 0 and result.verdict is not FileVerdict.UNKNOWN:
                self._hit(sha, guest)
            source = ("scan" if i == 0 else "shared") if scanned else "limit"
            fut.set_result(Decision(sha, result, source, identity, guest, token))

    def flush(self) -> None:
        """Wait until the bookkeeping writes queued so far are done (tests, shutdown)."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        self.pool.close()
        self._writer.shutdown(wait=True)


class VerdictInbox:
    """Brings decisions from pool threads back into a single-threaded packet loop.

    Pass `inbox.put` as the submit callback; add `inbox.fileno()` to the loop's
    select(); call `drain()` when it is readable (or on every wake-up).
    """

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[Decision] = queue.SimpleQueue()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def put(self, d: Decision) -> None:
        self._q.put(d)
        # A full pipe already signals readiness; the decision itself is in the queue.
        with contextlib.suppress(BlockingIOError):
            os.write(self._w, b"\0")

    def fileno(self) -> int:
        return self._r

    def drain(self) -> list[Decision]:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._r, 4096):
                pass
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


def build_scanner(rules_dir: str | Path, clamd_socket: str | Path | None = None) -> Scanner:
    """YARA on `rules_dir`, plus clamd when a daemon answers on `clamd_socket`."""
    yara = YaraScanner(rules_dir)
    clamd = ClamdScanner.if_available(clamd_socket) if clamd_socket else None
    return yara if clamd is None else MultiScanner([yara, clamd])


def build_service(cache: ScanCache, rules_dir: str | Path, *,
                  clamd_socket: str | Path | None = None, workers: int = 2,
                  max_size: int = MAX_FILE_SIZE, timeout: float = SCAN_TIMEOUT,
                  max_pending: int = MAX_PENDING) -> FileVerdictService:
    """The service as the daemon runs it. Build it in the process that uses it (after
    fork: its threads do not survive one)."""
    pool = ScanPool(build_scanner(rules_dir, clamd_socket), workers=workers,
                    max_size=max_size, timeout=timeout, max_pending=max_pending)
    return FileVerdictService(cache, pool)
