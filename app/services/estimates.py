"""Resource estimates for a spec, computed without building the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.spec import JobSpec, training_block


@dataclass(frozen=True)
class Estimates:
    parameters: int
    tokens: int  # tokens the training steps read (batch × grad_accum × block per step)
    total_steps: int
    flops: float  # ≈ 6 × parameters × tokens


def gpt_parameters(vocab_size: int, block_size: int, n_layer: int, n_embd: int) -> int:
    """Parameters of models.families.gpt.model.GPT: tied token embeddings, learned positions, and per block
    two LayerNorms (2·2C), attention (C·3C + 3C, C·C + C) and the MLP (C·4C + 4C, 4C·C + C)."""
    c = n_embd
    return vocab_size * c + block_size * c + n_layer * (12 * c * c + 13 * c) + 2 * c


def llama_parameters(config: dict[str, Any], vocab_size: int) -> int:
    """Parameters of models.families.llama.model.Llama: embedding (and an untied head), per block two
    RMSNorms, q/k/v/o projections (q/k/v biases optional, Qwen3's per-head norms) and a
    SwiGLU MLP, and the final norm."""
    c, h = int(config["n_embd"]), int(config["n_head"])
    kv = int(config.get("n_kv_head") or h)
    d = int(config.get("head_dim") or c // h)
    inner = int(config.get("intermediate_size") or (8 * c // 3 + 31) // 32 * 32)
    attn = 2 * c * h * d + 2 * c * kv * d + ((h + 2 * kv) * d if config.get("attention_bias") else 0)
    attn += 2 * d if config.get("qk_norm") else 0
    per_block = attn + 3 * c * inner + 2 * c
    head = 0 if config.get("tie_embeddings", True) else vocab_size * c
    return vocab_size * c + head + int(config["n_layer"]) * per_block + c


def estimate(spec: JobSpec, base_config: dict[str, Any] | None = None) -> Estimates:
    """`base_config`: the GPT config of the `init_from` model, which replaces spec.model."""
    if base_config is not None:
        g = base_config
        if "intermediate_size" in g:  # a Llama-family config
            params = llama_parameters(g, int(g["vocab_size"]))
        else:
            params = gpt_parameters(g["vocab_size"], g["block_size"], g["n_layer"], g["n_embd"])
        block = int(g["block_size"])
    else:
        m = spec.model
        vocab = spec.tokenizer.vocab_size if spec.tokenizer else 0
        if m.arch == "llama":
            params = llama_parameters(m.model_dump(), vocab)
        else:
            params = gpt_parameters(vocab, m.block_size, m.n_layer, m.n_embd)
        block = m.block_size
    block = training_block(spec.model, block)
    tokens = block * sum(s.steps * s.batch_size * s.grad_accum for s in spec.stages)
    return Estimates(parameters=params, tokens=tokens, total_steps=spec.total_steps, flops=6.0 * params * tokens)
