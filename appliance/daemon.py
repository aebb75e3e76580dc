"""`appliance run`: the supervisor of the inline workers.

It checks br_netfilter and its sysctls, loads config and rules once, installs the
iptables chains, and forks one worker per queue (the kernel's --queue-balance hashes
both directions of an address pair to the same queue, so each worker owns its flows).
Forked workers share the loaded ruleset copy-on-write, so a restart takes milliseconds.

A watchdog restarts a worker that died, and kills and restarts one whose heartbeat
stops (a stuck worker would stall everything queued to it, fail-open or not). The
chains are removed on exit and on SIGTERM; a crashed run's chains are replaced at start.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from appliance.config import Config
from appliance.core.commands import ActionRequest
from appliance.core.detect.signatures import SignatureEngine
from appliance.core.engine import Engine
from appliance.core.policy import Policy
from appliance.errors import ApplianceError
from appliance.io.eve import EveWriter
from appliance.io.netfilter import Chains, bridge_sysctls
from appliance.io.nfqueue import QueueWorker

# A worker whose heartbeat is older than this is considered hung and killed. Its loop
# beats every IDLE_WAKE (0.25 s) and after every batch of packets; 2 s leaves room for a
# slow rule on a big packet without leaving traffic stalled for long.
WATCHDOG_SECONDS = 2.0
# Supervisor poll period.
POLL = 0.1


@dataclass
class RunOptions:
    bridge: str
    queues: int = 1
    fail_open: bool = False
    eve: str | None = None
    watchdog: float = WATCHDOG_SECONDS


@dataclass
class Detection:
    detector: SignatureEngine | None
    policy: Policy | None = None
    role_detectors: Mapping[str, SignatureEngine] | None = None


def _worker_main(queue_num: int, config: Config, det: Detection, opts: RunOptions,
                 beat: Synchronized[float], actions: Any) -> None:
    # New session so a Ctrl-C in the terminal reaches the supervisor, which stops us.
    os.setsid()
    eve = EveWriter(opts.eve, append=True) if opts.eve else None
    engine = Engine(config.engine, det.detector, det.policy, det.role_detectors)

    def heartbeat() -> None:
        beat.value = time.monotonic()

    def on_action(req: ActionRequest) -> None:
        actions.put(req)  # to the supervisor, which owns the action backend

    QueueWorker(queue_num, engine, eve, opts.fail_open, heartbeat,
                on_action=on_action).run()


class Supervisor:
    def __init__(self, config: Config, detector: SignatureEngine | None, opts: RunOptions,
                 log: Callable[[str], None] = print, policy: Policy | None = None,
                 role_detectors: Mapping[str, SignatureEngine] | None = None,
                 on_action: Callable[[ActionRequest], None] | None = None) -> None:
        self.config = config
        self.detection = Detection(detector, policy, role_detectors)
        self.on_action = on_action
        self.opts = opts
        self.log = log
        self.chains = Chains(opts.bridge, opts.queues, opts.fail_open)
        self.ctx = mp.get_context("fork")
        self.action_q: Any = self.ctx.SimpleQueue()
        self.action_requests = 0
        self.workers: dict[int, Any] = {}
        self.beats: dict[int, Synchronized[float]] = {}
        self.restarts = 0
        self.watchdog_kills = 0
        self._stop = False

    def check(self) -> None:
        if os.geteuid() != 0:
            raise ApplianceError("appliance run needs root (or CAP_NET_ADMIN): it installs "
                                 "iptables chains and binds NFQUEUE")
        if not Path(f"/sys/class/net/{self.opts.bridge}/bridge").exists():
            raise ApplianceError(f"{self.opts.bridge}: no such bridge in this network "
                                 "namespace")
        bridge_sysctls(set_them=True)

    def _start(self, q: int) -> None:
        beat = self.beats.get(q)
        if beat is None:
            beat = self.beats[q] = self.ctx.Value("d", time.monotonic(), lock=False)
        beat.value = time.monotonic()
        p = self.ctx.Process(target=_worker_main, name=f"appliance-q{q}",
                             args=(q, self.config, self.detection, self.opts, beat,
                                   self.action_q),
                             daemon=False)
        p.start()
        self.workers[q] = p

    def stop(self, *_a: object) -> None:
        self._stop = True

    def run(self, until: Callable[[], bool] | None = None) -> int:
        self.check()
        self.chains.install()
        old_term = signal.signal(signal.SIGTERM, self.stop)
        old_int = signal.signal(signal.SIGINT, self.stop)
        try:
            for q in range(self.opts.queues):
                self._start(q)
            self.log(f"inline on {self.opts.bridge}: {self.opts.queues} worker(s), "
                     f"{'fail-open' if self.opts.fail_open else 'fail-closed'}")
            while not self._stop and (until is None or not until()):
                time.sleep(POLL)
                self._watch()
                self._drain_actions()
        finally:
            for p in self.workers.values():
                if p.is_alive():
                    p.terminate()
            for p in self.workers.values():
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
                    p.join(timeout=2)
            self.chains.remove()
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)
            self.log(f"stopped; chains removed; {self.restarts} worker restart(s)")
        return 0

    def _drain_actions(self) -> None:
        while not self.action_q.empty():
            req = self.action_q.get()
            self.action_requests += 1
            if self.on_action is not None:
                self.on_action(req)
            else:
                self.log(f"action requested: {req.kind} {req.target} ({req.reason}); "
                         "no action backend configured")

    def _watch(self) -> None:
        now = time.monotonic()
        for q, p in list(self.workers.items()):
            if not p.is_alive():
                p.join(timeout=0)
                self.log(f"worker {q} exited ({p.exitcode}); restarting")
                self.restarts += 1
                self._start(q)
            elif now - self.beats[q].value > self.opts.watchdog:
                self.log(f"worker {q} stopped answering for {now - self.beats[q].value:.1f} s;"
                         " killing and restarting it")
                self.watchdog_kills += 1
                p.kill()
                p.join(timeout=2)
                self.restarts += 1
                self._start(q)
