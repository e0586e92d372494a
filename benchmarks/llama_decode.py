"""Greedy decode tokens/s of our Llama serving path against transformers `generate`, on
the same random weights (a LlamaForCausalLM of SmolLM2-135M's shape, or with `--shape small`
the width of benchmarks/inference.py's GPT, imported with `models.families.llama.hf.from_hf_state`),
batch 1 and 8, and whether the greedy tokens agree.

Ours is `models.inference.decoder.Decoder` stepped directly (ServingLlama, oneDNN-packed
projections where available, and with `--plain` the plain layout too); theirs is
`model.generate(do_sample=False)` with its KV cache. With `--ctranslate2`, CTranslate2 is a
third peer: our model exported as a transformers directory (`models.formats.hf.directory.to_hf`, what
`GET /v1/models/{id}/export?format=hf` writes), converted with CTranslate2's
`TransformersConverter` (fp32, no quantization) and run by `ctranslate2.Generator`
(`generate_batch`, greedy, the batch of 8 as one call, `intra_threads` = `--threads`). Each
variant decodes `--new` tokens after a `--prompt`-token prompt (no end token stops it); the
median of `--passes` runs, the variants taking turns in each pass.

    .venv/bin/python benchmarks/llama_decode.py [--shape smollm2|small] [--threads 2] [--ctranslate2]

CTranslate2 is a benchmark-only extra, not a dependency of Stagecraft:
`pip install ctranslate2` (it brings its own oneDNN/OpenMP; 4.8.5 was measured).

One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from llama_shapes import SHAPES
from machine import environment, log

from models.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from models.families.llama.hf import from_hf_state
from models.families.llama.serving import ServingLlama
from models.inference.decoder import Decoder, Row
from models.inference.generate import Sampling


def tokenizer(vocab: int) -> Tokenizer:
    """A word-level tokenizer with `vocab` ids and our special tokens (ids are all we need)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    words = {f"w{i}": i for i in range(vocab - len(SPECIAL_TOKENS))}
    hf = HFTokenizer(models.WordLevel(words, unk_token="w0"))
    hf.add_special_tokens(SPECIAL_TOKENS)
    return Tokenizer(hf)


def ours(model: Any, tok: Tokenizer, prompts: list[list[int]], new: int, onednn: bool) -> Callable[[], list[list[int]]]:
    dec = Decoder(model, tok, max_batch=len(prompts))  # built once per model load, as in serving
    if not onednn:
        dec.net = ServingLlama(model, layout="plain")

    def go() -> list[list[int]]:
        rows = [Row(p, Sampling(max_new_tokens=new), ignore_eos=True) for p in prompts]
        for r in rows:
            dec.add(r)
        while dec.busy:
            dec.step()
        return [r.tokens for r in rows]

    return go


def theirs(hf: Any, prompts: list[list[int]], new: int) -> Callable[[], list[list[int]]]:
    x = torch.tensor(prompts)

    def go() -> list[list[int]]:
        with torch.inference_mode():
            out = hf.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )
        return [list(map(int, row[x.size(1) :])) for row in out]

    return go


def ctranslate2_peer(model: Any, tok: Tokenizer, work: Path, threads: int) -> Any:
    """Our model through our transformers export, converted to a CTranslate2 model directory."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    from models.formats.hf.directory import to_hf
    from models.formats.native import save_model

    save_model(work / "ours", model.state_dict(), model.config, tok, {"name": "bench"})
    to_hf(work / "ours", work / "hf")
    # CTranslate2's Llama loader needs a bos_token string; our models declare none (prompts
    # here are given whole, so which token it names changes nothing).
    cfg = json.loads((work / "hf" / "tokenizer_config.json").read_text())
    (work / "hf" / "tokenizer_config.json").write_text(json.dumps({**cfg, "bos_token": cfg["eos_token"]}))
    TransformersConverter(str(work / "hf")).convert(str(work / "ct2"), force=True)
    gen = ctranslate2.Generator(str(work / "ct2"), device="cpu", compute_type="float32", intra_threads=threads)
    shutil.rmtree(work)  # loaded: the files are no longer needed
    return gen


def ctranslate2_go(gen: Any, tok: Tokenizer, prompts: list[list[int]], new: int) -> Callable[[], list[list[int]]]:
    start = [[str(tok.hf.id_to_token(i)) for i in p] for p in prompts]

    def go() -> list[list[int]]:
        results = gen.generate_batch(
            start, max_length=new, min_length=new, sampling_topk=1, include_prompt_in_result=False, end_token=[]
        )
        return [list(map(int, r.sequences_ids[0])) for r in results]

    return go


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="smollm2",
        help="SmolLM2-135M's, or the small one of benchmarks/inference.py's GPT (6 x 384, vocab 8192)",
    )
    ap.add_argument("--layers", type=int, default=0, help="override the shape's layer count")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--plain", action="store_true", help="also time the plain (not oneDNN-packed) layout")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ctranslate2", action="store_true", help="also time CTranslate2 (pip install ctranslate2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = SHAPES[args.shape]
    cfg = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["n_embd"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=args.layers or shape["n_layer"],
        num_attention_heads=shape["n_head"],
        num_key_value_heads=shape["n_kv_head"],
        max_position_embeddings=256,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        attn_implementation="sdpa",
    )
    hf = LlamaForCausalLM(cfg).eval()
    model, _ = from_hf_state(hf.config.to_dict(), hf.state_dict())
    tok = tokenizer(model.config.vocab_size)
    g = torch.Generator().manual_seed(1)
    out: dict[str, Any] = {
        "benchmark": "llama_decode",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **environment(),
        "tokens_per_s": {},
        "greedy_tokens_match_hf": {},
    }
    ct2 = None
    if args.ctranslate2:
        import ctranslate2

        out["ctranslate2_version"] = ctranslate2.__version__
        out["greedy_tokens_match_ctranslate2"] = {}
        work = Path(tempfile.mkdtemp(prefix="llama-decode-ct2-"))
        ct2 = ctranslate2_peer(model, tok, work, args.threads)
    for batch in (1, 8):
        prompts = torch.randint(0, shape["vocab"], (batch, args.prompt), generator=g).tolist()
        variants = {
            f"ours_b{batch}": ours(model, tok, prompts, args.new, True),
            f"hf_b{batch}": theirs(hf, prompts, args.new),
        }
        if args.plain:
            variants[f"ours_plain_b{batch}"] = ours(model, tok, prompts, args.new, False)
        if ct2 is not None:
            variants[f"ct2_b{batch}"] = ctranslate2_go(ct2, tok, prompts, args.new)
        results = {name: go() for name, go in variants.items()}  # warm-up, and the tokens to compare
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.passes):  # the variants take turns, so a change of load hits them all
            for name, go in variants.items():
                t0 = time.perf_counter()
                go()
                times[name].append(time.perf_counter() - t0)
        for name in variants:
            out["tokens_per_s"][name] = round(batch * args.new / statistics.median(times[name]), 1)
            log(f"{name}: {out['tokens_per_s'][name]} tok/s")
        out["greedy_tokens_match_hf"][f"b{batch}"] = results[f"ours_b{batch}"] == results[f"hf_b{batch}"]
        out[f"ours_vs_hf_b{batch}"] = round(
            out["tokens_per_s"][f"ours_b{batch}"] / out["tokens_per_s"][f"hf_b{batch}"], 3
        )
        if ct2 is not None:
            out["greedy_tokens_match_ctranslate2"][f"b{batch}"] = results[f"ours_b{batch}"] == results[f"ct2_b{batch}"]
            out[f"ours_vs_ct2_b{batch}"] = round(
                out["tokens_per_s"][f"ours_b{batch}"] / out["tokens_per_s"][f"ct2_b{batch}"], 3
            )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
