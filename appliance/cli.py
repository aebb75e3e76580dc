"""`appliance` command line (click)."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import click

from appliance import __version__
from appliance.cli_rules import rules as rules_group
from appliance.config import load_config
from appliance.core.engine import Engine
from appliance.errors import ApplianceError
from appliance.io.eve import EveWriter
from appliance.io.pcap import PcapReader
from appliance.rules.loader import load_detection, variables_from
from appliance.runtime import Runtime


def default_cache_dir() -> Path:
    """Where compiled prefilter databases are cached (keyed by their patterns' hash)."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "appliance"


def _fail(msg: str) -> None:
    """One-line error and exit 2 (usage/input errors), never a traceback."""
    click.echo(f"appliance: error: {msg}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="appliance")
def main() -> None:
    """Inline network security appliance for VM hosts."""


main.add_command(rules_group)


@main.command()
@click.option("--rules", "rules", multiple=True, type=click.Path(),
              help="Rule file or directory (repeatable); a directory means all *.rules "
                   "in it, with the classification.config beside them.")
@click.option("--ips", is_flag=True,
              help="Inline semantics: drop/reject rules block (EVE action 'blocked').")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="YAML config file.")
@click.option("--eve", "eve", default=None, metavar="PATH|-",
              help="Write EVE JSON lines here ('-' for stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.argument("pcaps", nargs=-1, required=True, type=click.Path())
def replay(rules: tuple[str, ...], ips: bool, config_path: str | None, eve: str | None,
           quiet: bool, pcaps: tuple[str, ...]) -> None:
    """Replay PCAP files through the same engine the live path uses."""
    for r in rules:
        if not Path(r).exists():
            _fail(f"{r}: no such rule file or directory")
    try:
        cfg = load_config(config_path)
        readers = [PcapReader(p) for p in pcaps]
    except ApplianceError as e:
        _fail(str(e))
        return
    detector = None
    if rules:
        t_load = time.perf_counter()
        try:
            loaded = load_detection(rules, variables_from(cfg.address_groups, cfg.port_groups),
                                    cache_dir=default_cache_dir())
        except ApplianceError as e:
            _fail(str(e))
            return
        detector = loaded.engine
        if not quiet:
            failed = loaded.ruleset.failed + len(loaded.compile_failures)
            click.echo(f"rules: {loaded.active} active, {failed} failed "
                       f"(`appliance rules check` lists them), "
                       f"{loaded.ruleset.disabled_count} disabled; loaded in "
                       f"{time.perf_counter() - t_load:.1f} s", err=True)
    writer = None
    if eve is not None:
        try:
            writer = EveWriter(eve)
        except ApplianceError as e:
            _fail(str(e))
    engine_cfg = replace(cfg.engine, mode="ips") if ips else cfg.engine
    engine = Engine(engine_cfg, detector)
    rt = Runtime(engine, writer)
    show_progress = not quiet and sys.stderr.isatty()
    t0 = time.perf_counter()
    cut: list[str] = []
    for reader in readers:
        with reader:
            if show_progress:
                _run_with_progress(rt, reader)
            else:
                rt.run(reader)
            if reader.truncated_at is not None:
                cut.append(f"{reader.path}: truncated at byte {reader.truncated_at} after "
                           f"{reader.count} complete packets ({reader.truncated_reason})")
    summary = rt.finish()
    secs = time.perf_counter() - t0
    for line in cut:
        click.echo(f"appliance: warning: {line}", err=True)
    if not quiet:
        pps = summary.packets / secs if secs > 0 else 0.0
        click.echo(
            f"packets: {summary.packets}  flows: {summary.flows}  alerts: {summary.alerts}  "
            f"anomalies: {summary.anomalies}  seconds: {secs:.2f}  packets/s: {pps:,.0f}",
            err=True,
        )
    if engine.stats.errors:
        click.echo(f"appliance: warning: {engine.stats.errors} internal errors were "
                   "contained (packets still got verdicts)", err=True)


def _run_with_progress(rt: Runtime, reader: PcapReader) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    total = None
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} packets"),
        TextColumn("{task.fields[pps]:,.0f} pkt/s"),
        TimeElapsedColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task(reader.path.name, total=total, pps=0.0)
        t0 = time.perf_counter()

        def tick(n: int) -> None:
            dt = time.perf_counter() - t0
            progress.update(task, completed=n, pps=n / dt if dt > 0 else 0.0)

        rt.run(reader, on_packet=tick)
