"""Weights are checked finite where they come in (models/formats/finite.py): a PEFT adapter with a
NaN or an infinity in a tensor or in lora_alpha, a model folder with one, and what a finished
run writes (its adapters and its merged model) are refused naming the tensor or the field."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.data.tokenizer import Tokenizer
from models.errors import AdapterError, TrainingError, UnsupportedModel
from models.families import FAMILIES
from models.formats.finite import CHUNK, non_finite
from models.formats.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MODEL_FILE
from models.formats.load import load_model
from models.formats.native import save_model
from models.formats.peft import load_adapter, save_adapter
from models.lora import layers as lora
from models.spec import AdapterSpec, parse_spec
from models.training.adapters import RunAdapters
from models.training.final import write_model
from tests.conftest import BASE_SPEC, tiny_model

SPEC = AdapterSpec(type="lora", rank=2, alpha=4, targets=["attention"])


def with_adapter(tokenizer: Tokenizer) -> torch.nn.Module:
    model = tiny_model(tokenizer.vocab_size)
    lora.add_adapter(model, FAMILIES["gpt"].lora, "a", SPEC, seed=0)
    return model


def test_non_finite_finds_the_tensor_and_counts_its_values() -> None:
    big = torch.zeros(CHUNK + 10)
    big[-3:] = torch.tensor([math.nan, math.inf, -math.inf])  # in the second chunk
    tensors = [
        ("ids", torch.tensor([1, 2])),
        ("fine", torch.ones(3)),
        ("big", big),
        ("later", torch.full((2,), math.nan)),
    ]
    assert non_finite(tensors) == ("big", 3)
    assert non_finite(tensors[:2]) is None


def test_an_adapter_with_a_nan_tensor_or_alpha_is_refused(tokenizer: Tokenizer, tmp_path: Path) -> None:
    adapter = lora.extract(with_adapter(tokenizer), "a")
    save_adapter(tmp_path / "ok", adapter)
    assert load_adapter(tmp_path / "ok").adapter.scaling == 2.0
    for kind, value in [
        ("tensor", math.nan),
        ("tensor", -math.inf),
        ("lora_alpha", math.nan),
        ("lora_alpha", math.inf),
    ]:
        d = tmp_path / f"{kind}-{value}"
        save_adapter(d, adapter)
        if kind == "tensor":
            tensors = load_file(d / ADAPTER_WEIGHTS)
            key = sorted(tensors)[1]
            tensors[key][0, 0] = value
            save_file(tensors, d / ADAPTER_WEIGHTS)
            match = f"tensor '{key}' holds 1 non-finite value"
        else:
            config = json.loads((d / ADAPTER_CONFIG).read_text())
            (d / ADAPTER_CONFIG).write_text(json.dumps({**config, "lora_alpha": value}))
            match = f"lora_alpha: expected a positive number, got {value}"
        with pytest.raises(AdapterError, match=match):
            load_adapter(d)


def test_a_model_with_an_infinite_weight_does_not_load(tokenizer: Tokenizer, tmp_path: Path) -> None:
    model = tiny_model(tokenizer.vocab_size)
    save_model(tmp_path / "m", model.state_dict(), model.config, tokenizer, {"name": "m"})
    load_model(tmp_path / "m")
    tensors = load_file(tmp_path / "m" / MODEL_FILE)
    tensors["transformer.h.1.mlp.c_proj.weight"][3, 4] = math.inf
    save_file(tensors, tmp_path / "m" / MODEL_FILE)
    with pytest.raises(UnsupportedModel, match=r"tensor 'transformer\.h\.1\.mlp\.c_proj\.weight' holds 1 non-finite"):
        load_model(tmp_path / "m")


def test_a_run_that_produced_non_finite_weights_fails_naming_the_tensor(tokenizer: Tokenizer, tmp_path: Path) -> None:
    model = with_adapter(tokenizer)
    adapters = RunAdapters(parse_spec(copy.deepcopy(BASE_SPEC)), [])
    adapters.of = {"stage 0": "a"}  # the run trained adapter "a"

    def write(state: dict[str, torch.Tensor], out: Path) -> None:
        write_model(out, "tiny", model, state, tokenizer, None, adapters, 6, {})

    write(model.state_dict(), tmp_path / "ok")
    assert (tmp_path / "ok" / MODEL_FILE).is_file()
    key = "transformer.h.0.attn.c_attn.lora_B.a"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state[key][0, 0] = math.nan
    with pytest.raises(
        TrainingError, match=r"adapter 'a': tensor 'transformer\.h\.0\.attn\.c_attn\.lora_B' holds 1"
    ) as e:
        write(state, tmp_path / "nan-adapter")
    assert e.value.code == "user_error" and not (tmp_path / "nan-adapter").exists()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["transformer.ln_f.bias"][0] = math.inf
    with pytest.raises(TrainingError, match=r"the trained model: tensor 'transformer\.ln_f\.bias' holds 1 non-finite"):
        write(state, tmp_path / "inf-base")
