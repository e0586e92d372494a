"""`stagecraft up` with its defaults, and one tiny model trained through it, shared by the
serving tests. Process logs are attached to failing tests (tests.service.conftest's hook)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import PROCS, example_dir, pytest_runtest_makereport
from tests.service.stack import Api, Proc, base_env, example_spec, free_port, stagecraft, wait_ready

__all__ = ["example_dir", "pytest_runtest_makereport"]
TASK_METRICS = ["loss", "perplexity", "bleu", "chrf", "rouge_l", "exact_match", "f1"]


@dataclass
class Served:
    url: str
    data: Path  # the service's data directory
    env: dict[str, str]
    key: str
    datasets: dict[str, str]
    job: dict[str, Any]  # the finished training job

    @property
    def model_id(self) -> str:
        return str(self.job["model_id"])

    @property
    def model_dir(self) -> Path:
        return self.data / "jobs" / self.job["id"] / "model"

    def api(self) -> Api:
        return Api(self.url, self.key)


def tiny_spec(datasets: dict[str, str]) -> dict[str, Any]:
    """The example spec at a few seconds' size, with task metrics (and samples) at each stage end."""
    spec = example_spec(datasets, pretrain=16, finetune=16)
    spec["evaluation"] = {"every_steps": 100, "metrics": TASK_METRICS, "max_samples": 4}
    return spec


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory, example_dir: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serving")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(url=url)
    proc = Proc("up-serving", [*stagecraft(), "up", "--port", str(port), "--data-dir", str(root / "data")], env, root)
    PROCS.append(proc)
    proc.start()
    try:
        wait_ready(url, [proc])
        key = (root / "data" / "api_key").read_text().strip()
        with Api(url, key) as api:
            datasets = api.upload_examples(example_dir)
            job = api.submit(tiny_spec(datasets))
            events = api.follow(job["id"])
            assert events[-1]["type"] == "job.succeeded", events[-1]
            job = api.job(job["id"])
        yield Served(url, root / "data", {**env, "STAGECRAFT_API_KEY": key}, key, datasets, job)
    finally:
        proc.stop()
