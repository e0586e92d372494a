"""`run(spec, workdir, ...)`: tokenizer → stages → final model, with exact resume.

Workdir layout: `spec.json`, `tokenizer/`, `checkpoints/step-NNNNNNNNN/`, `model/`.
The work itself is `models.training.pipeline.Pipeline`; this is its one entry point in one
process. A job of several processes runs through models.training.launch.run_processes, whose
processes (models/training/rank.py) share `prepare` and `drive` with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from models.errors import SpecError, Stopped, TrainingError
from models.spec import JobSpec, parse_spec
from models.training import checkpoint
from models.training.final import RunResult
from models.training.pipeline import Pipeline
from models.training.run_state import EventSink, PublishHook

__all__ = ["EventSink", "PublishHook", "RunResult", "Stopped", "drive", "prepare", "run", "same_spec"]


def same_spec(path: Path, spec: JobSpec) -> bool:
    """Whether the run in `path` (its spec.json) is of `spec`, read as this code reads it:
    fields added since it was written take their defaults, and a `trainable: [all]` that
    earlier versions filled in where `spec` leaves it out counts as left out (it read the same
    then: every weight, or with an adapter none of the base), so a run started before an
    upgrade still resumes. The one comparison of `run` and `stagecraft train --resume`."""
    current = spec.model_dump(mode="json")
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        stored = parse_spec(stored).model_dump(mode="json")
    except (OSError, ValueError, SpecError):
        return False
    for was, now in zip(stored["stages"], current["stages"], strict=False):
        for w, n in zip(was.get("phases") or [was], now.get("phases") or [now], strict=False):
            if w.get("trainable") == ["all"] and n.get("trainable") is None:
                w["trainable"] = None
    return bool(stored == current)


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
    resume_from = prepare(spec, workdir, resume)
    return drive(Pipeline(spec, workdir, on_event, should_stop, resolve, publish, staging), resume_from)


def prepare(spec: JobSpec, workdir: Path, resume: bool) -> Path | None:
    """Check that `workdir` may hold this run (a new one, or with resume one of the same
    spec) and record its spec there; returns the checkpoint to resume from, if any."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_file = workdir / "spec.json"
    if spec_file.exists():
        if not resume:
            raise TrainingError("user_error", f"{workdir} already holds a run: resume it, or use another directory")
        if not same_spec(spec_file, spec):
            raise TrainingError("user_error", f"{workdir} holds a run of a different spec; resume needs the same spec")
    else:
        checkpoint.write_json(spec_file, spec.model_dump(mode="json"))
    ckpts = checkpoint.list_checkpoints(workdir / "checkpoints")
    return ckpts[-1] if resume and ckpts else None


def drive(p: Pipeline, resume_from: Path | None) -> RunResult:
    """Run `p` to its end: data, model, the checkpoint `resume_from`, every step, the model."""
    p.load_data()
    p.build_model()
    if resume_from is not None:
        p.restore(resume_from)
        p.emit("job.restarted", None, {"from_step": p.global_step, "checkpoint": resume_from.name})
    if p.should_stop():  # asked to stop while data and model were loading
        p.save()
        raise Stopped(p.global_step)
    for _ in p.train():
        if p.should_stop():
            p.save()
            raise Stopped(p.global_step)
    return p.finish()
