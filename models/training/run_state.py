"""A training run's checkpoints: what one holds and how it is written and read back
(models/training/checkpoint.py stores the files; Pipeline.save and Pipeline.restore use this).

A checkpoint holds the model (only its adapters when no segment trains the base, which a
resume rebuilds from init_from or the seed), every live optimizer, the RNG states, and the
run's progress: the segment and step in it, the global step, the elapsed time, each data
stream's position and the evaluations so far, and what the preference objective keeps
(`pref/...`: reference log-probs computed ahead, a live frozen reference copy;
models/training/preference.py). A resumed run so produces the same weights as an
uninterrupted one.

A run of several processes (models/training/distributed.py) stores the random states of
every rank (`rng/rankN/...` beside rank 0's `rng/...`) and, sharded, its weights and
optimizer states in the checkpoint's `shards/`: all ranks take part in saving and
restoring, rank 0 alone writes the other files and reports the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from models import events
from models.data.streams import Stream
from models.lora import layers as lora
from models.training import checkpoint
from models.training.precision import Weights

if TYPE_CHECKING:  # (torch.distributed loads only in a run of several processes)
    from models.training.distributed import Group

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
    group: Group | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and state.json of a checkpoint of the run as it is now. `progress`: the
    state's segment, segment_step, global_step, elapsed_s, evaluations and model."""
    state_dict = weights.state_dict()
    if base_frozen:  # the base is rebuilt from init_from (or the seed) on resume
        state_dict = {k: v for k, v in state_dict.items() if lora.is_adapter_param(k)}
    tensors = {f"model/{k}": v for k, v in state_dict.items()}
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    for rank, states in enumerate([rng] if group is None else group.gather(rng)):
        tensors.update({rng_key(rank, name): t for name, t in states.items()})
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
    group: Group | None = None,
) -> Path:
    """Write checkpoint `state["global_step"]` under `root` and report it (`checkpoint.saved`).
    With a publish hook it is staged under `staging` and the hook moves it into place.

    Of several processes, rank 0 writes the files and the others their shards into the
    folder it staged (after it made it: the first barrier), then all wait for the checkpoint."""
    step = state["global_step"]
    tensors, shards = (tensors, {}) if group is None else group.split(tensors)
    write_shards = None if group is None or not shards else _shard_writer(group, shards)
    path = checkpoint.checkpoint_dir(root, step)
    if group is not None and group.rank:
        if write_shards is not None:
            staged = checkpoint.checkpoint_dir(staging / "checkpoints", step) if publish else None
            write_shards((staged or checkpoint.partial_dir(root, step)) / checkpoint.SHARDS)
    elif publish is not None:
        staged = checkpoint.stage_checkpoint(staging / "checkpoints", step, tensors, state, shards=write_shards)
        publish(staged, path, events.make("checkpoint.saved", step, {"path": str(path), "global_step": step}, stage))
    else:
        path = checkpoint.save_checkpoint(root, step, tensors, state, keep_last, write_shards)
        on_event(events.make("checkpoint.saved", step, {"path": str(path), "global_step": step}, stage))
    if group is not None:
        group.barrier()
    return path


def _shard_writer(group: Group, shards: dict[str, torch.Tensor]) -> checkpoint.ShardWriter:
    def write(folder: Path) -> None:
        group.barrier()  # rank 0 has made the checkpoint's folder
        checkpoint.save_shards(folder, shards)

    return write


def rng_key(rank: int, name: str) -> str:
    """The tensor of rank `rank`'s random generator `name` (rank 0's: a 1-process run's)."""
    return f"rng/{name}" if not rank else f"rng/rank{rank}/{name}"


def unpack(
    path: Path,
    weights: Weights,
    device: torch.device,
    streams: Mapping[str, Stream],
    optimizer_of: Callable[[str], torch.optim.Optimizer],
    group: Group | None = None,
) -> dict[str, Any]:
    """Load checkpoint `path` into the run's weights, RNG states, data streams and the
    optimizer of each segment key it holds (`optimizer_of(key)` makes it); returns its state.json."""
    own = weights.state_dict()

    def like(name: str) -> torch.Tensor:  # a shard's own DTensor: a weight, or an optimizer state of one
        if name.startswith("model/"):
            return torch.empty_like(own[name[6:]])
        _, key, pid, _ = name.split("/", 3)
        opt = optimizer_of(key)
        return torch.empty_like([p for g in opt.param_groups for p in g["params"]][int(pid)])

    names = checkpoint.shard_names(path)
    tensors, state = checkpoint.load_checkpoint(path, {n: like(n) for n in names} if names else None)
    saved = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    if state.get("base") == "rebuilt":
        saved = {**own, **saved}
    weights.load_state_dict(saved)
    rank = 0 if group is None else group.rank
    torch.set_rng_state(tensors[rng_key(rank, "torch")])
    if rng_key(rank, "cuda") in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors[rng_key(rank, "cuda")], device)
    for key, s in state["streams"].items():
        streams[key].load_state(s)
    for key, meta in state["optimizers"].items():
        optimizer_of(key).load_state_dict(checkpoint.join_optimizer_state(f"opt/{key}", tensors, meta))
    state["preference"] = {k: v for k, v in tensors.items() if k.startswith("pref/")}  # (Preferences.restore)
    return state
