"""Training on a CUDA device (marked `cuda`, skipped without one): a few steps of a tiny
GPT and a tiny Llama in fp32 give the CPU's losses and weights, and bf16 autocast trains.

Tolerances: fp32 on the GPU sums matrix products in another order than the CPU's MKL or
oneDNN kernels (TF32 stays off: torch's default), so the two runs drift apart by rounding
only. Over these 10 steps (pretrain, then a supervised finetune stage with a checkpoint in
between) every step's loss stays within a relative 2e-4 of the CPU's, and every final
weight within 2e-4 + 1e-3 · |w|. For scale: two CPU runs of these specs that differ only
in summation order (oneDNN against MKL for the Llama, one thread against two for the GPT)
ended at most 3e-6 apart per weight, with equal losses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from models.spec import JobSpec, parse_spec
from tests.conftest import BASE_SPEC
from tests.models.training.test_llama_pipeline import LLAMA
from tests.models.training.test_pipeline import Run, final_tensors, train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

MODELS: dict[str, dict[str, Any]] = {"gpt": BASE_SPEC["model"], "llama": LLAMA}
LOSS_RTOL = 2e-4
WEIGHT_ATOL, WEIGHT_RTOL = 2e-4, 1e-3


def tiny_spec(data_dir: Path, arch: str, device: str, precision: str = "fp32", stages: int = 2) -> JobSpec:
    """BASE_SPEC's first `stages` stages (pretrain 6 steps, finetune 4) on `device`."""
    raw = json.loads(json.dumps(BASE_SPEC))
    raw["model"] = MODELS[arch]
    raw["stages"] = raw["stages"][:stages]
    raw.update(device=device, precision=precision)
    for ref in raw["data"].values():
        ref["dataset"] = str(data_dir / ref["dataset"])
    return parse_spec(raw)


def losses(run: Run) -> list[float]:
    return [e["data"]["loss"] for e in run.events if e["type"] == "train.step"]


@pytest.mark.parametrize("arch", list(MODELS))
def test_fp32_steps_on_cuda_match_the_cpu(arch: str, data_dir: Path, tmp_path: Path) -> None:
    cpu = train(tiny_spec(data_dir, arch, "cpu"), tmp_path / "cpu")
    cuda = train(tiny_spec(data_dir, arch, "cuda"), tmp_path / "cuda")
    assert cpu.result is not None and cuda.result is not None
    assert len(losses(cuda)) == len(losses(cpu)) == 10
    assert losses(cuda) == pytest.approx(losses(cpu), rel=LOSS_RTOL)
    want, got = final_tensors(cpu.workdir), final_tensors(cuda.workdir)
    assert got.keys() == want.keys()
    assert all(t.dtype == torch.float32 for t in got.values())  # saved as the CPU saves
    apart = {n: float((got[n] - w).abs().max()) for n, w in want.items()}
    assert all(torch.allclose(got[n], w, atol=WEIGHT_ATOL, rtol=WEIGHT_RTOL) for n, w in want.items()), apart


@pytest.mark.parametrize("arch", list(MODELS))
def test_bf16_autocast_trains_on_cuda(arch: str, data_dir: Path, tmp_path: Path) -> None:
    """bf16 on CUDA is autocast over fp32 weights (the CPU's bf16 model with fp32 masters is
    a CPU-only policy): the loss falls, the saved weights are fp32 and finite, and the first
    step's loss (same weights, same batch) is the fp32 one within bf16's precision."""
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    fp32 = train(tiny_spec(data_dir, arch, "cuda", "fp32", stages=1), tmp_path / "fp32")
    bf16 = train(tiny_spec(data_dir, arch, "cuda", "bf16", stages=1), tmp_path / "bf16")
    assert bf16.result is not None
    got = losses(bf16)
    assert len(got) == 6 and got[-1] < got[0]
    assert got[0] == pytest.approx(losses(fp32)[0], rel=2e-2)
    for name, w in final_tensors(bf16.workdir).items():
        assert w.dtype == torch.float32 and bool(torch.isfinite(w).all()), name
