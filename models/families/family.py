"""What a model family declares, torch-free: everything the spec, the service and the formats
need to know about a family without importing its model code.

Each family folder (models/families/<arch>/) holds `config.py` (its `Family`: the config
dataclass, the spec's `model` section, the parameter count, the `trainable` parts and block
pattern, the LoRA table, the Hugging Face and GGUF name tables), `model.py` (the torch
module it trains) and `serving.py` (the same function laid out for decoding). The torch
classes are named as "module:Class" strings and imported on first use (models/families/build.py),
so the API process can size, validate and describe a model without loading torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from pydantic import Field

from models.fields import StrictModel
from models.lora.targets import LoraTable


class InitFrom(StrictModel):
    """`model.init_from`: start from a stored model (any family) instead of a new one."""

    model: Annotated[str, Field(min_length=1, max_length=200)]


Part = Callable[[str, set[str]], bool]  # (parameter name, all the model's parameter names) -> selected


class Config(Protocol):
    """What every family's config has (a frozen dataclass, recorded in config.json by `to_dict`);
    a superset of what a KV cache reads (models.layers.kv_cache.CacheShape, which imports torch)."""

    arch: str  # a ClassVar on the dataclasses
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float

    @property
    def n_kv_head(self) -> int: ...

    @property
    def head_dim(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...

    def num_parameters(self) -> int: ...


@dataclass(frozen=True)
class Family:
    arch: str  # the name a spec (`model.arch`) and a model folder's config.json record
    format: str  # config.json's `format` for our model folders of this family
    config: Callable[..., Any]  # the config dataclass: config(**config.to_dict()) rebuilds it
    spec: type[StrictModel]  # the spec's `model` section for this family
    from_spec: Callable[[Any, int], Any]  # (spec section, vocab size) -> config of a new model
    spec_errors: Callable[[Any], list[dict[str, str]]]  # cross-field checks of the spec section
    model: str  # "module:Class" of the torch model (GPT, Llama)
    serving: str  # "module:Class" of its serving layout
    parts: dict[str, Part]  # what each `trainable` selector names
    blocks: re.Pattern[str]  # a parameter name's block index (group 1)
    lora: LoraTable
    peft_fan_in_fan_out: bool  # transformers keeps the adapted projections as Conv1D
    hf_layout: str  # the module of its Hugging Face layout (export / load), imported on first use
    hf_model_types: tuple[str, ...]  # Hugging Face model_type values imported as this family
