"""The daemon started as root drops to an unprivileged user with only CAP_NET_ADMIN and
CAP_NET_RAW (checked in /proc), and still gives verdicts and applies actions."""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.daemon import python_unreadable_by
from appliance.lab import Lab
from appliance.privileges import CAP_BITS
from tests.e2e.test_triggers import POLICY, curl, reachable

USER = "nobody"


def status_of(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def test_daemon_runs_unprivileged_and_still_works(lab: Lab, start_appliance: Any,
                                                  tmp_path: Path) -> None:
    blocked = python_unreadable_by(USER)
    if blocked is not None:
        # e.g. a pyenv Python under /root: the daemon refuses to drop (it would fail to
        # import later) and says so; that refusal is checked instead.
        none = tmp_path / "none.yaml"
        none.write_text("guests: []\n")
        app = start_appliance("--policy", str(none), "--user", USER)
        assert "staying root" in app.log.read_text()
        pytest.skip(f"{blocked} is not readable by {USER}: the drop itself is not testable "
                    "with this Python installation")
    uid = pwd.getpwnam(USER).pw_uid
    pol = tmp_path / "policy.yaml"
    pol.write_text(POLICY)
    app = start_appliance("--policy", str(pol), "--user", USER)
    assert f"running as {USER}" in app.log.read_text(), app.log.read_text()
    want = (1 << CAP_BITS["CAP_NET_ADMIN"]) | (1 << CAP_BITS["CAP_NET_RAW"])
    for pid in [app.proc.pid, *app.workers()]:
        st = status_of(pid)
        assert st["Uid"].split()[:2] == [str(uid), str(uid)], st["Uid"]
        assert int(st["CapEff"], 16) == want, (pid, st["CapEff"])
        assert int(st["CapPrm"], 16) == want
    assert reachable(lab, "http://203.0.113.10/")  # verdicts
    assert curl(lab, "http://203.0.113.10/../../etc/passwd") == "rc28"
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and "quarantine desktop for" not in app.log.read_text():
        time.sleep(0.1)
    assert "quarantine desktop for 8 s" in app.log.read_text(), app.log.read_text()
    assert curl(lab, "http://203.0.113.10/") != "200"  # the action is in force
    assert os.stat(lab.state / "state" / "actions.db").st_uid == uid
