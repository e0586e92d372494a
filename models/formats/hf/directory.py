"""Hugging Face model directories, both ways: `to_hf` exports a model directory that
`transformers.AutoModelForCausalLM` / `AutoTokenizer` load with no custom code, and
`from_hf` reads one (ours or one made elsewhere) as (model, Tokenizer).

Each family's layout is a module named by its config (`Family.hf_layout`:
models/formats/hf/gpt2.py, models/formats/hf/llama.py), with `export(config, tok, weights,
out)` and `load(directory, config_json, dropout)`; the files beside the weights are read by
models/formats/hf/files.py. Pure torch + safetensors + JSON; transformers is never imported.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

from models.data.tokenizer import Tokenizer
from models.errors import UnsupportedModel
from models.families import FAMILIES, family, family_of_hf
from models.families.build import Model
from models.files import read_json, write_json
from models.formats.layout import CONFIG_FILE, MODEL_FILE
from models.formats.native import load_tensors, model_config, tokenizer_of


def _layout(arch: str) -> ModuleType:
    return importlib.import_module(family(arch).hf_layout)


def is_hf_dir(directory: Path) -> bool:
    path = directory / CONFIG_FILE
    if not path.is_file():
        return False
    config = read_json(path)
    ours = str(config.get("format", "")).startswith("stagecraft") if isinstance(config, dict) else False
    return isinstance(config, dict) and not ours and "model_type" in config


def to_hf(model_dir: Path, out_dir: Path) -> None:
    """Write config.json, model.safetensors, tokenizer files and generation_config.json."""
    info = read_json(model_dir / CONFIG_FILE)
    config, tok = model_config(info), tokenizer_of(model_dir, info)
    weights = load_tensors(model_dir / MODEL_FILE)
    out_dir.mkdir(parents=True, exist_ok=True)
    provenance = {k: v for k, v in info.items() if k not in (*FAMILIES, "format", "arch")}
    _layout(config.arch).export(config, tok, weights, out_dir)
    write_json(out_dir / "stagecraft.json", provenance)


def from_hf(directory: Path, dropout: float | None = None) -> tuple[Model, Tokenizer]:
    """A Hugging Face model directory (of any family we import) as our model and Tokenizer.
    Special tokens this service needs (<|endoftext|>, <|completion|>, <|pad|>) are added
    when missing, with new embedding rows."""
    try:
        raw = json.loads((directory / CONFIG_FILE).read_text())
    except ValueError as exc:
        raise UnsupportedModel(f"config.json is not valid JSON ({exc})") from None
    f = family_of_hf(str(raw.get("model_type")))
    if f is None:
        supported = ", ".join(t for f in FAMILIES.values() for t in f.hf_model_types)
        raise UnsupportedModel(f"unsupported model: model_type '{raw.get('model_type')}' (supported: {supported})")
    model, tok = _layout(f.arch).load(directory, raw, dropout)
    return model, tok
