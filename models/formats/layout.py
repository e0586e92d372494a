"""The files of a model folder, by name, and the safetensors header: what the service reads
of a model without loading it (torch-free, so the API process reads it on any thread).

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each
tensor's name to its dtype, shape and byte span, then the data.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from models.data.bounded_json import loads
from models.errors import HeaderError, TooDeep

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
CHAT_FILE = "chat.json"  # a model's chat format (models/data/chat_records.py)
ADAPTER_CONFIG = "adapter_config.json"  # a PEFT adapter folder (models/formats/peft.py)
ADAPTER_WEIGHTS = "adapter_model.safetensors"

MAX_HEADER = 100 << 20  # a safetensors header larger than this is not a model's
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


def read_header(path: Path, max_depth: int = 8) -> tuple[dict[str, Any], int]:
    """(the header's tensors without `__metadata__`, the data section's length in bytes).
    Raises HeaderError for a truncated file, an oversized or non-JSON header."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HeaderError("truncated (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or n > size - 8:
            raise HeaderError(f"the header claims {n} bytes; the file has {size}")
        try:
            header = loads(f.read(n), max_depth)
        except (UnicodeDecodeError, json.JSONDecodeError, TooDeep):
            raise HeaderError("the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise HeaderError("the header is not a JSON object")
    return {k: v for k, v in header.items() if k != "__metadata__"}, size - 8 - n


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Each tensor's shape, from the header alone."""
    header, _ = read_header(path)
    return {k: list(v["shape"]) for k, v in header.items()}


def parameter_count(path: Path) -> int:
    """The elements of every tensor in the file, from the header alone."""
    return sum(math.prod(shape) for shape in tensor_shapes(path).values())
