"""A linear projection laid out for the few rows of decoding (every family's serving path).

On a CPU with oneDNN (fp32), the weight is reordered once into oneDNN's blocked layout for
batches of a few rows, and a GELU can run as a post-op of the matmul. For 8 decoding rows
that layout is ~1.5x faster than MKL's `addmm` on the transformer's projections and ~4x on
the vocabulary projection (benchmarks/RESULTS.md); one row costs about the same. Elsewhere
(CUDA, other dtypes, no oneDNN) it is one `addmm` against the weight stored transposed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.layers import onednn

LAYOUTS = ("packed", "plain", "rows")
PACK_ROWS = 8  # the batch size oneDNN lays the weights out for; 1-16 rows all run well with it


@torch.library.custom_op("stagecraft::packed_linear", mutates_args=())
def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None, gelu: bool) -> Tensor:
    """oneDNN's product with a packed weight, as one opaque operation for torch.compile
    (models/inference/compiled.py), which cannot lower the packed layout itself."""
    post, algorithm = ("gelu", "tanh") if gelu else ("none", "")
    y: Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, post, [], algorithm)
    return y


@packed_linear.register_fake
def _packed_linear_shape(x: Tensor, packed: Tensor, bias: Tensor | None, gelu: bool) -> Tensor:
    return x.new_empty((*x.shape[:-1], packed.size(0)))


class Projection:
    """`x @ weight.T + bias` (GELU-tanh of it with `gelu=True`) for the few rows of decoding, its
    weight in one of LAYOUTS:

    - "packed": oneDNN's blocked layout for `rows` rows, where oneDNN runs fp32 on a CPU; else "plain";
    - "plain": the (inputs, outputs) transpose, `x @ weight_t` (MKL's faster layout for few rows);
      the layout models/layers/quantized.py reads;
    - "rows": (outputs, inputs) as the model holds it, the layout of native decode steps' own fp32
      product (models/inference/native_step.cpp); in eager calls, oneDNN's product on the plain
      weight where models/layers/onednn.py enables it, else `F.linear`.
    """

    packed: Tensor | None = None
    weight_t: Tensor | None = None
    weight: Tensor | None = None

    def __init__(self, weight: Tensor, bias: Tensor | None, layout: str = "packed", rows: int = PACK_ROWS):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        self.bias = None if bias is None else bias.detach().clone()
        w = weight.detach()
        if layout == "rows":
            self.weight = w.clone(memory_format=torch.contiguous_format)
            return
        cpu_fp32 = w.device.type == "cpu" and w.dtype == torch.float32
        if layout == "packed" and cpu_fp32 and torch.backends.mkldnn.is_available():
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), rows)
            except RuntimeError:  # a build or CPU without the fp32 oneDNN matmul: plain addmm below
                self.packed = None
        if self.packed is None:
            self.weight_t = w.t().contiguous()

    def __call__(self, x: Tensor, gelu: bool = False) -> Tensor:
        if self.packed is not None:
            if torch.compiler.is_compiling():
                return packed_linear(x, self.packed, self.bias, gelu)
            post, algorithm = ("gelu", "tanh") if gelu else ("none", "")
            y: Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, post, [], algorithm)
            return y
        if self.weight is not None:
            dnn = onednn.available(x, self.weight)
            y = onednn.mm_t(x, self.weight, self.bias) if dnn else F.linear(x, self.weight, self.bias)
        else:
            assert self.weight_t is not None
            y = x @ self.weight_t if self.bias is None else torch.addmm(self.bias, x, self.weight_t)
        return F.gelu(y, approximate="tanh") if gelu else y

    def dense(self) -> Tensor | None:
        """The (outputs, inputs) weight (a view) in the plain or rows layout; None when packed."""
        if self.weight is not None:
            return self.weight
        return None if self.weight_t is None else self.weight_t.t()

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.packed, self.weight_t, self.weight, self.bias) if t is not None]
