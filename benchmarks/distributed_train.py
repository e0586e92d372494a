"""Tokens/s of one training job run as 1 process and as N processes (resources.processes, under
torchrun: models/training/launch.py), same spec and global batch, in one run, alternating.

On this 2-core CPU the point is correctness and overhead, not speed: N gloo processes share
the same two cores (each gets cores // N intra-op threads), so N = 2 can at best match 1.
On a GPU host the same script compares 1 against N GPUs (`--device cuda`). Throughput is
taken from the jobs' own `train.step` events (their median tokens/s, summed over ranks as
the pipeline reports the global batch), and wall time per job from start to result, which
also counts torchrun's start (about 5 s here).

    .venv/bin/python benchmarks/distributed_train.py [--processes 2] [--sharding ddp|fsdp]
        [--steps 40] [--passes 2] [--device cpu|cuda] [--layers 4] [--width 256]

One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.machine import CpuWindow, environment, log  # noqa: E402
from models.events import Event  # noqa: E402
from models.spec import parse_spec  # noqa: E402
from models.training.launch import run_processes  # noqa: E402
from models.training.run import run  # noqa: E402


def corpus(path: Path) -> Path:
    words = ["the", "market", "library", "garden", "station", "museum", "apples", "lamps", "coins", "maps"]
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12 + i % 9)) + "." for i in range(4000)]
    path.write_text("\n".join(lines) + "\n")
    return path


def spec(data: Path, args: argparse.Namespace, processes: int) -> dict[str, Any]:
    return {
        "name": f"bench-p{processes}",
        "seed": 0,
        "model": {"arch": "gpt", "n_layer": args.layers, "n_head": 4, "n_embd": args.width, "block_size": 128},
        "tokenizer": {"type": "bpe", "vocab_size": 1024, "train_on": ["corpus"]},
        "data": {"corpus": {"dataset": str(data), "validation_fraction": 0.05}},
        "stages": [
            {
                "type": "pretrain",
                "name": "pretrain",
                "data": "corpus",
                "steps": args.steps,
                "batch_size": 16,
                "loss": {"type": "causal_lm"},
                "optimizer": {"type": "adamw", "lr": 1e-3},
            }
        ],
        "evaluation": {"every_steps": 10**6, "metrics": ["loss"], "max_samples": 0},
        "checkpointing": {"every_steps": 10**6, "keep_last": 1},
        "precision": "fp32",
        "device": args.device,
        "resources": {"processes": processes, "sharding": args.sharding if processes > 1 else "ddp"},
    }


def one_job(root: Path, data: Path, args: argparse.Namespace, processes: int, tag: str) -> dict[str, Any]:
    steps: list[Event] = []
    s = parse_spec(spec(data, args, processes))
    launch = run_processes if processes > 1 else run
    start = time.perf_counter()
    result = launch(s, root / tag, on_event=lambda e: steps.append(e) if e["type"] == "train.step" else None)
    wall = time.perf_counter() - start
    rates = [e["data"]["tokens_per_s"] for e in steps[3:]]  # past the first steps' warm-up
    return {"wall_s": wall, "tokens_per_s": statistics.median(rates), "steps": result.steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--sharding", choices=["ddp", "fsdp"], default="ddp")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="the 1-process job's torch threads (0: every core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="dist-bench-"))
    data = corpus(root / "corpus.txt")
    runs: dict[str, list[dict[str, Any]]] = {"p1": [], f"p{args.processes}": []}
    window = CpuWindow()
    for i in range(args.passes):
        order = [1, args.processes] if i % 2 == 0 else [args.processes, 1]
        for n in order:
            got = one_job(root, data, args, n, f"pass{i}-p{n}")
            log(f"pass {i} processes {n}: {got}")
            runs[f"p{n}"].append(got)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "tokens_per_s")} for k, v in runs.items()}
    n = f"p{args.processes}"
    report = {
        "processes": args.processes,
        "sharding": args.sharding,
        "device": args.device,
        "threads_1_process": torch.get_num_threads(),
        "median": {k: {m: round(x, 2) for m, x in v.items()} for k, v in med.items()},
        "n_vs_1": {
            "tokens_per_s": round(med[n]["tokens_per_s"] / med["p1"]["tokens_per_s"], 3),
            "wall_s": round(med[n]["wall_s"] / med["p1"]["wall_s"], 3),
        },
        "other_cpu": window.stop(),
        "environment": environment(),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
