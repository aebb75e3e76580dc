"""Fixtures for inline tests on the lab (network namespaces; root only).

Every test gets its own lab prefix, brings it down afterwards (also on failure), and
sends traffic only between the lab's namespaces.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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
