"""Run as an unprivileged user that keeps only the capabilities it needs.

`appliance run` needs two capabilities, nothing else of root:

    CAP_NET_ADMIN  bind NFQUEUE queues (nfnetlink), install iptables/ebtables chains and
                   ipset sets (nf_tables netlink), tc qdiscs and filters (rtnetlink), and
                   write the net.bridge.* sysctls of its own network namespace.
    CAP_NET_RAW    send reject frames on a bridge port (AF_PACKET, SOCK_RAW); the legacy
                   iptables/ebtables binaries also talk to the kernel over a raw socket.

Started by systemd, the unit already runs as the `appliance` user with exactly these
capabilities (AmbientCapabilities=), and `drop_privileges` only checks that (or narrows a
wider set). Started by hand as root,
`drop_privileges` switches user and keeps the capabilities across setuid():

    1. PR_CAPBSET_DROP every other capability (needs CAP_SETPCAP, so before step 4);
    2. PR_SET_KEEPCAPS, so setuid() keeps the permitted set (capabilities(7));
    3. setgroups/setresgid/setresuid to the user;
    4. capset(): effective = permitted = inheritable = the wanted set;
    5. raise them as *ambient* capabilities, so the iptables, ipset, ebtables and tc
       subprocesses the daemon runs get them too (an unprivileged execve() otherwise
       clears them); then PR_SET_NO_NEW_PRIVS.

Capabilities are per thread on Linux: call this while the process has one thread (before
the control socket's thread starts), and before forking workers, which inherit it.

ctypes on glibc's prctl() and capset(): no dependency, and the kernel ABI it relies on
(_LINUX_CAPABILITY_VERSION_3, two 32-bit words per set) has been stable since Linux 2.6.26.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import threading
from pathlib import Path
from typing import Final, TypedDict

from appliance.errors import ApplianceError

# linux/capability.h, in bit order. Unknown bits (a newer kernel) show as CAP_<n>.
CAP_NAMES: Final = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
CAP_BITS: Final = {name: bit for bit, name in enumerate(CAP_NAMES)}
# What `appliance run` keeps (see the module docstring for why each).
DAEMON_CAPS: Final = ("CAP_NET_ADMIN", "CAP_NET_RAW")
DEFAULT_USER: Final = "appliance"

# linux/prctl.h
_PR_SET_KEEPCAPS: Final = 8
_PR_CAPBSET_DROP: Final = 24
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_RAISE: Final = 2
_PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_CAP_VERSION_3: Final = 0x20080522


class PrivilegeError(ApplianceError):
    """Switching user or capabilities failed, or was asked of a process that cannot."""


class ProcCaps(TypedDict):
    """Credentials of a process as /proc/PID/status shows them."""

    uid: tuple[int, int, int, int]  # real, effective, saved, filesystem
    gid: tuple[int, int, int, int]
    groups: tuple[int, ...]
    CapInh: frozenset[str]
    CapPrm: frozenset[str]
    CapEff: frozenset[str]
    CapBnd: frozenset[str]
    CapAmb: frozenset[str]
    masks: dict[str, int]  # the raw bit masks of the five sets
    no_new_privs: bool


def cap_names(mask: int) -> frozenset[str]:
    out = set()
    bit = 0
    while mask >> bit:
        if mask >> bit & 1:
            out.add(CAP_NAMES[bit] if bit < len(CAP_NAMES) else f"CAP_{bit}")
        bit += 1
    return frozenset(out)


def cap_mask(names: list[str] | tuple[str, ...]) -> int:
    mask = 0
    for n in names:
        key = n.upper() if n.upper().startswith("CAP_") else f"CAP_{n.upper()}"
        if key not in CAP_BITS:
            raise PrivilegeError(f"unknown capability {n!r}")
        mask |= 1 << CAP_BITS[key]
    return mask


def parse_status(text: str) -> ProcCaps:
    """Parse the credential lines of a /proc/PID/status text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, val = line.partition(":")
        if sep:
            fields[key] = val.strip()

    def ids(key: str) -> tuple[int, int, int, int]:
        a, b, c, d = (int(x) for x in fields[key].split())
        return (a, b, c, d)

    masks = {k: int(fields.get(k, "0"), 16)
             for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    return ProcCaps(
        uid=ids("Uid"), gid=ids("Gid"),
        groups=tuple(int(g) for g in fields.get("Groups", "").split()),
        CapInh=cap_names(masks["CapInh"]), CapPrm=cap_names(masks["CapPrm"]),
        CapEff=cap_names(masks["CapEff"]), CapBnd=cap_names(masks["CapBnd"]),
        CapAmb=cap_names(masks["CapAmb"]), masks=masks,
        no_new_privs=fields.get("NoNewPrivs", "0") == "1",
    )


def current_caps() -> ProcCaps:
    """This process's user, groups and capability sets, from /proc/self/status."""
    return parse_status(Path("/proc/self/status").read_text())


def has_caps(names: list[str] | tuple[str, ...]) -> bool:
    """Whether this process may do what `names` allow right now (effective set)."""
    want = cap_mask(names)
    return current_caps()["masks"]["CapEff"] & want == want


# -- the system calls --------------------------------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    libc.prctl.restype = ctypes.c_int
    libc.capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
    libc.capset.restype = ctypes.c_int
    return libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"{what}: {os.strerror(err)}")


def _prctl(libc: ctypes.CDLL, op: int, a: int = 0, b: int = 0, what: str = "prctl") -> None:
    _check(libc.prctl(op, a, b, 0, 0), what)


def _capset(libc: ctypes.CDLL, mask: int) -> None:
    hdr = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = data[i].inheritable = word
    _check(libc.capset(ctypes.byref(hdr), data), "capset")


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return len(CAP_NAMES) - 1


def drop_privileges(user: str, caps: list[str]) -> None:
    """Become `user` holding exactly `caps` (effective, permitted, inheritable, ambient).

    As root: switch user and keep `caps`. As `user` already (e.g. under systemd): narrow
    the capability sets to `caps`, which needs no privilege. Raises PrivilegeError when
    neither applies, when a wanted capability is not available, or when the result is not
    exactly what was asked for.
    """
    want = cap_mask(caps)
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"no such user {user!r} (create it: useradd --system "
                             f"--no-create-home --shell /usr/sbin/nologin {user})") from None
    if threading.active_count() > 1:
        raise PrivilegeError("drop_privileges must run before any thread starts "
                             "(capabilities are per thread)")
    before = current_caps()
    if before["masks"]["CapPrm"] & want != want:
        missing = sorted(cap_names(want & ~before["masks"]["CapPrm"]))
        raise PrivilegeError(f"cannot keep {', '.join(missing)}: not in the permitted set")
    libc = _libc()
    m = before["masks"]
    if (before["uid"] == (pw.pw_uid,) * 4 and pw.pw_uid != 0
            and m["CapEff"] == m["CapPrm"] == m["CapInh"] == m["CapAmb"] == want):
        # Already so (systemd's User= and AmbientCapabilities=): no capset(), which the
        # unit's system call filter denies (it is in @privileged).
        _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
        return
    if os.geteuid() == 0 and pw.pw_uid != 0:
        for bit in range(_last_cap() + 1):
            if not want >> bit & 1:
                _prctl(libc, _PR_CAPBSET_DROP, bit, what=f"drop {cap_names(1 << bit)} "
                       "from the bounding set")
        _prctl(libc, _PR_SET_KEEPCAPS, 1, what="PR_SET_KEEPCAPS")
        os.initgroups(user, pw.pw_gid)
        os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
        os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
        _prctl(libc, _PR_SET_KEEPCAPS, 0, what="PR_SET_KEEPCAPS")
        os.environ.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
    elif os.geteuid() != pw.pw_uid:
        raise PrivilegeError(f"running as uid {os.geteuid()}: only root can become {user!r}")
    _capset(libc, want)
    _prctl(libc, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, what="clear ambient caps")
    for bit in range(_last_cap() + 1):
        if want >> bit & 1:
            _prctl(libc, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, bit,
                   what=f"raise ambient {cap_names(1 << bit)}")
    _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
    after = current_caps()
    if after["uid"] != (pw.pw_uid,) * 4 or after["masks"]["CapEff"] != want:
        raise PrivilegeError(f"after dropping: uid {after['uid']}, effective "
                             f"{sorted(after['CapEff'])}; wanted {user} with {sorted(caps)}")


def chown_for(user: str, *paths: str | Path) -> None:
    """Give `paths` (directories made if missing) to `user`, before dropping to it."""
    pw = pwd.getpwnam(user)
    for p in paths:
        path = Path(p)
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, pw.pw_uid, pw.pw_gid)
