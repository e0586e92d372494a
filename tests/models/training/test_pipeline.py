"""models.training.run.run end to end on a tiny model: events, checkpoints, exact resume, divergence."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from models.data.tokenizer import Tokenizer
from models.errors import Stopped, TrainingError
from models.families.gpt.config import GPTConfig
from models.families.gpt.model import GPT
from models.formats.layout import MODEL_FILE
from models.formats.native import load_tensors
from models.spec import JobSpec, MultistepStage, parse_spec
from models.training.checkpoint import list_checkpoints
from models.training.optim import lr_factor
from models.training.run import RunResult, run
from tests.conftest import EVENT_TYPES

TOTAL = 6 + 4 + 2 * (3 + 3)


@dataclass
class Run:
    workdir: Path
    events: list[dict[str, Any]]
    result: RunResult | None = None
    stopped_at: int | None = None


def train(
    spec: JobSpec, workdir: Path, stop_at: int | None = None, resume: bool = False, events: list[Any] | None = None
) -> Run:
    events = [] if events is None else events
    last = {"step": 0}

    def on_event(e: dict[str, Any]) -> None:
        events.append(e)
        if e["type"] == "train.step":
            last["step"] = e["step"]

    out = Run(workdir, events)
    try:
        out.result = run(
            spec,
            workdir,
            on_event=on_event,
            should_stop=None if stop_at is None else (lambda: last["step"] >= stop_at),
            resume=resume,
        )
    except Stopped as exc:
        out.stopped_at = exc.step
    return out


def final_tensors(workdir: Path) -> dict[str, torch.Tensor]:
    return load_tensors(workdir / "model" / MODEL_FILE)


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = final_tensors(a), final_tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"tensors differ after resume: {different}"


@pytest.fixture(scope="module")
def spec(data_dir: Path) -> JobSpec:
    from tests.conftest import BASE_SPEC

    raw = json.loads(json.dumps(BASE_SPEC))
    for ref in raw["data"].values():
        ref["dataset"] = str(data_dir / ref["dataset"])
    return parse_spec(raw)


@pytest.fixture(scope="module")
def baseline(spec: JobSpec, tmp_path_factory: pytest.TempPathFactory) -> Run:
    r = train(spec, tmp_path_factory.mktemp("baseline"))
    assert r.result is not None
    return r


# --- an uninterrupted run -----------------------------------------------------------------------


def test_run_writes_a_model_and_a_consistent_event_stream(baseline: Run, spec: JobSpec) -> None:
    assert baseline.result is not None and baseline.result.steps == TOTAL
    model_dir = baseline.workdir / "model"
    assert baseline.result.model_dir == model_dir
    for name in (MODEL_FILE, "config.json", "tokenizer.json", "evaluation.json"):
        assert (model_dir / name).is_file(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert config["steps"] == TOTAL and config["gpt"]["n_layer"] == 2
    assert json.loads((baseline.workdir / "spec.json").read_text()) == spec.model_dump(mode="json")

    events = baseline.events
    assert {e["type"] for e in events} <= EVENT_TYPES
    for e in events:
        assert set(e) == {"type", "time", "stage", "step", "data"}
        assert e["time"].endswith("Z")
    steps = [e for e in events if e["type"] == "train.step"]
    assert [e["step"] for e in steps] == list(range(1, TOTAL + 1))
    assert all(set(e["data"]) >= {"loss", "lr", "grad_norm", "tokens_per_s"} for e in steps)
    assert [e["stage"]["index"] for e in steps] == [0] * 6 + [1] * 4 + [2] * 12
    assert [e["stage"]["name"] for e in events if e["type"] == "stage.started"] == ["pretrain", "finetune", "refine"]
    assert [e["stage"]["name"] for e in events if e["type"] == "stage.completed"] == ["pretrain", "finetune", "refine"]
    phases = [e["data"]["phase"] for e in steps[10:]]
    assert (
        phases
        == ["refine 1/2 pretrain"] * 3
        + ["refine 1/2 finetune"] * 3
        + ["refine 2/2 pretrain"] * 3
        + ["refine 2/2 finetune"] * 3
    )
    saved = [e["step"] for e in events if e["type"] == "checkpoint.saved"]
    assert saved == [4, 8, 12, 16, 20]
    assert [p.name for p in list_checkpoints(baseline.workdir / "checkpoints")] == ["step-000000016", "step-000000020"]
    evals = [e for e in events if e["type"] == "eval"]
    assert {e["data"]["data"] for e in evals} == {"corpus", "pairs"}
    assert all("loss" in e["data"] and "perplexity" in e["data"] for e in evals)
    assert all(e["stage"] is None for e in evals[-2:])  # the final evaluation
    losses = [e["data"]["loss"] for e in steps]
    assert losses[5] < losses[0]  # it learns
    assert baseline.result.evaluation.keys() == {"corpus", "pairs"}


def test_learning_rates_follow_each_stage_schedule(baseline: Run, spec: JobSpec) -> None:
    steps = [e for e in baseline.events if e["type"] == "train.step"]
    want: list[float] = []
    for stage in spec.stages:
        if isinstance(stage, MultistepStage):
            offset = 0
            for _ in range(stage.cycles):
                for phase in stage.phases:
                    want += [
                        phase.optimizer.lr * lr_factor(stage.schedule, offset + s, stage.steps)
                        for s in range(phase.steps)
                    ]
                    offset += phase.steps
        else:
            want += [stage.optimizer.lr * lr_factor(stage.schedule, s, stage.steps) for s in range(stage.steps)]
    assert [e["data"]["lr"] for e in steps] == pytest.approx(want, rel=1e-12)


def test_frozen_parts_are_unchanged_after_a_run(
    data_dir: Path, spec_dict: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    raw = spec_dict(data_dir=data_dir, checkpointing={"every_steps": 2, "keep_last": 1})
    raw["stages"] = [raw["stages"][2]]  # multistep only: phases train embeddings+norms, then blocks.0-1+head
    raw["stages"][0]["phases"][1]["trainable"] = ["blocks.1"]
    spec = parse_spec(raw)
    r = train(spec, tmp_path / "w")
    assert r.result is not None
    tok = Tokenizer.load(tmp_path / "w" / "tokenizer")
    torch.manual_seed(spec.seed)  # the pipeline's initialisation
    m = spec.model
    init = GPT(GPTConfig(tok.vocab_size, m.block_size, m.n_layer, m.n_head, m.n_embd, m.dropout)).state_dict()
    final = final_tensors(tmp_path / "w")
    for name, tensor in final.items():
        trained = name.startswith(("transformer.wte.", "transformer.wpe.", "transformer.h.1.")) or ".ln_" in name
        assert torch.equal(tensor, init[name]) != trained, name


# --- exact resume -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stop_at",
    [3, 10, 15, 16, TOTAL],
    ids=["mid-pretrain", "end-of-finetune", "mid-multistep-c1p2", "end-of-multistep-c1p2", "after-last-step"],
)
def test_resume_is_bitwise_exact(spec: JobSpec, baseline: Run, tmp_path: Path, stop_at: int) -> None:
    first = train(spec, tmp_path, stop_at=stop_at)
    assert first.result is None and first.stopped_at == stop_at
    assert first.events[-1]["type"] == "checkpoint.saved" and first.events[-1]["step"] == stop_at
    assert list_checkpoints(tmp_path / "checkpoints")[-1].name == f"step-{stop_at:09d}"
    assert not (tmp_path / "model").exists()

    second = train(spec, tmp_path, resume=True)
    assert second.result is not None and second.result.steps == TOTAL
    restarted = [e for e in second.events if e["type"] == "job.restarted"]
    assert len(restarted) == 1 and restarted[0]["data"]["from_step"] == stop_at
    assert [e["step"] for e in second.events if e["type"] == "train.step"] == list(range(stop_at + 1, TOTAL + 1))
    # every stage that had not completed before the stop completes once after it
    done_before = sum(e["type"] == "stage.completed" for e in first.events)
    assert done_before + sum(e["type"] == "stage.completed" for e in second.events) == 3
    assert (tmp_path / "tokenizer" / "tokenizer.json").read_bytes() == (
        baseline.workdir / "tokenizer" / "tokenizer.json"
    ).read_bytes()
    # the losses of the resumed steps are those of the uninterrupted run
    base_losses = {e["step"]: e["data"]["loss"] for e in baseline.events if e["type"] == "train.step"}
    assert {e["step"]: e["data"]["loss"] for e in second.events if e["type"] == "train.step"} == {
        s: base_losses[s] for s in range(stop_at + 1, TOTAL + 1)
    }
    assert_same_weights(baseline.workdir, tmp_path)


def test_resume_twice_is_bitwise_exact(spec: JobSpec, baseline: Run, tmp_path: Path) -> None:
    assert train(spec, tmp_path, stop_at=7).stopped_at == 7
    assert train(spec, tmp_path, stop_at=18, resume=True).stopped_at == 18
    assert train(spec, tmp_path, resume=True).result is not None
    assert_same_weights(baseline.workdir, tmp_path)


def test_resume_without_checkpoint_starts_fresh(spec: JobSpec, baseline: Run, tmp_path: Path) -> None:
    r = train(spec, tmp_path, resume=True)
    assert r.result is not None and not any(e["type"] == "job.restarted" for e in r.events)
    assert_same_weights(baseline.workdir, tmp_path)


def test_a_fresh_run_does_not_resume_a_stale_checkpoint(
    spec: JobSpec, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Without resume, an earlier run's checkpoints in the workdir must not outlive or replace the new run's."""
    other = spec.model_copy(update={"seed": 1})
    reference = train(other, tmp_path_factory.mktemp("reference"))
    assert reference.result is not None

    workdir = tmp_path_factory.mktemp("reused")
    assert train(spec, workdir, stop_at=10).stopped_at == 10  # leaves checkpoints 8 and 10 of the seed-0 run
    try:
        fresh = train(other, workdir, stop_at=4)
    except TrainingError as exc:  # refusing to mix two runs in one workdir is acceptable too
        assert exc.code == "user_error"
        return
    assert fresh.stopped_at == 4
    assert list_checkpoints(workdir / "checkpoints")[-1].name == "step-000000004"
    resumed = train(other, workdir, resume=True)
    assert [e["data"]["from_step"] for e in resumed.events if e["type"] == "job.restarted"] == [4]
    assert_same_weights(reference.workdir, workdir)


def test_a_fresh_run_trains_its_own_tokenizer(spec: JobSpec, tmp_path: Path) -> None:
    assert spec.tokenizer is not None
    other = spec.model_copy(update={"tokenizer": spec.tokenizer.model_copy(update={"vocab_size": 320})})
    assert train(spec, tmp_path, stop_at=2).stopped_at == 2  # leaves a 300-token tokenizer in the workdir
    try:
        r = train(other, tmp_path)
    except TrainingError as exc:  # refusing to reuse the workdir is acceptable too
        assert exc.code == "user_error"
        return
    assert r.result is not None
    assert Tokenizer.load(tmp_path / "model").vocab_size == 320


def test_init_from_a_finished_model(baseline: Run, spec: JobSpec, tmp_path: Path) -> None:
    raw = spec.model_dump(mode="json")
    raw["model"]["init_from"] = {"model": str(baseline.workdir / "model")}
    raw["tokenizer"] = None
    raw["stages"] = [dict(raw["stages"][1], steps=2, trainable=["blocks.1"])]
    r = train(parse_spec(raw), tmp_path)
    assert r.result is not None
    base, tuned = final_tensors(baseline.workdir), final_tensors(tmp_path)
    for name in base:
        assert torch.equal(base[name], tuned[name]) != name.startswith("transformer.h.1."), name
    assert (tmp_path / "model" / "tokenizer.json").read_bytes() == (
        baseline.workdir / "model" / "tokenizer.json"
    ).read_bytes()


def test_resume_with_another_spec_is_refused(spec: JobSpec, tmp_path: Path) -> None:
    assert train(spec, tmp_path, stop_at=2).stopped_at == 2
    other = spec.model_copy(update={"seed": 1})
    with pytest.raises(TrainingError) as info:
        run(other, tmp_path, resume=True)
    assert info.value.code == "user_error" and "different spec" in str(info.value)


# --- failures ---------------------------------------------------------------------------------------


def test_diverging_loss_is_a_user_error(
    data_dir: Path, spec_dict: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    raw = spec_dict(data_dir=data_dir)
    stage = raw["stages"][0]
    stage.update(
        name="boom",
        steps=200,
        optimizer={"type": "sgd", "lr": 10.0, "momentum": 0.9},
        schedule={"type": "constant"},
        grad_clip=None,
    )
    raw["stages"] = [stage]
    events: list[Any] = []
    with pytest.raises(TrainingError) as info:
        run(parse_spec(raw), tmp_path, on_event=events.append)
    assert info.value.code == "user_error"
    message = str(info.value)
    assert "loss diverged at stage" in message and "boom" in message and "step" in message
    last_step = max(e["step"] for e in events if e["type"] == "train.step")
    assert f"step {last_step + 1}" in message
    assert last_step < 200


def test_finetune_on_a_text_corpus_is_a_user_error(
    data_dir: Path, spec_dict: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    raw = spec_dict(data_dir=data_dir)
    raw["stages"][1]["data"] = "corpus"
    with pytest.raises(TrainingError) as info:
        run(parse_spec(raw), tmp_path)
    assert info.value.code == "user_error" and "stages.1" in str(info.value) and "corpus" in str(info.value)


def test_bad_data_file_is_a_user_error(spec_dict: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text("fine\n")
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p"}\nnot json\n')
    with pytest.raises(TrainingError) as info:
        run(parse_spec(spec_dict(data_dir=tmp_path)), tmp_path / "w")
    message = str(info.value)
    assert info.value.code == "user_error" and "data.pairs" in message
    assert "line 1: completion" in message and "line 2" in message


def test_fp16_on_cpu_is_a_user_error(data_dir: Path, spec_dict: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    with pytest.raises(TrainingError) as info:
        run(parse_spec(spec_dict(data_dir=data_dir, precision="fp16")), tmp_path)
    assert info.value.code == "user_error" and "fp16" in str(info.value)


def test_bf16_resume_is_bitwise_exact(spec: JobSpec, tmp_path_factory: pytest.TempPathFactory) -> None:
    """bf16 on the CPU trains a bf16 model through fp32 masters; checkpoints hold the masters."""
    bf16 = spec.model_copy(update={"precision": "bf16"})
    whole = train(bf16, tmp_path_factory.mktemp("bf16-whole"))
    assert whole.result is not None
    assert {t.dtype for t in final_tensors(whole.workdir).values()} == {torch.float32}
    parts = tmp_path_factory.mktemp("bf16-parts")
    assert train(bf16, parts, stop_at=13).stopped_at == 13
    assert train(bf16, parts, resume=True).result is not None
    assert_same_weights(whole.workdir, parts)
