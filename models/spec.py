"""The job spec (CONTRACT.md §1) as pydantic models, shared by the CLI and the API.

`parse_spec` is the one entry point: it runs field validation and the cross-field
checks, and raises `SpecError` carrying every problem with its dotted field path.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError

from models.errors import SpecError


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not a boolean")
    return value


StrictInt = Annotated[int, Strict()]  # true/false are not 1/0 here
Number = Annotated[float, BeforeValidator(_no_bool)]  # ints and numeric strings (YAML's 1e-3) are fine


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PosInt = Annotated[StrictInt, Field(ge=1)]
LearningRate = Annotated[Number, Field(gt=0.0, le=10.0)]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


# --- model and tokenizer -------------------------------------------------------------


class InitFrom(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=200)]


class ModelSpec(_Strict):
    arch: Literal["gpt"] = "gpt"
    n_layer: Annotated[StrictInt, Field(ge=1, le=96)] = 4
    n_head: Annotated[StrictInt, Field(ge=1, le=128)] = 4
    n_embd: Annotated[StrictInt, Field(ge=8, le=16384)] = 256
    block_size: Annotated[StrictInt, Field(ge=8, le=32768)] = 256
    dropout: Annotated[Number, Field(ge=0.0, lt=1.0)] = 0.0
    init_from: InitFrom | None = None


class TokenizerSpec(_Strict):
    type: Literal["bpe"] = "bpe"
    vocab_size: Annotated[StrictInt, Field(ge=300, le=262144)] = 4096
    train_on: Annotated[list[Name], Field(min_length=1)]


class DataRef(_Strict):
    dataset: Annotated[str, Field(min_length=1, max_length=4096)]
    validation_fraction: Annotated[Number, Field(ge=0.0, le=0.5)] = 0.05


# --- losses, optimizers, schedules -----------------------------------------------------


class CausalLMLoss(_Strict):
    type: Literal["causal_lm"]


class CrossEntropyLoss(_Strict):
    type: Literal["cross_entropy"]
    label_smoothing: Annotated[Number, Field(ge=0.0, lt=1.0)] = 0.0


Loss = Annotated[CausalLMLoss | CrossEntropyLoss, Field(discriminator="type")]


class SGD(_Strict):
    type: Literal["sgd"]
    lr: LearningRate
    momentum: Annotated[Number, Field(ge=0.0, lt=1.0)] = 0.0
    nesterov: bool = False
    weight_decay: Annotated[Number, Field(ge=0.0, le=10.0)] = 0.0


class Adam(_Strict):
    type: Literal["adam", "adamw"]
    lr: LearningRate
    betas: tuple[Annotated[Number, Field(ge=0.0, lt=1.0)], Annotated[Number, Field(ge=0.0, lt=1.0)]] = (0.9, 0.999)
    eps: Annotated[Number, Field(gt=0.0, le=1.0)] = 1e-8
    weight_decay: Annotated[Number, Field(ge=0.0, le=10.0)] = 0.0


Optimizer = Annotated[SGD | Adam, Field(discriminator="type")]


class Schedule(_Strict):
    type: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: Annotated[StrictInt, Field(ge=0, le=10_000_000)] = 0
    min_lr_ratio: Annotated[Number, Field(ge=0.0, le=1.0)] = 0.0


class Regularization(_Strict):
    l1: Annotated[Number, Field(ge=0.0, le=1.0)] = 0.0
    l2: Annotated[Number, Field(ge=0.0, le=1.0)] = 0.0


BLOCKS_PATTERN = r"blocks\.(\d+)(?:-(\d+))?"  # `blocks.N` or `blocks.A-B`: the one spelling of a block range
TRAINABLE_PATTERN = rf"^(all|embeddings|attention|mlp|norms|head|{BLOCKS_PATTERN})$"


def block_range(name: str) -> tuple[int, int] | None:
    """(first, last) block of a `blocks.N` / `blocks.A-B` selector; None for other names."""
    m = re.fullmatch(BLOCKS_PATTERN, name)
    return None if m is None else (int(m.group(1)), int(m.group(2) or m.group(1)))


Trainable = Annotated[str, Field(pattern=TRAINABLE_PATTERN)]
Steps = Annotated[StrictInt, Field(ge=1, le=10_000_000)]
BatchSize = Annotated[StrictInt, Field(ge=1, le=4096)]
GradAccum = Annotated[StrictInt, Field(ge=1, le=1024)]
GradClip = Annotated[Number, Field(gt=0.0, le=1e6)]


# --- stages ----------------------------------------------------------------------------


class _Training(_Strict):
    """What every single-objective stage and every multistep phase has."""

    data: Name
    steps: Steps
    loss: Loss
    optimizer: Optimizer
    regularization: Regularization = Regularization()
    trainable: Annotated[list[Trainable], Field(min_length=1)] = ["all"]


class PretrainStage(_Training):
    type: Literal["pretrain"]
    name: Name
    batch_size: BatchSize = 16
    grad_accum: GradAccum = 1
    schedule: Schedule = Schedule()
    grad_clip: GradClip | None = None


class FinetuneStage(PretrainStage):
    type: Literal["finetune"]  # type: ignore[assignment]


class Phase(_Training):
    objective: Literal["pretrain", "finetune"]
    name: Name | None = None


class MultistepStage(_Strict):
    type: Literal["multistep"]
    name: Name
    cycles: Annotated[StrictInt, Field(ge=1, le=10_000)]
    phases: Annotated[list[Phase], Field(min_length=1, max_length=16)]
    batch_size: BatchSize = 16
    grad_accum: GradAccum = 1
    schedule: Schedule = Schedule()
    grad_clip: GradClip | None = None

    @property
    def steps(self) -> int:
        return self.cycles * sum(p.steps for p in self.phases)


Stage = Annotated[PretrainStage | FinetuneStage | MultistepStage, Field(discriminator="type")]

Metric = Literal["loss", "perplexity", "bleu", "chrf", "rouge_l", "exact_match", "f1"]
METRICS: list[Metric] = ["loss", "perplexity", "bleu", "chrf", "rouge_l", "exact_match", "f1"]


class Evaluation(_Strict):
    every_steps: Annotated[StrictInt, Field(ge=1, le=10_000_000)] = 100
    metrics: list[Metric] = METRICS
    max_samples: Annotated[StrictInt, Field(ge=0, le=10_000)] = 64


class Checkpointing(_Strict):
    every_steps: Annotated[StrictInt, Field(ge=1, le=10_000_000)] = 100
    keep_last: Annotated[StrictInt, Field(ge=1, le=1000)] = 2


class JobSpec(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    seed: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] = 0
    model: ModelSpec = ModelSpec()
    tokenizer: TokenizerSpec | None = None
    data: Annotated[dict[Name, DataRef], Field(min_length=1, max_length=64)]
    stages: Annotated[list[Stage], Field(min_length=1, max_length=16)]
    evaluation: Evaluation = Evaluation()
    checkpointing: Checkpointing = Checkpointing()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_wall_clock_s: Annotated[StrictInt, Field(ge=1, le=30 * 86400)] = 86400

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)


# --- parsing ---------------------------------------------------------------------------


def _loc(parts: tuple[int | str, ...]) -> str:
    # pydantic puts the discriminator tag into the path ("stages.0.pretrain.steps"); drop it.
    tags = {"pretrain", "finetune", "multistep", "causal_lm", "cross_entropy", "sgd", "adam", "adamw"}
    kept = [str(p) for i, p in enumerate(parts) if not (i > 0 and isinstance(parts[i - 1], int) and p in tags)]
    kept = [p for i, p in enumerate(kept) if not (p in tags and i > 0 and kept[i - 1] in ("loss", "optimizer"))]
    kept = [p for p in kept if p != "[key]"]  # a bad mapping key is reported at the key itself
    return ".".join(kept) or "(root)"


def parse_spec(raw: Any) -> JobSpec:
    """Validate a decoded spec (dict) and return it, or raise `SpecError` with every problem."""
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        errors = [{"loc": _loc(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()]
        raise SpecError(errors + _raw_reference_errors(raw, {e["loc"] for e in errors})) from None
    problems = cross_field_errors(spec)
    if problems:
        raise SpecError(problems)
    return spec


def _blocks_out_of_range(names: list[str], n_layer: int) -> str | None:
    for name in names:
        found = block_range(name)
        if found is None:
            continue
        lo, hi = found
        if lo > hi:
            return f"'{name}': range start is after its end"
        if hi >= n_layer:
            return f"'{name}': the model has blocks 0-{n_layer - 1}"
    return None


def cross_field_errors(spec: JobSpec) -> list[dict[str, str]]:
    """Checks that span fields: names resolve, shapes agree, trainable parts exist."""
    errors: list[dict[str, str]] = []

    def err(loc: str, message: str) -> None:
        errors.append({"loc": loc, "message": message})

    m = spec.model
    if m.n_embd % m.n_head:
        err("model.n_embd", f"must be divisible by model.n_head ({m.n_embd} % {m.n_head} != 0)")
    if m.init_from is None and spec.tokenizer is None:
        err("tokenizer", "required for a new model (only init_from keeps the base model's tokenizer)")
    known = sorted(spec.data)
    if spec.tokenizer is not None:
        for i, name in enumerate(spec.tokenizer.train_on):
            if name not in spec.data:
                err(f"tokenizer.train_on.{i}", f"unknown data name '{name}' (known: {', '.join(known)})")
    seen: set[str] = set()
    for i, stage in enumerate(spec.stages):
        if stage.name in seen:
            err(f"stages.{i}.name", f"duplicate stage name '{stage.name}'")
        seen.add(stage.name)
        parts: list[tuple[str, Any]]
        if isinstance(stage, MultistepStage):
            parts = [(f"stages.{i}.phases.{j}", p) for j, p in enumerate(stage.phases)]
        else:
            parts = [(f"stages.{i}", stage)]
        for loc, part in parts:
            if part.data not in spec.data:
                err(f"{loc}.data", f"unknown data name '{part.data}' (known: {', '.join(known)})")
            bad = _blocks_out_of_range(part.trainable, m.n_layer)
            if bad:
                err(f"{loc}.trainable", bad)
    return errors


def _raw_reference_errors(raw: Any, reported: set[str]) -> list[dict[str, str]]:
    """The name checks of cross_field_errors, run on the raw mapping when fields are invalid
    too, so one pass reports both (fields already reported are skipped)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
        return []
    known = sorted(str(k) for k in raw["data"])
    refs: list[tuple[str, Any]] = []
    tok, stages = raw.get("tokenizer"), raw.get("stages")
    if isinstance(tok, dict) and isinstance(tok.get("train_on"), list):
        refs += [(f"tokenizer.train_on.{i}", n) for i, n in enumerate(tok["train_on"])]
    for i, st in enumerate(stages if isinstance(stages, list) else []):
        phases = st.get("phases") if isinstance(st, dict) else None
        parts = [(f"stages.{i}.phases.{j}", p) for j, p in enumerate(phases)] if isinstance(phases, list) else []
        for loc, part in parts or [(f"stages.{i}", st)]:
            if isinstance(part, dict) and "data" in part:
                refs.append((f"{loc}.data", part["data"]))
    return [
        {"loc": loc, "message": f"unknown data name '{name}' (known: {', '.join(known)})"}
        for loc, name in refs
        if isinstance(name, str) and name not in raw["data"] and loc not in reported
    ]
