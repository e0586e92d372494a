"""The Llama family, torch-free: RMSNorm, rotary positions, SwiGLU MLP, grouped-query
attention — Llama 2/3, Mistral, SmolLM2, Qwen2 (`attention_bias`) and Qwen3 (`qk_norm`).

Its config, the spec's `arch: llama` section, the parameter count, the `trainable` parts,
the LoRA table and the GGUF tensor names. The model is models/families/llama/model.py, its
serving layout models/families/llama/serving.py, the Hugging Face config conversion
models/families/llama/hf.py.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from models.families.family import Family, InitFrom
from models.fields import Number, StrictBool, StrictInt, StrictModel
from models.lora.targets import LoraTable

ROPE_TYPES = ("llama3", "linear")


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0  # 0: n_head (plain multi-head attention)
    n_embd: int = 256
    head_dim: int = 0  # 0: n_embd // n_head
    intermediate_size: int = 688
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)  # {"type": "llama3" | "linear", ...}
    attention_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = True
    dropout: float = 0.0
    arch: ClassVar[str] = "llama"

    def __post_init__(self) -> None:
        if not self.n_kv_head:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.n_embd // self.n_head)
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.rope_scaling is not None and self.rope_scaling.get("type") not in ROPE_TYPES:
            raise ValueError(f"rope scaling type {self.rope_scaling.get('type')!r} is not supported ({ROPE_TYPES})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def num_parameters(self) -> int:
        """Embedding (and an untied head), per block two RMSNorms, q/k/v/o projections (q/k/v
        biases optional, Qwen3's per-head norms) and a SwiGLU MLP, and the final norm."""
        c, h, kv, d = self.n_embd, self.n_head, self.n_kv_head, self.head_dim
        attn = 2 * c * h * d + 2 * c * kv * d + ((h + 2 * kv) * d if self.attention_bias else 0)
        attn += 2 * d if self.qk_norm else 0
        per_block = attn + 3 * c * self.intermediate_size + 2 * c
        head = 0 if self.tie_embeddings else self.vocab_size * c
        return self.vocab_size * c + head + self.n_layer * per_block + c


def default_intermediate(n_embd: int) -> int:
    """SwiGLU width with about the parameters of a 4x GELU MLP: 8/3 n_embd, up to a multiple of 32."""
    return (8 * n_embd // 3 + 31) // 32 * 32


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


def config_from_spec(m: LlamaModelSpec, vocab_size: int) -> LlamaConfig:
    scaling = None if m.rope_scaling is None else m.rope_scaling.model_dump()
    return LlamaConfig(
        vocab_size=vocab_size,
        block_size=m.block_size,
        n_layer=m.n_layer,
        n_head=m.n_head,
        n_kv_head=m.n_kv_head or m.n_head,
        n_embd=m.n_embd,
        head_dim=m.head_dim or 0,
        intermediate_size=m.intermediate_size or default_intermediate(m.n_embd),
        rms_norm_eps=m.rms_norm_eps,
        rope_theta=m.rope_theta,
        rope_scaling=scaling,
        attention_bias=m.attention_bias,
        qk_norm=m.qk_norm,
        tie_embeddings=m.tie_embeddings,
        dropout=m.dropout,
    )


def spec_errors(m: LlamaModelSpec) -> list[dict[str, str]]:
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


# GGUF tensor names (llama.cpp) -> ours (the Hugging Face names), per block and global.
GGUF_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",  # qwen3
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GGUF_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

FAMILY = Family(
    arch="llama",
    format="stagecraft-llama",
    config=LlamaConfig,
    spec=LlamaModelSpec,
    from_spec=config_from_spec,
    spec_errors=spec_errors,
    model="models.families.llama.model:Llama",
    serving="models.families.llama.serving:ServingLlama",
    parts={
        "all": lambda n, names: True,
        "embeddings": lambda n, names: n == "model.embed_tokens.weight",
        # lm_head.weight exists only when untied; tied, the embedding is the head.
        "head": lambda n, names: (
            n.startswith(("model.norm.", "lm_head."))
            or (n == "model.embed_tokens.weight" and "lm_head.weight" not in names)
        ),
        "attention": lambda n, names: ".self_attn." in n,  # q/k/v/o projections (and Qwen3's q/k norms)
        "mlp": lambda n, names: ".mlp." in n,
        "norms": lambda n, names: (
            n.endswith("layernorm.weight") or n.endswith("_norm.weight") or n == "model.norm.weight"
        ),
    },
    blocks=re.compile(r"model\.layers\.(\d+)\."),
    lora=LoraTable(
        arch="llama",
        block_prefix="model.layers.{i}.",
        projections={
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj",
            "up": "mlp.up_proj",
            "down": "mlp.down_proj",
        },
        roles={"attention": ["q", "k", "v", "o"], "mlp": ["gate", "up", "down"]},
        hint={},
    ),
    peft_fan_in_fan_out=False,
    hf_layout="models.formats.hf.llama",
    hf_model_types=("llama", "mistral", "qwen2", "qwen3"),
)
