"""Fixtures for inline tests on the lab (network namespaces; root only).

Every test gets its own lab prefix, brings it down afterwards (also on failure), and
sends traffic only between the lab's namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.lab import Lab

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules"


def _can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "iptables", "ip6tables", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make test installs it)"
    if not Path("/proc/sys/net/bridge").exists():
        return "br_netfilter is not available"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    why = _can_run()
    for item in items:
        if "e2e" in str(item.fspath):
            item.add_marker(pytest.mark.netns)
            if why:
                item.add_marker(pytest.mark.skip(reason=why))


_counter = [0]


@pytest.fixture
def lab() -> Iterator[Lab]:
    _counter[0] += 1
    lab = Lab(f"t{os.getpid() % 100:02d}{_counter[0]}-"[:6])
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


class Appliance:
    """`appliance lab run` in the background, stopped with SIGTERM at the end."""

    def __init__(self, lab: Lab, tmp: Path, *args: str) -> None:
        self.lab = lab
        self.eve = tmp / "eve.json"
        self.log = tmp / "appliance.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "lab", "--prefix", lab.prefix, "run",
             "--rules", str(RULES), "--eve", str(self.eve), *args],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "inline on" in self.log.read_text(errors="replace"):
                break
            if self.proc.poll() is not None:
                raise AssertionError(f"appliance exited: {self.log.read_text()}")
            time.sleep(0.1)
        else:
            raise AssertionError(f"appliance did not start: {self.log.read_text()}")
        time.sleep(0.3)

    def iptables_rules(self) -> str:
        out = ""
        for tool in ("iptables", "ip6tables"):
            for table in ("filter", "mangle"):
                out += self.lab.run_in("host", tool, "-t", table, "-S").stdout
        return out

    def workers(self) -> list[int]:
        """The worker processes: the supervisor's children."""
        kids = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                              text=True).stdout.split()
        return [int(k) for k in kids]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_appliance(lab: Lab, tmp_path: Path) -> Iterator[object]:
    started: list[Appliance] = []

    def start(*args: str) -> Appliance:
        a = Appliance(lab, tmp_path, *args)
        started.append(a)
        return a

    try:
        yield start
    finally:
        for a in started:
            a.stop()


# -- helpers for fault, flood and soak tests -------------------------------------------

def kill_paused(supervisor: int, worker: int, pause: float = 0.5) -> float:
    """SIGKILL a worker while its supervisor is stopped, so that for `pause` seconds no
    worker is bound (what the kernel does then is the fail-open/closed mode's job, not
    a restart's). Returns the time of the kill."""
    os.kill(supervisor, signal.SIGSTOP)
    try:
        t = time.time()
        os.kill(worker, signal.SIGKILL)
        time.sleep(pause)
    finally:
        os.kill(supervisor, signal.SIGCONT)
    return t


def eve_records(path: Path, event_type: str) -> list[dict[str, Any]]:
    """The EVE records of one type written so far (a partial last line is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if f'"event_type":"{event_type}"' in line:
            with contextlib.suppress(ValueError):  # a line being written right now
                out.append(json.loads(line))
    return out


def control(lab: Lab, command: str, **args: Any) -> Any:
    """One request to the lab appliance's control socket; the reply's result."""
    from appliance.io.control import control_call

    reply = control_call(lab.state / "control.sock", command, **args)
    assert reply.get("ok"), reply
    return reply.get("result")


def ruleset(lab: Lab) -> list[str]:
    """The host namespace's iptables and ip6tables rules, without counters or dates."""
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        for line in lab.run_in("host", tool).stdout.splitlines():
            if line.startswith("#"):
                continue
            out.append(re.sub(r"\[\d+:\d+\]", "", line))
    return out


def nfqueue_counters(lab: Lab) -> dict[int, dict[str, int]]:
    """Per queue, from the host namespace's /proc/net/netfilter/nfnetlink_queue:
    packets waiting for a verdict, dropped because the queue was full, and the id
    sequence (packets queued since the queue was bound)."""
    text = lab.run_in("host", "cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 8 and f[0].isdigit():
            out[int(f[0])] = {"waiting": int(f[2]), "dropped": int(f[5]),
                              "user_dropped": int(f[6]), "seq": int(f[7])}
    return out


# Runs in the internet namespace: records (sequence, send time, receive time) of every
# numbered datagram until SIGTERM or the time limit, then writes them to a JSON file.
_UDP_SINK = r"""
import json, signal, socket, sys, time
port, secs, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: bursts of thousands
s.bind(("203.0.113.10", port))
s.settimeout(0.1)
got, stop = [], []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print("ready", flush=True)
end = time.monotonic() + secs
while not stop and time.monotonic() < end:
    try:
        d = s.recv(64)
    except (TimeoutError, InterruptedError):
        continue
    seq, sent = d.split()
    got.append((int(seq), float(sent), time.time()))
with open(out, "w") as f:
    json.dump(got, f)
"""

# Runs in a guest: COUNT numbered datagrams (sequence and wall-clock send time), one
# every INTERVAL seconds (0: as fast as possible).
_UDP_SOURCE = r"""
import socket, sys, time
port, first, count, interval = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
nxt = time.monotonic()
for i in range(first, first + count):
    try:
        s.sendto(b"%d %.6f" % (i, time.time()), ("203.0.113.10", port))
    except OSError:
        pass
    if interval:
        nxt += interval
        if nxt > time.monotonic():
            time.sleep(nxt - time.monotonic())
"""


class UdpProbe:
    """Numbered UDP datagrams from a guest to the lab's internet server, each stamped
    with its send time; the receiver stamps arrivals. Shows when traffic stopped and
    resumed across a fault. Bounded: the receiver stops after `seconds` at most."""

    def __init__(self, lab: Lab, tmp: Path, port: int = 7009, seconds: float = 60) -> None:
        self.lab = lab
        self.port = port
        self.out = tmp / f"udp-{port}.json"
        self.sink = subprocess.Popen(
            lab.exec_argv("internet", [sys.executable, "-c", _UDP_SINK, str(port),
                                       str(seconds), str(self.out)]),
            stdout=subprocess.PIPE, text=True)
        assert self.sink.stdout is not None
        assert self.sink.stdout.readline().strip() == "ready"
        self._got: list[tuple[int, float, float]] | None = None

    def send(self, first: int, count: int, interval: float,
             guest: str = "desktop") -> subprocess.Popen[bytes]:
        """Start sending in the background (wait() on the result to finish)."""
        return subprocess.Popen(self.lab.exec_argv(guest, [
            sys.executable, "-c", _UDP_SOURCE, str(self.port), str(first), str(count),
            str(interval)]))

    def received(self) -> list[tuple[int, float, float]]:
        """Stops the receiver (once) and returns (seq, sent, received) per datagram."""
        if self._got is None:
            self.sink.terminate()
            self.sink.wait(timeout=10)
            self._got = [tuple(x) for x in json.loads(self.out.read_text())]  # type: ignore[misc]
        return self._got

    def close(self) -> None:
        if self.sink.poll() is None:
            self.sink.kill()
            self.sink.wait(timeout=5)


def load_bench(name: str) -> Any:
    """A script of bench/ as a module, for the short CI versions of the benches (they
    share their code with the bench). bench/ goes at the end of sys.path, so its
    scripts find each other without shadowing anything."""
    import importlib

    bench = str(REPO / "bench")
    if bench not in sys.path:
        sys.path.append(bench)
    return importlib.import_module(name)
