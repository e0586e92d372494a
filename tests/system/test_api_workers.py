"""`stagecraft api --workers N`: N API processes answer on one port (each on a SO_REUSEPORT
socket of its own), one that dies is replaced, and they stop together, even when their
parent is killed."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.system.processes import Proc, base_env, free_port, run_cli, stagecraft, wait_ready


def workers_of(pid: int) -> list[int]:
    """The API processes `api --workers N` started."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid and b"--supervisor" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def start_api(tmp_path: Path, port: int | None = None) -> tuple[Proc, str, str]:
    """`api --workers 2` on a free port, or on `port` (0: the system chooses, read from the log)."""
    chosen = free_port() if port is None else port
    env = base_env(data_dir=str(tmp_path / "data"))
    assert run_cli("migrate", env=env).returncode == 0
    key = run_cli("keys", "create", "--tenant", "acme", env=env).stdout.strip()
    api = Proc("api", [*stagecraft(), "api", "--port", str(chosen), "--workers", "2"], env, tmp_path).start()
    try:
        if chosen == 0:
            wait_for("the chosen port in the log", lambda: "API processes on http" in api.tail())
            chosen = int(re.search(r"API processes on http://[^:]+:(\d+)", api.tail()).group(1))  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{chosen}"
        wait_ready(url, [api])
    except BaseException:
        stop_all(api)
        raise
    return api, url, key


def stop_all(api: Proc) -> None:
    """SIGKILL `api` and every API process it started (a failed test leaves none behind)."""
    children = workers_of(api.popen.pid) if api.popen is not None else []
    api.stop(signal.SIGKILL, timeout=10)
    for pid in children:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds a TCP socket listening on `port` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    try:
        return any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def answers(url: str, key: str, n: int) -> None:
    """`n` requests, each on a new connection (spread over the processes), all answered right."""
    for _ in range(n):
        r = httpx.get(url + "/v1/jobs/job_missing", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text


def test_api_with_two_workers_serves_and_stops(tmp_path: Path) -> None:
    api, url, key = start_api(tmp_path)
    assert api.popen is not None
    try:
        wait_for("two API processes", lambda: len(workers_of(api.popen.pid)) == 2)  # type: ignore[union-attr]
        workers = workers_of(api.popen.pid)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
            for _ in range(20):
                r = http.get("/v1/jobs/job_missing")
                assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            assert http.get("/v1/jobs").json()["data"] == []
    finally:
        assert api.stop(signal.SIGTERM, timeout=30) == 0, api.tail()
    assert not any(alive(pid) for pid in workers)


def test_a_dead_api_process_is_replaced_and_all_end_with_their_parent(tmp_path: Path) -> None:
    """On `--port 0` too: every process listens on the one port the system chose."""
    api, url, key = start_api(tmp_path, port=0)
    assert api.popen is not None
    parent = api.popen.pid
    children: list[int] = []
    try:
        wait_for("two API processes", lambda: len(workers_of(parent)) == 2)
        first, second = children = workers_of(parent)
        os.kill(first, signal.SIGKILL)  # an OOM kill, say
        wait_for("a replacement", lambda: len(w := workers_of(parent)) == 2 and first not in w)
        replacement = next(pid for pid in workers_of(parent) if pid != second)
        children.append(replacement)
        port = int(url.rsplit(":", 1)[1])
        assert listens(second, port)
        wait_for("the replacement listening", lambda: listens(replacement, port))
        answers(url, key, 40)
        os.kill(parent, signal.SIGKILL)  # no SIGTERM to pass on: the children notice on their own
        wait_for("the API processes ending", lambda: not alive(second) and not alive(replacement))
    finally:
        api.stop(signal.SIGKILL, timeout=10)
        for pid in children:  # (orphans by now: no longer found under the parent)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
