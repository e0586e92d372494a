"""OpenAI's fine-tuning API with `method` (app/services/openai_ft.py, app/api/routes/fine_tuning.py):
the official `openai` client against the app under uvicorn (in this process, over the
`database` fixture: SQLite, then PostgreSQL), sending what `client.fine_tuning.jobs.create`
sends. `method.type: "dpo"` on a file of OpenAI's preference format makes a job whose one
stage is `type: preference` with `loss: {type: dpo, beta}`; `supervised` (and the top-level
`hyperparameters`) keep making a finetune job; unknown methods, values and files of the other
kind are 422s naming the parameter. No job runs here: the whole flow (trained, followed to
success, chatted with) is tests/system/test_openai_fine_tuning.py's."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.main import create_app
from app.config import Settings
from app.services.openai_ft import AUTO_BETA, BASE_LR, Request, build_spec, resolve
from tests.app.api.conftest import archive

openai = pytest.importorskip("openai")
WORDS = ["zero", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"]


def preference_lines(n: int) -> bytes:
    """OpenAI's preference format: the right French number word preferred to its neighbour's."""
    lines = []
    for i in range(n):
        record = {
            "input": {"messages": [{"role": "user", "content": f"Say {i % 10} in French."}]},
            "preferred_output": [{"role": "assistant", "content": WORDS[i % 10]}],
            "non_preferred_output": [{"role": "assistant", "content": WORDS[(i + 1) % 10]}],
        }
        lines.append(json.dumps(record))
    return ("\n".join(lines) + "\n").encode()


def chat_lines(n: int) -> bytes:
    """OpenAI's supervised chat format."""
    lines = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Say {i % 10} in French."},
                    {"role": "assistant", "content": WORDS[i % 10]}]  # fmt: skip
        lines.append(json.dumps({"messages": messages}))
    return ("\n".join(lines) + "\n").encode()


@dataclass
class Service:
    client: Any  # openai.OpenAI
    native: httpx.Client  # the same tenant's key, for Stagecraft's own routes
    model_id: str

    def upload(self, name: str, data: bytes) -> str:
        return str(self.client.files.create(file=(name, data), purpose="fine-tune").id)

    def stage(self, job_id: str) -> dict[str, Any]:
        spec: dict[str, Any] = self.native.get(f"/v1/jobs/{job_id}").json()["spec"]
        assert len(spec["stages"]) == 1, spec["stages"]
        return dict(spec["stages"][0])


@pytest.fixture
def service(
    settings: Settings,
    new_tenant: Callable[[], tuple[dict[str, str], str]],
    serve: Callable[[Any], str],
    model_dir: Path,
    tmp_path: Path,
) -> Iterator[Service]:
    """The app under uvicorn, a tenant of its own, and a tiny model uploaded as the base."""
    headers, _ = new_tenant()
    url = serve(create_app(settings))
    native = httpx.Client(base_url=url, headers=headers, timeout=60)
    r = native.post("/v1/models", files={"file": ("m.tar.gz", archive(model_dir, tmp_path))})
    assert r.status_code == 201, r.text
    key = headers["Authorization"].removeprefix("Bearer ")
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    try:
        yield Service(client, native, r.json()["id"])
    finally:
        client.close()
        native.close()


def unprocessable(call: Callable[[], Any]) -> Any:
    """The UnprocessableEntityError of `call`, checked for OpenAI's error shape."""
    with pytest.raises(openai.UnprocessableEntityError) as info:
        call()
    err = info.value
    assert set(err.body) >= {"message", "type", "param", "code", "details"}, err.body
    assert err.type == "invalid_request_error"
    return err


# --- the request -> spec mapping, no service --------------------------------------------


def request(method: str, **hyper: Any) -> Request:
    return Request("model_base", "ds_train", None, hyper, None, 1, {}, method)


def test_dpo_maps_to_one_preference_stage_as_supervised_maps_to_finetune() -> None:
    hyper = resolve({"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5, "beta": 0.3}, 10, "dpo")
    assert hyper == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5, "beta": 0.3}
    spec = build_spec(request("dpo"), "model_base", 10, hyper, 1)
    (stage,) = spec["stages"]
    assert stage["type"] == "preference" and stage["loss"] == {"type": "dpo", "beta": 0.3}
    assert "reference" not in stage  # the default: a frozen copy of the policy (the base) as the stage starts
    assert stage["steps"] == 2 * math.ceil(10 / 4) and stage["batch_size"] == 4 and stage["data"] == "train"
    assert stage["optimizer"] == {"type": "adamw", "lr": 0.5 * BASE_LR}
    assert spec["model"] == {"init_from": {"model": "model_base"}}
    # the same resolution of "auto" as supervised, and beta's own
    auto = resolve({"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto", "beta": "auto"}, 40,
                   "dpo")  # fmt: skip
    assert auto == {**resolve({}, 40), "beta": AUTO_BETA} and AUTO_BETA == 0.1
    supervised = build_spec(request("supervised"), "model_base", 10, resolve({}, 10), 1)
    (stage,) = supervised["stages"]
    assert stage["type"] == "finetune" and stage["loss"] == {"type": "cross_entropy"}
    assert "beta" not in resolve({}, 10)


# --- through the official client ----------------------------------------------------------


def test_dpo_makes_a_preference_job_and_echoes_its_method(service: Service) -> None:
    """Needs the models/ side of preference optimization (the `preference` data kind and stage)."""
    train = service.upload("prefs.jsonl", preference_lines(20))
    valid = service.upload("prefs-valid.jsonl", preference_lines(6))
    dataset = service.native.get(f"/v1/datasets/{train}").json()
    assert dataset["kind"] == "preference" and dataset["num_records"] == 20, dataset
    hyper = {"beta": 0.25, "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    job = service.client.fine_tuning.jobs.create(
        model=service.model_id, training_file=train, validation_file=valid, seed=3, suffix="prefs",
        method={"type": "dpo", "dpo": {"hyperparameters": hyper}},
    )  # fmt: skip
    assert job.object == "fine_tuning.job" and job.status == "queued" and job.model == service.model_id
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.25
    assert job.method.dpo.hyperparameters.n_epochs == 2 and job.method.dpo.hyperparameters.batch_size == 4
    assert job.method.supervised is None
    assert job.hyperparameters.n_epochs == 2 and "beta" not in job.hyperparameters.to_dict()

    stage = service.stage(job.id)
    assert stage["type"] == "preference" and stage["name"] == "dpo" and stage["data"] == "train"
    assert stage["loss"]["type"] == "dpo" and stage["loss"]["beta"] == 0.25
    assert stage.get("reference") is None  # the default reference
    assert stage["steps"] == 2 * math.ceil(20 / 4) and stage["batch_size"] == 4
    assert stage["optimizer"]["lr"] == pytest.approx(0.5 * BASE_LR)
    row = service.native.get(f"/v1/jobs/{job.id}").json()
    assert row["spec"]["model"]["init_from"] == {"model": service.model_id} and row["name"] == "prefs"
    assert row["spec"]["data"]["train"] == {"dataset": train, "validation_fraction": 0.0}
    assert row["spec"]["data"]["validation"] == {"dataset": valid, "validation_fraction": 0.5}

    again = service.client.fine_tuning.jobs.retrieve(job.id)
    assert again.method.type == "dpo" and again.method.dpo.hyperparameters.beta == 0.25
    listed = {j.id: j for j in service.client.fine_tuning.jobs.list()}
    assert listed[job.id].method.type == "dpo"

    # "auto" everywhere: beta 0.1, and the batch, epochs and rate of a supervised job
    auto = service.client.fine_tuning.jobs.create(model=service.model_id, training_file=train, method={"type": "dpo"})
    assert auto.method.dpo.hyperparameters.beta == 0.1 and auto.method.dpo.hyperparameters.batch_size == 16
    assert service.stage(auto.id)["steps"] == 3 * math.ceil(20 / 16)
    assert service.stage(auto.id)["loss"]["beta"] == 0.1
    # OpenAI's older top-level hyperparameters go with dpo too
    old = service.client.fine_tuning.jobs.create(
        model=service.model_id, training_file=train, hyperparameters={"n_epochs": 1}, method={"type": "dpo"}
    )
    assert old.method.dpo.hyperparameters.n_epochs == 1 and service.stage(old.id)["steps"] == math.ceil(20 / 16)
    for j in (job, auto, old):
        assert service.client.fine_tuning.jobs.cancel(j.id).status == "cancelled"


def test_supervised_keeps_making_a_finetune_job(service: Service) -> None:
    train = service.upload("chat.jsonl", chat_lines(12))
    jobs = service.client.fine_tuning.jobs
    by_method = jobs.create(
        model=service.model_id, training_file=train,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    )  # fmt: skip
    assert by_method.method.type == "supervised" and by_method.method.dpo is None
    assert by_method.method.supervised.hyperparameters.n_epochs == 2 and by_method.hyperparameters.batch_size == 4
    stage = service.stage(by_method.id)
    assert stage["type"] == "finetune" and stage["loss"]["type"] == "cross_entropy"
    assert stage["steps"] == 2 * math.ceil(12 / 4)
    top_level = jobs.create(model=service.model_id, training_file=train, hyperparameters={"n_epochs": 1})
    assert top_level.method.type == "supervised" and top_level.method.supervised.hyperparameters.n_epochs == 1
    assert service.stage(top_level.id)["type"] == "finetune"
    plain = jobs.create(model=service.model_id, training_file=train)
    assert plain.method.type == "supervised" and service.stage(plain.id)["steps"] == 3 * math.ceil(12 / 12)
    assert jobs.retrieve(plain.id).method.supervised.hyperparameters.learning_rate_multiplier == 1.0
    for j in (by_method, top_level, plain):
        jobs.cancel(j.id)


def test_unknown_methods_and_bad_method_values_are_named(service: Service) -> None:
    train = service.upload("chat.jsonl", chat_lines(4))
    jobs, model = service.client.fine_tuning.jobs, service.model_id
    for kind in ("reinforcement", "ppo"):
        method = {"type": kind}
        err = unprocessable(lambda: jobs.create(model=model, training_file=train, method=method))  # noqa: B023
        assert err.param == "method.type" and err.code == "unsupported_parameter" and kind in err.message
        assert "'supervised' or 'dpo'" in err.message
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}
    err = unprocessable(lambda: jobs.create(model=model, training_file=train, method=dpo))
    assert err.param == "method.dpo.hyperparameters.beta" and "above 0" in err.message
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": "many"}}}
    err = unprocessable(lambda: jobs.create(model=model, training_file=train, method=dpo))
    assert err.param == "method.dpo.hyperparameters.n_epochs"
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"gamma": 0.5}}}  # simpo's, not OpenAI's dpo's
    err = unprocessable(lambda: jobs.create(model=model, training_file=train, method=dpo))
    assert err.param == "method.dpo.hyperparameters.gamma"
    mixed = {"type": "supervised", "dpo": {"hyperparameters": {"beta": 0.2}}}
    err = unprocessable(lambda: jobs.create(model=model, training_file=train, method=mixed))
    assert err.param == "method.dpo" and "'supervised'" in err.message
    two = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2}}}
    err = unprocessable(
        lambda: jobs.create(model=model, training_file=train, hyperparameters={"n_epochs": 3}, method=two)
    )
    assert err.param == "hyperparameters" and "method.dpo.hyperparameters" in err.message


def test_supervised_records_given_to_dpo_name_the_file(service: Service) -> None:
    chat = service.upload("chat.jsonl", chat_lines(4))
    corpus = service.upload("corpus.txt", b"Nadia has 3 maps.\nOmar has 4 pens.\n")
    jobs, model = service.client.fine_tuning.jobs, service.model_id
    err = unprocessable(lambda: jobs.create(model=model, training_file=chat, method={"type": "dpo"}))
    assert err.param == "training_file" and err.code == "invalid_file"
    assert chat in err.message and "supervised records" in err.message and "preference records" in err.message
    err = unprocessable(lambda: jobs.create(model=model, training_file=corpus, method={"type": "dpo"}))
    assert err.param == "training_file" and "text corpus" in err.message
    err = unprocessable(lambda: jobs.create(model=model, training_file=corpus))
    assert err.param == "training_file" and "text corpus" in err.message
    assert service.client.fine_tuning.jobs.list().data == []  # nothing was made


def test_preference_records_given_to_supervised_name_the_file(service: Service) -> None:
    """Needs the models/ side (the `preference` data kind)."""
    prefs = service.upload("prefs.jsonl", preference_lines(4))
    chat = service.upload("chat.jsonl", chat_lines(4))
    jobs, model = service.client.fine_tuning.jobs, service.model_id
    err = unprocessable(lambda: jobs.create(model=model, training_file=prefs))
    assert err.param == "training_file" and err.code == "invalid_file"
    assert "preference records" in err.message and "'dpo'" in err.message
    supervised = {"type": "supervised"}
    err = unprocessable(lambda: jobs.create(model=model, training_file=chat, validation_file=prefs, method=supervised))
    assert err.param == "validation_file"
    dpo = {"type": "dpo"}
    err = unprocessable(lambda: jobs.create(model=model, training_file=prefs, validation_file=chat, method=dpo))
    assert err.param == "validation_file" and "supervised records" in err.message
