"""CLI commands that talk to the running daemon through its control socket.

    appliance status [--watch]
    appliance quarantine add GUEST [--for 10m] [--reason TEXT] | list | release GUEST
    appliance block add ADDR [--for 1h] [--reason TEXT] | list | release ADDR
    appliance rules reload

Errors are one line on stderr: exit 2 when no daemon answers, 1 when it refused.
Attach with `for cmd in control_commands(): main.add_command(cmd)` and
`rules.add_command(rules_reload)`.
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime
from typing import Any, NoReturn

import click

from appliance.io.control import DEFAULT_PATH, ControlError, control_call

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """'90s', '10m', '1h', '1d' or a number of seconds -> seconds."""
    m = _DURATION.match(text.lower())
    if not m or float(m.group(1)) <= 0:
        raise click.BadParameter(f"{text!r}: use a positive number with s, m, h or d "
                                 "(e.g. 90s, 10m, 1h, 1d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


class Duration(click.ParamType[float]):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except click.BadParameter as e:
            self.fail(str(e.message), param, ctx)


def _socket_option(f: Any) -> Any:
    return click.option("--socket", "socket_path", envvar="APPLIANCE_CONTROL",
                        default=DEFAULT_PATH, show_default=True,
                        help="The daemon's control socket.")(f)


def _die(msg: str, code: int) -> NoReturn:
    click.echo(f"appliance: error: {msg}", err=True)
    sys.exit(code)


def call(socket_path: str, command: str, **args: Any) -> Any:
    """One control call; exits 2 (daemon unreachable) or 1 (refused) on failure."""
    try:
        reply = control_call(socket_path, command, **args)
    except ControlError as e:  # ControlUnavailable included: no daemon to answer
        _die(str(e), 2)
    if not reply.get("ok"):
        _die(str(reply.get("error", "refused")), 1)
    return reply.get("result")


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _print_actions(rows: Any) -> None:
    if not rows:
        click.echo("none")
        return
    for r in rows:
        left = r.get("until", 0) - time.time() if isinstance(r, dict) else 0
        click.echo(f"{r.get('target')}\tuntil {_when(r.get('until'))} ({max(left, 0):.0f} s "
                   f"left)\tlevel {r.get('level')}\t{r.get('reason')}")


def _applied(result: Any) -> None:
    if isinstance(result, dict):
        click.echo(str(result.get("reason", "done")))
    else:
        click.echo("done")


def _kind_group(kind: str, what: str) -> click.Group:
    @click.group(name=kind, help=f"{kind.capitalize()} {what} (through the daemon).")
    def group() -> None:
        pass

    @group.command(name="add")
    @click.argument("target")
    @click.option("--for", "duration", type=Duration(), default=None,
                  help="How long (90s, 10m, 1h, 1d); default: the escalation policy's.")
    @click.option("--reason", default="operator", show_default=True)
    @_socket_option
    def add(target: str, duration: float | None, reason: str, socket_path: str) -> None:
        args: dict[str, Any] = {"target": target, "reason": reason}
        if duration is not None:
            args["duration"] = duration
        _applied(call(socket_path, f"{kind}.add", **args))

    @group.command(name="list")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @_socket_option
    def list_(as_json: bool, socket_path: str) -> None:
        rows = call(socket_path, f"{kind}.list")
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            _print_actions(rows)

    @group.command(name="release")
    @click.argument("target")
    @_socket_option
    def release(target: str, socket_path: str) -> None:
        _applied(call(socket_path, f"{kind}.release", target=target))

    return group


quarantine = _kind_group("quarantine", "a guest: it may reach only the sinkhole")
block = _kind_group("block", "an address: its traffic is dropped")
redirect = _kind_group("redirect", "a guest's traffic, or one flow of it (GUEST>ADDRESS[:PORT]),"
                                   " to the sinkhole")


@click.command(name="reload")
@_socket_option
def rules_reload(socket_path: str) -> None:
    """Reload the rules in the running daemon (the old ones stay if the new fail)."""
    result = call(socket_path, "rules.reload")
    click.echo(result if isinstance(result, str) else json.dumps(result))


def with_rates(status: Any, previous: Any, seconds: float) -> Any:
    """Add per-second rates (packets/s, alerts/s) computed from two status replies."""
    if not isinstance(status, dict) or not isinstance(previous, dict) or seconds <= 0:
        return status
    now = status.get("traffic")
    before = previous.get("traffic")
    if isinstance(now, dict) and isinstance(before, dict):
        rates = {}
        for key in ("packets", "alerts", "bypassed"):
            a, b = now.get(key), before.get(key)
            if isinstance(a, int | float) and isinstance(b, int | float):
                rates[f"{key}/s"] = round(max(0.0, (a - b) / seconds), 1)
        return {"rates": rates, **status}
    return status


def _table(status: Any) -> Any:
    from rich.table import Table

    table = Table(title=f"appliance status  {datetime.now():%H:%M:%S}", expand=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    if not isinstance(status, dict):
        table.add_row("status", str(status))
        return table
    for key, value in status.items():
        if isinstance(value, list):
            if not value:
                table.add_row(key, "none")
            for i, item in enumerate(value):
                text = (", ".join(f"{k}={v}" for k, v in item.items())
                        if isinstance(item, dict) else str(item))
                table.add_row(key if i == 0 else "", text)
        elif isinstance(value, dict):
            for i, (k, v) in enumerate(value.items()):
                table.add_row(key if i == 0 else "", f"{k}: {v}")
            if not value:
                table.add_row(key, "-")
        else:
            table.add_row(key, str(value))
    return table


@click.command(name="status")
@click.option("--watch", is_flag=True, help="A live view, refreshed every second (Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@_socket_option
def status(watch: bool, as_json: bool, socket_path: str) -> None:
    """What the running daemon is doing: workers, packets, verdicts, alerts, actions."""
    if not watch:
        result = call(socket_path, "status")
        if as_json:
            click.echo(json.dumps(result, indent=2, default=str))
        else:
            from rich.console import Console

            Console().print(_table(result))
        return
    from rich.live import Live

    try:
        prev = call(socket_path, "status")
        t_prev = time.monotonic()
        with Live(_table(prev), refresh_per_second=4) as live:
            while True:
                time.sleep(1.0)
                cur = call(socket_path, "status")
                now = time.monotonic()
                live.update(_table(with_rates(cur, prev, now - t_prev)))
                prev, t_prev = cur, now
    except KeyboardInterrupt:
        pass


def control_commands() -> list[click.Command]:
    """The top-level commands to add to the main CLI."""
    return [status, quarantine, block, redirect]
