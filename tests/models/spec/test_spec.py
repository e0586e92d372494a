"""models.spec.job.parse_spec: every bad spec raises SpecError naming clean dotted field paths."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from models.errors import SpecError
from models.spec import JobSpec, MultistepStage, parse_spec
from tests.conftest import SHARED_EXAMPLES

# A clean loc: dotted names and list indices, no discriminator tags or pydantic markers.
CLEAN_LOC = re.compile(r"^[A-Za-z0-9_ -]+(\.[A-Za-z0-9_ -]+)*$")
TAGS = {"pretrain", "finetune", "multistep", "causal_lm", "cross_entropy", "sgd", "adam", "adamw"}


def errors_of(raw: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    errs = info.value.errors
    assert errs, "SpecError without errors"
    for e in errs:
        assert set(e) == {"loc", "message"}
        assert isinstance(e["message"], str) and e["message"]
        assert CLEAN_LOC.match(e["loc"]), f"unclean loc {e['loc']!r}"
        parts = e["loc"].split(".")
        for i, p in enumerate(parts[1:], 1):
            # a discriminator tag after a list index or after loss/optimizer is pydantic's, not ours
            assert not (p in TAGS and (parts[i - 1].isdigit() or parts[i - 1] in ("loss", "optimizer"))), e["loc"]
    # str(SpecError) names every loc too (the CLI and API print it)
    for e in errs:
        assert e["loc"] in str(info.value)
    return errs


def locs(raw: dict[str, Any]) -> list[str]:
    return [e["loc"] for e in errors_of(raw)]


def mutate(base: dict[str, Any], fn: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    spec = copy.deepcopy(base)
    fn(spec)
    return spec


def test_base_spec_is_valid(spec_dict: Callable[..., dict[str, Any]]) -> None:
    spec = parse_spec(spec_dict())
    assert isinstance(spec, JobSpec)
    assert [s.type for s in spec.stages] == ["pretrain", "finetune", "multistep"]
    ms = spec.stages[2]
    assert isinstance(ms, MultistepStage)
    assert ms.steps == 2 * (3 + 3)
    assert spec.total_steps == 6 + 4 + 12


def test_shared_example_parses() -> None:
    path = SHARED_EXAMPLES / "multistep.yaml"
    if not path.exists():
        pytest.skip(f"shared examples not found at {SHARED_EXAMPLES}")
    spec = parse_spec(yaml.safe_load(path.read_text()))
    assert spec.name == "toy-multistep"
    assert [s.type for s in spec.stages] == ["pretrain", "finetune", "multistep"]
    assert spec.total_steps == 300 + 300 + 3 * (20 + 40)


UNKNOWN_FIELDS = [
    (lambda s: s.update(foo=1), "foo"),
    (lambda s: s["model"].update(n_layers=2), "model.n_layers"),
    (lambda s: s["tokenizer"].update(size=300), "tokenizer.size"),
    (lambda s: s["data"]["corpus"].update(split=0.1), "data.corpus.split"),
    (lambda s: s["stages"][0].update(foo=1), "stages.0.foo"),
    (lambda s: s["stages"][1].update(cycles=2), "stages.1.cycles"),
    (lambda s: s["stages"][2].update(steps=5), "stages.2.steps"),
    (lambda s: s["stages"][2]["phases"][0].update(batch_size=4), "stages.2.phases.0.batch_size"),
    (lambda s: s["stages"][2]["phases"][1].update(schedule={}), "stages.2.phases.1.schedule"),
    (lambda s: s["stages"][0]["optimizer"].update(momentum=0.9), "stages.0.optimizer.momentum"),
    (lambda s: s["stages"][1]["optimizer"].update(foo=1), "stages.1.optimizer.foo"),
    (lambda s: s["stages"][2]["phases"][0]["optimizer"].update(betas=[0.9, 0.9]), "stages.2.phases.0.optimizer.betas"),
    (lambda s: s["stages"][0]["loss"].update(label_smoothing=0.1), "stages.0.loss.label_smoothing"),
    (lambda s: s["stages"][2]["phases"][1]["loss"].update(foo=1), "stages.2.phases.1.loss.foo"),
    (lambda s: s["stages"][0]["schedule"].update(decay=1), "stages.0.schedule.decay"),
    (lambda s: s["stages"][1]["regularization"].update(l3=1), "stages.1.regularization.l3"),
    (lambda s: s["evaluation"].update(every=1), "evaluation.every"),
    (lambda s: s["checkpointing"].update(keep=1), "checkpointing.keep"),
]


@pytest.mark.parametrize(("fn", "loc"), UNKNOWN_FIELDS, ids=[loc for _, loc in UNKNOWN_FIELDS])
def test_unknown_field_is_rejected_with_its_path(spec_dict: Callable[..., dict[str, Any]], fn: Any, loc: str) -> None:
    errs = errors_of(mutate(spec_dict(), fn))
    assert [e["loc"] for e in errs] == [loc]
    assert "extra" in errs[0]["message"].lower() or "not permitted" in errs[0]["message"].lower()


BAD_VALUES = [
    (lambda s: s.update(name=""), "name"),
    (lambda s: s.update(name="x" * 101), "name"),
    (lambda s: s.update(seed=-1), "seed"),
    (lambda s: s["model"].update(n_layer=0), "model.n_layer"),
    (lambda s: s["model"].update(dropout=1.0), "model.dropout"),
    (lambda s: s["model"].update(arch="mamba"), "model.arch"),
    (lambda s: s["tokenizer"].update(vocab_size=10), "tokenizer.vocab_size"),
    (lambda s: s["data"]["pairs"].update(validation_fraction=0.9), "data.pairs.validation_fraction"),
    (lambda s: s["stages"][0].update(steps=0), "stages.0.steps"),
    (lambda s: s["stages"][0].update(batch_size=0), "stages.0.batch_size"),
    (lambda s: s["stages"][0].update(grad_clip=0), "stages.0.grad_clip"),
    (lambda s: s["stages"][1]["optimizer"].update(lr=0), "stages.1.optimizer.lr"),
    (lambda s: s["stages"][1]["optimizer"].update(lr=100), "stages.1.optimizer.lr"),
    (lambda s: s["stages"][0]["optimizer"].update(betas=[0.9, 1.0]), "stages.0.optimizer.betas.1"),
    (lambda s: s["stages"][1]["loss"].update(label_smoothing=1.5), "stages.1.loss.label_smoothing"),
    (lambda s: s["stages"][1]["regularization"].update(l2=-1), "stages.1.regularization.l2"),
    (lambda s: s["stages"][0]["schedule"].update(min_lr_ratio=2), "stages.0.schedule.min_lr_ratio"),
    (lambda s: s["stages"][0]["schedule"].update(type="step"), "stages.0.schedule.type"),
    (lambda s: s["stages"][2].update(cycles=0), "stages.2.cycles"),
    (lambda s: s["stages"][2].update(phases=[]), "stages.2.phases"),
    (lambda s: s["stages"][2]["phases"][0]["optimizer"].update(momentum=1.0), "stages.2.phases.0.optimizer.momentum"),
    (lambda s: s["stages"][2]["phases"][1]["optimizer"].update(lr=-1), "stages.2.phases.1.optimizer.lr"),
    (lambda s: s["stages"][2]["phases"][1]["regularization"].update(l1=5), "stages.2.phases.1.regularization.l1"),
    (lambda s: s["stages"][2]["phases"][0].update(objective="rl"), "stages.2.phases.0.objective"),
    (lambda s: s["stages"][2]["phases"][0].update(steps=0), "stages.2.phases.0.steps"),
    (lambda s: s["evaluation"].update(metrics=["accuracy"]), "evaluation.metrics.0"),
    (lambda s: s["checkpointing"].update(keep_last=0), "checkpointing.keep_last"),
    (lambda s: s.update(precision="fp64"), "precision"),
    (lambda s: s.update(device="tpu"), "device"),
    (lambda s: s.update(max_wall_clock_s=0), "max_wall_clock_s"),
]


@pytest.mark.parametrize(("fn", "loc"), BAD_VALUES, ids=[f"{i}-{loc}" for i, (_, loc) in enumerate(BAD_VALUES)])
def test_out_of_range_values_name_their_field(spec_dict: Callable[..., dict[str, Any]], fn: Any, loc: str) -> None:
    assert locs(mutate(spec_dict(), fn)) == [loc]


WRONG_TYPES = [
    (lambda s: s.update(name=5), "name"),
    (lambda s: s.update(model=5), "model"),
    (lambda s: s.update(stages={"a": 1}), "stages"),
    (lambda s: s.update(data=[1]), "data"),
    (lambda s: s["model"].update(n_embd="big"), "model.n_embd"),
    (lambda s: s["stages"][0].update(steps="many"), "stages.0.steps"),
    (lambda s: s["stages"][0].update(steps=1.5), "stages.0.steps"),
    (lambda s: s["stages"][0].update(trainable="all"), "stages.0.trainable"),
    (lambda s: s["stages"][1]["optimizer"].update(lr="fast"), "stages.1.optimizer.lr"),
    (lambda s: s["stages"][2]["phases"][1]["optimizer"].update(betas=0.9), "stages.2.phases.1.optimizer.betas"),
    (lambda s: s["stages"][2]["phases"][0].update(loss="causal_lm"), "stages.2.phases.0.loss"),
    (lambda s: s["stages"][2].update(phases={"a": 1}), "stages.2.phases"),
    (lambda s: s["stages"].__setitem__(1, "finetune"), "stages.1"),
]


@pytest.mark.parametrize(("fn", "loc"), WRONG_TYPES, ids=[f"{i}-{loc}" for i, (_, loc) in enumerate(WRONG_TYPES)])
def test_wrong_types_name_their_field(spec_dict: Callable[..., dict[str, Any]], fn: Any, loc: str) -> None:
    assert locs(mutate(spec_dict(), fn)) == [loc]


def test_bool_is_not_accepted_as_a_step_count(spec_dict: Callable[..., dict[str, Any]]) -> None:
    # `steps: true` is a typo-class mistake (YAML turns yes/on/true into booleans); it must not mean 1 step.
    assert locs(mutate(spec_dict(), lambda s: s["stages"][0].update(steps=True))) == ["stages.0.steps"]


def test_unknown_discriminator_tags_name_the_union_field(spec_dict: Callable[..., dict[str, Any]]) -> None:
    assert locs(mutate(spec_dict(), lambda s: s["stages"][0].update(type="rlhf"))) in (["stages.0"], ["stages.0.type"])
    assert locs(mutate(spec_dict(), lambda s: s["stages"][1]["optimizer"].update(type="lion"))) in (
        ["stages.1.optimizer"],
        ["stages.1.optimizer.type"],
    )
    bad_loss = mutate(spec_dict(), lambda s: s["stages"][2]["phases"][1]["loss"].update(type="mse"))
    assert locs(bad_loss) in (["stages.2.phases.1.loss"], ["stages.2.phases.1.loss.type"])


def test_missing_fields_in_a_stage_are_all_reported(spec_dict: Callable[..., dict[str, Any]]) -> None:
    spec = spec_dict()
    spec["stages"][1] = {"type": "finetune", "name": "ft"}
    assert sorted(locs(spec)) == ["stages.1.data", "stages.1.loss", "stages.1.optimizer", "stages.1.steps"]


def test_every_field_error_is_reported_at_once(spec_dict: Callable[..., dict[str, Any]]) -> None:
    def many(s: dict[str, Any]) -> None:
        s["model"]["n_layer"] = 0
        s["stages"][0]["optimizer"]["lr"] = 0
        s["stages"][2]["phases"][1]["trainable"] = ["everything"]
        s["precision"] = "fp8"

    assert sorted(locs(mutate(spec_dict(), many))) == [
        "model.n_layer",
        "precision",
        "stages.0.optimizer.lr",
        "stages.2.phases.1.trainable.0",
    ]


def test_n_embd_must_divide_by_n_head(spec_dict: Callable[..., dict[str, Any]]) -> None:
    errs = errors_of(mutate(spec_dict(), lambda s: s["model"].update(n_embd=30, n_head=4)))
    assert [e["loc"] for e in errs] == ["model.n_embd"]
    assert "n_head" in errs[0]["message"]


@pytest.mark.parametrize(
    ("fn", "loc"),
    [
        (lambda s: s["stages"][0].update(data="nope"), "stages.0.data"),
        (lambda s: s["stages"][1].update(data="nope"), "stages.1.data"),
        (lambda s: s["stages"][2]["phases"][1].update(data="nope"), "stages.2.phases.1.data"),
        (lambda s: s["tokenizer"].update(train_on=["corpus", "nope"]), "tokenizer.train_on.1"),
    ],
)
def test_unknown_data_names(spec_dict: Callable[..., dict[str, Any]], fn: Any, loc: str) -> None:
    errs = errors_of(mutate(spec_dict(), fn))
    assert [e["loc"] for e in errs] == [loc]
    assert "'nope'" in errs[0]["message"] and "corpus" in errs[0]["message"]


@pytest.mark.parametrize(
    ("fn", "loc"),
    [
        (lambda s: s["stages"][1].update(trainable=["blocks.2"]), "stages.1.trainable"),
        (lambda s: s["stages"][0].update(trainable=["head", "blocks.0-2"]), "stages.0.trainable"),
        (lambda s: s["stages"][2]["phases"][1].update(trainable=["blocks.1-0"]), "stages.2.phases.1.trainable"),
        (lambda s: s["stages"][2]["phases"][0].update(trainable=["blocks.7"]), "stages.2.phases.0.trainable"),
    ],
)
def test_trainable_blocks_out_of_range(spec_dict: Callable[..., dict[str, Any]], fn: Any, loc: str) -> None:
    errs = errors_of(mutate(spec_dict(), fn))
    assert [e["loc"] for e in errs] == [loc]


def test_blocks_in_range_are_fine(spec_dict: Callable[..., dict[str, Any]]) -> None:
    parse_spec(mutate(spec_dict(), lambda s: s["stages"][1].update(trainable=["blocks.0-1", "blocks.1"])))


@pytest.mark.parametrize("selector", ["everything", "blocks", "blocks.x", "blocks.1-", "Head", "blocks.-1", ""])
def test_bad_trainable_selector(spec_dict: Callable[..., dict[str, Any]], selector: str) -> None:
    spec = mutate(spec_dict(), lambda s: s["stages"][2]["phases"][0].update(trainable=["head", selector]))
    assert locs(spec) == ["stages.2.phases.0.trainable.1"]


def test_empty_trainable_list(spec_dict: Callable[..., dict[str, Any]]) -> None:
    assert locs(mutate(spec_dict(), lambda s: s["stages"][0].update(trainable=[]))) == ["stages.0.trainable"]


def test_duplicate_stage_names(spec_dict: Callable[..., dict[str, Any]]) -> None:
    errs = errors_of(mutate(spec_dict(), lambda s: s["stages"][2].update(name="pretrain")))
    assert [e["loc"] for e in errs] == ["stages.2.name"]
    assert "duplicate" in errs[0]["message"]


def test_empty_stages(spec_dict: Callable[..., dict[str, Any]]) -> None:
    assert locs(spec_dict(stages=[])) == ["stages"]


def test_too_many_stages(spec_dict: Callable[..., dict[str, Any]]) -> None:
    stage = spec_dict()["stages"][0]
    stages = [dict(stage, name=f"s{i}") for i in range(17)]
    assert locs(spec_dict(stages=stages)) == ["stages"]


def test_missing_tokenizer_without_init_from(spec_dict: Callable[..., dict[str, Any]]) -> None:
    spec = spec_dict()
    del spec["tokenizer"]
    errs = errors_of(spec)
    assert [e["loc"] for e in errs] == ["tokenizer"]
    spec["model"]["init_from"] = {"model": "model-123"}
    parsed = parse_spec(spec)  # the base model's tokenizer is kept
    assert parsed.model.init_from is not None and parsed.model.init_from.model == "model-123"


def test_cross_field_errors_are_all_reported(spec_dict: Callable[..., dict[str, Any]]) -> None:
    def many(s: dict[str, Any]) -> None:
        s["model"]["n_head"] = 3
        s["stages"][1]["name"] = "pretrain"
        s["stages"][1]["data"] = "other"
        s["stages"][2]["phases"][0]["trainable"] = ["blocks.9"]

    assert sorted(locs(mutate(spec_dict(), many))) == [
        "model.n_embd",
        "stages.1.data",
        "stages.1.name",
        "stages.2.phases.0.trainable",
    ]


def test_bad_data_name_key_has_a_clean_loc(spec_dict: Callable[..., dict[str, Any]]) -> None:
    # pydantic reports dict-key errors at ("data", "bad name", "[key]"); the path should be the key itself.
    spec = spec_dict()
    spec["data"]["bad name"] = {"dataset": "x.txt"}
    assert locs(spec) == ["data.bad name"]


def test_data_names_that_look_like_tags_are_kept_in_locs(spec_dict: Callable[..., dict[str, Any]]) -> None:
    # _loc drops discriminator tags; a data name spelled like a tag is a real key and must stay.
    spec = spec_dict()
    spec["data"]["pretrain"] = {"dataset": "x.txt", "validation_fraction": 2}
    spec["data"]["sgd"] = {"dataset": "x.txt", "weight": 1}
    assert sorted(locs(spec)) == ["data.pretrain.validation_fraction", "data.sgd.weight"]


def test_adam_and_adamw_both_parse_with_defaults(spec_dict: Callable[..., dict[str, Any]]) -> None:
    spec = parse_spec(spec_dict())
    assert spec.stages[0].optimizer.type == "adamw"  # type: ignore[union-attr]
    assert spec.stages[0].optimizer.betas == (0.9, 0.95)  # type: ignore[union-attr]
    assert spec.stages[1].optimizer.type == "adam"  # type: ignore[union-attr]
    ms = spec.stages[2]
    assert isinstance(ms, MultistepStage)
    assert ms.phases[0].optimizer.type == "sgd"
    assert ms.batch_size == 4
    assert ms.phases[1].regularization.l1 == 1e-6
