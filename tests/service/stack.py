"""Running the service for tests: real processes (uvicorn, Celery worker, `stagecraft up`)
talking to real PostgreSQL, Redis or the embedded SQLite broker, driven over HTTP."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from app.client import FINAL, parse_sse
from tests.conftest import BASE_SPEC, NAMES, SHARED_EXAMPLES, corpus_texts, record_objects, write_jsonl

BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 90


def stagecraft() -> list[str]:
    exe = BIN / "stagecraft"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class Proc:
    """A subprocess with its output in a log file (shown when a test fails)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path):
        self.name, self.argv, self.env = name, argv, env
        self.log = logdir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        out = self.log.open("ab")
        self.popen = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.popen is None:
            return 0
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        code = self.popen.returncode
        self.popen = None
        return code

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*stagecraft(), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
    )


def base_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECRAFT_")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "NO_COLOR": "1"})
    env.update({f"STAGECRAFT_{k.upper()}": v for k, v in settings.items()})
    return env


def wait_ready(url: str, procs: list[Proc], timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.popen is not None and p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited ({p.popen.returncode}):\n{p.tail()}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the service did not become ready:\n" + "\n".join(p.tail() for p in procs))


class Api:
    """An HTTP client with one tenant's key."""

    def __init__(self, url: str, key: str):
        self.url = url
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

    def stream(self, job_id: str, last_event_id: int = 0, timeout: float = 180) -> Iterator[dict[str, Any]]:
        """The job's SSE stream from `last_event_id` until the server closes it."""
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last_event_id)}
        with self.http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(10, read=timeout)
        ) as r:
            assert r.status_code == 200, r.read()
            assert r.headers["content-type"].startswith("text/event-stream")
            for msg in parse_sse(r.iter_lines()):
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
