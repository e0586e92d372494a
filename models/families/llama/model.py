"""A Llama-family decoder: RMSNorm, rotary positions, SwiGLU, grouped-query attention.

One module covers Llama 2/3, Mistral (without a sliding window shorter than the context),
SmolLM2, Qwen2 (`attention_bias`: q/k/v projections with a bias) and Qwen3 (`qk_norm`:
an RMSNorm over each head of q and k, and a `head_dim` independent of n_embd / n_head).

Parameter names are the Hugging Face ones (`model.layers.0.self_attn.q_proj.weight`, ...),
so importing and exporting a checkpoint is a copy of its state dict and PEFT adapter keys
map one to one. Numerics follow the reference where it matters for parity: the norm is
computed in fp32 and cast back before its weight is applied, and the rotary tables are
computed in fp32 from the same inverse frequencies.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.families.base import DecoderModel
from models.families.llama.config import LlamaConfig
from models.layers import onednn
from models.layers.embedding import embed_tied
from models.layers.kv_cache import KVCache


def inverse_frequencies(config: LlamaConfig) -> Tensor:
    """Rotary inverse frequencies (head_dim / 2,) in fp32, with llama3 or linear scaling."""
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = config.rope_scaling
    if s is None:
        return inv
    factor = float(s["factor"])
    if s["type"] == "linear":
        return inv / factor
    # llama3: long wavelengths slowed by `factor`, short ones kept, the band between interpolated.
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return torch.where(medium, smoothed, scaled)


def project(m: nn.Module, x: Tensor) -> Tensor:
    """`m(x)`; a plain `nn.Linear` (not a LoRA wrapper) through `onednn.linear`."""
    if type(m) is nn.Linear:
        return onednn.linear(x, m.weight, m.bias)
    out: Tensor = m(x)
    return out


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding, rotate-half convention: x·cos + rotate_half(x)·sin, rotate_half
    taking (x1, x2) to (-x2, x1). `sin` comes with its first half negated (the model's
    `rope_sin`), so that rotate_half(x)·sin is exactly roll(x, D/2)·sin: one pass where the
    negation and concatenation of the halves took two. The products and the sum are rounded
    as transformers rounds them (a fused multiply-add moved bf16 logits by up to 0.4)."""
    return x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin


def _inverse_rms(h: Tensor, eps: float) -> Tensor:
    """rsqrt(mean(h²) + eps) over the last dimension, (…, 1)."""
    return torch.rsqrt(h.pow(2).mean(-1, keepdim=True).add_(eps))


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """`weight * (x·rsqrt(mean(x²) + eps)).to(x.dtype)`: normalised in fp32, cast back, then
    scaled, as transformers' `LlamaRMSNorm`."""
    h = x.float()
    return weight * (h * _inverse_rms(h, eps)).to(x.dtype)


class _RMSNorm(torch.autograd.Function):
    """`rms_norm` with a written-out backward: it keeps only x and the (…, 1) reciprocal
    norms and recomputes the rest in fp32, where autograd's chain of the forward's ops kept
    an fp32 copy of x and ran about twice the passes (a quarter of the norm's forward +
    backward time)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        h = x.float()
        r = _inverse_rms(h, eps)
        ctx.save_for_backward(x, r, weight)
        return weight * (h * r).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, r, weight = ctx.saved_tensors
        n = x.float() * r  # the normalised input, fp32
        g = grad.float()  # (an alias when fp32: not written to)
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (g * n).reshape(-1, n.size(-1)).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            gn = g * weight.float()
            # d/dx of n = x·r: r·(gn - n·mean(gn·n))
            dot = (gn * n).mean(-1, keepdim=True)
            grad_x = gn.addcmul_(n, dot, value=-1.0).mul_(r).to(x.dtype)
        return grad_x, grad_w, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            out: Tensor = _RMSNorm.apply(x, self.weight, self.eps)
            return out
        return rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        c, bias = config.n_embd, config.attention_bias
        self.q_proj = nn.Linear(c, self.n_head * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(c, self.n_kv_head * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(c, self.n_kv_head * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, c, bias=False)
        if config.qk_norm:
            self.q_norm: RMSNorm | None = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm: RMSNorm | None = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.dropout = config.dropout

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], layer: int, cache: KVCache | None, mask: Tensor | None
    ) -> Tensor:
        B, T, _ = x.shape
        D = self.head_dim
        q = project(self.q_proj, x).view(B, T, self.n_head, D)
        k = project(self.k_proj, x).view(B, T, self.n_kv_head, D)
        v = project(self.v_proj, x).view(B, T, self.n_kv_head, D).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope  # (B or 1, 1, T, D); sin's first half negated
        q, k = rotary(q.transpose(1, 2), cos, sin), rotary(k.transpose(1, 2), cos, sin)
        causal = mask is None and (cache is None or cache.length == 0)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        p = self.dropout if self.training else 0.0
        gqa = self.n_kv_head != self.n_head
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal, enable_gqa=gqa)
        return project(self.o_proj, y.transpose(1, 2).reshape(B, T, self.n_head * D))


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return project(self.down_proj, F.silu(project(self.gate_proj, x)) * project(self.up_proj, x))


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], layer: int, cache: KVCache | None, mask: Tensor | None
    ) -> Tensor:
        x = x + self.drop(self.self_attn(self.input_layernorm(x), rope, layer, cache, mask))
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class Trunk(nn.Module):
    """Everything but the output head, under the Hugging Face names (`model.embed_tokens`, ...)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.rms_norm_eps)


class Llama(DecoderModel):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = Trunk(config)
        self.drop = nn.Dropout(config.dropout)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Rotary tables for every position, fp32-computed; not weights (not in the state dict).
        # The sines' first half is negated, as `rotary` takes them.
        angles = torch.arange(config.block_size, dtype=torch.float32)[:, None] * inverse_frequencies(config)
        self.rope_cos = nn.Buffer(torch.cat((angles, angles), dim=-1).cos(), persistent=False)
        self.rope_sin = nn.Buffer(torch.cat((-angles.sin(), angles.sin()), dim=-1), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # residual projections, scaled as in GPT-2
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, include_positions: bool = True) -> int:
        """All parameters (a tied head counted once). Rotary positions have none."""
        return sum(p.numel() for p in self.parameters())

    def head_weight(self) -> Tensor:
        """The (vocab, n_embd) output projection: the token embedding when tied."""
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def trunk(self, idx: Tensor, positions: Tensor, cache: KVCache | None, mask: Tensor | None) -> Tensor:
        """`positions`: (T,) or (B, T) rotary positions (per row for left-padded batches)."""
        x = self.model.embed_tokens(idx) if self.lm_head is not None else embed_tied(self.model.embed_tokens, idx)
        cos, sin = self.rope_cos[positions].to(x.dtype), self.rope_sin[positions].to(x.dtype)
        per_row = positions.dim() == 2
        rope = (cos[:, None], sin[:, None]) if per_row else (cos[None, None], sin[None, None])
        x = self.drop(x)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, rope, i, cache, mask)
        return self.model.norm(x)
