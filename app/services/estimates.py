"""Resource estimates for a spec, computed without building the model (torch-free: the
parameter count is the family config's, models/families/<arch>/config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.families import DEFAULT, config_from_dict, family
from models.spec import JobSpec, training_block


@dataclass(frozen=True)
class Estimates:
    parameters: int
    tokens: int  # tokens the training steps read (batch × grad_accum × block per step)
    total_steps: int
    flops: float  # ≈ 6 × parameters × tokens


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
    tokens = block * sum(s.steps * s.batch_size * s.grad_accum for s in spec.stages)
    return Estimates(parameters=params, tokens=tokens, total_steps=spec.total_steps, flops=6.0 * params * tokens)
