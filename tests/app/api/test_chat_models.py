"""A Hugging Face Llama directory with a chat template, uploaded: `/v1/chat/completions` and
the task endpoints render its template (prompt tokens as transformers' `apply_chat_template`),
stop at its end of turn with finish_reason "stop", and stream the same; a template that
refuses the messages is a 422 naming them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.data import records
from tests.app.api.conftest import Client, archive, error, upload
from tests.chat_models import save_chat_llama, template_ids

pytest.importorskip("transformers")
MESSAGES = [
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def silent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_chat_llama(tmp_path_factory.mktemp("chat") / "silent", silent=True)


def test_chat_and_task_endpoints_on_a_chat_model(client: Client, silent_dir: Path, tmp_path: Path) -> None:
    r = upload(client, archive(silent_dir, tmp_path))
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    as_system = [{"role": "system", "content": "Be brief."}, MESSAGES[1]]
    body = {"model": model_id, "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    out = client.post("/v1/chat/completions", json=body)
    assert out.status_code == 200, out.text
    choice = out.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == ""
    assert out.json()["usage"]["prompt_tokens"] == len(template_ids(silent_dir, as_system))
    assert out.json()["usage"]["completion_tokens"] == 0

    streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"

    question = {"question": "Where is Paris?", "context": "Paris is in France.", "max_new_tokens": 8}
    qa = client.post(f"/v1/models/{model_id}/answer", json=question)
    assert qa.status_code == 200, qa.text
    user = records.qa_prompt("Where is Paris?", "Paris is in France.").strip()
    assert qa.json()["finish_reason"] == "stop" and qa.json()["answer"] == ""
    assert qa.json()["usage"]["prompt_tokens"] == len(template_ids(silent_dir, [{"role": "user", "content": user}]))


def test_a_template_that_refuses_the_messages_is_a_422(client: Client, silent_dir: Path, tmp_path: Path) -> None:
    strict = (
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with the user') }}{% endif %}"
    )

    def edit(d: Path) -> None:
        cfg = json.loads((d / "tokenizer_config.json").read_text())
        (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": strict + cfg["chat_template"]}))

    r = upload(client, archive(silent_dir, tmp_path, edit))
    assert r.status_code == 201, r.text
    out = client.post("/v1/chat/completions", json={"model": r.json()["id"], "messages": MESSAGES})
    err = error(out, 422, "invalid_request")
    assert "must start with the user" in err["message"]
    assert err["param"] == "messages"
