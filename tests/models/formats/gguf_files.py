"""Test helpers: tiny random Hugging Face models written as GGUF files the way llama.cpp's
converter writes them (metadata keys, tensor names, the llama Q/K row permutation), with the
`gguf` package's writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024 and we'll see 12345 foxes!",
    "Translate English to French: the cat sleeps on the mat.\nLe chat dort sur le tapis.",
    "Context: Paris is the capital of France.\nQuestion: What is the capital?\nAnswer: Paris",
    "naïve café déjà vu — ünïcödé text, tabs\tand   spaces, numbers 3.14159 and 1,000,000.",
]
CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def train_tokenizer(vocab_size: int = 320) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tok


def sentencepiece_vocab(size: int = 300) -> tuple[list[str], list[float], list[int]]:
    """A Llama-2-style vocabulary as llama.cpp stores it: <unk>, <s>, </s>, the 256 byte tokens,
    then "▁"-spelled BPE pieces scored by rank (tokens, scores, token types)."""
    from tokenizers import SentencePieceBPETokenizer

    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(CORPUS * 4, vocab_size=size, show_progress=False)
    vocab = sp.get_vocab()
    pieces = sorted(vocab, key=vocab.__getitem__)
    tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *pieces]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces)]
    return tokens, scores, types


def tiny_model(
    arch: str, vocab_size: int, tied: bool, seed: int = 0, width: int = 64, ffn: int = 128, layers: int = 2
) -> Any:
    import transformers

    torch.manual_seed(seed)
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    with torch.no_grad():  # norms are ones at init: make them informative
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model.eval()


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter: within each head, interleave the two rotary halves of the rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def encode(arr: np.ndarray, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
    if arr.ndim == 1 or qtype == GGMLQuantizationType.F32:  # llama.cpp keeps vectors in F32
        return arr.astype(np.float32), GGMLQuantizationType.F32
    if qtype == GGMLQuantizationType.F16:
        return arr.astype(np.float16), qtype
    return quantize(arr.astype(np.float32), qtype), qtype


def write_gguf(
    path: Path,
    model: Any,
    tok: Tokenizer,
    qtype: GGMLQuantizationType = GGMLQuantizationType.F32,
    pre: str = "gpt2",
    arch: str | None = None,
    template: str | None = CHATML,
    replace: dict[str, tuple[np.ndarray, GGMLQuantizationType]] | None = None,
    sentencepiece: tuple[list[str], list[float], list[int]] | None = None,
) -> None:
    """`replace` writes the given (data, type) instead of a tensor, by GGUF name."""
    cfg = model.config
    arch = arch or cfg.model_type
    theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    w = GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.hidden_size // heads)
    if sentencepiece is not None:
        tokens, scores, types = sentencepiece
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        vocab = tok.get_vocab()
        tokens = sorted(vocab, key=vocab.__getitem__)
        merges = json.loads(tok.to_str())["model"]["merges"]
        w.add_token_list(tokens)
        w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_pad_token_id(0)
        w.add_add_bos_token(False)
    if template is not None:
        w.add_chat_template(template)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        arr = t.detach().float().numpy()
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            gguf_name = f"blk.{i}.{HF_TO_GGUF[rest]}"
        else:
            gguf_name = HF_TO_GGUF[name]
        if arch == "llama" and ".attn_q." in gguf_name:
            arr = permute(arr, heads)
        elif arch == "llama" and ".attn_k." in gguf_name:
            arr = permute(arr, kv_heads)
        data, dtype = (replace or {}).get(gguf_name) or encode(arr, qtype)
        w.add_tensor(gguf_name, data, raw_dtype=dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_blocks(rows: int, cols: int, qtype: GGMLQuantizationType, seed: int = 0) -> np.ndarray:
    """Random bytes in a K-quant layout (256 values a block), with sane fp16 scales: tensors the
    gguf package cannot quantize to, to check dequantization against another reader."""
    size = {GGMLQuantizationType.Q4_K: 144, GGMLQuantizationType.Q6_K: 210}[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (rows, cols // 256, size), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.02, (rows, cols // 256, 2)).astype(np.float16).view(np.uint8)
    if qtype == GGMLQuantizationType.Q4_K:  # d, dmin lead the block
        blocks[..., 0:4] = scales.reshape(rows, cols // 256, 4)
    else:  # d ends the block
        blocks[..., 208:210] = scales[..., 0:2]
    return blocks.reshape(rows, -1)
