"""Adapters in the PEFT layout, both ways: `adapter_config.json` + `adapter_model.safetensors`.

`save_adapter` writes what `peft.PeftModel.from_pretrained` loads onto the transformers
export of the base (models/formats/hf/directory.py); `load_adapter` reads such a directory (made by peft or
by us) as an `Adapter`; `merge_adapter` adds it into a model's weights.

Layer names need no translation: our parameter names are the transformers ones. GPT-2 in
transformers keeps c_attn/c_proj/c_fc as Conv1D (weight stored (in, out)); peft then marks
`fan_in_fan_out`, but its lora_A (rank, in) and lora_B (out, rank) are the same matrices
as ours, so only the flag differs by architecture. Pickled `adapter_model.bin` is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from models.errors import AdapterError
from models.families import FAMILIES, family
from models.files import read_json, write_atomic, write_json
from models.formats.finite import check_finite
from models.formats.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from models.lora.layers import Adapter

CONFIG, WEIGHTS = ADAPTER_CONFIG, ADAPTER_WEIGHTS
PREFIX = "base_model.model."


@dataclass
class LoadedAdapter:
    adapter: Adapter
    arch: str
    base: str | None  # base_model_name_or_path as written by whoever made it


def is_adapter_dir(directory: Path) -> bool:
    return (directory / CONFIG).is_file()


def _arch_of_paths(paths: list[str]) -> str:
    for f in FAMILIES.values():
        if all(f.lora.owns(p) for p in paths):
            return f.arch
    raise AdapterError(f"adapter layers {paths[:3]} ... belong to no architecture we serve ({', '.join(FAMILIES)})")


def save_adapter(directory: Path, adapter: Adapter, base: str | None = None) -> None:
    """Write `adapter` in the PEFT layout (fp32)."""
    paths = list(adapter.layers)
    arch = _arch_of_paths(paths)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for path, (a, b) in adapter.layers.items():
        tensors[f"{PREFIX}{path}.lora_A.weight"] = a.float().contiguous()
        tensors[f"{PREFIX}{path}.lora_B.weight"] = b.float().contiguous()
    write_atomic(directory / WEIGHTS, st_save(tensors, metadata={"format": "pt"}))
    rs = adapter.scale is not None and math.isclose(adapter.scale, adapter.alpha / math.sqrt(adapter.rank))
    if adapter.scale is not None and not rs and not math.isclose(adapter.scale, adapter.alpha / adapter.rank):
        raise AdapterError("this adapter's scale is neither alpha / rank nor alpha / sqrt(rank)")
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "inference_mode": True,
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "lora_dropout": adapter.dropout,
        "target_modules": sorted(paths),  # full module names: peft matches them exactly
        "fan_in_fan_out": family(arch).peft_fan_in_fan_out,
        "bias": "none",
        "use_rslora": rs,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    write_json(directory / CONFIG, config)


_UNSUPPORTED = {  # adapter_config.json keys whose non-default value we cannot represent
    "use_dora": "DoRA",
    "lora_bias": "LoRA biases",
    "modules_to_save": "modules_to_save (fully trained extra modules)",
    "rank_pattern": "per-layer ranks (rank_pattern)",
    "alpha_pattern": "per-layer alphas (alpha_pattern)",
    "layer_replication": "layer_replication",
    "trainable_token_indices": "trainable_token_indices",
    "target_parameters": "target_parameters",
    "use_qalora": "QALoRA",
}


def _config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG
    if not path.is_file():
        raise AdapterError(f"{directory} is not a PEFT adapter (no {CONFIG})")
    try:
        config = read_json(path)
    except ValueError as exc:
        raise AdapterError(f"{CONFIG}: not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{CONFIG}: expected a JSON object")
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{CONFIG}: peft_type: only LORA adapters are supported, got {config.get('peft_type')!r}")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise AdapterError(f"{CONFIG}: {key}: {what} is not supported")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{CONFIG}: bias: only 'none' is supported, got {config.get('bias')!r}")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise AdapterError(f"{CONFIG}: {key}: expected a positive number, got {value!r}")
    return config


def load_adapter(directory: Path) -> LoadedAdapter:
    """A PEFT LoRA adapter directory (safetensors only) as an `Adapter`."""
    config = _config(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        found = sorted(p.name for p in directory.iterdir())
        raise AdapterError(f"{directory}: no {WEIGHTS} (pickled adapter_model.bin is not read); found {found}")
    try:
        tensors = st_load(weights.read_bytes())
    except Exception as exc:  # safetensors raises its own error type for a corrupt header
        raise AdapterError(f"{WEIGHTS}: not a safetensors file ({exc})") from None
    check_finite(tensors.items(), WEIGHTS, AdapterError)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        for kind in ("lora_A", "lora_B"):
            suffix = f".{kind}.weight"
            if name.endswith(suffix):
                path = name[: -len(suffix)]
                if path.startswith("h."):  # a GPT2Model base (no LM head) has no "transformer." prefix
                    path = "transformer." + path
                parts.setdefault(path, {})[kind] = value.float()
                break
        else:
            raise AdapterError(f"{WEIGHTS}: tensor {key!r} is not a LoRA A/B matrix (unsupported adapter kind)")
    if not parts:
        raise AdapterError(f"{WEIGHTS}: holds no LoRA matrices")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    adapter = Adapter(rank, alpha, float(config.get("lora_dropout") or 0.0), scale=scale)
    for path, ab in sorted(parts.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise AdapterError(f"{WEIGHTS}: {path} has only {sorted(ab)}")
        a, b = ab["lora_A"], ab["lora_B"]
        if a.dim() != 2 or b.dim() != 2 or a.size(0) != rank or b.size(1) != rank:
            raise AdapterError(f"{WEIGHTS}: {path}: A {tuple(a.shape)} and B {tuple(b.shape)} do not have rank {rank}")
        adapter.layers[path] = (a, b)
    return LoadedAdapter(adapter, _arch_of_paths(list(parts)), config.get("base_model_name_or_path"))


def check_fits(model: nn.Module, adapter: Adapter) -> None:
    """Every adapted layer exists in `model` as a linear layer of the matching shape."""
    for path, (a, b) in adapter.layers.items():
        try:
            layer = model.get_submodule(path)
        except AttributeError:
            raise AdapterError(f"the adapter names layer {path}, which the base model does not have") from None
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (b.size(0), a.size(1)):
            shape = None if weight is None else tuple(weight.shape)
            raise AdapterError(f"{path}: adapter is {b.size(0)}x{a.size(1)}, the base layer's weight is {shape}")


@torch.no_grad()
def merge_adapter(model: nn.Module, adapter: Adapter) -> None:
    """Add scale * B A into the model's weights in place (the merged model, e.g. for init_from)."""
    check_fits(model, adapter)
    for path, (a, b) in adapter.layers.items():
        w = model.get_submodule(path).weight
        assert isinstance(w, torch.Tensor)
        w += ((b.float() @ a.float()) * adapter.scaling).to(w.device, w.dtype)
