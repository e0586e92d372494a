"""Decoding over HTTP: `stagecraft up` against llama.cpp's `llama-server`, the same GGUF, 1 and 8
concurrent `POST /v1/completions`.

The model: SmolLM2-135M-Instruct's real weights (README's download step), exported by our writer
to f32 and to the llama.cpp file of the precision compared (q4_0 for int4 and nf4, q8_0 for int8, f32
for fp32). Ours uploads the f32 file (`POST /v1/models`) and serves it at `--precision`
(STAGECRAFT_INFERENCE_QUANTIZATION) with `--steps`' decode steps: native (the service's default,
STAGECRAFT_INFERENCE_NATIVE), compiled (`--compile`: STAGECRAFT_INFERENCE_COMPILE) or eager; the
model is loaded (and compiled) by one request before the clock starts; llama.cpp runs
`llama-server -np 8` (8 slots, continuous batching) on its file.
Each server is its own process on `--threads` threads, started alone, measured, stopped.

A request: a prompt that counts upward (`"7, 8, 9,"`: both models keep counting, so no request
ends early), `max_tokens` NEW, greedy, not streamed. A figure is the completion tokens of all
requests of a round (`usage.completion_tokens`) over its wall time, client to client: what a
user sees, the HTTP, tokenizing, queueing and prompt processing included. `--rounds` rounds,
the median.

    .venv/bin/python benchmarks/http_decode.py --llama-bin <llama.cpp>/build/bin --precision int4 --compile

One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from gguf_decode import SMOLLM2, export  # noqa: E402
from machine import environment, log  # noqa: E402

from tests.system.processes import Proc, base_env, free_port, stagecraft, wait_ready  # noqa: E402

FILES = {"fp32": "f32", "int8": "q8_0", "int4": "q4_0", "nf4": "q4_0"}


@contextmanager
def ours(
    root: Path, model_file: Path, precision: str, steps: str, threads: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """`stagecraft up` serving `model_file` at `precision`: (base URL, request headers with the model's id)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = {"url": url, "rate_limit_per_s": "0", "inference_threads": str(threads),
                "inference_quantization": "none" if precision == "fp32" else precision,
                "inference_compile": str(steps == "compiled").lower(),
                "inference_native": str(steps == "native").lower()}  # fmt: skip
    proc = Proc("up", [*stagecraft(), "up", "--port", str(port), "--data-dir", str(root / "data")],
                base_env(**settings), root)  # fmt: skip
    proc.start()
    try:
        wait_ready(url, [proc])
        key = (root / "data" / "api_key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        with model_file.open("rb") as f:
            r = httpx.post(f"{url}/v1/models", headers=headers, files={"file": (model_file.name, f)}, timeout=900)
        r.raise_for_status()
        yield url, {"headers": headers, "model": r.json()["id"]}
    finally:
        proc.stop()


@contextmanager
def llama_server(
    root: Path, binary: Path, model_file: Path, threads: int, slots: int, ctx: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(binary), "-m", str(model_file), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
           "-tb", str(threads), "-np", str(slots), "-c", str(ctx * slots), "--no-webui"]  # fmt: skip
    with (root / "llama-server.log").open("w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-server did not start: {(root / 'llama-server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, {"headers": {}, "model": model_file.name}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def one_round(url: str, target: dict[str, Any], concurrent: int, new: int, start: int) -> tuple[int, float]:
    """`concurrent` requests at once; (completion tokens, seconds)."""

    async def one(client: httpx.AsyncClient, i: int) -> int:
        k = start + 17 * i
        body = {"model": target["model"], "prompt": f"{k}, {k + 1}, {k + 2},", "max_tokens": new, "temperature": 0}
        r = await client.post(f"{url}/v1/completions", json=body, headers=target["headers"], timeout=900)
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient() as client:
        t0 = time.perf_counter()
        tokens = await asyncio.gather(*(one(client, i) for i in range(concurrent)))
        return sum(tokens), time.perf_counter() - t0


def measure(url: str, target: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    asyncio.run(one_round(url, target, 1, 8, 1))  # loads (and compiles) the model; warms both sides
    out: dict[str, Any] = {}
    for concurrent in (int(c) for c in args.concurrent.split(",")):
        rates, tokens = [], []
        for r in range(args.rounds):
            n, seconds = asyncio.run(one_round(url, target, concurrent, args.new, 10 + 100 * r))
            rates.append(n / seconds)
            tokens.append(n)
            log(f"  {concurrent} concurrent, round {r}: {n} tokens, {n / seconds:.1f} tok/s")
        out[f"c{concurrent}"] = {"tokens_per_s": round(statistics.median(rates), 1), "tokens": tokens}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bin", type=Path, required=True, help="the folder holding llama.cpp's llama-server")
    ap.add_argument("--precision", choices=sorted(FILES), default="int4")
    ap.add_argument(
        "--steps",
        choices=["native", "compiled", "eager"],
        default="native",
        help="ours' decode steps (native: the service's default, STAGECRAFT_INFERENCE_NATIVE)",
    )
    ap.add_argument("--compile", action="store_true", help="--steps compiled")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--concurrent", default="1,8")
    args = ap.parse_args()
    if args.compile:
        args.steps = "compiled"
    if not (args.llama_bin / "llama-server").is_file():
        sys.exit("--llama-bin: a folder with llama.cpp's llama-server is needed (cmake target llama-server)")
    if not SMOLLM2.is_file():
        sys.exit(f"{SMOLLM2} is missing: README.md says how to download it")
    out: dict[str, Any] = {"benchmark": "http_decode", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                           **environment(), "threads": args.threads, "new": args.new, "precision": args.precision,
                           "steps": args.steps}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = export(root, sorted({"f32", FILES[args.precision]}))
        slots = max(int(c) for c in args.concurrent.split(","))
        log(f"llama.cpp {FILES[args.precision]}")
        with llama_server(root, args.llama_bin / "llama-server", files[FILES[args.precision]], args.threads, slots,
                          64 + args.new) as (url, target):  # fmt: skip
            out["llama.cpp"] = measure(url, target, args)
        log(f"ours {args.precision}, {args.steps} steps")
        with ours(root / "ours", files["f32"], args.precision, args.steps, args.threads) as (url, target):
            out["ours"] = measure(url, target, args)
    out["ours_vs_llama_cpp"] = {
        c: round(out["ours"][c]["tokens_per_s"] / out["llama.cpp"][c]["tokens_per_s"], 3) for c in out["ours"]
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
