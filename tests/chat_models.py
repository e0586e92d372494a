"""Small random Llama checkpoints with a chat template, saved as Hugging Face directories
(transformers' `save_pretrained`, a `tokenizer.json`, the template in tokenizer_config.json),
for the tests of chat and task prompts on chat models (serving and evaluation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from models.data.tokenizer import EOS, PAD, SEP
from tests.conftest import corpus_texts, record_objects

# SmolLM2's template (ChatML with a default system turn), as the model ships it.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# <|im_end|> first: id 0, the token a model whose logits are all equal picks (argmax takes the first).
SPECIALS = ["<|im_end|>", "<|im_start|>", EOS, SEP, PAD, "<|extra_end|>"]
END_OF_TURN = "<|im_end|>"


def chat_tokenizer() -> HFTokenizer:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(corpus_texts(100) + [json.dumps(r) for r in record_objects(60)], trainer=trainer)
    return hf


def save_chat_llama(directory: Path, silent: bool = False, template: str | None = CHATML, seed: int = 0) -> Path:
    """A random LlamaForCausalLM (GQA, untied head) with the ChatML template. Its eos_token is
    <|endoftext|> and generation_config lists <|endoftext|> and <|extra_end|>: <|im_end|> ends a
    turn only through the template. `silent`: a zero output head, so every logit is equal and
    greedy decoding picks id 0, <|im_end|>, first."""
    import transformers

    hf = chat_tokenizer()
    eos = [hf.token_to_id(EOS), hf.token_to_id("<|extra_end|>")]
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=hf.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=eos[0],
        eos_token_id=eos,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
        if silent:
            model.lm_head.weight.zero_()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    hf.save(str(directory / "tokenizer.json"))
    cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "pad_token": PAD}
    if template is not None:
        cfg["chat_template"] = template
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return directory


def transformers_tokenizer(directory: Path) -> Any:
    """transformers' own tokenizer of the directory (the same tokenizer.json and template)."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(directory)


def template_ids(directory: Path, messages: list[dict[str, str]]) -> list[int]:
    """`apply_chat_template(messages, add_generation_prompt=True)`'s token ids."""
    out = transformers_tokenizer(directory).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(out)
