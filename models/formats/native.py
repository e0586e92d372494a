"""A finished model on disk: model.safetensors + config.json + tokenizer.json.

config.json records the architecture (`arch`, and the config under that name, e.g.
`"llama": {...}`; `"gpt": {...}` alone for older GPT directories), and for models with a
conversation format the `chat_template`, the `eos_token_ids` that end a generation and
the `generation` defaults. `load_model` also reads a Hugging Face directory (models.formats.hf.directory),
an archive (.tar.gz / .zip) of either kind, a GGUF file (models.formats.gguf.reader), and a PEFT adapter directory whose
`stagecraft.json` names its base by `base_path` (merged into the base: models.formats.peft).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from models.data.tokenizer import Tokenizer
from models.families import family, record_config
from models.families.build import ModelConfig
from models.files import read_json, write_atomic, write_json
from models.formats.layout import CONFIG_FILE, MODEL_FILE


def save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    write_atomic(path, st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in st_load(path.read_bytes()).items()}


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
    record: dict[str, Any] = {"format": family(config.arch).format, "arch": config.arch, config.arch: config.to_dict()}
    if tok.chat_template is not None:
        record["chat_template"] = tok.chat_template
    record["eos_token_ids"] = tok.end_ids
    if tok.generation:
        record["generation"] = tok.generation
    return record


def load_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a model directory (no {CONFIG_FILE})")
    config: dict[str, Any] = read_json(path)
    return config


def model_config(record: dict[str, Any]) -> ModelConfig:
    """The architecture a Stagecraft config.json records."""
    return record_config(record)


def tokenizer_of(directory: Path, record: dict[str, Any]) -> Tokenizer:
    tok = Tokenizer.load(directory)
    tok.chat_template = record.get("chat_template")
    tok.end_ids = list(record.get("eos_token_ids") or [tok.eos_id])
    tok.generation = dict(record.get("generation") or {})
    return tok
