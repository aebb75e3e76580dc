"""The fuzz harness, bounded for CI: every target for a few thousand generated inputs
(a fixed seed: a failure reproduces), every corpus seed and every saved regression case.
bench/fuzz.py runs the same harness for a million inputs.

FUZZ_SEED and FUZZ_SCALE (a multiplier of the input counts) change the run locally.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

from appliance.core.commands import Verdict
from appliance.core.engine import Engine
from appliance.core.events import LINKTYPE_RAW
from tests.fuzz import harness
from tests.fuzz.harness import (
    EngineHarness,
    Failure,
    Target,
    check_record,
    corpus_cases,
    ddmin,
    gen_fragments,
    gen_stream,
    input_rng,
    minimize,
    mutate_bytes,
    run_one,
    run_target,
    shrink_bytes,
    tcp_segment,
)

SEED = int(os.environ.get("FUZZ_SEED", "20261126"))
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
# Inputs per target in CI: ~11 s in all on this machine (bench/fuzz.py prints rates).
BUDGET = {"decoder": 4000, "engine": 1000, "stream": 400, "defrag": 500, "http": 2500,
          "tls": 3000, "dns": 2500, "dcerpc": 2000, "rules": 4000, "policy": 300, "control": 3000,
          "pcap": 2000, "smtp": 2000, "http2": 2000,
          # the later app-layer parsers: ~10,000 inputs/s each, ~4 s for the six
          "mqtt": 6000, "sip": 5000, "krb5": 6000, "snmp": 5000, "nfs": 6000, "quic": 5000}

TARGETS = {t.name: t for t in harness.targets()}


def test_every_target_has_a_ci_budget() -> None:
    assert set(BUDGET) == set(TARGETS)


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_fuzz_target(name: str) -> None:
    t = TARGETS[name]
    rep = run_target(t, int(BUDGET[name] * SCALE), SEED)
    assert rep.inputs == int(BUDGET[name] * SCALE)
    msgs = [f"{f.failure} (seed {f.seed} index {f.index}; minimised: {f.minimized!r:.300})"
            for f in rep.failures]
    assert not msgs, "\n".join(msgs)
    assert rep.unanswered == 0


def _seed_inputs() -> list[tuple[str, int]]:
    return [(name, i) for name, t in TARGETS.items() for i in range(len(t.seeds))]


@pytest.mark.parametrize("name", sorted(n for n, t in TARGETS.items() if t.seeds))
def test_every_seed_passes_unmutated(name: str) -> None:
    t = TARGETS[name]
    assert len(t.seeds) >= 3, "the corpus lost its seeds (tests/fuzz/build_corpus.py)"
    bad = []
    for i, seed in enumerate(t.seeds):
        _n, f = run_one(t, seed)
        if f is not None:
            bad.append(f"seed {i}: {f}")
    assert not bad, "\n".join(bad)


def _cases() -> list[Any]:
    out = []
    for name, t in TARGETS.items():
        for path, x in corpus_cases(t):
            out.append(pytest.param(name, x, id=path.name))
    return out


@pytest.mark.parametrize("name,case", _cases())
def test_regression_case(name: str, case: Any) -> None:
    """Inputs that once broke an invariant (minimised by the harness)."""
    _n, f = run_one(TARGETS[name], case)
    assert f is None, str(f)


def test_regression_cases_exist_for_the_bugs_fixed() -> None:
    names = {p.name for p in harness.CORPUS.rglob("crash-*")}
    # policy: nan/inf numbers, nesting past PyYAML's recursion; control: a request cut by
    # the end of the stream; pcap: a pcapng packet block too short for its fields
    for prefix, n in (("crash-policy-", 2), ("crash-control-", 1), ("crash-pcap-", 1)):
        assert sum(x.startswith(prefix) for x in names) >= n, prefix


# -- the harness itself ------------------------------------------------------------------


def test_inputs_are_reproducible_from_seed_and_index() -> None:
    for name in ("engine", "stream", "http", "rules", "defrag"):
        t = TARGETS[name]
        a = t.generate(input_rng(7, name, 123))
        b = t.generate(input_rng(7, name, 123))
        c = t.generate(input_rng(7, name, 124))
        assert a == b
        assert a != c


def test_mutations_change_and_cover_truncation_and_growth() -> None:
    rng = random.Random(1)
    seed = bytes(range(200))
    outs = [mutate_bytes(rng, seed, b"other", (b"TOKEN",)) for _ in range(500)]
    assert sum(o != seed for o in outs) > 450
    assert any(len(o) < len(seed) for o in outs) and any(len(o) > len(seed) for o in outs)
    assert any(b"TOKEN" in o for o in outs) and any(b"other" in o for o in outs)


def test_a_crash_is_found_and_minimised() -> None:
    """A planted bug: the harness must report it, with its exception and place, and
    shrink the input to the bytes that trigger it."""

    def check(data: bytes) -> int:
        try:
            if b"\xde\xad" in data:
                raise ValueError("planted")
        except ValueError as e:
            raise harness.crash(e) from e
        return 0

    seeds = [b"\x00" * 40 + b"\xde\xad" + b"\x01" * 40, b"\x02" * 80]
    t = Target("planted", lambda rng: mutate_bytes(rng, rng.choice(seeds)), check,
               lambda x: ("x/.bin", x), lambda x, fails, budget: shrink_bytes(x, fails, budget))
    rep = run_target(t, 200, 3)
    assert rep.failures, "the planted crash was not found"
    f = rep.failures[0]
    assert f.failure.kind == "crash ValueError"
    assert f.minimized == b"\xde\xad"
    assert minimize(t, seeds[0], f.failure) == b"\xde\xad"


def test_ddmin_keeps_what_is_needed() -> None:
    items = list(range(100))
    got = ddmin(items, lambda xs: 17 in xs and 83 in xs, [10_000])
    assert got == [17, 83]


def test_a_lost_verdict_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine invariant: an Engine that forgets one packet's verdict fails the check."""
    real = Engine.handle

    def forgetful(self: Engine, ev: Any) -> Any:
        out = real(self, ev)
        if getattr(ev, "data", b"").endswith(b"FORGET"):
            out = [c for c in out if not isinstance(c, Verdict)]
        return out

    monkeypatch.setattr(Engine, "handle", forgetful)
    eh = EngineHarness()
    src, dst = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
    frames = [(LINKTYPE_RAW, 1.0, tcp_segment(src, dst, 1000, 80, 1, 0, 2, b"")),
              (LINKTYPE_RAW, 1.1, tcp_segment(src, dst, 1000, 80, 2, 0, 16, b"FORGET"))]
    with pytest.raises(Failure, match="packets \\[2\\] got \\[0\\] verdicts") as e:
        eh.run(frames, 0)
    assert e.value.count == 1
    eh.run(frames[:1], 0)  # and the packet that was answered passes


def test_a_swallowed_engine_exception_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine catches stage exceptions (principle 7); the harness still reports them,
    with the exception's type and place."""
    from appliance.core import engine as engine_mod

    def broken(*_a: Any, **_k: Any) -> Any:
        raise KeyError("planted")

    monkeypatch.setattr(engine_mod.applayer, "feed_tcp", broken)
    eh = EngineHarness()
    src, dst = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
    frames = [(LINKTYPE_RAW, 1.0, tcp_segment(src, dst, 1000, 80, 1, 0, 2, b"")),
              (LINKTYPE_RAW, 1.1, tcp_segment(dst, src, 80, 1000, 9, 2, 18, b"")),
              (LINKTYPE_RAW, 1.2, tcp_segment(src, dst, 1000, 80, 2, 10, 24, b"GET / HTTP/1.0"
                                               b"\r\n\r\n"))]
    with pytest.raises(Failure) as e:
        eh.run(frames, 0)
    assert e.value.kind == "engine-error KeyError"


def test_eve_record_check() -> None:
    check_record({"event_type": "http", "http": {"hostname": "a\nb\x1b[31m\x00\u2028"}})
    with pytest.raises(Failure, match="bad-eve"):
        check_record({"event_type": "http", "http": {"hostname": b"raw bytes"}})
    with pytest.raises(Failure, match="bad-eve"):  # a lone surrogate is not UTF-8
        check_record({"event_type": "http", "http": {"hostname": "\udcff"}})


def test_generators_make_well_formed_traffic() -> None:
    """The structured generators' clean outputs decode without anomalies: the fuzzing
    starts from valid traffic and breaks it on purpose."""
    from appliance.core.decode import Decoder

    rng = random.Random(5)
    d = Decoder()
    frames, clean = gen_fragments(rng)
    while clean is None:
        frames, clean = gen_fragments(rng)
    harness.check_defrag_rebuilds(frames, clean)
    convs = {"http": [[(True, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")]]}
    pkts = gen_stream(random.Random(2), convs)
    assert all(d.decode(data, lt, ts).events is None for lt, ts, data in pkts[:3])
