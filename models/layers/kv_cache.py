"""The KV cache every family's attention writes to (training-time generation and serving)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class CacheShape(Protocol):
    """What a KV cache needs of a model config (GPTConfig and LlamaConfig both have it)."""

    @property
    def n_layer(self) -> int: ...

    @property
    def block_size(self) -> int: ...

    @property
    def n_kv_head(self) -> int: ...

    @property
    def head_dim(self) -> int: ...


class KVCache:
    """Preallocated keys and values for every layer: (batch, kv head, positions, head_dim),
    for `positions` (default block_size) positions."""

    def __init__(
        self, config: CacheShape, batch: int, device: torch.device, dtype: torch.dtype, positions: int | None = None
    ):
        shape = (batch, config.n_kv_head, positions or config.block_size, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0  # positions filled so far

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = self.length + k.size(2)
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def cache_end(cache: KVCache | None, new: int, block_size: int) -> int:
    """The position after `new` tokens join `cache` (after them alone without a cache);
    ValueError past `block_size`. Checked on the host: no device sync."""
    end = (cache.length if cache is not None else 0) + new
    if end > block_size:
        raise ValueError(f"sequence of {end} tokens is longer than block_size {block_size}")
    return end
