"""Untrusted model content costs its own request a clear error and other tenants nothing (issue
20): a looping chat template and a GGUF with a 1,000,000-token vocabulary, sent by one tenant
while another generates; a template whose `range(10**8)` is refused on every route that renders
it (and ignored by those that do not); an import past its time limit (408) or memory limit
(422) in its sandbox process, leaving nothing behind and holding up no other tenant's import.

These run on SQLite only: the database is not what they exercise."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFWriter

from app.api.main import create_app
from app.config import Settings
from app.serving import sandbox
from tests.app.api.conftest import Client, archive, error, upload
from tests.chat_models import CHATML, save_chat_llama

pytest.importorskip("transformers")
pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)
Tenant = Callable[[], tuple[dict[str, str], str]]
LOOPING = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}" + CHATML
RANGE_1E8 = "{% for i in range(10**8) %}{% endfor %}" + CHATML
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def million_token_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A qwen2 GGUF as llama.cpp writes one, but with a 1,000,000-token vocabulary."""
    from tokenizers import Tokenizer, models

    from tests.models.formats.gguf_files import tiny_model, train_tokenizer, write_gguf

    base = train_tokenizer()
    vocab = dict(base.get_vocab())
    vocab.update({f"t{i}": i for i in range(len(vocab), 1_000_000)})
    path = tmp_path_factory.mktemp("gguf") / "million.gguf"
    write_gguf(path, tiny_model("qwen2", base.get_vocab_size(), tied=True), Tokenizer(models.BPE(vocab, [])))
    return path


@pytest.fixture(scope="module")
def slow_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Metadata at the limits (300,000 tokens, scores, types and merges): the `gguf` package's
    reader takes tens of seconds over it."""
    path = tmp_path_factory.mktemp("gguf") / "slow.gguf"
    n = 300_000
    w = GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i}" for i in range(n)])
    w.add_token_scores([0.0] * n)
    w.add_token_types([1] * n)
    w.add_token_merges([f"t o{i}" for i in range(n)])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def app_client(settings: Settings, new_tenant: Tenant) -> Iterator[Callable[..., Client]]:
    """`app_client(**settings)`: the app with those settings changed, and a tenant's key."""
    opened: list[Client] = []

    def make(**changes: Any) -> Client:
        headers, tenant_id = new_tenant()
        c = Client(create_app(settings.model_copy(update=changes)), headers=headers, raise_server_exceptions=False)
        c.__enter__()
        c.tenant_id = tenant_id
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


def chat_model(client: Client, tmp_path: Path, template: str) -> str:
    d = save_chat_llama(tmp_path / f"chat-{len(list(tmp_path.iterdir()))}", template=template)
    r = upload(client, archive(d, tmp_path))
    assert r.status_code == 201, r.text
    model_id: str = r.json()["id"]
    return model_id


def short_generation(client: Client, model_id: str, headers: dict[str, str]) -> float:
    start = time.monotonic()
    r = client.post(f"/v1/models/{model_id}/generate", json={"prompt": "At the", "max_new_tokens": 4}, headers=headers)
    assert r.status_code == 200, r.text
    return time.monotonic() - start


def test_a_looping_template_and_a_million_token_vocabulary_cost_another_tenant_nothing(
    client: Client, new_tenant: Tenant, model_dir: Path, tmp_path: Path, million_token_gguf: Path
) -> None:
    other, _ = new_tenant()
    other_model = upload(client, archive(model_dir, tmp_path), headers=other).json()["id"]
    baseline = statistics.median(short_generation(client, other_model, other) for _ in range(5))
    looping = chat_model(client, tmp_path, LOOPING)
    gguf = million_token_gguf.read_bytes()
    hostile: dict[str, Any] = {}

    def attack() -> None:
        body = {"model": looping, "messages": MESSAGES, "max_tokens": 4}
        start = time.monotonic()
        hostile["chats"] = [client.post("/v1/chat/completions", json=body) for _ in range(10)]
        hostile["chat_s"], start = round(time.monotonic() - start, 2), time.monotonic()
        hostile["gguf"] = upload(client, gguf, "million.gguf")
        hostile["gguf_s"] = round(time.monotonic() - start, 2)

    thread = threading.Thread(target=attack)
    thread.start()
    delays: list[float] = []
    try:
        deadline = time.monotonic() + 300
        while (thread.is_alive() or len(delays) < 3) and time.monotonic() < deadline:
            delays.append(short_generation(client, other_model, other) - baseline)
            time.sleep(0.05)  # within the key's rate limit
    finally:
        thread.join(300)
    spent = {"chat": hostile["chat_s"], "gguf": hostile["gguf_s"]}
    print(f"\nbaseline {baseline:.3f} s; {len(delays)} generations meanwhile, worst delay {max(delays):.3f} s; {spent}")
    for r in hostile["chats"]:
        assert "over the limit of" in error(r, 422, "invalid_request")["message"]
    assert "a vocabulary of 1,000,000 entries" in error(hostile["gguf"], 422, "unsupported_model")["message"]
    # A stall would hold the other tenant's requests for the hostile work's seconds, again and
    # again; a loaded 2-core machine delays a single one by a second or two (bounds, not timings).
    assert statistics.median(delays) < 0.5 and max(delays) < 3.0, f"another tenant's 4 tokens: delays {delays}"


def test_a_template_with_range_10_8_is_a_4xx_where_it_renders_and_ignored_where_not(
    client: Client, tmp_path: Path
) -> None:
    model_id = chat_model(client, tmp_path, RANGE_1E8)
    plain = client.post("/v1/completions", json={"model": model_id, "prompt": "At the", "max_tokens": 3})
    assert plain.status_code == 200, plain.text  # a plain prompt never meets the template
    task = client.post(f"/v1/models/{model_id}/translate", json={"text": "the cat", "max_new_tokens": 3})
    assert "Range too big" in error(task, 422, "invalid_request")["message"]
    chat = client.post("/v1/chat/completions", json={"model": model_id, "messages": MESSAGES, "max_tokens": 3})
    assert "Range too big" in error(chat, 422, "invalid_request")["message"]


def leftovers(settings: Settings, tenant_id: str) -> list[str]:
    incoming = settings.models_dir / ".incoming"
    tenant = settings.models_dir / tenant_id
    return [p.name for d in (incoming, tenant) if d.is_dir() for p in d.iterdir()]


def test_an_import_past_its_time_limit_is_408_and_another_tenant_s_import_does_not_wait(
    app_client: Callable[..., Client], new_tenant: Tenant, model_dir: Path, tmp_path: Path, slow_gguf: Path
) -> None:
    client = app_client(import_timeout_s=12.0)
    settings = client.app.state.settings  # type: ignore[attr-defined]
    other, _ = new_tenant()
    done: dict[str, Any] = {}

    def slow() -> None:
        start = time.monotonic()
        done["slow"] = upload(client, slow_gguf.read_bytes(), "slow.gguf")
        done["slow_s"], done["slow_at"] = time.monotonic() - start, time.monotonic()

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(1.0)  # its conversion has begun
    quick = upload(client, archive(model_dir, tmp_path), headers=other)
    quick_at = time.monotonic()
    thread.join(120)
    assert quick.status_code == 201, quick.text
    assert quick_at < done["slow_at"], "the other tenant's import waited for the slow one"
    assert "longer than its limit of 12 s" in error(done["slow"], 408, "time_limit_exceeded")["message"]
    assert 12.0 <= done["slow_s"] < 60.0
    assert leftovers(settings, client.tenant_id) == []


def sandbox_baseline_bytes() -> int:
    """The address space of an import child before it reads a file (modules and torch loaded)."""
    code = (
        "import app.serving.sandbox, app.services.archives, models.formats.load, models.formats.native, torch; "
        "torch.zeros(4) + 1; print(open('/proc/self/status').read().split('VmPeak:')[1].split()[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=sandbox._child_env(), capture_output=True, check=True)
    return int(out.stdout.split()[-1]) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_an_import_over_its_memory_limit_is_422_and_leaves_nothing(
    app_client: Callable[..., Client], model_dir: Path, tmp_path: Path
) -> None:
    from tests.models.formats.gguf_files import tiny_model, train_tokenizer, write_gguf

    tok = train_tokenizer()
    big = tmp_path / "wide.gguf"  # one 100 MB fp32 embedding: reading it needs twice that at least
    write_gguf(big, tiny_model("llama", 24_576, tied=True, width=1024, ffn=32, layers=1), tok)
    client = app_client(import_memory_bytes=sandbox_baseline_bytes() + (160 << 20))
    settings = client.app.state.settings  # type: ignore[attr-defined]
    small = upload(client, archive(model_dir, tmp_path))
    assert small.status_code == 201, small.text  # the limit leaves room for a small model
    r = upload(client, big.read_bytes(), "wide.gguf")
    assert "more memory than its limit" in error(r, 422, "resource_limit_exceeded")["message"]
    assert leftovers(settings, client.tenant_id) == [small.json()["id"]]
    assert json.loads(json.dumps(r.json()))["error"]["details"][0]["loc"] == "file"
