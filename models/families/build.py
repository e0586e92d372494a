"""The torch side of the family registry: build a family's model, lay it out for serving.

The registry (models/families/__init__.py) names each family's classes as "module:Class";
they are imported here on first use, so only code that builds a model loads torch's model
code. Everything that must not care which family it holds goes through here.
"""

from __future__ import annotations

import importlib
from typing import Any

from models.families import family
from models.families.base import DecoderModel
from models.layers.quantized import quantize
from models.layers.serving import ServingNet
from models.lora.bank import AdapterBank

Model = DecoderModel
ModelConfig = Any  # a family's config dataclass (models/families/family.py `Config`)


def _resolve(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def build_model(config: ModelConfig) -> Model:
    """A freshly initialised model of `config`'s family."""
    model: Model = _resolve(family(config.arch).model)(config)
    return model


class ServingModel(ServingNet):
    """A family's serving layout (models.layers.serving.ServingNet) with its adapter bank."""

    adapters: AdapterBank


def serving_net(model: Model, precision: str = "fp32", group_size: int = 64, layout: str = "packed") -> ServingModel:
    """`model` laid out for decoding by its family's serving class (its weights copied); with
    `precision` "int8", "int4" or "nf4", its projections weight-only quantized (models.layers.quantized;
    `group_size`: int4's). `layout`: the fp32 projections' (models.layers.projection.LAYOUTS)."""
    if precision == "fp32":
        net: ServingModel = _resolve(family(model.config.arch).serving)(model, layout=layout)
        return net
    net = _resolve(family(model.config.arch).serving)(model, layout="plain")
    quantize(net, precision, group_size)
    return net


def config_from_spec(m: Any, vocab_size: int) -> ModelConfig:
    """The config of a new model as the spec's `model` section describes it."""
    return family(m.arch).from_spec(m, vocab_size)
