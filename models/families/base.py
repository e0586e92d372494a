"""What every family's torch model is: a decoder whose forward pass is split at the final norm.

`hidden(idx, positions, cache, mask)` gives the final-norm hidden states (the family's
`trunk` runs the layers; the bounds, the default positions and the cache bookkeeping are here), `logits(h)` the
vocabulary projection of them, `head_weight()` that projection's (vocab, n_embd) weight (the
fused loss reads it directly), and `config` the family's config dataclass. Training,
generation, evaluation and the formats hold any family through this class.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers.kv_cache import KVCache, cache_end


class DecoderModel(nn.Module):
    config: Any  # the family's config dataclass (models/families/family.py `Config`)

    def hidden(
        self,
        idx: Tensor,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Final-norm hidden states (B, T, n_embd) of `idx` (B, T), whose keys and values join
        `cache`. `positions`: (T,) or (B, T) (per row for left-padded batches); by default the
        ones after the cache. Without `mask`, attention is causal."""
        T = idx.size(1)
        end = cache_end(cache, T, self.config.block_size)
        if positions is None:
            positions = torch.arange(end - T, end, device=idx.device)
        h = self.trunk(idx, positions, cache, mask)
        if cache is not None:
            cache.length += T
        return h

    def trunk(self, idx: Tensor, positions: Tensor, cache: KVCache | None, mask: Tensor | None) -> Tensor:
        """The family's forward pass up to and including the final norm (`hidden` does the rest)."""
        raise NotImplementedError

    def head_weight(self) -> Tensor:
        raise NotImplementedError

    def num_parameters(self, include_positions: bool = True) -> int:
        raise NotImplementedError

    def logits(self, h: Tensor) -> Tensor:
        return F.linear(h, self.head_weight())

    def forward(self, idx: Tensor) -> Tensor:
        """Logits for every position of a causal forward pass."""
        return self.logits(self.hidden(idx))
