"""The held-out preference metrics of a preference validation set (models/training/evaluate.py
measures preference data with it): against the reference log-probs its stream carries,
computed as the measuring stage started (models/training/preference.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from models.data.preference_stream import PairBatch, PreferenceStream
from models.data.streams import Batch
from models.families.build import Model
from models.spec import Evaluation, SimPOLoss
from models.training.preference_losses import needs_reference, pair_logps, preference_loss, summarize


@torch.no_grad()
def measure_pairs(
    model: Model,
    stream: PreferenceStream,
    spec: Evaluation,
    to_device: Callable[[Batch], Batch],
    batch_size: int,
    max_tokens: int,
) -> dict[str, Any]:
    """The held-out preference metrics: the loss, `preference_accuracy` (the share of pairs whose
    chosen completion has the higher reward) and TRL's rewards/* and logps/* means, against the
    reference log-probs computed as the measuring stage started."""
    loss_spec = stream.loss or SimPOLoss(type="simpo")  # (data no preference part ever read)
    was_training = model.training
    model.eval()
    weighted, count, stats = 0.0, 0, []
    for b in stream.eval_batches(batch_size, max_tokens):
        batch = to_device(b)
        assert isinstance(batch, PairBatch)
        logps = pair_logps(model, batch, with_nll=loss_spec.type == "orpo")
        ref = None
        if needs_reference(loss_spec):  # no reference yet (before its stage): the model's own
            known = batch.ref is not None and not bool(torch.isnan(batch.ref).any())
            ref = batch.ref if known else logps.stacked()
        loss, s = preference_loss(loss_spec, logps, ref)
        weighted, count = weighted + float(loss) * batch.pairs, count + batch.pairs
        stats.append(s)
    model.train(was_training)
    result: dict[str, Any] = {"loss": round(weighted / max(count, 1), 5)} if "loss" in spec.metrics else {}
    if stats:
        summary = summarize(stats)
        result["preference_accuracy"] = summary["rewards/accuracies"]
        result.update(summary)
    return result
