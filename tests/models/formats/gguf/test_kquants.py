"""K-quant GGUF export (models/formats/gguf/kquants.py): our f32 GGUF quantized by llama.cpp's own
quantizer (llama-cpp-python, the optional `bench` extra; those tests skip without it), read back
by the `gguf` package's reader (llama.cpp's per-tensor types), by llama.cpp and by our importer;
without llama.cpp, K-quants are refused naming what is missing.

Agreement, measured on the SmolLM2-shaped model (random weights, PROMPTS, NEW_TOKENS each,
teacher-forced on our fp32 model's greedy continuation): q4_k_m's choices are our fp32 model's
at 0.77 of the positions in llama.cpp (3 of the 5 first tokens) and 0.76 in our importer (q8_0:
0.96 and 0.95); llama.cpp and our importer agree on the same q4_k_m file at 0.96. The floors
below are loose (a broken file agrees at about 1 / vocabulary)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from gguf import GGUFReader, LlamaFileType

from models.families.build import Model, build_model
from models.families.gpt.config import GPTConfig
from models.formats.gguf import kquants
from models.formats.gguf.quantization import QUANTIZATIONS, available, quantization_error
from models.formats.gguf.writer import write_gguf
from models.formats.load import load_model
from tests.models.formats.gguf.export_models import (
    CHATML,
    PROMPTS,
    gpt_tokenizer,
    import_llama_cpp,
    llama_folder,
    peak,
    save,
    smollm_tokenizer,
)
from tests.models.formats.gguf.test_writer import greedy, logits

AGREEMENT = 0.5  # with our fp32 model, teacher-forced (measured: 0.77 llama.cpp, 0.76 ours)
SAME_FILE_AGREEMENT = 0.85  # llama.cpp and our importer on one file (measured: 0.96)
MISSING = "llama-cpp-python is not installed (install it: the `bench` extra)"


@pytest.fixture(scope="module")
def llama_cpp() -> ModuleType:
    return import_llama_cpp()


@pytest.fixture(scope="module")
def ltok() -> Any:
    return smollm_tokenizer()


@pytest.fixture(scope="module")
def smol(ltok, tmp_path_factory, llama_cpp) -> tuple[Path, Model, Path]:
    """The SmolLM2-shaped Llama (576 wide: no whole 256-value K-blocks but in `ffn_down`'s 1536
    rows), its folder and its q4_k_m export."""
    folder, model = llama_folder(tmp_path_factory.mktemp("smol") / "smol", ltok)
    out = folder.parent / "smol-q4_k_m.gguf"
    write_gguf(folder, out, "q4_k_m")
    return folder, model, out


def tensor_types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def choices_agreement(choices: list[list[int]], wants: list[list[int]]) -> float:
    pairs = [(c, w) for cs, ws in zip(choices, wants, strict=True) for c, w in zip(cs, ws, strict=True)]
    return sum(c == w for c, w in pairs) / len(pairs)


def llama_cpp_choices(llm: Any, ids: list[int], want: list[int]) -> list[int]:
    """llama.cpp's greedy choice at each position of `ids` + `want` after the prompt."""
    llm.reset()
    llm.eval(ids + want)
    return [int(row.argmax()) for row in llm.scores[len(ids) - 1 : len(ids) + len(want) - 1]]


def our_choices(model: Model, ids: list[int], want: list[int]) -> list[int]:
    return [int(i) for i in logits(model, ids + want)[len(ids) - 1 : -1].argmax(-1)]


def test_the_k_quants_are_llama_cpps_file_types(llama_cpp) -> None:
    for name, file_type in kquants.FILE_TYPES.items():
        assert getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}") == file_type, name
        assert quantization_error(name) is None
    assert available() == [*QUANTIZATIONS, *kquants.FILE_TYPES]


@pytest.mark.parametrize("width", [576, 256])
def test_q4_k_m_takes_llama_cpps_tensor_types(tmp_path, ltok, smol, width) -> None:
    """llama.cpp's q4_k_m: Q6_K for the (tied) output and, of two layers, the last's attn_v and
    ffn_down; Q4_K for the rest. At 576 wide, what has no whole K-blocks per row falls back to
    its 32-block type: Q5_0 for Q4_K, Q8_0 for Q6_K (ffn_down's 1536-wide rows keep theirs)."""
    if width == 576:
        folder, _, path = smol
    else:
        shape = dict(n_embd=256, n_head=4, n_kv_head=2, head_dim=64, intermediate_size=512)
        folder, _ = llama_folder(tmp_path / "w256", ltok, **shape)
        write_gguf(folder, path := tmp_path / "w256-q4_k_m.gguf", "q4_k_m")
    reader = GGUFReader(str(path))
    assert reader.fields["general.file_type"].contents() == LlamaFileType.MOSTLY_Q4_K_M
    assert reader.fields["tokenizer.chat_template"].contents() == CHATML
    q4, q6 = ("Q5_0", "Q8_0") if width == 576 else ("Q4_K", "Q6_K")
    more_bits = {"token_embd.weight": q6, "blk.1.attn_v.weight": q6, "blk.1.ffn_down.weight": "Q6_K"}
    for name, kind in tensor_types(path).items():
        if name.endswith("_norm.weight"):
            assert kind == "F32", name
        elif name == "blk.0.ffn_down.weight":
            assert kind == "Q4_K", name
        else:
            assert kind == more_bits.get(name, q4), name
    assert sorted(p.name for p in path.parent.iterdir() if p.is_file()) == [path.name]  # no f32 source left


def test_llama_cpp_runs_the_q4_k_m_export(tmp_path, ltok, smol, llama_cpp) -> None:
    folder, model, path = smol
    write_gguf(folder, q8 := tmp_path / "q8_0.gguf", "q8_0")
    assert path.stat().st_size < q8.stat().st_size  # measured: 5.2 MB, 7.8 MB
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
    try:
        prompts = [ltok.encode(p) for p in PROMPTS]
        assert [llm.tokenize(p.encode(), add_bos=False, special=True) for p in PROMPTS] == prompts
        wants = [greedy(model, ids) for ids in prompts]
        got = [llama_cpp_choices(llm, ids, want) for ids, want in zip(prompts, wants, strict=True)]
    finally:
        llm.close()
    assert choices_agreement(got, wants) >= AGREEMENT

    back, back_tok = load_model(path)  # our importer: gguf.quants dequantizes Q4_K, Q5_0, Q6_K, Q8_0
    assert back.config == model.config and back_tok.chat_template == CHATML
    ours = [our_choices(back, ids, want) for ids, want in zip(prompts, wants, strict=True)]
    assert choices_agreement(ours, wants) >= AGREEMENT
    assert choices_agreement(ours, got) >= SAME_FILE_AGREEMENT


@pytest.mark.parametrize("q", ["q2_k", "q3_k_m", "q4_k_s", "q5_k_m", "q6_k"])
def test_rows_of_no_whole_blocks_fall_back_in_llama_cpp(tmp_path, q, llama_cpp) -> None:
    """A GPT 48 wide (not whole 32-value blocks either): llama.cpp writes those tensors F16, the
    192-wide `ffn_down` in a 32-block type; llama.cpp and our importer load it."""
    tok = gpt_tokenizer()
    model = peak(build_model(GPTConfig(tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=48)))
    write_gguf(save(tmp_path / "odd", model, tok), path := tmp_path / f"odd-{q}.gguf", q)
    types = tensor_types(path)
    assert types["token_embd.weight"] == types["blk.0.attn_qkv.weight"] == "F16"
    assert types["blk.0.ffn_down.weight"] in {"Q4_0", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"}
    assert load_model(path)[0].config == model.config
    llama_cpp.Llama(str(path), n_ctx=64, n_threads=1, verbose=False).close()


def test_a_failed_quantization_names_it(tmp_path, llama_cpp) -> None:
    (source := tmp_path / "not.gguf").write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(kquants.KQuantError, match="q5_k_m"):
        kquants.quantize(source, tmp_path / "out.gguf", "q5_k_m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not.gguf"]


def test_without_llama_cpp_k_quants_are_refused_naming_what_is_missing(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(kquants, "unavailable", lambda: MISSING)
    assert available() == list(QUANTIZATIONS)
    why = quantization_error("q4_k_m")
    assert why is not None and "K-quant" in why and MISSING in why and "q4_0" in why
    assert quantization_error("q8_0") is None
    with pytest.raises(ValueError, match="llama-cpp-python is not installed"):
        write_gguf(tmp_path / "never-read", tmp_path / "x.gguf", "q4_k_m")
    assert not (tmp_path / "x.gguf").exists()


@pytest.fixture
def fresh_check() -> Any:
    """kquants.unavailable, its per-process answer forgotten before and after the test."""
    kquants.unavailable.cache_clear()
    yield kquants.unavailable
    kquants.unavailable.cache_clear()


def test_llama_cpp_is_unavailable_when_absent_or_when_its_library_does_not_load(fresh_check, monkeypatch) -> None:
    find_spec, import_module = importlib.util.find_spec, importlib.import_module
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else find_spec(n, *a))
    assert "llama-cpp-python is not installed" in fresh_check()

    def no_library(name: str, *args: Any) -> ModuleType:
        if name == "llama_cpp":
            raise FileNotFoundError("Shared library with base name 'llama' not found")
        return import_module(name, *args)

    fresh_check.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "llama_cpp" else find_spec(n, *a))
    monkeypatch.setattr(importlib, "import_module", no_library)
    why = fresh_check()
    assert "llama.cpp library does not load (FileNotFoundError" in why and "bench" in why
