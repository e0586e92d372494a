"""models.formats.hf.directory for the Llama family, against transformers: our logits equal theirs on small
random configs of every model_type; their save_pretrained output (single, sharded, bf16)
imports with their logits; our export loads in transformers with our logits and greedy
text; what we cannot represent is refused with the documented error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from models.data.tokenizer import Tokenizer
from models.errors import UnsupportedModel
from models.families.llama.hf import from_hf_state
from models.families.llama.model import Llama, RMSNorm
from models.formats.hf.directory import from_hf, to_hf
from models.formats.load import load_model
from models.formats.native import save_model
from models.inference.generate import Sampling, complete

transformers = pytest.importorskip("transformers")

SMALL = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "max_position_embeddings": 64}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-gqa-tied": ("llama", {"num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True}),
    "llama-mha-untied": ("llama", {"num_attention_heads": 4, "num_key_value_heads": 4}),
    "llama3-scaling": (
        "llama",
        {
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "rope_theta": 500000.0,
            "rope_scaling": {**LLAMA3, "original_max_position_embeddings": 16},
        },
    ),
    "linear-scaling": ("llama", {"num_attention_heads": 2, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    "mistral": ("mistral", {"num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": None}),
    "qwen2-bias": ("qwen2", {"num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True}),
    "qwen3-wide-heads": ("qwen3", {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24}),
}


def reference(model_type: str, fields: dict[str, Any], vocab: int, seed: int = 0) -> Any:
    """A transformers model with random weights (norms and biases too) that decide clearly."""
    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(model_type, vocab_size=vocab, **SMALL, **fields)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 0.2) + (1.0 if p.dim() == 1 else 0.0))
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_our_logits_equal_transformers(case: str) -> None:
    model_type, fields = CASES[case]
    ref = reference(model_type, fields, 300)
    ours, config = from_hf_state(ref.config.to_dict(), ref.state_dict())
    assert config.tie_embeddings == bool(fields.get("tie_word_embeddings", False))
    idx = torch.randint(0, 300, (3, 40))
    with torch.no_grad():
        diff = (ref(idx).logits - ours.eval()(idx)).abs().max().item()
    assert diff < 1e-4


def hf_tokenizer(tok: Tokenizer, out: Path, eos: str) -> None:
    tok.save(out)
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "chat_template": "{{ x }}"})
    )


@pytest.mark.parametrize(
    ("case", "how"),
    [("llama-gqa-tied", "single"), ("qwen3-wide-heads", "sharded"), ("qwen2-bias", "bf16"), ("mistral", "single")],
)
def test_save_pretrained_imports_with_their_logits(case: str, how: str, tokenizer: Tokenizer, tmp_path: Path) -> None:
    model_type, fields = CASES[case]
    ref = reference(model_type, {**fields, "eos_token_id": [3, 4]}, tokenizer.vocab_size)
    if how == "bf16":
        ref = ref.to(torch.bfloat16)
    ref.generation_config.eos_token_id = [5, 3]
    ref.save_pretrained(tmp_path, max_shard_size="60KB" if how == "sharded" else "2GB")
    assert (tmp_path / "model.safetensors.index.json").is_file() == (how == "sharded")
    hf_tokenizer(tokenizer, tmp_path, "<|endoftext|>")
    ours, tok = load_model(tmp_path)
    assert isinstance(ours, Llama) and tok.chat_template == "{{ x }}"
    assert set(tok.end_ids) == {5, 3, 4, tokenizer.eos_id}
    idx = torch.randint(0, tokenizer.vocab_size, (2, 30))
    with torch.no_grad():
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
        want = theirs(idx).logits
        diff = (want - ours.eval()(idx)[..., : want.size(-1)]).abs().max().item()
    assert diff < 1e-4


@pytest.mark.parametrize("case", ["llama-gqa-tied", "llama-mha-untied", "qwen2-bias", "qwen3-wide-heads"])
def test_transformers_loads_our_export_with_our_logits_and_text(
    case: str, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    model_type, fields = CASES[case]
    ref = reference(model_type, fields, tokenizer.vocab_size, seed=3)
    ours, _ = from_hf_state(ref.config.to_dict(), ref.state_dict())
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    try:
        save_model(tmp_path / "ours", ours.state_dict(), ours.config, tokenizer, {"name": "t"})
    finally:
        tokenizer.chat_template = None
    to_hf(tmp_path / "ours", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}.get(
        model_type, "Qwen3ForCausalLM"
    )
    assert hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi\n"
    prompt = "At the market, Nadia has 3"
    ids = tokenizer.encode(prompt)
    assert hf_tok(prompt)["input_ids"] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (hf(x).logits - ours.eval()(x)).abs().max().item() < 1e-4
        out = hf.generate(x, max_new_tokens=16, do_sample=False)
    [text] = complete(ours, tokenizer, [prompt], Sampling(max_new_tokens=16))
    assert len(text) > 5 and hf_tok.decode(out[0, len(ids) :], skip_special_tokens=True) == text
    back, _ = from_hf(tmp_path / "hf")  # and our own export imports back exactly
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())


def test_missing_special_tokens_are_added_with_new_rows(tokenizer: Tokenizer, tmp_path: Path) -> None:
    model_type, fields = CASES["llama-mha-untied"]
    ref = reference(model_type, fields, tokenizer.vocab_size)
    ref.save_pretrained(tmp_path)
    hf = tokenizer.hf.to_str()
    raw = json.loads(hf)
    raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] != "<|pad|>"]
    raw["model"]["vocab"].pop("<|pad|>", None)
    (tmp_path / "tokenizer.json").write_text(json.dumps(raw))
    model, tok = from_hf(tmp_path)
    assert tok.pad_id >= tokenizer.vocab_size - 1
    assert model.config.vocab_size >= tok.vocab_size
    assert model.lm_head is not None and model.lm_head.weight.size(0) == model.config.vocab_size


def _config_dir(tmp_path: Path, **config: Any) -> Path:
    ref = reference("llama", CASES["llama-gqa-tied"][1], 300)
    ref.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.update(config)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return tmp_path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "mamba"}, "model_type 'mamba'"),
        ({"model_type": "gemma2"}, "model_type 'gemma2'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}, "rope_parameters": None}, "rope scaling type 'yarn'"),
        (
            {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
            "rope scaling type 'dynamic'",
        ),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"mlp_bias": True}, "MLP biases"),
        ({"attention_bias": True}, "attention_bias on llama"),
    ],
)
def test_unsupported_configs_are_refused_naming_why(
    tmp_path: Path, tokenizer: Tokenizer, change: dict[str, Any], message: str
) -> None:
    d = _config_dir(tmp_path, **change)
    tokenizer.save(d)
    with pytest.raises(UnsupportedModel) as info:
        load_model(d)
    assert message in str(info.value) and info.value.code == "user_error"


def test_pickled_weights_are_refused_unread(tmp_path: Path, tokenizer: Tokenizer) -> None:
    d = _config_dir(tmp_path)
    tokenizer.save(d)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04 would run code if unpickled")
    with pytest.raises(UnsupportedModel) as info:
        from_hf(d)
    assert "pytorch_model.bin" in str(info.value) and "never loaded" in str(info.value)


def test_older_and_newer_rope_forms_read_alike(tmp_path: Path) -> None:
    from models.families.llama.hf import config_from_hf

    base = {"model_type": "llama", "vocab_size": 300, "num_attention_heads": 4, **SMALL}
    old = config_from_hf({**base, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}})
    new = config_from_hf({**base, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}})
    assert old == new and old.rope_theta == 5e5 and old.rope_scaling == {"type": "linear", "factor": 2.0}
    shutil.rmtree(tmp_path)


def test_parts_from_elsewhere_build_the_model(tokenizer: Tokenizer) -> None:
    """The entry point for checkpoints read from other formats (GGUF): an HF config dict,
    HF-named tensors and a tokenizers.Tokenizer lacking our special tokens."""
    from tokenizers import Tokenizer as HFTokenizer

    from models.formats.hf.files import service_tokenizer
    from models.formats.hf.llama import from_hf_parts

    raw = json.loads(tokenizer.hf.to_str())
    raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] != "<|completion|>"]
    raw["model"]["vocab"].pop("<|completion|>", None)
    hf = HFTokenizer.from_str(json.dumps(raw))
    before = hf.get_vocab_size()
    ref = reference("qwen2", CASES["qwen2-bias"][1], before)
    tok = service_tokenizer(hf, [7, 8], "{{ messages }}", {"temperature": 0.6})
    model = from_hf_parts(ref.config.to_dict(), ref.state_dict(), tok)
    assert tok.sep_id == before and tok.end_ids == [7, 8, tok.eos_id] and tok.generation == {"temperature": 0.6}
    assert model.config.vocab_size == before + 1 and model.config.attention_bias
    idx = torch.randint(0, before, (2, 16))
    with torch.no_grad():
        assert (ref(idx).logits - model.eval()(idx)[..., :before]).abs().max().item() < 1e-4


def test_context_is_capped_by_a_sliding_window_and_the_serving_limit() -> None:
    from models.families.llama.hf import MAX_BLOCK, config_from_hf

    base = {"vocab_size": 300, "num_attention_heads": 4, "num_key_value_heads": 2, **SMALL}
    assert config_from_hf({**base, "model_type": "mistral", "sliding_window": 32}).block_size == 32
    assert config_from_hf({**base, "model_type": "mistral", "sliding_window": None}).block_size == 64
    assert config_from_hf({**base, "model_type": "qwen2", "sliding_window": 32}).block_size == 64  # not in use
    long = {**base, "model_type": "llama", "max_position_embeddings": 131072}
    assert config_from_hf(long).block_size == MAX_BLOCK
    with pytest.raises(UnsupportedModel, match="multiple of n_kv_head"):
        config_from_hf({**base, "model_type": "llama", "num_key_value_heads": 3})


@pytest.mark.parametrize("case", ["llama-gqa-tied", "qwen3-wide-heads"])
def test_bf16_logits_follow_transformers_bf16(case: str) -> None:
    """The same operations in the same order: RMSNorm in fp32 then cast, rotary tables in fp32."""
    model_type, fields = CASES[case]
    ref = reference(model_type, fields, 300)
    ours, _ = from_hf_state(ref.config.to_dict(), ref.state_dict())
    theirs = transformers.AutoModelForCausalLM.from_config(ref.config, dtype=torch.bfloat16).eval()
    theirs.load_state_dict(ref.state_dict())  # rotary frequencies computed in fp32, as ours
    idx = torch.randint(0, 300, (2, 30))
    with torch.no_grad():
        diff = (theirs(idx).logits.float() - ours.to(torch.bfloat16).eval()(idx).float()).abs().max().item()
    assert diff <= 2e-2


@pytest.mark.parametrize("onednn_products", [True, False])
@pytest.mark.parametrize("case", ["llama-gqa-tied", "llama-mha-untied", "qwen2-bias", "qwen3-wide-heads"])
def test_training_gradients_equal_transformers(case: str, onednn_products: bool, monkeypatch: Any) -> None:
    """The gradient of our training loss (fused vocabulary cross-entropy over the hidden
    states) equals that of transformers' `model(ids, labels=ids).loss`, parameter by parameter,
    with the fp32 products through oneDNN and through aten."""
    from models.layers import onednn
    from models.layers.linear_ce import linear_cross_entropy

    monkeypatch.setattr(onednn, "ENABLED", onednn_products)
    model_type, fields = CASES[case]
    ref = reference(model_type, fields, 300).train()
    ours, _ = from_hf_state(ref.config.to_dict(), ref.state_dict())
    ours.train()
    idx = torch.randint(0, 300, (2, 40))
    ref(input_ids=idx, labels=idx).loss.backward()
    h = ours.hidden(idx[:, :-1])
    loss = linear_cross_entropy(h.reshape(-1, h.size(-1)), ours.head_weight(), idx[:, 1:].reshape(-1))
    loss.backward()
    theirs = dict(ref.named_parameters())
    mine = dict(ours.named_parameters())
    assert set(mine) == set(theirs)
    for name, p in mine.items():
        want = theirs[name].grad
        assert p.grad is not None and want is not None, name
        assert p.grad.layout == torch.strided, name  # dense, as the optimizers take it
        assert (p.grad - want).abs().max().item() <= 1e-4 * want.abs().max().item() + 1e-7, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(3, 7, 48), (2, 5, 4, 16)], ids=["hidden", "per-head"])
def test_rms_norm_equals_transformers(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    """Our norm (a written-out backward in training) against transformers' LlamaRMSNorm:
    the same output, and the same gradients of the input and the weight, fp32 to rounding and
    bf16 to bf16 rounding (ours computes the backward in fp32)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = torch.Generator().manual_seed(0)
    weight = (torch.rand(shape[-1], generator=g) + 0.5).to(dtype)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    grad = torch.randn(shape, generator=g).to(dtype)
    ref, ours = LlamaRMSNorm(shape[-1], eps=1e-5).to(dtype), RMSNorm(shape[-1], 1e-5).to(dtype)
    results = []
    for module in (ref, ours):
        with torch.no_grad():
            module.weight.copy_(weight)
        xi = x.clone().requires_grad_()
        y = module(xi)
        y.backward(grad)
        assert module.weight.grad is not None and xi.grad is not None
        results.append((y.detach().float(), xi.grad.float(), module.weight.grad.float()))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for name, want, got in zip(("output", "input grad", "weight grad"), *results, strict=True):
        assert (got - want).abs().max().item() <= tol * want.abs().max().item(), name
    with torch.no_grad():  # serving's path, without autograd: the same output
        assert torch.equal(ours(x), results[1][0].to(dtype))
