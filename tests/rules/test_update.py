"""Rule management: suricata-update for real (offline, local sources only), the conf files,
the CLI commands, `rules diff`, and the hot-reload swap.

Every source here is a file the test builds in tmp_path (a .tar.gz and a directory);
nothing is fetched from the network.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from scapy.layers.inet import IP, TCP, Ether

from appliance.core.commands import Log, Verdict
from appliance.core.engine import Engine
from appliance.core.events import LINKTYPE_ETHERNET, PacketIn
from appliance.errors import ConfigError
from appliance.reload import (
    ReloadRefused,
    SupervisorReloader,
    WorkerReloader,
    prepare_reload,
    rule_index,
    swap_detector,
)
from appliance.rules import confs
from appliance.rules.loader import detection_from_text, load_detection
from appliance.rules_update import CheckPolicy, UpdateError, UpdatePaths, run_update

pytest.importorskip("suricata.update.main", reason="suricata-update is not installed")

REPO = Path(__file__).resolve().parents[2]
ETH_PCAP = REPO / "pcaps" / "linktype-eth.pcap"

CLASSES = """\
config classification: bad-unknown,Potentially Bad Traffic,2
config classification: trojan-activity,A Network Trojan was detected,1
config classification: policy-violation,Potential Corporate Privacy Violation,1
"""

# The "vendor" ruleset shipped in the tarball: enabled, disabled, flowbit pair, ...
ET_RULES = """\
alert tcp $HOME_NET any -> $EXTERNAL_NET 80 (msg:"T web get"; flow:established,to_server; content:"GET"; classtype:bad-unknown; sid:2000001; rev:1;)
# alert tcp $HOME_NET any -> $EXTERNAL_NET 80 (msg:"T ships disabled"; flow:established,to_server; content:"POST"; classtype:bad-unknown; sid:2000002; rev:1;)
alert tcp $HOME_NET any -> $EXTERNAL_NET 80 (msg:"T login seen"; flow:established,to_server; content:"login"; flowbits:set,t.login; flowbits:noalert; classtype:policy-violation; sid:2000003; rev:1;)
alert tcp $EXTERNAL_NET 80 -> $HOME_NET any (msg:"T secret after login"; flow:established,to_client; flowbits:isset,t.login; content:"secret"; classtype:trojan-activity; sid:2000004; rev:1;)
alert tcp $HOME_NET any -> $EXTERNAL_NET 80 (msg:"T modme"; flow:established,to_server; content:"PUT"; classtype:bad-unknown; sid:2000005; rev:1;)
alert tcp $HOME_NET any -> $EXTERNAL_NET 80 (msg:"T noisy"; flow:established,to_server; content:"HEAD"; classtype:bad-unknown; sid:2000006; rev:1;)
"""
LOCAL_RULES = """\
alert tcp any any -> any 8080 (msg:"LOCAL proxy probe"; content:"CONNECT"; classtype:bad-unknown; sid:9100001; rev:1;)
"""


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's compiled-rules cache goes to the test's directory, not ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def env(tmp_path: Path) -> UpdatePaths:
    vendor = tmp_path / "vendor" / "rules"
    vendor.mkdir(parents=True)
    (vendor / "emerging-test.rules").write_text(ET_RULES)
    (vendor / "classification.config").write_text(CLASSES)
    with tarfile.open(tmp_path / "et.tar.gz", "w:gz") as t:
        t.add(vendor, arcname="rules")
    local = tmp_path / "local"
    local.mkdir()
    (local / "local.rules").write_text(LOCAL_RULES)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "update.yaml").write_text(
        "suricata-version: 7.0.4\n"
        "sources:\n"
        f"  - name: et\n    url: {(tmp_path / 'et.tar.gz').as_uri()}\n"
        f"  - name: local\n    path: {local}\n"
        "  - name: spare\n    path: local\n    enabled: false\n")
    return UpdatePaths(tmp_path / "active", tmp_path / "data", conf)


def _active(paths: UpdatePaths) -> dict[int, confs.CatalogEntry]:
    return {k[1]: e for k, e in confs.read_catalog([paths.active]).entries.items()}


# --------------------------------------------------------------------------- update


def test_update_applies_enable_disable_drop_modify(env: UpdatePaths) -> None:
    # The conf files are written through confs, so this also proves suricata-update
    # reads what confs writes.
    confs.enable(env.conf_dir, "2000002")
    confs.disable(env.conf_dir, "1:2000006")
    confs.drop(env.conf_dir, "2000001")
    confs.add_modify(env.conf_dir, "2000005", "T modme", "T modified")
    result = run_update(env, offline=True)
    assert result.ok and result.installed == env.active
    rules = _active(env)
    assert rules[2000001].action == "drop" and rules[2000001].enabled
    assert rules[2000002].enabled  # shipped disabled, enabled by enable.conf
    assert not rules[2000006].enabled  # disable.conf
    assert rules[2000005].msg == "T modified"  # modify.conf
    assert rules[9100001].enabled  # the local directory source
    assert (env.rules_dir / "classification.config").read_text().count("config") == 3
    assert result.active == 6 and result.failed == 0
    assert "--suricata-version" in result.command and "--no-test" in result.command
    # The installed file is what the appliance loads.
    assert load_detection([env.active]).active == 6


def test_second_update_keeps_previous_and_rereads_file_sources(env: UpdatePaths,
                                                                tmp_path: Path) -> None:
    run_update(env, offline=True)
    first = env.active.read_text()
    (tmp_path / "local" / "more.rules").write_text(
        'alert udp any any -> any 53 (msg:"LOCAL dns"; content:"x"; sid:9100002; rev:1;)\n')
    result = run_update(env, offline=True)
    assert result.previous_rules == 6
    assert env.previous.read_text() == first
    assert 9100002 in _active(env)


def test_local_sources_only_never_fall_back_to_et_open(env: UpdatePaths) -> None:
    result = run_update(env, sources=["local"], offline=False)
    assert set(_active(env)) == {9100001}
    # suricata-update adds ET Open by itself when it has no URL: an empty file:// URL
    # stands in, and nothing else was configured.
    cfg = Path(result.command[result.command.index("-c") + 1])
    assert not cfg.exists()  # the run's work directory is gone
    assert not any("emergingthreats" in c for c in result.command)


def test_offline_network_source_comes_from_the_cache(env: UpdatePaths, tmp_path: Path) -> None:
    url = "https://rules.example.invalid/suricata-%(__version__)s/emerging.rules.tar.gz"
    (env.conf_dir / "update.yaml").write_text(
        f"sources:\n  - name: remote\n    url: {url}\n")
    # What an earlier online run left in suricata-update's cache (<md5(url)>-<name>).
    real = url.replace("%(__version__)s", "7.0.4")
    cache = env.data_dir / "update" / "cache"
    cache.mkdir(parents=True)
    (cache / f"{hashlib.md5(real.encode()).hexdigest()}-emerging.rules.tar.gz").write_bytes(
        (tmp_path / "et.tar.gz").read_bytes())
    result = run_update(env, offline=True)
    assert "--offline" in result.command
    assert 2000001 in _active(env)
    # Its classification.config came out of the cached archive.
    assert "trojan-activity" in (env.rules_dir / "classification.config").read_text()


def test_offline_network_source_without_cache_fails(env: UpdatePaths) -> None:
    (env.conf_dir / "update.yaml").write_text(
        "sources:\n  - name: remote\n    url: https://rules.example.invalid/x.tar.gz\n")
    with pytest.raises(UpdateError) as err:
        run_update(env, offline=True)
    assert "suricata-update failed" in err.value.reasons[0]
    assert "not yet been downloaded" in err.value.reasons[0]
    assert not env.active.exists()


@pytest.mark.parametrize("damage", ["junk", "truncated"])
def test_broken_tarball_leaves_the_active_rules(env: UpdatePaths, tmp_path: Path,
                                                damage: str) -> None:
    run_update(env, offline=True)
    before = env.active.read_bytes()
    tb = tmp_path / "et.tar.gz"
    data = tb.read_bytes()
    tb.write_bytes(b"<html>503 Service Unavailable</html>" if damage == "junk"
                   else data[: len(data) // 2])
    with pytest.raises(UpdateError) as err:
        run_update(env, offline=True)
    assert "not a readable archive" in err.value.reasons[0]
    assert env.active.read_bytes() == before


def test_bad_rule_fails_the_update_and_leaves_the_active_rules(env: UpdatePaths,
                                                               tmp_path: Path) -> None:
    run_update(env, offline=True)
    before = env.active.read_bytes()
    (tmp_path / "local" / "broken.rules").write_text(
        'alert tcp any any -> any 80 (msg:"broken"; content:"|zz|"; '
        'sid:9100009; rev:1;)\n')
    with pytest.raises(UpdateError) as err:
        run_update(env, offline=True)
    assert "1 invalid rule(s)" in err.value.reasons[0]
    assert "9100009" in err.value.reasons[0]
    assert err.value.result is not None and err.value.result.active == 6
    assert env.active.read_bytes() == before


def test_suricata_update_error_fails_the_update(env: UpdatePaths) -> None:
    (env.conf_dir / "modify.conf").write_text('2000005 "unbalanced\n')
    with pytest.raises(UpdateError) as err:
        run_update(env, offline=True)
    assert "Failed to parse modify filter" in err.value.reasons[0]
    assert not env.active.exists()


def test_shrunken_ruleset_is_refused_unless_allowed(env: UpdatePaths) -> None:
    run_update(env, offline=True)
    with pytest.raises(UpdateError) as err:
        run_update(env, sources=["local"])
    assert "a source is probably broken" in err.value.reasons[0]
    assert run_update(env, sources=["local"],
                      policy=CheckPolicy(min_share_of_previous=0.0)).ok


def test_unknown_source_and_missing_directory(env: UpdatePaths) -> None:
    with pytest.raises(ConfigError, match="no such source: nope"):
        run_update(env, sources=["nope"])
    (env.conf_dir / "update.yaml").write_text("sources:\n  - name: d\n    path: /nonexistent\n")
    with pytest.raises(UpdateError, match="no such file or directory"):
        run_update(env)


# --------------------------------------------------------------------------- confs


def test_conf_edits_keep_comments_and_round_trip(tmp_path: Path) -> None:
    (tmp_path / "enable.conf").write_text(
        "# site policy\n\n2000010, 1:2000011, 2000012  # from ticket 42\n"
        "group:emerging-dns.rules\nre:trojan\n")
    change = confs.disable(tmp_path, "2000011")
    assert (tmp_path / "enable.conf").read_text() == (
        "# site policy\n\n2000010,2000012 # from ticket 42\n"
        "group:emerging-dns.rules\nre:trojan\n")
    assert (tmp_path / "disable.conf").read_text() == "2000011\n"
    assert any("enable.conf after disable.conf" in n for n in change.notes)
    confs.enable(tmp_path, "2000011")
    assert (tmp_path / "disable.conf").read_text() == ""
    assert confs.ConfFile.load(tmp_path / "enable.conf").entries()[-1] == "2000011"
    # Idempotent; bare file names are groups; groups are removed whole.
    assert not confs.enable(tmp_path, "2000011").changed
    assert confs.ConfFile.load(tmp_path / "enable.conf").contains(
        confs.parse_target("emerging-dns.rules"))
    confs.disable(tmp_path, "group:emerging-dns.rules")
    assert "group:emerging-dns.rules" not in (tmp_path / "enable.conf").read_text()
    assert "group:emerging-dns.rules" in (tmp_path / "disable.conf").read_text()


@pytest.mark.parametrize("text,kind,line", [
    ("2019401", "sid", "2019401"),
    ("1:2019401", "sid", "2019401"),
    ("3:5, 2019401", "sid", "3:5,2019401"),
    ("group:emerging-dns.rules", "group", "group:emerging-dns.rules"),
    ("emerging-dns.rules", "group", "group:emerging-dns.rules"),
    ("re:ET TROJAN", "re", "re:ET TROJAN"),
    ("metadata:signature_severity major", "other", "metadata:signature_severity major"),
])
def test_parse_target(text: str, kind: str, line: str) -> None:
    t = confs.parse_target(text)
    assert (t.kind, t.line) == (kind, line)


@pytest.mark.parametrize("text", ["", "abc", "re:(", "group:"])
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        confs.parse_target(text)


def test_drop_refusals(env: UpdatePaths) -> None:
    run_update(env, offline=True)
    cat = confs.read_catalog([env.active])
    with pytest.raises(confs.Refused) as err:
        confs.drop(env.conf_dir, "2000003", cat)
    assert "flowbit-only noalert rule" in str(err.value)
    assert "2000004" in str(err.value)  # the rule to drop instead
    with pytest.raises(confs.Refused, match="disabled in the active ruleset"):
        confs.drop(env.conf_dir, "2000002", cat)
    with pytest.raises(confs.Refused, match="no such rule"):
        confs.drop(env.conf_dir, "2999999", cat)
    assert not (env.conf_dir / "drop.conf").exists()
    forced = confs.drop(env.conf_dir, "2000002", cat, force=True)
    assert forced.changed and any(n.startswith("forced:") for n in forced.notes)
    ok = confs.drop(env.conf_dir, "re:T web", cat)
    assert ok.changed
    assert confs.ConfFile.load(env.conf_dir / "drop.conf").entries() == ["2000002", "re:T web"]


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_env(env: UpdatePaths) -> tuple[UpdatePaths, list[str]]:
    run_update(env, offline=True)
    return env, ["--rules-dir", str(env.rules_dir)]


def _cli(*args: str) -> Any:
    from appliance.cli_rules import rules
    from appliance.cli_rules_manage import manage_commands

    for cmd in manage_commands():
        rules.add_command(cmd)
    return CliRunner().invoke(rules, list(args))


def test_cli_list_and_show(cli_env: tuple[UpdatePaths, list[str]]) -> None:
    env, rd = cli_env
    out = _cli("list", *rd)
    assert out.exit_code == 0, out.output
    assert "2000001" in out.output and "T web get" in out.output
    disabled = _cli("list", "--disabled", *rd)
    assert "2000002" in disabled.output and "2000001" not in disabled.output
    found = _cli("list", "--search", "secret", "--json", *rd)
    rows = [json.loads(x) for x in found.output.splitlines() if x.startswith("{")]
    assert [r["sid"] for r in rows] == [2000004]
    shown = _cli("show", "2000003", *rd, "--conf-dir", str(env.conf_dir))
    assert shown.exit_code == 0, shown.output
    assert "noalert" in shown.output and "sets flowbits: t.login" in shown.output
    assert _cli("show", "2999999", *rd).exit_code == 1


def test_cli_enable_disable_drop(cli_env: tuple[UpdatePaths, list[str]]) -> None:
    env, rd = cli_env
    cd = ["--conf-dir", str(env.conf_dir)]
    out = _cli("disable", "2000006", *cd, *rd)
    assert out.exit_code == 0 and "disable.conf" in out.output
    out = _cli("enable", "2000002", *cd, *rd)
    assert out.exit_code == 0 and "enable.conf" in out.output
    refused = _cli("drop", "2000003", *cd, *rd)
    assert refused.exit_code == 1 and "flowbit-only" in refused.output
    forced = _cli("drop", "2000003", "--force", *cd, *rd)
    assert forced.exit_code == 0 and "drop.conf" in forced.output
    assert _cli("drop", "not-a-sid", *cd, *rd).exit_code == 2
    # The edits go through suricata-update: the noalert rule stays alert (its drop filter
    # skips noalert rules), 2000006 is disabled, 2000002 enabled.
    run_update(env, offline=True)
    rules = _active(env)
    assert rules[2000003].action == "alert" and not rules[2000006].enabled
    assert rules[2000002].enabled
    # An enable.conf group wins over a disable.conf SID (suricata-update's order): said.
    out = _cli("enable", "group:emerging-test.rules", *cd, *rd)
    again = _cli("disable", "2000006", *cd, *rd)
    assert "enable.conf after disable.conf" in again.output


def test_cli_update_and_reload_without_daemon(env: UpdatePaths, tmp_path: Path) -> None:
    out = _cli("update", "--rules-dir", str(env.rules_dir), "--data-dir",
               str(env.data_dir), "--conf-dir", str(env.conf_dir), "--socket",
               str(tmp_path / "none.sock"))
    assert out.exit_code == 0, out.output
    assert "installed" in out.output and "not reloaded" in out.output
    (tmp_path / "et.tar.gz").write_bytes(b"junk")
    bad = _cli("update", "--rules-dir", str(env.rules_dir), "--data-dir", str(env.data_dir),
               "--conf-dir", str(env.conf_dir), "--no-reload")
    assert bad.exit_code == 1 and "active rules are unchanged" in bad.output
    gone = _cli("reload", "--socket", str(tmp_path / "none.sock"))
    assert gone.exit_code == 2


def test_cli_diff_shows_new_alert_and_verdicts(tmp_path: Path) -> None:
    old = tmp_path / "old.rules"
    new = tmp_path / "new.rules"
    old.write_text('alert udp any any -> any 7 (msg:"echo"; content:"ping6"; sid:1; rev:1;)\n')
    new.write_text(old.read_text() + 'drop tcp any any -> any 80 (msg:"GET seen"; '
                   'flow:established,to_server; content:"GET /"; sid:2; rev:1;)\n')
    out = _cli("diff", str(old), str(new), "--pcap", str(ETH_PCAP), "--json")
    assert out.exit_code == 0, out.output
    d = json.loads(out.output)["pcaps"][str(ETH_PCAP)]
    assert d["added"] == [{"sid": 2, "src": "192.0.2.10", "dst": "198.51.100.20",
                           "msg": "GET seen"}]
    assert d["removed"] == [] and d["verdicts_changed"] == []  # ids: drop only alerts
    ips = json.loads(_cli("diff", str(old), str(new), "--pcap", str(ETH_PCAP), "--ips",
                          "--json").output)["pcaps"][str(ETH_PCAP)]
    assert ips["verdicts_changed"] and all(v["new"] == "drop" for v in ips["verdicts_changed"])
    text = _cli("diff", str(old), str(new), "--pcap", str(ETH_PCAP))
    assert "+ 2 192.0.2.10 -> 198.51.100.20  GET seen" in text.output


# --------------------------------------------------------------------------- hot reload

CLIENT, SERVER = "192.168.1.10", "203.0.113.5"
SETTER = ('alert tcp $HOME_NET any -> $EXTERNAL_NET 80 (msg:"login"; flow:established,'
          'to_server; content:"login"; flowbits:set,t.login; flowbits:noalert; sid:11; rev:1;)')
OLD_CHECK = ('alert tcp $EXTERNAL_NET 80 -> $HOME_NET any (msg:"old check"; flowbits:isset,'
             't.login; content:"secret"; sid:12; rev:1;)')
NEW_CHECK = ('alert tcp $EXTERNAL_NET 80 -> $HOME_NET any (msg:"new check"; flowbits:isset,'
             't.login; content:"secret"; sid:13; rev:1;)')


class Flow:
    """One scripted TCP connection through an engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.n = 0
        self.ts = 1000.0
        self.c, self.s = 101, 501

    def send(self, to_server: bool, flags: str, data: bytes = b"") -> list[int]:
        self.n += 1
        self.ts += 0.01
        src, dst, sp, dp = ((CLIENT, SERVER, 40000, 80) if to_server
                            else (SERVER, CLIENT, 80, 40000))
        seq, ack = (self.c, self.s) if to_server else (self.s, self.c)
        pkt = Ether() / IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags=flags, seq=seq,
                                                   ack=ack) / data
        if to_server:
            self.c += len(data)
        else:
            self.s += len(data)
        cmds = self.engine.handle(PacketIn(self.n, self.ts, bytes(pkt), LINKTYPE_ETHERNET))
        assert sum(isinstance(c, Verdict) for c in cmds) == 1  # never without a verdict
        return [c.record["alert"]["signature_id"] for c in cmds
                if isinstance(c, Log) and c.record["event_type"] == "alert"]

    def handshake(self) -> None:
        self.c, self.s = 100, 500
        self.send(True, "S")
        self.c, self.s = 101, 500
        self.send(False, "SA")
        self.s = 501
        self.send(True, "A")


def test_swap_keeps_flowbits_on_an_existing_flow() -> None:
    old = detection_from_text([SETTER, OLD_CHECK])
    engine = Engine(detector=old.engine)
    f = Flow(engine)
    f.handshake()
    assert f.send(True, "PA", b"POST /login HTTP/1.1\r\n\r\n") == []  # noalert setter
    (flow,) = engine.flows.flows.values()
    assert flow.bits == {"t.login"}
    new = detection_from_text([SETTER, NEW_CHECK])
    report = swap_detector(engine, new)
    assert report.flows == 1 and (report.rules_before, report.rules_after) == (2, 2)
    assert engine.detector is new.engine
    # The flowbit set under the old rules satisfies the new rule; the old rule is gone.
    assert f.send(False, "PA", b"HTTP/1.1 200 OK\r\n\r\nsecret") == [13]


def test_prepare_reload_refuses_a_broken_ruleset(tmp_path: Path) -> None:
    good = tmp_path / "good.rules"
    good.write_text(SETTER + "\n" + NEW_CHECK + "\n")
    assert prepare_reload([good], cache_dir=tmp_path / "cache").active == 2
    bad = tmp_path / "bad.rules"
    bad.write_text(SETTER + "\nalert tcp any any -> any any (msg:\"x\"; depth:1; sid:3;)\n")
    with pytest.raises(ReloadRefused, match="invalid rule"):
        prepare_reload([bad])
    with pytest.raises(ReloadRefused, match="do not load"):
        prepare_reload([tmp_path / "missing.rules"])


def test_supervisor_and_worker_reload_over_a_pipe(tmp_path: Path) -> None:
    """The control handler tells a worker (here a thread running the worker's loop
    steps), which loads in the background, swaps between packets and answers."""
    from appliance.io.control import Refused

    rules = tmp_path / "r.rules"
    rules.write_text(SETTER + "\n" + OLD_CHECK + "\n")
    cache = tmp_path / "cache"
    first = load_detection([rules], cache_dir=cache)
    engine = Engine(detector=first.engine)
    f = Flow(engine)
    f.handshake()
    f.send(True, "PA", b"login")
    sup = SupervisorReloader([rules], cache_dir=cache, current=first, ack_timeout=20)
    worker = WorkerReloader(sup.attach(0), None, cache)
    stop = threading.Event()
    swaps: list[Any] = []

    def loop() -> None:  # what QueueWorker.run would do between packet batches
        while not stop.is_set():
            if worker.conn.poll(0.01):
                worker.on_message()
            rep = worker.poll(engine)
            if rep is not None:
                swaps.append(rep)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        rules.write_text(SETTER + "\n" + NEW_CHECK + "\n")
        reply = sup.handle({})
        assert reply["generation"] == 1 and reply["active"] == 2
        assert reply["workers"]["0"]["op"] == "swapped", reply
        assert reply["workers"]["0"]["flows"] == 1
        # A broken ruleset is refused before any worker hears of it.
        rules.write_text("alert tcp any any -> any any (msg:\"x\"; depth:1; sid:3;)\n")
        with pytest.raises(Refused, match="old rules keep running"):
            sup.handle({})
        assert sup.generation == 1
    finally:
        stop.set()
        t.join(5)
    assert len(swaps) == 1
    assert f.send(False, "PA", b"secret") == [13]


def test_swap_carries_transaction_marks_by_sid() -> None:
    """Per-transaction "already alerted" marks follow their rule to its new position;
    marks of rules that are gone are dropped."""
    old = detection_from_text([SETTER, OLD_CHECK])
    engine = Engine(detector=old.engine)
    f = Flow(engine)
    f.handshake()
    (flow,) = engine.flows.flows.values()
    before = rule_index(old)
    flow.tx_alerted = {(before[(1, 12)], 3), (before[(1, 11)], 4)}
    extra = ('alert tcp any any -> any any (msg:"first"; content:"zz"; flowbits:set,t.a; '
             'priority:1; sid:10; rev:1;)')
    new = detection_from_text([extra, extra.replace("sid:10", "sid:9"), OLD_CHECK])
    after = rule_index(new)
    assert after[(1, 12)] != before[(1, 12)]
    report = swap_detector(engine, new)
    assert flow.tx_alerted == {(after[(1, 12)], 3)}
    assert (report.tx_marks_kept, report.tx_marks_dropped) == (1, 1)
