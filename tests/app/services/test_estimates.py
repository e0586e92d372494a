"""app/services/estimates.py: tokens and FLOPs of a spec, the preference objective's pairs and
the reference model's extra forward passes among them (6 FLOPs a parameter a trained token,
2 a token the frozen reference reads)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from app.services.estimates import estimate
from models.spec import parse_spec, training_block
from tests.models.spec.test_preference_spec import DPO

PREFERENCE = {**DPO, "batch_size": 4, "grad_accum": 2}  # 3 steps


def one_stage(spec_dict: Callable[..., dict[str, Any]], stage: dict[str, Any]) -> Any:
    raw = spec_dict()
    raw["stages"] = [copy.deepcopy(stage)]
    return parse_spec(raw)


@pytest.mark.parametrize(
    "change, reference_reads",
    [
        ({}, True),  # a live frozen copy reads chosen and rejected at every step
        ({"loss": {"type": "ipo"}}, True),
        ({"precompute_reference": True}, False),  # read once per pair before the stage: not per step
        ({"loss": {"type": "simpo"}}, False),  # reference-free losses
        ({"loss": {"type": "orpo"}}, False),
    ],
)
def test_a_preference_stage_counts_pairs_and_its_reference(
    spec_dict: Callable[..., dict[str, Any]], change: dict[str, Any], reference_reads: bool
) -> None:
    spec = one_stage(spec_dict, {**PREFERENCE, **change})
    got = estimate(spec)
    block = training_block(spec.model, spec.model.block_size)
    trained = 3 * 4 * 2 * 2 * block  # steps × batch × grad_accum × (chosen, rejected) × block
    assert got.tokens == trained and got.total_steps == 3
    reference = trained if reference_reads else 0
    assert got.flops == pytest.approx(6.0 * got.parameters * trained + 2.0 * got.parameters * reference)


def test_a_supervised_stage_has_no_reference(spec_dict: Callable[..., dict[str, Any]]) -> None:
    spec = parse_spec(spec_dict())
    got = estimate(spec)
    assert got.flops == pytest.approx(6.0 * got.parameters * got.tokens) and got.tokens > 0
