"""The quantizations a GGUF export writes, torch-free (the API checks a request against them).

Each is a llama.cpp file type and the types its tensors take, quantized by the `gguf`
package's own `gguf.quants.quantize` (models/formats/gguf/writer.py applies the type rules).
K-quants (q4_k_m, ...) are refused by name: the gguf package has no K-quant quantizer
(llama.cpp's llama-quantize has one); q4_0 / q4_1 are the 4-bit types it writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType, LlamaFileType

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
REFUSED = {  # llama.cpp's names of the types the gguf package cannot quantize to
    t: "a K-quant, which the gguf package cannot quantize to (llama.cpp's llama-quantize can)"
    for t in ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
}


def quantization_error(name: str) -> str | None:
    """Why `name` is not a quantization this export writes, or None when it is one."""
    if name in QUANTIZATIONS:
        return None
    offered = ", ".join(QUANTIZATIONS)
    if name.lower() in REFUSED:
        return f"'{name}' is {REFUSED[name.lower()]}; available: {offered} (q4_0 / q4_1 for 4 bits)"
    return f"'{name}' is not a GGUF quantization this service writes (available: {offered})"
