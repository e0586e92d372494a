"""workers.execute with `report_to` (SQLite and PostgreSQL): the spec's trackers and the
service's STAGECRAFT_REPORT_TO both get the job's run, in the job's folder, holding the same
loss series as the API's metrics."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.db import Database
from app.queue.wakeups import Publisher
from app.services import auth, jobs, metrics
from tests.workers.test_execute import two_step_spec, upload
from workers.execute import execute


def test_a_job_reports_to_the_spec_and_the_service_trackers(
    database: Database,
    tmp_path: Path,
    data_dir: Path,
    spec_dict: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    url = database.engine.url.render_as_string(hide_password=False)
    settings = Settings(
        data_dir=tmp_path / "data", database_url=url, event_flush_s=0.05, cancel_poll_s=0.05, report_to="mlflow"
    )
    with database.write() as session:
        tenant_id = auth.get_or_create_tenant(session, f"t-{secrets.token_hex(6)}").id
        session.commit()
    ids = {name: upload(database, settings, tenant_id, data_dir / f"{name}.{ext}")
           for name, ext in (("corpus", "txt"), ("pairs", "jsonl"))}  # fmt: skip
    spec = two_step_spec(spec_dict, ids) | {"report_to": ["tensorboard"]}
    with database.write() as session:
        job, _ = jobs.submit(session, settings, tenant_id, spec, None)
        session.commit()

    execute(database, settings, Publisher(None), job.id, "worker-1")

    with database.read() as session:
        loss = metrics.series(session, job.id)["train.loss"]
    assert [s for s, _ in loss] == [1, 2]
    folder = jobs.workdir(settings, job.id)
    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    board = [(s.step, s.value) for tag in ("pretrain", "finetune") for s in acc.Scalars(f"{tag}/train/loss")]
    assert board == [(s, pytest.approx(v, rel=1e-6)) for s, v in loss]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(folder / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("stagecraft")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.tags["stagecraft.run"] == job.id and run.info.status == "FINISHED"
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train.loss")) == loss
