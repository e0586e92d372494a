"""A training checkpoint as a model folder (what serving, export and `init_from` read).

A checkpoint holds the model it records in state.json; a LoRA run's checkpoint holds its
adapters' A and B beside the base, or (base frozen: `"base": "rebuilt"`) the adapters alone,
the base being the `init_from` model or the one the seed builds. Either way the folder
written is the model as the run had it at that step: the base with every adapter merged
(scale alpha / rank, from the job's spec), as the run's final model is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.data.chat_records import CHAT_FILE
from models.errors import TrainingError
from models.families.build import build_model
from models.families.gpt.config import GPTConfig
from models.formats.load import load_model
from models.formats.native import model_config, save_model, tokenizer_of
from models.lora.layers import Adapter, merged_state
from models.spec import JobSpec, adapter_parts
from models.training.checkpoint import load_checkpoint

ADAPTER_KEY = re.compile(r"^(?P<path>.+)\.lora_(?P<ab>[AB])\.(?P<name>[A-Za-z0-9_-]+)$")


def adapters_in(weights: dict[str, Tensor], spec: JobSpec | None) -> list[Adapter]:
    """The LoRA adapters among a checkpoint's weights, each with its spec's scale, in the order
    the run first trains them (the order its final model merges them in: the sums round alike)."""
    scales = {} if spec is None else {name: a.alpha / a.rank for _, name, a in adapter_parts(spec)}
    found: dict[str, dict[str, dict[str, Tensor]]] = {}
    for key, value in weights.items():
        m = ADAPTER_KEY.match(key)
        if m is not None:
            found.setdefault(m["name"], {}).setdefault(m["path"], {})[m["ab"]] = value
    unknown = sorted(set(found) - set(scales))
    if unknown:
        raise TrainingError("user_error", f"checkpoint adapter '{unknown[0]}' is not named by its job's spec")
    out = []
    for name in (n for n in scales if n in found):
        layers = found[name]
        pairs = {path: (ab["A"].float(), ab["B"].float()) for path, ab in layers.items()}
        rank = next(iter(pairs.values()))[0].size(0)
        out.append(Adapter(rank, scales[name] * rank, 0.0, pairs, scales[name]))
    return out


def save_checkpoint_model(
    ckpt_dir: Path,
    tokenizer_dir: Path,
    out: Path,
    info: dict[str, Any],
    spec: JobSpec | None = None,
    base_dir: Path | None = None,
    shape: dict[str, Any] | None = None,
) -> None:
    """Checkpoint `ckpt_dir` as a model folder at `out`, with the run's tokenizer (and chat
    format) from `tokenizer_dir`. A LoRA run's checkpoint needs its job's `spec` (the
    adapters' scales; the seed) and, when its base stayed frozen, the `init_from` model's
    folder `base_dir` (None: the base the seed builds). A checkpoint older than state.json's
    `model` record is a GPT of `shape` (the job's model section) with the tensors' vocabulary."""
    tensors, state = load_checkpoint(ckpt_dir)
    weights = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    if "model" not in state:
        assert shape is not None, "an old GPT checkpoint needs its job's model shape"
        vocab = weights["transformer.wte.weight"].shape[0]
        dims = [shape[k] for k in ("block_size", "n_layer", "n_head", "n_embd", "dropout")]
        state["model"] = {"arch": "gpt", "gpt": GPTConfig(vocab, *dims).to_dict()}
    record = state["model"]
    config = model_config(record)
    adapters = adapters_in(weights, spec)
    if state.get("base") == "rebuilt":
        if base_dir is not None:
            base = load_model(base_dir)[0].state_dict()
        else:
            with torch.random.fork_rng(devices=[]):  # leaves this process's generator as it was
                torch.manual_seed(0 if spec is None else spec.seed)  # as the run built it (models/training/setup.py)
                base = build_model(config).state_dict()
        weights = {**base, **weights}
    if adapters:
        weights = merged_state(weights, adapters)
    info = {"steps": state["global_step"], "parameters": sum(v.numel() for v in weights.values()), **info}
    save_model(out, weights, config, tokenizer_of(tokenizer_dir, record), info)
    if (tokenizer_dir / CHAT_FILE).is_file():  # the run's chat format (models.training.pipeline keeps it there)
        (out / CHAT_FILE).write_bytes((tokenizer_dir / CHAT_FILE).read_bytes())
