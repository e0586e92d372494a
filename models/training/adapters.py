"""The LoRA adapters of one run: which segment trains which adapter, whether the base
trains at all, and the adapters a finished run writes (models/lora/layers.py, models/formats/peft.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.data.tokenizer import Tokenizer
from models.families import family
from models.formats.native import save_model
from models.formats.peft import save_adapter
from models.lora import layers as lora
from models.spec import JobSpec, adapter_name
from models.training import checkpoint
from models.training.stages import Segment


class RunAdapters:
    def __init__(self, spec: JobSpec, segments: list[Segment]):
        self.spec, self.segments = spec, segments
        self.of: dict[str, str] = {}  # segment key -> the adapter it trains
        for seg in segments:
            if seg.part.adapter is not None:
                self.of[seg.key] = adapter_name(seg.stage, seg.phase_index)
        # Base weights that no segment trains stay as built: checkpoints then leave them out.
        self.base_frozen = bool(self.of) and not any(seg.part.base_parts for seg in segments)

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(self.of.values()))

    def create(self, model: nn.Module) -> None:
        """Add every adapter the run trains to `model`, once per name, before it is adopted."""
        made: set[str] = set()
        for seg in self.segments:
            name = self.of.get(seg.key)
            if name is not None and name not in made:
                assert seg.part.adapter is not None
                loc = f"{seg.loc}.adapter"
                table = family(str(getattr(model, "config").arch)).lora  # noqa: B009
                lora.add_adapter(model, table, name, seg.part.adapter, self.spec.seed, loc)
                made.add(name)

    def apply(self, model: nn.Module, upto: int) -> None:
        """Adapters of segments 0..upto are in the forward pass (all of them once trained)."""
        names = [self.of[s.key] for s in self.segments[: upto + 1] if s.key in self.of]
        lora.apply_adapters(model, list(dict.fromkeys(names)))

    def save(
        self,
        model_dir: Path,
        state: dict[str, torch.Tensor],
        adapters: dict[str, lora.Adapter],
        model: nn.Module,
        tok: Tokenizer,
        steps: int,
    ) -> None:
        """model/adapters/<name>/ in the PEFT layout, each relative to the unmerged base: the
        init_from model when the base never trained, else model/base/ (written here)."""
        if not adapters:
            return
        init = self.spec.model.init_from
        base = init.model if self.base_frozen and init is not None else None
        if base is None:
            base_state = {k: v for k, v in state.items() if not lora.is_adapter_param(k)}
            info = {"name": f"{self.spec.name} (base of its adapters)", "steps": steps}
            save_model(model_dir / "base", base_state, model.config, tok, info)
        for name, adapter in adapters.items():
            save_adapter(model_dir / "adapters" / name, adapter, base)
            checkpoint.write_json(
                model_dir / "adapters" / name / "stagecraft.json",
                {"adapter": name, "job": self.spec.name, "base": base or "../../base"},
            )
