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

import pytest
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


def test_make_data_writes_preference_pairs_of_both_forms(tmp_path: Path) -> None:
    """preference.jsonl and preference_chat.jsonl: the same records, deterministic by --seed,
    `chosen` the right answer and `rejected` a plausible wrong one, prompts as models/data/records.py
    renders the tasks; their generator is their own, so the other files do not change."""
    from models.data.records import load_file, qa_prompt, summarize_prompt, translate_prompt

    first, again, fewer = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, count in ((first, "30"), (again, "30"), (fewer, "6")):
        done = make_data(out, "--seed", "5", "--pairs", "30", "--corpus-lines", "50", "--preference", count)
        assert done.returncode == 0, done.stderr
    for name in ("corpus.txt", "pairs.jsonl", "preference.jsonl", "preference_chat.jsonl"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    for name in ("corpus.txt", "pairs.jsonl"):
        assert (first / name).read_bytes() == (fewer / name).read_bytes(), name
    plain = [json.loads(line) for line in (first / "preference.jsonl").read_text(encoding="utf-8").splitlines()]
    chat = [json.loads(line) for line in (first / "preference_chat.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(plain) == len(chat) == 30
    assert (fewer / "preference.jsonl").read_text(encoding="utf-8").splitlines() == [
        json.dumps(r, ensure_ascii=False) for r in plain[:6]
    ]
    for i, (p, c) in enumerate(zip(plain, chat, strict=True)):
        assert set(p) == {"prompt", "chosen", "rejected"} and p["chosen"] != p["rejected"]
        assert c == {
            "prompt": [{"role": "user", "content": p["prompt"].strip()}],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        task = ("translate", "qa", "summarize")[i % 3]
        if task == "translate":
            words = p["prompt"].removeprefix("Translate English to French: ").removesuffix("\n")
            assert p["prompt"] == translate_prompt(words, "en", "fr")
        elif task == "qa":
            context, question = p["prompt"].removeprefix("Context: ").removesuffix("\nAnswer:").split("\nQuestion: ")
            assert p["prompt"] == qa_prompt(question, context)
            asked = question.split()[2]  # "How many <things> does <person> have?"
            assert f" {p['chosen']} {asked}" in context and f" {p['rejected']} " in context  # another count of it
        else:
            story = p["prompt"].removeprefix("Summarize: ").removesuffix("\n")
            assert p["prompt"] == summarize_prompt(story)
            most = max(int(w) for w in story.replace(",", " ").split() if w.isdigit())
            person, rest = p["chosen"].split(" has the most: ")
            assert rest.startswith(f"{most} ") and f"{person} has {most} " in story
            other, same = p["rejected"].split(" has the most: ")
            assert same == rest and other != person and f"{other} has " in story  # the name swapped
    for name in ("preference.jsonl", "preference_chat.jsonl"):  # the data kind of a `preference` stage
        parsed = load_file(first / name)
        assert parsed.kind == "preference" and parsed.num_records == 30, name


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_the_example_specs_pass_the_local_checks(name: str, tmp_path: Path) -> None:
    """Each examples/*.yaml passes what `stagecraft jobs validate` checks on this machine: its
    fields, and the kind of each data file make_data.py writes (the others, such as
    make_general_text.py's, are not generated here)."""
    from models.data.records import load_file
    from models.spec import data_kind_errors, parse_spec

    done = make_data(tmp_path, "--pairs", "30", "--corpus-lines", "50", "--preference", "30")
    assert done.returncode == 0, done.stderr
    raw = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
    spec = parse_spec(raw)
    local = {k: tmp_path / Path(ref.dataset).name for k, ref in spec.data.items()}
    kinds = {k: load_file(path).kind for k, path in local.items() if path.is_file()}
    assert kinds, "no data file of the example is one make_data.py writes"
    assert data_kind_errors(spec, kinds) == []


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
