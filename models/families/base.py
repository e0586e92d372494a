"""What every family's torch model is: a decoder whose forward pass is split at the final norm.

`hidden(idx, positions, cache, mask)` gives the final-norm hidden states, `logits(h)` the
vocabulary projection of them, `head_weight()` that projection's (vocab, n_embd) weight (the
fused loss reads it directly), and `config` the family's config dataclass. Training,
generation, evaluation and the formats hold any family through this class.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from models.layers.kv_cache import KVCache


class DecoderModel(nn.Module):
    config: Any  # the family's config dataclass (models/families/family.py `Config`)

    def hidden(
        self,
        idx: Tensor,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
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
