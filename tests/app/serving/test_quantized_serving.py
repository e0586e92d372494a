"""Quantized serving over HTTP (the real app in process): with STAGECRAFT_INFERENCE_QUANTIZATION
=int8 and int4 allowed, every generation route serves a quantized model (native generate,
streamed or not; the task endpoints; OpenAI completions and chat, streamed or not; a LoRA
adapter on its base), `precision` picks int4, a precision the operator does not allow is a 422
naming the field, GET /v1/models/{id} shows what the model is servable and loaded in, and the
model cache keeps one entry per (model, precision) with its quantized bytes."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.db import Database
from app.serving.engine import ModelCache
from models.data.tokenizer import Tokenizer
from models.families import family
from models.formats.load import load_model
from models.formats.native import save_model
from models.formats.peft import save_adapter
from models.inference.decoder import Decoder, Row
from models.inference.generate import Sampling, finished_text
from models.layers import nf4
from models.lora import layers as lora
from models.spec import AdapterSpec
from tests.chat_models import save_chat_llama
from tests.conftest import tiny_model

SQLITE = pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # serving is the same on both
GREEDY = {"max_new_tokens": 8, "temperature": 0}


@pytest.fixture
def settings(request: pytest.FixtureRequest, database: Database, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database.engine.url.render_as_string(hide_password=False),
        **(
            {"inference_quantization": "int8", "inference_allowed_precisions": "int4"} | getattr(request, "param", {})
        ),  # a test's own settings over these
    )


def tar(directory: Path, top: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for p in sorted(directory.iterdir()):
            t.add(p, f"{top}/{p.name}")
    return buf.getvalue()


def upload(api: TestClient, data: bytes, base: str | None = None) -> str:
    form = {} if base is None else {"base": base}
    r = api.post("/v1/models", files={"file": ("m.tar.gz", data)}, data=form)
    assert r.status_code == 201, r.text
    model_id: str = r.json()["id"]
    return model_id


def events(r: Any) -> list[tuple[str, str]]:
    """(event, data) of a Server-Sent Events body (event "" for OpenAI's `data:` lines)."""
    out, event = [], ""
    for line in r.text.splitlines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            out.append((event, line[6:]))
            event = ""
    return out


def ok(r: Any) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture
def gpt_dir(tokenizer: Tokenizer, tmp_path: Path) -> Path:
    model = tiny_model(tokenizer.vocab_size, block_size=128)
    save_model(tmp_path / "gpt", model.state_dict(), model.config, tokenizer, {"name": "gpt"})
    return tmp_path / "gpt"


def adapter_dir(directory: Path, tmp_path: Path) -> Path:
    base, _ = load_model(directory)
    holder = copy.deepcopy(base)
    spec = AdapterSpec(type="lora", rank=4, alpha=8, targets=["attention", "mlp"])
    lora.add_adapter(holder, family(base.config.arch).lora, "a", spec, seed=1)
    with torch.no_grad():
        for p in lora.adapter_params(holder, "a"):
            p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    save_adapter(tmp_path / "adapter", lora.extract(holder, "a"), base="elsewhere")
    return tmp_path / "adapter"


@SQLITE
def test_every_route_serves_a_quantized_model(api: TestClient, gpt_dir: Path, tmp_path: Path) -> None:
    model_id = upload(api, tar(gpt_dir, "gpt"))
    adapter_id = upload(api, tar(adapter_dir(gpt_dir, tmp_path), "adapter"), base=model_id)
    shown = ok(api.get(f"/v1/models/{model_id}"))["serving"]
    kv = {"int8": "bf16", "int4": "bf16"}  # STAGECRAFT_INFERENCE_KV_CACHE=auto
    want = {
        "default_precision": "int8",
        "precisions": ["int8", "int4"],
        "loaded": [],
        "compiled": False,
        "kv_cache": kv,
        "decode_steps": {},  # none loaded
    }
    assert shown == want

    text = ok(api.post(f"/v1/models/{model_id}/generate", json={"prompt": "At the", **GREEDY}))["text"]
    assert text == eager_text(gpt_dir, "At the", "int8")  # what int8 decoding of the same weights gives

    streamed = events(api.post(f"/v1/models/{model_id}/generate", json={"prompt": "At the", "stream": True, **GREEDY}))
    assert streamed[-1][0] == "done" and json.loads(streamed[-1][1])["text"] == text
    assert "".join(json.loads(d)["text"] for e, d in streamed if e == "token") == text
    ok(api.post(f"/v1/models/{model_id}/translate", json={"text": "one apple", **GREEDY}))
    ok(api.post(f"/v1/models/{model_id}/answer", json={"question": "Who?", "context": "Nadia.", **GREEDY}))
    ok(api.post(f"/v1/models/{model_id}/summarize", json={"text": "So it goes.", **GREEDY}))
    completion = {"model": model_id, "prompt": "At the", "max_tokens": 8, "temperature": 0}
    assert ok(api.post("/v1/completions", json=completion))["choices"][0]["text"] == text
    chunks = events(api.post("/v1/completions", json={**completion, "stream": True}))
    assert chunks[-1][1] == "[DONE]"
    assert "".join(json.loads(d)["choices"][0]["text"] for _, d in chunks[:-1]) == text
    chat = {"model": model_id, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6}
    ok(api.post("/v1/chat/completions", json=chat))
    assert events(api.post("/v1/chat/completions", json={**chat, "stream": True}))[-1][1] == "[DONE]"
    adapted = ok(api.post(f"/v1/models/{adapter_id}/generate", json={"prompt": "At the", **GREEDY}))["text"]
    ok(api.post("/v1/completions", json={"model": adapter_id, "prompt": "At the", "max_tokens": 4}))
    assert adapted != text  # the adapter's rows apply it on the int8 base

    int4 = api.post(f"/v1/models/{model_id}/generate", json={"prompt": "At the", "precision": "int4", **GREEDY})
    assert ok(int4)["text"]
    shown = ok(api.get(f"/v1/models/{model_id}"))["serving"]
    assert shown["loaded"] == ["int8", "int4"]
    assert ok(api.get(f"/v1/models/{adapter_id}"))["serving"]["loaded"] == ["int8", "int4"]  # its base's


def eager_text(directory: Path, prompt: str, precision: str, kv_cache: str = "bf16") -> str:
    """What an eager decoder of `directory` at `precision` answers `prompt` greedily (GREEDY), its
    KV cache in `kv_cache` (the service's, STAGECRAFT_INFERENCE_KV_CACHE=auto, for a quantized model)."""
    model, tok = load_model(directory)
    row = Row(tok.encode(prompt), Sampling(max_new_tokens=GREEDY["max_new_tokens"]))
    dec = Decoder(model, tok, precision=precision, kv_cache=kv_cache)
    dec.add(row)
    while dec.busy:
        dec.step()
    return finished_text(tok.decode(row.tokens), [], False)


@SQLITE
@pytest.mark.parametrize("settings", [{"inference_compile": True, "inference_native": False}], indirect=True)
def test_compiled_serving_answers_as_eager_decoding(api: TestClient, gpt_dir: Path) -> None:
    """STAGECRAFT_INFERENCE_COMPILE=true: the model shows `compiled`, and its answers (int8 by
    default, int4 asked for; plain, streamed, OpenAI) are the eager decoder's."""
    model_id = upload(api, tar(gpt_dir, "gpt"))
    assert ok(api.get(f"/v1/models/{model_id}"))["serving"]["compiled"] is True
    for precision in ("int8", "int4"):
        body = {"prompt": "At the", "precision": precision, **GREEDY}
        text = ok(api.post(f"/v1/models/{model_id}/generate", json=body))["text"]
        assert text == eager_text(gpt_dir, "At the", precision)
        streamed = events(api.post(f"/v1/models/{model_id}/generate", json={**body, "stream": True}))
        assert "".join(json.loads(d)["text"] for e, d in streamed if e == "token") == text
    completion = ok(api.post("/v1/completions", json={"model": model_id, "prompt": "At the", "max_tokens": 8,
                                                      "temperature": 0}))  # fmt: skip
    assert completion["choices"][0]["text"] == eager_text(gpt_dir, "At the", "int8")
    assert ok(api.get(f"/v1/models/{model_id}"))["serving"]["loaded"] == ["int8", "int4"]
    assert ok(api.get(f"/v1/models/{model_id}"))["serving"]["decode_steps"] == {"int8": "compiled", "int4": "compiled"}


@SQLITE
@pytest.mark.parametrize("settings", [{"inference_allowed_precisions": "fp32,int4"}], indirect=True)
def test_a_llama_model_decodes_natively_as_eager_decoding(
    api: TestClient, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    """STAGECRAFT_INFERENCE_NATIVE (default on): a Llama model's decode steps run in C++
    (models/inference/native.py), shown per loaded precision in `serving.decode_steps`, with the
    eager decoder's answers in int8 (its default here), int4 and fp32, plain, streamed and OpenAI's."""
    from models.inference import native

    if not native.available():
        pytest.skip("no C++ compiler here: the native step is not built (its fallback: test_native_step.py)")
    from models.families.llama.config import LlamaConfig
    from models.families.llama.model import Llama

    torch.manual_seed(0)
    config = LlamaConfig(tokenizer.vocab_size, 128, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, intermediate_size=128)
    model = Llama(config)
    with torch.no_grad():  # weights that decide clearly: no near-tie for rounding to flip
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 0.2) + (1.0 if p.dim() == 1 else 0.0))
    llama_dir = tmp_path / "llama"
    save_model(llama_dir, model.state_dict(), config, tokenizer, {"name": "llama"})
    model_id = upload(api, tar(llama_dir, "llama"))
    for precision in ("int8", "int4", "fp32"):
        body = {"prompt": "At the", "precision": precision, **GREEDY}
        text = ok(api.post(f"/v1/models/{model_id}/generate", json=body))["text"]
        kv_cache = "fp32" if precision == "fp32" else "bf16"
        assert text == eager_text(llama_dir, "At the", precision, kv_cache)
        streamed = events(api.post(f"/v1/models/{model_id}/generate", json={**body, "stream": True}))
        assert "".join(json.loads(d)["text"] for e, d in streamed if e == "token") == text
    completion = ok(api.post("/v1/completions", json={"model": model_id, "prompt": "At the", "max_tokens": 8,
                                                      "temperature": 0, "precision": "int4"}))  # fmt: skip
    assert completion["choices"][0]["text"] == eager_text(llama_dir, "At the", "int4")
    steps = ok(api.get(f"/v1/models/{model_id}"))["serving"]["decode_steps"]
    assert steps == {"fp32": "native", "int8": "native", "int4": "native"}


@SQLITE
@pytest.mark.parametrize("settings", [{"inference_allowed_precisions": "int4,nf4"}], indirect=True)
def test_nf4_is_served_where_its_kernel_runs_and_refused_where_not(
    api: TestClient, gpt_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`precision: nf4` (STAGECRAFT_INFERENCE_ALLOWED_PRECISIONS): the eager nf4 decoder's answers,
    plain, streamed and OpenAI's; on a CPU without AVX512-BF16, a 422 naming body.precision."""
    model_id = upload(api, tar(gpt_dir, "gpt"))
    assert ok(api.get(f"/v1/models/{model_id}"))["serving"]["precisions"] == ["int8", "int4", "nf4"]
    body = {"prompt": "At the", "precision": "nf4", **GREEDY}
    if not nf4.available():
        r = api.post(f"/v1/models/{model_id}/generate", json=body)
        assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == "body.precision", r.text
        pytest.skip("this CPU has no AVX512-BF16: nf4 is refused (checked); served on one that has it")
    text = ok(api.post(f"/v1/models/{model_id}/generate", json=body))["text"]
    assert text == eager_text(gpt_dir, "At the", "nf4")
    streamed = events(api.post(f"/v1/models/{model_id}/generate", json={**body, "stream": True}))
    assert "".join(json.loads(d)["text"] for e, d in streamed if e == "token") == text
    completion = ok(api.post("/v1/completions", json={"model": model_id, "prompt": "At the", "max_tokens": 8,
                                                      "temperature": 0, "precision": "nf4"}))  # fmt: skip
    assert completion["choices"][0]["text"] == text
    assert ok(api.get(f"/v1/models/{model_id}"))["serving"]["loaded"] == ["nf4"]
    monkeypatch.setattr(nf4, "available", lambda: False)  # as on a CPU without the kernel: a fresh load fails
    other = upload(api, tar(gpt_dir, "gpt"))
    r = api.post(f"/v1/models/{other}/generate", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["loc"] == "body.precision" and "AVX512-BF16" in r.text


@SQLITE
def test_a_chat_model_serves_quantized_chats(api: TestClient, tmp_path: Path) -> None:
    model_id = upload(api, tar(save_chat_llama(tmp_path / "llama"), "llama"))
    chat = {"model": model_id, "messages": [{"role": "user", "content": "What is Paris?"}], "max_tokens": 6}
    for precision in ("int8", "int4"):
        body = ok(api.post("/v1/chat/completions", json={**chat, "precision": precision, "temperature": 0}))
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
    stream = events(api.post("/v1/chat/completions", json={**chat, "stream": True, "precision": "int4"}))
    assert stream[-1][1] == "[DONE]"
    ok(api.post(f"/v1/models/{model_id}/answer", json={"question": "Where?", "context": "Paris.", **GREEDY}))
    assert ok(api.get(f"/v1/models/{model_id}"))["serving"]["loaded"] == ["int8", "int4"]


@SQLITE
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/model_x/generate", {"prompt": "At"}),
        ("/v1/models/model_x/translate", {"text": "one"}),
        ("/v1/completions", {"model": "model_x", "prompt": "At"}),
        ("/v1/chat/completions", {"model": "model_x", "messages": [{"role": "user", "content": "Hi"}]}),
    ],
)
def test_a_precision_not_allowed_is_a_422_naming_the_field(api: TestClient, path: str, body: dict[str, Any]) -> None:
    r = api.post(path, json={**body, "precision": "fp32"})  # allowed here: int8 (the default) and int4
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["details"] == [{"loc": "body.precision", "message": error["details"][0]["message"]}]
    assert "int8, int4" in error["message"]
    r = api.post(path, json={**body, "precision": "int3"})
    assert r.status_code == 422 and "precision" in r.json()["error"]["details"][0]["loc"], r.text


def test_the_cache_keys_models_by_precision_and_counts_quantized_bytes(model_dirs: list[Path]) -> None:
    async def main() -> dict[str, int]:
        cache = ModelCache(1 << 30, 4, "cpu")
        entries = {p: await cache.get("a", model_dirs[0], p) for p in ("fp32", "int8", "int4")}
        for p, served in entries.items():  # weights and the KV cache, bf16 for int8 and int4 (kv_cache "auto")
            decoder = served.batcher.decoder
            assert decoder.kv_dtype == (torch.float32 if p == "fp32" else torch.bfloat16)
            assert served.nbytes == decoder.net.nbytes() + decoder.kv_bytes
        assert entries["int8"].batcher.decoder.kv_bytes * 2 == entries["fp32"].batcher.decoder.kv_bytes
        fp32_kv = await ModelCache(1 << 30, 4, "cpu", kv_cache="fp32").get("a", model_dirs[0], "int8")
        assert fp32_kv.batcher.decoder.kv_dtype == torch.float32  # STAGECRAFT_INFERENCE_KV_CACHE=fp32
        assert await cache.get("a", model_dirs[0], "int8") is entries["int8"]
        assert list(cache.entries) == [("a", "fp32"), ("a", "int4"), ("a", "int8")]  # least recently used first
        assert cache.loaded("a") == ["fp32", "int4", "int8"] and cache.loaded("b") == []
        assert cache.nbytes == sum(s.nbytes for s in entries.values())
        return {p: s.batcher.decoder.net.nbytes() for p, s in entries.items()}

    weights = asyncio.run(main())
    assert weights["int4"] < weights["int8"] < weights["fp32"]
