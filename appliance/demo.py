"""`make demo`: what the appliance does today, on the bundled captures.

The inline demo (a lab bridge in network namespaces with an attack stopped) needs the
NFQUEUE and signature work, which has not landed yet. Until then the demo replays the
bundled captures in pcaps/ through the same engine the live path will use and shows
what it found: flows, decoder anomalies, and the EVE records it writes.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from appliance.core.engine import Engine
from appliance.io.eve import RecordingEve
from appliance.io.pcap import PcapReader
from appliance.runtime import Runtime

PCAPS = Path(__file__).resolve().parents[1] / "pcaps"


def main() -> int:
    captures = sorted(p for p in PCAPS.glob("*.pcap*") if p.is_file())
    if not captures:
        print(f"no bundled captures in {PCAPS}", file=sys.stderr)
        return 1
    print("Replaying the bundled captures through the inspection engine "
          "(inline mode comes with the NFQUEUE work).\n")
    print(f"{'capture':28s} {'packets':>8s} {'flows':>6s} {'anomalies':>9s}  notes")
    seen: Counter[str] = Counter()
    example = None
    for cap in captures:
        eve = RecordingEve()
        rt = Runtime(Engine(), eve)
        try:
            with PcapReader(cap) as r:
                rt.run(r)
                cut = r.truncated_at
        except Exception as e:  # a broken bundled file must not stop the demo
            print(f"{cap.name:28s} error: {e}")
            continue
        s = rt.finish()
        kinds = Counter(a["anomaly"]["event"] for a in eve.of_type("anomaly"))
        seen.update(kinds)
        note = f"cut at byte {cut}" if cut is not None else ""
        if kinds:
            note = (note + " " if note else "") + ", ".join(
                f"{k.removeprefix('decoder.')}x{n}" for k, n in kinds.most_common(3))
        print(f"{cap.name:28s} {s.packets:8d} {s.flows:6d} {s.anomalies:9d}  {note}")
        if example is None and eve.of_type("flow"):
            example = eve.of_type("flow")[0]
    if example is not None:
        import json

        print("\nAn EVE flow record as written by `appliance replay --eve`:")
        print(json.dumps(example))
    print(f"\nDistinct decoder anomalies seen: {len(seen)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
