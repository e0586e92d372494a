"""The weight-only kernels of one decoded token, side by side: SmolLM2-135M's 120 layer
projections (30 layers of qkv, o, gate-up and down, each its own weights, so they stream from
memory) and its 49,152 x 576 vocabulary head, at 1 row and at 8, through

- `int8`: torch's `_weight_int8pack_mm` (our Int8Projection: the int8 head of int8 and int4);
- `int4`: torch's `_weight_int4pack_mm_for_cpu`, groups of 64 (our Int4Projection);
- `nf4`: bitsandbytes' fused CPU kernel through our operator `stagecraft::nf4_linear`
  (our Nf4Projection, models/layers/nf4.py; its C++ kernel, models/layers/nf4_op.cpp);
- `nf4_python_op`: the same operator with its Python kernel (`nf4._nf4_linear`: where the C++
  one cannot be built);
- `nf4_bnb_op`: the same kernel through bitsandbytes' own `torch.ops.bitsandbytes.gemv_4bit`
  (what its Linear4bit calls), for the cost of its Python wrapper;
- `int8_native`, `int4_native`: the same int8 and int4 weights through the products a native
  decode step runs up to 8 rows (models/inference/few_rows.cpp, called by
  `models.inference.native.project`), where they run (int4: AVX-512 with bf16 dot products).

Each figure is a whole projection call as the serving path makes it (casts included), the
minimum over `--passes` of all the calls of a token, in ms; the kernels take turns within each
pass, so that a noisy guest's drift touches them alike.

    .venv/bin/python benchmarks/nf4_kernels.py [--threads 2] [--passes 9]

One JSON object to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import CpuWindow, environment, log, log_noise, noise_summary  # noqa: E402

from models.inference import native  # noqa: E402
from models.layers import nf4  # noqa: E402
from models.layers.quantized import Int4Projection, Int8Projection, Nf4Projection  # noqa: E402

LAYERS = 30
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # qkv, o, gate-up, down (out, in)
HEAD = (49152, 576)


def bnb_op(p: Nf4Projection) -> Callable[[Tensor], Tensor]:
    """`p`'s product through bitsandbytes' registered op, its weight as bitsandbytes lays it out."""
    code = nf4._bnb().functional.get_4bit_type("nf4", device="cpu")
    shape = (p.padded, p.scales.size(0) * nf4.BLOCK)

    def run(x: Tensor) -> Tensor:
        y: Tensor = torch.ops.bitsandbytes.gemv_4bit(x.to(torch.bfloat16), p.qweight, shape, p.scales, code, 64)
        return y.float()

    return run


BENCH = torch.library.Library("stagecraft_bench", "DEF")  # the operator as Python registers it
BENCH.define("nf4_linear(Tensor x, Tensor codes, Tensor absmax, int outputs) -> Tensor")
BENCH.impl("nf4_linear", nf4._nf4_linear, "CPU")


def python_op(p: Nf4Projection) -> Callable[[Tensor], Tensor]:
    """`p`'s product through an operator whose CPU kernel is Python's (`nf4._nf4_linear`, what
    serves where models/layers/nf4_op.cpp cannot be built), the C++ one's figures' counterpart."""

    def run(x: Tensor) -> Tensor:
        y: Tensor = torch.ops.stagecraft_bench.nf4_linear(x.to(torch.bfloat16), p.qweight, p.scales, p.padded)
        return y[:, : p.out].float()

    return run


def native_op(p: Int8Projection) -> Callable[[Tensor], Tensor]:
    """`p`'s product as a native decode step computes it (our own up to 8 rows)."""
    return lambda x: native.project(p, x)


KERNELS: dict[str, Callable[[Tensor], Callable[[Tensor], Tensor]]] = {
    "int8": lambda w: Int8Projection(w, None),
    "int4": lambda w: Int4Projection(w, None, 64),
    "nf4": lambda w: Nf4Projection(w, None),
    "nf4_python_op": lambda w: python_op(Nf4Projection(w, None)),
    "nf4_bnb_op": lambda w: bnb_op(Nf4Projection(w, None)),
    "int8_native": lambda w: native_op(Int8Projection(w, None)),
    "int4_native": lambda w: native_op(Int4Projection(w, None, 64)),
}


def kernels() -> list[str]:
    """The kernels that run here: ours where the native step builds, int4's where it is ours."""
    ours = native.available() and torch.ops.stagecraft.native_few_rows()
    return [k for k in KERNELS if not k.endswith("_native") or (ours and k.split("_")[0] in ours)]


def timed(calls: dict[str, list[tuple[Callable[[Tensor], Tensor], Tensor]]], passes: int) -> dict[str, float]:
    """The minimum over `passes` of each kernel's calls, in ms; the kernels take turns within a
    pass (their order reversed every other pass), so that a guest's drift touches them all alike."""
    for group in calls.values():
        for f, x in group:
            f(x)
    best = dict.fromkeys(calls, float("inf"))
    names = list(calls)
    for i in range(passes):
        for name in names if i % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            for f, x in calls[name]:
                f(x)
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: round(b * 1e3, 3) for name, b in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=9)
    ap.add_argument("--layers", type=int, default=LAYERS, help="layers of projections (SmolLM2: 30)")
    args = ap.parse_args()
    if not nf4.available():
        sys.exit("this CPU has no AVX512-BF16: bitsandbytes' NF4 CPU kernel does not run here")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"benchmark": "nf4_kernels", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                           **environment(), "threads": args.threads, "ms": {}}  # fmt: skip
    run_window, windows = CpuWindow(), []
    built = {}
    for name in kernels():
        make = KERNELS[name]
        layers = [make(torch.randn(n, k, generator=g) * 0.05) for _ in range(args.layers) for n, k in SHAPES]
        built[name] = layers, make(torch.randn(*HEAD, generator=g) * 0.05)
    for rows in (1, 8):
        xs = {k: torch.randn(rows, k, generator=g) for _, k in SHAPES}
        w = CpuWindow()
        layer_calls = {
            n: [(p, xs[k]) for p, (_, k) in zip(layers, SHAPES * args.layers)] for n, (layers, _) in built.items()
        }
        layer_ms = timed(layer_calls, args.passes)
        head_ms = timed({n: [(head, xs[576])] for n, (_, head) in built.items()}, args.passes)
        windows.append(w.stop())
        for name in built:
            figures = {"layers": layer_ms[name], "head": head_ms[name]}
            out["ms"][f"{name} {rows} row{'s' * (rows > 1)}"] = figures
            log(f"{name}, {rows} rows: {figures}")
    out["noise"] = noise_summary(windows, run_window.stop())
    log_noise(out["noise"])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
