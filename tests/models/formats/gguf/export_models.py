"""Test helpers for the GGUF export: our own model folders (a tiny GPT, a SmolLM2-shaped Llama
with a chat template, Qwen-style variants), random weights large enough that greedy choices
are confident, an adapter folder over a base, and llama_cpp where it loads."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from models.data.chat import ChatFormat
from models.data.chat_records import save_chat_format
from models.data.tokenizer import EOS, PAD, SEP, Tokenizer
from models.families import family
from models.families.build import Model, build_model
from models.families.gpt.config import GPTConfig
from models.families.llama.config import LlamaConfig
from models.formats.gguf import kquants
from models.formats.hf.files import service_tokenizer
from models.formats.native import save_model
from models.formats.peft import merge_adapter, save_adapter
from models.lora import layers as lora
from models.spec import AdapterSpec
from tests.conftest import corpus_texts

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT_SPECIALS = [EOS, "<|im_start|>", "<|im_end|>", SEP, PAD]
PROMPTS = [
    "The quick brown fox",
    "In 2024, 12345 people",
    "<|im_start|>user\nWhat is the capital?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time",
    "naïve café — 3.14",
]


def gpt_tokenizer() -> Tokenizer:
    return Tokenizer.train(corpus_texts(200), 320)


def smollm_tokenizer() -> Tokenizer:
    """Byte-level BPE with SmolLM2's pre-tokenizer (every digit apart), ChatML's special tokens."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=CHAT_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(corpus_texts(200), trainer=trainer)
    return service_tokenizer(hf, [hf.token_to_id("<|im_end|>")], CHATML)


def peak(model: Model, seed: int = 0) -> Model:
    """Weights large enough that the greedy choices are confident (no near-ties)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(seed + p.numel())
            if p.dim() >= 2:
                p.normal_(0.0, 0.3 if "embed" in name or "wte" in name else 0.08, generator=g)
            elif name.endswith("norm.weight") or ".ln_" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.normal_(0.0, 0.05, generator=g)
    return model.eval()


def smollm2_config(vocab: int, **changes: Any) -> LlamaConfig:
    """SmolLM2-135M's head layout (9 heads of 64, 3 KV heads, 576 wide, 1536 MLP, tied, theta
    1e5), two layers."""
    shape: dict[str, Any] = dict(
        vocab_size=vocab, block_size=256, n_layer=2, n_head=9, n_kv_head=3, n_embd=576, head_dim=64,
        intermediate_size=1536, rms_norm_eps=1e-5, rope_theta=100000.0, tie_embeddings=True,
    )  # fmt: skip
    return LlamaConfig(**{**shape, **changes})


def save(directory: Path, model: Model, tok: Tokenizer, chat: bool = False) -> Path:
    save_model(directory, model.state_dict(), model.config, tok, {"name": directory.name})
    if chat:
        im_end = tok.hf.token_to_id("<|im_end|>")
        specials = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
        save_chat_format(directory, ChatFormat(CHATML, specials, (im_end,)))
    return directory


def gpt_folder(directory: Path, tok: Tokenizer, seed: int = 0) -> tuple[Path, Model]:
    torch.manual_seed(seed)
    # a context of 1024: transformers' GGUF loader sizes GPT-2's positions by n_positions' default, 1024
    model = peak(build_model(GPTConfig(tok.vocab_size, block_size=1024, n_layer=2, n_head=4, n_embd=64)), seed)
    return save(directory, model, tok), model


def llama_folder(directory: Path, tok: Tokenizer, seed: int = 0, **changes: Any) -> tuple[Path, Model]:
    torch.manual_seed(seed)
    model = peak(build_model(smollm2_config(tok.vocab_size, **changes)), seed)
    return save(directory, model, tok, chat=True), model


def adapter_folder(directory: Path, base_dir: Path, base: Model, targets: list[str]) -> tuple[Path, Model]:
    """A PEFT adapter of `base` (random, non-zero B) whose stagecraft.json names `base_dir`, as
    the catalogue keeps one; and the merged model it stands for."""
    holder = copy.deepcopy(base)
    spec = AdapterSpec(type="lora", rank=4, alpha=8, targets=targets)
    lora.add_adapter(holder, family(holder.config.arch).lora, "a", spec, seed=3)
    with torch.no_grad():
        for p in lora.adapter_params(holder, "a"):
            p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    adapter = lora.extract(holder, "a")
    save_adapter(directory, adapter, base="base")
    (directory / "stagecraft.json").write_text(json.dumps({"base_path": str(base_dir), "name": "adapted"}))
    merged = copy.deepcopy(base)
    merge_adapter(merged, adapter)
    return directory, merged.eval()


def import_llama_cpp() -> ModuleType:
    """llama_cpp (llama-cpp-python, the optional `bench` extra), or the test skipped where it does
    not load. Not `pytest.importorskip`: with the package installed but llama.cpp's library not
    found, the import raises FileNotFoundError, which importorskip lets through."""
    why = kquants.unavailable()
    if why is not None:
        pytest.skip(why, allow_module_level=True)
    import llama_cpp

    return llama_cpp
