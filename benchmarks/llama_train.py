"""Training tokens/s of our Llama path against transformers' LlamaForCausalLM, one run.

Two shapes: SmolLM2-135M's (30 layers, n_embd 576, 9 query / 3 key-value heads, SwiGLU
1536, vocabulary 49,152, tied head) and a smaller one (6 layers, 384, 6 / 2 heads, 1024,
8,192). Same random tokens, AdamW (lr 1e-3, betas 0.9/0.95, weight decay 0.1 on
matrices), clipping at 1.0, fp32 (and bf16: autocast for transformers, our CPU policy of
a bf16 model with fp32 masters for ours). Ours goes through `models.training.stages.train_step`
with a segment planned from a parsed spec; theirs is `model(input_ids, labels).loss`.
The two take turns one step at a time; `paired_ratio` is the median over rounds of their
step time over ours (the machine's drift cancels out within a round).

    .venv/bin/python benchmarks/llama_train.py [--shapes small,smollm2] [--precision fp32,bf16]

One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from llama_shapes import SHAPES
from machine import CpuWindow, environment, log, runnable_precisions
from ours import plan, segment_step
from train_variants import RandomBatches

from models.families.build import build_model, config_from_spec
from models.layers import onednn
from models.spec import parse_spec

LR, BETAS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, (0.9, 0.95), 0.1, 1.0


def spec_of(shape: dict[str, int], block: int, batch: int, precision: str) -> Any:
    model = {k: v for k, v in shape.items() if k != "vocab"}
    return parse_spec(
        {
            "name": "llama-train",
            "model": {"arch": "llama", **model, "block_size": block},
            "tokenizer": {"vocab_size": shape["vocab"], "train_on": ["random"]},
            "data": {"random": {"dataset": "random-tokens"}},
            "stages": [
                {
                    "type": "pretrain",
                    "name": "pretrain",
                    "data": "random",
                    "steps": 1_000_000,
                    "batch_size": batch,
                    "loss": {"type": "causal_lm"},
                    "grad_clip": GRAD_CLIP,
                    "optimizer": {"type": "adamw", "lr": LR, "betas": list(BETAS), "weight_decay": WEIGHT_DECAY},
                }
            ],
            "precision": precision,
            "device": "cpu",
        }
    )


def ours(shape: dict[str, int], block: int, batch: int, precision: str, batches: list[Any]) -> Callable[[], int]:
    spec = spec_of(shape, block, batch, precision)
    pipe, seg = plan(spec)
    torch.manual_seed(0)
    model = build_model(config_from_spec(spec.model, shape["vocab"]))
    return segment_step(pipe, seg, model, RandomBatches(batches))


def theirs(shape: dict[str, int], block: int, precision: str, batches: list[Any]) -> Callable[[], int]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["n_embd"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["n_layer"],
        num_attention_heads=shape["n_head"],
        num_key_value_heads=shape["n_kv_head"],
        max_position_embeddings=block,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg).train()
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, fused=True)
    cycle = itertools.cycle(batches)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step() -> int:
        x, _ = next(cycle)
        ctx = contextlib.nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype)
        with ctx:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return x.numel()

    return step


def compare(name: str, args: argparse.Namespace, precision: str) -> dict[str, Any]:
    shape = SHAPES[name]
    block, batch = args.block, args.batch
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        seq = torch.randint(0, shape["vocab"], (batch, block + 1), generator=g)
        batches.append((seq[:, :-1].contiguous(), seq[:, 1:].contiguous()))
    steps = {
        "ours": ours(shape, block, batch, precision, batches),
        "transformers": theirs(shape, block, precision, batches),
    }
    for s in steps.values():
        for _ in range(args.warmup):
            s()
    rounds: list[dict[str, float]] = []
    window = CpuWindow()
    for r in range(args.steps):
        order = list(steps) if r % 2 == 0 else list(steps)[::-1]
        times = {}
        for k in order:
            t0 = time.perf_counter()
            tokens = steps[k]()
            times[k] = time.perf_counter() - t0
        rounds.append(times)
        log(f"{name} {precision} round {r + 1}/{args.steps}: " + ", ".join(f"{k} {t:.2f}s" for k, t in times.items()))
    tokens_per_s = {k: round(tokens / statistics.median(t[k] for t in rounds), 1) for k in steps}
    return {
        "shape": {**shape, "block_size": block, "batch": batch},
        "precision": precision,
        "tokens_per_s": tokens_per_s,
        "paired_ratio": round(statistics.median(t["transformers"] / t["ours"] for t in rounds), 3),
        "other_cpu_s": window.stop()["other_cpu_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="small,smollm2")
    ap.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--fp32-products",
        choices=["auto", "onednn", "aten"],
        default="auto",
        help="our fp32 matrix products: the CPU's default (models.layers.onednn.ENABLED), or forced",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.fp32_products != "auto":
        onednn.ENABLED = args.fp32_products == "onednn"
    requested = args.precision.split(",")
    precisions = runnable_precisions(requested)
    skipped = {p: "this CPU has no bf16 matmul kernels" for p in requested if p not in precisions}
    results = [compare(s, args, p) for s in args.shapes.split(",") for p in precisions]
    out = {
        "benchmark": "llama_train",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **environment(),
        "results": results,
        "skipped": skipped,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
