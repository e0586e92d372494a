"""Generation tokens/s: our serving path against transformers `generate` on our own HF
export of the same weights, in one run.

Shape of PERFORMANCE.md (n_layer 6, n_head 6, n_embd 384, block 256, vocab 8192), random
weights, 32-token prompts, 128 new tokens, greedy, fp32, every row run to its length
(`ignore_eos` for us, no end token for transformers). Variants, interleaved over passes
(median tokens/s reported):

- `ours_decoder_b1`: models.inference.decoder.Decoder stepped directly, one request;
- `ours_engine_b1`: one request through app.serving.engine.ModelCache (batching thread + asyncio);
- `ours_engine_seq8`: 8 requests through the Engine one after another;
- `ours_engine_conc8`: the same 8 requests at once (dynamic batching);
- `hf_b1`, `hf_b8`: transformers GPT2LMHeadModel.generate (KV cache), 1 and 8 prompts.

Goals (issue 4): ours_engine_b1 >= 1.5x hf_b1; ours_engine_conc8 >= 4x ours_engine_seq8.

    .venv/bin/python benchmarks/inference.py [--passes 3] [--threads 2] [--tiny]

One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import CpuWindow, log, log_noise, noise_summary  # noqa: E402

from app.serving.engine import ModelCache, Served  # noqa: E402
from models.data.tokenizer import Tokenizer  # noqa: E402
from models.families.gpt.config import GPTConfig  # noqa: E402
from models.families.gpt.model import GPT  # noqa: E402
from models.formats.hf.directory import to_hf  # noqa: E402
from models.formats.native import save_model  # noqa: E402
from models.inference.decoder import Decoder, Row  # noqa: E402
from models.inference.generate import Sampling  # noqa: E402

SHAPES = {
    "default": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "vocab": 8192, "prompt": 32, "new": 128},
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "vocab": 512, "prompt": 8, "new": 16},
}
CONCURRENT = 8
T = TypeVar("T")


def build(shape: dict[str, int], root: Path) -> tuple[Path, Path]:
    """A random model (vocabulary `vocab`; a small tokenizer is enough: ids are random) saved
    as our model directory and exported in the HF layout."""
    torch.manual_seed(0)
    config = GPTConfig(shape["vocab"], shape["block_size"], shape["n_layer"], shape["n_head"], shape["n_embd"])
    model = GPT(config)
    texts = [f"word{i % 97} and {i % 13} more text {i}" for i in range(2000)]
    tok = Tokenizer.train(texts, 300)
    save_model(root / "ours", model.state_dict(), config, tok, {"name": "bench"})
    to_hf(root / "ours", root / "hf")
    return root / "ours", root / "hf"


def timed(fn: Callable[[], int]) -> tuple[float, dict[str, float]]:
    window = CpuWindow()
    t0 = time.perf_counter()
    tokens = fn()
    dt = time.perf_counter() - t0
    return tokens / dt, window.stop()


class Variants:
    """Every variant's torch work runs on the engine's inference thread, the one thread the
    service runs torch on: a second thread running torch in the process slows decoding
    (libgomp stops spin-waiting, see app.serving.engine.InferenceThread), which would handicap
    whichever variants ran elsewhere."""

    def __init__(self, shape: dict[str, int], root: Path, hf_module: Any):
        self.shape = shape
        self.loop = asyncio.new_event_loop()
        self.engine = ModelCache(1 << 34, 16, "cpu")
        ours, hf_dir = self.on_torch_thread(lambda: build(shape, root))
        self.served: Served = self.loop.run_until_complete(self.engine.get("bench", ours))
        self.on_torch_thread(lambda: self._setup(ours, hf_dir, hf_module))
        self.outputs: dict[str, list[int]] = {}

    def on_torch_thread(self, fn: Callable[[], T]) -> T:
        return self.engine.runner.call(fn).result()

    def _setup(self, ours: Path, hf_dir: Path, hf_module: Any) -> None:
        from models.formats.load import load_model

        g = torch.Generator().manual_seed(1)
        self.prompts = [torch.randint(0, 300, (self.shape["prompt"],), generator=g).tolist() for _ in range(CONCURRENT)]
        self.model, self.tok = load_model(ours)
        self.model.eval().requires_grad_(False)
        self.decoder = Decoder(self.model, self.tok, max_batch=16)
        self.hf = None
        if hf_module is not None:
            self.hf = hf_module.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
            self.hf.generation_config.eos_token_id = None  # every row to its length, as ignore_eos
            self.hf.generation_config.pad_token_id = self.tok.pad_id

    def sampling(self) -> Sampling:
        return Sampling(max_new_tokens=self.shape["new"])

    def ours_decoder_b1(self) -> int:
        def run() -> int:
            row = Row(self.prompts[0], self.sampling(), ignore_eos=True)
            self.decoder.add(row)
            while self.decoder.busy:
                self.decoder.step()
            self.outputs["ours"] = row.tokens
            return len(row.tokens)

        return self.on_torch_thread(run)

    async def _one(self, prompt: list[int]) -> int:
        n = 0
        async for u in self.engine.generate(self.served, prompt, self.sampling(), [], False, False, ignore_eos=True):
            n = u.tokens
        return n

    def ours_engine_b1(self) -> int:
        return self.loop.run_until_complete(self._one(self.prompts[0]))

    def ours_engine_seq8(self) -> int:
        async def run() -> int:
            return sum([await self._one(p) for p in self.prompts])

        return self.loop.run_until_complete(run())

    def ours_engine_conc8(self) -> int:
        async def run() -> int:
            return sum(await asyncio.gather(*(self._one(p) for p in self.prompts)))

        return self.loop.run_until_complete(run())

    def _hf(self, rows: int) -> int:
        def run() -> int:
            assert self.hf is not None
            x = torch.tensor(self.prompts[:rows])
            with torch.inference_mode():
                out = self.hf.generate(x, max_new_tokens=self.shape["new"], do_sample=False)
            if rows == 1:
                self.outputs["hf"] = out[0, x.size(1) :].tolist()
            return int(out[:, x.size(1) :].numel())

        return self.on_torch_thread(run)

    def hf_b1(self) -> int:
        return self._hf(1)

    def hf_b8(self) -> int:
        return self._hf(CONCURRENT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model and 16 tokens: checks that it runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = SHAPES["tiny" if args.tiny else "default"]
    try:
        import transformers
    except ImportError:
        transformers = None
        log("transformers is not installed: the hf_* variants are skipped")
    run_window = CpuWindow()
    with tempfile.TemporaryDirectory() as tmp:
        v = Variants(shape, Path(tmp), transformers)
        names = ["ours_decoder_b1", "ours_engine_b1", "ours_engine_seq8", "ours_engine_conc8"]
        names += ["hf_b1", "hf_b8"] if transformers is not None else []
        for name in names:  # warm-up
            getattr(v, name)()
        results: dict[str, list[float]] = {n: [] for n in names}
        windows = []
        for p in range(args.passes):
            for name in names:
                rate, window = timed(getattr(v, name))
                results[name].append(rate)
                windows.append(window)
                log(f"pass {p + 1}/{args.passes} {name}: {rate:,.0f} tok/s")
        noise = noise_summary(windows, run_window.stop())
        log_noise(noise)
    med = {n: statistics.median(r) for n, r in results.items()}
    ratios = {"conc8_vs_seq8": med["ours_engine_conc8"] / med["ours_engine_seq8"]}
    if transformers is not None:
        ratios["engine_b1_vs_hf_b1"] = med["ours_engine_b1"] / med["hf_b1"]
        ratios["decoder_b1_vs_hf_b1"] = med["ours_decoder_b1"] / med["hf_b1"]
        ratios["conc8_vs_hf_b8"] = med["ours_engine_conc8"] / med["hf_b8"]
    out = {
        "benchmark": "inference",
        "shape": shape,
        "torch": torch.__version__,
        "transformers": getattr(transformers, "__version__", None),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "threads": args.threads,
        "passes": args.passes,
        "tokens_per_s": {n: {"median": round(m, 1), "all": [round(x, 1) for x in results[n]]} for n, m in med.items()},
        "ms_per_token_b1": {n: round(1000 / med[n], 3) for n in med if n.endswith("b1")},
        "ratios": {k: round(x, 2) for k, x in ratios.items()},
        "greedy_tokens_match_hf": v.outputs.get("ours") == v.outputs.get("hf") if transformers else None,
        "noise": noise,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
