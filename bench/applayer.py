"""App-layer parsing cost on a capture: the engine with and without the app layer, in
the same run, per flow that got a parser and per MB of TCP/UDP payload.

    .venv/bin/python bench/applayer.py [PCAP]
"""

from __future__ import annotations

import gc
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from appliance.core.decode import Decoder
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import PacketIn
from appliance.io.eve import RecordingEve
from appliance.io.pcap import PcapReader
from appliance.runtime import Runtime

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared/data/pcaps/ndpi-mixed.pcap"


def run(packets: list[PacketIn], cfg: EngineConfig) -> tuple[float, RecordingEve]:
    gc.collect()
    eve = RecordingEve()
    rt = Runtime(Engine(cfg), eve)
    t0 = time.perf_counter()
    rt.run(packets)
    rt.finish()
    return time.perf_counter() - t0, eve


def main() -> None:
    pcap = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    packets = list(PcapReader(pcap))
    base = EngineConfig(heuristics=None)
    off = min(run(packets, replace(base, app_layer=False))[0] for _ in range(3))
    on, eve = min((run(packets, base) for _ in range(3)), key=lambda x: x[0])
    protos = Counter(r.get("app_proto") for r in eve.of_type("flow")
                     if r.get("app_proto") not in (None, "failed"))
    dec = Decoder()
    payload = sum(len(q.payload) for q in (dec.decode(p.data, p.linktype, p.ts)
                                           for p in packets) if q.proto in (6, 17))
    extra = max(on - off, 1e-9)
    flows = max(1, sum(protos.values()))
    mb = payload / 1e6
    print(f"capture: {pcap.name}: {len(packets)} packets, {mb:.1f} MB of TCP/UDP payload, "
          f"{flows} flows with a parser {dict(protos)}")
    print(f"engine without app layer {off:.2f} s, with {on:.2f} s: app layer {extra:.2f} s")
    print(f"app-layer cost: {extra / flows * 1e3:.2f} ms per parsed flow, "
          f"{extra / mb:.3f} s per MB of payload ({mb / extra:.1f} MB/s)")
    print(f"records: http {len(eve.of_type('http'))}, dns {len(eve.of_type('dns'))}, "
          f"tls {len(eve.of_type('tls'))}, fileinfo {len(eve.of_type('fileinfo'))}")


if __name__ == "__main__":
    main()
