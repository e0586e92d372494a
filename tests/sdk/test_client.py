"""Every SDK call against a real `stagecraft up`, over HTTP: datasets, a job from creation to
its model, the model's serving, export and re-upload, and the errors."""

from __future__ import annotations

import copy
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import stagecraft
from stagecraft.types import Checkpoint, Dataset, Event, Job, Model
from tests.conftest import EVENT_TYPES, REPO_ROOT
from tests.sdk.conftest import Server, tiny_spec


@dataclass
class Trained:
    corpus: Dataset
    pairs: Dataset
    job: Job
    events: list[Event]
    key: str


@pytest.fixture(scope="module")
def client(up: Server) -> Iterator[stagecraft.Client]:
    with stagecraft.Client(up.url, up.api_key, max_retries=2, backoff_s=0.1) as c:
        yield c


@pytest.fixture(scope="module")
def trained(client: stagecraft.Client, example_data: Path) -> Trained:
    corpus = client.datasets.upload(example_data / "corpus.txt")
    pairs = client.datasets.upload(example_data / "pairs.jsonl", name="pairs")
    job = client.jobs.create(tiny_spec(example_data, corpus.id, pairs.id), idempotency_key="sdk-test-job")
    events: list[Event] = []
    finished = client.jobs.wait(job.id, on_event=events.append, timeout=300)
    return Trained(corpus, pairs, finished, events, "sdk-test-job")


def test_upload_list_get(client: stagecraft.Client, trained: Trained) -> None:
    assert (trained.corpus.kind, trained.corpus.num_records, trained.corpus.name) == ("text", 400, "corpus.txt")
    assert (trained.pairs.kind, trained.pairs.num_records, trained.pairs.name) == ("records", 90, "pairs")
    assert client.datasets.get(trained.pairs.id) == trained.pairs
    listing = client.datasets.list(limit=1)  # one per page: the iteration follows next_cursor
    assert [d.id for d in listing][-2:] == [trained.pairs.id, trained.corpus.id]
    assert len(listing.first_page()) == 1


def test_bad_dataset_lists_every_bad_line(client: stagecraft.Client, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": " b"}\nnot json\n{"task": "qa", "context": "c"}\n', encoding="utf-8")
    with pytest.raises(stagecraft.UnprocessableEntityError) as caught:
        client.datasets.upload(bad)
    err = caught.value
    assert (err.status_code, err.code) == (422, "invalid_dataset")
    assert [(d["line"], d["field"]) for d in err.details] == [(2, "(line)"), (3, "question"), (3, "answer")]


def test_validate(client: stagecraft.Client, trained: Trained, example_data: Path) -> None:
    spec = tiny_spec(example_data, trained.corpus.id, trained.pairs.id)
    assert client.jobs.validate(spec).estimates.total_steps == 16
    bad_field = copy.deepcopy(spec)
    bad_field["stages"][1]["optimizer"]["lr"] = -1
    with pytest.raises(stagecraft.UnprocessableEntityError) as caught:
        client.jobs.validate(bad_field)
    err = caught.value
    assert (err.status_code, err.code) == (422, "invalid_spec")
    assert [d["loc"] for d in err.details] == ["stages.1.optimizer.lr"], err.details
    unknown = copy.deepcopy(spec)
    unknown["data"]["pairs"]["dataset"] = "ds_missing"
    with pytest.raises(stagecraft.UnprocessableEntityError) as caught:
        client.jobs.validate(unknown)
    assert caught.value.details == [{"loc": "data.pairs.dataset", "message": "unknown dataset 'ds_missing'"}]


def test_wait_follows_the_job_to_its_model(trained: Trained) -> None:
    job, events = trained.job, trained.events
    assert job.status == "succeeded" and job.finished and job.model_id and job.error is None
    assert (job.step, job.total_steps, job.progress) == (16, 16, 1.0)
    assert {e.type for e in events} <= EVENT_TYPES
    assert events[-1].type == "job.succeeded" and events[-1].final
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.step for e in events if e.type == "train.step"] == list(range(1, 17))
    steps = [e for e in events if e.type == "train.step"]
    assert all({"loss", "lr", "grad_norm", "tokens_per_s"} <= set(e.data) for e in steps), steps[0].data


def test_events_pages_and_resume(client: stagecraft.Client, trained: Trained) -> None:
    stored = list(client.jobs.events(trained.job.id, follow=False, limit=5))  # pages of 5
    assert [e.seq for e in stored] == [e.seq for e in trained.events]
    resumed = list(client.jobs.events(trained.job.id, after=10))  # the SSE stream from seq 10
    assert [e.seq for e in resumed] == [e.seq for e in trained.events[10:]]


def test_idempotency_key_returns_the_first_job(client: stagecraft.Client, trained: Trained) -> None:
    again = client.jobs.create(trained.job.spec, idempotency_key=trained.key)
    assert again.id == trained.job.id
    assert trained.job.id in {j.id for j in client.jobs.list(status="succeeded", limit=1)}
    with pytest.raises(stagecraft.ConflictError) as caught:
        client.jobs.create({**trained.job.spec, "name": "another"}, idempotency_key=trained.key)
    assert caught.value.code == "idempotency_key_reused"


def test_metrics_checkpoints_evaluation(client: stagecraft.Client, trained: Trained) -> None:
    job_id = trained.job.id
    series = client.jobs.metrics(job_id).series
    assert [step for step, _ in series["train.loss"]] == list(range(1, 17))
    assert "eval.pairs.loss" in series
    checkpoints = client.jobs.checkpoints(job_id)
    assert checkpoints and all(isinstance(c, Checkpoint) and c.job_id == job_id for c in checkpoints)
    report = client.jobs.evaluation(job_id)
    assert report.model_id == trained.job.model_id and [s.name for s in report.stages] == [
        "pretrain",
        "finetune",
        "refine",
    ]
    assert report.final["pairs"]["loss"] > 0


def test_a_preference_stage_through_the_sdk_then_cancelled(
    client: stagecraft.Client, trained: Trained, tmp_path: Path
) -> None:
    """Preference records uploaded, a DPO stage from the trained model submitted, its steps
    streamed with TRL's reward metrics, then cancelled: it stops long before its 5,000 steps
    (how soon after a cancel a step ends is test_jobs_postgres' cancel test)."""
    make = [sys.executable, str(REPO_ROOT / "examples" / "make_data.py"), "--out", str(tmp_path)]
    done = subprocess.run([*make, "--pairs", "8", "--corpus-lines", "20", "--preference", "40"], capture_output=True)
    assert done.returncode == 0, done.stderr
    prefs = client.datasets.upload(tmp_path / "preference.jsonl", name="prefs")
    assert prefs.kind == "preference"
    stage = {"type": "preference", "name": "dpo", "data": "prefs", "steps": 5000, "batch_size": 4,
             "loss": {"type": "dpo", "beta": 0.1}, "optimizer": {"type": "adamw", "lr": 1e-5}}  # fmt: skip
    spec = {**copy.deepcopy(trained.job.spec), "name": "sdk-dpo", "stages": [stage]}
    spec["model"] = {"init_from": {"model": trained.job.model_id}}
    spec["data"] = {"prefs": {"dataset": prefs.id}}
    spec["evaluation"] = {"every_steps": 1000, "metrics": ["loss"], "max_samples": 0}
    spec.pop("tokenizer", None)
    job = client.jobs.create(spec)
    steps = []
    for e in client.jobs.events(job.id):
        if e.type == "train.step":
            steps.append(e)
            if len(steps) == 3:
                break
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"} <= set(steps[0].data)
    cancelled = client.jobs.cancel(job.id)
    assert cancelled.status in ("cancelling", "cancelled")
    finished = client.jobs.wait(job.id, timeout=120)
    assert finished.status == "cancelled" and finished.step < 5000, finished  # stopped, not run out
    assert finished.model_id is None


def test_cancel_a_finished_job_is_a_conflict(client: stagecraft.Client, trained: Trained) -> None:
    with pytest.raises(stagecraft.ConflictError) as caught:
        client.jobs.cancel(trained.job.id)
    assert caught.value.code == "job_finished" and caught.value.status_code == 409


def test_models_serve(client: stagecraft.Client, trained: Trained) -> None:
    model_id = str(trained.job.model_id)
    assert model_id in {m.id for m in client.models.list()}
    model = client.models.retrieve(model_id)
    assert isinstance(model, Model) and model.job_id == trained.job.id and model.config["n_layer"] == 2
    ckpt = client.models.retrieve(model.checkpoints[-1].id)
    assert isinstance(ckpt, Checkpoint)
    gen = client.models.generate(model_id, "The number", max_new_tokens=6)
    assert gen.usage.completion_tokens <= 6 and gen.finish_reason in ("stop", "length")
    assert "".join(client.models.stream(model_id, "The number", max_new_tokens=6)) == gen.text  # both greedy
    assert isinstance(client.models.translate(model_id, "forty-two", max_new_tokens=4).translation, str)
    assert client.models.answer(model_id, "How many maps?", "At the market, Ana has 3 maps.", max_new_tokens=3)
    assert client.models.summarize(model_id, "At the garden, Bo has 5 pens.", max_new_tokens=3).usage.total_tokens
    with pytest.raises(stagecraft.UnprocessableEntityError) as caught:
        client.models.generate(model_id, "x", stop=["a", "b", "c", "d", "e"])
    assert caught.value.details[0]["loc"] == "body.stop"


def test_export_and_upload_back(client: stagecraft.Client, trained: Trained, tmp_path: Path) -> None:
    model_id = str(trained.job.model_id)
    archive = client.models.export(model_id, tmp_path)
    with tarfile.open(archive) as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"config.json", "model.safetensors"} <= names
    uploaded = client.models.upload(archive, name="round-trip")
    assert uploaded.source == "upload" and uploaded.job_id is None and uploaded.name == "round-trip"
    before = client.models.generate(model_id, "The number", max_new_tokens=5).text
    assert client.models.generate(uploaded.id, "The number", max_new_tokens=5).text == before


def test_dataset_delete(client: stagecraft.Client, example_data: Path) -> None:
    extra = client.datasets.upload(example_data / "corpus.txt", name="to-delete")
    deleted = client.datasets.delete(extra.id)
    assert deleted.deleted and deleted.id == extra.id
    with pytest.raises(stagecraft.NotFoundError) as caught:
        client.datasets.get(extra.id)
    assert caught.value.code == "not_found" and extra.id in caught.value.message


def test_not_found_and_bad_key(client: stagecraft.Client, up: Server) -> None:
    with pytest.raises(stagecraft.NotFoundError) as caught:
        client.jobs.retrieve("job_missing")
    assert caught.value.status_code == 404
    with stagecraft.Client(up.url, "sk-sc-not-a-key") as bad, pytest.raises(stagecraft.AuthenticationError) as auth:
        bad.datasets.list().first_page()
    assert (auth.value.status_code, auth.value.code) == (401, "unauthorized")


def test_key_file_of_stagecraft_up(up: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STAGECRAFT_API_KEY", raising=False)
    monkeypatch.setenv("STAGECRAFT_URL", up.url)
    monkeypatch.setenv("STAGECRAFT_DATA_DIR", str(up.data_dir))
    with stagecraft.Client() as c:  # the key `up` wrote to DATA_DIR/api_key
        assert c.ready() == {"status": "ready"} and c.jobs.list().first_page()
    monkeypatch.setenv("STAGECRAFT_DATA_DIR", str(tmp_path))
    with pytest.raises(stagecraft.ConfigurationError, match="STAGECRAFT_API_KEY"):
        stagecraft.Client()


def test_a_caller_supplied_http_client(up: Server, trained: Trained) -> None:
    own = httpx.Client(timeout=30, headers={"X-Trace": "notebook"})
    with stagecraft.Client(up.url, up.api_key, http_client=own) as c:
        assert c.jobs.retrieve(trained.job.id).id == trained.job.id
    assert own.is_closed and own.headers["X-Trace"] == "notebook"
