"""The files of a Hugging Face model directory other than config.json's architecture:
weights (single or sharded safetensors), tokenizer, chat template, generation defaults.

Only safe formats are read: pickled weight files (`pytorch_model.bin`, `.pt`, ...) are
refused, never opened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer as HFTokenizer

from models.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from models.errors import UnsupportedModel

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
GENERATION_KEYS = ("do_sample", "temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(f"{path.name}: not readable JSON ({exc})") from None


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files holding the weights: model.safetensors, or every file the
    sharded index's weight_map names. Pickled weights are refused."""
    if (directory / SINGLE).is_file():
        return [directory / SINGLE]
    if (directory / INDEX).is_file():
        weight_map = _read(directory / INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UnsupportedModel(f"{INDEX}: no weight_map")
        names = sorted(set(weight_map.values()))
        for name in names:
            if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
                raise UnsupportedModel(f"{INDEX}: weight_map names '{name}', not a .safetensors file beside it")
            if not (directory / name).is_file():
                raise UnsupportedModel(f"{INDEX}: shard '{name}' is missing")
        return [directory / n for n in names]
    pickled = sorted(p.name for p in directory.iterdir() if p.name.lower().endswith(PICKLED))
    if pickled:
        raise UnsupportedModel(
            f"{directory.name}: weights are pickled ({', '.join(pickled)}), which is never loaded "
            "(it can run code); convert them to safetensors"
        )
    raise UnsupportedModel(f"{directory.name}: no {SINGLE} or {INDEX}")


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint under its Hugging Face name, in its stored dtype."""
    out: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        try:
            out.update(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            raise UnsupportedModel(f"{path.name}: not a readable safetensors file ({exc})") from None
    return out


def read_tokenizer(directory: Path) -> HFTokenizer:
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise UnsupportedModel(f"{directory.name}: no tokenizer.json")
    try:
        return HFTokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
        raise UnsupportedModel(f"tokenizer.json: not readable ({exc})") from None


def add_service_tokens(hf: HFTokenizer) -> None:
    """Add the special tokens Stagecraft's data formats use, where the tokenizer lacks them."""
    missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
    if missing:
        hf.add_special_tokens(missing)


def read_chat_template(directory: Path) -> str | None:
    """tokenizer_config.json's chat_template (the `default` one of a list), or chat_template.jinja."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    cfg = directory / "tokenizer_config.json"
    template = _read(cfg).get("chat_template") if cfg.is_file() else None
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def read_generation(directory: Path, config: dict[str, Any], hf: HFTokenizer) -> tuple[list[int], dict[str, Any]]:
    """End-of-sequence ids (generation_config.json, config.json, tokenizer_config.json's
    eos_token; any of them may give a list) and the generation defaults."""
    gen_path = directory / "generation_config.json"
    gen = _read(gen_path) if gen_path.is_file() else {}
    eos = _ids(gen.get("eos_token_id")) + _ids(config.get("eos_token_id"))
    cfg = directory / "tokenizer_config.json"
    token = _read(cfg).get("eos_token") if cfg.is_file() else None
    if isinstance(token, dict):  # an AddedToken written out: {"content": ...}
        token = token.get("content")
    token_id = hf.token_to_id(token) if isinstance(token, str) else None
    if token_id is not None:
        eos.append(token_id)
    defaults = {k: gen[k] for k in GENERATION_KEYS if k in gen and gen[k] is not None}
    return list(dict.fromkeys(eos)), defaults


def write_tokenizer_files(out: Path, tok: Tokenizer, block_size: int, eos_token: str) -> None:
    """tokenizer.json and a tokenizer_config.json with the chat template."""
    tok.save(out)
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos_token,
        "pad_token": tok.hf.id_to_token(tok.pad_id),
    }
    if tok.chat_template is not None:
        cfg["chat_template"] = tok.chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


def service_tokenizer(
    hf: HFTokenizer,
    eos_ids: list[int] | tuple[int, ...] = (),
    chat_template: str | None = None,
    generation: dict[str, Any] | None = None,
) -> Tokenizer:
    """A checkpoint's tokenizer as ours: our special tokens added where missing, its end
    ids (and ours), chat template and generation defaults attached."""
    add_service_tokens(hf)
    tok = Tokenizer(hf)
    tok.end_ids = list(dict.fromkeys([*eos_ids, tok.eos_id]))
    tok.chat_template = chat_template
    tok.generation = dict(generation or {})
    return tok


def directory_tokenizer(directory: Path, raw: dict[str, Any], hf: HFTokenizer) -> Tokenizer:
    eos, generation = read_generation(directory, raw, hf)
    return service_tokenizer(hf, eos, read_chat_template(directory), generation)
