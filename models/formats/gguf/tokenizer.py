"""The tokenizer a GGUF file describes, rebuilt as a `tokenizers.Tokenizer`.

A GGUF carries no tokenizer.json, only llama.cpp's metadata: the vocabulary (already in the
byte-level alphabet), the merges, a type per token (3 = control, 4 = user-defined) and the
name of the pre-tokenizer (`tokenizer.ggml.pre`). Each supported pre-tokenizer name maps to
the split the model's own tokenizer.json uses; an unknown one is refused rather than guessed,
because a wrong split tokenizes silently differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gguf import GGUFReader, GGUFValueType
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from models.errors import GGUFError

CONTROL, USER_DEFINED = 3, 4
MAX_SPLIT_WORK = 1 << 28  # sum of squared token lengths (262,144 tokens of 8 characters: 1.7e7)

# Split patterns of the models' own tokenizer.json files (facts about those models).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT2_FAMILY = {"gpt2", "default", "gpt-2"}
LLAMA3_FAMILY = {"llama3", "llama-bpe", "llama-v3", "smaug-bpe", "falcon3", "dbrx"}
QWEN2_FAMILY = {"qwen2", "deepseek-r1-qwen"}
SMOLLM_FAMILY = {"smollm"}


@dataclass
class GGUFTokenizer:
    tokenizer: Tokenizer
    chat_template: str | None
    generation: dict[str, Any]
    special_tokens: dict[str, str]


def metadata_value(reader: GGUFReader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None or not f.types:
        return default
    return f.contents()


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes stand for
    themselves, the other bytes take the characters from U+0100 on, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _pre_tokenizer(pre: str | None) -> tuple[Any, Any, bool]:
    """(normalizer, pre-tokenizer, ignore_merges) for a `tokenizer.ggml.pre` name."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre is None or pre in GPT2_FAMILY:
        return None, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), False
    if pre in SMOLLM_FAMILY:
        digits = pre_tokenizers.Digits(individual_digits=True)
        return None, pre_tokenizers.Sequence([digits, pre_tokenizers.ByteLevel(add_prefix_space=False)]), False
    if pre in LLAMA3_FAMILY:
        split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")
        return None, pre_tokenizers.Sequence([split, byte_level]), True
    if pre in QWEN2_FAMILY:
        split = pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated")
        return normalizers.NFC(), pre_tokenizers.Sequence([split, byte_level]), False
    known = sorted(GPT2_FAMILY | SMOLLM_FAMILY | LLAMA3_FAMILY | QWEN2_FAMILY)
    raise GGUFError(f"tokenizer.ggml.pre '{pre}' is not supported (supported: {', '.join(known)})")


def _merges(reader: GGUFReader) -> list[tuple[str, str]] | None:
    raw: list[str] | None = metadata_value(reader, "tokenizer.ggml.merges")
    if raw is None:
        return None
    merges = []
    for n, m in enumerate(raw):
        pair = m.split(" ")
        if len(pair) != 2:
            raise GGUFError(f"tokenizer.ggml.merges[{n}]: '{m}' is not two tokens")
        merges.append((pair[0], pair[1]))
    return merges


def _bpe(vocab: dict[str, int], merges: list[tuple[str, str]], **options: Any) -> Tokenizer:
    try:
        return Tokenizer(models.BPE(vocab=vocab, merges=merges, **options))
    except Exception as exc:  # tokenizers reports inconsistent merges as a bare Exception
        raise GGUFError(f"tokenizer.ggml.merges: inconsistent with the vocabulary ({exc})") from None


def _byte_level(reader: GGUFReader, tokens: list[str], types: list[int]) -> Tokenizer:
    table = byte_alphabet()
    alphabet = set(table.values())
    # Tokens outside the byte alphabet are raw text (a converter's mislabel): spell their bytes.
    spelled = [t if set(t) <= alphabet else "".join(table[b] for b in t.encode("utf-8")) for t in tokens]
    vocab = {t: i for i, t in reversed(list(enumerate(spelled)))}  # a duplicate keeps its first id
    normalizer, pre_tok, ignore_merges = _pre_tokenizer(metadata_value(reader, "tokenizer.ggml.pre"))
    tok = _bpe(vocab, _merges(reader) or [], ignore_merges=ignore_merges, fuse_unk=False)
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tok
    tok.decoder = decoders.ByteLevel()
    control = [t for t, k in zip(tokens, types, strict=True) if k == CONTROL and set(t) <= alphabet]
    user = [t for t, k in zip(tokens, types, strict=True) if k == USER_DEFINED and t in vocab]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    return tok


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """A sentencepiece BPE vocabulary's merges, which llama.cpp does not store: every split of a
    token into two vocabulary tokens is a merge, ranked by the merged token's score (best first;
    among equals, longer left then right pieces first, then by the pieces' ids). Every split of
    every token is looked up: GGUFError past MAX_SPLIT_WORK characters of lookups."""
    work = sum(len(t) * len(t) for t in tokens)
    if work > MAX_SPLIT_WORK:
        raise GGUFError(f"tokenizer.ggml.tokens: too long to derive merges from ({work:,} > {MAX_SPLIT_WORK:,})")
    vocab = {t: i for i, t in reversed(list(enumerate(tokens)))}
    found: list[tuple[str, str, float]] = []
    for token, score in zip(tokens, scores, strict=True):
        splits = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab]
        splits.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
        found.extend((left, right, score) for left, right in splits)
    found.sort(key=lambda m: (-m[2], -len(m[0]), -len(m[1])))
    return [(left, right) for left, right, _ in found]


def _sentencepiece(reader: GGUFReader, tokens: list[str], types: list[int], unk: int | None) -> Tokenizer:
    """Llama/Mistral-style sentencepiece BPE: "▁" for spaces, bytes as <0xNN> tokens."""
    scores = metadata_value(reader, "tokenizer.ggml.scores")
    merges = _merges(reader)
    if merges is None:
        if scores is None or len(scores) != len(tokens):
            raise GGUFError("tokenizer.ggml.scores: missing or not one per token (needed without merges)")
        merges = merges_from_scores(tokens, [float(x) for x in scores])
    vocab = {t: i for i, t in reversed(list(enumerate(tokens)))}
    unk_token = tokens[unk] if unk is not None else None
    tok = _bpe(vocab, merges, fuse_unk=True, byte_fallback=True, unk_token=unk_token)
    prefix = bool(metadata_value(reader, "tokenizer.ggml.add_space_prefix", True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence([*steps, decoders.Strip(content=" ", left=1)] if prefix else steps)
    control = [t for t, k in zip(tokens, types, strict=True) if k == CONTROL]
    user = [t for t, k in zip(tokens, types, strict=True) if k == USER_DEFINED]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    return tok


def build_tokenizer(reader: GGUFReader) -> GGUFTokenizer:
    kind = metadata_value(reader, "tokenizer.ggml.model")
    if kind not in ("gpt2", "llama"):
        raise GGUFError(
            f"tokenizer.ggml.model '{kind}' is not supported (byte-level BPE 'gpt2' and sentencepiece 'llama' are)"
        )
    tokens: list[str] = metadata_value(reader, "tokenizer.ggml.tokens") or []
    types: list[int] = metadata_value(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    if not tokens or len(types) != len(tokens):
        raise GGUFError("tokenizer.ggml.tokens / token_type: missing or of different lengths")
    field = reader.fields.get("tokenizer.ggml.token_type")
    if field is not None and field.types[-1] not in (GGUFValueType.INT32, GGUFValueType.UINT32):
        raise GGUFError("tokenizer.ggml.token_type: not an integer array")

    def token_id(key: str) -> int | None:
        v = metadata_value(reader, f"tokenizer.ggml.{key}_token_id")
        if v is None:
            return None
        if not isinstance(v, int) or not 0 <= v < len(tokens):
            raise GGUFError(f"tokenizer.ggml.{key}_token_id: {v!r} is not a token id")
        return v

    ids = {k: token_id(k) for k in ("bos", "eos", "unknown", "padding", "eot", "eom")}
    if kind == "gpt2":
        tok = _byte_level(reader, tokens, types)
    else:
        tok = _sentencepiece(reader, tokens, types, ids["unknown"])
    bos = ids["bos"]
    # llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise
    if metadata_value(reader, "tokenizer.ggml.add_bos_token", kind == "llama") and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]}:0 $A:0",
            pair=f"{tokens[bos]}:0 $A:0 {tokens[bos]}:1 $B:1",
            special_tokens=[(tokens[bos], bos)],
        )
    names = {"bos": "bos_token", "eos": "eos_token", "unknown": "unk_token", "padding": "pad_token"}
    special = {names[k]: tokens[i] for k, i in ids.items() if k in names and i is not None}
    stops = list(dict.fromkeys(i for k in ("eos", "eot", "eom") if (i := ids[k]) is not None))
    generation = {
        "bos_token_id": bos,
        "eos_token_id": stops[0] if len(stops) == 1 else (stops or None),
        "pad_token_id": ids["padding"],
    }
    template = metadata_value(reader, "tokenizer.chat_template")
    return GGUFTokenizer(tok, template if isinstance(template, str) else None, generation, special)
