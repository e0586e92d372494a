"""K-quant GGUF files (q4_k_m, ...) made by llama.cpp's own quantizer, the one `llama-quantize`
runs, reached through llama-cpp-python (the optional `bench` extra, which compiles llama.cpp):
the `gguf` package writes no K-quant, and home-made K-quant rounding would be a second, untested
copy of llama.cpp's.

The export writes the model as an f32 GGUF (models/formats/gguf/writer.py) and
`llama_model_quantize` turns it into the K-quant file. llama.cpp picks every tensor's type itself,
as in any `llama-quantize` run: in q4_k_m, Q6_K for the output projection (the token embedding
when tied) and for some layers' `attn_v` / `ffn_down`, Q4_K for the other 2-D tensors; 1-D
tensors, norms and `position_embd` are copied unquantized (F32). A tensor whose rows are not a
whole number of 256-value K-blocks (SmolLM2's 576-wide layers) takes llama.cpp's own fallback
to a 32-value block type (Q4_K -> Q5_0, Q6_K -> Q8_0, ...), or F16 when its rows are not whole
32-value blocks either, so every width the writer takes quantizes.

llama_cpp is imported only inside functions: without it (CI) everything else imports, and
`unavailable` says why K-quants are refused. This module is torch-free: the API checks a
request's quantization with it.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
import os
from pathlib import Path

from gguf import LlamaFileType

__all__ = ["FILE_TYPES", "SOURCE", "KQuantError", "quantize", "unavailable"]

# llama.cpp's K-quant file types by their `llama-quantize` names (gguf's LlamaFileType numbers
# them as llama.cpp's llama_ftype does). q2_k_s and the i-quants (iq4_xs, ...) are left out: they
# are made for an importance matrix (llama.cpp refuses the smallest without one), which needs
# calibration text that an export does not have.
FILE_TYPES = {
    "q2_k": LlamaFileType.MOSTLY_Q2_K,
    "q3_k_s": LlamaFileType.MOSTLY_Q3_K_S,
    "q3_k_m": LlamaFileType.MOSTLY_Q3_K_M,
    "q3_k_l": LlamaFileType.MOSTLY_Q3_K_L,
    "q4_k_s": LlamaFileType.MOSTLY_Q4_K_S,
    "q4_k_m": LlamaFileType.MOSTLY_Q4_K_M,
    "q5_k_s": LlamaFileType.MOSTLY_Q5_K_S,
    "q5_k_m": LlamaFileType.MOSTLY_Q5_K_M,
    "q6_k": LlamaFileType.MOSTLY_Q6_K,
}

# The quantizer's input. f32, not the f16 of the usual `convert_hf_to_gguf` + `llama-quantize`
# flow: our weights are float32, so llama.cpp quantizes the model's own values rather than their
# f16 rounding (and no large weight overflows f16 on the way). The cost is a temporary file twice
# the f16 one's size beside the target, removed once the K-quant file is written.
SOURCE = "f32"

EXTRA = "the `bench` extra: pip install 'stagecraft[bench]', which compiles llama.cpp"


class KQuantError(RuntimeError):
    """llama.cpp's quantizer failed: a fault of the server's (disk, llama.cpp), not of the model,
    since every tensor shape has a fallback type. The reason is in llama.cpp's log, on stderr."""


@functools.cache
def unavailable() -> str | None:
    """Why llama.cpp's quantizer cannot run in this process, or None when it can. Importing
    llama_cpp loads llama.cpp's shared library, which raises (not only ImportError) when the
    library is missing or does not load: that is unavailable too. Checked once per process."""
    if importlib.util.find_spec("llama_cpp") is None:
        return f"llama-cpp-python is not installed (install it on the server: {EXTRA})"
    try:
        importlib.import_module("llama_cpp")
    except Exception as exc:  # the shared library's loader raises FileNotFoundError, OSError, ...
        fix = f"reinstall it ({EXTRA}) or set LLAMA_CPP_LIB_PATH to the library's folder"
        return f"llama-cpp-python's llama.cpp library does not load ({type(exc).__name__}: {fix})"
    return None


def quantize(source: Path, out: Path, quantization: str) -> None:
    """The GGUF at `source` (f32 or f16) quantized by llama.cpp to `quantization` (a name in
    FILE_TYPES) at `out`, written whole or not at all. KQuantError when llama.cpp fails."""
    import llama_cpp

    llama_cpp.llama_backend_init()  # as llama-quantize does first: ggml's f16 tables
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(FILE_TYPES[quantization])
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        status = llama_cpp.llama_model_quantize(bytes(source), bytes(partial), ctypes.byref(params))
        if status != 0:
            raise KQuantError(
                f"llama.cpp's quantizer failed to write {quantization} (status {status}; its log says why)"
            )
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
