"""Any model `load_model` reads (our folder; an adapter folder: merged into its base at its
scale) as one GGUF file llama.cpp runs, written with the `gguf` package's GGUFWriter.

Architectures: our GPT as `gpt2` (models/formats/gguf/gpt2.py); our Llama family as `llama`,
`qwen2` or `qwen3` (models/formats/gguf/llama.py). The tokenizer and chat template go into
the metadata (models/formats/gguf/vocab.py).

Quantization (the table: models/formats/gguf/quantization.py) is the `gguf` package's own
(`gguf.quants.quantize`), with the type rules of llama.cpp's converter: every 1-D tensor, every
`*_norm.weight`, `position_embd` and `rope_freqs` stay F32; the other (2-D) tensors take the
file's type, falling back to F16 where a row is not a whole number of quantization blocks (the
converter's fallback). For q4_0 and q4_1 the output projection (the token embedding when tied)
is Q8_0, as llama-quantize keeps it at a higher precision (Q6_K there).

K-quants (q4_k_m, ...: models/formats/gguf/kquants.py) are written as an f32 file beside the
target, which llama.cpp's own quantizer turns into the K-quant file (it picks every tensor's
type itself); the f32 file is removed either way.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter
from gguf.quants import QuantError, quantize

from models.data.chat import ChatFormat
from models.data.tokenizer import Tokenizer
from models.errors import UnsupportedModel
from models.families.build import Model
from models.files import read_json
from models.formats.gguf import gpt2, kquants, llama
from models.formats.gguf.quantization import DEFAULT, QUANTIZATIONS, Quantization, quantization_error
from models.formats.gguf.vocab import add_vocab, gguf_vocab
from models.formats.layout import ADAPTER_CONFIG, CONFIG_FILE
from models.formats.load import load_model, served_chat_format

Q = GGMLQuantizationType
__all__ = ["QUANTIZATIONS", "quantization_error", "write_gguf", "write_model"]
ALWAYS_F32 = ("position_embd.weight", "rope_freqs.weight")


def tensor_type(name: str, value: torch.Tensor, q: Quantization, output: str) -> GGMLQuantizationType:
    """The type a tensor is stored in (before the F16 fallback of `encode`)."""
    if value.dim() <= 1 or name.endswith("_norm.weight") or name in ALWAYS_F32:
        return Q.F32
    return q.output if name == output else q.weights


def encode(value: torch.Tensor, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
    """The tensor's bytes in `qtype` (F16 where its rows do not divide into blocks)."""
    data = value.detach().float().contiguous().numpy()
    try:
        return quantize(data, qtype), qtype
    except QuantError:
        return quantize(data, Q.F16), Q.F16


def _plan(model: Model) -> tuple[str, list[tuple[str, torch.Tensor]]]:
    """(GGUF architecture, the tensors under their GGUF names) of a loaded model."""
    c = model.config
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if c.arch == "gpt":
        return gpt2.ARCH, gpt2.tensors(state)
    if c.arch == "llama":
        arch = llama.gguf_arch(c)
        return arch, llama.tensors(state, c, arch)
    raise UnsupportedModel(f"GGUF export: no llama.cpp architecture for arch '{c.arch}'")


def _tokenizer_home(source: Path) -> Path:
    """Where the tokenizer and chat format of `source` live: an adapter's base folder."""
    info = source / "stagecraft.json"
    if (source / ADAPTER_CONFIG).is_file() and info.is_file():
        base = read_json(info).get("base_path")
        if isinstance(base, str) and base:
            return source / base
    return source


def _name(source: Path, fallback: str) -> str:
    for f in (source / CONFIG_FILE, source / "stagecraft.json"):
        record = read_json(f) if f.is_file() else {}
        if isinstance(record, dict) and isinstance(record.get("name"), str) and record["name"]:
            return str(record["name"])
    return fallback


def write_gguf(source: Path, out: Path, quantization: str = DEFAULT, name: str = "") -> None:
    """The model at `source` as a GGUF file at `out` (written whole or not at all). ValueError
    for a quantization this process does not write (`quantization_error`: a K-quant without
    llama.cpp); UnsupportedModel for what llama.cpp cannot read; kquants.KQuantError when
    llama.cpp's quantizer fails."""
    why = quantization_error(quantization)
    if why is not None:
        raise ValueError(why)
    model, tok = load_model(source)
    chat = served_chat_format(_tokenizer_home(source), tok)
    write_model(model, tok, chat, out, quantization, _name(source, name or source.name))


def write_model(model: Model, tok: Tokenizer, chat: ChatFormat | None, out: Path, quantization: str, name: str) -> None:
    """`model` as a GGUF file at `out` in `quantization` (written whole or not at all)."""
    if quantization not in kquants.FILE_TYPES:
        _write(model, tok, chat, out, QUANTIZATIONS[quantization], name)
        return
    source = out.with_name(f".{out.name}.{os.getpid()}.{kquants.SOURCE}")
    try:
        _write(model, tok, chat, source, QUANTIZATIONS[kquants.SOURCE], name)
        kquants.quantize(source, out, quantization)
    finally:
        source.unlink(missing_ok=True)


def _write(model: Model, tok: Tokenizer, chat: ChatFormat | None, out: Path, q: Quantization, name: str) -> None:
    """The file the `gguf` package writes, its tensors quantized to `q` by the type rules above."""
    arch, named = _plan(model)
    rows = int(model.config.vocab_size)
    vocab = gguf_vocab(tok, rows, chat)  # refuses a tokenizer llama.cpp cannot reproduce before any work
    output = "output.weight" if any(n == "output.weight" for n, _ in named) else "token_embd.weight"
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    w = GGUFWriter(str(tmp), arch)
    try:
        w.add_type("model")
        w.add_name(name)
        w.add_quantization_version(GGML_QUANT_VERSION)
        w.add_file_type(q.file_type)
        if arch == gpt2.ARCH:
            gpt2.add_hparams(w, model.config)
        else:
            llama.add_hparams(w, model.config, rows)
        add_vocab(w, vocab)
        for tensor_name, value in named:
            data, qtype = encode(value, tensor_type(tensor_name, value, q, output))
            w.add_tensor(tensor_name, data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(out)
    finally:
        w.close()
        tmp.unlink(missing_ok=True)
