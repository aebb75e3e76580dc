"""EVE JSON lines writer (Suricata 7 compatible records come from core/records.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Protocol, TextIO

from appliance.errors import InputError


class EveSink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class EveWriter:
    """Writes one compact JSON object per line to a file, or to stdout for "-".

    With `append=True` (the inline workers: several processes, one file) every record is
    one write(2) on an O_APPEND descriptor, so lines from different workers never
    interleave."""

    def __init__(self, target: str | Path, append: bool = False, fd: int | None = None
                 ) -> None:
        """`fd`: an O_APPEND descriptor of `target` opened earlier (the daemon opens
        the file before it drops privileges; its workers write through a copy)."""
        self._own = str(target) != "-"
        self._fd = -1
        self._out: TextIO = sys.stdout
        if self._own and fd is not None:
            self._fd = os.dup(fd)
        elif self._own and append:
            try:
                self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            except OSError as e:
                raise InputError(f"{target}: cannot write EVE output: {e.strerror}") from None
        elif self._own:
            try:
                self._out = open(target, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
            except OSError as e:
                raise InputError(f"{target}: cannot write EVE output: {e.strerror}") from None
        else:
            self._out = sys.stdout
        self._dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def write(self, record: dict[str, Any]) -> None:
        if self._fd >= 0:
            os.write(self._fd, (self._dumps(record) + "\n").encode())
            return
        self._out.write(self._dumps(record))
        self._out.write("\n")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        elif self._own:
            self._out.close()
        else:
            self._out.flush()


class RecordingEve:
    """The fake for tests: keeps every record in memory."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event_type") == event_type]
