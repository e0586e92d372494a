"""GPT's forward pass laid out for serving: the same function as `models.families.gpt.model.GPT` with a
KV cache, in fewer and cheaper operations per token.

- Every projection is a `Projection`: on a CPU with oneDNN (fp32), its weight is
  reordered once into oneDNN's blocked layout for batches of a few rows, and the MLP's
  GELU runs as a post-op of its matmul. For 8 decoding rows that layout is ~1.5x faster
  than MKL's `addmm` on the transformer's projections and ~4x on the vocabulary projection
  (benchmarks/RESULTS.md); one row costs about the same. Elsewhere (CUDA, other dtypes,
  no oneDNN) it is one `addmm` against the weight stored transposed and contiguous.
- No `nn.Module` calls, no dropout, no per-layer view chains: a decode step is about a
  dozen tensor operations per layer, and the output projection runs only for the
  positions whose next token is wanted.

The weights are copies (the GPT can be dropped); logits agree with `GPT` to float
rounding (tests/app/serving/test_engine.py). `last_logits` and the net's size, device and
dtype are every family's (models/layers/serving.py). LoRA adapters join through
`self.adapters` (models/lora/bank.py): `last_logits(..., adapters=rows)` gives each row its
own, and with none the bank is not touched (the MLP's GELU stays a post-op of its matmul).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from models.families.gpt.config import GPTConfig
from models.families.gpt.model import GPT
from models.layers.kv_cache import KVCache
from models.layers.projection import Projection
from models.layers.serving import ServingNet, attention
from models.lora.bank import AdapterBank

LN_EPS = 1e-5


@dataclass
class Layer:
    ln1_w: Tensor
    ln1_b: Tensor
    attn: Projection  # C -> 3C
    proj: Projection  # C -> C
    ln2_w: Tensor
    ln2_b: Tensor
    fc: Projection  # C -> 4C
    out: Projection  # 4C -> C

    def tensors(self) -> list[Tensor]:
        return [self.ln1_w, self.ln1_b, self.ln2_w, self.ln2_b] + [
            t for p in (self.attn, self.proj, self.fc, self.out) for t in p.tensors()
        ]


class ServingGPT(ServingNet):
    def __init__(self, model: GPT, layout: str = "packed"):
        """`layout`: the fp32 projections' (models.layers.projection.LAYOUTS)."""
        self.config: GPTConfig = model.config
        sd = {k: v.detach() for k, v in model.state_dict().items()}

        def proj(name: str) -> Projection:
            return Projection(sd[name + ".weight"], sd[name + ".bias"], layout)

        self.layers: list[Layer] = []
        for i in range(self.config.n_layer):
            p = f"transformer.h.{i}."
            self.layers.append(
                Layer(
                    sd[p + "ln_1.weight"].clone(),
                    sd[p + "ln_1.bias"].clone(),
                    proj(p + "attn.c_attn"),
                    proj(p + "attn.c_proj"),
                    sd[p + "ln_2.weight"].clone(),
                    sd[p + "ln_2.bias"].clone(),
                    proj(p + "mlp.c_fc"),
                    proj(p + "mlp.c_proj"),
                )
            )
        self.embed = wte = sd["transformer.wte.weight"].clone()
        self.wpe = sd["transformer.wpe.weight"].clone()
        self.head = Projection(wte, None, layout)  # tied: the vocabulary projection reads the embedding
        self.lnf_w, self.lnf_b = sd["transformer.ln_f.weight"].clone(), sd["transformer.ln_f.bias"].clone()
        C = self.config.n_embd
        shapes = {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}
        self.paths = [[f"transformer.h.{i}.{name}" for name in shapes] for i in range(self.config.n_layer)]
        layer_shapes = {path: shape for paths in self.paths for path, shape in zip(paths, shapes.values())}
        self.adapters = AdapterBank(layer_shapes, self.device, self.dtype)

    def _weights(self) -> list[Tensor]:
        return [self.wpe, self.lnf_w, self.lnf_b]

    def _final_norm(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (self.config.n_embd,), self.lnf_w, self.lnf_b, LN_EPS)

    def _blocks(
        self, idx: Tensor, positions: Tensor, cache: KVCache, mask: Tensor | None, causal: bool, adapters: Tensor | None
    ) -> Tensor:
        """With `adapters`, each row's low-rank products join every projection (the MLP's GELU after them)."""
        B, T = idx.shape
        C, H = self.config.n_embd, self.config.n_head
        bank = self.adapters
        x = (self.embed[idx] + self.wpe[positions]).view(B * T, C)
        for i, w in enumerate(self.layers):
            p_attn, p_proj, p_fc, p_out = self.paths[i]
            h = F.layer_norm(x, (C,), w.ln1_w, w.ln1_b, LN_EPS)
            q, k, v = bank.project(w.attn, p_attn, h, adapters).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
            k, v = cache.update(i, k, v)
            y = attention(q, k, v, mask, causal)
            x = bank.project(w.proj, p_proj, y.transpose(1, 2).reshape(B * T, C), adapters).add_(x)
            h = F.layer_norm(x, (C,), w.ln2_w, w.ln2_b, LN_EPS)
            f = bank.project(w.fc, p_fc, h, adapters, gelu=True)
            x = bank.project(w.out, p_out, f, adapters).add_(x)
        return x
