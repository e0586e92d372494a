"""Optimizers, learning-rate schedules and the `trainable` selection.

Frozen parameters get `requires_grad=False` and are left out of the optimizer, so they
neither change nor hold optimizer state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.families import family
from models.families.family import Family
from models.spec import SGD, Adam, Schedule, block_range


def _matches(f: Family, selector: str, name: str, names: set[str]) -> bool:
    blocks = block_range(selector)
    if blocks is not None:
        lo, hi = blocks
        b = f.blocks.match(name)
        return b is not None and lo <= int(b.group(1)) <= hi
    return f.parts[selector](name, names)


def select_trainable(model: nn.Module, selectors: list[str], adapter: str | None = None) -> list[nn.Parameter]:
    """Unfreeze exactly the parameters the selectors name (the family's `parts`), and LoRA
    adapter `adapter` (selectors never name adapter weights: `all` is every base weight); return them."""
    f = family(str(getattr(model.config, "arch")))  # noqa: B009 (nn.Module's attributes are untyped)
    names = {n for n, _ in model.named_parameters() if ".lora_A." not in n and ".lora_B." not in n}
    chosen = []
    own = (f".lora_A.{adapter}", f".lora_B.{adapter}")
    for name, p in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            p.requires_grad_(adapter is not None and name.endswith(own))
        else:
            p.requires_grad_(any(_matches(f, s, name, names) for s in selectors))
        if p.requires_grad:
            chosen.append(p)
    return chosen


def _impl_kwargs(param: Tensor) -> dict[str, bool]:
    # The fused kernels run one pass over all tensors (CPU and CUDA); foreach elsewhere, and
    # on a sharded run's DTensors (FSDP, with `placements`): DTensor has no fused SGD.
    fused = param.device.type in ("cpu", "cuda") and getattr(param, "placements", None) is None
    return {"fused": True} if fused else {"foreach": True}


def build_optimizer(spec: SGD | Adam, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """Weight decay applies to matrices and embeddings only, never to biases and norms."""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": spec.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    kw = _impl_kwargs(params[0])
    if isinstance(spec, SGD):
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, **kw)
    cls = torch.optim.AdamW if spec.type == "adamw" else torch.optim.Adam
    return cls(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps, **kw)


def lr_factor(schedule: Schedule, step: int, total: int) -> float:
    """Multiplier of the base learning rate for 0-based `step` of `total` steps.

    Linear warmup (step + 1) / warmup_steps, then constant 1, or a linear or cosine decay
    from 1 to min_lr_ratio over the remaining steps.
    """
    warmup = schedule.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if schedule.type == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = schedule.min_lr_ratio
    if schedule.type == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clipped_step(optimizer: torch.optim.Optimizer, grads: list[Tensor], max_norm: float | None, norm: float) -> None:
    """`optimizer.step()` on the gradients scaled to a total norm of at most `max_norm`.

    The factor is torch's `clip_grads_with_norm_`'s, max_norm / (norm + 1e-6), applied only
    where it is below 1. A fused optimizer applies it inside its own pass over the gradients,
    as the divisor `grad_scale` it otherwise takes from `torch.amp.GradScaler`: a separate
    multiplication of every gradient cost 2% of a CPU training step.
    """
    factor = 1.0 if max_norm is None else max_norm / (norm + 1e-6)
    if factor >= 1.0:
        optimizer.step()
    elif all(group.get("fused") for group in optimizer.param_groups):  # the groups' own setting, as step() reads it
        optimizer.grad_scale = torch.tensor(1.0 / factor)  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            optimizer.grad_scale = None  # type: ignore[attr-defined]
    else:
        torch._foreach_mul_(grads, factor)
        optimizer.step()
