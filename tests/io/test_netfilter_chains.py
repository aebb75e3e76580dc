"""Chains.install / remove against a small fake of iptables' rule state (no root): the
install is all or nothing. The real tools are exercised in tests/e2e/test_inline.py."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from appliance.io import netfilter
from appliance.io.netfilter import Chains, NetfilterError


class FakeIptables:
    """Chains and rules per (tool, table); `fail_on` makes the first call whose words
    contain all of its words fail like iptables would."""

    BUILTIN = ("FORWARD", "POSTROUTING", "INPUT", "OUTPUT", "PREROUTING")

    def __init__(self, fail_on: tuple[str, ...] = ()) -> None:
        self.chains: dict[tuple[str, str, str], list[list[str]]] = {}
        self.fail_on = fail_on
        self.failed = False

    def __call__(self, tool: str, *args: str, check: bool = True
                 ) -> subprocess.CompletedProcess[str]:
        a = list(args)
        table = a[a.index("-t") + 1] if "-t" in a else "filter"
        if "-t" in a:
            del a[a.index("-t"):a.index("-t") + 2]
        op, chain, rest = a[0], a[1] if len(a) > 1 else "", a[2:]
        key = (tool, table, chain)
        rc, out = 0, ""
        if self.fail_on and not self.failed and all(w in (tool, *args) for w in self.fail_on):
            self.failed, rc = True, 1
        elif chain in self.BUILTIN:
            self.chains.setdefault(key, [])
        if rc:
            pass
        elif op == "-N":
            rc = 1 if key in self.chains else 0
            self.chains.setdefault(key, [])
        elif op in ("-A", "-I"):
            if key not in self.chains:
                rc = 1
            else:
                self.chains[key].insert(0 if op == "-I" else len(self.chains[key]), rest)
        elif op == "-D":
            rules = self.chains.get(key, [])
            rc = 0 if rest in rules else 1
            if rest in rules:
                rules.remove(rest)
        elif op == "-F":
            rc = 0 if key in self.chains else 1
            if key in self.chains:
                self.chains[key] = []
        elif op == "-X":
            target = ["-j", chain]
            used = any(r[-2:] == target for k, rs in self.chains.items()
                       if k[:2] == key[:2] for r in rs)
            rc = 1 if key not in self.chains or self.chains[key] or used else 0
            if not rc:
                del self.chains[key]
        elif op == "-S":
            out = "".join(f"-A {chain} {' '.join(r)}\n" for r in self.chains.get(key, []))
        if rc and check:
            raise NetfilterError(f"{tool} {' '.join(args)}: failed")
        return subprocess.CompletedProcess([tool, *args], rc, out, "")

    def ours(self) -> list[Any]:
        return [(k, r) for k, rs in self.chains.items() for r in [*rs, None]
                if "APL-" in k[2] or (r is not None and "APL-br0" in " ".join(r))]


def test_install_then_remove_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeIptables()
    monkeypatch.setattr(netfilter, "_ipt", fake)
    c = Chains("br0", queues=2)
    c.install()
    assert fake.ours()
    c.install()  # a second start replaces, it does not add
    jumps = [r for (tool, table, chain), rs in fake.chains.items()
             if chain in ("FORWARD", "POSTROUTING") for r in rs]
    assert len(jumps) == 4
    c.remove()
    assert fake.ours() == []


@pytest.mark.parametrize("fail_on", [("mangle", "-N"), ("ip6tables", "NFQUEUE"),
                                     ("ip6tables", "POSTROUTING", "-I")])
def test_a_failed_install_takes_back_what_it_installed(
        monkeypatch: pytest.MonkeyPatch, fail_on: tuple[str, ...]) -> None:
    """A queue jump left with no worker behind it would drop the bridge's traffic."""
    fake = FakeIptables(fail_on)
    monkeypatch.setattr(netfilter, "_ipt", fake)
    with pytest.raises(NetfilterError):
        Chains("br0").install()
    assert fake.failed
    assert fake.ours() == []
