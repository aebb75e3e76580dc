"""`appliance` command line (click)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import click

from appliance import __version__
from appliance.cli_cache import cache as cache_group
from appliance.cli_control import control_commands
from appliance.cli_policy import policy as policy_group
from appliance.cli_rules import rules as rules_group
from appliance.cli_rules_manage import manage_commands
from appliance.config import Config, load_config
from appliance.core.detect.signatures import SignatureEngine
from appliance.core.engine import Engine
from appliance.core.policy import Policy
from appliance.errors import ApplianceError
from appliance.io.eve import EveWriter
from appliance.io.pcap import PcapReader
from appliance.policy_file import load_policy
from appliance.rules.loader import LoadedRules, load_detection, role_detectors, variables_from
from appliance.runtime import Runtime

BUNDLED_YARA = Path(__file__).resolve().parents[1] / "rules" / "yara"


def default_cache_dir() -> Path:
    """Where compiled prefilter databases are cached (keyed by their patterns' hash)."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "appliance"


def _fail(msg: str) -> NoReturn:
    """One-line error and exit 2 (usage/input errors), never a traceback."""
    click.echo(f"appliance: error: {msg}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="appliance")
def main() -> None:
    """Inline network security appliance for VM hosts."""


for _cmd in manage_commands():
    rules_group.add_command(_cmd)
main.add_command(rules_group)
main.add_command(policy_group)
main.add_command(cache_group)
for _cmd in control_commands():
    main.add_command(_cmd)


@main.command()
@click.option("--rules", "rules", multiple=True, type=click.Path(),
              help="Rule file or directory (repeatable); a directory means all *.rules "
                   "in it, with the classification.config beside them.")
@click.option("--ips", is_flag=True,
              help="Inline semantics: drop/reject rules block (EVE action 'blocked').")
@click.option("--policy", "policy_path", type=click.Path(), default=None,
              help="Guest roles (YAML); without it every guest has the default role.")
@click.option("--yara", "yara_dir", type=click.Path(), default=None,
              help="Scan downloads with these YARA rules (scan cache: --scan-cache).")
@click.option("--scan-cache", default=None, metavar="PATH|URL",
              help="Scan cache for --yara: a SQLite path or redis:// URL [a temporary "
                   "file].")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="YAML config file.")
@click.option("--eve", "eve", default=None, metavar="PATH|-",
              help="Write EVE JSON lines here ('-' for stdout).")
@click.option("--threshold-file", type=click.Path(), default=None,
              help="threshold.config (threshold, suppress, rate_filter lines) "
                   "[the one beside the rules, if any].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.argument("pcaps", nargs=-1, required=True, type=click.Path())
def replay(rules: tuple[str, ...], ips: bool, policy_path: str | None,
           threshold_file: str | None,
           yara_dir: str | None, scan_cache: str | None, config_path: str | None,
           eve: str | None, quiet: bool, pcaps: tuple[str, ...]) -> None:
    """Replay PCAP files through the same engine the live path uses."""
    ld = _load_all(rules, config_path, policy_path, quiet, threshold_file)
    cfg = ld.config
    try:
        readers = [PcapReader(p) for p in pcaps]
    except ApplianceError as e:
        _fail(str(e))
    writer = None
    if eve is not None:
        try:
            writer = EveWriter(eve)
        except ApplianceError as e:
            _fail(str(e))
    engine_cfg = replace(cfg.engine, mode="ips") if ips else cfg.engine
    scan = None
    if yara_dir is not None:
        import tempfile

        from appliance.filescan import build_scan

        target = scan_cache or str(Path(tempfile.mkdtemp(prefix="appliance-scan-")) /
                                   "scancache.db")
        try:
            # Replay waits for every verdict, so the same capture gives the same output.
            scan, _svc = build_scan(target, yara_dir, hold=60.0)
        except Exception as e:  # a bad YARA dir or cache target: one line, exit 2
            _fail(f"file scanning: {e}")
        engine_cfg = replace(engine_cfg, scan_files=True)
    engine = Engine(engine_cfg, ld.detector, ld.policy, ld.role_detectors)
    rt = Runtime(engine, writer, scan=scan)
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
            f"anomalies: {summary.anomalies}  actions: {summary.actions}  "
            f"seconds: {secs:.2f}  packets/s: {pps:,.0f}",
            err=True,
        )
    if engine.stats.errors:
        click.echo(f"appliance: warning: {engine.stats.errors} internal errors were "
                   "contained (packets still got verdicts)", err=True)


@main.command()
@click.option("--rules", "rules", multiple=True, type=click.Path(), help="Rules (repeatable).")
@click.option("--policy", "policy_path", type=click.Path(), default=None, help="Guest roles.")
@click.option("--config", "config_path", type=click.Path(), default=None)
@click.option("--ips", is_flag=True, help="Inline semantics (drops block).")
@click.option("--packet", "packet_no", type=int, default=None,
              help="Only this packet (pcap record number).")
@click.option("--flow", "flow_id", type=int, default=None, help="Only this EVE flow_id.")
@click.option("--live", is_flag=True,
              help="Ask the running daemon about its latest alerts instead of a capture.")
@click.option("--address", default=None, help="With --live: only alerts of this address.")
@click.option("--socket", "socket_path", default="/run/appliance/control.sock",
              show_default=True, help="With --live: the daemon's control socket.")
@click.argument("pcap", type=click.Path(), required=False)
def explain(rules: tuple[str, ...], policy_path: str | None, config_path: str | None,
            ips: bool, packet_no: int | None, flow_id: int | None, live: bool,
            address: str | None, socket_path: str, pcap: str | None) -> None:
    """Why each packet of PCAP got its verdict: guest, role, rules matched, actions.
    With --live, the same for the running daemon's latest alerts."""
    from appliance.core.commands import ActionRequest, Log, Verdict

    if live:
        _explain_live(socket_path, flow_id, address)
        return
    if pcap is None:
        _fail("explain needs a PCAP, or --live")

    ld = _load_all(rules, config_path, policy_path, quiet=True)
    cfg = replace(ld.config.engine, mode="ips") if ips else ld.config.engine
    engine = Engine(cfg, ld.detector, ld.policy, ld.role_detectors)
    try:
        reader = PcapReader(pcap)
    except ApplianceError as e:
        _fail(str(e))
    shown = 0
    with reader:
        for ev in reader:
            cmds = engine.handle(ev)
            alerts = [c.record for c in cmds if isinstance(c, Log)
                      and c.record.get("event_type") == "alert"]
            actions = [c for c in cmds if isinstance(c, ActionRequest)]
            verdict = next((c.kind.value for c in cmds if isinstance(c, Verdict)), "held")
            if packet_no is not None and ev.id != packet_no:
                continue
            if flow_id is not None and not any(a.get("flow_id") == flow_id for a in alerts):
                continue
            if not alerts and not actions and packet_no is None:
                continue  # nothing to explain: accepted with no rule matched
            shown += 1
            click.echo(f"packet {ev.id}: verdict {verdict}")
            for a in alerts:
                _explain_alert(a)
            for r in actions:
                click.echo(f"    action: {r.kind} {r.target} for {r.duration:.0f} s "
                           f"({r.reason})")
    if shown == 0:
        click.echo("nothing to explain: no packet matched a rule or asked for an action")


def _explain_alert(a: dict[str, Any]) -> None:
    al = a["alert"]
    meta = al.get("metadata", {})
    click.echo(f"  {a.get('src_ip')}:{a.get('src_port', '')} -> "
               f"{a.get('dest_ip')}:{a.get('dest_port', '')} {a.get('proto', '')}"
               f"  guest {meta.get('guest', ['-'])[0]}, role {meta.get('role', ['-'])[0]}")
    click.echo(f"    [{al['action']}] {al['gid']}:{al['signature_id']}:{al['rev']} "
               f"{al['signature']}")
    for why in meta.get("explain", []):
        click.echo(f"      why: {why}")


def _explain_live(socket_path: str, flow_id: int | None, address: str | None) -> None:
    from appliance.io.control import ControlError, control_call

    args: dict[str, Any] = {}
    if flow_id is not None:
        args["flow_id"] = flow_id
    if address is not None:
        args["address"] = address
    try:
        reply = control_call(socket_path, "explain", **args)
    except ControlError as e:
        _fail(str(e))
    if not reply.get("ok"):
        _fail(str(reply.get("error")))
    alerts = (reply.get("result") or {}).get("alerts", [])
    if not alerts:
        click.echo("nothing to explain: no recent alert matches")
    for a in alerts:
        click.echo(f"{a.get('timestamp')} flow {a.get('flow_id')}:")
        _explain_alert(a)


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


@dataclass
class _Loaded:
    config: Config
    detector: SignatureEngine | None
    policy: Policy | None = None
    role_detectors: dict[str, SignatureEngine] | None = None
    loaded: LoadedRules | None = None


def _load_all(rules: tuple[str, ...], cfg_path: str | None, policy_path: str | None,
              quiet: bool = False, threshold_file: str | None = None) -> _Loaded:
    """Config, rules and policy; per-role detection when a policy is given."""
    cfg, detector, loaded = _load(rules, cfg_path, quiet, threshold_file)
    if policy_path is None:
        return _Loaded(cfg, detector, loaded=loaded)
    try:
        pol = load_policy(policy_path)
    except ApplianceError as e:
        _fail(str(e))
    if loaded is not None:
        from appliance.cli_policy import unknown_rule_sets
        from appliance.rules.store import rule_files

        bad = unknown_rule_sets(pol, [p.name for p in rule_files([Path(r) for r in rules])])
        if bad:
            _fail(bad[0])
    roles = role_detectors(loaded, pol, default_cache_dir()) if loaded is not None else None
    if not quiet:
        click.echo(f"policy: {pol.source}: {len(pol.guests)} guests, roles "
                   f"{', '.join(sorted(pol.roles))}", err=True)
    return _Loaded(cfg, detector, pol, roles, loaded)


def _load(rules: tuple[str, ...], cfg_path: str | None, quiet: bool = False,
          threshold_file: str | None = None,
          ) -> tuple[Config, SignatureEngine | None, LoadedRules | None]:
    """Config and rules for replay and run; any user error is one line and exit 2."""
    for r in rules:
        if not Path(r).exists():
            _fail(f"{r}: no such rule file or directory")
    if threshold_file is not None and not rules:
        _fail("--threshold-file needs --rules")
    try:
        cfg = load_config(cfg_path)
        if not rules:
            return cfg, None, None
        t0 = time.perf_counter()
        loaded = load_detection(rules, variables_from(cfg.address_groups, cfg.port_groups),
                                cache_dir=default_cache_dir(), threshold_file=threshold_file)
    except ApplianceError as e:
        _fail(str(e))
    if not quiet:
        if loaded.thresholds is not None:
            t = loaded.thresholds
            click.echo(f"thresholds: {t.entries} entries from {', '.join(t.sources)}, "
                       f"{len(t.failures)} bad lines", err=True)
            for f in t.failures:
                click.echo(f"appliance: warning: {f.file}:{f.line}: {f.reason}", err=True)
        click.echo(f"rules: {loaded.active} active, {loaded.failed} failed "
                   f"(`appliance rules check` lists them), {loaded.disabled} disabled; "
                   f"loaded in {time.perf_counter() - t0:.1f} s"
                   f"{' (cached)' if loaded.from_cache else ''}", err=True)
    return cfg, loaded.engine, loaded


@main.command()
@click.option("--bridge", required=True, help="The bridge whose forwarded traffic to inspect.")
@click.option("--rules", "rules", multiple=True, type=click.Path(),
              help="Rule file or directory (repeatable).")
@click.option("--config", "config_path", type=click.Path(), default=None)
@click.option("--eve", default=None, metavar="PATH", help="EVE JSON output file.")
@click.option("--queues", default=1, show_default=True, type=click.IntRange(1, 64),
              help="NFQUEUE queues, one worker process each.")
@click.option("--fail-open/--fail-closed", default=False, show_default=True,
              help="When no worker can take a packet: let it through (opt-in) or drop it.")
@click.option("--policy", "policy_path", type=click.Path(), default=None,
              help="Guest roles (YAML).")
@click.option("--state-dir", default="/var/lib/appliance", show_default=True,
              help="Where actions (quarantine, block...) persist and are audited.")
@click.option("--control", "control_path", default="/run/appliance/control.sock",
              show_default=True, help="The control socket (root only).")
@click.option("--yara", "yara_dir", type=click.Path(), default=str(BUNDLED_YARA),
              show_default=True, help="YARA rules for files seen in traffic.")
@click.option("--scan-cache", default=None, metavar="PATH|URL",
              help="Scan cache: a SQLite path or redis:// URL [STATE_DIR/scancache.db].")
@click.option("--no-scan", is_flag=True, help="Do not scan files seen in traffic.")
@click.option("--metrics", default=None, metavar="ADDR:PORT",
              help="Serve Prometheus metrics here (off by default; loopback).")
@click.option("--endpoint-api", default=None, metavar="ADDR:PORT",
              help="Serve the scan cache's verdicts to guests' endpoint agents here "
                   "(the guest-facing address; off by default).")
@click.option("--endpoint-tokens", type=click.Path(dir_okay=False), default=None,
              help="Tokens for --endpoint-api: 'agent-name token' lines, not "
                   "world-readable.")
@click.option("--user", default="appliance", show_default=True,
              help="Started as root, run as this user with only CAP_NET_ADMIN and "
                   "CAP_NET_RAW (if the user exists); '' to stay root.")
@click.option("--watchdog", type=click.FloatRange(0.2, 600), default=2.0, show_default=True,
              help="Seconds without a heartbeat after which a worker is killed and "
                   "restarted.")
@click.option("--stats-interval", type=click.FloatRange(0, 86400), default=8.0,
              show_default=True, help="Seconds between EVE stats records (0: at exit only).")
@click.option("--threshold-file", type=click.Path(), default=None,
              help="threshold.config (threshold, suppress, rate_filter lines) "
                   "[the one beside the rules, if any].")
@click.option("--transport", type=click.Choice(["netlink", "netfilterqueue"]),
              default="netlink", show_default=True, envvar="APPLIANCE_TRANSPORT",
              help="NFQUEUE transport: netlink (GSO super-packets, batch verdicts) or "
                   "netfilterqueue (libnetfilter_queue, one verdict per packet).")
def run(bridge: str, rules: tuple[str, ...], config_path: str | None, eve: str | None,
        threshold_file: str | None,
        queues: int, fail_open: bool, policy_path: str | None, state_dir: str,
        control_path: str, yara_dir: str, scan_cache: str | None, no_scan: bool,
        metrics: str | None, endpoint_api: str | None, endpoint_tokens: str | None,
        user: str, watchdog: float, stats_interval: float, transport: str) -> None:
    """Inspect BRIDGE inline through NFQUEUE until SIGTERM or Ctrl-C."""
    from appliance.daemon import RunOptions, Supervisor

    ld = _load_all(rules, config_path, policy_path, threshold_file=threshold_file)
    cfg = replace(ld.config, engine=replace(ld.config.engine, mode="ips",
                                            log_pcap_cnt=False, live=True))
    variables = variables_from(ld.config.address_groups, ld.config.port_groups)
    sup = Supervisor(cfg, ld.detector,
                     RunOptions(bridge, queues, fail_open, eve, state_dir=state_dir,
                                control=control_path,
                                yara_dir=None if no_scan else yara_dir,
                                scan_cache=scan_cache or str(Path(state_dir) /
                                                             "scancache.db"),
                                user=user or None, metrics=metrics,
                                endpoint_api=endpoint_api,
                                endpoint_tokens=endpoint_tokens,
                                watchdog=watchdog, stats_interval=stats_interval,
                                transport=transport),
                     log=lambda m: click.echo(f"appliance: {m}", err=True),
                     policy=ld.policy, role_detectors=ld.role_detectors,
                     reload_args=(variables, default_cache_dir()))
    sup.policy_path = policy_path
    sup.loaded_rules = ld.loaded
    sup.cache_dir = default_cache_dir()
    if rules:
        from appliance.daemon import Detection
        from appliance.reload import SupervisorReloader

        def on_loaded(prep: Any) -> None:
            # Workers restarted from now on fork with the new rules.
            sup.detection = Detection(prep.loaded.engine, ld.policy, prep.roles or None)

        sup.reloader = SupervisorReloader(rules, variables, default_cache_dir(),
                                          ld.policy, current=ld.loaded, on_loaded=on_loaded,
                                          log=sup.log)
    try:
        sys.exit(sup.run())
    except ApplianceError as e:
        _fail(str(e))


@main.group()
@click.option("--prefix", default="apl-", show_default=True,
              help="Name prefix of the lab's namespaces (tests use their own).")
@click.pass_context
def lab(ctx: click.Context, prefix: str) -> None:
    """A VM host in network namespaces: bridge, guests, gateway, internet."""
    from appliance.lab import Lab

    try:
        ctx.obj = Lab(prefix)
    except ApplianceError as e:
        _fail(str(e))


@lab.command("up")
@click.pass_obj
def lab_up(obj: object) -> None:
    """Build the lab (replacing an existing one with the same prefix)."""
    from appliance.lab import Lab

    assert isinstance(obj, Lab)
    try:
        obj.up()
    except ApplianceError as e:
        _fail(str(e))
    click.echo(obj.status())


@lab.command("down")
@click.pass_obj
def lab_down(obj: object) -> None:
    """Remove everything `lab up` made."""
    from appliance.lab import Lab

    assert isinstance(obj, Lab)
    obj.down()


@lab.command("status")
@click.pass_obj
def lab_status(obj: object) -> None:
    from appliance.lab import Lab

    assert isinstance(obj, Lab)
    click.echo(obj.status())


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("guest")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def lab_exec(obj: object, guest: str, argv: tuple[str, ...]) -> None:
    """Run a command inside a lab host: lab exec desktop -- curl http://203.0.113.10/"""
    import os

    from appliance.lab import Lab

    assert isinstance(obj, Lab)
    try:
        cmd = obj.exec_argv(guest, list(argv))
    except ApplianceError as e:
        _fail(str(e))
        return
    os.execvp(cmd[0], cmd)


@lab.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def lab_run(obj: object, args: tuple[str, ...]) -> None:
    """Run the appliance inline on the lab's bridge (takes `appliance run` options)."""
    import os

    from appliance.lab import BRIDGE, Lab

    assert isinstance(obj, Lab)
    if not obj.exists():
        _fail(f"lab {obj.prefix!r} is not up (appliance lab --prefix {obj.prefix} up)")
    extra = list(args)
    if "--policy" not in extra:  # the lab's guests and their roles, unless told otherwise
        extra += ["--policy", str(Path(__file__).resolve().parents[1] / "rules" /
                                  "lab-policy.yaml")]
    # The lab's own state and control socket, so labs with other prefixes do not meet.
    if "--state-dir" not in extra:
        extra += ["--state-dir", str(obj.state / "state")]
    if "--control" not in extra:
        extra += ["--control", str(obj.state / "control.sock")]
    cmd = obj.exec_argv("host", [sys.executable, "-m", "appliance.cli", "run", "--bridge",
                                 BRIDGE, *extra])
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
