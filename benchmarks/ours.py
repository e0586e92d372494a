"""Our training step as the benchmarks time it: the stage's first segment of a parsed spec,
planned by `models.training.pipeline.Pipeline` (segment plan, precision policy, device transfer of a
real run) and stepped through `models.training.stages.train_step`."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.families.gpt.model import GPT
from models.training.optim import lr_factor
from models.training.pipeline import Pipeline
from models.training.stages import Segment, train_step


def plan(spec: Any) -> tuple[Pipeline, Segment]:
    """The pipeline of `spec` (no data, no workdir use) and its first segment."""
    pipe = Pipeline(spec, Path(tempfile.gettempdir()), None, None, Path)
    return pipe, pipe.segments[0]


def segment_step(pipe: Pipeline, seg: Segment, model: GPT, stream: Any) -> Callable[[], int]:
    """One optimizer step of `seg` on `model` per call, batches from `stream`; returns the
    tokens it trained on. The model takes the run's precision policy (bf16 on a CPU: a bf16
    model with fp32 master weights)."""
    pipe.adopt(model)
    trainee = pipe.trainee(seg)
    counter = itertools.count()

    def step() -> int:
        s = next(counter)
        lr = seg.part.optimizer.lr * lr_factor(seg.schedule, seg.stage_offset + s, seg.stage_steps)
        return train_step(
            model,
            pipe.weights,
            trainee,
            stream,
            seg,
            s + 1,
            lr,
            pipe.autocast,
            pipe.to_device,  # type: ignore[arg-type]
        ).tokens

    return step
