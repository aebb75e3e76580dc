"""Glue between the engine's ScanRequest/Hold and the scan-cache service.

The engine holds the packet that completes a download and asks for the file's verdict
(ScanRequest); the runtime answers with a FileScanned event and the engine then gives the
held packet its Verdict. Here the answer comes from io.scanners.FileVerdictService (cache
first, then YARA/clamd), waiting at most `hold` seconds: past it the verdict is
"unknown" and the packet goes on (the scan finishes in the background and its verdict is
cached for the next fetch).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from appliance.core.commands import Command, ScanRequest
from appliance.core.engine import Engine
from appliance.core.events import FileScanned

Scan = Callable[[ScanRequest], tuple[str, tuple[str, ...], str]]

# How long the final packet of a download may wait for its verdict (a cache hit answers
# at once; a YARA scan of a small file takes milliseconds).
DEFAULT_HOLD = 0.3


def service_scan(service: Any, hold: float = DEFAULT_HOLD) -> Scan:
    """A synchronous scan function over a FileVerdictService, bounded by `hold`."""

    def scan(req: ScanRequest) -> tuple[str, tuple[str, ...], str]:
        fut = service.submit(req.sha256, req.data, req.guest)
        try:
            d = fut.result(timeout=hold)
        except FutureTimeout:
            return "unknown", (), "timeout"
        return str(d.result.verdict.value), tuple(d.result.signatures), str(d.source)

    return scan


def build_scan(cache_target: str | Path, yara_dir: str | Path,
               hold: float = DEFAULT_HOLD) -> tuple[Scan, Any]:
    """Cache (SQLite path or redis:// URL) + YARA rules -> (scan function, service)."""
    from appliance.io.cache import open_cache
    from appliance.io.scanners import build_service

    svc = build_service(open_cache(str(cache_target)), yara_dir)
    return service_scan(svc, hold), svc


def resolve(engine: Engine, commands: list[Command], scan: Scan | None) -> list[Command]:
    """Answer every ScanRequest in `commands` (and in what the answers produce) and
    return all commands: the held packets' Verdicts come out of the FileScanned events."""
    out: list[Command] = []
    todo = list(commands)
    while todo:
        c = todo.pop(0)
        out.append(c)
        if isinstance(c, ScanRequest):
            verdict, sigs, source = scan(c) if scan is not None else ("unknown", (), "none")
            todo.extend(engine.handle(FileScanned(c.token, verdict, sigs, source)))
    return out
