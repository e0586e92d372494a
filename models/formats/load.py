"""The one "load anything" door: `load_model(path)` reads our model folder
(models/formats/native.py), a Hugging Face folder (models/formats/hf/), an archive (.tar.gz /
.zip) of either, a GGUF file (models/formats/gguf/), or a PEFT adapter folder whose
`stagecraft.json` names its base by `base_path` (merged into the base: models/formats/peft.py),
and returns (model, Tokenizer); `chat_format_of` finds the chat format of the same sources.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from models.data.chat import ChatFormat
from models.data.chat_records import load_chat_format, make_chat_format
from models.data.tokenizer import Tokenizer
from models.errors import AdapterError
from models.families.build import Model, build_model
from models.files import read_json
from models.formats.archive import is_archive, unpack
from models.formats.finite import check_finite
from models.formats.gguf.reader import open_gguf, read_gguf
from models.formats.gguf.tokenizer import build_tokenizer
from models.formats.hf.directory import from_hf, is_hf_dir
from models.formats.hf.files import service_tokenizer
from models.formats.hf.gpt2 import from_hf_parts as gpt2_from_parts
from models.formats.hf.llama import from_hf_parts
from models.formats.layout import ADAPTER_CONFIG, MODEL_FILE
from models.formats.native import load_config, load_tensors, model_config, tokenizer_of
from models.formats.peft import load_adapter, merge_adapter


def is_gguf(path: Path) -> bool:
    """A GGUF file, known by its magic bytes (an upload's scratch name has no suffix)."""
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def load_gguf(path: Path, dropout: float | None = None) -> tuple[Model, Tokenizer]:
    """A llama/qwen2/qwen3 GGUF file as our Llama, a gpt2 one as our GPT: dequantized by
    models.formats.gguf.reader, the tokenizer rebuilt from its metadata, its end ids, chat
    template and generation defaults attached."""
    ckpt = read_gguf(path)
    eos = ckpt.generation.get("eos_token_id")
    eos_ids = eos if isinstance(eos, list) else ([] if eos is None else [int(eos)])
    tok = service_tokenizer(ckpt.tokenizer, eos_ids, ckpt.chat_template, ckpt.generation)
    build = gpt2_from_parts if ckpt.config["model_type"] == "gpt2" else from_hf_parts
    return build(ckpt.config, ckpt.tensors, tok, dropout), tok


def chat_format_of(source: Path) -> ChatFormat | None:
    """The chat format of what `load_model` reads at `source` (None without a template): a model
    directory's (models.data.chat_records), or a GGUF file's metadata (no tensor is read)."""
    if source.is_dir():
        return load_chat_format(source)
    if is_gguf(source):
        meta = build_tokenizer(open_gguf(source))
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
    """The model at `directory` (any of the sources above) and its tokenizer; UnsupportedModel
    naming the first tensor that holds a NaN or an infinity (models/formats/finite.py)."""
    if is_archive(directory):
        with tempfile.TemporaryDirectory() as tmp:
            return load_model(unpack(directory, Path(tmp)), device, dropout)
    model, tok = _load(directory, device, dropout)
    check_finite(model.state_dict().items(), "the model's weights")
    return model.to(device), tok


def _load(directory: Path, device: torch.device | str, dropout: float | None) -> tuple[Model, Tokenizer]:
    if is_gguf(directory):
        return load_gguf(directory, dropout)
    if (directory / ADAPTER_CONFIG).is_file():
        return load_with_base(directory, device, dropout)
    if is_hf_dir(directory):
        return from_hf(directory, dropout)
    record = load_config(directory)
    config = model_config(record)
    if dropout is not None:
        config = replace(config, dropout=dropout)
    model = build_model(config)
    model.load_state_dict(load_tensors(directory / MODEL_FILE))
    return model, tokenizer_of(directory, record)


def load_merged(
    base_dir: Path, adapter_dir: Path, device: torch.device | str = "cpu", dropout: float | None = None
) -> tuple[Model, Tokenizer]:
    """The base model directory with the adapter merged in, and the base's tokenizer: a
    model like any other (for `init_from`, evaluation or export)."""
    loaded = load_adapter(adapter_dir)
    model, tok = load_model(base_dir, device, dropout)
    merge_adapter(model, loaded.adapter)
    return model, tok


def load_with_base(
    adapter_dir: Path, device: torch.device | str = "cpu", dropout: float | None = None
) -> tuple[Model, Tokenizer]:
    """An adapter directory whose stagecraft.json names its base model directory (`base_path`,
    absolute or relative to the adapter directory),
    merged (what `load_model` does for such a directory, e.g. as `init_from`)."""
    info = adapter_dir / "stagecraft.json"
    base = read_json(info).get("base_path") if info.is_file() else None
    if not isinstance(base, str) or not base:
        raise AdapterError(f"{adapter_dir}: an adapter needs its base: stagecraft.json has no base_path")
    return load_merged(adapter_dir / base, adapter_dir, device, dropout)  # relative: to the adapter's folder
