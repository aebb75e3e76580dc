"""`appliance run`: the supervisor of the inline workers.

It checks br_netfilter and its sysctls, loads config and rules once, installs the
iptables chains, and forks one worker per queue (the kernel's --queue-balance hashes
both directions of an address pair to the same queue, so each worker owns its flows).
Forked workers share the loaded ruleset copy-on-write, so a restart takes milliseconds.

A watchdog restarts a worker that died, and kills and restarts one whose heartbeat
stops (a stuck worker would stall everything queued to it, fail-open or not). The
chains are removed on exit and on SIGTERM; a crashed run's chains are replaced at start.

Each watchdog event is logged and written to EVE as an `engine` record (Suricata's
record for engine messages: module "watchdog", the worker's name, the running counts of
restarts and watchdog kills in the message). Every `stats_interval` seconds, after each
watchdog event and at exit the supervisor also writes an EVE `stats` record summed over
the workers (uptime, packets, ips verdicts, the flow table). Suricata's schema closes
every object under `stats` (additionalProperties: false), so the restart and kill
counters cannot go there without making the record invalid: they are in the `engine`
records, in `appliance status` (worker_restarts, watchdog_kills) and in the metrics.
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
from appliance.errors import ApplianceError, ConfigError
from appliance.io.eve import EveWriter
from appliance.io.netfilter import Chains, bridge_sysctls
from appliance.io.nfqueue import QueueWorker

# A worker whose heartbeat is older than this is considered hung and killed. Its loop
# beats every IDLE_WAKE (0.25 s) and after every batch of packets; 2 s leaves room for a
# slow rule on a big packet without leaving traffic stalled for long.
WATCHDOG_SECONDS = 2.0
# Supervisor poll period.
POLL = 0.1
# Seconds between the supervisor's EVE stats records (Suricata's stats.interval default).
STATS_INTERVAL = 8.0


@dataclass
class RunOptions:
    bridge: str
    queues: int = 1
    fail_open: bool = False
    eve: str | None = None
    # The EVE file, opened by the supervisor before it drops privileges (-1: not yet):
    # the workers write through it, so the service user needs no access to its path.
    eve_fd: int = -1
    watchdog: float = WATCHDOG_SECONDS
    stats_interval: float = STATS_INTERVAL  # EVE stats records; 0: only at exit
    # Where actions persist (SQLite) and are audited (JSON lines); None: no actions.
    state_dir: str | None = None
    control: str | None = None  # the control socket's path; None: no control socket
    # Files in traffic: YARA rules dir and the scan cache (SQLite path or redis:// URL);
    # no yara_dir: no file scanning.
    yara_dir: str | None = None
    scan_cache: str | None = None
    scan_hold: float = 0.3
    # Started as root, drop to this user keeping only CAP_NET_ADMIN and CAP_NET_RAW
    # (when the user exists); None: stay as started.
    user: str | None = None
    metrics: str | None = None  # "ADDR:PORT" for the Prometheus endpoint; None: off
    # The endpoint API for guests' agents ("ADDR:PORT", the guest-facing address) and its
    # token file (`agent-name token` lines); None: not served.
    endpoint_api: str | None = None
    endpoint_tokens: str | None = None
    # How workers talk to NFQUEUE: "netlink" (appliance/io/nfnetlink.py: GSO and batch
    # verdicts; ~25x the inspected TCP throughput, bench/inline.py) or "netfilterqueue"
    # (libnetfilter_queue, one verdict per packet).
    transport: str = "netlink"


def _add_counters(into: dict[str, Any], counters: Mapping[str, Any]) -> None:
    """Add nested counters (a worker's memcap_counters()) into `into`, key by key."""
    for k, v in counters.items():
        if isinstance(v, Mapping):
            _add_counters(into.setdefault(k, {}), v)
        elif isinstance(v, int):
            into[k] = int(into.get(k, 0)) + v


def python_unreadable_by(user: str) -> str | None:
    """The first directory of this Python installation (or this package) that `user`
    cannot traverse, or None when everything is reachable. Checked from the mode bits:
    owner, group or other execute permission as they apply to the user."""
    import pwd
    import sys
    import sysconfig

    pw = pwd.getpwnam(user)
    groups = {pw.pw_gid}
    for target in (sysconfig.get_paths()["stdlib"], sys.prefix,
                   str(Path(__file__).resolve().parent)):
        p = Path(target).resolve()
        for d in [*reversed(p.parents), p]:
            try:
                st = d.stat()
            except OSError:
                return str(d)
            if st.st_uid == pw.pw_uid:
                ok = bool(st.st_mode & 0o100)
            elif st.st_gid in groups:
                ok = bool(st.st_mode & 0o010)
            else:
                ok = bool(st.st_mode & 0o001)
            if not ok:
                return str(d)
    return None


def chown_for_file(user: str, path: Path) -> None:
    import pwd

    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)


def _die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL): the kernel kills us when the supervisor dies."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's own cleanup still stops us on SIGTERM


def _endpoint_main(sock: Any, tokens: dict[str, str], opts: RunOptions) -> None:
    """The endpoint API's own process (uvicorn runs threads and an event loop, which
    must not live in the supervisor that forks workers). It reads the same scan cache
    the workers write; verdicts of another scanner identity are not served."""
    os.setsid()
    _die_with_parent()
    from appliance.io.cache import open_cache
    from appliance.io.endpoint_api import create_app, serve_on
    from appliance.io.scanners import build_scanner

    assert opts.scan_cache is not None and opts.yara_dir is not None
    identity = build_scanner(opts.yara_dir).identity
    serve_on(create_app(open_cache(opts.scan_cache), lambda: identity, tokens), sock)


@dataclass
class Detection:
    detector: SignatureEngine | None
    policy: Policy | None = None
    role_detectors: Mapping[str, SignatureEngine] | None = None


def _worker_main(queue_num: int, config: Config, det: Detection, opts: RunOptions,
                 beat: Synchronized[float], actions: Any, reload_conn: Any,
                 reload_args: tuple[Any, Any]) -> None:
    # New session so a Ctrl-C in the terminal reaches the supervisor, which stops us;
    # and die with the supervisor (even SIGKILLed), so no orphan keeps our queue bound.
    os.setsid()
    _die_with_parent()
    eve = (EveWriter(opts.eve, append=True, fd=opts.eve_fd if opts.eve_fd >= 0 else None)
           if opts.eve else None)
    scan = None
    engine_cfg = config.engine
    if opts.yara_dir and opts.scan_cache:
        from dataclasses import replace

        from appliance.filescan import build_scan

        # Built here, after fork: the service's threads would not survive one.
        scan, _svc = build_scan(opts.scan_cache, opts.yara_dir, opts.scan_hold)
        engine_cfg = replace(engine_cfg, scan_files=True)
    engine = Engine(engine_cfg, det.detector, det.policy, det.role_detectors)

    def heartbeat() -> None:
        beat.value = time.monotonic()

    def on_action(req: ActionRequest) -> None:
        actions.put(req)  # to the supervisor, which owns the action backend

    def report(counters: dict[str, Any]) -> None:
        actions.put(("stats", counters))  # the same channel: the supervisor sorts them

    reloader = None
    if reload_conn is not None:
        from appliance.reload import WorkerReloader

        variables, cache_dir = reload_args
        reloader = WorkerReloader(reload_conn, variables, cache_dir, det.policy)
    QueueWorker(queue_num, engine, eve, opts.fail_open, heartbeat, on_action=on_action,
                reloader=reloader, report=report, scan=scan,
                transport=opts.transport).run()


class Supervisor:
    def __init__(self, config: Config, detector: SignatureEngine | None, opts: RunOptions,
                 log: Callable[[str], None] = print, policy: Policy | None = None,
                 role_detectors: Mapping[str, SignatureEngine] | None = None,
                 on_action: Callable[[ActionRequest], None] | None = None,
                 reloader: Any = None, reload_args: tuple[Any, Any] = (None, None)
                 ) -> None:
        self.config = config
        self.detection = Detection(detector, policy, role_detectors)
        self.on_action = on_action
        # appliance.reload.SupervisorReloader: `appliance rules reload` swaps the ruleset
        # in every worker without restarting it (flows and flowbits are kept).
        self.reloader = reloader
        # For `appliance policy reload`: the policy file, the loaded rules it selects from.
        self.policy_path: str | None = None
        self.loaded_rules: Any = None
        self.cache_dir: Any = None
        self._restart_all = False
        self.reload_args = reload_args  # (variables, cache_dir) for the workers' loads
        self.worker_stats: dict[int, dict[str, Any]] = {}
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
        self.manager: Any = None
        self.control: Any = None
        self.metrics: Any = None
        self.endpoint: Any = None  # the endpoint API's process
        self._endpoint_args: tuple[Any, ...] | None = None
        self._endpoint_started = 0.0
        self._stop = False
        self._eve: EveWriter | None = None
        self._eve_failed = False
        self._started = time.time()

    def check(self) -> None:
        from appliance.privileges import DAEMON_CAPS, has_caps

        if os.geteuid() != 0 and not has_caps(DAEMON_CAPS):
            raise ApplianceError("appliance run needs root, or CAP_NET_ADMIN and CAP_NET_RAW "
                                 "(the systemd unit gives them): it installs iptables "
                                 "chains and binds NFQUEUE")
        if not Path(f"/sys/class/net/{self.opts.bridge}/bridge").exists():
            raise ApplianceError(f"{self.opts.bridge}: no such bridge in this network "
                                 "namespace")
        bridge_sysctls(set_them=True)

    def _prepare_endpoint(self) -> None:
        """Bind the endpoint API's socket and read its tokens while still root (the
        token file is the API's secret, readable by root only)."""
        if not self.opts.endpoint_api:
            return
        from appliance.io.endpoint_api import bind_endpoint, load_tokens
        from appliance.metrics import parse_listen

        if not (self.opts.yara_dir and self.opts.scan_cache):
            raise ApplianceError("--endpoint-api serves the scan cache's verdicts: it "
                                 "needs file scanning (drop --no-scan)")
        if not self.opts.endpoint_tokens:
            raise ApplianceError("--endpoint-api needs --endpoint-tokens FILE "
                                 "('agent-name token' lines)")
        try:
            tokens = load_tokens(self.opts.endpoint_tokens)
            if not tokens or any(len(t) < 16 for t in tokens):
                raise ValueError("need at least one token, each of 16+ characters")
            host, port = parse_listen(self.opts.endpoint_api, "--endpoint-api")
            sock = bind_endpoint(host, port)
        except (OSError, ValueError, ConfigError) as e:
            raise ApplianceError(f"endpoint API: {e}") from None
        self._endpoint_args = (sock, tokens, self.opts)

    def _start_endpoint(self) -> None:
        if self._endpoint_args is None:
            return
        self._endpoint_started = time.monotonic()
        self.endpoint = self.ctx.Process(target=_endpoint_main, name="appliance-api",
                                         args=self._endpoint_args, daemon=False)
        self.endpoint.start()
        host, port = self._endpoint_args[0].getsockname()[:2]
        self.log(f"endpoint API on http://{host}:{port}/v1 (pid {self.endpoint.pid})")

    def _watch_endpoint(self) -> None:
        # Restarted when it dies, at most every 5 s so a crash loop cannot spin.
        if (self.endpoint is not None and not self.endpoint.is_alive()
                and time.monotonic() - self._endpoint_started >= 5.0):
            self.log(f"endpoint API exited ({self.endpoint.exitcode}); restarting")
            self.endpoint.join(timeout=1)
            self._start_endpoint()

    def _start(self, q: int) -> None:
        beat = self.beats.get(q)
        if beat is None:
            beat = self.beats[q] = self.ctx.Value("d", time.monotonic(), lock=False)
        beat.value = time.monotonic()
        conn = self.reloader.attach(q) if self.reloader is not None else None
        p = self.ctx.Process(target=_worker_main, name=f"appliance-q{q}",
                             args=(q, self.config, self.detection, self.opts, beat,
                                   self.action_q, conn, self.reload_args),
                             daemon=False)
        p.start()
        self.workers[q] = p

    def stop(self, *_a: object) -> None:
        self._stop = True

    def _start_actions(self) -> None:
        """The action backend, its state and the control socket (when configured)."""
        from appliance.actions import ActionManager, control_handlers
        from appliance.io.actions import NetlinkBackend
        from appliance.io.control import ControlServer

        self.manager = None
        self.control = None
        if self.opts.state_dir is not None:
            state = Path(self.opts.state_dir)
            state.mkdir(parents=True, exist_ok=True)
            backend = NetlinkBackend(self.opts.bridge)
            backend.install()
            self.manager = ActionManager(backend, state / "actions.db",
                                         state / "audit.jsonl", self._actions_policy())
            for r in self.manager.restore():
                self.log(f"restore: {r.reason}")
        if self.opts.control is not None:
            handlers: dict[str, Any] = {"status": lambda _a: self.status()}
            if self.manager is not None:
                handlers.update(control_handlers(self.manager))
            if self.reloader is not None:
                handlers["rules.reload"] = self.reloader.handle
            handlers["policy.reload"] = self.reload_policy
            handlers["explain"] = self.explain
            # Root clients, and our own user after a privilege drop.
            self.control = ControlServer(self.opts.control, handlers,
                                         allowed_uids=(0, os.getuid())).start()

    def _actions_policy(self) -> Any:
        """What the action manager may do, from the guest policy: never act on the
        allowlist; a guest named 'sinkhole' is where quarantined guests may go."""
        from appliance.actions import Policy as ActionsPolicy

        pol = self.detection.policy
        if pol is None:
            return ActionsPolicy()
        guests: dict[str, str] = {}
        sink_ips: list[str] = []
        sink_port = "sinkhole"
        for g in pol.guests:
            port = next(iter(sorted(g.ports)), g.name)
            guests[g.name] = port
            for n in g.networks:
                if n.num_addresses == 1:
                    guests[str(n.network_address)] = port
            if g.name == "sinkhole":
                sink_port = port
                sink_ips = [str(n.network_address) for n in g.networks if n.num_addresses == 1]
        return ActionsPolicy(allowlist=tuple(str(n) for n in pol.allowlist), guests=guests,
                             sinkhole_port=sink_port, sinkhole_ips=tuple(sink_ips))

    def explain(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control handler: the workers' latest alerts, each with its guest, role and why
        (optionally those of one flow_id or one address)."""
        flow = args.get("flow_id")
        addr = args.get("address")
        out = []
        for ws in self.worker_stats.values():
            for a in ws.get("recent_alerts", []):
                if flow is not None and a.get("flow_id") != flow:
                    continue
                if addr is not None and addr not in (a.get("src_ip"), a.get("dest_ip")):
                    continue
                out.append(a)
        out.sort(key=lambda a: str(a.get("timestamp", "")))
        return {"alerts": out[-200:]}

    def reload_policy(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control handler: load and check a policy file; on success the workers restart
        with it (their flows start over; actions and their state are kept). On failure
        nothing changes and the reply says why, with the file's line."""
        from appliance.io.control import Refused
        from appliance.policy_file import load_policy
        from appliance.rules.loader import role_detectors

        path = args.get("file") or self.policy_path
        if not isinstance(path, str) or not path:
            raise Refused("no policy file: give one (the daemon was started without)")
        try:
            pol = load_policy(path)
        except ApplianceError as e:
            raise Refused(f"policy not reloaded, the previous one stays: {e}") from None
        roles = None
        if self.loaded_rules is not None:
            roles = role_detectors(self.loaded_rules, pol, self.cache_dir)
        self.detection = Detection(self.detection.detector, pol, roles)
        self.policy_path = path
        if self.manager is not None:
            self.manager.policy = self._actions_policy()
        self._restart_all = True  # done by the supervisor loop, not this thread
        self.log(f"policy reloaded from {path}: {len(pol.guests)} guests, roles "
                 f"{', '.join(sorted(pol.roles))}; restarting workers")
        return {"path": path, "guests": len(pol.guests), "roles": sorted(pol.roles)}

    def status(self) -> dict[str, Any]:
        totals: dict[str, Any] = {"packets": 0, "alerts": 0, "errors": 0,
                                  "flows_active": 0, "verdicts": {}}
        talkers: dict[str, int] = {}
        for ws in self.worker_stats.values():
            for k in ("packets", "alerts", "errors", "flows_active"):
                totals[k] += int(ws.get(k, 0))
            for k, v in ws.get("verdicts", {}).items():
                totals["verdicts"][k] = totals["verdicts"].get(k, 0) + int(v)
            for addr, b in ws.get("top_talkers", []):
                talkers[addr] = talkers.get(addr, 0) + int(b)
            for k in ("memcap", "exception_policy"):
                sums = totals.setdefault(k, {})
                for name, v in ws.get(k, {}).items():
                    sums[name] = sums.get(name, 0) + int(v)
            # The netlink transport's counters (GSO packets, batch verdicts, ENOBUFS).
            sums = totals.setdefault("transport", {})
            for name, v in ws.get("transport", {}).items():
                if isinstance(v, int):
                    sums[name] = sums.get(name, 0) + v
            _add_counters(totals.setdefault("counters", {}), ws.get("counters", {}))
        totals["bypassed"] = totals["verdicts"].get("bypass", 0)
        totals["flow"] = self._flow_totals()
        totals["top_talkers"] = sorted(talkers.items(), key=lambda kv: -kv[1])[:5]
        return {
            "traffic": totals,
            "bridge": self.opts.bridge,
            "mode": "fail-open" if self.opts.fail_open else "fail-closed",
            "transport": self.opts.transport,
            "workers": {str(q): {"pid": p.pid, "alive": p.is_alive()}
                        for q, p in self.workers.items()},
            "worker_restarts": self.restarts,
            "watchdog_kills": self.watchdog_kills,
            "action_requests": self.action_requests,
            "actions": self.manager.status() if self.manager is not None else {},
        }

    def _flow_totals(self) -> dict[str, int]:
        """The workers' flow tables summed (Suricata's stats.flow names); `emergency`
        is how many workers are in emergency mode now."""
        out = {k: 0 for k in ("active", "memcap", "memuse", "emerg_mode_entered",
                              "emerg_mode_over", "get_used", "total", "emergency")}
        for ws in self.worker_stats.values():
            fl = ws.get("flow", {})
            out["active"] += int(ws.get("flows_active", 0))
            for k in ("memcap", "memuse", "emerg_mode_entered", "emerg_mode_over",
                      "get_used", "total"):
                out[k] += int(fl.get(k, 0))
            out["emergency"] += bool(fl.get("emergency"))
        return out

    # -- EVE: watchdog events and stats -------------------------------------------------

    def _eve_write(self, record: dict[str, Any]) -> None:
        if not self.opts.eve or self._eve_failed:
            return
        try:
            if self._eve is None:
                self._eve = EveWriter(self.opts.eve, append=True,
                                      fd=self.opts.eve_fd if self.opts.eve_fd >= 0 else None)
            self._eve.write(record)
        except (ApplianceError, OSError) as e:
            self._eve_failed = True  # said once; the log still has every event
            self.log(f"EVE output: {e}; supervisor records are not written")

    def _watchdog_event(self, q: int, what: str, detected: float) -> None:
        """A worker died or hung: the log line, an EVE `engine` record stamped with the
        time of detection (wall clock, as EVE's), fresh stats."""
        from appliance.core.records import format_ts

        msg = (f"worker {q} {what}; restarting ({self.restarts} restart(s), "
               f"{self.watchdog_kills} watchdog kill(s))")
        self.log(msg)
        self._eve_write({"timestamp": format_ts(detected), "event_type": "engine",
                         "log_level": "Warning",
                         "engine": {"message": msg, "module": "watchdog",
                                    "thread_name": f"appliance-q{q}"}})
        self.write_stats()

    def stats_record(self) -> dict[str, Any]:
        """An EVE `stats` record for the whole appliance (schema-valid: only Suricata's
        names; see the module's docstring for where the restart counters are)."""
        from appliance.core.records import format_ts

        st = self.status()["traffic"]
        v = st["verdicts"]
        # flow.memcap in EVE is Suricata's counter of memcap hits (from the workers'
        # counters below), not the configured size that status shows.
        fl = {k: n for k, n in st["flow"].items() if k not in ("emergency", "memcap")}
        now = time.time()
        stats: dict[str, Any] = {
            "uptime": int(now - self._started),
            "decoder": {"pkts": st["packets"]},
            "ips": {"accepted": v.get("accept", 0) + v.get("bypass", 0),
                    "blocked": v.get("drop", 0) + v.get("reject", 0),
                    "rejected": v.get("reject", 0)},
            "flow": fl,
            "detect": {"alert": st["alerts"]}}
        _add_counters(stats, st.get("counters", {}))
        return {"timestamp": format_ts(now), "event_type": "stats", "stats": stats}

    def write_stats(self) -> None:
        self._eve_write(self.stats_record())

    def _act(self, req: ActionRequest) -> None:
        if self.manager is None:
            self.log(f"action requested: {req.kind} {req.target} ({req.reason}); "
                     "no action state configured")
            return
        # The role's duration is the first offence's; repeat offenders escalate.
        res = self.manager.request(req.kind, req.target, req.reason, sid=req.sid,
                                   alert=req.alert, established=req.established,
                                   first_duration=req.duration)
        self.log(f"{req.kind} {req.target}: {res.reason}")

    def _drop_privileges(self) -> None:
        """As root with a daemon user configured: give it the state, control and EVE
        paths, then become it with only the two capabilities, before any thread starts
        or worker forks (capabilities are per thread; children inherit them)."""
        import pwd

        from appliance.privileges import DAEMON_CAPS, chown_for, drop_privileges

        user = self.opts.user
        if user is None or os.geteuid() != 0:
            return
        try:
            pwd.getpwnam(user)
        except KeyError:
            self.log(f"user {user!r} does not exist: running as root (create it to run "
                     "with least privilege)")
            return
        blocked = python_unreadable_by(user)
        if blocked is not None:
            self.log(f"staying root: {blocked} is not readable by {user}, and Python "
                     "imports modules from it later (install the appliance with a system "
                     "Python, as deploy/provision.sh does)")
            return
        # Modules imported lazily after the drop must be loaded while we can read them.
        import asyncio  # noqa: F401 - pyroute2 needs it at action time
        import concurrent.futures.thread  # noqa: F401
        import multiprocessing.popen_fork  # noqa: F401
        import sqlite3  # noqa: F401

        paths: list[str | Path] = []
        if self.opts.state_dir:
            paths.append(self.opts.state_dir)
        if self.opts.control:
            paths.append(Path(self.opts.control).parent)
        if self.opts.eve:
            paths.append(Path(self.opts.eve).parent)
        chown_for(user, *paths)
        if self.opts.state_dir:
            for f in Path(self.opts.state_dir).iterdir():
                chown_for_file(user, f)
        if self.opts.eve and Path(self.opts.eve).exists():
            chown_for_file(user, Path(self.opts.eve))
        drop_privileges(user, list(DAEMON_CAPS))
        self.log(f"running as {user} with {', '.join(DAEMON_CAPS)} only")

    def _open_eve(self) -> None:
        """Open the EVE file while still root: after the drop the service user may not
        reach its directory (a 0700 log directory, say). Refuse to start if it cannot be
        written at all, rather than run with workers that die opening it."""
        eve = self.opts.eve
        if not eve or eve == "-" or self.opts.eve_fd >= 0:
            return
        try:
            self.opts.eve_fd = os.open(eve, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            raise ConfigError(f"{eve}: cannot write EVE output: {e.strerror}") from None

    def run(self, until: Callable[[], bool] | None = None) -> int:
        self.check()
        self._prepare_endpoint()
        self._open_eve()
        self._drop_privileges()
        self.chains.install()
        self._start_actions()
        last_tick = last_stats = time.monotonic()
        old_term = signal.signal(signal.SIGTERM, self.stop)
        old_int = signal.signal(signal.SIGINT, self.stop)
        try:
            for q in range(self.opts.queues):
                self._start(q)
            if self.opts.metrics:
                from appliance.metrics import Metrics, parse_listen

                addr, port = parse_listen(self.opts.metrics)
                self.metrics = Metrics()
                self.metrics.serve(addr, port)
                self.log(f"metrics on http://{addr}:{port}/metrics")
            self._start_endpoint()
            self.log(f"inline on {self.opts.bridge}: {self.opts.queues} worker(s), "
                     f"{'fail-open' if self.opts.fail_open else 'fail-closed'}, "
                     f"transport {self.opts.transport}")
            while not self._stop and (until is None or not until()):
                time.sleep(POLL)
                if self._restart_all:
                    self._restart_all = False
                    for wp in self.workers.values():
                        wp.terminate()  # _watch restarts each from the new detection
                self._watch()
                self._watch_endpoint()
                self._drain_actions()
                if (self.opts.stats_interval > 0
                        and time.monotonic() - last_stats >= self.opts.stats_interval):
                    last_stats = time.monotonic()
                    self.write_stats()
                if time.monotonic() - last_tick >= 1.0 and self.metrics is not None:
                    self.metrics.update_from_status(self.status())
                if self.manager is not None and time.monotonic() - last_tick >= 1.0:
                    last_tick = time.monotonic()
                    for r in self.manager.tick():
                        self.log(f"release: {r.reason}")
        finally:
            procs = [*self.workers.values(), *([self.endpoint] if self.endpoint else [])]
            for p in procs:
                if p.is_alive():
                    p.terminate()
            if self._endpoint_args is not None:
                self._endpoint_args[0].close()
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
                    p.join(timeout=2)
            self.chains.remove()
            self._drain_actions()  # the workers' last counters
            self.write_stats()
            if self._eve is not None:
                self._eve.close()
            if self.opts.eve_fd >= 0:
                os.close(self.opts.eve_fd)
                self.opts.eve_fd = -1
            if self.control is not None:
                self.control.stop()
            if self.metrics is not None:
                self.metrics.stop()
            if self.manager is not None:
                # Active actions stay in force while the daemon is down (the next start
                # restores them from SQLite and releases what expired meanwhile); with
                # none active, nothing of ours is left behind.
                active = self.manager.active()
                if active:
                    self.log(f"{len(active)} action(s) stay in force until the next start")
                else:
                    try:
                        self.manager.backend.cleanup()
                    except Exception as e:
                        self.log(f"action backend cleanup: {e}")
                self.manager.close()
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)
            self.log(f"stopped; chains removed; {self.restarts} worker restart(s)")
        return 0

    def _drain_actions(self) -> None:
        while not self.action_q.empty():
            req = self.action_q.get()
            if isinstance(req, tuple) and req and req[0] == "stats":
                ws = req[1]
                q = int(ws.get("queue", 0))
                self.worker_stats[q] = ws
                if self.metrics is not None and q in self.workers:
                    self.metrics.update_worker(q, self.workers[q].pid, {
                        "packets": ws.get("packets", 0), "errors": ws.get("errors", 0),
                        "verdicts": ws.get("verdicts", {}),
                        "alerts": ws.get("alerts_by_severity", {}),
                        "bypassed": ws.get("verdicts", {}).get("bypass", 0),
                        "memcap": ws.get("memcap", {}),
                        "exception_policy": ws.get("exception_policy", {}),
                        "pcre_timeouts": ws.get("pcre_timeouts", 0)})
                continue
            self.action_requests += 1
            if self.on_action is not None:
                self.on_action(req)
            else:
                self._act(req)

    def _watch(self) -> None:
        now = time.monotonic()
        for q, p in list(self.workers.items()):
            detected = time.time()
            if not p.is_alive():
                p.join(timeout=0)
                pid = p.pid
                self.restarts += 1
                self._start(q)
                self._watchdog_event(q, f"(pid {pid}) exited ({p.exitcode})", detected)
            elif now - self.beats[q].value > self.opts.watchdog:
                silent = now - self.beats[q].value
                self.watchdog_kills += 1
                p.kill()
                p.join(timeout=2)
                self.restarts += 1
                self._start(q)
                self._watchdog_event(q, f"(pid {p.pid}) stopped answering for {silent:.1f} s;"
                                        " killed", detected)
