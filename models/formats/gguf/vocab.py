"""A tokenizer as llama.cpp's GGUF metadata describes it (the export side of
models/formats/gguf/tokenizer.py): `tokenizer.ggml.model` "gpt2" (byte-level BPE), the
vocabulary in id order with a type per token, the merges, the pre-tokenizer's name
(`tokenizer.ggml.pre`), the bos/eos/eot/pad ids, `add_bos_token` and the chat template.

llama.cpp splits text by the pre-tokenizer NAME, so the name must be one whose split is the
tokenizer's own: it is read off tokenizer.json (the split patterns of the models each name
stands for, models.formats.gguf.tokenizer), and a pre-tokenizer that is none of them is
refused rather than named wrongly (its text would tokenize silently differently).
Sentencepiece-style vocabularies (Llama 2, Mistral: Metaspace, byte fallback) are refused too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gguf import GGUFWriter, TokenType

from models.data.chat import ChatFormat
from models.data.tokenizer import Tokenizer
from models.errors import UnsupportedModel
from models.formats.gguf.tokenizer import LLAMA3_SPLIT, QWEN2_SPLIT


@dataclass
class GGUFVocab:
    tokens: list[str]  # one per embedding row, in id order
    types: list[int]  # gguf.TokenType per token
    merges: list[str]  # "left right", by rank
    pre: str  # tokenizer.ggml.pre
    bos: int
    eos: int
    eot: int | None
    pad: int
    add_bos: bool
    chat_template: str | None


def _refuse(what: str) -> UnsupportedModel:
    return UnsupportedModel(f"GGUF export: {what}")


def _byte_level(p: dict[str, Any], regex: bool) -> bool:
    return p.get("type") == "ByteLevel" and not p.get("add_prefix_space") and bool(p.get("use_regex", True)) == regex


def _split(p: dict[str, Any], pattern: str) -> bool:
    return (
        p.get("type") == "Split"
        and (p.get("pattern") or {}).get("Regex") == pattern
        and p.get("behavior") == "Isolated"
        and not p.get("invert")
    )


def pre_name(data: dict[str, Any]) -> str:
    """llama.cpp's name of tokenizer.json's pre-tokenizer (with its normalizer)."""
    pre, norm = data.get("pre_tokenizer") or {}, data.get("normalizer")
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if norm is None and len(steps) == 1 and _byte_level(steps[0], regex=True):
        return "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    if norm is None and len(steps) == 2 and steps[0] == digits and _byte_level(steps[1], regex=True):
        return "smollm"
    if len(steps) == 2 and _byte_level(steps[1], regex=False):
        if norm is None and _split(steps[0], LLAMA3_SPLIT):
            return "llama-bpe"
        if norm == {"type": "NFC"} and _split(steps[0], QWEN2_SPLIT):
            return "qwen2"
    shown = json.dumps({"normalizer": norm, "pre_tokenizer": pre})[:300]
    raise _refuse(
        f"the tokenizer's pre-tokenizer is not one llama.cpp names (GPT-2, SmolLM, Llama 3 or Qwen2 splits): {shown}"
    )


def _merges(model: dict[str, Any]) -> list[str]:
    out = []
    for m in model.get("merges") or []:
        pair = m.split(" ") if isinstance(m, str) else list(m)
        if len(pair) != 2 or any(" " in p for p in pair):
            raise _refuse(f"the merge {m!r} is not two tokens without spaces")
        out.append(f"{pair[0]} {pair[1]}")
    return out


def _prepended_bos(data: dict[str, Any], vocab: dict[str, int]) -> int | None:
    """The id the post-processor puts before every text (Llama 3's <|begin_of_text|>), if any."""
    post = data.get("post_processor") or {}
    steps = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    for step in steps:
        single = step.get("single") if step.get("type") == "TemplateProcessing" else None
        if single and "SpecialToken" in single[0]:
            token = single[0]["SpecialToken"].get("id")
            if token in vocab:
                return vocab[token]
    return None


def gguf_vocab(tok: Tokenizer, rows: int, chat: ChatFormat | None) -> GGUFVocab:
    """The metadata of `tok` for a model of `rows` embedding rows (rows past the vocabulary
    become unused "[PAD<id>]" tokens, as llama.cpp's converter pads them)."""
    data = json.loads(tok.hf.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = "sentencepiece-style BPE (byte fallback)" if model.get("byte_fallback") else model.get("type")
        raise _refuse(f"only byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM) are exported; this one is {kind}")
    vocab = tok.hf.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= rows:
        raise _refuse(f"the tokenizer has ids up to {max(vocab.values())}, past the model's {rows} embedding rows")
    by_id = {i: t for t, i in vocab.items()}
    added = {a["id"]: a for a in data.get("added_tokens") or []}
    tokens, types = [], []
    for i in range(rows):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i]["content"])
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    own = [i for i in tok.end_ids if i != tok.eos_id] + [tok.eos_id]  # the model's own end ids first
    prepended = _prepended_bos(data, vocab)
    named = chat.special_tokens.get("bos_token") if chat is not None else None
    given = tok.generation.get("bos_token_id")
    # bos: the one the tokenizer adds, else the chat format's, else the import's, else the eos (as GPT-2's)
    candidates = [prepended, vocab.get(named or ""), given if isinstance(given, int) and 0 <= given < rows else None]
    bos = next((i for i in candidates if i is not None), own[0])
    template = chat.template if chat is not None else tok.chat_template
    return GGUFVocab(
        tokens=tokens,
        types=[int(t) for t in types],
        merges=_merges(model),
        pre=pre_name(data),
        bos=bos,
        eos=own[0],
        eot=own[1] if len(own) > 1 else None,
        pad=tok.pad_id,
        add_bos=prepended is not None,
        chat_template=template or None,
    )


def add_vocab(w: GGUFWriter, v: GGUFVocab) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    w.add_token_types(v.types)
    w.add_token_merges(v.merges)
    w.add_bos_token_id(v.bos)
    w.add_eos_token_id(v.eos)
    if v.eot is not None:
        w.add_eot_token_id(v.eot)
    w.add_pad_token_id(v.pad)
    w.add_add_bos_token(v.add_bos)
    if v.chat_template:
        w.add_chat_template(v.chat_template)
