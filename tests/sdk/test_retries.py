"""Retries against real servers: a service that starts listening late, one that answers 503
until its database is migrated, and a job followed across a restart of `stagecraft up`."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import stagecraft
from stagecraft.types import Event
from tests.sdk.conftest import Server, clean_env, cli, free_port, server, tiny_spec


def patient(url: str, key: str) -> stagecraft.Client:
    """A client that retries for about 40 s, in steps of at most 1 s."""
    return stagecraft.Client(url, key, max_retries=40, backoff_s=0.2, max_backoff_s=1.0)


def later(seconds: float, action: Any) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_late_server_then_503_until_migrated(tmp_path: Path) -> None:
    api = server("api", tmp_path, free_port())  # no `stagecraft migrate`: /readyz answers 503
    with (
        stagecraft.Client(api.url, "sk-sc-unused", max_retries=0) as impatient,
        pytest.raises(stagecraft.APIConnectionError) as refused,
    ):
        impatient.health()
    assert not refused.value.request_sent
    starting = later(1.0, api.start)
    try:
        with patient(api.url, "sk-sc-unused") as waiting:
            assert waiting.health() == {"status": "ok"}  # connection refused, retried until it listens
        starting.join()
        with (
            stagecraft.Client(api.url, "sk-sc-unused", max_retries=0) as impatient,
            pytest.raises(stagecraft.UnavailableError) as unready,
        ):
            impatient.ready()
        err = unready.value
        assert (err.status_code, err.code) == (503, "not_ready")
        assert err.details[0]["component"] == "database" and "migrate" in err.details[0]["message"]

        def migrate() -> None:
            argv = [*cli(), "migrate", "--data-dir", str(api.data_dir)]
            subprocess.run(argv, env=clean_env(), capture_output=True, check=True, timeout=120)

        migrating = later(0.5, migrate)
        with patient(api.url, "sk-sc-unused") as waiting:
            assert waiting.ready() == {"status": "ready"}  # 503s retried until the schema is there
        migrating.join()
    finally:
        api.stop()


def test_wait_follows_a_job_across_a_restart(up: Server, example_data: Path) -> None:
    with patient(up.url, up.api_key) as client:
        corpus = client.datasets.upload(example_data / "corpus.txt")
        pairs = client.datasets.upload(example_data / "pairs.jsonl")
        spec = tiny_spec(example_data, corpus.id, pairs.id)
        # Long enough that Ctrl-C lands mid-job (a checkpoint every 25): about 9 s of steps on a
        # 2-vCPU Zen 5 guest, where 800 steps (2.4 s) once finished before the interrupt landed.
        spec["stages"][0]["steps"] = 3000
        spec["checkpointing"] = {"every_steps": 25, "keep_last": 1}
        job = client.jobs.create(spec)
        seen: list[Event] = []
        outcome: dict[str, Any] = {}

        def follow() -> None:
            try:
                outcome["job"] = client.jobs.wait(job.id, on_event=seen.append, timeout=300)
            except Exception as exc:  # reported by the assertion below
                outcome["error"] = exc

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        deadline = time.monotonic() + 120
        while not any(e.type == "checkpoint.saved" for e in seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(e.type == "checkpoint.saved" for e in seen), [e.type for e in seen][-5:]
        # Ctrl-C: the worker checkpoints and hands the job back. (Its exit status is not the
        # SDK's business: `up` may report the worker's SIGTERM during its warm shutdown.)
        up.interrupt()
        up.start()
        up.wait_ready()
        follower.join(300)
    assert "error" not in outcome, outcome.get("error")
    final = outcome["job"]
    assert final.status == "succeeded", final
    types = [e.type for e in seen]
    assert "job.restarted" in types and types[-1] == "job.succeeded", [t for t in types if t != "train.step"]
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1)), "every event once, in order"
