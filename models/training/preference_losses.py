"""The preference losses, computed as TRL computes them (trl 1.16; the parity tests call its code):

- dpo: DPOTrainer's `sigmoid` loss, -log σ(β·Δ) with Δ = (log π(c) - log π_ref(c)) - (log π(r) -
  log π_ref(r)), the log-probs summed over the completion tokens; `label_smoothing` ε is
  conservative DPO, -(1-ε)·log σ(β·Δ) - ε·log σ(-β·Δ) (TRL's `sigmoid` loss before 1.0, and its
  CPOTrainer's today; DPOTrainer 1.16 reads ε only in its `robust` and `exo_pair` losses);
- ipo: DPOTrainer's `ipo`, (Δc/nc - Δr/nr - 1/(2β))², each log-ratio per completion token;
- simpo: CPOTrainer's `simpo` with cpo_alpha 0, -log σ(β·(mean log π(c) - mean log π(r)) - γ);
- orpo: ORPOTrainer's, the chosen sequences' mean NLL over all their tokens (prompt included, as
  TRL takes it) - β·mean log σ(log odds(c) - log odds(r)), the odds of the mean log-probs.

Rewards as TRL logs them: β × the log-ratio (dpo, ipo) or β × the mean log-prob (simpo, orpo);
`logps/*` are the summed (dpo, ipo) or mean (simpo, orpo) log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.data.preference_stream import AnyPreferenceLoss, PairBatch
from models.data.streams import IGNORE
from models.families.build import Model
from models.spec import REFERENCE_FREE, DPOLoss, IPOLoss, ORPOLoss, SimPOLoss

METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


@dataclass
class PairLogps:
    """A model's log-probs of a batch's B pairs: summed over each completion's scored tokens."""

    chosen: Tensor  # (B,)
    rejected: Tensor  # (B,)
    chosen_tokens: Tensor  # (B,) scored tokens of each chosen completion
    rejected_tokens: Tensor
    nll: Tensor | None = None  # orpo: the mean NLL over every token of the chosen sequences

    def stacked(self) -> Tensor:
        """(B, 2): chosen, rejected (what a precomputed reference keeps)."""
        return torch.stack([self.chosen, self.rejected], dim=1).detach().float()


def needs_reference(loss: AnyPreferenceLoss) -> bool:
    return loss.type not in REFERENCE_FREE


def pair_logps(model: Model, batch: PairBatch, with_nll: bool = False) -> PairLogps:
    """Log-probs of the scored tokens (the completions), one forward pass over the 2B rows; the
    vocabulary projection only where a log-prob is read."""
    h = model.hidden(batch.idx)
    scored = batch.completion_targets != IGNORE
    read = scored.clone()
    pairs = batch.pairs
    if with_nll:  # orpo's NLL reads every token of the chosen rows
        read[:pairs] |= batch.targets[:pairs] != IGNORE
    logits = model.logits(h[read]).float()
    token_logps = -F.cross_entropy(logits, batch.targets[read], reduction="none")
    full = torch.zeros(read.shape, dtype=token_logps.dtype, device=token_logps.device)
    full = full.masked_scatter(read, token_logps)
    sums = (full * scored).sum(dim=1)
    counts = scored.sum(dim=1)
    nll = None
    if with_nll:
        real = batch.targets[:pairs] != IGNORE
        nll = -(full[:pairs] * real).sum() / real.sum()
    return PairLogps(sums[:pairs], sums[pairs:], counts[:pairs], counts[pairs:], nll)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)), as trl's orpo_trainer.log1mexp (branch at -ln 2)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def preference_loss(spec: AnyPreferenceLoss, policy: PairLogps, ref: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
    """(the batch's loss, per-pair statistics: rewards and log-probs of chosen and rejected).
    `ref`: (B, 2) reference log-probs (chosen, rejected), None for the reference-free losses."""
    beta = spec.beta
    if isinstance(spec, DPOLoss | IPOLoss):
        assert ref is not None
        chosen_ratio, rejected_ratio = policy.chosen - ref[:, 0], policy.rejected - ref[:, 1]
        if isinstance(spec, DPOLoss):
            delta, eps = chosen_ratio - rejected_ratio, spec.label_smoothing
            losses = -F.logsigmoid(beta * delta) * (1 - eps) - F.logsigmoid(-beta * delta) * eps
        else:
            chosen_avg = chosen_ratio / policy.chosen_tokens.clamp(min=1.0)
            rejected_avg = rejected_ratio / policy.rejected_tokens.clamp(min=1.0)
            losses = (chosen_avg - rejected_avg - 1 / (2 * beta)) ** 2
        loss = losses.mean()
        rewards, logps = (beta * chosen_ratio, beta * rejected_ratio), (policy.chosen, policy.rejected)
    else:
        chosen, rejected = policy.chosen / policy.chosen_tokens, policy.rejected / policy.rejected_tokens
        if isinstance(spec, SimPOLoss):
            logits = (chosen - rejected) - spec.gamma / beta
            loss = (-F.logsigmoid(beta * logits)).mean()
        else:
            assert isinstance(spec, ORPOLoss) and policy.nll is not None
            log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
            loss = policy.nll - (beta * F.logsigmoid(log_odds)).mean()
        rewards, logps = (beta * chosen, beta * rejected), (chosen, rejected)
    stats = {"rewards/chosen": rewards[0], "rewards/rejected": rewards[1], "logps/chosen": logps[0]}
    stats["logps/rejected"] = logps[1]
    return loss, {k: v.detach().float() for k, v in stats.items()}


def summarize(stats: list[dict[str, Tensor]]) -> dict[str, float]:
    """The TRL-named means over every pair of `stats` (batches' per-pair statistics)."""
    cat = {k: torch.cat([s[k] for s in stats]) for k in stats[0]}
    chosen, rejected = cat["rewards/chosen"], cat["rewards/rejected"]
    out = {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/accuracies": (chosen > rejected).float().mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "logps/chosen": cat["logps/chosen"].mean(),
        "logps/rejected": cat["logps/rejected"].mean(),
    }
    return {k: round(float(v), 6) for k, v in out.items()}
