"""The repository's own example: examples/make_data.py writes the data and
examples/multistep.yaml (shrunk to a few steps and a tiny model) trains on it with
`stagecraft train`, as the README's first command does, with nothing from ../shared."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import EVENT_TYPES, REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"


def make_data(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(EXAMPLES / "make_data.py"), "--out", str(out), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def shrunk_example(data: Path) -> dict[str, Any]:
    """examples/multistep.yaml with its stages, phases and structure kept, steps cut to a few."""
    spec: dict[str, Any] = yaml.safe_load((EXAMPLES / "multistep.yaml").read_text(encoding="utf-8"))
    spec["model"].update(n_layer=2, n_head=2, n_embd=32, block_size=64)
    spec["tokenizer"]["vocab_size"] = 384
    for ref in spec["data"].values():
        ref["dataset"] = str(data / Path(ref["dataset"]).name)
    for stage in spec["stages"]:
        stage["batch_size"] = 4
        if stage["type"] == "multistep":
            stage["cycles"] = 2
            for phase in stage["phases"]:
                phase["steps"] = 2
            stage["phases"][1]["trainable"] = ["blocks.1", "head"]  # blocks.2-3 do not exist at 2 layers
        else:
            stage["steps"] = 4
            stage["schedule"]["warmup_steps"] = 1
    spec["evaluation"].update(every_steps=4, max_samples=2)
    spec["checkpointing"] = {"every_steps": 6, "keep_last": 1}
    spec["precision"], spec["device"] = "fp32", "cpu"
    return spec


def test_make_data_is_deterministic_and_sized_by_its_options(tmp_path: Path) -> None:
    first, again, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((first, "5"), (again, "5"), (other, "6")):
        done = make_data(out, "--seed", seed, "--pairs", "30", "--corpus-lines", "50")
        assert done.returncode == 0, done.stderr
    for name in ("corpus.txt", "pairs.jsonl"):
        assert (first / name).read_bytes() == (again / name).read_bytes()
        assert (first / name).read_bytes() != (other / name).read_bytes()
    lines = (first / "corpus.txt").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in (first / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 50 and len(records) == 30
    assert Counter(r["task"] for r in records) == {"translate": 10, "qa": 10, "summarize": 10}
    for r in records:
        if r["task"] == "qa":
            assert f" {r['answer']} " in r["context"] and r["question"].startswith("How many ")
        if r["task"] == "summarize":
            most = max(int(w) for w in r["document"].replace(",", " ").split() if w.isdigit())
            assert f": {most} " in r["summary"]


def test_make_data_rejects_a_bad_option(tmp_path: Path) -> None:
    done = make_data(tmp_path, "--pairs", "0")
    assert done.returncode == 2 and "--pairs" in done.stderr and "at least 1" in done.stderr


def test_the_example_trains_with_stagecraft_train(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = make_data(data, "--pairs", "90", "--corpus-lines", "400")
    assert done.returncode == 0, done.stderr
    spec_path = tmp_path / "multistep.yaml"
    spec_path.write_text(yaml.safe_dump(shrunk_example(data)), encoding="utf-8")
    out = tmp_path / "run"
    exe = Path(sys.executable).parent / "stagecraft"
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "app.cli"]
    run = subprocess.run(
        [*cli, "train", str(spec_path), "--out", str(out)], capture_output=True, text=True, timeout=600, check=False
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "evaluation.json"):
        assert (out / "model" / name).is_file(), name
    events = [json.loads(line) for line in (out / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    types = [e["type"] for e in events]
    assert set(types) <= EVENT_TYPES, set(types) - EVENT_TYPES
    assert types[0] == "job.started" and types[-1] == "job.succeeded", types
    assert types.count("stage.started") == types.count("stage.completed") == 3
    assert [e["step"] for e in events if e["type"] == "train.step"] == list(range(1, 4 + 4 + 2 * (2 + 2) + 1))
    assert {"eval", "checkpoint.saved"} <= set(types)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
