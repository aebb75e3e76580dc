"""The scan cache: the same tests against SQLite and a real redis-server.

The Redis server is Debian's redis-server, started on a unix socket in a temporary
directory (no TCP port at all) and stopped after the module.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli_cache import cache as cache_cli
from appliance.cli_cache import parse_duration
from appliance.io.cache import (
    FileVerdict,
    RedisCache,
    Report,
    ScanCache,
    ScanResult,
    SqliteCache,
    open_cache,
)

ID1 = "yara:1111111111111111"
ID2 = "yara:2222222222222222"
CLEAN = ScanResult(FileVerdict.CLEAN)
BAD = ScanResult(FileVerdict.MALICIOUS, ("yara:eicar:EICAR_Test_File",))
T0 = 1_700_000_000.0


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis Python client is not installed")
    # Short path: unix socket paths are limited to 107 bytes.
    d = Path(tempfile.mkdtemp(prefix="apl-redis-"))
    sock = d / "redis.sock"
    proc = subprocess.Popen(
        [exe, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", str(d), "--daemonize", "no",
         "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"redis-server did not start: {err[-400:]}")
            time.sleep(0.02)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ScanCache]:
    c: ScanCache
    if request.param == "sqlite":
        c = SqliteCache(tmp_path / "scancache.db")
    else:
        url = request.getfixturevalue("redis_url")
        # A fresh prefix per test keeps tests independent on the shared server.
        c = RedisCache(url, prefix=f"t{time.monotonic_ns()}:")
    try:
        yield c
    finally:
        c.close()


def test_miss_then_put_then_get(store: ScanCache) -> None:
    assert store.get(sha(1), ID1) is None
    store.put(sha(1), ID1, BAD, guest="desktop", now=T0)
    e = store.get(sha(1), ID1)
    assert e is not None
    assert e.verdict is FileVerdict.MALICIOUS
    assert e.result.signatures == ("yara:eicar:EICAR_Test_File",)
    assert (e.first_seen, e.last_seen, e.hits, e.guests) == (T0, T0, 0, ("desktop",))
    assert e.identity == ID1 and e.scanned_at == T0


def test_hits_and_guests_accumulate(store: ScanCache) -> None:
    store.put(sha(1), ID1, CLEAN, guest="desktop", now=T0)
    store.record_hit(sha(1), "proxy", now=T0 + 10)
    store.record_hit(sha(1), "proxy", now=T0 + 20)
    store.record_hit(sha(1), None, now=T0 + 5)  # an older clock must not move it back
    e = store.get(sha(1), ID1)
    assert e is not None
    assert e.hits == 3
    assert e.guests == ("desktop", "proxy")
    assert (e.first_seen, e.last_seen) == (T0, T0 + 20)
    s = store.stats()
    assert (s.files, s.verdicts, s.scans, s.hits) == (1, 1, 1, 3)
    assert s.by_verdict == {"clean": 1}


def test_other_identity_is_not_trusted(store: ScanCache) -> None:
    store.put(sha(1), ID1, CLEAN, now=T0)
    # The rules changed: the old clean verdict must not answer for the new identity.
    assert store.get(sha(1), ID2) is None
    store.put(sha(1), ID2, BAD, now=T0 + 1)
    new, old = store.get(sha(1), ID2), store.get(sha(1), ID1)
    assert new is not None and new.verdict is FileVerdict.MALICIOUS
    assert old is not None and old.verdict is FileVerdict.CLEAN
    assert [e.identity for e in store.entries(sha(1))] == [ID2, ID1]  # newest first


def test_endpoint_reports_are_kept_apart(store: ScanCache) -> None:
    store.put(sha(1), ID1, BAD, now=T0)
    store.report(Report(sha(1), "desktop-agent", FileVerdict.CLEAN, "defender", None, T0 + 1))
    e = store.get(sha(1), ID1)
    assert e is not None and e.verdict is FileVerdict.MALICIOUS  # unchanged
    assert e.hits == 0
    # A report about a file the host never saw creates no host verdict either.
    store.report(Report(sha(2), "desktop-agent", FileVerdict.MALICIOUS, "clamav",
                        "Win.Test", T0 + 2))
    assert store.get(sha(2), ID1) is None and store.entries(sha(2)) == []
    # One report per (reporter, scanner): the latest replaces the previous.
    store.report(Report(sha(1), "desktop-agent", FileVerdict.UNKNOWN, "defender", None,
                        T0 + 3))
    store.report(Report(sha(1), "proxy-agent", FileVerdict.CLEAN, "defender", None, T0 + 4))
    rs = store.reports(sha(1))
    assert [(r.reporter, r.verdict) for r in rs] == [
        ("proxy-agent", FileVerdict.CLEAN), ("desktop-agent", FileVerdict.UNKNOWN)]
    assert [r.signature for r in store.reports(sha(2))] == ["Win.Test"]
    s = store.stats()
    assert (s.reports, s.reported, s.verdicts) == (3, 4, 1)


def test_purge_older_than(store: ScanCache) -> None:
    store.put(sha(1), ID1, CLEAN, guest="a", now=T0)
    store.put(sha(2), ID1, CLEAN, guest="b", now=T0)
    store.record_hit(sha(2), "c", now=T0 + 100)  # seen recently: survives
    store.report(Report(sha(1), "agent", FileVerdict.CLEAN, "x", None, T0))
    store.report(Report(sha(3), "agent", FileVerdict.CLEAN, "x", None, T0))
    assert store.purge(older_than=50, now=T0 + 120) == 1
    assert store.get(sha(1), ID1) is None and store.reports(sha(1)) == []
    assert store.reports(sha(3)) == []  # an old report-only file goes too
    kept = store.get(sha(2), ID1)
    assert kept is not None and kept.guests == ("b", "c")
    assert store.purge() == 1
    s = store.stats()
    assert (s.files, s.verdicts, s.reports) == (0, 0, 0)


def test_bad_digest_refused(store: ScanCache) -> None:
    with pytest.raises(ValueError):
        store.get("../../etc/passwd", ID1)
    with pytest.raises(ValueError):
        store.put("ab" * 31, ID1, CLEAN)
    # Uppercase hex is the same file.
    store.put(sha(1).upper(), ID1, CLEAN, now=T0)
    assert store.get(sha(1), ID1) is not None


def test_concurrent_hits_are_all_counted(store: ScanCache) -> None:
    store.put(sha(1), ID1, CLEAN, now=T0)

    def hammer(g: str) -> None:
        for _ in range(50):
            store.record_hit(sha(1), g)

    threads = [threading.Thread(target=hammer, args=(f"g{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    e = store.get(sha(1), ID1)
    assert e is not None and e.hits == 200 and len(e.guests) == 4


def test_sqlite_shared_by_two_handles(tmp_path: Path) -> None:
    # The daemon's workers and the CLI open the same file independently.
    a, b = SqliteCache(tmp_path / "c.db"), SqliteCache(tmp_path / "c.db")
    a.put(sha(1), ID1, BAD, now=T0)
    b.record_hit(sha(1), "proxy", now=T0 + 1)
    e = a.get(sha(1), ID1)
    assert e is not None and e.hits == 1 and e.guests == ("proxy",)
    a.close()
    b.close()


def test_open_cache_picks_backend(tmp_path: Path, redis_url: str) -> None:
    assert isinstance(open_cache(tmp_path / "x.db"), SqliteCache)
    r = open_cache(redis_url)
    assert isinstance(r, RedisCache)
    r.close()
    with pytest.raises(FileNotFoundError):
        open_cache(tmp_path / "missing.db", create=False)


# --- the CLI ----------------------------------------------------------------------------


def test_duration_parsing() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("30d") == 30 * 86400
    with pytest.raises(Exception, match="expected a number"):
        parse_duration("soon")


def test_cli_stats_lookup_purge(tmp_path: Path) -> None:
    db = tmp_path / "scancache.db"
    c = SqliteCache(db)
    now = time.time()
    c.put(sha(1), ID1, BAD, guest="desktop", now=now - 40 * 86400)
    c.put(sha(2), ID1, CLEAN, guest="proxy", now=now)
    c.record_hit(sha(2), "desktop", now=now)
    c.report(Report(sha(2), "desktop-agent", FileVerdict.CLEAN, "defender", None, now))
    c.close()
    run = CliRunner().invoke

    r = run(cache_cli, ["--db", str(db), "stats", "--json"])
    assert r.exit_code == 0, r.output
    assert '"files": 2' in r.output and '"hits": 1' in r.output and '"scans": 2' in r.output

    r = run(cache_cli, ["--db", str(db), "lookup", sha(1)])
    assert r.exit_code == 0, r.output
    assert "host malicious (yara:eicar:EICAR_Test_File)" in r.output
    assert "guests: desktop" in r.output

    r = run(cache_cli, ["--db", str(db), "lookup", sha(2)])
    assert "endpoint desktop-agent: clean by defender" in r.output
    assert "guests: desktop, proxy" in r.output

    r = run(cache_cli, ["--db", str(db), "lookup", sha(9)])
    assert r.exit_code == 1 and "not in the cache" in r.output
    r = run(cache_cli, ["--db", str(db), "lookup", "nothex"])
    assert r.exit_code == 2

    r = run(cache_cli, ["--db", str(db), "purge", "--older-than", "30d"])
    assert r.exit_code == 0 and "purged 1 files" in r.output
    r = run(cache_cli, ["--db", str(db), "purge"], input="n\n")
    assert r.exit_code == 1  # declined: nothing purged
    r = run(cache_cli, ["--db", str(db), "purge", "--yes"])
    assert "purged 1 files" in r.output

    r = run(cache_cli, ["--db", str(tmp_path / "none.db"), "stats"])
    assert r.exit_code == 2 and "no scan cache" in r.output
    assert not (tmp_path / "none.db").exists()


def test_cli_against_redis(redis_url: str) -> None:
    c = RedisCache(redis_url)  # the CLI uses the default prefix
    c.purge()
    c.put(sha(1), ID1, BAD, guest="desktop")
    c.close()
    r = CliRunner().invoke(cache_cli, ["--db", redis_url, "lookup", sha(1)])
    assert r.exit_code == 0, r.output
    assert "host malicious" in r.output
    r = CliRunner().invoke(cache_cli, ["--db", redis_url, "purge", "-y"])
    assert "purged 1 files" in r.output
