"""PEFT interop against peft itself: our adapters load in peft on the transformers export of
the base with the same logits, and peft-made adapters give the same logits here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.data.tokenizer import Tokenizer
from models.errors import AdapterError
from models.families import family
from models.families.gpt.model import GPT
from models.formats.hf.directory import to_hf
from models.formats.load import load_model
from models.formats.native import save_model
from models.formats.peft import load_adapter, merge_adapter, save_adapter
from models.lora import layers as lora
from models.spec import AdapterSpec
from tests.conftest import tiny_model

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

# peft 0.21 still reads transformers' deprecated alias; the warning is theirs, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture
def base(tokenizer: Tokenizer, tmp_path: Path) -> tuple[GPT, Path, Path]:
    """Our tiny GPT, its model directory and its transformers export."""
    model = tiny_model(tokenizer.vocab_size)
    ours, hf = tmp_path / "ours", tmp_path / "hf"
    save_model(ours, model.state_dict(), model.config, tokenizer, {"name": "base"})
    to_hf(ours, hf)
    return model, ours, hf


def trained_looking(model: GPT, name: str, spec: AdapterSpec) -> lora.Adapter:
    """An adapter whose B is not zero (as after training), so it changes the logits."""
    lora.add_adapter(model, family(model.config.arch).lora, name, spec, seed=3)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in lora.adapter_params(model, name):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return lora.extract(model, name)


def idx(model: GPT) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))


def hf_logits(hf_model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_model.eval()(input_ids=x).logits


@pytest.mark.parametrize("targets", [["attention"], ["attention", "mlp"], ["o", "fc"]])
def test_our_adapter_loads_in_peft_with_the_same_logits(
    base: tuple[GPT, Path, Path], tmp_path: Path, targets: list[str]
) -> None:
    model, _, hf = base
    spec = AdapterSpec(type="lora", rank=4, alpha=8, targets=targets)
    adapter = trained_looking(model, "a", spec)
    lora.apply_adapters(model, ["a"])
    save_adapter(tmp_path / "adapter", adapter, base=str(hf))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    x = idx(model)
    plain = hf_logits(hf_model, x)
    with_peft = peft.PeftModel.from_pretrained(hf_model, tmp_path / "adapter")
    want = hf_logits(with_peft, x)
    with torch.no_grad():
        got = model.eval()(x)
    assert not torch.allclose(plain, want, atol=1e-3)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    # peft adapted exactly the layers we did, no more
    adapted = {n.removeprefix("base_model.model.") for n, m in with_peft.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(adapter.layers)


@pytest.mark.parametrize("rslora", [False, True])
def test_a_peft_made_adapter_gives_the_same_logits_here(
    base: tuple[GPT, Path, Path], tmp_path: Path, rslora: bool
) -> None:
    model, _, hf = base
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=6,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
        init_lora_weights=False,  # B random too, so the adapter matters
        use_rslora=rslora,
        task_type="CAUSAL_LM",
    )
    with_peft = peft.get_peft_model(hf_model, config)
    with_peft.save_pretrained(tmp_path / "made-by-peft")
    x = idx(model)
    want = hf_logits(with_peft, x)
    loaded = load_adapter(tmp_path / "made-by-peft")
    assert loaded.arch == "gpt" and len(loaded.adapter.layers) == 2 * 4
    unmerged = tiny_model(model.config.vocab_size)
    lora.attach_adapter(unmerged, "p", loaded.adapter)
    merge_adapter(model, loaded.adapter)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), want, rtol=0, atol=2e-5)
        torch.testing.assert_close(unmerged.eval()(x), want, rtol=0, atol=2e-5)


def test_pickled_adapter_weights_are_refused(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04not read")
    with pytest.raises(AdapterError, match=r"adapter_model\.bin is not read"):
        load_adapter(tmp_path)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"peft_type": "IA3", "r": 4, "lora_alpha": 8}, "peft_type"),
        ({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True}, "use_dora: DoRA"),
        ({"peft_type": "LORA", "r": 0, "lora_alpha": 8}, "r: expected a positive number"),
        ({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "bias": "all"}, "bias"),
        ({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "modules_to_save": ["lm_head"]}, "modules_to_save"),
    ],
)
def test_unsupported_adapter_configs_are_refused(tmp_path: Path, config: dict[str, object], message: str) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match=message):
        load_adapter(tmp_path)


def test_an_adapter_for_another_shape_is_refused(base: tuple[GPT, Path, Path], tmp_path: Path) -> None:
    model, _, _ = base
    adapter = trained_looking(model, "a", AdapterSpec(type="lora", rank=2, targets=["mlp"]))
    save_adapter(tmp_path / "a", adapter)
    wide = tiny_model(model.config.vocab_size, n_embd=64)
    with pytest.raises(AdapterError, match=r"transformer\.h\.0\.mlp\.c_fc: adapter is 128x32"):
        merge_adapter(wide, load_adapter(tmp_path / "a").adapter)


def test_an_adapter_with_its_base_loads_as_a_model(base: tuple[GPT, Path, Path], tmp_path: Path) -> None:
    """What init_from and POST /v1/models get for an adapter: the base with it merged."""
    model, ours, hf = base
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_fc"], init_lora_weights=False, fan_in_fan_out=True)
    with_peft = peft.get_peft_model(hf_model, config)
    with_peft.save_pretrained(tmp_path / "a")
    with pytest.raises(AdapterError, match="no base_path"):
        load_model(tmp_path / "a")
    (tmp_path / "a" / "stagecraft.json").write_text(json.dumps({"base_path": str(ours)}))
    loaded, tok = load_model(tmp_path / "a")
    x = idx(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), hf_logits(with_peft, x), rtol=0, atol=2e-5)
    assert tok.vocab_size == model.config.vocab_size


def test_adapter_gradients_match_peft(base: tuple[GPT, Path, Path], tmp_path: Path) -> None:
    """The training path (LoRALinear, its in-place low-rank update) gives peft's gradients."""
    model, _, hf = base
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True, init_lora_weights=False
    )
    with_peft = peft.get_peft_model(hf_model, config)
    with_peft.save_pretrained(tmp_path / "p")
    lora.attach_adapter(model, "p", load_adapter(tmp_path / "p").adapter)
    for n, p in model.named_parameters():
        p.requires_grad_(lora.is_adapter_param(n))  # a frozen base, as in training
    x = idx(model)
    probe = torch.randn(2, 16, model.config.vocab_size, generator=torch.Generator().manual_seed(9))
    (model.eval()(x) * probe).sum().backward()
    (with_peft.eval()(input_ids=x).logits * probe).sum().backward()
    theirs = {n: p.grad for n, p in with_peft.named_parameters() if p.grad is not None}
    compared = 0
    for path, layer in lora.lora_layers(model).items():
        for kind in ("lora_A", "lora_B"):
            ours = getattr(layer, kind)["p"].grad
            want = theirs[f"base_model.model.{path}.{kind}.default.weight"]
            torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-5)
            compared += 1
    assert compared == 2 * 4 * 2
    assert all(p.grad is None for n, p in model.named_parameters() if not lora.is_adapter_param(n))
