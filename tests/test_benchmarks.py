"""The benchmark scripts still run (smallest settings) and report what RESULTS.md quotes.
Timings are not asserted: only that each script finishes and its report is complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def test_inference_benchmark_tiny() -> None:
    report = run("inference.py", "--tiny", "--passes", "1", "--threads", "1")
    assert set(report["tokens_per_s"]) >= {"ours_engine_seq8", "ours_engine_conc8", "hf_b1"}
    assert report["ratios"]["conc8_vs_seq8"] > 0
    assert report["greedy_tokens_match_hf"] is True  # our serving path and transformers agree


def test_gemv_floor_benchmark_tiny() -> None:
    report = run("gemv_floor.py", "--layers", "1", "--passes", "1", "--rows", "1", "--threads", "1")
    assert set(report["ms_per_token"]) == {"onednn_packed8_r1", "onednn_packed1_r1", "linear_r1", "matmul_t_r1"}
    assert all(v > 0 for v in report["gb_per_s"].values())


def test_train_throughput_benchmark_one_step() -> None:
    report = run("train_throughput.py", "--precision", "fp32", "--warmup", "1", "--steps", "1", "--passes", "1")
    assert report["variants"]["ours_fp32"]["tokens_per_s"] > 0
    assert "hf_gpt2_fp32" in report["variants"] and "ours_fp32" in report["ours_vs_fastest_peer"]


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_lora_serving_benchmark_tiny(arch: str) -> None:
    report = run("lora_serving.py", "--tiny", "--arch", arch, "--passes", "1", "--threads", "1")
    assert set(report["tokens_per_s"]) == {"lora_seq8", "lora_conc8", "base_conc8"}
    assert report["concurrent_tokens_match_sequential"] is True
    assert 0 < report["memory"]["adapters_vs_base"] < 1


def test_lora_train_benchmark_one_step() -> None:
    args = ["--warmup", "1", "--steps", "1", "--passes", "1", "--rss-steps", "1", "--threads", "1", "--batch", "2"]
    report = run("lora_train.py", *args)
    assert set(report["speed"]["fp32"]["tokens_per_s"]) == {"ours_full", "ours_lora", "peft_lora"}
    assert set(report["memory"]["fp32"]) >= {"ours_full", "ours_lora", "peft_lora", "ours_lora_vs_full"}


def test_llama_train_benchmark_one_step() -> None:
    report = run("llama_train.py", "--shapes", "small", "--precision", "fp32", "--warmup", "1", "--steps", "1")
    [result] = report["results"]
    assert result["tokens_per_s"]["ours"] > 0 and result["tokens_per_s"]["transformers"] > 0
    assert result["paired_ratio"] > 0 and result["shape"]["n_kv_head"] == 2


def test_llama_decode_benchmark_tiny() -> None:
    report = run(
        "llama_decode.py", "--shape", "small", "--layers", "2", "--passes", "1", "--new", "4", "--threads", "1"
    )
    assert set(report["tokens_per_s"]) == {"ours_b1", "hf_b1", "ours_b8", "hf_b8"}
    assert report["greedy_tokens_match_hf"] == {"b1": True, "b8": True}  # our serving path and transformers agree


def test_quant_decode_benchmark_tiny() -> None:
    """int8 and int4 serving decode beside fp32 and transformers, and report their bytes."""
    args = ["--shape", "small", "--layers", "2", "--passes", "1", "--new", "4", "--threads", "1"]
    report = run("quant_decode.py", *args)
    assert set(report["tokens_per_s"]) == {f"{v}_b{b}" for v in ("fp32", "int8", "int4", "hf") for b in (1, 8)}
    assert report["greedy_tokens_equal_fp32"]["hf_b1"] == 1.0  # the fp32 path is transformers' to the token
    assert report["bytes"]["int8"]["layers_vs_fp32"] < 0.3 and report["bytes"]["int4"]["layers_vs_fp32"] < 0.2
    assert report["bytes"]["int4"]["total"] < report["bytes"]["int8"]["total"] < report["bytes"]["fp32"]["total"]


def test_decode_overhead_benchmark_tiny() -> None:
    report = run("decode_overhead.py", "--layers", "2", "--new", "4", "--passes", "1", "--threads", "1")
    assert set(report["results"]) == {"fp32", "int8", "int4"}
    for r in report["results"].values():
        assert r["step_ms"] > 0 and r["free_ms"] > 0 and r["engine_ms"] > 0 and r["ops_per_step"] > 0
        assert r["top_ops"]


def test_llama_decode_benchmark_ctranslate2_tiny() -> None:
    """CTranslate2 (a dev dependency) decodes our export, converted, to the same tokens."""
    report = run("llama_decode.py", "--layers", "2", "--passes", "1", "--new", "4", "--threads", "1", "--ctranslate2")
    assert {"ct2_b1", "ct2_b8"} <= set(report["tokens_per_s"])
    assert report["greedy_tokens_match_ctranslate2"] == {"b1": True, "b8": True}  # our export, converted, agrees


def test_get_job_cpu_benchmark_runs() -> None:
    report = run("get_job_cpu.py", "--requests", "20", "--rounds", "1")
    assert report["database"] == "sqlite" and report["cpu_ms_per_request_min"] > 0


def test_storage_transfer_benchmark_tiny() -> None:
    report = run("storage_transfer.py", "--sizes", "0.2", "--passes", "1")
    [row] = report["results"]
    assert set(row["seconds"]) == {"ours_up", "peer_up", "ours_down", "peer_down"}
    assert row["ours_vs_peer"]["save_upload"] > 0 and row["ours_vs_peer"]["download_verify"] > 0


def test_distributed_train_benchmark_tiny() -> None:
    report = run("distributed_train.py", "--steps", "6", "--passes", "1", "--layers", "1", "--width", "32")
    assert set(report["median"]) == {"p1", "p2"} and report["n_vs_1"]["tokens_per_s"] > 0


def test_dpo_step_benchmark_tiny() -> None:
    pytest.importorskip("trl")
    args = ["--shape", "tiny", "--batch", "2", "--prompt", "8", "--completion", "8", "--steps", "1", "--passes", "1"]
    report = run("dpo_step.py", *args)
    assert set(report["median"]) == {"ours", "ours_precomputed", "trl"}
    assert all(v["tokens_per_s"] > 0 and v["peak_rss_mib"] > 0 for v in report["median"].values())
    assert set(report["ratios"]) == {"ours_vs_trl", "ours_precomputed_vs_trl"}
    assert report["median"]["ours_precomputed"]["precompute_s_per_pair"] > 0


def test_quant_quality_benchmark_tiny(tmp_path: Path) -> None:
    """Validation loss, greedy agreement and task scores of int8 / int4 beside fp32, on a tiny
    SmolLM2-shaped GGUF of our own (no SmolLM2 file) and without llama.cpp."""
    from models.formats.gguf.writer import write_gguf
    from models.layers.nf4 import available
    from tests.models.formats.gguf.export_models import llama_folder, smollm_tokenizer

    folder, _ = llama_folder(tmp_path / "smol", smollm_tokenizer())
    write_gguf(folder, tmp_path / "tiny.gguf", "f32")
    args = ["--gguf", str(tmp_path / "tiny.gguf"), "--no-llama-cpp", "--sequences", "2", "--length", "32"]
    args += ["--prompts", "2", "--prompt", "8", "--new", "4", "--records", "1", "--max-new", "4"]
    report = run("quant_quality.py", *args)
    nf4 = {"nf4"} if available() else set()  # where bitsandbytes' NF4 kernel runs
    assert set(report["loss"]) == {"fp32", "int8", "int4", "int4_g32"} | nf4 and report["windows"] == 2
    assert report["loss"]["fp32"]["kl_vs_fp32"] == 0 and report["loss"]["fp32"]["top1_equal_fp32"] == 1
    assert all(0 <= v["top1_equal_fp32"] <= 1 and v["kl_vs_fp32"] >= 0 for v in report["loss"].values())
    assert report["greedy"]["fp32"]["tokens_equal"] == 1
    assert {"translate.chrf", "summarize.rouge_l", "qa.exact_match"} <= set(report["tasks"]["int4"])


def test_nf4_kernels_benchmark_tiny() -> None:
    """The kernels of a token side by side (int8, int4, nf4 through our op with its C++ and its
    Python kernel and through bitsandbytes' own; our own int8 and int4 products), one layer of
    SmolLM2's shapes; where the kernel runs."""
    import torch

    from models.inference import native
    from models.layers.nf4 import available

    if not available():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes' NF4 kernel does not run here")
    report = run("nf4_kernels.py", "--layers", "1", "--passes", "1", "--threads", "1")
    ours = torch.ops.stagecraft.native_few_rows() if native.available() else []
    native_ones = [f"{k}_native" for k in ("int8", "int4") if k in ours]
    kernels = ["int8", "int4", "nf4", "nf4_python_op", "nf4_bnb_op", *native_ones]
    assert set(report["ms"]) == {f"{k} {r}" for k in kernels for r in ("1 row", "8 rows")}
    assert all(v["layers"] > 0 and v["head"] > 0 for v in report["ms"].values())


def test_kv_attention_benchmark_tiny() -> None:
    """Attention for one new token over an fp32 and a bf16 KV cache, side by side."""
    report = run("kv_attention.py", "--layers", "2", "--passes", "2", "--threads", "1", "--contexts", "16")
    assert set(report["ms"]) == {"1 row, 16 positions", "8 rows, 16 positions"}
    assert all(set(v) == {"fp32", "bf16"} and min(v.values()) > 0 for v in report["ms"].values())
    assert report["kv_bytes_per_position"] == {"fp32": 2 * 2 * 3 * 64 * 4, "bf16": 2 * 2 * 3 * 64 * 2}
