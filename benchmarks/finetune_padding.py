"""Finetune real-token throughput: our dynamically padded batches against padded baselines.

The finetune stage of shared/examples/multistep.yaml (cross_entropy, Adam lr 5e-4, l2 1e-5,
batch 16) on the example model shape (n_layer 4, n_head 4, n_embd 256, block 256) with a
2048-token BPE trained on the data, run through `models.training.stages.train_step` with three
batch sources over the same encoded records:

- ours: `models.data.streams.RecordStream`: random batches (tasks mixed), each padded to its
  longest record;
- random_longest: this script's own random batches padded to their longest (a check on ours);
- block_padded: records in random order, every batch padded to block_size (naive code).

Tokens/s counts real (non-padding) input tokens. Variants are interleaved over passes;
the median per variant is reported. Goal: ours ≥ 2× block_padded.

    .venv/bin/python benchmarks/finetune_padding.py [--data /work/shared/examples/data/pairs.jsonl]

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.data import records
from models.data.streams import IGNORE, Batch, RecordStream, Stream, collate, fork, stable_seed
from models.data.tokenizer import Tokenizer
from models.families.gpt.config import GPTConfig
from models.families.gpt.model import GPT
from models.spec import parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import CpuWindow, environment, log, log_noise, noise_summary, runnable_precisions
from ours import plan, segment_step

N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH, VOCAB = 4, 4, 256, 256, 16, 2048
SEED = 0
DEFAULT_DATA = Path("/work/shared/examples/data/pairs.jsonl")
SOURCES = ("ours", "random_longest", "block_padded")


class ShuffledRecords:
    """Naive batching of the same encoded records: a fresh random order each epoch, no length
    bucketing; each batch padded to its longest record, or to a fixed `width` (block_size)."""

    def __init__(self, seqs: list[tuple[list[int], int]], pad_id: int, key: str, width: int | None):
        self.seqs, self.pad_id, self.key, self.width = seqs, pad_id, key, width
        self.epoch, self.order, self.cursor = 0, self._order(0), 0

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(stable_seed(SEED, self.key, epoch))
        return torch.randperm(len(self.seqs), generator=g).tolist()

    def next_batch(self, batch_size: int) -> Batch:
        if self.cursor + batch_size > len(self.order):
            self.epoch, self.cursor = self.epoch + 1, 0
            self.order = self._order(self.epoch)
        rows = self.order[self.cursor : self.cursor + batch_size]
        self.cursor += batch_size
        b = collate([self.seqs[i] for i in rows], self.pad_id)
        if self.width is None or b.idx.size(1) >= self.width:
            return b
        extra = (0, self.width - b.idx.size(1))
        return Batch(
            F.pad(b.idx, extra, value=self.pad_id),
            F.pad(b.targets, extra, value=IGNORE),
            F.pad(b.completion_targets, extra, value=IGNORE),
            b.tokens,
        )


class Counted:
    """Passes batches through, counting the padded positions and loss (completion) tokens drawn."""

    def __init__(self, stream: Stream | ShuffledRecords):
        self.stream = stream
        self.positions = self.loss_tokens = 0

    def next_batch(self, batch_size: int) -> Batch:
        b = self.stream.next_batch(batch_size)
        self.positions += b.idx.numel()
        self.loss_tokens += int((b.completion_targets != IGNORE).sum())
        return b


@dataclass
class Variant:
    name: str
    source: str
    precision: str
    stream: Counted
    step: Callable[[], int]  # one optimizer step; returns its real input tokens
    samples: list[float] = field(default_factory=list)  # real tokens/s, one per pass
    positions: list[float] = field(default_factory=list)  # padded positions/s
    windows: list[dict[str, float]] = field(default_factory=list)
    real_tokens: int = 0
    padded_positions: int = 0
    loss_tokens: int = 0


def finetune_spec(precision: str) -> Any:
    return parse_spec(
        {
            "name": "finetune-padding",
            "seed": SEED,
            "model": {"n_layer": N_LAYER, "n_head": N_HEAD, "n_embd": N_EMBD, "block_size": BLOCK},
            "tokenizer": {"vocab_size": VOCAB, "train_on": ["pairs"]},
            "data": {"pairs": {"dataset": "pairs.jsonl"}},
            "stages": [
                {
                    "type": "finetune",
                    "name": "finetune",
                    "data": "pairs",
                    "steps": 1_000_000,
                    "batch_size": BATCH,
                    "loss": {"type": "cross_entropy", "label_smoothing": 0.0},
                    "optimizer": {"type": "adam", "lr": 5e-4},
                    "schedule": {"type": "constant", "warmup_steps": 10},
                    "regularization": {"l2": 1e-5},
                }
            ],
            "precision": precision,
            "device": "cpu",
        }
    )


def build(source: str, precision: str, proto: RecordStream, vocab_size: int) -> Variant:
    spec = finetune_spec(precision)
    pipe, seg = plan(spec)
    if source == "ours":  # as Pipeline.build_model does: a fork of the data's stream per segment
        inner: Stream | ShuffledRecords = fork(proto, f"pairs/{seg.key}")
    else:
        inner = ShuffledRecords(proto.seqs, proto.pad_id, "pairs", BLOCK if source == "block_padded" else None)
    stream = Counted(inner)
    torch.manual_seed(SEED)
    model = GPT(GPTConfig(vocab_size, BLOCK, N_LAYER, N_HEAD, N_EMBD))
    step = segment_step(pipe, seg, model, stream)
    return Variant(f"{source}_{precision}", source, precision, stream, step)


def measure(variants: list[Variant], args: argparse.Namespace) -> None:
    for p in range(args.passes):
        order = variants[p % len(variants) :] + variants[: p % len(variants)]
        for v in order:
            for _ in range(args.warmup):
                v.step()
            gc.collect()
            positions0, loss0 = v.stream.positions, v.stream.loss_tokens
            window = CpuWindow()
            t0 = time.perf_counter()
            tokens = sum(v.step() for _ in range(args.steps))
            dt = time.perf_counter() - t0
            v.windows.append(window.stop())
            positions = v.stream.positions - positions0
            v.real_tokens += tokens
            v.padded_positions += positions
            v.loss_tokens += v.stream.loss_tokens - loss0
            v.samples.append(tokens / dt)
            v.positions.append(positions / dt)
            log(
                f"pass {p + 1}/{args.passes} {v.name:22s} {tokens / dt:8.1f} real tok/s "
                f"({positions / dt:8.1f} positions/s; other processes: {v.windows[-1]['other_cpu_s']:.2f} CPU s)"
            )


def report(
    variants: list[Variant],
    env: dict[str, Any],
    info: dict[str, Any],
    args: argparse.Namespace,
    noise: dict[str, Any],
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "finetune_padding",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **env,
        **info,
        "warmup": args.warmup,
        "steps": args.steps,
        "passes": args.passes,
        "variants": {},
        "noise": noise,
    }
    medians: dict[str, float] = {}
    for v in variants:
        medians[v.name] = statistics.median(v.samples)
        out["variants"][v.name] = {
            "real_tokens_per_s": round(medians[v.name], 1),
            "samples": [round(s, 1) for s in v.samples],
            "positions_per_s": round(statistics.median(v.positions), 1),
            "padding_share": round(1 - v.real_tokens / v.padded_positions, 4) if v.padded_positions else None,
            "loss_tokens_share": round(v.loss_tokens / v.real_tokens, 4) if v.real_tokens else None,
            "other_cpu_s": [w["other_cpu_s"] for w in v.windows],
        }
    ratios: dict[str, float] = {}
    for precision in args.precision.split(","):
        ours = medians.get(f"ours_{precision}")
        for base in ("block_padded", "random_longest"):
            other = medians.get(f"{base}_{precision}")
            if ours and other:
                ratios[f"ours_vs_{base}_{precision}"] = round(ours / other, 3)
    out["ratios"] = ratios
    out["goal_ours_ge_2x_block_padded"] = {
        k: v >= 2.0 for k, v in ratios.items() if k.startswith("ours_vs_block_padded")
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="supervised records (jsonl)")
    ap.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated subset of {', '.join(SOURCES)}")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.passes < 1:
        ap.error("--warmup, --steps and --passes must be at least 1")
    precisions, sources = args.precision.split(","), args.sources.split(",")
    if not set(precisions) <= {"fp32", "bf16"} or not set(sources) <= set(SOURCES):
        ap.error("unknown --precision or --sources value")
    precisions = runnable_precisions(precisions)
    if not precisions:
        ap.error("nothing to measure: bf16 is not supported on this CPU")
    args.precision = ",".join(precisions)
    if not args.data.is_file():
        ap.error(f"no data file {args.data}")
    torch.set_num_threads(args.threads)

    env = environment()
    ds = records.load_file(args.data)
    if ds.kind != "records":
        ap.error(f"{args.data} is a text corpus; this benchmark needs supervised records")
    t0 = time.perf_counter()
    tok = Tokenizer.train(ds.as_texts(), VOCAB)
    proto = RecordStream(ds.examples, tok, BLOCK, SEED, "pairs")
    lengths = sorted(len(ids) - 1 for ids, _ in proto.seqs)
    info = {
        "data": str(args.data),
        "records": len(lengths),
        "vocab_size": tok.vocab_size,
        "record_tokens": {
            "mean": round(statistics.fmean(lengths), 1),
            "median": statistics.median(lengths),
            "max": lengths[-1],
        },
        "shape": {"n_layer": N_LAYER, "n_head": N_HEAD, "n_embd": N_EMBD, "block_size": BLOCK, "batch": BATCH},
        "stage": finetune_spec("fp32").stages[0].model_dump(mode="json", exclude={"steps"}),
    }
    log(
        f"torch {env['torch']} ({env['cpu_capability']}, {env['threads']} threads); {len(lengths)} records, "
        f"mean {info['record_tokens']['mean']} tokens; tokenizer + encoding {time.perf_counter() - t0:.1f} s"
    )
    variants = [build(s, p, proto, tok.vocab_size) for p in precisions for s in sources]

    window = CpuWindow()
    measure(variants, args)
    noise = noise_summary([w for v in variants for w in v.windows], window.stop())
    result = report(variants, env, info, args, noise)
    for name, v in result["variants"].items():
        log(f"{name:22s} {v['real_tokens_per_s']:8.1f} real tok/s  padding {v['padding_share']:.0%}")
    log(f"ratios: {result['ratios']}")
    log_noise(noise)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
