"""The lab: a VM host built from network namespaces, for the demo, e2e tests and benches.

Layout (the Vagrantfile builds the same with VMs):

    {P}desktop  10.203.0.10   fd00:203::10 ─┐
    {P}proxy    10.203.0.20   fd00:203::20 ─┤
    {P}sinkhole 10.203.0.99   fd00:203::99 ─┼─ br0 in {P}host (where the appliance runs)
    {P}gateway  10.203.0.1    fd00:203::1  ─┘
                203.0.113.1   2001:db8:113::1 ── {P}internet 203.0.113.10, 2001:db8:113::10
                                                  (HTTP on 80, DNS on 53)

Every address is inside namespaces the lab creates (documentation and ULA ranges);
nothing reaches outside. `down` removes every namespace (which removes their links) and
stops the services the lab started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from appliance import provision as _pv
from appliance.errors import ApplianceError

DEFAULT_PREFIX: Final = "apl-"
BRIDGE: Final = _pv.BRIDGE
STATE_ROOT: Final = Path("/run/appliance-lab")


class LabError(ApplianceError):
    pass


@dataclass(frozen=True)
class Guest:
    name: str
    v4: str
    v6: str


# The addresses are the provisioning code's (one topology for the lab and the VMs).
GUESTS: Final = tuple(Guest(name, a.v4, a.v6) for name, a in _pv.GUEST_ADDRS.items())
GATEWAY: Final = Guest("gateway", _pv.GATEWAY_LAN.v4, _pv.GATEWAY_LAN.v6)
INTERNET: Final = Guest("internet", _pv.INTERNET.v4, _pv.INTERNET.v6)
NAMES: Final = ("host", *(g.name for g in GUESTS), "gateway", "internet")


def _run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"{cmd[0]} not found (install iproute2/iptables)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(cmd)}: no answer in {timeout} s") from None
    if check and cp.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {cp.stderr.strip() or cp.stdout.strip()}")
    return cp


class Lab:
    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix or len(prefix) > 6 or not all(c.isalnum() or c == "-" for c in prefix):
            raise LabError(f"lab prefix {prefix!r}: 1-6 letters, digits or '-'")
        self.prefix = prefix
        self.state = STATE_ROOT / prefix

    def ns(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def host_ns(self) -> str:
        return self.ns("host")

    def exists(self) -> bool:
        out = _run("ip", "netns", "list", check=False).stdout
        return any(line.split()[0] == self.host_ns for line in out.splitlines() if line)

    # -- up / down -----------------------------------------------------------------------

    def up(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, veths, a bridge)")
        if self.exists():
            self.down()
        try:
            self._build()
        except BaseException:
            self.down()
            raise

    def _build(self) -> None:
        for name in NAMES:
            _run("ip", "netns", "add", self.ns(name))
            self.ipns(name, "link", "set", "lo", "up")
        # Cabling and addressing: the provisioning code the Vagrant VMs run too (the
        # same topology, bridge settings, addresses, routes and forwarding).
        _pv.build_lab(self.ns)
        self.state.mkdir(parents=True, exist_ok=True)
        self._start_services()
        self._wait_ready()

    def _start_services(self) -> None:
        pids: dict[str, int] = {}
        log = open(self.state / "services.log", "ab")  # noqa: SIM115 - handed to children
        for svc in ("http", "dns"):
            p = subprocess.Popen(
                ["ip", "netns", "exec", self.ns("internet"), sys.executable, "-m",
                 "appliance.lab_services", svc],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
            pids[svc] = p.pid
        log.close()
        (self.state / "services.json").write_text(json.dumps(pids))

    def _wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the internet's HTTP server answers (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cp = _run("ip", "netns", "exec", self.ns("internet"), sys.executable, "-c",
                      "import socket; socket.create_connection(('203.0.113.10', 80), 1)",
                      check=False)
            if cp.returncode == 0:
                return
            time.sleep(0.1)
        raise LabError("lab services did not start (see services.log in "
                       f"{self.state})")

    def down(self) -> None:
        pidfile = self.state / "services.json"
        if pidfile.exists():
            try:
                for pid in json.loads(pidfile.read_text()).values():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGTERM)
            except (ValueError, OSError):
                pass
        for name in NAMES:
            ns = self.ns(name)
            # Any process still inside (an appliance run, a test's client) goes first.
            pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.state, ignore_errors=True)

    # -- use -----------------------------------------------------------------------------

    def ipns(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return _run("ip", "-n", self.ns(name), *args)

    def exec_argv(self, name: str, argv: list[str]) -> list[str]:
        if name not in NAMES:
            raise LabError(f"no lab host {name!r} (hosts: {', '.join(NAMES)})")
        return ["ip", "netns", "exec", self.ns(name), *argv]

    def run_in(self, name: str, *argv: str, timeout: float = 30,
               check: bool = False) -> subprocess.CompletedProcess[str]:
        return _run(*self.exec_argv(name, list(argv)), check=check, timeout=timeout)

    def status(self) -> str:
        if not self.exists():
            return f"lab {self.prefix!r}: down"
        lines = [f"lab {self.prefix!r}: up"]
        links = self.ipns("host", "-br", "link", "show", "master", BRIDGE).stdout
        lines.append(f"bridge {BRIDGE} in {self.host_ns}, ports:")
        lines += [f"  {ln}" for ln in links.strip().splitlines()]
        for g in (*GUESTS, GATEWAY, INTERNET):
            lines.append(f"  {g.name:9s} {g.v4:15s} {g.v6}")
        return "\n".join(lines)
