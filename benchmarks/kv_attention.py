"""Attention for one new token over an fp32 and over a bf16 KV cache (`Decoder(kv_cache=...)`,
STAGECRAFT_INFERENCE_KV_CACHE), side by side: what a decode step's attention costs in each.

SmolLM2-135M's shapes (9 query heads over 3 key/value heads of 64, `--layers` 30 layers, each
its own cache of 8,192 positions as the decoder allocates it), 1 row and 8, the rows holding
`--contexts` positions; `models.layers.serving.attention` as the serving nets call it (the query
cast to the cache's dtype, the result back to fp32). A 256 MB buffer is written before every
pass so that the caches come from memory, as they do between a step's projections. Each figure
is the median over `--passes` of one step's calls (all layers), in ms; fp32 and bf16 take turns.

    .venv/bin/python benchmarks/kv_attention.py [--threads 2] [--passes 15] [--contexts 160,1024]

One JSON object to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import CpuWindow, environment, log, log_noise, noise_summary  # noqa: E402

from models.layers.serving import attention  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, POSITIONS = 9, 3, 64, 8192
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=15)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--contexts", default="160,1024", help="positions the rows hold (a 32-token prompt + 128: 160)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"benchmark": "kv_attention", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                           **environment(), "threads": args.threads, "layers": args.layers, "ms": {},
                           "kv_bytes_per_position": {k: 2 * args.layers * KV_HEADS * HEAD_DIM * d.itemsize
                                                     for k, d in DTYPES.items()}}  # fmt: skip
    run_window, windows = CpuWindow(), []
    flush = torch.zeros(64 << 20)
    for rows in (1, 8):
        shape = (rows, KV_HEADS, POSITIONS, HEAD_DIM)
        caches = {k: [(torch.randn(shape, generator=g).to(d), torch.randn(shape, generator=g).to(d))
                      for _ in range(args.layers)] for k, d in DTYPES.items()}  # fmt: skip
        q = torch.randn(rows, HEADS, 1, HEAD_DIM, generator=g)
        for n in (int(c) for c in args.contexts.split(",")):
            times: dict[str, list[float]] = {k: [] for k in DTYPES}
            w = CpuWindow()
            for i in range(args.passes + 1):
                for kind in list(DTYPES) if i % 2 == 0 else list(DTYPES)[::-1]:
                    flush.add_(1.0)
                    t = time.perf_counter()
                    for k, v in caches[kind]:
                        attention(q, k.narrow(2, 0, n), v.narrow(2, 0, n), None, False, gqa=True)
                    if i:  # the first pass warms up
                        times[kind].append(time.perf_counter() - t)
            windows.append(w.stop())
            figures = {k: round(statistics.median(v) * 1e3, 3) for k, v in times.items()}
            out["ms"][f"{rows} row{'s' * (rows > 1)}, {n} positions"] = figures
            log(f"{rows} rows, {n} positions: {figures}")
    out["noise"] = noise_summary(windows, run_window.stop())
    log_noise(out["noise"])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
