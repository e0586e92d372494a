"""The service under test, driven over HTTP: example specs and data, an API client with one
tenant's key, and the running stacks the fixtures in conftest.py build (real processes:
uvicorn, Celery workers, `stagecraft up`, talking to PostgreSQL, Redis or the embedded broker)."""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from models.events import FINAL
from stagecraft._sse import parse as parse_sse
from tests.conftest import BASE_SPEC, NAMES, SHARED_EXAMPLES, corpus_texts, record_objects, write_jsonl
from tests.system.processes import Proc, run_cli, stagecraft, wait_ready

UPLOAD_LIMIT = 3_000_000  # above the example corpus (1.9 MB)
STREAM_DEADLINE_S = 420  # no test's job runs this long, even on a loaded machine
LEASE_S = 4  # short, so a killed worker's job is requeued within seconds
TASK_METRICS = ["loss", "perplexity", "bleu", "chrf", "rouge_l", "exact_match", "f1"]
PROCS: list[Proc] = []  # every process started, for the failure report (conftest's hook)


def example_spec(datasets: dict[str, str], **stage_steps: int) -> dict[str, Any]:
    """shared/examples/multistep.yaml, shrunk to seconds on a CPU: a 2-layer model, a few
    steps per stage, loss/perplexity evaluation only. `datasets`: data name -> dataset id."""
    example = SHARED_EXAMPLES / "multistep.yaml"
    raw: dict[str, Any] = yaml.safe_load(example.read_text()) if example.is_file() else copy.deepcopy(BASE_SPEC)
    raw["model"] = {"arch": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "dropout": 0.0}
    raw["tokenizer"]["vocab_size"] = 512
    for name, ds_id in datasets.items():
        raw["data"][name]["dataset"] = ds_id
    steps = {"pretrain": 12, "finetune": 8, **stage_steps}
    for stage in raw["stages"]:
        stage["batch_size"] = 8
        if stage["type"] == "multistep":
            stage["cycles"] = 2
            for phase in stage["phases"]:
                phase["steps"] = 3
            stage["phases"][1]["trainable"] = ["blocks.1", "head"]
        else:
            stage["steps"] = steps[stage["name"]]
            stage["schedule"]["warmup_steps"] = 2
    raw["evaluation"] = {"every_steps": 10, "metrics": ["loss", "perplexity"], "max_samples": 0}
    raw["checkpointing"] = {"every_steps": 10, "keep_last": 2}
    raw["precision"], raw["device"] = "fp32", "cpu"
    return raw


def example_data(scratch: Path) -> Path:
    """shared/examples/data; in a checkout without it (a CI clone), similar generated files."""
    shared = SHARED_EXAMPLES / "data"
    if (shared / "corpus.txt").is_file() and (shared / "pairs.jsonl").is_file():
        return shared
    scratch.mkdir(parents=True, exist_ok=True)
    # Ticket numbers give the byte-level BPE enough distinct pairs to fill the 512-token
    # vocabularies the tests ask for (the templated sentences alone stop near 440).
    rng = random.Random(1)
    tickets = [f"Ticket {rng.randint(1000, 99999)} is for {name}." for name in NAMES for _ in range(300)]
    lines = corpus_texts(3000) + tickets
    rng.shuffle(lines)
    (scratch / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_jsonl(scratch / "pairs.jsonl", record_objects(600))
    return scratch


def total_steps(spec: dict[str, Any]) -> int:
    n = 0
    for s in spec["stages"]:
        n += s["cycles"] * sum(p["steps"] for p in s["phases"]) if s["type"] == "multistep" else s["steps"]
    return n


class Api:
    """An HTTP client with one tenant's key; `watch`: service processes whose unplanned exit
    fails a test waiting on an event stream at once (with the process's log), rather than
    after STREAM_DEADLINE_S."""

    def __init__(self, url: str, key: str, watch: Iterable[Proc] = ()):
        self.url, self.watch = url, watch
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def upload(self, path: Path) -> dict[str, Any]:
        with path.open("rb") as f:
            r = self.http.post("/v1/datasets", files={"file": (path.name, f)})
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    def upload_examples(self, data: Path) -> dict[str, str]:
        return {"corpus": self.upload(data / "corpus.txt")["id"], "pairs": self.upload(data / "pairs.jsonl")["id"]}

    def submit(self, spec: dict[str, Any], **headers: str) -> dict[str, Any]:
        r = self.http.post("/v1/jobs", json=spec, headers=headers)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def stream(
        self, job_id: str, last_event_id: int = 0, timeout: float = 180, deadline_s: float = STREAM_DEADLINE_S
    ) -> Iterator[dict[str, Any]]:
        """The job's SSE stream from `last_event_id` until the server closes it.

        Keep-alives keep a stream open for ever; past `deadline_s` the test fails with the
        job's state instead of hanging the suite.
        """
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last_event_id)}
        deadline = time.monotonic() + deadline_s
        with self.http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(10, read=timeout)
        ) as r:
            assert r.status_code == 200, r.read()
            assert r.headers["content-type"].startswith("text/event-stream")
            for msg in map(vars, parse_sse(_until(r.iter_lines(), deadline, self.watch))):
                event: dict[str, Any] = json.loads(msg["data"])
                assert int(msg["id"]) == event["seq"] and msg["event"] == event["type"]
                yield event

    def follow(self, job_id: str, last_event_id: int = 0) -> list[dict[str, Any]]:
        events = list(self.stream(job_id, last_event_id))
        assert events and events[-1]["type"] in FINAL, events[-3:]
        return events

    def wait_for(self, job_id: str, kind: str, last_event_id: int = 0) -> list[dict[str, Any]]:
        """Events up to and including the first of type `kind` (the stream is then dropped)."""
        seen = []
        for e in self.stream(job_id, last_event_id):
            seen.append(e)
            if e["type"] == kind:
                return seen
        raise AssertionError(f"no {kind} event; last events: {seen[-3:]}")


def _until(lines: Iterator[str], deadline: float, watch: Iterable[Proc]) -> Iterator[str]:
    for line in lines:  # keep-alives come every few seconds
        if time.monotonic() > deadline:
            raise AssertionError(f"the event stream was still open after {STREAM_DEADLINE_S:.0f} s")
        for p in watch:  # a test that stops a process on purpose does so with Proc.stop()
            code = p.popen.poll() if p.popen is not None else None
            if code is not None:
                raise AssertionError(f"{p.name} exited ({code}) while the test waited on a job:\n{p.tail()}")
        yield line


def tiny_spec(datasets: dict[str, str]) -> dict[str, Any]:
    """The example spec at a few seconds' size, with task metrics (and samples) at each stage end."""
    spec = example_spec(datasets, pretrain=16, finetune=16)
    spec["evaluation"] = {"every_steps": 100, "metrics": TASK_METRICS, "max_samples": 4}
    return spec


@dataclass
class Stack:
    """Separately started service processes sharing one environment (the `pg_stack` fixture)."""

    url: str
    env: dict[str, str]
    key: str
    logdir: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def api(self, key: str | None = None) -> Api:
        return Api(self.url, key or self.key, watch=self.procs.values())  # live: a restarted process is watched too

    def new_key(self, tenant: str) -> str:
        proc = run_cli("keys", "create", "--tenant", tenant, env=self.env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def start(self, name: str, *args: str) -> Proc:
        p = Proc(name, [*stagecraft(), *args], self.env, self.logdir).start()
        self.procs[name] = p
        PROCS.append(p)
        return p

    def start_api(self) -> Proc:
        return self.start("api", "api", "--port", self.url.rsplit(":", 1)[1])

    def wait_ready(self) -> None:
        wait_ready(self.url, list(self.procs.values()))

    def stop_all(self) -> None:
        for p in self.procs.values():
            p.stop()


@dataclass
class Served:
    """`stagecraft up` with one tiny model trained through it (the `served` fixture)."""

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
