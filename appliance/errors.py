"""Error hierarchy: every error a user can cause has a class and a clear message."""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance reports to a user."""


class ConfigError(ApplianceError):
    """A configuration file or option is invalid."""


class InputError(ApplianceError):
    """An input file (pcap, rules) is missing, unreadable or of the wrong kind."""


class RuleError(ApplianceError):
    """A rule could not be parsed or compiled; carries where it came from."""

    def __init__(self, reason: str, file: str | None = None, line: int | None = None,
                 sid: int | None = None) -> None:
        self.reason = reason
        self.file = file
        self.line = line
        self.sid = sid
        where = f"{file}:{line}: " if file is not None and line is not None else ""
        super().__init__(f"{where}{reason}")


class ActionError(ApplianceError):
    """An action on a bridge port (quarantine, redirect, block) failed."""
