"""Generation: strict types, bounded seeds, stop strings and prompt lists (422s that name the
field); and no request of one tenant (long stop strings, a model archive declaring a huge
config, one of many entries) delays another tenant's short generation by more than a second."""

from __future__ import annotations

import io
import json
import statistics
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.app.api.conftest import Client, archive, error, upload

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # its subject is not the SQL dialect

Tenant = Callable[[], tuple[dict[str, str], str]]


@pytest.fixture
def model_id(client: Client, model_dir: Path, tmp_path: Path) -> str:
    r = upload(client, archive(model_dir, tmp_path))
    assert r.status_code == 201, r.text
    mid: str = r.json()["id"]
    return mid


def locs(r: Any) -> set[str]:
    return {d["loc"] for d in error(r, 422, "invalid_request")["details"]}


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"max_new_tokens": True}, "body.max_new_tokens"),
        ({"temperature": False}, "body.temperature"),
        ({"top_k": "3"}, "body.top_k"),
        ({"seed": 2**64}, "body.seed"),
        ({"seed": 2**63}, "body.seed"),
        ({"seed": True}, "body.seed"),
        ({"stream": 1}, "body.stream"),
        ({"stop": ["x"] * 5}, "body.stop"),
        ({"stop": ["x" * 1001]}, "body.stop"),
    ],
)
def test_generate_fields_are_strict_and_bounded(
    client: Client, model_id: str, fields: dict[str, Any], loc: str
) -> None:
    r = client.post(f"/v1/models/{model_id}/generate", json={"prompt": "At the", **fields})
    assert loc in locs(r), r.text


def test_openai_fields_are_strict_and_the_prompt_list_bounded(client: Client, model_id: str) -> None:
    base = {"model": model_id, "max_tokens": 2}
    assert "body.prompt" in str(locs(client.post("/v1/completions", json={**base, "prompt": ["a"] * 17})))
    assert "body.seed" in locs(client.post("/v1/completions", json={**base, "prompt": "a", "seed": 2**64}))
    assert "body.n" in locs(client.post("/v1/completions", json={**base, "prompt": "a", "n": True}))
    r = client.post("/v1/completions", json={**base, "prompt": ["a"] * 16, "seed": 2**63 - 1})
    assert r.status_code == 200 and len(r.json()["choices"]) == 16, r.text


def test_largest_seed_generates(client: Client, model_id: str) -> None:
    body = {"prompt": "At the", "max_new_tokens": 3, "temperature": 1.0, "seed": 2**63 - 1}
    r1, r2 = (client.post(f"/v1/models/{model_id}/generate", json=body) for _ in range(2))
    assert r1.status_code == 200 and r1.json()["text"] == r2.json()["text"], r1.text


def short_generation(client: Client, model_id: str, headers: dict[str, str]) -> float:
    start = time.monotonic()
    r = client.post(f"/v1/models/{model_id}/generate", json={"prompt": "At the", "max_new_tokens": 4}, headers=headers)
    assert r.status_code == 200, r.text
    return time.monotonic() - start


def many_entries(model_dir: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in model_dir.iterdir():
            z.writestr(f"tiny/{p.name}", p.read_bytes())
        for i in range(60_000):
            z.writestr(f"tiny/junk/{i}", b"")
    return buf.getvalue()


def huge_config(d: Path) -> None:
    config = json.loads((d / "config.json").read_text())
    config["gpt"].update(n_layer=96, n_embd=12288, n_head=96)
    (d / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("heavy", ["stop strings", "huge config", "many entries"])
def test_one_tenant_does_not_stall_another(
    client: Client, new_tenant: Tenant, model_id: str, model_dir: Path, tmp_path: Path, heavy: str
) -> None:
    """Tenant A's heavy request runs while tenant B asks for 4 tokens, three times; B's
    answers come before A's and each within a second of B's unloaded latency."""
    other, _ = new_tenant()
    other_model = upload(client, archive(model_dir, tmp_path), headers=other).json()["id"]
    baseline = statistics.median(short_generation(client, other_model, other) for _ in range(3))
    if heavy == "stop strings":
        body = {
            "prompt": "At the",
            "max_new_tokens": 1000,
            "ignore_eos": True,
            "stop": ["\x01" * 999 + s for s in "abcd"],
        }
        send: Callable[[], Any] = lambda: client.post(f"/v1/models/{model_id}/generate", json=body)  # noqa: E731
        expect = 200
    else:
        data = many_entries(model_dir) if heavy == "many entries" else archive(model_dir, tmp_path, huge_config)
        send = lambda: upload(client, data, "m.zip" if heavy == "many entries" else "m.tar.gz")  # noqa: E731
        expect = 422
    done: dict[str, Any] = {}

    def heavy_request() -> None:
        done["response"] = send()
        done["at"] = time.monotonic()

    thread = threading.Thread(target=heavy_request)
    thread.start()
    time.sleep(0.05)
    delays = [short_generation(client, other_model, other) - baseline for _ in range(3)]
    finished_b = time.monotonic()
    thread.join(120)
    assert done["response"].status_code == expect, done["response"].text
    print(f"\n{heavy}: baseline {baseline:.3f} s, delays {[round(d, 3) for d in delays]}")
    assert max(delays) < 1.0, f"{heavy}: another tenant's 4 tokens were delayed by {max(delays):.2f} s"
    if heavy == "stop strings":
        assert finished_b < done["at"], "the short requests waited for the long one"
