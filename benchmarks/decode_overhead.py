"""Where a batch-1 decode step's time goes beyond the matmuls: the serving path's per-token
overhead (Python per step, the small tensor operations, sampling, KV-cache writes, the
batcher's bookkeeping), for the Llama path at benchmarks/llama_decode.py's `--shape small`.

For each precision (fp32, and int8 / int4 where this tree has models/layers/quantized.py):

- `step_ms`: per-token time of `Decoder.step` at batch 1 (median over `--passes`, each
  `--new` tokens after a 32-token prompt, the prefill not counted);
- `free_ms`: the same with every projection answering at once (zeros of its output's
  shape, made by one `torch.zeros`): what is left is everything but the matmuls;
- `engine_ms`: one request through `app.serving.engine.ModelCache` (its Batcher and
  InferenceThread, results handed to an asyncio loop), per token;
- each time is the median of the passes, and (`*_min_ms`) their minimum, the better figure
  on a shared machine (other processes only ever add time); `noise`: their CPU meanwhile;
- `ops_per_step`: aten operations dispatched by one decode step (a TorchDispatchMode count);
- `top_ops`: the free run's operations by self CPU time (torch.profiler), the first 12.

Every torch call runs on the engine's one inference thread (as serving does: a second
OpenMP team in the process slows every step). Run it against an older tree with that tree
first on PYTHONPATH (only fp32 there):

    .venv/bin/python benchmarks/decode_overhead.py [--threads 2] [--new 64] [--passes 5]
    PYTHONPATH=/path/to/old/tree .venv/bin/python benchmarks/decode_overhead.py --precisions fp32

One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from llama_decode import tokenizer
from llama_shapes import SHAPES
from machine import CpuWindow, environment, log
from torch.utils._python_dispatch import TorchDispatchMode

import models
from app.serving.engine import ModelCache
from models.families.llama.config import LlamaConfig
from models.families.llama.model import Llama
from models.formats.native import save_model
from models.inference.decoder import Decoder, Row
from models.inference.generate import Sampling
from models.layers import projection

T = TypeVar("T")


class Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += 1
        return func(*args, **(kwargs or {}))


def quantized_tree() -> bool:
    return (Path(models.__file__).parent / "layers" / "quantized.py").is_file()


def decoder(model: Llama, tok: Any, precision: str) -> Decoder:
    if precision == "fp32":
        return Decoder(model, tok, max_batch=1)
    return Decoder(model, tok, 1, precision)  # type: ignore[call-arg]  # absent from older trees


def per_token(dec: Decoder, prompt: list[int], new: int) -> float:
    row = Row(prompt, Sampling(max_new_tokens=new), ignore_eos=True)
    dec.add(row)
    dec.step()  # prefill and the first token
    t0 = time.perf_counter()
    while dec.busy:
        dec.step()
    return (time.perf_counter() - t0) / (new - 1)


def free_projections(dec: Decoder, prompt: list[int]) -> Callable[[], None]:
    """Make every projection of `dec` answer zeros of its output's shape at once; returns the undo."""
    widths: dict[int, int] = {}
    layers = [p for layer in dec.net.layers for p in vars(layer).values()]
    classes = {type(p) for p in [*layers, dec.net.head] if isinstance(p, projection.Projection)}
    saved = {cls: cls.__call__ for cls in classes}

    def recording(real: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def call(self: Any, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
            y = real(self, x, gelu)
            widths[id(self)] = y.size(-1)
            return y

        return call

    for cls, real in saved.items():
        cls.__call__ = recording(real)  # type: ignore[method-assign]
    per_token(dec, prompt, 3)
    for cls in classes:
        cls.__call__ = lambda self, x, gelu=False: torch.zeros(x.size(0), widths[id(self)])  # type: ignore[method-assign]

    def undo() -> None:
        for cls, real in saved.items():
            cls.__call__ = real  # type: ignore[method-assign]

    return undo


class Bench:
    def __init__(
        self, cache: ModelCache, loop: asyncio.AbstractEventLoop, model: Llama, tok: Any, prompt: list[int],
        directory: Path, new: int, passes: int,
    ):  # fmt: skip
        self.cache, self.loop, self.model, self.tok, self.prompt = cache, loop, model, tok, prompt
        self.directory, self.new, self.passes = directory, new, passes

    def on_thread(self, fn: Callable[[], T]) -> T:
        return self.cache.runner.call(fn).result()

    def per_token(self, dec: Decoder, new: int = 0) -> float:
        return self.on_thread(lambda: per_token(dec, self.prompt, new or self.new))

    def ops(self, dec: Decoder) -> int:
        def count() -> int:
            dec.add(Row(self.prompt, Sampling(max_new_tokens=3), ignore_eos=True))
            dec.step()
            with Count() as c:
                dec.step()
            while dec.busy:
                dec.step()
            return c.ops

        return self.on_thread(count)

    def top_ops(self, dec: Decoder) -> list[dict[str, Any]]:
        from torch.profiler import ProfilerActivity, profile

        def run() -> list[dict[str, Any]]:
            dec.add(Row(self.prompt, Sampling(max_new_tokens=self.new), ignore_eos=True))
            dec.step()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                while dec.busy:
                    dec.step()
            rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
            steps = self.new - 1
            return [{"op": e.key, "calls_per_step": round(e.count / steps, 1),
                     "us_per_step": round(e.self_cpu_time_total / steps, 1)} for e in rows]  # fmt: skip

        return self.on_thread(run)

    def engine(self, precision: str) -> float:
        kw = {} if precision == "fp32" else {"precision": precision}
        served = self.loop.run_until_complete(self.cache.get(f"m-{precision}", self.directory, **kw))
        sampling = Sampling(max_new_tokens=self.new)

        async def one() -> float:
            t0, n = 0.0, 0
            async for u in self.cache.generate(served, self.prompt, sampling, [], False, True, ignore_eos=True):
                if n == 0:
                    t0 = time.perf_counter()  # after the first token: the prefill is not counted
                n = u.tokens
            return (time.perf_counter() - t0) / (n - 1)

        self.loop.run_until_complete(one())
        return [self.loop.run_until_complete(one()) for _ in range(self.passes)]


def measure(b: Bench, precision: str) -> dict[str, Any]:
    dec = b.on_thread(lambda: decoder(b.model, b.tok, precision))
    b.per_token(dec, 8)  # warm-up
    window = CpuWindow()
    step = [b.per_token(dec) for _ in range(b.passes)]
    ops = b.ops(dec)
    undo = b.on_thread(lambda: free_projections(dec, b.prompt))
    free = [b.per_token(dec) for _ in range(b.passes)]
    top = b.top_ops(dec)
    b.on_thread(undo)
    engine = b.engine(precision)
    result: dict[str, Any] = {}
    for name, times in (("step", step), ("free", free), ("engine", engine)):
        result[f"{name}_ms"] = round(statistics.median(times) * 1e3, 3)
        result[f"{name}_min_ms"] = round(min(times) * 1e3, 3)  # other processes only ever add time
    share = result["free_min_ms"] / result["step_min_ms"]
    return {**result, "overhead_share": round(share, 3), "ops_per_step": ops, "top_ops": top, "noise": window.stop()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--layers", type=int, default=0, help="override the shape's layer count")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,int8,int4")
    args = ap.parse_args()
    precisions = [p for p in args.precisions.split(",") if p == "fp32" or quantized_tree()]
    s = SHAPES[args.shape]
    sizes = {k: s[k] for k in ("n_head", "n_kv_head", "n_embd", "intermediate_size")}
    cfg = LlamaConfig(s["vocab"], 256, n_layer=args.layers or s["n_layer"], **sizes)
    cache = ModelCache(1 << 34, 1, "cpu", args.threads)
    loop = asyncio.new_event_loop()

    def on_thread(fn: Callable[[], T]) -> T:
        return cache.runner.call(fn).result()

    on_thread(lambda: torch.set_num_threads(args.threads))
    torch.manual_seed(0)
    model = on_thread(lambda: Llama(cfg).eval().requires_grad_(False))
    tok = tokenizer(cfg.vocab_size)
    prompt = torch.randint(0, cfg.vocab_size, (32,), generator=torch.Generator().manual_seed(1)).tolist()
    root = Path(tempfile.mkdtemp(prefix="decode-overhead-"))
    on_thread(lambda: save_model(root / "m", model.state_dict(), cfg, tok, {"name": "bench"}))
    out: dict[str, Any] = {
        "benchmark": "decode_overhead",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "models_from": str(Path(models.__file__).parent.parent),
        **environment(),
        "results": {},
    }
    for precision in precisions:
        result = measure(Bench(cache, loop, model, tok, prompt, root / "m", args.new, args.passes), precision)
        out["results"][precision] = result
        log(f"{precision}: {result['step_ms']} ms/token, {result['free_ms']} without the matmuls, "
            f"{result['engine_ms']} through the engine, {result['ops_per_step']} ops per step")  # fmt: skip
    shutil.rmtree(root)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
