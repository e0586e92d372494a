"""`training_parts`, the one walk over a spec's stages and multistep phases: each one objective
on one data name (models/spec/checks.py and models/spec/objectives.py check them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from models.spec.job import JobSpec, MultistepStage, Phase, PretrainStage


class TrainingPart(NamedTuple):
    """A stage (phase_index None) or a multistep phase: one objective on one data name."""

    loc: str  # its field path: "stages.I" or "stages.I.phases.J"
    stage_index: int
    phase_index: int | None
    part: PretrainStage | Phase  # data, steps, objective, loss, optimizer, trainable, adapter


def part_loc(stage_index: int, phase_index: int | None) -> str:
    """The field path of a stage (phase_index None) or of one of its multistep phases."""
    return f"stages.{stage_index}" if phase_index is None else f"stages.{stage_index}.phases.{phase_index}"


def training_parts(spec: JobSpec) -> Iterator[TrainingPart]:
    """Every stage and multistep phase that trains, in spec order: the one walk over both."""
    for i, stage in enumerate(spec.stages):
        if isinstance(stage, MultistepStage):
            for j, phase in enumerate(stage.phases):
                yield TrainingPart(part_loc(i, j), i, j, phase)
        else:
            yield TrainingPart(part_loc(i, None), i, None, stage)
