"""The quantizations a GGUF export writes, torch-free (the API checks a request against them).

Two kinds, both llama.cpp file types:
- QUANTIZATIONS (f32, f16, q8_0, q4_0, q4_1): a file type and the types its tensors take,
  quantized by the `gguf` package's own `gguf.quants.quantize` (models/formats/gguf/writer.py
  applies the type rules). Always written.
- K-quants (q4_k_m, q5_k_m, q6_k, ...: models/formats/gguf/kquants.py): quantized by llama.cpp's
  own quantizer, which the gguf package lacks. Written only where llama-cpp-python imports with
  its llama.cpp library (the optional `bench` extra); refused otherwise, naming what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType, LlamaFileType

from models.formats.gguf import kquants

Q = GGMLQuantizationType


@dataclass(frozen=True)
class Quantization:
    file_type: LlamaFileType
    weights: GGMLQuantizationType  # the 2-D tensors
    output: GGMLQuantizationType  # the output projection (the token embedding when tied)


DEFAULT = "f16"  # llama.cpp's converter's default for a float model
QUANTIZATIONS = {
    "f32": Quantization(LlamaFileType.ALL_F32, Q.F32, Q.F32),
    "f16": Quantization(LlamaFileType.MOSTLY_F16, Q.F16, Q.F16),
    "q8_0": Quantization(LlamaFileType.MOSTLY_Q8_0, Q.Q8_0, Q.Q8_0),
    "q4_0": Quantization(LlamaFileType.MOSTLY_Q4_0, Q.Q4_0, Q.Q8_0),
    "q4_1": Quantization(LlamaFileType.MOSTLY_Q4_1, Q.Q4_1, Q.Q8_0),
}
KQUANTS = tuple(kquants.FILE_TYPES)


def available() -> list[str]:
    """The quantizations this process writes: the K-quants only where llama.cpp's quantizer runs."""
    return [*QUANTIZATIONS, *(KQUANTS if kquants.unavailable() is None else ())]


def quantization_error(name: str) -> str | None:
    """Why `name` is not a quantization this export writes, or None when it is one."""
    writable = available()
    if name in writable:
        return None
    offered = ", ".join(writable)
    missing = kquants.unavailable()
    if name.lower() in KQUANTS and missing is not None:
        kquant = f"'{name}' is a K-quant, which llama.cpp's quantizer writes: {missing}"
        return f"{kquant}; available: {offered} (4 bits: q4_0, q4_1)"
    return f"'{name}' is not a GGUF quantization this service writes (available: {offered})"
