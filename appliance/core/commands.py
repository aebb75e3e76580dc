"""Commands the engine returns; the runtime executes them (DESIGN.md)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, NamedTuple


class VerdictKind(StrEnum):
    ACCEPT = "accept"
    DROP = "drop"
    REJECT = "reject"
    BYPASS = "bypass"  # accept and mark the connection so the kernel stops queueing it


DIRECTION_BYPASS: Final = "direction"


class Verdict(NamedTuple):
    """The decision on one PacketIn; exactly one per packet. NamedTuple for the same
    per-packet cost reason as PacketIn."""

    packet_id: int
    kind: VerdictKind
    # For REJECT: the rule action (reject, rejectsrc, rejectdst, rejectboth). For
    # BYPASS: DIRECTION_BYPASS when only this packet's direction of the connection is
    # bypassed (the other is still inspected); empty for the whole connection.
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Log:
    """One EVE JSON record (flow, anomaly, stats, alert...), already shaped as Suricata's."""

    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ActionRequest:
    """Ask the action manager to quarantine/redirect a guest or block an address."""

    kind: str  # quarantine, redirect, block
    target: str  # a guest name (quarantine, redirect) or an IP address (block)
    port: str | None  # the guest's bridge port when known
    reason: str
    sid: int | None
    duration: float
    established: bool  # evidence from an established flow (spoofing defence)
    alert: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ScanRequest:
    """A finished file to decide on (scan cache, then scanners). The runtime answers with
    a FileScanned event carrying the same token."""

    token: int
    packet_id: int
    sha256: str
    data: bytes | None  # None when the body was not kept whole: only a cached verdict
    size: int
    guest: str | None
    filename: str


@dataclass(frozen=True, slots=True)
class Hold:
    """The packet that completed a file waits for the file's verdict: instead of its
    Verdict now, the engine gives it on FileScanned (or the runtime's timeout)."""

    packet_id: int
    token: int


Command = Verdict | Log | ActionRequest | ScanRequest | Hold
