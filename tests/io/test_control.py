"""The control socket: a server in a thread on a temporary path, real unix sockets."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.io.control import (
    ControlServer,
    ControlUnavailable,
    Refused,
    control_call,
)

LIMIT = 4096


def _echo(args: dict[str, Any]) -> Any:
    return {"echo": args}


def _refuse(args: dict[str, Any]) -> Any:
    raise Refused("no, thanks")


def _boom(args: dict[str, Any]) -> Any:
    raise RuntimeError("handler bug")


HANDLERS = {"echo": _echo, "refuse": _refuse, "boom": _boom, "status": lambda a: {"up": 1}}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ControlServer]:
    srv = ControlServer(tmp_path / "run" / "control.sock", HANDLERS, max_request=LIMIT,
                        read_timeout=1.0, allowed_uids=(os.geteuid(),)).start()
    try:
        yield srv
    finally:
        srv.stop()


def raw(path: Path, data: bytes, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Send bytes, half-close, read every reply line until the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first (oversized request): read what it said
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    return [json.loads(ln) for ln in buf.splitlines()]


def test_good_calls(server: ControlServer) -> None:
    assert control_call(server.path, "status") == {"ok": True, "result": {"up": 1}}
    reply = control_call(server.path, "echo", target="desktop", duration=60)
    assert reply == {"ok": True, "result": {"echo": {"target": "desktop", "duration": 60}}}
    assert control_call(server.path, "refuse") == {"ok": False, "error": "no, thanks"}


def test_socket_and_directory_modes(server: ControlServer) -> None:
    st_sock = server.path.stat()
    assert stat.S_ISSOCK(st_sock.st_mode)
    assert stat.S_IMODE(st_sock.st_mode) == 0o600
    assert stat.S_IMODE(server.path.parent.stat().st_mode) == 0o700


def test_several_requests_on_one_connection(server: ControlServer) -> None:
    replies = raw(server.path, b'{"command": "status"}\n\n{"command": "echo", "args": {"a": 1}}\n')
    assert replies == [{"ok": True, "result": {"up": 1}},
                       {"ok": True, "result": {"echo": {"a": 1}}}]


@pytest.mark.parametrize("line,error", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"command": 5}', "'command'"),
    (b'{"command": "echo", "args": [1]}', "'args'"),
    (b'{"command": "reboot"}', "unknown command"),
    (b'{"command": "boom"}', "internal error in boom"),
    (b"\xff\xfe\x00", "not JSON"),
])
def test_bad_requests_get_an_error_and_the_server_carries_on(
        server: ControlServer, line: bytes, error: str) -> None:
    replies = raw(server.path, line + b'\n{"command": "status"}\n')
    assert replies[0]["ok"] is False and error in replies[0]["error"]
    assert replies[1] == {"ok": True, "result": {"up": 1}}
    assert control_call(server.path, "status")["ok"]


def test_oversized_request(server: ControlServer) -> None:
    replies = raw(server.path, b'{"command": "echo", "args": {"x": "' + b"a" * (4 * LIMIT)
                  + b'"}}\n')
    assert len(replies) == 1 and "too large" in replies[0]["error"]
    # Without a newline at all: the same, no unbounded buffering.
    replies = raw(server.path, b"a" * (4 * LIMIT))
    assert len(replies) == 1 and "too large" in replies[0]["error"]
    assert control_call(server.path, "status")["ok"]


def test_stalled_client_is_dropped(server: ControlServer) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(server.path))
        s.sendall(b'{"command": "sta')
        data = s.recv(4096)  # the server gives up after its read timeout (1 s here)
    assert b"timed out" in data
    assert control_call(server.path, "status")["ok"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(st.one_of(
    st.binary(max_size=600),
    st.text(max_size=200).map(str.encode),
    st.builds(lambda c, a: json.dumps({"command": c, "args": a}).encode(),
              st.sampled_from(["status", "echo", "boom", "x", ""]),
              st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8),
                              max_size=3)),
), max_size=8).map(lambda parts: b"\n".join(parts)))
def test_fuzzed_streams_never_disturb_the_server(server: ControlServer, data: bytes) -> None:
    for reply in raw(server.path, data):
        assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
        assert reply["ok"] or isinstance(reply.get("error"), str)
    assert control_call(server.path, "status") == {"ok": True, "result": {"up": 1}}


def test_client_errors_when_no_daemon(tmp_path: Path) -> None:
    with pytest.raises(ControlUnavailable, match="not running"):
        control_call(tmp_path / "nothing.sock", "status")
    # A stale socket file left by a dead daemon: the same clear error, and a new
    # server replaces it.
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    with pytest.raises(ControlUnavailable, match="not running"):
        control_call(stale, "status")
    with ControlServer(stale, HANDLERS):
        assert control_call(stale, "status")["ok"]
    assert not stale.exists()


def test_second_server_on_a_live_socket_is_refused(server: ControlServer) -> None:
    from appliance.io.control import ControlError

    with pytest.raises(ControlError, match="another daemon"):
        ControlServer(server.path, HANDLERS).start()
    assert control_call(server.path, "status")["ok"]


# Everything imported before dropping privileges: nobody cannot read root's Python.
_CHILD = """
import os, sys
from appliance.io.control import ControlUnavailable, control_call
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
try:
    print(control_call(sys.argv[1], "status"))
except ControlUnavailable as e:
    print("UNAVAILABLE", e)
"""


def _as_nobody(path: Path) -> str:
    cp = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True,
                        text=True, timeout=30, cwd=Path(__file__).resolve().parents[2])
    assert cp.returncode == 0, cp.stderr
    return cp.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")
def test_non_root_client_is_refused() -> None:
    # The default 0600 socket in a 0700 directory: the kernel refuses the connect.
    d = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chmod(d, 0o755)
        with ControlServer(d / "ctl" / "control.sock", HANDLERS) as srv:
            out = _as_nobody(srv.path)
            assert out.startswith("UNAVAILABLE") and "permission denied" in out
        # Even with the file mode opened wide, the peer credentials check refuses.
        with ControlServer(d / "open" / "control.sock", HANDLERS, mode=0o666,
                           dir_mode=0o755) as srv:
            out = _as_nobody(srv.path)
            assert "'ok': False" in out and "uid 65534" in out
            assert control_call(srv.path, "status")["ok"]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_cli_commands_through_the_socket(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from appliance.actions import ActionManager, Policy, control_handlers
    from appliance.cli_control import block, quarantine, rules_reload, status
    from appliance.io.actions import RecordingBackend

    backend = RecordingBackend()
    m = ActionManager(backend, tmp_path / "a.db", tmp_path / "audit.json",
                      Policy(allowlist=("10.203.0.1",), sinkhole_ips=("10.203.0.99",)))
    handlers = {**control_handlers(m), "status": lambda a: {"workers": 2, **m.status()}}
    sock = tmp_path / "c" / "control.sock"
    run = CliRunner().invoke
    with ControlServer(sock, handlers):
        opt = ["--socket", str(sock)]
        r = run(quarantine, ["add", "desktop", "--for", "10m", "--reason", "test", *opt])
        assert r.exit_code == 0, r.output
        assert backend.quarantined == {"desktop": ["10.203.0.99"]}
        r = run(quarantine, ["list", *opt])
        assert r.exit_code == 0 and "desktop" in r.output and "test" in r.output
        r = run(status, opt)
        assert r.exit_code == 0 and "workers" in r.output and "desktop" in r.output
        r = run(block, ["add", "10.203.0.1", *opt])
        assert r.exit_code == 1 and "allowlisted" in r.output
        r = run(block, ["add", "198.51.100.1", "--for", "soon", *opt])
        assert r.exit_code == 2  # click's usage error
        r = run(rules_reload, opt)  # no such handler in this server: refused
        assert r.exit_code == 1 and "unknown command" in r.output
        r = run(quarantine, ["release", "desktop", *opt])
        assert r.exit_code == 0 and backend.quarantined == {}
    r = run(quarantine, ["list", "--socket", str(sock)])
    assert r.exit_code == 2 and "not running" in r.output
