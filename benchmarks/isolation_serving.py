"""What row isolation costs (issue 20): decode tokens/s and request latency (p50, p99) of 8 and
32 concurrent mixed requests, this tree against another (the code before the change), in
one run, alternating.

Each tree runs in a worker process of its own (the two cannot share one: both are `models`),
built from the same seed: PERFORMANCE.md's inference shape (6 layers, 384 wide, block 256,
vocab 8192; `--arch llama`: a Llama of that size), a base and 3 LoRA adapters (rank 8, alpha
16, every attention and MLP projection). A pass sends N requests at once to one
`models.inference.decoder.Decoder` (max_batch 16, the service's default: of 32, 16 wait):
a quarter each on the base and on each adapter, half chat prompts (a chat rendered as a
template-less model's chat is, completion marker after it) and half plain ones, half greedy
and half seeded sampling, 64 new tokens each (end ids ignored, so both trees do the same
work). A request's latency is from the pass's start to its last token. The parent sends
the passes in turn, ABBA, so both trees see the same machine; each tree's tokens are
checked equal to the other's.

    .venv/bin/python benchmarks/isolation_serving.py --before /path/to/old/tree [--arch gpt|llama]
        [--passes 6] [--threads 1] [--tiny]

One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "default": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "vocab": 8192, "new": 64},
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 128, "vocab": 512, "new": 16},
}
CONCURRENCY = [8, 32]
ADAPTERS, RANK, ALPHA, MAX_BATCH = 3, 8, 16, 16
TOPICS = ["the market", "a library card", "seven coins", "the station clock", "two maps", "a garden"]


def worker(root: Path, arch: str, shape: dict[str, int], threads: int) -> None:
    """Serve passes for the tree at `root`: read a concurrency per line, answer one JSON line."""
    sys.path.insert(0, str(root))
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from models.data.records import messages_prompt
    from models.data.tokenizer import Tokenizer
    from models.families import FAMILIES
    from models.families.gpt.config import GPTConfig
    from models.families.gpt.model import GPT
    from models.families.llama.config import LlamaConfig
    from models.families.llama.model import Llama
    from models.inference.decoder import Decoder, Row
    from models.inference.generate import Sampling
    from models.lora import layers as lora
    from models.spec import AdapterSpec

    torch.set_num_threads(threads)

    def new_model() -> torch.nn.Module:
        if arch == "llama":
            return Llama(LlamaConfig(shape["vocab"], shape["block_size"], n_layer=shape["n_layer"],
                                     n_head=shape["n_head"], n_kv_head=max(1, shape["n_head"] // 3),
                                     n_embd=shape["n_embd"], intermediate_size=8 * shape["n_embd"] // 3))  # fmt: skip
        return GPT(GPTConfig(shape["vocab"], shape["block_size"], shape["n_layer"], shape["n_head"], shape["n_embd"]))

    torch.manual_seed(0)
    model = new_model().eval()
    tok = Tokenizer.train([f"request {i} asks about {TOPICS[i % 6]} and answers" for i in range(400)], 400)
    dec = Decoder(model, tok, max_batch=MAX_BATCH)
    spec = AdapterSpec(type="lora", rank=RANK, alpha=ALPHA, targets=["attention", "mlp"])
    for k in range(ADAPTERS):
        holder = new_model()
        lora.add_adapter(holder, FAMILIES[arch].lora, f"a{k}", spec, seed=k)
        with torch.no_grad():
            for p in lora.adapter_params(holder, f"a{k}"):
                p.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(k * 1000 + p.numel()))
        dec.add_adapter(f"a{k}", lora.extract(holder, f"a{k}"))

    def requests(n: int) -> list[Row]:
        rows = []
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            chat = i % 2 == 1
            text = messages_prompt([{"role": "user", "content": f"Tell me about {topic}, request {i}."}])
            prompt = [*tok.encode(text), tok.sep_id] if chat else tok.encode(f"Request {i} asks about {topic} and")
            sampled = (i // 2) % 2 == 1
            s = Sampling(shape["new"], temperature=0.8 if sampled else 0.0, top_k=50, seed=i)
            adapter = None if i % 4 == 0 else f"a{i % 4 - 1}"
            rows.append(Row(prompt, s, supervised=chat, adapter=adapter, ignore_eos=True))
        return rows

    def one_pass(n: int) -> dict[str, Any]:
        rows = requests(n)
        done: dict[int, tuple[float, float]] = {}
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for r in rows:
            dec.add(r)
        while dec.busy:
            for r in dec.step():
                if r.finish_reason is not None:
                    done[id(r)] = (time.perf_counter() - t0, time.process_time() - cpu0)
        wall = time.perf_counter() - t0
        return {
            "cpu_s": time.process_time() - cpu0,  # the parent counts it as its own, not as other processes'
            "tokens": sum(len(r.tokens) for r in rows),
            "wall_s": wall,
            "latency_s": [done[id(r)][0] for r in rows],
            "latency_cpu_s": [done[id(r)][1] for r in rows],
            "outputs": [r.tokens for r in rows],
        }

    class Ops(TorchDispatchMode):
        """Counts the tensor operations dispatched (oneDNN's packed matmuls included)."""

        count = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.count += 1
            return func(*args, **(kwargs or {}))

    def ops_per_step(n: int) -> int:
        """Tensor operations of one decode step of n mixed rows (all admitted, none finishing)."""
        rows = requests(n)
        for r in rows:
            dec.add(r)
        dec.step()  # prefill
        dec.step()
        with Ops() as ops:
            dec.step()
        for r in rows:
            r.cancelled = True
        while dec.busy:
            dec.step()
        return ops.count

    one_pass(8)  # warm-up
    print(json.dumps({"ops_per_step": {n: ops_per_step(n) for n in (1, 8, MAX_BATCH)}}), flush=True)
    for line in sys.stdin:
        print(json.dumps(one_pass(int(line))), flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="the tree to compare against (the code before the change)")
    ap.add_argument("--after", type=Path, default=REPO, help="the tree with the change (default: this one)")
    ap.add_argument("--arch", choices=["gpt", "llama"], default="gpt")
    ap.add_argument("--passes", type=int, default=6, help="per tree and concurrency")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="a toy shape (quick checks)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = SHAPES["tiny" if args.tiny else "default"]
    if args.worker is not None:
        worker(args.worker, args.arch, shape, args.threads)
        return
    if args.before is None:
        ap.error("--before is required")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch
    from machine import CpuWindow, environment, log, log_noise, noise_summary

    torch.set_num_threads(args.threads)  # what environment() reports: the workers' setting

    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    procs = {}
    for name, root in trees.items():
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(root), "--arch", args.arch,
               "--threads", str(args.threads), *(["--tiny"] if args.tiny else [])]  # fmt: skip
        procs[name] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    ops = {}
    for name, p in procs.items():
        assert p.stdout is not None
        ops[name] = json.loads(p.stdout.readline())["ops_per_step"]
    log(f"tensor operations per decode step (1, 8, {MAX_BATCH} mixed rows): {ops}")

    samples: dict[str, dict[int, list[dict[str, Any]]]] = {t: {n: [] for n in CONCURRENCY} for t in trees}
    windows, run_window = [], CpuWindow()
    for k in range(args.passes):
        for n in CONCURRENCY:
            order = ["before", "after"] if k % 2 == 0 else ["after", "before"]  # ABBA
            for name in order:
                p = procs[name]
                assert p.stdin is not None and p.stdout is not None
                window = CpuWindow()
                p.stdin.write(f"{n}\n")
                p.stdin.flush()
                result = json.loads(p.stdout.readline())
                w = window.stop()
                w["own_cpu_s"], w["other_cpu_s"] = w["own_cpu_s"] + result["cpu_s"], w["other_cpu_s"] - result["cpu_s"]
                windows.append(w)
                samples[name][n].append(result)
                log(f"pass {k + 1}/{args.passes} n={n:2d} {name:6s} {result['tokens'] / result['wall_s']:8.1f} tok/s")
    for p in procs.values():
        assert p.stdin is not None
        p.stdin.close()
        p.wait()

    def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
        latencies = [x for r in runs for x in r["latency_s"]]
        cpu_latencies = [x for r in runs for x in r["latency_cpu_s"]]
        return {
            "tokens_per_s": round(statistics.median(r["tokens"] / r["wall_s"] for r in runs), 1),
            "p50_latency_s": round(percentile(latencies, 50), 3),
            "p99_latency_s": round(percentile(latencies, 99), 3),
            # the same on the worker's own CPU time: what other processes' load does not inflate
            "tokens_per_cpu_s": round(statistics.median(r["tokens"] / r["cpu_s"] for r in runs), 1),
            "p99_latency_cpu_s": round(percentile(cpu_latencies, 99), 3),
        }

    figures = {t: {str(n): summary(samples[t][n]) for n in CONCURRENCY} for t in trees}

    def paired(n: int, value: Callable[[dict[str, Any]], float]) -> float:
        """The median over passes of after / before, each pair measured back to back."""
        return statistics.median(value(a) / value(b) for a, b in zip(samples["after"][n], samples["before"][n]))

    def cost(n: int) -> dict[str, float]:
        after, before = figures["after"][str(n)], figures["before"][str(n)]
        return {
            "throughput": round(1 - after["tokens_per_s"] / before["tokens_per_s"], 4),
            "p99_latency": round(after["p99_latency_s"] / before["p99_latency_s"] - 1, 4),
            "throughput_cpu": round(1 - after["tokens_per_cpu_s"] / before["tokens_per_cpu_s"], 4),
            "p99_latency_cpu": round(after["p99_latency_cpu_s"] / before["p99_latency_cpu_s"] - 1, 4),
            # pass by pass (each pair ran back to back, so a slow minute slows both)
            "throughput_paired": round(1 - paired(n, lambda r: r["tokens"] / r["wall_s"]), 4),
            "throughput_cpu_paired": round(1 - paired(n, lambda r: r["tokens"] / r["cpu_s"]), 4),
            "max_latency_paired": round(paired(n, lambda r: max(r["latency_s"])) - 1, 4),
        }

    same = all(samples["before"][n][i]["outputs"] == samples["after"][n][i]["outputs"]
               for n in CONCURRENCY for i in range(args.passes))  # fmt: skip
    noise = noise_summary(windows, run_window.stop())
    result = {
        "benchmark": "isolation_serving",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **environment(),
        "arch": args.arch,
        "shape": shape,
        "requests": "N at once; base + 3 adapters (rank 8, attention + mlp) a quarter each; half chat, half plain; "
        "half greedy, half seeded sampling; 64 new tokens (end ids ignored); max_batch 16",
        "trees": {k: str(v) for k, v in trees.items()},
        "ops_per_decode_step": ops,
        "figures": figures,
        "cost_of_after": {str(n): cost(n) for n in CONCURRENCY},
        "samples_tokens_per_s": {
            t: {str(n): [round(r["tokens"] / r["wall_s"], 1) for r in samples[t][n]] for n in CONCURRENCY}
            for t in trees
        },
        "same_tokens": same,
        "noise": noise,
    }
    log(f"{figures}; cost {result['cost_of_after']}; same tokens {same}")
    log_noise(noise)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
