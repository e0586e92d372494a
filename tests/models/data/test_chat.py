"""Chat templates rendered as transformers renders them; the assistant-only loss mask; task and
messages records on a chat model, through the data path and a short training run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from models.data import records
from models.data.chat import ChatFormat, encode_chat, encode_prompt, render, render_prompt, stop_token_ids
from models.data.chat_records import example_messages, load_chat_format, save_chat_format, task_prompt
from models.data.streams import IGNORE, RecordStream
from models.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from models.errors import ChatTemplateError
from models.formats.native import save_model
from models.spec import parse_spec
from models.training.checkpoint import list_checkpoints
from models.training.export import save_checkpoint_model
from models.training.run import run
from tests.conftest import corpus_texts, record_objects, tiny_model, write_jsonl

transformers = pytest.importorskip("transformers")

# The templates as these models ship them (facts about the models, written out here).
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN25 = (Path(__file__).parent / "qwen25_chat_template.jinja").read_text(encoding="utf-8")
TEMPLATES = {"smollm2": (SMOLLM2, "<|im_end|>"), "llama3": (LLAMA3, "<|eot_id|>"), "qwen25": (QWEN25, "<|im_end|>")}
CHAT_SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
BOS, EOS = "<|begin_of_text|>", "<|im_end|>"

CHATS = {
    "plain": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ],
    "system": [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of Italy?"},
        {"role": "assistant", "content": "Rome"},
        {"role": "user", "content": "And of Spain? "},
        {"role": "assistant", "content": "Madrid, of course.\nIt has been since 1561."},
    ],
    "open": [{"role": "user", "content": "Say 7 in French."}],
}


@pytest.fixture(scope="module")
def chat_tok() -> Tokenizer:
    """Our tokenizer (its three special tokens) plus the chat templates' special tokens."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS + CHAT_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = corpus_texts(100) + [json.dumps(r) for r in record_objects(60)] + [json.dumps(CHATS)]
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)


def hf_tokenizer(tok: Tokenizer, template: str) -> Any:
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, bos_token=BOS, eos_token=EOS)
    fast.chat_template = template
    return fast


def fmt(template: str) -> ChatFormat:
    return ChatFormat(template, {"bos_token": BOS, "eos_token": EOS})


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("chat", list(CHATS))
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_rendering_equals_transformers(chat_tok, name, chat, generation_prompt):
    template = TEMPLATES[name][0]
    theirs = hf_tokenizer(chat_tok, template)
    want = theirs.apply_chat_template(CHATS[chat], tokenize=False, add_generation_prompt=generation_prompt)
    got = render(CHATS[chat], fmt(template), add_generation_prompt=generation_prompt)
    assert got == want
    if generation_prompt:
        assert render_prompt(CHATS[chat], fmt(template)) == want
        served = encode_prompt(CHATS[chat], fmt(template), chat_tok.hf)
        assert served == theirs.apply_chat_template(CHATS[chat], add_generation_prompt=True, return_dict=False)
    else:
        assert (
            encode_chat(CHATS[chat], fmt(template), chat_tok.hf)[0] == theirs(want, add_special_tokens=False).input_ids
        )


def test_qwen_tools_branch_uses_plain_json(chat_tok):
    tools = [{"type": "function", "function": {"name": "café", "parameters": {"a": "<b>"}}}]
    theirs = hf_tokenizer(chat_tok, QWEN25)
    want = theirs.apply_chat_template(CHATS["plain"], tools=tools, tokenize=False)
    assert render(CHATS["plain"], fmt(QWEN25), tools=tools) == want
    assert '"name": "café"' in want and "<b>" in want


def masked_runs(ids: list[int], mask: list[int], tok: Tokenizer) -> list[str]:
    runs, cur = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.hf.decode(r, skip_special_tokens=False) for r in runs]


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("chat", ["plain", "system"])
def test_mask_is_exactly_assistant_content_and_end_of_turn(chat_tok, name, chat):
    template, eot = TEMPLATES[name]
    ids, mask = encode_chat(CHATS[chat], fmt(template), chat_tok.hf)
    want = [m["content"].strip() + eot for m in CHATS[chat] if m["role"] == "assistant"]
    assert masked_runs(ids, mask, chat_tok) == want
    assert stop_token_ids(fmt(template), chat_tok.hf) == {chat_tok.hf.token_to_id(eot), chat_tok.hf.token_to_id(EOS)}
    short_ids, short_mask = encode_chat(CHATS[chat], fmt(template), chat_tok.hf, max_len=10)
    assert short_ids == ids[-10:] and short_mask == mask[-10:]


def test_template_errors_are_clear(chat_tok):
    strict = (
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with the user') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="Conversations must start with the user"):
        render(CHATS["system"], fmt(strict))
    with pytest.raises(ChatTemplateError, match="syntax error on line 1"):
        render(CHATS["plain"], fmt("{% for m in messages %}"))
    with pytest.raises(ChatTemplateError, match="may not set '_x'"):
        render(CHATS["plain"], fmt("{% set ns = namespace(_x=1) %}"))
    with pytest.raises(ChatTemplateError, match=r"messages\.1: the template does not write the assistant's content"):
        encode_chat(CHATS["plain"], fmt("{% for m in messages %}{{ m.role }}{% endfor %}"), chat_tok.hf)


def test_task_records_on_a_chat_model_match_the_task_endpoint_prompt(chat_tok):
    chat = fmt(SMOLLM2)
    rec = {"task": "qa", "context": "Paris is in France.", "question": "Where is Paris?", "answer": "France"}
    ex = records.parse_record(rec, 1, [])
    assert isinstance(ex, records.Example)
    msgs = example_messages(ex)
    assert msgs == [
        {"role": "user", "content": records.qa_prompt("Where is Paris?", "Paris is in France.").strip()},
        {"role": "assistant", "content": "France"},
    ]
    served = task_prompt(records.qa_prompt("Where is Paris?", "Paris is in France."), chat)
    assert render(msgs, chat) == served + "France<|im_end|>\n"
    ids, mask = encode_chat(msgs, chat, chat_tok.hf)
    assert masked_runs(ids, mask, chat_tok) == ["France<|im_end|>"]


def test_record_stream_scores_assistant_tokens_only(chat_tok):
    exs = [e for o in record_objects(20) if isinstance(e := records.parse_record(o, 1, []), records.Example)]
    chat = fmt(LLAMA3)
    stream = RecordStream(exs, chat_tok, 256, seed=0, key="k", chat=chat)
    batch = stream.next_batch(len(exs))
    for row_targets, row_full in zip(batch.completion_targets, batch.targets, strict=True):
        scored = row_targets[row_targets != IGNORE].tolist()
        text = chat_tok.hf.decode(scored, skip_special_tokens=False)
        assert text.endswith("<|eot_id|>") and text.count("<|eot_id|>") == 1, text
        assert (row_full != IGNORE).sum() > len(scored)  # the causal targets still cover the whole row
    plain = RecordStream(exs, chat_tok, 256, seed=0, key="k")  # no chat format: today's layout
    for row_targets in plain.next_batch(len(exs)).completion_targets:
        text = chat_tok.hf.decode(row_targets[row_targets != IGNORE].tolist(), skip_special_tokens=False)
        assert text.endswith("<|endoftext|>") and "<|eot_id|>" not in text


def test_messages_records_train_on_a_chat_model(tmp_path, chat_tok):
    base = tmp_path / "base"
    model = tiny_model(chat_tok.vocab_size, block_size=128)
    save_model(base, model.state_dict(), model.config, chat_tok, {"name": "base"})
    save_chat_format(base, ChatFormat(SMOLLM2, {"bos_token": BOS, "eos_token": EOS}))
    msgs = [o for o in record_objects(40) if "messages" in o]
    data = write_jsonl(tmp_path / "chats.jsonl", [*msgs, *[{"messages": CHATS["system"]}] * 4])
    spec = parse_spec(
        {
            "name": "chat",
            "model": {"init_from": {"model": str(base)}},
            "data": {"chats": {"dataset": str(data), "validation_fraction": 0.2}},
            "stages": [
                {
                    "type": "finetune",
                    "name": "sft",
                    "data": "chats",
                    "steps": 6,
                    "batch_size": 4,
                    "loss": {"type": "cross_entropy"},
                    "optimizer": {"type": "adamw", "lr": 3e-3},
                }
            ],
            "evaluation": {"every_steps": 3, "metrics": ["loss"], "max_samples": 0},
            "checkpointing": {"every_steps": 3, "keep_last": 1},
            "precision": "fp32",
            "device": "cpu",
        }
    )
    events: list[dict[str, Any]] = []
    result = run(spec, tmp_path / "run", on_event=events.append)
    losses = [e["data"]["loss"] for e in events if e["type"] == "train.step"]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    evals = [e["data"]["loss"] for e in events if e["type"] == "eval" and "loss" in e["data"]]
    assert evals[-1] < evals[0]
    assert load_chat_format(result.model_dir) == load_chat_format(base)  # the template stays with the model
    # and with its checkpoints, as the service exports them to serve them
    [ckpt, *_] = list_checkpoints(tmp_path / "run" / "checkpoints")
    save_checkpoint_model(ckpt, tmp_path / "run" / "tokenizer", tmp_path / "ckpt", {"name": "ckpt"})
    assert load_chat_format(tmp_path / "ckpt") == load_chat_format(base)
