"""Every bad adapter spec is refused with its field path."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from models.errors import SpecError
from models.spec import adapter_name, parse_spec

GOOD = {"type": "lora", "rank": 8, "alpha": 16, "dropout": 0.05, "targets": ["attention", "mlp"]}


def with_adapters(base: dict[str, Any], stage: Any = None, phases: list[Any] | None = None) -> dict[str, Any]:
    raw = copy.deepcopy(base)
    if stage is not None:
        raw["stages"][1]["adapter"] = stage
    for j, a in enumerate(phases or []):
        if a is not None:
            raw["stages"][2]["phases"][j]["adapter"] = a
    return raw


def errors(raw: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(SpecError) as exc:
        parse_spec(raw)
    return exc.value.errors


@pytest.mark.parametrize(
    ("adapter", "loc", "message"),
    [
        ({**GOOD, "type": "ia3"}, "stages.1.adapter.type", "Input should be 'lora'"),
        ({**GOOD, "rank": 0}, "stages.1.adapter.rank", "greater than or equal to 1"),
        ({**GOOD, "rank": 513}, "stages.1.adapter.rank", "less than or equal to 512"),
        ({**GOOD, "rank": True}, "stages.1.adapter.rank", "valid integer"),
        ({**GOOD, "rank": 4.5}, "stages.1.adapter.rank", "valid integer"),
        ({**GOOD, "alpha": 0}, "stages.1.adapter.alpha", "greater than 0"),
        ({**GOOD, "alpha": 5000}, "stages.1.adapter.alpha", "less than or equal to 4096"),
        ({**GOOD, "alpha": "x"}, "stages.1.adapter.alpha", "valid number"),
        ({**GOOD, "dropout": 1.0}, "stages.1.adapter.dropout", "less than 1"),
        ({**GOOD, "dropout": -0.1}, "stages.1.adapter.dropout", "greater than or equal to 0"),
        ({**GOOD, "targets": []}, "stages.1.adapter.targets", "at least 1 item"),
        ({**GOOD, "targets": ["attention", "lm_head"]}, "stages.1.adapter.targets.1", "should match pattern"),
        ({**GOOD, "targets": "attention"}, "stages.1.adapter.targets", "valid list"),
        ({**GOOD, "name": "has space"}, "stages.1.adapter.name", "should match pattern"),
        ({**GOOD, "name": "a.b"}, "stages.1.adapter.name", "should match pattern"),
        ({**GOOD, "rnak": 4}, "stages.1.adapter.rnak", "Extra inputs are not permitted"),
        ({k: v for k, v in GOOD.items() if k != "type"}, "stages.1.adapter.type", "Field required"),
        ("lora", "stages.1.adapter", "valid dictionary"),
    ],
)
def test_bad_adapter_fields(spec_dict: Callable[..., dict[str, Any]], adapter: Any, loc: str, message: str) -> None:
    found = errors(with_adapters(spec_dict(), stage=adapter))
    assert any(e["loc"] == loc and message in e["message"] for e in found), found


@pytest.mark.parametrize(
    ("target", "hint"),
    [("q", "use 'qkv'"), ("k", "use 'qkv'"), ("gate", "choose from attention, mlp, qkv, o, fc, proj")],
)
def test_a_projection_the_arch_lacks_is_refused(
    spec_dict: Callable[..., dict[str, Any]], target: str, hint: str
) -> None:
    found = errors(with_adapters(spec_dict(), phases=[None, {**GOOD, "targets": ["mlp", target]}]))
    assert [e["loc"] for e in found] == ["stages.2.phases.1.adapter.targets.1"]
    assert f"'{target}' is not a projection of arch gpt" in found[0]["message"] and hint in found[0]["message"]


def test_a_shared_adapter_must_agree_everywhere(spec_dict: Callable[..., dict[str, Any]]) -> None:
    one = {**GOOD, "name": "shared"}
    other = {**one, "rank": 4, "targets": ["mlp"]}
    found = errors(with_adapters(spec_dict(), stage=one, phases=[None, other]))
    assert {e["loc"] for e in found} == {"stages.2.phases.1.adapter.rank", "stages.2.phases.1.adapter.targets"}
    assert "shared with stages.1.adapter, which has rank 8" in found[0]["message"]


def test_adapter_names_default_to_their_stage_or_phase(spec_dict: Callable[..., dict[str, Any]]) -> None:
    spec = parse_spec(with_adapters(spec_dict(), stage=GOOD, phases=[GOOD, {**GOOD, "name": "mine"}]))
    assert adapter_name(spec.stages[1], None) == "finetune"
    assert adapter_name(spec.stages[2], 0) == "refine-p0"
    assert adapter_name(spec.stages[2], 1) == "mine"
    assert spec.stages[1].adapter is not None and spec.stages[1].adapter.alpha == 16.0  # type: ignore[union-attr]


def test_with_init_from_the_arch_is_checked_when_the_base_loads(spec_dict: Callable[..., dict[str, Any]]) -> None:
    raw = with_adapters(spec_dict(), stage={**GOOD, "targets": ["q"]})
    raw["model"] = {"init_from": {"model": "some-llama"}}
    raw.pop("tokenizer")
    assert parse_spec(raw).stages[1].adapter is not None  # type: ignore[union-attr]


def test_the_api_checks_targets_against_the_base_arch(spec_dict: Callable[..., dict[str, Any]]) -> None:
    from models.spec import adapter_errors

    raw = with_adapters(spec_dict(), stage={**GOOD, "targets": ["q", "mlp"]})
    raw["model"] = {"init_from": {"model": "base"}}
    raw.pop("tokenizer")
    spec = parse_spec(raw)
    assert adapter_errors(spec) == []  # unknown arch: left to load time
    assert [e["loc"] for e in adapter_errors(spec, "gpt")] == ["stages.1.adapter.targets.0"]
    assert adapter_errors(spec, "llama") == []
