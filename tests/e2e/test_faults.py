"""Faults of the inline workers on the lab, in fail-open and fail-closed mode.

Three faults, one after the other on one running appliance (one lab per mode keeps the
suite short): a worker SIGKILLed, a worker hung (SIGSTOP: its queue stays bound and
nothing is answered), and a full queue (a hung worker and a burst of 6,000 datagrams,
more than the queue's 4,096). Numbered UDP probes from the desktop to the internet
server, stamped at sending and at arrival, show what passed while the worker was gone
and when traffic came back; the watchdog's detection time is the timestamp of its EVE
`engine` record. After the faults the iptables/ip6tables rules and an operator's
quarantine set before them are all still there.

What the kernel does (and the tests assert):
- worker dead, fail-open: `--queue-bypass` accepts while nothing is bound to the queue;
  fail-closed: dropped until the restarted worker binds it.
- worker hung: its queue is still bound, so nothing passes in either mode until the
  watchdog kills it; the packets waiting in the queue are dropped by the kernel when
  the dead worker's socket goes (the senders retransmit what matters).
- queue full: fail-open sets NFQA_CFG_F_FAIL_OPEN on the queue (appliance/io/nfqueue.py),
  so the overflow is accepted; fail-closed drops it (the kernel's queue_dropped count).
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.io.nfqueue import MAX_QUEUE_LEN
from appliance.lab import Lab
from tests.e2e.conftest import (
    UdpProbe,
    control,
    eve_records,
    kill_paused,
    nfqueue_counters,
    ruleset,
)

WATCHDOG = 1.5  # seconds without a heartbeat before the watchdog kills a worker
INTERVAL = 0.005  # probe spacing
BURST = 6000  # datagrams sent at once into a stalled queue (> MAX_QUEUE_LEN)
MARGIN = 0.03  # probes sent this close to a fault's edges are not judged


def _ts(record: dict[str, Any]) -> float:
    return datetime.strptime(record["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def _next_event(app: Any, seen: int, timeout: float = 6.0) -> dict[str, Any]:
    """The watchdog's EVE engine record number `seen` (waits for it, bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = eve_records(app.eve, "engine")
        if len(events) > seen:
            return events[seen]
        time.sleep(0.05)
    raise AssertionError(f"no watchdog event in {timeout} s: {app.log.read_text()}")


def _worker(app: Any) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        kids = app.workers()
        if len(kids) == 1:
            return int(kids[0])
        time.sleep(0.05)
    raise AssertionError(f"expected one worker, have {app.workers()}")


def _sent_between(got: list[tuple[int, float, float]], seqs: range, t0: float,
                  t1: float) -> list[tuple[int, float, float]]:
    return [g for g in got if g[0] in seqs and t0 + MARGIN < g[1] < t1 - MARGIN]


def _flowing_after(got: list[tuple[int, float, float]], seqs: range, t: float) -> bool:
    """Every probe of `seqs` sent after `t` arrived (to the last; 5% slack for the
    machine's own hiccups)."""
    late = sorted(g[0] for g in got if g[0] in seqs and g[1] > t)
    return bool(late) and late[-1] == seqs.stop - 1 and len(late) >= 0.95 * (
        late[-1] - late[0] + 1)


def _resumed_after(got: list[tuple[int, float, float]], seqs: range, detected: float) -> float:
    """Seconds from detection to the first probe of `seqs` sent after it that arrived."""
    after = [g[2] for g in got if g[0] in seqs and g[1] >= detected]
    assert after, "no probe arrived after the watchdog's detection"
    return min(after) - detected


@pytest.mark.parametrize("mode", ["fail-open", "fail-closed"])
def test_worker_faults(lab: Lab, start_appliance: Any, tmp_path: Path, mode: str,
                       eve_validator: Any) -> None:
    fail_open = mode == "fail-open"
    app = start_appliance(f"--{mode}", "--watchdog", str(WATCHDOG), "--stats-interval", "0",
                          "--no-scan")
    # Action state that must survive: the proxy quarantined by the operator.
    control(lab, "quarantine.add", target="proxy", duration=600, reason="fault test")
    rules_before = ruleset(lab)
    assert any("APL-" in r and "NFQUEUE" in r for r in rules_before)
    probe = UdpProbe(lab, tmp_path, seconds=40)
    try:
        # -- 1. SIGKILL. The supervisor is paused for 0.5 s around the kill so the
        # worker stays gone long enough to see what the kernel does meanwhile.
        k_seqs = range(0, 600)
        sender = probe.send(k_seqs.start, len(k_seqs), INTERVAL)
        time.sleep(0.5)
        worker = _worker(app)
        t_kill = kill_paused(app.proc.pid, worker)
        ev_kill = _next_event(app, 0)
        sender.wait(timeout=20)

        # -- 2. Hang: SIGSTOP; the watchdog kills it after WATCHDOG s of silence.
        h_seqs = range(100_000, 100_700)
        sender = probe.send(h_seqs.start, len(h_seqs), INTERVAL)
        time.sleep(0.3)
        worker = _worker(app)
        t_hang = time.time()
        os.kill(worker, signal.SIGSTOP)
        ev_hang = _next_event(app, 1)
        sender.wait(timeout=20)

        # -- 3. Full queue: a hung worker and a burst bigger than its queue, with the
        # steady probes going on.
        a_seqs = range(300_000, 300_700)
        sender = probe.send(a_seqs.start, len(a_seqs), INTERVAL)
        time.sleep(0.3)
        worker = _worker(app)
        t_full = time.time()
        os.kill(worker, signal.SIGSTOP)
        f_seqs = range(200_000, 200_000 + BURST)
        probe.send(f_seqs.start, len(f_seqs), 0).wait(timeout=20)
        queue = nfqueue_counters(lab)[0]  # while the worker is still stopped
        t_counted = time.time()
        ev_full = _next_event(app, 2)
        sender.wait(timeout=20)
        status = control(lab, "status")
        got = probe.received()
    finally:
        probe.close()

    detected = [_ts(e) for e in (ev_kill, ev_hang, ev_full)]
    resumed = [_resumed_after(got, seqs, t) for seqs, t in
               ((k_seqs, detected[0]), (h_seqs, detected[1]), (a_seqs, detected[2]))]
    print(f"{mode}: detection after the fault: kill {detected[0] - t_kill:.3f} s "
          f"(supervisor paused 0.5 s), hang {detected[1] - t_hang:.3f} s, full queue "
          f"{detected[2] - t_full:.3f} s; first probe through after detection: "
          + ", ".join(f"{r:.3f} s" for r in resumed) + f"; queue while stopped: {queue}")

    # 1. SIGKILL: open -> the probes pass while no worker is bound; closed -> none.
    gone = _sent_between(got, k_seqs, t_kill, detected[0])
    expected = (detected[0] - t_kill - 2 * MARGIN) / INTERVAL
    assert expected > 50  # the window is long enough to judge
    if fail_open:
        assert len(gone) > 0.8 * expected, (len(gone), expected)
    else:
        assert gone == []
    assert "exited (-9)" in ev_kill["engine"]["message"]
    assert _resumed_after(got, k_seqs, detected[0]) <= 1.0
    assert _flowing_after(got, k_seqs, detected[0] + 1.0)

    # 2. Hang: nothing passes in either mode until the watchdog acts, then it resumes.
    assert detected[1] - t_hang >= WATCHDOG
    assert _sent_between(got, h_seqs, t_hang, detected[1]) == []
    assert "stopped answering" in ev_hang["engine"]["message"]
    assert _resumed_after(got, h_seqs, detected[1]) <= 1.0
    assert _flowing_after(got, h_seqs, detected[1] + 1.0)

    # 3. Full queue, judged while the worker was still stopped.
    assert t_counted < detected[2], "the burst took longer than the watchdog period"
    burst = [g for g in got if g[0] in f_seqs]
    overflow = BURST - queue["waiting"]
    assert queue["waiting"] <= MAX_QUEUE_LEN
    assert overflow > 1000  # the queue (or the worker's socket buffer) was full
    if fail_open:
        # The overflow was accepted (NFQA_CFG_F_FAIL_OPEN), the waiting ones dropped
        # when the worker was killed.
        assert queue["dropped"] + queue["user_dropped"] == 0, queue
        assert len(burst) >= 0.95 * overflow, (len(burst), overflow)
        assert all(g[2] < detected[2] for g in burst)
    else:
        assert queue["dropped"] + queue["user_dropped"] >= 0.95 * overflow, queue
        assert burst == []
    assert "stopped answering" in ev_full["engine"]["message"]
    if not fail_open:
        assert _sent_between(got, a_seqs, t_full, detected[2]) == []
    assert _resumed_after(got, a_seqs, detected[2]) <= 1.0
    assert _flowing_after(got, a_seqs, detected[2] + 1.0)

    # The watchdog's accounting: the status, the log, the EVE records (schema-valid).
    assert (status["worker_restarts"], status["watchdog_kills"]) == (3, 2)
    assert status["workers"]["0"]["alive"]
    log = app.log.read_text()
    assert log.count("appliance: worker 0 ") == 3, log
    assert "(3 restart(s), 2 watchdog kill(s))" in ev_full["engine"]["message"]
    for rec in (ev_kill, ev_hang, ev_full, *eve_records(app.eve, "stats")):
        assert not list(eve_validator.iter_errors(rec)), rec
    stats = [r for r in eve_records(app.eve, "stats") if "ips" in r["stats"]]
    assert len(stats) >= 3  # one after each watchdog event
    assert stats[-1]["stats"]["ips"]["accepted"] > 0

    # Nothing of the kernel state was lost: rules, chains and the quarantine.
    assert ruleset(lab) == rules_before
    quarantined = control(lab, "quarantine.list")
    assert [q["target"] for q in quarantined] == ["proxy"], quarantined
    still = lab.run_in("proxy", "ping", "-c", "1", "-W", "1", "203.0.113.10", timeout=5)
    assert still.returncode != 0  # the quarantine is still enforced
