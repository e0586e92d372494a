"""The preference objective in runs (models/training/preference.py): a preference stage after a
finetune stage, multistep phases alternating SFT and DPO, every loss, the reference (a frozen
copy, the policy with its adapter switched off, an explicit model, precomputed), exact resume,
both families and bf16."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from models.data.preference_stream import PreferenceStream
from models.errors import TrainingError
from models.lora import layers as lora
from models.spec import JobSpec, parse_spec
from models.training.pipeline import Pipeline
from models.training.preference_losses import pair_logps
from models.training.reference import Source
from tests.conftest import NAMES, THINGS, write_jsonl
from tests.models.training.test_pipeline import Run, assert_same_weights, train

LLAMA = {"arch": "llama", "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32, "block_size": 32}
PREF_METRICS = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen"}


def preference_objects(n: int = 60, seed: int = 0) -> list[dict[str, Any]]:
    """Sums, the right answer preferred: plain pairs, OpenAI's format and conversations."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        who, what, a, b = rng.choice(NAMES), rng.choice(THINGS), rng.randint(1, 9), rng.randint(1, 9)
        prompt, good, bad = (
            f"{who} has {a} {what} and gets {b} more. How many?",
            f"{a + b} {what}",
            f"{a * b + 1} {what}",
        )
        if i % 3 == 0:
            out.append(
                {
                    "input": {"messages": [{"role": "user", "content": prompt}]},
                    "preferred_output": [{"role": "assistant", "content": good}],
                    "non_preferred_output": [{"role": "assistant", "content": bad}],
                }
            )
        elif i % 3 == 1:
            out.append({"prompt": prompt, "chosen": good, "rejected": bad})
        else:
            turns = [{"role": "user", "content": prompt}]
            out.append(
                {
                    "chosen": [*turns, {"role": "assistant", "content": good}],
                    "rejected": [*turns, {"role": "assistant", "content": bad}],
                }
            )
    return out


@pytest.fixture(scope="module")
def prefs_file(data_dir: Path) -> Path:
    return write_jsonl(data_dir / "prefs.jsonl", preference_objects())


def make_spec(data_dir: Path, stages: list[dict[str, Any]], **top: Any) -> JobSpec:
    raw: dict[str, Any] = {
        "name": "prefs",
        "seed": 0,
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
        "tokenizer": {"vocab_size": 300, "train_on": ["corpus"]},
        "data": {
            "corpus": {"dataset": str(data_dir / "corpus.txt")},
            "records": {"dataset": str(data_dir / "pairs.jsonl"), "validation_fraction": 0.1},
            "prefs": {"dataset": str(data_dir / "prefs.jsonl"), "validation_fraction": 0.2},
        },
        "evaluation": {"every_steps": 3, "max_samples": 0},
        "checkpointing": {"every_steps": 2, "keep_last": 10},
        "stages": stages,
        **top,
    }
    return parse_spec(raw)


def opt(lr: float = 3e-3) -> dict[str, Any]:
    return {"type": "adamw", "lr": lr}


PRETRAIN = {
    "type": "pretrain",
    "name": "pre",
    "data": "corpus",
    "steps": 2,
    "batch_size": 4,
    "loss": {"type": "causal_lm"},
    "optimizer": opt(),
}
FINETUNE = {
    "type": "finetune",
    "name": "sft",
    "data": "records",
    "steps": 2,
    "batch_size": 4,
    "loss": {"type": "cross_entropy"},
    "optimizer": opt(),
}


def preference(loss: dict[str, Any], steps: int = 4, **fields: Any) -> dict[str, Any]:
    return {
        "type": "preference",
        "name": "pref",
        "data": "prefs",
        "steps": steps,
        "batch_size": 4,
        "loss": loss,
        "optimizer": opt(),
        **fields,
    }


def steps_of(r: Run, stage: str) -> list[dict[str, Any]]:
    return [e["data"] for e in r.events if e["type"] == "train.step" and e["stage"]["name"] == stage]


def evals_of(r: Run, data: str) -> list[dict[str, Any]]:
    return [e["data"] for e in r.events if e["type"] == "eval" and e["data"]["data"] == data]


@pytest.mark.parametrize("loss", ["dpo", "ipo", "simpo", "orpo"])
def test_a_preference_stage_after_finetuning(loss: str, data_dir: Path, prefs_file: Path, tmp_path: Path) -> None:
    params = {"simpo": {"beta": 2.0}, "orpo": {"beta": 0.5}}.get(loss, {})  # (SimPO's paper uses β 2)
    spec = make_spec(data_dir, [PRETRAIN, FINETUNE, preference({"type": loss, **params})])
    r = train(spec, tmp_path)
    assert r.result is not None and r.result.steps == 8
    steps = steps_of(r, "pref")
    assert len(steps) == 4 and all(set(s) >= PREF_METRICS for s in steps)
    if loss in ("dpo", "ipo"):  # against the policy as the stage started: the first step's rewards are 0
        assert steps[0]["rewards/chosen"] == steps[0]["rewards/rejected"] == 0.0
        assert steps[0]["loss"] == pytest.approx(0.693147 if loss == "dpo" else (1 / (2 * 0.1)) ** 2, rel=1e-5)
    measured = evals_of(r, "prefs")
    assert measured and all({"loss", "preference_accuracy", *PREF_METRICS} <= set(m) for m in measured)
    assert "prefs" in r.result.evaluation and "preference_accuracy" in r.result.evaluation["prefs"]
    during = [e["data"] for e in r.events if e["type"] == "eval" and e["stage"] and e["stage"]["name"] == "pref"]
    if loss in ("dpo", "ipo"):  # it learns the preference (held out; 4 steps move simpo and orpo too little)
        assert during[-1]["rewards/margins"] > during[0]["rewards/margins"]
    assert during[-1] != during[0]


def test_multistep_alternates_sft_and_dpo_phases(data_dir: Path, prefs_file: Path, tmp_path: Path) -> None:
    phases = [
        {"objective": "finetune", "data": "records", "steps": 2, "loss": {"type": "cross_entropy"}, "optimizer": opt()},
        {
            "objective": "preference",
            "name": "dpo",
            "data": "prefs",
            "steps": 2,
            "loss": {"type": "dpo", "beta": 0.2},
            "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
            "regularization": {"l2": 1e-4},
            "trainable": ["blocks.1", "head"],
        },
    ]
    stage = {"type": "multistep", "name": "mix", "cycles": 2, "batch_size": 4, "phases": phases}
    r = train(make_spec(data_dir, [PRETRAIN, stage]), tmp_path)
    steps = steps_of(r, "mix")
    assert [s["phase"] for s in steps] == ["mix 1/2 finetune"] * 2 + ["mix 1/2 dpo"] * 2 + ["mix 2/2 finetune"] * 2 + [
        "mix 2/2 dpo"
    ] * 2
    assert all("rewards/margins" in s for s in steps if s["phase"].endswith("dpo"))
    assert not any("rewards/margins" in s for s in steps if s["phase"].endswith("finetune"))
    # the reference is the policy as the stage started: the SFT phase has moved the policy off it
    assert steps[2]["rewards/chosen"] != 0.0


def test_spec_errors_name_the_field(data_dir: Path, prefs_file: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"stages.0.data: a preference objective needs preference records"):
        train(make_spec(data_dir, [{**preference({"type": "dpo"}), "data": "records"}]), tmp_path / "a")
    with pytest.raises(
        TrainingError, match=r"stages.0.data: a finetune objective needs supervised records, but 'prefs'"
    ):
        train(make_spec(data_dir, [{**FINETUNE, "data": "prefs"}]), tmp_path / "b")


RESUME_CASES = {
    "copy": ([PRETRAIN, preference({"type": "dpo", "label_smoothing": 0.1}, steps=6)], 5),
    "precomputed": ([PRETRAIN, preference({"type": "ipo"}, steps=6, precompute_reference=True)], 5),
    "lora": ([PRETRAIN, preference({"type": "dpo"}, steps=6, adapter={"type": "lora", "rank": 4})], 5),
    "multistep": (
        [
            PRETRAIN,
            {
                "type": "multistep",
                "name": "mix",
                "cycles": 2,
                "batch_size": 4,
                "phases": [
                    {
                        "objective": "finetune",
                        "data": "records",
                        "steps": 1,
                        "loss": {"type": "cross_entropy"},
                        "optimizer": opt(),
                    },
                    {
                        "objective": "preference",
                        "data": "prefs",
                        "steps": 2,
                        "loss": {"type": "dpo"},
                        "optimizer": opt(),
                    },
                ],
            },
        ],
        6,
    ),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_is_bitwise_exact(case: str, data_dir: Path, prefs_file: Path, tmp_path: Path) -> None:
    """Stopped mid-stage (the reference a frozen copy, precomputed log-probs, the policy with its
    adapter off, or a multistep's stage-start copy), resumed: the same steps and weights."""
    stages, stop = RESUME_CASES[case]
    spec = make_spec(data_dir, stages)
    whole = train(spec, tmp_path / "whole")
    parts = train(spec, tmp_path / "parts", stop_at=stop)
    assert parts.stopped_at == stop
    again = train(spec, tmp_path / "parts", resume=True)
    assert again.result is not None
    later = [e["data"] for e in again.events if e["type"] == "train.step"]
    want = [e["data"] for e in whole.events if e["type"] == "train.step"][stop:]
    strip = ("tokens_per_s",)
    assert [{k: v for k, v in s.items() if k not in strip} for s in later] == [
        {k: v for k, v in s.items() if k not in strip} for s in want
    ]
    assert_same_weights(whole.workdir, tmp_path / "parts")
    assert evals_of(again, "prefs")[-1] == evals_of(whole, "prefs")[-1]


def pipeline(spec: JobSpec, workdir: Path) -> Pipeline:
    p = Pipeline(spec, workdir, None, None, Path)
    p.load_data()
    p.build_model()
    return p


def test_lora_reference_is_the_policy_with_its_adapter_off(data_dir: Path, prefs_file: Path, tmp_path: Path) -> None:
    """No second copy: the reference forward runs the policy's own modules, without the adapter,
    and its log-probs are those of the base."""
    spec = make_spec(
        data_dir, [preference({"type": "dpo"}, adapter={"type": "lora", "rank": 4, "targets": ["attention", "mlp"]})]
    )
    p = pipeline(spec, tmp_path)
    p.adapters.apply(p.model, 0)
    p.prefs.enter(0, 0)
    [source] = p.prefs.sources.values()
    assert source.model is None and source.applied == []
    with torch.no_grad():  # the adapter does something: B is no longer zero
        for name, param in p.model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0.0, 0.1)
    seen: set[int] = set()
    hooks = [m.register_forward_hook(lambda m, i, o: seen.add(id(m))) for m in p.model.modules()]
    stream = p.streams["0"]
    assert isinstance(stream, PreferenceStream)
    batch = stream.batch_of([0, 1, 2])
    ref = source.logps(p.model, batch, p.autocast)
    for h in hooks:
        h.remove()
    assert len(seen) > 10  # the policy's own layers ran the reference forward
    assert all(layer.applied == ["pref"] for layer in lora.lora_layers(p.model).values())  # adapter back on
    with torch.no_grad():
        lora.apply_adapters(p.model, [])
        base = pair_logps(p.model.eval(), batch).stacked()
        lora.apply_adapters(p.model, p.adapters.names)
        adapted = pair_logps(p.model, batch).stacked()
    assert torch.equal(ref, base) and not torch.equal(ref, adapted)
    assert not [k for k in p.prefs.tensors() if k.startswith("pref/copy/")]  # no copy to checkpoint


def test_default_reference_is_one_frozen_copy_freed_when_precomputed(
    data_dir: Path, prefs_file: Path, tmp_path: Path
) -> None:
    live = pipeline(make_spec(data_dir, [preference({"type": "dpo"})]), tmp_path / "live")
    live.prefs.enter(0, 0)
    [source] = live.prefs.sources.values()
    assert source.model is not None and source.model is not live.model
    assert all(not q.requires_grad for q in source.model.parameters())
    ahead = pipeline(make_spec(data_dir, [preference({"type": "dpo"}, precompute_reference=True)]), tmp_path / "ahead")
    ahead.prefs.enter(0, 0)
    assert ahead.prefs.sources == {}  # the copy is gone once its log-probs are computed
    stream = ahead.streams["0"]
    assert isinstance(stream, PreferenceStream) and stream.ref is not None
    assert not bool(torch.isnan(stream.ref).any()) and stream.ref.shape == (len(stream.seqs), 2)
    # the precomputed log-probs are the live reference's (to rounding: other batch shapes)
    batch = stream.batch_of([3, 0, 7])
    assert batch.ref is not None
    assert torch.allclose(batch.ref, Source(model=source.model).logps(live.model, batch, live.autocast), atol=1e-4)


def test_explicit_reference_model(data_dir: Path, prefs_file: Path, tmp_path: Path) -> None:
    first = train(make_spec(data_dir, [{**PRETRAIN, "steps": 3}]), tmp_path / "base")  # another model, one tokenizer
    assert first.result is not None
    spec = make_spec(
        data_dir, [PRETRAIN, preference({"type": "dpo"}, reference={"model": str(first.result.model_dir)})]
    )
    r = train(spec, tmp_path / "run")
    steps = steps_of(r, "pref")
    assert len(steps) == 4 and steps[0]["rewards/chosen"] != 0.0  # not the policy as the stage started


def test_explicit_reference_with_another_tokenizer_is_refused(data_dir: Path, prefs_file: Path, tmp_path: Path) -> None:
    other = make_spec(data_dir, [PRETRAIN], tokenizer={"vocab_size": 400, "train_on": ["corpus"]})
    base = train(other, tmp_path / "other")
    assert base.result is not None
    spec = make_spec(data_dir, [preference({"type": "dpo"}, reference={"model": str(base.result.model_dir)})])
    with pytest.raises(TrainingError, match=r"stages.0.reference.model: .* has another tokenizer"):
        train(spec, tmp_path / "run")


def test_llama_bf16_preference_stage_resumes_exactly(data_dir: Path, prefs_file: Path, tmp_path: Path) -> None:
    spec = make_spec(
        data_dir,
        [PRETRAIN, preference({"type": "orpo"}, steps=4), preference({"type": "dpo"}, steps=3) | {"name": "pref2"}],
        model=LLAMA,
        precision="bf16",
    )
    whole = train(spec, tmp_path / "whole")
    assert whole.result is not None and len(steps_of(whole, "pref2")) == 3
    assert train(spec, tmp_path / "parts", stop_at=7).stopped_at == 7
    assert train(spec, tmp_path / "parts", resume=True).result is not None
    assert_same_weights(whole.workdir, tmp_path / "parts")


def test_checkpoint_holds_the_frozen_copy_only_while_its_stage_trains(
    data_dir: Path, prefs_file: Path, tmp_path: Path
) -> None:
    from models.training.checkpoint import list_checkpoints, load_checkpoint

    spec = make_spec(data_dir, [PRETRAIN, preference({"type": "dpo"}), FINETUNE])
    r = train(spec, tmp_path)
    assert r.result is not None
    names = {c.name: set(load_checkpoint(c)[0]) for c in list_checkpoints(tmp_path / "checkpoints")}
    copies = {n for n, keys in names.items() if any(k.startswith("pref/copy/") for k in keys)}
    assert copies == {"step-000000004", "step-000000006"}  # in the preference stage (steps 3-6), not after it
    assert all(any(k.startswith("pref/val/prefs") for k in keys) for n, keys in names.items() if n >= "step-000000004")
    assert json.loads((tmp_path / "spec.json").read_text())["stages"][1]["type"] == "preference"


def test_dpo_with_lora_on_a_chat_llama(data_dir: Path, prefs_file: Path, tmp_path: Path) -> None:
    """init_from a Llama with a chat template: pairs rendered by it, a LoRA adapter, the base as
    the reference; the run writes the adapter relative to its base."""
    pytest.importorskip("transformers")
    from tests.chat_models import save_chat_llama

    base = save_chat_llama(tmp_path / "chat")
    spec = make_spec(
        data_dir,
        [preference({"type": "dpo", "beta": 0.5}, steps=3, adapter={"type": "lora", "rank": 4, "name": "dpo"})],
        model={"init_from": {"model": str(base)}},
    )
    r = train(spec, tmp_path / "run")
    assert r.result is not None
    steps = steps_of(r, "pref")
    assert steps[0]["rewards/chosen"] == 0.0 and steps[-1]["rewards/chosen"] != 0.0
    assert (r.result.model_dir / "adapters" / "dpo" / "adapter_model.safetensors").is_file()
