"""app.services.reporting: `report_to` sinks fed a run's events. Each tracker's own reader
gets the series back (TensorBoard's EventAccumulator, MLflow's client, the W&B offline run
file); a retry continues the job's run; a failing or stalled sink never raises into the
training thread nor holds it; the spec's and the service's settings are validated."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.services import plots, reporting
from app.services.reporting import ReportSinks
from app.services.trackers import Sink
from models.errors import SpecError
from models.events import Event, make
from models.spec import JobSpec, parse_spec
from tests.app.services.test_plots import run_events, stage


@pytest.fixture
def job_spec(spec_dict: Callable[..., dict[str, Any]]) -> Callable[..., JobSpec]:
    return lambda *report_to: parse_spec(spec_dict(report_to=list(report_to)))


def restarted_run() -> list[Event]:
    """run_events() with a resume from step 5 after step 8: steps 6..8 run twice."""
    events = run_events()
    first = [e for e in events if e["step"] <= 8]
    restart = make("job.restarted", 5, {"from_step": 5, "checkpoint": "step-000000005"})
    return [*first, restart, *(e for e in events if e["step"] > 5)]


def feed(sinks: ReportSinks, events: list[Event], outcome: str | None = "job.succeeded") -> None:
    seen: list[Event] = []
    on_event = sinks.wrap(seen.append)
    for e in events:
        on_event(e)
    assert seen == events  # the wrapped callback gets everything first
    sinks.close(outcome, timeout_s=60)


def test_tensorboard_holds_each_stages_scalars(job_spec: Callable[..., JobSpec], tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = restarted_run()
    feed(ReportSinks.for_run(job_spec("tensorboard"), tmp_path, Settings(data_dir=tmp_path)), events)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    read = {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    expected = plots.series_from_events(events)["train.loss"]  # the restart's superseded steps dropped
    loss = sorted(p for tag in ("pretrain", "finetune", "refine") for p in read[f"{tag}/train/loss"])
    assert [s for s, _ in loss] == [s for s, _ in expected] == list(range(1, 47))
    assert [v for _, v in loss] == pytest.approx([v for _, v in expected], rel=1e-6)  # float32
    assert [s for s, _ in read["pretrain/train/loss"]] == list(range(1, 31))
    assert read["refine/eval/corpus/loss"] == [(46, pytest.approx(3.0 - 46 / 50))]
    assert read["final/eval/pairs/qa.exact_match"] == [(46, 0.25)]
    assert {"pretrain/train/lr", "finetune/eval/corpus/perplexity"} <= set(read)


def test_mlflow_has_one_run_per_job_with_the_series(
    job_spec: Callable[..., JobSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # (what the sink sets for a file store; undone after)
    uri = (tmp_path / "mlruns").as_uri()
    settings = Settings(data_dir=tmp_path, mlflow_tracking_uri=uri, mlflow_experiment="tests")
    spec = job_spec("mlflow")
    events = run_events()
    feed(ReportSinks.for_job(settings, spec, "job_01", tmp_path / "job"), events[:20], outcome=None)  # handed back
    feed(ReportSinks.for_job(settings, spec, "job_01", tmp_path / "job"), events[20:])  # the next attempt
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tests")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == spec.name
    assert run.data.tags["stagecraft.run"] == "job_01"
    assert run.data.params["stages.0.optimizer.lr"] == str(spec.model_dump()["stages"][0]["optimizer"]["lr"])
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train.loss")]
    assert sorted(history) == plots.series_from_events(events)["train.loss"]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "eval.pairs.qa.exact_match")] == [0.25]
    stages = client.get_metric_history(run.info.run_id, "stage")  # where each stage starts
    assert sorted((m.step, m.value) for m in stages) == [(0, 0.0), (30, 1.0), (36, 2.0)]
    feed(ReportSinks.for_job(settings, spec, "job_02", tmp_path / "other"), events[:3], outcome="job.failed")
    runs = {r.data.tags["stagecraft.run"]: r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert runs == {"job_01": "FINISHED", "job_02": "FAILED"}


def test_wandb_writes_an_offline_run(
    job_spec: Callable[..., JobSpec], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=reporting.log.name):
        feed(ReportSinks.for_job(Settings(data_dir=tmp_path), job_spec("wandb"), "job_wb", tmp_path), run_events())
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # the sink never gave up
    [run_file] = (tmp_path / "wandb").glob("offline-run-*-job_wb/run-job_wb.wandb")
    data = run_file.read_bytes()
    assert b"train.loss" in data and b"eval.pairs.qa.exact_match" in data, f"{len(data)} bytes: {data[-400:]!r}"


def test_targets_join_the_service_default_and_the_spec(job_spec: Callable[..., JobSpec], tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, report_to="tensorboard, wandb")
    assert reporting.targets(settings, job_spec("mlflow", "tensorboard")) == ["tensorboard", "wandb", "mlflow"]
    nothing = ReportSinks.for_job(Settings(data_dir=tmp_path), job_spec(), "job_x", tmp_path)
    callback: Callable[[Event], None] = print
    assert nothing.runners == [] and nothing.wrap(callback) is callback  # no sink: no cost at all
    nothing.close()
    with pytest.raises(ValidationError, match="STAGECRAFT_REPORT_TO: unknown comet"):
        Settings(data_dir=tmp_path, report_to="tensorboard,comet")


def test_spec_report_to_is_validated(spec_dict: Callable[..., dict[str, Any]]) -> None:
    assert parse_spec(spec_dict()).report_to == []
    with pytest.raises(SpecError) as bad:
        parse_spec(spec_dict(report_to=["tensorboard", "comet"]))
    assert [d["loc"] for d in bad.value.errors] == ["report_to.1"]
    assert "'tensorboard', 'mlflow' or 'wandb'" in bad.value.errors[0]["message"]
    with pytest.raises(SpecError) as twice:
        parse_spec(spec_dict(report_to=["mlflow", "mlflow"]))
    assert twice.value.errors == [{"loc": "report_to", "message": "Value error, mlflow listed more than once"}]


class Failing(Sink):
    name = "failing"
    closed: str | None = None

    def write(self, events: list[Event]) -> None:
        raise RuntimeError("tracker down")

    def close(self, outcome: str | None) -> None:
        self.closed = outcome


class Stalled(Sink):
    name = "stalled"

    def __init__(self) -> None:
        self.release = threading.Event()

    def write(self, events: list[Event]) -> None:
        self.release.wait(30)


class Recording(Sink):
    name = "recording"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.outcome: str | None = "unset"

    def write(self, events: list[Event]) -> None:
        self.events += events

    def close(self, outcome: str | None) -> None:
        self.outcome = outcome


def test_a_failing_or_stalled_sink_never_holds_training(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(reporting, "QUEUE_EVENTS", 50)
    failing, stalled, recording = Failing(), Stalled(), Recording()
    sinks = ReportSinks([failing, stalled, recording])
    on_event = sinks.wrap(lambda e: None)
    events = [make("train.step", s, {"loss": 1.0 / s}, stage(0)) for s in range(1, 201)]
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="app.services.reporting"):
        for e in events:
            on_event(e)  # never raises, never waits
            time.sleep(0.002)  # (a training step's pace: the healthy sink keeps up)
        assert time.monotonic() - started < 10
        sinks.close("job.succeeded", timeout_s=0.5)
    stalled.release.set()
    assert recording.events == events and recording.outcome == "job.succeeded"
    assert failing.closed == "job.failed"  # its run ended at once, as failed, so what it wrote is flushed
    messages = [r.getMessage() for r in caplog.records]
    assert any("report_to failing: RuntimeError: tracker down; disabled" in m for m in messages), messages
    assert any("report_to stalled: fell 50 events behind; disabled" in m for m in messages), messages
    assert sum("report_to failing" in m for m in messages) == 1  # logged once
