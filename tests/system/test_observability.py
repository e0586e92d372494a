"""What an operator sees of `stagecraft up` (its API and its worker as real processes, their
output captured): JSON log lines, no Celery banner; the X-Request-ID of the request that
created a job on the API's line and on the worker's lines of that job; and /metrics showing
the worker's training counters and the finished job."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.system.processes import Proc, base_env, free_port, stagecraft, wait_ready
from tests.system.stack import PROCS, Api, Stack, example_spec, total_steps


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Proc]]:
    root = tmp_path_factory.mktemp("observed")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc(
        "up-observed", [*stagecraft(), "up", "--port", str(port), "--data-dir", str(root / "data")], base_env(), root
    )
    PROCS.append(proc)
    proc.start()
    try:
        wait_ready(url, [proc])
        yield url, root / "data", proc
    finally:
        proc.stop()


def log_lines(proc: Proc) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON lines of the process's output, and the other lines (the CLI's own messages)."""
    parsed, other = [], []
    for line in proc.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            parsed.append(json.loads(line))  # a line that starts as JSON must be JSON
        elif line.strip():
            other.append(line)
    return parsed, other


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) (\S+)$", text, re.M)}


@pytest.mark.slow
def test_a_request_id_reaches_the_workers_lines_and_metrics_show_the_training(
    up: tuple[str, Path, Proc], example_dir: Path
) -> None:
    url, data, proc = up
    with Api(url, (data / "api_key").read_text().strip()) as api:
        spec = example_spec(api.upload_examples(example_dir), pretrain=6, finetune=4)
        job = api.submit(spec, **{"X-Request-ID": "req-system-7"})
        events = api.follow(job["id"])
    assert events[-1]["type"] == "job.succeeded", events[-3:]
    steps = total_steps(spec)

    deadline = time.monotonic() + 60  # the worker pushes its counters every couple of seconds
    while (got := scrape(url)).get("stagecraft_train_steps_total", 0) < steps and time.monotonic() < deadline:
        time.sleep(0.5)
    assert got["stagecraft_train_steps_total"] == steps and got["stagecraft_train_tokens_total"] > 0
    assert got["stagecraft_train_step_seconds_count"] >= steps - 3  # the first steps of a stage may go untimed
    assert got["stagecraft_checkpoint_bytes_total"] > 0 and got["stagecraft_checkpoint_seconds_count"] >= 1
    assert got['stagecraft_job_duration_seconds_count{outcome="succeeded"}'] == 1
    assert got['stagecraft_jobs{status="succeeded"}'] == 1 and got['stagecraft_queue_depth{queue="train"}'] == 0
    assert got["stagecraft_worker_metrics_up"] == 1

    lines, other = log_lines(proc)
    assert all({"timestamp", "level", "logger", "message"} <= line.keys() for line in lines)
    assert not any("[queues]" in x or "[config]" in x for x in other), other  # no Celery banner
    created = [x for x in lines if x["logger"] == "stagecraft.api.access" and x["request_id"] == "req-system-7"]
    assert [(x["method"], x["path"], x["status"]) for x in created] == [("POST", "/v1/jobs", 201)]
    of_job = [x for x in lines if x.get("job_id") == job["id"]]
    assert of_job and all(x.get("request_id") == "req-system-7" and x.get("worker") for x in of_job), of_job
    assert any("attempt 1" in x["message"] for x in of_job) and any("succeeded" in x["message"] for x in of_job)


@pytest.mark.slow
def test_a_separate_worker_reports_through_redis(pg_stack: Stack, example_dir: Path) -> None:
    """`stagecraft api` and `stagecraft worker` as separate processes (PostgreSQL, Redis): the
    worker's counters reach the API through Redis while the job runs, its lines name the
    creating request."""
    before = scrape(pg_stack.url)

    def grew(name: str) -> float:
        return got.get(name, 0.0) - before.get(name, 0.0)

    with pg_stack.api() as api:
        spec = example_spec(api.upload_examples(example_dir), pretrain=100, finetune=4)
        spec["model"].update(n_embd=128, block_size=128)  # steps of ~0.1 s: the job runs for seconds
        spec["stages"][0]["batch_size"] = 16
        job = api.submit(spec, **{"X-Request-ID": "req-redis-9"})
        api.wait_for(job["id"], "train.step")
        got, deadline = scrape(pg_stack.url), time.monotonic() + 60
        while grew("stagecraft_train_steps_total") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            got = scrape(pg_stack.url)
        mid, status = grew("stagecraft_train_steps_total"), api.job(job["id"])["status"]
        assert mid > 0 and status == "running", (mid, status)  # counted while it trains
        assert api.follow(job["id"])[-1]["type"] == "job.succeeded"
    steps = total_steps(spec)
    assert mid < steps  # that scrape saw part of the run

    got, deadline = scrape(pg_stack.url), time.monotonic() + 60
    while grew("stagecraft_train_steps_total") < steps and time.monotonic() < deadline:
        time.sleep(0.5)
        got = scrape(pg_stack.url)
    assert grew("stagecraft_train_steps_total") >= steps and grew("stagecraft_checkpoint_bytes_total") > 0
    assert got["stagecraft_worker_metrics_up"] == 1
    lines, _ = log_lines(pg_stack.procs["worker"])
    of_job = [x for x in lines if x.get("job_id") == job["id"]]
    assert of_job and all(x.get("request_id") == "req-redis-9" for x in of_job), of_job
    api_lines, _ = log_lines(pg_stack.procs["api"])
    assert any(x.get("request_id") == "req-redis-9" and x.get("status") == 201 for x in api_lines)
