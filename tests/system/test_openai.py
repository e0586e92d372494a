"""The official `openai` client against Stagecraft, only base_url changed: completions and
chat completions, streamed and not, n choices, models, and errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from models.data.records import messages_prompt
from models.data.tokenizer import Tokenizer
from models.families.gpt.model import GPT
from models.formats.load import load_model
from models.inference.generate import Sampling, complete
from tests.system.stack import Served

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[object]:
    c = openai.OpenAI(base_url=served.url + "/v1", api_key=served.key, max_retries=0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def local(served: Served) -> tuple[GPT, Tokenizer]:
    return load_model(served.model_dir)


def test_completions(client: object, served: Served, local: tuple[GPT, Tokenizer]) -> None:
    model, tok = local
    prompt = "At the market, Nadia has"
    [want] = complete(model, tok, [prompt], Sampling(20))
    r = client.completions.create(model=served.model_id, prompt=prompt, max_tokens=20, temperature=0)  # type: ignore[attr-defined]
    assert r.object == "text_completion" and r.model == served.model_id and r.id.startswith("cmpl-")
    assert r.choices[0].text == want and r.choices[0].finish_reason in ("stop", "length")
    assert (
        r.usage.prompt_tokens == len(tok.encode(prompt))
        and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    )
    chunks = list(client.completions.create(  # type: ignore[attr-defined]
        model=served.model_id, prompt=["Omar has", "So it"], max_tokens=12, temperature=1.0, seed=5, n=2, stream=True
    ))  # fmt: skip
    texts: dict[int, str] = {}
    finished = set()
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1, 2, 3}
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "text_completion"
    plain = client.completions.create(  # type: ignore[attr-defined]
        model=served.model_id, prompt=["Omar has", "So it"], max_tokens=12, temperature=1.0, seed=5, n=2
    )
    assert [c.text for c in plain.choices] == [texts[i] for i in range(4)]
    assert texts[0] != texts[1]  # n choices: seeds seed, seed + 1


def test_chat_completions(client: object, served: Served, local: tuple[GPT, Tokenizer]) -> None:
    model, tok = local
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Say 3 in French."}]
    [want] = complete(model, tok, [messages_prompt(messages)], Sampling(16), supervised=True)
    r = client.chat.completions.create(model=served.model_id, messages=messages, max_tokens=16, temperature=0)  # type: ignore[attr-defined]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want
    assert r.usage.prompt_tokens == len(tok.encode(messages_prompt(messages))) + 1
    stream = client.chat.completions.create(  # type: ignore[attr-defined]
        model=served.model_id, messages=messages, max_completion_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [r.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_models_and_errors(client: object, served: Served) -> None:
    ids = [m.id for m in client.models.list()]  # type: ignore[attr-defined]
    assert served.model_id in ids
    assert client.models.retrieve(served.model_id).owned_by == "stagecraft"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="model_nope", prompt="x")  # type: ignore[attr-defined]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.completions.create(model=served.model_id, prompt="x", temperature=-1)  # type: ignore[attr-defined]
    assert info.value.body["code"] == "invalid_request"
    with pytest.raises(openai.UnprocessableEntityError, match="context"):
        client.chat.completions.create(  # type: ignore[attr-defined]
            model=served.model_id, messages=[{"role": "user", "content": "word " * 200}]
        )
