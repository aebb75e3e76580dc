"""The Prometheus endpoint: scraped over 127.0.0.1 on a free port, fed as the supervisor
feeds it (its status dict, workers' cumulative counters, the kernel's queue table)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

from appliance.errors import ConfigError
from appliance.metrics import Metrics, parse_listen, read_nfqueue

STATUS = {
    "bridge": "br0",
    "mode": "fail-closed",
    "workers": {"0": {"pid": 100, "alive": True}, "1": {"pid": 101, "alive": False}},
    "worker_restarts": 3,
    "watchdog_kills": 1,
    "action_requests": 5,
    "actions": {"active": [{"kind": "quarantine", "target": "desktop"},
                           {"kind": "block", "target": "198.51.100.7"},
                           {"kind": "block", "target": "198.51.100.8"}]},
}


def snapshot(packets: int, drops: int = 0, sev1: int = 0) -> dict[str, object]:
    return {"packets": packets, "errors": 0,
            "verdicts": {"accept": packets - drops, "drop": drops},
            "alerts": {"1": sev1, "3": 2}, "bypassed": 4,
            "memcap": {"flow": 1, "stream": 0, "defrag": 0},
            "exception_policy": {"flow_memcap/drop-packet": drops},
            "pcre_timeouts": 2,
            "scan_cache": {"hits": 7, "misses": 2}}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Metrics, str, Path]]:
    proc = tmp_path / "nfnetlink_queue"
    proc.write_text("    0  12345     0 2 65535     7     1      123  1\n"
                    "    1  12346     0 2 65535     0     0       45  1\n")
    m = Metrics(nfqueue_proc=proc)
    host, port = m.serve("127.0.0.1", 0)
    try:
        yield m, f"http://{host}:{port}/metrics", proc
    finally:
        m.stop()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200
        return samples(r.read().decode())


def test_scrape_over_loopback(served: tuple[Metrics, str, Path]) -> None:
    m, url, _ = served
    m.update_from_status(STATUS)
    m.update_worker(0, 100, snapshot(10, drops=1, sev1=1))
    m.update_worker(1, 101, snapshot(5))
    got = scrape(url)
    assert got[("appliance_packets_total", ())] == 15
    assert got[("appliance_verdicts_total", (("verdict", "accept"),))] == 14
    assert got[("appliance_verdicts_total", (("verdict", "drop"),))] == 1
    assert got[("appliance_alerts_total", (("severity", "1"),))] == 1
    assert got[("appliance_alerts_total", (("severity", "3"),))] == 4
    assert got[("appliance_bypassed_flows_total", ())] == 8
    assert got[("appliance_memcap_hits_total", (("memcap", "flow"),))] == 2
    assert got[("appliance_pcre_timeouts_total", ())] == 4
    assert got[("appliance_exception_policy_total",
                (("use", "flow_memcap/drop-packet"),))] == 1
    assert got[("appliance_queue_drops_total", (("queue", "0"), ("reason", "kernel")))] == 7
    assert got[("appliance_queue_drops_total", (("queue", "0"), ("reason", "socket")))] == 1
    assert got[("appliance_worker_restarts_total", ())] == 3
    assert got[("appliance_watchdog_kills_total", ())] == 1
    assert got[("appliance_scan_cache_hits_total", ())] == 14
    assert got[("appliance_scan_cache_misses_total", ())] == 4
    assert got[("appliance_active_actions", (("kind", "block"),))] == 2
    assert got[("appliance_active_actions", (("kind", "quarantine"),))] == 1
    assert got[("appliance_active_actions", (("kind", "redirect"),))] == 0
    assert got[("appliance_workers_alive", ())] == 1


def test_counters_stay_monotonic_across_worker_restarts(
        served: tuple[Metrics, str, Path]) -> None:
    m, url, proc = served
    m.update_worker(0, 100, snapshot(10))
    m.update_worker(0, 100, snapshot(25))  # the same worker, later: +15
    m.update_worker(0, 200, snapshot(3))   # restarted (new pid) from zero: +3
    assert scrape(url)[("appliance_packets_total", ())] == 28
    # The queue re-bound by the new worker (another netlink port id) starts from zero too.
    proc.write_text("    0  99999     0 2 65535     2     0      5  1\n")
    got = scrape(url)
    assert got[("appliance_queue_drops_total", (("queue", "0"), ("reason", "kernel")))] == 9


def test_supervisor_cache_status_and_relayed_worker_stats() -> None:
    m = Metrics(nfqueue_proc=None)
    m.update_from_status({**STATUS, "scan_cache": {"hits": 40, "misses": 9},
                          "worker_stats": {"0": {"pid": 7, "stats": snapshot(6)}}})
    got = samples(m.text().decode())
    assert got[("appliance_scan_cache_hits_total", ())] == 40
    assert got[("appliance_packets_total", ())] == 6


def test_off_by_default_and_local_only() -> None:
    m = Metrics(nfqueue_proc=None)
    assert m._server is None  # nothing listens until serve()
    with pytest.raises(ConfigError, match="not a loopback address"):
        m.serve("0.0.0.0", 0)
    with pytest.raises(ConfigError, match="not an IP address"):
        m.serve("localhost", 0)
    m.stop()  # harmless when not serving


def test_parse_listen_and_nfqueue_table(tmp_path: Path) -> None:
    assert parse_listen("127.0.0.1:9797") == ("127.0.0.1", 9797)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen("9100") == ("127.0.0.1", 9100)
    with pytest.raises(ConfigError):
        parse_listen("127.0.0.1:http")
    assert read_nfqueue(tmp_path / "missing") == {}


def test_supervisor_status_sums_memcap_hits_and_exception_policy_uses() -> None:
    from appliance.config import Config
    from appliance.daemon import RunOptions, Supervisor

    sup = Supervisor(Config(), None, RunOptions(bridge="br-none"), log=lambda _m: None)
    sup.worker_stats = {
        0: {"memcap": {"flow": 3, "reassembly": 1},
            "exception_policy": {"flow_memcap/drop-packet": 2}},
        1: {"memcap": {"flow": 1},
            "exception_policy": {"flow_memcap/drop-packet": 5,
                                 "applayer_memcap/drop-flow": 1}},
    }
    t = sup.status()["traffic"]
    assert t["memcap"] == {"flow": 4, "reassembly": 1}
    assert t["exception_policy"] == {"flow_memcap/drop-packet": 7,
                                     "applayer_memcap/drop-flow": 1}


def test_supervisor_eve_stats_sum_the_workers_suricata_counters(eve_validator: Any) -> None:
    from appliance.config import Config
    from appliance.daemon import RunOptions, Supervisor

    sup = Supervisor(Config(), None, RunOptions(bridge="br-none"), log=lambda _m: None)
    sup.worker_stats = {
        0: {"flow": {"memcap": 64 << 20, "total": 3},
            "counters": {"flow": {"memcap": 4, "get_used_failed": 2},
                         "tcp": {"ssn_memcap_drop": 1, "segment_memcap_drop": 0},
                         "ips": {"drop_reason": {"flow_memcap": 2}}}},
        1: {"flow": {"memcap": 64 << 20, "total": 5},
            "counters": {"flow": {"memcap": 1, "get_used_failed": 1},
                         "defrag": {"max_frag_hits": 3},
                         "app_layer": {"error": {"http": {"alloc": 2}}},
                         "ips": {"drop_reason": {"flow_memcap": 1}}}},
    }
    rec = sup.stats_record()
    assert not list(eve_validator.iter_errors(rec))
    st = rec["stats"]
    # flow.memcap is the hits counter, not the configured sizes summed.
    assert st["flow"]["memcap"] == 5 and st["flow"]["get_used_failed"] == 3
    assert st["flow"]["total"] == 8
    assert st["tcp"] == {"ssn_memcap_drop": 1, "segment_memcap_drop": 0}
    assert st["defrag"] == {"max_frag_hits": 3}
    assert st["app_layer"] == {"error": {"http": {"alloc": 2}}}
    assert st["ips"]["drop_reason"] == {"flow_memcap": 3}
