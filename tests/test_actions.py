"""ActionManager with the recording backend and a temporary SQLite database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.actions import ActionManager, Policy, control_handlers
from appliance.errors import ActionError
from appliance.io.actions import RecordingBackend
from appliance.io.control import Refused

T0 = 1_700_000_000.0
POLICY = Policy(
    allowlist=("10.203.0.1", "10.203.0.53", "gateway", "10.203.0.250/32"),
    guests={"10.203.0.10": "desktop", "10.203.0.20": "proxy", "10.203.0.1": "gateway"},
    sinkhole_port="sinkhole",
    sinkhole_ips=("10.203.0.99",),
    max_per_minute=3,
)
ALERT = {"signature_id": 2100498, "src_ip": "10.203.0.10", "signature": "test"}


def make(tmp_path: Path, backend: RecordingBackend | None = None,
         policy: Policy = POLICY) -> tuple[ActionManager, RecordingBackend]:
    b = backend or RecordingBackend()
    return ActionManager(b, tmp_path / "actions.db", tmp_path / "audit.json", policy), b


def audit(tmp_path: Path) -> list[dict[str, object]]:
    p = tmp_path / "audit.json"
    return [json.loads(ln) for ln in p.read_text().splitlines()] if p.exists() else []


def test_quarantine_applies_and_expires(tmp_path: Path) -> None:
    m, b = make(tmp_path)
    r = m.request("quarantine", "10.203.0.10", "sev1 alert", sid=2100498, alert=ALERT,
                  established=True, now=T0)
    assert r.applied, r.reason
    assert b.quarantined == {"desktop": ["10.203.0.99"]}
    assert r.record is not None and r.record.until == T0 + 600 and r.record.level == 0
    assert m.tick(T0 + 599) == []
    assert b.quarantined
    released = m.tick(T0 + 600)
    assert [x.applied for x in released] == [True]
    assert b.quarantined == {}
    assert m.active() == []
    rows = m.history()
    assert rows[0].released_at == T0 + 600


def test_redirect_and_block_use_the_backend(tmp_path: Path) -> None:
    m, b = make(tmp_path)
    assert m.request("redirect", "desktop", "r", established=True, now=T0).applied
    assert b.redirected == {"desktop": "sinkhole"}
    assert m.request("block", "198.51.100.7", "scan", established=True, now=T0).applied
    assert b.blocked == {"198.51.100.7/32"}
    assert m.release("block", "198.51.100.7", now=T0 + 1).applied
    assert b.blocked == set()
    assert not m.release("block", "198.51.100.7", now=T0 + 2).applied


def test_not_established_is_refused(tmp_path: Path) -> None:
    m, b = make(tmp_path)
    r = m.request("quarantine", "10.203.0.10", "spoofed", now=T0)
    assert not r.applied and "established" in r.reason
    r = m.request("quarantine", "10.203.0.10", "spoofed", established=False, now=T0)
    assert not r.applied
    assert b.calls == [] and m.history() == [] and audit(tmp_path) == []


@pytest.mark.parametrize("kind,target", [
    ("quarantine", "gateway"),         # allowlisted port name
    ("quarantine", "10.203.0.1"),      # allowlisted address of a guest
    ("block", "10.203.0.53"),          # DNS
    ("block", "10.203.0.0/24"),        # a network holding allowlisted hosts
    ("block", "10.203.0.250"),
    ("quarantine", "sinkhole"),        # the sinkhole itself
    ("block", "not-an-address"),
    ("frobnicate", "desktop"),
])
def test_refusals(tmp_path: Path, kind: str, target: str) -> None:
    m, b = make(tmp_path)
    r = m.request(kind, target, "x", established=True, now=T0)
    assert not r.applied and r.reason.startswith("refused")
    assert b.calls == []


def test_allowlisted_guest_by_port_name(tmp_path: Path) -> None:
    policy = Policy(allowlist=("10.203.0.1",), guests={"10.203.0.1": "gw-port"})
    m, b = make(tmp_path, policy=policy)
    assert not m.request("quarantine", "gw-port", "x", established=True, now=T0).applied
    assert b.calls == []


def test_rate_limit(tmp_path: Path) -> None:
    m, _ = make(tmp_path)
    for i in range(3):
        assert m.request("block", f"198.51.100.{i}", "x", established=True, now=T0 + i).applied
    r = m.request("block", "198.51.100.9", "x", established=True, now=T0 + 30)
    assert not r.applied and "rate limit" in r.reason
    # A minute after the first one, there is room again.
    assert m.request("block", "198.51.100.9", "x", established=True, now=T0 + 60.5).applied


def test_already_active_does_not_stack(tmp_path: Path) -> None:
    m, b = make(tmp_path)
    assert m.request("quarantine", "desktop", "x", established=True, now=T0).applied
    r = m.request("quarantine", "desktop", "again", established=True, now=T0 + 5)
    assert not r.applied and "already active" in r.reason
    assert len(m.history()) == 1 and len(b.calls) == 1


def test_escalation_catch_and_release(tmp_path: Path) -> None:
    m, _ = make(tmp_path)
    now = T0
    lengths = []
    for _ in range(4):
        r = m.request("quarantine", "desktop", "x", established=True, now=now)
        assert r.applied and r.record is not None
        lengths.append(r.record.until - r.record.since)
        now = r.record.until
        m.tick(now)
        now += 1
    assert lengths == [600, 3600, 86400, 86400]
    # After a quiet day the count starts again.
    r = m.request("quarantine", "desktop", "x", established=True, now=now + 3 * 86400)
    assert r.record is not None and r.record.level == 0 and r.record.until - r.record.since == 600


def test_configurable_escalation_and_explicit_duration(tmp_path: Path) -> None:
    policy = Policy(escalation=(5.0, 50.0))
    m, _ = make(tmp_path, policy=policy)
    r = m.request("block", "198.51.100.1", "x", established=True, now=T0)
    assert r.record is not None and r.record.until == T0 + 5
    m.tick(T0 + 5)
    r = m.request("block", "198.51.100.1", "x", duration=2.0, established=True, now=T0 + 6)
    assert r.record is not None and r.record.until == T0 + 8 and r.record.level == 1
    with pytest.raises(ActionError):
        Policy(escalation=())
    assert not m.request("block", "198.51.100.2", "x", duration=0, established=True,
                         now=T0).applied


def test_restore_after_restart(tmp_path: Path) -> None:
    m, _ = make(tmp_path)
    assert m.request("quarantine", "10.203.0.10", "x", established=True, now=T0).applied
    assert m.request("block", "198.51.100.7", "x", duration=30, established=True,
                     now=T0).applied
    m.close()
    # A new daemon, a fresh (empty) network state, 60 s later: the block expired while
    # we were down, the quarantine is still due.
    m2, b2 = make(tmp_path)
    results = m2.restore(T0 + 60)
    assert b2.quarantined == {"desktop": ["10.203.0.99"]}
    assert b2.blocked == set()
    assert ("unblock", ("198.51.100.7",)) in b2.calls
    assert sorted(r.reason.split()[0] for r in results) == ["released", "restored"]
    assert [r.kind for r in m2.active()] == ["quarantine"]
    m2.tick(T0 + 600)
    assert b2.quarantined == {} and m2.active() == []


def test_audit_records(tmp_path: Path) -> None:
    m, _ = make(tmp_path)
    m.request("quarantine", "10.203.0.10", "sev1", sid=2100498, alert=ALERT,
              established=True, now=T0)
    m.tick(T0 + 600)
    recs = audit(tmp_path)
    assert [r["event"] for r in recs] == ["apply", "release"]
    assert recs[0]["alert"] == ALERT
    assert recs[0]["sid"] == 2100498 and recs[0]["target"] == "10.203.0.10"
    assert recs[0]["kind"] == "quarantine" and recs[0]["until"] == T0 + 600
    assert recs[1]["release_reason"] == "expired" and recs[1]["released_at"] == T0 + 600
    assert str(recs[0]["timestamp"]).startswith("2023-11-14T22:13:20.000000+0000")


def test_backend_failure_is_not_recorded(tmp_path: Path) -> None:
    m, _ = make(tmp_path, RecordingBackend(fail=True))
    r = m.request("quarantine", "desktop", "x", established=True, now=T0)
    assert not r.applied and r.reason.startswith("failed")
    assert m.history() == [] and audit(tmp_path) == []


def test_release_failure_is_retried(tmp_path: Path) -> None:
    b = RecordingBackend()
    m, _ = make(tmp_path, b)
    assert m.request("quarantine", "desktop", "x", established=True, now=T0).applied
    b.fail = True
    assert [r.applied for r in m.tick(T0 + 600)] == [False]
    assert len(m.active()) == 1
    b.fail = False
    assert [r.applied for r in m.tick(T0 + 601)] == [True]
    assert m.active() == []


def test_control_handlers(tmp_path: Path) -> None:
    m, b = make(tmp_path)
    h = control_handlers(m)
    res = h["quarantine.add"]({"target": "desktop", "duration": 90, "reason": "op"})
    assert res["applied"] and res["action"]["until"] - res["action"]["since"] == 90
    assert [r["target"] for r in h["quarantine.list"]({})] == ["desktop"]
    with pytest.raises(Refused, match="already active"):
        h["quarantine.add"]({"target": "desktop"})
    with pytest.raises(Refused, match="allowlisted"):
        h["block.add"]({"target": "10.203.0.1"})
    with pytest.raises(Refused, match="duration"):
        h["block.add"]({"target": "198.51.100.1", "duration": "soon"})
    with pytest.raises(Refused, match="target"):
        h["block.add"]({})
    assert h["quarantine.release"]({"target": "desktop"})["applied"]
    with pytest.raises(Refused, match="no active"):
        h["quarantine.release"]({"target": "desktop"})
    assert b.quarantined == {}


def test_flow_redirect_targets_round_trip_and_reach_the_backend(tmp_path: Path) -> None:
    from appliance.actions import flow_target, split_flow_target

    assert flow_target("desktop", "203.0.113.10", 80) == "desktop>203.0.113.10:80"
    assert split_flow_target("desktop>203.0.113.10:80") == ("desktop", "203.0.113.10", 80)
    assert split_flow_target("desktop>[2001:db8::1]:443") == ("desktop", "2001:db8::1", 443)
    assert split_flow_target("desktop>2001:db8::1") == ("desktop", "2001:db8::1", None)
    backend = RecordingBackend()
    m = ActionManager(backend, tmp_path / "a.db", tmp_path / "audit.jsonl",
                      Policy(sinkhole_port="sinkhole"))
    r = m.request("redirect", "desktop>203.0.113.10:80", "test", established=True,
                  duration=5, now=100.0)
    assert r.applied, r.reason
    assert ("redirect_flow", ("desktop", "sinkhole", "203.0.113.10", 80)) in backend.calls
    assert not m.request("redirect", "desktop>not-an-ip", "x", established=True).applied
    m.tick(now=106.0)
    assert ("release_redirect_flow", ("desktop", "203.0.113.10", 80)) in backend.calls
