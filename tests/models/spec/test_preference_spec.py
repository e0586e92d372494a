"""The preference objective's spec (models/spec/preference.py, models/spec/objectives.py): the
stage and its defaults (TRL's), phases of that objective, and every error naming its field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from models.spec import DPOLoss, MultistepStage, ORPOLoss, PreferenceStage, SimPOLoss, parse_spec
from tests.models.spec.test_spec import errors_of

DPO = {
    "type": "preference",
    "name": "dpo",
    "data": "pairs",
    "steps": 3,
    "loss": {"type": "dpo"},
    "optimizer": {"type": "adamw", "lr": 1e-5},
}


def with_stage(spec_dict: Callable[..., dict[str, Any]], *stages: dict[str, Any], **top: Any) -> dict[str, Any]:
    raw = spec_dict()
    raw["stages"] = [copy.deepcopy(s) for s in stages]
    raw.update(top)
    return raw


def test_a_preference_stage_and_its_defaults(spec_dict: Callable[..., dict[str, Any]]) -> None:
    stage = parse_spec(with_stage(spec_dict, DPO)).stages[0]
    assert isinstance(stage, PreferenceStage) and stage.objective == "preference"
    assert stage.loss == DPOLoss(type="dpo", beta=0.1, label_smoothing=0.0)
    assert stage.reference is None and stage.precompute_reference is False and stage.batch_size == 16
    simpo = parse_spec(with_stage(spec_dict, {**DPO, "loss": {"type": "simpo"}})).stages[0]
    assert simpo.loss == SimPOLoss(type="simpo", beta=0.1, gamma=0.5)
    orpo = parse_spec(with_stage(spec_dict, {**DPO, "loss": {"type": "orpo"}})).stages[0]
    assert orpo.loss == ORPOLoss(type="orpo", beta=0.1)
    full = {
        **DPO,
        "reference": {"model": "model_1"},
        "precompute_reference": True,
        "adapter": {"type": "lora"},
        "trainable": ["head"],
        "grad_clip": 1.0,
        "grad_accum": 2,
    }
    parsed = parse_spec(with_stage(spec_dict, full)).stages[0]
    assert isinstance(parsed, PreferenceStage) and parsed.reference is not None and parsed.reference.model == "model_1"


def test_a_multistep_phase_may_be_a_preference_objective(spec_dict: Callable[..., dict[str, Any]]) -> None:
    phases = [
        {
            "objective": "finetune",
            "data": "pairs",
            "steps": 1,
            "loss": {"type": "cross_entropy"},
            "optimizer": {"type": "sgd", "lr": 0.1},
        },
        {
            "objective": "preference",
            "data": "pairs",
            "steps": 1,
            "loss": {"type": "ipo", "beta": 0.5},
            "optimizer": {"type": "adam", "lr": 0.1},
            "precompute_reference": True,
        },
    ]
    stage = parse_spec(with_stage(spec_dict, {"type": "multistep", "name": "m", "cycles": 2, "phases": phases})).stages[
        0
    ]
    assert isinstance(stage, MultistepStage) and stage.phases[1].objective == "preference"


@pytest.mark.parametrize(
    ("stage", "loc", "message"),
    [
        (
            {**DPO, "loss": {"type": "causal_lm"}},
            "stages.0.loss",
            "does not match any of the expected tags: 'dpo', 'ipo', 'simpo', 'orpo'",
        ),
        ({**DPO, "loss": {"type": "dpo", "beta": 0}}, "stages.0.loss.beta", "greater than 0"),
        ({**DPO, "loss": {"type": "dpo", "label_smoothing": 0.5}}, "stages.0.loss.label_smoothing", "less than 0.5"),
        ({**DPO, "loss": {"type": "ipo", "label_smoothing": 0.1}}, "stages.0.loss.label_smoothing", "Extra inputs"),
        (
            {**DPO, "loss": {"type": "simpo"}, "reference": {"model": "m"}},
            "stages.0.reference",
            "the simpo loss reads no reference model",
        ),
        (
            {**DPO, "loss": {"type": "orpo"}, "precompute_reference": True},
            "stages.0.precompute_reference",
            "reads no reference",
        ),
        ({**DPO, "reference": {"model": ""}}, "stages.0.reference.model", "at least 1 character"),
        (
            {
                "type": "multistep",
                "name": "m",
                "cycles": 1,
                "phases": [
                    {
                        "objective": "finetune",
                        "data": "pairs",
                        "steps": 1,
                        "loss": {"type": "dpo"},
                        "optimizer": {"type": "sgd", "lr": 0.1},
                    }
                ],
            },
            "stages.0.phases.0.loss.type",
            "dpo is a preference loss: set objective: preference",
        ),
        (
            {
                "type": "multistep",
                "name": "m",
                "cycles": 1,
                "phases": [
                    {
                        "objective": "preference",
                        "data": "pairs",
                        "steps": 1,
                        "loss": {"type": "causal_lm"},
                        "optimizer": {"type": "sgd", "lr": 0.1},
                    }
                ],
            },
            "stages.0.phases.0.loss.type",
            "a preference objective takes a loss of dpo, ipo, simpo, orpo",
        ),
        (
            {
                "type": "multistep",
                "name": "m",
                "cycles": 1,
                "phases": [
                    {
                        "objective": "pretrain",
                        "data": "pairs",
                        "steps": 1,
                        "loss": {"type": "causal_lm"},
                        "optimizer": {"type": "sgd", "lr": 0.1},
                        "reference": {"model": "x"},
                    }
                ],
            },
            "stages.0.phases.0.reference",
            "only a preference objective has a reference model",
        ),
    ],
)
def test_errors_name_their_field(
    spec_dict: Callable[..., dict[str, Any]], stage: dict[str, Any], loc: str, message: str
) -> None:
    errors = errors_of(with_stage(spec_dict, stage))
    assert any(e["loc"] == loc and message in e["message"] for e in errors), errors


def test_preference_objectives_train_in_one_process(spec_dict: Callable[..., dict[str, Any]]) -> None:
    errors = errors_of(with_stage(spec_dict, {**DPO, "batch_size": 4}, resources={"processes": 2}))
    assert errors == [
        {
            "loc": "resources.processes",
            "message": "stages.0 is a preference objective, which trains in one process: set resources.processes to 1",
        }
    ]
