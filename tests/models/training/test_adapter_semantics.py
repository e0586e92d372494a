"""One reading of `trainable` beside an adapter, whatever way the spec came: written by hand
(`stagecraft train`), or stored with its defaults filled in and read back (the API stores
`spec.model_dump()`, the worker parses it). An adapter stage freezes the base unless the
stage names `trainable` itself; runs written by older code (`trainable: [all]` filled in)
still resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from models.data.tokenizer import Tokenizer
from models.errors import Stopped
from models.formats.layout import MODEL_FILE
from models.formats.native import load_tensors, save_model
from models.spec import JobSpec, parse_spec
from models.training.pipeline import Pipeline
from models.training.run import run, same_spec
from tests.conftest import BASE_SPEC, tiny_model

ADAPTER = {"type": "lora", "rank": 4, "alpha": 8, "targets": ["attention"], "name": "tune"}


@pytest.fixture(scope="module")
def base_dir(tokenizer: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("base")
    model = tiny_model(tokenizer.vocab_size)
    save_model(d, model.state_dict(), model.config, tokenizer, {"name": "base"})
    return d


def adapter_spec(data_dir: Path, base_dir: Path, **stage: Any) -> dict[str, Any]:
    """One finetune stage with an adapter on `base_dir`, `trainable` left out."""
    raw: dict[str, Any] = json.loads(json.dumps(BASE_SPEC))
    for ref in raw["data"].values():
        ref["dataset"] = str(data_dir / ref["dataset"])
    raw.pop("tokenizer")
    raw["model"] = {"init_from": {"model": str(base_dir)}, "dropout": 0.0}
    ft = raw["stages"][1]
    ft.pop("trainable", None)
    ft.update({"steps": 4, "adapter": dict(ADAPTER), **stage})
    raw["stages"] = [ft]
    raw["evaluation"] = {"every_steps": 100, "metrics": ["loss"], "max_samples": 0}
    raw["checkpointing"] = {"every_steps": 2, "keep_last": 5}
    raw["precision"], raw["device"] = "fp32", "cpu"
    return raw


def stored(spec: JobSpec) -> JobSpec:
    """The spec as the service keeps it (defaults filled in, JSON) and its worker reads it."""
    return parse_spec(json.loads(json.dumps(spec.model_dump(mode="json"))))


def trained_names(spec: JobSpec, tmp_path: Path) -> tuple[set[str], set[str]]:
    """(the parameters the spec's one stage trains, every base parameter)."""
    p = Pipeline(spec, tmp_path, None, None, Path)
    p.load_data()
    p.build_model()
    p.trainee(p.segments[0])
    names = {n for n, q in p.model.named_parameters() if q.requires_grad}
    return names, {n for n, _ in p.model.named_parameters() if ".lora_" not in n}


HEAD = {"transformer.wte.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"}  # the tied head


@pytest.mark.parametrize("trainable", [None, ["head"], ["all"]])
def test_written_and_stored_specs_train_the_same_parameters(
    data_dir: Path, base_dir: Path, tmp_path: Path, trainable: list[str] | None
) -> None:
    extra = {} if trainable is None else {"trainable": trainable}
    written = parse_spec(adapter_spec(data_dir, base_dir, **extra))
    kept = stored(written)
    assert kept.model_dump(mode="json") == written.model_dump(mode="json")
    assert kept.stages[0].trainable == trainable  # null is what the service stores and returns
    names, every = trained_names(written, tmp_path / "written")
    assert trained_names(kept, tmp_path / "stored")[0] == names
    adapter = {n for n in names if ".lora_" in n}
    assert adapter and all(n.endswith(".tune") for n in adapter)
    want = {"head": HEAD, "all": every}[trainable[0]] if trainable else set()
    assert names - adapter == want


def test_an_explicit_null_reads_as_left_out(data_dir: Path, base_dir: Path) -> None:
    left_out = parse_spec(adapter_spec(data_dir, base_dir))
    null = parse_spec(adapter_spec(data_dir, base_dir, trainable=None))
    assert null == left_out and null.stages[0].base_parts == []
    plain = parse_spec(adapter_spec(data_dir, base_dir, adapter=None))
    assert plain.stages[0].trainable is None and plain.stages[0].base_parts == ["all"]  # no adapter: all


def test_the_stored_spec_trains_bit_for_bit_what_the_written_one_does(
    data_dir: Path, base_dir: Path, tmp_path: Path
) -> None:
    written = parse_spec(adapter_spec(data_dir, base_dir))
    run(written, tmp_path / "written")
    run(stored(written), tmp_path / "stored")
    for rel in (MODEL_FILE, "adapters/tune/adapter_model.safetensors"):
        a, b = load_tensors(tmp_path / "written" / "model" / rel), load_tensors(tmp_path / "stored" / "model" / rel)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
    for side in ("written", "stored"):
        assert not (tmp_path / side / "model" / "base").exists()  # the base never trained
    base, merged = load_tensors(base_dir / MODEL_FILE), load_tensors(tmp_path / "stored" / "model" / MODEL_FILE)
    unchanged = {k for k in base if torch.equal(base[k], merged[k])}
    assert unchanged and all(".attn." in k for k in set(base) - unchanged)  # only adapted projections moved


def test_a_run_whose_spec_json_has_the_old_filled_in_default_still_resumes(
    data_dir: Path, base_dir: Path, tmp_path: Path
) -> None:
    """Older code wrote `trainable: [all]` where the spec left it out (and froze the base
    anyway for a local run): that run resumes, and ends with the uninterrupted run's weights."""
    spec = parse_spec(adapter_spec(data_dir, base_dir))
    run(spec, tmp_path / "whole")
    seen = {"step": 0}

    def on_event(e: dict[str, Any]) -> None:
        if e["type"] == "train.step":
            seen["step"] = e["step"]

    work = tmp_path / "resumed"
    with pytest.raises(Stopped):
        run(spec, work, on_event=on_event, should_stop=lambda: seen["step"] >= 2)
    old = json.loads((work / "spec.json").read_text())
    assert old["stages"][0]["trainable"] is None
    old["stages"][0]["trainable"] = ["all"]
    (work / "spec.json").write_text(json.dumps(old))
    assert same_spec(work / "spec.json", spec)
    # ... but a spec that now names [all] itself means something else: not the same run
    assert not same_spec(work / "spec.json", parse_spec(adapter_spec(data_dir, base_dir, trainable=["head"])))
    run(spec, work, resume=True)
    for rel in (MODEL_FILE, "adapters/tune/adapter_model.safetensors"):
        a, b = load_tensors(tmp_path / "whole" / "model" / rel), load_tensors(work / "model" / rel)
        assert all(torch.equal(a[k], b[k]) for k in a), rel


def test_a_new_spec_json_does_not_match_an_explicit_all(data_dir: Path, base_dir: Path, tmp_path: Path) -> None:
    """`trainable: [all]` beside an adapter trains the base: not the run of a spec that leaves it out."""
    left_out = parse_spec(adapter_spec(data_dir, base_dir))
    (tmp_path / "spec.json").write_text(json.dumps(left_out.model_dump(mode="json")))
    assert same_spec(tmp_path / "spec.json", left_out)
    assert not same_spec(tmp_path / "spec.json", parse_spec(adapter_spec(data_dir, base_dir, trainable=["all"])))
