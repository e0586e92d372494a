"""Where the weights live during training.

fp32 (and autocast) train the model's own parameters. bf16 on the CPU keeps the model in
bf16 and gives the optimizer fp32 master copies: each step copies the bf16 gradients to
the masters, updates them, and copies them back. That removes the per-op weight casts
autocast makes on every forward and backward (about an eighth of a CPU step), while the
update itself stays in fp32, so small updates are not lost to bf16 rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Weights:
    """The model's parameters as the optimizer sees them, and the copies between the two."""

    def __init__(self, model: nn.Module, master_dtype: torch.dtype | None):
        self.model = model
        self.names = [n for n, _ in model.named_parameters()]
        self.master: dict[str, nn.Parameter] | None = None
        if master_dtype is not None:
            self.master = {n: nn.Parameter(p.detach().float().clone()) for n, p in model.named_parameters()}
            model.to(master_dtype)

    def optimizer_params(self, params: list[nn.Parameter]) -> list[nn.Parameter]:
        """What the optimizer updates for these model parameters."""
        if self.master is None:
            return params
        by_id = {id(p): n for n, p in self.model.named_parameters()}
        chosen = [self.master[by_id[id(p)]] for p in params]
        for m in self.master.values():
            m.requires_grad_(False)
        for m in chosen:
            m.requires_grad_(True)
        return chosen

    def gradients_to_optimizer(self, params: list[nn.Parameter], opt_params: list[nn.Parameter]) -> None:
        if self.master is None:
            return
        for p, m in zip(params, opt_params, strict=True):
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    @torch.no_grad()
    def optimizer_to_model(self, params: list[nn.Parameter], opt_params: list[nn.Parameter]) -> None:
        if self.master is None or not params:
            return
        torch._foreach_copy_([p.data for p in params], [m.data for m in opt_params])

    def state_dict(self) -> dict[str, Tensor]:
        """Full-precision weights: the masters when there are some."""
        if self.master is None:
            return {k: v for k, v in self.model.state_dict().items()}
        return {n: m.detach() for n, m in self.master.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if self.master is None:
            self.model.load_state_dict(state)
            return
        for n, m in self.master.items():
            m.copy_(state[n])
        self.model.load_state_dict(state)  # copies with a cast to the model's dtype
