"""The Llama family's forward pass laid out for serving: the same function as
`models.families.llama.model.Llama` with a KV cache, in fewer operations per token.

- q, k and v are one projection (their weights concatenated), and so are the SwiGLU's
  gate and up: two matmuls fewer per layer. Every projection is a
  `models.layers.projection.Projection`, so on a CPU with oneDNN (fp32) its weight is laid out
  once for batches of a few rows, as on the GPT path.
- No `nn.Module` calls and no dropout; the output projection runs only for the
  positions whose next token is wanted.

It takes the decoder's caches as they are (`models.inference.slot_cache.SlotCache` holds n_kv_head
heads per layer) and per-row positions, so rows that joined at different times rotate
their keys at their own positions. The weights are copies (the Llama can be dropped);
logits agree with `Llama` to float rounding (tests/models/families/llama/test_model.py). `last_logits` and
the net's size, device and dtype are every family's (models/layers/serving.py).

LoRA adapters join through `self.adapters` (models/lora/bank.py), whose fused groups
mirror the fused projections: an adapter's q, k and v products land in their slices of
the qkv output, gate and up in theirs of gate-up (before the norms, rotation and SiLU,
as in the unfused model); `last_logits(..., adapters=rows)` gives each row its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.families.llama.config import LlamaConfig
from models.families.llama.model import Llama, rms_norm, rotary
from models.layers.kv_cache import KVCache
from models.layers.projection import Projection
from models.layers.serving import ServingNet, attention
from models.lora.bank import AdapterBank


@dataclass
class Layer:
    ln1: Tensor
    qkv: Projection  # C -> (H + 2 KV) D
    q_norm: Tensor | None
    k_norm: Tensor | None
    o: Projection  # H D -> C
    ln2: Tensor
    gate_up: Projection  # C -> 2 I
    down: Projection  # I -> C

    def tensors(self) -> list[Tensor]:
        norms = [t for t in (self.ln1, self.ln2, self.q_norm, self.k_norm) if t is not None]
        return norms + [t for p in (self.qkv, self.o, self.gate_up, self.down) for t in p.tensors()]


class ServingLlama(ServingNet):
    def __init__(self, model: Llama, layout: str = "packed"):
        """`layout`: the fp32 projections' (models.layers.projection.LAYOUTS)."""
        self.config: LlamaConfig = model.config
        sd = {k: v.detach() for k, v in model.state_dict().items()}
        self.layers: list[Layer] = []
        for i in range(self.config.n_layer):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            qkv_w = torch.cat([sd[a + f"{n}_proj.weight"] for n in "qkv"])
            qkv_b = torch.cat([sd[a + f"{n}_proj.bias"] for n in "qkv"]) if self.config.attention_bias else None
            gate_up = torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]])
            qn, kn = sd.get(a + "q_norm.weight"), sd.get(a + "k_norm.weight")
            self.layers.append(
                Layer(
                    sd[p + "input_layernorm.weight"].clone(),
                    Projection(qkv_w, qkv_b, layout),
                    None if qn is None else qn.clone(),
                    None if kn is None else kn.clone(),
                    Projection(sd[a + "o_proj.weight"], None, layout),
                    sd[p + "post_attention_layernorm.weight"].clone(),
                    Projection(gate_up, None, layout),
                    Projection(sd[p + "mlp.down_proj.weight"], None, layout),
                )
            )
        self.embed = sd["model.embed_tokens.weight"].clone()
        self.norm = sd["model.norm.weight"].clone()
        self.head = Projection(model.head_weight().detach(), None, layout)
        self.cos, self.sin = model.rope_cos.clone(), model.rope_sin.clone()
        self._cpu_fp32 = self.device.type == "cpu" and self.dtype == torch.float32
        self._gqa = self.config.n_kv_head != self.config.n_head  # a bool here: compiled, a SymBool
        self._adapter_bank()

    def _adapter_bank(self) -> None:
        c = self.config
        C, inter, q_out, kv_out = c.n_embd, c.intermediate_size, c.n_head * c.head_dim, c.n_kv_head * c.head_dim
        shapes: dict[str, tuple[int, int]] = {}
        fused: dict[str, list[str]] = {}
        self.paths: list[tuple[str, str, str, str]] = []  # per layer: qkv group, o, gate-up group, down
        for i in range(c.n_layer):
            a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
            layer = {"q_proj": (C, q_out), "k_proj": (C, kv_out), "v_proj": (C, kv_out), "o_proj": (q_out, C)}
            shapes |= {a + n: s for n, s in layer.items()}
            shapes |= {m + "gate_proj": (C, inter), m + "up_proj": (C, inter), m + "down_proj": (inter, C)}
            fused[a + "qkv"] = [a + "q_proj", a + "k_proj", a + "v_proj"]
            fused[m + "gate_up"] = [m + "gate_proj", m + "up_proj"]
            self.paths.append((a + "qkv", a + "o_proj", m + "gate_up", m + "down_proj"))
        self.adapters = AdapterBank(shapes, self.device, self.dtype, fused)

    def _weights(self) -> list[Tensor]:
        return [self.norm, self.cos, self.sin]

    def _final_norm(self, x: Tensor) -> Tensor:
        return self._norm(x, self.norm)

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        """`rms_norm`; in fp32 on a CPU, torch's `F.rms_norm`: the same bits, without the two
        dtype casts (for one row, 10 µs where `rms_norm` took 14; aten's fused kernel, 11)."""
        if self._cpu_fp32:
            return F.rms_norm(x, (x.size(-1),), weight, self.config.rms_norm_eps)
        return rms_norm(x, weight, self.config.rms_norm_eps)

    def _blocks(
        self, idx: Tensor, positions: Tensor, cache: KVCache, mask: Tensor | None, causal: bool, adapters: Tensor | None
    ) -> Tensor:
        B, T = idx.shape
        c = self.config
        C, H, KV, D, eps = c.n_embd, c.n_head, c.n_kv_head, c.head_dim, c.rms_norm_eps
        cos, sin = self.cos[positions][:, :, None], self.sin[positions][:, :, None]  # (B or 1, T, 1, D)
        if cos.dtype != self.dtype:
            cos, sin = cos.to(self.dtype), sin.to(self.dtype)
        bank = self.adapters
        x = self.embed[idx].view(B * T, C)
        for i, w in enumerate(self.layers):
            p_qkv, p_o, p_gate_up, p_down = self.paths[i]
            qkv = bank.project(w.qkv, p_qkv, self._norm(x, w.ln1), adapters).view(B, T, H + 2 * KV, D)
            if w.q_norm is not None and w.k_norm is not None:
                q, k, v = qkv.split([H, KV, KV], dim=2)
                q, k = rotary(rms_norm(q, w.q_norm, eps), cos, sin), rotary(rms_norm(k, w.k_norm, eps), cos, sin)
            else:  # q and k rotated in one pass (the same products, elementwise)
                q, k = rotary(qkv[:, :, : H + KV], cos, sin).split([H, KV], dim=2)
                v = qkv[:, :, H + KV :]
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            k, v = cache.update(i, k, v)
            y = attention(q, k, v, mask, causal, self._gqa)
            x = bank.project(w.o, p_o, y.transpose(1, 2).reshape(B * T, H * D), adapters).add_(x)
            gate, up = bank.project(w.gate_up, p_gate_up, self._norm(x, w.ln2), adapters).chunk(2, dim=-1)
            x = bank.project(w.down, p_down, F.silu(gate).mul_(up), adapters).add_(x)
        return x
