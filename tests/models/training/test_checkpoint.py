"""models.training.checkpoint: optimizer state without pickle round-trips exactly; atomic dirs; keep_last."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from models.data.streams import TextStream
from models.data.tokenizer import Tokenizer
from models.families.gpt.model import GPT
from models.files import write_atomic
from models.formats.load import load_model
from models.formats.native import load_config, save_model
from models.spec import SGD, Adam, CausalLMLoss
from models.training.checkpoint import (
    checkpoint_dir,
    join_optimizer_state,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    split_optimizer_state,
)
from models.training.losses import causal_lm
from models.training.optim import build_optimizer, select_trainable
from tests.conftest import corpus_texts, tiny_model

OPTIMIZERS = [
    Adam(type="adamw", lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1),
    Adam(type="adam", lr=1e-2),
    SGD(type="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    SGD(type="sgd", lr=0.1),  # no momentum: state entries are None
]


def steps(model: GPT, opt: torch.optim.Optimizer, stream: TextStream, n: int) -> None:
    for _ in range(n):
        causal_lm(model, stream.next_batch(2), CausalLMLoss(type="causal_lm")).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("spec", OPTIMIZERS, ids=lambda s: f"{s.type}-{getattr(s, 'momentum', '')}")
def test_optimizer_state_roundtrip_behaves_identically(tmp_path: Path, tokenizer: Tokenizer, spec: SGD | Adam) -> None:
    model = tiny_model(tokenizer.vocab_size)
    params = select_trainable(model, ["blocks.1", "head"])
    opt = build_optimizer(spec, params)
    stream = TextStream(corpus_texts(40), tokenizer, 32, seed=0, key="c")
    steps(model, opt, stream, 3)

    tensors, meta = split_optimizer_state("opt/1", opt.state_dict())
    assert all(k.startswith("opt/1/") for k in tensors)
    assert bool(tensors) == (getattr(spec, "momentum", 1.0) > 0)
    model_tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    path = save_checkpoint(tmp_path, 3, {**model_tensors, **tensors}, {"optimizers": {"1": meta}}, keep_last=2)
    loaded, state = load_checkpoint(path)  # through safetensors and JSON (tuples become lists)

    twin = tiny_model(tokenizer.vocab_size, seed=123)
    twin.load_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("model/")})
    twin_opt = build_optimizer(spec, select_trainable(twin, ["blocks.1", "head"]))
    twin_opt.load_state_dict(join_optimizer_state("opt/1", loaded, state["optimizers"]["1"]))
    twin_stream = copy.deepcopy(stream)

    steps(model, opt, stream, 3)
    steps(twin, twin_opt, twin_stream, 3)
    for (n, a), (_, b) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    if isinstance(spec, Adam):
        assert all(int(s["step"]) == 6 for s in twin_opt.state.values())


def test_join_ignores_other_prefixes_and_keeps_plain_values() -> None:
    sd = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}, 1: {"momentum_buffer": None}},
        "param_groups": [{"lr": 0.1, "params": [0, 1], "betas": (0.9, 0.99)}],
    }
    tensors, meta = split_optimizer_state("opt/2.p0", sd)
    assert set(tensors) == {"opt/2.p0/0/step", "opt/2.p0/0/exp_avg"}
    assert meta["plain"] == {"1": {"momentum_buffer": None}}
    other = {"opt/2.p1/0/step": torch.tensor(9.0), "model/x": torch.zeros(1)}
    joined = join_optimizer_state("opt/2.p0", {**tensors, **other}, meta)
    assert set(joined["state"]) == {0, 1}
    assert torch.equal(joined["state"][0]["step"], torch.tensor(3.0))
    assert joined["state"][1] == {"momentum_buffer": None}
    assert joined["param_groups"] == sd["param_groups"]


def test_keep_last_prunes_oldest(tmp_path: Path) -> None:
    t = {"x": torch.arange(3)}
    for step in (4, 8, 12, 16, 20):
        save_checkpoint(tmp_path, step, t, {"step": step}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000016", "step-000000020"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000016", "step-000000020"]
    save_checkpoint(tmp_path, 24, t, {"step": 24}, keep_last=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000016", "step-000000020", "step-000000024"]
    # sorted numerically even past a digit boundary
    save_checkpoint(tmp_path, 100, t, {"step": 100}, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000100"]


def test_no_partial_dirs_or_temp_files_are_left(tmp_path: Path) -> None:
    # a crash while writing step 8 left a partial dir; the next save of step 8 replaces it
    stale = tmp_path / ".step-000000008.partial"
    stale.mkdir(parents=True)
    (stale / "tensors.safetensors").write_bytes(b"garbage")
    save_checkpoint(tmp_path, 4, {"x": torch.ones(2)}, {"a": 1}, keep_last=5)
    path = save_checkpoint(tmp_path, 8, {"x": torch.zeros(2)}, {"a": 2}, keep_last=5)
    assert path == checkpoint_dir(tmp_path, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000004", "step-000000008"]
    for d in list_checkpoints(tmp_path):
        assert sorted(p.name for p in d.iterdir()) == ["state.json", "tensors.safetensors"]
    tensors, state = load_checkpoint(path)
    assert torch.equal(tensors["x"], torch.zeros(2)) and state == {"a": 2}
    # saving a step again overwrites it completely
    save_checkpoint(tmp_path, 8, {"y": torch.ones(1)}, {"a": 3}, keep_last=5)
    tensors, state = load_checkpoint(path)
    assert set(tensors) == {"y"} and state == {"a": 3}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_atomic_replaces_without_temp_leftovers(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    write_atomic(f, b"one")
    write_atomic(f, b"two")
    assert f.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_list_checkpoints_of_missing_root(tmp_path: Path) -> None:
    assert list_checkpoints(tmp_path / "nope") == []


def test_model_directory_roundtrip(tmp_path: Path, tokenizer: Tokenizer, model: GPT) -> None:
    save_model(tmp_path / "m", model.state_dict(), model.config, tokenizer, {"name": "x", "steps": 3})
    config = load_config(tmp_path / "m")
    assert config["format"] == "stagecraft-gpt" and config["steps"] == 3
    assert config["gpt"] == model.config.to_dict()
    loaded, tok = load_model(tmp_path / "m")
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert tok.encode("At the market") == tokenizer.encode("At the market")
    assert tok.eos_id == tokenizer.eos_id and tok.vocab_size == tokenizer.vocab_size
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path)
