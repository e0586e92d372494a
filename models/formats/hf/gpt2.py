"""The GPT-2 layout of a Hugging Face directory, both ways (models/formats/hf/directory.py
dispatches here for `arch: gpt` and `model_type: gpt2`).

Our GPT is GPT-2 with `nn.Linear` where GPT-2 has `Conv1D`: the same weights, transposed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from models.data.tokenizer import EOS, PAD, SEP, Tokenizer
from models.errors import UnsupportedModel
from models.families import FAMILIES
from models.families.gpt.config import GPTConfig
from models.families.gpt.model import GPT
from models.files import write_atomic, write_json
from models.formats.hf.files import directory_tokenizer, read_weights
from models.formats.layout import CONFIG_FILE, MODEL_FILE

TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older GPT-2 checkpoints
LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which our GPT uses


def hf_config(config: GPTConfig, tok: Tokenizer) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LN_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "tie_word_embeddings": True,
        "bos_token_id": tok.eos_id,
        "eos_token_id": tok.eos_id,
        "pad_token_id": tok.pad_id,
        "torch_dtype": "float32",
    }


def export(config: GPTConfig, tok: Tokenizer, weights: dict[str, torch.Tensor], out_dir: Path) -> None:
    """config.json, model.safetensors, the tokenizer files and generation_config.json."""
    tensors = {k: (v.t() if k.endswith(TRANSPOSED) else v).contiguous().float() for k, v in weights.items()}
    write_atomic(out_dir / MODEL_FILE, st_save(tensors, metadata={"format": "pt"}))
    write_json(out_dir / CONFIG_FILE, hf_config(config, tok))
    tok.save(out_dir)
    special: dict[str, Any] = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": PAD}
    special["additional_special_tokens"] = [SEP]
    write_json(out_dir / "special_tokens_map.json", special)
    write_json(
        out_dir / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": config.block_size,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            **special,
        },
    )
    write_json(
        out_dir / "generation_config.json",
        {"bos_token_id": tok.eos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id, "do_sample": False},
    )


def _check(config: dict[str, Any]) -> GPTConfig:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UnsupportedModel(f"unsupported model: {what}")

    archs = config.get("architectures") or ["GPT2LMHeadModel"]
    supported = ", ".join(t for f in FAMILIES.values() for t in f.hf_model_types)
    need(config.get("model_type") == "gpt2", f"model_type '{config.get('model_type')}' (supported: {supported})")
    need(set(archs) <= {"GPT2LMHeadModel", "GPT2Model"}, f"architectures {archs}")
    act = config.get("activation_function", "gelu_new")
    need(act in ("gelu_new", "gelu_pytorch_tanh"), f"activation_function '{act}' (needs gelu_new)")
    n_embd = int(config.get("n_embd", 768))
    need(config.get("n_inner") in (None, 4 * n_embd), "n_inner other than 4 * n_embd")
    need(abs(float(config.get("layer_norm_epsilon", LN_EPS)) - LN_EPS) < 1e-12, "layer_norm_epsilon other than 1e-5")
    need(not config.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx")
    need(config.get("scale_attn_weights", True), "unscaled attention")
    need(config.get("tie_word_embeddings", True), "untied output embeddings")
    n_head = int(config.get("n_head", 12))
    need(n_embd % n_head == 0, "n_embd not divisible by n_head")
    return GPTConfig(
        vocab_size=int(config.get("vocab_size", 50257)),
        block_size=int(config.get("n_positions", config.get("n_ctx", 1024))),
        n_layer=int(config.get("n_layer", 12)),
        n_head=n_head,
        n_embd=n_embd,
        dropout=float(config.get("resid_pdrop", 0.0)),
    )


def _tokenizer(directory: Path) -> HFTokenizer:
    if (directory / "tokenizer.json").is_file():
        return HFTokenizer.from_file(str(directory / "tokenizer.json"))
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        raise UnsupportedModel(f"{directory}: no tokenizer.json (or vocab.json + merges.txt)")
    hf = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in read_weights(directory).items():
        name = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        if not name.endswith(IGNORED):
            out[name] = value.float()
    return out


def load(directory: Path, raw: dict[str, Any], dropout: float | None = None) -> tuple[GPT, Tokenizer]:
    """A GPT-2 directory as our GPT; new embedding rows for the tokens we add."""
    _check(raw)
    weights = _weights(directory)
    tok = directory_tokenizer(directory, raw, _tokenizer(directory))
    return from_hf_parts(raw, weights, tok, dropout), tok


def from_hf_parts(
    raw: dict[str, Any], weights: dict[str, torch.Tensor], tok: Tokenizer, dropout: float | None = None
) -> GPT:
    """Our GPT from the parts of a GPT-2 checkpoint, wherever they were read (a Hugging Face
    directory, a GGUF file): its config dict, its tensors under the Hugging Face names and layout
    (`transformer.` prefixed), and its tokenizer made by `service_tokenizer`."""
    config = _check(raw)
    weights = dict(weights)
    head = weights.pop("lm_head.weight", None)
    wte = weights["transformer.wte.weight"].float()
    if head is not None and not torch.equal(head.float(), wte):
        raise UnsupportedModel("unsupported model: lm_head.weight differs from the token embeddings (untied)")
    vocab = max(config.vocab_size, tok.vocab_size)
    if vocab > wte.size(0):  # new rows: the mean embedding, so new tokens start out neutral
        extra = wte.mean(0, keepdim=True).expand(vocab - wte.size(0), -1)
        weights["transformer.wte.weight"] = torch.cat([wte, extra])
    gpt = GPT(replace(config, vocab_size=vocab, dropout=config.dropout if dropout is None else dropout))
    state = {k: (v.t() if k.endswith(TRANSPOSED) else v) for k, v in weights.items()}
    expected = set(gpt.state_dict())
    if set(state) != expected:
        wrong = sorted(set(state) ^ expected)[:6]
        raise UnsupportedModel(f"unsupported model: tensors do not match a GPT-2 layout ({wrong} ...)")
    try:
        gpt.load_state_dict(state)
    except RuntimeError as exc:
        raise UnsupportedModel(f"unsupported model: {exc}") from None
    return gpt
