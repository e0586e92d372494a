"""A GGUF's metadata is sized before the `gguf` package parses it (models.formats.gguf.header):
a vocabulary, a token or a string over the limits is refused by a scan that reads no more than
the header, far faster than the reader would have taken; a model's own file passes; deriving
sentencepiece merges is bounded too."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gguf import GGUFWriter

from models.errors import GGUFError
from models.formats.gguf import header
from models.formats.gguf.reader import open_gguf, read_gguf
from models.formats.gguf.tokenizer import MAX_SPLIT_WORK, merges_from_scores
from tests.models.formats.gguf_files import tiny_model, train_tokenizer, write_gguf


def vocabulary_file(path: Path, tokens: list[str]) -> Path:
    w = GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_vocabulary_over_the_limit_is_refused_before_the_reader(tmp_path: Path) -> None:
    ok = vocabulary_file(tmp_path / "ok.gguf", [f"t{i}" for i in range(50_000)])
    start = time.perf_counter()
    open_gguf(ok)  # the reader, on a sixth of the limit
    reader_s = time.perf_counter() - start
    big = vocabulary_file(tmp_path / "big.gguf", [f"t{i}" for i in range(header.MAX_VOCAB + 1)])
    start = time.perf_counter()
    with pytest.raises(GGUFError, match=r"a vocabulary of 300,001 entries \(the limit is 300,000\)"):
        open_gguf(big)
    refused_s = time.perf_counter() - start
    print(f"\nreader on 50,000 tokens {reader_s:.2f} s; refusal of 300,001 tokens {refused_s * 1e3:.2f} ms")
    assert refused_s < reader_s / 10


def test_long_tokens_and_strings_are_refused(tmp_path: Path) -> None:
    long_token = vocabulary_file(tmp_path / "token.gguf", ["a", "b" * (header.MAX_TOKEN_BYTES + 1)])
    with pytest.raises(GGUFError, match=r"tokenizer\.ggml\.tokens: a string of 1025 bytes"):
        header.check_header(long_token)
    w = GGUFWriter(str(tmp_path / "template.gguf"), "llama")
    w.add_chat_template("{{ x }}" * (header.MAX_STRING_BYTES // 7 + 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    with pytest.raises(GGUFError, match=r"tokenizer\.chat_template: a string of"):
        header.check_header(tmp_path / "template.gguf")


def test_a_model_s_own_file_passes_and_a_cut_header_is_damaged(tmp_path: Path) -> None:
    tok = train_tokenizer()
    write_gguf(tmp_path / "m.gguf", tiny_model("qwen2", tok.get_vocab_size(), tied=True), tok)
    header.check_header(tmp_path / "m.gguf")
    assert read_gguf(tmp_path / "m.gguf").config["model_type"] == "qwen2"
    (tmp_path / "cut.gguf").write_bytes((tmp_path / "m.gguf").read_bytes()[:200])
    with pytest.raises(GGUFError, match=r"cut\.gguf: not a readable GGUF file \(the header ends early\)"):
        header.check_header(tmp_path / "cut.gguf")


def test_deriving_merges_is_bounded() -> None:
    side = int((MAX_SPLIT_WORK // 64) ** 0.5) + 1  # 64 tokens whose squared lengths pass the bound
    tokens = ["a", *("a" * side for _ in range(64))]
    with pytest.raises(GGUFError, match="too long to derive merges from"):
        merges_from_scores(tokens, [0.0] * len(tokens))
    assert merges_from_scores(["a", "b", "ab"], [0.0, 0.0, -1.0]) == [("a", "b")]
