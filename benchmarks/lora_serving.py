"""Serving several LoRA adapters of one base: 8 concurrent requests over 4 adapters in one
decoding batch against the same 8 served one after another, and the adapters' memory
beside the base's.

Shape of PERFORMANCE.md (n_layer 6, n_head 6, n_embd 384, block 256, vocab 8192; with
`--arch llama` a Llama of that size: 2 key-value heads, SwiGLU 1024, tied), random
weights, 4 adapters (rank 8, alpha 16, every attention and MLP projection, random A and
B), 32-token prompts, 128 new tokens, greedy, fp32, every row run to its length. All
variants step one `models.inference.decoder.Decoder` directly (no HTTP, no engine thread):

- `lora_seq8`: the 8 requests (2 per adapter) one after another;
- `lora_conc8`: the same 8 at once, each row with its own adapter;
- `base_conc8`: 8 base-only rows at once (what the per-row low-rank products cost).

Goals (issue 10): lora_conc8 >= 3x lora_seq8; 4 adapters' memory <= 10% of the base.

    .venv/bin/python benchmarks/lora_serving.py [--arch gpt|llama] [--passes 3] [--threads 2] [--tiny]

One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import CpuWindow, environment, log, log_noise, noise_summary  # noqa: E402

from models.data.tokenizer import Tokenizer  # noqa: E402
from models.families import FAMILIES  # noqa: E402
from models.families.gpt.config import GPTConfig  # noqa: E402
from models.families.gpt.model import GPT  # noqa: E402
from models.families.llama.config import LlamaConfig  # noqa: E402
from models.families.llama.model import Llama  # noqa: E402
from models.inference.decoder import Decoder, Row  # noqa: E402
from models.inference.generate import Sampling  # noqa: E402
from models.lora import layers as lora  # noqa: E402
from models.spec import AdapterSpec  # noqa: E402

SHAPES = {
    "default": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "vocab": 8192, "prompt": 32, "new": 128},
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "vocab": 512, "prompt": 8, "new": 16},
}
ADAPTERS, REQUESTS, RANK, ALPHA = 4, 8, 8, 16


def new_model(arch: str, shape: dict[str, int]) -> GPT | Llama:
    if arch == "llama":
        n_head = shape["n_head"]
        return Llama(LlamaConfig(shape["vocab"], shape["block_size"], n_layer=shape["n_layer"], n_head=n_head,
                                 n_kv_head=max(1, n_head // 3), n_embd=shape["n_embd"],
                                 intermediate_size=8 * shape["n_embd"] // 3))  # fmt: skip
    return GPT(GPTConfig(shape["vocab"], shape["block_size"], shape["n_layer"], shape["n_head"], shape["n_embd"]))


def build(arch: str, shape: dict[str, int]) -> tuple[GPT | Llama, Tokenizer, dict[str, lora.Adapter]]:
    torch.manual_seed(0)
    model = new_model(arch, shape).eval()
    texts = [f"request {i} asks about item {i * 7 % 13} and answers" for i in range(400)]
    tok = Tokenizer.train(texts, max(300, min(shape["vocab"], 512)))
    spec = AdapterSpec(type="lora", rank=RANK, alpha=ALPHA, targets=["attention", "mlp"])
    adapters = {}
    for k in range(ADAPTERS):
        holder = new_model(arch, shape)
        lora.add_adapter(holder, FAMILIES[arch].lora, f"a{k}", spec, seed=k)
        with torch.no_grad():
            for p in lora.adapter_params(holder, f"a{k}"):
                p.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(k * 1000 + p.numel()))
        adapters[f"a{k}"] = lora.extract(holder, f"a{k}")
    return model, tok, adapters


def rows(shape: dict[str, int], with_adapters: bool) -> list[Row]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(REQUESTS):
        prompt = torch.randint(0, shape["vocab"], (shape["prompt"],), generator=g).tolist()
        name = f"a{i % ADAPTERS}" if with_adapters else None
        out.append(Row(prompt, Sampling(max_new_tokens=shape["new"]), adapter=name, ignore_eos=True))
    return out


def drain(dec: Decoder, batch: list[Row]) -> int:
    for r in batch:
        dec.add(r)
    while dec.busy:
        dec.step()
    return sum(len(r.tokens) for r in batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tiny", action="store_true", help="a toy shape (for the test suite)")
    ap.add_argument("--arch", choices=["gpt", "llama"], default="gpt")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = SHAPES["tiny" if args.tiny else "default"]
    model, tok, adapters = build(args.arch, shape)
    dec = Decoder(model, tok, max_batch=16)
    base_bytes = dec.net.nbytes()
    for name, adapter in adapters.items():
        dec.add_adapter(name, adapter)
    variants: dict[str, Callable[[], int]] = {
        "lora_seq8": lambda: sum(drain(dec, [r]) for r in rows(shape, True)),
        "lora_conc8": lambda: drain(dec, rows(shape, True)),
        "base_conc8": lambda: drain(dec, rows(shape, False)),
    }
    for fn in variants.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {k: [] for k in variants}
    windows = []
    run_window = CpuWindow()
    for p in range(args.passes):
        for name, fn in list(variants.items())[p % 3 :] + list(variants.items())[: p % 3]:
            window = CpuWindow()
            t0 = time.perf_counter()
            tokens = fn()
            samples[name].append(tokens / (time.perf_counter() - t0))
            windows.append(window.stop())
            log(f"pass {p + 1}/{args.passes} {name:12s} {samples[name][-1]:8.1f} tok/s")
    med = {k: statistics.median(v) for k, v in samples.items()}
    # the same greedy tokens either way: batching does not change what a row decodes
    seq, conc = rows(shape, True), rows(shape, True)
    for r in seq:
        drain(dec, [r])
    drain(dec, conc)
    noise = noise_summary(windows, run_window.stop())
    result: dict[str, Any] = {
        "benchmark": "lora_serving",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **environment(),
        "arch": args.arch,
        "shape": shape,
        "adapters": {"count": ADAPTERS, "rank": RANK, "alpha": ALPHA, "targets": "attention + mlp"},
        "tokens_per_s": {k: round(v, 1) for k, v in med.items()},
        "samples": {k: [round(x, 1) for x in v] for k, v in samples.items()},
        "ratios": {
            "lora_conc8_vs_lora_seq8": round(med["lora_conc8"] / med["lora_seq8"], 3),
            "lora_conc8_vs_base_conc8": round(med["lora_conc8"] / med["base_conc8"], 3),
        },
        "memory": {
            "base_bytes": base_bytes,
            "adapters_bytes": dec.net.adapters.nbytes(),
            "adapters_vs_base": round(dec.net.adapters.nbytes() / base_bytes, 4),
        },
        "concurrent_tokens_match_sequential": [r.tokens for r in seq] == [r.tokens for r in conc],
        "noise": noise,
    }
    log(f"{result['tokens_per_s']}; {result['ratios']}; adapters/base memory {result['memory']['adapters_vs_base']}")
    log_noise(noise)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
