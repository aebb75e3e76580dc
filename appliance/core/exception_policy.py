"""Exception policies: what the engine does with a packet when a memory cap is hit.

Named and scoped as Suricata's (suricata.yaml `exception-policy`, `flow.memcap-policy`,
`stream.memcap-policy`, `stream.reassembly.memcap-policy`, `defrag.memcap-policy`), plus
one for the app layer's memory (`app-layer.memcap-policy`, ours: Suricata's app-layer
policy is about parser errors). The caps and what "hit" means:

- `flow_memcap`: a new flow is needed, the flow table is full, emergency timeouts freed
  nothing and no flow that never got established (or has closed) can be reused. With
  `ignore` the least recently seen flow is evicted whatever its state (IDS); with any
  other policy established flows are never evicted for a newcomer, because a flood of new
  flows evicting the connection that carries an attack would be an evasion.
- `stream_memcap`: a TCP session cannot be created (stream.memcap): the flow is not
  tracked or reassembled.
- `reassembly_memcap`: a segment cannot be buffered (stream.reassembly memcap or the
  per-flow out-of-order budget): what it carries is not inspected.
- `defrag_memcap`: a fragment cannot be stored: its datagram is never reassembled.
- `applayer_memcap`: the app-layer parsers together hold more than `app_layer_memcap`
  bytes: the parser of the flow that grew is freed (it is not parsed any more).

Policies: `drop-packet` (this packet), `drop-flow` (this and every later packet of the
flow; without a flow, the packet), `pass-packet` (accept this packet uninspected),
`pass-flow` (accept the flow's packets from now on without inspecting them), `bypass`
(as pass-flow, and ask the kernel to stop queueing the connection), `reject` (drop-flow
and send a TCP reset / ICMP unreachable to the sender), `ignore` (no verdict change:
what the cap already did stands). `auto`: the mode's default.

Defaults. IDS (replay): `ignore` everywhere (a replay cannot drop anything), as
Suricata's `auto`. Inline (`ips`): fail closed, as Suricata's `auto`, but per packet
where a retry can succeed once memory frees (the sender retransmits, a client repeats
its SYN) and per flow where it cannot (app layer: the parser's state is gone, so the
flow could no longer be inspected):

    flow_memcap drop-packet, stream_memcap drop-packet, reassembly_memcap drop-packet,
    defrag_memcap drop-packet, applayer_memcap drop-flow.

In IDS mode, drop-packet, drop-flow and reject mean nothing (Suricata treats them as
`ignore` there, and so does `resolve`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

CAPS: Final = ("flow_memcap", "stream_memcap", "reassembly_memcap", "defrag_memcap",
               "applayer_memcap")
POLICY_NAMES: Final = ("drop-packet", "drop-flow", "pass-packet", "pass-flow", "bypass",
                       "reject", "ignore")
INLINE_DEFAULTS: Final = {
    "flow_memcap": "drop-packet",
    "stream_memcap": "drop-packet",
    "reassembly_memcap": "drop-packet",
    "defrag_memcap": "drop-packet",
    "applayer_memcap": "drop-flow",
}
_BLOCKING: Final = frozenset({"drop-packet", "drop-flow", "reject"})
# Suricata 7's EVE `stats.ips.drop_reason` key for packets dropped because of each cap.
DROP_REASON: Final = {
    "flow_memcap": "flow_memcap",
    "stream_memcap": "stream_memcap",
    "reassembly_memcap": "stream_reassembly",
    "defrag_memcap": "defrag_memcap",
    "applayer_memcap": "applayer_memcap",
}


@dataclass(frozen=True, slots=True)
class ExceptionPolicies:
    """Configured policy per cap ("auto" or one of POLICY_NAMES); `master` is the
    `exception-policy` switch that a cap left at "auto" follows."""

    master: str = "auto"
    flow_memcap: str = "auto"
    stream_memcap: str = "auto"
    reassembly_memcap: str = "auto"
    defrag_memcap: str = "auto"
    applayer_memcap: str = "auto"

    def __post_init__(self) -> None:
        for name in ("master", *CAPS):
            v = getattr(self, name)
            if v != "auto" and v not in POLICY_NAMES:
                raise ValueError(f"{name}: unknown exception policy {v!r} (one of auto, "
                                 f"{', '.join(POLICY_NAMES)})")

    def resolve(self, cap: str, mode: str) -> str:
        """The policy in force for `cap` in engine mode "ids" or "ips"."""
        v: str = getattr(self, cap)
        if v == "auto":
            v = self.master
        if v == "auto":
            return INLINE_DEFAULTS[cap] if mode == "ips" else "ignore"
        if mode != "ips" and v in _BLOCKING:
            return "ignore"
        return v

    def resolved(self, mode: str) -> dict[str, str]:
        return {cap: self.resolve(cap, mode) for cap in CAPS}
