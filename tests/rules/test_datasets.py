"""dataset / datarep keywords (Suricata 7's datasets docs): sets and reputation maps
loaded from files beside the rules, shared by name across the ruleset, with set/isset/
isnotset; ip.src / ip.dst buffers."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP, Ether

from appliance.core.commands import Log
from appliance.core.engine import Engine, EngineConfig
from appliance.core.events import LINKTYPE_ETHERNET, PacketIn
from appliance.rules.keywords import Dataset, DatasetOp, KeywordError, parse_dataset
from appliance.rules.loader import LoadedRules, load_detection


def alerts(loaded: LoadedRules, *pkts: Any) -> list[list[int]]:
    """The sids each packet raised."""
    assert not loaded.failure_records(), loaded.failure_records()
    eng = Engine(EngineConfig(), loaded.engine)
    out = []
    for n, pkt in enumerate(pkts, 1):
        got = [c.record["alert"]["signature_id"]
               for c in eng.handle(PacketIn(n, 10.0 + n, bytes(pkt), LINKTYPE_ETHERNET))
               if isinstance(c, Log) and c.record["event_type"] == "alert"]
        out.append(sorted(got))
    return out


def udp(data: bytes, src: str = "192.168.1.10", dst: str = "203.0.113.5",
        sp: int = 5000) -> Any:
    return Ether() / IP(src=src, dst=dst) / UDP(sport=sp, dport=9999) / data


def test_sets_shared_by_name_loaded_beside_the_rules(tmp_path: Path) -> None:
    (tmp_path / "ua.csv").write_text(base64.b64encode(b"evil-agent").decode() + "\n")
    (tmp_path / "bad.ip").write_text("# blocklist\n203.0.113.5\n")
    (tmp_path / "bad6.ip").write_text("::ffff:198.51.100.1\n")
    (tmp_path / "t.rules").write_text("\n".join([
        # set: matches when the value is new to the set; isset/isnotset read it.
        'alert udp any any -> any any (content:"new "; dataset:set,seen,type string; '
        'sid:1;)',
        'alert udp any any -> any any (dataset:isset,seen,type string; sid:2;)',
        'alert udp any any -> any any (content:"agent"; dataset:isset,uas,type string,'
        'load ua.csv; sid:3;)',
        'alert udp any any -> any any (content:"agent"; dataset:isnotset,uas,type string,'
        'load ua.csv; sid:4;)',
        'alert udp any any -> any any (content:"x"; ip.dst; dataset:isset,bad,type ipv4,'
        'load bad.ip; sid:5;)',
        'alert udp any any -> any any (content:"x"; ip.src; dataset:isset,bad6,type ip,'
        'load bad6.ip; sid:6;)',
    ]) + "\n")
    loaded = load_detection([tmp_path / "t.rules"])
    got = alerts(loaded, udp(b"new a"), udp(b"new a"), udp(b"new a", sp=6000),
                 udp(b"new b"), udp(b"evil-agent"), udp(b"good-agent"),
                 udp(b"x", dst="203.0.113.6"), udp(b"x", src="198.51.100.1"))
    # The setter runs first: the isset rule sees the value on the same packet.
    assert got == [[1, 2], [2], [2], [1, 2], [3], [4], [], [5, 6]]


def test_set_then_isset_across_rules() -> None:
    reg: dict[str, Dataset] = {}
    setter = parse_dataset("dataset", "set,names,type string", None, reg)
    check = parse_dataset("dataset", "isset,names,type string", None, reg)
    assert setter.dataset is check.dataset
    assert not check.test(b"a.example")
    assert setter.test(b"a.example") and not setter.test(b"a.example")
    assert check.test(b"a.example")


def test_datarep_hashes_and_operators(tmp_path: Path) -> None:
    md5 = hashlib.md5(b"evil.example").hexdigest()
    (tmp_path / "rep.md5").write_text(f"{md5},250\n{'0' * 32},10\n")
    reg: dict[str, Dataset] = {}
    hi = parse_dataset("datarep", "r, >, 200, load rep.md5, type md5", str(tmp_path), reg)
    eq = parse_dataset("datarep", "r, ==, 250, load rep.md5, type md5", str(tmp_path), reg)
    lo = parse_dataset("datarep", "r, <, 200, load rep.md5, type md5", str(tmp_path), reg)
    digest = hashlib.md5(b"evil.example").digest()
    assert hi.test(digest) and eq.test(digest) and not lo.test(digest)
    assert lo.test(bytes(16)) and not hi.test(bytes(16))
    assert not hi.test(hashlib.md5(b"other").digest())
    assert not hi.test(b"short")  # not a digest: never in the map
    assert isinstance(hi, DatasetOp) and hi.dataset.reps[digest] == 250


@pytest.mark.parametrize("value,reason", [
    ("add,x,type string", "'dataset': invalid command in 'add,x,type string'"),
    ("set,x", "'dataset' needs 'type string|md5|sha256|ipv4|ip'"),
    ("set,x,type float", "'dataset': invalid option 'type float'"),
    ("isset,x,type md5,load bad.md5", "'dataset': bad.md5:1: not a valid md5 value"),
    ("isset,x,type string,load none.csv", "'dataset': cannot read none.csv"),
])
def test_dataset_errors(tmp_path: Path, value: str, reason: str) -> None:
    (tmp_path / "bad.md5").write_text("abcd\n")
    with pytest.raises(KeywordError) as e:
        parse_dataset("dataset", value, str(tmp_path), {})
    assert str(e.value).startswith(reason)
