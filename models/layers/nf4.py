"""NF4 projections for serving on a CPU, through bitsandbytes' fused 4-bit CPU kernel.

NF4 is bitsandbytes' 4-bit "normal float" code: 16 values placed at the quantiles of a normal
distribution, scaled per block of 64 inputs of an output channel by the block's absolute
maximum (kept in bf16). bitsandbytes quantizes (`bitsandbytes.functional.quantize_4bit`),
lays the codes out for its CPU kernel (`_convert_weight_packed_for_cpu`: tiles of 32 output
channels, two codes a byte) and multiplies with `gemv_4bit_inference_cpu_nf4_bf16`, an
AVX512-BF16 kernel that decodes the codes in registers and takes any number of rows.

Why this kernel, beside torch's int4 one (models/layers/quantized.py): a decoded token of
SmolLM2-135M takes 3.85 ms in its 120 layer projections against int4's 4.31 at one row (8.64
against 11.82 at eight), and 0.41 ms in an NF4 head against the int8 head's 1.38; with
compiled steps, nf4 decodes 1.39x as fast as int4 at batch 1 (benchmarks/RESULTS.md, "NF4
through bitsandbytes"). It runs only where the CPU
has AVX512-BF16 (`available()`); elsewhere bitsandbytes has no fused CPU kernel and the
precision is refused at load (`UnsupportedModel`). We call the kernel through our own operator,
`stagecraft::nf4_linear`, rather than bitsandbytes' `torch.ops.bitsandbytes.gemv_4bit`, whose
Python wrapper adds some 20 µs a call, as much as the product itself at one row. The operator's
kernel is C++ (models/layers/nf4_op.cpp, built on first use: `implementation()`), or, where that
cannot be built, Python calling the kernel through ctypes. The operator is opaque to
torch.compile (models/inference/compiled.py), as oneDNN's packed product is. The layout helper
is private to bitsandbytes: pyproject.toml pins the release.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.errors import UnsupportedModel

ACT = torch.bfloat16  # the kernel's activations, absmax and output
BLOCK = 64  # inputs per absmax
N_TILE = 32  # the packed layout's output tile: a projection's outputs are padded to a multiple


@functools.cache
def _bnb() -> ModuleType:
    """bitsandbytes, imported once. Its CPU backend tries, at import, to fetch a kernel from the
    Hugging Face Hub through the `kernels` package: hidden here, so that nothing is downloaded
    (we call its bundled library), and its warning about that is not logged."""
    held = sys.modules.get("kernels")
    sys.modules["kernels"] = None  # type: ignore[assignment]  # `from kernels import ...` raises ImportError
    log = logging.getLogger("bitsandbytes")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import bitsandbytes
        import bitsandbytes.functional
    finally:
        log.setLevel(level)
        if held is None:
            del sys.modules["kernels"]
        else:
            sys.modules["kernels"] = held
    return bitsandbytes


@functools.cache
def available() -> bool:
    """Whether NF4 can be served here: bitsandbytes' fused kernel needs AVX512-BF16."""
    return bool(_bnb().functional.has_avx512bf16())


@functools.cache
def _kernel() -> Any:  # a ctypes function of bitsandbytes' bundled library
    from bitsandbytes.cextension import lib

    fn: Any = lib.gemv_4bit_inference_cpu_nf4_bf16
    # rows, outputs, inputs, x, codes, absmax, out, block, x's row stride, out's row stride
    fn.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3
    fn.restype = None
    return fn


_LIB = torch.library.Library("stagecraft", "FRAGMENT")
_LIB.define("nf4_linear(Tensor x, Tensor codes, Tensor absmax, int outputs) -> Tensor")


def _nf4_linear(x: Tensor, codes: Tensor, absmax: Tensor, outputs: int) -> Tensor:
    """x (rows, inputs) bf16 contiguous @ the NF4 weight's transpose: (rows, outputs) bf16."""
    if x.dtype != ACT or not x.is_contiguous():  # callers cast where torch.compile can fuse the cast
        x = x.to(ACT).contiguous()
    rows, inputs = x.shape
    out = torch.empty(rows, outputs, dtype=ACT)
    _kernel()(rows, outputs, inputs, x.data_ptr(), codes.data_ptr(), absmax.data_ptr(), out.data_ptr(),
              BLOCK, inputs, outputs)  # fmt: skip
    return out


SOURCE = Path(__file__).with_name("nf4_op.cpp")


def ensure_ninja() -> None:
    """Put the `ninja` wheel's binary on PATH where it is not (a venv's bin not on PATH):
    torch.utils.cpp_extension builds with it."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"


log = logging.getLogger(__name__)


@functools.cache
def implementation() -> str:
    """Register the operator's CPU kernel, once: "c++" (models/layers/nf4_op.cpp, built on first
    use with torch.utils.cpp_extension, some seconds, and cached under TORCH_EXTENSIONS_DIR: the
    dispatcher calls the kernel without a trip through Python), or "python" (`_nf4_linear`, a
    ctypes call) where it cannot be built (no compiler, no ninja), with a warning. Either is a
    plain kernel, no autograd wrapper; they compute the same bits (tests/models/layers/test_nf4.py)."""
    address = ctypes.cast(_kernel(), ctypes.c_void_p).value
    try:
        from torch.utils import cpp_extension

        ensure_ninja()
        cpp_extension.load("stagecraft_nf4", [str(SOURCE)], extra_cflags=["-O2"], is_python_module=False)
        torch.ops.stagecraft.nf4_bind(address)
        return "c++"
    except Exception as e:  # any failure to build or load: the Python kernel serves
        log.warning("nf4: the C++ operator could not be built (%s); calling the kernel from Python", e)
        _LIB.impl("nf4_linear", _nf4_linear, "CPU")
        return "python"


@torch.library.register_fake("stagecraft::nf4_linear")
def _nf4_linear_shape(x: Tensor, codes: Tensor, absmax: Tensor, outputs: int) -> Tensor:
    return x.new_empty((x.size(0), outputs), dtype=ACT)


def pack(weight: Tensor) -> tuple[Tensor, Tensor, int]:
    """`weight` (outputs, inputs; inputs whole blocks) in NF4, laid out for the kernel: its
    codes, its absmax (inputs / 64, padded outputs) in bf16, and its padded output count."""
    if not available():
        raise UnsupportedModel("nf4 serving needs a CPU with AVX512-BF16 (bitsandbytes' fused kernel); use int4")
    if weight.size(1) % BLOCK:
        raise ValueError(f"NF4 needs a fan-in that is a multiple of {BLOCK}, not {weight.size(1)}")
    implementation()
    functional = _bnb().functional
    # The kernel parallelises with OpenMP (torch's own runtime, loaded first) at the calling
    # thread's thread count, which a thread torch has not set starts at every CPU: set it to
    # torch's on this thread, the one that loads and then decodes (the service's inference thread).
    torch.set_num_threads(torch.get_num_threads())
    w = F.pad(weight.detach().float(), (0, 0, 0, -weight.size(0) % N_TILE))
    codes, state = functional.quantize_4bit(w, blocksize=BLOCK, quant_type="nf4")
    codes, state = functional._convert_weight_packed_for_cpu(codes, state, N_TILE)
    return codes, state.absmax.contiguous(), w.size(0)
