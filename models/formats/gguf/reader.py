"""GGUF files (llama.cpp's format) as a Hugging Face-style checkpoint.

`read_gguf(path)` reads a `llama`, `qwen2`, `qwen3` or `gpt2` GGUF (gpt2's names and config:
models/formats/gguf/gpt2.py) with the `gguf` package and returns what a Hugging Face model
directory would hold: the `config.json` dict, HF-named tensors (quantized
types dequantized to fp32, F16/BF16 kept), a `tokenizers.Tokenizer` rebuilt from the metadata,
the chat template and the generation ids. The HF import builds our model from it.

llama.cpp's converter permutes the rows of llama `attn_q`/`attn_k` (it interleaves the two
rotary halves of each head for its own rope kernel); we undo that. It leaves qwen2/qwen3 alone.
Shapes are checked against the metadata before any tensor is dequantized.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from tokenizers import Tokenizer

from models.errors import GGUFError
from models.families.llama.config import GGUF_GLOBAL_TENSORS, GGUF_LAYER_TENSORS
from models.formats.gguf import gpt2
from models.formats.gguf.header import check_header
from models.formats.gguf.tokenizer import build_tokenizer
from models.formats.gguf.tokenizer import metadata_value as _value

__all__ = ["GGUFCheckpoint", "GGUFError", "hf_name", "read_gguf", "unpermute"]

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "gpt2": "GPT2LMHeadModel"}  # fmt: skip


def _decimal(value: Any) -> float:
    """A float32 metadata value as the decimal its config.json wrote (1e-05, not 9.9999997e-06)."""
    return float(str(np.float32(value)))


KEPT = {GGMLQuantizationType.F32: torch.float32, GGMLQuantizationType.F16: torch.float16}


@dataclass
class GGUFCheckpoint:
    config: dict[str, Any]  # as a Hugging Face config.json says it
    tensors: dict[str, torch.Tensor]  # Hugging Face names
    tokenizer: Tokenizer
    chat_template: str | None
    generation: dict[str, Any]  # as generation_config.json says it (eos_token_id may be a list)
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, pad_token, unk_token


def open_gguf(path: Path) -> GGUFReader:
    """The file's reader, once its metadata is sized (models.formats.gguf.header: GGUFError past
    the limits, before the reader builds anything)."""
    check_header(path)
    try:
        return GGUFReader(str(path))
    except MemoryError:
        raise  # the import's memory limit (app.serving.sandbox), not a damaged file
    except Exception as exc:  # the reader raises many kinds on a damaged file; none is ours to show raw
        raise GGUFError(f"{path.name}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None


def _rope_scaling(reader: GGUFReader, arch: str, head_dim: int, theta: float) -> dict[str, Any] | None:
    kind = _value(reader, f"{arch}.rope.scaling.type")
    factor = _value(reader, f"{arch}.rope.scaling.factor")
    if kind in (None, "none") or factor in (None, 0.0, 1.0):
        scaling = None
    else:
        scaling = {"rope_type": kind, "factor": _decimal(factor)}
        original = _value(reader, f"{arch}.rope.scaling.original_context_length")
        if original:
            scaling["original_max_position_embeddings"] = int(original)
    freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if freqs is not None:
        scaling = _llama3_scaling(np.asarray(freqs.data, dtype=np.float64).reshape(-1), head_dim, theta)
    return scaling


def _llama3_scaling(factors: np.ndarray, head_dim: int, theta: float) -> dict[str, Any]:
    """llama.cpp stores llama3 rope scaling as per-frequency divisors (`rope_freqs`), not its
    parameters. Recover them: the published Llama 3.x values must reproduce the divisors."""
    factor = _decimal(factors.max())
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv
    for original in (8192, 4096, 16384, 32768, 131072):
        low, high = 1.0, 4.0
        smooth = (original / wavelen - low) / (high - low)
        expect = np.where(
            wavelen < original / high,
            1.0,
            np.where(wavelen > original / low, factor, 1 / ((1 - smooth) / factor + smooth)),
        )
        if expect.shape == factors.shape and np.allclose(expect, factors, rtol=1e-4):
            return {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": original,
            }
    raise GGUFError("rope_freqs.weight: llama3 rope scaling whose parameters cannot be recovered from the divisors")


def _need(reader: GGUFReader, arch: str) -> Callable[[str], int]:
    def need(key: str) -> int:
        v = _value(reader, f"{arch}.{key}")
        if not isinstance(v, int) or v <= 0:
            raise GGUFError(f"metadata {arch}.{key}: missing or not a positive integer ({v!r})")
        return v

    return need


def _config(reader: GGUFReader, arch: str, vocab: int) -> dict[str, Any]:
    need = _need(reader, arch)
    width, heads = need("embedding_length"), need("attention.head_count")
    kv_heads = _value(reader, f"{arch}.attention.head_count_kv", heads)
    head_dim = _value(reader, f"{arch}.attention.key_length") or width // heads
    if not isinstance(kv_heads, int) or kv_heads <= 0 or heads % kv_heads:
        raise GGUFError(f"metadata {arch}.attention.head_count_kv: {kv_heads!r} does not divide {heads} heads")
    rotary = _value(reader, f"{arch}.rope.dimension_count", head_dim)
    if rotary != head_dim:
        raise GGUFError(
            f"metadata {arch}.rope.dimension_count: partial rotary ({rotary} of {head_dim}) is not supported"
        )
    theta = _decimal(_value(reader, f"{arch}.rope.freq_base", 10000.0))
    names = {t.name for t in reader.tensors}
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": int(_value(reader, f"{arch}.vocab_size", vocab)),
        "hidden_size": width,
        "intermediate_size": need("feed_forward_length"),
        "num_hidden_layers": need("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": int(_value(reader, f"{arch}.context_length", 2048)),
        "rms_norm_eps": _decimal(_value(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": theta,
        "rope_scaling": _rope_scaling(reader, arch, head_dim, theta),
        "attention_bias": "blk.0.attn_q.bias" in names,
        "tie_word_embeddings": "output.weight" not in names,
        "torch_dtype": "float32",
    }
    if _value(reader, f"{arch}.attention.key_length") is not None or arch == "qwen3":
        config["head_dim"] = head_dim
    if arch == "llama":
        config["mlp_bias"] = False
    for key in ("bos", "eos", "padding"):
        token_id = _value(reader, f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            config["pad_token_id" if key == "padding" else f"{key}_token_id"] = int(token_id)
    return config


def _expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    width, vocab, ffn = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    head_dim = config.get("head_dim", width // config["num_attention_heads"])
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, width),
        "model.norm.weight": (width,),
        "lm_head.weight": (vocab, width),
    }
    per_layer = {
        "input_layernorm.weight": (width,),
        "post_attention_layernorm.weight": (width,),
        "self_attn.q_proj.weight": (q, width),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.weight": (kv, width),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.weight": (kv, width),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (width, q),
        "mlp.gate_proj.weight": (ffn, width),
        "mlp.up_proj.weight": (ffn, width),
        "mlp.down_proj.weight": (width, ffn),
    }
    if config["model_type"] == "qwen3":
        per_layer.update({"self_attn.q_norm.weight": (head_dim,), "self_attn.k_norm.weight": (head_dim,)})
    for i in range(config["num_hidden_layers"]):
        shapes.update({f"model.layers.{i}.{k}": v for k, v in per_layer.items()})
    return shapes


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None when it has none."""
    if gguf_name in GGUF_GLOBAL_TENSORS:
        return GGUF_GLOBAL_TENSORS[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in GGUF_LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{GGUF_LAYER_TENSORS[parts[2]]}"
    return None


def unpermute(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's per-head row interleave: within each head, GGUF holds the rows in the
    order (r0, r_half, r1, r_half+1, ...); Hugging Face holds both halves in sequence."""
    shape = rows.shape
    return rows.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).transpose(1, 2).reshape(shape)


def _tensor(t: Any) -> torch.Tensor:
    qtype = GGMLQuantizationType(t.tensor_type)
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    if qtype in KEPT:
        data = np.ascontiguousarray(t.data).reshape(shape)
        return torch.from_numpy(data.copy()).to(KEPT[qtype])
    if qtype == GGMLQuantizationType.BF16:
        raw = np.ascontiguousarray(t.data).view(np.int16).reshape(shape)
        return torch.from_numpy(raw.copy()).view(torch.bfloat16)
    try:
        values = dequantize(t.data, qtype)
    except NotImplementedError:
        raise GGUFError(f"tensor {t.name}: quantization type {qtype.name} cannot be read") from None
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(shape))


def read_gguf(path: Path) -> GGUFCheckpoint:
    reader = open_gguf(path)
    arch = _value(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"unsupported model: GGUF architecture '{arch}' (supported: {', '.join(ARCHITECTURES)})")
    tok = build_tokenizer(reader)
    if arch == "gpt2":  # models.formats.gguf.gpt2: GPT-2's config and names
        vocab = int(_value(reader, "gpt2.vocab_size", tok.tokenizer.get_vocab_size()))
        config = gpt2.hf_config(reader, _need(reader, arch), vocab)
        expected, name_of = gpt2.expected_shapes(config), gpt2.hf_name
    else:
        config = _config(reader, arch, tok.tokenizer.get_vocab_size())
        expected, name_of = _expected_shapes(config), hf_name
    chosen = []
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            continue  # read into config["rope_scaling"]
        name = name_of(t.name)
        if name is None or name not in expected:
            raise GGUFError(f"tensor {t.name}: not part of a {arch} model this importer knows")
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if shape != expected[name]:
            raise GGUFError(
                f"tensor {t.name}: shape {list(shape)} does not match the metadata ({list(expected[name])})"
            )
        try:
            GGMLQuantizationType(t.tensor_type)
        except ValueError:
            raise GGUFError(f"tensor {t.name}: unknown quantization type {int(t.tensor_type)}") from None
        chosen.append((name, t))
    missing = [n for n in expected if not n.endswith(".bias") and n != "lm_head.weight" and n not in dict(chosen)]
    if missing:
        raise GGUFError(f"missing tensors: {', '.join(missing[:5])}")
    tensors: dict[str, torch.Tensor] = {}
    for name, t in chosen:
        value = _tensor(t)
        if arch == "llama" and ".self_attn.q_proj." in name:
            value = unpermute(value, config["num_attention_heads"])
        elif arch == "llama" and ".self_attn.k_proj." in name:
            value = unpermute(value, config["num_key_value_heads"])
        tensors[name] = gpt2.to_hf(t.name, value) if arch == "gpt2" else value
    generation = {k: v for k, v in tok.generation.items() if v is not None}
    return GGUFCheckpoint(config, tensors, tok.tokenizer, tok.chat_template, generation, tok.special_tokens)
