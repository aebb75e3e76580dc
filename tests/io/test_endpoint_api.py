"""The endpoint API through FastAPI's test client, and once over a real 127.0.0.1 socket."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed")

from fastapi.testclient import TestClient

from appliance.io.cache import FileVerdict, ScanResult, SqliteCache
from appliance.io.endpoint_api import (
    MAX_BODY,
    create_app,
    load_tokens,
    serve_endpoint_api,
)

IDENT = "yara:aaaaaaaaaaaaaaaa"
DESKTOP_TOKEN = "desktop-token-0123456789"
PROXY_TOKEN = "proxy-token-0123456789ab"
BAD = hashlib.sha256(b"bad").hexdigest()
GOOD = hashlib.sha256(b"good").hexdigest()
UNSEEN = hashlib.sha256(b"unseen").hexdigest()


def auth(token: str = DESKTOP_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[SqliteCache]:
    c = SqliteCache(tmp_path / "scancache.db")
    c.put(BAD, IDENT, ScanResult(FileVerdict.MALICIOUS, ("yara:eicar:EICAR_Test_File",)),
          guest="desktop", now=1000.0)
    c.put(GOOD, "yara:old-identity", ScanResult(FileVerdict.CLEAN), now=900.0)
    yield c
    c.close()


@pytest.fixture
def app(cache: SqliteCache) -> Any:
    return create_app(cache, lambda: IDENT,
                      {DESKTOP_TOKEN: "desktop-agent", PROXY_TOKEN: "proxy-agent"},
                      service_stats=lambda: {"scans": 3}, clock=lambda: 2000.0)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def test_token_required(client: TestClient) -> None:
    for headers in ({}, auth("wrong-token-0123456789"), {"Authorization": DESKTOP_TOKEN}):
        r = client.get(f"/v1/files/{BAD}", headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
    r = client.post(f"/v1/files/{BAD}/verdict", json={"verdict": "clean", "scanner": "x"})
    assert r.status_code == 401
    assert client.get("/v1/stats").status_code == 401


def test_host_verdict(client: TestClient) -> None:
    r = client.get(f"/v1/files/{BAD.upper()}", headers=auth())
    assert r.status_code == 200
    body = r.json()
    assert body["sha256"] == BAD
    assert body["host"]["verdict"] == "malicious"
    assert body["host"]["signatures"] == ["yara:eicar:EICAR_Test_File"]
    assert body["host"]["identity"] == IDENT
    assert body["guests"] == 1 and "desktop" not in r.text  # names withheld


def test_unknown_or_stale_is_404(client: TestClient) -> None:
    assert client.get(f"/v1/files/{UNSEEN}", headers=auth()).status_code == 404
    # GOOD has a verdict, but from rules no longer in force: not served.
    assert client.get(f"/v1/files/{GOOD}", headers=auth()).status_code == 404
    assert client.get("/v1/files/not-a-digest", headers=auth()).status_code == 422


def test_report_kept_apart(client: TestClient, cache: SqliteCache) -> None:
    r = client.post(f"/v1/files/{BAD}/verdict", headers=auth(),
                    json={"verdict": "clean", "scanner": "defender",
                          "reporter": "someone-else"})
    assert r.status_code == 422  # unknown fields are refused, not ignored
    r = client.post(f"/v1/files/{BAD}/verdict", headers=auth(),
                    json={"verdict": "clean", "scanner": "defender"})
    assert r.status_code == 202
    assert r.json() == {"sha256": BAD, "stored": True, "host_verdict": "malicious"}
    body = client.get(f"/v1/files/{BAD}", headers=auth(PROXY_TOKEN)).json()
    assert body["host"]["verdict"] == "malicious"  # the endpoint's clean changed nothing
    assert body["endpoint_reports"] == [
        {"reporter": "desktop-agent", "verdict": "clean", "scanner": "defender",
         "signature": None, "reported_at": 2000.0}]
    entry = cache.get(BAD, IDENT)
    assert entry is not None and entry.verdict is FileVerdict.MALICIOUS
    # A report on a file the host never saw does not create a host verdict.
    r = client.post(f"/v1/files/{UNSEEN}/verdict", headers=auth(PROXY_TOKEN),
                    json={"verdict": "malicious", "scanner": "clamav",
                          "signature": "Win.Test.EICAR_HDB-1"})
    assert r.status_code == 202 and r.json()["host_verdict"] is None
    assert client.get(f"/v1/files/{UNSEEN}", headers=auth()).status_code == 404
    assert [x.reporter for x in cache.reports(UNSEEN)] == ["proxy-agent"]


def test_report_validation(client: TestClient) -> None:
    for body in ({"verdict": "fine", "scanner": "x"}, {"verdict": "clean"},
                 {"verdict": "clean", "scanner": "x" * 65},
                 {"verdict": "clean", "scanner": "bad\nname"}):
        r = client.post(f"/v1/files/{BAD}/verdict", headers=auth(), json=body)
        assert r.status_code == 422, body


def test_oversized_body_refused(client: TestClient, cache: SqliteCache) -> None:
    big = {"verdict": "clean", "scanner": "x", "signature": "s" * (MAX_BODY + 10)}
    r = client.post(f"/v1/files/{BAD}/verdict", headers=auth(), json=big)
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"verdict": "clean", "scanner": "x", "signature": "'
        for _ in range(10):
            yield b"s" * 1024
        yield b'"}'

    r = client.post(f"/v1/files/{BAD}/verdict",
                    headers={**auth(), "content-type": "application/json"},
                    content=chunks())
    assert r.status_code == 413
    assert cache.reports(BAD) == []


def test_stats(client: TestClient) -> None:
    client.get(f"/v1/files/{BAD}", headers=auth())
    client.get(f"/v1/files/{UNSEEN}", headers=auth())
    r = client.get("/v1/stats", headers=auth())
    assert r.status_code == 200
    s = r.json()
    assert s["identity"] == IDENT
    assert s["cache"]["files"] == 2 and s["cache"]["scans"] == 2
    assert s["service"] == {"scans": 3}
    assert (s["api"]["found"], s["api"]["not_found"]) == (1, 1)


def test_openapi_served(client: TestClient) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert set(doc["paths"]) == {"/v1/files/{sha256}", "/v1/files/{sha256}/verdict",
                                 "/v1/stats"}
    schemes = doc["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    assert "ReportIn" in doc["components"]["schemas"]
    # No docs pages: they would pull scripts from a CDN into guests' browsers.
    assert client.get("/docs").status_code == 404


def test_refuses_to_run_without_good_tokens(cache: SqliteCache) -> None:
    with pytest.raises(ValueError, match="at least one token"):
        create_app(cache, lambda: IDENT, {})
    with pytest.raises(ValueError, match="16 characters"):
        create_app(cache, lambda: IDENT, {"short": "agent"})


def test_load_tokens(tmp_path: Path) -> None:
    p = tmp_path / "tokens"
    p.write_text(f"# agent token\ndesktop-agent {DESKTOP_TOKEN}\n\nproxy-agent {PROXY_TOKEN}\n")
    p.chmod(0o644)
    with pytest.raises(ValueError, match="world-readable"):
        load_tokens(p)
    p.chmod(0o600)
    assert load_tokens(p) == {DESKTOP_TOKEN: "desktop-agent", PROXY_TOKEN: "proxy-agent"}
    p.write_text("just-one-field\n")
    with pytest.raises(ValueError, match=":1: expected"):
        load_tokens(p)


def test_served_on_loopback(app: Any) -> None:
    srv = serve_endpoint_api(app, "127.0.0.1", 0)
    try:
        host, port = srv.address
        assert host == "127.0.0.1" and port > 0
        url = f"http://{host}:{port}/v1/files/{BAD}"
        with urllib.request.urlopen(urllib.request.Request(url, headers=auth()),
                                    timeout=5) as r:
            assert r.status == 200
            assert json.load(r)["host"]["verdict"] == "malicious"
        big = urllib.request.Request(url + "/verdict", data=b"x" * (MAX_BODY + 1),
                                     headers=auth(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(big, timeout=5)
        assert e.value.code == 413
    finally:
        srv.stop()
    assert not srv.thread.is_alive()


def test_daemon_refuses_a_bad_endpoint_api_setup_before_starting(tmp_path: Path) -> None:
    """`appliance run --endpoint-api`: missing or world-readable tokens, no file scanning
    or an unusable address are start-up errors naming the problem, not a dead thread."""
    from appliance.config import Config
    from appliance.daemon import RunOptions, Supervisor
    from appliance.errors import ApplianceError

    tokens = tmp_path / "tokens"
    tokens.write_text(f"desktop {DESKTOP_TOKEN}\n")
    tokens.chmod(0o600)
    base = {"endpoint_api": "127.0.0.1:0", "endpoint_tokens": str(tokens),
            "yara_dir": str(tmp_path), "scan_cache": str(tmp_path / "c.db")}

    def prepare(**change: Any) -> Supervisor:
        sup = Supervisor(Config(), None, RunOptions("br-test", **{**base, **change}))
        sup._prepare_endpoint()
        return sup

    sup = prepare()  # good: the socket is bound now, before any fork
    assert sup._endpoint_args is not None
    sock = sup._endpoint_args[0]
    assert sock.getsockname()[1] > 0
    sock.close()
    for change, words in [({"yara_dir": None}, "needs file scanning"),
                          ({"endpoint_tokens": None}, "--endpoint-tokens"),
                          ({"endpoint_api": "127.0.0.1:http"}, "expected ADDRESS:PORT"),
                          ({"endpoint_api": "192.0.2.1:8088"}, "endpoint API"),
                          ({"endpoint_tokens": str(tmp_path / "none")}, "No such file")]:
        with pytest.raises(ApplianceError, match=words):
            prepare(**change)
    tokens.chmod(0o644)
    with pytest.raises(ApplianceError, match="world-readable"):
        prepare()
    tokens.write_text("desktop short\n")
    tokens.chmod(0o600)
    with pytest.raises(ApplianceError, match="16"):
        prepare()
