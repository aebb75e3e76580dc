"""Hot reload: compile a new ruleset off the packet path, then swap it between two packets.

The daemon's workers are forked processes, and each owns its flows (the kernel's
--queue-balance sends both directions of a connection to the same queue). Two ways to
give them new rules:

(a) tell each worker, over a pipe, to load the new rules itself and swap them in; its
    flows stay in the process, so flowbits, flowints and the app-layer state survive;
(b) fork fresh workers from the supervisor's new state: simple, but every flow is lost
    (mid-connection packets then meet a worker that never saw the handshake).

This module implements (a):

1. the supervisor (``SupervisorReloader.handle``, the ``rules.reload`` control command,
   run in the control server's thread, so in the background of the supervisor's loop)
   loads and checks the new ruleset with ``prepare_reload``: a ruleset that does not load
   or fails the update check is refused and the workers are never told. The load fills
   the rule and prefilter caches, so what follows is a warm load;
2. each worker (``WorkerReloader``) gets a message, loads the same files in a thread of
   its own (warm: the cached rule infos and hyperscan databases) while its loop keeps
   deciding packets with the old rules, and when the load is done its loop calls
   ``swap_detector`` between two packets. No packet waits for a compile, and no packet is
   without a verdict: the swap is two attribute assignments in the packet thread.

What survives a swap (``swap_detector``): the flows and everything on them (flowbits and
flowints by name: a flowbit set under the old rules is seen by the new rules that test
it; a rule that no longer exists just never matches), and threshold counters (keyed by
gid:sid, as Suricata keeps them in host/ip-pair storage, outside the detect engine).
Per-transaction "already alerted" marks are keyed by a rule's position in the compiled
program, which changes between rulesets: they are carried over by gid:sid, and dropped
for rules that are gone. Detection counters start again from zero.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from appliance.core.detect.signatures import SignatureEngine
from appliance.core.engine import Engine
from appliance.core.policy import Policy
from appliance.errors import ApplianceError
from appliance.rules.loader import LoadedRules, load_detection, role_detectors
from appliance.rules.variables import Variables
from appliance.rules_update import CheckPolicy, evaluate

# How long the supervisor waits for every worker to report its swap. A warm load of ET
# Open takes about a second per worker (bench/reload.py); two cores, several workers.
ACK_TIMEOUT = 60.0

_GID = re.compile(r"[(;]\s*gid\s*:\s*(\d+)\s*;")
T = TypeVar("T")


class ReloadRefused(ApplianceError):
    """The new ruleset was not swapped in; the old one keeps running."""


@dataclass
class Prepared:
    """A loaded, checked ruleset and the per-role detectors built over it."""

    loaded: LoadedRules
    roles: dict[str, SignatureEngine] = field(default_factory=dict)
    index: dict[tuple[int, int], int] | None = None  # rule_index(loaded), for the swap


def prepare_reload(paths: Sequence[Path | str], variables: Variables | None = None,
                   cache_dir: Path | None = None, *, policy: Policy | None = None,
                   check: CheckPolicy | None = None,
                   previous: LoadedRules | None = None) -> LoadedRules:
    """Load the new ruleset and refuse it (ReloadRefused) if it does not load or fails the
    update check; with a policy, the per-role prefilters are built too (so that their
    databases are cached for the workers)."""
    return prepare(paths, variables, cache_dir, policy=policy, check=check,
                   previous=previous).loaded


def prepare(paths: Sequence[Path | str], variables: Variables | None = None,
            cache_dir: Path | None = None, *, policy: Policy | None = None,
            check: CheckPolicy | None = None,
            previous: LoadedRules | None = None) -> Prepared:
    try:
        loaded = load_detection(paths, variables, cache_dir=cache_dir)
    except ApplianceError as e:
        raise ReloadRefused(f"the new rules do not load: {e}") from None
    prev = previous.active + previous.failed if previous is not None else None
    reasons = evaluate(loaded, check or CheckPolicy(), prev)
    if reasons:
        raise ReloadRefused("; ".join(reasons))
    roles = role_detectors(loaded, policy, cache_dir) if policy is not None else {}
    return Prepared(loaded, roles)


class BackgroundJob(Generic[T]):
    """Runs one function in a daemon thread; ``done()`` polls, ``result()`` returns its
    value or raises its exception."""

    def __init__(self, fn: Callable[[], T], name: str = "rules-reload") -> None:
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> BackgroundJob[T]:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as e:  # handed to whoever asks for the result
            self._error = e
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self) -> T:
        if not self._done.is_set():
            raise RuntimeError("the job has not finished")
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


# --------------------------------------------------------------------------- the swap


@dataclass
class SwapReport:
    rules_before: int
    rules_after: int
    flows: int  # flows kept across the swap
    tx_marks_kept: int  # per-transaction alert marks carried over by gid:sid
    tx_marks_dropped: int  # marks of rules that are gone
    thresholds_kept: int

    def as_dict(self) -> dict[str, int]:
        return {"rules_before": self.rules_before, "rules_after": self.rules_after,
                "flows": self.flows, "tx_marks_kept": self.tx_marks_kept,
                "tx_marks_dropped": self.tx_marks_dropped,
                "thresholds_kept": self.thresholds_kept}


def _rule_key(det: SignatureEngine, order: int) -> tuple[int, int] | None:
    infos = det.program.infos
    if 0 <= order < len(infos):
        info = infos[order]
        m = _GID.search(info.raw)
        return (int(m.group(1)) if m else 1, info.sid)
    return None


def rule_index(loaded: LoadedRules,
               sids: set[int] | None = None) -> dict[tuple[int, int], int]:
    """gid:sid -> position in the compiled program (only these sids when given). Build it
    in the background: over ET Open it takes tens of milliseconds."""
    out = {}
    for info in loaded.program.infos:
        if sids is None or info.sid in sids:
            m = _GID.search(info.raw)
            out[(int(m.group(1)) if m else 1, info.sid)] = info.order
    return out


def swap_detector(engine: Engine, loaded: LoadedRules,
                  roles: Mapping[str, SignatureEngine] | None = None,
                  index: Mapping[tuple[int, int], int] | None = None) -> SwapReport:
    """Give the engine the new rules, between two packets (call it from the thread that
    calls ``engine.handle``). Flows and their state stay; see the module docstring.
    ``index`` is ``rule_index(loaded)`` if already built (else only the SIDs that flows
    carry marks for are looked up)."""
    old = engine.detector
    old_roles = dict(engine.role_detectors)
    new_roles = dict(roles or {})
    any_old = old or next(iter(old_roles.values()), None)

    # Per-transaction marks: old program position -> gid:sid -> new position.
    kept = dropped = 0
    if any_old is not None:
        marked = [f for f in engine.flows.flows.values() if f.tx_alerted]
        old_keys = {order: _rule_key(any_old, order)
                    for f in marked for order, _tx in f.tx_alerted}
        if index is None and marked:
            index = rule_index(loaded, {k[1] for k in old_keys.values() if k is not None})
        for flow in marked:
            moved: set[tuple[int, int | None]] = set()
            for order, tx in flow.tx_alerted:
                key = old_keys[order]
                new = index.get(key) if key is not None and index is not None else None
                if new is None:
                    dropped += 1
                else:
                    moved.add((new, tx))
                    kept += 1
            flow.tx_alerted = moved

    # Threshold counters (keyed by gid:sid, track and address) follow the rules.
    thresholds = 0
    pairs: list[tuple[SignatureEngine | None, SignatureEngine | None]] = [
        (old, loaded.engine)]
    pairs += [(old_roles.get(name), eng) for name, eng in new_roles.items()]
    for before, after in pairs:
        if before is not None and after is not None and before is not after:
            carried = before._thresholds
            if carried:
                after._thresholds.update(carried)
                thresholds += len(carried)

    engine.detector = loaded.engine
    engine.role_detectors = new_roles
    return SwapReport(
        rules_before=len(any_old.program.infos) if any_old is not None else 0,
        rules_after=len(loaded.program.infos), flows=len(engine.flows.flows),
        tx_marks_kept=kept, tx_marks_dropped=dropped, thresholds_kept=thresholds)


# --------------------------------------------------------------------------- worker side


class WorkerReloader:
    """The worker's end of the reload pipe. In the worker loop: put ``fileno()`` in the
    select set; when it is readable call ``on_message()``; after every batch of packets
    call ``poll(engine)``, which swaps when the background load is done and answers the
    supervisor."""

    def __init__(self, conn: Any, variables: Variables | None, cache_dir: Path | None,
                 policy: Policy | None = None, log: Callable[[str], None] | None = None
                 ) -> None:
        self.conn = conn  # a multiprocessing Connection (duplex)
        self.variables = variables
        self.cache_dir = cache_dir
        self.policy = policy
        self.log = log or (lambda _m: None)
        self._job: BackgroundJob[Prepared] | None = None
        self._generation = 0
        self._started = 0.0

    def fileno(self) -> int:
        return int(self.conn.fileno())

    def on_message(self) -> None:
        msg = self.conn.recv()
        if not isinstance(msg, dict) or msg.get("op") != "reload":
            return
        gen = int(msg.get("generation", 0))
        paths = [Path(p) for p in msg.get("paths", ())]
        self.request(gen, paths)

    def request(self, generation: int, paths: Sequence[Path]) -> None:
        """Start loading; a newer request replaces a pending one (its result is ignored)."""
        self._generation = generation
        self._started = time.monotonic()
        variables, cache_dir, policy = self.variables, self.cache_dir, self.policy

        def load() -> Prepared:
            # The supervisor checked this ruleset already; no second policy check here.
            loaded = load_detection(paths, variables, cache_dir=cache_dir)
            roles = role_detectors(loaded, policy, cache_dir) if policy is not None else {}
            return Prepared(loaded, roles, rule_index(loaded))

        self._job = BackgroundJob(load, name=f"rules-reload-{generation}").start()

    @property
    def pending(self) -> bool:
        return self._job is not None

    def poll(self, engine: Engine) -> SwapReport | None:
        job = self._job
        if job is None or not job.done():
            return None
        self._job = None
        gen = self._generation
        try:
            prepared = job.result()
        except Exception as e:
            self.log(f"rules reload {gen} failed in this worker: {e}; old rules kept")
            self._send({"op": "failed", "generation": gen, "error": str(e)})
            return None
        t0 = time.perf_counter()
        report = swap_detector(engine, prepared.loaded, prepared.roles, prepared.index)
        swap_ms = (time.perf_counter() - t0) * 1000
        self._send({"op": "swapped", "generation": gen,
                    "load_s": round(time.monotonic() - self._started, 3),
                    "swap_ms": round(swap_ms, 3), **report.as_dict()})
        return report

    def _send(self, msg: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the supervisor went away: nothing to tell
            self.conn.send(msg)


# --------------------------------------------------------------------------- supervisor side


class SupervisorReloader:
    """The supervisor's side: the ``rules.reload`` control handler, one pipe per worker.

    ``attach(q)`` makes the pipe for worker q before it is forked (call it in
    Supervisor._start and pass the returned end to the worker); ``handle(args)`` is the
    control handler: prepare and check, then tell every worker and wait for their
    answers. ``on_loaded(prepared)`` lets the supervisor keep the new ruleset so that a
    worker restarted later forks with it."""

    def __init__(self, paths: Sequence[Path | str], variables: Variables | None = None,
                 cache_dir: Path | None = None, policy: Policy | None = None,
                 check: CheckPolicy | None = None, ctx: Any = None,
                 on_loaded: Callable[[Prepared], None] | None = None,
                 current: LoadedRules | None = None, ack_timeout: float = ACK_TIMEOUT,
                 log: Callable[[str], None] | None = None) -> None:
        import multiprocessing as mp

        self.paths = [Path(p) for p in paths]
        self.variables = variables
        self.cache_dir = cache_dir
        self.policy = policy
        self.check = check or CheckPolicy()
        self.ctx = ctx or mp.get_context("fork")
        self.on_loaded = on_loaded
        self.current = current
        self.ack_timeout = ack_timeout
        self.log = log or (lambda _m: None)
        self.generation = 0
        self._pipes: dict[int, Any] = {}
        self._lock = threading.Lock()  # one reload at a time; pipes vs restarts

    def attach(self, worker: int) -> Any:
        """A new pipe for this worker (replacing a dead one's); returns the worker's end."""
        ours, theirs = self.ctx.Pipe(duplex=True)
        with self._lock:
            old = self._pipes.pop(worker, None)
            if old is not None:
                old.close()
            self._pipes[worker] = ours
        return theirs

    def handle(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control command ``rules.reload`` [paths]: the reply says what each worker did.
        Raises ReloadRefused (the control server replies with the text) when the new
        ruleset is refused; then no worker was told and the old rules keep running."""
        from appliance.io.control import Refused

        if not self._lock.acquire(blocking=False):
            raise Refused("a rules reload is already running")
        try:
            paths = [Path(p) for p in args.get("paths") or self.paths]
            t0 = time.monotonic()
            try:
                prepared = prepare(paths, self.variables, self.cache_dir, policy=self.policy,
                                   check=self.check, previous=self.current)
            except ReloadRefused as e:
                raise Refused(f"reload refused, the old rules keep running: {e}") from None
            compile_s = time.monotonic() - t0
            self.generation += 1
            gen = self.generation
            self.paths = paths
            self.current = prepared.loaded
            if self.on_loaded is not None:
                self.on_loaded(prepared)
            msg = {"op": "reload", "generation": gen, "paths": [str(p) for p in paths]}
            waiting: dict[int, Any] = {}
            for q, conn in self._pipes.items():
                try:
                    conn.send(msg)
                    waiting[q] = conn
                except OSError as e:
                    self.log(f"rules reload: worker {q} unreachable: {e}")
            workers = self._collect(waiting, gen)
            loaded = prepared.loaded
            return {"generation": gen, "active": loaded.active, "failed": loaded.failed,
                    "disabled": loaded.disabled, "compile_s": round(compile_s, 3),
                    "cached": loaded.from_cache, "workers": workers}
        finally:
            self._lock.release()

    def _collect(self, waiting: dict[int, Any], gen: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        deadline = time.monotonic() + self.ack_timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for q, conn in list(waiting.items()):
                try:
                    if not conn.poll(min(left, 0.05)):
                        continue
                    reply = conn.recv()
                except (OSError, EOFError) as e:
                    out[str(q)] = {"op": "failed", "error": f"pipe: {e}"}
                    del waiting[q]
                    continue
                if isinstance(reply, dict) and reply.get("generation") == gen:
                    out[str(q)] = reply
                    del waiting[q]
        for q in waiting:
            out[str(q)] = {"op": "timeout",
                           "error": f"no answer within {self.ack_timeout:g} s"}
        return out
