"""Files in traffic on the lab: two guests fetching the same file cost one scan and one
cache hit; the EICAR test file is stopped before the download completes, with an alert
that names it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from appliance.lab import BRIDGE, Lab
from appliance.lab_services import LARGE_FILE, LARGE_MARKER, SHARED_FILE
from tests.e2e.conftest import RULES


def fetch(lab: Lab, guest: str, path: str, timeout: float = 3) -> tuple[int, str]:
    cp = lab.run_in(guest, "curl", "-s", "-m", str(timeout), "-o", "/dev/null", "-w",
                    "%{http_code} %{size_download}", f"http://203.0.113.10{path}",
                    timeout=timeout + 5)
    return cp.returncode, cp.stdout.strip()


def cache_stats(db: Path) -> dict[str, Any]:
    cp = subprocess.run([sys.executable, "-m", "appliance.cli", "cache", "--db", str(db),
                         "stats", "--json"], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    return dict(json.loads(cp.stdout))


def test_shared_file_scanned_once_and_eicar_blocked(lab: Lab, start_appliance: Any) -> None:
    app = start_appliance()  # the lab policy: desktop and proxy scan files
    db = lab.state / "state" / "scancache.db"
    assert fetch(lab, "desktop", "/files/shared.txt") == (0, f"200 {len(SHARED_FILE)}")
    assert fetch(lab, "proxy", "/files/shared.txt") == (0, f"200 {len(SHARED_FILE)}")
    s = cache_stats(db)
    print(f"scan cache after two guests fetched one file: {s}")
    assert s["scans"] == 1 and s["hits"] >= 1
    rc, out = fetch(lab, "desktop", "/files/eicar.com", timeout=2)
    assert rc == 28, (rc, out)  # the packet completing the download was dropped
    time.sleep(0.5)
    alerts = [json.loads(x) for x in app.eve.read_text().splitlines()
              if '"event_type":"alert"' in x]
    files = [a for a in alerts if a["alert"]["gid"] == 9003]
    assert files, alerts
    assert "EICAR" in files[0]["alert"]["signature"]
    assert files[0]["alert"]["action"] == "blocked"


def test_a_large_download_is_scanned_whole(lab: Lab, start_appliance: Any,
                                           tmp_path: Path) -> None:
    """600 KiB with the only bad bytes at the end: past the body kept for detection,
    the scanners still get all of it, and the download is stopped."""
    yara_dir = tmp_path / "yara"
    yara_dir.mkdir()
    marker = LARGE_MARKER.decode()
    (yara_dir / "marker.yar").write_text(
        f'rule Lab_Large_Marker {{ strings: $m = "{marker}" condition: $m }}\n')
    app = start_appliance("--yara", str(yara_dir))
    assert LARGE_FILE.index(LARGE_MARKER) > 500 * 1024
    rc, out = fetch(lab, "desktop", "/files/large.bin", timeout=3)
    assert rc == 28, (rc, out)  # the packet completing the download was dropped
    time.sleep(0.5)
    recs = [json.loads(x) for x in app.eve.read_text().splitlines()]
    alerts = [r for r in recs if r.get("event_type") == "alert"
              and r["alert"]["gid"] == 9003]
    assert alerts and "Lab_Large_Marker" in alerts[0]["alert"]["signature"]
    want = hashlib.sha256(LARGE_FILE).hexdigest()
    infos = [r["fileinfo"] for r in recs if r.get("event_type") == "fileinfo"
             and r["fileinfo"]["sha256"] == want]
    assert infos and infos[0]["size"] == len(LARGE_FILE) and infos[0]["sid"] == [9003001]


API = "10.203.0.2"  # the appliance's guest-facing address on the lab bridge (this test's)


def ask_api(lab: Lab, guest: str, token: str, path: str) -> tuple[int, Any]:
    cp = lab.run_in(guest, "curl", "-s", "-m", "3", "-H", f"Authorization: Bearer {token}",
                    "-w", "\n%{http_code}", f"http://{API}:8088{path}", timeout=10)
    body, _, code = cp.stdout.rpartition("\n")
    return int(code or 0), json.loads(body) if body.strip().startswith("{") else body


def test_endpoint_api_served_by_the_daemon_and_yara_change_rescans(
        lab: Lab, start_appliance: Any, tmp_path: Path) -> None:
    """A guest's agent asks the daemon's endpoint API for a file the host scanned; after
    the YARA rules change, the old verdict is not served and the next fetch rescans."""
    lab.ipns("host", "addr", "add", f"{API}/24", "dev", BRIDGE)  # gone with the lab
    token = "desktop-agent-token-0123456789"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"desktop-agent {token}\n")
    tokens.chmod(0o600)
    api = ["--endpoint-api", f"{API}:8088", "--endpoint-tokens", str(tokens)]
    sha = hashlib.sha256(SHARED_FILE).hexdigest()
    db = lab.state / "state" / "scancache.db"

    app = start_appliance(*api)
    assert "endpoint API on" in app.log.read_text()
    assert ask_api(lab, "desktop", token, f"/v1/files/{sha}")[0] == 404  # not seen yet
    assert fetch(lab, "desktop", "/files/shared.txt") == (0, f"200 {len(SHARED_FILE)}")
    code, answer = ask_api(lab, "desktop", token, f"/v1/files/{sha}")
    assert code == 200, answer
    assert answer["host"]["verdict"] == "clean" and answer["sha256"] == sha
    assert ask_api(lab, "desktop", "wrong-token-0123456789", f"/v1/files/{sha}")[0] == 401
    assert cache_stats(db)["scans"] == 1
    app.stop()

    # New YARA rules: a new scanner identity. The old verdict is neither served nor
    # trusted; the next fetch scans the file again.
    yara = tmp_path / "yara"
    shutil.copytree(RULES / "yara", yara)
    (yara / "extra.yar").write_text(
        'rule Lab_Marker { strings: $m = "not in the lab file" condition: $m }\n')
    app = start_appliance("--yara", str(yara), *api)
    assert ask_api(lab, "desktop", token, f"/v1/files/{sha}")[0] == 404
    assert fetch(lab, "proxy", "/files/shared.txt") == (0, f"200 {len(SHARED_FILE)}")
    assert cache_stats(db)["scans"] == 2
    code, answer = ask_api(lab, "desktop", token, f"/v1/files/{sha}")
    assert code == 200 and answer["host"]["verdict"] == "clean", answer
    app.stop()
    assert ask_api(lab, "desktop", token, "/v1/stats")[0] == 0  # nothing listens any more
