"""Scale-out on engines the operator already runs: hosts that share nothing but PostgreSQL,
Redis and an S3-compatible object store (moto's server on loopback).

Each "host" is a process with its own empty data directory: two workers (A, B) and an API
(C). Worker A is killed mid-job and its newest checkpoint rots in the store; worker B resumes
from the one before it and ends with the weights of an uninterrupted run, bit for bit; the API, which never had a file
of the job, serves and exports the model. Then what a bad store does: /readyz names it, a job
fails `system_error` instead of hanging; and a job no worker can take says why it waits.
"""

from __future__ import annotations

import io
import json
import random
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load

from tests.system.conftest import REDIS as REDIS_URL
from tests.system.faults import PgDatabase, all_events, wait_finished, wait_until
from tests.system.processes import Proc, base_env, free_port, run_cli, stagecraft, wait_ready
from tests.system.stack import PROCS, Api, example_spec

pytestmark = pytest.mark.slow
LEASE_S = 3


class Hosts:
    """The shared services and one environment per host (STAGECRAFT_DATA_DIR differs)."""

    def __init__(self, root: Path, s3: Any, pg: PgDatabase):
        self.root, self.s3, self.pg = root, s3, pg
        self.bucket = f"stagecraft-{secrets.token_hex(4)}"
        s3.make_bucket(self.bucket)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.shared = {
            "database_url": pg.url,
            "broker_url": f"{REDIS_URL}/{random.randint(1, 15)}",
            "queue": f"train-{secrets.token_hex(4)}",
            "lease_s": str(LEASE_S),
            "resend_unclaimed_s": "5",
            "storage_url": f"s3://{self.bucket}/stagecraft",
            "url": self.url,
        }
        self.procs: dict[str, Proc] = {}
        self.key = ""

    def env(self, host: str, **settings: str) -> dict[str, str]:
        return {**base_env(**{**self.shared, "data_dir": str(self.root / host), **settings}), **self.s3.env()}

    def start(self, name: str, host: str, *args: str, **settings: str) -> Proc:
        p = Proc(name, [*stagecraft(), *args], self.env(host, **settings), self.root).start()
        self.procs[name] = p
        PROCS.append(p)
        return p

    def api(self) -> Api:
        return Api(self.url, self.key)

    def objects(self, prefix: str = "") -> list[str]:
        pages = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def model_weights(self, job_id: str) -> dict[str, torch.Tensor]:
        body = self.s3.client().get_object(Bucket=self.bucket, Key=f"stagecraft/jobs/{job_id}/model/model.safetensors")
        return load(body["Body"].read())


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, s3_server: Any) -> Iterator[Hosts]:
    pg = PgDatabase()
    h = Hosts(tmp_path_factory.mktemp("hosts"), s3_server, pg)
    try:
        assert run_cli("migrate", env=h.env("admin")).returncode == 0
        made = run_cli("keys", "create", "--tenant", "fleet", env=h.env("admin"))
        assert made.returncode == 0, made.stderr
        h.key = made.stdout.strip()
        h.start("api-c", "host-c", "api", "--port", str(h.port))
        wait_ready(h.url, [h.procs["api-c"]])
        yield h
    finally:
        for p in h.procs.values():
            p.stop(signal.SIGKILL) if p.popen is not None and p.popen.poll() is None else None
        pg.drop()


@pytest.fixture(scope="module")
def spec(hosts: Hosts, example_dir: Path) -> dict[str, Any]:
    with hosts.api() as api:
        s = example_spec(api.upload_examples(example_dir), pretrain=30, finetune=10)
    s["checkpointing"] = {"every_steps": 5, "keep_last": 2}
    return s


def test_a_worker_on_another_host_resumes_a_killed_job_bitwise(hosts: Hosts, spec: dict[str, Any]) -> None:
    worker_a = hosts.start("worker-a", "host-a", "worker")
    with hosts.api() as api:
        job = api.submit(spec)

        def past_two_checkpoints() -> list[int] | None:
            ckpts = sorted(c["step"] for c in api.http.get(f"/v1/jobs/{job['id']}/checkpoints").json())
            return ckpts if len(ckpts) >= 2 and api.job(job["id"])["step"] > ckpts[-1] else None

        wait_until("two stored checkpoints and steps past them", past_two_checkpoints, every=0.05)
        worker_a.stop(signal.SIGKILL)  # host A is lost, with its disk
        ckpts = sorted(c["step"] for c in api.http.get(f"/v1/jobs/{job['id']}/checkpoints").json())
        # The newest checkpoint's tensors rot in the store: its download fails its manifest's
        # sha256, so host B resumes from the one before.
        newest = f"stagecraft/jobs/{job['id']}/checkpoints/step-{ckpts[-1]:09d}/tensors.safetensors"
        client = hosts.s3.client()
        body = bytearray(client.get_object(Bucket=hosts.bucket, Key=newest)["Body"].read())
        body[-1] ^= 0xFF
        client.put_object(Bucket=hosts.bucket, Key=newest, Body=bytes(body))

        hosts.start("worker-b", "host-b", "worker")
        done = wait_finished(api, job["id"])
        assert done["status"] == "succeeded", done
        events = all_events(api, job["id"])
        restarts = [e for e in events if e["type"] == "job.restarted" and e["data"]["checkpoint"]]
        assert restarts and restarts[-1]["data"]["from_step"] == ckpts[-2], (ckpts, restarts)
        assert "cannot be restored" in hosts.procs["worker-b"].tail(1_000_000)  # and it said why
        workers = {e["data"]["worker"].split(":")[0] for e in events if e["type"] == "job.started"}
        assert len([e for e in events if e["type"] == "job.started"]) == 2, workers
        # Host B restored the checkpoint from the store into its own, empty, data directory.
        assert (hosts.root / "host-b" / "jobs" / job["id"] / "checkpoints").is_dir()
        assert (hosts.root / "host-b" / "datasets").is_dir()

        reference = api.submit({**spec, "name": "uninterrupted"})
        assert wait_finished(api, reference["id"])["status"] == "succeeded"
        got, want = hosts.model_weights(job["id"]), hosts.model_weights(reference["id"])
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)

        # keep_last: the store holds the newest two checkpoints of each job, each with its manifest.
        stored = hosts.objects(f"stagecraft/jobs/{job['id']}/checkpoints/")
        manifests = sorted(k for k in stored if k.endswith(".manifest.json"))
        assert len(manifests) == 2, manifests
        manifest = json.loads(hosts.s3.client().get_object(Bucket=hosts.bucket, Key=manifests[-1])["Body"].read())
        assert {"size", "sha256"} <= set(manifest["files"]["tensors.safetensors"])

        # The API on host C never had the model: it fetches it from the store to serve it.
        model_id = done["model_id"]
        r = api.http.post(f"/v1/models/{model_id}/generate", json={"prompt": "At the market,", "max_new_tokens": 8})
        assert r.status_code == 200, r.text
        assert r.json()["text"]
        exported = api.http.get(f"/v1/models/{model_id}/export", params={"archive": "zip"})
        assert exported.status_code == 200, exported.text[:300]
        import zipfile

        names = zipfile.ZipFile(io.BytesIO(exported.content)).namelist()
        assert any(n.endswith("model.safetensors") for n in names), names
        assert any(k.endswith(".zip.manifest.json") for k in hosts.objects("stagecraft/models/exports/"))

        # Deleting the job removes its objects from the store.
        assert api.http.delete(f"/v1/jobs/{job['id']}").status_code == 200
        assert hosts.objects(f"stagecraft/jobs/{job['id']}/") == []
    hosts.procs["worker-b"].stop()


def test_a_job_no_worker_can_take_waits_and_says_why(hosts: Hosts, spec: dict[str, Any]) -> None:
    with hosts.api() as api:
        gpus = {"device": "cuda", "processes": 2}
        job = api.submit({**spec, "name": "needs-gpus", "device": "auto", "resources": gpus})
        assert job["status"] == "queued"
        assert "cuda" in (job["waiting"] or "") and "2 processes" in job["waiting"], job
        assert "queue" in api.job(job["id"])["waiting"]
        assert api.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200


def test_a_bad_store_is_named_by_readyz_and_fails_jobs_clearly(hosts: Hosts, spec: dict[str, Any]) -> None:
    port = free_port()
    bad = {"storage_url": "s3://no-such-bucket-here/x", "url": f"http://127.0.0.1:{port}"}
    api_bad = hosts.start("api-bad", "host-d", "api", "--port", str(port), **bad)
    try:
        deadline_body: dict[str, Any] = wait_until(
            "the bad API to answer", lambda: _readyz(f"http://127.0.0.1:{port}"), timeout=60
        )
        assert deadline_body["status"] == 503
        problems = deadline_body["body"]["error"]["details"]
        assert any(p["component"] == "storage" and "no-such-bucket-here" in p["message"] for p in problems), problems
    finally:
        api_bad.stop()

    worker_bad = hosts.start("worker-bad", "host-e", "worker", storage_url="s3://no-such-bucket-here/x")
    try:
        with hosts.api() as api:
            job = api.submit({**spec, "name": "bad-store"})
            done = wait_finished(api, job["id"], timeout=120)
        assert done["status"] == "failed", done
        assert done["error"]["code"] == "system_error"
        assert "no-such-bucket-here" in done["error"]["message"] and "does not exist" in done["error"]["message"]
    finally:
        worker_bad.stop()


def _readyz(url: str) -> dict[str, Any] | None:
    try:
        r = httpx.get(url + "/readyz", timeout=30)
    except httpx.TransportError:
        return None
    return {"status": r.status_code, "body": r.json()}


def test_a_two_process_job_runs_under_torchrun_and_cancels(hosts: Hosts, spec: dict[str, Any]) -> None:
    """A worker offering 2 processes takes a job asking for them (FSDP here), runs it under
    torchrun, and stores the model like any other; a cancel stops such a job at a step."""
    worker = hosts.start("worker-p2", "host-f", "worker", "--processes", "2")
    try:
        with hosts.api() as api:
            two = {**spec, "name": "two-processes", "resources": {"processes": 2, "sharding": "fsdp"}}
            job = api.submit(two)
            # Waiting until the new worker's first heartbeat says it offers 2 processes, then not.
            wait_until("the worker's offer", lambda: api.job(job["id"])["waiting"] is None, timeout=60)
            done = wait_finished(api, job["id"])
            assert done["status"] == "succeeded", done
            assert set(hosts.model_weights(job["id"])), "no model in the store"
            r = api.http.post(f"/v1/models/{done['model_id']}/generate", json={"prompt": "At the", "max_new_tokens": 4})
            assert r.status_code == 200, r.text

            long = api.submit(
                {**two, "name": "two-processes-cancelled", "stages": [{**spec["stages"][0], "steps": 400}]}
            )
            wait_until("steps", lambda: api.job(long["id"])["step"] >= 3, every=0.1)
            assert api.http.post(f"/v1/jobs/{long['id']}/cancel").status_code == 200
            ended = wait_finished(api, long["id"], timeout=120)
            assert ended["status"] == "cancelled" and ended["step"] < 400, ended
    finally:
        worker.stop()
