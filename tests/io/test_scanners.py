"""Scanners, the scan pool and the verdict service, with real YARA and a real SQLite cache.

Pool timing tests use a scanner that blocks on an Event the test controls, so they prove
ordering ("answered while the scan was still running") without asserting on wall time.
"""

from __future__ import annotations

import hashlib
import select
import shutil
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.io.cache import FileVerdict, ScanResult, SqliteCache
from appliance.io.scanners import (
    BUSY,
    NOT_RETAINED,
    TIMEOUT,
    TOO_LARGE,
    ClamdScanner,
    Decision,
    FileVerdictService,
    MultiScanner,
    ScannerError,
    ScanPool,
    VerdictInbox,
    YaraScanner,
)

pytest.importorskip("yara", reason="yara-python is not installed")

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules" / "yara"
# Built from two halves so this test file itself is not the EICAR file to a scanner.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-" + b"STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
CLEAN_FILE = b"just an ordinary download\n" * 100
WAIT = 10.0  # generous bound on future.result(): only a hang would reach it


def h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Gate:
    """A scanner that blocks until released; counts calls and concurrency."""

    name = "gate"

    def __init__(self, identity: str = "gate:1", verdict: FileVerdict = FileVerdict.CLEAN,
                 parties: int = 0) -> None:
        self.identity = identity
        self.verdict = verdict
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls = 0
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(parties) if parties else None

    def scan(self, data: bytes, timeout: float) -> ScanResult:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.started.set()
        try:
            if self._barrier is not None:
                self._barrier.wait(timeout=WAIT)  # only passes if all run at once
            else:
                self.release.wait(WAIT)
            return ScanResult(self.verdict)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    d = tmp_path / "yara"
    d.mkdir()
    shutil.copy(RULES / "eicar.yar", d / "eicar.yar")
    return d


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[SqliteCache]:
    c = SqliteCache(tmp_path / "scancache.db")
    yield c
    c.close()


# --- YARA --------------------------------------------------------------------------------


def test_bundled_rules_detect_eicar_and_pass_clean_files() -> None:
    y = YaraScanner(RULES)
    r = y.scan(EICAR, 5)
    assert r.verdict is FileVerdict.MALICIOUS
    assert r.signatures == ("yara:eicar:EICAR_Test_File",)
    assert y.scan(EICAR + b"\r\n", 5).verdict is FileVerdict.MALICIOUS
    assert y.scan(CLEAN_FILE, 5).verdict is FileVerdict.CLEAN
    # The definition: only whitespace may follow, 128 bytes at most.
    assert y.scan(EICAR + b"trailing text", 5).verdict is FileVerdict.CLEAN
    assert y.scan(EICAR + b" " * 61, 5).verdict is FileVerdict.CLEAN
    assert y.identity.startswith("yara:") and len(y.identity) == 21


def test_identity_follows_rule_changes(rules_dir: Path) -> None:
    y = YaraScanner(rules_dir)
    first = y.identity
    assert not y.reload()  # nothing changed
    (rules_dir / "extra.yar").write_text(
        'rule Ordinary_Download { strings: $a = "ordinary download" condition: $a }\n')
    assert y.reload()
    assert y.identity != first
    r = y.scan(CLEAN_FILE, 5)
    assert r.signatures == ("yara:extra:Ordinary_Download",)


def test_bad_rules_keep_the_old_ones(rules_dir: Path) -> None:
    y = YaraScanner(rules_dir)
    before = y.identity
    (rules_dir / "broken.yar").write_text("rule Broken { condition: $nope }\n")
    with pytest.raises(ScannerError, match=r"broken\.yar:1: undefined string"):
        y.reload()
    assert y.identity == before
    assert y.scan(EICAR, 5).verdict is FileVerdict.MALICIOUS


def test_no_rules_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ScannerError, match=r"no \*\.yar"):
        YaraScanner(tmp_path)
    with pytest.raises(ScannerError, match="no such"):
        YaraScanner(tmp_path / "missing")


def test_yara_timeout_becomes_unknown(rules_dir: Path) -> None:
    y = YaraScanner(rules_dir)
    yara = y._yara

    class SlowRules:
        def match(self, **kw: Any) -> Any:
            assert kw["timeout"] == 1  # 0.2 s rounds up to libyara's whole second
            raise yara.TimeoutError("scan timed out")

    y._rules = SlowRules()
    assert y.scan(EICAR, 0.2).detail == TIMEOUT


# --- clamd (a fake daemon speaking INSTREAM on a unix socket) ---------------------------


class FakeClamd:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.streams: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read_exact(self, c: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            got = c.recv(n - len(buf))
            if not got:
                raise ConnectionError
            buf += got
        return buf

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                cmd = b""
                while not cmd.endswith(b"\0"):
                    cmd += c.recv(1)
                if cmd == b"zVERSION\0":
                    c.sendall(b"ClamAV 1.0.7/27400/Fake\0")
                elif cmd == b"zINSTREAM\0":
                    data = b""
                    while True:
                        (n,) = struct.unpack(">I", self._read_exact(c, 4))
                        if n == 0:
                            break
                        data += self._read_exact(c, n)
                    self.streams.append(data)
                    found = b"EICAR-STANDARD" in data
                    c.sendall(b"stream: Eicar-Test-Signature FOUND\0" if found
                              else b"stream: OK\0")

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return  # closed already (a test stopped the daemon)
        # shutdown() wakes the accept() blocked in the thread; close() alone does not.
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.path.unlink(missing_ok=True)
        self.thread.join(WAIT)


@pytest.fixture
def clamd(tmp_path: Path) -> Iterator[FakeClamd]:
    f = FakeClamd(tmp_path / "clamd.ctl")
    yield f
    f.close()


def test_clamd_instream(clamd: FakeClamd) -> None:
    c = ClamdScanner.if_available(clamd.path)
    assert c is not None and c.identity.startswith("clamd:")
    big = CLEAN_FILE * 100  # several INSTREAM chunks
    assert c.scan(big, 5).verdict is FileVerdict.CLEAN
    assert clamd.streams[-1] == big
    r = c.scan(EICAR, 5)
    assert r.verdict is FileVerdict.MALICIOUS
    assert r.signatures == ("clamav:Eicar-Test-Signature",)


def test_clamd_absent_is_skipped_gracefully(tmp_path: Path) -> None:
    assert ClamdScanner.if_available(tmp_path / "nope.ctl") is None
    stale = tmp_path / "stale.ctl"  # a socket file with no daemon behind it
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    assert ClamdScanner.if_available(stale) is None


@pytest.mark.skipif(not Path("/run/clamav/clamd.ctl").exists(),
                    reason="no clamd running here (/run/clamav/clamd.ctl)")
def test_real_clamd_detects_eicar() -> None:
    c = ClamdScanner("/run/clamav/clamd.ctl")
    assert c.scan(EICAR, 10).verdict is FileVerdict.MALICIOUS


def test_multi_scanner_combines(clamd: FakeClamd) -> None:
    y = YaraScanner(RULES)
    c = ClamdScanner(clamd.path)
    m = MultiScanner([y, c])
    assert m.identity == f"{y.identity}+{c.identity}"
    r = m.scan(EICAR, 5)
    assert r.signatures == ("yara:eicar:EICAR_Test_File", "clamav:Eicar-Test-Signature")
    assert m.scan(CLEAN_FILE, 5).verdict is FileVerdict.CLEAN
    clamd.close()  # the daemon went away: clean by YARA alone is not a full verdict
    r = m.scan(CLEAN_FILE, 5)
    assert r.verdict is FileVerdict.UNKNOWN and r.detail.startswith("clamd: error")


# --- the pool ----------------------------------------------------------------------------


def test_too_large_is_unknown_without_scanning() -> None:
    g = Gate()
    pool = ScanPool(g, max_size=1000)
    try:
        f = pool.submit(b"x" * 1001)
        assert f.done() and f.result().detail == TOO_LARGE
        assert pool.submit(None).result().detail == NOT_RETAINED
        assert g.calls == 0 and pool.stats.too_large == 2
    finally:
        pool.close()


def test_timeout_answers_while_the_scan_still_runs() -> None:
    g = Gate()
    pool = ScanPool(g, timeout=0.1)
    try:
        r = pool.submit(b"data").result(WAIT)
        assert r.verdict is FileVerdict.UNKNOWN and r.detail == TIMEOUT
        assert g.running == 1  # the answer did not wait for the scanner
    finally:
        g.release.set()
        pool.close()
    assert pool.stats.timeouts == 1


def test_pool_scans_concurrently() -> None:
    # The barrier only opens when three scans run at the same moment.
    g = Gate(parties=3)
    pool = ScanPool(g, workers=3, timeout=WAIT)
    try:
        futs = [pool.submit(bytes([i])) for i in range(3)]
        assert [f.result(WAIT).verdict for f in futs] == [FileVerdict.CLEAN] * 3
        assert g.max_running == 3
    finally:
        pool.close()


def test_pool_queue_is_bounded() -> None:
    g = Gate()
    pool = ScanPool(g, workers=1, max_pending=2, timeout=WAIT)
    try:
        a, b = pool.submit(b"a"), pool.submit(b"b")
        c = pool.submit(b"c")
        assert c.done() and c.result().detail == BUSY
        g.release.set()
        assert a.result(WAIT).verdict is b.result(WAIT).verdict is FileVerdict.CLEAN
    finally:
        g.release.set()
        pool.close()


def test_real_yara_in_many_threads() -> None:
    pool = ScanPool(YaraScanner(RULES), workers=4)
    try:
        files = [EICAR if i % 3 == 0 else CLEAN_FILE + bytes([i]) for i in range(60)]
        futs = [pool.submit(f) for f in files]
        got = [f.result(WAIT).verdict for f in futs]
        want = [FileVerdict.MALICIOUS if i % 3 == 0 else FileVerdict.CLEAN
                for i in range(60)]
        assert got == want
    finally:
        pool.close()


def test_scanner_exception_is_unknown() -> None:
    class Boom:
        name = "boom"
        identity = "boom:1"

        def scan(self, data: bytes, timeout: float) -> ScanResult:
            raise RuntimeError("bug")

    pool = ScanPool(Boom())
    try:
        r = pool.submit(b"x").result(WAIT)
        assert r.verdict is FileVerdict.UNKNOWN and "RuntimeError: bug" in r.detail
    finally:
        pool.close()


# --- the service -------------------------------------------------------------------------


def test_scan_once_then_cache_hit(cache: SqliteCache) -> None:
    y = YaraScanner(RULES)
    svc = FileVerdictService(cache, ScanPool(y))
    try:
        got: list[Decision] = []
        first = svc.submit(h(EICAR), EICAR, "desktop", callback=got.append,
                           token=("flow", 1)).result(WAIT)
        assert first.source == "scan" and first.verdict is FileVerdict.MALICIOUS
        assert first.result.signatures == ("yara:eicar:EICAR_Test_File",)
        assert got == [first] and first.token == ("flow", 1)
        # The second guest's fetch is decided before submit returns: no scan.
        fut = svc.submit(h(EICAR), EICAR, "proxy", callback=got.append)
        assert fut.done() and got[-1].source == "cache"
        assert got[-1].verdict is FileVerdict.MALICIOUS
        svc.flush()
        s = cache.stats()
        assert (s.scans, s.hits) == (1, 1)
        e = cache.get(h(EICAR), y.identity)
        assert e is not None and e.guests == ("desktop", "proxy")
        assert svc.stats.scans == 1 and svc.stats.cache_hits == 1
        assert svc.stats.malicious == 2
    finally:
        svc.close()


def test_rules_change_forces_rescan(cache: SqliteCache, rules_dir: Path) -> None:
    y = YaraScanner(rules_dir)
    svc = FileVerdictService(cache, ScanPool(y))
    try:
        d1 = svc.submit(h(CLEAN_FILE), CLEAN_FILE, "desktop").result(WAIT)
        assert (d1.source, d1.verdict) == ("scan", FileVerdict.CLEAN)
        assert svc.submit(h(CLEAN_FILE), CLEAN_FILE, "proxy").result(WAIT).source == "cache"
        (rules_dir / "new.yar").write_text(
            'rule Now_Bad { strings: $a = "ordinary download" condition: $a }\n')
        assert y.reload()
        d2 = svc.submit(h(CLEAN_FILE), CLEAN_FILE, "proxy").result(WAIT)
        assert d2.source == "scan" and d2.verdict is FileVerdict.MALICIOUS
        assert d2.identity != d1.identity
        assert cache.stats().scans == 2
        # The old clean verdict is still stored, but only under its own identity.
        assert [e.verdict for e in cache.entries(h(CLEAN_FILE))] == [
            FileVerdict.MALICIOUS, FileVerdict.CLEAN]
    finally:
        svc.close()


def test_concurrent_fetches_share_one_scan(cache: SqliteCache) -> None:
    g = Gate()
    svc = FileVerdictService(cache, ScanPool(g, timeout=WAIT))
    try:
        a = svc.submit(h(b"f"), b"f", "desktop")
        assert g.started.wait(WAIT)
        b = svc.submit(h(b"f"), b"f", "proxy")
        assert not b.done()
        g.release.set()
        assert a.result(WAIT).source == "scan" and b.result(WAIT).source == "shared"
        assert g.calls == 1
        e = cache.get(h(b"f"), g.identity)
        assert e is not None and e.guests == ("desktop", "proxy") and e.hits == 1
    finally:
        g.release.set()
        svc.close()


def test_unknown_is_not_cached(cache: SqliteCache) -> None:
    g = Gate()
    svc = FileVerdictService(cache, ScanPool(g, timeout=0.05))
    try:
        d = svc.submit(h(b"slow"), b"slow", "desktop").result(WAIT)
        assert d.result.detail == TIMEOUT and d.source == "scan"
        assert cache.get(h(b"slow"), g.identity) is None  # next fetch tries again
        assert svc.stats.unknown == 1
    finally:
        g.release.set()
        svc.close()


def test_mismatched_bytes_are_not_stored(cache: SqliteCache) -> None:
    svc = FileVerdictService(cache, ScanPool(YaraScanner(RULES)))
    try:
        d = svc.submit(h(CLEAN_FILE), EICAR, "desktop").result(WAIT)
        assert d.verdict is FileVerdict.UNKNOWN and "mismatch" in d.result.detail
        assert cache.stats().verdicts == 0
    finally:
        svc.close()


def test_bytes_not_kept_cache_still_decides(cache: SqliteCache) -> None:
    y = YaraScanner(RULES)
    svc = FileVerdictService(cache, ScanPool(y))
    try:
        d = svc.submit(h(EICAR), None, "desktop").result(WAIT)
        assert (d.verdict, d.source) == (FileVerdict.UNKNOWN, "limit")
        cache.put(h(EICAR), y.identity, ScanResult(FileVerdict.MALICIOUS, ("x",)))
        d = svc.submit(h(EICAR), None, "desktop").result(WAIT)
        assert (d.verdict, d.source) == (FileVerdict.MALICIOUS, "cache")
    finally:
        svc.close()


def test_broken_cache_still_scans() -> None:
    class Down:
        def __getattr__(self, name: str) -> Any:
            def fail(*a: Any, **k: Any) -> Any:
                raise ConnectionError("redis is down")
            return fail

    svc = FileVerdictService(Down(), ScanPool(YaraScanner(RULES)))
    try:
        d = svc.submit(h(EICAR), EICAR, "desktop").result(WAIT)
        assert d.verdict is FileVerdict.MALICIOUS
        assert svc.stats.cache_errors == 2  # the get and the put
    finally:
        svc.close()


def test_inbox_wakes_a_select_loop(cache: SqliteCache) -> None:
    inbox = VerdictInbox()
    svc = FileVerdictService(cache, ScanPool(YaraScanner(RULES)))
    try:
        svc.submit(h(EICAR), EICAR, "desktop", callback=inbox.put, token=7)
        ready, _, _ = select.select([inbox], [], [], WAIT)
        assert ready == [inbox]
        got = inbox.drain()
        assert [(d.token, d.verdict) for d in got] == [(7, FileVerdict.MALICIOUS)]
        assert inbox.drain() == []
        ready, _, _ = select.select([inbox], [], [], 0)
        assert ready == []
    finally:
        svc.close()
        inbox.close()


def test_build_service_uses_clamd_when_present(cache: SqliteCache, clamd: FakeClamd,
                                               tmp_path: Path) -> None:
    from appliance.io.scanners import build_scanner, build_service

    assert isinstance(build_scanner(RULES, tmp_path / "no-clamd.ctl"), YaraScanner)
    svc = build_service(cache, RULES, clamd_socket=clamd.path, workers=1)
    try:
        assert isinstance(svc.pool.scanner, MultiScanner)
        d = svc.submit(h(EICAR), EICAR, "desktop").result(WAIT)
        assert d.result.signatures == ("yara:eicar:EICAR_Test_File",
                                       "clamav:Eicar-Test-Signature")
    finally:
        svc.close()
