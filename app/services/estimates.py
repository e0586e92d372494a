"""Resource estimates for a spec, computed without building the model (torch-free: the
parameter count is the family config's, models/families/<arch>/config.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from models.families import DEFAULT, config_from_dict, family
from models.spec import JobSpec, MultistepStage, training_block, training_parts
from models.spec.preference import REFERENCE_FREE


@dataclass(frozen=True)
class Estimates:
    parameters: int
    tokens: int  # tokens the training steps read (batch × grad_accum × block per step; × 2 for pairs)
    total_steps: int
    flops: float  # ≈ 6 × parameters × tokens, + 2 × parameters × tokens a reference model reads


def _rows(spec: JobSpec) -> Iterator[tuple[int, int, int]]:
    """(steps, sequences trained on per step, sequences a reference model reads per step) of
    every stage and multistep phase: a preference objective's rows are pairs, chosen and
    rejected, both read by its reference as well unless its loss needs none."""
    for p in training_parts(spec):
        stage = spec.stages[p.stage_index]
        steps = p.part.steps * (stage.cycles if isinstance(stage, MultistepStage) else 1)
        rows = stage.batch_size * stage.grad_accum
        if p.part.objective != "preference":
            yield steps, rows, 0
        else:
            ahead = getattr(p.part, "precompute_reference", False)  # read once per pair before the stage: not counted
            yield steps, 2 * rows, 0 if p.part.loss.type in REFERENCE_FREE or ahead else 2 * rows


def estimate(spec: JobSpec, base_config: dict[str, Any] | None = None) -> Estimates:
    """`base_config`: the recorded config of the `init_from` model (its `arch` among the
    fields, app.services.catalog.base_config), which replaces spec.model's shape."""
    if base_config is not None:
        fields = dict(base_config)
        config = config_from_dict(str(fields.pop("arch", DEFAULT)), fields)
    else:
        vocab = spec.tokenizer.vocab_size if spec.tokenizer else 0
        config = family(spec.model.arch).from_spec(spec.model, vocab)
    params = config.num_parameters()
    block = training_block(spec.model, config.block_size)
    rows = list(_rows(spec))
    tokens = block * sum(steps * trained for steps, trained, _ in rows)
    reference = block * sum(steps * read for steps, _, read in rows)
    flops = 6.0 * params * tokens + 2.0 * params * reference
    return Estimates(parameters=params, tokens=tokens, total_steps=spec.total_steps, flops=flops)
