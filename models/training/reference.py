"""The reference model of a preference stage or phase (docs/spec.md, `preference`): where its
log-probs come from.

- default, the policy as its stage starts: with adapters, when every weight the stage trains is
  an adapter new in it, the policy itself with those adapters switched off (`Source.applied`:
  the adapters of earlier stages, which the stage does not change), so no second copy of the
  model is held; otherwise a frozen copy made as the stage starts (`Source.model`), which the
  run's checkpoints hold while the stage trains, so a resumed run reads the same reference;
- `reference: {model: ID}`: that model, resolved as `init_from` is (its tokenizer must be the
  policy's), loaded again on resume;
- none for simpo and orpo.

Reference log-probs are computed in eval mode (no dropout) without gradients, in the run's
precision. `precompute_reference` computes them once per pair ahead of the stage (as TRL's
`precompute_ref_log_probs`); models/training/preference.py keeps them on the streams and in
the checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from models.data.preference_stream import PairBatch
from models.data.tokenizer import Tokenizer
from models.errors import TrainingError
from models.families.build import Model
from models.formats.load import load_model
from models.lora import layers as lora
from models.spec import Reference
from models.training.adapters import RunAdapters
from models.training.preference_losses import pair_logps
from models.training.stages import Segment


@dataclass
class Source:
    """One reference: a model of its own (a frozen copy, or an explicit model), or the policy
    with exactly `applied` adapters in its forward pass."""

    model: nn.Module | None = None
    applied: list[str] | None = None
    explicit: bool = False

    @torch.no_grad()
    def logps(self, policy: Model, batch: PairBatch, autocast: Callable[[], AbstractContextManager[object]]) -> Tensor:
        """(B, 2) summed log-probs of each pair's chosen and rejected completion."""
        if self.model is not None:
            with autocast():
                return pair_logps(self.model, batch).stacked()  # type: ignore[arg-type]
        assert self.applied is not None
        layers = lora.lora_layers(policy)
        kept = {name: layer.applied for name, layer in layers.items()}
        was_training = policy.training
        policy.eval()
        lora.apply_adapters(policy, self.applied)
        try:
            with autocast():
                return pair_logps(policy, batch).stacked()
        finally:
            for name, layer in layers.items():
                layer.applied = kept[name]
            policy.train(was_training)


def adapters_off(segments: list[Segment], adapters: RunAdapters, stage_index: int) -> list[str] | None:
    """The adapters a default reference keeps on when switching the stage's own adapters off
    gives the policy as the stage started: every segment of the stage trains an adapter alone,
    and none of those adapters trained before the stage. None when a frozen copy is needed."""
    mine = [s for s in segments if s.stage_index == stage_index]
    if any(s.part.base_parts or s.key not in adapters.of for s in mine):
        return None
    before = list(
        dict.fromkeys(adapters.of[s.key] for s in segments if s.stage_index < stage_index and s.key in adapters.of)
    )
    if any(adapters.of[s.key] in before for s in mine):
        return None
    return before


def freeze(model: nn.Module) -> nn.Module:
    """`model` in eval mode, without gradients."""
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    return model.eval()


def frozen_copy(model: nn.Module, state: dict[str, Tensor] | None = None) -> nn.Module:
    """A frozen copy of `model`; `state` (a checkpoint's) replaces its weights."""
    twin = freeze(copy.deepcopy(model))
    if state is not None:
        twin.load_state_dict(state)
    return twin


def load_reference(
    ref: Reference, loc: str, resolve: Callable[[str], Path], tok: Tokenizer, like: nn.Module
) -> nn.Module:
    """The model `reference: {model: ID}` names, on the policy's device and in its dtype."""
    model, its_tok = load_model(resolve(ref.model))
    if its_tok.hf.get_vocab() != tok.hf.get_vocab():
        raise TrainingError("user_error", f"{loc}.reference.model: '{ref.model}' has another tokenizer than the policy")
    p = next(like.parameters())
    return freeze(model.to(p.device, p.dtype))
