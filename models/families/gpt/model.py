"""A decoder-only GPT: learned positions, tied embeddings, GPT-2 initialisation, KV cache.

Parameter names follow GPT-2 (`transformer.h.N.attn.c_attn`, ...) so that `trainable`
selections read naturally and an export to the Hugging Face layout is a transpose away.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from models.families.base import DecoderModel
from models.families.gpt.config import GPTConfig
from models.layers.embedding import embed_tied
from models.layers.kv_cache import KVCache


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x: Tensor, layer: int, cache: KVCache | None, mask: Tensor | None) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # Without a mask: causal over the whole input, or (one new token after a cache)
        # attention to every cached position.
        causal = mask is None and (cache is None or cache.length == 0)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, layer: int, cache: KVCache | None, mask: Tensor | None) -> Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), layer, cache, mask))
        return x + self.drop(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """The trunk, under the GPT-2 parameter names (`transformer.wte`, `transformer.h.0...`)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)


class GPT(DecoderModel):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, include_positions: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if include_positions else n - self.transformer.wpe.weight.numel()

    def head_weight(self) -> Tensor:
        """The (vocab, n_embd) output projection: tied to the token embedding."""
        return self.transformer.wte.weight

    def trunk(self, idx: Tensor, positions: Tensor, cache: KVCache | None, mask: Tensor | None) -> Tensor:
        x = self.transformer.drop(embed_tied(self.transformer.wte, idx) + self.transformer.wpe(positions))
        for i, block in enumerate(self.transformer.h):
            x = block(x, i, cache, mask)
        return self.transformer.ln_f(x)
