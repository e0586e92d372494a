"""A finished run's `model/` folder (Pipeline.finish, which returns a RunResult): the model
with its adapters merged in, each adapter on its own (models/training/adapters.py), the
run's chat format, and evaluation.json (each data name's final metrics and the run's
evaluation history)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models import events
from models.data.chat import ChatFormat
from models.data.chat_records import save_chat_format
from models.data.tokenizer import Tokenizer
from models.errors import TrainingError
from models.families.build import Model
from models.formats.finite import check_finite
from models.formats.native import save_model
from models.lora import layers as lora
from models.training import checkpoint
from models.training.adapters import RunAdapters


@dataclass
class RunResult:
    """What a finished run returns (models.training.run.run)."""

    model_dir: Path
    steps: int
    evaluation: dict[str, dict[str, float]]  # data name -> final metric -> value


def write_model(
    model_dir: Path,
    name: str,
    model: Model,
    state: dict[str, torch.Tensor],
    tok: Tokenizer,
    chat: ChatFormat | None,
    adapters: RunAdapters,
    steps: int,
    evaluation: dict[str, Any],
) -> None:
    """Write the model of run `name` after `steps` steps; `state`: its weights (adapters included)."""
    names = adapters.names
    extracted = {n: lora.extract(model, n, state) for n in names}
    merged = lora.merged_state(state, list(extracted.values()))
    info = {
        "name": name,
        "steps": steps,
        "created_at": events.timestamp(),
        "parameters": sum(v.numel() for v in merged.values()),
    }
    if extracted:
        info["adapters"] = names
    _check_finite(merged, extracted)
    save_model(model_dir, merged, model.config, tok, info)
    adapters.save(model_dir, state, extracted, model, tok, steps)
    if chat is not None:
        save_chat_format(model_dir, chat)
    checkpoint.write_json(model_dir / "evaluation.json", evaluation)


def _check_finite(merged: dict[str, torch.Tensor], adapters: dict[str, lora.Adapter]) -> None:
    """The run fails (user_error) naming the first tensor it produced that holds a NaN or an infinity."""

    def failed(message: str) -> TrainingError:
        return TrainingError("user_error", message)

    for name, adapter in adapters.items():  # first: a broken adapter breaks the merged model too
        ab = [(f"{path}.lora_{k}", t) for path, pair in adapter.layers.items() for k, t in zip("AB", pair)]
        check_finite(ab, f"adapter '{name}'", failed)
    check_finite(merged.items(), "the trained model", failed)
