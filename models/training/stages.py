"""Stages as explicit loops: the STAGES registry turns each stage of a spec into segments,
and `train_step` runs one optimizer step of a segment.

A segment is one objective on one data stream with one optimizer: a pretrain or finetune
stage is one segment, a multistep stage is cycles × phases of them. Each phase keeps its
own optimizer and its own position in its data across cycles; the stage's schedule runs
over all of the stage's steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from models.data.streams import Batch, Stream
from models.errors import TrainingError
from models.families.build import Model
from models.spec import (
    CausalLMLoss,
    CrossEntropyLoss,
    FinetuneStage,
    GradClip,
    MultistepStage,
    Phase,
    PretrainStage,
    Schedule,
    Stage,
    part_loc,
)
from models.training.losses import LOSSES, SCORED, add_regularization_grads
from models.training.optim import clipped_step, set_lr
from models.training.precision import Weights

if TYPE_CHECKING:  # (torch.distributed loads only in a run of several processes)
    from models.training.distributed import Group


@dataclass(frozen=True)
class Segment:
    stage_index: int
    stage: Stage
    phase_index: int | None  # the multistep phase it is, None for a single-objective stage
    key: str  # names this segment's optimizer and data position: "1", or "2.p0" for a phase
    objective: str  # pretrain | finetune | preference
    part: PretrainStage | FinetuneStage | Phase  # data, steps, loss, optimizer, regularization, trainable
    batch_size: int
    grad_accum: int
    schedule: Schedule
    grad_clip: GradClip | None
    stage_offset: int  # steps of the stage before this segment, for the schedule
    label: str

    @property
    def steps(self) -> int:
        return self.part.steps

    @property
    def loc(self) -> str:
        """The field path of its stage or phase in the spec ("stages.2.phases.0")."""
        return part_loc(self.stage_index, self.phase_index)

    @property
    def stage_steps(self) -> int:
        return self.stage.steps


def _single(index: int, stage: Stage) -> list[Segment]:
    assert isinstance(stage, PretrainStage)  # FinetuneStage is one too
    return [
        Segment(
            index,
            stage,
            None,
            str(index),
            stage.objective,
            stage,
            stage.batch_size,
            stage.grad_accum,
            stage.schedule,
            stage.grad_clip,
            0,
            stage.name,
        )
    ]


def _multistep(index: int, stage: Stage) -> list[Segment]:
    assert isinstance(stage, MultistepStage)
    segments, offset = [], 0
    for cycle in range(stage.cycles):
        for j, phase in enumerate(stage.phases):
            label = f"{stage.name} {cycle + 1}/{stage.cycles} {phase.name or phase.objective}"
            segments.append(
                Segment(
                    index,
                    stage,
                    j,
                    f"{index}.p{j}",
                    phase.objective,
                    phase,
                    stage.batch_size,
                    stage.grad_accum,
                    stage.schedule,
                    stage.grad_clip,
                    offset,
                    label,
                )
            )
            offset += phase.steps
    return segments


STAGES: dict[str, Callable[[int, Stage], list[Segment]]] = {
    "pretrain": _single,
    "finetune": _single,
    "preference": _single,
    "multistep": _multistep,
}


def plan(stages: Sequence[Stage]) -> list[Segment]:
    return [seg for i, stage in enumerate(stages) for seg in STAGES[stage.type](i, stage)]


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int
    extra: dict[str, float] = field(default_factory=dict)  # an objective's own metrics (preference: rewards)


@dataclass
class Trainee:
    """What a segment trains: the model parameters it unfroze, their optimizer-side twins
    (the same tensors, or fp32 masters), and the optimizer over the latter."""

    params: list[nn.Parameter]
    opt_params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer


def train_step(
    model: Model,
    weights: Weights,
    t: Trainee,
    stream: Stream,
    seg: Segment,
    step: int,
    lr: float,
    autocast: Callable[[], AbstractContextManager[object]],
    to_device: Callable[[Batch], Batch],
    group: Group | None = None,
) -> StepResult:
    """Optimizer step number `step`: grad_accum micro-batches, regularization, clipping, update.

    With a `group` each micro-batch is the global batch (every rank draws it), of which this
    rank trains its rows, its loss weighted by their share of the scored tokens; the loss and
    (ddp) the gradients are then summed over the ranks, so every rank takes the same update."""
    loss_fn, spec = LOSSES[seg.part.loss.type], seg.part.loss
    assert isinstance(spec, CausalLMLoss | CrossEntropyLoss)  # (preference parts: models/training/preference.py)
    total = torch.zeros(())
    tokens = 0
    for _ in range(seg.grad_accum):
        batch = to_device(stream.next_batch(seg.batch_size))
        tokens += batch.tokens
        if group is not None:
            batch, share = group.local(batch, SCORED[seg.part.loss.type](batch))
        with autocast():
            loss = loss_fn(model, batch, spec)
        if group is not None:
            loss = loss * share
        (loss / seg.grad_accum).backward()
        total += loss.detach().float().cpu()
    value, norm = update(weights, t, seg, step, lr, total, group)
    return StepResult(value, norm, tokens)


def update(
    weights: Weights, t: Trainee, seg: Segment, step: int, lr: float, total: torch.Tensor, group: Group | None = None
) -> tuple[float, float]:
    """After a step's backward passes (their losses summed in `total`): regularization,
    clipping and the update. Returns (the step's loss, the gradient norm)."""
    weights.gradients_to_optimizer(t.params, t.opt_params)
    if group is not None:
        total = group.reduce(t.opt_params, total)
    value = float(total) / seg.grad_accum
    if not math.isfinite(value):
        raise TrainingError("user_error", f"loss diverged at stage {seg.stage.name} step {step} (loss {value})")
    reg = seg.part.regularization
    add_regularization_grads(t.opt_params, reg.l1, reg.l2)
    grads = [p.grad for p in t.opt_params if p.grad is not None]
    norm = float(torch.nn.utils.get_total_norm(grads)) if group is None else group.norm(grads)
    if not math.isfinite(norm):  # an update now would write inf/NaN into the weights
        raise TrainingError("user_error", f"loss diverged at stage {seg.stage.name} step {step} (gradient norm {norm})")
    set_lr(t.optimizer, lr)
    clipped_step(t.optimizer, grads, seg.grad_clip, norm)
    weights.clear_gradients(t.optimizer)
    weights.optimizer_to_model(t.params, t.opt_params)
    return value, norm
