"""`stagecraft train/generate` as a user runs them: subprocesses, relative dataset paths, Ctrl-C and --resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from models.formats.layout import MODEL_FILE
from models.formats.load import load_model, served_chat_format
from models.formats.native import load_tensors
from models.inference.generate import Sampling, complete
from models.training.checkpoint import list_checkpoints
from tests.conftest import BASE_SPEC, EVENT_TYPES, corpus_texts, record_objects, write_jsonl

PRETRAIN_STEPS = 60
TOTAL = PRETRAIN_STEPS + 4 + 2 * (3 + 3)
ENV = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}


def stagecraft() -> list[str]:
    exe = Path(sys.executable).parent / "stagecraft"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("stagecraft")
    return [found] if found else [sys.executable, "-m", "app.cli"]


def cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*stagecraft(), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV, check=False
    )


def read_events(out: Path) -> list[dict[str, Any]]:
    path = out / "events.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@dataclass
class Project:
    spec: Path
    root: Path


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A spec file with dataset paths relative to it, as a user writes one."""
    root = tmp_path_factory.mktemp("project")
    (root / "data").mkdir()
    (root / "data" / "corpus.txt").write_text("\n".join(corpus_texts()) + "\n", encoding="utf-8")
    write_jsonl(root / "data" / "pairs.jsonl", record_objects())
    raw = json.loads(json.dumps(BASE_SPEC))
    raw["data"]["corpus"]["dataset"] = "data/corpus.txt"
    raw["data"]["pairs"]["dataset"] = "data/pairs.jsonl"
    raw["stages"][0]["steps"] = PRETRAIN_STEPS
    raw["model"]["block_size"] = 64
    raw["stages"][0]["batch_size"] = 16  # slow enough that Ctrl-C lands well before the end
    raw["checkpointing"] = {"every_steps": 10, "keep_last": 2}
    raw["evaluation"] = {"every_steps": 25, "metrics": ["loss", "perplexity", "exact_match", "bleu"], "max_samples": 2}
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return Project(spec, root)


@pytest.fixture(scope="module")
def trained(project: Project, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted `stagecraft train` run, started from another working directory."""
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    proc = cli("train", project.spec, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_train_writes_events_and_model(trained: Path) -> None:
    events = read_events(trained)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e["type"] for e in events} <= EVENT_TYPES
    for e in events:  # the CLI's job events and the pipeline's alike: one shape, one time format
        assert set(e) == {"seq", "type", "time", "stage", "step", "data"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"]), e
    assert events[0]["type"] == "job.started" and events[0]["data"]["total_steps"] == TOTAL
    assert events[-1]["type"] == "job.succeeded" and events[-1]["step"] == TOTAL
    assert [e["step"] for e in events if e["type"] == "train.step"] == list(range(1, TOTAL + 1))
    assert sum(e["type"] == "stage.completed" for e in events) == 3
    task_evals = [e["data"] for e in events if e["type"] == "eval" and "qa.exact_match" in e["data"]]
    assert task_evals, "task metrics were asked for and the pairs data has qa records"
    model = trained / "model"
    for name in (MODEL_FILE, "config.json", "tokenizer.json"):
        assert (model / name).is_file()
    assert Path(events[-1]["data"]["model_dir"]).resolve() == model.resolve()


def test_generate_prints_the_completion(trained: Path) -> None:
    prompt = "At the market, Nadia has"
    proc = cli("generate", trained, "--prompt", prompt, "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    model, tok = load_model(trained / "model")
    [expected] = complete(model, tok, [prompt], Sampling(max_new_tokens=8))
    assert proc.stdout == expected + "\n"
    assert proc.stdout != "\n", "a trained model continues a corpus prompt"
    # the model directory itself works too, and so does a task
    proc = cli(
        "generate", trained / "model", "--task", "qa", "--question", "How many maps?", "--context", "Jia has 3 maps."
    )
    assert proc.returncode == 0, proc.stderr


def test_generate_usage_errors(trained: Path, tmp_path: Path) -> None:
    assert cli("generate", tmp_path, "--prompt", "x").returncode == 2  # not a model directory
    proc = cli("generate", trained, "--task", "qa", "--question", "q")
    assert proc.returncode == 2 and "--context" in proc.stderr


def test_invalid_spec_exits_2_naming_the_field(project: Project, tmp_path: Path) -> None:
    raw = yaml.safe_load(project.spec.read_text())
    raw["stages"][0]["optimizer"]["lr"] = -1
    raw["stages"][2]["phases"][1]["foo"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    proc = cli("train", bad, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert "stages.0.optimizer.lr" in proc.stderr
    assert "stages.2.phases.1.foo" in proc.stderr
    assert not (tmp_path / "out" / "model").exists()
    bad.write_text("name: [unclosed\n")
    proc = cli("train", bad, "--out", tmp_path / "out")
    assert proc.returncode == 2 and "YAML" in proc.stderr


def test_diverging_run_exits_1_with_a_failed_event(project: Project, tmp_path: Path) -> None:
    raw = yaml.safe_load(project.spec.read_text())
    raw["stages"] = [dict(raw["stages"][0], name="boom", optimizer={"type": "sgd", "lr": 10.0, "momentum": 0.9})]
    raw["stages"][0].pop("grad_clip")
    spec = project.root / "diverge.yaml"  # next to the data: relative dataset paths resolve
    spec.write_text(yaml.safe_dump(raw))
    proc = cli("train", spec, "--out", tmp_path / "out")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "user_error" in proc.stderr and "diverged" in proc.stderr
    events = read_events(tmp_path / "out")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "job.failed"
    assert events[-1]["data"]["code"] == "user_error"
    assert "loss diverged at stage boom" in events[-1]["data"]["message"]
    assert not (tmp_path / "out" / "model").exists()


@pytest.mark.slow
def test_sigint_then_resume_gives_the_same_weights(project: Project, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(
            [*stagecraft(), "train", str(project.spec), "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=ENV,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if any(e["type"] == "train.step" and e["step"] >= 3 for e in read_events(out)):
                    break
                time.sleep(0.01)
            assert proc.poll() is None, "the run ended before it could be interrupted"
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert rc == 130, (tmp_path / "stderr.txt").read_text()[-3000:]
    events = read_events(out)
    assert events[-1]["type"] == "job.cancelled"
    stopped = events[-1]["step"]
    assert 3 <= stopped < TOTAL
    assert list_checkpoints(out / "checkpoints")[-1].name == f"step-{stopped:09d}"
    assert not (out / "model").exists()
    assert "--resume" in (tmp_path / "stderr.txt").read_text()

    proc2 = cli("train", project.spec, "--out", out, "--resume")
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert (
        f"({TOTAL - stopped} steps in " in proc2.stderr and f"resumed at step {stopped}; {TOTAL} in all" in proc2.stderr
    )
    events = read_events(out)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e["type"] for e in events} <= EVENT_TYPES
    assert events[-1]["type"] == "job.succeeded"
    restarted = [e for e in events if e["type"] == "job.restarted"]
    assert len(restarted) == 1 and restarted[0]["data"]["from_step"] == stopped
    steps = [e["step"] for e in events if e["type"] == "train.step"]
    assert steps == list(range(1, stopped + 1)) + list(range(stopped + 1, TOTAL + 1))

    a, b = load_tensors(trained / "model" / MODEL_FILE), load_tensors(out / "model" / MODEL_FILE)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_generate_a_task_on_a_chat_model_uses_its_template(tmp_path: Path) -> None:
    """On a Hugging Face directory with a chat template, `--task` answers as the task endpoints
    do: the task prompt as the user turn (apply_chat_template), stopping at the end of turn."""
    transformers = pytest.importorskip("transformers")
    from models.data.chat import stop_token_ids
    from models.data.records import qa_prompt
    from tests.chat_models import save_chat_llama, template_ids, transformers_tokenizer

    directory = save_chat_llama(tmp_path / "chat")
    proc = cli("generate", directory, "--task", "qa", "--question", "Where?", "--context", "In Lyon.",
               "--max-new-tokens", "8")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _, tok = load_model(directory)
    chat = served_chat_format(directory, tok)
    assert chat is not None
    ids = template_ids(directory, [{"role": "user", "content": qa_prompt("Where?", "In Lyon.").strip()}])
    theirs = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    ends = sorted(stop_token_ids(chat, tok.hf, tok.end_ids))
    with torch.no_grad():
        out = theirs.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=ends)
    want = transformers_tokenizer(directory).decode(out[0, len(ids) :], skip_special_tokens=True).strip()
    assert proc.stdout == want + "\n"
