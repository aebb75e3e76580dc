"""`appliance rules update`: suricata-update fetches and merges, the appliance checks.

suricata-update (the PyPI package, the tool Suricata users know) runs as a subprocess with
everything explicit, so no /etc/suricata or /var/lib/suricata file leaks in:

- ``-D DATA_DIR`` (its download cache), ``-c`` a config file written for this run (sources
  from ``rules/update.yaml``), ``-o`` a fresh staging directory;
- ``--suricata-version 7.0.4``: the ruleset flavour, without a suricata binary;
- ``--no-test``: the merged file is checked by the appliance's own loader and compiler,
  which is what will run it (suricata -T would check a different engine);
- ``--no-reload`` (the CLI reloads the daemon itself), ``--fail`` (a source that cannot be
  fetched is an error, not a warning), ``--offline``, ``--force``;
- the four conf files from the conf directory (``--enable-conf`` ...).

Only when the merged file passes the check is it installed as the active ruleset, by a
write to a temporary file beside it and a rename; any failure leaves the active file as
it was and comes back as reasons.

Two suricata-update behaviours are handled here. With no URL source it silently adds ET
Open from the internet, so a run with local sources only gets an empty file:// source
instead. And it takes a download that is not an archive as one rules file (a corrupt
tarball then "succeeds" with no rules), so local archives are opened before the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlparse

import yaml

from appliance.errors import ApplianceError, ConfigError
from appliance.rules.confs import DISABLE, DROP, ENABLE, MODIFY, read_catalog
from appliance.rules.loader import LoadedRules, load_detection
from appliance.rules.store import RuleFailure
from appliance.rules.variables import Variables

SURICATA_VERSION: Final = "7.0.4"
ACTIVE_NAME: Final = "suricata.rules"  # suricata-update's merged file name
PREVIOUS_NAME: Final = "suricata.rules.previous"
CLASSIFICATION: Final = "classification.config"
DEFAULT_RULES_DIR: Final = Path("/var/lib/appliance/rules")
DEFAULT_DATA_DIR: Final = DEFAULT_RULES_DIR / "update"
# The repository's rules/ (update.yaml and the conf files) when run from a checkout.
DEFAULT_CONF_DIR: Final = Path(__file__).resolve().parents[2] / "rules"
# A full ET Open download on a slow link takes a minute or two; a hung fetch must not
# hold the update lock forever.
SUBPROCESS_TIMEOUT: Final = 900.0
# Lines of suricata-update's log kept in a result (its errors are near the end).
LOG_TAIL: Final = 40
_ARCHIVE_SUFFIXES: Final = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")


class UpdateError(ApplianceError):
    """The update did not install anything; ``reasons`` says why, one line each."""

    def __init__(self, reasons: Sequence[str], result: UpdateResult | None = None) -> None:
        self.reasons = tuple(reasons)
        self.result = result
        super().__init__("; ".join(self.reasons))


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    url: str | None = None  # http(s):// or file://
    path: Path | None = None  # a local .rules file or a directory of them
    enabled: bool = True

    @property
    def is_network(self) -> bool:
        return self.url is not None and not self.url.startswith("file:")


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    sources: tuple[Source, ...]
    suricata_version: str = SURICATA_VERSION
    classification: Path | None = None

    def select(self, names: Sequence[str] = ()) -> list[Source]:
        """The named sources (any, enabled or not), or every enabled one."""
        if not names:
            return [s for s in self.sources if s.enabled]
        known = {s.name: s for s in self.sources}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"no such source: {', '.join(unknown)} (known: "
                              f"{', '.join(sorted(known)) or 'none'})")
        return [known[n] for n in dict.fromkeys(names)]


def load_update_config(path: Path) -> UpdateConfig:
    """rules/update.yaml; relative paths are relative to its directory."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (the update sources)") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping")
    extra = set(doc) - {"sources", "suricata-version", "classification"}
    if extra:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(extra))}")
    base = path.parent
    sources: list[Source] = []
    for i, item in enumerate(doc.get("sources") or []):
        where = f"{path}: sources[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigError(f"{where}: needs a name")
        if set(item) - {"name", "url", "path", "enabled"}:
            raise ConfigError(f"{where}: unknown key(s) "
                              f"{', '.join(sorted(set(item) - {'name', 'url', 'path', 'enabled'}))}")
        url, local = item.get("url"), item.get("path")
        if (url is None) == (local is None):
            raise ConfigError(f"{where} ({item['name']}): give exactly one of url, path")
        if url is not None and (not isinstance(url, str) or urlparse(url).scheme not in
                                ("http", "https", "file")):
            raise ConfigError(f"{where}: url must be http://, https:// or file://")
        p = None
        if local is not None:
            p = Path(str(local))
            p = p if p.is_absolute() else base / p
        if any(s.name == item["name"] for s in sources):
            raise ConfigError(f"{where}: duplicate source name {item['name']!r}")
        sources.append(Source(item["name"], url, p, bool(item.get("enabled", True))))
    cls = doc.get("classification")
    cls_path = None if cls is None else (Path(cls) if Path(cls).is_absolute() else base / cls)
    return UpdateConfig(tuple(sources), str(doc.get("suricata-version") or SURICATA_VERSION),
                        cls_path)


@dataclass(frozen=True, slots=True)
class UpdatePaths:
    rules_dir: Path = DEFAULT_RULES_DIR  # the active ruleset lives here
    data_dir: Path = DEFAULT_DATA_DIR  # suricata-update's data (download cache)
    conf_dir: Path = DEFAULT_CONF_DIR  # update.yaml and the four conf files

    @property
    def active(self) -> Path:
        return self.rules_dir / ACTIVE_NAME

    @property
    def previous(self) -> Path:
        return self.rules_dir / PREVIOUS_NAME

    @property
    def config(self) -> Path:
        return self.conf_dir / "update.yaml"


@dataclass(frozen=True, slots=True)
class CheckPolicy:
    """When a merged ruleset is refused (the check that replaces ``suricata -T``)."""

    # Rules that are invalid (syntax, bad values, unknown classtype, duplicates): any
    # one of them means a source or a modify.conf line is broken.
    max_invalid: int = 0
    # Rules with keywords this engine does not run (ET Open 2024-04: 56 of 24827, 0.2%):
    # tolerated up to this share of the ruleset.
    max_unsupported_ratio: float = 0.02
    # A new ruleset with fewer active rules than this share of the previous one is
    # refused: a source that came back empty or half-fetched must not go live.
    min_share_of_previous: float = 0.5


# --------------------------------------------------------------------------- result


@dataclass
class UpdateResult:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    installed: Path | None = None
    active: int = 0
    failed: int = 0
    disabled: int = 0
    previous_rules: int | None = None
    failures: list[RuleFailure] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # suricata-update's last lines
    command: list[str] = field(default_factory=list)

    def summary(self) -> str:
        was = (f" (the previous ruleset had {self.previous_rules} enabled)"
               if self.previous_rules is not None else "")
        return (f"{self.active} active, {self.failed} not loaded, "
                f"{self.disabled} disabled{was}")


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def is_unsupported(f: RuleFailure) -> bool:
    """A rule Suricata runs and this engine does not (not a broken rule)."""
    return f.reason.startswith("unsupported")


def evaluate(loaded: LoadedRules, policy: CheckPolicy,
             previous_rules: int | None) -> list[str]:
    """Reasons to refuse this ruleset (empty: fine)."""
    reasons = []
    failures = loaded.failure_records()
    invalid = [f for f in failures if not is_unsupported(f)]
    unsupported = len(failures) - len(invalid)
    total = loaded.active + len(failures)
    if len(invalid) > policy.max_invalid:
        shown = "; ".join(f"{Path(f.file).name}:{f.line} sid {f.sid}: {f.reason}"
                          for f in invalid[:5])
        reasons.append(f"{len(invalid)} invalid rule(s) (at most {policy.max_invalid} "
                       f"allowed): {shown}")
    if total and unsupported / total > policy.max_unsupported_ratio:
        reasons.append(f"{unsupported} of {total} rules use keywords this engine does not "
                       f"run (more than {policy.max_unsupported_ratio:.0%})")
    if loaded.active == 0:
        reasons.append("the new ruleset has no active rule")
    elif previous_rules and total < policy.min_share_of_previous * previous_rules:
        reasons.append(f"the new ruleset has {total} enabled rules, the active one "
                       f"{previous_rules}: less than {policy.min_share_of_previous:.0%}, "
                       "a source is probably broken")
    return reasons


# --------------------------------------------------------------------------- the run


def run_update(paths: UpdatePaths, *, sources: Sequence[str] = (), offline: bool = False,
               force: bool = False, policy: CheckPolicy | None = None,
               variables: Variables | None = None, cache_dir: Path | None = None,
               suricata_update: Sequence[str] | None = None,
               timeout: float = SUBPROCESS_TIMEOUT, runner: Runner = subprocess.run
               ) -> UpdateResult:
    """Fetch and merge with suricata-update, check, install. Raises UpdateError (with the
    reasons and the partial result) when nothing was installed; ConfigError for a bad
    update.yaml or source name."""
    cfg = load_update_config(paths.config)
    selected = cfg.select(sources)
    if not selected:
        raise ConfigError(f"{paths.config}: no enabled source")
    policy = policy or CheckPolicy()
    result = UpdateResult(ok=False)
    problems = [p for s in selected for p in _precheck(s)]
    if problems:
        result.reasons = problems
        raise UpdateError(problems, result)

    paths.data_dir.mkdir(parents=True, exist_ok=True)
    paths.rules_dir.mkdir(parents=True, exist_ok=True)
    with _locked(paths.data_dir / "update.lock"), \
            tempfile.TemporaryDirectory(dir=paths.data_dir, prefix="run-") as tmp:
        work = Path(tmp)
        staging = work / "out"
        staging.mkdir()
        cmd = _command(cfg, selected, paths, work, staging, offline, force, suricata_update)
        result.command = cmd
        try:
            proc = runner(cmd, capture_output=True, text=True, timeout=timeout,
                          env=_child_env(), check=False)
        except subprocess.TimeoutExpired:
            result.reasons = [f"suricata-update did not finish within {timeout:g} s"]
            raise UpdateError(result.reasons, result) from None
        except OSError as e:
            result.reasons = [f"cannot run suricata-update: {e}"]
            raise UpdateError(result.reasons, result) from None
        lines = (proc.stdout + proc.stderr).splitlines()
        result.log = [ln for ln in lines if "DeprecationWarning" not in ln][-LOG_TAIL:]
        merged = staging / ACTIVE_NAME
        if proc.returncode != 0 or not merged.is_file():
            errors = [ln.split("-- ", 1)[-1] for ln in lines if "<Error>" in ln]
            result.reasons = [f"suricata-update failed (exit {proc.returncode})"
                              + (f": {'; '.join(errors)}" if errors else "")]
            if not errors and result.log:
                result.reasons.append("last output: " + " | ".join(result.log[-3:]))
            raise UpdateError(result.reasons, result)

        classes = _classification(cfg, selected, paths.data_dir)
        if classes:
            (staging / CLASSIFICATION).write_text(classes, encoding="utf-8")
        result.previous_rules = _previous_rules(paths)
        try:
            loaded = load_detection([merged], variables, cache_dir=cache_dir)
        except ApplianceError as e:
            result.reasons = [f"the merged ruleset does not load: {e}"]
            raise UpdateError(result.reasons, result) from None
        result.active, result.failed = loaded.active, loaded.failed
        result.disabled = loaded.disabled
        result.failures = loaded.failure_records()
        reasons = evaluate(loaded, policy, result.previous_rules)
        if reasons:
            result.reasons = reasons
            raise UpdateError(reasons, result)
        install(staging, paths.rules_dir)
    result.ok = True
    result.installed = paths.active
    return result


def install(staging: Path, rules_dir: Path) -> None:
    """Make the staged ruleset the active one: each file written beside its target and
    renamed over it (a reader sees the old file or the new one, never a part). The
    classification goes first, so new rules never meet an old classification. The
    replaced rules file is kept as suricata.rules.previous (for `rules diff`)."""
    rules_dir.mkdir(parents=True, exist_ok=True)
    cls = staging / CLASSIFICATION
    if cls.is_file():
        _atomic_copy(cls, rules_dir / CLASSIFICATION)
    active = rules_dir / ACTIVE_NAME
    if active.is_file():
        _atomic_copy(active, rules_dir / PREVIOUS_NAME)
    _atomic_copy(staging / ACTIVE_NAME, active)


def _atomic_copy(src: Path, dst: Path) -> None:
    fd, name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out)
            out.flush()
            os.fsync(out.fileno())
        Path(name).chmod(0o644)
        Path(name).replace(dst)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable (not on every fs)
        dfd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpdateError([f"another rules update is running ({path} is locked)"]) \
                from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DATA_DIRECTORY", None)  # it would override -D
    env["PYTHONWARNINGS"] = "ignore"  # its logger.warn deprecation noise
    return env


def _command(cfg: UpdateConfig, selected: list[Source], paths: UpdatePaths, work: Path,
             staging: Path, offline: bool, force: bool,
             suricata_update: Sequence[str] | None) -> list[str]:
    urls = [s.url for s in selected if s.url is not None]
    network = any(s.is_network for s in selected)
    if not urls:
        # Without any URL suricata-update adds ET Open from the internet by itself.
        empty = work / "no-url-source.rules"
        empty.write_text("", encoding="utf-8")
        urls.append(empty.as_uri())
    (work / "dist").mkdir()
    conf = {
        "sources": urls,
        "local": [str(s.path) for s in selected if s.path is not None],
        "ignore": ["*deleted.rules"],
        # Not the rules of a Suricata installed on this host, nor its suricata.yaml
        # (which would disable rules by its app-layer settings): neither runs here.
        "dist-rule-directory": str(work / "dist"),
        "suricata-conf": str(work / "no-suricata.yaml"),
    }
    cfg_file = work / "update.yaml"
    cfg_file.write_text(yaml.safe_dump(conf, sort_keys=False), encoding="utf-8")
    base = list(suricata_update or [sys.executable, "-m", "suricata.update.main"])
    cmd = [*base, "update", "-D", str(paths.data_dir), "-c", str(cfg_file),
           "-o", str(staging), "--suricata-version", cfg.suricata_version,
           "--no-test", "--no-reload", "--fail",
           "--enable-conf", str(paths.conf_dir / ENABLE),
           "--disable-conf", str(paths.conf_dir / DISABLE),
           "--drop-conf", str(paths.conf_dir / DROP),
           "--modify-conf", str(paths.conf_dir / MODIFY)]
    if offline and network:
        # Network sources come from the cache of an earlier run (file:// sources too:
        # suricata-update's --offline applies to every URL).
        cmd.append("--offline")
    if force or not network:
        # file:// sources are otherwise reused for 15 minutes; re-reading them is free.
        cmd.append("--force")
    return cmd


def _local_file(url: str) -> Path | None:
    u = urlparse(url)
    return Path(unquote(u.path)) if u.scheme == "file" else None


def _precheck(s: Source) -> list[str]:
    """What can be told before the run: local files present, local archives readable."""
    if s.path is not None:
        return [] if s.path.exists() else [f"source {s.name}: {s.path}: no such file or "
                                           "directory"]
    assert s.url is not None
    f = _local_file(s.url)
    if f is None:
        return []
    if not f.is_file():
        return [f"source {s.name}: {f}: no such file"]
    if f.name.endswith(_ARCHIVE_SUFFIXES):
        err = _archive_error(f)
        if err:
            return [f"source {s.name}: {f}: not a readable archive ({err})"]
    return []


def _archive_error(path: Path) -> str | None:
    """Read the whole archive (a truncated gzip fails only at its end)."""
    try:
        if path.name.endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
                return f"bad member {bad}" if bad else None
        with tarfile.open(path, "r:*") as t:
            for member in t:
                if member.isfile():
                    fh = t.extractfile(member)
                    if fh is not None:
                        while fh.read(1 << 20):
                            pass
        return None
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as e:
        return str(e) or type(e).__name__


def _classification(cfg: UpdateConfig, selected: list[Source], data_dir: Path) -> str:
    """classification.config for the active rules: the configured one, then every one the
    sources ship (later wins). suricata-update writes none without a suricata.yaml."""
    found: dict[str, str] = {}

    def take(text: str) -> None:
        for line in text.splitlines():
            s = line.strip()
            if s.startswith("config classification:"):
                name = s.split(":", 1)[1].split(",", 1)[0].strip()
                found[name] = s

    if cfg.classification is not None and cfg.classification.is_file():
        take(cfg.classification.read_text(encoding="utf-8", errors="replace"))
    cache = data_dir / "update" / "cache"
    for s in selected:
        if s.path is not None:
            d = s.path if s.path.is_dir() else s.path.parent
            if (d / CLASSIFICATION).is_file():
                take((d / CLASSIFICATION).read_text(encoding="utf-8", errors="replace"))
        elif s.url is not None:
            # suricata-update keeps each download as <md5(url)>-<basename> in its cache.
            url = s.url.replace("%(__version__)s", cfg.suricata_version)
            prefix = hashlib.md5(url.encode()).hexdigest() + "-"
            for f in sorted(cache.glob(prefix + "*")) if cache.is_dir() else []:
                take(_archive_member(f, CLASSIFICATION))
    return "".join(f"{v}\n" for v in found.values())


def _archive_member(path: Path, name: str) -> str:
    with contextlib.suppress(OSError, EOFError, tarfile.TarError, zipfile.BadZipFile):
        if path.name.endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                for n in z.namelist():
                    if Path(n).name == name:
                        return z.read(n).decode("utf-8", "replace")
            return ""
        with tarfile.open(path, "r:*") as t:
            for m in t:
                if m.isfile() and Path(m.name).name == name:
                    fh = t.extractfile(m)
                    return fh.read().decode("utf-8", "replace") if fh else ""
    return ""


def _previous_rules(paths: UpdatePaths) -> int | None:
    """Enabled rules in the active file (counted from the text: no compile needed)."""
    if not paths.active.is_file():
        return None
    try:
        return sum(e.enabled for e in read_catalog([paths.active]).entries.values())
    except ApplianceError:
        return None


def describe(result: UpdateResult) -> dict[str, Any]:
    """A JSON-able summary (for --json and the control socket)."""
    return {
        "ok": result.ok,
        "reasons": result.reasons,
        "installed": str(result.installed) if result.installed else None,
        "active": result.active,
        "failed": result.failed,
        "disabled": result.disabled,
        "previous_rules": result.previous_rules,
    }
