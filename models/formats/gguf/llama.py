"""Our Llama family as llama.cpp's converter writes it: GGUF architecture `llama` (Llama,
Mistral without a sliding window, SmolLM2), `qwen2` (q/k/v biases) or `qwen3` (per-head q/k
RMSNorm), the one Hugging Face model_type that represents the config exactly
(models.families.llama.hf.export_type), with that architecture's metadata and tensor names
(models.families.llama.config's GGUF tables, read the other way).

For `llama` only, llama.cpp's converter permutes the rows of attn_q / attn_k per head (the two
rotary halves interleaved, for its rope kernel): `permute`, which models.formats.gguf.reader's
`unpermute` undoes. Llama 3.1 rope scaling becomes the `rope_freqs` tensor of per-frequency
divisors, as the converter computes them; linear scaling becomes `rope.scaling.*` metadata.
"""

from __future__ import annotations

import math

import torch
from gguf import GGUFWriter, RopeScalingType

from models.errors import UnsupportedModel
from models.families.llama.config import GGUF_GLOBAL_TENSORS, GGUF_LAYER_TENSORS, LlamaConfig
from models.families.llama.hf import export_type

_GLOBAL = {v: k for k, v in GGUF_GLOBAL_TENSORS.items()}
_LAYER = {v: k for k, v in GGUF_LAYER_TENSORS.items()}


def gguf_arch(c: LlamaConfig) -> str:
    """llama, qwen2 or qwen3 (UnsupportedModel for a config that is none of them)."""
    arch = export_type(c)
    scaling = (c.rope_scaling or {}).get("type")
    if scaling == "llama3" and arch != "llama":
        raise UnsupportedModel(f"GGUF export: llama.cpp's {arch} architecture has no llama3 rope scaling")
    return arch


def permute(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's converter: within each head, the rows of the two rotary halves interleaved
    (r0, r_half, r1, r_half+1, ...)."""
    shape = rows.shape
    return rows.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).transpose(1, 2).reshape(shape)


def add_hparams(w: GGUFWriter, c: LlamaConfig, vocab_rows: int) -> None:
    """What llama.cpp's converter writes for LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM."""
    w.add_block_count(c.n_layer)
    w.add_context_length(c.block_size)
    w.add_embedding_length(c.n_embd)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.n_head)
    w.add_head_count_kv(c.n_kv_head)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_vocab_size(vocab_rows)
    w.add_rope_dimension_count(c.head_dim)
    if (c.rope_scaling or {}).get("type") == "linear":
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(c.rope_scaling["factor"]))  # type: ignore[index]


def rope_freqs(c: LlamaConfig) -> torch.Tensor:
    """Llama 3.1's rope scaling as the per-frequency divisors llama.cpp reads (`rope_freqs`),
    computed as its converter computes them."""
    s = c.rope_scaling or {}
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    original = float(s["original_max_position_embeddings"])
    freqs = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


def gguf_name(name: str) -> str:
    if name in _GLOBAL:
        return _GLOBAL[name]
    _, _, block, rest = name.split(".", 3)  # model.layers.<i>.<rest>
    if rest not in _LAYER:
        raise UnsupportedModel(f"GGUF export: tensor {name} has no llama.cpp name")
    return f"blk.{block}.{_LAYER[rest]}"


def tensors(state: dict[str, torch.Tensor], c: LlamaConfig, arch: str) -> list[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) for each parameter (a tied head is the embedding: no `output`)."""
    out = []
    if (c.rope_scaling or {}).get("type") == "llama3":
        out.append(("rope_freqs.weight", rope_freqs(c)))
    for name, value in state.items():
        if name == "lm_head.weight" and c.tie_embeddings:
            continue
        target = gguf_name(name)
        if arch == "llama" and name.endswith("self_attn.q_proj.weight"):
            value = permute(value, c.n_head)
        elif arch == "llama" and name.endswith("self_attn.k_proj.weight"):
            value = permute(value, c.n_kv_head)
        out.append((target, value))
    return out
