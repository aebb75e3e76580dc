"""The endpoint API: guests' endpoint agents ask the host before scanning a file.

    GET  /v1/files/{sha256}          the host's verdict for the current scanner identity,
                                     with endpoint reports beside it; 404 when none
    POST /v1/files/{sha256}/verdict  an agent reports its own scan; stored apart, never
                                     changes a host verdict
    GET  /v1/stats                   cache and service counters
    GET  /openapi.json               the OpenAPI description (FastAPI's)

Every /v1 call needs `Authorization: Bearer <token>`; each token names one agent, and a
report is attributed to the agent its token names (not to anything in the body). Request
bodies are bounded (MAX_BODY), as are header sizes and concurrent connections (uvicorn).
The interactive docs pages are off: they load scripts from a CDN, and this API faces
guests, not the internet.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at
# runtime, and they name aliases local to create_app().
import hmac
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from appliance.io.cache import FileVerdict, Report, ScanCache, check_sha256

# A report is ~200 bytes of JSON; 4 KiB leaves room for long signature names and stops
# a guest from making the host buffer large bodies.
MAX_BODY = 4096
# Connections served at once; more get 503 from uvicorn. Agents ask once per file, so a
# host with dozens of guests stays far below this; a misbehaving guest cannot take more.
MAX_CONCURRENCY = 64
# Header block limit for h11 (uvicorn's default is 64 KiB); a bearer token and a few
# headers fit in far less.
MAX_HEADERS = 8192

SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
# Scanner names and signatures are shown to operators: printable ASCII only.
PRINTABLE = r"^[\x20-\x7e]+$"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class HostVerdict(BaseModel):
    verdict: Literal["clean", "malicious", "unknown"]
    signatures: list[str]
    detail: str
    identity: str = Field(description="scanner engine and rules version")
    scanned_at: float


class EndpointReport(BaseModel):
    reporter: str
    verdict: Literal["clean", "malicious", "unknown"]
    scanner: str
    signature: str | None
    reported_at: float


class FileAnswer(BaseModel):
    sha256: str
    host: HostVerdict
    first_seen: float
    last_seen: float
    hits: int = Field(description="fetches answered from the cache")
    guests: int = Field(description="how many guests fetched the file (names withheld)")
    endpoint_reports: list[EndpointReport] = Field(
        description="agents' own verdicts; advisory, never override the host verdict")


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Literal["clean", "malicious", "unknown"]
    scanner: str = Field(min_length=1, max_length=64, pattern=PRINTABLE)
    signature: str | None = Field(default=None, min_length=1, max_length=256,
                                  pattern=PRINTABLE)


class ReportAck(BaseModel):
    sha256: str
    stored: bool
    host_verdict: Literal["clean", "malicious", "unknown"] | None = Field(
        description="the host's verdict, which the report does not change")


class StatsAnswer(BaseModel):
    identity: str
    cache: dict[str, Any]
    service: dict[str, Any]
    api: dict[str, int]


class _BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, whether announced by
    Content-Length or streamed chunked (counted as it arrives)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _refuse(self, send: Send) -> None:
        body = b'{"detail":"request body too large"}'
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await self._refuse(send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    # FastAPI re-raises HTTPException from body reading as the response.
                    raise HTTPException(413, "request body too large")
            return msg

        await self.app(scope, limited, send)


def create_app(cache: ScanCache, identity: Callable[[], str], tokens: Mapping[str, str],
               *, service_stats: Callable[[], Mapping[str, Any]] | None = None,
               max_body: int = MAX_BODY, clock: Callable[[], float] = time.time) -> Any:
    """The ASGI app. `tokens` maps bearer token -> agent name; `identity()` is the
    current scanner identity (verdicts of other identities are not served)."""
    if not tokens:
        raise ValueError("the endpoint API needs at least one token")
    if any(len(t) < 16 for t in tokens):
        raise ValueError("endpoint API tokens must be at least 16 characters")
    # Encode once; compare every token each time so timing does not reveal which
    # prefix matched (hmac.compare_digest is constant-time per comparison).
    known = [(t.encode(), name) for t, name in tokens.items()]
    counters = {"requests": 0, "unauthorized": 0, "found": 0, "not_found": 0,
                "reports": 0}
    lock = threading.Lock()

    def count(name: str) -> None:
        with lock:
            counters[name] += 1

    app = FastAPI(title="appliance endpoint API", version="1",
                  description="Host file verdicts for guests' endpoint agents.",
                  docs_url=None, redoc_url=None)
    bearer = HTTPBearer(auto_error=False, description="one token per endpoint agent")

    def agent(creds: Annotated[HTTPAuthorizationCredentials | None,
                               Depends(bearer)]) -> str:
        count("requests")
        given = creds.credentials.encode() if creds is not None else b""
        name = None
        for tok, n in known:
            if hmac.compare_digest(tok, given):
                name = n
        if name is None:
            count("unauthorized")
            raise HTTPException(401, "missing or unknown bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        return name

    Agent = Annotated[str, Depends(agent)]
    Sha = Annotated[str, PathParam(pattern=SHA256_PATTERN, description="hex sha256")]

    # Plain `def` handlers: FastAPI runs them in its thread pool, so a slow cache
    # (SQLite busy, Redis round trip) never blocks the event loop.
    @app.get("/v1/files/{sha256}", response_model=FileAnswer,
             responses={404: {"description": "no host verdict for this scanner identity"}})
    def get_file(sha256: Sha, who: Agent) -> FileAnswer:
        sha = check_sha256(sha256)
        entry = cache.get(sha, identity())
        if entry is None:
            count("not_found")
            raise HTTPException(404, "no host verdict for this file")
        count("found")
        return FileAnswer(
            sha256=sha,
            host=HostVerdict(verdict=entry.verdict.value,
                             signatures=list(entry.result.signatures),
                             detail=entry.result.detail, identity=entry.identity,
                             scanned_at=entry.scanned_at),
            first_seen=entry.first_seen, last_seen=entry.last_seen, hits=entry.hits,
            guests=len(entry.guests),
            endpoint_reports=[EndpointReport(**r.to_json()) for r in cache.reports(sha)])

    @app.post("/v1/files/{sha256}/verdict", response_model=ReportAck, status_code=202)
    def post_verdict(sha256: Sha, body: ReportIn, who: Agent) -> ReportAck:
        sha = check_sha256(sha256)
        cache.report(Report(sha, who, FileVerdict(body.verdict), body.scanner,
                            body.signature, clock()))
        count("reports")
        host = cache.get(sha, identity())
        return ReportAck(sha256=sha, stored=True,
                         host_verdict=None if host is None else host.verdict.value)

    @app.get("/v1/stats", response_model=StatsAnswer)
    def get_stats(who: Agent) -> StatsAnswer:
        with lock:
            api = dict(counters)
        return StatsAnswer(identity=identity(), cache=cache.stats().to_json(),
                           service=dict(service_stats()) if service_stats else {},
                           api=api)

    return _BodyLimit(app, max_body) if max_body else app


def load_tokens(path: str | Path) -> dict[str, str]:
    """Tokens from a file of `agent-name token` lines ('#' comments); token -> name.

    The file must not be readable by others: the tokens are the API's only secret.
    """
    p = Path(path)
    if p.stat().st_mode & 0o004:
        raise ValueError(f"{p}: token file is world-readable; chmod o-r it")
    out: dict[str, str] = {}
    for n, line in enumerate(p.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{p}:{n}: expected 'agent-name token'")
        out[parts[1]] = parts[0]
    return out


def bind_endpoint(host: str, port: int) -> socket.socket:
    """The API's listening socket. The daemon binds it before dropping privileges and
    before forking the API's process, so a bad address is a start-up error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _server(app: Any, limit_concurrency: int = MAX_CONCURRENCY) -> Any:
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                         limit_concurrency=limit_concurrency,
                                         h11_max_incomplete_event_size=MAX_HEADERS,
                                         timeout_keep_alive=5, lifespan="off"))


class EndpointServer:
    """uvicorn in a thread on an address we bind first (so port 0 works and a bind
    error is raised here, not inside the thread)."""

    def __init__(self, app: Any, host: str, port: int, *,
                 limit_concurrency: int = MAX_CONCURRENCY) -> None:
        self.sock = bind_endpoint(host, port)
        self.server = _server(app, limit_concurrency)
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.sock]},
                                       name="endpoint-api", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def start(self, timeout: float = 5.0) -> "EndpointServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("endpoint API did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()


def serve_endpoint_api(app: Any, host: str, port: int) -> EndpointServer:
    """Start the API in a thread on host:port (the guest-facing address); returns its
    handle. Not for a process that forks afterwards (the daemon's supervisor restarts
    workers by fork): it binds with bind_endpoint and runs serve_on in a process of its
    own."""
    return EndpointServer(app, host, port).start()


def run_endpoint_api(app: Any, host: str, port: int) -> None:
    """Serve in the calling thread until SIGINT/SIGTERM (uvicorn's handlers): the target
    of a dedicated process."""
    sock = bind_endpoint(host, port)
    try:
        serve_on(app, sock)
    finally:
        sock.close()


def serve_on(app: Any, sock: socket.socket) -> None:
    """Serve on an already bound socket in the calling thread until SIGINT/SIGTERM."""
    _server(app).run(sockets=[sock])
