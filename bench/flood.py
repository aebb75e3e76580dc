"""A spoofed SYN flood through the appliance on the lab, with a transfer running.

    .venv/bin/python bench/flood.py [--sources 200000] [--rate 0] [--memcap 4mb]
                                    [--transfer-rate 50] [--queues 1] [--rules PATH]...

From the desktop namespace, SYNs to the internet server's port 80 from `--sources`
distinct spoofed addresses (10.200.0.0/14 above 10.200.1.0: addresses that exist in no
namespace, so the server has no route to answer them and nothing leaves the lab; the
desktop's only link is the lab bridge), at `--rate` packets/s (0: as fast as one Python
sender with a raw socket goes). Meanwhile a download started before the flood runs at
`--transfer-rate` MB/s (bypassed after its headers, as bulk downloads are), and the proxy
opens a new connection to the server 0.3 s into the flood. The appliance runs with a
small flow memcap (`--memcap`) and no guest roles, so the flood meets the flow table's
limit and nothing else.

Prints: SYNs sent and their rate; packets the worker(s) gave a verdict and the kernel
queue's drops; the flow memcap, the most flows and flow memory seen (worker reports, once
a second), emergency mode entered/left and how long after the flood it was left; the
transfer's throughput before and during the flood and their ratio; the new
connection's time to success; worker RSS. Needs root. The machine may be shared:
figures are indicative.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.io.control import ControlError, control_call
from appliance.lab import Lab

REPO = Path(__file__).resolve().parents[1]
SERVER = "203.0.113.10"

# Runs in a guest namespace: COUNT SYNs from distinct sources 10.200.1.0 + i (a /14:
# up to 261,888 of them), built with struct (the TCP checksum is updated for each
# source, the kernel fills in the IP checksum), paced to RATE packets/s (0: no pacing).
# Prints {"sent": n, "seconds": s}.
SYN_SENDER = r"""
import json, socket, struct, sys, time
count, rate = int(sys.argv[1]), float(sys.argv[2])
dst = socket.inet_aton("203.0.113.10")
first = 0x0AC80100  # 10.200.1.0
assert count <= 0x0ACC0000 - first, "more sources than 10.200.0.0/14 holds"
tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
words = lambda b: sum(struct.unpack("!%dH" % (len(b) // 2), b))
partial = words(dst) + 6 + len(tcp) + words(tcp)  # pseudo-header and header, no source
ip = struct.pack("!BBHHHBBH", 0x45, 0, 40, 0, 0, 64, 6, 0)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
u32, u16 = struct.Struct("!I").pack, struct.Struct("!H").pack
sent = 0
t0 = time.monotonic()
for i in range(count):
    src = first + i
    c = partial + (src >> 16) + (src & 0xFFFF)
    c = (c & 0xFFFF) + (c >> 16)
    c = (c & 0xFFFF) + (c >> 16)
    try:
        s.sendto(ip + u32(src) + dst + tcp[:16] + u16(~c & 0xFFFF) + tcp[18:],
                 ("203.0.113.10", 0))
        sent += 1
    except OSError:
        pass  # ENOBUFS under pressure: not sent, not counted
    if rate and i % 64 == 0:
        ahead = t0 + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}))
"""

# Runs in a guest namespace: downloads /bulk/ at most RATE bytes/s for at most SECS s
# (or until SIGTERM) and writes (wall time, bytes so far) samples, one per 0.1 s.
TRANSFER = r"""
import json, signal, socket, sys, time
rate, secs, out = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
s = socket.create_connection(("203.0.113.10", 80), 5)
s.sendall(b"GET /bulk/1073741824 HTTP/1.1\r\nHost: lab\r\n\r\n")
s.settimeout(0.1)
got, samples, t0 = 0, [], time.monotonic()
next_sample = t0
while not stop and time.monotonic() - t0 < secs:
    try:
        d = s.recv(65536)
    except (TimeoutError, InterruptedError):
        d = None
    if d == b"":
        break
    if d:
        got += len(d)
    now = time.monotonic()
    if now >= next_sample:
        samples.append((time.time(), got))
        next_sample = now + 0.1
    ahead = t0 + got / rate - time.monotonic()
    if ahead > 0:
        time.sleep(min(ahead, 0.1))
samples.append((time.time(), got))
with open(out, "w") as f:
    json.dump(samples, f)
"""


def rss_mib(pid: int) -> float:
    """Resident memory of one process (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def status(lab: Lab) -> dict[str, Any] | None:
    try:
        reply = control_call(lab.state / "control.sock", "status", timeout=3)
    except (ControlError, OSError):
        return None
    result = reply.get("result") if reply.get("ok") else None
    return result if isinstance(result, dict) else None


def nfqueue_drops(lab: Lab) -> int:
    """Packets the kernel dropped at our queues (full, or the socket's buffer full)."""
    text = lab.run_in("host", "cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    return sum(int(f[5]) + int(f[6]) for f in map(str.split, text.splitlines())
               if len(f) >= 7)


class Sampler:
    """Polls the daemon's status every `period` s in a thread (bounded by stop())."""

    def __init__(self, lab: Lab, period: float = 0.25) -> None:
        self.lab = lab
        self.period = period
        self.samples: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            st = status(self.lab)
            if st is not None:
                self.samples.append((time.time(), st))

    def last(self) -> dict[str, Any]:
        return self.samples[-1][1] if self.samples else {}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def wait_status(lab: Lab, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status(lab)
        if st is not None and st["traffic"].get("flow"):
            return st
        time.sleep(0.2)
    raise SystemExit("the appliance's control socket did not answer")


def throughput(samples: list[tuple[float, int]], t0: float, t1: float) -> float:
    """MB/s between two wall-clock times, from (time, bytes so far) samples."""
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return 0.0
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]) / 1e6


def run_flood(lab: Lab, start: Callable[..., Any], tmp: Path, *, sources: int, rate: float,
              memcap: str, transfer_rate: float = 0.0, before: float = 3.0,
              queues: int = 1, recover_timeout: float = 30.0) -> dict[str, Any]:
    """One flood against a started appliance; returns the figures (see the module doc).
    `start(*args)` starts the appliance on the lab with these extra options."""
    cfg = tmp / "flood.yaml"
    cfg.write_text(f"flow:\n  memcap: {memcap}\n")
    pol = tmp / "flood-policy.yaml"
    pol.write_text("guests: []\n")  # no roles: the flood meets the flow table only
    app = start("--config", str(cfg), "--policy", str(pol), "--no-scan", "--queues",
                str(queues), "--stats-interval", "1")
    wait_status(lab)
    transfer = None
    samples_path = tmp / "transfer.json"
    if transfer_rate > 0:
        transfer = subprocess.Popen(lab.exec_argv("desktop", [
            sys.executable, "-c", TRANSFER, str(transfer_rate * 1e6),
            str(before + 120), str(samples_path)]))
        time.sleep(before)
    else:
        time.sleep(1.2)  # a first worker report
    sampler = Sampler(lab)
    base = status(lab) or {}
    drops0 = nfqueue_drops(lab)
    t0 = time.time()
    flood = subprocess.Popen(lab.exec_argv("desktop", [
        sys.executable, "-c", SYN_SENDER, str(sources), str(rate)]),
        stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    t_connect = time.time()
    conn = subprocess.run(lab.exec_argv("proxy", [
        "curl", "-s", "-o", "/dev/null", "-m", "10", "-w", "%{http_code} %{time_total}",
        f"http://{SERVER}/"]), capture_output=True, text=True, timeout=30)
    out, _ = flood.communicate(timeout=600)
    t1 = time.time()
    drops = nfqueue_drops(lab) - drops0
    sent = json.loads(out)
    rss = max((rss_mib(w) for w in children(app.proc.pid)), default=0.0)
    # Emergency mode is left once flows age out below the recovery mark.
    deadline = time.monotonic() + recover_timeout
    t_left = None
    while time.monotonic() < deadline:
        fl = sampler.last().get("traffic", {}).get("flow", {})
        if fl.get("emerg_mode_over", 0) >= 1 and fl.get("emergency", 1) == 0:
            t_left = time.time()
            break
        time.sleep(0.2)
    sampler.stop()
    final = status(lab) or sampler.last()
    before_tp = during_tp = 0.0
    ended_early = False
    if transfer is not None:
        transfer.terminate()
        transfer.wait(timeout=10)
        tr = [tuple(x) for x in json.loads(samples_path.read_text())]
        before_tp = throughput(tr, t0 - before + 0.5, t0)  # type: ignore[arg-type]
        during_tp = throughput(tr, t0, t1)  # type: ignore[arg-type]
        # The download is 1 GiB: at a high --transfer-rate it may end before the flood.
        ended_early = bool(tr) and tr[-1][0] < t1
    flows = [s["traffic"]["flow"] for _, s in sampler.samples]
    code, secs = [*conn.stdout.split(), "", ""][:2]
    packets = final["traffic"]["packets"] - base.get("traffic", {}).get("packets", 0)
    return {
        "sources": sources,
        "sent": sent["sent"],
        "flood_seconds": sent["seconds"],
        "sent_rate": sent["sent"] / sent["seconds"] if sent["seconds"] else 0.0,
        "verdicts_during": packets,
        "queue_drops": drops,
        "memcap": final["traffic"]["flow"]["memcap"],
        "max_flows_seen": max((f["active"] for f in flows), default=0),
        "max_memuse": max((f["memuse"] for f in flows), default=0),
        "memuse_samples": [f["memuse"] for f in flows],
        "active_samples": [f["active"] for f in flows],
        "emergency_entered": final["traffic"]["flow"]["emerg_mode_entered"],
        "emergency_left": final["traffic"]["flow"]["emerg_mode_over"],
        "emergency_left_after_flood": None if t_left is None else t_left - t1,
        "transfer_before_mbs": before_tp,
        "transfer_during_mbs": during_tp,
        "transfer_ratio": during_tp / before_tp if before_tp else None,
        "transfer_ended_early": ended_early,
        "new_connection_code": code,
        "new_connection_seconds": float(secs) if code == "200" else None,
        "new_connection_started_after_flood": t_connect - t0,
        "worker_rss_mib": rss,
        "worker_restarts": final.get("worker_restarts", 0),
    }


def report(fig: dict[str, Any]) -> str:
    ratio = fig["transfer_ratio"]
    conn = fig["new_connection_seconds"]
    left = fig["emergency_left_after_flood"]
    return "\n".join([
        f"SYN flood: {fig['sent']:,} SYNs from {fig['sources']:,} spoofed sources in "
        f"{fig['flood_seconds']:.2f} s = {fig['sent_rate']:,.0f} SYN/s sent",
        f"  worker verdicts during the flood: {fig['verdicts_during']:,}; kernel queue "
        f"drops: {fig['queue_drops']:,}",
        f"  flow memcap {fig['memcap']:,} B; most flows seen {fig['max_flows_seen']:,}, "
        f"most flow memory {fig['max_memuse']:,} B "
        f"({fig['max_memuse'] / fig['memcap']:.0%} of the memcap)",
        f"  emergency mode entered {fig['emergency_entered']} time(s), left "
        f"{fig['emergency_left']} time(s)"
        + (f", {left:.1f} s after the flood" if left is not None else ", not left"),
        f"  established transfer: {fig['transfer_before_mbs']:.1f} MB/s before, "
        f"{fig['transfer_during_mbs']:.1f} MB/s during"
        + (f" ({ratio:.0%})" if ratio is not None else "")
        + (" (the 1 GiB download ended before the flood did: lower --transfer-rate)"
           if fig["transfer_ended_early"] else ""),
        f"  new connection {fig['new_connection_started_after_flood']:.1f} s into the flood: "
        + (f"succeeded in {conn:.3f} s" if conn is not None
           else f"failed (curl: {fig['new_connection_code'] or 'no answer'})"),
        f"  worker RSS {fig['worker_rss_mib']:.0f} MiB; worker restarts "
        f"{fig['worker_restarts']}",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", type=int, default=200_000)
    ap.add_argument("--rate", type=float, default=0, help="SYN/s; 0: as fast as possible")
    ap.add_argument("--memcap", default="4mb", help="flow.memcap for the run")
    ap.add_argument("--transfer-rate", type=float, default=50.0, help="MB/s")
    ap.add_argument("--queues", type=int, default=1)
    ap.add_argument("--rules", action="append", default=None)
    ap.add_argument("--json", action="store_true", help="Print the figures as JSON too.")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from labrun import lab_with_appliances

    rules = a.rules or [str(REPO / "rules")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    with lab_with_appliances("bfl-", rules, tmp / "eve.json") as (lab, start):
        fig = run_flood(lab, start, tmp, sources=a.sources, rate=a.rate, memcap=a.memcap,
                        transfer_rate=a.transfer_rate, queues=a.queues)
        print(f"rules: {', '.join(rules)}; flow memcap {a.memcap}; {a.queues} queue(s); "
              "machine shared, figures indicative")
        print(report(fig))
        if a.json:
            print(json.dumps({k: v for k, v in fig.items() if not k.endswith("_samples")}))


if __name__ == "__main__":
    main()
