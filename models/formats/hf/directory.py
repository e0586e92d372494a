"""Hugging Face model directories, both ways: `to_hf` exports a model directory that
`transformers.AutoModelForCausalLM` / `AutoTokenizer` load with no custom code, and
`from_hf` reads one (ours or one made elsewhere) as (model, Tokenizer).

This file holds the GPT-2 layout and the dispatch by family; the Llama family's layouts
are in models/families/llama/hf.py, the files beside the weights in models/formats/hf/files.py. Our GPT is
GPT-2 with `nn.Linear` where GPT-2 has `Conv1D`: the same weights, transposed. Pure
torch + safetensors + JSON; transformers itself is never imported.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from models.data.tokenizer import EOS, PAD, SEP, Tokenizer
from models.errors import UnsupportedModel
from models.families.gpt.config import GPTConfig
from models.families.gpt.model import GPT
from models.families.llama import hf as hf_llama
from models.families.llama.config import LlamaConfig
from models.families.llama.model import Llama
from models.files import read_json, write_atomic, write_json
from models.formats.hf import files as hf_files
from models.formats.layout import CONFIG_FILE, MODEL_FILE
from models.formats.native import load_tensors, model_config, tokenizer_of

TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older GPT-2 checkpoints
LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which our GPT uses


__all__ = ["UnsupportedModel", "from_hf", "from_hf_parts", "is_hf_dir", "service_tokenizer", "to_hf"]


def is_hf_dir(directory: Path) -> bool:
    path = directory / CONFIG_FILE
    if not path.is_file():
        return False
    config = read_json(path)
    ours = str(config.get("format", "")).startswith("stagecraft") if isinstance(config, dict) else False
    return isinstance(config, dict) and not ours and "model_type" in config


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
    config, tok = model_config(info), tokenizer_of(model_dir, info)
    weights = load_tensors(model_dir / MODEL_FILE)
    out_dir.mkdir(parents=True, exist_ok=True)
    provenance = {k: v for k, v in info.items() if k not in ("gpt", "llama", "format", "arch")}
    if isinstance(config, LlamaConfig):
        _llama_to_hf(config, tok, weights, out_dir)
        write_json(out_dir / "stagecraft.json", provenance)
        return
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
    write_json(out_dir / "stagecraft.json", provenance)


def _llama_to_hf(config: LlamaConfig, tok: Tokenizer, weights: dict[str, torch.Tensor], out: Path) -> None:
    model_type = hf_llama.export_type(config)
    eos = [i for i in tok.end_ids if i != tok.eos_id] + [tok.eos_id]  # the model's own first
    ids = {"bos_token_id": None, "eos_token_id": eos if len(eos) > 1 else eos[0], "pad_token_id": tok.pad_id}
    write_atomic(out / MODEL_FILE, st_save(hf_llama.hf_tensors(weights, config), metadata={"format": "pt"}))
    write_json(out / CONFIG_FILE, hf_llama.hf_config(config, model_type, ids))
    hf_files.write_tokenizer_files(out, tok, config.block_size, str(tok.hf.id_to_token(eos[0])))
    generation = {**tok.generation, "eos_token_id": ids["eos_token_id"], "pad_token_id": tok.pad_id}
    generation.setdefault("do_sample", False)
    write_json(out / "generation_config.json", generation)


# --- import ---------------------------------------------------------------------------------


def _check(config: dict[str, Any]) -> GPTConfig:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UnsupportedModel(f"unsupported model: {what}")

    archs = config.get("architectures") or ["GPT2LMHeadModel"]
    supported = ", ".join(("gpt2", *hf_llama.MODEL_TYPES))
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
    for key, value in hf_files.read_weights(directory).items():
        name = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        if not name.endswith(IGNORED):
            out[name] = value.float()
    return out


def service_tokenizer(
    hf: HFTokenizer,
    eos_ids: list[int] | tuple[int, ...] = (),
    chat_template: str | None = None,
    generation: dict[str, Any] | None = None,
) -> Tokenizer:
    """A checkpoint's tokenizer as ours: our special tokens added where missing, its end
    ids (and ours), chat template and generation defaults attached."""
    hf_files.add_service_tokens(hf)
    tok = Tokenizer(hf)
    tok.end_ids = list(dict.fromkeys([*eos_ids, tok.eos_id]))
    tok.chat_template = chat_template
    tok.generation = dict(generation or {})
    return tok


def from_hf_parts(
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    tok: Tokenizer,
    dropout: float | None = None,
) -> Llama:
    """Our Llama from the parts of a Llama-family checkpoint, wherever they were read
    (a Hugging Face directory, a GGUF file): its HF config dict, its HF-named tensors, and
    its tokenizer made by `service_tokenizer` (whose added tokens get embedding rows)."""
    model, cfg = hf_llama.from_hf_state(config, tensors, tok.vocab_size)
    return model if dropout is None else _with_dropout(model, replace(cfg, dropout=dropout))


def _directory_tokenizer(directory: Path, raw: dict[str, Any], hf: HFTokenizer) -> Tokenizer:
    eos, generation = hf_files.read_generation(directory, raw, hf)
    return service_tokenizer(hf, eos, hf_files.read_chat_template(directory), generation)


def from_hf(directory: Path, dropout: float | None = None) -> tuple[GPT | Llama, Tokenizer]:
    """A Hugging Face model directory (GPT-2 or Llama family) as our model and Tokenizer.
    Special tokens this service needs (<|endoftext|>, <|completion|>, <|pad|>) are added
    when missing, with new embedding rows."""
    try:
        raw = json.loads((directory / CONFIG_FILE).read_text())
    except ValueError as exc:
        raise UnsupportedModel(f"config.json is not valid JSON ({exc})") from None
    if raw.get("model_type") in hf_llama.MODEL_TYPES:
        hf_llama.config_from_hf(raw)  # refuse an unsupported config before reading any weights
        tok = _directory_tokenizer(directory, raw, hf_files.read_tokenizer(directory))
        return from_hf_parts(raw, hf_files.read_weights(directory), tok, dropout), tok
    config = _check(raw)
    weights = _weights(directory)
    head = weights.pop("lm_head.weight", None)
    wte = weights["transformer.wte.weight"]
    if head is not None and not torch.equal(head, wte):
        raise UnsupportedModel("unsupported model: lm_head.weight differs from the token embeddings (untied)")
    tok = _directory_tokenizer(directory, raw, _tokenizer(directory))
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
    return gpt, tok


def _with_dropout(model: Llama, config: LlamaConfig) -> Llama:
    out = Llama(config)
    out.load_state_dict(model.state_dict())
    return out
