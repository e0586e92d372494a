"""The preference objective's spec sections (docs/spec.md, `preference`): its losses and its
reference. TRL's names and defaults: `beta` 0.1 everywhere, DPO's `label_smoothing` 0,
SimPO's target margin `gamma` 0.5 (TRL's `simpo_gamma`), ORPO's odds-ratio weight `beta`
(TRL's name for it there too). The losses themselves: models/training/preference_losses.py."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from models.fields import Number, StrictModel

Beta = Annotated[Number, Field(gt=0.0, le=1000.0)]


class DPOLoss(StrictModel):
    """Sigmoid DPO: -log σ(β·Δ), Δ the chosen minus the rejected log-ratio to the reference;
    `label_smoothing` ε > 0 is conservative DPO: -(1-ε)·log σ(β·Δ) - ε·log σ(-β·Δ)."""

    type: Literal["dpo"]
    beta: Beta = 0.1
    label_smoothing: Annotated[Number, Field(ge=0.0, lt=0.5)] = 0.0


class IPOLoss(StrictModel):
    """IPO: (Δ/n - 1/(2β))², the log-ratios per completion token (as TRL normalises them)."""

    type: Literal["ipo"]
    beta: Beta = 0.1


class SimPOLoss(StrictModel):
    """SimPO: -log σ(β·(mean log-prob chosen - mean log-prob rejected) - γ); no reference."""

    type: Literal["simpo"]
    beta: Beta = 0.1
    gamma: Annotated[Number, Field(ge=0.0, le=1000.0)] = 0.5


class ORPOLoss(StrictModel):
    """ORPO: the chosen sequences' NLL - β·mean log σ(log odds ratio); no reference."""

    type: Literal["orpo"]
    beta: Beta = 0.1


PreferenceLoss = Annotated[DPOLoss | IPOLoss | SimPOLoss | ORPOLoss, Field(discriminator="type")]
PREFERENCE_LOSSES = ("dpo", "ipo", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")  # losses that read no reference model


class Reference(StrictModel):
    """`reference: {model: ID}`: the reference model, resolved as `model.init_from` is."""

    model: Annotated[str, Field(min_length=1, max_length=200)]


__all__ = [
    "PREFERENCE_LOSSES",
    "REFERENCE_FREE",
    "DPOLoss",
    "IPOLoss",
    "ORPOLoss",
    "PreferenceLoss",
    "Reference",
    "SimPOLoss",
]
