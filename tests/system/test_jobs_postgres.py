"""Jobs end to end on the production stack: PostgreSQL, Redis, `stagecraft api` and
`stagecraft worker` as separate processes, everything over HTTP; once with the artifacts in
the data directory, once in an S3 bucket (moto's server on loopback)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.system.stack import Api, Stack, example_spec, total_steps

EVENT_KEYS = {"seq", "type", "time", "stage", "step", "data"}


@pytest.fixture(scope="module", params=["local", "s3"])
def stack(request: pytest.FixtureRequest) -> Stack:
    """The production stack, with its artifacts on local disk or in the object store."""
    found: Stack = request.getfixturevalue("pg_stack" if request.param == "local" else "pg_s3_stack")
    return found


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[Api]:
    with stack.api() as client:
        yield client


@pytest.fixture(scope="module")
def datasets(api: Api, example_dir: Path) -> dict[str, str]:
    return api.upload_examples(example_dir)


@pytest.fixture(scope="module")
def finished(stack: Stack, api: Api, datasets: dict[str, str]) -> dict[str, Any]:
    """The example spec (shrunk), followed over SSE, with the API restarted mid-job."""
    spec = example_spec(datasets, pretrain=40)
    job = api.submit(spec)
    before = api.wait_for(job["id"], "train.step")
    stack.procs["api"].stop()
    stack.start_api()
    stack.wait_ready()
    after = api.follow(job["id"], last_event_id=before[-1]["seq"])
    return {"spec": spec, "submitted": job, "before": before, "after": after, "job": api.job(job["id"])}


def test_api_restart_mid_job_loses_and_repeats_no_event(finished: dict[str, Any], api: Api) -> None:
    before, after = finished["before"], finished["after"]
    assert before[-1]["type"] == "train.step", "the API went down while the job was training"
    events = before + after
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "every event once, in order"
    assert all(set(e) == EVENT_KEYS for e in events)
    page = api.http.get(f"/v1/jobs/{finished['job']['id']}/events", params={"limit": 1000}).json()
    assert page["data"] == events and page["has_more"] is False


def test_job_runs_every_stage_and_step(finished: dict[str, Any]) -> None:
    events = finished["before"] + finished["after"]
    total = total_steps(finished["spec"])
    types = [e["type"] for e in events]
    assert types[:2] == ["job.queued", "job.started"] and types[-1] == "job.succeeded"
    assert [e["step"] for e in events if e["type"] == "train.step"] == list(range(1, total + 1))
    names = ["pretrain", "finetune", "refine"]
    for kind in ("stage.started", "stage.completed"):
        assert [e["stage"]["name"] for e in events if e["type"] == kind] == names
    steps = [e for e in events if e["type"] == "train.step"]
    assert all(e["data"]["loss"] > 0 and e["data"]["tokens_per_s"] > 0 for e in steps)
    assert {e["stage"]["index"] for e in steps} == {0, 1, 2}
    assert any(e["type"] == "eval" and e["data"]["data"] == "pairs" for e in events)


def test_finished_job_row(finished: dict[str, Any]) -> None:
    job, total = finished["job"], total_steps(finished["spec"])
    assert finished["submitted"]["status"] == "queued"
    assert job["status"] == "succeeded" and job["error"] is None
    assert job["step"] == job["total_steps"] == total and job["progress"] == 1.0
    assert job["stage"] == {"index": 2, "name": "refine"} and job["attempt"] == 1
    created, started, ended = (datetime.fromisoformat(job[k]) for k in ("created_at", "started_at", "finished_at"))
    assert created <= started <= ended
    assert job["model_id"].startswith("model_")
    assert job["estimates"]["total_steps"] == total
    assert job["estimates"]["tokens"] == 64 * 8 * total  # block × batch per step


def test_metrics_checkpoints_and_model(finished: dict[str, Any], api: Api) -> None:
    job, total = finished["job"], total_steps(finished["spec"])
    series = api.http.get(f"/v1/jobs/{job['id']}/metrics").json()["series"]
    for name in ("train.loss", "train.lr", "train.grad_norm", "train.tokens_per_s"):
        assert [step for step, _ in series[name]] == list(range(1, total + 1)), name
    assert {"eval.corpus.loss", "eval.pairs.loss", "eval.pairs.perplexity"} <= set(series)
    ckpts = api.http.get(f"/v1/jobs/{job['id']}/checkpoints").json()
    assert [c["step"] for c in ckpts] == [total - 10, total]  # every 10 steps, keep_last 2
    assert all(c["id"].startswith("ckpt_") and "train.loss" in c["metrics"] for c in ckpts)
    saved = [e for e in finished["before"] + finished["after"] if e["type"] == "checkpoint.saved"]
    assert {c["id"] for c in ckpts} <= {e["data"]["checkpoint_id"] for e in saved}
    model = api.http.get(f"/v1/models/{job['model_id']}").json()
    assert model["job_id"] == job["id"] and model["steps"] == total
    assert model["parameters"] == job["estimates"]["parameters"], "the estimate counts the real model"
    assert set(model["evaluation"]) == {"corpus", "pairs"}
    assert job["model_id"] in [m["id"] for m in api.http.get("/v1/models").json()["data"]]
    assert api.http.get(f"/v1/models/{ckpts[-1]['id']}").json()["step"] == total


@pytest.fixture(scope="module")
def cancelled(api: Api, datasets: dict[str, str]) -> dict[str, Any]:
    spec = example_spec(datasets, pretrain=5000)
    # Steps of ~0.1 s or more, as in real training, so that "within a step" is measurable: the
    # cancel reaches the training loop in tens of milliseconds (Redis wake-up, two threads).
    spec["model"].update(n_embd=128, block_size=128)
    spec["stages"][0]["batch_size"] = 16
    job = api.submit(spec, **{"Idempotency-Key": "cancel-me"})
    replay = api.http.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "cancel-me"})
    other = dict(spec, name="another")
    reused = api.http.post("/v1/jobs", json=other, headers={"Idempotency-Key": "cancel-me"})
    before = api.wait_for(job["id"], "train.step")
    sent = time.time()
    response = api.http.post(f"/v1/jobs/{job['id']}/cancel")
    after = api.follow(job["id"], last_event_id=before[-1]["seq"])
    return {
        "job": job,
        "replay": replay,
        "reused": reused,
        "sent": sent,
        "response": response,
        "events": before + after,
    }


def test_idempotency_key(cancelled: dict[str, Any]) -> None:
    replay, reused = cancelled["replay"], cancelled["reused"]
    assert replay.status_code == 201 and replay.json()["id"] == cancelled["job"]["id"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused"


def test_cancel_stops_a_running_job_within_a_step(cancelled: dict[str, Any], api: Api) -> None:
    r = cancelled["response"]
    assert r.status_code == 200 and r.json()["status"] in ("cancelling", "cancelled")
    events = cancelled["events"]
    assert events[-1]["type"] == "job.cancelled"
    steps_after = [
        e
        for e in events
        if e["type"] == "train.step" and datetime.fromisoformat(e["time"]).timestamp() > cancelled["sent"]
    ]
    assert len(steps_after) <= 2, f"{len(steps_after)} steps finished after the cancel request"  # the one under way, +1
    assert events[-2]["type"] == "checkpoint.saved", "the stopped run keeps a checkpoint"
    job = api.job(cancelled["job"]["id"])
    assert job["status"] == "cancelled" and job["error"] is None and job["finished_at"]
    assert job["step"] == events[-1]["step"] < job["total_steps"]
    again = api.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"


def test_list_jobs_paginates_and_filters(finished: dict[str, Any], cancelled: dict[str, Any], api: Api) -> None:
    ids, after = [], None
    while True:
        page = api.http.get("/v1/jobs", params={"limit": 1, **({"after": after} if after else {})}).json()
        ids += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["next_cursor"]
    assert ids.index(cancelled["job"]["id"]) < ids.index(finished["job"]["id"]), "newest first"
    assert len(ids) == len(set(ids))
    done = api.http.get("/v1/jobs", params={"status": "cancelled"}).json()["data"]
    assert cancelled["job"]["id"] in [j["id"] for j in done] and all(j["status"] == "cancelled" for j in done)


@pytest.mark.slow
def test_a_lost_worker_s_job_is_requeued_and_resumed(stack: Stack, api: Api, datasets: dict[str, str]) -> None:
    """SIGKILL the worker mid-job: once its lease lapses the job is queued again and the next
    worker resumes it from its checkpoint. A job cancelled while queued is never run."""
    spec = example_spec(datasets, pretrain=40)
    job = api.submit(spec)
    before = api.wait_for(job["id"], "checkpoint.saved")
    stack.procs["worker"].stop(signal.SIGKILL)
    waiting = api.submit(example_spec(datasets))
    r = api.http.post(f"/v1/jobs/{waiting['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    stack.start("worker", "worker")
    after = api.follow(job["id"], last_event_id=before[-1]["seq"])
    events = before + after
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    lost = [e for e in after if e["type"] == "job.queued"]
    assert len(lost) == 1 and lost[0]["data"]["reason"] == "worker lost"
    assert [e["data"]["attempt"] for e in events if e["type"] == "job.started"] == [1, 2]
    [restarted] = [e for e in events if e["type"] == "job.restarted"]
    resumed = [e["step"] for e in events[events.index(restarted) :] if e["type"] == "train.step"]
    total = total_steps(spec)
    assert (
        resumed == list(range(restarted["data"]["from_step"] + 1, total + 1)) and restarted["data"]["from_step"] >= 10
    )
    assert events[-1]["type"] == "job.succeeded" and api.job(job["id"])["attempt"] == 2
    series = api.http.get(f"/v1/jobs/{job['id']}/metrics").json()["series"]
    assert [s for s, _ in series["train.loss"]] == list(range(1, total + 1))
    never = api.http.get(f"/v1/jobs/{waiting['id']}/events").json()["data"]
    assert [e["type"] for e in never] == ["job.queued", "job.cancelled"]
    assert api.job(waiting["id"])["started_at"] is None


@pytest.mark.slow
def test_init_from_a_model_or_a_checkpoint(finished: dict[str, Any], api: Api, datasets: dict[str, str]) -> None:
    """A finished model and a kept checkpoint both seed a new job (the checkpoint is exported
    as a model directory on the worker); the estimate uses the base model's shape."""
    job = finished["job"]
    ckpt = api.http.get(f"/v1/jobs/{job['id']}/checkpoints").json()[0]
    base = example_spec(datasets)
    spec: dict[str, Any] = {
        "name": "from-a-checkpoint",
        "model": {"init_from": {"model": ckpt["id"]}},
        "data": {"pairs": base["data"]["pairs"]},
        "stages": [dict(base["stages"][1], steps=3)],
        "evaluation": base["evaluation"],
        "precision": "fp32",
        "device": "cpu",
    }
    for ref in (job["model_id"], ckpt["id"]):
        spec["model"]["init_from"]["model"] = ref
        r = api.http.post("/v1/jobs/validate", json=spec)
        assert r.status_code == 200, r.text
        assert r.json()["estimates"]["parameters"] == job["estimates"]["parameters"]
    events = api.follow(api.submit(spec)["id"])
    assert events[-1]["type"] == "job.succeeded", events[-1]
    model = api.http.get(f"/v1/models/{events[-1]['data']['model_id']}").json()
    assert model["parameters"] == job["estimates"]["parameters"]


def test_a_job_that_cannot_run_fails_with_a_user_error(api: Api, datasets: dict[str, str]) -> None:
    spec = dict(example_spec(datasets), precision="fp16")  # valid, but fp16 does not train on a CPU worker
    job_id = api.submit(spec)["id"]
    events = api.follow(job_id)
    assert [e["type"] for e in events] == ["job.queued", "job.started", "job.failed"]
    assert events[-1]["data"]["code"] == "user_error" and "fp16" in events[-1]["data"]["message"]
    job = api.job(job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "user_error" and job["model_id"] is None


def test_a_job_no_worker_offers_waits_with_its_reason(api: Api, datasets: dict[str, str]) -> None:
    """device: cuda goes to the cuda queue; with only a cpu worker running it waits, saying why."""
    job = api.submit(dict(example_spec(datasets), device="cuda"))
    time.sleep(1.0)  # a cpu worker that took it would have started it by now
    job = api.job(job["id"])
    assert job["status"] == "queued" and "on cuda" in job["waiting"], job
    assert api.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    assert api.job(job["id"])["status"] == "cancelled"
