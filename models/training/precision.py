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

from models.errors import TrainingError


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
            m.grad = None  # an earlier phase's kept gradient buffer, or none
        for m in chosen:
            m.requires_grad_(True)
        return chosen

    def gradients_to_optimizer(self, params: list[nn.Parameter], opt_params: list[nn.Parameter]) -> None:
        """The model's gradients into the optimizer's: with masters, a copy into fp32 buffers
        kept from step to step (fresh ones each step cost their page faults: the copy took
        about twice as long), the model's own gradients released."""
        if self.master is None:
            return
        dst, src = [], []
        for p, m in zip(params, opt_params, strict=True):
            if p.grad is None:
                m.grad = None  # no gradient this step: the optimizer skips it
                continue
            if m.grad is None:
                m.grad = torch.empty_like(m)
            dst.append(m.grad)
            src.append(p.grad)
            p.grad = None
        if dst:
            torch._foreach_copy_(dst, src)

    def clear_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """After the update. The masters' gradient buffers stay (the next step overwrites them)."""
        if self.master is None:
            optimizer.zero_grad(set_to_none=True)

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


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("user_error", "device: cuda requested but no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. auto: bf16 on CUDA and on CPUs with bf16 kernels."""
    if name == "fp32":
        return None
    if name == "fp16":
        if device.type != "cuda":
            raise TrainingError("user_error", "precision: fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        return torch.float16
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
