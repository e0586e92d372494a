"""Weight-only int8, int4 and nf4 projections for serving on a CPU: int8 and int4 through
PyTorch's own kernels, nf4 through bitsandbytes' (models/layers/nf4.py).

A serving net (models/layers/serving.py) built with plain `Projection`s can have them replaced
here (`quantize`): every projection of its layers in int8, int4 or nf4, the vocabulary
projection (head) in int8 for int8 and int4 and in nf4 for nf4 (`HEADS`), and the token
embedding in int8 rows (`Int8Rows`, looked up as fp32; a tied embedding shares an int8 head's
weight, so it is held once, as in the model's own file). The norms, the rotary tables and the KV
cache stay in the net's dtype (fp32); so do LoRA adapters, whose products the bank adds in fp32
on top of the quantized base product (models/lora/bank.py).

- int8: symmetric, one scale per output channel; `torch.ops.aten._weight_int8pack_mm`. That
  kernel crashed the process (SIGSEGV, torch 2.13) on two or more rows of a fan-in that is not
  a multiple of 16 (`K_TILE`): such a weight gets a second copy with zero inputs up to one,
  which the kernel reads, the activations padded alike (a model of `n_embd` 40, say).
- int4: asymmetric, a scale and a zero per `group_size` (32, 64 or 128) inputs of each
  output channel, dequantized as `(q - 8) * scale + zero`;
  `aten._convert_weight_to_int4pack_for_cpu` lays the weight out once,
  `aten._weight_int4pack_mm_for_cpu` multiplies. A projection whose fan-in no group size
  divides stays int8; one whose outputs are not a multiple of 16 (the kernel's tile) is
  padded with zero rows, which are cut from its output.

Both kernels are vectorised (AVX2 / AVX-512) for bf16 and fp16 activations only: with fp32
ones they fall back to a scalar loop, 10-30x slower than the fp32 matmul. So a projection
takes fp32 in, multiplies in bf16 activations (accumulating in fp32 inside the kernel) and
hands fp32 out; its scales (and zeros) are bf16, the dtype the kernels take them in, and the
weights are rounded against those stored values. Measured here against oneDNN's fp32 matmul
and torchao (benchmarks/RESULTS.md, "Quantized serving"): torchao 0.18 adds no CPU kernel of
its own (its int4 CPU layout calls the same aten op; its int8 weight-only path dequantizes
the weight at every call), so these aten ops are the maintained path, without a dependency.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from models.errors import UnsupportedModel
from models.layers import nf4
from models.layers.projection import Projection
from models.layers.serving import ServingNet

PRECISIONS = ("fp32", "int8", "int4", "nf4")  # fp32: the model's own weights (its dtype)
GROUP_SIZES = (32, 64, 128)
ACT = torch.bfloat16  # the activations and scales the kernels run fast with
N_TILE = 16  # int4: the packed weight's output channels come in tiles of 16
K_TILE = 16  # int8: torch's kernel reads the inputs in tiles of 16 (and crashed off them)
HEADS = {"int8": "int8", "int4": "int8", "nf4": "nf4"}  # the vocabulary head's precision for each


class Int8Projection(Projection):
    """`x @ weight.T + bias` with the weight in int8, one bf16 scale per output channel."""

    kernel_weight: Tensor | None = None  # the weight with zero inputs up to a multiple of K_TILE, if it needs them

    def __init__(self, weight: Tensor, bias: Tensor | None):
        self.bias = None if bias is None else bias.detach().clone()
        w = weight.detach().float()
        scale = (w.abs().amax(1) / 127).clamp(min=torch.finfo(ACT).tiny).to(ACT)
        self.qweight = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.scales = scale
        if self.qweight.size(1) % K_TILE:
            self.kernel_weight = F.pad(self.qweight, (0, -self.qweight.size(1) % K_TILE))

    def _product(self, x: Tensor) -> Tensor:
        w = self.qweight if self.kernel_weight is None else self.kernel_weight
        if w.size(1) != x.size(-1):
            x = F.pad(x, (0, w.size(1) - x.size(-1)))
        y: Tensor = torch.ops.aten._weight_int8pack_mm(x.to(ACT), w, self.scales)
        return y

    def __call__(self, x: Tensor, gelu: bool = False) -> Tensor:
        y = self._product(x)
        y = y.to(x.dtype) if self.bias is None else torch.add(self.bias, y)  # bf16 + fp32 bias: fp32, one operation
        return F.gelu(y, approximate="tanh") if gelu else y

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.qweight, self.kernel_weight, self.scales, self.bias) if t is not None]


class Int4Projection(Int8Projection):
    """`x @ weight.T + bias` with the weight in 4 bits, a bf16 scale and zero per group of inputs."""

    def __init__(self, weight: Tensor, bias: Tensor | None, group_size: int):
        self.bias = None if bias is None else bias.detach().clone()
        self.out, fan_in = weight.shape
        self.group = group_size
        pad = -self.out % N_TILE
        w = F.pad(weight.detach().float(), (0, 0, 0, pad)).view(self.out + pad, fan_in // group_size, group_size)
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=torch.finfo(ACT).tiny).to(ACT)
        zero = (lo + 8 * scale.float()).to(ACT)  # the value q = 8 stands for
        q = torch.round((w - zero.float()) / scale.float() + 8).clamp(0, 15).to(torch.int32)
        self.qweight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.view(self.out + pad, fan_in), 1)
        # (groups, out, 2): each group's scale and zero per output channel, as the kernel reads them
        self.scales = torch.cat([scale, zero], -1).transpose(0, 1).contiguous()

    def _product(self, x: Tensor) -> Tensor:
        y: Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(ACT), self.qweight, self.group, self.scales)
        return y if y.size(-1) == self.out else y[:, : self.out]


class Nf4Projection(Int8Projection):
    """`x @ weight.T + bias` with the weight in NF4 (models/layers/nf4.py: bitsandbytes' codes and
    fused CPU kernel), a bf16 absmax per 64 inputs of each output channel."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        self.bias = None if bias is None else bias.detach().clone()
        self.out = weight.size(0)
        self.qweight, self.scales, self.padded = nf4.pack(weight)

    def _product(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.size(-1)).to(ACT)
        y: Tensor = torch.ops.stagecraft.nf4_linear(flat, self.qweight, self.scales, self.padded)
        if self.padded != self.out:
            y = y[:, : self.out]
        return y.view(*x.shape[:-1], self.out)


class Int8Rows:
    """A token embedding in int8, one bf16 scale per row (a token), looked up as fp32 rows:
    `rows[idx]` is what `embedding[idx]` was, to the int8 rounding of each row."""

    def __init__(self, qweight: Tensor, scales: Tensor):
        self.qweight, self.scales = qweight, scales  # (vocab, n_embd) int8, (vocab,) bf16

    @classmethod
    def of(cls, weight: Tensor) -> Int8Rows:
        q = Int8Projection(weight, None)
        return cls(q.qweight, q.scales)

    def __getitem__(self, idx: Tensor) -> Tensor:
        return self.qweight[idx].float() * self.scales[idx].float().unsqueeze(-1)

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # what a lookup hands the net

    def tensors(self) -> list[Tensor]:
        return [self.qweight, self.scales]


def int4_group(fan_in: int, group_size: int) -> int | None:
    """The group size an int4 projection of `fan_in` inputs gets: `group_size` if it divides
    `fan_in`, else the largest of GROUP_SIZES below it that does; None if none does."""
    fits = [g for g in GROUP_SIZES if g <= group_size and fan_in % g == 0]
    return max(fits) if fits else None


def quantized(p: Projection, precision: str, group_size: int = 64) -> Projection:
    """The projection `p` (the plain or rows layout) in `precision` ("int8", "int4" or "nf4"); a
    fan-in that int4's groups or NF4's blocks do not divide stays int8."""
    weight = p.dense()
    if weight is None:
        raise ValueError("a projection in oneDNN's packed layout cannot be quantized (its weight is not kept)")
    if precision == "nf4":
        return Nf4Projection(weight, p.bias) if weight.size(1) % nf4.BLOCK == 0 else Int8Projection(weight, p.bias)
    group = int4_group(weight.size(1), group_size) if precision == "int4" else None
    if group is not None:
        return Int4Projection(weight, p.bias, group)
    return Int8Projection(weight, p.bias)


def quantize(net: ServingNet, precision: str, group_size: int = 64) -> None:
    """Replace, in place, every projection of `net`'s layers by its `precision` ("int8", "int4"
    or "nf4") version, the head by its `HEADS[precision]` one and the embedding by int8 rows
    (an int8 head's own when the two are tied). `net` must have been built in the plain or rows
    layout (not oneDNN's packed one); UnsupportedModel off a CPU (the kernels are CPU ones)."""
    if precision not in PRECISIONS[1:]:
        raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS[1:])}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"int4 group size {group_size}: one of {', '.join(map(str, GROUP_SIZES))}")
    if net.device.type != "cpu":
        raise UnsupportedModel(f"{precision} serving runs on a CPU (torch's CPU kernels), not on {net.device.type}")
    for layer in net.layers:
        for f in dataclasses.fields(layer):  # type: ignore[arg-type]  # every family's Layer is a dataclass
            value = getattr(layer, f.name)
            if isinstance(value, Projection):
                setattr(layer, f.name, quantized(value, precision, group_size))
    head_weight = net.head.dense()
    assert isinstance(net.embed, Tensor) and head_weight is not None
    tied = head_weight.shape == net.embed.shape and torch.equal(head_weight, net.embed)
    net.head = head = quantized(net.head, HEADS[precision])
    assert isinstance(head, Int8Projection)
    shared = tied and type(head) is Int8Projection  # the embedding looks its rows up in the head's int8 weight
    net.embed = Int8Rows(head.qweight, head.scales) if shared else Int8Rows.of(net.embed)
