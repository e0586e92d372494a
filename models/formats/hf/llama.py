"""The Llama-family layouts of a Hugging Face directory (`llama`, `mistral`, `qwen2`, `qwen3`),
both ways: the weights are a direct copy (our names are theirs); the config conversion is
the family's (models/families/llama/hf.py). models/formats/hf/directory.py dispatches here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from models.data.tokenizer import Tokenizer
from models.families.llama import hf as hf_llama
from models.families.llama.config import LlamaConfig
from models.families.llama.model import Llama
from models.files import write_atomic, write_json
from models.formats.hf.files import directory_tokenizer, read_tokenizer, read_weights, write_tokenizer_files
from models.formats.layout import CONFIG_FILE, MODEL_FILE


def export(config: LlamaConfig, tok: Tokenizer, weights: dict[str, torch.Tensor], out: Path) -> None:
    model_type = hf_llama.export_type(config)
    eos = [i for i in tok.end_ids if i != tok.eos_id] + [tok.eos_id]  # the model's own first
    ids = {"bos_token_id": None, "eos_token_id": eos if len(eos) > 1 else eos[0], "pad_token_id": tok.pad_id}
    write_atomic(out / MODEL_FILE, st_save(hf_llama.hf_tensors(weights, config), metadata={"format": "pt"}))
    write_json(out / CONFIG_FILE, hf_llama.hf_config(config, model_type, ids))
    write_tokenizer_files(out, tok, config.block_size, str(tok.hf.id_to_token(eos[0])))
    generation = {**tok.generation, "eos_token_id": ids["eos_token_id"], "pad_token_id": tok.pad_id}
    generation.setdefault("do_sample", False)
    write_json(out / "generation_config.json", generation)


def load(directory: Path, raw: dict[str, Any], dropout: float | None = None) -> tuple[Llama, Tokenizer]:
    """A Llama-family directory as our Llama (the config refused before any weight is read)."""
    hf_llama.config_from_hf(raw)  # refuse an unsupported config before reading any weights
    tok = directory_tokenizer(directory, raw, read_tokenizer(directory))
    return from_hf_parts(raw, read_weights(directory), tok, dropout), tok


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


def _with_dropout(model: Llama, config: LlamaConfig) -> Llama:
    out = Llama(config)
    out.load_state_dict(model.state_dict())
    return out
