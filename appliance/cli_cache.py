"""``appliance cache``: inspect and trim the scan cache directly (no daemon needed).

SQLite in WAL mode lets these commands run beside a live appliance; with Redis they
talk to the shared server.
"""

from __future__ import annotations

import json
import re
from typing import Any

import click

from appliance.io.cache import ScanCache, check_sha256, open_cache

DEFAULT_DB = "/var/lib/appliance/scancache.db"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> float:
    """'90' or '90s', '15m', '12h', '30d', '2w' -> seconds."""
    m = _DURATION.match(text.lower())
    if not m:
        raise click.BadParameter(f"{text!r}: expected a number with s, m, h, d or w")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


class _Failure(click.ClickException):
    """One ``Error: ...`` line on stderr, exit status 2 (as `appliance rules`)."""

    exit_code = 2


def _open(ctx: click.Context, create: bool = False) -> ScanCache:
    where: str = ctx.obj["db"]
    try:
        cache = open_cache(where, create=create)
    except FileNotFoundError:
        raise _Failure(f"{where}: no scan cache (the appliance creates it when it "
                       "scans its first file)") from None
    except Exception as e:  # redis connection errors, unreadable file
        raise _Failure(f"{where}: {e}") from None
    ctx.call_on_close(cache.close)
    return cache


def _call(what: str, fn: Any) -> Any:
    try:
        return fn()
    except ValueError as e:
        raise _Failure(str(e)) from None
    except Exception as e:  # a store error is one line, not a traceback
        raise _Failure(f"{what}: {type(e).__name__}: {e}") from None


@click.group(name="cache")
@click.option("--db", default=DEFAULT_DB, show_default=True, metavar="PATH|URL",
              help="SQLite file, or a redis:// / unix:// URL for a shared cache.")
@click.pass_context
def cache(ctx: click.Context, db: str) -> None:
    """The shared scan cache: file verdicts by sha256."""
    ctx.ensure_object(dict)
    ctx.obj["db"] = db


@cache.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Counts of files, verdicts, endpoint reports, scans and cache hits."""
    c = _open(ctx)
    s = _call("stats", c.stats).to_json()
    if as_json:
        click.echo(json.dumps(s, sort_keys=True))
        return
    by = ", ".join(f"{k} {v}" for k, v in sorted(s["by_verdict"].items())) or "none"
    click.echo(f"files      {s['files']}")
    click.echo(f"verdicts   {s['verdicts']} ({by})")
    click.echo(f"reports    {s['reports']} from endpoints")
    click.echo(f"scans      {s['scans']}")
    click.echo(f"hits       {s['hits']}")


@cache.command()
@click.argument("sha256")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def lookup(ctx: click.Context, sha256: str, as_json: bool) -> None:
    """Every stored verdict for a file (all scanner identities) and endpoint reports.

    Exit status 1 when the cache knows nothing about the file.
    """
    try:
        sha = check_sha256(sha256)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SHA256") from None
    c = _open(ctx)
    entries = _call("lookup", lambda: c.entries(sha))
    reports = _call("lookup", lambda: c.reports(sha))
    if as_json:
        click.echo(json.dumps({"sha256": sha, "verdicts": [e.to_json() for e in entries],
                               "endpoint_reports": [r.to_json() for r in reports]},
                              sort_keys=True))
    else:
        if not entries and not reports:
            click.echo(f"{sha}: not in the cache")
        if entries:
            e = entries[0]
            click.echo(f"{sha}: first seen {_when(e.first_seen)}, last seen "
                       f"{_when(e.last_seen)}, {e.hits} hits, guests: "
                       f"{', '.join(e.guests) or '-'}")
        for e in entries:
            sigs = f" ({', '.join(e.result.signatures)})" if e.result.signatures else ""
            why = f" [{e.result.detail}]" if e.result.detail else ""
            click.echo(f"  host {e.verdict.value}{sigs}{why}  identity {e.identity}  "
                       f"scanned {_when(e.scanned_at)}")
        for r in reports:
            sig = f" ({r.signature})" if r.signature else ""
            click.echo(f"  endpoint {r.reporter}: {r.verdict.value}{sig} by {r.scanner}  "
                       f"reported {_when(r.reported_at)}")
    if not entries and not reports:
        ctx.exit(1)


@cache.command()
@click.option("--older-than", "older_than", default=None, metavar="DURATION",
              help="Only files not seen for this long (e.g. 30d, 12h); default: all.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before purging everything.")
@click.pass_context
def purge(ctx: click.Context, older_than: str | None, yes: bool) -> None:
    """Forget files (their verdicts, guests and endpoint reports)."""
    age = parse_duration(older_than) if older_than is not None else None
    if age is None and not yes:
        click.confirm("Purge every entry of the scan cache?", abort=True)
    c = _open(ctx)
    n = _call("purge", lambda: c.purge(age))
    click.echo(f"purged {n} files")


def _when(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
