"""What an uploaded model archive must be before anything is allocated for it (torch-free,
so it runs on a worker thread, never the inference thread): a bounded number of entries, a
config.json object whose architecture is within the settings, a model.safetensors whose
header tells the truth about its tensors and the file's size, and a tokenizer.json that is
JSON. Each refusal is a 422 naming the file and field; no message carries a server path.
"""

from __future__ import annotations

import json
import math
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from app.config import Settings
from app.errors import Invalid
from app.services.estimates import gpt_parameters
from models.data.bounded_json import loads
from models.errors import TooDeep
from models.formats.archive import is_zip

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"
GPT_FIELDS = {"vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout"}
HF_GPT2_DIMS = {"vocab_size": "vocab_size", "n_positions": "block_size", "n_layer": "n_layer", "n_head": "n_head",
                "n_embd": "n_embd"}  # fmt: skip
HF_GPT2_DEFAULTS = {"vocab_size": 50257, "block_size": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768}
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip
MAX_HEADER = 100 << 20  # a safetensors header larger than this is not a model's
MAX_JSON_FILE = 64 << 20
LLAMA_SIZES = {"vocab_size": None, "block_size": 256, "n_layer": 4, "n_head": 4, "n_kv_head": 0, "n_embd": 256,
               "head_dim": 0, "intermediate_size": 688}  # fmt: skip  # 0: derived (LlamaConfig)
LLAMA_FIELDS = {*LLAMA_SIZES, "rms_norm_eps", "rope_theta", "rope_scaling", "attention_bias", "qk_norm",
                "tie_embeddings", "dropout"}  # fmt: skip
IGNORED = (".attn.bias", ".attn.masked_bias", "lm_head.weight")  # buffers and the tied head: not parameters


def refuse(file: str, message: str, code: str = "unsupported_model") -> Invalid:
    return Invalid(f"{file}: {message}", [{"loc": "file", "file": file, "message": message}], code=code)


def _zip_directory(archive: Path) -> tuple[int, int] | None:
    """(entries, central directory bytes) from a zip's end record, without reading the
    directory itself (zipfile parses every entry in Python first); None if not a zip."""
    size = archive.stat().st_size
    with archive.open("rb") as f:
        f.seek(max(0, size - 65_557))  # the end record (22 bytes) and a comment of up to 64 KiB
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        entries, cd_size = struct.unpack("<HI", tail[at + 10 : at + 16])
        locator = tail[at - 20 : at] if at >= 20 else b""
        if locator[:4] == b"PK\x06\x07":  # zip64: the counts are in the zip64 end record
            (offset,) = struct.unpack("<Q", locator[8:16])
            f.seek(offset)
            record = f.read(56)
            if record[:4] != b"PK\x06\x06" or len(record) < 56:
                return None
            entries, cd_size = struct.unpack("<QQ", record[32:48])
    return entries, cd_size


def check_entries(archive: Path, max_entries: int) -> None:
    """422 for an archive of more than `max_entries` members, counted before extracting: a
    zip by its end record (and a directory too large for that many entries), a tar by its
    headers, stopping past the limit."""
    too_many = refuse("file", f"the archive has more than {max_entries} entries (setting MAX_ARCHIVE_ENTRIES)")
    try:
        if is_zip(archive):
            found = _zip_directory(archive)
            if found is None:
                raise refuse("file", "not a readable .zip archive (no end of central directory)")
            entries, cd_size = found
            if entries > max_entries or cd_size > max_entries * (46 + 1024):  # 46: fixed part of an entry
                raise too_many
            return
        count = 0
        with tarfile.open(archive) as t:
            for _ in t:
                count += 1
                if count > max_entries:
                    raise too_many
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, struct.error):
        raise refuse("file", "not a readable .tar.gz or .zip archive") from None


def _json_file(directory: Path, name: str, depth: int) -> Any:
    path = directory / name
    if path.stat().st_size > MAX_JSON_FILE:
        raise refuse(name, f"larger than {MAX_JSON_FILE} bytes")
    try:
        return loads(path.read_bytes(), depth)
    except (UnicodeDecodeError, json.JSONDecodeError, TooDeep) as exc:
        raise refuse(name, f"not valid JSON ({exc})") from None


def _llama_parameters(config: dict[str, Any]) -> int:
    """The parameter count of a Stagecraft Llama-family config (`"llama": {...}`), checked."""
    llama = config.get("llama")
    if not isinstance(llama, dict):
        raise refuse(CONFIG_FILE, "`llama` must be an object of the model's dimensions")
    unknown = sorted(set(llama) - LLAMA_FIELDS)
    if unknown:
        raise refuse(CONFIG_FILE, f"llama.{unknown[0]}: unknown field (known: {', '.join(sorted(LLAMA_FIELDS))})")
    d: dict[str, int] = {}
    for name, default in LLAMA_SIZES.items():
        value = llama.get(name, default)
        if value is None:
            raise refuse(CONFIG_FILE, f"llama.{name}: required")
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if default == 0 else 1):
            raise refuse(CONFIG_FILE, f"llama.{name}: must be a positive integer, got {json.dumps(value)[:40]}")
        d[name] = value
    heads, kv = d["n_head"], d["n_kv_head"] or d["n_head"]
    if heads % kv:
        raise refuse(CONFIG_FILE, "llama.n_head: must be a multiple of n_kv_head")
    c, hd = d["n_embd"], d["head_dim"] or d["n_embd"] // heads
    attention = c * hd * (2 * heads + 2 * kv) + (hd * (heads + 2 * kv) if llama.get("attention_bias") else 0)
    layer = attention + 3 * c * d["intermediate_size"] + 2 * c + (2 * hd if llama.get("qk_norm") else 0)
    head = 0 if llama.get("tie_embeddings", True) else d["vocab_size"] * c
    return d["vocab_size"] * c + d["n_layer"] * layer + c + head


def _dims(config: dict[str, Any]) -> dict[str, Any] | None:
    """The GPT dimensions a config declares (None for a family these checks do not size)."""
    if config.get("format") == "stagecraft-gpt" or "model_type" not in config:
        gpt = config.get("gpt")
        if not isinstance(gpt, dict):
            raise refuse(CONFIG_FILE, "`gpt` must be an object of the model's dimensions")
        unknown = sorted(set(gpt) - GPT_FIELDS)
        if unknown:
            raise refuse(CONFIG_FILE, f"gpt.{unknown[0]}: unknown field (known: {', '.join(sorted(GPT_FIELDS))})")
        missing = sorted({"vocab_size"} - set(gpt))
        if missing:
            raise refuse(CONFIG_FILE, f"gpt.{missing[0]}: required")
        return {"prefix": "gpt.", **gpt}
    if config.get("model_type") != "gpt2":
        return None
    dims: dict[str, Any] = {"prefix": "", **HF_GPT2_DEFAULTS}
    for hf, ours in HF_GPT2_DIMS.items():
        if hf in config:
            dims[ours] = config[hf]
    if "n_positions" not in config and "n_ctx" in config:
        dims["block_size"] = config["n_ctx"]
    return dims


def check_config(directory: Path, settings: Settings) -> int | None:
    """The parameter count config.json declares (None when not sized here); 422 if it is not
    an object, a dimension is not a positive integer, or the model is over the settings."""
    if not (directory / CONFIG_FILE).is_file():
        raise refuse("file", "the archive holds no config.json")
    config = _json_file(directory, CONFIG_FILE, settings.max_json_depth)
    if not isinstance(config, dict):
        raise refuse(CONFIG_FILE, f"must be a JSON object, not {type(config).__name__}")
    if config.get("format") == "stagecraft-llama" or config.get("arch") == "llama":
        return _within(_llama_parameters(config), settings)
    dims = _dims(config)
    if dims is None:
        return None
    prefix = dims.pop("prefix")
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        value = dims.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise refuse(CONFIG_FILE, f"{prefix}{name}: must be a positive integer, got {json.dumps(value)[:40]}")
    if dims.get("n_embd", 1) % dims.get("n_head", 1):
        raise refuse(CONFIG_FILE, f"{prefix}n_embd: must be a multiple of n_head")
    dropout = dims.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise refuse(CONFIG_FILE, f"{prefix}dropout: must be a number in [0, 1)")
    params = gpt_parameters(dims["vocab_size"], dims.get("block_size", 256), dims.get("n_layer", 4),
                            dims.get("n_embd", 256))  # fmt: skip
    return _within(params, settings)


def _within(params: int, settings: Settings) -> int:
    if params > settings.max_model_parameters:
        limit = f"{settings.max_model_parameters:.3g} (setting MAX_MODEL_PARAMETERS)"
        message = f"declares a model of {params:.3g} parameters; this service imports at most {limit}"
        raise refuse(CONFIG_FILE, message, "resource_limit_exceeded")
    return params


def check_weights(directory: Path, declared: int | None) -> None:
    """The safetensors header against the file: every tensor's byte span matches its dtype and
    shape and lies inside the file, the spans cover the data exactly, and the config's
    parameter count is what the tensors hold (so a config cannot make us allocate more)."""
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        return  # models.formats.hf.directory names what is missing (and refuses pickled weights)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise refuse(WEIGHTS_FILE, "truncated (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or n > size - 8:
            raise refuse(WEIGHTS_FILE, f"the header claims {n} bytes; the file has {size}")
        try:
            header = loads(f.read(n), 8)
        except (UnicodeDecodeError, json.JSONDecodeError, TooDeep):
            raise refuse(WEIGHTS_FILE, "the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise refuse(WEIGHTS_FILE, "the header is not a JSON object")
    data_len, end, elements = size - 8 - n, 0, 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(t, dict) and t.get("dtype") in DTYPE_BYTES and isinstance(t.get("shape"), list)
        offsets = t.get("data_offsets") if ok else None
        shape = t["shape"] if ok else []
        if not ok or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise refuse(WEIGHTS_FILE, f"tensor '{name[:80]}': no valid dtype and shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise refuse(WEIGHTS_FILE, f"tensor '{name[:80]}': no valid data_offsets")
        count = math.prod(shape)
        begin, stop = offsets
        if not 0 <= begin <= stop or stop - begin != count * DTYPE_BYTES[t["dtype"]]:
            raise refuse(WEIGHTS_FILE, f"tensor '{name[:80]}': its offsets do not match its shape and dtype")
        if stop > data_len:
            raise refuse(WEIGHTS_FILE, f"truncated: tensor '{name[:80]}' ends past the end of the file")
        end = max(end, stop)
        elements += 0 if name.endswith(IGNORED) else count
    if end != data_len:
        raise refuse(WEIGHTS_FILE, f"{data_len - end} bytes after the last tensor")
    if declared is not None and declared > 2 * elements + 1_000_000:
        raise refuse(CONFIG_FILE, f"declares {declared} parameters, but {WEIGHTS_FILE} holds {elements}")


def check_tokenizer(directory: Path, settings: Settings) -> None:
    if (directory / TOKENIZER_FILE).is_file():
        tok = _json_file(directory, TOKENIZER_FILE, settings.max_json_depth)
        if not isinstance(tok, dict) or not isinstance(tok.get("model"), dict):
            raise refuse(TOKENIZER_FILE, "not a tokenizers JSON file (an object with a `model` object)")


def check_model_dir(directory: Path, settings: Settings) -> None:
    """Every check above on an unpacked model folder."""
    check_weights(directory, check_config(directory, settings))
    check_tokenizer(directory, settings)
