"""The lab and appliance runs around a lab bench (flood, soak): one set-up, one
tear-down (every appliance stopped, the lab removed, also on failure)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from inline import Running

from appliance.lab import Lab


@contextlib.contextmanager
def lab_with_appliances(prefix: str, rules: list[str], eve: Path
                        ) -> Iterator[tuple[Lab, Callable[..., Any]]]:
    """Yields the lab and `start(*args)`, which runs `appliance lab run` on it with the
    rules and EVE output (extra arguments appended) and returns the Running."""
    lab = Lab(prefix)
    lab.up()
    running: list[Running] = []

    def start(*args: str) -> Running:
        r = Running(lab, rules, "--eve", str(eve), *args)
        running.append(r)
        return r

    try:
        yield lab, start
    finally:
        for r in running:
            r.stop()
        lab.down()
