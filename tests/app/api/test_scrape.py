"""GET /metrics in process, over SQLite and PostgreSQL: the jobs table summed up at scrape time
(queue depth by queue, run time by outcome, lease losses), the workers' families read from
their store, and the Grafana dashboard asking only for families /metrics has."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from app import telemetry
from app.config import Settings
from app.db import Database
from app.tables import Job, utcnow
from tests.app.api.conftest import Client
from tests.conftest import REPO_ROOT

DASHBOARD = REPO_ROOT / "docker" / "grafana" / "stagecraft.json"


def scrape(client: Client) -> tuple[dict[str, float], set[str]]:
    """The samples (name{labels} -> value) and the family names of one scrape."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples, families = {}, set()
    for family in text_string_to_metric_families(r.text):
        families.add(family.name)
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return samples, families


def test_queue_depth_run_time_and_losses_come_from_the_table(
    client: Client, database: Database, settings: Settings, new_job: Callable[..., str]
) -> None:
    before, _ = scrape(client)
    new_job({"name": "cpu"})
    new_job({"name": "gpus", "resources": {"device": "cuda", "processes": 2}})
    done, failed = new_job(), new_job()
    now = utcnow()
    with database.write() as session:
        ran = {"started_at": now - timedelta(seconds=45), "finished_at": now}
        session.execute(update(Job).where(Job.id == done).values(status="succeeded", **ran))
        session.execute(update(Job).where(Job.id == failed).values(status="failed", losses=2, **ran))
        session.commit()
    after, _ = scrape(client)

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert (
        grew('stagecraft_queue_depth{queue="train"}') == 1 and grew('stagecraft_queue_depth{queue="train.cuda.2"}') == 1
    )
    assert grew('stagecraft_jobs{status="queued"}') == 2 and grew('stagecraft_jobs{status="succeeded"}') == 1
    for outcome in ("succeeded", "failed"):
        assert grew(f'stagecraft_job_duration_seconds_count{{outcome="{outcome}"}}') == 1
        assert grew(f'stagecraft_job_duration_seconds_bucket{{le="30.0",outcome="{outcome}"}}') == 0
        assert grew(f'stagecraft_job_duration_seconds_bucket{{le="60.0",outcome="{outcome}"}}') == 1
        assert 44 < grew(f'stagecraft_job_duration_seconds_sum{{outcome="{outcome}"}}') < 46
    assert grew("stagecraft_job_lease_losses_total") == 2


def test_worker_families_come_from_their_store(client: Client, settings: Settings) -> None:
    got, _ = scrape(client)
    assert got["stagecraft_worker_metrics_up"] == 1 and got["stagecraft_train_steps_total"] == 0  # nothing pushed yet
    telemetry.store(settings).add({"train_steps": 4, "train_step_seconds:le:0.1": 3, "train_step_seconds:count": 4})
    got, _ = scrape(client)
    assert got["stagecraft_train_steps_total"] == 4
    assert got['stagecraft_train_step_seconds_bucket{le="0.05"}'] == 0
    assert got['stagecraft_train_step_seconds_bucket{le="0.1"}'] == 3
    assert got['stagecraft_train_step_seconds_bucket{le="60.0"}'] == 3
    assert got['stagecraft_train_step_seconds_bucket{le="+Inf"}'] == 4


def test_the_dashboard_asks_only_for_families_metrics_has(client: Client) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"]) and len(panels) >= 15
    _, families = scrape(client)
    asked = {name for p in panels for t in p["targets"] for name in re.findall(r"stagecraft_\w+", t["expr"])}
    family = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in asked}
    assert family - families == set(), "the dashboard asks for families /metrics lacks"
    for needed in ("train_steps", "train_tokens", "train_step_seconds", "queue_depth", "job_duration_seconds",
                   "worker_lease_losses", "checkpoint_bytes", "checkpoint_seconds", "inference_request_seconds",
                   "inference_time_to_first_token_seconds", "inference_tokens", "inference_model_cache_bytes",
                   "inference_model_loads"):  # fmt: skip
        assert f"stagecraft_{needed}" in family, needed
