"""Resource estimates for a spec, computed without building the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.spec import JobSpec


@dataclass(frozen=True)
class Estimates:
    parameters: int
    tokens: int  # tokens the training steps read (batch × grad_accum × block per step)
    total_steps: int
    flops: float  # ≈ 6 × parameters × tokens


def gpt_parameters(vocab_size: int, block_size: int, n_layer: int, n_embd: int) -> int:
    """Parameters of models.gpt.GPT: tied token embeddings, learned positions, and per block
    two LayerNorms (2·2C), attention (C·3C + 3C, C·C + C) and the MLP (C·4C + 4C, 4C·C + C)."""
    c = n_embd
    return vocab_size * c + block_size * c + n_layer * (12 * c * c + 13 * c) + 2 * c


def estimate(spec: JobSpec, base_config: dict[str, Any] | None = None) -> Estimates:
    """`base_config`: the GPT config of the `init_from` model, which replaces spec.model."""
    if base_config is not None:
        g = base_config
        params = gpt_parameters(g["vocab_size"], g["block_size"], g["n_layer"], g["n_embd"])
        block = int(g["block_size"])
    else:
        m = spec.model
        vocab = spec.tokenizer.vocab_size if spec.tokenizer else 0
        params = gpt_parameters(vocab, m.block_size, m.n_layer, m.n_embd)
        block = m.block_size
    tokens = block * sum(s.steps * s.batch_size * s.grad_accum for s in spec.stages)
    return Estimates(parameters=params, tokens=tokens, total_steps=spec.total_steps, flops=6.0 * params * tokens)
