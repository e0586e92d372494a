"""The `model` section of the job spec: `arch: gpt` or `arch: llama`, a discriminated
union (a spec without `arch` is gpt), and the llama fields' cross-field checks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from models.fields import Number, StrictBool, StrictInt, StrictModel


class InitFrom(StrictModel):
    model: Annotated[str, Field(min_length=1, max_length=200)]


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


class Llama3Scaling(StrictModel):
    """Llama 3.1's rotary scaling: long wavelengths slowed by `factor`, short ones kept."""

    type: Literal["llama3"]
    factor: Annotated[Number, Field(ge=1.0, le=1024.0)]
    low_freq_factor: Annotated[Number, Field(gt=0.0, le=1024.0)] = 1.0
    high_freq_factor: Annotated[Number, Field(gt=0.0, le=1024.0)] = 4.0
    original_max_position_embeddings: Annotated[StrictInt, Field(ge=1, le=1 << 24)] = 8192


class LinearScaling(StrictModel):
    """Positions divided by `factor` (position interpolation)."""

    type: Literal["linear"]
    factor: Annotated[Number, Field(ge=1.0, le=1024.0)]


RopeScaling = Annotated[Llama3Scaling | LinearScaling, Field(discriminator="type")]


class LlamaModelSpec(StrictModel):
    """`arch: llama`: RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention."""

    arch: Literal["llama"]
    n_layer: Annotated[StrictInt, Field(ge=1, le=128)] = 4
    n_head: Annotated[StrictInt, Field(ge=1, le=128)] = 4
    n_kv_head: Annotated[StrictInt, Field(ge=1, le=128)] | None = None  # None: n_head (plain multi-head)
    n_embd: Annotated[StrictInt, Field(ge=8, le=16384)] = 256
    head_dim: Annotated[StrictInt, Field(ge=2, le=1024)] | None = None  # None: n_embd / n_head
    intermediate_size: Annotated[StrictInt, Field(ge=1, le=65536)] | None = None  # None: ~8/3 n_embd
    block_size: Annotated[StrictInt, Field(ge=8, le=32768)] = 256
    rms_norm_eps: Annotated[Number, Field(gt=0.0, le=0.1)] = 1e-5
    rope_theta: Annotated[Number, Field(ge=1.0, le=1e9)] = 10000.0
    rope_scaling: RopeScaling | None = None
    attention_bias: StrictBool = False  # q/k/v projections with a bias (Qwen2)
    qk_norm: StrictBool = False  # RMSNorm over each head of q and k (Qwen3)
    tie_embeddings: StrictBool = True
    dropout: Annotated[Number, Field(ge=0.0, lt=1.0)] = 0.0
    train_block_size: Annotated[StrictInt, Field(ge=8, le=32768)] | None = None  # None: the model's block_size
    init_from: InitFrom | None = None


def training_block(m: ModelSpec | LlamaModelSpec, model_block: int) -> int:
    """The window a run trains and measures on: text packed into blocks of this many tokens,
    records cut at it. `train_block_size` (at most the model's context) or the model's own
    `block_size` (the base's with init_from); the model keeps its context either way."""
    return model_block if m.train_block_size is None else min(m.train_block_size, model_block)


def _arch(value: Any) -> str:
    arch = value.get("arch", "gpt") if isinstance(value, dict) else getattr(value, "arch", "gpt")
    return arch if arch in ("gpt", "llama") else "gpt"  # an unknown arch: reported at model.arch


AnyModelSpec = Annotated[
    Annotated[ModelSpec, Tag("gpt")] | Annotated[LlamaModelSpec, Tag("llama")], Discriminator(_arch)
]


def llama_errors(m: LlamaModelSpec) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []

    def err(loc: str, message: str) -> None:
        errors.append({"loc": f"model.{loc}", "message": message})

    if m.n_kv_head is not None and m.n_head % m.n_kv_head:
        err("n_kv_head", f"model.n_head must be a multiple of it ({m.n_head} % {m.n_kv_head} != 0)")
    if m.head_dim is None:
        if m.n_embd % m.n_head:
            err("n_embd", f"must be divisible by model.n_head when head_dim is not set ({m.n_embd} % {m.n_head} != 0)")
        elif (m.n_embd // m.n_head) % 2:
            err("n_head", f"n_embd / n_head = {m.n_embd // m.n_head} must be even (rotary embeddings rotate pairs)")
    elif m.head_dim % 2:
        err("head_dim", "must be even (rotary embeddings rotate pairs)")
    s = m.rope_scaling
    if isinstance(s, Llama3Scaling) and s.high_freq_factor <= s.low_freq_factor:
        err("rope_scaling.high_freq_factor", f"must be greater than low_freq_factor ({s.low_freq_factor})")
    return errors
