"""The family registry: each family's torch-free declarations agree with its torch model."""

from __future__ import annotations

import pytest
import torch

from models.families import FAMILIES, family
from models.families.build import build_model, serving_net
from models.spec import parse_spec

SPECS = {
    "gpt": {"arch": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16},
    "llama": {"arch": "llama", "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32, "block_size": 16},
}
VARIANTS = [
    ("gpt", {}),
    ("llama", {}),
    ("llama", {"attention_bias": True}),
    ("llama", {"qk_norm": True, "head_dim": 12}),
    ("llama", {"tie_embeddings": False, "intermediate_size": 40}),
]


def _config(arch: str, extra: dict[str, object]) -> object:
    raw = {
        "name": "t",
        "model": {**SPECS[arch], **extra},
        "tokenizer": {"vocab_size": 300, "train_on": ["d"]},
        "data": {"d": {"dataset": "x.txt"}},
        "stages": [{"type": "pretrain", "name": "p", "data": "d", "steps": 1,
                    "loss": {"type": "causal_lm"}, "optimizer": {"type": "sgd", "lr": 0.1}}],
    }  # fmt: skip
    spec = parse_spec(raw)
    return family(arch).from_spec(spec.model, 300)


@pytest.mark.parametrize(("arch", "extra"), VARIANTS)
def test_the_torch_free_parameter_count_is_the_built_model_s(arch: str, extra: dict[str, object]) -> None:
    config = _config(arch, extra)
    model = build_model(config)
    assert type(model).__name__ == family(arch).model.split(":")[1]
    assert config.num_parameters() == sum(p.numel() for p in model.parameters())  # type: ignore[attr-defined]


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_every_part_block_and_lora_projection_names_real_parameters(arch: str) -> None:
    f = family(arch)
    model = build_model(_config(arch, {}))
    names = {n for n, _ in model.named_parameters()}
    modules = {n for n, _ in model.named_modules()}
    for part, selects in f.parts.items():
        assert any(selects(n, names) for n in names), f"{arch}: `{part}` selects nothing"
    assert {int(m.group(1)) for n in names if (m := f.blocks.match(n))} == {0, 1}
    for path in f.lora.module_paths(2, ["attention", "mlp"]):
        assert path in modules and isinstance(model.get_submodule(path), torch.nn.Linear), path
    net = serving_net(model)
    assert type(net).__name__ == f.serving.split(":")[1]


def test_an_unknown_arch_names_the_known_families() -> None:
    with pytest.raises(ValueError, match="known: gpt, llama"):
        family("mamba")


def test_the_registry_the_spec_and_the_service_checks_load_without_torch() -> None:
    """The API process validates specs, sizes models and reads headers without importing torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import models.families, models.spec, models.formats.layout\n"
        "import app.services.estimates, app.services.model_checks\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
