"""Weights are finite numbers: a NaN or an infinity is refused where weights come in, naming
the tensor, instead of being served (a NaN logit is no token). Checked by
`models.formats.load.load_model` (every model read, whatever its format),
`models.formats.peft.load_adapter` (every adapter) and `models.training.final.write_model`
(what a run produces)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from models.errors import UnsupportedModel

CHUNK = 1 << 24  # elements checked at once: the check's own memory stays bounded (16 MiB of bools)


def non_finite(tensors: Iterable[tuple[str, Tensor]]) -> tuple[str, int] | None:
    """The first floating-point tensor holding a NaN or an infinity, and how many it holds;
    None when every one is finite."""
    for name, t in tensors:
        if not t.is_floating_point():
            continue
        flat = t.detach().reshape(-1)
        if all(bool(torch.isfinite(part).all()) for part in flat.split(CHUNK)):
            continue
        return name, sum(int((~torch.isfinite(part)).sum()) for part in flat.split(CHUNK))
    return None


def check_finite(
    tensors: Iterable[tuple[str, Tensor]], what: str, error: Callable[[str], Exception] = UnsupportedModel
) -> None:
    """Raise `error` (UnsupportedModel by default) naming the first tensor of `what` that holds
    a NaN or an infinity."""
    found = non_finite(tensors)
    if found is not None:
        name, count = found
        raise error(f"{what}: tensor '{name}' holds {count} non-finite value(s) (NaN or infinity)")
