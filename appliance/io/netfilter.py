"""The appliance's own iptables/ip6tables chains: bridged traffic of one bridge to NFQUEUE.

    filter FORWARD -i BR -o BR -m physdev --physdev-is-bridged -j APL-BR
    filter APL-BR  -m connmark --mark BYPASS/BYPASS -j ACCEPT     (bypassed connections)
                   -m connmark --mark ORIG/ORIG -m conntrack --ctdir ORIGINAL -j ACCEPT
                   -m connmark --mark REPLY/REPLY -m conntrack --ctdir REPLY -j ACCEPT
                                                      (one bypassed direction of a connection)
                   -m connmark --mark ORIG/ORIG -m conntrack --ctdir REPLY -m bpf PURE_ACK
                   -j ACCEPT (and the pure ACKs answering it; likewise REPLY/ORIGINAL)
                   -j NFQUEUE --queue-balance 0:N-1 [--queue-bypass]
    mangle APL-BR-SAVE (from POSTROUTING, only for packets with one of our marks): a
                   packet accepted with the bypass mark saves it on its connection
                   (CONNMARK --save-mark), so the kernel stops queueing it; one with the
                   direction mark sets ORIG or REPLY on its connection, by the
                   direction it travels (conntrack's, whoever the engine calls client).

Installing first removes whatever an earlier (crashed) run left under the same names.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Final

from appliance.errors import ApplianceError

BYPASS_MARK: Final = 0x00010000
# A packet with this mark bypasses its direction of the connection only: the mangle
# chain turns it into the connection's ORIG or REPLY bit.
DIRECTION_MARK: Final = 0x00020000
CT_ORIG_MARK: Final = 0x00040000
CT_REPLY_MARK: Final = 0x00080000
TOOLS: Final = ("iptables", "ip6tables")


def _bpf(prog: list[tuple[int, int, int, int]]) -> str:
    """A classic BPF program as xt_bpf's --bytecode string."""
    return ",".join([str(len(prog)), *(f"{c} {jt} {jf} {k}" for c, jt, jf, k in prog)])


# A TCP pure ACK: ACK set, SYN/FIN/RST/URG clear (PSH, ECE, CWR ignored), no payload, not
# a fragment. Classic BPF on the packet from its IP header (what xt_bpf sees). Such
# packets carry no bytes to inspect: once the other direction of their connection is
# bypassed, they need not cross the queue either (a one-way bulk transfer's ACK clock
# then runs at bridge speed). Anything else, FIN and RST included, is still queued.
PURE_ACK_V4: Final = _bpf([
    (0x30, 0, 0, 9),  # ldb [9]: protocol
    (0x15, 0, 15, 6),  # TCP, else no
    (0x28, 0, 0, 6),  # ldh [6]: flags and fragment offset
    (0x45, 13, 0, 0x1FFF),  # a non-first fragment: no
    (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): X = IP header length
    (0x50, 0, 0, 13),  # ldb [x+13]: TCP flags
    (0x54, 0, 0, 0x37),  # and URG|ACK|RST|SYN|FIN
    (0x15, 0, 9, 0x10),  # only ACK, else no
    (0x50, 0, 0, 12),  # ldb [x+12]: data offset
    (0x54, 0, 0, 0xF0),
    (0x74, 0, 0, 2),  # TCP header length
    (0x0C, 0, 0, 0),  # add x: both headers
    (0x02, 0, 0, 0),  # st M[0]
    (0x28, 0, 0, 2),  # ldh [2]: total length
    (0x61, 0, 0, 0),  # ldx M[0]
    (0x1D, 0, 1, 0),  # total length == headers: no payload
    (0x06, 0, 0, 0xFFFF),  # yes
    (0x06, 0, 0, 0),  # no
])
PURE_ACK_V6: Final = _bpf([
    (0x30, 0, 0, 6),  # ldb [6]: next header (a TCP header right after IPv6's only)
    (0x15, 0, 11, 6),
    (0x30, 0, 0, 53),  # ldb [40+13]: TCP flags
    (0x54, 0, 0, 0x37),
    (0x15, 0, 8, 0x10),
    (0x30, 0, 0, 52),  # ldb [40+12]: data offset
    (0x54, 0, 0, 0xF0),
    (0x74, 0, 0, 2),
    (0x02, 0, 0, 0),  # st M[0]
    (0x28, 0, 0, 4),  # ldh [4]: payload length
    (0x61, 0, 0, 0),  # ldx M[0]
    (0x1D, 0, 1, 0),  # payload length == TCP header length
    (0x06, 0, 0, 0xFFFF),
    (0x06, 0, 0, 0),
])


class NetfilterError(ApplianceError):
    pass


def _ipt(tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        cp = subprocess.run([tool, "-w", "5", *args], capture_output=True, text=True,
                            timeout=30)
    except FileNotFoundError:
        raise NetfilterError(f"{tool} not found: install the iptables package") from None
    if check and cp.returncode != 0:
        raise NetfilterError(f"{tool} {' '.join(args)}: {cp.stderr.strip()}")
    return cp


@dataclass(frozen=True)
class Chains:
    bridge: str
    queues: int = 1
    fail_open: bool = False
    bypass_mark: int = BYPASS_MARK

    @property
    def chain(self) -> str:
        return f"APL-{self.bridge}"[:28]  # iptables chain names hold 28 characters

    @property
    def save_chain(self) -> str:
        return f"APL-{self.bridge}-SAVE"[:28]

    def _jump(self) -> list[str]:
        return ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-m", "physdev",
                "--physdev-is-bridged", "-j", self.chain]

    def _save_jump(self) -> list[str]:
        # Only packets carrying one of our marks have anything to save: the mark test
        # first spares every other bridged packet (bypassed bulk traffic included) the
        # physdev match and the chain's rules.
        ours = self.bypass_mark | DIRECTION_MARK
        return ["POSTROUTING", "-m", "mark", "!", "--mark", f"0x0/{ours:#x}", "-m", "physdev",
                "--physdev-is-bridged", "-j", self.save_chain]

    def queue_target(self) -> list[str]:
        if self.queues > 1:
            q = ["--queue-balance", f"0:{self.queues - 1}"]
        else:
            q = ["--queue-num", "0"]
        return ["-j", "NFQUEUE", *q, *(["--queue-bypass"] if self.fail_open else [])]

    def install(self) -> None:
        """All or nothing: if a rule cannot be installed, what was installed before it is
        removed again (a queue jump with no worker behind it would drop the bridge's
        traffic) and the error is raised."""
        self.remove()
        try:
            self._install()
        except BaseException:
            self.remove()
            raise

    def _install(self) -> None:
        m = f"{self.bypass_mark:#x}/{self.bypass_mark:#x}"
        for tool in TOOLS:
            _ipt(tool, "-t", "filter", "-N", self.chain)
            _ipt(tool, "-t", "filter", "-A", self.chain, "-m", "connmark", "--mark", m,
                 "-j", "ACCEPT")
            ack = PURE_ACK_V4 if tool == "iptables" else PURE_ACK_V6
            for bit, ctdir, other in ((CT_ORIG_MARK, "ORIGINAL", "REPLY"),
                                      (CT_REPLY_MARK, "REPLY", "ORIGINAL")):
                mark = ["-m", "connmark", "--mark", f"{bit:#x}/{bit:#x}"]
                _ipt(tool, "-t", "filter", "-A", self.chain, *mark, "-m", "conntrack",
                     "--ctdir", ctdir, "-j", "ACCEPT")
                _ipt(tool, "-t", "filter", "-A", self.chain, *mark, "-m", "conntrack",
                     "--ctdir", other, "-m", "bpf", "--bytecode", ack, "-j", "ACCEPT")
            _ipt(tool, "-t", "filter", "-A", self.chain, *self.queue_target())
            _ipt(tool, "-t", "filter", "-I", *self._jump())
            _ipt(tool, "-t", "mangle", "-N", self.save_chain)
            _ipt(tool, "-t", "mangle", "-A", self.save_chain, "-m", "mark", "--mark", m,
                 "-j", "CONNMARK", "--save-mark", "--nfmask", f"{self.bypass_mark:#x}",
                 "--ctmask", f"{self.bypass_mark:#x}")
            d = f"{DIRECTION_MARK:#x}/{DIRECTION_MARK:#x}"
            for bit, ctdir in ((CT_ORIG_MARK, "ORIGINAL"), (CT_REPLY_MARK, "REPLY")):
                _ipt(tool, "-t", "mangle", "-A", self.save_chain, "-m", "mark", "--mark", d,
                     "-m", "conntrack", "--ctdir", ctdir, "-j", "CONNMARK", "--or-mark",
                     f"{bit:#x}")
            _ipt(tool, "-t", "mangle", "-I", *self._save_jump())

    def remove(self) -> None:
        """Delete every rule and chain of ours (idempotent; used at start and exit).
        Jumps are found by their target, whatever their matches: a run of an earlier
        version (a crashed one included) may have written them differently, and a jump
        left behind would keep its chain from being deleted and recreated."""
        for tool in TOOLS:
            for table, builtin, chain in (("filter", "FORWARD", self.chain),
                                          ("mangle", "POSTROUTING", self.save_chain)):
                listed = _ipt(tool, "-t", table, "-S", builtin, check=False).stdout
                for line in listed.splitlines():
                    words = line.split()
                    if words[:2] == ["-A", builtin] and words[-2:] == ["-j", chain]:
                        _ipt(tool, "-t", table, "-D", *words[1:], check=False)
            for table, chain in (("filter", self.chain), ("mangle", self.save_chain)):
                _ipt(tool, "-t", table, "-F", chain, check=False)
                _ipt(tool, "-t", table, "-X", chain, check=False)

    def present(self) -> list[str]:
        """Our rules as iptables-save prints them (empty when nothing is installed)."""
        out = []
        for tool in TOOLS:
            for table in ("filter", "mangle"):
                cp = _ipt(tool, "-t", table, "-S", check=False)
                out += [f"{tool} {table} {ln}" for ln in cp.stdout.splitlines()
                        if self.chain in ln]
        return out


def bridge_sysctls(set_them: bool = True) -> dict[str, str]:
    """Check (and set) what makes bridged packets traverse iptables (br_netfilter)."""
    from pathlib import Path

    base = Path("/proc/sys/net/bridge")
    if not base.exists():
        raise NetfilterError("br_netfilter is not loaded: /proc/sys/net/bridge is missing "
                             "(modprobe br_netfilter)")
    got = {}
    for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables",
                 "bridge-nf-filter-vlan-tagged"):
        p = base / name
        val = p.read_text().strip()
        if val != "1" and set_them:
            try:
                p.write_text("1\n")
            except OSError as e:
                raise NetfilterError(f"cannot set net.bridge.{name}=1: {e.strerror}") from None
            val = "1"
        got[name] = val
    return got
