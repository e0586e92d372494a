"""A LoRA run's checkpoint as a model folder: the base (kept or rebuilt) with every adapter
merged, as the run's own final model is (what serving and export of a `ckpt_…` id read)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.formats.layout import MODEL_FILE
from models.formats.load import load_model
from models.formats.native import load_tensors
from models.spec import parse_spec
from models.training.checkpoint import list_checkpoints, load_checkpoint
from models.training.export import save_checkpoint_model
from models.training.run import run
from tests.models.training.test_lora_train import base_dir as base_dir
from tests.models.training.test_lora_train import lora_spec_dict


@pytest.mark.parametrize("base", ["rebuilt", "saved"])
def test_the_last_checkpoint_exports_as_the_final_model(
    data_dir: Path,
    base_dir: Path,
    tmp_path: Path,
    base: str,
) -> None:
    raw = lora_spec_dict(data_dir, base_dir)
    if base == "saved":  # the base trains too: checkpoints hold it whole
        raw["stages"][0]["trainable"] = ["norms"]
    raw["checkpointing"] = {"every_steps": 19, "keep_last": 1}  # 19 steps: the last one is checkpointed
    spec = parse_spec(raw)
    run(spec, tmp_path / "run")
    ckpt = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    assert load_checkpoint(ckpt)[1]["base"] == base
    out = tmp_path / "exported"
    save_checkpoint_model(ckpt, tmp_path / "run" / "tokenizer", out, {"name": "c"}, spec, base_dir)
    final = load_tensors(tmp_path / "run" / "model" / MODEL_FILE)
    exported = load_tensors(out / MODEL_FILE)
    assert exported.keys() == final.keys() and not any(".lora_" in k for k in exported)
    assert all(torch.equal(exported[k], final[k]) for k in final), [
        k for k in final if not torch.equal(exported[k], final[k])
    ]
    model, _ = load_model(out)  # and it loads like any model
    assert model.num_parameters() == sum(v.numel() for v in final.values())


def test_an_adapter_the_spec_does_not_name_is_refused(data_dir: Path, base_dir: Path, tmp_path: Path) -> None:
    raw = lora_spec_dict(data_dir, base_dir)
    raw["stages"] = raw["stages"][:1]
    run(parse_spec(raw), tmp_path / "run")
    ckpt = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    raw["stages"][0]["adapter"]["name"] = "other"
    with pytest.raises(Exception, match="checkpoint adapter 'tune' is not named by its job's spec"):
        save_checkpoint_model(ckpt, tmp_path / "run" / "tokenizer", tmp_path / "x", {}, parse_spec(raw), base_dir)
