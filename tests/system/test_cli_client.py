"""The `stagecraft datasets | jobs | models | status` client commands against a real
`stagecraft up` (the `served` fixture: a tiny model already trained through it), as a user
runs them: subprocesses, the key found in the data directory's key file, --json parsed."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.system.processes import base_env, run_cli, stagecraft
from tests.system.stack import PROCS, Served, tiny_spec


def client_env(served: Served) -> dict[str, str]:
    """No STAGECRAFT_API_KEY: the client reads DATA_DIR/api_key, as after `stagecraft up`."""
    return base_env(url=served.url, data_dir=str(served.data))


def cli_json(served: Served, *args: str) -> Any:
    proc = run_cli(*args, "--json", env=client_env(served))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def dataset_ids(served: Served) -> set[str]:
    return {d["id"] for d in cli_json(served, "datasets", "list", "--limit", "500")}


def write_spec(directory: Path, corpus: Path, pairs: Path, **changes: Any) -> Path:
    """The tiny spec with its datasets as paths relative to the spec file."""
    spec = tiny_spec({"corpus": str(corpus), "pairs": str(pairs)})
    spec["evaluation"] = {"every_steps": 100, "metrics": ["loss"], "max_samples": 0}
    spec.update(changes)
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_client_commands_print_objects_as_json_and_tables(served: Served) -> None:
    job_id, model_id = served.job["id"], served.model_id
    env = client_env(served)
    assert "STAGECRAFT_API_KEY" not in env
    assert job_id in [j["id"] for j in cli_json(served, "jobs", "list")]
    shown = cli_json(served, "jobs", "show", job_id)
    assert shown["status"] == "succeeded" and shown["model_id"] == model_id and "spec" in shown
    assert run_cli("jobs", "show", job_id, "-q", env=env).stdout.strip() == model_id
    series = cli_json(served, "jobs", "metrics", job_id)["series"]
    assert [s for s, _ in series["train.loss"]] == list(range(1, shown["total_steps"] + 1))
    report = cli_json(served, "jobs", "evaluation", job_id)
    assert report["model_id"] == model_id and "pairs" in report["final"]
    checkpoints = cli_json(served, "jobs", "checkpoints", job_id)
    assert checkpoints and all(c["id"].startswith("ckpt_") and c["job_id"] == job_id for c in checkpoints)
    assert model_id in [m["id"] for m in cli_json(served, "models", "list")]
    model = cli_json(served, "models", "show", model_id)
    assert model["job_id"] == job_id and model["config"]["n_layer"] == 2
    corpus = cli_json(served, "datasets", "show", served.datasets["corpus"])
    assert corpus["kind"] == "text" and len(corpus["sha256"]) == 64
    assert set(served.datasets.values()) <= dataset_ids(served)
    # tables show whole ids (COLUMNS=200 from base_env; ids are never shortened)
    for args, wanted in (
        (("jobs", "list"), job_id),
        (("models", "list"), model_id),
        (("datasets", "list"), served.datasets["pairs"]),
        (("jobs", "checkpoints", job_id), checkpoints[0]["id"]),
    ):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 0 and wanted in proc.stdout.split(), (args, proc.stdout, proc.stderr)
    events = [json.loads(x) for x in run_cli("jobs", "events", job_id, env=env).stdout.splitlines()]
    assert events[-1]["type"] == "job.succeeded" and [e["seq"] for e in events] == list(range(1, len(events) + 1))
    ready = cli_json(served, "status")
    assert ready["ready"] is True and ready["url"] == served.url
    missing = run_cli("jobs", "show", "job_doesnotexist", env=env)
    assert missing.returncode == 1 and "404" in missing.stderr and "Traceback" not in missing.stderr


def test_up_prints_an_export_line_that_works(served: Served) -> None:
    [up] = [p for p in PROCS if p.name == "up-serving"]
    [line] = [x for x in up.tail(100_000).splitlines() if x.startswith("export STAGECRAFT_URL=")]
    assert line == f"export STAGECRAFT_URL={served.url} STAGECRAFT_API_KEY={served.key}"
    env = base_env(data_dir="/nonexistent")  # only what the pasted line sets
    script = f"{line}\n{shlex.join(stagecraft())} jobs show {served.job['id']} -q"
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == served.model_id, proc.stderr


def test_datasets_upload_show_delete(served: Served, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("one line of text\nanother line\n", encoding="utf-8")
    env = client_env(served)
    up = run_cli("datasets", "upload", str(path), "--name", "notes", env=env)
    assert up.returncode == 0, up.stderr
    ds_id = up.stdout.strip()
    shown = cli_json(served, "datasets", "show", ds_id)
    assert shown["name"] == "notes" and shown["num_records"] == 2
    deleted = cli_json(served, "datasets", "delete", ds_id)
    assert deleted["id"] == ds_id and deleted["deleted"] is True
    gone = run_cli("datasets", "show", ds_id, env=env)
    assert gone.returncode == 1 and "not_found" in gone.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\nnot json\n', encoding="utf-8")
    refused = run_cli("datasets", "upload", str(bad), env=env)
    assert refused.returncode == 1 and "line 1" in refused.stderr and "line 2" in refused.stderr


def test_submit_reuses_datasets_by_sha256_then_wait_and_cancel(
    served: Served, example_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "corpus.txt").write_text(
        "\n".join(f"Line {i} of a corpus made for this test only." for i in range(400)) + "\n", encoding="utf-8"
    )
    # the records the fixture uploaded: the same bytes, so found by their sha256
    (tmp_path / "pairs.jsonl").write_bytes((example_dir / "pairs.jsonl").read_bytes())
    spec = write_spec(tmp_path, Path("corpus.txt"), Path("pairs.jsonl"))
    raw = yaml.safe_load(spec.read_text())
    raw["tokenizer"]["vocab_size"] = 300
    raw["stages"][0]["steps"] = 5000  # long enough to be cancelled while it runs
    spec.write_text(yaml.safe_dump(raw))
    env = client_env(served)
    before = dataset_ids(served)
    first = run_cli("jobs", "submit", str(spec), env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "data.corpus: uploaded corpus.txt" in first.stderr
    assert f"data.pairs: reusing {served.datasets['pairs']}" in first.stderr
    after_first = dataset_ids(served)
    assert len(after_first - before) == 1
    second = run_cli("jobs", "submit", str(spec), "--json", env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert ": uploaded" not in second.stderr and second.stderr.count(": reusing ds_") == 2
    assert dataset_ids(served) == after_first, "the second submit uploaded nothing"
    job2 = json.loads(second.stdout)
    job1 = first.stdout.strip()
    assert job2["spec"]["data"] == cli_json(served, "jobs", "show", job1)["spec"]["data"]
    queued = cli_json(served, "jobs", "cancel", job2["id"])  # behind job 1: ends at once
    assert queued["status"] == "cancelled", queued
    running = cli_json(served, "jobs", "cancel", job1)
    assert running["status"] in ("cancelled", "cancelling"), running
    for job_id in (job1, job2["id"]):
        ended = run_cli("jobs", "wait", job_id, env=env, timeout=300)
        assert ended.returncode == 1 and f"job {job_id} ended cancelled" in ended.stderr, ended.stderr[-2000:]
    done = run_cli("jobs", "wait", served.job["id"], "-q", env=env)
    assert done.returncode == 0 and done.stdout.strip() == served.model_id, done.stderr


def test_submit_reports_every_bad_line_of_every_file_and_uploads_nothing(served: Served, tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_bytes(b"fine\n\xff\xfe broken\nfine too\n\xff\n")
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p"}\nnot json\n{"prompt": "p", "completion": "c"}\n')
    spec = write_spec(tmp_path, Path("corpus.txt"), Path("pairs.jsonl"))
    before = dataset_ids(served)
    proc = run_cli("jobs", "submit", str(spec), env=client_env(served))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    for where in ("corpus.txt line 2:", "corpus.txt line 4:", "pairs.jsonl line 1: completion", "pairs.jsonl line 2:"):
        assert sum(where in x for x in lines) == 1, (where, proc.stderr)
    assert dataset_ids(served) == before


@pytest.mark.parametrize("command", ["validate", "submit"])
def test_spec_errors_are_reported_before_any_upload(served: Served, tmp_path: Path, command: str) -> None:
    (tmp_path / "corpus.txt").write_text("a new corpus line\n" * 50)
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p", "completion": "c"}\n' * 20)
    env = client_env(served)
    before = dataset_ids(served)
    # a field error and a reference error together (the reference check runs anyway)
    spec = write_spec(tmp_path, Path("corpus.txt"), Path("pairs.jsonl"), seed=-1)
    raw = yaml.safe_load(spec.read_text())
    raw["stages"][1]["data"] = "nowhere"
    spec.write_text(yaml.safe_dump(raw))
    proc = run_cli("jobs", command, str(spec), env=env)
    assert proc.returncode == 2 and "seed:" in proc.stderr and "stages.1.data: unknown data name" in proc.stderr
    # valid locally, refused by the service (POST /v1/jobs/validate): an init_from it does not have
    raw = yaml.safe_load(write_spec(tmp_path, Path("corpus.txt"), Path("pairs.jsonl")).read_text())
    raw["model"] = {"init_from": {"model": "model_doesnotexist"}}
    raw.pop("tokenizer")
    spec.write_text(yaml.safe_dump(raw))
    proc = run_cli("jobs", command, str(spec), env=env)
    assert proc.returncode == 2 and "model.init_from.model" in proc.stderr, proc.stderr
    assert "data.corpus.dataset" not in proc.stderr, "files still to upload are not errors"
    assert dataset_ids(served) == before


def test_validate_prints_the_service_estimates(served: Served, tmp_path: Path) -> None:
    spec = tiny_spec(served.datasets)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = cli_json(served, "jobs", "validate", str(path))
    assert result["valid"] is True and result["estimates"]["total_steps"] == served.job["total_steps"]
    assert result["estimates"]["parameters"] == served.job["estimates"]["parameters"]


def preference_records(path: Path, n: int) -> Path:
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    lines = [{"prompt": f"Spell {i % 10}:", "chosen": words[i % 10], "rejected": words[(i + 3) % 10]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return path


def test_preference_data_uploads_lists_and_validates(served: Served, tmp_path: Path) -> None:
    """The `preference` data kind in the client commands: named on upload and in the list, its
    bad lines each on its own line, a preference stage checked locally and by the service."""
    env = client_env(served)
    prefs = preference_records(tmp_path / "prefs.jsonl", 12)
    up = run_cli("datasets", "upload", str(prefs), env=env)
    assert up.returncode == 0 and "(12 preference records)" in up.stderr, up.stderr
    ds_id = up.stdout.strip()
    assert cli_json(served, "datasets", "show", ds_id)["kind"] == "preference"
    listed = run_cli("datasets", "list", env=env)
    assert any(ds_id in line and "preference" in line for line in listed.stdout.splitlines()), listed.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a"}\n{"prompt": "p", "chosen": 1, "rejected": "b"}\n', encoding="utf-8")
    refused = run_cli("datasets", "upload", str(bad), env=env)
    assert refused.returncode == 1 and "line 1: rejected: missing" in refused.stderr, refused.stderr
    assert "line 2: chosen: must be a string" in refused.stderr

    stage = {"type": "preference", "name": "dpo", "data": "prefs", "steps": 3, "batch_size": 4,
             "loss": {"type": "dpo", "beta": 0.1}, "optimizer": {"type": "adamw", "lr": 1e-4}}  # fmt: skip
    spec: dict[str, Any] = {"name": "prefs", "model": {"init_from": {"model": served.model_id}},
            "data": {"prefs": {"dataset": "prefs.jsonl", "validation_fraction": 0.25}}, "stages": [stage],
            "evaluation": {"every_steps": 100, "metrics": ["loss"], "max_samples": 0}}  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    valid = run_cli("jobs", "validate", str(path), "--json", env=env)
    assert valid.returncode == 0, valid.stderr[-2000:]
    assert f"reusing {ds_id}" in valid.stderr  # the same bytes: the dataset uploaded above
    estimates = json.loads(valid.stdout)["estimates"]
    assert estimates["total_steps"] == 3 and estimates["tokens"] % (3 * 4 * 2) == 0  # pairs: two sequences a row
    # a preference stage on supervised records: refused locally, before anything is uploaded
    (tmp_path / "sft.jsonl").write_text('{"prompt": "Spell 1:", "completion": "one"}\n' * 8, encoding="utf-8")
    spec["data"]["prefs"]["dataset"] = "sft.jsonl"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    before = dataset_ids(served)
    wrong = run_cli("jobs", "validate", str(path), env=env)
    assert wrong.returncode == 2 and "stages.0.data: a preference objective needs" in wrong.stderr, wrong.stderr
    assert dataset_ids(served) == before


def test_models_export_then_upload(served: Served, tmp_path: Path) -> None:
    env = client_env(served)
    proc = run_cli("models", "export", served.model_id, "--out", str(tmp_path / "m.tar.gz"), env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == tmp_path / "m.tar.gz" and (tmp_path / "m.tar.gz").stat().st_size > 10_000
    uploaded = cli_json(served, "models", "upload", str(tmp_path / "m.tar.gz"), "--name", "round-trip")
    assert uploaded["id"].startswith("model_") and uploaded["source"] == "upload"
    assert uploaded["parameters"] == cli_json(served, "models", "show", served.model_id)["parameters"]
