"""LoRA adapters in training: what trains, what is frozen, the merged model, exact resume."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from models.data.tokenizer import Tokenizer
from models.errors import Stopped
from models.families import FAMILIES, family
from models.formats.layout import MODEL_FILE
from models.formats.load import load_model
from models.formats.native import load_tensors, save_model
from models.formats.peft import load_adapter
from models.lora import layers as lora
from models.spec import JobSpec, parse_spec
from models.training.checkpoint import list_checkpoints, load_checkpoint
from models.training.pipeline import Pipeline
from models.training.run import run
from tests.conftest import BASE_SPEC, tiny_model

ADAPTERS = ["tune", "alpha", "beta", "shared"]


@pytest.fixture(scope="module")
def base_dir(tokenizer: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("base")
    model = tiny_model(tokenizer.vocab_size)
    save_model(d, model.state_dict(), model.config, tokenizer, {"name": "base"})
    return d


def lora_spec_dict(data_dir: Path, base_dir: Path) -> dict[str, Any]:
    raw = copy.deepcopy(BASE_SPEC)
    for ref in raw["data"].values():
        ref["dataset"] = str(data_dir / ref["dataset"])
    raw.pop("tokenizer")
    raw["model"] = {"init_from": {"model": str(base_dir)}, "dropout": 0.1}
    ft, multi = raw["stages"][1], raw["stages"][2]
    ft.update(steps=3, adapter={"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.1, "targets": ["mlp", "o"]})
    ft.pop("trainable")
    ft["name"] = "tune"
    pre, fin = multi["phases"]
    for p in (pre, fin):
        p.pop("trainable")
        p["steps"] = 2
    pre["adapter"] = {"type": "lora", "rank": 2, "targets": ["qkv"], "name": "alpha"}
    fin["adapter"] = {"type": "lora", "rank": 4, "alpha": 4, "targets": ["attention"], "name": "beta"}
    shared = {"type": "lora", "rank": 2, "targets": ["mlp"], "name": "shared", "dropout": 0.2}
    multi["phases"] = [pre, fin, {**copy.deepcopy(pre), "adapter": shared}, {**copy.deepcopy(fin), "adapter": shared}]
    raw["stages"] = [ft, multi]
    raw["checkpointing"] = {"every_steps": 3, "keep_last": 5}
    return raw


@pytest.fixture(scope="module")
def spec(data_dir: Path, base_dir: Path) -> JobSpec:
    return parse_spec(lora_spec_dict(data_dir, base_dir))  # 3 + 2 cycles * 4 phases * 2 steps = 19 steps


@pytest.fixture(scope="module")
def finished(spec: JobSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("lora-run")
    run(spec, workdir)
    return workdir


def snapshot(p: Pipeline) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in p.model.state_dict().items()}


def test_each_segment_changes_only_its_own_adapter(spec: JobSpec, tmp_path: Path) -> None:
    p = Pipeline(spec, tmp_path, None, None, Path)
    p.load_data()
    p.build_model()
    steps = p.train()
    before = snapshot(p)
    for seg in p.segments:
        for _ in range(seg.steps):
            next(steps)
        after = snapshot(p)
        changed = {k for k in after if not torch.equal(before[k], after[k])}
        own = p.adapters.of[seg.key]
        assert changed, seg.label
        assert all(k.endswith((f".lora_A.{own}", f".lora_B.{own}")) for k in changed), (seg.label, changed)
        # frozen weights have no gradients, and only the segment's adapter has optimizer state
        trained = {id(q) for q in lora.adapter_params(p.model, own)}
        for name, q in p.model.named_parameters():
            assert q.grad is None, name
            assert q.requires_grad == (id(q) in trained), name
        optimizer = p.optimizers[seg.key]
        assert {id(q) for q in optimizer.state} == trained
        before = after
    with pytest.raises(StopIteration):
        next(steps)


def test_adapters_are_applied_from_their_first_phase_on(spec: JobSpec, tmp_path: Path) -> None:
    p = Pipeline(spec, tmp_path, None, None, Path)
    p.load_data()
    p.build_model()
    layer = p.model.get_submodule("transformer.h.0.mlp.c_fc")
    assert isinstance(layer, lora.LoRALinear)
    p.adapters.apply(p.model, 0)
    assert layer.applied == ["tune"]
    p.adapters.apply(p.model, 3)  # tune, alpha, beta, shared: shared is the only other one on c_fc
    assert layer.applied == ["tune", "shared"]
    assert p.model.get_submodule("transformer.h.1.attn.c_attn").applied == ["alpha", "beta"]  # type: ignore[union-attr]


def test_the_run_writes_the_merged_model_and_each_adapter(finished: Path, base_dir: Path) -> None:
    model_dir = finished / "model"
    assert sorted(p.name for p in (model_dir / "adapters").iterdir()) == sorted(ADAPTERS)
    assert not (model_dir / "base").exists()  # the base never trained: the adapters refer to init_from
    base = load_tensors(base_dir / MODEL_FILE)
    merged = load_tensors(model_dir / MODEL_FILE)
    assert merged.keys() == base.keys()
    adapters = {n: load_adapter(model_dir / "adapters" / n) for n in ADAPTERS}
    touched = {f"{path}.weight" for a in adapters.values() for path in a.adapter.layers}
    for k in base:  # only the adapted matrices differ from the base
        assert torch.equal(base[k], merged[k]) == (k not in touched), k
    for name, loaded in adapters.items():
        assert loaded.base == str(base_dir)
        assert all(bool(b.abs().sum() > 0) for _, b in loaded.adapter.layers.values()), name
    assert adapters["beta"].adapter.scaling == 1.0 and adapters["alpha"].adapter.scaling == 8.0
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["adapters"] == ADAPTERS


def test_merged_logits_equal_base_plus_unmerged_adapters(finished: Path, base_dir: Path) -> None:
    merged, _ = load_model(finished / "model")
    base, _ = load_model(base_dir)
    for name in ADAPTERS:
        lora.attach_adapter(base, name, load_adapter(finished / "model" / "adapters" / name).adapter)
    idx = torch.randint(0, base.config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = base.eval()(idx), merged.eval()(idx)
        plain, _ = load_model(base_dir)
        assert not torch.allclose(plain.eval()(idx), got, atol=1e-3)  # the adapters do change the function
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


def test_checkpoints_hold_the_adapters_but_not_the_frozen_base(finished: Path) -> None:
    tensors, state = load_checkpoint(list_checkpoints(finished / "checkpoints")[-1])
    weights = [k for k in tensors if k.startswith("model/")]
    assert weights and all(lora.is_adapter_param(k) for k in weights)
    assert state["base"] == "rebuilt"


@pytest.mark.parametrize("stop_at", [2, 7, 14])  # mid-stage, mid-phase (cycle 1), mid-phase (cycle 2)
def test_resume_mid_phase_is_bitwise_exact(spec: JobSpec, finished: Path, tmp_path: Path, stop_at: int) -> None:
    seen = {"step": 0}

    def on_event(e: dict[str, Any]) -> None:
        if e["type"] == "train.step":
            seen["step"] = e["step"]

    with pytest.raises(Stopped):
        run(spec, tmp_path, on_event=on_event, should_stop=lambda: seen["step"] >= stop_at)
    run(spec, tmp_path, resume=True)
    for rel in [MODEL_FILE, *(f"adapters/{n}/adapter_model.safetensors" for n in ADAPTERS)]:
        a, b = load_tensors(finished / "model" / rel), load_tensors(tmp_path / "model" / rel)
        assert a.keys() == b.keys()
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], rel


def test_trainable_beside_an_adapter_trains_those_parts_too(data_dir: Path, base_dir: Path, tmp_path: Path) -> None:
    raw = lora_spec_dict(data_dir, base_dir)
    raw["stages"] = raw["stages"][:1]
    raw["stages"][0]["trainable"] = ["norms"]
    raw["stages"][0]["regularization"] = {"l1": 1e-3, "l2": 1e-2}
    spec = parse_spec(raw)
    p = Pipeline(spec, tmp_path, None, None, Path)
    p.load_data()
    p.build_model()
    trainee = p.trainee(p.segments[0])
    names = {n for n, q in p.model.named_parameters() if q.requires_grad}
    assert names and all(lora.is_adapter_param(n) or ".ln_" in n for n in names)
    assert any(".ln_" in n for n in names) and len(trainee.params) == len(names)
    run(spec, tmp_path / "run")
    assert (tmp_path / "run" / "model" / "base" / MODEL_FILE).is_file()  # the base changed: it is kept


def test_a_target_the_base_lacks_fails_the_run_with_its_field_path(
    data_dir: Path, base_dir: Path, tmp_path: Path
) -> None:
    from models.errors import TrainingError

    raw = lora_spec_dict(data_dir, base_dir)
    raw["stages"][1]["phases"][1]["adapter"]["targets"] = ["attention", "q"]
    with pytest.raises(TrainingError, match=r"stages\.1\.phases\.1\.adapter\.targets\.1: 'q' is not a projection"):
        run(parse_spec(raw), tmp_path)


class _LlamaNamed(torch.nn.Module):
    """Only the module names of a Llama-family model (the role table's llama rows)."""

    def __init__(self, width: int = 8, layers: int = 2):
        super().__init__()
        block = {
            "self_attn": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "mlp": ["gate_proj", "up_proj", "down_proj"],
        }
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList()
        for _ in range(layers):
            layer = torch.nn.Module()
            for part, names in block.items():
                sub = torch.nn.Module()
                for n in names:
                    setattr(sub, n, torch.nn.Linear(width, width, bias=False))
                setattr(layer, part, sub)
            self.model.layers.append(layer)


@pytest.mark.parametrize(
    ("targets", "adapted"),
    [
        (["attention"], ["q_proj", "k_proj", "v_proj", "o_proj"]),
        (["mlp"], ["gate_proj", "up_proj", "down_proj"]),
        (["q", "v", "down"], ["q_proj", "v_proj", "down_proj"]),
    ],
)
def test_llama_roles(targets: list[str], adapted: list[str]) -> None:
    from models.spec import AdapterSpec

    model = _LlamaNamed()
    paths = lora.add_adapter(
        model, FAMILIES["llama"].lora, "x", AdapterSpec(type="lora", rank=2, targets=targets), seed=0
    )
    layers = lora.lora_layers(model)
    assert sorted(layers) == sorted(paths) and len(paths) == 2 * len(adapted)
    assert {p.rsplit(".", 1)[1] for p in paths} == set(adapted)
    assert all(".self_attn." in p or ".mlp." in p for p in paths)


def test_llama_has_no_fused_qkv() -> None:
    from models.errors import TrainingError
    from models.spec import AdapterSpec

    with pytest.raises(TrainingError, match=r"adapter\.targets\.0: 'qkv' is not a projection of arch llama"):
        lora.add_adapter(_LlamaNamed(), FAMILIES["llama"].lora, "x", AdapterSpec(type="lora", targets=["qkv"]), seed=0)


def test_bf16_resume_with_adapters_is_bitwise_exact(data_dir: Path, base_dir: Path, tmp_path: Path) -> None:
    raw = lora_spec_dict(data_dir, base_dir)
    raw["precision"] = "bf16"
    raw["stages"][1]["cycles"] = 1
    spec = parse_spec(raw)
    run(spec, tmp_path / "whole")
    seen = {"step": 0}

    def on_event(e: dict[str, Any]) -> None:
        if e["type"] == "train.step":
            seen["step"] = e["step"]

    with pytest.raises(Stopped):
        run(spec, tmp_path / "parts", on_event=on_event, should_stop=lambda: seen["step"] >= 6)
    run(spec, tmp_path / "parts", resume=True)
    a, b = load_tensors(tmp_path / "whole/model" / MODEL_FILE), load_tensors(tmp_path / "parts/model" / MODEL_FILE)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_lora_layers_train_under_autocast(tokenizer: Tokenizer) -> None:
    """CUDA runs train under bf16 autocast with fp32 adapters; the CPU autocast takes the same path."""
    from models.spec import AdapterSpec

    model = tiny_model(tokenizer.vocab_size)
    lora.add_adapter(
        model,
        family(model.config.arch).lora,
        "a",
        AdapterSpec(type="lora", rank=4, targets=["attention", "mlp"]),
        seed=0,
    )
    lora.apply_adapters(model, ["a"])
    for n, p in model.named_parameters():
        p.requires_grad_(lora.is_adapter_param(n))
    x = torch.randint(0, tokenizer.vocab_size, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    grads = [p.grad for p in lora.adapter_params(model, "a")]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads if g is not None)


def test_a_run_written_before_adapters_existed_still_resumes(spec_dict: Any, data_dir: Path, tmp_path: Path) -> None:
    """spec.json from older code lacks the new `adapter` fields; resume reads it with their defaults."""
    raw = spec_dict(data_dir)
    raw["stages"] = raw["stages"][:1]
    spec = parse_spec(raw)
    seen = {"step": 0}

    def on_event(e: dict[str, Any]) -> None:
        if e["type"] == "train.step":
            seen["step"] = e["step"]

    with pytest.raises(Stopped):
        run(spec, tmp_path, on_event=on_event, should_stop=lambda: seen["step"] >= 4)
    stored = json.loads((tmp_path / "spec.json").read_text())
    for stage in stored["stages"]:
        del stage["adapter"]
    (tmp_path / "spec.json").write_text(json.dumps(stored))
    assert run(spec, tmp_path, resume=True).steps == 6
