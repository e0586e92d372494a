"""A training run's checkpoints: what one holds and how it is written and read back
(models/training/checkpoint.py stores the files; Pipeline.save and Pipeline.restore use this).

A checkpoint holds the model (only its adapters when no segment trains the base, which a
resume rebuilds from init_from or the seed), every live optimizer, the RNG states, and the
run's progress: the segment and step in it, the global step, the elapsed time, each data
stream's position and the evaluations so far. A resumed run so produces the same weights as
an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from models import events
from models.data.streams import Stream
from models.lora import layers as lora
from models.training import checkpoint
from models.training.precision import Weights

EventSink = Callable[[events.Event], None]
# Given a staged checkpoint, its final directory and its `checkpoint.saved` event: make it
# resumable (register it, move it into place, emit the event) or raise to stop the run.
PublishHook = Callable[[Path, Path, events.Event], None]


def pack(
    weights: Weights,
    base_frozen: bool,
    device: torch.device,
    optimizers: Mapping[str, torch.optim.Optimizer],
    streams: Mapping[str, Stream],
    progress: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and state.json of a checkpoint of the run as it is now. `progress`: the
    state's segment, segment_step, global_step, elapsed_s, evaluations and model."""
    state_dict = weights.state_dict()
    if base_frozen:  # the base is rebuilt from init_from (or the seed) on resume
        state_dict = {k: v for k, v in state_dict.items() if lora.is_adapter_param(k)}
    tensors = {f"model/{k}": v for k, v in state_dict.items()}
    tensors["rng/torch"] = torch.get_rng_state()
    if device.type == "cuda":
        tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
    metas = {}
    for key, opt in optimizers.items():
        t, metas[key] = checkpoint.split_optimizer_state(f"opt/{key}", opt.state_dict())
        tensors.update(t)
    p = progress
    state = {
        "version": 1,
        "segment": p["segment"],
        "segment_step": p["segment_step"],
        "global_step": p["global_step"],
        "elapsed_s": p["elapsed_s"],
        "streams": {k: s.state() for k, s in streams.items()},
        "optimizers": metas,
        "evaluations": p["evaluations"],
        "base": "rebuilt" if base_frozen else "saved",
        "model": p["model"],
    }
    return tensors, state


def store(
    root: Path,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    stage: events.StageRef,
    keep_last: int,
    on_event: EventSink,
    publish: PublishHook | None,
    staging: Path,
) -> Path:
    """Write checkpoint `state["global_step"]` under `root` and report it (`checkpoint.saved`).
    With a publish hook it is staged under `staging` and the hook moves it into place."""
    step = state["global_step"]
    if publish is not None:
        path = checkpoint.checkpoint_dir(root, step)
        staged = checkpoint.stage_checkpoint(staging / "checkpoints", step, tensors, state)
        publish(staged, path, events.make("checkpoint.saved", step, {"path": str(path), "global_step": step}, stage))
        return path
    path = checkpoint.save_checkpoint(root, step, tensors, state, keep_last)
    on_event(events.make("checkpoint.saved", step, {"path": str(path), "global_step": step}, stage))
    return path


def unpack(
    path: Path, weights: Weights, device: torch.device, streams: Mapping[str, Stream]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Load checkpoint `path` into the run's weights, RNG states and data streams; returns its
    state.json and the state dict of each optimizer it holds (by segment key)."""
    tensors, state = checkpoint.load_checkpoint(path)
    saved = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    if state.get("base") == "rebuilt":
        saved = {**weights.state_dict(), **saved}
    weights.load_state_dict(saved)
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)
    for key, s in state["streams"].items():
        streams[key].load_state(s)
    optimizers = {
        key: checkpoint.join_optimizer_state(f"opt/{key}", tensors, meta) for key, meta in state["optimizers"].items()
    }
    return state, optimizers
