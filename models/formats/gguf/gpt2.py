"""The `gpt2` architecture of a GGUF file (llama.cpp's), both ways, for our GPT family.

llama.cpp's converter writes GPT-2 with its Conv1D weights transposed to (out, in): the layout
of our nn.Linear weights, so ours go in as they are. Tied (llama.cpp reads `token_embd` as the
output when there is no `output`), LayerNorm with biases, learned positions (`position_embd`,
kept F32 as llama.cpp keeps it), GELU (tanh) MLP of 4 x n_embd.

Reading: the file's tensors under the Hugging Face GPT-2 names and layout (Conv1D: (in, out))
and a GPT-2 config.json, which the Hugging Face layout builds our GPT from
(models.formats.hf.gpt2.from_hf_parts).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gguf import GGUFReader, GGUFWriter

from models.families.gpt.config import GPTConfig
from models.formats.gguf.tokenizer import metadata_value as _value

ARCH = "gpt2"
LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which our GPT uses
LAYER = {  # GGUF name in a block -> our name (and the Hugging Face one) in a block
    "attn_norm.weight": "ln_1.weight",
    "attn_norm.bias": "ln_1.bias",
    "attn_qkv.weight": "attn.c_attn.weight",
    "attn_qkv.bias": "attn.c_attn.bias",
    "attn_output.weight": "attn.c_proj.weight",
    "attn_output.bias": "attn.c_proj.bias",
    "ffn_norm.weight": "ln_2.weight",
    "ffn_norm.bias": "ln_2.bias",
    "ffn_up.weight": "mlp.c_fc.weight",
    "ffn_up.bias": "mlp.c_fc.bias",
    "ffn_down.weight": "mlp.c_proj.weight",
    "ffn_down.bias": "mlp.c_proj.bias",
}
GLOBAL = {
    "token_embd.weight": "transformer.wte.weight",
    "position_embd.weight": "transformer.wpe.weight",
    "output_norm.weight": "transformer.ln_f.weight",
    "output_norm.bias": "transformer.ln_f.bias",
    "output.weight": "lm_head.weight",
}
CONV1D = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")
_OURS = {v: k for k, v in GLOBAL.items()}


def gguf_name(name: str) -> str:
    """The GGUF name of one of our GPT's parameters."""
    if name in _OURS:
        return _OURS[name]
    _, _, block, rest = name.split(".", 3)  # transformer.h.<i>.<rest>
    return f"blk.{block}.{next(k for k, v in LAYER.items() if v == rest)}"


def add_hparams(w: GGUFWriter, c: GPTConfig) -> None:
    """What llama.cpp's converter writes for GPT2LMHeadModel."""
    w.add_block_count(c.n_layer)
    w.add_context_length(c.block_size)
    w.add_embedding_length(c.n_embd)
    w.add_feed_forward_length(4 * c.n_embd)
    w.add_head_count(c.n_head)
    w.add_layer_norm_eps(LN_EPS)


def tensors(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) for each of our GPT's parameters, in llama.cpp's order."""
    return [(gguf_name(k), v) for k, v in state.items()]


# Reading ----------------------------------------------------------------------------------


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face GPT-2 name of a GGUF tensor, or None when it has none."""
    if gguf_name in GLOBAL:
        return GLOBAL[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER:
        return f"transformer.h.{parts[1]}.{LAYER[parts[2]]}"
    return None


def to_hf(gguf: str, value: torch.Tensor) -> torch.Tensor:
    """A GGUF tensor in the Hugging Face layout: Conv1D weights back to (in, out)."""
    return value.t().contiguous() if gguf.endswith(CONV1D) else value


def hf_config(reader: GGUFReader, need: Any, vocab: int) -> dict[str, Any]:
    """config.json of a Hugging Face GPT-2 for the file's metadata (`need(key)`: a positive integer)."""
    width = need("embedding_length")
    eps = float(str(np.float32(_value(reader, f"{ARCH}.attention.layer_norm_epsilon", LN_EPS))))
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab,
        "n_positions": need("context_length"),
        "n_embd": width,
        "n_layer": need("block_count"),
        "n_head": need("attention.head_count"),
        "n_inner": _value(reader, f"{ARCH}.feed_forward_length", 4 * width),
        "activation_function": "gelu_new",
        "layer_norm_epsilon": eps,  # as config.json wrote it (float32's 9.99e-06 is 1e-05)
        "tie_word_embeddings": True,
    }


def expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape as the file holds it (Conv1D weights as (out, in), before `to_hf`)."""
    c, ffn = config["n_embd"], config["n_inner"]
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.wte.weight": (config["vocab_size"], c),
        "transformer.wpe.weight": (config["n_positions"], c),
        "transformer.ln_f.weight": (c,),
        "transformer.ln_f.bias": (c,),
        "lm_head.weight": (config["vocab_size"], c),
    }
    per_layer = {
        "ln_1.weight": (c,), "ln_1.bias": (c,), "ln_2.weight": (c,), "ln_2.bias": (c,),
        "attn.c_attn.weight": (3 * c, c), "attn.c_attn.bias": (3 * c,),
        "attn.c_proj.weight": (c, c), "attn.c_proj.bias": (c,),
        "mlp.c_fc.weight": (ffn, c), "mlp.c_fc.bias": (ffn,),
        "mlp.c_proj.weight": (c, ffn), "mlp.c_proj.bias": (c,),
    }  # fmt: skip
    for i in range(config["n_layer"]):
        shapes.update({f"transformer.h.{i}.{k}": v for k, v in per_layer.items()})
    return shapes
