"""A finished model on disk: model.safetensors + config.json + tokenizer.json.

config.json records the architecture (`arch`, and the config under that name, e.g.
`"llama": {...}`; `"gpt": {...}` alone for older GPT directories), and for models with a
conversation format the `chat_template`, the `eos_token_ids` that end a generation and
the `generation` defaults. `load_model` also reads a Hugging Face directory (models.hf),
an archive (.tar.gz / .zip) of either kind, a GGUF file (models.gguf), and a PEFT adapter directory whose
`stagecraft.json` names its base by `base_path` (merged into the base: models.peft).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from models.arch import Model, ModelConfig, build_model, config_from_dict
from models.archive import is_archive, unpack
from models.chat import ChatFormat
from models.chat_records import CHAT_FILE, load_chat_format, make_chat_format
from models.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    load_checkpoint,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from models.hf import from_hf, from_hf_parts, is_hf_dir, service_tokenizer
from models.tokenizer import Tokenizer

FORMATS = {"gpt": "stagecraft-gpt", "llama": "stagecraft-llama"}


def save_model(
    directory: Path, state: dict[str, torch.Tensor], config: ModelConfig, tok: Tokenizer, info: dict[str, Any]
) -> None:
    """Weights (fp32 as trained), architecture and tokenizer; `info` adds provenance to config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / MODEL_FILE, {k: v.float() for k, v in state.items()})
    tok.save(directory)
    write_json(directory / CONFIG_FILE, {**info, **describe(config, tok)})


def describe(config: ModelConfig, tok: Tokenizer) -> dict[str, Any]:
    """What config.json records of the model: architecture and conversation format."""
    record: dict[str, Any] = {"format": FORMATS[config.arch], "arch": config.arch, config.arch: config.to_dict()}
    if tok.chat_template is not None:
        record["chat_template"] = tok.chat_template
    record["eos_token_ids"] = tok.end_ids
    if tok.generation:
        record["generation"] = tok.generation
    return record


def save_checkpoint_model(ckpt_dir: Path, tokenizer_dir: Path, out: Path, info: dict[str, Any]) -> None:
    """A training checkpoint (models.pipeline) as a model directory: its weights, the model
    it records in state.json, the run's tokenizer in `tokenizer_dir`."""
    tensors, state = load_checkpoint(ckpt_dir)
    weights = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    record = state["model"]
    info = {"steps": state["global_step"], "parameters": sum(v.numel() for v in weights.values()), **info}
    save_model(out, weights, model_config(record), tokenizer_of(tokenizer_dir, record), info)
    if (tokenizer_dir / CHAT_FILE).is_file():  # the run's chat format (models.pipeline keeps it there)
        (out / CHAT_FILE).write_bytes((tokenizer_dir / CHAT_FILE).read_bytes())


def load_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a model directory (no {CONFIG_FILE})")
    config: dict[str, Any] = read_json(path)
    return config


def model_config(record: dict[str, Any]) -> ModelConfig:
    """The architecture a Stagecraft config.json records."""
    arch = str(record.get("arch", "gpt"))
    return config_from_dict(arch, dict(record[arch]))


def tokenizer_of(directory: Path, record: dict[str, Any]) -> Tokenizer:
    tok = Tokenizer.load(directory)
    tok.chat_template = record.get("chat_template")
    tok.end_ids = list(record.get("eos_token_ids") or [tok.eos_id])
    tok.generation = dict(record.get("generation") or {})
    return tok


def is_gguf(path: Path) -> bool:
    """A GGUF file, known by its magic bytes (an upload's scratch name has no suffix)."""
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def load_gguf(path: Path, dropout: float | None = None) -> tuple[Model, Tokenizer]:
    """A llama/qwen2 GGUF file as our Llama: dequantized by models.gguf, the tokenizer rebuilt
    from its metadata, its end ids, chat template and generation defaults attached."""
    from models.gguf import read_gguf

    ckpt = read_gguf(path)
    eos = ckpt.generation.get("eos_token_id")
    eos_ids = eos if isinstance(eos, list) else ([] if eos is None else [int(eos)])
    tok = service_tokenizer(ckpt.tokenizer, eos_ids, ckpt.chat_template, ckpt.generation)
    return from_hf_parts(ckpt.config, ckpt.tensors, tok, dropout), tok


def chat_format_of(source: Path) -> ChatFormat | None:
    """The chat format of what `load_model` reads at `source` (None without a template): a model
    directory's (models.chat_records), or a GGUF file's metadata (no tensor is read)."""
    if source.is_dir():
        return load_chat_format(source)
    if is_gguf(source):
        from models.gguf import _open
        from models.gguf_tokenizer import build_tokenizer

        meta = build_tokenizer(_open(source))
        generation = {k: v for k, v in meta.generation.items() if v is not None}
        return make_chat_format(meta.chat_template, meta.special_tokens, generation)
    return None


def served_chat_format(directory: Path, tok: Tokenizer) -> ChatFormat | None:
    """The chat format a loaded model generates with: the one at `directory`, else the template
    its config.json records (then without special-token variables), else None."""
    chat = chat_format_of(directory)
    if chat is None and tok.chat_template:
        chat = ChatFormat(tok.chat_template, {}, tuple(tok.end_ids))
    return chat


def load_model(
    directory: Path, device: torch.device | str = "cpu", dropout: float | None = None
) -> tuple[Model, Tokenizer]:
    if is_gguf(directory):
        model, tok = load_gguf(directory, dropout)
        return model.to(device), tok
    if is_archive(directory):
        with tempfile.TemporaryDirectory() as tmp:
            return load_model(unpack(directory, Path(tmp)), device, dropout)
    if (directory / "adapter_config.json").is_file():
        from models.peft import load_with_base  # models.peft imports this module

        merged, tok = load_with_base(directory, device, dropout)
        return merged, tok  # type: ignore[return-value]
    if is_hf_dir(directory):
        model, tok = from_hf(directory, dropout)
        return model.to(device), tok
    record = load_config(directory)
    config = model_config(record)
    if dropout is not None:
        config = replace(config, dropout=dropout)
    model = build_model(config)
    model.load_state_dict(load_tensors(directory / MODEL_FILE))
    return model.to(device), tokenizer_of(directory, record)
