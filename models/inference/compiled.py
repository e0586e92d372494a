"""Decode steps through `torch.compile`: the batch-1 overhead cut by fusion (opt-in).

The service takes native steps instead where it can (models/inference/native.py: the whole
step in C++, no compiling at load, faster at batch 1); compiled steps serve when native steps
are off (STAGECRAFT_INFERENCE_NATIVE=false) or a model runs where they are not built.

A decoded token runs some 35 small tensor operations a layer besides its four projections
(norms, rotary, residual adds, the KV-cache write, attention for one query, the casts of the
quantized kernels), each a dispatch from Python of a few microseconds on one row. With
`Decoder(..., compile=True)` (STAGECRAFT_INFERENCE_COMPILE in the service) a decode step, one
new token for every row and no LoRA adapter among them, runs the serving net's `_logits` through
`torch.compile` (inductor's C++ kernels on a CPU): the elementwise work fuses into a few loops
and Python leaves the step. The projections stay the kernels they are in eager (oneDNN's packed
fp32 as the opaque `stagecraft::packed_linear`, torch's int8 / int4 ops, bitsandbytes' nf4 one
as `stagecraft::nf4_linear`), so the products are the same; the fused norms and rotary may round
differently in the last bit, as any reordering of float sums does. Prefills (several tokens a
row) and steps with adapter rows stay eager.

What it costs: compiling. When the decoder is made (`Decoder._compile`) it runs the three kinds
of step serving meets (one row; rows that started together; rows that joined at different
times, with a key mask), each compiled once for every batch size and cache position
(`dynamic=True`): about 3 minutes in all for SmolLM2-135M in int4 on two CPUs, under a minute
on a later start (inductor's on-disk cache), some 20 s for a small model. The model cache makes
decoders on its one inference thread, so other models' decoding waits for it: turn it on for a
few long-lived models, not for a cache that loads models all day. Figures in
benchmarks/RESULTS.md ("Compiled decode steps").
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from models.layers.serving import ServingNet


class CompiledStep:
    """A serving net's `_logits` through `torch.compile`. While warming up it compiles what it
    meets; once `frozen`, a step no compiled graph covers runs eagerly (torch's
    "eager_on_recompile" stance) instead of compiling in the middle of serving."""

    def __init__(self, net: ServingNet):
        for t in net.tensors():  # never reshaped: no shape symbols for them, nor guards tying them to a batch size
            torch._dynamo.mark_static(t)
        # Dynamo keeps compiled graphs per code object, and stops compiling one after a few
        # (torch._dynamo.config.recompile_limit, 8): with every net sharing `_logits`' code, a
        # third model loaded would decode eagerly for good, and each step would check the other
        # models' guards first. A copy of the code for this net keeps its graphs its own (and
        # frees them with it).
        logits = net._logits.__func__  # type: ignore[attr-defined]
        own = types.FunctionType(logits.__code__.replace(), logits.__globals__, logits.__name__)
        self.fn = torch.compile(types.MethodType(own, net), dynamic=True)  # every batch size and cache position
        self.frozen = False

    def __call__(self, *args: Any) -> Tensor:
        if not self.frozen:
            return self.fn(*args)
        with torch.compiler.set_stance("eager_on_recompile"):
            return self.fn(*args)
