"""`run(spec, workdir, ...)`: tokenizer → stages → final model, with exact resume.

Workdir layout: `spec.json`, `tokenizer/`, `checkpoints/step-NNNNNNNNN/`, `model/`.
The work itself is `models.training.pipeline.Pipeline`; this is its one entry point.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.errors import SpecError, Stopped, TrainingError
from models.spec import JobSpec, parse_spec
from models.training import checkpoint
from models.training.final import RunResult
from models.training.pipeline import Pipeline
from models.training.run_state import EventSink, PublishHook

__all__ = ["EventSink", "PublishHook", "RunResult", "Stopped", "run"]


def _stored_spec(path: Path) -> Any:
    """The run's spec as this code reads it: fields added since it was written take their
    defaults, so a run started before an upgrade still resumes."""
    stored = json.loads(path.read_text())
    try:
        return parse_spec(stored).model_dump(mode="json")
    except SpecError:
        return stored


def run(
    spec: JobSpec,
    workdir: Path,
    on_event: EventSink | None = None,
    should_stop: Callable[[], bool] | None = None,
    resolve: Callable[[str], Path] = Path,
    resume: bool = False,
    publish: PublishHook | None = None,
    staging: Path | None = None,
) -> RunResult:
    """Train `spec` in `workdir`. With resume, continue from the newest checkpoint there.

    Raises TrainingError (with a code) for runs that cannot go on, and Stopped after
    checkpointing when should_stop() returned True between two steps. With `publish`,
    checkpoints and the model are staged under `staging` and published by the hook
    (the service fences them by its lease); RunResult.model_dir is then the staged model.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    spec_file = workdir / "spec.json"
    spec_json = spec.model_dump(mode="json")
    if spec_file.exists():
        if not resume:
            raise TrainingError("user_error", f"{workdir} already holds a run: resume it, or use another directory")
        if _stored_spec(spec_file) != spec_json:
            raise TrainingError("user_error", f"{workdir} holds a run of a different spec; resume needs the same spec")
    else:
        checkpoint.write_json(spec_file, spec_json)
    ckpts = checkpoint.list_checkpoints(workdir / "checkpoints")
    p = Pipeline(spec, workdir, on_event, should_stop, resolve, publish, staging)
    p.load_data()
    p.build_model()
    if resume and ckpts:
        p.restore(ckpts[-1])
        p.emit("job.restarted", None, {"from_step": p.global_step, "checkpoint": ckpts[-1].name})
    if p.should_stop():  # asked to stop while data and model were loading
        p.save()
        raise Stopped(p.global_step)
    for _ in p.train():
        if p.should_stop():
            p.save()
            raise Stopped(p.global_step)
    return p.finish()
