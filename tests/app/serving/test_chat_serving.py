"""Chat and task prompts on a model with a chat template (app.serving.requests, in process):
the token ids the decoder is fed are transformers' `apply_chat_template(...,
add_generation_prompt=True)` ids for the same tokenizer.json and template; a task prompt is the
user turn, as training renders task records; generation stops on the template's end-of-turn
token and on every generation_config end id; greedy text equals transformers' `generate`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from app.serving.engine import ModelCache, Served
from app.serving.requests import ChatPrompt, Prepared, TaskPrompt, encode
from models.data import records
from models.data.chat_records import encode_chat_example
from models.inference.generate import Sampling
from tests.chat_models import END_OF_TURN, save_chat_llama, template_ids, transformers_tokenizer

transformers = pytest.importorskip("transformers")

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of Italy?"},
        {"role": "assistant", "content": "Rome"},
        {"role": "user", "content": "And of Spain? "},
    ],
]
QA = records.qa_prompt("Where is Paris?", "Paris is in France.")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat")
    return {
        "random": save_chat_llama(root / "random"),
        "silent": save_chat_llama(root / "silent", silent=True),
        "plain": save_chat_llama(root / "plain", silent=True, template=None),
    }


def load(directory: Path) -> tuple[ModelCache, Served]:
    cache = ModelCache(1 << 30, 4, "cpu")
    return cache, asyncio.run(cache.get(directory.name, directory))


def generate(cache: ModelCache, served: Served, prompt: ChatPrompt | TaskPrompt, n: int) -> tuple[str, str, int]:
    ids, supervised = encode(served, prompt)
    return asyncio.run(Prepared(cache, served, ids, Sampling(max_new_tokens=n), [], supervised).text())


def test_chat_and_task_prompts_are_transformers_template_ids(dirs: dict[str, Path]) -> None:
    _, served = load(dirs["random"])
    assert served.chat is not None
    for messages in CHATS:
        ids, supervised = encode(served, ChatPrompt(messages))
        assert ids == template_ids(dirs["random"], messages) and not supervised
    # A task prompt: the user turn of a one-turn chat, the very tokens training puts before the answer.
    ids, supervised = encode(served, TaskPrompt(QA))
    assert ids == template_ids(dirs["random"], [{"role": "user", "content": QA.strip()}]) and not supervised
    ex = records.parse_record({"task": "qa", "context": "Paris is in France.", "question": "Where is Paris?",
                               "answer": "France"}, 1, [])  # fmt: skip
    assert isinstance(ex, records.Example)
    trained, mask = encode_chat_example(ex, served.chat, served.tok.hf, 256)
    assert trained[: len(ids)] == ids and not any(mask[: len(ids)])
    answer = [i for i, m in zip(trained, mask, strict=True) if m]
    assert served.tok.hf.decode(answer, skip_special_tokens=False) == "France" + END_OF_TURN


def test_generation_stops_on_end_of_turn_and_every_end_id(dirs: dict[str, Path]) -> None:
    cache, served = load(dirs["silent"])
    tok = served.tok.hf
    stops = {tok.token_to_id(t) for t in (END_OF_TURN, "<|endoftext|>", "<|extra_end|>")}
    assert stops <= served.batcher.decoder.end_ids
    # Every logit equal: greedy picks id 0, <|im_end|>, the end of the assistant's turn.
    assert tok.token_to_id(END_OF_TURN) == 0
    assert generate(cache, served, ChatPrompt(CHATS[0]), 8) == ("", "stop", 0)
    assert generate(cache, served, TaskPrompt(QA), 8) == ("", "stop", 0)
    # The same model without a template: <|im_end|> is no end token, and prompts are as before.
    cache, plain = load(dirs["plain"])
    assert plain.chat is None and tok.token_to_id(END_OF_TURN) not in plain.batcher.decoder.end_ids
    ids, supervised = encode(plain, TaskPrompt(QA))
    assert ids == [*plain.tok.encode(QA), plain.tok.sep_id] and supervised
    assert generate(cache, plain, TaskPrompt(QA), 8) == ("", "length", 8)


def test_greedy_chat_text_equals_transformers_generate(dirs: dict[str, Path]) -> None:
    cache, served = load(dirs["random"])
    theirs = transformers.AutoModelForCausalLM.from_pretrained(dirs["random"]).eval()
    hf_tok = transformers_tokenizer(dirs["random"])
    for messages in CHATS:
        ids = template_ids(dirs["random"], messages)
        with torch.no_grad():
            out = theirs.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False,
                                  eos_token_id=sorted(served.batcher.decoder.end_ids))  # fmt: skip
        want = hf_tok.decode(out[0, len(ids) :], skip_special_tokens=True)
        text, reason, n = generate(cache, served, ChatPrompt(messages), 10)
        assert text == want
        assert reason == ("stop" if n < 10 else "length")
