"""The job spec (docs/spec.md) as pydantic models, shared by the CLI, the API and the run.

`models.spec.parse_spec` (models/spec/checks.py) is the one entry point.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from models.families import ALL_LORA_TARGETS
from models.fields import Number, StrictInt, StrictModel
from models.spec.model import DEFAULT_MODEL, AnyModelSpec
from models.spec.preference import DPOLoss, IPOLoss, ORPOLoss, PreferenceLoss, Reference, SimPOLoss

PosInt = Annotated[StrictInt, Field(ge=1)]
LearningRate = Annotated[Number, Field(gt=0.0, le=10.0)]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


# --- model and tokenizer -------------------------------------------------------------


class TokenizerSpec(StrictModel):
    type: Literal["bpe"] = "bpe"
    vocab_size: Annotated[StrictInt, Field(ge=300, le=262144)] = 4096
    train_on: Annotated[list[Name], Field(min_length=1)]


class DataRef(StrictModel):
    dataset: Annotated[str, Field(min_length=1, max_length=4096)]
    validation_fraction: Annotated[Number, Field(ge=0.0, le=0.5)] = 0.05


# --- losses, optimizers, schedules -----------------------------------------------------


class CausalLMLoss(StrictModel):
    type: Literal["causal_lm"]


class CrossEntropyLoss(StrictModel):
    type: Literal["cross_entropy"]
    label_smoothing: Annotated[Number, Field(ge=0.0, lt=1.0)] = 0.0


Loss = Annotated[CausalLMLoss | CrossEntropyLoss, Field(discriminator="type")]
# A multistep phase's: its objective says which (models/spec/objectives.py checks they agree).
AnyLoss = Annotated[
    CausalLMLoss | CrossEntropyLoss | DPOLoss | IPOLoss | SimPOLoss | ORPOLoss, Field(discriminator="type")
]


class SGD(StrictModel):
    type: Literal["sgd"]
    lr: LearningRate
    momentum: Annotated[Number, Field(ge=0.0, lt=1.0)] = 0.0
    nesterov: bool = False
    weight_decay: Annotated[Number, Field(ge=0.0, le=10.0)] = 0.0


class Adam(StrictModel):
    type: Literal["adam", "adamw"]
    lr: LearningRate
    betas: tuple[Annotated[Number, Field(ge=0.0, lt=1.0)], Annotated[Number, Field(ge=0.0, lt=1.0)]] = (0.9, 0.999)
    eps: Annotated[Number, Field(gt=0.0, le=1.0)] = 1e-8
    weight_decay: Annotated[Number, Field(ge=0.0, le=10.0)] = 0.0


Optimizer = Annotated[SGD | Adam, Field(discriminator="type")]


class Schedule(StrictModel):
    type: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: Annotated[StrictInt, Field(ge=0, le=10_000_000)] = 0
    min_lr_ratio: Annotated[Number, Field(ge=0.0, le=1.0)] = 0.0


class Regularization(StrictModel):
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


AdapterName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
AdapterTarget = Annotated[str, Field(pattern="^(" + "|".join(ALL_LORA_TARGETS) + ")$")]


class AdapterSpec(StrictModel):
    """A LoRA adapter (models/lora/layers.py). Parts naming one `name` share one adapter, so they
    must agree on everything else; without a name a stage or phase has its own."""

    type: Literal["lora"]
    rank: Annotated[StrictInt, Field(ge=1, le=512)] = 8
    alpha: Annotated[Number, Field(gt=0.0, le=4096.0)] = 16.0
    dropout: Annotated[Number, Field(ge=0.0, lt=1.0)] = 0.0
    targets: Annotated[list[AdapterTarget], Field(min_length=1, max_length=16)] = ["attention"]
    name: AdapterName | None = None


# --- stages ----------------------------------------------------------------------------


class _Training(StrictModel):
    """What every single-objective stage and every multistep phase has."""

    data: Name
    steps: Steps
    loss: Loss
    optimizer: Optimizer
    regularization: Regularization = Regularization()
    # None (the default, and what a stored spec keeps): every base weight without an adapter,
    # none with one. A list names the base parts that train, beside the adapter if there is one.
    trainable: Annotated[list[Trainable], Field(min_length=1)] | None = None
    adapter: AdapterSpec | None = None

    @property
    def base_parts(self) -> list[str]:
        """The `trainable` selectors of the base weights this stage or phase trains: the one
        reading of `trainable` (the run, the checks; the API, the CLI and the SDK alike)."""
        if self.trainable is not None:
            return list(self.trainable)
        return [] if self.adapter is not None else ["all"]


class PretrainStage(_Training):
    type: Literal["pretrain"]
    name: Name
    batch_size: BatchSize = 16
    grad_accum: GradAccum = 1
    schedule: Schedule = Schedule()
    grad_clip: GradClip | None = None

    @property
    def objective(self) -> str:
        """What it trains for, as a multistep phase's `objective` names it: its type."""
        return self.type


class FinetuneStage(PretrainStage):
    type: Literal["finetune"]  # type: ignore[assignment]


class PreferenceStage(FinetuneStage):
    """Preference optimization on preference pairs (models/training/preference.py). `reference`
    None: a frozen copy of the policy as the stage starts (with an adapter: the model with the
    stage's new adapters switched off)."""

    type: Literal["preference"]  # type: ignore[assignment]
    loss: PreferenceLoss  # type: ignore[assignment]
    reference: Reference | None = None
    precompute_reference: bool = False


class Phase(_Training):
    objective: Literal["pretrain", "finetune", "preference"]
    name: Name | None = None
    loss: AnyLoss  # type: ignore[assignment]
    reference: Reference | None = None  # preference phases: as PreferenceStage's
    precompute_reference: bool = False


class MultistepStage(StrictModel):
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


Stage = Annotated[PretrainStage | FinetuneStage | PreferenceStage | MultistepStage, Field(discriminator="type")]

Metric = Literal["loss", "perplexity", "bleu", "chrf", "rouge_l", "exact_match", "f1"]
METRICS: list[Metric] = ["loss", "perplexity", "bleu", "chrf", "rouge_l", "exact_match", "f1"]


class Evaluation(StrictModel):
    every_steps: Annotated[StrictInt, Field(ge=1, le=10_000_000)] = 100
    metrics: list[Metric] = METRICS
    max_samples: Annotated[StrictInt, Field(ge=0, le=10_000)] = 64


class Checkpointing(StrictModel):
    every_steps: Annotated[StrictInt, Field(ge=1, le=10_000_000)] = 100
    keep_last: Annotated[StrictInt, Field(ge=1, le=1000)] = 2


class Resources(StrictModel):
    """What the job needs from a worker (docs/spec.md#resources): the queue it is routed to.

    `device` None means the top-level `device` (kept for specs written before `resources`).
    `processes` > 1 runs the job under torchrun, one process per device (gloo on CPU, NCCL
    on CUDA); `sharding` picks DDP (replicated weights) or FSDP2 (sharded weights, gradients
    and optimizer state)."""

    device: Literal["auto", "cpu", "cuda"] | None = None
    processes: Annotated[StrictInt, Field(ge=1, le=64)] = 1
    sharding: Literal["ddp", "fsdp"] = "ddp"


ReportTarget = Literal["tensorboard", "mlflow", "wandb"]
REPORT_TARGETS: tuple[ReportTarget, ...] = ("tensorboard", "mlflow", "wandb")


def _each_once(targets: list[ReportTarget]) -> list[ReportTarget]:
    repeated = sorted({t for t in targets if targets.count(t) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} listed more than once")
    return targets


class JobSpec(StrictModel):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    seed: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] = 0
    model: AnyModelSpec = DEFAULT_MODEL()
    tokenizer: TokenizerSpec | None = None
    data: Annotated[dict[Name, DataRef], Field(min_length=1, max_length=64)]
    stages: Annotated[list[Stage], Field(min_length=1, max_length=16)]
    evaluation: Evaluation = Evaluation()
    checkpointing: Checkpointing = Checkpointing()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    resources: Resources = Resources()
    max_wall_clock_s: Annotated[StrictInt, Field(ge=1, le=30 * 86400)] = 86400
    # Experiment trackers the run's metrics also go to (app/services/reporting.py), besides the service's own.
    report_to: Annotated[list[ReportTarget], AfterValidator(_each_once)] = []

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def run_device(self) -> str:
        """The device the job asks for: `resources.device`, or the top-level `device`."""
        return self.resources.device or self.device
