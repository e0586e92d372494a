"""The decoder's KV cache (models.inference.decoder): one slot per row, rows packed at the
front, every decode step writing all rows at one shared column."""

from __future__ import annotations

import torch
from torch import Tensor

from models.layers.kv_cache import CacheShape, KVCache


class SlotCache(KVCache):
    """Keys and values for `slots` rows. Every decode step writes all rows at one shared
    column (`length`), so writes are plain slices. A row that joined while the column was
    past its prompt has a gap there, which `valid` masks out; when no row has a gap (one
    row, or rows that started together) no mask is needed. `lens` counts each row's
    tokens, its next position. When the column reaches the end of the context, rows are
    compacted (their gaps squeezed out).

    A gap is hidden by the mask, not skipped: attention still multiplies its (zero) weight
    by the value there, and a NaN or infinity times 0 is NaN. So nothing a row leaves
    behind may stay: every position a row does not hold is zero. A slot is zeroed when its
    row leaves (after the last row moved into it), and the columns a compaction frees are
    zeroed too; a gap is then always zeros, whatever an earlier request (a broken adapter,
    say) wrote there."""

    def __init__(self, config: CacheShape, slots: int, device: torch.device, dtype: torch.dtype):
        super().__init__(config, slots, device, dtype)
        self.block = config.block_size
        self.valid = torch.zeros((slots, self.block), dtype=torch.bool, device=device)
        self.lens: list[int] = []
        self.compactions = 0
        self._n = -1  # the row count the views below are of: each layer's keys and values of slots [:n]
        self._k: list[Tensor] = []
        self._v: list[Tensor] = []

    def admit(self, prompt_len: int, count: int = 1) -> KVCache:
        """The next `count` slots, as an empty cache whose writes land here (for a prefill of
        `count` prompts of `prompt_len` tokens)."""
        i = len(self.lens)
        self.lens += [prompt_len] * count
        self.valid[i : i + count] = False
        self.valid[i : i + count, :prompt_len] = True
        self.length = max(self.length, prompt_len)
        view = KVCache.__new__(KVCache)
        view.k = [k[i : i + count] for k in self.k]
        view.v = [v[i : i + count] for v in self.v]
        view.length = 0
        return view

    def prepare(self) -> tuple[Tensor, Tensor | None]:
        """Positions (n, 1) of each row's next token, and the key mask (None if not needed)."""
        n = len(self.lens)
        if self.length >= self.block:
            self._compact()
        if n != self._n:  # here, not in `update`: no branch on it inside a compiled step
            self._n, self._k, self._v = n, [t[:n] for t in self.k], [t[:n] for t in self.v]
        self.valid[:n, self.length] = True
        pos = torch.tensor(self.lens, device=self.valid.device)[:, None]
        if all(x == self.length for x in self.lens):
            return pos, None
        return pos, self.valid[:n, None, None, : self.length + 1]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the rows' keys and values at the shared column; (n, kv heads, col + 1, D) views
        of them all, from the views of the first n slots `prepare` made (six operations a layer
        where slicing the cache anew took ten)."""
        col = self.length
        keys, values = self._k[layer], self._v[layer]
        keys.narrow(2, col, 1).copy_(k)
        values.narrow(2, col, 1).copy_(v)
        return keys.narrow(2, 0, col + 1), values.narrow(2, 0, col + 1)

    def views(self) -> tuple[list[Tensor], list[Tensor]]:
        """Every layer's keys and values of the first n slots (`prepare`'s views), for a step that
        writes the new column itself (models/inference/native.py)."""
        return self._k, self._v

    def _compact(self) -> None:
        self.compactions += 1
        for r, n in enumerate(self.lens):
            cols = self.valid[r, : self.length].nonzero().squeeze(1)
            if cols.numel() == self.length:
                continue
            for cache in (self.k, self.v):
                for t in cache:
                    t[r, :, :n] = t[r, :, cols]
                    t[r, :, n : self.length] = 0
            self.valid[r] = False
            self.valid[r, :n] = True
        self.length = max(self.lens)

    def remove(self, i: int) -> None:
        """Drop row i; the last row takes its slot, and the slot it leaves is zeroed."""
        last = len(self.lens) - 1
        for cache in (self.k, self.v):
            for t in cache:
                if i != last:
                    t[i, :, : self.length] = t[last, :, : self.length]
                t[last, :, : self.length] = 0
        if i != last:
            self.valid[i] = self.valid[last]
            self.lens[i] = self.lens[last]
        self.valid[last] = False
        self.lens.pop()
        if not self.lens:
            self.length = 0
