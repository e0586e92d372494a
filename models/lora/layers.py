"""LoRA adapters on a model's linear layers: training, merging, and the adapter as data.

A targeted `nn.Linear` is replaced by a `LoRALinear` that keeps the same `weight` and
`bias` parameters (so every base parameter keeps its name) and adds, per adapter,
`lora_A.<name>` (rank, in) and `lora_B.<name>` (out, rank):

    y = x W^T + b + sum over applied adapters of  scale * dropout(x) A^T B^T,  scale = alpha / rank

A starts kaiming-uniform (a = sqrt(5), as torch's Linear and peft initialise it), B
starts at zero, so a new adapter leaves the model's function unchanged. Adapters of a
run are all created when the model is built (each from its own seeded generator, so
the global random stream is untouched); an adapter is *applied* from the first segment
that trains it on, and stays applied afterwards. Only the current segment's adapter
trains; the others are frozen but still part of the forward pass.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.errors import TrainingError
from models.layers import onednn
from models.lora.targets import LoraTable


class LoRALinear(nn.Linear):
    """An nn.Linear with low-rank adapters beside its (usually frozen) weight."""

    def __init__(self, base: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.scale: dict[str, float] = {}
        self.dropout: dict[str, float] = {}
        self.applied: list[str] = []  # adapters in the forward pass, in the order they were applied

    def add(self, name: str, rank: int, alpha: float, dropout: float, generator: torch.Generator) -> None:
        w = self.weight
        a = torch.empty(rank, self.in_features, dtype=torch.float32)
        bound = 1.0 / math.sqrt(self.in_features)  # kaiming_uniform_(a=sqrt(5)) on a (rank, in) matrix
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A[name] = nn.Parameter(a.to(w.device, w.dtype))
        self.lora_B[name] = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))
        self.scale[name] = alpha / rank
        self.dropout[name] = dropout

    def forward(self, x: Tensor) -> Tensor:
        if not self.applied:
            return onednn.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, self.in_features)
        y = onednn.linear(flat, self.weight, self.bias)
        for name in self.applied:
            p = self.dropout[name]
            h = F.dropout(flat, p, True) if p and self.training else flat
            y = _LowRank.apply(y, h, self.lora_A[name], self.lora_B[name], self.scale[name])
        return y.view(*x.shape[:-1], self.out_features)

    def delta(self, name: str) -> Tensor:
        """scale * B A: what merging adapter `name` adds to the weight."""
        return (self.lora_B[name].float() @ self.lora_A[name].float()) * self.scale[name]


class _LowRank(torch.autograd.Function):
    """y += scale * (h A^T) B^T, in place, with the weight gradients in the layouts that run
    fast: autograd's linear backward forms x^T g for them, which for a rank-8 output runs
    ~10x slower on the CPU than the equivalent (g^T x)^T. Everything in y's dtype (the
    autocast dtype under autocast); gradients return in each input's own dtype."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, h: Tensor, a: Tensor, b: Tensor, scale: float) -> Tensor:
        with torch.autocast(y.device.type, enabled=False):
            dt = y.dtype
            h_, a_, b_ = h.to(dt), a.to(dt), b.to(dt)
            low = onednn.mm_t(h_, a_) if onednn.available(h_, a_) else h_ @ a_.t()
            y.addmm_(low, b_.t(), alpha=scale)
        ctx.mark_dirty(y)
        ctx.save_for_backward(h_, a_, b_, low)
        ctx.scale, ctx.dtypes = scale, (h.dtype, a.dtype, b.dtype)
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        h, a, b, low = ctx.saved_tensors
        h_dt, a_dt, b_dt = ctx.dtypes
        with torch.autocast(g.device.type, enabled=False):
            g = g.to(h.dtype)
            # (tokens, rank); oneDNN takes this product ~3x faster than aten's mm in fp32
            g_low = (onednn.mm_t(g, b.t()) if onednn.available(g, b) else g @ b).mul_(ctx.scale)
            grad_b = (low.t() @ g).mul_(ctx.scale).t().contiguous().to(b_dt) if ctx.needs_input_grad[3] else None
            grad_a = (g_low.t() @ h).to(a_dt) if ctx.needs_input_grad[2] else None
            grad_h = (g_low @ a).to(h_dt) if ctx.needs_input_grad[1] else None
        return g, grad_h, grad_a, grad_b, None


class AdapterShape(Protocol):
    """What creating an adapter reads of its spec (models.spec.AdapterSpec)."""

    rank: int
    alpha: float
    dropout: float
    targets: list[str]


def _seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def add_adapter(
    model: nn.Module, table: LoraTable, name: str, a: AdapterShape, seed: int, loc: str = "adapter"
) -> list[str]:
    """Create adapter `name` on the layers `a.targets` names in the model's family `table`
    (not applied yet); return their paths."""
    for k, target in enumerate(a.targets):
        why = table.target_error(target)
        if why:
            raise TrainingError("user_error", f"{loc}.targets.{k}: {why}")
    blocks = model.get_submodule(table.block_prefix.split(".{i}")[0])
    paths = table.module_paths(len(blocks), a.targets)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(_seed(seed, name))
    for path in paths:
        layer = model.get_submodule(path)
        if not isinstance(layer, LoRALinear):
            if not isinstance(layer, nn.Linear):
                raise TrainingError("user_error", f"{loc}: {path} is not a linear layer")
            parent, _, attr = path.rpartition(".")
            layer = LoRALinear(layer)
            setattr(model.get_submodule(parent), attr, layer)
        layer.add(name, a.rank, a.alpha, a.dropout, gen)
    return paths


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_adapters(model: nn.Module, names: list[str]) -> None:
    """Exactly `names` (in this order) are in the forward pass from now on."""
    for layer in lora_layers(model).values():
        layer.applied = [n for n in names if n in layer.lora_A]


def is_adapter_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def adapter_params(model: nn.Module, name: str) -> list[nn.Parameter]:
    suffixes = (f".lora_A.{name}", f".lora_B.{name}")
    return [p for n, p in model.named_parameters() if n.endswith(suffixes)]


@dataclass
class Adapter:
    """One adapter as data: per targeted layer, A (rank, in) and B (out, rank), and the scale."""

    rank: int
    alpha: float
    dropout: float
    layers: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # module path -> (A, B)
    scale: float | None = None  # alpha / rank unless given (rsLoRA's alpha / sqrt(rank))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank if self.scale is None else self.scale


def extract(model: nn.Module, name: str, state: dict[str, Tensor] | None = None) -> Adapter:
    """Adapter `name` of a model as data; `state` (full-precision weights) overrides the model's."""
    out: Adapter | None = None
    for path, layer in lora_layers(model).items():
        if name not in layer.lora_A:
            continue
        a, b = layer.lora_A[name], layer.lora_B[name]
        if state is not None:
            a, b = state[f"{path}.lora_A.{name}"], state[f"{path}.lora_B.{name}"]
        scale = layer.scale[name]
        if out is None:
            out = Adapter(a.size(0), scale * a.size(0), layer.dropout[name])
        out.layers[path] = (a.detach().float().cpu().clone(), b.detach().float().cpu().clone())
    if out is None:
        raise KeyError(f"no adapter '{name}' on this model")
    return out


@torch.no_grad()
def merged_state(state: dict[str, Tensor], adapters: list[Adapter]) -> dict[str, Tensor]:
    """Base weights (adapter tensors dropped) with every adapter's scale * B A added, in fp32."""
    out = {k: v.detach().float().clone() for k, v in state.items() if not is_adapter_param(k)}
    for adapter in adapters:
        for path, (a, b) in adapter.layers.items():
            out[f"{path}.weight"] += (b.float() @ a.float()) * adapter.scaling
    return out


@torch.no_grad()
def attach_adapter(model: nn.Module, name: str, adapter: Adapter) -> None:
    """Put a loaded adapter on the model unmerged, and apply it (beside any already applied)."""
    for path, (a, b) in adapter.layers.items():
        layer = model.get_submodule(path)
        if not isinstance(layer, LoRALinear):
            parent, _, attr = path.rpartition(".")
            layer = LoRALinear(layer)  # type: ignore[arg-type]
            setattr(model.get_submodule(parent), attr, layer)
        w = layer.weight
        layer.lora_A[name] = nn.Parameter(a.to(w.device, w.dtype).clone(), requires_grad=False)
        layer.lora_B[name] = nn.Parameter(b.to(w.device, w.dtype).clone(), requires_grad=False)
        layer.scale[name] = adapter.scaling
        layer.dropout[name] = adapter.dropout
        layer.applied.append(name)
