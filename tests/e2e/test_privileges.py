"""drop_privileges() in a child process started as root: user, groups, capability sets.

The child runs inside a network namespace this test creates, so what it proves with its
kept CAP_NET_ADMIN (adding a veth pair, through an `ip` subprocess that inherits the
ambient capabilities) touches nothing outside the test.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.privileges import cap_mask, parse_status

REPO = Path(__file__).resolve().parents[2]
USER = "nobody"

CHILD = textwrap.dedent("""
    import json, socket, subprocess, sys
    from pathlib import Path
    from appliance.privileges import drop_privileges
    caps = json.loads(sys.argv[2])
    drop_privileges(sys.argv[1], caps)
    drop_privileges(sys.argv[1], caps)  # again, as under systemd: already so, a no-op
    out = {"self": Path("/proc/self/status").read_text()}
    # A child of ours: the ambient set carries the capabilities across execve().
    out["child"] = subprocess.run(["cat", "/proc/self/status"], capture_output=True,
                                  text=True, check=True).stdout
    link = subprocess.run(["ip", "link", "add", "aplpriv0", "type", "veth", "peer", "name", "aplpriv1"],
                          capture_output=True, text=True)
    out["ip_link_add"] = link.returncode
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
        out["af_packet"] = True
    except PermissionError:
        out["af_packet"] = False
    print(json.dumps(out))
""")


@pytest.fixture
def netns() -> Iterator[str]:
    if pwd.getpwnam(USER) is None:  # pragma: no cover - getpwnam raises instead
        pytest.skip(f"no user {USER}")
    name = f"aplpriv-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10)


def _drop_in_child(netns: str, caps: list[str]) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cp = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", CHILD, USER,
                         json.dumps(caps)], capture_output=True, text=True, timeout=30,
                        env=env, cwd="/")
    assert cp.returncode == 0, cp.stderr
    out: dict[str, object] = json.loads(cp.stdout)
    return out


@pytest.mark.parametrize("caps", [["CAP_NET_ADMIN", "CAP_NET_RAW"], ["CAP_NET_ADMIN"], []])
def test_drop_keeps_exactly_the_wanted_caps(netns: str, caps: list[str]) -> None:
    pw = pwd.getpwnam(USER)
    out = _drop_in_child(netns, caps)
    want = cap_mask(caps)
    for who in ("self", "child"):
        st = parse_status(str(out[who]))
        assert st["uid"] == (pw.pw_uid,) * 4, who
        assert st["gid"] == (pw.pw_gid,) * 4, who
        assert 0 not in st["groups"], who
        assert st["masks"]["CapEff"] == want, (who, sorted(st["CapEff"]))
        assert st["masks"]["CapPrm"] == want, who
        assert st["masks"]["CapAmb"] == want, who
        assert st["masks"]["CapBnd"] == want, who
        assert st["no_new_privs"], who
    print(f"{caps}: CapEff={parse_status(str(out['self']))['masks']['CapEff']:#x}")
    # What the capabilities are for, checked by doing it (inside the test's namespace).
    assert (out["ip_link_add"] == 0) == ("CAP_NET_ADMIN" in caps)
    assert out["af_packet"] == ("CAP_NET_RAW" in caps)


def test_unknown_user_and_capability_are_clear_errors(netns: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code = ("from appliance.privileges import drop_privileges, PrivilegeError\n"
            "import sys\n"
            "for u, c in ((sys.argv[1], ['CAP_NET_ADMIN']), ('nobody', ['CAP_NOPE'])):\n"
            "    try:\n"
            "        drop_privileges(u, c)\n"
            "    except PrivilegeError as e:\n"
            "        print(e)\n")
    user = f"apl-no-{uuid.uuid4().hex[:6]}"
    cp = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, user],
                        capture_output=True, text=True, timeout=30, env=env, cwd="/")
    assert cp.returncode == 0, cp.stderr
    assert f"no such user {user!r}" in cp.stdout
    assert "unknown capability 'CAP_NOPE'" in cp.stdout
