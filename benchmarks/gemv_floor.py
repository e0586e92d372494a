"""The fp32 matmul floor of one decoded token: SmolLM2-135M's 121 projections (30 layers of qkv,
o, gate-up and down, and the 49,152-row vocabulary head) at 1 row (and 8), against llama.cpp's
whole f32 decode step on the same model.

Batch-1 fp32 decoding reads every weight once a token: 540 MB here, so a token costs at least
what the CPU's kernels take to stream them. Each layout torch offers for `x @ W.T` is timed
over distinct weights per layer (30 copies, as in the model: read from memory, not a warm
cache), the minimum of `--passes`:

- `onednn_packed8`: oneDNN's blocked layout for 8 rows (what `models.layers.projection` uses);
- `onednn_packed1`: the same laid out for 1 row;
- `linear`: `F.linear` on the (out, in) weight (MKL);
- `matmul_t`: `x @ W_t`, the weight stored (in, out) (MKL).

With `--llama-bin` (llama.cpp's `llama-batched-bench`, built as `gguf_decode.py` says) the
same run exports SmolLM2 to f32 with our writer and times llama.cpp's generation per token
at batch 1 (its `t_tg`, the prompt excluded), in its own process.

    .venv/bin/python benchmarks/gemv_floor.py [--threads 2] [--passes 7] [--llama-bin DIR]

One JSON object to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import CpuWindow, environment, log, log_noise, noise_summary  # noqa: E402

LAYERS = 30
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "head": (49152, 576)}


def _pointwise(x: Tensor, w: Tensor) -> Tensor:
    out: Tensor = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    return out


LAYOUTS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "onednn_packed8": (lambda w: torch.ops.mkldnn._reorder_linear_weight(w, 8), _pointwise),
    "onednn_packed1": (lambda w: torch.ops.mkldnn._reorder_linear_weight(w, 1), _pointwise),
    "linear": (lambda w: w, F.linear),
    "matmul_t": (lambda w: w.t().contiguous(), lambda x, w: x @ w),
}


def token_ms(layout: str, rows: int, passes: int, layers: int = LAYERS) -> float:
    """Milliseconds for one token's projections (4 a layer and the head) at `rows` rows in
    `layout` (minimum of passes)."""
    prep, call = LAYOUTS[layout]
    g = torch.Generator().manual_seed(0)
    per_layer = [(name, shape) for name, shape in SHAPES.items() if name != "head"]
    weights = [(name, prep(torch.randn(*shape, generator=g))) for _ in range(layers) for name, shape in per_layer]
    weights.append(("head", prep(torch.randn(*SHAPES["head"], generator=g))))
    xs = {name: torch.randn(rows, i, generator=g) for name, (_, i) in SHAPES.items()}

    def one() -> None:
        for name, w in weights:
            call(xs[name], w)

    one()
    one()
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        one()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def llama_cpp_token_ms(binary: Path, threads: int, new: int) -> float:
    from gguf_decode import SMOLLM2, export

    if not SMOLLM2.is_file():
        sys.exit(f"{SMOLLM2} is missing: README.md says how to download it")
    with tempfile.TemporaryDirectory() as tmp:
        f32 = export(Path(tmp), ["f32"])["f32"]
        cmd = [str(binary), "-m", str(f32), "-c", str(32 + new + 64), "-npp", "32", "-ntg", str(new), "-npl", "1",
               "-t", str(threads), "-tb", str(threads), "--output-format", "jsonl"]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"{binary.name} failed ({run.returncode}): {run.stderr[-2000:]}")
    [row] = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return float(row["t_tg"]) / new * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--rows", default="1,8")
    ap.add_argument("--new", type=int, default=128, help="tokens llama.cpp generates")
    ap.add_argument("--layers", type=int, default=LAYERS, help=argparse.SUPPRESS)  # the suite's smoke run
    ap.add_argument("--llama-bin", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mb = (args.layers * sum(o * i for n, (o, i) in SHAPES.items() if n != "head") + 49152 * 576) * 4 / 1e6
    out: dict[str, Any] = {"benchmark": "gemv_floor", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                           **environment(), "threads": args.threads, "weight_mb": round(mb, 1), "ms_per_token": {},
                           "gb_per_s": {}}  # fmt: skip
    run_window, windows = CpuWindow(), []
    for rows in (int(r) for r in args.rows.split(",")):
        for layout in LAYOUTS:
            w = CpuWindow()
            ms = token_ms(layout, rows, args.passes, args.layers)
            windows.append(w.stop())
            out["ms_per_token"][f"{layout}_r{rows}"] = round(ms, 2)
            out["gb_per_s"][f"{layout}_r{rows}"] = round(mb / ms, 1)
            log(f"{rows} row(s) {layout}: {ms:.2f} ms, {mb / ms:.1f} GB/s")
    if args.llama_bin is not None:
        w = CpuWindow()
        ms = llama_cpp_token_ms(args.llama_bin / "llama-batched-bench", args.threads, args.new)
        windows.append(w.stop())
        out["llama_cpp_f32_step_ms"] = round(ms, 2)
        out["ours_projections_vs_llama_cpp_step"] = round(out["ms_per_token"]["onednn_packed8_r1"] / ms, 3)
        log(f"llama.cpp f32 step: {ms:.2f} ms a token")
    out["noise"] = noise_summary(windows, run_window.stop())
    log_noise(out["noise"])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
