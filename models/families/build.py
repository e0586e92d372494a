"""The model families, by the name a spec and a model directory record (`gpt`, `llama`).

Everything that must not care which family it holds goes through here: building a model
from its config, reading a config back from its recorded fields, and making the config a
spec describes. Both families share one interface: `hidden(idx, positions, cache, mask)`,
`logits(h)`, `head_weight()`, `num_parameters()`, `config.to_dict()`, `config.arch`.
"""

from __future__ import annotations

from typing import Any

from models.families.gpt.model import GPT, GPTConfig
from models.families.llama.model import Llama, LlamaConfig
from models.spec import LlamaModelSpec, ModelSpec

Model = GPT | Llama
ModelConfig = GPTConfig | LlamaConfig

CONFIGS: dict[str, type[GPTConfig] | type[LlamaConfig]] = {"gpt": GPTConfig, "llama": LlamaConfig}


def build_model(config: ModelConfig) -> Model:
    """A freshly initialised model of `config`'s family."""
    if isinstance(config, LlamaConfig):
        return Llama(config)
    return GPT(config)


def config_from_dict(arch: str, fields: dict[str, Any]) -> ModelConfig:
    """The config recorded as `config.to_dict()` under family `arch`."""
    if arch not in CONFIGS:
        raise ValueError(f"unknown model architecture '{arch}' (known: {', '.join(CONFIGS)})")
    return CONFIGS[arch](**fields)


def config_from_spec(m: ModelSpec | LlamaModelSpec, vocab_size: int) -> ModelConfig:
    """The config of a new model as the spec's `model` section describes it."""
    if isinstance(m, LlamaModelSpec):
        scaling = None if m.rope_scaling is None else m.rope_scaling.model_dump()
        return LlamaConfig(
            vocab_size=vocab_size,
            block_size=m.block_size,
            n_layer=m.n_layer,
            n_head=m.n_head,
            n_kv_head=m.n_kv_head or m.n_head,
            n_embd=m.n_embd,
            head_dim=m.head_dim or 0,
            intermediate_size=m.intermediate_size or default_intermediate(m.n_embd),
            rms_norm_eps=m.rms_norm_eps,
            rope_theta=m.rope_theta,
            rope_scaling=scaling,
            attention_bias=m.attention_bias,
            qk_norm=m.qk_norm,
            tie_embeddings=m.tie_embeddings,
            dropout=m.dropout,
        )
    return GPTConfig(vocab_size, m.block_size, m.n_layer, m.n_head, m.n_embd, m.dropout)


def default_intermediate(n_embd: int) -> int:
    """SwiGLU width with about the parameters of a 4x GELU MLP: 8/3 n_embd, up to a multiple of 32."""
    return (8 * n_embd // 3 + 31) // 32 * 32
