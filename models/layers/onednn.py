"""fp32 matrix products of training through oneDNN on a CPU.

PyTorch's fp32 `mm` goes to MKL, which on some CPUs (AMD EPYC among them) runs well short of
the cores' AVX-512 peak, while oneDNN's fp32 matmul (the one the serving path already uses)
picks its kernels by the instruction set and ran 1.5-2.5x faster on our benchmark machine.
`linear(x, weight, bias)` is `F.linear` with the forward product and both backward products
(input and weight gradients) done by oneDNN; it falls back to `F.linear` where oneDNN cannot
run it (another device or dtype, a build without it). Results are fp32 products with another
summation order: equal to `F.linear`'s to rounding.

Not on Intel CPUs: there MKL is the vendor's own library and ran our products 7-25% faster
than oneDNN (a Xeon with AMX, 2026-12-03), so aten's `mm` keeps them (`ENABLED`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def cpu_vendor() -> str:
    """The CPU's vendor id from /proc/cpuinfo (`GenuineIntel`, `AuthenticAMD`), or ""."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""


# module switch: False keeps every product on aten's mm (MKL's, on an Intel CPU with MKL)
ENABLED = not (cpu_vendor() == "GenuineIntel" and torch.backends.mkl.is_available())
_usable: bool | None = None


def _probe() -> bool:
    try:
        a = torch.ones(2, 3)
        out = torch.ops.mkldnn._linear_pointwise(a, torch.ones(4, 3), None, "none", [], "")
        return bool(torch.equal(out, torch.full((2, 4), 3.0)))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def available(*tensors: Tensor) -> bool:
    """Whether oneDNN takes these tensors' products (CPU fp32 outside autocast, oneDNN present
    and working)."""
    global _usable
    if not ENABLED or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    if _usable is None:
        _usable = torch.backends.mkldnn.is_available() and _probe()
    return _usable


def mm_t(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """a @ b.T (+ bias) by oneDNN; a (..., K), b (N, K), either may be a strided view."""
    out: Tensor = torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")
    return out


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # The input is needed only for the weight's gradient: a frozen weight (a LoRA base)
        # keeps no copy of its input alive until the backward.
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        ctx.x_shape = x.shape
        ctx.has_bias = bias is not None
        return mm_t(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.size(-1))
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = mm_t(g, weight.t()).view(ctx.x_shape)  # the strided view: no transposed copy
        if ctx.needs_input_grad[1]:
            grad_w = mm_t(g.t(), x.reshape(-1, x.size(-1)).t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)`, its products by oneDNN where `available`."""
    if not available(x, weight):
        return F.linear(x, weight, bias)
    out: Tensor = _Linear.apply(x, weight, bias)
    return out
