"""The NFQUEUE worker without a kernel queue: a fake netfilterqueue packet, a real engine."""

from __future__ import annotations

import struct
from typing import Any

from appliance.core.engine import Engine
from appliance.io.nfqueue import HOUSEKEEPING_EVERY, QueueWorker, fail_open_message


class FakePacket:
    """What QueueWorker.handle uses of netfilterqueue's Packet."""

    def __init__(self, n: int) -> None:
        # A UDP datagram 10.0.0.1:1000+n -> 10.0.0.2:53 with an empty payload.
        udp = struct.pack("!HHHH", 1000 + n % 60000, 53, 8, 0)
        self.payload = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0,
                                   bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp
        self.id = n
        self.physindev = self.physoutdev = 0
        self.verdict: str | None = None

    def get_payload(self) -> bytes:
        return self.payload

    def get_hw(self) -> None:
        return None

    def get_mark(self) -> int:
        return 0

    def set_mark(self, mark: int) -> None:
        pass

    def accept(self) -> None:
        self.verdict = "accept"

    def drop(self) -> None:
        self.verdict = "drop"


def test_a_busy_worker_keeps_beating_between_packets() -> None:
    """Under a flood netfilterqueue's run() may never return to the worker's loop; the
    callback itself beats, or the watchdog would kill a worker for being busy."""
    beats: list[int] = []
    reports: list[dict[str, Any]] = []
    worker = QueueWorker(0, Engine(), None, fail_open=False,
                         heartbeat=lambda: beats.append(1), report=reports.append)
    worker._last_tick = 0.0  # a tick and a report are due at the first housekeeping
    packets = [FakePacket(i) for i in range(3 * HOUSEKEEPING_EVERY)]
    for p in packets:
        worker.handle(p)
    assert all(p.verdict == "accept" for p in packets)
    assert len(beats) == 3
    assert len(reports) == 1
    assert reports[0]["flow"]["total"] >= 1 and reports[0]["flow"]["memcap"] > 0


def test_fail_open_message_layout() -> None:
    """NFQNL_MSG_CONFIG for one queue with NFQA_CFG_MASK and NFQA_CFG_FLAGS set to
    NFQA_CFG_F_FAIL_OPEN (linux/netfilter/nfnetlink_queue.h)."""
    msg = fail_open_message(7)
    length, mtype, flags, _seq, _pid = struct.unpack("=IHHII", msg[:16])
    assert length == len(msg) == 16 + 4 + 2 * 8
    assert mtype == (3 << 8) | 2  # NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG
    assert flags == 1  # NLM_F_REQUEST
    assert struct.unpack("!BBH", msg[16:20]) == (0, 0, 7)
    attrs = [struct.unpack("=HH", msg[i:i + 4]) + struct.unpack("!I", msg[i + 4:i + 8])
             for i in (20, 28)]
    assert attrs == [(8, 4, 1), (8, 5, 1)]  # NFQA_CFG_MASK, NFQA_CFG_FLAGS: FAIL_OPEN


def test_a_failing_report_costs_no_verdict() -> None:
    """The counters report (a queue to the supervisor) fails: every packet still gets
    its verdict and the failure is counted."""
    def broken(_counters: dict[str, Any]) -> None:
        raise OSError("the supervisor's queue is gone")

    worker = QueueWorker(0, Engine(), None, fail_open=False, report=broken)
    worker._last_tick = 0.0  # a report is due at the first housekeeping
    packets = [FakePacket(i) for i in range(2 * HOUSEKEEPING_EVERY)]
    for p in packets:
        worker.handle(p)
    assert all(p.verdict == "accept" for p in packets)
    assert worker.stats.errors == 1


def test_commands_of_a_tick_reach_eve_and_the_action_manager() -> None:
    """A flow that ends while the worker is idle may still alert (on a pseudo packet)
    and ask for an action: the tick's commands go where a packet's would."""
    from appliance.core.commands import ActionRequest, Log
    from appliance.core.events import Tick

    alert = {"event_type": "alert", "alert": {"signature_id": 7}}
    req = ActionRequest("quarantine", "desktop", "desktop", "test", 7, 8.0, True)

    class TickEngine:
        def handle(self, ev: Any) -> list[Any]:
            return [Log(alert), req] if isinstance(ev, Tick) else []

    class Eve:
        def __init__(self) -> None:
            self.records: list[dict[str, Any]] = []

        def write(self, rec: dict[str, Any]) -> None:
            self.records.append(rec)

    eve = Eve()
    asked: list[Any] = []
    worker = QueueWorker(0, TickEngine(), eve, fail_open=False,  # type: ignore[arg-type]
                         on_action=asked.append)
    worker._last_tick = 0.0
    worker._housekeeping()
    assert eve.records == [alert] and asked == [req]
    assert list(worker.recent) == [alert]
