"""LoRA fine-tuning tokens/s against our full fine-tuning and against transformers + peft,
and the peak resident memory of a LoRA run against a full one.

One shape for every variant (`--shape`): the example's GPT (`gpt`,
shared/examples/multistep.yaml: n_layer 4, n_head 4, n_embd 256, block 256, vocab 2048,
batch 16) or SmolLM2-135M's Llama shape (`smollm2`: 30 layers, n_embd 576, 9 query / 3
key-value heads, SwiGLU 1536, vocab 49,152, tied head; block 256, batch `--batch`, 4 by
default), random init, random tokens, AdamW (lr 1e-3, betas 0.9/0.95, weight decay 0.1
on matrices), gradient clipping at 1.0. LoRA: rank 8, alpha 16, no dropout, on every
attention and MLP projection (GPT: c_attn, attn.c_proj, c_fc, mlp.c_proj; Llama: q, k, v,
o, gate, up, down) in both ours and peft. Ours goes through `models.training.stages.train_step`
with a segment planned from a parsed spec (an `adapter:` finetune stage for LoRA,
`trainable: [all]` for the full run); peft wraps transformers' GPT2LMHeadModel or
LlamaForCausalLM. The variants take turns
one step at a time (the order rotating), over several passes; medians of the passes, and
per-round paired ratios (each pair ran back to back, so the machine's drift cancels).

Peak RSS: each of ours full / ours LoRA / peft runs alone in a child process (VmHWM
is per process), reported as the peak and as the peak above the process's RSS once its
model was built (the training's own memory, without Python + torch + the base weights).

    .venv/bin/python benchmarks/lora_train.py [--shape gpt|smollm2] [--precision bf16] [--steps 10 --passes 3]

One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine import CpuWindow, environment, log, log_noise, noise_summary, runnable_precisions
from ours import plan, segment_step
from train_variants import DTYPES, RandomBatches, peer_step

from models.families.gpt.config import GPTConfig
from models.families.gpt.model import GPT
from models.families.llama.config import LlamaConfig
from models.spec import parse_spec

N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH, VOCAB = 4, 4, 256, 256, 16, 2048
SMOLLM2 = {"n_layer": 30, "n_embd": 576, "n_head": 9, "n_kv_head": 3, "intermediate_size": 1536, "vocab": 49152}
SHAPE = {"name": "gpt", "batch": BATCH, "vocab": VOCAB}  # set from the command line in main()
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, (0.9, 0.95), 0.1, 1.0
RANK, ALPHA = 8, 16
VARIANTS = ("ours_full", "ours_lora", "peft_lora")
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def build_ours(lora: bool, precision: str, batches: Batches) -> Callable[[], int]:
    stage: dict[str, Any] = {
        "type": "finetune",
        "name": "tune",
        "data": "random",
        "steps": 1_000_000,
        "batch_size": SHAPE["batch"],
        "loss": {"type": "causal_lm"},
        "grad_clip": GRAD_CLIP,
        "optimizer": {"type": "adamw", "lr": LR, "betas": list(BETAS), "weight_decay": WEIGHT_DECAY},
    }
    if lora:
        stage["adapter"] = {"type": "lora", "rank": RANK, "alpha": ALPHA, "targets": ["attention", "mlp"]}
    spec = parse_spec(
        {
            "name": "lora-train",
            "model": {"init_from": {"model": "random-base"}},
            "data": {"random": {"dataset": "random-tokens"}},
            "stages": [stage],
            "precision": precision,
            "device": "cpu",
        }
    )
    pipe, seg = plan(spec)
    torch.manual_seed(0)
    if SHAPE["name"] == "smollm2":
        from models.families.llama.model import Llama

        s = SMOLLM2
        config = LlamaConfig(s["vocab"], BLOCK, n_layer=s["n_layer"], n_head=s["n_head"], n_kv_head=s["n_kv_head"],
                             n_embd=s["n_embd"], intermediate_size=s["intermediate_size"])  # fmt: skip
        model: torch.nn.Module = Llama(config)
    else:
        model = GPT(GPTConfig(VOCAB, BLOCK, N_LAYER, N_HEAD, N_EMBD))
    pipe.adapters.create(model)  # what Pipeline.build_model does after loading the base
    pipe.adapters.apply(model, 0)
    return segment_step(pipe, seg, model, RandomBatches(batches))


def peft_llama() -> tuple[torch.nn.Module, Any]:
    import peft
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaForCausalLM

    s = SMOLLM2
    cfg = HFLlamaConfig(
        vocab_size=s["vocab"],
        hidden_size=s["n_embd"],
        intermediate_size=s["intermediate_size"],
        num_hidden_layers=s["n_layer"],
        num_attention_heads=s["n_head"],
        num_key_value_heads=s["n_kv_head"],
        max_position_embeddings=BLOCK,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=LLAMA_TARGETS)
    return LlamaForCausalLM(cfg), config


def build_peft(precision: str, batches: Batches) -> Callable[[], int]:
    import peft
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    if SHAPE["name"] == "smollm2":
        base, config = peft_llama()
        return _peft_step(peft.get_peft_model(base, config).train(), precision, batches)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=BLOCK,
        n_embd=N_EMBD,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    base = GPT2LMHeadModel(cfg)
    config = peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True
    )
    return _peft_step(peft.get_peft_model(base, config).train(), precision, batches)


def _peft_step(model: torch.nn.Module, precision: str, batches: Batches) -> Callable[[], int]:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS)
    return peer_step(model, lambda x, y: model(input_ids=x, labels=x).loss, opt, precision, batches)


def build(name: str, precision: str, batches: Batches) -> Callable[[], int]:
    if name == "peft_lora":
        return build_peft(precision, batches)
    return build_ours(name == "ours_lora", precision, batches)


def random_batches() -> Batches:
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randint(0, SHAPE["vocab"], (SHAPE["batch"], BLOCK + 1), generator=g) for _ in range(4)]
    return [(c[:, :-1].contiguous(), c[:, 1:].contiguous()) for c in chunks]


def child_rss(name: str, precision: str, steps: int) -> dict[str, int]:
    """Run in a fresh process: build one variant, train `steps` steps, report memory."""
    step = build(name, precision, random_batches())
    built = status_kb("VmRSS")
    for _ in range(steps):
        step()
    peak = status_kb("VmHWM")  # not ru_maxrss: that one carries the parent's peak across fork + exec
    return {"peak_rss_kb": peak, "rss_after_build_kb": built, "training_kb": peak - built}


def measure_rss(precision: str, steps: int, threads: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--rss-child", name, "--precision", precision, "--steps", str(steps)]
        cmd += ["--shape", SHAPE["name"], "--batch", str(SHAPE["batch"])]
        cmd += ["--threads", str(threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=Path(__file__).parent)
        if done.returncode:
            raise RuntimeError(f"{name} memory run failed: {done.stderr[-2000:]}")
        out[name] = json.loads(done.stdout)
        mib = {k: v / 1024 for k, v in out[name].items()}
        log(f"{name}: peak RSS {mib['peak_rss_kb']:.0f} MiB ({mib['training_kb']:.0f} MiB above the built model)")
    full = out["ours_full"]
    out["ours_lora_vs_full"] = {
        "peak_rss": round(out["ours_lora"]["peak_rss_kb"] / full["peak_rss_kb"], 3),
        "training_memory": round(out["ours_lora"]["training_kb"] / max(1, full["training_kb"]), 3),
    }
    return out


def measure_speed(precision: str, args: argparse.Namespace) -> dict[str, Any]:
    batches = random_batches()
    steps = {name: build(name, precision, batches) for name in VARIANTS}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    samples: dict[str, list[float]] = {n: [] for n in VARIANTS}
    rounds: list[dict[str, float]] = []
    windows = []
    order = list(VARIANTS)
    for p in range(args.passes):
        gc.collect()
        window = CpuWindow()
        tokens, seconds = dict.fromkeys(VARIANTS, 0), dict.fromkeys(VARIANTS, 0.0)
        for s in range(args.steps):
            k = (p * args.steps + s) % len(order)
            times = {}
            for name in order[k:] + order[:k]:
                t0 = time.perf_counter()
                tokens[name] += steps[name]()
                times[name] = time.perf_counter() - t0
                seconds[name] += times[name]
            rounds.append(times)
        windows.append(window.stop())
        for name in VARIANTS:
            samples[name].append(tokens[name] / seconds[name])
            log(f"{precision} pass {p + 1}/{args.passes} {name:10s} {samples[name][-1]:8.1f} tok/s")
    med = {n: statistics.median(v) for n, v in samples.items()}

    def paired(fast: str, slow: str) -> float:
        return round(statistics.median(r[slow] / r[fast] for r in rounds), 3)

    return {
        "tokens_per_s": {n: round(m, 1) for n, m in med.items()},
        "samples": {n: [round(x, 1) for x in v] for n, v in samples.items()},
        "ours_lora_vs_ours_full": round(med["ours_lora"] / med["ours_full"], 3),
        "ours_lora_vs_peft_lora": round(med["ours_lora"] / med["peft_lora"], 3),
        "paired": {
            "ours_lora_vs_ours_full": paired("ours_lora", "ours_full"),
            "ours_lora_vs_peft_lora": paired("ours_lora", "peft_lora"),
        },
        "windows": windows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--rss-steps", type=int, default=5, help="steps of each memory run (0: no memory runs)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--shape", choices=["gpt", "smollm2"], default="gpt")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: 16 for gpt, 4 for smollm2)")
    ap.add_argument("--rss-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    big = args.shape == "smollm2"
    SHAPE.update(name=args.shape, batch=args.batch or (4 if big else BATCH), vocab=SMOLLM2["vocab"] if big else VOCAB)
    if args.rss_child:
        print(json.dumps(child_rss(args.rss_child, args.precision, args.steps)))
        return
    if not set(args.precision.split(",")) <= set(DTYPES):
        ap.error(f"--precision takes a comma-separated subset of {sorted(DTYPES)}")
    precisions = runnable_precisions(args.precision.split(","))
    if not precisions:
        ap.error("nothing to measure: bf16 is not supported on this CPU")
    env = environment()
    run_window = CpuWindow()
    result: dict[str, Any] = {
        "benchmark": "lora_train",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **env,
        "shape": (
            {"name": "smollm2", **SMOLLM2, "block_size": BLOCK, "batch": SHAPE["batch"]}
            if big
            else {
                "name": "gpt",
                "n_layer": N_LAYER,
                "n_head": N_HEAD,
                "n_embd": N_EMBD,
                "block_size": BLOCK,
                "batch": SHAPE["batch"],
                "vocab_size": VOCAB,
            }
        ),
        "lora": {
            "rank": RANK,
            "alpha": ALPHA,
            "targets": LLAMA_TARGETS if big else ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"],
        },
        "warmup": args.warmup,
        "steps": args.steps,
        "passes": args.passes,
        "speed": {},
        "memory": {},
    }
    for precision in precisions:
        result["speed"][precision] = speed = measure_speed(precision, args)
        if args.rss_steps:
            result["memory"][precision] = measure_rss(precision, args.rss_steps, args.threads)
        log(
            f"{precision}: {speed['tokens_per_s']}; LoRA/full {speed['ours_lora_vs_ours_full']}, "
            f"LoRA/peft {speed['ours_lora_vs_peft_lora']} (paired {speed['paired']})"
        )
    windows = [w for s in result["speed"].values() for w in s.pop("windows")]
    result["noise"] = noise_summary(windows, run_window.stop())
    log_noise(result["noise"])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    # the child runs from benchmarks/, where `machine`, `ours` and `train_variants` live
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
