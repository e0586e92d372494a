"""The model families, torch-free: one registry line per family.

A family is one folder (models/families/<arch>/: config.py, model.py, serving.py) whose
`config.FAMILY` says everything the rest of Stagecraft needs (models/families/family.py).
Adding a family is that folder and one line below; nothing else names a family.
"""

from __future__ import annotations

from typing import Any

from models.families.family import Family
from models.families.gpt import config as gpt
from models.families.llama import config as llama

FAMILIES: dict[str, Family] = {f.arch: f for f in (gpt.FAMILY, llama.FAMILY)}
DEFAULT = "gpt"  # a spec or an older model folder that names no arch


def family(arch: str) -> Family:
    """The family named `arch`; ValueError naming the known ones for any other name."""
    if arch not in FAMILIES:
        raise ValueError(f"unknown model architecture '{arch}' (known: {', '.join(FAMILIES)})")
    return FAMILIES[arch]


def config_from_dict(arch: str, fields: dict[str, Any]) -> Any:
    """The config recorded as `config.to_dict()` under family `arch`."""
    return family(arch).config(**fields)


def record_config(record: dict[str, Any]) -> Any:
    """The config a Stagecraft config.json (or a checkpoint's state.json `model`) records."""
    arch = str(record.get("arch", DEFAULT))
    return config_from_dict(arch, dict(record[arch]))


def lora_target_error(arch: str, target: str) -> str | None:
    """Why a LoRA `target` cannot be adapted on family `arch`, or None if it can."""
    if arch not in FAMILIES:
        return f"adapters are not available for arch '{arch}' (available: {', '.join(sorted(FAMILIES))})"
    return FAMILIES[arch].lora.target_error(target)


def family_of_hf(model_type: str) -> Family | None:
    """The family that imports a Hugging Face `model_type`."""
    return next((f for f in FAMILIES.values() if model_type in f.hf_model_types), None)


ALL_LORA_TARGETS = sorted({t for f in FAMILIES.values() for t in (*f.lora.roles, *f.lora.projections)})
