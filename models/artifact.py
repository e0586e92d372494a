"""A finished model on disk: model.safetensors + config.json + tokenizer.json.

`load_model` also reads a Hugging Face GPT-2-family directory (models.hf), an archive
(.tar.gz / .zip) of either kind, and a PEFT adapter directory whose `stagecraft.json`
names its base by `base_path` (merged into the base: models.peft).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from models.archive import is_archive, unpack
from models.checkpoint import CONFIG_FILE, MODEL_FILE, load_tensors, read_json, save_tensors, write_json
from models.gpt import GPT, GPTConfig
from models.hf import from_hf, is_hf_dir
from models.tokenizer import Tokenizer


def save_model(
    directory: Path, state: dict[str, torch.Tensor], config: GPTConfig, tok: Tokenizer, info: dict[str, Any]
) -> None:
    """Weights (fp32 as trained), architecture and tokenizer; `info` adds provenance to config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / MODEL_FILE, {k: v.float() for k, v in state.items()})
    tok.save(directory)
    write_json(directory / CONFIG_FILE, {"format": "stagecraft-gpt", "gpt": config.to_dict(), **info})


def load_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a model directory (no {CONFIG_FILE})")
    config: dict[str, Any] = read_json(path)
    return config


def load_model(
    directory: Path, device: torch.device | str = "cpu", dropout: float | None = None
) -> tuple[GPT, Tokenizer]:
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
    fields = dict(load_config(directory)["gpt"])
    if dropout is not None:
        fields["dropout"] = dropout
    model = GPT(GPTConfig(**fields))
    model.load_state_dict(load_tensors(directory / MODEL_FILE))
    return model.to(device), Tokenizer.load(directory)
