"""The scan cache: a file's verdict, keyed by its sha256 and the scanner that judged it.

Many guests download the same files; the host scans a file once and every later fetch
(from any guest, or any host sharing a Redis cache) is answered from here. Two stores
behind one protocol: SQLite for one host (the default) and Redis when several hosts
share a cache.

Trust rules:
- A host verdict is keyed by (sha256, scanner identity). The identity names the engine
  and the rules' version, so after a rules update `get` finds nothing for the new
  identity and the file is scanned again; old verdicts are never trusted blindly.
- Endpoint agents' reports live in their own table/keys. They are shown beside host
  verdicts and never change them, so a guest cannot launder a host's malicious verdict.

Per-file bookkeeping (first/last seen, hits, which guests fetched it) is shared by all
identities of a file: it describes the file's traffic, not one scanner's opinion.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# Redis purge and stats walk the file index in batches this size: large enough to
# amortise round trips, small enough not to block a shared server for long.
REDIS_BATCH = 500


class FileVerdict(StrEnum):
    CLEAN = "clean"
    MALICIOUS = "malicious"
    UNKNOWN = "unknown"  # too large, timeout, scanner error: the policy decides


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What a scanner (or a chain of them) concluded about one file's bytes."""

    verdict: FileVerdict
    signatures: tuple[str, ...] = ()
    # Why a verdict is unknown ("too large", "timeout", "error: ..."); empty otherwise.
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "signatures": list(self.signatures),
                "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Entry:
    """A host verdict for one (sha256, identity) with the file's bookkeeping."""

    sha256: str
    identity: str
    result: ScanResult
    scanned_at: float
    first_seen: float
    last_seen: float
    hits: int
    guests: tuple[str, ...]

    @property
    def verdict(self) -> FileVerdict:
        return self.result.verdict

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "identity": self.identity, **self.result.to_json(),
                "scanned_at": self.scanned_at, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "hits": self.hits, "guests": list(self.guests)}


@dataclass(frozen=True, slots=True)
class Report:
    """An endpoint agent's own verdict on a file; kept apart from host verdicts."""

    sha256: str
    reporter: str  # the agent, as named by its API token
    verdict: FileVerdict
    scanner: str
    signature: str | None
    reported_at: float

    def to_json(self) -> dict[str, Any]:
        return {"reporter": self.reporter, "verdict": self.verdict.value,
                "scanner": self.scanner, "signature": self.signature,
                "reported_at": self.reported_at}


@dataclass(frozen=True, slots=True)
class CacheStats:
    files: int
    verdicts: int  # host verdict rows, every identity
    by_verdict: dict[str, int] = field(default_factory=dict)
    reports: int = 0
    # Persistent counters, shared by every process/host using this store.
    hits: int = 0
    scans: int = 0
    reported: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "verdicts": self.verdicts,
                "by_verdict": dict(self.by_verdict), "reports": self.reports,
                "hits": self.hits, "scans": self.scans, "reported": self.reported}


class ScanCache(Protocol):
    def get(self, sha256: str, identity: str) -> Entry | None:
        """The host verdict for this identity; None when absent or only older identities."""
        ...

    def entries(self, sha256: str) -> list[Entry]:
        """Every identity's verdict for a file, newest scan first (CLI lookup)."""
        ...

    def put(self, sha256: str, identity: str, result: ScanResult, guest: str | None = None,
            now: float | None = None) -> None:
        """Store a host verdict after a scan (counts one scan)."""
        ...

    def record_hit(self, sha256: str, guest: str | None = None,
                   now: float | None = None) -> None:
        """A fetch answered without scanning (counts one hit)."""
        ...

    def report(self, report: Report) -> None:
        """Store an endpoint's verdict (one per reporter and scanner; the latest wins)."""
        ...

    def reports(self, sha256: str) -> list[Report]: ...

    def stats(self) -> CacheStats: ...

    def purge(self, older_than: float | None = None, now: float | None = None) -> int:
        """Forget files not seen for `older_than` seconds (all when None); returns count."""
        ...

    def close(self) -> None: ...


def check_sha256(sha256: str) -> str:
    """Normalise to lowercase hex and refuse anything else (keys come from the network)."""
    s = sha256.lower()
    if not SHA256_RE.match(s):
        raise ValueError(f"not a sha256 hex digest: {sha256[:80]!r}")
    return s


def _result(verdict: str, signatures: Iterable[str], detail: str) -> ScanResult:
    return ScanResult(FileVerdict(verdict), tuple(signatures), detail)


# --- SQLite ----------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    sha256 TEXT PRIMARY KEY, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS files_last_seen ON files(last_seen);
CREATE TABLE IF NOT EXISTS file_guests (
    sha256 TEXT NOT NULL, guest TEXT NOT NULL, PRIMARY KEY (sha256, guest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS verdicts (
    sha256 TEXT NOT NULL, identity TEXT NOT NULL, verdict TEXT NOT NULL,
    signatures TEXT NOT NULL, detail TEXT NOT NULL, scanned_at REAL NOT NULL,
    PRIMARY KEY (sha256, identity)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reports (
    sha256 TEXT NOT NULL, reporter TEXT NOT NULL, scanner TEXT NOT NULL,
    verdict TEXT NOT NULL, signature TEXT, reported_at REAL NOT NULL,
    PRIMARY KEY (sha256, reporter, scanner)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reports_at ON reports(reported_at);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)
    WITHOUT ROWID;
"""

_TOUCH_FILE = """
INSERT INTO files (sha256, first_seen, last_seen, hits) VALUES (?, ?, ?, ?)
ON CONFLICT (sha256) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen),
                                   hits = hits + excluded.hits
"""
_COUNT = """
INSERT INTO counters (name, value) VALUES (?, 1)
ON CONFLICT (name) DO UPDATE SET value = value + 1
"""


class SqliteCache:
    """The default store: one SQLite file in WAL mode, safe across threads and the
    daemon's forked workers (each process opens its own connection on first use)."""

    def __init__(self, path: str | Path, *, create: bool = True,
                 busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no scan cache here")
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        with self._lock:
            self._db()

    def _db(self) -> sqlite3.Connection:
        # A connection must not cross fork(): a child reopens its own (caller holds _lock).
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout,
                                   isolation_level=None, check_same_thread=False)
            # WAL: readers (the API, the CLI) never block the scan path's writes.
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL loses at most the last transactions on power loss, never
            # corrupts; a lost verdict only means one more scan.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _entry(self, db: sqlite3.Connection, sha256: str, row: tuple[Any, ...]) -> Entry:
        identity, verdict, sigs, detail, scanned_at = row
        f = db.execute("SELECT first_seen, last_seen, hits FROM files WHERE sha256 = ?",
                       (sha256,)).fetchone() or (scanned_at, scanned_at, 0)
        guests = tuple(g for (g,) in db.execute(
            "SELECT guest FROM file_guests WHERE sha256 = ? ORDER BY guest", (sha256,)))
        return Entry(sha256, identity, _result(verdict, json.loads(sigs), detail),
                     scanned_at, f[0], f[1], f[2], guests)

    def get(self, sha256: str, identity: str) -> Entry | None:
        sha256 = check_sha256(sha256)
        with self._lock:
            db = self._db()
            row = db.execute(
                "SELECT identity, verdict, signatures, detail, scanned_at FROM verdicts "
                "WHERE sha256 = ? AND identity = ?", (sha256, identity)).fetchone()
            return None if row is None else self._entry(db, sha256, row)

    def entries(self, sha256: str) -> list[Entry]:
        sha256 = check_sha256(sha256)
        with self._lock:
            db = self._db()
            rows = db.execute(
                "SELECT identity, verdict, signatures, detail, scanned_at FROM verdicts "
                "WHERE sha256 = ? ORDER BY scanned_at DESC", (sha256,)).fetchall()
            return [self._entry(db, sha256, r) for r in rows]

    def _touch(self, db: sqlite3.Connection, sha256: str, guest: str | None, now: float,
               hits: int) -> None:
        db.execute(_TOUCH_FILE, (sha256, now, now, hits))
        if guest:
            db.execute("INSERT OR IGNORE INTO file_guests VALUES (?, ?)", (sha256, guest))

    def put(self, sha256: str, identity: str, result: ScanResult, guest: str | None = None,
            now: float | None = None) -> None:
        sha256 = check_sha256(sha256)
        now = time.time() if now is None else now
        with self._lock:
            db = self._db()
            with _transaction(db):
                db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?)",
                           (sha256, identity, result.verdict.value,
                            json.dumps(list(result.signatures)), result.detail, now))
                self._touch(db, sha256, guest, now, 0)
                db.execute(_COUNT, ("scans",))

    def record_hit(self, sha256: str, guest: str | None = None,
                   now: float | None = None) -> None:
        sha256 = check_sha256(sha256)
        now = time.time() if now is None else now
        with self._lock:
            db = self._db()
            with _transaction(db):
                self._touch(db, sha256, guest, now, 1)
                db.execute(_COUNT, ("hits",))

    def report(self, report: Report) -> None:
        sha256 = check_sha256(report.sha256)
        with self._lock:
            db = self._db()
            with _transaction(db):
                db.execute("INSERT OR REPLACE INTO reports VALUES (?, ?, ?, ?, ?, ?)",
                           (sha256, report.reporter, report.scanner, report.verdict.value,
                            report.signature, report.reported_at))
                db.execute(_COUNT, ("reported",))

    def reports(self, sha256: str) -> list[Report]:
        sha256 = check_sha256(sha256)
        with self._lock:
            rows = self._db().execute(
                "SELECT reporter, verdict, scanner, signature, reported_at FROM reports "
                "WHERE sha256 = ? ORDER BY reported_at DESC", (sha256,)).fetchall()
        return [Report(sha256, r[0], FileVerdict(r[1]), r[2], r[3], r[4]) for r in rows]

    def stats(self) -> CacheStats:
        with self._lock:
            db = self._db()
            files = db.execute("SELECT count(*) FROM files").fetchone()[0]
            by = dict(db.execute("SELECT verdict, count(*) FROM verdicts GROUP BY verdict"))
            reports = db.execute("SELECT count(*) FROM reports").fetchone()[0]
            counters = dict(db.execute("SELECT name, value FROM counters"))
        return CacheStats(files=files, verdicts=sum(by.values()), by_verdict=by,
                          reports=reports, hits=counters.get("hits", 0),
                          scans=counters.get("scans", 0),
                          reported=counters.get("reported", 0))

    def purge(self, older_than: float | None = None, now: float | None = None) -> int:
        now = time.time() if now is None else now
        cutoff = float("inf") if older_than is None else now - older_than
        with self._lock:
            db = self._db()
            with _transaction(db):
                gone = "SELECT sha256 FROM files WHERE last_seen < ?"
                n = db.execute(f"SELECT count(*) FROM ({gone})", (cutoff,)).fetchone()[0]
                for table in ("verdicts", "file_guests", "reports"):
                    db.execute(f"DELETE FROM {table} WHERE sha256 IN ({gone})", (cutoff,))
                db.execute("DELETE FROM files WHERE last_seen < ?", (cutoff,))
                # Reports about files the host never fetched have no files row.
                db.execute("DELETE FROM reports WHERE reported_at < ?", (cutoff,))
                # Verdicts without a files row cannot exist (put() adds one), but a
                # crash mid-migration must not leave unreachable rows.
                db.execute("DELETE FROM verdicts WHERE sha256 NOT IN "
                           "(SELECT sha256 FROM files)")
        return int(n)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT/ROLLBACK: take the write lock up front so two processes
    never both read-then-upgrade and deadlock into SQLITE_BUSY."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_a: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


# --- Redis -----------------------------------------------------------------------------

# Purge one batch atomically (so a hit landing between our read and the delete keeps its
# file). KEYS[1]: the index walked (seen or reported); KEYS[2]: the key prefix; ARGV[1]:
# the cutoff; ARGV[2..]: candidate digests. Walking `seen` drops whole files; walking
# `reported` drops the reports of a file whose latest report is older than the cutoff.
_PURGE_LUA = """
local n = 0
local cutoff = tonumber(ARGV[1])
local p = KEYS[2]
for i = 2, #ARGV do
  local sha = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], sha)
  if score and tonumber(score) < cutoff then
    if KEYS[1] == p .. 'seen' then
      redis.call('DEL', p .. 'f:' .. sha, p .. 'g:' .. sha, p .. 'v:' .. sha)
      redis.call('ZREM', p .. 'seen', sha)
    end
    redis.call('DEL', p .. 'r:' .. sha)
    redis.call('ZREM', p .. 'reported', sha)
    n = n + 1
  end
end
return n
"""


class RedisCache:
    """The shared store for several hosts: one Redis, keys under a prefix.

    Layout (p = prefix): p f:<sha> hash first_seen/hits; p g:<sha> set of
    guests; p v:<sha> hash identity -> verdict JSON; p r:<sha> hash reporter/scanner ->
    report JSON; p seen zset sha -> last_seen (the file index, for stats and purge);
    p reported zset sha -> latest report time; p counters hash.
    """

    def __init__(self, url: str, *, prefix: str = "appliance:scancache:",
                 socket_timeout: float = 2.0) -> None:
        import redis

        self.url = url
        self.p = prefix
        # A bounded socket timeout: a wedged Redis must fail the lookup (counted, treated
        # as a miss by the service) rather than stall a scan worker forever.
        self.r: Any = redis.Redis.from_url(url, decode_responses=True,
                                           socket_timeout=socket_timeout,
                                           socket_connect_timeout=socket_timeout)
        self._purge = self.r.register_script(_PURGE_LUA)

    def _file(self, sha256: str, pipe: Any) -> None:
        pipe.hgetall(self.p + "f:" + sha256)
        pipe.smembers(self.p + "g:" + sha256)
        pipe.zscore(self.p + "seen", sha256)

    def _entry(self, sha256: str, identity: str, raw: str, f: dict[str, str],
               guests: set[str], last_seen: float | None) -> Entry:
        v = json.loads(raw)
        scanned = float(v["scanned_at"])
        return Entry(sha256, identity, _result(v["verdict"], v["signatures"], v["detail"]),
                     scanned, float(f.get("first_seen", scanned)),
                     scanned if last_seen is None else float(last_seen),
                     int(f.get("hits", 0)), tuple(sorted(guests)))

    def get(self, sha256: str, identity: str) -> Entry | None:
        sha256 = check_sha256(sha256)
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(self.p + "v:" + sha256, identity)
        self._file(sha256, pipe)
        raw, f, guests, seen = pipe.execute()
        return None if raw is None else self._entry(sha256, identity, raw, f, guests, seen)

    def entries(self, sha256: str) -> list[Entry]:
        sha256 = check_sha256(sha256)
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.p + "v:" + sha256)
        self._file(sha256, pipe)
        vs, f, guests, seen = pipe.execute()
        out = [self._entry(sha256, ident, raw, f, guests, seen)
               for ident, raw in vs.items()]
        return sorted(out, key=lambda e: e.scanned_at, reverse=True)

    def _touch(self, pipe: Any, sha256: str, guest: str | None, now: float,
               hits: int) -> None:
        fk = self.p + "f:" + sha256
        pipe.hsetnx(fk, "first_seen", now)
        pipe.hincrby(fk, "hits", hits)
        if guest:
            pipe.sadd(self.p + "g:" + sha256, guest)
        # last_seen is the index score; GT: with several hosts' clocks it only moves
        # forward (a hash field has no "set if greater").
        pipe.zadd(self.p + "seen", {sha256: now}, gt=True)

    def put(self, sha256: str, identity: str, result: ScanResult, guest: str | None = None,
            now: float | None = None) -> None:
        sha256 = check_sha256(sha256)
        now = time.time() if now is None else now
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.p + "v:" + sha256, identity,
                  json.dumps({**result.to_json(), "scanned_at": now}))
        self._touch(pipe, sha256, guest, now, 0)
        pipe.hincrby(self.p + "counters", "scans", 1)
        pipe.execute()

    def record_hit(self, sha256: str, guest: str | None = None,
                   now: float | None = None) -> None:
        sha256 = check_sha256(sha256)
        now = time.time() if now is None else now
        pipe = self.r.pipeline(transaction=True)
        self._touch(pipe, sha256, guest, now, 1)
        pipe.hincrby(self.p + "counters", "hits", 1)
        pipe.execute()

    def report(self, report: Report) -> None:
        sha256 = check_sha256(report.sha256)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.p + "r:" + sha256, f"{report.reporter}\0{report.scanner}",
                  json.dumps(report.to_json()))
        pipe.zadd(self.p + "reported", {sha256: report.reported_at}, gt=True)
        pipe.hincrby(self.p + "counters", "reported", 1)
        pipe.execute()

    def reports(self, sha256: str) -> list[Report]:
        sha256 = check_sha256(sha256)
        out = []
        for raw in self.r.hvals(self.p + "r:" + sha256):
            d = json.loads(raw)
            out.append(Report(sha256, d["reporter"], FileVerdict(d["verdict"]),
                              d["scanner"], d["signature"], float(d["reported_at"])))
        return sorted(out, key=lambda r: r.reported_at, reverse=True)

    def _walk(self, key: str) -> Iterable[list[str]]:
        start = 0
        while True:
            batch: list[str] = self.r.zrange(key, start, start + REDIS_BATCH - 1)
            if not batch:
                return
            yield batch
            start += len(batch)

    def stats(self) -> CacheStats:
        # O(files): walks the index in batches. Fine for an operator's command; the
        # packet path never calls it.
        by: dict[str, int] = {}
        for batch in self._walk(self.p + "seen"):
            pipe = self.r.pipeline(transaction=False)
            for sha in batch:
                pipe.hvals(self.p + "v:" + sha)
            for vals in pipe.execute():
                for raw in vals:
                    v = json.loads(raw)["verdict"]
                    by[v] = by.get(v, 0) + 1
        reports = 0
        for batch in self._walk(self.p + "reported"):
            pipe = self.r.pipeline(transaction=False)
            for sha in batch:
                pipe.hlen(self.p + "r:" + sha)
            reports += sum(pipe.execute())
        c = self.r.hgetall(self.p + "counters")
        return CacheStats(files=int(self.r.zcard(self.p + "seen")),
                          verdicts=sum(by.values()), by_verdict=by, reports=reports,
                          hits=int(c.get("hits", 0)), scans=int(c.get("scans", 0)),
                          reported=int(c.get("reported", 0)))

    def purge(self, older_than: float | None = None, now: float | None = None) -> int:
        now = time.time() if now is None else now
        # Lua's tonumber() cannot read "inf": "everything" is a date far in the future.
        cutoff = 1e300 if older_than is None else now - older_than
        n = 0
        for index in (self.p + "seen", self.p + "reported"):
            while True:
                # "(" makes the bound exclusive, as SQLite's `last_seen < cutoff`.
                batch = self.r.zrangebyscore(index, "-inf", f"({cutoff}", start=0,
                                             num=REDIS_BATCH)
                if not batch:
                    break
                removed = int(self._purge(keys=[index, self.p], args=[repr(cutoff), *batch]))
                if index == self.p + "seen":
                    n += removed
                if removed == 0:
                    break  # every candidate was touched meanwhile; nothing old is left
        return n

        return n

    def close(self) -> None:
        self.r.close()


def open_cache(where: str | Path, *, create: bool = True) -> ScanCache:
    """A store from a config value: redis:// or rediss:// or unix:// URL, else a path."""
    s = str(where)
    if s.startswith(("redis://", "rediss://", "unix://")):
        return RedisCache(s)
    return SqliteCache(s, create=create)
