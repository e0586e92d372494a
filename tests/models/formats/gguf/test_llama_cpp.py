"""The GGUF export run by llama.cpp itself (llama-cpp-python, the optional `bench` extra; skipped
without it): it tokenizes the prompts as our tokenizer does (the pre-tokenizer llama.cpp names)
and its greedy tokens on the f16 export are those our model generates (as our server does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.formats.gguf.writer import write_gguf
from tests.models.formats.gguf.export_models import (
    PROMPTS,
    gpt_folder,
    gpt_tokenizer,
    import_llama_cpp,
    llama_folder,
    smollm_tokenizer,
)
from tests.models.formats.gguf.test_writer import NEW_TOKENS, greedy

llama_cpp = import_llama_cpp()


def llama_cpp_greedy(llm: object, ids: list[int], n: int) -> list[int]:
    llm.reset()  # type: ignore[attr-defined]
    llm.eval(ids)  # type: ignore[attr-defined]
    out: list[int] = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))  # type: ignore[attr-defined]
        out.append(token)
        llm.eval([token])  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize("which", ["gpt", "llama"])
def test_llama_cpp_generates_our_greedy_tokens_from_the_f16_export(tmp_path: Path, which: str) -> None:
    if which == "gpt":
        tok = gpt_tokenizer()
        folder, model = gpt_folder(tmp_path / "gpt", tok)
    else:
        tok = smollm_tokenizer()
        folder, model = llama_folder(tmp_path / "smol", tok)
    path = tmp_path / "model.gguf"
    write_gguf(folder, path, "f16")
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
    try:
        for prompt in PROMPTS:
            ids = tok.encode(prompt)
            assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids, prompt
            want = greedy(model, ids)
            assert llama_cpp_greedy(llm, ids, NEW_TOKENS) == want, prompt
    finally:
        llm.close()
