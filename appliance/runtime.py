"""The one loop: events from a source go through the engine; commands go to sinks.

Replay and live differ only in the source (pcap reader or NFQUEUE) and in where
verdicts go (counted, or sent back to the kernel).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from appliance.core.commands import ActionRequest, Command, Log, ScanRequest, Verdict
from appliance.core.engine import Engine
from appliance.core.events import Event, PacketIn, Shutdown
from appliance.filescan import Scan, resolve
from appliance.io.eve import EveSink


class VerdictSink(Protocol):
    def verdict(self, v: Verdict) -> None: ...


class ActionSink(Protocol):
    def request(self, a: ActionRequest) -> None: ...


@dataclass
class RunSummary:
    packets: int = 0
    verdicts: int = 0
    flows: int = 0
    alerts: int = 0
    anomalies: int = 0
    actions: int = 0
    by_event_type: dict[str, int] = field(default_factory=dict)


class Runtime:
    def __init__(self, engine: Engine, eve: EveSink | None = None,
                 verdicts: VerdictSink | None = None, actions: ActionSink | None = None,
                 scan: Scan | None = None) -> None:
        self.engine = engine
        self.eve = eve
        self.verdicts = verdicts
        self.actions = actions
        self.scan = scan  # answers ScanRequests (appliance.filescan); None: "unknown"
        self.summary = RunSummary()

    def execute(self, commands: list[Command]) -> None:
        s = self.summary
        if any(isinstance(c, ScanRequest) for c in commands):
            commands = resolve(self.engine, commands, self.scan)
        for c in commands:
            if type(c) is Verdict:
                s.verdicts += 1
                if self.verdicts is not None:
                    self.verdicts.verdict(c)
            elif isinstance(c, Log):
                et = c.record.get("event_type", "")
                s.by_event_type[et] = s.by_event_type.get(et, 0) + 1
                if et == "flow":
                    s.flows += 1
                elif et == "alert":
                    s.alerts += 1
                elif et == "anomaly":
                    s.anomalies += 1
                if self.eve is not None:
                    self.eve.write(c.record)
            elif isinstance(c, ActionRequest):
                s.actions += 1
                if self.actions is not None:
                    self.actions.request(c)

    def feed(self, event: Event) -> None:
        if type(event) is PacketIn:
            self.summary.packets += 1
        self.execute(self.engine.handle(event))

    def run(self, events: Iterable[Event], on_packet: Callable[[int], None] | None = None,
            every: int = 4096) -> RunSummary:
        """Feed every event; call `on_packet(count)` every `every` packets (progress)."""
        handle = self.engine.handle
        execute = self.execute
        s = self.summary
        n = 0
        for ev in events:
            n += 1
            cmds = handle(ev)
            if len(cmds) == 1 and type(cmds[0]) is Verdict:
                # Fast path: the common packet yields only its verdict.
                s.verdicts += 1
                if self.verdicts is not None:
                    self.verdicts.verdict(cmds[0])
            else:
                execute(cmds)
            if on_packet is not None and n % every == 0:
                on_packet(n)
        s.packets += n
        if on_packet is not None:
            on_packet(n)
        return s

    def finish(self, ts: float | None = None) -> RunSummary:
        self.execute(self.engine.handle(Shutdown(ts)))
        if self.eve is not None:
            self.eve.close()
        return self.summary
