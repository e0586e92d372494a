"""`stagecraft up` with its defaults (SQLite, the embedded broker, local files): a job end
to end, a clean Ctrl-C mid-job that the next `up` resumes, and the `stagecraft jobs` client."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.system.processes import Proc, base_env, free_port, run_cli, stagecraft, wait_ready
from tests.system.stack import PROCS, Api, example_spec, total_steps


@dataclass
class Up:
    url: str
    data: Path
    env: dict[str, str]
    proc: Proc

    def start(self) -> None:
        self.proc.start()
        wait_ready(self.url, [self.proc])

    @property
    def key(self) -> str:
        return (self.data / "api_key").read_text().strip()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    root = tmp_path_factory.mktemp("up")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(url=url)  # nothing else: the defaults, under --data-dir
    proc = Proc("up", [*stagecraft(), "up", "--port", str(port), "--data-dir", str(root / "data")], env, root)
    PROCS.append(proc)
    stack = Up(url, root / "data", env, proc)
    stack.start()
    yield stack
    proc.stop()


@pytest.mark.slow
def test_up_runs_a_job_through_ctrl_c_and_restart(up: Up, example_dir: Path) -> None:
    with Api(up.url, up.key) as api:
        spec = example_spec(api.upload_examples(example_dir), pretrain=60)
        job = api.submit(spec)
        before = api.wait_for(job["id"], "checkpoint.saved")
    assert (up.data / "stagecraft.db").is_file() and (up.data / "broker.db").is_file()
    assert up.proc.stop(signal.SIGINT, timeout=120) == 0, up.proc.tail()
    up.start()
    with Api(up.url, up.key) as api:
        after = api.follow(job["id"], last_event_id=before[-1]["seq"])
        final = api.job(job["id"])
        series = api.http.get(f"/v1/jobs/{job['id']}/metrics").json()["series"]
    events = before + after
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    requeued = [e for e in events if e["type"] == "job.queued"][1:]
    assert requeued and "shut down" in requeued[0]["data"]["reason"], types
    restarted = [e for e in events if e["type"] == "job.restarted"]
    assert len(restarted) == 1 and restarted[0]["data"]["from_step"] >= 10
    assert [e["data"]["attempt"] for e in events if e["type"] == "job.started"] == [1, 2]
    total = total_steps(spec)
    assert [e["step"] for e in events if e["type"] == "train.step"] == list(range(1, total + 1)), "no step twice"
    assert [s for s, _ in series["train.loss"]] == list(range(1, total + 1))
    assert types[-1] == "job.succeeded" and final["status"] == "succeeded" and final["attempt"] == 2
    assert final["model_id"] == events[-1]["data"]["model_id"]


def test_jobs_client_commands(up: Up, tmp_path: Path, example_dir: Path) -> None:
    """`stagecraft jobs submit SPEC --wait` uploads the spec's local files, then follows the job."""
    (tmp_path / "data").symlink_to(example_dir)
    spec = example_spec({"corpus": "data/corpus.txt", "pairs": "data/pairs.jsonl"})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**up.env, "STAGECRAFT_API_KEY": up.key}
    submit = run_cli("jobs", "submit", "spec.yaml", "--wait", env=env, cwd=tmp_path, timeout=300)
    assert submit.returncode == 0, submit.stderr[-3000:]
    job_id = submit.stdout.strip()
    sent = "uploaded data/corpus.txt" in submit.stderr or "for data/corpus.txt (already uploaded" in submit.stderr
    assert job_id.startswith("job_") and sent and "succeeded" in submit.stderr
    shown = json.loads(run_cli("jobs", "show", job_id, "--json", env=env).stdout)
    assert shown["status"] == "succeeded" and shown["spec"]["data"]["corpus"]["dataset"].startswith("ds_")
    assert job_id in run_cli("jobs", "list", "--status", "succeeded", env=env).stdout
    lines = run_cli("jobs", "events", job_id, env=env).stdout.splitlines()
    followed = run_cli("jobs", "events", job_id, "--follow", env=env).stdout.splitlines()
    assert lines == followed and json.loads(lines[-1])["type"] == "job.succeeded"
    assert [json.loads(x)["seq"] for x in lines] == list(range(1, len(lines) + 1))
    cancel = run_cli("jobs", "cancel", job_id, env=env)
    assert cancel.returncode == 1 and "job_finished" in cancel.stderr
    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text(yaml.safe_dump({**spec, "seed": -1}))
    bad = run_cli("jobs", "submit", str(bad_spec), env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "seed" in bad.stderr  # refused by the local check, before any upload


def _children(pid: int) -> list[int]:
    """Child processes of `pid`, whichever of its threads started them."""
    return sorted(int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split())


@pytest.mark.slow
def test_up_restarts_a_crashed_worker_and_keeps_serving(up: Up, example_dir: Path) -> None:
    """SIGKILL `up`'s worker (as an OOM kill would): the API stays up, a new worker starts
    (after a backoff) and runs the next job."""
    assert up.proc.popen is not None
    deadline = time.monotonic() + 120
    while not _children(up.proc.popen.pid):
        assert time.monotonic() < deadline, "no worker"
        time.sleep(0.2)
    [worker] = _children(up.proc.popen.pid)
    time.sleep(3)  # (a worker still starting is killed just the same; let it be a running one)
    os.kill(worker, signal.SIGKILL)
    with Api(up.url, up.key) as api:
        while not ((kids := _children(up.proc.popen.pid)) and kids != [worker]):
            assert api.http.get("/readyz").status_code == 200, "the API went down with its worker"
            assert time.monotonic() < deadline, "no new worker"
            time.sleep(0.2)
        spec = example_spec(api.upload_examples(example_dir), pretrain=4, finetune=2)
        events = api.follow(api.submit(spec)["id"])
    assert events[-1]["type"] == "job.succeeded"
    assert up.proc.popen.poll() is None and "the worker exited (-9)" in up.proc.tail(20000)
