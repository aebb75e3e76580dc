"""ActionManager: decides whether an action may be taken, takes it, and undoes it on time.

State lives in SQLite (one row per action: what, on whom, why, which rule, since, until,
when released, escalation level), so a restarted daemon re-applies what is still active
(`restore`) and releases what expired while it was down. Every apply and release is one
JSON line in the audit log, with the alert that caused it.

Safety, in the order `request` checks it:
  1. evidence: only an established flow may trigger an action (a spoofed packet without a
     handshake must never quarantine a guest); the engine decides, `established` is
     checked again here;
  2. allowlist: never against the gateway, DNS, the appliance (addresses, networks or
     bridge port names);
  3. rate limit: at most `max_per_minute` new actions in any 60 s;
  4. catch and release: a target whose last action ended less than `repeat_window` ago
     gets the next duration of `escalation` (10 min, 1 h, 24 h by default, then the last
     one again); after a quiet window it starts from the first.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from appliance.errors import ActionError
from appliance.io.actions import ActionBackend

KINDS: Final = ("quarantine", "redirect", "block")
DEFAULT_ESCALATION: Final = (600.0, 3600.0, 86400.0)
DAY: Final = 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    sid INTEGER,
    since REAL NOT NULL,
    until REAL NOT NULL,
    released_at REAL,
    level INTEGER NOT NULL,
    alert TEXT
);
CREATE INDEX IF NOT EXISTS actions_active ON actions (released_at, until);
CREATE INDEX IF NOT EXISTS actions_target ON actions (kind, target, since);
"""


@dataclass(frozen=True)
class Policy:
    """What the manager may do. `guests` maps a guest's name or address to its bridge port
    (a target not in it is taken as a port name); `sinkhole_ips` are what a quarantined
    guest may still reach; `sinkhole_port` is where redirects go."""

    allowlist: tuple[str, ...] = ()
    guests: Mapping[str, str] = field(default_factory=dict)
    sinkhole_port: str = "sinkhole"
    sinkhole_ips: tuple[str, ...] = ()
    escalation: tuple[float, ...] = DEFAULT_ESCALATION
    repeat_window: float = DAY
    max_per_minute: int = 10

    def __post_init__(self) -> None:
        if not self.escalation or any(d <= 0 for d in self.escalation):
            raise ActionError("escalation: a non-empty list of positive durations")
        if self.max_per_minute < 1:
            raise ActionError("max_per_minute must be at least 1")


@dataclass(frozen=True)
class ActionRecord:
    id: int
    kind: str
    target: str
    reason: str
    sid: int | None
    since: float
    until: float
    released_at: float | None
    level: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "target": self.target,
                "reason": self.reason, "sid": self.sid, "since": self.since,
                "until": self.until, "released_at": self.released_at, "level": self.level}


@dataclass(frozen=True)
class Result:
    applied: bool
    reason: str
    record: ActionRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "reason": self.reason,
                "action": self.record.to_dict() if self.record else None}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f%z")


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def flow_target(guest: str, dst: str, dport: int | None) -> str:
    """The target of a one-flow redirect: GUEST>ADDRESS[:PORT] (IPv6 in brackets)."""
    addr = f"[{dst}]" if ":" in dst else dst
    return f"{guest}>{addr}" + (f":{dport}" if dport else "")


def split_flow_target(target: str) -> tuple[str, str, int | None]:
    guest, _, rest = target.partition(">")
    port: int | None = None
    if rest.startswith("["):
        addr, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = int(tail[1:])
    elif rest.count(":") == 1:
        addr, _, p = rest.partition(":")
        port = int(p)
    else:
        addr = rest
    ipaddress.ip_address(addr)  # ValueError for a bad address
    return guest, addr, port


class ActionManager:
    def __init__(self, backend: ActionBackend, db_path: str | Path, audit_path: str | Path,
                 policy: Policy, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.policy = policy
        self.clock = clock
        self.audit_path = Path(audit_path)
        self._lock = threading.Lock()
        self._recent: deque[float] = deque()  # apply times within the last minute
        self._db = sqlite3.connect(str(db_path), check_same_thread=False,
                                   isolation_level=None)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- queries ------------------------------------------------------------------------

    def _rows(self, where: str, args: tuple[Any, ...] = ()) -> list[ActionRecord]:
        cur = self._db.execute(
            "SELECT id, kind, target, reason, sid, since, until, released_at, level "
            f"FROM actions WHERE {where} ORDER BY id", args)
        return [ActionRecord(*row) for row in cur.fetchall()]

    def active(self, kind: str | None = None) -> list[ActionRecord]:
        with self._lock:
            if kind is None:
                return self._rows("released_at IS NULL")
            return self._rows("released_at IS NULL AND kind = ?", (kind,))

    def history(self) -> list[ActionRecord]:
        with self._lock:
            return self._rows("1")

    # -- the backend, by kind -----------------------------------------------------------

    def _port(self, target: str) -> str:
        if ">" in target:
            target = target.partition(">")[0]
        return self.policy.guests.get(target, target)

    def _apply(self, kind: str, target: str) -> None:
        if kind == "quarantine":
            self.backend.quarantine(self._port(target), list(self.policy.sinkhole_ips))
        elif kind == "redirect" and ">" in target:
            guest, dst, dport = split_flow_target(target)
            self.backend.redirect_flow(self._port(guest), self.policy.sinkhole_port, dst,
                                       dport)
        elif kind == "redirect":
            self.backend.redirect(self._port(target), self.policy.sinkhole_port)
        else:
            self.backend.block(target)

    def _undo(self, kind: str, target: str) -> None:
        if kind == "quarantine":
            self.backend.release_quarantine(self._port(target))
        elif kind == "redirect" and ">" in target:
            guest, dst, dport = split_flow_target(target)
            self.backend.release_redirect_flow(self._port(guest), dst, dport)
        elif kind == "redirect":
            self.backend.release_redirect(self._port(target))
        else:
            self.backend.unblock(target)

    # -- checks -------------------------------------------------------------------------

    def _allowlisted(self, kind: str, target: str) -> str | None:
        names = {target, self._port(target)}
        tnet = _net(target)
        for entry in self.policy.allowlist:
            if entry in names:
                return entry
            enet = _net(entry)
            if enet is None:
                continue
            if tnet is not None and tnet.version == enet.version and tnet.overlaps(enet):
                return entry
            # A guest named by its port: allowlisted when one of its addresses is.
            for addr, port in self.policy.guests.items():
                anet = _net(addr)
                if port in names and anet is not None and anet.version == enet.version \
                        and anet.overlaps(enet):
                    return entry
        return None

    def _check_target(self, kind: str, target: str) -> str | None:
        if kind not in KINDS:
            return f"unknown action {kind!r} (known: {', '.join(KINDS)})"
        if not isinstance(target, str) or not target:
            return "no target"
        if kind == "block" and _net(target) is None:
            return f"block needs an IP address or network, not {target!r}"
        if kind == "redirect" and ">" in target:
            try:
                split_flow_target(target)
            except ValueError:
                return f"a flow redirect is GUEST>ADDRESS[:PORT], not {target!r}"
        if kind != "block" and target == self.policy.sinkhole_port:
            return "the sinkhole itself cannot be quarantined or redirected"
        return None

    def _level(self, kind: str, target: str, now: float) -> int:
        """One step up from the last action on this target if it ended (or was released)
        within the repeat window: a guest that reoffends soon after release gets longer."""
        cur = self._db.execute(
            "SELECT level, COALESCE(released_at, until) FROM actions "
            "WHERE kind = ? AND target = ? ORDER BY id DESC LIMIT 1", (kind, target))
        row = cur.fetchone()
        if row is None or row[1] <= now - self.policy.repeat_window:
            return 0
        return int(row[0]) + 1

    def _rate_ok(self, now: float) -> bool:
        while self._recent and self._recent[0] <= now - 60.0:
            self._recent.popleft()
        return len(self._recent) < self.policy.max_per_minute

    # -- requests -----------------------------------------------------------------------

    def request(self, kind: str, target: str, reason: str, sid: int | None = None,
                alert: Mapping[str, Any] | None = None, duration: float | None = None,
                established: bool = False, now: float | None = None,
                first_duration: float | None = None) -> Result:
        """Apply an action unless a safety check refuses it.

        `established` must be True: the caller vouches that the evidence comes from an
        established flow (or from an operator). Without it the request is refused.
        """
        now = self.clock() if now is None else now
        if not established:
            return Result(False, "refused: evidence is not from an established flow")
        why = self._check_target(kind, target)
        if why:
            return Result(False, f"refused: {why}")
        if duration is not None and not duration > 0:
            return Result(False, "refused: duration must be positive")
        hit = self._allowlisted(kind, target)
        if hit:
            return Result(False, f"refused: {target} is allowlisted ({hit})")
        with self._lock:
            current = self._rows("released_at IS NULL AND kind = ? AND target = ?",
                                 (kind, target))
            if current:
                rec = current[0]
                return Result(False, f"already active until {_iso(rec.until)}", rec)
            if not self._rate_ok(now):
                return Result(False, f"refused: rate limit ({self.policy.max_per_minute} "
                                     "new actions per minute)")
            level = self._level(kind, target, now)
            esc = self.policy.escalation
            # An explicit duration (operator) wins; a role's first-offence duration applies
            # at level 0 only, so repeat offenders still escalate.
            if duration is not None:
                length = duration
            elif first_duration is not None and level == 0:
                length = first_duration
            else:
                length = esc[min(level, len(esc) - 1)]
            try:
                self._apply(kind, target)
            except ActionError as e:
                return Result(False, f"failed: {e}")
            cur = self._db.execute(
                "INSERT INTO actions (kind, target, reason, sid, since, until, level, alert)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, target, reason, sid, now, now + length, level,
                 json.dumps(dict(alert), default=str) if alert is not None else None))
            rec = self._rows("id = ?", (cur.lastrowid,))[0]
            self._recent.append(now)
            self._audit("apply", rec, now, alert=alert)
        return Result(True, f"{kind} {target} for {length:.0f} s (level {level})", rec)

    def release(self, kind: str, target: str, reason: str = "operator",
                now: float | None = None) -> Result:
        now = self.clock() if now is None else now
        with self._lock:
            current = self._rows("released_at IS NULL AND kind = ? AND target = ?",
                                 (kind, target))
            if not current:
                return Result(False, f"no active {kind} on {target}")
            return self._release(current[0], reason, now)

    def _release(self, rec: ActionRecord, reason: str, now: float) -> Result:
        try:
            self._undo(rec.kind, rec.target)
        except ActionError as e:
            return Result(False, f"release failed (retried on the next tick): {e}", rec)
        self._db.execute("UPDATE actions SET released_at = ? WHERE id = ?", (now, rec.id))
        done = self._rows("id = ?", (rec.id,))[0]
        self._audit("release", done, now, why=reason)
        return Result(True, f"released {rec.kind} {rec.target} ({reason})", done)

    def tick(self, now: float | None = None) -> list[Result]:
        """Release what expired (wall clock). Call it about once a second."""
        now = self.clock() if now is None else now
        with self._lock:
            due = self._rows("released_at IS NULL AND until <= ?", (now,))
            return [self._release(rec, "expired", now) for rec in due]

    def restore(self, now: float | None = None) -> list[Result]:
        """At start: release what expired while we were down, re-apply the rest."""
        now = self.clock() if now is None else now
        out = self.tick(now)
        with self._lock:
            for rec in self._rows("released_at IS NULL"):
                try:
                    self._apply(rec.kind, rec.target)
                    out.append(Result(True, f"restored {rec.kind} {rec.target}", rec))
                except ActionError as e:
                    out.append(Result(False, f"restore failed: {e}", rec))
        return out

    def status(self) -> dict[str, Any]:
        return {"active": [r.to_dict() for r in self.active()]}

    # -- audit --------------------------------------------------------------------------

    def _audit(self, event: str, rec: ActionRecord, now: float,
               alert: Mapping[str, Any] | None = None, why: str | None = None) -> None:
        entry: dict[str, Any] = {"timestamp": _iso(now), "event": event, **rec.to_dict()}
        if why is not None:
            entry["release_reason"] = why
        if alert is not None:
            entry["alert"] = dict(alert)
        line = json.dumps(entry, default=str, sort_keys=True)
        self.audit_path.parent.mkdir(parents=True, exist_ok=True)
        with self.audit_path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def control_handlers(manager: ActionManager) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """The control socket's action commands (see appliance/cli_control.py)."""
    from appliance.io.control import Refused

    def _args(args: dict[str, Any]) -> tuple[str, float | None, str]:
        target = args.get("target")
        if not isinstance(target, str) or not target:
            raise Refused("missing 'target'")
        duration = args.get("duration")
        if duration is not None and (isinstance(duration, bool)
                                     or not isinstance(duration, int | float)):
            raise Refused("'duration' must be a number of seconds")
        reason = args.get("reason") or "operator"
        if not isinstance(reason, str):
            raise Refused("'reason' must be text")
        return target, (float(duration) if duration is not None else None), reason

    def add(kind: str) -> Callable[[dict[str, Any]], Any]:
        def handler(args: dict[str, Any]) -> Any:
            target, duration, reason = _args(args)
            # An operator's command is its own evidence.
            res = manager.request(kind, target, reason, duration=duration, established=True)
            if not res.applied:
                raise Refused(res.reason)
            return res.to_dict()
        return handler

    def listing(kind: str) -> Callable[[dict[str, Any]], Any]:
        def handler(args: dict[str, Any]) -> Any:
            return [r.to_dict() for r in manager.active(kind)]
        return handler

    def release(kind: str) -> Callable[[dict[str, Any]], Any]:
        def handler(args: dict[str, Any]) -> Any:
            target = args.get("target")
            if not isinstance(target, str) or not target:
                raise Refused("missing 'target'")
            res = manager.release(kind, target)
            if not res.applied:
                raise Refused(res.reason)
            return res.to_dict()
        return handler

    handlers: dict[str, Callable[[dict[str, Any]], Any]] = {}
    for kind in KINDS:
        handlers[f"{kind}.add"] = add(kind)
        handlers[f"{kind}.list"] = listing(kind)
        handlers[f"{kind}.release"] = release(kind)
    return handlers
