"""GGUF export (models/formats/gguf/writer.py): our model folders written as llama.cpp's
converter writes them, read back three ways: the `gguf` package's GGUFReader (metadata, tensor
names, types and shapes as llama.cpp expects them), our own importer (`load_model` on the
.gguf: the same logits and greedy text), and transformers' GGUF loader (an independent reader
of llama.cpp's layout, the llama q/k permutation included).

Tolerances: f32 re-imports bit for bit; f16 keeps every greedy token and moves no logit by more
than F16_LOGIT_TOL of the logits' spread; q8_0 agrees with the original's greedy choice at
Q8_AGREEMENT of the positions or more (teacher-forced on the original's greedy continuation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import pytest
import torch
from gguf import GGUFReader

from models.errors import UnsupportedModel
from models.families.build import Model
from models.formats.gguf.llama import permute
from models.formats.gguf.quantization import QUANTIZATIONS, quantization_error
from models.formats.gguf.writer import write_gguf
from models.formats.load import load_model
from models.inference.generate import Sampling, generate_ids
from tests.models.formats.gguf.export_models import (
    CHATML,
    PROMPTS,
    adapter_folder,
    gpt_folder,
    gpt_tokenizer,
    llama_folder,
    smollm_tokenizer,
)

F16_LOGIT_TOL = 1e-2
Q8_AGREEMENT = 0.9
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def gtok():
    return gpt_tokenizer()


@pytest.fixture(scope="module")
def ltok():
    return smollm_tokenizer()


@pytest.fixture(scope="module")
def gpt(gtok, tmp_path_factory) -> tuple[Path, Model]:
    return gpt_folder(tmp_path_factory.mktemp("gpt") / "gpt", gtok)


@pytest.fixture(scope="module")
def smol(ltok, tmp_path_factory) -> tuple[Path, Model]:
    return llama_folder(tmp_path_factory.mktemp("smol") / "smol", ltok)


def export(folder: Path, tmp_path: Path, q: str) -> Path:
    out = tmp_path / f"{folder.name}-{q}.gguf"
    write_gguf(folder, out, q)
    return out


def read(path: Path) -> tuple[dict[str, Any], dict[str, tuple[str, list[int]]]]:
    """(metadata, {tensor: (type, shape in llama.cpp's order: ne0 first)})."""
    r = GGUFReader(str(path))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    return meta, {t.name: (t.tensor_type.name, [int(d) for d in t.shape]) for t in r.tensors}


def arch_tensor_names(arch: gguf.MODEL_ARCH) -> set[str]:
    return {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch]}


def base_name(name: str) -> str:
    """blk.3.attn_q.weight -> blk.{bid}.attn_q"""
    stem = name.rsplit(".", 1)[0]
    parts = stem.split(".")
    return ".".join(["blk", "{bid}", *parts[2:]]) if parts[0] == "blk" else stem


@torch.no_grad()
def logits(model: Model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids])
    return model.logits(model.hidden(x))[0].float()


def greedy(model: Model, ids: list[int]) -> list[int]:
    return generate_ids(model, [ids], Sampling(max_new_tokens=NEW_TOKENS))[0]


def compare(original: Model, tok: Any, back: Model, back_tok: Any, q: str) -> float:
    """Checks the re-imported model against the original; returns the greedy agreement."""
    agree = total = 0
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        assert back_tok.encode(prompt) == ids, prompt
        want = greedy(original, ids)
        if q == "f32":
            assert torch.equal(logits(back, ids), logits(original, ids))
        if q in ("f32", "f16"):
            assert greedy(back, ids) == want, (q, prompt)
            a, b = logits(original, ids + want), logits(back, ids + want)
            assert (a - b).abs().max() <= F16_LOGIT_TOL * float(a.std()), (q, float((a - b).abs().max()))
        got = logits(back, ids + want)[len(ids) - 1 : -1].argmax(-1).tolist()
        agree += sum(g == w for g, w in zip(got, want, strict=True))
        total += len(want)
    return agree / total


@pytest.mark.parametrize("q", ["f32", "f16", "q8_0"])
def test_gpt_exports_as_llama_cpp_gpt2(tmp_path, gpt, gtok, q):
    folder, model = gpt
    path = export(folder, tmp_path, q)
    meta, tensors = read(path)
    assert meta["general.architecture"] == "gpt2" and meta["general.name"] == "gpt"
    assert meta["general.file_type"] == QUANTIZATIONS[q].file_type
    assert {k: meta[f"gpt2.{k}"] for k in ("block_count", "context_length", "embedding_length",
            "feed_forward_length", "attention.head_count")} == {"block_count": 2, "context_length": 1024,
            "embedding_length": 64, "feed_forward_length": 256, "attention.head_count": 4}  # fmt: skip
    assert meta["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    vocab = gtok.hf.get_vocab()
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.__getitem__)
    control = [i for i, t in enumerate(meta["tokenizer.ggml.token_type"]) if t == gguf.TokenType.CONTROL]
    assert control == sorted([gtok.eos_id, gtok.sep_id, gtok.pad_id])
    assert meta["tokenizer.ggml.bos_token_id"] == meta["tokenizer.ggml.eos_token_id"] == gtok.eos_id
    assert meta["tokenizer.ggml.padding_token_id"] == gtok.pad_id
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert len(meta["tokenizer.ggml.merges"]) > 0 and "tokenizer.chat_template" not in meta

    per_block = ["attn_norm.weight", "attn_norm.bias", "attn_qkv.weight", "attn_qkv.bias", "attn_output.weight",
                 "attn_output.bias", "ffn_norm.weight", "ffn_norm.bias", "ffn_up.weight", "ffn_up.bias",
                 "ffn_down.weight", "ffn_down.bias"]  # fmt: skip
    want = {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"}
    want |= {f"blk.{i}.{n}" for i in range(2) for n in per_block}
    assert set(tensors) == want  # tied: no `output`, llama.cpp reads token_embd
    assert {base_name(n) for n in tensors} <= arch_tensor_names(gguf.MODEL_ARCH.GPT2)
    qtype = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[q]
    for name, (kind, shape) in tensors.items():
        f32 = len(shape) == 1 or name == "position_embd.weight"
        assert kind == ("F32" if f32 else qtype), name
    assert tensors["token_embd.weight"][1] == [64, gtok.vocab_size]
    assert tensors["position_embd.weight"][1] == [64, 1024]
    assert tensors["blk.0.attn_qkv.weight"][1] == [64, 192]
    assert tensors["blk.1.ffn_up.weight"][1] == [64, 256] and tensors["blk.1.ffn_down.weight"][1] == [256, 64]

    back, back_tok = load_model(path)
    agreement = compare(model, gtok, back, back_tok, q)
    assert agreement >= (1.0 if q != "q8_0" else Q8_AGREEMENT), agreement


@pytest.mark.parametrize("q", ["f32", "f16", "q8_0"])
def test_smollm2_shaped_llama_exports_as_llama_cpp_llama(tmp_path, smol, ltok, q):
    folder, model = smol
    path = export(folder, tmp_path, q)
    meta, tensors = read(path)
    assert meta["general.architecture"] == "llama"
    hp = {k[len("llama.") :]: v for k, v in meta.items() if k.startswith("llama.")}
    assert hp == {
        "block_count": 2, "context_length": 256, "embedding_length": 576, "feed_forward_length": 1536,
        "attention.head_count": 9, "attention.head_count_kv": 3, "rope.freq_base": 100000.0,
        "attention.layer_norm_rms_epsilon": pytest.approx(1e-5), "attention.key_length": 64,
        "attention.value_length": 64, "vocab_size": ltok.vocab_size, "rope.dimension_count": 64,
    }  # fmt: skip
    ids = {k: ltok.hf.token_to_id(k) for k in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>")}
    assert meta["tokenizer.ggml.pre"] == "smollm" and meta["tokenizer.chat_template"] == CHATML
    assert meta["tokenizer.ggml.bos_token_id"] == ids["<|im_start|>"]
    assert meta["tokenizer.ggml.eos_token_id"] == ids["<|im_end|>"]
    assert meta["tokenizer.ggml.eot_token_id"] == ids["<|endoftext|>"]
    assert meta["tokenizer.ggml.padding_token_id"] == ids["<|pad|>"]
    per_block = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down"}  # fmt: skip
    want = {"token_embd.weight", "output_norm.weight"} | {f"blk.{i}.{n}.weight" for i in range(2) for n in per_block}
    assert set(tensors) == want
    assert {base_name(n) for n in tensors} <= arch_tensor_names(gguf.MODEL_ARCH.LLAMA)
    assert tensors["blk.0.attn_q.weight"][1] == [576, 576] and tensors["blk.0.attn_k.weight"][1] == [576, 192]
    assert tensors["blk.0.ffn_gate.weight"][1] == [576, 1536] and tensors["blk.0.ffn_down.weight"][1] == [1536, 576]
    qtype = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[q]
    assert all(kind == ("F32" if len(shape) == 1 else qtype) for kind, shape in tensors.values())
    if q == "f32":  # llama.cpp's q/k row order (per head, the rotary halves interleaved)
        data = {t.name: torch.from_numpy(t.data.copy()) for t in GGUFReader(str(path)).tensors}
        sd = model.state_dict()
        assert torch.equal(data["blk.1.attn_q.weight"], permute(sd["model.layers.1.self_attn.q_proj.weight"], 9))
        assert torch.equal(data["blk.1.attn_k.weight"], permute(sd["model.layers.1.self_attn.k_proj.weight"], 3))

    back, back_tok = load_model(path)
    assert back_tok.chat_template == CHATML
    assert back_tok.end_ids == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    agreement = compare(model, ltok, back, back_tok, q)
    assert agreement >= (1.0 if q != "q8_0" else Q8_AGREEMENT), agreement


@pytest.mark.parametrize("variant", ["qwen2", "qwen3"])
def test_qwen_variants_export_unpermuted_under_their_own_arch(tmp_path, ltok, variant):
    changes = {"attention_bias": True} if variant == "qwen2" else {"qk_norm": True, "head_dim": 32}
    shape = dict(n_head=4, n_kv_head=2, n_embd=64, head_dim=16, intermediate_size=128, tie_embeddings=False)
    folder, model = llama_folder(tmp_path / variant, ltok, seed=1, **{**shape, **changes})
    path = export(folder, tmp_path, "f32")
    meta, tensors = read(path)
    assert meta["general.architecture"] == variant
    assert meta[f"{variant}.attention.key_length"] == (32 if variant == "qwen3" else 16)
    assert {base_name(n) for n in tensors} <= arch_tensor_names(getattr(gguf.MODEL_ARCH, variant.upper()))
    assert "output.weight" in tensors  # untied
    extra = {"qwen2": ["attn_q.bias", "attn_k.bias", "attn_v.bias"], "qwen3": ["attn_q_norm.weight"]}[variant]
    assert all(f"blk.0.{n}" in tensors for n in extra)
    data = {t.name: torch.from_numpy(t.data.copy()) for t in GGUFReader(str(path)).tensors}
    assert torch.equal(data["blk.0.attn_q.weight"], model.state_dict()["model.layers.0.self_attn.q_proj.weight"])
    back, back_tok = load_model(path)
    assert back.config == model.config
    compare(model, ltok, back, back_tok, "f32")


@pytest.mark.parametrize("base_kind", ["gpt", "llama"])
def test_an_adapter_exports_merged_into_its_base(tmp_path, gpt, smol, gtok, ltok, base_kind):
    (base_dir, base), tok = (gpt, gtok) if base_kind == "gpt" else (smol, ltok)
    targets = ["attention", "mlp"] if base_kind == "gpt" else ["q", "k", "v", "down"]
    adapter_dir, merged = adapter_folder(tmp_path / "adapter", base_dir, base, targets)
    path = export(adapter_dir, tmp_path, "f32")
    meta, _ = read(path)
    assert meta["general.name"] == "adapted"
    back, back_tok = load_model(path)
    compare(merged, tok, back, back_tok, "f32")
    ids = tok.encode(PROMPTS[0])
    assert not torch.allclose(logits(back, ids), logits(base, ids), atol=1e-3)  # the adapter is in


def test_q4_0_keeps_the_output_at_q8_0_and_falls_back_to_f16_for_odd_rows(tmp_path, gtok):
    from models.families.build import build_model
    from models.families.gpt.config import GPTConfig
    from tests.models.formats.gguf.export_models import peak, save

    model = peak(build_model(GPTConfig(gtok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=48)))
    path = export(save(tmp_path / "odd", model, gtok), tmp_path, "q4_0")
    _, tensors = read(path)
    assert tensors["token_embd.weight"][0] == "F16"  # rows of 48: no whole Q8_0 blocks of 32
    assert tensors["blk.0.attn_qkv.weight"][0] == "F16"
    assert tensors["blk.0.ffn_down.weight"][0] == "Q4_0"  # rows of 192
    folder, _ = gpt_folder(tmp_path / "even", gtok)
    _, tensors = read(export(folder, tmp_path, "q4_0"))
    assert tensors["token_embd.weight"][0] == "Q8_0"  # tied: the output projection
    assert {k for n, (k, s) in tensors.items() if len(s) == 2 and n.startswith("blk.")} == {"Q4_0"}
    back, _ = load_model(path)
    assert back.config == model.config


def test_llama3_rope_scaling_becomes_rope_freqs(tmp_path, ltok):
    scaling = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}  # fmt: skip
    shape = dict(n_head=4, n_kv_head=2, n_embd=64, head_dim=16, intermediate_size=128, rope_theta=500000.0)
    folder, _ = llama_folder(tmp_path / "l3", ltok, rope_scaling=scaling, **shape)
    _, tensors = read(path := export(folder, tmp_path, "f16"))
    assert tensors["rope_freqs.weight"] == ("F32", [8])
    back, _ = load_model(path)
    assert back.config.rope_scaling == scaling
    qwen2, _ = llama_folder(tmp_path / "q", ltok, rope_scaling=scaling, attention_bias=True, **shape)
    with pytest.raises(UnsupportedModel, match="qwen2 architecture has no llama3 rope scaling"):
        export(qwen2, tmp_path, "f16")


def test_what_llama_cpp_cannot_reproduce_is_refused(tmp_path, gtok):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    from models.formats.gguf.vocab import gguf_vocab
    from models.formats.hf.files import service_tokenizer

    assert quantization_error("q8_0") is None  # a K-quant without llama.cpp: tests/models/formats/gguf/test_kquants.py
    folder, _ = gpt_folder(tmp_path / "g", gtok)
    with pytest.raises(ValueError, match="not a GGUF quantization"):
        write_gguf(folder, tmp_path / "x.gguf", "int3")
    assert not (tmp_path / "x.gguf").exists()

    vocab = {"<unk>": 0, "▁a": 1, "a": 2, "▁": 3}
    spm = HFTokenizer(models.BPE(vocab, [("▁", "a")], byte_fallback=True, unk_token="<unk>"))
    spm.pre_tokenizer = pre_tokenizers.Metaspace()
    with pytest.raises(UnsupportedModel, match="byte fallback"):
        gguf_vocab(service_tokenizer(spm), 16, None)
    odd = HFTokenizer.from_str(gtok.hf.to_str())
    odd.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(UnsupportedModel, match=r"pre-tokenizer is not one llama\.cpp names"):
        gguf_vocab(service_tokenizer(odd), gtok.vocab_size, None)
    with pytest.raises(UnsupportedModel, match="past the model's 10 embedding rows"):
        gguf_vocab(gtok, 10, None)


@pytest.mark.parametrize("which", ["gpt", "llama", "qwen3"])
def test_transformers_gguf_loader_reads_the_export_to_the_same_logits(tmp_path, gpt, smol, gtok, ltok, which):
    """An independent reader of llama.cpp's conventions (names, the llama q/k permutation, GPT-2's
    transposes, tied heads)."""
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    if which == "qwen3":  # head_dim 128: transformers' GGUF loader reads no key_length (Qwen3Config's default)
        shape = dict(n_head=4, n_kv_head=2, n_embd=64, head_dim=128, intermediate_size=128, qk_norm=True)
        folder, model = llama_folder(tmp_path / "q3", ltok, seed=2, **shape)
    else:
        folder, model = gpt if which == "gpt" else smol
    path = export(folder, tmp_path, "f32")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
    tok = gtok if which == "gpt" else ltok
    for prompt in PROMPTS[:3]:
        ids = tok.encode(prompt)
        with torch.no_grad():
            got = theirs(torch.tensor([ids])).logits[0]
        assert torch.allclose(got, logits(model, ids), atol=2e-4, rtol=1e-4), (which, prompt)


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_llama3_and_qwen2_tokenizers_are_named_as_llama_cpp_names_them(tmp_path, pre):
    """The split of each tokenizer.json is named for llama.cpp, and the name reads back (our
    importer's split for it, models.formats.gguf.tokenizer) to the same tokens; Llama 3's
    post-processor BOS becomes bos_token_id with add_bos_token."""
    from gguf import GGUFWriter
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from tokenizers import Tokenizer as HFTokenizer

    from models.formats.gguf.tokenizer import LLAMA3_SPLIT, QWEN2_SPLIT, build_tokenizer
    from models.formats.gguf.vocab import add_vocab, gguf_vocab
    from models.formats.hf.files import service_tokenizer
    from tests.conftest import corpus_texts

    hf = HFTokenizer(models.BPE(ignore_merges=pre == "llama-bpe"))
    split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT if pre == "llama-bpe" else QWEN2_SPLIT), behavior="isolated")
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    if pre == "qwen2":
        hf.normalizer = normalizers.NFC()
    hf.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|endoftext|>", "<|completion|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    hf.train_from_iterator(corpus_texts(200), trainer=trainer)
    if pre == "llama-bpe":
        hf.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", hf.token_to_id("<|begin_of_text|>"))]
        )
    tok = service_tokenizer(hf)
    v = gguf_vocab(tok, tok.vocab_size + 3, None)
    assert v.pre == pre and v.tokens[-1] == f"[PAD{tok.vocab_size + 2}]" and v.types[-1] == gguf.TokenType.UNUSED
    assert v.add_bos is (pre == "llama-bpe")
    assert v.bos == (hf.token_to_id("<|begin_of_text|>") if pre == "llama-bpe" else tok.eos_id)
    w = GGUFWriter(str(tmp_path / "vocab.gguf"), "llama")
    add_vocab(w, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    back = build_tokenizer(GGUFReader(str(tmp_path / "vocab.gguf"))).tokenizer
    for text in [*PROMPTS, "It's 2024 and we'll see 12345 foxes!\n\n  Twice\tspaced", "ﬁ café"]:
        assert back.encode(text).ids == hf.encode(text).ids, (pre, text)
