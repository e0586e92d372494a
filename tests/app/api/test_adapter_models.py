"""LoRA adapters as models over HTTP (the real app in process): a PEFT archive uploaded with
its `base` lists with that base, serves on it (generate, task and OpenAI routes) with the
merged model's greedy text, seeds init_from; bad archives are 422s naming the problem and
another tenant's base looks missing."""

from __future__ import annotations

import copy
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from models.data.tokenizer import Tokenizer
from models.families import family
from models.formats.native import save_model
from models.formats.peft import merge_adapter, save_adapter
from models.lora import layers as lora
from models.spec import AdapterSpec
from tests.app.api.conftest import Client, archive, error, upload
from tests.conftest import tiny_model
from tests.models.spec.test_preference_spec import DPO

GREEDY = {"max_new_tokens": 12, "temperature": 0}


def made_adapter(base: torch.nn.Module, seed: int, targets: list[str]) -> lora.Adapter:
    holder = copy.deepcopy(base)
    lora.add_adapter(
        holder,
        family(holder.config.arch).lora,
        "a",
        AdapterSpec(type="lora", rank=4, alpha=8, targets=targets),
        seed=seed,
    )
    with torch.no_grad():
        for p in lora.adapter_params(holder, "a"):
            p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed + p.numel()))
    return lora.extract(holder, "a")


def tar_of(directory: Path, edit: Callable[[Path], object] | None = None) -> bytes:
    if edit:
        edit(directory)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for p in sorted(directory.iterdir()):
            t.add(p, f"adapter/{p.name}")
    return buf.getvalue()


def send_adapter(client: Client, data: bytes, base: str | None, headers: dict[str, str] | None = None) -> Any:
    form = {} if base is None else {"base": base}
    return client.post("/v1/models", files={"file": ("a.tar.gz", data)}, data=form, headers=headers)


# serving, exports and validation are the same on both databases; deletion and tenancy run on both
SQLITE = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


@pytest.fixture
def setup(client: Client, model_dir: Path, tokenizer: Tokenizer, tmp_path: Path) -> dict[str, Any]:
    """The base uploaded, and two adapters of it (each upload is an import in a sandboxed child
    process, seconds each: what only one test needs is in `merged`)."""
    r = upload(client, archive(model_dir, tmp_path))
    assert r.status_code == 201, r.text
    base_id = r.json()["id"]
    base = tiny_model(tokenizer.vocab_size, block_size=1024)  # model_dir's weights
    out: dict[str, Any] = {"base": base_id, "base_model": base, "adapters": [], "local": {}}
    for k, targets in enumerate([["attention", "mlp"], ["qkv", "fc"]]):
        adapter = made_adapter(base, 10 + k, targets)
        save_adapter(tmp_path / f"a{k}", adapter, base="somewhere/else")
        r = send_adapter(client, tar_of(tmp_path / f"a{k}"), base_id)
        assert r.status_code == 201, r.text
        out["adapters"].append(r.json()["id"])
        out["local"][k] = adapter
    return out


@pytest.fixture
def merged(client: Client, setup: dict[str, Any], tokenizer: Tokenizer, tmp_path: Path) -> list[str]:
    """Each adapter merged into the base here, uploaded as a plain model."""
    ids = []
    for k, adapter in setup["local"].items():
        model = copy.deepcopy(setup["base_model"])
        merge_adapter(model, adapter)
        mdir = tmp_path / f"merged{k}"
        save_model(mdir, model.state_dict(), model.config, tokenizer, {"name": f"merged{k}"})
        r = upload(client, archive(mdir, tmp_path))
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def text(client: Client, model: str, prompt: str = "At the market, Nadia has") -> str:
    r = client.post(f"/v1/models/{model}/generate", json={"prompt": prompt, **GREEDY})
    assert r.status_code == 200, r.text
    value: str = r.json()["text"]
    return value


@SQLITE
def test_adapters_list_with_their_base_and_serve_the_merged_models_text(
    client: Client, setup: dict[str, Any], merged: list[str]
) -> None:
    listed = {m["id"]: m for m in client.get("/v1/models", params={"limit": 100}).json()["data"]}
    for a in setup["adapters"]:
        assert listed[a]["base"] == setup["base"]
        assert listed[a]["adapter"]["rank"] == 4 and listed[a]["config"] == listed[setup["base"]]["config"]
    assert listed[setup["base"]]["base"] is None
    assert client.get(f"/v1/models/{setup['adapters'][0]}").json()["adapter"]["modules"] == [
        "c_attn",
        "c_fc",
        "c_proj",
    ]
    plain = text(client, setup["base"])
    for a, m in zip(setup["adapters"], merged):
        got = text(client, a)
        assert got == text(client, m)
        assert got != plain
        r = client.post(f"/v1/models/{a}/answer", json={"question": "Who?", "context": "Nadia.", **GREEDY})
        want = client.post(f"/v1/models/{m}/answer", json={"question": "Who?", "context": "Nadia.", **GREEDY})
        assert r.status_code == 200 and r.json()["answer"] == want.json()["answer"]
        body = {"prompt": "So it goes.", "max_tokens": 10, "temperature": 0}
        r = client.post("/v1/completions", json={**body, "model": a})
        want = client.post("/v1/completions", json={**body, "model": m})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want.json()["choices"][0]["text"]


@SQLITE
def test_an_adapter_exports_in_the_peft_layout(client: Client, setup: dict[str, Any], tmp_path: Path) -> None:
    from models.formats.peft import load_adapter

    r = client.get(f"/v1/models/{setup['adapters'][0]}/export")
    assert r.status_code == 200, r.text
    with tarfile.open(fileobj=io.BytesIO(r.content)) as t:
        t.extractall(tmp_path / "out", filter="data")
    [folder] = list((tmp_path / "out").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == setup["base"]
    got, want = load_adapter(folder).adapter, setup["local"][0]
    assert got.layers.keys() == want.layers.keys() and got.scaling == want.scaling
    for path, (a, b) in want.layers.items():
        assert torch.equal(got.layers[path][0], a) and torch.equal(got.layers[path][1], b)


@SQLITE
def test_init_from_an_adapter_validates_as_its_merged_base(
    client: Client, setup: dict[str, Any], spec_dict: Callable[..., dict[str, Any]]
) -> None:
    """The adapter is a known init_from model (the datasets here are not uploaded: other errors)."""

    def locs(ref: str) -> set[str]:
        spec = spec_dict()
        spec["model"] = {"init_from": {"model": ref}}
        return {d["loc"] for d in error(client.post("/v1/jobs/validate", json=spec), 422, "invalid_spec")["details"]}

    assert "model.init_from.model" in locs("model_nope")
    assert "model.init_from.model" not in locs(setup["adapters"][0])


@SQLITE
def test_a_preference_reference_model_is_resolved_as_init_from(
    client: Client,
    model_dir: Path,
    tmp_path: Path,
    spec_dict: Callable[..., dict[str, Any]],
    new_tenant: Callable[[], tuple[dict[str, str], str]],
) -> None:
    """`reference: {model}` must be a model of the tenant's: unknown and another tenant's are
    the same error, naming the stage's field."""
    r = upload(client, archive(model_dir, tmp_path))
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    others, _ = new_tenant()

    def locs(ref: str, headers: dict[str, str] | None = None) -> dict[str, str]:
        spec = spec_dict()
        spec["stages"] = [{**DPO, "reference": {"model": ref}}]
        r = client.post("/v1/jobs/validate", json=spec, headers=headers)
        return {d["loc"]: d["message"] for d in error(r, 422, "invalid_spec")["details"]}

    field = "stages.0.reference.model"
    assert locs("model_nope")[field] == "unknown model or checkpoint 'model_nope'"
    assert field not in locs(model_id)
    assert locs(model_id, others)[field] == f"unknown model or checkpoint '{model_id}'"


def test_a_base_with_adapters_cannot_be_deleted_first(client: Client, setup: dict[str, Any]) -> None:
    error(client.delete(f"/v1/models/{setup['base']}"), 409, "in_use")
    for a in setup["adapters"]:
        assert client.delete(f"/v1/models/{a}").status_code == 200
    assert client.delete(f"/v1/models/{setup['base']}").status_code == 200


def test_bad_adapter_uploads_are_refused_naming_the_problem(
    client: Client,
    model_dir: Path,
    tokenizer: Tokenizer,
    tmp_path: Path,
    new_tenant: Callable[[], tuple[dict[str, str], str]],
) -> None:
    r = upload(client, archive(model_dir, tmp_path))
    base_id = r.json()["id"]
    adapter = made_adapter(tiny_model(tokenizer.vocab_size, n_embd=64), 1, ["mlp"])  # another shape
    save_adapter(tmp_path / "wide", adapter)
    err = error(send_adapter(client, tar_of(tmp_path / "wide"), base_id), 422, "unsupported_model")
    assert "transformer.h.0.mlp.c_fc: adapter is 256x64" in err["message"]
    good = made_adapter(tiny_model(tokenizer.vocab_size), 2, ["mlp"])
    save_adapter(tmp_path / "good", good, base="gpt2")
    err = error(send_adapter(client, tar_of(tmp_path / "good"), None), 422, "unsupported_model")
    assert err["details"][0]["loc"] == "base"

    def dora(d: Path) -> None:
        config = json.loads((d / "adapter_config.json").read_text())
        (d / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))

    err = error(send_adapter(client, tar_of(tmp_path / "good", dora), base_id), 422, "unsupported_model")
    assert "use_dora: DoRA" in err["message"] and str(tmp_path) not in err["message"]
    save_adapter(tmp_path / "fresh", good)
    other, _ = new_tenant()
    err = error(send_adapter(client, tar_of(tmp_path / "fresh"), base_id, headers=other), 404, "not_found")
    assert base_id in err["message"]
    assert not any(m.get("adapter") for m in client.get("/v1/models").json()["data"])
