"""`appliance policy check`: validate a policy file, and check it against a ruleset."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.core.policy import Policy
from appliance.errors import ApplianceError
from appliance.policy_file import load_policy


class _Invalid(click.ClickException):
    exit_code = 2


@click.group(name="policy")
def policy() -> None:
    """Guest roles: which rules apply to whom, and what happens on detection."""


def check_against_rules(pol: Policy, rules: tuple[Path, ...]) -> list[str]:
    """Problems of a policy with respect to a ruleset: unknown classtypes and sids."""
    from appliance.rules.store import load_rules

    rs = load_rules(rules)
    classtypes = set(rs.classifications)
    sids = {r.sid for r in rs.rules}
    problems = unknown_rule_sets(pol, [Path(f).name for f in rs.files])
    for role in pol.roles.values():
        sel = role.rules
        for ct in sorted(sel.classtypes | sel.exclude_classtypes |
                         {c for o in role.overrides for c in o.classtypes}):
            if classtypes and ct not in classtypes:
                problems.append(f"role {role.name}: classtype {ct!r} is not in the ruleset's "
                                "classification.config")
        for sid in sorted(sel.sids | {s for o in role.overrides for s in o.sids}):
            if sid not in sids:
                problems.append(f"role {role.name}: sid {sid} is not in the ruleset")
    return problems


def unknown_rule_sets(pol: Policy, file_names: list[str]) -> list[str]:
    """Rule files a role selects that the loaded ruleset does not have (file:line)."""
    have = set(file_names)
    out = []
    for role in pol.roles.values():
        for name in sorted(role.rules.files - have):
            where = role.where.get("rules.files", pol.source)
            out.append(f"{where}: roles.{role.name}.rules.files: unknown rule set {name!r} "
                       "(not among the loaded rule files)")
    return out


@policy.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--rules", "rules", multiple=True, type=click.Path(path_type=Path),
              help="Also check the policy against these rule files/directories.")
def check(file: Path, rules: tuple[Path, ...]) -> None:
    """Validate FILE; exit 2 with file:line: field: reason on the first error."""
    try:
        pol = load_policy(file)
    except ApplianceError as e:
        raise _Invalid(str(e)) from None
    click.echo(f"{file}: {len(pol.roles)} roles ({', '.join(sorted(pol.roles))}), "
               f"{len(pol.guests)} guests")
    for g in pol.guests:
        ports = ",".join(sorted(g.ports)) or "-"
        nets = ",".join(str(n) for n in g.networks) or "-"
        click.echo(f"  guest {g.name}: role {g.role}; ports {ports}; addresses {nets}")
    if rules:
        try:
            problems = check_against_rules(pol, rules)
        except ApplianceError as e:
            raise _Invalid(str(e)) from None
        for p in problems:
            click.echo(f"  problem: {p}", err=True)
        if problems:
            raise SystemExit(1)


@policy.command("reload")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--socket", "socket_path", envvar="APPLIANCE_CONTROL",
              default="/run/appliance/control.sock", show_default=True,
              help="The daemon's control socket.")
def reload(file: Path | None, socket_path: str) -> None:
    """Load FILE (or the daemon's policy file again) in the running daemon; a policy
    with errors is refused and the previous one stays."""
    from appliance.io.control import ControlUnavailable, control_call

    try:
        reply = control_call(socket_path, "policy.reload", timeout=120,
                             **({"file": str(file.resolve())} if file else {}))
    except ControlUnavailable as e:
        click.echo(f"appliance: error: {e}", err=True)
        raise SystemExit(2) from None
    if not reply.get("ok"):
        click.echo(f"appliance: error: {reply.get('error')}", err=True)
        raise SystemExit(1)
    res = reply.get("result") or {}
    click.echo(f"policy {res.get('path')}: {res.get('guests')} guests, roles "
               f"{', '.join(res.get('roles', []))}")
