"""models.training.pipeline on a 2-layer llama: every stage type runs, resume is bitwise exact
(fp32 and bf16), a checkpoint exports as a model, init_from keeps the architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.families.llama.model import Llama
from models.formats.load import load_model
from models.spec import JobSpec, parse_spec
from models.training.checkpoint import list_checkpoints
from models.training.export import save_checkpoint_model
from tests.models.training.test_pipeline import TOTAL, Run, assert_same_weights, final_tensors, train

LLAMA = {"arch": "llama", "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32, "block_size": 32}


@pytest.fixture(scope="module")
def spec(data_dir: Path) -> JobSpec:
    from tests.conftest import BASE_SPEC

    raw = json.loads(json.dumps(BASE_SPEC))
    raw["model"] = {**LLAMA, "tie_embeddings": False}
    for ref in raw["data"].values():
        ref["dataset"] = str(data_dir / ref["dataset"])
    return parse_spec(raw)


@pytest.fixture(scope="module")
def baseline(spec: JobSpec, tmp_path_factory: pytest.TempPathFactory) -> Run:
    r = train(spec, tmp_path_factory.mktemp("llama-baseline"))
    assert r.result is not None
    return r


def test_every_stage_type_trains_a_llama(baseline: Run) -> None:
    steps = [e for e in baseline.events if e["type"] == "train.step"]
    assert len(steps) == TOTAL
    assert {e["stage"]["name"] for e in steps} == {"pretrain", "finetune", "refine"}
    first, last = steps[0]["data"]["loss"], steps[5]["data"]["loss"]
    assert last < first  # pretraining reduces the loss
    model, _ = load_model(baseline.workdir / "model")
    assert isinstance(model, Llama) and model.lm_head is not None
    record = json.loads((baseline.workdir / "model" / "config.json").read_text())
    assert record["arch"] == "llama" and record["llama"]["n_kv_head"] == 2


def test_frozen_llama_parts_do_not_change(spec: JobSpec, tmp_path: Path) -> None:
    """The finetune stage trains blocks.1 and head only; stop right after it."""
    first = train(spec, tmp_path, stop_at=6)
    before = {k: v.clone() for k, v in _checkpoint_model(tmp_path).items()}
    train(spec, tmp_path, stop_at=10, resume=True)
    after = _checkpoint_model(tmp_path)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert first.stopped_at == 6
    assert changed and all(k.startswith(("model.layers.1.", "model.norm.", "lm_head.")) for k in changed), changed


def _checkpoint_model(workdir: Path) -> dict[str, torch.Tensor]:
    from models.training.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(list_checkpoints(workdir / "checkpoints")[-1])
    return {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}


@pytest.mark.parametrize("stop_at", [3, 15])
def test_llama_resume_is_bitwise_exact(spec: JobSpec, baseline: Run, tmp_path: Path, stop_at: int) -> None:
    assert train(spec, tmp_path, stop_at=stop_at).stopped_at == stop_at
    second = train(spec, tmp_path, resume=True)
    assert second.result is not None and second.result.steps == TOTAL
    base = {e["step"]: e["data"]["loss"] for e in baseline.events if e["type"] == "train.step"}
    assert {e["step"]: e["data"]["loss"] for e in second.events if e["type"] == "train.step"} == {
        s: base[s] for s in range(stop_at + 1, TOTAL + 1)
    }
    assert_same_weights(baseline.workdir, tmp_path)


def test_llama_bf16_resume_is_bitwise_exact(spec: JobSpec, tmp_path_factory: pytest.TempPathFactory) -> None:
    bf16 = spec.model_copy(update={"precision": "bf16"})
    whole = train(bf16, tmp_path_factory.mktemp("llama-bf16-whole"))
    assert whole.result is not None
    assert {t.dtype for t in final_tensors(whole.workdir).values()} == {torch.float32}
    parts = tmp_path_factory.mktemp("llama-bf16-parts")
    assert train(bf16, parts, stop_at=13).stopped_at == 13
    assert train(bf16, parts, resume=True).result is not None
    assert_same_weights(whole.workdir, parts)


def test_a_checkpoint_exports_as_the_llama_it_holds(spec: JobSpec, baseline: Run, tmp_path: Path) -> None:
    ckpt = list_checkpoints(baseline.workdir / "checkpoints")[-1]
    save_checkpoint_model(ckpt, baseline.workdir / "tokenizer", tmp_path / "m", {"name": "c"})
    model, tok = load_model(tmp_path / "m")
    assert isinstance(model, Llama)
    want = _checkpoint_model(baseline.workdir)
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    assert tok.vocab_size == model.config.vocab_size


def test_init_from_a_tied_llama_keeps_its_architecture(data_dir: Path, tmp_path: Path) -> None:
    from tests.conftest import BASE_SPEC

    raw = json.loads(json.dumps(BASE_SPEC))
    raw["model"] = LLAMA
    raw["stages"] = raw["stages"][:1]
    for ref in raw["data"].values():
        ref["dataset"] = str(data_dir / ref["dataset"])
    base = train(parse_spec(raw), tmp_path / "base")
    assert base.result is not None
    raw2 = {**raw, "model": {"init_from": {"model": str(tmp_path / "base" / "model")}}}
    raw2.pop("tokenizer")
    again = train(parse_spec(raw2), tmp_path / "again")
    assert again.result is not None
    model, _ = load_model(tmp_path / "again" / "model")
    assert isinstance(model, Llama) and model.lm_head is None and model.config.n_kv_head == 2
