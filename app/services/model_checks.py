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
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from app.config import Settings
from app.errors import Invalid, from_model_error
from models.data.bounded_json import loads
from models.errors import HeaderError, TooDeep
from models.families import DEFAULT, FAMILIES
from models.families.family import Family
from models.families.gpt.config import HF_DEFAULTS, HF_DIMS, GPTConfig
from models.formats.archive import is_zip
from models.formats.layout import CONFIG_FILE, DTYPE_BYTES, MODEL_FILE, TOKENIZER_FILE, read_header

WEIGHTS_FILE = MODEL_FILE
MAX_JSON_FILE = 64 << 20
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
    except TooDeep as exc:
        raise from_model_error(exc, "file", f"not valid JSON ({exc})", file=name) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise refuse(name, f"not valid JSON ({exc})") from None


def _family(config: dict[str, Any]) -> Family | None:
    """The family of one of our model folders (by `format`, else `arch`; an older GPT folder
    names neither); None for a Hugging Face config."""
    for f in FAMILIES.values():
        if config.get("format") == f.format or config.get("arch") == f.arch:
            return f
    return None if "model_type" in config else FAMILIES[DEFAULT]


def _declared(config: dict[str, Any], f: Family) -> int:
    """The parameter count of our config.json of family `f` (`"<arch>": {...}`), each field
    checked against the family's config dataclass before anything is built from it."""
    declared = config.get(f.arch)
    if not isinstance(declared, dict):
        raise refuse(CONFIG_FILE, f"`{f.arch}` must be an object of the model's dimensions")
    known = {x.name: x for x in fields(f.config)}  # type: ignore[arg-type]
    unknown = sorted(set(declared) - set(known))
    if unknown:
        raise refuse(CONFIG_FILE, f"{f.arch}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for name, x in known.items():
        default = None if x.default is MISSING else x.default
        value = declared.get(name, default)
        if x.type == "int":  # sizes; 0 where the config derives the value from the others
            if value is None:
                raise refuse(CONFIG_FILE, f"{f.arch}.{name}: required")
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if default == 0 else 1):
                raise refuse(CONFIG_FILE, f"{f.arch}.{name}: must be a positive integer, got {json.dumps(value)[:40]}")
            values[name] = value
        elif x.type == "bool":
            values[name] = bool(value)
    if values["n_head"] % (values.get("n_kv_head") or values["n_head"]):
        raise refuse(CONFIG_FILE, f"{f.arch}.n_head: must be a multiple of n_kv_head")
    dropout = declared.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise refuse(CONFIG_FILE, f"{f.arch}.dropout: must be a number in [0, 1)")
    try:
        count: int = f.config(**values).num_parameters()
    except ValueError as exc:
        raise refuse(CONFIG_FILE, f"{f.arch}: {exc}") from None
    return count


def _hf_gpt2(config: dict[str, Any]) -> int:
    """The parameter count of a Hugging Face GPT-2 config.json, its fields checked."""
    dims: dict[str, Any] = dict(HF_DEFAULTS)
    for hf, ours in HF_DIMS.items():
        if hf in config:
            dims[ours] = config[hf]
    if "n_positions" not in config and "n_ctx" in config:
        dims["block_size"] = config["n_ctx"]
    for name, value in dims.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise refuse(CONFIG_FILE, f"{name}: must be a positive integer, got {json.dumps(value)[:40]}")
    if dims["n_embd"] % dims["n_head"]:
        raise refuse(CONFIG_FILE, "n_embd: must be a multiple of n_head")
    return GPTConfig(**dims).num_parameters()


def check_config(directory: Path, settings: Settings) -> int | None:
    """The parameter count config.json declares (None when not sized here); 422 if it is not
    an object, a dimension is not a positive integer, or the model is over the settings."""
    if not (directory / CONFIG_FILE).is_file():
        raise refuse("file", "the archive holds no config.json")
    config = _json_file(directory, CONFIG_FILE, settings.max_json_depth)
    if not isinstance(config, dict):
        raise refuse(CONFIG_FILE, f"must be a JSON object, not {type(config).__name__}")
    f = _family(config)
    if f is not None:
        return _within(_declared(config, f), settings)
    if config.get("model_type") == "gpt2":
        return _within(_hf_gpt2(config), settings)
    return None


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
    try:
        header, data_len = read_header(path)
    except HeaderError as exc:
        raise from_model_error(exc, "file", file=WEIGHTS_FILE) from None
    end, elements = 0, 0
    for name, t in header.items():
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
