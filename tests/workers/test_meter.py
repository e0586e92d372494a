"""A worker's measurements and the API's /metrics (workers/meter.py, app/telemetry.py,
app/api/scrape.py): steps, tokens and checkpoints read off a job's events; increments that
survive a failed push; the Redis and file stores; and a job run in process, on SQLite and
PostgreSQL, whose counters, duration and log lines (its creating request's id included)
show up where an operator looks."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app import logs, telemetry
from app.api.main import create_app
from app.config import Settings
from app.db import Database
from app.queue.wakeups import Publisher
from app.services import auth, jobs
from models.events import Event
from tests.log_capture import captured, json_lines
from tests.workers.test_execute import two_step_spec, upload
from workers import meter
from workers.execute import execute

REDIS = "redis://127.0.0.1:6379/0"


def event(type_: str, at: str, **data: Any) -> Event:
    return {"type": type_, "time": f"2026-05-01T12:00:{at}Z", "stage": None, "step": 0, "data": data}


def samples(text: str) -> dict[str, float]:
    """name{labels} -> value of every sample of a scrape."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def test_steps_tokens_and_checkpoints_are_read_off_the_events() -> None:
    tally = telemetry.Tally()
    m = meter.JobMeter(tally)
    m.on_event(event("job.started", "00.000"))
    m.on_event(event("train.step", "01.000", tokens_per_s=1000.0))  # resumed: nothing before it to time from
    m.on_event(event("train.step", "01.200", tokens_per_s=1000.0))
    m.on_event(event("eval", "03.000"))  # an evaluation is not a step's time
    m.on_event(event("train.step", "03.050", tokens_per_s=2000.0))
    m.checkpoint(event("checkpoint.saved", "03.550"), nbytes=4096, stored_s=1.5)  # written in 0.5 s, stored in 1.5
    m.on_event(event("train.step", "05.130", tokens_per_s=1000.0))  # 0.08 s after the upload ended
    m.on_event(event("train.step", "05.160", step_s=0.2, tokens=64))  # its own word
    got = tally.take()
    assert got["train_steps"] == 5
    assert got["train_tokens"] == pytest.approx(200 + 100 + 80 + 64)
    assert got["train_step_seconds:count"] == 4 and got["train_step_seconds:sum"] == pytest.approx(
        0.2 + 0.05 + 0.08 + 0.2
    )
    assert got["train_step_seconds:le:0.05"] == 1 and got["train_step_seconds:le:0.1"] == 1
    assert got["train_step_seconds:le:0.25"] == 2  # 0.2 twice
    assert got["checkpoint_bytes"] == 4096 and got["checkpoint_seconds:sum"] == pytest.approx(2.0)
    assert got["checkpoint_seconds:le:2.5"] == 1 and tally.take() == {}


def test_a_failed_push_keeps_its_increments_for_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    tally = telemetry.Tally()
    tally.add("train_steps", 3)
    broken = telemetry.FileStore(tmp_path / "no" / "such" / "dir" / "file")
    monkeypatch.setattr(broken, "add", lambda increments: (_ for _ in ()).throw(OSError("disk gone")))
    monkeypatch.setattr(telemetry, "store", lambda settings: broken)
    with pytest.raises(OSError):
        meter.push(settings, tally)
    tally.add("train_steps", 2)
    monkeypatch.undo()
    assert meter.push(settings, tally) and meter.push(settings, tally)  # the second has nothing to add
    assert telemetry.read(settings) == {"train_steps": 5.0}


def test_the_redis_store_adds_up_what_every_worker_pushes() -> None:
    client = redis.Redis.from_url(REDIS, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    settings = Settings(redis_url=REDIS, queue=f"test-{secrets.token_hex(4)}")
    store = telemetry.store(settings)
    try:
        store.add({"train_steps": 2, "train_step_seconds:le:0.1": 1})
        store.add({"train_steps": 3, "train_tokens": 1.5})
        assert telemetry.read(settings) == {"train_steps": 5, "train_step_seconds:le:0.1": 1, "train_tokens": 1.5}
    finally:
        client.delete(f"stagecraft:{settings.queue}:worker-metrics")
        client.close()
    down = Settings(redis_url="redis://127.0.0.1:1/0", queue="down")
    assert telemetry.read(down) is None
    assert [f.name for f in telemetry.families(None)] == ["stagecraft_worker_metrics_up"]


def test_a_job_run_shows_in_metrics_and_in_its_log_lines(
    database: Database, tmp_path: Path, data_dir: Path, spec_dict: Callable[..., dict[str, Any]]
) -> None:
    url = database.engine.url.render_as_string(hide_password=False)
    settings = Settings(data_dir=tmp_path / "data", database_url=url, event_flush_s=0.05, cancel_poll_s=0.05)
    with database.write() as session:
        tenant_id = auth.get_or_create_tenant(session, f"t-{secrets.token_hex(6)}").id
        session.commit()
    ids = {name: upload(database, settings, tenant_id, data_dir / f"{name}.{ext}")
           for name, ext in (("corpus", "txt"), ("pairs", "jsonl"))}  # fmt: skip
    with logs.scope(request_id="req-meter-1"), database.write() as session:  # as POST /v1/jobs binds it
        job, _ = jobs.submit(session, settings, tenant_id, two_step_spec(spec_dict, ids), None)
        session.commit()
    meter.TALLY.take()  # what other tests of this process left
    with captured("json", worker="worker-1") as out, logs.scope(job_id=job.id):  # as workers.tasks runs it
        execute(database, settings, Publisher(None), job.id, "worker-1")
    assert meter.push(settings)

    mine = [x for x in json_lines(out.getvalue()) if x.get("job_id") == job.id]
    claimed = [x for x in mine if "attempt 1 on worker-1" in x["message"]]
    assert claimed and claimed[0]["request_id"] == "req-meter-1" and claimed[0]["tenant"] == tenant_id
    assert all(x["worker"] == "worker-1" for x in mine) and any("succeeded" in x["message"] for x in mine)

    with TestClient(create_app(settings)) as client:
        r = client.get("/metrics")
    assert r.status_code == 200
    got = samples(r.text)
    assert got["stagecraft_train_steps_total"] == 2 and got["stagecraft_train_tokens_total"] > 0
    assert got["stagecraft_train_step_seconds_count"] >= 1
    assert got["stagecraft_checkpoint_bytes_total"] > 0 and got["stagecraft_checkpoint_seconds_count"] == 2
    assert got["stagecraft_worker_lease_losses_total"] == 0 and got["stagecraft_worker_metrics_up"] == 1
    assert got['stagecraft_job_duration_seconds_count{outcome="succeeded"}'] >= 1
    assert got['stagecraft_job_duration_seconds_bucket{le="+Inf",outcome="succeeded"}'] >= 1
    assert got['stagecraft_jobs{status="succeeded"}'] >= 1 and 'stagecraft_queue_depth{queue="train"}' in got
    assert "stagecraft_job_lease_losses_total" in got and "stagecraft_inference_model_cache_bytes" in got
