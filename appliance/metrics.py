"""Prometheus metrics of `appliance run` (prometheus-client), off unless asked for.

The supervisor owns one `Metrics`. It feeds it two kinds of numbers:

- its own status (`update_from_status(Supervisor.status())`): worker restarts, watchdog
  kills, action requests, live workers, active actions by kind, and the scan cache's
  hits and misses when a cache is configured;
- each worker's cumulative counters (`update_worker(queue, pid, snapshot)`), which the
  workers send to the supervisor (as they send action requests) every second or so:

      {"packets": 10, "errors": 0, "verdicts": {"accept": 9, "drop": 1},
       "alerts": {"1": 1}, "bypassed": 2, "memcap": {"flow": 0, "stream": 0, "defrag": 0},
       "scan_cache": {"hits": 0, "misses": 0}}

  A restarted worker (another pid) starts again from zero; its counts are added to what
  its predecessor had counted, so every *_total stays monotonic as Prometheus expects.

Kernel queue drops are read from /proc/net/netfilter/nfnetlink_queue at each scrape (the
kernel's count is per queue instance, so a re-bound queue is handled as a new worker).

The endpoint binds a loopback address unless told otherwise (`allow_remote`): the
numbers describe the guests' traffic and are nobody else's business.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.errors import ConfigError

NFQUEUE_PROC: Final = Path("/proc/net/netfilter/nfnetlink_queue")
DEFAULT_PORT: Final = 9797

# Worker snapshot keys that are plain counters -> metric name and help.
_SCALARS: Final = {
    "packets": ("appliance_packets", "Packets the workers gave a verdict to."),
    "errors": ("appliance_worker_errors", "Packets whose handling raised (verdict by mode)."),
    "bypassed": ("appliance_bypassed_flows", "Flows marked for kernel bypass."),
    "pcre_timeouts": ("appliance_pcre_timeouts", "pcre calls stopped by the ReDoS time "
                      "limit (the packet is taken as not matching that rule)."),
}
# Worker snapshot keys that are counters by one label.
_LABELLED: Final = {
    "verdicts": ("appliance_verdicts", "Verdicts by kind.", "verdict"),
    "alerts": ("appliance_alerts", "Alerts by severity.", "severity"),
    "memcap": ("appliance_memcap_hits", "Times a memcap refused memory, by memcap.",
               "memcap"),
    "exception_policy": ("appliance_exception_policy", "Packets an exception policy "
                         "decided, by memcap/policy.", "use"),
}


def parse_listen(value: str, option: str = "--metrics") -> tuple[str, int]:
    """'127.0.0.1:9797', '[::1]:9797', ':9797' (loopback) or '9797' -> (address, port)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    host = host.strip("[]") or "127.0.0.1"
    try:
        num = int(port)
    except ValueError:
        raise ConfigError(f"{option} {value!r}: expected ADDRESS:PORT") from None
    if not 0 <= num <= 65535:
        raise ConfigError(f"{option} {value!r}: port out of range")
    return host, num


class _Accumulator:
    """Monotonic totals from counters that restart at zero with a new generation."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], float] = {}
        self._last: dict[object, tuple[object, dict[tuple[str, str], float]]] = {}

    def add(self, source: object, generation: object,
            values: Mapping[tuple[str, str], float]) -> None:
        gen, last = self._last.get(source, (None, {}))
        if gen != generation:
            last = {}
        for key, v in values.items():
            delta = v - last.get(key, 0.0)
            if delta < 0:  # a counter went back without a new generation: a reset
                delta = v
            self.totals[key] = self.totals.get(key, 0.0) + delta
        self._last[source] = (generation, dict(values))


def _flatten(snapshot: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for key in _SCALARS:
        v = snapshot.get(key)
        if isinstance(v, int | float):
            out[(key, "")] = float(v)
    for key in _LABELLED:
        sub = snapshot.get(key)
        if isinstance(sub, Mapping):
            for label, v in sub.items():
                if isinstance(v, int | float):
                    out[(key, str(label))] = float(v)
    cache = snapshot.get("scan_cache")
    if isinstance(cache, Mapping):
        for k in ("hits", "misses"):
            if isinstance(cache.get(k), int | float):
                out[("scan_cache", k)] = float(cache[k])
    return out


def read_nfqueue(path: Path = NFQUEUE_PROC) -> dict[int, tuple[int, int, int]]:
    """queue number -> (peer port id, dropped by the kernel: queue full, dropped because
    the netlink socket's buffer was full) from the kernel's nfnetlink_queue table."""
    out: dict[int, tuple[int, int, int]] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        f = line.split()
        # queue_number peer_portid queue_total copy_mode copy_range queue_dropped
        # user_dropped id_sequence 1
        if len(f) >= 7 and f[0].isdigit():
            out[int(f[0])] = (int(f[1]), int(f[5]), int(f[6]))
    return out


class Metrics(Collector):
    def __init__(self, nfqueue_proc: Path | None = NFQUEUE_PROC) -> None:
        self.nfqueue_proc = nfqueue_proc
        self._lock = threading.Lock()
        self._workers = _Accumulator()
        self._queues = _Accumulator()
        self._status: dict[str, float] = {}
        self._actions: dict[str, int] = {}
        self._cache: dict[str, float] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- feeding -------------------------------------------------------------------------

    def update_worker(self, queue: int, pid: int, snapshot: Mapping[str, Any]) -> None:
        """A worker's cumulative counters (see the module docstring for the shape)."""
        with self._lock:
            self._workers.add(queue, pid, _flatten(snapshot))

    def update_from_status(self, status: Mapping[str, Any]) -> None:
        """The supervisor's status() dict (the control socket's `status` answer)."""
        with self._lock:
            for key in ("worker_restarts", "watchdog_kills", "action_requests"):
                v = status.get(key)
                if isinstance(v, int | float):
                    self._status[key] = float(v)
            workers = status.get("workers")
            if isinstance(workers, Mapping):
                self._status["workers_alive"] = float(sum(
                    1 for w in workers.values() if isinstance(w, Mapping) and w.get("alive")))
                self._status["workers"] = float(len(workers))
            actions = status.get("actions")
            if isinstance(actions, Mapping) and isinstance(actions.get("active"), list):
                kinds: dict[str, int] = {}
                for a in actions["active"]:
                    if isinstance(a, Mapping):
                        k = str(a.get("kind", "unknown"))
                        kinds[k] = kinds.get(k, 0) + 1
                self._actions = kinds
            cache = status.get("scan_cache")
            if isinstance(cache, Mapping):
                for k in ("hits", "misses"):
                    if isinstance(cache.get(k), int | float):
                        self._cache[k] = float(cache[k])
        # Per-worker counters relayed in the status (when the supervisor keeps them there).
        stats = status.get("worker_stats")
        if isinstance(stats, Mapping):
            for q, w in stats.items():
                if isinstance(w, Mapping) and isinstance(w.get("stats"), Mapping):
                    self.update_worker(int(q), int(w.get("pid", 0)), w["stats"])

    # -- exposing ------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        queues = read_nfqueue(self.nfqueue_proc) if self.nfqueue_proc else {}
        with self._lock:
            for q, (portid, dropped, user_dropped) in queues.items():
                self._queues.add(q, portid, {("kernel", str(q)): float(dropped),
                                             ("socket", str(q)): float(user_dropped)})
            totals = dict(self._workers.totals)
            qtotals = dict(self._queues.totals)
            status = dict(self._status)
            actions = dict(self._actions)
            cache = dict(self._cache)
        for key, (name, doc) in _SCALARS.items():
            yield CounterMetricFamily(name, doc, value=totals.get((key, ""), 0.0))
        for key, (name, doc, label) in _LABELLED.items():
            fam = CounterMetricFamily(name, doc, labels=[label])
            for (k, lab), v in sorted(totals.items()):
                if k == key:
                    fam.add_metric([lab], v)
            yield fam
        fam = CounterMetricFamily("appliance_queue_drops",
                                  "Packets the kernel dropped before a worker saw them: "
                                  "queue full (kernel) or netlink buffer full (socket).",
                                  labels=["queue", "reason"])
        for (reason, queue), v in sorted(qtotals.items()):
            fam.add_metric([queue, reason], v)
        yield fam
        for k, doc in (("hits", "Scan-cache lookups answered from the cache."),
                       ("misses", "Scan-cache lookups that needed a scan.")):
            # The supervisor's cache status wins; else what the workers counted.
            v = cache.get(k, totals.get(("scan_cache", k), 0.0))
            yield CounterMetricFamily(f"appliance_scan_cache_{k}", doc, value=v)
        for key, name, doc in (
                ("worker_restarts", "appliance_worker_restarts", "Workers restarted."),
                ("watchdog_kills", "appliance_watchdog_kills",
                 "Workers killed by the watchdog (hung)."),
                ("action_requests", "appliance_action_requests",
                 "Actions the engine asked for.")):
            yield CounterMetricFamily(name, doc, value=status.get(key, 0.0))
        yield GaugeMetricFamily("appliance_workers_alive", "Worker processes alive.",
                                value=status.get("workers_alive", 0.0))
        g = GaugeMetricFamily("appliance_active_actions",
                              "Actions in force (quarantine, redirect, block) by kind.",
                              labels=["kind"])
        for kind in sorted({"quarantine", "redirect", "block", *actions}):
            g.add_metric([kind], float(actions.get(kind, 0)))
        yield g

    def text(self) -> bytes:
        """The exposition text, as a scrape would get it."""
        return generate_latest(self.registry)

    # -- serving -------------------------------------------------------------------------

    def serve(self, address: str = "127.0.0.1", port: int = DEFAULT_PORT,
              allow_remote: bool = False) -> tuple[str, int]:
        """Start the HTTP endpoint (a thread); port 0 picks a free one. Returns where."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(f"metrics address {address!r}: not an IP address") from None
        if not ip.is_loopback and not allow_remote:
            raise ConfigError(f"metrics address {address}: not a loopback address "
                              "(the endpoint is local unless explicitly allowed)")
        if self._server is not None:
            raise ConfigError("the metrics endpoint is already serving")
        try:
            self._server, self._thread = start_http_server(port, address,
                                                           registry=self.registry)
        except OSError as e:
            raise ConfigError(f"metrics endpoint {address}:{port}: {e.strerror}") from None
        return address, int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None
            self._thread = None
