"""What the shared scan cache costs and what it saves.

Run: .venv/bin/python bench/scan_cache.py [--files 10] [--guests 100] [--size 1048576]

1. Lookups per second for each backend (SQLite file; Redis on a unix socket, started
   here from Debian's redis-server and stopped after): `get` of stored verdicts in random
   order, and `record_hit` (the write every cache-answered fetch makes).
2. 100 guests fetching the same 10 files, measured in this run both ways:
   - without the cache: every fetch is scanned (1,000 scans through the ScanPool);
   - with it: FileVerdictService scans each file once, the other 990 fetches are hits.
   The rules are the bundled rules/yara plus a synthetic set (--synthetic rules with
   random 8-byte hex strings and a few regexes) so a scan costs what a modest real
   ruleset costs; the files are random bytes (no match: the full scan runs).
Prints figures; asserts nothing (DESIGN.md: benchmarks print).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.io.cache import FileVerdict, RedisCache, ScanCache, ScanResult, SqliteCache
from appliance.io.scanners import FileVerdictService, ScanPool, YaraScanner

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def redis_server(workdir: Path) -> Iterator[str | None]:
    """A throwaway redis-server on a unix socket; None when it is not installed."""
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    sock = workdir / "redis.sock"
    proc = subprocess.Popen([exe, "--port", "0", "--unixsocket", str(sock),
                             "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir), "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        yield f"unix://{sock}" if sock.exists() else None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def rate(n: int, fn: Callable[[int], object]) -> float:
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t)


def bench_lookups(name: str, cache: ScanCache, entries: int, lookups: int) -> None:
    ident = "yara:bench"
    shas = [hashlib.sha256(i.to_bytes(8, "big")).hexdigest() for i in range(entries)]
    result = ScanResult(FileVerdict.CLEAN)
    put_rate = rate(entries, lambda i: cache.put(shas[i], ident, result, guest="g"))
    rnd = random.Random(1)
    order = [shas[rnd.randrange(entries)] for _ in range(lookups)]
    get_rate = rate(lookups, lambda i: cache.get(order[i], ident))
    miss_rate = rate(lookups, lambda i: cache.get(order[i], "yara:other"))
    hit_rate = rate(lookups, lambda i: cache.record_hit(order[i], f"guest{i % 100}"))
    print(f"  {name:<7} get (hit) {get_rate:>9,.0f}/s   get (stale identity) "
          f"{miss_rate:>9,.0f}/s   record_hit {hit_rate:>8,.0f}/s   put {put_rate:>8,.0f}/s")


def synthetic_rules(d: Path, count: int) -> None:
    rnd = random.Random(7)
    lines = []
    for i in range(count):
        hexs = " ".join(f"{rnd.randrange(256):02X}" for _ in range(8))
        if i % 50 == 0:  # a few regexes, as real rulesets have
            lines.append(f'rule syn{i} {{ strings: $r = /bench{i}[a-z]{{4,8}}\\.exe/ '
                         "condition: $r }")
        else:
            lines.append(f"rule syn{i} {{ strings: $a = {{ {hexs} }} condition: $a }}")
    (d / "synthetic.yar").write_text("\n".join(lines) + "\n")


def fetch_all(files: list[bytes], guests: int,
              fetch: Callable[[str, bytes, str], ScanResult]) -> tuple[float, int]:
    shas = [hashlib.sha256(f).hexdigest() for f in files]
    t = time.perf_counter()
    bad = 0
    for g in range(guests):
        for sha, data in zip(shas, files, strict=True):
            bad += fetch(sha, data, f"guest{g}").verdict is not FileVerdict.CLEAN
    return time.perf_counter() - t, bad


def bench_savings(caches: list[tuple[str, ScanCache]], rules: Path, files: list[bytes],
                  guests: int) -> None:
    scanner = YaraScanner(rules)
    pool = ScanPool(scanner, workers=2, max_size=max(len(f) for f in files))
    fetches = guests * len(files)
    try:
        # One warm-up scan so compile/first-touch costs do not land on either side.
        pool.submit(files[0]).result()
        no_cache, bad = fetch_all(files, guests,
                                  lambda s, d, g: pool.submit(d, s).result())
        print(f"  no cache       {fetches} fetches, {fetches} scans: {no_cache:8.3f} s "
              f"({no_cache / fetches * 1e3:.2f} ms per fetch){' !' if bad else ''}")
        for name, cache in caches:
            svc = FileVerdictService(cache, pool)
            before = pool.stats.scans
            t = time.perf_counter()
            answered, bad = fetch_all(
                files, guests, lambda s, d, g, svc=svc: svc.submit(s, d, g).result().result)
            svc.flush()  # the hits' bookkeeping writes count too
            with_cache = time.perf_counter() - t
            scans = pool.stats.scans - before
            print(f"  {name:<7} cache  {fetches} fetches, {scans} scans: {with_cache:8.3f} s "
                  f"(answers {answered / fetches * 1e3:.3f} ms per fetch, bookkeeping "
                  f"included {with_cache / fetches * 1e3:.3f}); saved "
                  f"{no_cache - with_cache:.3f} s, {no_cache / with_cache:.0f}x faster"
                  f"{' !' if bad else ''}")
    finally:
        pool.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=10_000, help="verdicts stored")
    ap.add_argument("--lookups", type=int, default=20_000)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--guests", type=int, default=100)
    ap.add_argument("--size", type=int, default=1 << 20, help="bytes per file")
    ap.add_argument("--synthetic", type=int, default=1000, help="synthetic YARA rules")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="apl-bench-") as tmp:
        work = Path(tmp)
        with redis_server(work) as url:
            print(f"cache lookups ({a.entries:,} verdicts stored, {a.lookups:,} operations "
                  "each, one thread)")
            stores: list[tuple[str, Callable[[str], ScanCache]]] = [
                ("sqlite", lambda tag: SqliteCache(work / f"{tag}.db"))]
            if url is None:
                print("  redis   skipped: redis-server is not installed")
            else:
                stores.append(("redis", lambda tag: RedisCache(url, prefix=f"{tag}:")))
            for name, make in stores:
                c = make("lookups")
                bench_lookups(name, c, a.entries, a.lookups)
                c.close()

            rules = work / "yara"
            rules.mkdir()
            shutil.copy(REPO / "rules" / "yara" / "eicar.yar", rules)
            synthetic_rules(rules, a.synthetic)
            rnd = random.Random(3)
            files = [rnd.randbytes(a.size) for _ in range(a.files)]
            print(f"\n{a.guests} guests fetch the same {a.files} files of "
                  f"{a.size / 1048576:.1f} MiB (YARA: {a.synthetic} synthetic rules + "
                  "eicar.yar, 2 scan threads)")
            caches = [(name, make("savings")) for name, make in stores]
            bench_savings(caches, rules, files, a.guests)
            for _, c in caches:
                c.close()


if __name__ == "__main__":
    main()
