"""Model uploads that lie: each is a 422 naming the file and field, nothing is allocated for a
declared model over the settings, no message carries a server path, nothing is left on disk."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from app.config import Settings
from models.data.tokenizer import Tokenizer
from models.families.llama.config import LlamaConfig
from models.families.llama.model import Llama
from models.formats.native import save_model
from tests.app.api.conftest import Client, Edit, archive, error, upload


def config_edit(change: Callable[[dict[str, object]], object]) -> Edit:
    def edit(d: Path) -> None:
        config = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(change(config)))

    return edit


def set_gpt(**fields: object) -> Edit:
    return config_edit(lambda c: {**c, "gpt": {**c["gpt"], **fields}})  # type: ignore[dict-item]


def truncate(d: Path) -> None:
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])


def lying_header(d: Path) -> None:
    """A first tensor whose shape claims more elements than its byte span holds."""
    w = d / "model.safetensors"
    raw = w.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    first = next(k for k in header if k != "__metadata__")
    header[first]["shape"] = [s * 1000 for s in header[first]["shape"]]
    new = json.dumps(header).encode()
    w.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


CASES: list[tuple[str, Edit, str, str]] = [
    ("config is a list", config_edit(lambda c: [c]), "unsupported_model", "config.json: must be a JSON object"),
    ("n_head 0", set_gpt(n_head=0), "unsupported_model", "gpt.n_head: must be a positive integer"),
    ("n_head a bool", set_gpt(n_head=True), "unsupported_model", "gpt.n_head"),
    (
        "n_head not dividing n_embd",
        set_gpt(n_head=5),
        "unsupported_model",
        "gpt: n_embd (32) must be a multiple of n_head (5)",
    ),
    ("unknown field", set_gpt(colour="blue"), "unsupported_model", "gpt.colour: unknown field"),
    ("huge config", set_gpt(n_layer=96, n_embd=12288, n_head=96), "resource_limit_exceeded", "MAX_MODEL_PARAMETERS"),
    ("config over its weights", set_gpt(n_layer=24, n_embd=1024, n_head=16), "unsupported_model", "declares"),
    (
        "nested config",
        config_edit(lambda c: {**c, "x": json.loads("[" * 200 + "]" * 200)}),
        "unsupported_model",
        "config.json: not valid JSON",
    ),
    ("truncated weights", truncate, "unsupported_model", "model.safetensors: "),
    ("lying header", lying_header, "unsupported_model", "do not match its shape"),
    (
        "tokenizer not JSON",
        lambda d: (d / "tokenizer.json").write_text("{nope"),
        "unsupported_model",
        "tokenizer.json: not valid JSON",
    ),
    ("tokenizer a list", lambda d: (d / "tokenizer.json").write_text("[]"), "unsupported_model", "tokenizer.json"),
    (
        "tokenizer garbage",
        lambda d: (d / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 3}}'),
        "unsupported_model",
        "not a model this service can import",
    ),
    ("no weights", lambda d: (d / "model.safetensors").unlink(), "unsupported_model", "model.safetensors"),
]


@pytest.mark.parametrize(("what", "edit", "code", "says"), CASES, ids=[c[0] for c in CASES])
def test_lying_archives_are_422_without_paths(
    client: Client, settings: Settings, model_dir: Path, tmp_path: Path, what: str, edit: Edit, code: str, says: str
) -> None:
    err = error(upload(client, archive(model_dir, tmp_path, edit)), 422, code)
    assert says in err["message"], err
    assert err["details"] and err["details"][0]["loc"] == "file"
    text = json.dumps(err)
    assert str(settings.data_dir) not in text and str(tmp_path) not in text and "/tmp" not in text, text
    assert client.get("/v1/models").json()["data"] == []
    leftovers = [p for p in settings.models_dir.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


def test_many_entries_are_refused_before_extracting(client: Client, settings: Settings, model_dir: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in model_dir.iterdir():
            z.writestr(f"tiny/{p.name}", p.read_bytes())
        for i in range(settings.max_archive_entries):
            z.writestr(f"tiny/junk/{i}", b"")
    err = error(upload(client, buf.getvalue(), "m.zip"), 422, "unsupported_model")
    assert "MAX_ARCHIVE_ENTRIES" in err["message"]
    assert not (settings.models_dir / ".incoming").exists() or not any((settings.models_dir / ".incoming").iterdir())


def test_a_good_archive_imports_and_generates(client: Client, model_dir: Path, tmp_path: Path) -> None:
    r = upload(client, archive(model_dir, tmp_path))
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    out = client.post(f"/v1/models/{model_id}/generate", json={"prompt": "At the", "max_new_tokens": 3})
    assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] <= 3, out.text


def test_a_llama_family_model_as_training_saves_it_imports_and_generates(
    client: Client, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    """A Stagecraft Llama directory (config.json `{"format": "stagecraft-llama", "llama": …}`,
    as a finished job writes it) is a model like a GPT one, not a GPT config missing `gpt`."""
    torch.manual_seed(0)
    config = LlamaConfig(tokenizer.vocab_size, 64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=48)
    d = tmp_path / "llama"
    model = Llama(config)
    save_model(d, model.state_dict(), config, tokenizer, {"name": "tiny-llama"})
    r = upload(client, archive(d, tmp_path))
    assert r.status_code == 201, r.text
    assert r.json()["parameters"] == model.num_parameters() and r.json()["config"]["n_layer"] == 2
    out = client.post(f"/v1/models/{r.json()['id']}/generate", json={"prompt": "At the", "max_new_tokens": 3})
    assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] <= 3, out.text


LLAMA_CASES: list[tuple[str, dict[str, object], str, str]] = [
    ("n_kv_head does not divide", {"n_kv_head": 3}, "unsupported_model", "llama.n_head: must be a multiple"),
    ("n_layer 0", {"n_layer": 0}, "unsupported_model", "llama.n_layer: must be a positive integer"),
    ("unknown field", {"colour": "blue"}, "unsupported_model", "llama.colour: unknown field"),
    ("huge", {"n_layer": 80, "n_embd": 8192, "intermediate_size": 28672}, "resource_limit_exceeded", "MAX_MODEL"),
    ("over its weights", {"n_layer": 40, "n_embd": 512}, "unsupported_model", "declares"),
]


@pytest.mark.parametrize(("what", "fields", "code", "says"), LLAMA_CASES, ids=[c[0] for c in LLAMA_CASES])
def test_lying_llama_configs_are_422(
    client: Client, tokenizer: Tokenizer, tmp_path: Path, what: str, fields: dict[str, object], code: str, says: str
) -> None:
    config = LlamaConfig(tokenizer.vocab_size, 64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=48)
    d = tmp_path / "llama"
    save_model(d, Llama(config).state_dict(), config, tokenizer, {"name": "tiny-llama"})
    edit = config_edit(lambda c: {**c, "llama": {**c["llama"], **fields}})  # type: ignore[dict-item]
    err = error(upload(client, archive(d, tmp_path, edit)), 422, code)
    assert says in err["message"], err


@pytest.mark.parametrize(
    "fields",
    [{}, {"attention_bias": True}, {"qk_norm": True, "head_dim": 24}, {"tie_embeddings": False, "n_kv_head": 2}],
)
def test_the_declared_llama_size_is_the_model_s(fields: dict[str, object]) -> None:
    """The torch-free count the upload checks use equals the built model's parameters."""
    from app.services.model_checks import _declared
    from models.families import FAMILIES

    config = LlamaConfig(100, 32, n_layer=2, n_head=4, n_embd=32, intermediate_size=48, **fields)  # type: ignore[arg-type]
    assert _declared({"llama": config.to_dict()}, FAMILIES["llama"]) == Llama(config).num_parameters()
