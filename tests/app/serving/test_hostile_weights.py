"""Hostile weights over HTTP (issue 20), the real app in process: a model or adapter holding a
NaN or an infinity, or an adapter whose lora_alpha is NaN, is refused at upload with a 422
naming the tensor (or the field); an adapter of finite weights that overflow (its logits are
not finite) fails its own requests with a clear 422 `model_error`, streamed or not, while the
base's requests beside it and after it get exactly the answers they got before."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from models.data.tokenizer import Tokenizer
from models.formats.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MODEL_FILE
from models.formats.native import save_model
from models.formats.peft import save_adapter
from tests.app.api.conftest import archive, error, upload
from tests.app.api.test_adapter_models import made_adapter, send_adapter, tar_of
from tests.conftest import tiny_model

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # its subject is not the SQL dialect

PROMPTS = ["At the market, Nadia has", "So it goes.", "Omar has 7 books", "J", "Hana has 3 maps, three"]
GREEDY = {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def base_dir(tokenizer: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile") / "tiny"
    model = tiny_model(tokenizer.vocab_size, block_size=64)
    save_model(d, model.state_dict(), model.config, tokenizer, {"name": "tiny"})
    return d


def adapter_tar(base_dir: Path, tmp_path: Path, edit: Callable[[Path], None]) -> bytes:
    model = tiny_model(load_file(base_dir / MODEL_FILE)["transformer.wte.weight"].size(0), block_size=64)
    out = tmp_path / f"adapter-{len(list(tmp_path.iterdir()))}"
    save_adapter(out, made_adapter(model, 3, ["attention", "mlp"]), base="elsewhere")
    return tar_of(out, edit)


def set_tensor(file: Path, key: str, value: float) -> None:
    tensors = load_file(file)
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = value
    save_file(tensors, file, metadata={"format": "pt"})


def generate(client: TestClient, model: str, prompt: str, **extra: Any) -> Any:
    return client.post(f"/v1/models/{model}/generate", json={"prompt": prompt, **GREEDY, **extra})


def text(client: TestClient, model: str, prompt: str) -> str:
    r = generate(client, model, prompt)
    assert r.status_code == 200, r.text
    value: str = r.json()["text"]
    return value


def test_non_finite_weights_are_refused_at_upload_naming_the_tensor(
    api: TestClient, base_dir: Path, tmp_path: Path
) -> None:
    r = upload(api, archive(base_dir, tmp_path))
    assert r.status_code == 201, r.text
    base = r.json()["id"]

    key = "base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight"
    data = adapter_tar(base_dir, tmp_path, lambda d: set_tensor(d / ADAPTER_WEIGHTS, key, math.nan))
    err = error(send_adapter(api, data, base), 422, "unsupported_model")
    assert key in err["message"] and "non-finite" in err["message"], err

    def nan_alpha(d: Path) -> None:
        config = json.loads((d / ADAPTER_CONFIG).read_text())
        (d / ADAPTER_CONFIG).write_text(
            json.dumps({**config, "lora_alpha": math.nan})
        )  # JSON's NaN, as Python writes it

    err = error(send_adapter(api, adapter_tar(base_dir, tmp_path, nan_alpha), base), 422, "unsupported_model")
    assert "lora_alpha" in err["message"] and "nan" in err["message"].lower(), err

    weight = "transformer.h.0.attn.c_proj.weight"
    data = archive(base_dir, tmp_path, lambda d: set_tensor(d / MODEL_FILE, weight, math.inf))
    err = error(upload(api, data), 422, "unsupported_model")
    assert weight in err["message"] and "non-finite" in err["message"], err

    listed = [m["id"] for m in api.get("/v1/models", params={"limit": 100}).json()["data"]]
    assert listed == [base]  # nothing of the refused uploads stays


def test_an_adapter_whose_logits_overflow_fails_alone_and_its_base_stays_exact(
    api: TestClient, base_dir: Path, tmp_path: Path
) -> None:
    r = upload(api, archive(base_dir, tmp_path))
    assert r.status_code == 201, r.text
    base = r.json()["id"]

    def huge(d: Path) -> None:  # finite, so the import check lets it in; x @ A already overflows to inf
        tensors = {k: torch.full_like(v, 1e38) for k, v in load_file(d / ADAPTER_WEIGHTS).items()}
        save_file(tensors, d / ADAPTER_WEIGHTS, metadata={"format": "pt"})

    r = send_adapter(api, adapter_tar(base_dir, tmp_path, huge), base)
    assert r.status_code == 201, r.text
    bad = r.json()["id"]

    alone = [text(api, base, p) for p in PROMPTS]  # before the adapter is ever served
    with ThreadPoolExecutor(2 * len(PROMPTS)) as pool:
        hostile = [pool.submit(generate, api, bad, p) for p in PROMPTS]
        clean = [pool.submit(text, api, base, p) for p in PROMPTS]
        for f in hostile:
            err = error(f.result(), 422, "model_error")
            assert "non-finite logits" in err["message"] and err["details"][0]["loc"] == "model", err
        assert [f.result() for f in clean] == alone

    streamed = generate(api, bad, PROMPTS[0], stream=True)
    assert streamed.status_code == 200 and "event: error" in streamed.text and "model_error" in streamed.text
    assert [text(api, base, p) for p in PROMPTS] == alone  # after it, one at a time
    with ThreadPoolExecutor(len(PROMPTS)) as pool:  # and together
        assert list(pool.map(lambda p: text(api, base, p), PROMPTS)) == alone
