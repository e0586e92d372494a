"""The Llama family's forward pass for serving: `models.llama.Llama` itself, in inference
mode, computing the vocabulary projection only for each row's last position.

It takes the decoder's caches as they are (`models.decoder.SlotCache` holds n_kv_head
heads per layer) and per-row positions, so rows that joined at different times rotate
their keys at their own positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.gpt import KVCache
from models.llama import Llama, LlamaConfig


class ServingLlama:
    def __init__(self, model: Llama):
        self.model = model.eval()
        self.config: LlamaConfig = model.config
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.model.head_weight().device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.head_weight().dtype

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    @torch.inference_mode()
    def last_logits(self, idx: Tensor, positions: Tensor, cache: KVCache, mask: Tensor | None) -> Tensor:
        """Logits (B, V) for the last position of each row of `idx` (B, T), whose keys and
        values join `cache`; `positions` (B or 1, T). Without `mask`: causal over the new
        tokens if the cache is empty, else attention to every cached position."""
        h = self.model.hidden(idx, positions, cache, mask)
        return self.model.logits(h[:, -1])
