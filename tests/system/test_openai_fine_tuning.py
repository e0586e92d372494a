"""The official `openai` client's fine-tuning flow against `stagecraft up` (a real subprocess),
only base_url changed: upload chat records as files, fine-tune the tiny model trained there,
follow the events to success, list checkpoints, chat with the fine-tuned model; the same with
method dpo on preference records; cancel, pagination, unsupported parameters, and another
tenant's job."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.services.openai_ft import BASE_LR
from tests.system.processes import run_cli
from tests.system.stack import Api, Served

openai = pytest.importorskip("openai")
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[Any]:
    c = openai.OpenAI(base_url=served.url + "/v1", api_key=served.key, max_retries=0)
    yield c
    c.close()


FRENCH = ["zero", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"]


def preference_records(path: Path, n: int) -> Path:
    """OpenAI's preference format: the right French word preferred to the next number's."""
    lines = []
    for i in range(n):
        record = {
            "input": {"messages": [{"role": "system", "content": "Count in French."},
                                   {"role": "user", "content": f"Say {i % 10}."}]},
            "preferred_output": [{"role": "assistant", "content": FRENCH[i % 10]}],
            "non_preferred_output": [{"role": "assistant", "content": FRENCH[(i + 1) % 10]}],
        }  # fmt: skip
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def chat_records(path: Path, n: int) -> Path:
    lines = []
    for i in range(n):
        messages = [
            {"role": "system", "content": "Count in French."},
            {"role": "user", "content": f"Say {i % 10}."},
            {"role": "assistant", "content": ["zero", "un", "deux", "trois", "quatre", "cinq", "six", "sept",
                                              "huit", "neuf"][i % 10]},
        ]  # fmt: skip
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def native(served: Served) -> Iterator[Api]:
    with served.api() as api:
        yield api


@pytest.fixture(scope="module")
def files(client: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("ft-files")
    with chat_records(d / "train.jsonl", 24).open("rb") as f:
        train = client.files.create(file=f, purpose="fine-tune")
    with chat_records(d / "valid.jsonl", 8).open("rb") as f:
        valid = client.files.create(file=("valid.jsonl", f.read()), purpose="fine-tune")
    content = (d / "train.jsonl").read_bytes()
    return {"train": train, "valid": valid, "train_bytes": len(content), "train_content": content}


def wait_until_finished(client: Any, job_id: str) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled") and job.finished_at is not None:
            return job
        assert time.monotonic() < deadline, f"job still {job.status} after {TIMEOUT_S} s"
        time.sleep(1)


def test_files_are_datasets(client: Any, served: Served, native: Api, files: dict[str, Any]) -> None:
    train = files["train"]
    assert train.object == "file" and train.purpose == "fine-tune" and train.status == "processed"
    assert train.filename == "train.jsonl" and train.bytes == files["train_bytes"] and train.created_at > 1.7e9
    assert client.files.retrieve(train.id).id == train.id
    assert {train.id, files["valid"].id} <= {f.id for f in client.files.list()}
    dataset = native.http.get(f"/v1/datasets/{train.id}").json()
    assert dataset["kind"] == "records" and dataset["num_records"] == 24
    assert client.files.content(train.id).read() == files["train_content"]


def test_a_whole_fine_tuning_flow(client: Any, served: Served, native: Api, files: dict[str, Any]) -> None:
    hyper = {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 2}
    job = client.fine_tuning.jobs.create(
        model=served.model_id, training_file=files["train"].id, validation_file=files["valid"].id,
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}}, suffix="french", seed=7,
        metadata={"team": "numbers"},
    )  # fmt: skip
    assert job.object == "fine_tuning.job" and job.status in ("queued", "running") and job.model == served.model_id
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 8
    assert job.seed == 7 and job.metadata == {"team": "numbers"} and job.fine_tuned_model is None
    # The same job in Stagecraft's own terms: steps = n_epochs x ceil(records / batch_size).
    row = native.job(job.id)
    stage = row["spec"]["stages"][0]
    assert stage["type"] == "finetune" and stage["steps"] == 2 * math.ceil(24 / 8) and stage["batch_size"] == 8
    assert stage["optimizer"]["lr"] == pytest.approx(2 * BASE_LR)
    assert row["spec"]["model"]["init_from"] == {"model": served.model_id} and row["name"] == "french"
    r = native.http.get(f"/v1/models/{job.id}")  # no model before the job has succeeded
    assert r.status_code in (200, 409) and (r.status_code == 200 or r.json()["error"]["code"] == "model_not_ready")

    # list_events until the job says it succeeded (newest first, as OpenAI lists them)
    deadline, messages = time.monotonic() + TIMEOUT_S, []
    while not any("successfully completed" in m for m in messages):
        assert time.monotonic() < deadline and not any(m.startswith("The job failed") for m in messages), messages
        time.sleep(1)
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=5).data]
    done = wait_until_finished(client, job.id)
    assert done.status == "succeeded" and done.fine_tuned_model.startswith("model_") and done.error is None
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert all(e.object == "fine_tuning.job.event" and e.level in ("info", "warn", "error") for e in events)
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    steps = [e for e in events if e.type == "metrics" and e.data.get("train_loss") is not None]
    assert len(steps) == 6 and steps[-1].message.startswith("Step 1/6: training loss=")
    assert any(e.data.get("valid_loss") is not None for e in events)  # the validation file, on the final model
    first = client.fine_tuning.jobs.list_events(job.id, limit=3)
    second = client.fine_tuning.jobs.list_events(job.id, limit=3, after=first.data[-1].id)
    assert first.has_more and [e.id for e in first.data + second.data] == [e.id for e in events[:6]]

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [6, 3]  # one per epoch, newest first
    assert all(c.object == "fine_tuning.job.checkpoint" and c.fine_tuning_job_id == job.id for c in checkpoints)
    assert checkpoints[0].metrics.train_loss is not None

    reply = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "Say 3."}], max_tokens=8, temperature=0
    )
    assert reply.model == done.fine_tuned_model and isinstance(reply.choices[0].message.content, str)
    from_checkpoint = client.chat.completions.create(
        model=checkpoints[-1].fine_tuned_model_checkpoint, messages=[{"role": "user", "content": "Say 3."}],
        max_tokens=4, temperature=0,
    )  # fmt: skip
    assert from_checkpoint.choices[0].finish_reason in ("stop", "length")
    # GET /v1/models/{job id} is the job's final model, as the serving routes take it
    model = native.http.get(f"/v1/models/{job.id}").json()
    assert model["id"] == done.fine_tuned_model and model["job_id"] == job.id and model["name"] == "french"


@pytest.mark.slow
def test_a_whole_dpo_flow(client: Any, served: Served, native: Api, tmp_path: Path) -> None:
    """method dpo end to end: a preference stage trains from the served model on OpenAI's
    preference format, reports TRL's rewards per step and the held-out preference accuracy of
    the validation file, and the model it makes serves chat."""
    with preference_records(tmp_path / "prefs.jsonl", 24).open("rb") as f:
        train = client.files.create(file=f, purpose="fine-tune")
    with preference_records(tmp_path / "prefs-valid.jsonl", 8).open("rb") as f:
        valid = client.files.create(file=f, purpose="fine-tune")
    assert native.http.get(f"/v1/datasets/{train.id}").json()["kind"] == "preference"
    method = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 8, "beta": 0.2}}}
    job = client.fine_tuning.jobs.create(
        model=served.model_id, training_file=train.id, validation_file=valid.id, method=method, suffix="prefer", seed=5
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    stage = native.job(job.id)["spec"]["stages"][0]
    assert stage["type"] == "preference" and stage["loss"]["type"] == "dpo" and stage["loss"]["beta"] == 0.2
    assert stage["steps"] == 2 * math.ceil(24 / 8) and stage.get("reference") is None

    deadline, messages = time.monotonic() + TIMEOUT_S, list[str]()
    while not any("successfully completed" in m for m in messages):
        assert time.monotonic() < deadline and not any(m.startswith("The job failed") for m in messages), messages
        time.sleep(1)
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=5).data]
    done = wait_until_finished(client, job.id)
    assert done.status == "succeeded" and done.fine_tuned_model.startswith("model_") and done.error is None
    assert done.method.type == "dpo" and done.method.dpo.hyperparameters.n_epochs == 2

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    steps = [e for e in events if e.type == "metrics" and e.data.get("train_loss") is not None]
    assert len(steps) == 6 and all(0.0 <= e.data["rewards/accuracies"] <= 1.0 for e in steps)
    assert all({"rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"}
               <= set(e.data) for e in steps)  # fmt: skip
    series = native.http.get(f"/v1/jobs/{job.id}/metrics").json()["series"]
    assert len(series["train.rewards/accuracies"]) == 6 and len(series["train.logps/chosen"]) == 6
    final = native.http.get(f"/v1/jobs/{job.id}/evaluation").json()["final"]
    assert 0.0 <= final["validation"]["preference_accuracy"] <= 1.0, final

    reply = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "Say 3."}], max_tokens=8, temperature=0
    )
    assert reply.model == done.fine_tuned_model and isinstance(reply.choices[0].message.content, str)


def test_cancel_list_pages_and_auto_hyperparameters(
    client: Any, served: Served, native: Api, files: dict[str, Any]
) -> None:
    long = client.fine_tuning.jobs.create(
        model=served.model_id, training_file=files["train"].id, hyperparameters={"n_epochs": 50}
    )
    assert long.hyperparameters.batch_size == 16 and long.hyperparameters.learning_rate_multiplier == 1.0
    assert native.job(long.id)["spec"]["stages"][0]["steps"] == 50 * math.ceil(24 / 16)
    cancelled = client.fine_tuning.jobs.cancel(long.id)
    assert cancelled.id == long.id and cancelled.status == "cancelled"
    assert wait_until_finished(client, long.id).status == "cancelled"
    assert native.job(long.id)["status"] == "cancelled"
    r = native.http.get(f"/v1/models/{long.id}")  # a job id is its model only once it has succeeded
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_not_ready" and long.id in r.text
    assert native.http.get("/v1/models/job_nope").status_code == 404
    auto = client.fine_tuning.jobs.create(model=served.model_id, training_file=files["train"].id)
    assert auto.hyperparameters.n_epochs == 3 and isinstance(auto.seed, int)
    client.fine_tuning.jobs.cancel(auto.id)
    page = client.fine_tuning.jobs.list(limit=1)
    assert page.has_more and [j.id for j in page.data] == [auto.id]
    following = client.fine_tuning.jobs.list(limit=1, after=auto.id)
    assert [j.id for j in following.data] == [long.id]
    every = [j.id for j in client.fine_tuning.jobs.list(limit=2)]
    assert every[:2] == [auto.id, long.id] and len(every) == len(set(every)) >= 3
    native = {j["id"] for j in native.http.get("/v1/jobs", params={"limit": 100}).json()["data"]}
    assert {auto.id, long.id} <= native  # ordinary Stagecraft jobs


def error_of(call: Any, cls: Any) -> Any:
    with pytest.raises(cls) as info:
        call()
    err = info.value
    assert set(err.body) >= {"message", "type", "param", "code", "details"}, err.body
    return err


def test_bad_and_unsupported_parameters_are_named(client: Any, served: Served, files: dict[str, Any]) -> None:
    jobs, train = client.fine_tuning.jobs, files["train"].id
    unprocessable = openai.UnprocessableEntityError
    err = error_of(lambda: jobs.create(model=served.model_id, training_file=train, method={"type": "reinforcement"}),
                   unprocessable)  # fmt: skip
    assert err.param == "method.type" and err.code == "unsupported_parameter" and "reinforcement" in err.message
    err = error_of(lambda: jobs.create(model=served.model_id, training_file=train, method={"type": "dpo"}),
                   unprocessable)  # fmt: skip
    assert err.param == "training_file" and err.code == "invalid_file" and "preference records" in err.message
    wandb = [{"type": "wandb", "wandb": {"project": "x"}}]
    err = error_of(lambda: jobs.create(model=served.model_id, training_file=train, integrations=wandb), unprocessable)
    assert err.param == "integrations" and err.type == "invalid_request_error"
    err = error_of(lambda: jobs.create(model=served.model_id, training_file=train, hyperparameters={"n_epochs": 0}),
                   unprocessable)  # fmt: skip
    assert err.param == "hyperparameters.n_epochs" and err.body["message"].startswith("hyperparameters.n_epochs: ")
    err = error_of(lambda: jobs.create(model="gpt-4o-mini", training_file=train), unprocessable)
    assert err.param == "model" and "gpt-4o-mini" in err.message
    err = error_of(lambda: jobs.create(model=served.model_id, training_file="ds_nope"), unprocessable)
    assert err.param == "training_file"
    err = error_of(lambda: jobs.create(model=served.model_id, training_file=train, extra_body={"colour": "blue"}),
                   unprocessable)  # fmt: skip
    assert err.param == "colour"
    err = error_of(lambda: client.files.create(file=("x.jsonl", b'{"text": "a"}\n'), purpose="assistants"),
                   unprocessable)  # fmt: skip
    assert err.param == "purpose"
    error_of(lambda: jobs.retrieve("job_nope"), openai.NotFoundError)


def test_another_tenants_job_is_missing(client: Any, served: Served, files: dict[str, Any]) -> None:
    job = client.fine_tuning.jobs.list(limit=1).data[0]
    made = run_cli(
        "keys", "create", "--tenant", "other-ft", env={**served.env, "STAGECRAFT_DATA_DIR": str(served.data)}
    )
    assert made.returncode == 0, made.stderr
    other = openai.OpenAI(base_url=served.url + "/v1", api_key=made.stdout.strip(), max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.list_events(job.id)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(files["train"].id)
    assert other.fine_tuning.jobs.list().data == [] and other.files.list().data == []
    other.close()


def test_landing_page_and_offline_docs_assets(served: Served) -> None:
    page = httpx.get(served.url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Stagecraft" in page.text and 'href="/docs"' in page.text and 'href="/redoc"' in page.text
    facts = httpx.get(served.url + "/", headers={"Accept": "application/json"}, timeout=30).json()
    assert facts["ready"] is True and facts["version"] and facts["docs"]["swagger"] == "/docs"
    docs = httpx.get(served.url + "/docs", timeout=30).text
    assert "cdn" not in docs.lower() and "/static-offline-docs/swagger-ui-bundle.js" in docs
    bundle = httpx.get(served.url + "/static-offline-docs/swagger-ui-bundle.js", timeout=30)
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert "cdn" not in httpx.get(served.url + "/redoc", timeout=30).text.lower()
    assert httpx.get(served.url + "/static-offline-docs/redoc.standalone.js", timeout=30).status_code == 200
