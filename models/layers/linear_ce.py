"""Cross-entropy over the vocabulary projection, with the gradient computed in the forward pass.

The plain route (logits → fp32 copy → log_softmax → NLL, then the same passes backwards)
walks the (tokens × vocab) matrix about eight times and keeps fp32 copies of it; on a CPU
that is a tenth of a training step. Here the logits stay in the model's dtype, each slab
of rows is converted to fp32 once (small enough to stay in cache), and its softmax
gradient is written back over the logits, so backward is just the two matmuls.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.layers import onednn

SLAB_ELEMENTS = 1 << 19  # fp32 elements per slab of rows: 2 MiB


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, targets: Tensor, smoothing: float) -> Tensor:
        fast = onednn.available(h, weight)  # fp32 on a CPU: the three products by oneDNN
        ctx.fast = fast
        logits = onednn.mm_t(h, weight) if fast else h @ weight.t()
        n, vocab = logits.shape
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        losses = torch.empty(n, dtype=torch.float32, device=h.device)
        rows = max(1, SLAB_ELEMENTS // vocab)
        # bf16 logits: each slab converted into one fp32 buffer (not a fresh one per slab);
        # fp32 logits are worked on in place
        slab = None if logits.dtype == torch.float32 else logits.new_empty(min(rows, n), vocab, dtype=torch.float32)
        for s in range(0, n, rows):
            z = logits[s : s + rows] if slab is None else slab[: min(rows, n - s)].copy_(logits[s : s + rows])
            t = targets[s : s + rows, None]
            lse = torch.logsumexp(z, dim=-1, keepdim=True)
            nll = lse - z.gather(1, t)
            if smoothing:
                nll = (1.0 - smoothing) * nll + smoothing * (lse - z.mean(dim=-1, keepdim=True))
            losses[s : s + rows] = nll.squeeze(1)
            if want_grad:
                # d(mean loss)/dz = (softmax(z) - (1 - ε)·onehot - ε/V) / n
                p = z.sub_(lse).exp_()
                if smoothing:
                    p.sub_(smoothing / vocab)
                p.scatter_add_(1, t, torch.full(t.shape, smoothing - 1.0, device=p.device))
                logits[s : s + rows] = p.mul_(1.0 / n)
        ctx.save_for_backward(h, weight, logits if want_grad else logits[:0])
        return losses.mean()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        h, weight, g = ctx.saved_tensors
        if float(grad) != 1.0:
            g = g * grad.to(g.dtype)
        grad_h = grad_w = None
        if ctx.fast:
            if ctx.needs_input_grad[0]:
                grad_h = onednn.mm_t(g, weight.t())
            if ctx.needs_input_grad[1]:
                grad_w = onednn.mm_t(g.t(), h.t())
        else:
            grad_h = g @ weight if ctx.needs_input_grad[0] else None
            grad_w = g.t() @ h if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None, None


def linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """mean CE(h @ weight.T, targets) with label smoothing; h (N, C), weight (V, C), targets (N,).

    Equals `F.cross_entropy(F.linear(h, weight).float(), targets, label_smoothing=...)`.
    """
    out: Tensor = _LinearCrossEntropy.apply(h, weight, targets, label_smoothing)
    return out
