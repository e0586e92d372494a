"""The Hugging Face Llama-family layouts (`llama`, `mistral`, `qwen2`, `qwen3`), both ways.

Our `Llama` uses the Hugging Face parameter names, so the weights are a direct copy; the
work is in the config: its older (`rope_theta`, `rope_scaling`) and newer
(`rope_parameters`) forms, each model type's defaults, and refusing what we cannot
represent exactly (other activations, MLP or output-projection biases, sliding windows
shorter than the context, other rotary scalings).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from models.errors import UnsupportedModel
from models.families.llama.config import ROPE_TYPES, LlamaConfig
from models.families.llama.model import Llama

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
MAX_BLOCK = 2048  # the context we train and serve an imported model with: serving KV caches are preallocated to it
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise UnsupportedModel(f"unsupported model: {what}")


def _rope(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and our rope_scaling from either config form."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    _need(isinstance(params, dict), "rope parameters are not an object")
    if set(params) & {"full_attention", "sliding_attention"}:  # nested per layer type
        params = params.get("full_attention") or {}
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    _need(
        float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))) == 1.0,
        "partial rotary embeddings",
    )
    if kind == "default":
        return theta, None
    _need(kind in ROPE_TYPES, f"rope scaling type '{kind}' (supported: default, {', '.join(ROPE_TYPES)})")
    if kind == "linear":
        return theta, {"type": "linear", "factor": float(params["factor"])}
    params = {"original_max_position_embeddings": config.get("original_max_position_embeddings"), **params}
    missing = [k for k in LLAMA3_KEYS if params.get(k) is None]
    _need(not missing, f"llama3 rope scaling without {missing}")
    scaling: dict[str, Any] = {"type": "llama3", **{k: float(params[k]) for k in LLAMA3_KEYS}}
    scaling["original_max_position_embeddings"] = int(params["original_max_position_embeddings"])
    return theta, scaling


def config_from_hf(config: dict[str, Any]) -> LlamaConfig:
    """Our config for a Hugging Face config.json of a Llama-family model_type."""
    mt = str(config.get("model_type"))
    _need(mt in MODEL_TYPES, f"model_type '{mt}' (supported: gpt2, {', '.join(MODEL_TYPES)})")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        _need(isinstance(config.get(key), int), f"config.json has no integer '{key}'")
    act = config.get("hidden_act", "silu")
    _need(act == "silu", f"hidden_act '{act}' (needs silu)")
    _need(not config.get("mlp_bias", False), "MLP biases")
    _need(int(config.get("pretraining_tp", 1) or 1) == 1, "pretraining_tp other than 1")
    _need(not config.get("attention_bias", False) or mt == "qwen2", f"attention_bias on {mt} (biased o_proj)")
    heads = config["num_attention_heads"]
    kv_default = 8 if mt == "mistral" else heads  # transformers' defaults when the key is absent
    head_dim = config.get("head_dim") or (128 if mt == "qwen3" else config["hidden_size"] // heads)
    block = int(config.get("max_position_embeddings", 2048))
    window = config.get("sliding_window")
    windowed = mt == "mistral" or config.get("use_sliding_window", False)
    if windowed and isinstance(window, int) and window > 0:  # exact while no sequence outgrows the window
        block = min(block, window)
    theta, scaling = _rope(config)
    try:
        return _llama_config(config, block, heads, kv_default, int(head_dim), theta, scaling)
    except (TypeError, ValueError) as exc:
        raise UnsupportedModel(f"unsupported model: {exc}") from None


def _llama_config(
    config: dict[str, Any],
    block: int,
    heads: int,
    kv_default: int,
    head_dim: int,
    theta: float,
    scaling: dict[str, Any] | None,
) -> LlamaConfig:
    mt = config["model_type"]
    return LlamaConfig(
        vocab_size=config["vocab_size"],
        block_size=min(block, MAX_BLOCK),
        n_layer=config["num_hidden_layers"],
        n_head=heads,
        n_kv_head=int(config.get("num_key_value_heads") or kv_default),
        n_embd=config["hidden_size"],
        head_dim=head_dim,
        intermediate_size=config["intermediate_size"],
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        attention_bias=mt == "qwen2",  # Qwen2: q/k/v always biased, o_proj never
        qk_norm=mt == "qwen3",
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        dropout=float(config.get("attention_dropout", 0.0) or 0.0),
    )


def from_hf_state(
    config: dict[str, Any], tensors: dict[str, torch.Tensor], vocab_size: int | None = None
) -> tuple[Llama, LlamaConfig]:
    """Our Llama from a Hugging Face config dict and HF-named tensors (any float dtype).

    `vocab_size` larger than the checkpoint's adds embedding (and head) rows, the mean of
    the existing ones, for tokens added to the tokenizer. A tied checkpoint may carry
    `lm_head.weight` (equal to the embedding); it is dropped. Weights become fp32.
    """
    cfg = config_from_hf(config)
    state = {k: v.float() for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    emb = state.get("model.embed_tokens.weight")
    _need(emb is not None, "no model.embed_tokens.weight among the tensors")
    assert emb is not None
    rows = max(cfg.vocab_size, emb.size(0), vocab_size or 0)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        w = state.get(name)
        if w is not None and w.size(0) < rows:
            state[name] = torch.cat([w, w.mean(0, keepdim=True).expand(rows - w.size(0), -1)])
    cfg = replace(cfg, vocab_size=rows)
    model = Llama(cfg)
    expected = set(model.state_dict())
    if set(state) != expected:
        wrong = sorted(set(state) ^ expected)[:6]
        raise UnsupportedModel(f"unsupported model: tensors do not match a {config['model_type']} layout ({wrong} ...)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UnsupportedModel(f"unsupported model: {exc}") from None
    return model, cfg


def export_type(config: LlamaConfig) -> str:
    """The Hugging Face model_type that represents `config` exactly: qwen3 for QK-norm,
    qwen2 for q/k/v biases, else llama (which a Mistral without sliding window also is)."""
    if config.qk_norm and config.attention_bias:
        raise UnsupportedModel("no Hugging Face model_type has QK-norm and q/k/v-only biases")
    return "qwen3" if config.qk_norm else "qwen2" if config.attention_bias else "llama"


def hf_config(config: LlamaConfig, model_type: str, ids: dict[str, Any]) -> dict[str, Any]:
    """config.json for `model_type`, in the older rope form (rope_theta, rope_scaling) that
    every transformers version reads; `ids`: bos/eos/pad token ids."""
    out: dict[str, Any] = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": config.tie_embeddings,
        "attention_dropout": config.dropout,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
        **ids,
    }
    if config.rope_scaling is not None:
        s = dict(config.rope_scaling)
        out["rope_scaling"] = {"rope_type": s.pop("type"), **s}
    if model_type == "llama":
        out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    elif model_type == "mistral":
        out["sliding_window"] = None
    else:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.n_layer)
        if model_type == "qwen3":
            out["attention_bias"] = False
    return out


def hf_tensors(state: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face checkpoint: ours, contiguous fp32 (a tied head is left
    out, as save_pretrained leaves it out)."""
    return {
        k: v.detach().float().contiguous()
        for k, v in state.items()
        if k != "lm_head.weight" or not config.tie_embeddings
    }
