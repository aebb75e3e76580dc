"""Soak: mixed traffic through the appliance on the lab for a while, then what changed.

    .venv/bin/python bench/soak.py [--minutes 10] [--rules PATH]...

Two guests loop until the time is up: the desktop fetches pages and inspected text
downloads, asks DNS, pings, and every fourth round sends a command-injection probe (a
reject rule: answered with a reset) and a request with clear-text basic auth (an
alert-only rule); the proxy fetches bypassed bulk downloads and the lab's shared file
(scanned once, then a scan-cache hit) and asks DNS for AAAA records. No guest roles,
so the probes are blocked by their rules and never quarantine anybody.

Prints: the duration and rounds; legitimate requests that worked or failed, by kind;
probes blocked; the workers' verdicts by kind and packets; the kernel queue's drops;
RSS of the supervisor and each worker at the start (after a warm-up round) and at the
end, and the drift; worker restarts. Needs root; traffic stays inside the lab. The
machine may be shared: figures are indicative.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.lab import Lab, LabError

sys.path.append(str(Path(__file__).parent))
from flood import children, nfqueue_drops, rss_mib, status, wait_status

REPO = Path(__file__).resolve().parents[1]
URL = "http://203.0.113.10"


def run(lab: Lab, guest: str, *argv: str, timeout: float) -> tuple[int, str]:
    """(exit code, stdout); -1 when the command itself did not finish in time (a
    loaded machine), which counts as a failure, not as the end of the soak."""
    try:
        cp = lab.run_in(guest, *argv, timeout=timeout)
    except LabError:
        return -1, ""
    return cp.returncode, cp.stdout


def curl(lab: Lab, guest: str, path: str, *extra: str, timeout: float = 10) -> str:
    """'200' etc., or 'rcN' when curl failed with exit code N."""
    rc, out = run(lab, guest, "curl", "-s", "-g", "--path-as-is", "-m", str(timeout), "-o",
                  "/dev/null", "-w", "%{http_code}", *extra, f"{URL}{path}",
                  timeout=timeout + 5)
    return out if rc == 0 else f"rc{rc}"


def dig(lab: Lab, guest: str, qtype: str) -> bool:
    rc, out = run(lab, guest, "dig", "+short", "+time=2", "+tries=1", "@203.0.113.10",
                  "soak.example.test", qtype, timeout=10)
    return rc == 0 and bool(out.strip())


def ping(lab: Lab, guest: str) -> bool:
    return run(lab, guest, "ping", "-c", "2", "-i", "0.2", "-W", "2", "-q", "203.0.113.10",
               timeout=10)[0] == 0


class Tally:
    """Outcomes by kind, and the first failures in detail (when, what, what came back)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.t0 = time.monotonic()

    def add(self, kind: str, ok: bool, what: str, got: object, good: str = "ok",
            bad: str = "FAILED") -> None:
        self.counts[f"{kind} {good if ok else bad}"] += 1
        if not ok and len(self.failures) < 50:
            self.failures.append(f"{time.monotonic() - self.t0:.0f} s {what}: {got}")


def desktop_round(lab: Lab, n: int, t: Tally) -> None:
    for path in ("/", "/text/200000"):
        got = curl(lab, "desktop", path)
        t.add("http", got == "200", f"desktop GET {path}", got)
    t.add("dns", dig(lab, "desktop", "A"), "desktop DNS A", "no answer")
    t.add("ping", ping(lab, "desktop"), "desktop ping", "lost")
    if n % 4 == 0:
        # The reject rule answers with a reset: curl 52/56, never a page.
        got = curl(lab, "desktop", "/x;/bin/sh", timeout=4)
        t.add("probe", got in ("rc52", "rc56"), "desktop probe", got, good="blocked",
              bad="PASSED")
        got = curl(lab, "desktop", "/admin", "-u", "soak:secret")
        t.add("alerting", got == "200", "desktop GET /admin with basic auth", got)


def proxy_round(lab: Lab, n: int, t: Tally) -> None:
    for path in ("/bulk/5000000", "/files/shared.txt"):
        got = curl(lab, "proxy", path)
        t.add("http", got == "200", f"proxy GET {path}", got)
    t.add("dns", dig(lab, "proxy", "AAAA"), "proxy DNS AAAA", "no answer")


def drive(lab: Lab, seconds: float, every: float = 0.0,
          sample: Callable[[], None] | None = None) -> tuple[Tally, int]:
    """Both guests' loops in threads until `seconds` have passed (each command has its
    own timeout, so a round always ends); `sample()` is called every `every` s meanwhile."""
    tally = Tally()
    rounds = Counter[str]()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop(name: str, one: Callable[[Lab, int, Tally], None]) -> None:
        n = 0
        while time.monotonic() < deadline:
            t = Tally()
            t.t0 = tally.t0
            one(lab, n, t)
            n += 1
            with lock:
                tally.counts.update(t.counts)
                tally.failures += t.failures[:50 - len(tally.failures)]
                rounds[name] += 1

    threads = [threading.Thread(target=loop, args=a) for a in
               (("desktop", desktop_round), ("proxy", proxy_round))]
    for t in threads:
        t.start()
    while sample is not None and every > 0 and time.monotonic() + every < deadline:
        time.sleep(every)
        sample()
    for t in threads:
        t.join(timeout=seconds + 120)
    return tally, sum(rounds.values())


def memory(pid: int) -> dict[str, float]:
    """RSS (MiB) of the supervisor and of each child by pid."""
    out = {"supervisor": rss_mib(pid)}
    for k in children(pid):
        out[f"child {k}"] = rss_mib(k)
    return out


def run_soak(lab: Lab, start: Callable[..., Any], tmp: Path, seconds: float) -> dict[str, Any]:
    pol = tmp / "soak-policy.yaml"
    pol.write_text("guests: []\n")
    app = start("--policy", str(pol), "--stats-interval", "5")
    wait_status(lab)
    drive(lab, 0.1)  # one warm-up round: modules loaded, scan cache filled
    time.sleep(1.2)  # a worker report after it
    st0 = status(lab) or {}
    drops0 = nfqueue_drops(lab)
    rss0 = memory(app.proc.pid)
    t0 = time.monotonic()
    timeline: list[tuple[float, float]] = []  # (seconds, the workers' RSS summed)

    def sample() -> None:
        m = memory(app.proc.pid)
        timeline.append((time.monotonic() - t0,
                         sum(v for k, v in m.items() if k != "supervisor")))

    tally, rounds = drive(lab, seconds, max(seconds / 10, 1.0), sample)
    elapsed = time.monotonic() - t0
    time.sleep(1.2)
    st1 = status(lab) or {}
    rss1 = memory(app.proc.pid)
    v0, v1 = st0["traffic"]["verdicts"], st1["traffic"]["verdicts"]
    return {
        "seconds": elapsed,
        "rounds": rounds,
        "outcomes": dict(tally.counts),
        "failures": tally.failures,
        "verdicts": {k: v1.get(k, 0) - v0.get(k, 0) for k in sorted(set(v0) | set(v1))},
        "packets": st1["traffic"]["packets"] - st0["traffic"]["packets"],
        "alerts": st1["traffic"]["alerts"] - st0["traffic"]["alerts"],
        "queue_drops": nfqueue_drops(lab) - drops0,
        "rss_start_mib": rss0,
        "rss_end_mib": rss1,
        "workers_rss_timeline": timeline,
        "worker_restarts": st1.get("worker_restarts", 0),
        "errors": st1["traffic"]["errors"] - st0["traffic"]["errors"],
    }


def report(fig: dict[str, Any]) -> str:
    lines = [f"soak: {fig['seconds']:.0f} s, {fig['rounds']} rounds of mixed traffic",
             "  outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(fig["outcomes"].items())),
             "  verdicts: " + ", ".join(f"{k} {v:,}" for k, v in fig["verdicts"].items())
             + f"; packets {fig['packets']:,}; alerts {fig['alerts']}; worker errors "
             f"{fig['errors']}",
             f"  kernel queue drops: {fig['queue_drops']}; worker restarts: "
             f"{fig['worker_restarts']}"]
    lines += [f"  failed: {f}" for f in fig["failures"]]
    for name, start in fig["rss_start_mib"].items():
        end = fig["rss_end_mib"].get(name)
        if end is None:
            lines.append(f"  RSS {name}: {start:.1f} MiB at the start, gone at the end")
        else:
            lines.append(f"  RSS {name}: {start:.1f} -> {end:.1f} MiB "
                         f"(drift {end - start:+.1f} MiB)")
    if fig["workers_rss_timeline"]:
        lines.append("  workers' RSS over time: " + ", ".join(
            f"{t:.0f} s {m:.0f} MiB" for t, m in fig["workers_rss_timeline"]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rules", action="append", default=None)
    ap.add_argument("--json", action="store_true", help="Print the figures as JSON too.")
    a = ap.parse_args()
    from labrun import lab_with_appliances

    rules = a.rules or [str(REPO / "rules")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    with lab_with_appliances("bsk-", rules, tmp / "eve.json") as (lab, start):
        fig = run_soak(lab, start, tmp, a.minutes * 60)
        print(f"rules: {', '.join(rules)}; machine shared, figures indicative")
        print(report(fig))
        if a.json:
            print(json.dumps(fig))


if __name__ == "__main__":
    main()
