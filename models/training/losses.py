"""Training objectives and the L1/L2 regularization terms.

A loss scores next-token predictions: `causal_lm` every real token, `cross_entropy` only
the completion tokens of supervised records (with optional label smoothing). Logits are
computed only where a loss is taken, so prompt tokens cost no vocabulary projection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from models.data.streams import IGNORE, Batch
from models.families.build import Model
from models.layers.linear_ce import linear_cross_entropy
from models.spec import CausalLMLoss, CrossEntropyLoss


def _next_token_loss(model: Model, idx: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    h = model.hidden(idx)
    keep = targets != IGNORE
    if bool(keep.all()):
        h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    else:
        h, targets = h[keep], targets[keep]
    if h.device.type == "cuda":  # fused kernels already; a loop over slabs would be launch-bound
        return F.cross_entropy(model.logits(h).float(), targets, label_smoothing=label_smoothing)
    weight = model.head_weight()
    if torch.is_autocast_enabled(h.device.type):  # the projection in the autocast dtype, as F.linear would be
        dtype = torch.get_autocast_dtype(h.device.type)
        h, weight = h.to(dtype), weight.to(dtype)
    return linear_cross_entropy(h, weight, targets, label_smoothing)


def causal_lm(model: Model, batch: Batch, spec: CausalLMLoss | CrossEntropyLoss) -> Tensor:
    """Mean next-token negative log-likelihood over every real token."""
    return _next_token_loss(model, batch.idx, batch.targets)


def cross_entropy(model: Model, batch: Batch, spec: CausalLMLoss | CrossEntropyLoss) -> Tensor:
    """Mean cross-entropy over completion tokens (all tokens for a text corpus)."""
    smoothing = spec.label_smoothing if isinstance(spec, CrossEntropyLoss) else 0.0
    return _next_token_loss(model, batch.idx, batch.completion_targets, smoothing)


LossFn = Callable[[Model, Batch, CausalLMLoss | CrossEntropyLoss], Tensor]
LOSSES: dict[str, LossFn] = {"causal_lm": causal_lm, "cross_entropy": cross_entropy}
# The targets each loss scores (every one but IGNORE, weighted alike): a loss over a part of
# a batch is its share of the whole batch's loss in proportion to these (models/training/distributed.py).
SCORED: dict[str, Callable[[Batch], Tensor]] = {
    "causal_lm": lambda b: b.targets,
    "cross_entropy": lambda b: b.completion_targets,
}


def regularized(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The weights L1/L2 apply to: trainable matrices and embeddings (not biases or norms)."""
    return [p for p in params if p.requires_grad and p.dim() >= 2]


def regularization_term(params: Iterable[torch.nn.Parameter], l1: float, l2: float) -> Tensor:
    """λ1·Σ|w| + λ2·Σw² over `regularized(params)`: the value the gradients below add."""
    ps = regularized(params)
    total = torch.zeros(())
    for p in ps:
        total = total + l1 * p.detach().abs().sum().float() + l2 * p.detach().pow(2).sum().float()
    return total


@torch.no_grad()
def add_regularization_grads(params: Iterable[torch.nn.Parameter], l1: float, l2: float) -> None:
    """Add d/dw (λ1·Σ|w| + λ2·Σw²) = λ1·sign(w) + 2·λ2·w to the gradients, in place.

    Adding the analytic gradient is exact and much cheaper than building the penalty
    into the autograd graph every step.
    """
    ps: list[Tensor] = [p for p in regularized(params) if p.grad is not None]
    if not ps:
        return
    grads = [p.grad for p in ps if p.grad is not None]
    if l2:
        torch._foreach_add_(grads, ps, alpha=2.0 * l2)
    if l1:
        torch._foreach_add_(grads, torch._foreach_sign(ps), alpha=l1)
