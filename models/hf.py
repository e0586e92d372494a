"""The Hugging Face GPT-2 layout, both ways: `to_hf` exports a model directory that
`transformers.AutoModelForCausalLM` / `AutoTokenizer` load with no custom code, and
`from_hf` reads a GPT-2-family directory (ours or one made elsewhere) as (GPT, Tokenizer).

Our GPT is GPT-2 with `nn.Linear` where GPT-2 has `Conv1D`: the same weights, transposed.
Pure torch + safetensors + JSON; transformers itself is never imported.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from models.checkpoint import CONFIG_FILE, MODEL_FILE, load_tensors, read_json, write_atomic, write_json
from models.errors import UnsupportedModel
from models.gpt import GPT, GPTConfig
from models.tokenizer import EOS, PAD, SEP, SPECIAL_TOKENS, Tokenizer

TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older GPT-2 checkpoints
LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which our GPT uses


def is_hf_dir(directory: Path) -> bool:
    path = directory / CONFIG_FILE
    if not path.is_file():
        return False
    config = read_json(path)
    return isinstance(config, dict) and config.get("format") != "stagecraft-gpt" and "model_type" in config


# --- export ---------------------------------------------------------------------------------


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


def to_hf(model_dir: Path, out_dir: Path) -> None:
    """Write config.json, model.safetensors, tokenizer files and generation_config.json."""
    info = read_json(model_dir / CONFIG_FILE)
    config, tok = GPTConfig(**info["gpt"]), Tokenizer.load(model_dir)
    weights = load_tensors(model_dir / MODEL_FILE)
    out_dir.mkdir(parents=True, exist_ok=True)
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
    write_json(out_dir / "stagecraft.json", {k: v for k, v in info.items() if k not in ("gpt", "format")})


# --- import ---------------------------------------------------------------------------------


def _check(config: dict[str, Any]) -> GPTConfig:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UnsupportedModel(f"unsupported model: {what} (only GPT-2-family models can be imported)")

    archs = config.get("architectures") or ["GPT2LMHeadModel"]
    need(config.get("model_type") == "gpt2", f"model_type '{config.get('model_type')}' is not 'gpt2'")
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
    path = directory / MODEL_FILE
    if not path.is_file():
        found = sorted(p.name for p in directory.iterdir())
        raise UnsupportedModel(f"{directory}: no {MODEL_FILE} (pickled .bin weights are not read); found {found}")
    out: dict[str, torch.Tensor] = {}
    for key, value in st_load(path.read_bytes()).items():
        name = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        if not name.endswith(IGNORED):
            out[name] = value.float()
    return out


def from_hf(directory: Path, dropout: float | None = None) -> tuple[GPT, Tokenizer]:
    """A GPT-2-family model directory as our GPT and Tokenizer. Special tokens this service
    needs (<|completion|>, <|pad|>) are added when missing, with new embedding rows."""
    raw = json.loads((directory / CONFIG_FILE).read_text())
    config = _check(raw)
    weights = _weights(directory)
    head = weights.pop("lm_head.weight", None)
    wte = weights["transformer.wte.weight"]
    if head is not None and not torch.equal(head, wte):
        raise UnsupportedModel("unsupported model: lm_head.weight differs from the token embeddings (untied)")
    hf = _tokenizer(directory)
    missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
    if missing:
        hf.add_special_tokens(missing)
    vocab = max(config.vocab_size, hf.get_vocab_size(with_added_tokens=True))
    if vocab > wte.size(0):  # new rows: the mean embedding, so new tokens start out neutral
        extra = wte.mean(0, keepdim=True).expand(vocab - wte.size(0), -1)
        weights["transformer.wte.weight"] = torch.cat([wte, extra])
    model = GPT(replace(config, vocab_size=vocab, dropout=config.dropout if dropout is None else dropout))
    state = {k: (v.t() if k.endswith(TRANSPOSED) else v) for k, v in weights.items()}
    expected = set(model.state_dict())
    if set(state) != expected:
        wrong = sorted(set(state) ^ expected)[:6]
        raise UnsupportedModel(f"unsupported model: tensors do not match a GPT-2 layout ({wrong} ...)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UnsupportedModel(f"unsupported model: {exc}") from None
    return model, Tokenizer(hf)
