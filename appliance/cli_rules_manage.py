"""`appliance rules update|list|show|enable|disable|drop|diff|reload`: rule management.

The lead attaches them to the existing group:
    for cmd in manage_commands(): rules.add_command(cmd)

Exit status: 0 done; 1 refused or failed (the reasons on stderr; the active rules are
untouched); 2 a usage or input error (a missing file, a bad update.yaml, no daemon for
`reload`).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from appliance.errors import ApplianceError, ConfigError
from appliance.rules import confs
from appliance.rules_update import (
    DEFAULT_CONF_DIR,
    DEFAULT_DATA_DIR,
    DEFAULT_RULES_DIR,
    CheckPolicy,
    UpdateError,
    UpdatePaths,
    describe,
    run_update,
)

# Lines of changed alerts / verdicts printed per pcap by `rules diff` (--json has all).
DIFF_SHOWN = 20


def _die(msg: str, code: int) -> NoReturn:
    click.echo(f"appliance: error: {msg}", err=True)
    sys.exit(code)


def _rules_dir_option(f: Any) -> Any:
    return click.option("--rules-dir", type=click.Path(path_type=Path),
                        default=DEFAULT_RULES_DIR, show_default=True,
                        envvar="APPLIANCE_RULES_DIR",
                        help="Where the active ruleset (suricata.rules) is installed.")(f)


def _conf_dir_option(f: Any) -> Any:
    return click.option("--conf-dir", type=click.Path(path_type=Path),
                        default=DEFAULT_CONF_DIR, show_default=True,
                        envvar="APPLIANCE_RULES_CONF",
                        help="update.yaml and enable/disable/drop/modify.conf.")(f)


def _socket_option(f: Any) -> Any:
    from appliance.io.control import DEFAULT_PATH

    return click.option("--socket", "socket_path", envvar="APPLIANCE_CONTROL",
                        default=DEFAULT_PATH, show_default=True,
                        help="The daemon's control socket.")(f)


def _cache_dir() -> Path:
    from appliance.cli import default_cache_dir

    return default_cache_dir()


def _variables(config_path: str | None) -> Any:
    from appliance.config import load_config
    from appliance.rules.loader import variables_from

    try:
        cfg = load_config(config_path)
    except ApplianceError as e:
        _die(str(e), 2)
    return variables_from(cfg.address_groups, cfg.port_groups)


# --------------------------------------------------------------------------- update


@click.command(name="update")
@click.option("--offline", is_flag=True,
              help="Fetch nothing: network sources come from the last download's cache.")
@click.option("--source", "sources", multiple=True, metavar="NAME",
              help="Only this source from update.yaml (repeatable; default: the enabled).")
@click.option("--force", is_flag=True,
              help="Fetch again even if downloaded in the last 15 minutes.")
@click.option("--allow-shrink", is_flag=True,
              help="Accept a ruleset with less than half the rules of the active one.")
@click.option("--reload/--no-reload", "do_reload", default=True, show_default=True,
              help="Reload the running daemon after installing.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=DEFAULT_DATA_DIR,
              show_default=True, help="suricata-update's data directory (download cache).")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="Appliance config (rule variables such as HOME_NET).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_rules_dir_option
@_conf_dir_option
@_socket_option
def update(offline: bool, sources: tuple[str, ...], force: bool, allow_shrink: bool,
           do_reload: bool, data_dir: Path, config_path: str | None, as_json: bool,
           rules_dir: Path, conf_dir: Path, socket_path: str) -> None:
    """Fetch and merge rules with suricata-update, check them, install, reload."""
    paths = UpdatePaths(rules_dir, data_dir, conf_dir)
    policy = CheckPolicy(min_share_of_previous=0.0) if allow_shrink else CheckPolicy()
    try:
        result = run_update(paths, sources=sources, offline=offline, force=force,
                            policy=policy, variables=_variables(config_path),
                            cache_dir=_cache_dir())
    except UpdateError as e:
        if as_json and e.result is not None:
            click.echo(json.dumps(describe(e.result)))
        click.echo("appliance: update failed, the active rules are unchanged:", err=True)
        for reason in e.reasons:
            click.echo(f"  {reason}", err=True)
        sys.exit(1)
    except ApplianceError as e:
        _die(str(e), 2)
    out = describe(result)
    if not as_json:
        click.echo(f"installed {result.installed}: {result.summary()}")
    if do_reload:
        out["reload"] = _reload_daemon(socket_path, [str(paths.active)], as_json)
    if as_json:
        click.echo(json.dumps(out))


def _reload_daemon(socket_path: str, paths: list[str] | None, quiet: bool,
                   timeout: float = 300.0) -> Any:
    from appliance.io.control import ControlError, ControlUnavailable, control_call

    args: dict[str, Any] = {"paths": paths} if paths else {}
    try:
        reply = control_call(socket_path, "rules.reload", timeout=timeout, **args)
    except ControlUnavailable as e:
        if not quiet:
            click.echo(f"not reloaded: {e}; the daemon loads the new rules when it starts")
        return {"ok": False, "error": str(e)}
    except ControlError as e:
        _die(f"reload: {e}", 1)
    if not reply.get("ok"):
        _die(f"reload: {reply.get('error', 'refused')}", 1)
    result = reply.get("result")
    if not quiet:
        _print_reload(result)
    return result


def _print_reload(result: Any) -> None:
    if not isinstance(result, dict):
        click.echo(str(result))
        return
    click.echo(f"reloaded (generation {result.get('generation')}): "
               f"{result.get('active')} active, {result.get('failed')} not loaded; "
               f"compiled in {result.get('compile_s')} s")
    for q, w in sorted((result.get("workers") or {}).items()):
        if isinstance(w, dict) and w.get("op") == "swapped":
            click.echo(f"  worker {q}: swapped after {w.get('load_s')} s "
                       f"(swap {w.get('swap_ms')} ms, {w.get('flows')} flows kept)")
        else:
            click.echo(f"  worker {q}: {w}")


@click.command(name="reload")
@click.option("--rules", "rules", multiple=True, type=click.Path(),
              help="Load these files instead of the daemon's current ones (repeatable).")
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Seconds to wait for the daemon (a cold ET Open compile takes a few).")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON.")
@_socket_option
def reload(rules: tuple[str, ...], timeout: float, as_json: bool, socket_path: str) -> None:
    """Reload the rules in the running daemon (the old ones stay if the new fail)."""
    from appliance.io.control import ControlUnavailable

    try:
        from appliance.io.control import control_call

        reply = control_call(socket_path, "rules.reload", timeout=timeout,
                             **({"paths": [str(Path(r).resolve()) for r in rules]}
                                if rules else {}))
    except ControlUnavailable as e:
        _die(str(e), 2)
    except ApplianceError as e:
        _die(str(e), 1)
    if not reply.get("ok"):
        _die(str(reply.get("error", "refused")), 1)
    if as_json:
        click.echo(json.dumps(reply.get("result")))
    else:
        _print_reload(reply.get("result"))


# --------------------------------------------------------------------------- list / show


def _catalog(rules_dir: Path, rules: tuple[str, ...], required: bool = True) -> confs.Catalog:
    paths = [Path(r) for r in rules] or [rules_dir / "suricata.rules"]
    missing = [p for p in paths if not p.exists()]
    if missing:
        if not required:
            return confs.Catalog()
        _die(f"{missing[0]}: no such rule file (run `appliance rules update`, or give "
             "--rules)", 2)
    try:
        return confs.read_catalog(paths)
    except ApplianceError as e:
        _die(str(e), 2)


def _rules_option(f: Any) -> Any:
    return click.option("--rules", "rules", multiple=True, type=click.Path(),
                        help="Rule files to read instead of the active ruleset.")(f)


@click.command(name="list")
@click.option("--enabled", "state", flag_value="enabled", help="Only enabled rules.")
@click.option("--disabled", "state", flag_value="disabled", help="Only disabled rules.")
@click.option("--search", default=None, metavar="TEXT",
              help="Only rules whose text contains TEXT (case-insensitive).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_rules_dir_option
@_rules_option
def list_(state: str | None, search: str | None, as_json: bool, rules_dir: Path,
          rules: tuple[str, ...]) -> None:
    """List the rules of the active ruleset: SID, action, state, message."""
    cat = _catalog(rules_dir, rules)
    needle = search.lower() if search else None
    shown = 0
    for e in sorted(cat.entries.values(), key=lambda e: (e.gid, e.sid)):
        if (state == "enabled" and not e.enabled) or (state == "disabled" and e.enabled):
            continue
        if needle is not None and needle not in e.text.lower():
            continue
        shown += 1
        if as_json:
            click.echo(json.dumps({"gid": e.gid, "sid": e.sid, "rev": e.rev,
                                   "action": e.action, "enabled": e.enabled,
                                   "noalert": e.noalert, "msg": e.msg}))
        else:
            flags = ("on " if e.enabled else "off") + (" noalert" if e.noalert else "")
            sid = f"{e.gid}:{e.sid}" if e.gid != 1 else str(e.sid)
            click.echo(f"{sid:>10}  {e.action:<7} {flags:<11} {e.msg}")
    if not as_json:
        click.echo(f"{shown} rule(s)", err=True)


@click.command(name="show")
@click.argument("sid")
@_rules_dir_option
@_conf_dir_option
@_rules_option
def show(sid: str, rules_dir: Path, conf_dir: Path, rules: tuple[str, ...]) -> None:
    """One rule: its text, state, and the conf lines that name it."""
    try:
        target = confs.parse_target(sid)
    except ConfigError as err:
        _die(str(err), 2)
    key = target.single_sid
    if key is None:
        _die(f"{sid}: give one SID (2019401 or 1:2019401)", 2)
    cat = _catalog(rules_dir, rules)
    e = cat.get(*key)
    if e is None:
        _die(f"no rule {sid} in {', '.join(rules) or rules_dir / 'suricata.rules'}", 1)
    click.echo(f"sid {e.gid}:{e.sid} rev {e.rev}  {e.action}  "
               f"{'enabled' if e.enabled else 'disabled'}"
               f"{'  noalert' if e.noalert else ''}")
    click.echo(f"msg: {e.msg}")
    click.echo(f"at:  {e.file}:{e.line}")
    if e.sets:
        click.echo(f"sets flowbits: {', '.join(e.sets)}")
    if e.checks:
        click.echo(f"tests flowbits: {', '.join(e.checks)}")
    for name in confs.CONF_FILES:
        conf = confs.ConfFile.load(conf_dir / name)
        for line in conf.entries():
            if _names_rule(line, e):
                click.echo(f"{name}: {line}")
    click.echo(("" if e.enabled else "# ") + e.text)


def _names_rule(line: str, e: confs.CatalogEntry) -> bool:
    first = line.split()[0] if line.split() else ""
    t = confs.parse_target_or_none(first) or confs.parse_target_or_none(line)
    if t is None:
        return False
    if t.kind == "sid":
        return (e.gid, e.sid) in t.sids
    return bool(t.kind == "re" and confs.Catalog({(e.gid, e.sid): e}).matching(t))


# --------------------------------------------------------------------------- enable ...


def _edit(fn: Callable[..., confs.Change], selector: str, conf_dir: Path, rules_dir: Path,
          rules: tuple[str, ...], **kw: Any) -> None:
    cat = _catalog(rules_dir, rules, required=False)
    try:
        change = fn(conf_dir, selector, cat if cat.entries else None, **kw)
    except confs.Refused as e:
        click.echo(f"appliance: refused: {e}", err=True)
        sys.exit(1)
    except ApplianceError as e:
        _die(str(e), 2)
    for p in change.changed:
        click.echo(f"updated {p}")
    for note in change.notes:
        click.echo(f"note: {note}")
    if change.changed:
        click.echo("run `appliance rules update` to apply it")


@click.command(name="enable")
@click.argument("selector", metavar="SID|GROUP")
@_conf_dir_option
@_rules_dir_option
@_rules_option
def enable(selector: str, conf_dir: Path, rules_dir: Path, rules: tuple[str, ...]) -> None:
    """Enable a rule or a group (enable.conf; removed from disable.conf)."""
    _edit(confs.enable, selector, conf_dir, rules_dir, rules)


@click.command(name="disable")
@click.argument("selector", metavar="SID|GROUP")
@_conf_dir_option
@_rules_dir_option
@_rules_option
def disable(selector: str, conf_dir: Path, rules_dir: Path, rules: tuple[str, ...]) -> None:
    """Disable a rule or a group (disable.conf; removed from enable.conf)."""
    _edit(confs.disable, selector, conf_dir, rules_dir, rules)


@click.command(name="drop")
@click.argument("selector", metavar="SID|GROUP")
@click.option("--force", is_flag=True,
              help="Write the drop line even for a noalert or disabled rule.")
@_conf_dir_option
@_rules_dir_option
@_rules_option
def drop(selector: str, force: bool, conf_dir: Path, rules_dir: Path,
         rules: tuple[str, ...]) -> None:
    """Switch a rule or a group to drop (drop.conf)."""
    _edit(confs.drop, selector, conf_dir, rules_dir, rules, force=force)


# --------------------------------------------------------------------------- diff


@dataclass
class ReplayOutcome:
    alerts: Counter[tuple[int, str, str]] = field(default_factory=Counter)
    msgs: dict[int, str] = field(default_factory=dict)
    verdicts: dict[int, str] = field(default_factory=dict)  # packet id -> verdict


class _Verdicts:
    def __init__(self, into: dict[int, str]) -> None:
        self.into = into

    def verdict(self, v: Any) -> None:
        self.into[int(v.packet_id)] = str(v.kind.value)


def replay_outcome(detector: Any, pcap: Path, engine_config: Any = None) -> ReplayOutcome:
    """Replay one pcap through a fresh engine with this detector."""
    from appliance.core.engine import Engine
    from appliance.io.eve import RecordingEve
    from appliance.io.pcap import PcapReader
    from appliance.runtime import Runtime

    out = ReplayOutcome()
    eve = RecordingEve()
    rt = Runtime(Engine(engine_config, detector), eve, verdicts=_Verdicts(out.verdicts))
    with PcapReader(pcap) as reader:
        rt.run(reader)
    rt.finish()
    for a in eve.of_type("alert"):
        sid = int(a["alert"]["signature_id"])
        out.alerts[(sid, str(a.get("src_ip")), str(a.get("dest_ip")))] += 1
        out.msgs[sid] = str(a["alert"].get("signature", ""))
    return out


def diff_outcomes(old: ReplayOutcome, new: ReplayOutcome) -> dict[str, Any]:
    added = sorted(set(new.alerts) - set(old.alerts))
    removed = sorted(set(old.alerts) - set(new.alerts))
    changed = sorted((pid, old.verdicts.get(pid, "-"), new.verdicts.get(pid, "-"))
                     for pid in set(old.verdicts) | set(new.verdicts)
                     if old.verdicts.get(pid) != new.verdicts.get(pid))
    msgs = {**old.msgs, **new.msgs}

    def alert(k: tuple[int, str, str]) -> dict[str, Any]:
        return {"sid": k[0], "src": k[1], "dst": k[2], "msg": msgs.get(k[0], "")}

    return {
        "alerts_old": sum(old.alerts.values()), "alerts_new": sum(new.alerts.values()),
        "added": [alert(k) for k in added], "removed": [alert(k) for k in removed],
        "verdicts_changed": [{"packet": p, "old": a, "new": b} for p, a, b in changed],
        "verdicts_old": dict(Counter(old.verdicts.values())),
        "verdicts_new": dict(Counter(new.verdicts.values())),
    }


@click.command(name="diff")
@click.argument("old", type=click.Path(exists=True, path_type=Path))
@click.argument("new", type=click.Path(exists=True, path_type=Path))
@click.option("--pcap", "pcaps", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A capture to replay with both rulesets (repeatable).")
@click.option("--ips", is_flag=True,
              help="Inline semantics: drop/reject rules block, so verdicts can change.")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="Appliance config (rule variables, engine settings).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def diff(old: Path, new: Path, pcaps: tuple[Path, ...], ips: bool, config_path: str | None,
         as_json: bool) -> None:
    """Replay captures with the OLD and NEW rulesets; show the alerts (sid, src, dst) and
    verdicts that change. Exit 0 either way (a difference is not an error)."""
    from dataclasses import replace

    from appliance.config import load_config
    from appliance.rules.loader import load_detection, variables_from

    try:
        cfg = load_config(config_path)
        variables = variables_from(cfg.address_groups, cfg.port_groups)
        cache = _cache_dir()
        before = load_detection([old], variables, cache_dir=cache)
        after = load_detection([new], variables, cache_dir=cache)
    except ApplianceError as e:
        _die(str(e), 2)
    engine_cfg = replace(cfg.engine, mode="ips") if ips else cfg.engine
    report: dict[str, Any] = {"old": {"path": str(old), "active": before.active},
                              "new": {"path": str(new), "active": after.active},
                              "pcaps": {}}
    for pcap in pcaps:
        try:
            d = diff_outcomes(replay_outcome(before.engine, pcap, engine_cfg),
                              replay_outcome(after.engine, pcap, engine_cfg))
        except ApplianceError as e:
            _die(f"{pcap}: {e}", 2)
        report["pcaps"][str(pcap)] = d
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"old: {old} ({before.active} active)   new: {new} ({after.active} active)")
    for pcap, d in report["pcaps"].items():
        click.echo(f"{pcap}: alerts {d['alerts_old']} -> {d['alerts_new']}; "
                   f"{len(d['added'])} new, {len(d['removed'])} gone, "
                   f"{len(d['verdicts_changed'])} verdict(s) changed")
        for a in d["added"][:DIFF_SHOWN]:
            click.echo(f"  + {a['sid']} {a['src']} -> {a['dst']}  {a['msg']}")
        for a in d["removed"][:DIFF_SHOWN]:
            click.echo(f"  - {a['sid']} {a['src']} -> {a['dst']}  {a['msg']}")
        for v in d["verdicts_changed"][:DIFF_SHOWN]:
            click.echo(f"  packet {v['packet']}: {v['old']} -> {v['new']}")


def manage_commands() -> list[click.Command]:
    """The commands to add to the `rules` group."""
    return [update, list_, show, enable, disable, drop, diff, reload]
