"""Decode steps in C++ for the Llama family and GPT on a CPU (models/inference/native_step.cpp).

At one row a decoded token is ~4 ms of products and, in eager, as much again of everything
around them: some 35 small tensor operations a layer, each a trip through Python and torch's
dispatcher (norms, rotary, the KV-cache write, one query's attention, residual adds, casts).
`torch.compile` fuses them (models/inference/compiled.py) but leaves its own per-call cost
(Dynamo's guards, the graph's wrapper, a kernel call per fused loop) and minutes of compiling.
A native step is the whole of a serving net's `_logits` for one new token a row in one C++ call:
the same products (torch's int4 op, bitsandbytes' NF4 GEMV; torch's int8 op and aten's fp32 mm
past 8 rows, our own int8 and fp32 products below: torch's int8 op read SmolLM2's head at half
the memory's pace, and ours streams fp32 weights faster than oneDNN's packed product), and
its own loops for the rest, attention for one query included (vectorised for AVX-512 and AVX2,
chosen at load for the CPU). It is built on first use with torch.utils.cpp_extension
(some seconds, 12 here; cached under TORCH_EXTENSIONS_DIR); where it cannot be built (no compiler, no
ninja) `available()` is False with a warning and the decoder keeps its eager steps.

What it covers: decode steps (one token a row, a cache that holds the prompt) of a Llama-family
serving net (Llama, Qwen2 with its biases, Qwen3 with its q / k norms; SmolLM2) or a GPT one, in
fp32, int8, int4 or nf4, with an fp32 or bf16 KV cache, rows with or without the key mask.
Prefills and steps with LoRA rows stay on the eager path. Logits equal the eager step's and
transformers' to float rounding (tests/models/inference/test_native_step.py); speed against eager,
compiled and llama.cpp in benchmarks/RESULTS.md ("Native decode steps").
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.layers import nf4, onednn
from models.layers.projection import Projection
from models.layers.quantized import Int4Projection, Int8Projection, Nf4Projection

SOURCES = [Path(__file__).with_name(f) for f in ("native_step.cpp", "few_rows.cpp", "attend.cpp")]  # and their .h
KINDS = {Projection: 0, Int8Projection: 1, Int4Projection: 2, Nf4Projection: 3}  # native_step.cpp's Kind
PACKED, ROWS = 4, 5  # a Projection in oneDNN's packed layout, in the rows layout
FLAGS = ["-O3", "-fopenmp"]  # OpenMP: at::parallel_for is inline, parallel only when built with it
log = logging.getLogger(__name__)


@functools.cache
def available() -> bool:
    """Build and load the C++ step, once; False (and a warning) where it cannot be built."""
    try:
        nf4.ensure_ninja()
        from torch.utils import cpp_extension

        cpp_extension.load(
            "stagecraft_native_step",
            [str(s) for s in SOURCES],
            extra_cflags=FLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
        return True
    except Exception as e:  # any failure to build or load: the eager steps serve
        log.warning("native decode steps could not be built (%s); decoding with eager steps", e)
        return False


def fp32_layout() -> str:
    """The layout of fp32 weights for native steps (models.layers.projection.LAYOUTS): "rows" where
    the C++ step runs its own AVX-512 product (`native_few_rows()`; a SmolLM2 step 10.8 against 12.3 ms
    with oneDNN's packed weights on an AMD EPYC); elsewhere oneDNN's packed layout where its one-row
    product beat MKL's (AMD: 22.2 against 28.8 ms for a token's projections), MKL's plain one on an
    Intel CPU (25.1 against 38.8 ms on a Xeon): models/layers/onednn.py's vendor rule
    (benchmarks/RESULTS.md, "Native decode steps", "Few-rows products of our own")."""
    if available() and "fp32" in torch.ops.stagecraft.native_few_rows():
        return "rows"
    return "packed" if onednn.ENABLED else "plain"


def wanted(model: Any) -> bool:
    """Whether a decoder of `model` gets native steps: a Llama-family or GPT model in fp32 on a CPU,
    where the C++ step builds (the first call builds it)."""
    weights = next(iter(model.parameters()))
    on_cpu = weights.device.type == "cpu" and weights.dtype == torch.float32
    return model.config.arch in ("llama", "gpt") and on_cpu and available()


def _layers(net: Any) -> list[tuple[list[Tensor | None], list[Projection]]]:
    """Each layer's norms (ln1, ln2, q_norm, k_norm, ln1's bias, ln2's bias) and projections (qkv,
    o, the MLP's first and second), as native_step.cpp takes them; [] for a net of another family."""
    from models.families.gpt.serving import ServingGPT
    from models.families.llama.serving import ServingLlama

    if isinstance(net, ServingLlama):
        return [([w.ln1, w.ln2, w.q_norm, w.k_norm, None, None], [w.qkv, w.o, w.gate_up, w.down]) for w in net.layers]
    if isinstance(net, ServingGPT):
        return [([w.ln1_w, w.ln2_w, None, None, w.ln1_b, w.ln2_b], [w.attn, w.proj, w.fc, w.out]) for w in net.layers]
    return []


def supports(net: Any) -> bool:
    """Whether `net` is a serving net a native step can run: a Llama-family or GPT one, on a CPU,
    fp32, every projection one of KINDS."""
    layers = _layers(net)
    if not layers or net.device.type != "cpu" or net.dtype != torch.float32:
        return False
    return all(type(p) in KINDS for p in [net.head] + [p for _, ps in layers for p in ps])


def _projection(p: Projection) -> tuple[list[Tensor], list[int]]:
    """(weight, scales, bias) and (kind, outputs, width, group) of `p`, as native_step.cpp takes them."""
    none = torch.empty(0)
    bias = none if p.bias is None else p.bias
    if type(p) is Projection and p.packed is not None:  # (outputs, inputs) in oneDNN's blocks
        return [p.packed, none, bias], [PACKED, p.packed.size(0), p.packed.size(0), 0]
    if type(p) is Projection and p.weight is not None:  # (outputs, inputs)
        return [p.weight, none, bias], [ROWS, p.weight.size(0), p.weight.size(0), 0]
    if type(p) is Projection:
        assert p.weight_t is not None
        return [p.weight_t, none, bias], [KINDS[Projection], p.weight_t.size(1), p.weight_t.size(1), 0]
    assert isinstance(p, Int8Projection)
    kind, tensors = KINDS[type(p)], [p.qweight, p.scales, bias]
    if isinstance(p, Int4Projection):  # its scales: (groups, padded outputs, 2)
        return tensors, [kind, p.out, p.scales.size(1), p.group]
    if isinstance(p, Nf4Projection):
        return tensors, [kind, p.out, p.padded, 0]
    return tensors, [kind, p.qweight.size(0), p.qweight.size(0), 0]


def project(p: Projection, x: Tensor) -> Tensor:
    """`p(x)` for x (rows, inputs) fp32 as a native step computes it (its product for that many
    rows, the bias added): (rows, outputs) fp32. For tests and benchmarks of the products."""
    if not available():
        raise RuntimeError("the native step's C++ build is not available")
    tensors, meta = _projection(p)
    y: Tensor = torch.ops.stagecraft.native_project(x, tensors, meta)
    return y


class NativeStep:
    """A serving net's decode step in C++, called as its `_logits` is (models/layers/serving.py,
    `ServingNet.decode_step`); the net's weights are shared, not copied."""

    def __init__(self, net: Any):
        if not available() or not supports(net):
            raise ValueError("a native step needs its C++ build and a Llama-family or GPT CPU fp32 serving net")
        from models.families.gpt.serving import LN_EPS, ServingGPT

        c, layers, none = net.config, _layers(net), torch.empty(0)
        gpt = isinstance(net, ServingGPT)
        embed = net.embed if isinstance(net.embed, Tensor) else net.embed.qweight
        embed_scales = none if isinstance(net.embed, Tensor) else net.embed.scales
        uses_nf4 = any(isinstance(p, Nf4Projection) for p in [net.head] + [p for _, ps in layers for p in ps])
        kernel = ctypes.cast(nf4._kernel(), ctypes.c_void_p).value if uses_nf4 else 0
        mlp = 4 * c.n_embd if gpt else c.intermediate_size  # the MLP's inner width
        shape = [c.n_embd, c.n_head, c.n_kv_head, c.head_dim, mlp, 1 if gpt else 0]
        if gpt:
            globals_ = [embed, embed_scales, net.lnf_w, net.lnf_b, none, none, net.wpe]
        else:
            globals_ = [embed, embed_scales, net.norm, none, net.cos, net.sin, none]
        eps = LN_EPS if gpt else c.rms_norm_eps
        self.impl = torch.classes.stagecraft.DecoderStep(shape, eps, kernel or 0, globals_)
        for norms, projections in layers:
            tensors: list[Tensor] = []
            meta: list[int] = []
            for p in projections:
                t, m = _projection(p)
                tensors += t
                meta += m
            self.impl.add_layer([none if t is None else t for t in norms], tensors, meta)
        self.impl.set_head(*_projection(net.head))

    def __call__(
        self, idx: Tensor, positions: Tensor, cache: Any, mask: Tensor | None, causal: bool, adapters: Tensor | None
    ) -> Tensor:
        keys, values = cache.views()
        logits: Tensor = self.impl.step(idx, positions, keys, values, cache.length, mask)
        return logits
