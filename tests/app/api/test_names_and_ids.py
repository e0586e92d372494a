"""The inputs that were 500s, each a 4xx naming its field (app.services.names): a NUL in a
list cursor or in `training_file`, file names of 256 characters and more, a model name of
101, control characters in a name, an adapter whose `base` is a checkpoint (a LoRA job's, its
tensors no model's) or another adapter; malformed ids in paths are missing objects. Nothing a
refused upload sent stays on disk."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.db import Database
from app.queue.wakeups import Publisher
from models.data.tokenizer import Tokenizer
from models.formats.peft import save_adapter
from tests.app.api.conftest import Client, archive, error, multipart
from tests.app.api.test_adapter_models import made_adapter, send_adapter, tar_of
from tests.conftest import BASE_SPEC, corpus_texts, record_objects, tiny_model
from workers.execute import execute


def files_left(settings: Settings) -> list[str]:
    """Uploads in flight left on disk (app.services.incoming's layout)."""
    found = list(settings.datasets_dir.glob("*/.incoming-*")) + list((settings.models_dir / ".incoming").glob("*"))
    return [p.name for p in found]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/datasets", "/v1/models", "/v1/files", "/v1/fine_tuning/jobs"])
@pytest.mark.parametrize("cursor", ["a\x00b", "x" * 300, "ds_\u00e9"])
def test_a_cursor_that_is_no_id_is_422_naming_after(client: Client, path: str, cursor: str) -> None:
    err = error(client.get(path, params={"after": cursor}), 422, "invalid_request")
    assert err["param"] == "after" and "is not an id" in err["message"]


@pytest.mark.parametrize(
    "path", ["/v1/jobs/a%00b", "/v1/jobs/a%00b/cancel", "/v1/datasets/a%00b", "/v1/fine_tuning/jobs/a%00b/cancel"]
)
def test_a_malformed_id_in_a_path_is_a_missing_object(client: Client, path: str) -> None:
    r = client.post(path) if path.endswith("cancel") else client.get(path)
    assert "a\x00b" in error(r, 404, "not_found")["message"]


FINE_TUNING_IDS = [("training_file", "a\x00b", "invalid_file"), ("validation_file", "ds_\x00", "invalid_file"),
                   ("model", "model_\x00", "model_not_found")]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "code"), FINE_TUNING_IDS)
def test_a_nul_in_a_fine_tuning_id_is_422_naming_it(client: Client, field: str, value: str, code: str) -> None:
    ds = client.post("/v1/files", files={"file": ("p.jsonl", jsonl(record_objects(8)))}, data={"purpose": "fine-tune"})
    body = {"model": "model_x", "training_file": ds.json()["id"], field: value}
    assert error(client.post("/v1/fine_tuning/jobs", json=body), 422, code)["param"] == field


def jsonl(objs: list[Any]) -> bytes:
    return "".join(json.dumps(o) + "\n" for o in objs).encode()


@pytest.mark.parametrize("length", [256, 1000])
@pytest.mark.parametrize("path", ["/v1/datasets", "/v1/files", "/v1/models"])
def test_a_file_name_over_255_characters_is_422_naming_file(
    client: Client, settings: Settings, path: str, length: int
) -> None:
    name = "n" * (length - 4) + ".txt"
    r = client.post(path, files={"file": (name, b"some text\n")}, data={"purpose": "fine-tune"})
    err = error(r, 422, "invalid_request")
    assert err["param"] == "file" and f"{length} characters" in err["message"], err
    assert not files_left(settings)


def test_names_at_their_bound_are_kept_past_it_422(
    client: Client, settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    name = "n" * 251 + ".txt"  # 255 characters: a dataset's name is its file name
    r = client.post("/v1/datasets", files={"file": (name, b"some text\n")})
    assert r.status_code == 201 and r.json()["name"] == name, r.text
    data = archive(model_dir, tmp_path)
    r = client.post("/v1/models", files={"file": ("m.tar.gz", data)}, data={"name": "m" * 100})
    assert r.status_code == 201 and r.json()["name"] == "m" * 100, r.text
    r = client.post("/v1/models", files={"file": ("m.tar.gz", data)}, data={"name": "m" * 101})
    err = error(r, 422, "invalid_request")
    assert err["param"] == "name" and "101 characters" in err["message"]
    r = client.post("/v1/models", files={"file": ("m" * 150 + ".tar.gz", data)})  # the default name: cut
    assert r.status_code == 201 and r.json()["name"] == "m" * 100, r.text
    assert not files_left(settings)


CONTROLS = [("a\x00b.txt", None, "file"), ("a.txt", "my\x00data", "name"), ("a.txt", "red\x1b[31m", "name"),
            ("a\x7f.txt", None, "file")]  # fmt: skip


@pytest.mark.parametrize(("file", "name", "param"), CONTROLS)
def test_control_characters_in_names_are_422_naming_the_field(
    client: Client, settings: Settings, file: str, name: str | None, param: str
) -> None:
    parts = [("file", file, b"some text\n")] + ([("name", None, name.encode())] if name is not None else [])
    assert error(client.post("/v1/datasets", **multipart(parts)), 422, "invalid_request")["param"] == param
    assert not files_left(settings)


def lora_job(client: Client, database: Database, settings: Settings) -> str:
    """A job that trained a LoRA adapter (checkpoints at each step: their tensors are a base and its adapter)."""
    ids = {}
    for name, data in (
        ("corpus.txt", "\n".join(corpus_texts(60)).encode()),
        ("pairs.jsonl", jsonl(record_objects(40))),
    ):
        ids[name.split(".")[0]] = client.post("/v1/datasets", files={"file": (name, data)}).json()["id"]
    spec = copy.deepcopy(BASE_SPEC)
    spec["checkpointing"] = {"every_steps": 1, "keep_last": 2}
    adapter = {"type": "lora", "rank": 4, "alpha": 8, "targets": ["attention"]}
    spec["stages"] = [dict(spec["stages"][0], steps=1), dict(spec["stages"][1], steps=1, adapter=adapter)]
    del spec["stages"][1]["trainable"]
    for name, ref in spec["data"].items():
        ref["dataset"] = ids[name]
    job_id: str = client.post("/v1/jobs", json=spec).json()["id"]
    execute(database, settings, Publisher(None), job_id, "worker")
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    return job_id


def test_an_adapter_s_base_is_a_model_not_a_checkpoint_nor_an_adapter(
    client: Client, database: Database, settings: Settings, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    job_id = lora_job(client, database, settings)
    ckpts = [c["id"] for c in client.get(f"/v1/jobs/{job_id}/checkpoints").json()]
    listed = client.get("/v1/models", params={"limit": 100}).json()["data"]
    job_adapter = next(m["id"] for m in listed if m["base"] is not None)
    save_adapter(tmp_path / "a", made_adapter(tiny_model(tokenizer.vocab_size), 1, ["attention"]), base="x")
    data = tar_of(tmp_path / "a")
    for base, says in [*((c, "is a checkpoint") for c in ckpts), (job_adapter, "is an adapter"),
                       ("ds_01", "not a model id"), ("a\x00b", "not a model id")]:  # fmt: skip
        err = error(send_adapter(client, data, base), 422, "unsupported_model")
        assert err["param"] == "base" and says in err["message"], (base, err)
    for base in (job_id, client.get(f"/v1/jobs/{job_id}").json()["model_id"]):  # a job's model: fine
        r = send_adapter(client, data, base)
        assert r.status_code == 201 and r.json()["base"] is not None, r.text
    assert not files_left(settings)


def test_a_lora_job_s_checkpoints_are_served_and_exported(
    client: Client, database: Database, settings: Settings
) -> None:
    """A checkpoint of an adapter job is its model at that step (the base with the adapter
    merged): the last one generates what the job's model does; none is a 500."""
    job_id = lora_job(client, database, settings)
    model_id = client.get(f"/v1/jobs/{job_id}").json()["model_id"]
    ckpts = {c["step"]: c["id"] for c in client.get(f"/v1/jobs/{job_id}/checkpoints").json()}
    body = {"prompt": "At the market", "max_new_tokens": 6, "temperature": 0}
    want = client.post(f"/v1/models/{model_id}/generate", json=body)
    assert want.status_code == 200, want.text
    for step, ckpt in ckpts.items():
        got = client.post(f"/v1/models/{ckpt}/generate", json=body)
        assert got.status_code == 200, got.text
        if step == max(ckpts):
            assert got.json()["text"] == want.json()["text"]
        assert client.get(f"/v1/models/{ckpt}/export").status_code == 200
