"""Training tokens/s of our pretrain step against nanoGPT and Hugging Face GPT-2, in one run.

Same shape for every variant (n_layer 6, n_head 6, n_embd 384, block 256, batch 8, vocab
8192), AdamW (lr 1e-3, betas 0.9/0.95, weight decay 0.1 on matrices), gradient clipping
at 1.0, random tokens; fp32 and bf16 autocast of each. Ours goes through
`models.training.stages.train_step` with a segment planned from a parsed spec; nanoGPT is imported
at run time from a checkout (`--nanogpt DIR` holding its model.py); transformers is a
benchmark-only dependency. Variants take turns one step at a time (the order rotating), over
several passes; the median tokens/s of the passes is reported with MFU against a
torch.matmul peak, and the median per-step ratio of each of ours to the fastest peer
(`ours_vs_fastest_peer_paired`: each pair of steps ran back to back, so the machine's
drift cancels out; on these shared machines it is the steadier figure).

    git --git-dir=/work/.mirror/karpathy+nanoGPT/repo show HEAD:model.py > /tmp/nanogpt/model.py
    .venv/bin/python benchmarks/train_throughput.py --nanogpt /tmp/nanogpt [--compile]

One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from machine import CpuWindow, environment, log, log_noise, matmul_peak, noise_summary, runnable_precisions
from train_variants import (
    BATCH,
    BLOCK,
    DTYPES,
    N_EMBD,
    N_HEAD,
    N_LAYER,
    VOCAB,
    Variant,
    build_hf,
    build_nanogpt,
    build_ours,
    load_nanogpt,
)


def measure_peaks(precisions: list[str]) -> dict[str, float]:
    return {name: matmul_peak(DTYPES[name] or torch.float32) for name in precisions}


def flops_per_token(n_params: int) -> int:
    """nanoGPT's estimate_mfu: 6N + 12·L·H·Q·T, N without position embeddings."""
    return 6 * n_params + 12 * N_LAYER * N_HEAD * (N_EMBD // N_HEAD) * BLOCK


# --- the run -------------------------------------------------------------------------------


def build_variants(
    args: argparse.Namespace, batches: list[tuple[torch.Tensor, torch.Tensor]], skipped: dict[str, str]
) -> list[Variant]:
    precisions = args.precision.split(",")
    variants = [build_ours(p, batches) for p in precisions]
    nano_dir = Path(args.nanogpt) if args.nanogpt else None
    if nano_dir is None or not (nano_dir / "model.py").is_file():
        skipped["nanogpt"] = (
            f"no model.py in {nano_dir}" if nano_dir else "--nanogpt not given"
        ) + " (fetch github:karpathy/nanoGPT and extract model.py, see --help)"
    else:
        nano = load_nanogpt(nano_dir)
        variants += [build_nanogpt(nano, p, False, batches) for p in precisions]
        if args.compile:
            # The fastest precision this CPU trains in (bf16 where it has the kernels), or all.
            fastest = "bf16" if "bf16" in precisions else "fp32"
            variants += [build_nanogpt(nano, p, True, batches) for p in precisions if p == fastest or args.compile_all]
    try:
        variants += [build_hf(p, batches) for p in precisions]
    except ImportError as exc:
        skipped["hf_gpt2"] = f"transformers not importable ({exc}); pip install transformers"
    for name, why in skipped.items():
        log(f"skipping {name}: {why}")
    return variants


def measure(variants: list[Variant], args: argparse.Namespace) -> list[dict[str, float]]:
    """Warm every variant up, then time them one step at a time in turn (the order rotating
    every round), so that a slow drift of the machine hits all of them alike. Returns the
    rounds: {variant: seconds of its step} each, for paired ratios."""
    for v in variants:
        for w in range(args.warmup):
            t0 = time.perf_counter()
            v.step()
            if w == 0:
                v.first_step_s = round(time.perf_counter() - t0, 2)
    rounds: list[dict[str, float]] = []
    for p in range(args.passes):
        gc.collect()
        window = CpuWindow()
        tokens = dict.fromkeys((v.name for v in variants), 0)
        seconds = dict.fromkeys((v.name for v in variants), 0.0)
        for s in range(args.steps):
            k = (p * args.steps + s) % len(variants)
            times = {}
            for v in variants[k:] + variants[:k]:
                t0 = time.perf_counter()
                tokens[v.name] += v.step()
                times[v.name] = time.perf_counter() - t0
                seconds[v.name] += times[v.name]
            rounds.append(times)
        pass_window = window.stop()
        for v in variants:
            v.windows.append(pass_window)
            v.samples.append(tokens[v.name] / seconds[v.name])
            log(f"pass {p + 1}/{args.passes} {v.name:24s} {v.samples[-1]:8.1f} tok/s")
        log(f"pass {p + 1}/{args.passes}: other processes used {pass_window['other_cpu_s']:.2f} CPU s")
    return rounds


def report(
    variants: list[Variant],
    rounds: list[dict[str, float]],
    peaks: dict[str, float],
    env: dict[str, Any],
    skipped: dict[str, str],
    args: argparse.Namespace,
    noise: dict[str, Any],
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "train_throughput",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **env,
        "shape": {
            "n_layer": N_LAYER,
            "n_head": N_HEAD,
            "n_embd": N_EMBD,
            "block_size": BLOCK,
            "batch": BATCH,
            "vocab_size": VOCAB,
        },
        "warmup": args.warmup,
        "steps": args.steps,
        "passes": args.passes,
        "peak_tflops": {k: round(v / 1e12, 3) for k, v in peaks.items()},
        "variants": {},
        "skipped": skipped,
        "noise": noise,
    }
    medians = {}
    for v in variants:
        med = statistics.median(v.samples)
        medians[v.name] = med
        fpt = flops_per_token(v.n_params)
        out["variants"][v.name] = {
            "tokens_per_s": round(med, 1),
            "samples": [round(s, 1) for s in v.samples],
            "mfu": round(med * fpt / peaks[v.precision], 4),
            "gflop_per_token": round(fpt / 1e9, 4),
            "params_without_positions": v.n_params,
            "first_step_s": v.first_step_s,
            "other_cpu_s": [w["other_cpu_s"] for w in v.windows],
        }
    peers = {k: m for k, m in medians.items() if not k.startswith("ours_")}
    if peers:
        fastest = max(peers, key=lambda k: peers[k])
        out["fastest_peer"] = {"variant": fastest, "tokens_per_s": round(peers[fastest], 1)}
        out["ours_vs_fastest_peer"] = {
            k: round(m / peers[fastest], 3) for k, m in medians.items() if k.startswith("ours_")
        }
        # Per round, the peer's step time over ours: robust to the machine's drift.
        out["ours_vs_fastest_peer_paired"] = {
            k: round(statistics.median(r[fastest] / r[k] for r in rounds), 3) for k in medians if k.startswith("ours_")
        }
        out["ours_vs_best_peer_same_precision"] = {}
        for k, m in medians.items():
            if k.startswith("ours_"):
                same = [pm for pk, pm in peers.items() if pk.endswith(k.removeprefix("ours"))]
                if same:
                    out["ours_vs_best_peer_same_precision"][k] = round(m / max(same), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nanogpt", help="directory holding nanoGPT's model.py (that peer is skipped without it)")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="add torch.compile nanoGPT in bf16 (fp32 where bf16 is not measured); ~40 s cold compile",
    )
    ap.add_argument("--compile-all", action="store_true", help="with --compile, compile the fp32 variant too")
    ap.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.passes < 1:
        ap.error("--warmup, --steps and --passes must be at least 1")
    if not set(args.precision.split(",")) <= set(DTYPES):
        ap.error(f"--precision takes a comma-separated subset of {sorted(DTYPES)}")
    precisions = runnable_precisions(args.precision.split(","))
    if not precisions:
        ap.error("nothing to measure: bf16 is not supported on this CPU")
    args.precision = ",".join(precisions)
    torch.set_num_threads(args.threads)

    env = environment()
    peaks = measure_peaks(precisions)
    log(
        f"torch {env['torch']} ({env['cpu_capability']}, {env['threads']} threads, bf16 matmul "
        f"{env['onednn_bf16_matmul']}); matmul peak "
        + ", ".join(f"{k} {v / 1e12:.3f}" for k, v in peaks.items())
        + " TFLOP/s"
    )
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randint(0, VOCAB, (BATCH, BLOCK + 1), generator=g) for _ in range(4)]
    batches = [(c[:, :-1].contiguous(), c[:, 1:].contiguous()) for c in chunks]
    skipped: dict[str, str] = {}
    variants = build_variants(args, batches, skipped)

    window = CpuWindow()
    rounds = measure(variants, args)
    noise = noise_summary([w for v in variants for w in v.windows], window.stop())
    # The ceiling is measured again after the run; the better of the two counts, so a noisy start does
    # not flatter MFU.
    peaks_after = measure_peaks(precisions)
    env["peak_tflops_start_end"] = {k: [round(peaks[k] / 1e12, 3), round(peaks_after[k] / 1e12, 3)] for k in peaks}
    peaks = {k: max(peaks[k], peaks_after[k]) for k in peaks}
    result = report(variants, rounds, peaks, env, skipped, args, noise)
    for name, v in result["variants"].items():
        log(f"{name:24s} {v['tokens_per_s']:8.1f} tok/s  MFU {v['mfu']:.1%}")
    if "ours_vs_fastest_peer" in result:
        log(
            f"ours / fastest peer ({result['fastest_peer']['variant']}): {result['ours_vs_fastest_peer']}; "
            f"paired per step: {result['ours_vs_fastest_peer_paired']}"
        )
    log_noise(noise)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
