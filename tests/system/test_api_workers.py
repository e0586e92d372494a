"""`stagecraft api --workers N`: N uvicorn processes answer on one port, and stop together."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.system.processes import Proc, base_env, free_port, run_cli, stagecraft, wait_ready


def workers_of(pid: int) -> list[int]:
    """The uvicorn worker processes (multiprocessing spawns; not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_api_with_two_workers_serves_and_stops(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(data_dir=str(tmp_path / "data"))
    assert run_cli("migrate", env=env).returncode == 0
    key = run_cli("keys", "create", "--tenant", "acme", env=env).stdout.strip()
    api = Proc("api", [*stagecraft(), "api", "--port", str(port), "--workers", "2"], env, tmp_path).start()
    assert api.popen is not None
    try:
        wait_ready(url, [api])
        deadline = time.monotonic() + 30
        while len(workers := workers_of(api.popen.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) == 2, api.tail()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
            for _ in range(20):
                r = http.get("/v1/jobs/job_missing")
                assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            assert http.get("/v1/jobs").json()["data"] == []
    finally:
        assert api.stop(signal.SIGTERM, timeout=30) == 0, api.tail()
    assert not any(alive(pid) for pid in workers)
