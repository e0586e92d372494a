"""What every family's serving net shares (models/families/*/serving.py): the frame of a
decoding forward pass around the family's own blocks, and the net's size, device and dtype.

A serving net holds copies of its model's weights laid out for decoding: `embed` (the token
embedding, a tensor or quantized `Rows`; its device and dtype are the net's), `layers` (each
with `tensors()`) and `head` (the vocabulary projection, a `Projection`). `last_logits`
checks that the new tokens fit the context, runs the family's `_blocks` over them (their keys
and values joining the cache), and projects only the last position of each row, after the
family's `_final_norm`: the same tensor operations as the families' own code, none added.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from models.layers.kv_cache import CacheShape, KVCache, cache_end
from models.layers.projection import Projection


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, gqa: bool = False) -> Tensor:
    """Scaled dot-product attention of `q` over the cache's keys and values, in their dtype (the
    decoder's cache may hold them in bf16: models/inference/decoder.py, `kv_cache`), the result
    in `q`'s. Both casts are nothing when the dtypes agree."""
    y = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
    return y.to(q.dtype)


class ServingShape(CacheShape, Protocol):
    """What a serving net needs of a model config (GPTConfig and LlamaConfig both have it)."""

    @property
    def n_embd(self) -> int: ...


class Weights(Protocol):
    """A layer's weights, as a serving net keeps them."""

    def tensors(self) -> list[Tensor]: ...


class Rows(Protocol):
    """A token embedding kept in another form than a tensor (models/layers/quantized.py's
    Int8Rows): `rows[idx]` gives the rows in the net's dtype."""

    def __getitem__(self, idx: Tensor) -> Tensor: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def tensors(self) -> list[Tensor]: ...


class ServingNet:
    config: ServingShape
    embed: Tensor | Rows  # (vocab, n_embd)
    layers: Sequence[Weights]
    head: Projection
    # `_logits` for decode steps by other means: torch.compile (models/inference/compiled.py) or
    # C++ (models/inference/native.py); None: `_logits` itself
    decode_step: Callable[..., Tensor] | None = None

    def _blocks(
        self, idx: Tensor, positions: Tensor, cache: KVCache, mask: Tensor | None, causal: bool, adapters: Tensor | None
    ) -> Tensor:
        """The residual stream (B * T, n_embd) after every layer, for `last_logits`' arguments."""
        raise NotImplementedError

    def _final_norm(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _weights(self) -> list[Tensor]:
        """The net's tensors besides the embedding, the layers' and the head's."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    def tensors(self) -> list[Tensor]:
        """Every weight tensor of the net: the embedding's, the family's own, the head's, the layers'."""
        tensors = [self.embed] if isinstance(self.embed, Tensor) else self.embed.tensors()
        tensors += [*self._weights(), *self.head.tensors()]
        return tensors + [t for layer in self.layers for t in layer.tensors()]

    def nbytes(self) -> int:
        """The bytes of the net's weights, each tensor counted once (a quantized tied embedding
        is the head's own int8 weight)."""
        return sum({id(t): t.numel() * t.element_size() for t in self.tensors()}.values())

    @torch.inference_mode()
    def last_logits(
        self, idx: Tensor, positions: Tensor, cache: KVCache, mask: Tensor | None, adapters: Tensor | None = None
    ) -> Tensor:
        """Logits (B, V) for the last position of each row of `idx` (B, T), whose keys and
        values join `cache`; `positions` (B or 1, T). Without `mask`: causal over the new
        tokens if the cache is empty, else attention to every cached position. `adapters`
        (B,): each row's slot in the net's `adapters` (models/lora/bank.py; 0: the base
        alone); None when every row uses the base (the bank is not touched)."""
        T = idx.size(1)
        cache_end(cache, T, self.config.block_size)
        causal = mask is None and cache.length == 0 and T > 1
        decoding = T == 1 and cache.length > 0 and adapters is None  # a step, not a one-token prompt
        step = self.decode_step if decoding else None
        logits = (step or self._logits)(idx, positions, cache, mask, causal, adapters)
        cache.length += T
        return logits

    def _logits(
        self, idx: Tensor, positions: Tensor, cache: KVCache, mask: Tensor | None, causal: bool, adapters: Tensor | None
    ) -> Tensor:
        B, T = idx.shape
        x = self._blocks(idx, positions, cache, mask, causal, adapters)
        last = x.view(B, T, self.config.n_embd)[:, -1]
        return self.head(self._final_norm(last))
