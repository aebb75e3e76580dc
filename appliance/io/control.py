"""The control socket: how the CLI talks to the running daemon.

A unix stream socket (default /run/appliance/control.sock; the file 0600 in a 0700
directory) and a second gate behind the file mode: the peer's credentials (SO_PEERCRED)
must carry an allowed uid (root by default).

Protocol: one JSON object per line each way.
    request   {"command": "quarantine.add", "args": {"target": "desktop", "duration": 600}}
    response  {"ok": true, "result": ...}  or  {"ok": false, "error": "..."}
A connection may carry several requests. Whatever a client sends (not JSON, not an
object, too long, an unknown command, a handler that raises) gets an error reply, or the
connection is closed; the server and the other connections carry on.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from appliance.errors import ApplianceError

DEFAULT_PATH: Final = "/run/appliance/control.sock"
# A request names a command and a few short arguments; 64 KiB is far above any real one
# and small enough that a hostile client cannot make the daemon buffer much.
MAX_REQUEST: Final = 64 * 1024
# A client has this long to send each request line; a stalled one is dropped.
READ_TIMEOUT: Final = 5.0
# Connections served at once; more wait in the listen backlog... then get "busy".
MAX_CLIENTS: Final = 8
_UCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid

Handler = Callable[[dict[str, Any]], Any]


class ControlError(ApplianceError):
    """The control socket answered with something unusable, or failed mid-call."""


class ControlUnavailable(ControlError):
    """No daemon is listening (or we may not talk to it)."""


class Refused(ApplianceError):
    """Raised by a handler: the request was understood and refused; the text is the reply."""


def _reply(sock: socket.socket, obj: dict[str, Any]) -> None:
    sock.sendall(json.dumps(obj, default=str).encode() + b"\n")


def _error(msg: str) -> dict[str, Any]:
    return {"ok": False, "error": msg}


class ControlServer:
    def __init__(self, path: str | Path, handlers: Mapping[str, Handler],
                 allowed_uids: tuple[int, ...] = (0,), mode: int = 0o600,
                 dir_mode: int = 0o700, max_request: int = MAX_REQUEST,
                 read_timeout: float = READ_TIMEOUT, max_clients: int = MAX_CLIENTS,
                 log: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.handlers = dict(handlers)
        self.allowed_uids = allowed_uids
        self.mode = mode
        self.dir_mode = dir_mode
        self.max_request = max_request
        self.read_timeout = read_timeout
        self.log = log or (lambda _m: None)
        self._slots = threading.BoundedSemaphore(max_clients)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.served = 0
        self.errors = 0

    # -- lifecycle ------------------------------------------------------------------------

    def _prepare_path(self) -> None:
        d = self.path.parent
        if not d.exists():
            d.mkdir(parents=True, mode=self.dir_mode)
            os.chmod(d, self.dir_mode)  # mkdir's mode is cut by the umask
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise ControlError(f"{self.path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink()  # left by a daemon that died
            else:
                raise ControlError(f"{self.path}: another daemon is listening")
            finally:
                probe.close()

    def start(self) -> ControlServer:
        self._prepare_path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # never a moment with a wider mode than 0600
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        sock.listen(16)
        sock.settimeout(0.2)  # so stop() is noticed
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- serving --------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if not self._slots.acquire(blocking=False):
                with contextlib.suppress(OSError):
                    conn.settimeout(1.0)
                    _reply(conn, _error("busy: too many control connections"))
                conn.close()
                continue
            threading.Thread(target=self._client, args=(conn,), name="control-client",
                             daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(self.read_timeout)
                uid = self._peer_uid(conn)
                if uid not in self.allowed_uids:
                    self.log(f"control: refused a client with uid {uid}")
                    _reply(conn, _error(f"permission denied: uid {uid} may not use the "
                                        "control socket"))
                    return
                self._lines(conn)
        except OSError:
            pass  # the client went away or stalled: nothing to answer
        finally:
            self._slots.release()

    @staticmethod
    def _peer_uid(conn: socket.socket) -> int:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        _pid, uid, _gid = _UCRED.unpack(raw)
        return int(uid)

    def _lines(self, conn: socket.socket) -> None:
        buf = b""
        while not self._stop.is_set():
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > self.max_request:
                    self.errors += 1
                    _reply(conn, _error(f"request too large (limit {self.max_request} "
                                        "bytes)"))
                    return  # the rest of the stream cannot be framed: close
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    if buf:
                        _reply(conn, _error("timed out reading the request"))
                    return
                if not chunk:
                    if buf.strip():  # the stream ended inside a request: say so
                        self.errors += 1
                        _reply(conn, _error("truncated request: the stream ended before "
                                            "its newline"))
                    return
                buf += chunk
                continue
            line, buf = buf[:nl], buf[nl + 1:]
            if len(line) > self.max_request:
                self.errors += 1
                _reply(conn, _error(f"request too large (limit {self.max_request} bytes)"))
                return
            if line.strip():
                _reply(conn, self.dispatch(line))

    def dispatch(self, line: bytes) -> dict[str, Any]:
        """One request line -> one response object (never raises)."""
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            self.errors += 1
            return _error(f"malformed request: not JSON ({e})")
        if not isinstance(req, dict):
            self.errors += 1
            return _error("malformed request: expected a JSON object")
        command = req.get("command")
        args = req.get("args", {})
        if not isinstance(command, str):
            self.errors += 1
            return _error("malformed request: 'command' must be a string")
        if not isinstance(args, dict):
            self.errors += 1
            return _error("malformed request: 'args' must be an object")
        handler = self.handlers.get(command)
        if handler is None:
            self.errors += 1
            known = ", ".join(sorted(self.handlers))
            return _error(f"unknown command {command[:64]!r} (known: {known})")
        try:
            result = handler(args)
            json.dumps(result, default=str)
        except Refused as e:
            return _error(str(e))
        except Exception as e:  # isolate failures: one bad handler never stops the server
            self.errors += 1
            self.log(f"control: {command} failed: {type(e).__name__}: {e}")
            return _error(f"internal error in {command}: {type(e).__name__}: {e}")
        self.served += 1
        return {"ok": True, "result": result}


def control_call(path: str | Path, command: str, *, timeout: float = 5.0,
                 **args: Any) -> dict[str, Any]:
    """Send one request, return the daemon's response object ({"ok": ..., ...})."""
    path = str(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlUnavailable(f"the appliance daemon is not running (no control "
                                     f"socket at {path})") from None
        except PermissionError:
            raise ControlUnavailable(f"permission denied on {path}: the control socket "
                                     "is for root only") from None
        except TimeoutError:
            raise ControlUnavailable(f"{path}: the daemon does not answer") from None
        try:
            # The server may refuse us before reading: its reply then says why.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(json.dumps({"command": command, "args": args}).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                buf += chunk
                if len(buf) > 64 * MAX_REQUEST:
                    raise ControlError("the daemon's reply is too large")
        except TimeoutError:
            raise ControlError(f"{command}: no reply within {timeout:g} s") from None
        except OSError as e:
            raise ControlError(f"{command}: {e.strerror or e}") from None
    finally:
        sock.close()
    if not buf.strip():
        raise ControlError(f"{command}: the daemon closed the connection without a reply")
    try:
        reply = json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        raise ControlError(f"{command}: the daemon's reply is not JSON") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ControlError(f"{command}: unexpected reply {str(reply)[:200]}")
    return reply
