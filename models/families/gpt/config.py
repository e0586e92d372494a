"""The GPT family, torch-free: GPT-2 style (learned positions, LayerNorm, GELU MLP, tied head).

Its config, the spec's `arch: gpt` section, the parameter count, the `trainable` parts, the
LoRA table and the Hugging Face GPT-2 name table. The model is models/families/gpt/model.py,
its serving layout models/families/gpt/serving.py.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from models.families.family import Family, InitFrom
from models.fields import Number, StrictInt, StrictModel
from models.lora.targets import LoraTable


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    arch: ClassVar[str] = "gpt"

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")

    @property
    def n_kv_head(self) -> int:
        return self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def num_parameters(self) -> int:
        """Tied token embeddings, learned positions, and per block two LayerNorms (2·2C),
        attention (C·3C + 3C, C·C + C) and the MLP (C·4C + 4C, 4C·C + C), and the final norm."""
        c = self.n_embd
        return self.vocab_size * c + self.block_size * c + self.n_layer * (12 * c * c + 13 * c) + 2 * c


class ModelSpec(StrictModel):
    """`arch: gpt`: GPT-2 style (learned positions, LayerNorm, GELU MLP, tied head)."""

    arch: Literal["gpt"] = "gpt"
    n_layer: Annotated[StrictInt, Field(ge=1, le=96)] = 4
    n_head: Annotated[StrictInt, Field(ge=1, le=128)] = 4
    n_embd: Annotated[StrictInt, Field(ge=8, le=16384)] = 256
    block_size: Annotated[StrictInt, Field(ge=8, le=32768)] = 256
    dropout: Annotated[Number, Field(ge=0.0, lt=1.0)] = 0.0
    train_block_size: Annotated[StrictInt, Field(ge=8, le=32768)] | None = None  # None: the model's block_size
    init_from: InitFrom | None = None


def config_from_spec(m: ModelSpec, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size, m.block_size, m.n_layer, m.n_head, m.n_embd, m.dropout)


def spec_errors(m: ModelSpec) -> list[dict[str, str]]:
    if m.n_embd % m.n_head:
        return [{"loc": "model.n_embd", "message": f"must be divisible by model.n_head ({m.n_embd} % {m.n_head} != 0)"}]
    return []


# Hugging Face GPT-2 config.json fields -> ours, and transformers' defaults when absent.
HF_DIMS = {"vocab_size": "vocab_size", "n_positions": "block_size", "n_layer": "n_layer", "n_head": "n_head",
           "n_embd": "n_embd"}  # fmt: skip
HF_DEFAULTS = {"vocab_size": 50257, "block_size": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768}

FAMILY = Family(
    arch="gpt",
    format="stagecraft-gpt",
    config=GPTConfig,
    spec=ModelSpec,
    from_spec=config_from_spec,
    spec_errors=spec_errors,
    model="models.families.gpt.model:GPT",
    serving="models.families.gpt.serving:ServingGPT",
    # `head`: the final norm and the output projection, which is the token embedding (tied),
    # so selecting `head` trains the embedding too (as `embeddings` does).
    parts={
        "all": lambda n, names: True,
        "embeddings": lambda n, names: n in ("transformer.wte.weight", "transformer.wpe.weight"),
        "head": lambda n, names: n.startswith("transformer.ln_f.") or n == "transformer.wte.weight",
        "attention": lambda n, names: ".attn." in n,
        "mlp": lambda n, names: ".mlp." in n,
        "norms": lambda n, names: ".ln_" in n,
    },
    blocks=re.compile(r"transformer\.h\.(\d+)\."),
    lora=LoraTable(
        arch="gpt",
        block_prefix="transformer.h.{i}.",
        projections={"qkv": "attn.c_attn", "o": "attn.c_proj", "fc": "mlp.c_fc", "proj": "mlp.c_proj"},
        roles={"attention": ["qkv", "o"], "mlp": ["fc", "proj"]},
        hint={p: "GPT's q, k and v are one fused projection: use 'qkv'" for p in "qkv"},
    ),
    peft_fan_in_fan_out=True,  # transformers' GPT-2 keeps c_attn/c_proj/c_fc as Conv1D
    hf_layout="models.formats.hf.gpt2",
    hf_model_types=("gpt2",),
)
