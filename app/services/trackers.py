"""The trackers `report_to` names, each a Sink that app.services.reporting runs on a thread of
its own: TensorBoard event files (torch's SummaryWriter), an MLflow run (its client: a file
store or a tracking server), a W&B offline run. What each writes: app/services/reporting.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from app.config import Settings
from app.services.metrics import TRAIN_FIELDS, points
from models.events import Event

BATCH = 1000  # MLflow metrics logged at once
MAX_PARAMS, MAX_PARAM_CHARS = 500, 500
WANDB_PROJECT = "stagecraft"
MLFLOW_STATUS = {"job.succeeded": "FINISHED", "job.failed": "FAILED"}  # anything else: KILLED


@dataclass(frozen=True)
class RunInfo:
    key: str  # one tracker run per key: the job id, or `run-<hash of its folder>` for a local run
    name: str  # the spec's name
    folder: Path  # the job's folder, or `stagecraft train --out`
    spec: dict[str, Any]


class Sink:
    name = "sink"

    def open(self) -> None: ...

    def write(self, events: list[Event]) -> None: ...

    def close(self, outcome: str | None) -> None: ...


def _walltime(event: Event) -> float:
    try:
        return datetime.fromisoformat(event["time"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return time.time()


def tensorboard_scalars(event: Event) -> list[tuple[str, float]]:
    """(tag, value) of a train.step or eval event: `<stage>/train/loss`, `<stage>/eval/<data>/<metric>`."""
    ref = event.get("stage")
    stage = ref["name"] if ref else "final"
    data = event["data"]
    if event["type"] == "train.step":
        return [(f"{stage}/train/{k}", float(data[k])) for k in TRAIN_FIELDS if isinstance(data.get(k), int | float)]
    if event["type"] == "eval":
        name = data.get("data", "data")
        return [(f"{stage}/eval/{name}/{k}", float(v)) for k, v in data.items() if k != "data" and _number(v)]
    return []


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class TensorBoardSink(Sink):
    name = "tensorboard"

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.writer: Any = None

    def open(self, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self.writer is not None:
            self.writer.close()
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.logdir), purge_step=purge_step)

    def write(self, events: list[Event]) -> None:
        for e in events:
            if e["type"] == "job.restarted":  # TensorBoard drops what it holds from this step on
                self.open(purge_step=int(e["data"].get("from_step") or 0) + 1)
            for tag, value in tensorboard_scalars(e):
                self.writer.add_scalar(tag, value, e["step"], walltime=_walltime(e))
        self.writer.flush()

    def close(self, outcome: str | None) -> None:
        self.writer.close()


class MlflowSink(Sink):
    name = "mlflow"

    def __init__(self, uri: str, experiment: str, run: RunInfo):
        self.uri, self.experiment, self.run = uri, experiment, run
        self.client: Any = None
        self.run_id = ""

    def open(self) -> None:
        if "://" not in self.uri or self.uri.startswith("file:"):  # a file store: MLflow 3 asks for this opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = c = MlflowClient(tracking_uri=self.uri)
        found = c.get_experiment_by_name(self.experiment)
        if found is None:
            try:
                exp_id = c.create_experiment(self.experiment)
            except Exception:  # made meanwhile by another worker
                made = c.get_experiment_by_name(self.experiment)
                if made is None:
                    raise
                exp_id = made.experiment_id
        else:
            exp_id = found.experiment_id
        runs = c.search_runs([exp_id], filter_string=f"tags.`stagecraft.run` = '{self.run.key}'", max_results=1)
        if runs:  # a retry of the job: its run goes on
            self.run_id = runs[0].info.run_id
            c.update_run(self.run_id, status="RUNNING")
            return
        self.run_id = c.create_run(exp_id, run_name=self.run.name, tags={"stagecraft.run": self.run.key}).info.run_id
        params = [Param(k, v) for k, v in flat_params(self.run.spec).items()]
        for i in range(0, len(params), 100):
            c.log_batch(self.run_id, params=params[i : i + 100])

    def write(self, events: list[Event]) -> None:
        from mlflow.entities import Metric

        found = []
        for e in events:
            at = int(_walltime(e) * 1000)
            found += [Metric(name, value, at, e["step"]) for name, value in points(e)]
            ref = e.get("stage")
            if e["type"] == "stage.started" and ref:
                found.append(Metric("stage", float(ref["index"]), at, e["step"]))
        for i in range(0, len(found), BATCH):
            self.client.log_batch(self.run_id, metrics=found[i : i + BATCH])

    def close(self, outcome: str | None) -> None:
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(outcome or "", "KILLED"))


class WandbSink(Sink):
    name = "wandb"

    def __init__(self, run: RunInfo):
        self.info = run
        self.run: Any = None

    def open(self) -> None:
        import wandb

        settings = wandb.Settings(silent=True, console="off", disable_git=True, save_code=False)
        self.run = r = wandb.init(
            mode="offline", dir=str(self.info.folder), project=WANDB_PROJECT, name=self.info.name,
            id=self.info.key, resume="allow", config=self.info.spec, settings=settings, reinit="create_new",
        )  # fmt: skip
        r.define_metric("step")
        r.define_metric("*", step_metric="step")  # steps may go back after a resume: an axis of our own

    def write(self, events: list[Event]) -> None:
        for e in events:
            values = dict(points(e))
            if values:
                self.run.log({**values, "step": e["step"]})

    def close(self, outcome: str | None) -> None:
        self.run.finish(exit_code=0 if outcome in (None, "job.succeeded") else 1)


def flat_params(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The spec as `stages.0.optimizer.lr` -> "0.001" (the first MAX_PARAMS, values cut short)."""
    out: dict[str, str] = {}
    items = spec.items() if isinstance(spec, Mapping) else enumerate(spec)
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, Mapping | list) and v:
            out.update(flat_params(v, key + "."))  # type: ignore[arg-type]
        else:
            out[key] = str(v)[:MAX_PARAM_CHARS]
    return dict(list(out.items())[:MAX_PARAMS])


def make_sinks(names: list[str], run: RunInfo, tensorboard: Path, settings: Settings) -> list[Sink]:
    mlflow_uri = settings.mlflow_tracking_uri or (run.folder / "mlruns").as_uri()
    made: dict[str, Callable[[], Sink]] = {
        "tensorboard": lambda: TensorBoardSink(tensorboard),
        "mlflow": lambda: MlflowSink(mlflow_uri, settings.mlflow_experiment, run),
        "wandb": lambda: WandbSink(run),
    }
    return [made[n]() for n in names if n in made]
