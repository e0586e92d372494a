"""Weight-only int8 and int4 serving against fp32 (models/layers/quantized.py): greedy decode
tokens/s at batch 1 and with 8 requests decoding together, the bytes a model takes in the
serving cache, and transformers `generate` (fp32) on the same weights in the same run, as
benchmarks/llama_decode.py sets it up (random weights of a Llama shape, imported from
transformers with `from_hf_state`).

Ours is `models.inference.decoder.Decoder(..., precision=...)` stepped directly: fp32 is the
oneDNN-packed layout serving uses, int8 and int4 the quantized projections (the head int8 in
both). "8 concurrent" is 8 rows admitted at once and decoded as one batch, as the serving
engine batches 8 requests that arrive together. Each variant decodes `--new` tokens after a
`--prompt`-token prompt (no end token stops it); the median of `--passes` runs, the variants
taking turns in each pass.

Bytes: the serving net's tensors (`nbytes`: the embedding, the head, the layers), and a model
cache entry as app.serving.engine counts it (the net plus the KV cache reserved for
`--max-batch` rows of the full context, fp32 at every precision).

    .venv/bin/python benchmarks/quant_decode.py [--shape small|smollm2] [--threads 2] [--passes 3]

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
from llama_decode import theirs, tokenizer
from llama_shapes import SHAPES
from machine import CpuWindow, environment, log, log_noise, noise_summary

from models.data.tokenizer import Tokenizer
from models.families.llama.hf import from_hf_state
from models.inference.decoder import Decoder, Row
from models.inference.generate import Sampling

PRECISIONS = ("fp32", "int8", "int4")


def ours(dec: Decoder, prompts: list[list[int]], new: int) -> Callable[[], list[list[int]]]:
    def go() -> list[list[int]]:
        rows = [Row(p, Sampling(max_new_tokens=new), ignore_eos=True) for p in prompts]
        for r in rows:
            dec.add(r)
        while dec.busy:
            dec.step()
        return [r.tokens for r in rows]

    return go


def parts(dec: Decoder) -> dict[str, int]:
    net = dec.net

    def size(tensors: list[torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    embed = [net.embed] if isinstance(net.embed, torch.Tensor) else net.embed.tensors()
    out = {
        "embedding": size(embed),  # int8 and int4, tied: the head's int8 weight (total counts it once)
        "head": size(net.head.tensors()),
        "layers": size([t for layer in net.layers for t in layer.tensors()]),
    }
    return {**out, "total": net.nbytes()}


def kv_bytes(config: Any, max_batch: int) -> int:
    return 2 * config.n_layer * max_batch * config.block_size * config.n_kv_head * config.head_dim * 4


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    return round(same / sum(len(r) for r in a), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--layers", type=int, default=0, help="override the shape's layer count")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128), help="int4's")
    ap.add_argument(
        "--max-batch", type=int, default=16, help="the serving cache's rows (STAGECRAFT_INFERENCE_MAX_BATCH)"
    )
    ap.add_argument("--no-hf", action="store_true", help="leave transformers out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = SHAPES[args.shape]
    cfg = LlamaConfig(
        vocab_size=shape["vocab"], hidden_size=shape["n_embd"], intermediate_size=shape["intermediate_size"],
        num_hidden_layers=args.layers or shape["n_layer"], num_attention_heads=shape["n_head"],
        num_key_value_heads=shape["n_kv_head"], max_position_embeddings=256, tie_word_embeddings=True,
        rms_norm_eps=1e-5, rope_theta=100000.0, attn_implementation="sdpa",
    )  # fmt: skip
    hf = LlamaForCausalLM(cfg).eval()
    model, _ = from_hf_state(hf.config.to_dict(), hf.state_dict())
    tok: Tokenizer = tokenizer(model.config.vocab_size)
    g = torch.Generator().manual_seed(1)
    out: dict[str, Any] = {
        "benchmark": "quant_decode",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **environment(),
        "shape": {**shape, "n_layer": model.config.n_layer},
        "tokens_per_s": {},
        "vs_fp32": {},
        "vs_hf": {},
        "greedy_tokens_equal_fp32": {},
        "bytes": {},
    }
    decoders = {p: Decoder(model, tok, max_batch=8, precision=p, group_size=args.group_size) for p in PRECISIONS}
    fp32_bytes = parts(decoders["fp32"])
    kv = kv_bytes(model.config, args.max_batch)
    for p, dec in decoders.items():
        b = parts(dec)
        out["bytes"][p] = {**b, "cache_entry": b["total"] + kv,
                           "total_vs_fp32": round(b["total"] / fp32_bytes["total"], 3),
                           "layers_vs_fp32": round(b["layers"] / fp32_bytes["layers"], 3),
                           "cache_entry_vs_fp32": round((b["total"] + kv) / (fp32_bytes["total"] + kv), 3)}  # fmt: skip
    windows: list[dict[str, float]] = []
    run_window = CpuWindow()
    for batch in (1, 8):
        prompts = torch.randint(0, shape["vocab"], (batch, args.prompt), generator=g).tolist()
        variants = {f"{p}_b{batch}": ours(dec, prompts, args.new) for p, dec in decoders.items()}
        if not args.no_hf:
            variants[f"hf_b{batch}"] = theirs(hf, prompts, args.new)
        results = {name: go() for name, go in variants.items()}  # warm-up, and the tokens to compare
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.passes):  # the variants take turns, so a change of load hits them all
            for name, go in variants.items():
                w = CpuWindow()
                t0 = time.perf_counter()
                go()
                times[name].append(time.perf_counter() - t0)
                windows.append(w.stop())
        for name in variants:
            out["tokens_per_s"][name] = round(batch * args.new / statistics.median(times[name]), 1)
            log(f"{name}: {out['tokens_per_s'][name]} tok/s")
        tps = out["tokens_per_s"]
        for p in PRECISIONS:
            out["vs_fp32"][f"{p}_b{batch}"] = round(tps[f"{p}_b{batch}"] / tps[f"fp32_b{batch}"], 3)
            if not args.no_hf:
                out["vs_hf"][f"{p}_b{batch}"] = round(tps[f"{p}_b{batch}"] / tps[f"hf_b{batch}"], 3)
            out["greedy_tokens_equal_fp32"][f"{p}_b{batch}"] = agreement(
                results[f"fp32_b{batch}"], results[f"{p}_b{batch}"]
            )
        if not args.no_hf:
            out["greedy_tokens_equal_fp32"][f"hf_b{batch}"] = agreement(
                results[f"fp32_b{batch}"], results[f"hf_b{batch}"]
            )
    out["noise"] = noise_summary(windows, run_window.stop())
    log_noise(out["noise"])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
