"""Training checkpoints: safetensors for tensors, JSON for everything else.

Every file is written atomically (models/files.py), and a checkpoint
directory appears under its final name only once all its files are complete, so a crash
at any moment leaves either the previous checkpoint or the new one, never half of one.
No pickle anywhere: optimizer states are split into their tensors and their plain values.

A sharded run's checkpoint (resources.sharding fsdp) also holds `shards/`: its DTensors
(weights and optimizer states), each rank's part in a safetensors file of its own, written
and read by torch.distributed.checkpoint (DCP) with its safetensors storage.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.files import fsync_dir, read_json, write_json
from models.formats.native import load_tensors, save_tensors

# --- optimizer state without pickle -----------------------------------------------------


def split_optimizer_state(prefix: str, state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer state_dict as (tensors keyed '<prefix>/<param>/<name>', JSON-able rest)."""
    tensors: dict[str, Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}/{pid}/{name}"] = value
            else:
                plain.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "plain": plain}


def join_optimizer_state(prefix: str, tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "/"):
            pid, name = key[len(prefix) + 1 :].split("/", 1)
            state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta["plain"].items():
        state.setdefault(int(pid), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


# --- checkpoint directories -------------------------------------------------------------


SHARDS = "shards"
# Writes a sharded checkpoint's `shards/` folder (given its path): every rank takes part.
ShardWriter = Callable[[Path], None]


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:09d}"


def partial_dir(root: Path, step: int) -> Path:
    """Where save_checkpoint writes checkpoint `step` before moving it into place."""
    return root / f".step-{step:09d}.partial"


def save_checkpoint(
    root: Path,
    step: int,
    tensors: dict[str, Tensor],
    state: dict[str, Any],
    keep_last: int,
    shards: ShardWriter | None = None,
) -> Path:
    """Write tensors + state.json (+ shards) as checkpoint `step` under root; keep the newest keep_last."""
    for leftover in root.glob(".step-*.partial"):  # from a crash mid-save
        shutil.rmtree(leftover, ignore_errors=True)
    staged = stage_checkpoint(root, step, tensors, state, partial_dir(root, step).name, shards)
    return publish_checkpoint(staged, root, step, keep_last)


def stage_checkpoint(
    staging: Path,
    step: int,
    tensors: dict[str, Tensor],
    state: dict[str, Any],
    name: str | None = None,
    shards: ShardWriter | None = None,
) -> Path:
    """Write checkpoint `step` complete (fsynced) under `staging`, not yet where runs resume from."""
    tmp = staging / (name or checkpoint_dir(staging, step).name)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if shards is not None:
        shards(tmp / SHARDS)
    save_tensors(tmp / "tensors.safetensors", tensors)
    write_json(tmp / "state.json", state)
    return tmp


def publish_checkpoint(staged: Path, root: Path, step: int, keep_last: int) -> Path:
    """Move a staged checkpoint into place as `root/step-N` (atomically) and keep the newest
    keep_last. Idempotent: a checkpoint already moved is left as it is."""
    final = checkpoint_dir(root, step)
    if staged.exists():
        root.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staged, final)
        fsync_dir(root)
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def load_checkpoint(path: Path, shards: dict[str, Tensor] | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Its tensors and state.json. A sharded checkpoint's `shards/` are read into `shards` (a
    resume's DTensors, one per name in shard_names: each rank reads its part), or without
    them its model weights whole (an export, in one process)."""
    tensors = load_tensors(path / "tensors.safetensors")
    if (path / SHARDS).is_dir():
        from torch.distributed.checkpoint import HuggingFaceStorageReader, load

        if shards is None:
            meta = HuggingFaceStorageReader(str(path / SHARDS)).read_metadata().state_dict_metadata
            shards = {
                n: torch.empty(m.size, dtype=m.properties.dtype)  # type: ignore[union-attr]
                for n, m in meta.items()
                if n.startswith("model/")
            }
        with warnings.catch_warnings():  # in one process it says it reads without a process group
            warnings.simplefilter("ignore")
            load(shards, storage_reader=HuggingFaceStorageReader(str(path / SHARDS)), no_dist=not _distributed())
        tensors.update(shards)
    return tensors, read_json(path / "state.json")


def shard_names(path: Path) -> list[str]:
    """The tensors in checkpoint `path`'s shards (none for a checkpoint of one process or of ddp)."""
    if not (path / SHARDS).is_dir():
        return []
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    return sorted(HuggingFaceStorageReader(str(path / SHARDS)).read_metadata().state_dict_metadata)


def save_shards(path: Path, tensors: dict[str, Tensor]) -> None:
    """Write this rank's part of `tensors` (DTensors) under `path`: a collective, every rank
    of the run calls it with the same names."""
    from torch.distributed.checkpoint import HuggingFaceStorageWriter, save

    save(tensors, storage_writer=HuggingFaceStorageWriter(str(path), save_distributed=True))


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
