"""A DPO step of ours against TRL's DPOTrainer step: tokens/s and peak resident memory.

The same model (a random Llama built as transformers' LlamaForCausalLM; ours holds the same
weights through models.families.llama.hf.from_hf_state), the same batches of pairs (random
token ids: `--batch` pairs of a `--prompt`-token prompt and two `--completion`-token
completions), the same precision (`fp32`, or `bf16`: TRL's autocast as its config's `bf16`
sets it, ours the run's CPU bf16 policy), the same reference handling (a frozen copy of the
policy, a forward pass of it per step), sigmoid DPO at β 0.1, AdamW (fused) at lr 1e-6,
gradient clipping at 1.0.

- ours: `models.training.preference.Preferences.step`, the step a run takes, on a segment
  planned from a parsed spec with a `preference` stage, its reference a frozen copy
  (models.training.reference.frozen_copy, as a stage's start makes it);
- ours_precomputed: the same with the reference log-probs computed ahead
  (`precompute_reference: true`); the one pass that computes them is timed apart
  (`precompute_s_per_pair`);
- trl: `DPOTrainer.training_step` (its fused log-prob head, its collator's batch, the
  reference model's forward pass, the backward pass under its accelerator), then
  `accelerator.clip_grad_norm_`, `optimizer.step()` and `zero_grad()` of the trainer's own
  optimizer (`adamw_torch_fused`).

Each variant runs alone in a child process (VmHWM is per process): `--steps` timed steps
after `--warmup`; the variants take turns for `--passes` rounds, medians reported, with
per-round ratios to TRL.

    .venv/bin/python benchmarks/dpo_step.py [--shape small|tiny|smollm2] [--precision fp32|bf16]
        [--batch 4 --prompt 64 --completion 64] [--steps 5 --warmup 1 --passes 3] [--threads 1]

One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from machine import environment, log

SHAPES = {
    "tiny": {"layers": 2, "hidden": 64, "heads": 4, "kv": 2, "inter": 128, "vocab": 512},
    "small": {"layers": 4, "hidden": 256, "heads": 8, "kv": 4, "inter": 688, "vocab": 8192},
    "smollm2": {"layers": 30, "hidden": 576, "heads": 9, "kv": 3, "inter": 1536, "vocab": 49152},
}
VARIANTS = ("ours", "ours_precomputed", "trl")
LR, BETA, CLIP = 1e-6, 0.1, 1.0


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def hf_model(shape: dict[str, int], seed: int = 0) -> Any:
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["inter"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv"],
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(config)


def pairs(args: argparse.Namespace, vocab: int, n: int) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(1)

    def ids(k: int) -> list[int]:
        return torch.randint(3, vocab, (k,), generator=g).tolist()

    return [
        {"prompt_ids": ids(args.prompt), "chosen_ids": ids(args.completion), "rejected_ids": ids(args.completion)}
        for _ in range(n)
    ]


class FixedPairs:
    """A stream of the benchmark's pairs, `batch` at a time, in order (as PreferenceStream batches them)."""

    def __init__(self, examples: list[dict[str, list[int]]], pad_id: int):
        from models.data.preference_stream import PairBatch
        from models.data.streams import collate

        self.examples, self.pad_id, self.cursor = examples, pad_id, 0
        self.ref: torch.Tensor | None = None
        self._collate, self._pair = collate, PairBatch

    def batch_of(self, rows: list[int]) -> Any:
        seqs = [
            (e["prompt_ids"] + e[f"{side}_ids"], len(e["prompt_ids"]) - 1)
            for side in ("chosen", "rejected")
            for e in (self.examples[i] for i in rows)
        ]
        b = self._collate(seqs, self.pad_id)
        ref = None if self.ref is None else self.ref[rows]
        return self._pair(b.idx, b.targets, b.completion_targets, b.tokens, torch.tensor(rows), ref)

    def next_batch(self, batch_size: int) -> Any:
        rows = [(self.cursor + i) % len(self.examples) for i in range(batch_size)]
        self.cursor += batch_size
        return self.batch_of(rows)


def build_ours(args: argparse.Namespace, precomputed: bool) -> tuple[Any, dict[str, float]]:
    sys.path.insert(0, str(Path(__file__).parent))
    from ours import plan

    from models.families.llama.hf import from_hf_state
    from models.spec import parse_spec
    from models.training.reference import Source, frozen_copy

    shape = SHAPES[args.shape]
    hf = hf_model(shape)
    model, _ = from_hf_state(hf.config.to_dict(), hf.state_dict())
    del hf
    stage = {
        "type": "preference",
        "name": "dpo",
        "data": "d",
        "steps": 1000,
        "batch_size": args.batch,
        "loss": {"type": "dpo", "beta": BETA},
        "optimizer": {"type": "adamw", "lr": LR},
        "grad_clip": CLIP,
        "precompute_reference": precomputed,
    }
    spec = parse_spec(
        {
            "name": "bench",
            "tokenizer": {"train_on": ["d"]},
            "data": {"d": {"dataset": "d.jsonl"}},
            "stages": [stage],
            "precision": args.precision,
            "device": "cpu",
        }
    )
    pipe, seg = plan(spec)
    pipe.adopt(model)
    trainee = pipe.trainee(seg)
    stream = FixedPairs(pairs(args, shape["vocab"], args.batch * 8), pad_id=0)
    source = Source(model=frozen_copy(pipe.model))
    extra: dict[str, float] = {}
    if precomputed:  # as Preferences.compute_ahead: every pair once, then the copy is freed
        t0 = time.perf_counter()
        out = torch.full((len(stream.examples), 2), float("nan"))
        for b in range(0, len(stream.examples), 16):
            rows = list(range(b, min(b + 16, len(stream.examples))))
            out[rows] = source.logps(pipe.model, stream.batch_of(rows), pipe.autocast)
        extra["precompute_s_per_pair"] = round((time.perf_counter() - t0) / len(stream.examples), 5)
        stream.ref, source = out, Source()
    else:
        pipe.prefs.sources[seg.key] = source
    counter = iter(range(1, 10**9))

    def step() -> int:
        s = next(counter)
        return pipe.prefs.step(
            pipe.model, pipe.weights, trainee, stream, seg, s, LR, pipe.autocast, pipe.to_device
        ).tokens

    return step, extra


def build_trl(args: argparse.Namespace) -> tuple[Any, dict[str, float]]:
    import transformers
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from trl import DPOConfig, DPOTrainer

    shape = SHAPES[args.shape]
    vocab = {f"t{i}": i for i in range(shape["vocab"])}
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t2")), pad_token="t0", eos_token="t1"
    )
    policy = hf_model(shape)
    reference = copy.deepcopy(policy)
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(),
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        bf16=args.precision == "bf16",
        beta=BETA,
        loss_type=["sigmoid"],
        learning_rate=LR,
        max_grad_norm=CLIP,
        weight_decay=0.0,
        optim="adamw_torch_fused",
        per_device_train_batch_size=args.batch,
        max_length=None,
    )
    data = Dataset.from_list([{"prompt": "t5", "chosen": " t6", "rejected": " t7"}] * 2)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=config, train_dataset=data, processing_class=tok)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # (what Trainer's own loop sets before its steps)
    model = trainer.model
    model.train()
    examples = pairs(args, shape["vocab"], args.batch * 8)
    cursor = iter(range(10**9))

    def step() -> int:
        k = next(cursor) * args.batch
        batch = [examples[(k + i) % len(examples)] for i in range(args.batch)]
        inputs = trainer.data_collator(batch)
        trainer.training_step(model, inputs)
        trainer.accelerator.clip_grad_norm_(model.parameters(), CLIP)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        return int(inputs["attention_mask"].sum())

    return step, {}


def child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    step, extra = build_trl(args) if name == "trl" else build_ours(args, name == "ours_precomputed")
    built = status_kb("VmRSS")
    for _ in range(args.warmup):
        step()
    tokens, t0 = 0, time.perf_counter()
    for _ in range(args.steps):
        tokens += step()
    elapsed = time.perf_counter() - t0
    peak = status_kb("VmHWM")
    return {
        "tokens_per_s": round(tokens / elapsed, 1),
        "step_s": round(elapsed / args.steps, 4),
        "peak_rss_mib": round(peak / 1024, 1),
        "rss_after_build_mib": round(built / 1024, 1),
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="small")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--completion", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    argv = [a for a in sys.argv[1:]]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for p in range(args.passes):
        order = VARIANTS[p % 3 :] + VARIANTS[: p % 3]
        for name in order:
            out = subprocess.run(
                [sys.executable, __file__, *argv, "--child", name], capture_output=True, text=True, check=True
            )
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            log(f"pass {p + 1} {name}: {runs[name][-1]}")
    median = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
    ratios = {
        f"{v}_vs_trl": {
            "tokens_per_s": round(
                statistics.median(a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs[v], runs["trl"])), 3
            ),
            "peak_rss": round(median[v]["peak_rss_mib"] / median["trl"]["peak_rss_mib"], 3),
        }
        for v in ("ours", "ours_precomputed")
    }
    shape = SHAPES[args.shape]
    report = {
        "settings": {
            "shape": args.shape,
            **shape,
            "precision": args.precision,
            "pairs_per_step": args.batch,
            "tokens_per_sequence": args.prompt + args.completion,
            "steps": args.steps,
            "passes": args.passes,
            "threads": args.threads,
        },
        "median": median,
        "ratios": ratios,
        "environment": environment(),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
